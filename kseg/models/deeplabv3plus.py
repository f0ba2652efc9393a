"""DeepLabV3+ (Chen et al., ECCV 2018) on ``keras.applications`` backbones."""

import keras
from keras import layers

from kseg.models import _checks as C
from kseg.models import layers as L
from kseg.models._context_blocks import aspp
from kseg.models.backbones import build_encoder
from kseg.models.registry import register_model

BACKBONES = ("resnet50", "mobilenetv2", "xception")


@register_model(
    "deeplabv3plus",
    min_size=32,
    test_size=(64, 64),
    test_kwargs={"filters": 32, "low_level_filters": 8},
)
def deeplabv3plus(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    backbone="resnet50",
    encoder_weights=None,
    filters=256,
    low_level_filters=48,
    atrous_rates=(6, 12, 18),
    dropout=0.1,
    name="deeplabv3plus",
):
    """DeepLabV3+: ASPP on an output-stride-16 backbone plus a decoder with low-level features.

    Chen, Zhu, Papandreou, Schroff & Adam, "Encoder-Decoder with Atrous
    Separable Convolution for Semantic Image Segmentation", ECCV 2018.

    Encoder: a ``keras.applications`` backbone at output stride 16 - its last
    downsampling is removed and the convolutions after it are dilated by 2
    (atrous convolution), keeping the ``keras.applications`` layer names so
    ImageNet weights apply unchanged. ResNet50: ``conv5_block1`` has stride 1
    and the 3x3 convolutions of stage 5 dilation 2; MobileNetV2: ``block_13``
    has stride 1 and blocks 14-16 dilation 2; Xception: ``block13``'s pooling
    and shortcut have stride 1 and the exit-flow separable convolutions
    dilation 2. ASPP (see :func:`kseg.models._context_blocks.aspp`): 1x1 conv, 3x3 convs with rates 6, 12,
    18, image pooling, 256 filters each with BN-ReLU, concatenation, 1x1
    projection, dropout 0.1. Decoder: the stride-4 low-level feature
    (``conv2_block3_out`` / ``block_3_expand_relu`` / ``block3_sepconv2_bn``)
    reduced to 48 channels by a 1x1 conv-BN-ReLU, the ASPP output bilinearly
    upsampled to its size (x4) and concatenated, two 3x3 conv-BN-ReLU with 256
    filters, a linear 1x1 classifier and a bilinear upsampling of the class
    scores to the input size.

    Differences from the paper:
        - Backbones are ResNet50, MobileNetV2 and the original Xception from
          ``keras.applications`` instead of ResNet-101 and the modified
          (aligned) Xception-65; the ASPP and decoder use standard
          convolutions (the paper's ResNet-101 setting) rather than the
          depthwise-separable ones of its Xception-65 setting.
        - Only output stride 16 (the paper also evaluates at 8).

    Args:
        n_classes: number of classes (1 = binary with a sigmoid).
        input_shape: ``(height, width, channels)``; ``None`` sizes allowed, at least 32.
        activation: ``"softmax"`` (``"sigmoid"`` when ``n_classes == 1``),
            ``"sigmoid"`` or ``None`` for logits.
        backbone: ``"resnet50"``, ``"mobilenetv2"`` or ``"xception"``.
        encoder_weights: ``None`` (random) or ``"imagenet"`` or a local weights file
            (other channel counts adapt the first kernel: :mod:`kseg.models.pretrained`).
        filters: width of the ASPP branches and the decoder convolutions (256).
        low_level_filters: width of the low-level feature reduction (48).
        atrous_rates: dilation rates of the ASPP 3x3 branches.
        dropout: dropout after the ASPP projection.
        name: model name and prefix of the head's layer names.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> model = deeplabv3plus(n_classes=21, input_shape=(512, 512, 3))
        >>> model.output_shape
        (None, 512, 512, 21)
    """
    C.known_name("deeplabv3plus", "backbone", backbone, BACKBONES)
    C.positive_int("deeplabv3plus", "filters", filters, " (256 in the paper)")
    C.positive_int("deeplabv3plus", "low_level_filters", low_level_filters, " (48 in the paper)")
    C.positive_ints("deeplabv3plus", "atrous_rates", atrous_rates, hint=" (paper: 6, 12, 18)")
    C.rate("deeplabv3plus", "dropout", dropout)
    inputs = keras.Input(tuple(input_shape), name=f"{name}_input")
    _, taps = build_encoder(backbone, inputs, weights=encoder_weights, output_stride=16)

    x = aspp(taps[16], filters, atrous_rates, dropout, f"{name}_aspp")
    low = L.conv_bn_act(taps[4], low_level_filters, 1, name=f"{name}_low_level")
    x = L.ResizeLike(name=f"{name}_aspp_up")([x, low])
    x = layers.Concatenate(name=f"{name}_decoder_concat")([x, low])
    x = L.conv_bn_act(x, filters, 3, name=f"{name}_decoder_conv1")
    x = L.conv_bn_act(x, filters, 3, name=f"{name}_decoder_conv2")
    x = layers.Conv2D(n_classes, 1, name=f"{name}_logits")(x)
    x = L.ResizeLike(name=f"{name}_logits_up")([x, inputs])
    outputs = L.output_activation(x, n_classes, name, activation=activation)
    return keras.Model(inputs, outputs, name=name)
