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

Taps are looked up by LAYER NAME (the tables in :data:`ENCODERS`; ConvNeXt's
stage outputs are bare ``+`` operations, looked up by operation name, see
:func:`named_taps`), never by layer index, so they stay right for any input size
and any Keras version that keeps the ``keras.applications`` names. Layers and
operations that ``keras.applications`` leaves unnamed get fixed names, so two
builds in one process have the same names.

The zoo (:func:`list_encoders`, the README's table from :func:`encoder_table`):
VGG16/19, ResNet50/101/152 (v1 and v2), DenseNet121/169/201, MobileNet v1/v2/v3
(Small, Large), Xception, EfficientNetB0-B7, EfficientNetV2 B0-B3/S/M/L and
ConvNeXt Tiny/Small/Base/Large/XLarge: every ``keras.applications`` family of
Keras 3 with a feature pyramid except Inception and NASNet (:data:`NOT_ENCODERS`).

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
channel order its preprocessing expects (BGR for VGG and ResNet v1). The
``rgb_only`` encoders (EfficientNet, EfficientNetV2-B*, ConvNeXt) are refused
with ``C != 3``: their first layers normalise with ImageNet's RGB mean and
deviation.

``output_stride=16`` (DeepLab) rebuilds the encoder with its last downsampling
step removed and the convolutions after it dilated by 2 (atrous convolution,
Chen et al. 2017), ``output_stride=8`` also the one before (rates 2 and 4),
keeping the layer names, so ImageNet weights still apply (:func:`stride_plan`).

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
        taps: ``{stride: name}`` of the skip features; the largest stride is the
            encoder's last feature map. A name is a layer's or, where
            ``keras.applications`` computes a feature with a bare operation (the
            residual sums of ConvNeXt), that operation's (given by ``renames``).
            Families without a stride-2 feature (ConvNeXt's stem has stride 4)
            have no ``2`` key: decoders must cope with a missing tap.
        min_size: smallest input height/width the encoder takes.
        divisor: with input sizes that are multiples of this, every tap is exactly
            ``input / stride``; ``None`` when padding-free ("valid") convolutions
            make the taps a few pixels smaller (Xception). Decoders in kseg align
            sizes with :class:`kseg.models.layers.ResizeLike`, so other sizes work too.
        image_init: the kseg ``--image_init`` closest to the preprocessing the
            ImageNet weights expect (``None``: the encoder normalises internally
            and expects raw 0-255 pixels).
        mean_std: ``(mean, std)`` per RGB channel in 0-255 units when the weights'
            preprocessing is a mean/std normalisation no ``image_init`` matches
            exactly (DenseNet's "torch" mode): ``--mean`` / ``--std`` for an exact start.
        dilation: how to reach output stride 16 (and 8), ``None`` when the family
            has no plan: ``{32: step, 16: step}``, the downsampling steps that can be
            removed (``32``: the one from stride 16 to 32, ``16``: from 8 to 16).
            A step is ``{"stride1": layer names that lose their stride,
            "dilate": regular expressions (full match) of the convolutions after
            it, up to the next removed step}``. See :func:`stride_plan`.
        renames: deterministic names for the layers and operations
            ``keras.applications`` leaves unnamed (``{class name: [names in
            graph order]}``).
        derived_names: name the unnamed layers and operations not in ``renames``
            after the layer that feeds them (``expanded_conv_1_expand_bn`` ->
            ``expanded_conv_1_expand_act``; MobileNetV3, whose structure changes
            with its options) instead of ``{encoder}_{class}_{i}``.
        build: ``build(input_tensor) -> keras.Model`` when kseg builds the network
            itself, layer for layer and with the layer names of the
            ``keras.applications`` one (whose weights are then copied in by
            layer name); ``None``: ``keras.applications`` builds it.
        rgb_only: pretrained weights need exactly 3 input channels (the network
            normalises its input with per-channel RGB statistics).
        pass_input_shape: the application picks its input normalisation from
            ``input_shape``'s channel count (ConvNeXt, EfficientNetV2), so kseg
            passes the input's shape along when it has ``C != 3`` channels (the
            RGB normalisation is then left out, as ``keras.applications`` does).
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
    derived_names: bool = False
    pass_input_shape: bool = False
    mean_std: tuple = None

    @property
    def tap_names(self):
        """The tap layer names, shallowest first."""
        return [self.taps[s] for s in sorted(self.taps)]

    @property
    def output_strides(self):
        """The ``output_stride`` values :func:`build_encoder` takes, largest first."""
        if not self.dilation:
            return (32,)
        return (32, 16, 8) if 16 in self.dilation else (32, 16)


def _step(stride1, dilate):
    """One removable downsampling step of :attr:`EncoderSpec.dilation`."""
    return {"stride1": tuple(stride1), "dilate": tuple(dilate)}


# ImageNet mean and deviation in 0-255 units ("torch" preprocessing of keras.applications)
_TORCH_MEAN_STD = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
_XCEPTION_RESIDUAL_BLOCKS = (2, 3, 4, 13)


def _letters(n):
    """Block letters of the EfficientNets: ``a``, ``b``, ... (``n`` of them)."""
    return "abcdefghijklmnopqrstuvwxyz"[:n]


def _vgg(name, application, convs, build=None):
    """VGG16/19: ``convs`` convolutions in blocks 3-5."""
    return EncoderSpec(
        name,
        application,
        taps={
            1: "block1_conv2",
            2: "block2_conv2",
            4: f"block3_conv{convs}",
            8: f"block4_conv{convs}",
            16: f"block5_conv{convs}",
            32: "block5_pool",
        },
        image_init="sub_mean",
        build=build,
    )


def _resnet(name, application, blocks):
    """ResNet v1 (He et al. 2016, the Caffe models): stride 2 on the first block's
    1x1 convolution and its projection shortcut; blocks per stage ``blocks``."""
    b2, b3, b4, b5 = blocks
    return EncoderSpec(
        name,
        application,
        taps={
            2: "conv1_relu",
            4: f"conv2_block{b2}_out",
            8: f"conv3_block{b3}_out",
            16: f"conv4_block{b4}_out",
            32: f"conv5_block{b5}_out",
        },
        image_init="sub_mean",
        dilation={
            32: _step(("conv5_block1_1_conv", "conv5_block1_0_conv"), (r"conv5_block\d+_2_conv",)),
            16: _step(("conv4_block1_1_conv", "conv4_block1_0_conv"), (r"conv4_block\d+_2_conv",)),
        },
    )


def _resnet_v2(name, application, blocks):
    """ResNet v2 (pre-activation, He et al. 2016b): stride 2 on the LAST block of
    stages 2-4 (its padded 3x3 convolution and a 1x1 max-pooling shortcut, which
    keras.applications leaves unnamed). The taps are the pre-activations (BN-ReLU)
    of each stage's full output, read where the next block starts; stride 2 is the
    stem convolution, which has no activation of its own."""
    b2, b3, b4, _ = blocks
    pools = [f"conv{s}_block{b}_shortcut_pool" for s, b in ((2, b2), (3, b3), (4, b4))]
    return EncoderSpec(
        name,
        application,
        taps={
            2: "conv1_conv",
            4: f"conv2_block{b2}_preact_relu",
            8: f"conv3_block{b3}_preact_relu",
            16: f"conv4_block{b4}_preact_relu",
            32: "post_relu",
        },
        dilation={
            32: _step((f"conv4_block{b4}_2_conv", pools[2]), (r"conv5_block\d+_2_conv",)),
            16: _step((f"conv3_block{b3}_2_conv", pools[1]), (r"conv4_block\d+_2_conv",)),
        },
        renames={"MaxPooling2D": pools},
    )


def _densenet(name, application, blocks):
    """DenseNet (Huang et al. 2017): the taps are the BN-ReLU of each dense block's
    output inside the transition (before its 1x1 convolution and 2x2 average
    pooling). Output stride 16/8 removes the transitions' pooling stride (the 2x2
    window stays, with "same" padding) and dilates the 3x3 convolutions after it."""
    return EncoderSpec(
        name,
        application,
        taps={2: "conv1_relu", 4: "pool2_relu", 8: "pool3_relu", 16: "pool4_relu", 32: "relu"},
        mean_std=_TORCH_MEAN_STD,
        dilation={
            32: _step(("pool4_pool",), (r"conv5_block\d+_2_conv",)),
            16: _step(("pool3_pool",), (r"conv4_block\d+_2_conv",)),
        },
        renames={"ZeroPadding2D": ["conv1_pad", "pool1_pad"]},
    )


def _mobilenet_v3(name, application, taps, stride32, dilate32, stride16, dilate16):
    """MobileNetV3 (Howard et al. 2019): the taps are the expansion activations of
    the first block at each new stride (as MobileNetV2's); the input is scaled to
    [-1, 1] inside the network."""
    return EncoderSpec(
        name,
        application,
        taps=taps,
        image_init=None,
        dilation={32: _step((stride32,), (dilate32,)), 16: _step((stride16,), (dilate16,))},
        renames={"Rescaling": ["stem_rescaling"]},
        derived_names=True,
    )


def _efficientnet(name, application):
    """EfficientNet B0-B7 (Tan & Le 2019): the same block names at every width and
    depth (more blocks per stage in the bigger ones, hence the patterns)."""
    return EncoderSpec(
        name,
        application,
        taps={
            2: "block2a_expand_activation",
            4: "block3a_expand_activation",
            8: "block4a_expand_activation",
            16: "block6a_expand_activation",
            32: "top_activation",
        },
        image_init=None,
        dilation={
            32: _step(("block6a_dwconv",), (r"block6[b-z]_dwconv", r"block7[a-z]_dwconv")),
            16: _step(("block4a_dwconv",), (r"block4[b-z]_dwconv", r"block5[a-z]_dwconv")),
        },
        renames={
            "Rescaling": ["stem_rescaling", "stem_std_rescaling"],
            "Normalization": ["stem_normalization"],
        },
        rgb_only=True,
    )


def _efficientnet_v2(name, application, stage_blocks):
    """EfficientNetV2 (Tan & Le 2021): stages 1-3 are fused blocks whose stride-2
    convolution is the expansion itself, so the stride-2 and -4 taps are the last
    block outputs of stages 1 and 2; the others are expansion activations as in
    EfficientNet. ``stage_blocks``: blocks in stages 1 and 2. B0-B3 normalise with
    ImageNet's RGB mean and deviation, S/M/L only scale to [-1, 1]."""
    n1, n2 = stage_blocks
    first = "block1a_project_activation" if n1 == 1 else f"block1{_letters(n1)[-1]}_add"
    small = application[-2] == "B"
    return EncoderSpec(
        name,
        application,
        taps={
            2: first,
            4: f"block2{_letters(n2)[-1]}_add",
            8: "block4a_expand_activation",
            16: "block6a_expand_activation",
            32: "top_activation",
        },
        image_init=None,
        dilation={
            # EfficientNetV2-B0..B3 and S end with stage 6, M and L have a stage 7
            32: _step(("block6a_dwconv2",), (r"block6[b-z]_dwconv2|block7[a-z]_dwconv2",)),
            16: _step(("block4a_dwconv2",), (r"block4[b-z]_dwconv2", r"block5[a-z]_dwconv2")),
        },
        renames={"Rescaling": ["stem_rescaling"], "Normalization": ["stem_normalization"]},
        rgb_only=small,
        pass_input_shape=True,
    )


_CONVNEXT_DEPTHS = {
    "tiny": (3, 3, 9, 3),
    "small": (3, 3, 27, 3),
    "base": (3, 3, 27, 3),
    "large": (3, 3, 27, 3),
    "xlarge": (3, 3, 27, 3),
}


def _convnext(size):
    """ConvNeXt (Liu et al. 2022): a stride-4 stem (no stride-2 tap), then four
    stages separated by LayerNorm + 2x2 stride-2 convolutions. A stage ends with
    a residual sum that keras.applications computes with a bare ``+`` (an
    operation, named here ``{prefix}_stage_{i}_block_{j}_add``): the taps of
    strides 4, 8 and 16; stride 32 is the final LayerNorm."""
    prefix = f"convnext_{size}"
    depths = _CONVNEXT_DEPTHS[size]
    adds = [f"{prefix}_stage_{i}_block_{j}_add" for i, d in enumerate(depths) for j in range(d)]
    return EncoderSpec(
        f"convnext_{size}",
        f"ConvNeXt{size.capitalize() if size != 'xlarge' else 'XLarge'}",
        taps={
            4: f"{prefix}_stage_0_block_{depths[0] - 1}_add",
            8: f"{prefix}_stage_1_block_{depths[1] - 1}_add",
            16: f"{prefix}_stage_2_block_{depths[2] - 1}_add",
            32: f"{prefix}_layernorm",
        },
        image_init=None,
        dilation={
            32: _step((f"{prefix}_downsampling_conv_2",), (rf"{prefix}_stage_3_block_\d+_depthwise_conv",)),
            16: _step((f"{prefix}_downsampling_conv_1",), (rf"{prefix}_stage_2_block_\d+_depthwise_conv",)),
        },
        renames={"Add": adds, "LayerNormalization": [f"{prefix}_layernorm"]},
        rgb_only=True,
        pass_input_shape=True,
    )


ENCODERS = {
    spec.name: spec
    for spec in (
        # kseg's one VGG16 body (kseg.models.vgg), with keras.applications' names
        _vgg("vgg16", "VGG16", 3, build=vgg.vgg16_encoder),
        _vgg("vgg19", "VGG19", 4),
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
                32: _step(("conv_dw_12",), ("conv_dw_13",)),
                16: _step(("conv_dw_6",), (r"conv_dw_([7-9]|1[01])",)),
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
                32: _step(("block_13_depthwise",), (r"block_1[4-6]_depthwise",)),
                16: _step(("block_6_depthwise",), (r"block_([7-9]|1[0-2])_depthwise",)),
            },
        ),
        _mobilenet_v3(
            "mobilenetv3small",
            "MobileNetV3Small",
            taps={
                2: "conv_act",
                4: "expanded_conv_1_expand_act",
                8: "expanded_conv_3_expand_act",
                16: "expanded_conv_8_expand_act",
                32: "conv_1_act",
            },
            stride32="expanded_conv_8_depthwise",
            dilate32=r"expanded_conv_(9|10)_depthwise",
            stride16="expanded_conv_3_depthwise",
            dilate16=r"expanded_conv_[4-7]_depthwise",
        ),
        _mobilenet_v3(
            "mobilenetv3large",
            "MobileNetV3Large",
            taps={
                2: "expanded_conv_1_expand_act",
                4: "expanded_conv_3_expand_act",
                8: "expanded_conv_6_expand_act",
                16: "expanded_conv_12_expand_act",
                32: "conv_1_act",
            },
            stride32="expanded_conv_12_depthwise",
            dilate32=r"expanded_conv_1[34]_depthwise",
            stride16="expanded_conv_6_depthwise",
            dilate16=r"expanded_conv_([7-9]|1[01])_depthwise",
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
                32: _step(("block13_pool", "block13_residual_conv"), (r"block14_sepconv[12]",)),
                16: _step(
                    ("block4_pool", "block4_residual_conv"),
                    (r"block([5-9]|1[0-2])_sepconv[1-3]", r"block13_sepconv[12]"),
                ),
            },
            renames={
                "Conv2D": [f"block{b}_residual_conv" for b in _XCEPTION_RESIDUAL_BLOCKS],
                "BatchNormalization": [f"block{b}_residual_bn" for b in _XCEPTION_RESIDUAL_BLOCKS],
                "Add": [f"block{b}_add" for b in range(2, 14)],
            },
        ),
        _resnet("resnet50", "ResNet50", (3, 4, 6, 3)),
        _resnet("resnet101", "ResNet101", (3, 4, 23, 3)),
        _resnet("resnet152", "ResNet152", (3, 8, 36, 3)),
        _resnet_v2("resnet50v2", "ResNet50V2", (3, 4, 6, 3)),
        _resnet_v2("resnet101v2", "ResNet101V2", (3, 4, 23, 3)),
        _resnet_v2("resnet152v2", "ResNet152V2", (3, 8, 36, 3)),
        _densenet("densenet121", "DenseNet121", (6, 12, 24, 16)),
        _densenet("densenet169", "DenseNet169", (6, 12, 32, 32)),
        _densenet("densenet201", "DenseNet201", (6, 12, 48, 32)),
        *(_efficientnet(f"efficientnetb{i}", f"EfficientNetB{i}") for i in range(8)),
        _efficientnet_v2("efficientnetv2b0", "EfficientNetV2B0", (1, 2)),
        _efficientnet_v2("efficientnetv2b1", "EfficientNetV2B1", (2, 3)),
        _efficientnet_v2("efficientnetv2b2", "EfficientNetV2B2", (2, 3)),
        _efficientnet_v2("efficientnetv2b3", "EfficientNetV2B3", (2, 3)),
        _efficientnet_v2("efficientnetv2s", "EfficientNetV2S", (2, 4)),
        _efficientnet_v2("efficientnetv2m", "EfficientNetV2M", (3, 5)),
        _efficientnet_v2("efficientnetv2l", "EfficientNetV2L", (4, 7)),
        *(_convnext(size) for size in _CONVNEXT_DEPTHS),
    )
}

