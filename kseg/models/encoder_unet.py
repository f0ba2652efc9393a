"""A UNet decoder over any ``keras.applications`` encoder of :mod:`kseg.models.backbones`.

:func:`encoder_unet` is not registered by itself: ``unet(encoder="resnet50")``,
``vggunet`` and ``mobilenet_unet`` are built with it, and their registration
checks the shared options and the input size (at least the encoder's
``min_size``); called directly, it checks only its own options.
"""

import keras
from keras import layers

from kseg.models import _checks as C
from kseg.models import layers as L
from kseg.models.backbones import build_encoder

DEFAULT_DECODER_FILTERS = (256, 128, 64, 32, 16)


def encoder_unet(
    n_classes=2,
    input_shape=(None, None, 3),
    encoder="resnet50",
    encoder_weights=None,
    decoder_filters=DEFAULT_DECODER_FILTERS,
    activation="softmax",
    name="unet",
    **encoder_kwargs,
):
    """UNet with a ``keras.applications`` encoder (ResNet50, MobileNetV2, EfficientNetB0, VGG16, ...).

    The encoder's skip features (taken by layer name, see
    :data:`kseg.models.backbones.ENCODERS`) feed a UNet decoder (Ronneberger et
    al., "U-Net: Convolutional Networks for Biomedical Image Segmentation",
    MICCAI 2015): starting from the stride-32 feature, each decoder block
    upsamples x2 (bilinear), concatenates the encoder feature of that stride and
    applies two 3x3 conv-BN-ReLU layers, at strides 16, 8, 4, 2 and 1. Encoders
    without a full-resolution feature (all but VGG16) get a last block without a
    skip, as in segmentation_models. A linear 1x1 classifier gives the class
    scores at the input resolution.

    Differences from the paper:
        - The encoder is an ImageNet classification network instead of UNet's
          own contracting path, and the convolutions are padded ("same") with
          BatchNorm, so the output has the input size (no cropping).
        - Upsampling is bilinear resizing to the skip's size followed by
          convolutions instead of a learned 2x2 up-convolution; the resize also
          absorbs off-by-one sizes (odd inputs, Xception's unpadded convolutions).

    Args:
        n_classes: number of classes (1 = binary with a sigmoid).
        input_shape: ``(height, width, channels)``; ``None`` sizes allowed.
        encoder: a name from :data:`kseg.models.backbones.ENCODERS`.
        encoder_weights: ``None`` (random) or ``"imagenet"`` (downloaded once to
            ``~/.keras/models/``) or a local weights file; other channel counts adapt the first kernel: :mod:`kseg.models.pretrained`;
            efficientnetb0 needs 3 channels).
        decoder_filters: widths of the five decoder blocks, deepest first.
        activation: ``"softmax"`` (``"sigmoid"`` when ``n_classes == 1``),
            ``"sigmoid"`` or ``None`` for logits.
        name: model name, prefix of the decoder's layer names.
        **encoder_kwargs: passed to the ``keras.applications`` function
            (e.g. ``alpha`` for the MobileNets).

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> model = encoder_unet(3, (128, 128, 3), encoder="mobilenetv2")
        >>> model.output_shape
        (None, 128, 128, 3)
    """
    decoder_filters = C.positive_ints(
        name, "decoder_filters", decoder_filters, 5, " (the widths at strides 16, 8, 4, 2, 1)"
    )

    inputs = keras.Input(tuple(input_shape), name=f"{name}_input")
    _, taps = build_encoder(encoder, inputs, weights=encoder_weights, **encoder_kwargs)
    x = unet_decoder(taps, inputs, decoder_filters, name)
    outputs = L.classifier(x, n_classes, name, activation=activation)
    return keras.Model(inputs, outputs, name=name)


def unet_decoder(taps, inputs, decoder_filters, name):
    """The UNet decoder: from ``taps[32]`` up to the resolution of ``inputs``.

    One block per stride 16, 8, 4, 2, 1 (``decoder_filters`` deepest first):
    resize to the skip's size, concatenate the skip (the input-resolution block
    has none unless ``taps[1]`` exists), two 3x3 conv-BN-ReLU. Layers are named
    ``{name}_dec{stride}_*``.
    """
    x = taps[max(taps)]
    for stride, filters in zip((16, 8, 4, 2, 1), decoder_filters):
        prefix = f"{name}_dec{stride}"
        skip = taps.get(stride)
        ref = inputs if skip is None else skip
        x = L.ResizeLike(name=f"{prefix}_up")([x, ref])
        if skip is not None:
            x = layers.Concatenate(name=f"{prefix}_concat")([x, skip])
        x = L.double_conv(x, filters, prefix)
    return x
