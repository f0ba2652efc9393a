"""ImageNet encoders from ``keras.applications`` with skip features chosen by layer name.

:func:`build_encoder` builds a ``keras.applications`` network (``include_top=False``)
on the caller's input tensor, so its layers become part of the caller's model
graph (flattened, with the usual ``keras.applications`` layer names such as
``conv4_block6_out``), and returns the feature taps a decoder needs, keyed by
their stride relative to the input::

    inputs = keras.Input((None, None, 3))
    encoder, taps = build_encoder("resnet50", inputs)
    taps[4]   # conv2_block3_out, 1/4 of the input size
    taps[32]  # conv5_block3_out, the deepest feature

VGG16 is the exception: kseg builds it with its one VGG16 body
(:func:`kseg.models.vgg.vgg16_encoder`), layer for layer and name for name as
``keras.applications.VGG16``, and copies pretrained weights in by layer name.

Taps are looked up by LAYER NAME (the tables in :data:`ENCODERS`), never by
layer index, so they stay right for any input size and any Keras version that
keeps the ``keras.applications`` names.

``weights="imagenet"`` loads the ImageNet weights through ``keras.applications``
(they are downloaded once into ``~/.keras/models/``); when the download fails an
:class:`EncoderWeightsError` explains what to do instead. ``weights=None`` (the
default everywhere in kseg) never touches the network.

Pretrained weights with an input of ``C != 3`` channels: the published network is
built on a private 3-channel input with the weights, the caller's network on its
own input without them, and the weights are copied by layer name; the first
convolution's kernel goes through :func:`kseg.models.pretrained.adapt_input_kernel`
(``C = 1``: the RGB kernels summed; ``C > 3``: the RGB kernels cycled and scaled by
``3 / C``). The kernel is adapted as ``keras.applications`` ships it, in the
channel order its preprocessing expects (BGR for ``vgg16`` and ``resnet50``).
EfficientNet is refused with ``C != 3``: its first layers normalise with
ImageNet's RGB mean and deviation.

``output_stride=16`` (DeepLab) rebuilds the encoder with its last downsampling
step removed and the convolutions after it dilated by 2 (atrous convolution,
Chen et al. 2017), keeping the layer names, so ImageNet weights still apply.

Only ``keras`` is used, so the encoders run on the TensorFlow, JAX and PyTorch
backends.
"""

import dataclasses
import re

import keras

from kseg.errors import EncoderConfigError, InputShapeError, unknown_name
from kseg.errors import EncoderWeightsError  # noqa: F401 (re-exported; raised by pretrained)
from kseg.models import layers as L
from kseg.models import pretrained, vgg


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """What kseg knows about one ``keras.applications`` encoder.

    Attributes:
        name: kseg encoder name (``"resnet50"``).
        application: the ``keras.applications`` function name (``"ResNet50"``).
        taps: ``{stride: layer name}`` of the skip features; the largest stride is
            the encoder's last feature map.
        min_size: smallest input height/width the encoder takes.
        divisor: with input sizes that are multiples of this, every tap is exactly
            ``input / stride``; ``None`` when padding-free ("valid") convolutions
            make the taps a few pixels smaller (Xception). Decoders in kseg align
            sizes with :class:`kseg.models.layers.ResizeLike`, so other sizes work too.
        image_init: the kseg ``--image_init`` closest to the preprocessing the
            ImageNet weights expect (``None``: the encoder normalises internally
            and expects raw 0-255 pixels).
        dilation: how to reach output stride 16 (``None``: not supported):
            ``stride1`` layers lose their stride 2, ``dilate`` layers get dilation
            rate 2, ``pads`` ZeroPadding2D layers get a new padding.
        renames: deterministic names for the layers ``keras.applications`` leaves
            unnamed (``{class name: [names in layer order]}``).
        build: ``build(input_tensor) -> keras.Model`` when kseg builds the network
            itself, layer for layer and with the layer names of the
            ``keras.applications`` one (whose weights are then copied in by
            layer name); ``None``: ``keras.applications`` builds it.
        rgb_only: pretrained weights need exactly 3 input channels (the network
            normalises its input with per-channel RGB statistics).
    """

    name: str
    application: str
    taps: dict
    min_size: int = 32
    divisor: int = 32
    image_init: str = "sub_and_divide"
    dilation: dict = None
    renames: dict = dataclasses.field(default_factory=dict)
    build: object = None
    rgb_only: bool = False

    @property
    def tap_names(self):
        """The tap layer names, shallowest first."""
        return [self.taps[s] for s in sorted(self.taps)]