#: Families of ``keras.applications`` that kseg does not offer as encoders, and why.
NOT_ENCODERS = {
    "ResNetRS, RegNetX/RegNetY": "not in Keras 3's keras.applications (Keras 2.x only)",
    "InceptionV3, InceptionResNetV2": "every layer unnamed and unpadded stems; not mapped yet",
    "NASNetMobile, NASNetLarge": "cell outputs cropped to fixed shapes; not mapped",
}


def list_encoders():
    """The encoder names :func:`build_encoder` takes, sorted."""
    return sorted(ENCODERS)


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
        name: an encoder name from :data:`ENCODERS` (:func:`list_encoders`:
            ``"vgg16"``, ``"resnet50"``, ``"resnet101v2"``, ``"densenet121"``,
            ``"mobilenetv3large"``, ``"efficientnetb3"``, ``"efficientnetv2s"``,
            ``"convnext_tiny"``, ...).
        input_tensor: the ``keras.Input`` (or any Keras tensor) to build on; the
            encoder's layers are added to its graph. Default: a new input of
            ``input_shape``.
        input_shape: ``(height, width, channels)`` used when ``input_tensor`` is
            ``None``; default ``(None, None, 3)``.
        weights: ``None`` (random initialisation), ``"imagenet"`` or the path of a
            ``keras.applications`` weights file (``include_top=False`` variant).
            With ``C != 3`` input channels the first convolution is adapted (see
            the module docstring); the ``rgb_only`` encoders (EfficientNet,
            EfficientNetV2-B*, ConvNeXt) need 3.
        output_stride: 32 (the network as published), 16 or 8 (the last one or two
            downsampling steps replaced by dilation, for DeepLab): the values in
            ``encoder_spec(name).output_strides``.
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
        ``output_stride=16`` (8) the deepest feature is ``taps[16]`` (``taps[8]``)
        and the taps of larger strides are absent.

    Raises:
        UnknownNameError: unknown encoder name.
        InputShapeError: pretrained ``rgb_only`` weights with other than 3 input channels.
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
    if output_stride not in spec.output_strides:
        ok = " or ".join(str(s) for s in sorted(spec.output_strides))
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
        # Without weights the source gets the caller's channels: ConvNeXt and
        # EfficientNetV2 choose their input normalisation by channel count.
        source_input = keras.Input(
            batch_shape=tuple(input_tensor.shape[:-1]) + (3 if weights is not None else channels,),
            dtype=input_tensor.dtype,
        )
        source = _application(spec, source_input, weights, kwargs)
        plan = stride_plan(spec, output_stride, source)
        encoder = _dilated_clone(source, input_tensor, plan, weights is not None, spec.application)

    if bn_momentum is not None:
        for layer in _leaf_layers(encoder):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(bn_momentum)
    taps = {s: t for s, t in named_taps(encoder, name).items() if s < output_stride}
    taps[max(s for s in spec.taps if s <= output_stride)] = encoder.output
    return encoder, taps


