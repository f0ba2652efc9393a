"""Building blocks of the UNet-family variants.

Used by ``unet``, ``attunet``, ``r2unet``, ``r2attunet``, ``unet++``, ``seunet``
and ``scseunet``:

- :func:`unet_body` -- the U-Net encoder-decoder skeleton (4 levels by default)
  with a pluggable level block and optional skip gates; ``unet`` is this body
  with double-conv blocks;
- :func:`attention_gate` -- the additive attention gate of Oktay et al. 2018;
- :func:`recurrent_conv` / :func:`rrcnn_unit` -- the recurrent convolutional
  layer and recurrent residual unit of Alom et al. 2018;
- :func:`squeeze_excite` / :func:`scse` -- channel SE (Hu et al. 2018) and
  concurrent spatial-and-channel SE (Roy et al. 2018).

All blocks are functional helpers built from stock ``keras.layers`` (so saved
models need no custom objects) and name every layer after the ``name`` prefix.
The shared options (``n_classes``, ``input_shape``, the size rule: multiples of
16) are checked by the registry (:func:`kseg.models.registry.register_model`).
"""

from keras import layers

from kseg.errors import ModelConfigError
from kseg.models import _checks as C
from kseg.models import layers as L

DEPTH = 4  # pooling levels of every model of this family (``unet`` also takes others)
DIVISOR = 2**DEPTH  # input height/width must be multiples of 16
MIN_SIZE = DIVISOR

# Initializer of the recurrent-unit convolutions. Each recurrent step adds its state
# to the input (x + h), so with He initialisation the activations grow several-fold
# per unit; while the BN moving statistics are still at their initial values
# (inference mode, early training) a 9-unit R2U-Net then produces logits of
# order 1e4-1e5. Glorot's smaller variance keeps them of order 1.
RCL_INITIALIZER = "glorot_uniform"


def level_widths(base_filters, depth=DEPTH):
    """Channel widths of levels 0..depth: ``base_filters * 2**level``."""
    return [base_filters * 2**level for level in range(depth + 1)]