_XCEPTION_RESIDUAL_BLOCKS = (2, 3, 4, 13)

ENCODERS = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            "vgg16",
            "VGG16",
            taps={
                1: "block1_conv2",
                2: "block2_conv2",
                4: "block3_conv3",
                8: "block4_conv3",
                16: "block5_conv3",
                32: "block5_pool",
            },
            image_init="sub_mean",
            # kseg's one VGG16 body (kseg.models.vgg), with keras.applications' names
            build=vgg.vgg16_encoder,
        ),
        EncoderSpec(
            "mobilenet",
            "MobileNet",
            taps={
                2: "conv_pw_1_relu",
                4: "conv_pw_3_relu",
                8: "conv_pw_5_relu",
                16: "conv_pw_11_relu",
                32: "conv_pw_13_relu",
            },
            dilation={
                "stride1": ("conv_dw_12",),
                "pads": {"conv_pad_12": ((1, 1), (1, 1))},
                "dilate": ("conv_dw_13",),
            },
        ),
        EncoderSpec(
            "mobilenetv2",
            "MobileNetV2",
            taps={
                2: "block_1_expand_relu",
                4: "block_3_expand_relu",
                8: "block_6_expand_relu",
                16: "block_13_expand_relu",
                32: "out_relu",
            },
            dilation={
                "stride1": ("block_13_depthwise",),
                "pads": {"block_13_pad": ((1, 1), (1, 1))},
                "dilate": ("block_14_depthwise", "block_15_depthwise", "block_16_depthwise"),
            },
        ),
        EncoderSpec(
            "xception",
            "Xception",
            # The entry flow starts with two unpadded 3x3 convolutions, so these
            # maps are a few pixels smaller than input/stride.
            taps={
                2: "block2_sepconv2_bn",
                4: "block3_sepconv2_bn",
                8: "block4_sepconv2_bn",
                16: "block13_sepconv2_bn",
                32: "block14_sepconv2_act",
            },
            divisor=None,
            dilation={
                "stride1": ("block13_pool", "block13_residual_conv"),
                "pads": {},
                "dilate": ("block14_sepconv1", "block14_sepconv2"),
            },
            renames={
                "Conv2D": [f"block{b}_residual_conv" for b in _XCEPTION_RESIDUAL_BLOCKS],
                "BatchNormalization": [f"block{b}_residual_bn" for b in _XCEPTION_RESIDUAL_BLOCKS],
                "Add": [f"block{b}_add" for b in range(2, 14)],
            },
        ),
        EncoderSpec(
            "resnet50",
            "ResNet50",
            taps={
                2: "conv1_relu",
                4: "conv2_block3_out",
                8: "conv3_block4_out",
                16: "conv4_block6_out",
                32: "conv5_block3_out",
            },
            image_init="sub_mean",
            dilation={
                "stride1": ("conv5_block1_1_conv", "conv5_block1_0_conv"),
                "pads": {},
                "dilate": ("conv5_block1_2_conv", "conv5_block2_2_conv", "conv5_block3_2_conv"),
            },
        ),
        EncoderSpec(
            "efficientnetb0",
            "EfficientNetB0",
            taps={
                2: "block2a_expand_activation",
                4: "block3a_expand_activation",
                8: "block4a_expand_activation",
                16: "block6a_expand_activation",
                32: "top_activation",
            },
            image_init=None,
            dilation={
                "stride1": ("block6a_dwconv",),
                "pads": {"block6a_dwconv_pad": ((2, 2), (2, 2))},
                "dilate": (
                    "block6b_dwconv",
                    "block6c_dwconv",
                    "block6d_dwconv",
                    "block7a_dwconv",
                ),
            },
            renames={
                "Rescaling": ["stem_rescaling", "stem_std_rescaling"],
                "Normalization": ["stem_normalization"],
            },
            rgb_only=True,
        ),
    )
}


def encoder_spec(name):
    """Return the :class:`EncoderSpec` of ``name`` (raises listing the valid names)."""
    if name not in ENCODERS:
        raise unknown_name("encoder", name, ENCODERS)
    return ENCODERS[name]


