"""ENet (Paszke, Chaurasia, Kim, Culurciello 2016)."""

import keras
from keras import layers

from kseg.errors import ModelConfigError
from kseg.models import _checks as C
from kseg.models import layers as L
from kseg.models.layers import PadChannels  # noqa: F401 (re-exported; defined with the other custom layers)
from kseg.models.registry import register_model

BOTTLENECK_KINDS = ("regular", "dilated", "asymmetric")

ENET_BN_MOMENTUM = 0.9  # Keras sense: moving average decay (the old project's 0.1 was wrong)

# The initial block passes the pooled input through and stage 1's downsampling bottleneck
# only widens (to 64): channels + 1 <= 64.
MAX_INPUT_CHANNELS = 63


def _bn(x, name):
    return L.bn(x, name, momentum=ENET_BN_MOMENTUM)


def _act(x, kind, name):
    if kind == "prelu":
        return layers.PReLU(shared_axes=[1, 2], name=name)(x)
    return layers.Activation("relu", name=name)(x)


def _conv(x, filters, kernel, name, strides=1, dilation=1):
    return layers.Conv2D(
        filters, kernel, strides=strides, padding="same", dilation_rate=dilation,
        use_bias=False, kernel_initializer="he_normal", name=name,
    )(x)


def initial_conv_filters(channels, filters=16):
    """Maps of the initial block's 3x3/2 conv for ``channels`` input channels.

    The paper's block makes ``filters`` = 16 maps: 13 from the conv, 3 from max-pooling
    the RGB input. kseg keeps that total for any ``channels`` up to 15 (the conv makes
    ``16 - channels``: 15 for grey, 12 for RGBA) and keeps at least one conv map beyond
    (``channels + 1`` maps in all).
    """
    return max(filters - channels, 1)


def initial_block(x, name, filters=16, channels=3):
    """3x3/2 conv with :func:`initial_conv_filters` maps concatenated with a 2x2 max pool
    of the input (``filters`` maps in all for up to 15 input channels)."""
    conv = _conv(x, initial_conv_filters(channels, filters), 3, f"{name}_conv", strides=2)
    pool = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    x = layers.Concatenate(name=f"{name}_concat")([conv, pool])
    x = _bn(x, f"{name}_bn")
    return _act(x, "prelu", f"{name}_act")


