"""DeepLabV2: atrous convolution and ASPP (Chen et al., TPAMI 2017)."""

import keras

from kseg.models import _checks as C
from kseg.models import layers as L
from kseg.models import pretrained as P
from kseg.models._context_blocks import aspp_v2
from kseg.models.registry import register_model
from kseg.models.resnet import RESNET_BLOCKS, dilated_resnet
from kseg.models.vgg import dilated_vgg16

DEEPLAB_V2_BACKBONES = ("vgg16", "resnet101")


@register_model(
    "deeplab_v2",
    divisor=8,
    min_size=32,
    test_size=(64, 64),
    test_kwargs={"width_multiplier": 0.0625},
)
def deeplab_v2(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    backbone="vgg16",
    rates=(6, 12, 18, 24),
    encoder_weights=None,
    width_multiplier=1.0,
    name="deeplab_v2",
):
    """DeepLabV2: a dilated backbone with ASPP branches whose class scores are summed.

    Reference:
        L.-C. Chen, G. Papandreou, I. Kokkinos, K. Murphy, A. L. Yuille, "DeepLab:
        Semantic Image Segmentation with Deep Convolutional Nets, Atrous Convolution,
        and Fully Connected CRFs", TPAMI 2017, https://arxiv.org/abs/1606.00915

    ``backbone="vgg16"`` (default): VGG16 with pool4 and pool5 at stride 1 and
    dilation 2 in conv5 (output stride 8), followed by "ASPP-L": for each rate
    6, 12, 18, 24 a branch fc6 (3x3, dilation r, 1024, ReLU, dropout 0.5) -> fc7
    (1x1, 1024, ReLU, dropout 0.5) -> fc8 (1x1 class scores).
    ``backbone="resnet101"`` (the paper's best model): a dilated ResNet-101 (output
    stride 8: dilation 2 in stage 3 and 4 in stage 4) and one 3x3 conv with
    dilation r to the class scores per rate. In both cases the four branches'
    class scores are added (linear, no BN or ReLU) and bilinearly resized to the
    input size before the output activation.

    ImageNet start (the paper's): ``encoder_weights="imagenet"`` (or the path of a
    ``keras.applications.VGG16`` / ``ResNet101`` weights file, ``include_top=False``)
    loads keras' ImageNet network into the backbone by a checked layer mapping
    (:mod:`kseg.models.pretrained`: every tensor assigned once; VGG16's
    ``block{s}_conv{i}`` onto ``{name}_vgg16_conv{s}_{i}``; for ResNet-101 conv
    biases folded into the BN moving means and BN epsilon 1.001e-5; the first
    kernel turned from BGR to RGB). It needs ``width_multiplier=1.0``. With
    ``C != 3`` input channels the first kernel is adapted
    (:func:`kseg.models.pretrained.adapt_input_kernel`: ``C = 1`` sums the RGB
    kernels, ``C > 3`` cycles them scaled by ``3 / C``).

    Differences from the paper:
        * The paper upsamples the stride-8 scores and refines them with a dense CRF
          (a post-processing step); there is no CRF here.
        * The paper's multi-scale input fusion (MSC: max over scores at scales 1,
          0.75, 0.5) is not built in; ``rates`` is exposed instead.
        * No MS-COCO initialisation; ``encoder_weights=None`` (the default) trains
          from scratch (VGG16 and the ASPP-L hidden layers He-normal). With
          ImageNet weights the VGG16 branches' fc6/fc7 still start random: the
          paper decimates VGG16's fc6/fc7 (7x7x4096, 4096) to 3x3x1024 and 1024,
          which needs the 528 MB classifier file.
        * ResNet-101 strides on the first 1x1 conv (as the Caffe model), starts
          each bottleneck's last BN at gamma = 0 (zero-init residual, replaced by
          loaded weights), uses kseg's BN (Keras momentum 0.9) and trains its BN
          (the paper froze BN statistics).
        * VGG16 is the default, as in the project this replaces; the paper's
          headline results use ``backbone="resnet101"``.

    Args:
        n_classes: number of classes (1 = binary with a sigmoid output).
        input_shape: ``(height, width, channels)``; height and width may be ``None``
            and must otherwise be multiples of 8.
        activation: ``"softmax"`` (default), ``"sigmoid"`` or ``None`` for logits.
        backbone: ``"vgg16"`` or ``"resnet101"``.
        rates: the atrous rates of the ASPP branches.
        encoder_weights: ``None`` (random), ``"imagenet"`` or a ``keras.applications``
            weights file of ``backbone`` (VGG16 or ResNet101).
        width_multiplier: scales every channel count except the class scores
            (for tiny test models).
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> model = deeplab_v2(n_classes=21, input_shape=(320, 320, 3))
        >>> big = deeplab_v2(21, (320, 320, 3), backbone="resnet101", activation=None)
        >>> paper = deeplab_v2(21, (320, 320, 3), encoder_weights="imagenet")
    """
    C.positive_number("deeplab_v2", "width_multiplier", width_multiplier, " (1.0 = paper)")
    C.known_name("deeplab_v2", "backbone", backbone, DEEPLAB_V2_BACKBONES)
    C.positive_ints("deeplab_v2", "rates", rates, hint=" (paper: 6, 12, 18, 24)")
    P.check_start("deeplab_v2", encoder_weights, width_multiplier)
    source = None
    if encoder_weights is not None:  # read before building: a bad value fails fast
        if backbone == "vgg16":
            table = P.vgg16_table(f"{name}_vgg16")
            source = P.read_source("deeplab_v2", "VGG16", encoder_weights, table)
        else:
            source = P.read_resnet("deeplab_v2", backbone, encoder_weights, f"{name}_resnet101")
    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    if backbone == "vgg16":
        x = dilated_vgg16(inputs, f"{name}_vgg16", width_multiplier)
        hidden = L.scaled(1024, width_multiplier)
    else:
        x = dilated_resnet(
            inputs,
            f"{name}_resnet101",
            backbone="resnet101",
            output_stride=8,
            deep_stem=False,
            width_multiplier=width_multiplier,
        )[3]
        hidden = None
    x = aspp_v2(x, n_classes, rates, name=f"{name}_aspp", hidden=hidden)
    x = L.ResizeLike(name=f"{name}_upsample")([x, inputs])
    outputs = L.output_activation(x, n_classes, name, activation)
    model = keras.Model(inputs, outputs, name=name)
    if source is not None and backbone == "vgg16":
        P.load_dilated_vgg16(model, source, f"{name}_vgg16")
    elif source is not None:
        P.load_resnet(model, source, f"{name}_resnet101", RESNET_BLOCKS["resnet101"])
    return model