def named_taps(encoder, name):
    """Every tap of encoder ``name`` in the built ``encoder`` (or a model containing
    it), keyed by its stride in the published network, whatever ``output_stride`` it
    was built with: ``{stride: tensor}``. A tap is found by the name of its layer or,
    for ConvNeXt's residual sums, of its operation, so use this rather than
    ``get_layer(name).output``.
    """
    spec = encoder_spec(name)
    named = {op.name: op for op in encoder.operations}
    return {s: named[n].output for s, n in spec.taps.items()}


def pretrained_reference(name, weights, **kwargs):
    """The ``keras.applications`` network of encoder ``name`` with ``weights`` loaded,
    on a private 3-channel input: the source of weights copied by layer name.

    Raises:
        EncoderWeightsError: the ImageNet weights could not be downloaded or read.
    """
    spec = encoder_spec(name)
    return _application(spec, keras.Input((None, None, 3)), weights, kwargs)


_NO_CHANGE = {"stride1": {}, "dilate": {}}


def stride_plan(spec, output_stride, source):
    """The layer changes that take encoder ``spec`` (built as ``source``) to ``output_stride``.

    DeepLab's rule (Chen et al. 2017, atrous convolution): each removed
    downsampling step keeps its layer at the current dilation rate with stride 1,
    and every convolution after it gets twice that rate. Output stride 16 removes
    the last step (rates 1, then 2); 8 removes the last two (the stride-16 step at
    rate 1, the convolutions after it at 2, the stride-32 step at 2 and the
    convolutions after it at 4).

    Returns:
        ``{"stride1": {layer name: rate}, "dilate": {layer name: rate}}`` over the
        layers of ``source`` (nested models' layers included).

    Raises:
        RuntimeError: a name or pattern of the plan matches no layer of ``source``
            (a ``keras.applications`` change renamed layers: fail loudly, not silently).
    """
    names = [layer.name for layer in _leaf_layers(source)]
    plan = {"stride1": {}, "dilate": {}}
    rate = 1
    for step_stride in (16, 32):
        if step_stride <= output_stride:
            continue
        step = spec.dilation[step_stride]
        missing = [n for n in step["stride1"] if n not in names]
        for n in step["stride1"]:
            plan["stride1"][n] = rate
        rate *= 2
        for pattern in step["dilate"]:
            found = [n for n in names if re.fullmatch(pattern, n)]
            if not found:
                missing.append(pattern)
            for n in found:
                plan["dilate"][n] = rate
        if missing:
            raise RuntimeError(f"layers {sorted(missing)} not found in {source.name}")
    for n, r in plan["stride1"].items():  # a stride-1 layer also inside a dilated range
        plan["dilate"].pop(n, None)
        plan["stride1"][n] = r
    return plan


