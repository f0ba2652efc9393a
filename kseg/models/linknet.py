"""LinkNet (Chaurasia & Culurciello, VCIP 2017) over any encoder."""

import keras
from keras import layers

from kseg.models import _checks as C
from kseg.models import _decoders as D
from kseg.models import layers as L
from kseg.models.registry import register_model

MODEL = "linknet"
_DIVISOR, _MIN_SIZE = D.size_rule(MODEL)


def linknet_block(x, filters, name, transpose_kernel=3, skip=None):
    """LinkNet's decoder block: 1x1 conv to ``m/4``, a ``transpose_kernel`` transposed conv
    with stride 2 (``m/4``), 1x1 conv to ``filters``, each with BN and ReLU; then the skip is
    added (after resizing to the skip's size when the two differ by odd sizes)."""
    quarter = max(1, x.shape[-1] // 4)
    x = L.conv_bn_act(x, quarter, 1, name=f"{name}_reduce")
    x = layers.Conv2DTranspose(quarter, transpose_kernel, strides=2, padding="same",
                               kernel_initializer="he_normal", name=f"{name}_upconv")(x)
    x = L.bn(x, f"{name}_upconv_bn")
    x = layers.Activation("relu", name=f"{name}_upconv_act")(x)
    x = L.conv_bn_act(x, filters, 1, name=f"{name}_expand")
    if skip is not None:
        x = L.ResizeLike(name=f"{name}_align")([x, skip])
        x = layers.Add(name=f"{name}_add")([x, skip])
    return x


def linknet_decoder(taps, inputs, *, final_filters=32, transpose_kernel=3, name="linknet"):
    """LinkNet's decoder on ``taps``: one block per halving from the deepest tap to the input
    resolution (strides 16, 8, 4, 2, 1). A block whose stride has an encoder tap (2-16) ends
    with that tap's channels and adds it; the others (stride 1, and stride 2 for encoders
    without a stride-2 feature) have no skip and end with ``final_filters`` channels.
    Returns the map at (about) the input resolution: the head resizes its class scores to
    ``inputs``. Layers are named ``{name}_dec{stride}_*``."""
    D.require_taps(MODEL, taps, (4, 8, 16, 32))
    x = taps[32]
    for stride in (16, 8, 4, 2, 1):
        skip = taps.get(stride) if stride > 1 else None
        filters = skip.shape[-1] if skip is not None else final_filters
        x = linknet_block(x, filters, f"{name}_dec{stride}", transpose_kernel, skip)
    return x


@register_model(MODEL, divisor=_DIVISOR, min_size=_MIN_SIZE, test_size=(64, 64),
                test_kwargs={"encoder": "mobilenetv2", "final_filters": 8})
def linknet(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    encoder="resnet50",
    encoder_weights=None,
    final_filters=32,
    transpose_kernel=3,
    activation="softmax",
    name="linknet",
):
    """LinkNet: a light decoder whose blocks ADD the encoder feature of their resolution.

    Reference: A. Chaurasia, E. Culurciello, "LinkNet: Exploiting Encoder Representations for
    Efficient Semantic Segmentation", VCIP 2017 (arXiv:1707.03718).

    Decoder block (paper Fig. 3): 1x1 conv ``m -> m/4``, 3x3 transposed conv with stride 2
    (``m/4``), 1x1 conv ``m/4 -> n``, each followed by BN and ReLU; ``n`` is the channel
    count of the encoder feature one stride up, which is then added. Blocks run from the
    deepest feature (stride 32) to the input resolution; the last one (no skip) ends with
    32 channels and a 1x1 classifier gives the class scores (:func:`linknet_decoder`).

    Differences from the paper:
        - The encoder is a ``keras.applications`` ImageNet network (ResNet-50 by default; the
          paper's is ResNet-18) and, as in segmentation_models.pytorch (SMP), its stride-2
          feature is a fourth skip (the paper has three).
        - The final block is SMP's (one more decoder block to full resolution, 32 channels,
          then a 1x1 classifier) instead of the paper's 3x3 transposed conv (32), 3x3 conv and
          2x2 transposed conv to the classes.
        - An encoder without a stride-2 feature gets a block without a skip there.
        - Block outputs are resized to their skip's size, so odd input sizes work.

    Differences from SMP's ``Linknet``: SMP's transposed conv is 4x4 (stride 2, padding 1)
    with the 3x3 of the paper replaced; ``transpose_kernel=4`` gives SMP's layout and its
    decoder parameter count (tests/models/test_decoders.py). Whole model with ResNet-50: Keras'
    ResNet50 has 79,680 parameters more than torchvision's (conv biases, BN moving statistics).

    Args:
        n_classes: number of classes (1 = binary with a sigmoid).
        input_shape: ``(height, width, channels)``; ``None`` sizes allowed, at least the
            encoder's minimum (32).
        encoder: a name from :data:`kseg.models.backbones.ENCODERS`.
        encoder_weights: ``None`` (random), ``"imagenet"`` or a local weights file.
        final_filters: channels of the blocks without a skip (the last one: 32 in SMP).
        transpose_kernel: kernel of the transposed convs (3 in the paper, 4 in SMP).
        activation: ``"softmax"`` (``"sigmoid"`` when ``n_classes == 1``), ``"sigmoid"`` or
            ``None`` for logits.
        name: model name and prefix of the decoder's layer names.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> model = linknet(n_classes=2, input_shape=(256, 256, 3), encoder="resnet50")
        >>> model.output_shape
        (None, 256, 256, 2)
    """
    D.check_common(MODEL, encoder)
    C.positive_int(MODEL, "final_filters", final_filters, " (32 in SMP)")
    C.positive_int(MODEL, "transpose_kernel", transpose_kernel, " (3 in the paper, 4 in SMP)")
    inputs = keras.Input(tuple(input_shape), name=f"{name}_input")
    taps = D.encoder_taps(MODEL, inputs, encoder, encoder_weights)
    x = linknet_decoder(taps, inputs, final_filters=final_filters, transpose_kernel=transpose_kernel, name=name)
    outputs = D.head(x, inputs, n_classes, activation, name)
    return keras.Model(inputs, outputs, name=name)
