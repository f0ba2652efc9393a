"""UNet with an Xception encoder and residual decoder blocks (``unet_xception_resnetblock``)."""

import keras
from keras import layers

from kseg.models import _checks as C
from kseg.models import layers as L
from kseg.models.backbones import build_encoder
from kseg.models.registry import register_model

LEAKY_SLOPE = 0.1


def _leaky(x, name):
    return layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=name)(x)


def residual_block(x, filters, name):
    """Pre-activation residual block of the Kaggle model.

    ``LeakyReLU -> BN -> conv3x3-BN-LeakyReLU -> conv3x3-BN`` added to a
    BatchNorm of the block input; ``x`` must already have ``filters`` channels.
    """
    shortcut = L.bn(x, f"{name}_shortcut_bn")
    y = _leaky(x, f"{name}_pre_act")
    y = L.bn(y, f"{name}_pre_bn")
    y = L.conv_bn_act(y, filters, 3, name=f"{name}_conv1", activation=None)
    y = _leaky(y, f"{name}_conv1_act")
    y = L.conv_bn_act(y, filters, 3, name=f"{name}_conv2", activation=None)
    return layers.Add(name=f"{name}_add")([y, shortcut])


def _stage(x, filters, dropout, name):
    """Dropout, 3x3 conv, two residual blocks, LeakyReLU: one decoder level."""
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv")(x)
    x = residual_block(x, filters, f"{name}_res1")
    x = residual_block(x, filters, f"{name}_res2")
    return _leaky(x, f"{name}_act")


@register_model(
    "unet_xception_resnetblock",
    min_size=32,
    test_size=(64, 64),
    test_kwargs={"start_filters": 4},
)
def unet_xception_resnetblock(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    encoder_weights=None,
    start_filters=16,
    dropout=0.1,
    name="unet_xception_resnetblock",
):
    """UNet with an Xception encoder and ResNet-style residual blocks in the decoder.

    This is the "U-Net with Xception backbone and residual blocks" of the Kaggle
    TGS Salt Identification (2018) and SIIM-ACR Pneumothorax (2019) public
    kernels, which the old kseg ``unet_xception_resnetblock`` reproduced: it
    combines Xception (Chollet, "Xception: Deep Learning with Depthwise Separable
    Convolutions", CVPR 2017) as encoder, the UNet layout (Ronneberger et al.,
    MICCAI 2015) and pre-activation residual blocks (He et al., "Identity
    Mappings in Deep Residual Networks", ECCV 2016) in the decoder.

    Encoder: ``keras.applications`` Xception up to its middle flow; skips by
    layer name: ``block2_sepconv2_bn`` (~1/2), ``block3_sepconv2_bn`` (~1/4),
    ``block4_sepconv2_bn`` (~1/8), ``block13_sepconv2_bn`` (1/16, after a
    LeakyReLU). Bottleneck: 2x2 max pooling (1/32), dropout, 3x3 conv with
    ``32 * start_filters`` filters, two residual blocks. Decoder: four levels of
    3x3 stride-2 transposed conv (``16, 8, 4, 2 x start_filters`` filters),
    concatenation with the skip, dropout, 3x3 conv and two residual blocks, then
    a fifth level without skip at full resolution (``start_filters``). Residual
    block: ``LeakyReLU(0.1) -> BN -> conv-BN-LeakyReLU -> conv-BN``, plus a
    BatchNorm of the block input. A linear 1x1 classifier gives the scores.

    Differences from the paper (the Kaggle kernel):
        - Xception's unpadded entry-flow convolutions make its feature maps a
          few pixels smaller than input/stride; the kernel zero-padded them for
          one input size, here the decoder tensor is resized to its skip
          (bilinear) and the last level to the input, so any input size from 32
          works and the output always has the input size.
        - Skips are taken by layer name instead of by layer index.
        - The old kseg version ended with a 3x3 conv and a BatchNorm on the
          logits; the kernel's (and kseg's) linear 1x1 classifier is used.

    Args:
        n_classes: number of classes (1 = binary with a sigmoid).
        input_shape: ``(height, width, channels)``; ``None`` sizes allowed, at least 32.
        activation: ``"softmax"`` (``"sigmoid"`` when ``n_classes == 1``),
            ``"sigmoid"`` or ``None`` for logits.
        encoder_weights: ``None`` (random) or ``"imagenet"`` or a local weights file
            (inputs preprocessed like ``--image_init sub_and_divide``; other channel counts adapt the first kernel: :mod:`kseg.models.pretrained`).
        start_filters: decoder width unit (the kernel's ``start_neurons``, 16).
        dropout: dropout rate of the decoder levels (halved before the classifier).
        name: model name and prefix of the decoder's layer names.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> model = unet_xception_resnetblock(n_classes=1, input_shape=(128, 128, 3))
        >>> model.output_shape
        (None, 128, 128, 1)
    """
    C.positive_int("unet_xception_resnetblock", "start_filters", start_filters, " (16 in the kernel)")
    C.rate("unet_xception_resnetblock", "dropout", dropout)
    inputs = keras.Input(tuple(input_shape), name=f"{name}_input")
    _, taps = build_encoder("xception", inputs, weights=encoder_weights)
    f = start_filters

    skip16 = _leaky(taps[16], f"{name}_enc16_act")
    x = layers.MaxPooling2D(2, name=f"{name}_bottleneck_pool")(skip16)
    x = _stage(x, 32 * f, dropout, f"{name}_bottleneck")

    levels = ((16, skip16), (8, taps[8]), (4, taps[4]), (2, taps[2]), (1, inputs))
    for stride, skip in levels:
        filters = stride * f
        prefix = f"{name}_dec{stride}"
        x = layers.Conv2DTranspose(
            filters, 3, strides=2, padding="same", name=f"{prefix}_upconv"
        )(x)
        x = L.ResizeLike(name=f"{prefix}_align")([x, skip])
        if stride > 1:
            x = layers.Concatenate(name=f"{prefix}_concat")([x, skip])
        x = _stage(x, filters, dropout, prefix)

    if dropout:
        x = layers.Dropout(dropout / 2, name=f"{name}_head_dropout")(x)
    outputs = L.classifier(x, n_classes, name, activation=activation)
    return keras.Model(inputs, outputs, name=name)
