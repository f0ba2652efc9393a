"""U-Net (Ronneberger et al. 2015)."""

import keras
from keras import layers as kl

from kseg.models import layers as L
from kseg.models.registry import check_input_size, register_model


@register_model("unet", divisor=16, min_size=16, test_size=(32, 32), test_kwargs={"base_filters": 8})
def unet(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    base_filters=64,
    depth=4,
    use_bn=True,
    dropout=0.0,
    encoder=None,
    encoder_weights=None,
    name="unet",
):
    """U-Net: a contracting path and a symmetric expanding path joined by skips.

    Reference: O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks
    for Biomedical Image Segmentation", MICCAI 2015 (arXiv:1505.04597).

    Each of the ``depth`` (4) encoder levels and the bottleneck is a double 3x3
    convolution followed (in the encoder) by 2x2 max pooling; each of the 4 decoder
    levels is a 2x2 up-convolution (transposed conv, stride 2) halving the
    channels, concatenation with the encoder feature of the same level, and a
    double 3x3 convolution -- at EVERY level, including the deepest one. A 1x1
    convolution gives the class scores. Widths are ``base_filters * 2**level``
    (64, 128, 256, 512, 1024 by default).

    Differences from the paper:
        - ``same`` padding instead of ``valid`` (output size = input size, no
          cropping of the skips, no overlap-tile strategy needed);
        - batch normalisation after every conv (``use_bn=False`` for the original);
        - optional dropout at the bottleneck (the paper mentions dropout at the end of
          the contracting path; default 0).

    Args:
        n_classes: number of classes (1 = binary, sigmoid output).
        input_shape: ``(H, W, C)``; H and W multiples of ``2**depth`` or ``None``.
        activation: ``"softmax"`` (default), ``"sigmoid"`` or ``None`` for logits.
        base_filters: width of the first level.
        depth: number of pooling levels (4 in the paper).
        use_bn: batch normalisation after each conv.
        dropout: dropout rate applied to the bottleneck.
        encoder: ``None`` for the paper's encoder, or the name of a keras.applications
            encoder (``"resnet50"``, ``"mobilenetv2"``, ``"efficientnetb0"``, ``"vgg16"``)
            to use as the contracting path with a U-Net decoder.
        encoder_weights: ``None`` or ``"imagenet"`` (with ``encoder``).
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> from kseg.models import unet
        >>> model = unet(n_classes=3, input_shape=(256, 256, 3))
        >>> model.output_shape
        (None, 256, 256, 3)
    """
    L.check_channels_last()
    if encoder is not None:
        from kseg.models.encoder_unet import encoder_unet

        return encoder_unet(
            n_classes=n_classes,
            input_shape=input_shape,
            encoder=encoder,
            encoder_weights=encoder_weights,
            activation=activation,
            name=name,
        )
    if encoder_weights is not None:
        raise ValueError("encoder_weights needs an encoder= name (the plain U-Net has no pretrained weights)")
    if depth < 1:
        raise ValueError(f"depth must be >= 1; received {depth}")
    check_input_size(name, input_shape[0], input_shape[1], 2**depth, 2**depth)

    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    x = inputs
    skips = []
    for level in range(depth):
        x = L.double_conv(x, base_filters * 2**level, f"{name}_enc{level + 1}", use_bn=use_bn)
        skips.append(x)
        x = kl.MaxPooling2D(2, name=f"{name}_enc{level + 1}_pool")(x)
    x = L.double_conv(x, base_filters * 2**depth, f"{name}_bottleneck", use_bn=use_bn)
    if dropout:
        x = kl.Dropout(dropout, name=f"{name}_bottleneck_dropout")(x)
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = kl.Conv2DTranspose(
            filters, 2, strides=2, padding="same", kernel_initializer="he_normal",
            name=f"{name}_dec{level + 1}_upconv",
        )(x)
        x = kl.Concatenate(name=f"{name}_dec{level + 1}_concat")([skips[level], x])
        x = L.double_conv(x, filters, f"{name}_dec{level + 1}", use_bn=use_bn)
    outputs = L.classifier(x, n_classes, f"{name}_head", activation)
    return keras.Model(inputs, outputs, name=name)
