"""PAN: Pyramid Attention Network (Li et al., BMVC 2018) over any encoder."""

import keras
from keras import layers

from kseg.models import _checks as C
from kseg.models import _decoders as D
from kseg.models import layers as L
from kseg.models.registry import register_model

MODEL = "pan"
_DIVISOR, _MIN_SIZE = D.size_rule(MODEL)


def feature_pyramid_attention(x, filters, name):
    """Feature Pyramid Attention on the deepest feature ``x``; returns ``filters`` channels.

    A U-shaped pyramid of one-channel maps: 2x2 max pooling then a 7x7 conv, pooling then
    5x5, pooling then two 3x3 convs (each conv with BN and ReLU); going back up, each level
    is resized to the one above and added to that level's output passed through one more
    conv of the level's kernel (5x5, 7x7); the result, resized to ``x``, multiplies a 1x1
    conv-BN-ReLU of ``x`` pixel-wise, and a global-pooling branch (global average, 1x1
    conv-BN-ReLU, broadcast back) is added. Pooling is "same"-padded, so a deepest feature
    of any size, even 1x1, works. Layers are named ``{name}_*``.
    """
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_gap")(x)
    pooled = L.conv_bn_act(pooled, filters, 1, name=f"{name}_gap_proj")
    pooled = L.ResizeLike(name=f"{name}_gap_up")([pooled, x])
    mid = L.conv_bn_act(x, filters, 1, name=f"{name}_mid")

    d1 = layers.MaxPooling2D(2, padding="same", name=f"{name}_down1_pool")(x)
    d1 = L.conv_bn_act(d1, 1, 7, name=f"{name}_down1")
    d2 = layers.MaxPooling2D(2, padding="same", name=f"{name}_down2_pool")(d1)
    d2 = L.conv_bn_act(d2, 1, 5, name=f"{name}_down2")
    d3 = layers.MaxPooling2D(2, padding="same", name=f"{name}_down3_pool")(d2)
    d3 = L.conv_bn_act(d3, 1, 3, name=f"{name}_down3a")
    d3 = L.conv_bn_act(d3, 1, 3, name=f"{name}_down3b")

    up = L.ResizeLike(name=f"{name}_up3")([d3, d2])
    y = layers.Add(name=f"{name}_add2")([L.conv_bn_act(d2, 1, 5, name=f"{name}_conv2"), up])
    up = L.ResizeLike(name=f"{name}_up2")([y, d1])
    y = layers.Add(name=f"{name}_add1")([L.conv_bn_act(d1, 1, 7, name=f"{name}_conv1"), up])
    y = L.ResizeLike(name=f"{name}_up1")([y, x])
    y = layers.Multiply(name=f"{name}_attend")([mid, y])
    return layers.Add(name=f"{name}_out")([y, pooled])


def global_attention_upsample(low, high, filters, name):
    """Global Attention Upsample: the high-level map ``high`` (``filters`` channels) weights a
    3x3 conv-BN-ReLU of the low-level map channel-wise (global average of ``high``, 1x1 conv,
    BN, sigmoid) and is added to it, resized to ``low``'s size. Layers are named ``{name}_*``."""
    low = L.conv_bn_act(low, filters, 3, name=f"{name}_low")
    weights = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_gap")(high)
    weights = L.conv_bn_act(weights, filters, 1, name=f"{name}_gate", activation="sigmoid")
    low = layers.Multiply(name=f"{name}_attend")([low, weights])
    high = L.ResizeLike(name=f"{name}_up")([high, low])
    return layers.Add(name=f"{name}_add")([high, low])


def pan_decoder(taps, inputs, *, filters=32, name="pan"):
    """PAN's decoder on ``taps``: FPA on the deepest tap (``taps[32]``), then GAU blocks with
    the taps at strides 16, 8 and 4; returns ``filters`` channels at 1/4 of the input."""
    D.require_taps(MODEL, taps, (4, 8, 16, 32))
    x = feature_pyramid_attention(taps[32], filters, f"{name}_fpa")
    for stride in (16, 8, 4):
        x = global_attention_upsample(taps[stride], x, filters, f"{name}_gau{stride}")
    return x


@register_model(MODEL, divisor=_DIVISOR, min_size=_MIN_SIZE, test_size=(64, 64),
                test_kwargs={"encoder": "mobilenetv2", "filters": 8, "output_stride": 32})
def pan(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    encoder="resnet50",
    encoder_weights=None,
    output_stride=16,
    filters=32,
    activation="softmax",
    name="pan",
):
    """PAN: Feature Pyramid Attention on the deepest feature, Global Attention Upsample blocks.

    Reference: H. Li, P. Xiong, J. An, L. Wang, "Pyramid Attention Network for Semantic
    Segmentation", BMVC 2018 (arXiv:1805.10180).

    The encoder runs at output stride 16 (its last stage dilated). Feature Pyramid
    Attention (:func:`feature_pyramid_attention`) turns its deepest feature into a
    ``filters``-channel map; three Global Attention Upsample blocks
    (:func:`global_attention_upsample`) bring in the encoder features of the stages at
    strides 16, 8 and 4; a 3x3 conv gives the class scores at 1/4, resized bilinearly to
    the input.

    Differences from the paper:
        - The encoder is a ``keras.applications`` ImageNet network (ResNet-50 by default;
          the paper's is ResNet-101) and the widths are segmentation_models.pytorch's
          (SMP's): 32 channels in the decoder; the paper does not list them.
        - As in SMP, the GAU's attention is global pooling, 1x1 conv, BN and a sigmoid (the
          paper's figure shows conv-BN-ReLU); the classifier is a 3x3 conv.
        - FPA's max pooling is "same"-padded and its upsampling resizes to the level above,
          so small inputs work (SMP needs 128x128 or more).

    Differences from SMP's ``PAN``: its convs carry a bias in front of every BatchNorm;
    kseg's do not (the BN shift makes it redundant). tests/models/test_decoders.py derives
    the decoder's parameter count from SMP's layer list with that difference written out.
    Whole model with ResNet-50: Keras' ResNet50 has 79,680 parameters more than
    torchvision's (conv biases, BN moving statistics).

    Args:
        n_classes: number of classes (1 = binary with a sigmoid).
        input_shape: ``(height, width, channels)``; ``None`` sizes allowed, at least the
            encoder's minimum (32).
        encoder: a name from :data:`kseg.models.backbones.ENCODERS`.
        encoder_weights: ``None`` (random), ``"imagenet"`` or a local weights file.
        output_stride: 16 (paper and SMP; the encoder's last stage dilated) or 32 (any
            encoder, including those without a dilation plan such as vgg16).
        filters: channels of the decoder (32 in SMP).
        activation: ``"softmax"`` (``"sigmoid"`` when ``n_classes == 1``), ``"sigmoid"`` or
            ``None`` for logits.
        name: model name and prefix of the decoder's layer names.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> model = pan(n_classes=21, input_shape=(512, 512, 3))
        >>> model.output_shape
        (None, 512, 512, 21)
    """
    D.check_common(MODEL, encoder)
    C.one_of(MODEL, "output_stride", output_stride, (16, 32))
    C.positive_int(MODEL, "filters", filters, " (32 in SMP)")
    inputs = keras.Input(tuple(input_shape), name=f"{name}_input")
    taps = D.encoder_taps(MODEL, inputs, encoder, encoder_weights, output_stride)
    x = pan_decoder(taps, inputs, filters=filters, name=name)
    outputs = D.head(x, inputs, n_classes, activation, name, kernel_size=3)
    return keras.Model(inputs, outputs, name=name)