def _leaf_layers(model):
    """The layers of ``model``, those of nested models (ConvNeXt's Sequential stem
    and downsampling blocks) in place of the nested model, in graph order."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _copy_weights(source, target, application):
    """Copy the weights of every layer of ``source`` (the ``keras.applications``
    network ``application``) into the layer of ``target`` with the same name (every
    weighted layer of ``source`` must exist there; nested models layer by layer).

    The kernel of the first convolution is made for kseg's RGB input with the
    target's channel count by :func:`kseg.models.pretrained.rgb_input_kernel`
    (BGR-trained VGG/ResNet v1 kernels get their input channels reversed; ``C != 3``
    is adapted); any other shape difference is an error.
    """
    layers = list(_leaf_layers(source))
    into_layers = {layer.name: layer for layer in _leaf_layers(target)}
    first = next((layer for layer in layers if type(layer).__name__ == "Conv2D"), None)
    for layer in layers:
        if not layer.weights:
            continue
        into = into_layers[layer.name]
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
    if spec.pass_input_shape and input_tensor.shape[-1] != 3:
        kwargs = {"input_shape": tuple(input_tensor.shape[1:]), **kwargs}
    model = pretrained.load_application(
        spec.application, weights, input_tensor, f"encoder {spec.name}", **kwargs
    )
    _rename_anonymous_layers(model, spec)
    return model


def _snake_case(class_name):
    """``BatchNormalization`` -> ``batch_normalization``, as Keras auto-names layers."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


