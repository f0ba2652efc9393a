"""MA-Net: multi-scale attention net (Fan et al., IEEE Access 2020) over any encoder."""

import keras
from keras import layers

from kseg.models import _checks as C
from kseg.models import _decoders as D
from kseg.models import layers as L
from kseg.models.registry import register_model

MODEL = "manet"
_DIVISOR, _MIN_SIZE = D.size_rule(MODEL)


def position_attention_block(x, pab_filters, name):
    """Position-wise Attention Block: 1x1 convs give ``pab_filters``-channel queries and keys,
    a 3x3 conv the values (``C`` channels); every pixel gathers the values of all pixels
    weighted by ``softmax(q k^T)`` (:class:`kseg.models.layers.PositionAttention`); the result
    is added to ``x`` and passed through a 3x3 conv (all convs with bias, no BN)."""
    channels = x.shape[-1]
    q = layers.Conv2D(pab_filters, 1, name=f"{name}_query")(x)
    k = layers.Conv2D(pab_filters, 1, name=f"{name}_key")(x)
    v = layers.Conv2D(channels, 3, padding="same", name=f"{name}_value")(x)
    y = L.PositionAttention(name=f"{name}_attention")([q, k, v])
    y = layers.Add(name=f"{name}_add")([x, y])
    return layers.Conv2D(channels, 3, padding="same", name=f"{name}_out")(y)


def _channel_gate(x, channels, reduced, name):
    """Squeeze-and-excitation weights: global average, 1x1 conv to ``reduced`` + ReLU, 1x1
    conv back to ``channels`` + sigmoid (convs with bias)."""
    g = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_gap")(x)
    g = layers.Conv2D(reduced, 1, activation="relu", name=f"{name}_squeeze")(g)
    return layers.Conv2D(channels, 1, activation="sigmoid", name=f"{name}_excite")(g)


