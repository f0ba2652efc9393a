"""SegFormer: a Mix Transformer encoder and an all-MLP decoder (Xie et al., NeurIPS 2021).

The model is built from Keras layers on channels-last maps: a token sequence of the
paper is kept as its ``(B, H, W, C)`` map, so a "Linear" over tokens is a ``Dense``
on the last axis and LayerNorm normalises each position over its channels. The only
custom layer is the weight-free multi-head attention core
(:class:`kseg.models.layers.MapAttention`); every weight sits in a standard
``Dense`` / ``Conv2D`` / ``DepthwiseConv2D`` / ``LayerNormalization`` /
``BatchNormalization`` layer, one per module of the official implementation
(NVlabs/SegFormer ``mmseg/models/backbones/mix_transformer.py`` and
``decode_heads/segformer_head.py``), with the same shapes.
"""

import keras
from keras import layers

from kseg.models import _checks as C
from kseg.models import layers as L
from kseg.models import segformer_weights as W
from kseg.models.registry import register_model
from kseg.models.segformer_weights import HEADS, MLP_RATIO, PATCH, REDUCTION, VARIANTS

MODEL = "segformer"
BLOCK_EPSILON = 1e-6  # LayerNorm of the blocks and after each stage (official norm_layer)
TORCH_LN_EPSILON = 1e-5  # nn.LayerNorm's default: patch embeddings and the reduction's norm
#: the smallest input: stage 1 (1/4 of the input, ceil) must hold one 8x8 reduction window
MIN_SIZE = 29


def _linear_init():
    """The official initialisation of every Linear: truncated normal, std 0.02 (bias 0)."""
    return keras.initializers.TruncatedNormal(stddev=0.02)