# suffixes of derived names (EncoderSpec.derived_names)
_DERIVED_SUFFIX = {"Activation": "act", "ReLU": "act", "Add": "add", "Multiply": "mul"}


def _rename_anonymous_layers(model, spec):
    """Replace Keras' session-dependent auto names (``conv2d_7``, ``add_12``) with fixed names.

    ``keras.applications`` leaves some layers and operations unnamed (Xception's
    residual branches, EfficientNet's input normalisation, MobileNetV3's
    activations, ConvNeXt's residual sums); Keras names them from a global
    counter, so the names would depend on what was built before. The names come
    from ``spec.renames`` in graph order; else, with ``spec.derived_names``, from
    the layer that feeds them (its name without ``_bn``, plus ``_act``, ``_add``,
    ``_mul`` or the class in snake case); else ``{encoder}_{class}_{i}``.
    """
    counters = {}
    taken = {op.name for op in model.operations}
    producers = {}
    for op in model.operations:
        for t in keras.tree.flatten(op.output):
            producers[id(t)] = op
    for op in model.operations:
        cls = type(op).__name__
        if cls == "InputLayer" or not re.fullmatch(
            re.escape(_snake_case(cls)) + r"(_\d+)?", op.name
        ):
            continue
        i = counters.get(cls, 0)
        counters[cls] = i + 1
        table = spec.renames.get(cls, [])
        if i < len(table):
            new = table[i]
        elif spec.derived_names:
            inputs = [t for t in keras.tree.flatten(op.input) if id(t) in producers]
            base = producers[id(inputs[0])].name if inputs else spec.name
            base = re.sub(r"_bn$", "", base)
            new = f"{base}_{_DERIVED_SUFFIX.get(cls, _snake_case(cls))}"
            k = 2
            while new in taken:
                new, k = f"{base}_{_DERIVED_SUFFIX.get(cls, _snake_case(cls))}_{k}", k + 1
        else:
            new = f"{spec.name}_{_snake_case(cls)}_{i}"
        if new in taken:
            continue
        taken.discard(op.name)
        taken.add(new)
        op.name = new