def fusion_attention_block(x, skip, filters, name, reduction=16):
    """Multi-scale Fusion Attention Block: the deeper map ``x`` goes through a 3x3 and a 1x1
    conv-BN-ReLU (to the skip's ``c`` channels) and x2 nearest upsampling (to the skip's
    size); channel weights from both maps (a squeeze-and-excitation gate each, reduced to
    ``max(1, c // reduction)``, summed) multiply it; it is concatenated with the skip and
    two 3x3 conv-BN-ReLU (``filters``) follow."""
    c = skip.shape[-1]
    x = L.conv_bn_act(x, x.shape[-1], 3, name=f"{name}_high1")
    x = L.conv_bn_act(x, c, 1, name=f"{name}_high2")
    x = L.ResizeLike(interpolation="nearest", name=f"{name}_up")([x, skip])
    reduced = max(1, c // reduction)
    gate = layers.Add(name=f"{name}_gate")([
        _channel_gate(x, c, reduced, f"{name}_gate_high"), _channel_gate(skip, c, reduced, f"{name}_gate_low")])
    x = layers.Multiply(name=f"{name}_attend")([x, gate])
    x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return L.double_conv(x, filters, name)


def manet_decoder(taps, inputs, *, decoder_filters=(256, 128, 64, 32, 16), pab_filters=64, reduction=16,
                  name="manet"):
    """MA-Net's decoder on ``taps``: the PAB on the deepest tap, then one block per stride 16,
    8, 4, 2, 1 (``decoder_filters`` deepest first): an MFAB with the encoder's tap of that
    stride where there is one (strides 2-16), else x2 nearest upsampling and two 3x3
    conv-BN-ReLU. Returns ``decoder_filters[-1]`` channels at about the input size. Layers
    are named ``{name}_pab_*`` and ``{name}_dec{stride}_*``."""
    D.require_taps(MODEL, taps, (4, 8, 16, 32))
    x = position_attention_block(taps[32], pab_filters, f"{name}_pab")
    for stride, filters in zip((16, 8, 4, 2, 1), decoder_filters):
        prefix = f"{name}_dec{stride}"
        skip = taps.get(stride) if stride > 1 else None
        if skip is not None:
            x = fusion_attention_block(x, skip, filters, prefix, reduction)
        else:
            x = layers.UpSampling2D(2, interpolation="nearest", name=f"{prefix}_up")(x)
            x = L.double_conv(x, filters, prefix)
    return x


@register_model(MODEL, divisor=_DIVISOR, min_size=_MIN_SIZE, test_size=(64, 64),
                test_kwargs={"encoder": "mobilenetv3small", "decoder_filters": (16, 8, 8, 8, 8), "pab_filters": 8})
def manet(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    encoder="resnet50",
    encoder_weights=None,
    decoder_filters=(256, 128, 64, 32, 16),
    pab_filters=64,
    reduction=16,
    activation="softmax",
    name="manet",
):
    """MA-Net: a position-wise attention block on the deepest feature, fusion attention in the decoder.

    Reference: T. Fan, G. Wang, Y. Li, H. Wang, "MA-Net: A Multi-Scale Attention Network
    for Liver and Tumor Segmentation", IEEE Access 8 (2020), doi:10.1109/ACCESS.2020.3025372.

    The deepest encoder feature goes through the Position-wise Attention Block
    (:func:`position_attention_block`: spatial self-attention, added, 3x3 conv). Five
    decoder blocks (256, 128, 64, 32, 16 channels) bring it to the input resolution; the
    four with an encoder feature of their stride (16, 8, 4, 2) are Multi-scale Fusion
    Attention Blocks (:func:`fusion_attention_block`), the last a plain upsampling block. A
    3x3 conv gives the class scores (:func:`manet_decoder`).

    Differences from the paper:
        - The encoder is a ``keras.applications`` ImageNet network (ResNet-50 by default;
          the paper's is a ResNet-34-style encoder) and the layout and widths are those of
          segmentation_models.pytorch (SMP), which the paper's authors' code resembles.
        - An encoder without a stride-2 feature gets a plain upsampling block there.

    Differences from SMP's ``MAnet``: the PAB's softmax is taken over the key positions of
    each query pixel and the attended values are reshaped back pixel for pixel; SMP takes
    the softmax over all ``N x N`` energies of an image at once and reshapes the
    ``(N, C)`` result to ``(C, H, W)`` without a transpose. Parameters are the same
    (tests/models/test_decoders.py derives the decoder's count from SMP's layer list).
    Upsampling resizes to the skip's size, so odd input sizes work. Whole model with
    ResNet-50: Keras' ResNet50 has 79,680 parameters more than torchvision's (conv biases,
    BN moving statistics).

    Args:
        n_classes: number of classes (1 = binary with a sigmoid).
        input_shape: ``(height, width, channels)``; ``None`` sizes allowed, at least the
            encoder's minimum (32).
        encoder: a name from :data:`kseg.models.backbones.ENCODERS`.
        encoder_weights: ``None`` (random), ``"imagenet"`` or a local weights file.
        decoder_filters: widths of the five decoder blocks, deepest first.
        pab_filters: channels of the PAB's queries and keys (64).
        reduction: channel reduction of the MFAB's squeeze-and-excitation gates (16).
        activation: ``"softmax"`` (``"sigmoid"`` when ``n_classes == 1``), ``"sigmoid"`` or
            ``None`` for logits.
        name: model name and prefix of the decoder's layer names.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> model = manet(n_classes=3, input_shape=(256, 256, 3))
        >>> model.output_shape
        (None, 256, 256, 3)
    """
    D.check_common(MODEL, encoder)
    decoder_filters = C.positive_ints(MODEL, "decoder_filters", decoder_filters, 5,
                                      " (the widths at strides 16, 8, 4, 2, 1)")
    C.positive_int(MODEL, "pab_filters", pab_filters, " (64 in SMP)")
    C.positive_int(MODEL, "reduction", reduction, " (16 in SMP)")
    inputs = keras.Input(tuple(input_shape), name=f"{name}_input")
    taps = D.encoder_taps(MODEL, inputs, encoder, encoder_weights)
    x = manet_decoder(taps, inputs, decoder_filters=decoder_filters, pab_filters=pab_filters,
                      reduction=reduction, name=name)
    outputs = D.head(x, inputs, n_classes, activation, name, kernel_size=3)
    return keras.Model(inputs, outputs, name=name)
