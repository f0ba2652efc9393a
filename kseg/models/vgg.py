"""VGG16 (Simonyan & Zisserman, ICLR 2015): the one VGG16 body of the zoo.

:func:`vgg16_body` runs the VGG16 topology -- five stages of 2, 2, 3, 3, 3 3x3
convolutions with 64, 128, 256, 512, 512 filters, each stage ending in a pooling
step -- with pluggable convolution and pooling steps. Every VGG16 in kseg is
built with it:

* :func:`vgg16_encoder` -- the plain network with the layer names and layers of
  ``keras.applications.VGG16`` (conv + bias + ReLU, 2x2 max pooling), so that
  its ImageNet weights load by layer name; it is the ``"vgg16"`` encoder of
  :mod:`kseg.models.backbones` (``vggunet``, ``fcn8``, ``unet(encoder="vgg16")``);
* :func:`dilated_vgg16` -- DeepLabV2's output-stride-8 VGG16 (``deeplab_v2``);
* ``segnet``'s encoder (conv-BN-ReLU, max pooling with indices).

It also owns the pretrained VGG16 weights of ``fcn8`` and ``segnet``
(:func:`vgg16_weights`): keras.applications' ImageNet files, with or without
the classifier, or a local file in either of the two formats Keras writes
(the legacy ``.h5`` layout of those files, or Keras 3's ``.weights.h5``), read
by layer name with ``h5py`` so that no 138M-parameter VGG16 is ever built just
to hold them.

No models are registered here.
"""

import keras
from keras import layers

from kseg.errors import EncoderConfigError, EncoderWeightsError
from kseg.models import layers as L
from kseg.models import pretrained

# (filters, convolutions) of the five VGG16 stages
VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))

# Layer names of keras.applications' VGG16: the 13 convolutions, then the classifier's
# two hidden layers (fc1: Flatten of block5_pool (7, 7, 512) -> 4096, fc2: 4096 -> 4096).
VGG16_CONV_NAMES = tuple(
    f"block{s}_conv{i}" for s, (_, n) in enumerate(VGG16_STAGES, start=1) for i in range(1, n + 1)
)
VGG16_FC_NAMES = ("fc1", "fc2")

# keras.applications' ImageNet files (name, MD5), as keras.applications.VGG16 fetches them.
_VGG16_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
VGG16_IMAGENET_FILES = {
    False: ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc"),
    True: ("vgg16_weights_tf_dim_ordering_tf_kernels.h5", "64373286793e3c8b2b4e3219cbf3544b"),
}


def vgg16_body(x, conv, pool):
    """Apply the VGG16 topology to ``x`` with pluggable steps.

    Args:
        x: input tensor ``(B, H, W, C)``.
        conv: ``conv(x, filters, stage, index) -> tensor``, called for every
            convolution (``stage`` 1..5, ``index`` 1..3, ``filters`` the paper's
            width, which ``conv`` may scale).
        pool: ``pool(x, stage) -> tensor``, called at the end of every stage.

    Returns:
        The output of the last pooling step.
    """
    for stage, (filters, n_convs) in enumerate(VGG16_STAGES, start=1):
        for index in range(1, n_convs + 1):
            x = conv(x, filters, stage, index)
        x = pool(x, stage)
    return x


def vgg16_encoder(input_tensor):
    """VGG16 without its classifier, layer for layer as ``keras.applications.VGG16``.

    Layers ``block{s}_conv{i}`` (3x3, bias, ReLU, Glorot-uniform) and
    ``block{s}_pool`` (2x2 max pooling, stride 2, "valid" padding), so weights
    saved by ``keras.applications.VGG16(include_top=False)`` load by layer name.

    Returns:
        A ``keras.Model`` named ``vgg16`` from the source inputs of
        ``input_tensor`` to the ``block5_pool`` output; its layers are part of
        the caller's graph.
    """

    def conv(x, filters, stage, index):
        return layers.Conv2D(
            filters, 3, padding="same", activation="relu", name=f"block{stage}_conv{index}"
        )(x)

    def pool(x, stage):
        return layers.MaxPooling2D(2, strides=2, name=f"block{stage}_pool")(x)

    x = vgg16_body(input_tensor, conv, pool)
    sources = keras.utils.get_source_inputs(input_tensor)
    return keras.Model(sources[0] if len(sources) == 1 else sources, x, name="vgg16")


def dilated_vgg16(x, name, width_multiplier=1.0):
    """DeepLab's dilated VGG16 (output stride 8) applied to ``x``.

    The 13 VGG16 conv layers (3x3, bias, ReLU, no BN, He-normal initialisation)
    named ``{name}_conv{s}_{i}``;
    each stage ends in a 3x3 max pool with "same" padding, stride 2 after stages
    1-3 and stride 1 after stages 4 and 5 (pool4/pool5), and the stage-5 convs use
    dilation 2 to keep the receptive field the strides would have given.

    Returns:
        The pool5 output: stride 8, 512 channels (times ``width_multiplier``).
    """

    def conv(x, filters, stage, index):
        return layers.Conv2D(
            L.scaled(filters, width_multiplier),
            3,
            padding="same",
            dilation_rate=2 if stage == 5 else 1,
            activation="relu",
            kernel_initializer="he_normal",
            name=f"{name}_conv{stage}_{index}",
        )(x)

    def pool(x, stage):
        return layers.MaxPooling2D(
            3, strides=2 if stage <= 3 else 1, padding="same", name=f"{name}_pool{stage}"
        )(x)

    return vgg16_body(x, conv, pool)


# --------------------------------------------------------------------------------------
# Pretrained weights (fcn8, segnet)