def _dilated_clone(source, input_tensor, plan, copy_weights, application):
    """Rebuild ``source`` on ``input_tensor`` with the changes of ``plan`` (:func:`stride_plan`).

    A layer in ``plan["stride1"]`` gets stride 1 and its rate; one in
    ``plan["dilate"]`` its rate. A ``ZeroPadding2D`` feeding a changed layer gets
    ``rate * (kernel - 1) / 2`` on every side, so the size is kept; a changed
    layer with ``"valid"`` padding and no padding layer before it (DenseNet's 2x2
    average pooling, ConvNeXt's 2x2 downsampling convolution) gets ``"same"``.
    Nested ``Sequential`` blocks are cloned layer by layer. The layer names are
    kept, so the weights copy by name (``copy_weights``).
    """
    stride1, dilate = plan["stride1"], plan["dilate"]
    rates = {**dilate, **stride1}
    producers = {}
    for op in source.operations:
        for t in keras.tree.flatten(op.output):
            producers[id(t)] = op
    pads, padded = {}, set()
    for layer in _leaf_layers(source):
        if layer.name not in rates or not hasattr(layer, "input"):
            continue
        before = producers.get(id(layer.input))
        if isinstance(before, keras.layers.ZeroPadding2D):
            size = layer.get_config().get("kernel_size") or layer.get_config().get("pool_size")
            p = rates[layer.name] * (size[0] - 1) // 2
            pads[before.name] = ((p, p), (p, p))
            padded.add(layer.name)

    def clone_layer(layer):
        if isinstance(layer, keras.Sequential):  # built on call, so it takes the new sizes
            return keras.Sequential([clone_layer(inner) for inner in layer.layers], name=layer.name)
        config = layer.get_config()
        if layer.name in rates:
            if layer.name in stride1:
                config["strides"] = (1, 1)
                if config.get("padding") == "valid" and layer.name not in padded:
                    config["padding"] = "same"
            if "dilation_rate" in config and rates[layer.name] > 1:
                config["dilation_rate"] = (rates[layer.name],) * 2
        if layer.name in pads:
            config["padding"] = pads[layer.name]
        return layer.__class__.from_config(config)

    if isinstance(source.input, (list, tuple)):  # keras.applications wraps it in a list
        input_tensor = [input_tensor]
    clone = keras.models.clone_model(
        source, input_tensors=input_tensor, clone_function=clone_layer
    )
    if copy_weights:
        _copy_weights(source, clone, application)
    return clone


