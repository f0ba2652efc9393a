"""DeepLabV3+ (Chen et al., ECCV 2018) on any encoder of :data:`kseg.models.backbones.ENCODERS`."""

import keras
from keras import layers

from kseg.errors import ModelConfigError
from kseg.models import _checks as C
from kseg.models import _decoders as D
from kseg.models import layers as L
from kseg.models._context_blocks import PAPER_RATES, aspp, atrous_rates_at
from kseg.models.registry import register_model

MODEL = "deeplabv3plus"

DEFAULT_ENCODER = "resnet50"
#: The paper's ASPP rates at output stride 16; doubled at output stride 8 (Sec. 4).


def resolve_encoder(encoder=DEFAULT_ENCODER, backbone=None):
    """The encoder named by ``encoder=`` and its older alias ``backbone=``.

    ``backbone`` (``None``: not given) replaces an ``encoder`` left at its default
    (``"resnet50"``); the two naming different encoders is a one-line
    :class:`ModelConfigError`. Unknown names are an ``UnknownNameError`` listing the encoders.
    """
    if backbone is None:
        return D.encoder_spec_of(MODEL, encoder).name
    C.known_name(MODEL, "backbone", backbone, D.ENCODERS)
    if encoder not in (DEFAULT_ENCODER, backbone):
        raise ModelConfigError(
            f"{MODEL}: backbone={backbone!r} and encoder={encoder!r} name different encoders; backbone is "
            f"the old name of encoder: give only encoder={encoder!r}"
        )
    return backbone


def _min_size(options):
    """The encoder's smallest input (32 for every encoder today)."""
    return D.encoder_spec_of(MODEL, resolve_encoder(options["encoder"], options["backbone"])).min_size


def deeplabv3plus_decoder(taps, inputs, *, filters=256, low_level_filters=48, atrous_rates=PAPER_RATES,
                          dropout=0.1, separable=False, name=MODEL):
    """DeepLabV3+'s ASPP and decoder over the encoder's taps (``taps[32]``: the deepest
    feature, at the output stride; ``taps[4]``: the low-level feature).

    ASPP (:func:`kseg.models._context_blocks.aspp`) on ``taps[32]``; ``taps[4]`` reduced to
    ``low_level_filters`` by a 1x1 conv-BN-ReLU; the ASPP output resized bilinearly to it and
    concatenated; two 3x3 conv-BN-ReLU with ``filters`` channels (atrous separable convs,
    :func:`kseg.models.layers.separable_conv_bn_act`, with ``separable``, which also makes
    the ASPP's 3x3 branches separable). Returns ``filters`` channels at the low-level
    feature's size.
    """
    D.require_taps(MODEL, taps, (4, 32))
    x = aspp(taps[32], filters, atrous_rates, dropout, f"{name}_aspp", separable=separable)
    low = L.conv_bn_act(taps[4], low_level_filters, 1, name=f"{name}_low_level")
    x = L.ResizeLike(name=f"{name}_aspp_up")([x, low])
    x = layers.Concatenate(name=f"{name}_decoder_concat")([x, low])
    conv = L.separable_conv_bn_act if separable else L.conv_bn_act
    x = conv(x, filters, 3, name=f"{name}_decoder_conv1")
    return conv(x, filters, 3, name=f"{name}_decoder_conv2")


