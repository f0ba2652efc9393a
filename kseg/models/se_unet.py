"""U-Nets with squeeze-and-excitation blocks: seunet (cSE) and scseunet (scSE)."""

import keras

from kseg.models import _checks as C
from kseg.models import _unet_blocks as B
from kseg.models import layers as L
from kseg.models.registry import register_model


@register_model(
    "seunet",
    divisor=B.DIVISOR,
    min_size=B.MIN_SIZE,
    test_size=(32, 32),
    test_kwargs={"base_filters": 8},
)
def seunet(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    base_filters=64,
    ratio=16,
    name="seunet",
):
    """SE U-Net: a U-Net with a squeeze-and-excitation block after every level block.

    Reference: J. Hu, L. Shen, G. Sun, "Squeeze-and-Excitation Networks", CVPR 2018
    (arXiv:1709.01507); its use in a U-Net follows A. G. Roy, N. Navab,
    C. Wachinger, "Concurrent Spatial and Channel 'Squeeze & Excitation' in Fully
    Convolutional Networks", MICCAI 2018 (arXiv:1803.02579), the "cSE" variant.

    The kseg U-Net (4 levels, double 3x3 conv-BN-ReLU blocks, 2x2 max pool, 2x2
    transposed-conv up-convolution, widths ``base_filters * 2**level``) where the
    output of each of the 9 double-conv blocks (4 encoder, bottleneck, 4
    decoder) is recalibrated by an SE block: global average pooling,
    Dense(C / ratio) + ReLU, Dense(C) + sigmoid, channel-wise scaling. A 1x1
    convolution gives the class scores (no BN or ReLU on the logits).

    Differences from the paper:
        - Hu et al. define the SE block for classification networks; the U-Net
          placement (after every encoder, bottleneck and decoder block) is Roy et
          al.'s. The reduction ratio defaults to Hu's 16 (Roy et al. use 2), with
          at least one hidden unit for narrow layers;
        - BN after every conv, ``same`` padding (kseg U-Net conventions).

    Args:
        n_classes: number of classes (1 = binary, sigmoid output).
        input_shape: ``(H, W, C)``; H and W multiples of 16 (or ``None``).
        activation: ``"softmax"`` (default), ``"sigmoid"`` or ``None`` for logits.
        base_filters: width of the first level (64, 128, 256, 512, 1024 by default).
        ratio: SE reduction ratio r (hidden units ``max(1, C // r)``).
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> from kseg.models import seunet
        >>> model = seunet(n_classes=3, input_shape=(256, 256, 3))
        >>> model.output_shape
        (None, 256, 256, 3)
    """
    C.positive_int("seunet", "base_filters", base_filters)
    C.positive_int("seunet", "ratio", ratio, " (16 in Hu et al.)")

    def block(x, filters, block_name):
        x = L.double_conv(x, filters, block_name)
        return B.squeeze_excite(x, f"{block_name}_se", ratio)

    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    x = B.unet_body(inputs, B.level_widths(base_filters), name, block)
    outputs = L.classifier(x, n_classes, f"{name}_head", activation)
    return keras.Model(inputs, outputs, name=name)


@register_model(
    "scseunet",
    divisor=B.DIVISOR,
    min_size=B.MIN_SIZE,
    test_size=(32, 32),
    test_kwargs={"base_filters": 8},
)
def scseunet(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    base_filters=64,
    ratio=2,
    combine="add",
    name="scseunet",
):
    """scSE U-Net: a U-Net with concurrent spatial and channel SE after every level block.

    Reference: A. G. Roy, N. Navab, C. Wachinger, "Concurrent Spatial and Channel
    'Squeeze & Excitation' in Fully Convolutional Networks", MICCAI 2018
    (arXiv:1803.02579).

    The kseg U-Net (4 levels, double 3x3 conv-BN-ReLU blocks, 2x2 max pool, 2x2
    transposed-conv up-convolution, widths ``base_filters * 2**level``) where the
    output of each of the 9 double-conv blocks (4 encoder, bottleneck, 4
    decoder) goes through an scSE block: the channel SE (global average pooling,
    Dense(C / ratio) + ReLU, Dense(C) + sigmoid, channel scaling) and the spatial
    SE (a 1x1 conv to ONE channel + sigmoid, pixel scaling) are computed in
    parallel from the same input and added (the paper's concurrent scSE). A 1x1
    convolution gives the class scores (no BN or ReLU on the logits).

    Differences from the paper:
        - the paper adds scSE to U-Net, SD-Net and a fully convolutional DenseNet
          for brain/organ segmentation; here it is added to the kseg U-Net
          (BN after every conv, ``same`` padding, 64 ... 1024 widths);
        - ``combine="max"`` offers the element-wise maximum aggregation that the
          authors' later journal version (IEEE TMI 2019) found best; the default is
          the MICCAI paper's addition.

    Args:
        n_classes: number of classes (1 = binary, sigmoid output).
        input_shape: ``(H, W, C)``; H and W multiples of 16 (or ``None``).
        activation: ``"softmax"`` (default), ``"sigmoid"`` or ``None`` for logits.
        base_filters: width of the first level (64, 128, 256, 512, 1024 by default).
        ratio: channel-SE reduction ratio (2 in the paper; hidden units ``max(1, C // r)``).
        combine: ``"add"`` (paper) or ``"max"``: how the cSE and sSE outputs are merged.
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> from kseg.models import scseunet
        >>> model = scseunet(n_classes=3, input_shape=(256, 256, 3))
        >>> model.output_shape
        (None, 256, 256, 3)
    """
    C.positive_int("scseunet", "base_filters", base_filters)
    C.positive_int("scseunet", "ratio", ratio, " (2 in Roy et al.)")
    C.known_name("scseunet", "combine", combine, B.SCSE_COMBINE)

    def block(x, filters, block_name):
        x = L.double_conv(x, filters, block_name)
        return B.scse(x, f"{block_name}_scse", ratio, combine)

    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    x = B.unet_body(inputs, B.level_widths(base_filters), name, block)
    outputs = L.classifier(x, n_classes, f"{name}_head", activation)
    return keras.Model(inputs, outputs, name=name)