def bottleneck(
    x, out_filters, name, kind="regular", dilation=1, asym=5, dropout=0.1,
    act="prelu", downsample=False, projection_ratio=4,
):
    """ENet bottleneck: 1x1 projection, main conv, 1x1 expansion, spatial dropout, residual.

    ``kind``: ``"regular"`` (3x3), ``"dilated"`` (3x3 with ``dilation``) or
    ``"asymmetric"`` (``asym``x1 then 1x``asym``). With ``downsample=True`` the
    projection is a 2x2 stride-2 conv and the main branch is max pooling with
    indices plus zero channels; returns ``(x, indices)`` then, else ``x``.
    """
    C.one_of("enet bottleneck", "kind", kind, BOTTLENECK_KINDS)
    in_ch = x.shape[-1]
    internal = max(1, out_filters // projection_ratio)
    # extension branch
    if downsample:
        e = _conv(x, internal, 2, f"{name}_proj", strides=2)
    else:
        e = _conv(x, internal, 1, f"{name}_proj")
    e = _bn(e, f"{name}_proj_bn")
    e = _act(e, act, f"{name}_proj_act")
    if kind == "asymmetric":
        e = _conv(e, internal, (asym, 1), f"{name}_conv_a")
        e = _conv(e, internal, (1, asym), f"{name}_conv_b")
    elif kind == "dilated":
        e = _conv(e, internal, 3, f"{name}_conv", dilation=dilation)
    else:
        e = _conv(e, internal, 3, f"{name}_conv")
    e = _bn(e, f"{name}_conv_bn")
    e = _act(e, act, f"{name}_conv_act")
    e = _conv(e, out_filters, 1, f"{name}_expand")
    e = _bn(e, f"{name}_expand_bn")
    if dropout:
        e = layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(e)
    # main branch
    indices = None
    m = x
    if downsample:
        m, indices = L.MaxPoolingWithArgmax2D(name=f"{name}_pool")(x)
    if out_filters != in_ch:
        if out_filters < in_ch:
            raise ModelConfigError(
                f"{name}: an ENet bottleneck only widens its main branch; "
                f"received {in_ch} -> {out_filters} channels"
            )
        m = L.PadChannels(out_filters - in_ch, name=f"{name}_pad")(m)
    x = layers.Add(name=f"{name}_add")([m, e])
    x = _act(x, act, f"{name}_out_act")
    return (x, indices) if downsample else x


def upsampling_bottleneck(x, indices, out_filters, name, projection_ratio=4):
    """ENet decoder bottleneck: main branch 1x1 conv + max-unpooling with the encoder's
    indices, extension branch 1x1 / 3x3 transposed conv (stride 2) / 1x1; ReLU. No
    dropout, as in the authors' decoder (train/models/decoder.lua)."""
    internal = max(1, out_filters // projection_ratio)
    m = _conv(x, out_filters, 1, f"{name}_main_conv")
    m = _bn(m, f"{name}_main_bn")
    m = L.MaxUnpooling2D(name=f"{name}_unpool")([m, indices])
    e = _conv(x, internal, 1, f"{name}_proj")
    e = _bn(e, f"{name}_proj_bn")
    e = _act(e, "relu", f"{name}_proj_act")
    e = layers.Conv2DTranspose(
        internal, 3, strides=2, padding="same", use_bias=False,
        kernel_initializer="he_normal", name=f"{name}_upconv",
    )(e)
    e = _bn(e, f"{name}_upconv_bn")
    e = _act(e, "relu", f"{name}_upconv_act")
    e = _conv(e, out_filters, 1, f"{name}_expand")
    e = _bn(e, f"{name}_expand_bn")
    x = layers.Add(name=f"{name}_add")([m, e])
    return _act(x, "relu", f"{name}_out_act")


# stage 2/3 sequence of (kind, dilation)
_STAGE23 = (
    ("regular", 1), ("dilated", 2), ("asymmetric", 1), ("dilated", 4),
    ("regular", 1), ("dilated", 8), ("asymmetric", 1), ("dilated", 16),
)


@register_model("enet", divisor=8, min_size=16, test_size=(32, 32))
def enet(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    dropout_stage1=0.01,
    dropout=0.1,
    name="enet",
):
    """ENet: an efficient encoder-decoder for real-time segmentation.

    Reference: A. Paszke, A. Chaurasia, S. Kim, E. Culurciello, "ENet: A Deep Neural
    Network Architecture for Real-Time Semantic Segmentation", arXiv:1606.02147, 2016.

    Initial block (3x3/2 conv with 13 maps concatenated with max pooling -> 16),
    stage 1 (downsampling bottleneck to 64, four regular bottlenecks, spatial
    dropout 0.01), stages 2 and 3 (downsampling to 128 in stage 2; regular,
    dilated 2/4/8/16 and asymmetric 5x1+1x5 bottlenecks, dropout 0.1), decoder
    stages 4 and 5 (upsampling bottlenecks that max-unpool with the encoder's
    pooling indices, to 64 then 16; no dropout, as the authors' decoder), and a
    final 2x2 transposed convolution to the class scores at input resolution.
    PReLU in the encoder, ReLU in the decoder; convolutions without bias; batch
    norm with Keras momentum 0.9.

    Input channels: any ``C`` from 1 to 63. The initial block's conv makes
    ``16 - C`` maps (13 for RGB, 15 for grey, 12 for RGBA) so that the block
    still gives 16 maps with the ``C`` pooled ones; from ``C = 16`` on it makes
    one map (``C + 1`` in all); stage 1 pads to 64, hence the 63.

    Differences from the paper:
        - the main branch of a downsampling bottleneck pads channels with zeros
          (as in the paper) and the pooling indices are stored as positions inside
          each 2x2 window, which is equivalent;
        - "same" padding in the 2x2 stride-2 projection, so H and W must be
          multiples of 8;
        - the authors' Torch code (e-lab/ENet-training) gives the initial conv, the
          middle 3x3 / dilated / second asymmetric convolutions and the decoder's
          transposed convolutions a bias; kseg's have none (BN follows each), 693
          parameters fewer for RGB;
        - for ``C != 3`` input channels the initial block's split (above) is kseg's
          rule; the paper only describes RGB.

    Args:
        n_classes: number of classes (1 = binary, sigmoid output).
        input_shape: ``(H, W, C)``, H and W multiples of 8, or ``None``.
        activation: ``"softmax"``, ``"sigmoid"`` or ``None`` for logits.
        dropout_stage1: spatial dropout rate in stage 1 (0.01).
        dropout: spatial dropout rate in the later stages (0.1).
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> from kseg.models import enet
        >>> model = enet(n_classes=12, input_shape=(360, 480, 3))
    """
    C.rate("enet", "dropout_stage1", dropout_stage1)
    C.rate("enet", "dropout", dropout)
    channels = input_shape[-1] or 3
    if channels > MAX_INPUT_CHANNELS:
        raise ModelConfigError(
            f"enet takes at most {MAX_INPUT_CHANNELS} input channels (its initial block's "
            f"{channels} pooled + 1 conv maps must fit stage 1's 64); received {channels}; "
            "reduce the channels or use another model"
        )
    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    x = initial_block(inputs, f"{name}_initial", channels=channels)
    x, idx1 = bottleneck(x, 64, f"{name}_b1_0", downsample=True, dropout=dropout_stage1)
    for i in range(1, 5):
        x = bottleneck(x, 64, f"{name}_b1_{i}", dropout=dropout_stage1)
    x, idx2 = bottleneck(x, 128, f"{name}_b2_0", downsample=True, dropout=dropout)
    for stage in (2, 3):
        for i, (kind, d) in enumerate(_STAGE23, start=1):
            x = bottleneck(x, 128, f"{name}_b{stage}_{i}", kind=kind, dilation=d, dropout=dropout)
    # decoder: ReLU and no dropout, as the authors' decoder.lua
    x = upsampling_bottleneck(x, idx2, 64, f"{name}_b4_0")
    for i in (1, 2):
        x = bottleneck(x, 64, f"{name}_b4_{i}", act="relu", dropout=0)
    x = upsampling_bottleneck(x, idx1, 16, f"{name}_b5_0")
    x = bottleneck(x, 16, f"{name}_b5_1", act="relu", dropout=0)
    logits = layers.Conv2DTranspose(
        n_classes, 2, strides=2, padding="same", name=f"{name}_fullconv"
    )(x)
    outputs = L.output_activation(logits, n_classes, f"{name}_head", activation)
    return keras.Model(inputs, outputs, name=name)
