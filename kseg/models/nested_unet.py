"""UNet++: the nested U-Net with dense skip pathways (Zhou et al. 2018).

:func:`unet_plus_plus` builds the paper's model (its own encoder, ``encoder=None``) or,
with ``encoder=`` a name of :data:`kseg.models.backbones.ENCODERS`, the nested decoder
:func:`nested_decoder` over that encoder's taps (the layout of segmentation_models.pytorch's
``UnetPlusPlus``), as ``unet(encoder=...)`` does for U-Net.
"""

import math

import keras
from keras import layers

from kseg.errors import ModelConfigError
from kseg.models import _checks as C
from kseg.models import _decoders as D
from kseg.models import _unet_blocks as B
from kseg.models import layers as L
from kseg.models.encoder_unet import DEFAULT_DECODER_FILTERS
from kseg.models.registry import register_model

MODEL = "unet++"
BASE_FILTERS = 32  # the paper's level-0 width
#: the strides of the decoder_filters widths, deepest first
DECODER_STRIDES = (16, 8, 4, 2, 1)


def _divisor(options):
    """Multiples of 16 for the paper's model (4 poolings); an encoder variant resizes
    to its taps and takes any size from the encoder's minimum."""
    return 1 if options["encoder"] is not None else B.DIVISOR


def _min_size(options):
    if options["encoder"] is not None:
        return D.encoder_spec_of(MODEL, options["encoder"]).min_size
    return B.MIN_SIZE


