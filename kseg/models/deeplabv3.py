"""DeepLabV3 (Chen et al. 2017): a dilated encoder and ASPP with image pooling, no decoder."""

import keras

from kseg.models import _checks as C
from kseg.models import _decoders as D
from kseg.models import layers as L
from kseg.models._context_blocks import PAPER_RATES, aspp, atrous_rates_at
from kseg.models.registry import register_model

MODEL = "deeplabv3"
_DIVISOR, _MIN_SIZE = D.size_rule(MODEL)


def deeplabv3_decoder(taps, inputs, *, filters=256, atrous_rates=(6, 12, 18), dropout=0.5, head_conv=False,
                      name="deeplabv3"):
    """DeepLabV3's head on the deepest tap: ASPP (:func:`kseg.models._context_blocks.aspp`:
    1x1 conv, one dilated 3x3 conv per rate, image pooling, ``filters`` channels each with BN
    and ReLU, concatenated, 1x1 projection, dropout) and, with ``head_conv``, one more 3x3
    conv-BN-ReLU (SMP, torchvision). Returns ``filters`` channels at the encoder's output
    stride."""
    D.require_taps(MODEL, taps, (32,))
    x = aspp(taps[32], filters, atrous_rates, dropout, f"{name}_aspp")
    if head_conv:
        x = L.conv_bn_act(x, filters, 3, name=f"{name}_head")
    return x


@register_model(MODEL, divisor=_DIVISOR, min_size=_MIN_SIZE, test_size=(64, 64),
                test_kwargs={"encoder": "mobilenetv2", "filters": 16, "output_stride": 32, "dropout": 0.0})
def deeplabv3(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    encoder="resnet50",
    encoder_weights=None,
    output_stride=16,
    filters=256,
    atrous_rates=PAPER_RATES,
    dropout=0.5,
    head_conv=False,
    activation="softmax",
    name="deeplabv3",
):
    """DeepLabV3: atrous spatial pyramid pooling on a dilated encoder, bilinear upsampling.

    Reference: L.-C. Chen, G. Papandreou, F. Schroff, H. Adam, "Rethinking Atrous Convolution
    for Semantic Image Segmentation", arXiv:1706.05587 (2017), Sec. 3.3.

    The encoder runs at output stride 16: its last downsampling is removed and the
    convolutions after it dilated by 2 (:func:`kseg.models.backbones.build_encoder`). ASPP
    on its deepest feature: a 1x1 conv, three 3x3 convs with rates 6, 12, 18 and image-level
    pooling (global average, 1x1 conv, bilinear back), 256 channels each with BN and ReLU,
    concatenated and projected by a 1x1 conv-BN-ReLU (256); a 1x1 conv gives the class
    scores, bilinearly upsampled to the input size. No decoder (that is DeepLabV3+,
    :func:`kseg.models.deeplabv3plus`, which shares the ASPP).

    Differences from the paper:
        - The encoder is a ``keras.applications`` ImageNet network (ResNet-50 by default; the
          paper's best models use ResNet-101 with multi-grid rates (1, 2, 4) in block 4,
          which ``keras.applications`` networks do not have).
        - Dropout 0.5 after the ASPP projection (segmentation_models.pytorch (SMP) and
          torchvision; the paper does not mention dropout; ``dropout=0`` removes it).
        - ``output_stride=8`` (the paper's evaluation setting, with rates doubled to 12, 24,
          36) is available only where the encoder's dilation plan offers it; 32 works for every
          encoder (no dilation; vgg16 has no other).

    Differences from SMP's ``DeepLabV3``: SMP adds a 3x3 conv-BN-ReLU after the ASPP and runs
    at output stride 8 with rates 12, 24, 36 by default; ``head_conv=True`` gives SMP's layout
    and its decoder parameter count (tests/models/test_decoders.py). Whole model with
    ResNet-50: Keras' ResNet50 has 79,680 parameters more than torchvision's (conv biases,
    BN moving statistics).

    Args:
        n_classes: number of classes (1 = binary with a sigmoid).
        input_shape: ``(height, width, channels)``; ``None`` sizes allowed, at least the
            encoder's minimum (32).
        encoder: a name from :data:`kseg.models.backbones.ENCODERS`.
        encoder_weights: ``None`` (random), ``"imagenet"`` or a local weights file.
        output_stride: 16 (paper, training), 8 (where the encoder offers it) or 32.
        filters: channels of the ASPP branches (256).
        atrous_rates: dilation rates of the ASPP's 3x3 convs (6, 12, 18 at output stride 16;
            the default becomes 12, 24, 36 at output stride 8).
        dropout: dropout after the ASPP projection.
        head_conv: one more 3x3 conv-BN-ReLU after the ASPP (SMP and torchvision).
        activation: ``"softmax"`` (``"sigmoid"`` when ``n_classes == 1``), ``"sigmoid"`` or
            ``None`` for logits.
        name: model name and prefix of the head's layer names.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> model = deeplabv3(n_classes=21, input_shape=(512, 512, 3))
        >>> model.output_shape
        (None, 512, 512, 21)
    """
    D.check_common(MODEL, encoder, dropout)
    C.one_of(MODEL, "output_stride", output_stride, (8, 16, 32))
    C.positive_int(MODEL, "filters", filters, " (256 in the paper)")
    atrous_rates = C.positive_ints(MODEL, "atrous_rates", atrous_rates, hint=" (paper: 6, 12, 18)")
    C.flag(MODEL, "head_conv", head_conv)
    inputs = keras.Input(tuple(input_shape), name=f"{name}_input")
    taps = D.encoder_taps(MODEL, inputs, encoder, encoder_weights, output_stride)
    x = deeplabv3_decoder(taps, inputs, filters=filters, atrous_rates=atrous_rates_at(atrous_rates, output_stride),
                          dropout=dropout,
                          head_conv=bool(head_conv), name=name)
    outputs = D.head(x, inputs, n_classes, activation, name)
    return keras.Model(inputs, outputs, name=name)
