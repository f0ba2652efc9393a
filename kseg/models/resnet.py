"""Dilated ResNet-50/101 built from ``keras.layers`` (DeepLabV2's dilated VGG16 is
:func:`kseg.models.vgg.dilated_vgg16`, on the zoo's one VGG16 body).

Used by PSPNet, ICNet, DeepLabV2 and HRNet. Unlike ``keras.applications`` these are
written out layer by layer so the last stages can trade stride for dilation
("atrous" convolution, Yu & Koltun 2016; Chen et al. 2017) and keep an output
stride of 8 or 16, and so widths can be scaled down for tests.

The bottlenecks are those of the Caffe ResNets of He et al. (2016) that the
DeepLab and PSPNet papers fine-tuned, and of ``keras.applications.ResNet50/101``
(converted from them): the stride sits on the first 1x1 conv, and the 7x7 stem
pads its input by 3 and its max pool by 1 on every side. So ImageNet weights
load into these layers exactly (:func:`kseg.models.pretrained.load_resnet`):
every kernel keeps the role it was trained in. kseg's convolutions have no bias
(BN follows each one); a loaded conv bias is folded into the BN moving mean.

The helpers are functional: they take a tensor and a ``name`` prefix and return
tensors; every layer gets a name derived from the prefix. No models are
registered here.
"""

from keras import layers

from kseg.models import _checks as C
from kseg.models import layers as L

RESNET_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
RESNET_FILTERS = (64, 128, 256, 512)  # bottleneck widths; outputs are 4x these


def residual_conv_bn(x, filters, kernel_size, name):
    """Conv (no bias) + BN whose scale starts at zero: the last layer of a residual
    branch (``{name}_conv``, ``{name}_bn``).

    With gamma = 0 every residual block starts as the identity (Goyal et al. 2017,
    "zero-init residual"). Without it, a deep residual network built from scratch
    doubles the activation variance at every addition while the BN moving
    statistics are still at their initial values, so an untrained model evaluated
    in inference mode outputs saturated scores.
    """
    x = layers.Conv2D(
        filters,
        kernel_size,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    return layers.BatchNormalization(
        momentum=L.BN_MOMENTUM, epsilon=L.BN_EPSILON, gamma_initializer="zeros", name=f"{name}_bn"
    )(x)


def bottleneck(x, filters, name, strides=1, dilation=1, expansion=4):
    """ResNet bottleneck: 1x1 reduce (stride), 3x3 (dilation), 1x1 expand, residual add.

    The stride sits on the first 1x1 conv, as in He et al.'s Caffe ResNets used by
    DeepLab and PSPNet and in ``keras.applications`` (ResNet "v1"; torchvision's
    "v1.5" strides on the 3x3 instead), so ImageNet weights load as trained. A 1x1
    projection with BN (``{name}_proj``) replaces the identity when the stride or
    the channel count changes. The expand BN starts with gamma = 0
    (:func:`residual_conv_bn`). Output has ``filters * expansion`` channels.
    """
    out = filters * expansion
    shortcut = x
    if strides != 1 or x.shape[-1] != out:
        shortcut = L.conv_bn_act(x, out, 1, strides=strides, activation=None, name=f"{name}_proj")
    y = L.conv_bn_act(x, filters, 1, strides=strides, name=f"{name}_reduce")
    y = L.conv_bn_act(y, filters, 3, dilation_rate=dilation, name=f"{name}_conv")
    y = residual_conv_bn(y, out, 1, f"{name}_expand")
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(y)


def resnet_stem(x, name, deep_stem=True, width_multiplier=1.0):
    """ResNet stem, output stride 4.

    ``deep_stem=True`` (PSPNet's ResNet): three 3x3 convs (64 stride 2, 64, 128),
    each followed by BN/ReLU, and a 3x3 stride-2 max pool ("same" padding).
    ``False`` (He et al. 2016, ``keras.applications``): the input padded by 3 on
    every side (``{name}_conv1_pad``), one 7x7 stride-2 conv with 64 filters, BN,
    ReLU, padding by 1 (``{name}_pool_pad``) and a 3x3 stride-2 max pool; the
    symmetric padding puts the windows where the ImageNet weights were trained
    (``padding="same"`` would shift them by one pixel). Output size is
    ``ceil(ceil(H / 2) / 2)`` either way.
    """
    w = width_multiplier
    if deep_stem:
        x = L.conv_bn_act(x, L.scaled(64, w), 3, strides=2, name=f"{name}_conv1")
        x = L.conv_bn_act(x, L.scaled(64, w), 3, name=f"{name}_conv2")
        x = L.conv_bn_act(x, L.scaled(128, w), 3, name=f"{name}_conv3")
        return layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)
    x = layers.ZeroPadding2D(3, name=f"{name}_conv1_pad")(x)
    x = L.conv_bn_act(x, L.scaled(64, w), 7, strides=2, padding="valid", name=f"{name}_conv1")
    # after the ReLU every value is >= 0, so the zero padding changes no maximum
    x = layers.ZeroPadding2D(1, name=f"{name}_pool_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name=f"{name}_pool")(x)


def resnet_stage(x, filters, n_blocks, name, strides=1, dilation=1, first=1):
    """A stage of bottlenecks ``{name}_block{first}`` ... ; only the first may stride.

    ``first > 1`` continues a stage that was started elsewhere (ICNet splits its
    third stage between shared and unshared layers); such blocks never stride.
    """
    for i in range(first, first + n_blocks):
        s = strides if i == 1 else 1
        x = bottleneck(x, filters, f"{name}_block{i}", strides=s, dilation=dilation)
    return x


def dilated_resnet(
    x,
    name,
    backbone="resnet50",
    output_stride=8,
    deep_stem=True,
    width_multiplier=1.0,
):
    """A dilated ResNet-50/101 applied to ``x``.

    Stages 1-4 have 3-4-6-3 (ResNet-50) or 3-4-23-3 (ResNet-101) bottlenecks.
    With ``output_stride=8`` stages 3 and 4 keep stride 1 and use dilation 2 and 4
    (PSPNet, DeepLab); with ``16`` stage 3 strides and stage 4 uses dilation 2.

    Args:
        x: input tensor ``(B, H, W, C)``.
        name: layer-name prefix (``{name}_stem_...``, ``{name}_stage3_block2_...``).
        backbone: ``"resnet50"`` or ``"resnet101"``.
        output_stride: 8 or 16.
        deep_stem: three 3x3 stem convs (PSPNet) instead of one 7x7 (the 7x7 stem
            is the one keras.applications' ImageNet weights have).
        width_multiplier: scales every channel count (1.0 = the paper's).

    Returns:
        The list of the four stage outputs, at strides 4, 8, 8|16, 8|16 with
        256, 512, 1024, 2048 channels (times ``width_multiplier``).
    """
    C.known_name(name, "backbone", backbone, RESNET_BLOCKS)
    C.one_of(name, "output_stride", output_stride, (8, 16))
    blocks = RESNET_BLOCKS[backbone]
    strides = (1, 2, 1, 1) if output_stride == 8 else (1, 2, 2, 1)
    dilations = (1, 1, 2, 4) if output_stride == 8 else (1, 1, 1, 2)
    x = resnet_stem(x, f"{name}_stem", deep_stem, width_multiplier)
    features = []
    for i in range(4):
        x = resnet_stage(
            x,
            L.scaled(RESNET_FILTERS[i], width_multiplier),
            blocks[i],
            f"{name}_stage{i + 1}",
            strides=strides[i],
            dilation=dilations[i],
        )
        features.append(x)
    return features
