"""VGG-UNet: a UNet whose contracting path is VGG16 from ``keras.applications``."""

from kseg.models.encoder_unet import encoder_unet
from kseg.models.registry import register_model


@register_model(
    "vggunet",
    min_size=32,
    test_size=(32, 32),
    test_kwargs={"decoder_filters": (32, 32, 16, 16, 8)},
)
def vggunet(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    encoder_weights=None,
    decoder_filters=(512, 512, 256, 128, 64),
    name="vggunet",
):
    """UNet with a VGG16 encoder (ImageNet-pretrainable), output at the input resolution.

    The contracting path is VGG16 (Simonyan & Zisserman, "Very Deep
    Convolutional Networks for Large-Scale Image Recognition", ICLR 2015) from
    ``keras.applications``; the expanding path is UNet's (Ronneberger et al.,
    "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI
    2015), the combination popularised by TernausNet (Iglovikov & Shvets, 2018).
    Skips are taken by layer name: ``block1_conv2`` (full resolution),
    ``block2_conv2``, ``block3_conv3``, ``block4_conv3``, ``block5_conv3``; the
    decoder starts from ``block5_pool`` (1/32). Each decoder block upsamples x2,
    concatenates the skip and applies two 3x3 conv-BN-ReLU; the default widths
    mirror the encoder (512, 512, 256, 128, 64) as in UNet.

    Differences from the paper:
        - VGG16 (13 convolutions, 5 poolings, no BatchNorm in the encoder)
          replaces UNet's contracting path, so ImageNet weights can be used.
        - Padded convolutions and BatchNorm in the decoder; bilinear upsampling
          to the skip's size instead of 2x2 up-convolutions. Any input size from
          32 works; multiples of 32 give exact x2 steps.
        - The old kseg ``vggunet`` took its features by layer index and stopped
          below the input resolution; this one ends at full resolution.

    Args:
        n_classes: number of classes (1 = binary with a sigmoid).
        input_shape: ``(height, width, channels)``; ``None`` sizes allowed, at least 32.
        activation: ``"softmax"`` (``"sigmoid"`` when ``n_classes == 1``),
            ``"sigmoid"`` or ``None`` for logits.
        encoder_weights: ``None`` (random) or ``"imagenet"`` or a local weights file
            (inputs preprocessed like ``--image_init sub_mean``, RGB: the BGR-trained first
            kernel is reversed; other channel counts adapt the first kernel: :mod:`kseg.models.pretrained`).
        decoder_filters: widths of the decoder blocks at strides 16, 8, 4, 2, 1.
        name: model name and prefix of the decoder's layer names.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> model = vggunet(n_classes=3, input_shape=(224, 224, 3))
        >>> model.output_shape
        (None, 224, 224, 3)
    """
    return encoder_unet(
        n_classes,
        input_shape,
        encoder="vgg16",
        encoder_weights=encoder_weights,
        decoder_filters=decoder_filters,
        activation=activation,
        name=name,
    )
