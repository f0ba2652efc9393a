"""U-Net (Ronneberger et al. 2015), on the U-Net body shared with the variants (``_unet_blocks``)."""

import functools

import keras

from kseg.errors import ModelConfigError
from kseg.models import _checks as C
from kseg.models import _unet_blocks as B
from kseg.models import layers as L
from kseg.models.backbones import ENCODERS
from kseg.models.encoder_unet import encoder_unet
from kseg.models.registry import register_model

MODEL = "unet"


def _divisor(options):
    """Input sizes must be multiples of ``2**depth`` (the paper's encoder); a
    ``keras.applications`` encoder takes any size from its minimum."""
    if options["encoder"] is not None:
        return 1
    return 2 ** C.positive_int(MODEL, "depth", options["depth"], " (4 in the paper)")


def _min_size(options):
    if options["encoder"] is not None:
        return ENCODERS[C.known_name(MODEL, "encoder", options["encoder"], ENCODERS)].min_size
    return _divisor(options)


@register_model(
    MODEL, divisor=_divisor, min_size=_min_size, test_size=(32, 32), test_kwargs={"base_filters": 8}
)
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
    (64, 128, 256, 512, 1024 by default). The encoder-decoder is
    :func:`kseg.models._unet_blocks.unet_body`, the body every U-Net variant of
    kseg shares, with double-conv level blocks.

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
    if encoder is not None:
        return encoder_unet(
            n_classes=n_classes,
            input_shape=input_shape,
            encoder=encoder,
            encoder_weights=encoder_weights,
            activation=activation,
            name=name,
        )
    if encoder_weights is not None:
        raise ModelConfigError(
            f"{MODEL}: encoder_weights={encoder_weights!r} needs an encoder= name "
            "(the paper's U-Net has no pretrained weights); pass encoder_weights=None"
        )
    C.positive_int(MODEL, "base_filters", base_filters, " (64 in the paper)")
    C.flag(MODEL, "use_bn", use_bn)
    C.rate(MODEL, "dropout", dropout)
    block = functools.partial(_double_conv_block, use_bn=use_bn)
    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    x = B.unet_body(
        inputs, B.level_widths(base_filters, depth), name, block, bottleneck_dropout=dropout
    )
    outputs = L.classifier(x, n_classes, f"{name}_head", activation)
    return keras.Model(inputs, outputs, name=name)


def _double_conv_block(x, filters, name, use_bn=True):
    return L.double_conv(x, filters, name, use_bn=use_bn)
