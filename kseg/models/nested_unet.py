"""UNet++: the nested U-Net with dense skip pathways (Zhou et al. 2018)."""

import keras
from keras import layers

from kseg.models import _checks as C
from kseg.models import _unet_blocks as B
from kseg.models import layers as L
from kseg.models.registry import register_model


@register_model(
    "unet++",
    divisor=B.DIVISOR,
    min_size=B.MIN_SIZE,
    test_size=(32, 32),
    test_kwargs={"base_filters": 8},
)
def unet_plus_plus(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    base_filters=32,
    deep_supervision=False,
    use_bn=True,
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

    Differences from the paper:
        - BN after every conv (``use_bn=False`` for the paper's plain conv-ReLU
          blocks; with ``use_bn=False``, one input channel and ``n_classes=1`` the
          model has the 9,041,601 parameters of the authors' UNet++);
        - no dropout / L2 regularisation inside the blocks (training choices of the
          authors' code, not part of the architecture);
        - with deep supervision the four head outputs are returned as a list; the
          paper's "accurate mode" (averaging them) or "fast mode" (picking one,
          i.e. pruning) is left to the caller.

    Args:
        n_classes: number of classes (1 = binary, sigmoid output).
        input_shape: ``(H, W, C)``; H and W multiples of 16 (or ``None``).
        activation: ``"softmax"`` (default), ``"sigmoid"`` or ``None`` for logits.
        base_filters: width of level 0; level i has ``base_filters * 2**i``
            channels (32, 64, 128, 256, 512 in the paper).
        deep_supervision: ``False`` (default) returns the X(0, 4) head only;
            ``True`` returns a model with four outputs, the heads on X(0, 1),
            X(0, 2), X(0, 3), X(0, 4) in that order, each ``(B, H, W, n_classes)``.
        use_bn: batch normalisation after every conv.
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``, or
        to a list of four such tensors when ``deep_supervision=True``.

    Example:
        >>> from kseg.models import unet_plus_plus
        >>> model = unet_plus_plus(n_classes=2, input_shape=(96, 96, 1), deep_supervision=True)
        >>> [tuple(o.shape) for o in model.outputs]
        [(None, 96, 96, 2), (None, 96, 96, 2), (None, 96, 96, 2), (None, 96, 96, 2)]
    """
    C.positive_int("unet++", "base_filters", base_filters)
    C.flag("unet++", "deep_supervision", deep_supervision)
    C.flag("unet++", "use_bn", use_bn)
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
