"""Attention U-Net (Oktay et al. 2018) and R2 attention U-Net."""

import functools

import keras

from kseg.models import _checks as C
from kseg.models import _unet_blocks as B
from kseg.models import layers as L
from kseg.models.registry import register_model


def _double_conv_block(x, filters, name):
    return L.double_conv(x, filters, name)


def _rrcnn_block(x, filters, name, t):
    return B.rrcnn_unit(x, filters, name, t=t)


@register_model(
    "attunet",
    divisor=B.DIVISOR,
    min_size=B.MIN_SIZE,
    test_size=(32, 32),
    test_kwargs={"base_filters": 8},
)
def attunet(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    base_filters=64,
    name="attunet",
):
    """Attention U-Net: a U-Net whose skips pass through additive attention gates.

    Reference: O. Oktay, J. Schlemper, L. Le Folgoc, M. Lee, M. Heinrich et al.,
    "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018
    (arXiv:1804.03999).

    The plain kseg U-Net (4 levels, double 3x3 conv-BN-ReLU blocks, 2x2 max pool,
    2x2 transposed-conv up-convolution, widths ``base_filters * 2**level``) with an
    attention gate on each of the 4 skips. The gate of a skip with F channels
    uses the coarser decoder feature as gating signal g (the bottleneck for the
    deepest skip): ``W_x`` (2x2 stride-2 conv, no bias) on the skip and ``W_g``
    (1x1 conv) on g map both to F_int = F/2 channels on g's grid; their sum goes
    through a ReLU and ``psi``, a 1x1 conv to ONE channel, then a sigmoid; the
    attention map is bilinearly upsampled 2x and multiplied onto the skip. A 1x1
    convolution gives the class scores (no BN or ReLU on the logits).

    Differences from the paper:
        - 2-D instead of 3-D, and the kseg U-Net skeleton (``same`` padding, BN after
          every conv, transposed-conv up-sampling, widths from 64 as in U-Net; the
          authors' released 2-D/3-D models divide these widths by 4:
          ``base_filters=16``);
        - ``W_x`` is a 2x2 stride-2 convolution (the paper describes a linear 1x1
          map applied to x downsampled to g's grid; the authors' code uses this
          strided form, which sees every skip pixel);
        - all 4 skips are gated with F_int = F/2 (the authors' released model
          leaves the finest skip ungated and uses F_int = F);
        - no output transform (1x1 conv + BN) after the gate, no extra 1x1
          "gating" conv on the bottleneck and no deep supervision: the paper's
          equations gate the skip directly and we return a single
          full-resolution output.

    Args:
        n_classes: number of classes (1 = binary, sigmoid output).
        input_shape: ``(H, W, C)``; H and W multiples of 16 (or ``None``).
        activation: ``"softmax"`` (default), ``"sigmoid"`` or ``None`` for logits.
        base_filters: width of the first level (64, 128, 256, 512, 1024 by default).
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> from kseg.models import attunet
        >>> model = attunet(n_classes=3, input_shape=(256, 256, 3))
        >>> model.output_shape
        (None, 256, 256, 3)
    """
    C.positive_int("attunet", "base_filters", base_filters)
    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    x = B.unet_body(
        inputs, B.level_widths(base_filters), name, _double_conv_block, gate=B.attention_gate
    )
    outputs = L.classifier(x, n_classes, f"{name}_head", activation)
    return keras.Model(inputs, outputs, name=name)


@register_model(
    "r2attunet",
    divisor=B.DIVISOR,
    min_size=B.MIN_SIZE,
    test_size=(32, 32),
    test_kwargs={"base_filters": 8},
)
def r2attunet(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    base_filters=64,
    t=2,
    name="r2attunet",
):
    """R2 attention U-Net: recurrent residual units plus attention-gated skips.

    References: M. Z. Alom, M. Hasan, C. Yakopcic, T. M. Taha, V. K. Asari,
    "Recurrent Residual Convolutional Neural Network based on U-Net (R2U-Net) for
    Medical Image Segmentation", arXiv:1802.06955 (2018); O. Oktay et al.,
    "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018
    (arXiv:1804.03999).

    :func:`kseg.models.r2unet` (every encoder, bottleneck and decoder block is a
    recurrent residual unit: 1x1 conv, two recurrent conv layers whose single
    3x3 conv is applied ``t + 1`` times with the state fed back, residual sum)
    with the attention gate of :func:`kseg.models.attunet` on each of the 4 skips.

    Differences from the papers:
        - the combination is not from a single paper (it is the popular
          combination of the two ideas); see :func:`kseg.models.r2unet` and
          :func:`kseg.models.attunet` for the differences of each part.

    Args:
        n_classes: number of classes (1 = binary, sigmoid output).
        input_shape: ``(H, W, C)``; H and W multiples of 16 (or ``None``).
        activation: ``"softmax"`` (default), ``"sigmoid"`` or ``None`` for logits.
        base_filters: width of the first level (widths ``base_filters * 2**level``).
        t: recurrent steps of every recurrent conv layer (2 in the paper).
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> from kseg.models import r2attunet
        >>> model = r2attunet(n_classes=2, input_shape=(128, 128, 3), base_filters=16)
        >>> model.output_shape
        (None, 128, 128, 2)
    """
    C.positive_int("r2attunet", "base_filters", base_filters)
    C.positive_int("r2attunet", "t", t, " (2 in the paper)")
    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    block = functools.partial(_rrcnn_block, t=t)
    x = B.unet_body(inputs, B.level_widths(base_filters), name, block, gate=B.attention_gate)
    outputs = L.classifier(x, n_classes, f"{name}_head", activation)
    return keras.Model(inputs, outputs, name=name)