@register_model(
    MODEL,
    divisor=_divisor,
    min_size=_min_size,
    test_size=(32, 32),
    test_kwargs={"base_filters": 8},
)
def unet_plus_plus(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    base_filters=BASE_FILTERS,
    deep_supervision=False,
    use_bn=True,
    encoder=None,
    encoder_weights=None,
    decoder_filters=DEFAULT_DECODER_FILTERS,
    name="unet_plus_plus",
):
    """UNet++: U-Nets of depths 1-4 sharing one encoder, joined by dense skip pathways.

    Reference: Z. Zhou, M. M. Rahman Siddiquee, N. Tajbakhsh, J. Liang, "UNet++: A
    Nested U-Net Architecture for Medical Image Segmentation", DLMIA 2018
    (arXiv:1807.10165).

    The nodes X(i, j) form a grid, i = 0..4 the down-sampling level and
    j = 0..4-i the position along the skip pathway. The backbone nodes are
    X(i, 0) = conv_block(maxpool(X(i-1, 0))) (X(0, 0) on the input) and every
    other node is X(i, j) = conv_block(concat([X(i, 0), ..., X(i, j-1),
    up(X(i+1, j-1))])), 15 conv blocks in all. ``conv_block`` is two 3x3
    conv-BN-ReLU layers with ``base_filters * 2**i`` channels and ``up`` is a 2x2
    stride-2 transposed convolution to the same width (as in the authors' code).
    Heads are 1x1 convolutions on X(0, 1..4) (no BN or ReLU on the logits).

    Layers are named ``{name}_x{i}{j}_*`` (``_upconv``, ``_concat``, ``_conv1``,
    ``_conv2``), ``{name}_pool{i}`` and ``{name}_head{j}_*``.

    With ``encoder=`` (a name of :data:`kseg.models.backbones.ENCODERS`, e.g.
    ``"resnet50"``, ``"mobilenetv2"``, ``"convnext_tiny"``) the backbone column
    X(i, 0) is that ``keras.applications`` encoder's taps at strides 2, 4, 8, 16
    (i = 0..3) and 32 (X(4, 0)), and the grid is the decoder of
    segmentation_models.pytorch's (SMP) ``UnetPlusPlus``: every other node is
    X(i, j) = two 3x3 conv-BN-ReLU on concat([up(X(i+1, j-1)), X(i, j-1), ...,
    X(i, 0)]), ``up`` a nearest-neighbour resize to X(i, 0)'s size (no learned
    weights). The nodes ending a skip pathway, X(3, 1), X(2, 2), X(1, 3) and
    X(0, 4), have the widths ``decoder_filters[0:4]``; the inner ones keep their
    encoder feature's width (64, 256, 512 for ResNet-50's strides 2, 4, 8). A last
    block without skip (``{name}_dec1``, ``decoder_filters[4]`` wide) brings
    X(0, 4) to the input size, and a 3x3 convolution (``{name}_head``) gives the
    class scores. See :func:`nested_decoder` for encoders with other taps.

    Differences from the paper:
        - BN after every conv (``use_bn=False`` for the paper's plain conv-ReLU
          blocks; with ``use_bn=False``, one input channel and ``n_classes=1`` the
          model has the 9,041,601 parameters of the authors' UNet++);
        - no dropout / L2 regularisation inside the blocks (training choices of the
          authors' code, not part of the architecture);
        - with deep supervision the four head outputs are returned as a list; the
          paper's "accurate mode" (averaging them) or "fast mode" (picking one,
          i.e. pruning) is left to the caller.

    Differences of the encoder variant from SMP's ``UnetPlusPlus``:
        - each up step resizes to the skip's size instead of a fixed x2, so odd
          input sizes and Xception's few-pixels-smaller taps work;
        - Keras' ResNet v1 convolutions have biases (SMP's torchvision ones have
          none) and Keras counts BatchNorm's moving mean and variance as
          parameters: ``unet_plus_plus(encoder="resnet50", n_classes=2)`` has
          49,072,418 parameters where SMP counts 48,985,890; BN epsilon 1e-3
          (PyTorch 1e-5);
        - encoders without a stride-2 feature (ConvNeXt) get the grid over the
          strides they have (X(1..3, j)) and blocks without skip at strides 2 and
          1 (``{name}_dec2``, ``{name}_dec1``, at the input size, as kseg's U-Net
          decoder does); SMP cannot build these (zero-width nodes);
        - VGG's stride-1 tap (``block1_conv2``) is the skip of the last block, as
          in ``unet(encoder="vgg16")``; SMP drops it and adds a "center" block of
          two 3x3 convolutions on VGG's deepest feature;
        - no ``deep_supervision`` (its heads are the paper model's).

    Args:
        n_classes: number of classes (1 = binary, sigmoid output).
        input_shape: ``(H, W, C)``; H and W multiples of 16 (or ``None``); with
            ``encoder``, any size from the encoder's minimum (32).
        activation: ``"softmax"`` (default), ``"sigmoid"`` or ``None`` for logits.
        base_filters: width of level 0; level i has ``base_filters * 2**i``
            channels (32, 64, 128, 256, 512 in the paper). The paper's model only.
        deep_supervision: ``False`` (default) returns the X(0, 4) head only;
            ``True`` returns a model with four outputs, the heads on X(0, 1),
            X(0, 2), X(0, 3), X(0, 4) in that order, each ``(B, H, W, n_classes)``.
            The paper's model only.
        use_bn: batch normalisation after every conv (also in the encoder
            variant's decoder; SMP's ``decoder_use_norm``).
        encoder: ``None`` for the paper's encoder, or the name of a
            ``keras.applications`` encoder (:func:`kseg.models.list_encoders`) for
            the nested decoder over its taps.
        encoder_weights: ``None`` or ``"imagenet"`` (or a local weights file);
            with ``encoder`` only.
        decoder_filters: with ``encoder``: the widths of the pathway-ending nodes
            at strides 16, 8, 4, 2 and of the last block (stride 1), deepest first
            (SMP's ``decoder_channels``, default 256, 128, 64, 32, 16).
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``, or
        to a list of four such tensors when ``deep_supervision=True``.

    Example:
        >>> from kseg.models import unet_plus_plus
        >>> model = unet_plus_plus(n_classes=2, input_shape=(96, 96, 1), deep_supervision=True)
        >>> [tuple(o.shape) for o in model.outputs]
        [(None, 96, 96, 2), (None, 96, 96, 2), (None, 96, 96, 2), (None, 96, 96, 2)]
        >>> unet_plus_plus(n_classes=3, input_shape=(72, 88, 3), encoder="mobilenetv2").output_shape
        (None, 72, 88, 3)
    """
    C.positive_int(MODEL, "base_filters", base_filters)
    C.flag(MODEL, "deep_supervision", deep_supervision)
    C.flag(MODEL, "use_bn", use_bn)
    decoder_filters = C.positive_ints(
        MODEL, "decoder_filters", decoder_filters, len(DECODER_STRIDES),
        " (the widths at strides 16, 8, 4, 2, 1)",
    )
    if encoder is not None:
        return _encoder_variant(n_classes, input_shape, activation, base_filters, deep_supervision,
                                use_bn, encoder, encoder_weights, decoder_filters, name)
    if encoder_weights is not None:
        raise ModelConfigError(
            f"{MODEL}: encoder_weights={encoder_weights!r} needs an encoder= name "
            "(the paper's UNet++ has no pretrained weights); pass encoder_weights=None"
        )
    if decoder_filters != tuple(DEFAULT_DECODER_FILTERS):
        raise ModelConfigError(
            f"{MODEL}: decoder_filters={decoder_filters!r} sets the decoder over an encoder= "
            "(the paper's model takes base_filters); pass an encoder= name or drop decoder_filters"
        )
    widths = B.level_widths(base_filters)
    depth = len(widths) - 1

    def conv_block(x, i, j):
        return L.double_conv(x, widths[i], f"{name}_x{i}{j}", use_bn=bool(use_bn))

    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    nodes = {}
    for i in range(depth + 1):
        x = inputs if i == 0 else layers.MaxPooling2D(2, name=f"{name}_pool{i}")(nodes[i - 1, 0])
        nodes[i, 0] = conv_block(x, i, 0)
        # the new backbone node completes one anti-diagonal of the grid: X(i-j, j)
        for j in range(1, i + 1):
            r = i - j
            up = layers.Conv2DTranspose(
                widths[r], 2, strides=2, padding="same", kernel_initializer="he_normal",
                name=f"{name}_x{r}{j}_upconv",
            )(nodes[r + 1, j - 1])
            same_level = [nodes[r, k] for k in range(j)]
            x = layers.Concatenate(name=f"{name}_x{r}{j}_concat")(same_level + [up])
            nodes[r, j] = conv_block(x, r, j)

    heads = range(1, depth + 1) if deep_supervision else [depth]
    outputs = [L.classifier(nodes[0, j], n_classes, f"{name}_head{j}", activation) for j in heads]
    return keras.Model(inputs, outputs if deep_supervision else outputs[0], name=name)