def unet_body(x, widths, name, block, gate=None, bottleneck_dropout=0.0):
    """The U-Net encoder-decoder with a pluggable level block.

    ``len(widths) - 1`` encoder levels (block, 2x2 max pool), a bottleneck block
    (optionally followed by dropout), and as many decoder levels (2x2 stride-2
    transposed convolution to the level width, concatenation ``[skip, up]``,
    block). Layer names: ``{name}_enc1``, ``{name}_enc1_pool``,
    ``{name}_bottleneck``, ``{name}_bottleneck_dropout``, ``{name}_dec1_upconv``,
    ``{name}_dec1_concat``, ``{name}_dec1``.

    Args:
        x: input tensor ``(B, H, W, C)``.
        widths: channel width of each level, finest first (5 entries for depth 4).
        name: layer-name prefix.
        block: ``block(x, filters, name) -> tensor``, the level block.
        gate: optional ``gate(skip, g, name) -> tensor`` applied to every skip
            before concatenation; ``g`` is the coarser decoder feature (the
            bottleneck for the deepest skip), taken before its up-convolution.
            Gates are named ``{name}_dec{level}_att``.
        bottleneck_dropout: dropout rate after the bottleneck block (0: no layer).

    Returns:
        The finest decoder feature ``(B, H, W, widths[0])``.
    """
    skips = []
    for level in range(len(widths) - 1):
        x = block(x, widths[level], f"{name}_enc{level + 1}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"{name}_enc{level + 1}_pool")(x)
    x = block(x, widths[-1], f"{name}_bottleneck")
    if bottleneck_dropout:
        x = layers.Dropout(bottleneck_dropout, name=f"{name}_bottleneck_dropout")(x)
    for level in reversed(range(len(widths) - 1)):
        skip = skips[level]
        if gate is not None:
            skip = gate(skip, x, f"{name}_dec{level + 1}_att")
        up = layers.Conv2DTranspose(
            widths[level],
            2,
            strides=2,
            padding="same",
            kernel_initializer="he_normal",
            name=f"{name}_dec{level + 1}_upconv",
        )(x)
        x = layers.Concatenate(name=f"{name}_dec{level + 1}_concat")([skip, up])
        x = block(x, widths[level], f"{name}_dec{level + 1}")
    return x


# --------------------------------------------------------------------------------------
# Attention gate (Oktay et al. 2018)


def attention_gate(x, g, name, inter_channels=None):
    """Additive attention gate: scale the skip ``x`` by a learned spatial map.

    ``alpha = sigmoid(psi(relu(W_x(x) + W_g(g))))``, then ``x * upsample(alpha)``
    (Oktay et al. 2018, Eq. 1-2). ``g`` is the gating signal from the next
    coarser level, at half the resolution of ``x``. ``W_x`` brings ``x`` to the
    gating grid with a 2x2 stride-2 convolution without bias (the paper's
    "downsample x to the resolution of g", as done in the authors' code),
    ``W_g`` is a 1x1 convolution with bias ``b_g``; both map to
    ``inter_channels`` (F_int, default half the skip channels). ``psi`` is a 1x1
    convolution to ONE channel (with bias ``b_psi``); the sigmoid map is
    bilinearly upsampled 2x to the skip's resolution and multiplied onto every
    channel of ``x``.

    Layers: ``{name}_theta_x`` (W_x), ``{name}_phi_g`` (W_g), ``{name}_add``,
    ``{name}_relu``, ``{name}_psi``, ``{name}_sigmoid``, ``{name}_upsample``,
    ``{name}_multiply``.

    Args:
        x: skip feature ``(B, H, W, F)``, H and W even.
        g: gating feature ``(B, H/2, W/2, F_g)``.
        name: layer-name prefix.
        inter_channels: F_int; default ``max(1, F // 2)``.

    Returns:
        The gated skip, same shape as ``x``.
    """
    f_int = inter_channels or max(1, x.shape[-1] // 2)
    theta_x = layers.Conv2D(
        f_int, 2, strides=2, padding="valid", use_bias=False,
        kernel_initializer="he_normal", name=f"{name}_theta_x",
    )(x)
    phi_g = layers.Conv2D(f_int, 1, kernel_initializer="he_normal", name=f"{name}_phi_g")(g)
    q = layers.Add(name=f"{name}_add")([theta_x, phi_g])
    q = layers.Activation("relu", name=f"{name}_relu")(q)
    q = layers.Conv2D(1, 1, name=f"{name}_psi")(q)
    alpha = layers.Activation("sigmoid", name=f"{name}_sigmoid")(q)
    alpha = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_upsample")(alpha)
    return layers.Multiply(name=f"{name}_multiply")([x, alpha])


# --------------------------------------------------------------------------------------
# Recurrent convolution (Alom et al. 2018)


def recurrent_conv(x, filters, name, t=2):
    """Recurrent convolutional layer: ONE 3x3 convolution unrolled ``t`` steps.

    ``h(0) = f(conv(x))`` and ``h(s) = f(conv(x + h(s-1)))`` for ``s = 1..t``,
    with ``f`` = batch norm + ReLU. The same ``Conv2D`` layer object
    (``{name}_conv``) is called ``t + 1`` times, so its weights are shared by
    every step and the layer holds the parameters of a single convolution.

    Batch normalisation: one BN per step (``{name}_bn0`` .. ``{name}_bn{t}``).
    The input of step 0 (``x``) and of later steps (``x + h``) have different
    statistics; a single shared BN would average them into one set of moving
    statistics that fits no step at inference. Per-step BN costs ``4 * filters``
    weights per step (half of them non-trainable moving statistics). The conv
    is Glorot-initialised (see ``RCL_INITIALIZER``).

    Args:
        x: input ``(B, H, W, filters)`` (the channels must equal ``filters`` for
            the sum ``x + h``).
        filters: output channels.
        name: layer-name prefix.
        t: number of recurrent steps (2 in the paper); ``t + 1`` conv calls.

    Returns:
        ``h(t)``, shape ``(B, H, W, filters)``.
    """
    if x.shape[-1] != filters:
        raise ModelConfigError(
            f"{name}: a recurrent conv layer needs {filters} input channels; received {x.shape[-1]}"
        )
    conv = layers.Conv2D(
        filters, 3, padding="same", use_bias=False, kernel_initializer=RCL_INITIALIZER,
        name=f"{name}_conv",
    )
    h = None
    for step in range(t + 1):
        inp = x if step == 0 else layers.Add(name=f"{name}_add{step}")([x, h])
        h = conv(inp)
        h = L.bn(h, f"{name}_bn{step}")
        h = layers.Activation("relu", name=f"{name}_act{step}")(h)
    return h


def rrcnn_unit(x, filters, name, t=2):
    """Recurrent residual convolutional unit (RRCNN block of R2U-Net).

    A 1x1 convolution (``{name}_conv1x1``) maps the input to ``filters`` channels;
    two recurrent conv layers (``{name}_rcl1``, ``{name}_rcl2``, see
    :func:`recurrent_conv`) follow, and their output is added to the 1x1 output
    (``{name}_residual``).

    Parameter count with ``C_in`` input channels and ``C = filters``:
    ``C_in*C + C`` (1x1 conv) ``+ 2 * (9*C*C + 4*C*(t + 1))``.

    Args:
        x: input ``(B, H, W, C_in)``.
        filters: output channels.
        name: layer-name prefix.
        t: recurrent steps of each recurrent layer.

    Returns:
        ``(B, H, W, filters)``.
    """
    x = layers.Conv2D(filters, 1, kernel_initializer=RCL_INITIALIZER, name=f"{name}_conv1x1")(x)
    h = recurrent_conv(x, filters, f"{name}_rcl1", t)
    h = recurrent_conv(h, filters, f"{name}_rcl2", t)
    return layers.Add(name=f"{name}_residual")([x, h])


# --------------------------------------------------------------------------------------
# Squeeze-and-excitation (Hu et al. 2018) and scSE (Roy et al. 2018)


def squeeze_excite(x, name, ratio=16):
    """Channel squeeze-and-excitation: rescale each channel by a learned gate.

    Global average pooling (``{name}_squeeze``) -> Dense(C/r) + ReLU
    (``{name}_fc1``) -> Dense(C) + sigmoid (``{name}_fc2``) -> channel-wise
    product with ``x`` (``{name}_scale``). The bottleneck has
    ``max(1, C // ratio)`` units, so narrow layers still get one.

    Args:
        x: ``(B, H, W, C)``.
        name: layer-name prefix.
        ratio: reduction ratio r.

    Returns:
        ``(B, H, W, C)``.
    """
    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    s = layers.Dense(max(1, channels // ratio), activation="relu", name=f"{name}_fc1")(s)
    s = layers.Dense(channels, activation="sigmoid", name=f"{name}_fc2")(s)
    return layers.Multiply(name=f"{name}_scale")([x, s])


SCSE_COMBINE = ("add", "max")


def scse(x, name, ratio=2, combine="add"):
    """Concurrent spatial and channel squeeze-and-excitation.

    cSE: :func:`squeeze_excite` (``{name}_cse_*``). sSE: a 1x1 convolution to ONE
    channel with a sigmoid (``{name}_sse_conv``), multiplied onto every channel
    (``{name}_sse_scale``). The two recalibrated maps are combined
    (``{name}_combine``) by element-wise addition (Roy et al. 2018, MICCAI) or,
    with ``combine="max"``, element-wise maximum (the aggregation preferred in
    the authors' later journal version).

    Args:
        x: ``(B, H, W, C)``.
        name: layer-name prefix.
        ratio: cSE reduction ratio (2 in Roy et al.).
        combine: ``"add"`` or ``"max"``.

    Returns:
        ``(B, H, W, C)``.
    """
    C.known_name(name, "scSE combine mode", combine, SCSE_COMBINE)
    cse = squeeze_excite(x, f"{name}_cse", ratio)
    q = layers.Conv2D(1, 1, activation="sigmoid", name=f"{name}_sse_conv")(x)
    sse = layers.Multiply(name=f"{name}_sse_scale")([x, q])
    merge = layers.Add if combine == "add" else layers.Maximum
    return merge(name=f"{name}_combine")([cse, sse])