def imagenet_file(include_top):
    """The path of keras.applications' ImageNet VGG16 file (downloaded once into
    ``~/.keras/models/``): with the classifier (fc1/fc2, 528 MB) or without it (58 MB).

    Raises:
        EncoderWeightsError: the file could not be downloaded (the message of
            :mod:`kseg.models.pretrained`, naming the URL).
    """
    fname, md5 = VGG16_IMAGENET_FILES[bool(include_top)]
    try:
        return keras.utils.get_file(fname, _VGG16_URL + fname, cache_subdir="models", file_hash=md5)
    except Exception as e:  # noqa: BLE001 (keras raises a bare Exception for URL failures)
        if pretrained.is_download_error(e):
            raise EncoderWeightsError(pretrained.download_message("VGG16", e)) from None
        raise


def vgg16_weights(model, weights, fc_width=None):
    """Read VGG16 weights for ``model`` (a builder name, for messages) as numpy arrays.

    Args:
        model: the builder's name (``"fcn8"``, ``"segnet"``), used in messages.
        weights: ``"imagenet"`` (keras.applications' file: with the classifier when
            ``fc_width == 4096``, else without) or the path of a VGG16 weights file
            written by Keras with keras.applications' layer names (``block1_conv1`` ...
            ``block5_conv3``, optionally ``fc1``/``fc2``).
        fc_width: the width of the caller's fc6/fc7 (``None``: the caller has none and
            the classifier is not read). A file whose ``fc1``/``fc2`` have another width
            is refused; a file without them gives no fc weights.

    Returns:
        ``{layer name: [kernel, bias]}`` for the 13 convolutions, plus ``"fc1"`` and
        ``"fc2"`` when wanted and present (Dense kernels ``(25088, F)``, ``(F, F)``).

    Raises:
        EncoderWeightsError: the ImageNet file could not be downloaded, or the file is
            not HDF5.
        EncoderConfigError: the file lacks a VGG16 layer or has other shapes.
    """
    path = imagenet_file(fc_width == 4096) if weights == "imagenet" else weights
    want = VGG16_CONV_NAMES + (VGG16_FC_NAMES if fc_width else ())
    shapes, cin = {}, 3
    widths = [f for f, n in VGG16_STAGES for _ in range(n)]
    for name, filters in zip(VGG16_CONV_NAMES, widths):
        shapes[name] = [(3, 3, cin, filters), (filters,)]
        cin = filters
    out = {}
    table = pretrained.read_h5_layers(path, model, only=want)
    if table is None:
        raise EncoderWeightsError(
            f"{model}: could not read the weights file {path} as a Keras HDF5 weights file "
            "with layer names; pass a Keras VGG16 weights file (.h5 or .weights.h5) or "
            "encoder_weights=None"
        )
    has_fc = all(n in table for n in VGG16_FC_NAMES)
    for name in want:
        if name in VGG16_FC_NAMES and not has_fc:
            continue
        if name not in table:
            raise EncoderConfigError(
                f"{model}: weights file {path} has no layer {name!r}; pass a VGG16 weights "
                "file with keras.applications' layer names (block1_conv1 ... block5_conv3)"
            )
        arrays = table[name]
        if name in VGG16_FC_NAMES:
            expected = _fc_shapes(fc_width)[name]
        else:
            expected = shapes[name]
        got = [tuple(a.shape) for a in arrays]
        if got != [tuple(e) for e in expected]:
            if name in VGG16_FC_NAMES and len(got) == 2 and len(got[0]) == 2:
                raise EncoderConfigError(
                    f"{model}: weights file {path} has fc1/fc2 of width {got[0][1]} but "
                    f"fc_filters={fc_width}; pass fc_filters={got[0][1]} or a file without "
                    "the classifier"
                )
            raise EncoderConfigError(
                f"{model}: layer {name!r} of weights file {path} has weights of shapes "
                f"{got}, VGG16's are {[tuple(e) for e in expected]}; pass a VGG16 weights file"
            )
        out[name] = arrays
    return out


def _fc_shapes(width):
    """fc1 takes block5_pool of a 224x224 image flattened (7 * 7 * 512 = 25088 values)."""
    return {"fc1": [(7 * 7 * 512, width), (width,)], "fc2": [(width, width), (width,)]}


def fc_as_conv(fc1, fc2):
    """VGG16's classifier as FCN's fc6 (7x7) and fc7 (1x1) convolution weights.

    ``keras.applications``' VGG16 flattens block5_pool ``(7, 7, 512)`` row-major
    (height, width, channel), so input row ``(h * 7 + w) * 512 + c`` of fc1 is
    the tap ``[h, w, c]`` of a 7x7 kernel: a C-order reshape.

    Args:
        fc1, fc2: ``[kernel, bias]`` of the Dense layers, kernels ``(25088, F)`` and ``(F, F)``.

    Returns:
        ``([kernel (7, 7, 512, F), bias], [kernel (1, 1, F, F), bias])``.
    """
    (k1, b1), (k2, b2) = fc1, fc2
    return (
        [k1.reshape(7, 7, 512, k1.shape[-1]), b1],
        [k2.reshape(1, 1, *k2.shape), b2],
    )


def first_kernel(kernel, channels):
    """block1_conv1's kernel for kseg's RGB input with ``channels`` channels.

    keras.applications' VGG16 was trained on BGR images ("caffe" preprocessing) and
    kseg feeds RGB: :func:`kseg.models.pretrained.rgb_input_kernel` reverses the
    kernel's input channels, then adapts it to ``channels``
    (:func:`kseg.models.pretrained.adapt_input_kernel`).
    """
    return pretrained.rgb_input_kernel(kernel, "VGG16", channels)