def build_encoder(
    name,
    input_tensor=None,
    input_shape=None,
    weights=None,
    output_stride=32,
    bn_momentum=L.BN_MOMENTUM,
    **kwargs,
):
    """Build a ``keras.applications`` encoder and return it with its skip features.

    Args:
        name: an encoder name from :data:`ENCODERS` (``"vgg16"``, ``"mobilenet"``,
            ``"mobilenetv2"``, ``"xception"``, ``"resnet50"``, ``"efficientnetb0"``).
        input_tensor: the ``keras.Input`` (or any Keras tensor) to build on; the
            encoder's layers are added to its graph. Default: a new input of
            ``input_shape``.
        input_shape: ``(height, width, channels)`` used when ``input_tensor`` is
            ``None``; default ``(None, None, 3)``.
        weights: ``None`` (random initialisation), ``"imagenet"`` or the path of a
            ``keras.applications`` weights file (``include_top=False`` variant).
            With ``C != 3`` input channels the first convolution is adapted (see
            the module docstring); EfficientNet needs 3.
        output_stride: 32 (the network as published) or 16 (last downsampling
            replaced by dilation 2, for DeepLab; not available for ``"vgg16"``).
        bn_momentum: momentum of every BatchNormalization layer of the encoder;
            default kseg's own 0.9 (PyTorch's 0.1), as in all of kseg's layers.
            ``keras.applications`` builds its BN layers with 0.99 (MobileNetV2:
            0.999), meant for ImageNet-length training. The moving variance starts
            at 1 while a randomly initialised first conv's true variance can be
            ~0.005: with 0.99 the estimate is still 10x too large after 290 steps,
            and with 0.999 after thousands; inference then predicts one class
            while training-mode outputs are fine. ``None`` keeps the application's
            own values.
        **kwargs: passed to the ``keras.applications`` function (e.g. ``alpha=0.5``
            for the MobileNets).

    Returns:
        ``(encoder, taps)``: the ``keras.applications`` model (its layers are the
        ones in the caller's graph: freeze them with ``encoder.trainable = False``)
        and ``{stride: tensor}`` with the skip features of :data:`ENCODERS`; with
        ``output_stride=16`` the deepest feature is ``taps[16]`` and there is no
        ``taps[32]``.

    Raises:
        UnknownNameError: unknown encoder name.
        InputShapeError: pretrained EfficientNet weights with other than 3 input channels.
        EncoderConfigError: bad ``weights`` value or unsupported ``output_stride``.
        EncoderWeightsError: the ImageNet weights could not be downloaded or read.

    Example:
        >>> inputs = keras.Input((64, 64, 3))
        >>> encoder, taps = build_encoder("mobilenetv2", inputs)
        >>> sorted(taps), taps[8].shape
        ([2, 4, 8, 16, 32], (None, 8, 8, 192))
    """
    spec = encoder_spec(name)
    weights = pretrained.check_weights_value(f"encoder {name}", weights)
    if output_stride not in (16, 32) or (output_stride == 16 and spec.dilation is None):
        ok = "16 or 32" if spec.dilation is not None else "32"
        raise EncoderConfigError(
            f"output_stride {output_stride!r} is not available for encoder {name}; use {ok}"
        )
    if input_tensor is None:
        input_tensor = keras.Input(tuple(input_shape or (None, None, 3)))
    channels = input_tensor.shape[-1]
    if weights is not None and channels != 3 and spec.rgb_only:
        raise InputShapeError(
            f"encoder {name} with pretrained weights needs 3 input channels, got {channels} "
            "(its first layers normalise with ImageNet's RGB mean and deviation); use "
            "3-channel images, encoder_weights=None or another encoder"
        )

    if spec.build is not None:
        if kwargs:
            raise EncoderConfigError(
                f"encoder {name} takes no options; received {', '.join(sorted(kwargs))}"
            )
        encoder = spec.build(input_tensor)
        if weights is not None:
            _copy_weights(pretrained_reference(name, weights), encoder, spec.application)
    elif output_stride == 32 and (
        weights is None or (channels == 3 and spec.application not in pretrained.BGR_APPLICATIONS)
    ):
        encoder = _application(spec, input_tensor, weights, kwargs)
    else:
        # Build the published network on a private 3-channel input (this loads the
        # weights), then rebuild it on the caller's input (its channels, the
        # stride/dilation changes) and copy the weights by layer name, the first
        # kernel made for kseg's RGB input (BGR-trained networks: channels reversed).
        source_input = keras.Input(
            batch_shape=tuple(input_tensor.shape[:-1]) + (3,), dtype=input_tensor.dtype
        )
        source = _application(spec, source_input, weights, kwargs)
        plan = spec.dilation if output_stride == 16 else _NO_CHANGE
        encoder = _dilated_clone(source, input_tensor, plan, weights is not None, spec.application)

    if bn_momentum is not None:
        for layer in encoder.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(bn_momentum)
    taps = {s: encoder.get_layer(n).output for s, n in spec.taps.items()}
    if output_stride == 16:
        del taps[32]
        taps[16] = encoder.output
    return encoder, taps


