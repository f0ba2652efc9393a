"""MobileNet (v1) encoder models: ``mobilenet_unet`` and ``mobilenet_fcn8``."""

import keras

from kseg.models import _checks as C
from kseg.models import fcn
from kseg.models import layers as L
from kseg.models.backbones import build_encoder
from kseg.models.encoder_unet import DEFAULT_DECODER_FILTERS, encoder_unet
from kseg.models.registry import register_model


@register_model(
    "mobilenet_unet",
    min_size=32,
    test_size=(32, 32),
    test_kwargs={"alpha": 0.25, "decoder_filters": (32, 16, 16, 8, 8)},
)
def mobilenet_unet(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    alpha=1.0,
    encoder_weights=None,
    decoder_filters=DEFAULT_DECODER_FILTERS,
    name="mobilenet_unet",
):
    """UNet with a MobileNet (v1) encoder, output at the input resolution.

    Encoder: MobileNet (Howard et al., "MobileNets: Efficient Convolutional
    Neural Networks for Mobile Vision Applications", 2017) from
    ``keras.applications``, width multiplier ``alpha``. Skips by layer name:
    ``conv_pw_1_relu`` (1/2), ``conv_pw_3_relu`` (1/4), ``conv_pw_5_relu``
    (1/8), ``conv_pw_11_relu`` (1/16); the decoder starts from
    ``conv_pw_13_relu`` (1/32). Decoder: UNet's (Ronneberger et al., MICCAI
    2015): per stride 16, 8, 4, 2 upsample x2, concatenate the skip, two 3x3
    conv-BN-ReLU; a last block without skip brings the features to full
    resolution, then a linear 1x1 classifier.

    Differences from the paper:
        - MobileNet replaces UNet's contracting path; padded convolutions,
          BatchNorm and bilinear upsampling in the decoder (no cropping).
        - The old kseg ``mobilenet_unet`` output stopped at 1/2 of the input
          resolution; this one has a full-resolution block.

    Args:
        n_classes: number of classes (1 = binary with a sigmoid).
        input_shape: ``(height, width, channels)``; ``None`` sizes allowed, at least 32.
        activation: ``"softmax"`` (``"sigmoid"`` when ``n_classes == 1``),
            ``"sigmoid"`` or ``None`` for logits.
        alpha: MobileNet width multiplier (ImageNet weights exist for 0.25, 0.5,
            0.75, 1.0).
        encoder_weights: ``None`` (random) or ``"imagenet"`` or a local weights file
            (inputs preprocessed like ``--image_init sub_and_divide``; other channel counts adapt the first kernel: :mod:`kseg.models.pretrained`).
        decoder_filters: widths of the decoder blocks at strides 16, 8, 4, 2, 1.
        name: model name and prefix of the decoder's layer names.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> model = mobilenet_unet(n_classes=2, input_shape=(224, 224, 3), alpha=0.5)
        >>> model.output_shape
        (None, 224, 224, 2)
    """
    C.positive_number("mobilenet_unet", "alpha", alpha, " (1.0 = paper)")
    return encoder_unet(
        n_classes,
        input_shape,
        encoder="mobilenet",
        encoder_weights=encoder_weights,
        decoder_filters=decoder_filters,
        activation=activation,
        name=name,
        alpha=alpha,
    )


@register_model(
    "mobilenet_fcn8", divisor=32, min_size=32, test_size=(32, 32), test_kwargs={"alpha": 0.25}
)
def mobilenet_fcn8(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    alpha=1.0,
    encoder_weights=None,
    name="mobilenet_fcn8",
):
    """FCN-8s with a MobileNet (v1) encoder: class scores at 1/32, 1/16, 1/8 fused and upsampled.

    The head is :func:`kseg.models.fcn.fcn8_head`, the one shared with ``fcn8``
    (layers ``{name}_score32``, ``_up32``, ``_fuse16``, ``_score16``, ``_up16``,
    ``_fuse8``, ``_score8``, ``_up8``).

    FCN-8s (Long, Shelhamer & Darrell, "Fully Convolutional Networks for
    Semantic Segmentation", CVPR 2015) on MobileNet (Howard et al., 2017) from
    ``keras.applications``. Linear 1x1 score layers on ``conv_pw_13_relu``
    (1/32), ``conv_pw_11_relu`` (1/16) and ``conv_pw_5_relu`` (1/8), taken by
    layer name. The 1/32 scores are upsampled x2 by a transposed convolution
    initialised to bilinear interpolation and added to the 1/16 scores; the sum
    is upsampled x2 the same way and added to the 1/8 scores; a x8 transposed
    convolution fixed to bilinear interpolation gives the full-resolution scores.
    As in the paper, the score layers start at zero, the x2 upsamplings are
    learned from their bilinear start, and nothing but the output activation
    follows the scores.

    Not applied: the at-once FCN-8s's fixed scaling of the skips (pool4 x 0.01,
    pool3 x 0.0001, ``fcn8``'s ``pool_scaling``). Those factors were set for
    VGG16's unnormalised pool3/pool4 features (no BN, inputs in 0-255 minus the
    mean) against its fc7 stream; MobileNet's taps are batch-normalised and
    ReLU6-clipped to [0, 6] at every depth, so the three streams start at
    comparable scales, and the factors would all but silence the two skips.

    Differences from the paper:
        - MobileNet replaces VGG16, and the class scores are computed directly
          on MobileNet's last feature map (MobileNet has no fc6/fc7 layers to
          convolutionalise).
        - Padded ("same") transposed convolutions give exact x2/x8 sizes, so
          there is no input padding of 100 and no crop layers; the input size
          must therefore be a multiple of 32.

    Args:
        n_classes: number of classes (1 = binary with a sigmoid).
        input_shape: ``(height, width, channels)``; height and width multiples of
            32 (or ``None``).
        activation: ``"softmax"`` (``"sigmoid"`` when ``n_classes == 1``),
            ``"sigmoid"`` or ``None`` for logits.
        alpha: MobileNet width multiplier (ImageNet weights exist for 0.25, 0.5,
            0.75, 1.0).
        encoder_weights: ``None`` (random) or ``"imagenet"`` or a local weights file
            (inputs preprocessed like ``--image_init sub_and_divide``; other channel counts adapt the first kernel: :mod:`kseg.models.pretrained`).
        name: model name and prefix of the head's layer names.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> model = mobilenet_fcn8(n_classes=21, input_shape=(224, 224, 3))
        >>> model.output_shape
        (None, 224, 224, 21)
    """
    C.positive_number("mobilenet_fcn8", "alpha", alpha, " (1.0 = paper)")
    inputs = keras.Input(tuple(input_shape), name=f"{name}_input")
    _, taps = build_encoder("mobilenet", inputs, weights=encoder_weights, alpha=alpha)
    logits = fcn.fcn8_head(
        taps[8], taps[16], taps[32], n_classes, name,
        score_initializer="zeros", train_final_upsampling=False,
    )
    outputs = L.output_activation(logits, n_classes, name, activation=activation)
    return keras.Model(inputs, outputs, name=name)
