"""R2U-Net: U-Net with recurrent residual convolutional units (Alom et al. 2018)."""

import functools

import keras

from kseg.models import _checks as C
from kseg.models import _unet_blocks as B
from kseg.models import layers as L
from kseg.models._unet_blocks import recurrent_conv, rrcnn_unit  # noqa: F401 (re-export)
from kseg.models.registry import register_model


def _rrcnn_block(x, filters, name, t):
    return B.rrcnn_unit(x, filters, name, t=t)


@register_model(
    "r2unet",
    divisor=B.DIVISOR,
    min_size=B.MIN_SIZE,
    test_size=(32, 32),
    test_kwargs={"base_filters": 8},
)
def r2unet(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    base_filters=64,
    t=2,
    name="r2unet",
):
    """R2U-Net: a U-Net whose level blocks are recurrent residual units.

    Reference: M. Z. Alom, M. Hasan, C. Yakopcic, T. M. Taha, V. K. Asari,
    "Recurrent Residual Convolutional Neural Network based on U-Net (R2U-Net) for
    Medical Image Segmentation", arXiv:1802.06955 (2018).

    The kseg U-Net skeleton (4 levels, 2x2 max pool, 2x2 transposed-conv
    up-convolution, concatenated skips, widths ``base_filters * 2**level``) with
    every encoder, bottleneck and decoder block replaced by a recurrent residual
    unit: a 1x1 conv to the level width, then two recurrent conv layers, then a
    residual sum with the 1x1 output. A recurrent conv layer holds ONE 3x3 conv
    applied ``t + 1`` times with its state fed back:
    ``h(0) = f(conv(x))``, ``h(s) = f(conv(x + h(s-1)))``, ``f`` = BN + ReLU (one BN
    per step, see :func:`kseg.models._unet_blocks.recurrent_conv`). A 1x1
    convolution gives the class scores (no BN or ReLU on the logits).

    Differences from the paper:
        - the recurrent layer uses one kernel for the input and the state
          (``conv(x + h)``), the common formulation; the paper's Eq. 1 has separate
          feed-forward and recurrent kernels (``w_f * x + w_r * h``);
        - widths follow kseg's U-Net (64 ... 1024, 4 pooling levels) so the model
          is comparable with ``unet``; the paper's experiments use much narrower
          networks (first level 16 feature maps) -- pass ``base_filters=16`` for
          that width;
        - BN after every conv (one BN per recurrent step), ``same`` padding,
          transposed-conv up-sampling (the kseg U-Net conventions); the unit's
          convolutions are Glorot-initialised, because with He initialisation the
          fed-back sums make an untrained model's inference-mode logits explode
          (~1e5) until the BN moving statistics have adapted.

    Args:
        n_classes: number of classes (1 = binary, sigmoid output).
        input_shape: ``(H, W, C)``; H and W multiples of 16 (or ``None``).
        activation: ``"softmax"`` (default), ``"sigmoid"`` or ``None`` for logits.
        base_filters: width of the first level.
        t: recurrent steps of every recurrent conv layer (2 in the paper).
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> from kseg.models import r2unet
        >>> model = r2unet(n_classes=2, input_shape=(128, 128, 1), base_filters=16)
        >>> model.output_shape
        (None, 128, 128, 2)
    """
    C.positive_int("r2unet", "base_filters", base_filters)
    C.positive_int("r2unet", "t", t, " (2 in the paper)")
    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    block = functools.partial(_rrcnn_block, t=t)
    x = B.unet_body(inputs, B.level_widths(base_filters), name, block)
    outputs = L.classifier(x, n_classes, f"{name}_head", activation)
    return keras.Model(inputs, outputs, name=name)