def pretrained_reference(name, weights, **kwargs):
    """The ``keras.applications`` network of encoder ``name`` with ``weights`` loaded,
    on a private 3-channel input: the source of weights copied by layer name.

    Raises:
        EncoderWeightsError: the ImageNet weights could not be downloaded or read.
    """
    spec = encoder_spec(name)
    return _application(spec, keras.Input((None, None, 3)), weights, kwargs)


_NO_CHANGE = {"stride1": (), "dilate": (), "pads": {}}


def _copy_weights(source, target, application):
    """Copy the weights of every layer of ``source`` (the ``keras.applications``
    network ``application``) into the layer of ``target`` with the same name (every
    weighted layer of ``source`` must exist there).

    The kernel of the first convolution is made for kseg's RGB input with the
    target's channel count by :func:`kseg.models.pretrained.rgb_input_kernel`
    (BGR-trained VGG16/ResNet kernels get their input channels reversed; ``C != 3``
    is adapted); any other shape difference is an error.
    """
    first = next(
        (layer for layer in source.layers if type(layer).__name__ == "Conv2D"), None
    )
    for layer in source.layers:
        if not layer.weights:
            continue
        into = target.get_layer(layer.name)
        values = layer.get_weights()
        if layer is first:
            kernel = values[0]
            channels = into.get_weights()[0].shape[2]
            if kernel.shape[2] == 3:
                values[0] = pretrained.rgb_input_kernel(kernel, application, channels)
        into.set_weights(values)


def _application(spec, input_tensor, weights, kwargs):
    """Call the ``keras.applications`` function (kseg's errors:
    :func:`kseg.models.pretrained.load_application`) and give unnamed layers
    stable names."""
    model = pretrained.load_application(
        spec.application, weights, input_tensor, f"encoder {spec.name}", **kwargs
    )
    _rename_anonymous_layers(model, spec)
    return model


def _snake_case(class_name):
    """``BatchNormalization`` -> ``batch_normalization``, as Keras auto-names layers."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def _rename_anonymous_layers(model, spec):
    """Replace Keras' session-dependent auto names (``conv2d_7``) with fixed names.

    ``keras.applications`` leaves a few layers unnamed (Xception's residual
    branches, EfficientNet's input normalisation); Keras names them from a global
    counter, so the names would depend on what was built before. The names come
    from ``spec.renames`` in layer order, falling back to ``{encoder}_{class}_{i}``.
    """
    counters = {}
    taken = {layer.name for layer in model.layers}
    for layer in model.layers:
        cls = type(layer).__name__
        if cls == "InputLayer" or not re.fullmatch(
            re.escape(_snake_case(cls)) + r"(_\d+)?", layer.name
        ):
            continue
        i = counters.get(cls, 0)
        counters[cls] = i + 1
        table = spec.renames.get(cls, [])
        new = table[i] if i < len(table) else f"{spec.name}_{_snake_case(cls)}_{i}"
        if new in taken:
            continue
        taken.discard(layer.name)
        taken.add(new)
        layer.name = new


def _dilated_clone(source, input_tensor, plan, copy_weights, application):
    """Rebuild ``source`` on ``input_tensor`` with the output-stride-16 changes of ``plan``."""
    stride1, dilate, pads = set(plan["stride1"]), set(plan["dilate"]), plan["pads"]

    def clone_layer(layer):
        config = layer.get_config()
        if layer.name in stride1:
            config["strides"] = (1, 1)
        if layer.name in dilate:
            config["dilation_rate"] = (2, 2)
        if layer.name in pads:
            config["padding"] = pads[layer.name]
        return layer.__class__.from_config(config)

    missing = (stride1 | dilate | set(pads)) - {layer.name for layer in source.layers}
    if missing:  # a keras.applications change renamed layers: fail loudly, not silently
        raise RuntimeError(f"layers {sorted(missing)} not found in {source.name}")
    if isinstance(source.input, (list, tuple)):  # keras.applications wraps it in a list
        input_tensor = [input_tensor]
    clone = keras.models.clone_model(
        source, input_tensors=input_tensor, clone_function=clone_layer
    )
    if copy_weights:
        _copy_weights(source, clone, application)
    return clone