def _encoder_variant(n_classes, input_shape, activation, base_filters, deep_supervision, use_bn,
                     encoder, encoder_weights, decoder_filters, name):
    """UNet++ over a ``keras.applications`` encoder (see :func:`unet_plus_plus`)."""
    if deep_supervision:
        raise ModelConfigError(
            f"{MODEL}: deep_supervision is an option of the paper's model (encoder=None), not of "
            f"encoder={encoder!r}; drop deep_supervision or encoder"
        )
    if base_filters != BASE_FILTERS:
        raise ModelConfigError(
            f"{MODEL}: base_filters={base_filters!r} sets the paper's model (encoder=None); with "
            f"encoder={encoder!r} set the decoder's widths with decoder_filters instead"
        )
    inputs = keras.Input(tuple(input_shape), name=f"{name}_input")
    taps = D.encoder_taps(MODEL, inputs, encoder, encoder_weights)
    x = nested_decoder(taps, inputs, decoder_filters=decoder_filters, use_bn=bool(use_bn), name=name)
    outputs = L.classifier(x, n_classes, f"{name}_head", activation, kernel_size=3)
    return keras.Model(inputs, outputs, name=name)


def nested_decoder(taps, inputs, *, decoder_filters=DEFAULT_DECODER_FILTERS, use_bn=True, name="unet_plus_plus"):
    """The UNet++ decoder over an encoder's taps, up to the resolution of ``inputs``.

    ``taps`` is ``{stride: tensor}`` (:func:`kseg.models.backbones.build_encoder`) and
    must hold strides 4, 8, 16 and 32 (a one-line ``ModelConfigError`` otherwise). The
    taps at strides 2 (when there is one) to 16 are the grid's rows X(i, 0), i =
    log2(stride) - 1, and the stride-32 tap is X(4, 0). Every node X(i, j), j >= 1,
    i + j <= 4, is two 3x3 conv-BN-ReLU (``use_bn``) on concat([up(X(i+1, j-1)),
    X(i, j-1), ..., X(i, 0)]), ``up`` a nearest resize to X(i, 0)'s size. The node
    that ends row i's pathway (i + j = 4) is as wide as ``decoder_filters`` says for
    that row's stride (the widths of strides 16, 8, 4, 2, 1, deepest first), the
    inner nodes as wide as X(i, 0). Each stride below the shallowest row gets one
    block without nested nodes: resized to the tap of that stride and concatenated
    with it when there is one (VGG's stride 1), else resized to ``inputs`` (an
    encoder without a stride-2 tap, ConvNeXt, thus has its stride-2 and stride-1
    blocks at the input size, as :func:`kseg.models.encoder_unet.unet_decoder`).

    Layers are named ``{name}_x{i}{j}_*`` (``_up``, ``_concat``, ``_conv1``,
    ``_conv2``) and ``{name}_dec{stride}_*`` for the blocks below the grid.
    Returns the last block's output (``decoder_filters[-1]`` channels).
    """
    D.require_taps(MODEL, taps, (4, 8, 16, 32))
    widths = dict(zip(DECODER_STRIDES, decoder_filters))
    rows = [s for s in (2, 4, 8, 16) if s in taps]
    depth = len(rows)
    nodes = {(k, 0): taps[s] for k, s in enumerate(rows)}
    nodes[depth, 0] = taps[32]

    def level(k):
        return int(math.log2(rows[k])) - 1

    for j in range(1, depth + 1):
        for k in range(depth - j, -1, -1):  # deepest row first, as SMP builds them
            prefix = f"{name}_x{level(k)}{j}"
            up = L.ResizeLike(interpolation="nearest", name=f"{prefix}_up")([nodes[k + 1, j - 1], nodes[k, 0]])
            same_row = [nodes[k, m] for m in range(j - 1, -1, -1)]
            x = layers.Concatenate(name=f"{prefix}_concat")([up, *same_row])
            filters = widths[rows[k]] if k + j == depth else int(nodes[k, 0].shape[-1])
            nodes[k, j] = L.double_conv(x, filters, prefix, use_bn=use_bn)

    x = nodes[0, depth]
    for stride in (s for s in DECODER_STRIDES if s < rows[0]):
        prefix = f"{name}_dec{stride}"
        skip = taps.get(stride)
        x = L.ResizeLike(interpolation="nearest", name=f"{prefix}_up")([x, inputs if skip is None else skip])
        if skip is not None:
            x = layers.Concatenate(name=f"{prefix}_concat")([x, skip])
        x = L.double_conv(x, widths[stride], prefix, use_bn=use_bn)
    return x