def encoder_table(names=None):
    """One row per encoder, as the README's "Encoders" table shows them.

    Every encoder is built with ``weights=None`` on a 64x64 RGB input (one at a
    time; the big ones take seconds and up to ~1.5 GB each).

    Args:
        names: the encoders to describe (default: all, :func:`list_encoders`).

    Returns:
        A list of dicts with ``name``, ``application``, ``parameters`` (every weight
        of the encoder without its classifier, BatchNorm statistics included),
        ``taps`` (``{stride: channels}``), ``output_strides`` and ``image_init``.
    """
    rows = []
    for name in names or list_encoders():
        spec = encoder_spec(name)
        encoder, taps = build_encoder(name, input_shape=(64, 64, 3))
        rows.append(
            {
                "name": name,
                "application": spec.application,
                "parameters": encoder.count_params(),
                "taps": {s: int(t.shape[-1]) for s, t in sorted(taps.items())},
                "output_strides": spec.output_strides,
                "image_init": spec.image_init,
            }
        )
        del encoder, taps
    return rows


def _input_words(spec):
    if spec.mean_std is not None:
        mean, std = (",".join(f"{v:g}" for v in values) for values in spec.mean_std)
        return f"`{spec.image_init}` (exact: `--mean {mean} --std {std}`)"
    if spec.image_init is None:
        return "raw 0-255 (`--mean 0,0,0 --std 1,1,1`)" + (", RGB only" if spec.rgb_only else "")
    return f"`{spec.image_init}`" + (" (BGR weights: first kernel reversed)" if spec.application in pretrained.BGR_APPLICATIONS else "")


def markdown_table(rows=None):
    """The README's encoder table (markdown) from :func:`encoder_table` rows; the README's
    is printed by ``python -c "from kseg.models.backbones import markdown_table; print(markdown_table())"``."""
    rows = encoder_table() if rows is None else rows
    lines = [
        "| encoder | keras.applications | parameters | tap channels at strides 1/2/4/8/16/32 "
        "| output strides | input for ImageNet weights |",
        "|---|---|---:|---|---|---|",
    ]
    for row in rows:
        spec = encoder_spec(row["name"])
        channels = "/".join(str(row["taps"].get(s, "-")) for s in (1, 2, 4, 8, 16, 32))
        strides = ", ".join(str(s) for s in sorted(row["output_strides"]))
        lines.append(
            f"| `{row['name']}` | {row['application']} | {row['parameters'] / 1e6:.2f}M | "
            f"{channels} | {strides} | {_input_words(spec)} |"
        )
    return "\n".join(lines)