def _conv_init():
    """The official initialisation of every conv: normal, std sqrt(2 / fan_out) with
    fan_out = k * k * out_channels / groups (bias 0)."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def _dense(units, name):
    return layers.Dense(units, kernel_initializer=_linear_init(), name=name)


def patch_embed(x, filters, kernel, stride, name):
    """Overlapping patch embedding: a ``kernel x kernel`` conv with ``stride`` and
    ``kernel // 2`` zero padding on every side (as PyTorch's ``padding=k // 2``), then
    LayerNorm. An ``n``-pixel side gives ``ceil(n / stride)`` positions."""
    x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    x = layers.Conv2D(filters, kernel, strides=stride, kernel_initializer=_conv_init(), name=f"{name}_conv")(x)
    return layers.LayerNormalization(epsilon=TORCH_LN_EPSILON, name=f"{name}_norm")(x)


def efficient_attention(x, heads, reduction, name):
    """Efficient self-attention: multi-head attention whose keys and values come from
    the map reduced ``reduction`` times per side.

    Queries: ``Dense(C)``. Keys/values: for ``R > 1`` an ``R x R`` conv with stride
    ``R`` (the paper's ``Reshape + Linear`` of ``R^2`` positions, K of size N/R^2) and
    LayerNorm, then one ``Dense(2C)`` (keys, then values); the attention
    (:class:`kseg.models.layers.MapAttention`) and an output ``Dense(C)``. The cost is
    ``O(N^2 / R^2)``. Layers ``{name}_q``, ``{name}_sr``, ``{name}_sr_norm``,
    ``{name}_kv``, ``{name}_core``, ``{name}_proj``.
    """
    c = x.shape[-1]
    q = _dense(c, f"{name}_q")(x)
    kv = x
    if reduction > 1:
        kv = layers.Conv2D(c, reduction, strides=reduction, kernel_initializer=_conv_init(), name=f"{name}_sr")(kv)
        kv = layers.LayerNormalization(epsilon=TORCH_LN_EPSILON, name=f"{name}_sr_norm")(kv)
    kv = _dense(2 * c, f"{name}_kv")(kv)
    y = L.MapAttention(heads, name=f"{name}_core")([q, kv])
    return _dense(c, f"{name}_proj")(y)


def mix_ffn(x, name):
    """Mix-FFN: ``Dense(4C)``, a 3x3 depthwise conv (the positional information that
    replaces position embeddings), GELU (exact: :func:`kseg.models.layers.exact_gelu`),
    ``Dense(C)``."""
    c = x.shape[-1]
    y = _dense(MLP_RATIO * c, f"{name}_fc1")(x)
    y = layers.DepthwiseConv2D(3, padding="same", depthwise_initializer=_conv_init(), name=f"{name}_dwconv")(y)
    y = layers.Activation(L.exact_gelu, name=f"{name}_gelu")(y)
    return _dense(c, f"{name}_fc2")(y)


def _residual(x, y, rate, name):
    """``x + DropPath(y)``: stochastic depth drops ``y`` for whole samples (a ``Dropout``
    with one draw per sample, rescaled by ``1 / (1 - rate)`` as timm's DropPath)."""
    if rate > 0:
        y = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"{name}_droppath")(y)
    return layers.Add(name=f"{name}_add")([x, y])


def mit_block(x, heads, reduction, drop_path, name):
    """A Mix Transformer block: ``x + attn(LN(x))`` then ``x + MixFFN(LN(x))`` (pre-norm)."""
    y = layers.LayerNormalization(epsilon=BLOCK_EPSILON, name=f"{name}_norm1")(x)
    x = _residual(x, efficient_attention(y, heads, reduction, f"{name}_attn"), drop_path, f"{name}_attn")
    y = layers.LayerNormalization(epsilon=BLOCK_EPSILON, name=f"{name}_norm2")(x)
    return _residual(x, mix_ffn(y, f"{name}_mlp"), drop_path, f"{name}_mlp")


def mix_transformer(x, variant, drop_path_rate, name):
    """The MiT encoder: four stages, each an overlapping patch embedding, blocks and a
    LayerNorm; returns the four stage outputs (strides 4, 8, 16, 32, ceil-divided).

    Stochastic depth rises linearly over all blocks from 0 to ``drop_path_rate`` (the
    official ``torch.linspace(0, drop_path_rate, sum(depths))``). Layers are named
    ``{name}_stage{s}_patch_*``, ``{name}_stage{s}_block{b}_*``, ``{name}_stage{s}_norm``.
    """
    cfg = VARIANTS[variant]
    total = sum(cfg["depths"])
    rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    outs, k = [], 0
    for s, (width, depth) in enumerate(zip(cfg["widths"], cfg["depths"])):
        p = f"{name}_stage{s + 1}"
        x = patch_embed(x, width, *PATCH[s], name=f"{p}_patch")
        for b in range(depth):
            x = mit_block(x, HEADS[s], REDUCTION[s], rates[k], f"{p}_block{b + 1}")
            k += 1
        x = layers.LayerNormalization(epsilon=BLOCK_EPSILON, name=f"{p}_norm")(x)
        outs.append(x)
    return outs


def all_mlp_decoder(features, filters, dropout, name):
    """The all-MLP decoder up to the class scores: each stage's features through a
    ``Dense(filters)``, the stride-8/16/32 ones bilinearly resized to the stride-4 map,
    concatenated in the official order (stage 4, 3, 2, 1), fused by a 1x1 conv-BN-ReLU
    (the official ``ConvModule``; the paper's "Linear" fusion) and spatial dropout
    (PyTorch's ``Dropout2d``: whole channels)."""
    c1 = features[0]
    maps = []
    for i, f in enumerate(features):
        y = _dense(filters, f"{name}_linear_c{i + 1}")(f)
        if i:
            y = L.ResizeLike(name=f"{name}_up_c{i + 1}")([y, c1])
        maps.append(y)
    x = layers.Concatenate(name=f"{name}_concat")(maps[::-1])
    x = L.conv_bn_act(x, filters, 1, name=f"{name}_fuse")
    if dropout:
        x = layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(x)
    return x


@register_model(MODEL, min_size=MIN_SIZE, test_size=(64, 64))
def segformer(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    variant="b0",
    drop_path_rate=0.1,
    dropout=0.1,
    encoder_weights=None,
    name="segformer",
):
    """SegFormer-B0..B5: the hierarchical Mix Transformer (MiT) and the all-MLP decoder.

    Reference:
        E. Xie, W. Wang, Z. Yu, A. Anandkumar, J. M. Alvarez, P. Luo, "SegFormer: Simple
        and Efficient Design for Semantic Segmentation with Transformers", NeurIPS 2021,
        https://arxiv.org/abs/2105.15203

    Encoder (MiT, :func:`mix_transformer`): four stages at strides 4, 8, 16, 32. Each
    starts with an overlapping patch embedding (7x7 stride 4, then 3x3 stride 2;
    padding ``k // 2``; LayerNorm), runs its transformer blocks -- LayerNorm,
    efficient self-attention with sequence reduction R = 8, 4, 2, 1 (keys and values
    from an R x R stride-R conv + LayerNorm; 1, 2, 5, 8 heads), LayerNorm, Mix-FFN
    (Linear to 4C, 3x3 depthwise conv, GELU, Linear), both residual with stochastic
    depth -- and ends with a LayerNorm. No position embedding. Widths and depths per
    variant are :data:`VARIANTS` (B0: 32-64-160-256, 2-2-2-2 blocks; B1-B5:
    64-128-320-512 with 2-2-2-2, 3-4-6-3, 3-4-18-3, 3-8-27-3, 3-6-40-3 blocks).

    Decoder (:func:`all_mlp_decoder`): a Linear to C channels per stage (C = 256 for
    B0/B1, 768 for B2-B5), upsampling to stride 4, concatenation, a 1x1 conv-BN-ReLU
    fusion to C, dropout 0.1 and a linear 1x1 classifier; the class scores are
    bilinearly resized to the input size.

    Layer for layer the official network (same modules, shapes and order; parameter
    counts in ``tests/models/test_segformer.py``): at 150 classes the trainable
    weights are B0 3.75M, B1 13.7M, B2 27.5M, B3 47.3M, B4 64.1M, B5 84.7M (paper,
    Table 1: 3.8, 13.7, 27.5, 47.3, 64.1, 84.7M).

    Size rule: any height and width of at least 29. The patch embeddings give
    ``ceil(n / 4)``, ``ceil(n / 8)``, ... positions; stage 1's 8x8 stride-8 reduction
    needs at least 8 of them (an n-pixel side, n >= 29), and, as in the official code,
    the reduction convs drop the last rows/columns of a stage size that is not a
    multiple of R from the keys and values only. The decoder resizes to the input.

    Differences from the official code:
        * The fusion BN uses Keras momentum 0.9 (PyTorch 0.1) and kseg's epsilon 1e-3
          (mmcv 1e-5); LayerNorm epsilons are the official ones (1e-6 in the blocks and
          after each stage, 1e-5 in the patch embeddings and the reduction).
        * Initialisation is the official one in the encoder and the decoder's Linears
          (truncated normal with std 0.02 -- Keras truncates at 2 std, timm at +-2 --,
          normal with std sqrt(2 / fan_out) for convs, zero biases); the fusion conv is
          He normal (kseg's :func:`kseg.models.layers.conv_bn_act`) and the classifier
          Glorot uniform (PyTorch's defaults there differ).
        * The official decode head also builds an unused ``conv_seg`` (128 -> classes,
          19,350 parameters at 150 classes); kseg has no such layer.

    Args:
        n_classes: number of classes (1 = binary with a sigmoid output).
        input_shape: ``(height, width, channels)``; height and width ``None`` or at
            least 29; any number of channels.
        activation: ``"softmax"`` (default), ``"sigmoid"`` or ``None`` for logits.
        variant: ``"b0"`` (default) .. ``"b5"``.
        drop_path_rate: stochastic depth of the last block (linear from 0 over the
            blocks); the official 0.1. 0 turns it off.
        dropout: channel dropout before the classifier (0.1).
        encoder_weights: ``None`` (random), ``"imagenet"`` (the official MiT ImageNet-1K
            checkpoint of this variant converted to
            ``$KERAS_HOME/models/kseg_mit_{variant}_imagenet.npz``, ``KERAS_HOME``
            defaulting to ``~/.keras``; made by ``kseg convert_weights segformer
            mit_{variant}.pth``) or the path of such a file. Every MiT weight is loaded and
            checked; the decoder stays random. With ``C != 3`` input channels the RGB
            patch-embedding kernel is adapted
            (:func:`kseg.models.pretrained.adapt_input_kernel`). The official models saw
            ImageNet mean/std-normalised RGB (``--mean``/``--std``, as in the recipe).
        name: model name and layer-name prefix (the encoder is ``{name}_mit_*``).

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Raises:
        EncoderWeightsError: ``encoder_weights`` names a missing or unreadable file
            (the message gives the convert command).
        EncoderConfigError: a weights file of another variant.

    Example:
        >>> model = segformer(n_classes=150, input_shape=(512, 512, 3), variant="b2")
        >>> model.output_shape
        (None, 512, 512, 150)
    """
    C.known_name(MODEL, "variant", variant, VARIANTS)
    C.rate(MODEL, "drop_path_rate", drop_path_rate)
    C.rate(MODEL, "dropout", dropout)
    weights_file = W.resolve_weights(encoder_weights, variant)  # refused before anything is built
    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    features = mix_transformer(inputs, variant, float(drop_path_rate), f"{name}_mit")
    x = all_mlp_decoder(features, VARIANTS[variant]["decoder"], float(dropout), f"{name}_decoder")
    x = layers.Conv2D(n_classes, 1, name=f"{name}_logits")(x)
    x = L.ResizeLike(name=f"{name}_upsample")([x, inputs])
    outputs = L.output_activation(x, n_classes, name, activation)
    model = keras.Model(inputs, outputs, name=name)
    if weights_file is not None:
        W.load_into(model, weights_file, name)
    return model