@register_model(
    MODEL,
    divisor=1,
    min_size=_min_size,
    test_size=(64, 64),
    test_kwargs={"filters": 32, "low_level_filters": 8},
)
def deeplabv3plus(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    encoder=DEFAULT_ENCODER,
    backbone=None,
    encoder_weights=None,
    output_stride=16,
    filters=256,
    low_level_filters=48,
    atrous_rates=PAPER_RATES,
    dropout=0.1,
    separable=False,
    name=MODEL,
):
    """DeepLabV3+: ASPP on a dilated encoder plus a decoder with low-level features.

    Chen, Zhu, Papandreou, Schroff & Adam, "Encoder-Decoder with Atrous
    Separable Convolution for Semantic Image Segmentation", ECCV 2018.

    Encoder: any ``keras.applications`` encoder of :data:`kseg.models.backbones.ENCODERS`
    with a dilation plan, at output stride 16: its last downsampling is removed and the
    convolutions after it are dilated by 2 (atrous convolution,
    :func:`kseg.models.backbones.build_encoder`), keeping the ``keras.applications``
    layer names so ImageNet weights apply unchanged. ResNet50: ``conv5_block1`` has
    stride 1 and the 3x3 convolutions of stage 5 dilation 2; MobileNetV2: ``block_13``
    has stride 1 and blocks 14-16 dilation 2; Xception: ``block13``'s pooling and
    shortcut have stride 1 and the exit-flow separable convolutions dilation 2.
    ``output_stride=8`` (the paper's evaluation setting) also removes the step before
    (rates 2 and 4) and doubles the default ASPP rates to 12, 24, 36, as the paper does.

    ASPP (see :func:`kseg.models._context_blocks.aspp`): 1x1 conv, 3x3 convs with rates
    6, 12, 18, image pooling, 256 filters each with BN-ReLU, concatenation, 1x1
    projection, dropout 0.1. Decoder: the stride-4 low-level feature
    (``conv2_block3_out`` / ``block_3_expand_relu`` / ``block3_sepconv2_bn``; the
    encoder's stride-4 tap in general) reduced to 48 channels by a 1x1 conv-BN-ReLU, the
    ASPP output bilinearly upsampled to its size (x4 at output stride 16) and
    concatenated, two 3x3 conv-BN-ReLU with 256 filters, a linear 1x1 classifier and a
    bilinear upsampling of the class scores to the input size.

    ``separable=True`` is the paper's Xception-65 setting (Sec. 3.1-3.2): the ASPP's 3x3
    branches and the two decoder 3x3 convs become atrous separable convolutions
    (:func:`kseg.models.layers.separable_conv_bn_act`: depthwise 3x3 (dilated), BN,
    ReLU, pointwise 1x1, BN, ReLU, as in the authors' code). With ResNet-50 at 224x224
    this takes the head from 16.84M to 3.20M parameters (the model from 40.43M to
    26.79M) and the model from 26.16 to 14.09 GFLOP (``kseg.models.profile.count_macs``,
    2 classes).

    Differences from the paper:
        - The encoders are ``keras.applications`` networks (ResNet-50 by default)
          instead of ResNet-101 and the modified (aligned) Xception-65.
        - At ``output_stride=8`` the rates (6, 12, 18) are always read as the default
          and doubled; any other ``atrous_rates`` are used as given.
        - ``output_stride=32`` (no dilation, any encoder) is not in the paper.

    Differences from SMP's ``DeepLabV3Plus`` (segmentation_models.pytorch): SMP adds a
    separable 3x3 conv-BN-ReLU after the ASPP projection, fuses the decoder with ONE
    separable 3x3 conv, and its separable conv has no BN-ReLU between the depthwise and
    the pointwise conv; SMP's default rates are 12, 24, 36 at output stride 16.
    tests/models/test_deeplab_encoders.py writes out both parameter counts.

    Args:
        n_classes: number of classes (1 = binary with a sigmoid).
        input_shape: ``(height, width, channels)``; ``None`` sizes allowed, at least
            the encoder's minimum (32).
        activation: ``"softmax"`` (``"sigmoid"`` when ``n_classes == 1``),
            ``"sigmoid"`` or ``None`` for logits.
        encoder: a name from :data:`kseg.models.backbones.ENCODERS` whose dilation plan
            offers ``output_stride`` (``kseg models`` / the README's encoder table).
        backbone: the former name of ``encoder`` (kept for old configurations);
            ``None`` = not given. Giving both with different encoders is an error.
        encoder_weights: ``None`` (random) or ``"imagenet"`` or a local weights file
            (other channel counts adapt the first kernel: :mod:`kseg.models.pretrained`).
        output_stride: 16 (paper, training), 8 (paper, evaluation; where the encoder
            offers it) or 32 (no dilation; any encoder).
        filters: width of the ASPP branches and the decoder convolutions (256).
        low_level_filters: width of the low-level feature reduction (48).
        atrous_rates: dilation rates of the ASPP 3x3 branches (at output stride 8 the
            default becomes 12, 24, 36).
        dropout: dropout after the ASPP projection.
        separable: atrous separable convolutions in the ASPP and the decoder (the
            paper's Xception setting).
        name: model name and prefix of the head's layer names.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> model = deeplabv3plus(n_classes=21, input_shape=(512, 512, 3))
        >>> model.output_shape
        (None, 512, 512, 21)
        >>> light = deeplabv3plus(21, (512, 512, 3), encoder="mobilenetv2", separable=True)
    """
    encoder = resolve_encoder(encoder, backbone)
    C.one_of(MODEL, "output_stride", output_stride, (8, 16, 32))
    C.positive_int(MODEL, "filters", filters, " (256 in the paper)")
    C.positive_int(MODEL, "low_level_filters", low_level_filters, " (48 in the paper)")
    atrous_rates = C.positive_ints(MODEL, "atrous_rates", atrous_rates, hint=" (paper: 6, 12, 18)")
    C.rate(MODEL, "dropout", dropout)
    C.flag(MODEL, "separable", separable)
    inputs = keras.Input(tuple(input_shape), name=f"{name}_input")
    taps = D.encoder_taps(MODEL, inputs, encoder, encoder_weights, output_stride)
    x = deeplabv3plus_decoder(
        taps, inputs, filters=filters, low_level_filters=low_level_filters,
        atrous_rates=atrous_rates_at(atrous_rates, output_stride), dropout=dropout,
        separable=bool(separable), name=name,
    )
    outputs = D.head(x, inputs, n_classes, activation, name)
    return keras.Model(inputs, outputs, name=name)
