"""FCN-8s (Long, Shelhamer, Darrell 2015) on a VGG16 encoder."""

import keras
from keras import layers as kl

from kseg.models import layers as L
from kseg.models.registry import check_input_size, register_model


def vgg16_encoder(inputs, encoder_weights=None):
    """keras.applications VGG16 (no top) on ``inputs``; returns the model.

    ``encoder_weights="imagenet"`` loads the ImageNet weights (downloaded by Keras
    on first use); a failed download is reported as a :class:`KsegError`.
    """
    from kseg.errors import KsegError

    if encoder_weights not in (None, "imagenet"):
        raise ValueError(f"encoder_weights must be None or 'imagenet'; received {encoder_weights!r}")
    try:
        return keras.applications.VGG16(
            include_top=False, weights=encoder_weights, input_tensor=inputs
        )
    except Exception as e:  # network errors surface as many types
        if encoder_weights is None:
            raise
        raise KsegError(
            f"could not load ImageNet weights for VGG16 ({type(e).__name__}: {e}); "
            "pass encoder_weights=None or place the weight file in ~/.keras/models/"
        ) from None


@register_model(
    "fcn8", divisor=32, min_size=32, test_size=(32, 32), test_kwargs={"fc_filters": 64}
)
def fcn8(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    encoder_weights=None,
    fc_filters=4096,
    dropout=0.5,
    name="fcn8",
):
    """FCN-8s: VGG16 with convolutionalised fc layers and skip fusion at strides 16 and 8.

    Reference: J. Long, E. Shelhamer, T. Darrell, "Fully Convolutional Networks for
    Semantic Segmentation", CVPR 2015 (arXiv:1411.4038).

    fc6 (7x7, 4096) and fc7 (1x1, 4096) become convolutions on pool5; linear
    1x1 score layers are taken on fc7, pool4 and pool3; the fc7 scores are
    upsampled 2x by a transposed convolution, added to the pool4 scores,
    upsampled 2x again, added to the pool3 scores and upsampled 8x to the input
    size. All three transposed convolutions are initialised to bilinear
    interpolation and remain learnable. The class scores are linear (no ReLU or BN).

    Differences from the paper:
        - ``same`` padding everywhere instead of the 100-pixel input padding and
          crop layers of the Caffe model; any input whose sides are multiples of 32
          gives an output of exactly the input size;
        - the encoder is keras.applications' VGG16 (ImageNet weights optional); the
          fc6/fc7 weights are not converted from the classifier, they start random;
        - the score layers are not zero-initialised (Keras' default initialiser);
          the pool4/pool3 scores are not rescaled (the "at-once" variant's 0.01/0.0001).

    Args:
        n_classes: number of classes (1 = binary, sigmoid output).
        input_shape: ``(H, W, 3)`` with H and W multiples of 32, or ``None``.
        activation: ``"softmax"``, ``"sigmoid"`` or ``None`` for logits.
        encoder_weights: ``None`` or ``"imagenet"`` for the VGG16 encoder.
        fc_filters: width of fc6/fc7 (4096 in the paper).
        dropout: dropout after fc6 and fc7.
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, 3)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> from kseg.models import fcn8
        >>> model = fcn8(n_classes=21, input_shape=(320, 480, 3))
    """
    L.check_channels_last()
    check_input_size(name, input_shape[0], input_shape[1], 32, 32)
    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    vgg = vgg16_encoder(inputs, encoder_weights)
    pool3 = vgg.get_layer("block3_pool").output
    pool4 = vgg.get_layer("block4_pool").output
    pool5 = vgg.get_layer("block5_pool").output

    # TensorFlow 2.21's oneDNN bfloat16 training step of a conv from 4096 input channels to
    # a few outputs (score_fr) corrupts the heap: the process aborts with "malloc(): unaligned
    # tcache chunk detected" (2048 channels are fine, float32 is fine). Under mixed_bfloat16
    # that one layer computes in float32 (0.01% of the FLOPs).
    fc_dtype = ("float32" if fc_filters > 2048 and keras.mixed_precision.global_policy().name == "mixed_bfloat16"
                else None)
    x = kl.Conv2D(fc_filters, 7, padding="same", activation="relu", name=f"{name}_fc6")(pool5)
    x = kl.Dropout(dropout, name=f"{name}_fc6_dropout")(x)
    x = kl.Conv2D(fc_filters, 1, padding="same", activation="relu", name=f"{name}_fc7")(x)
    x = kl.Dropout(dropout, name=f"{name}_fc7_dropout")(x)
    score_fr = kl.Conv2D(n_classes, 1, name=f"{name}_score_fr", dtype=fc_dtype)(x)

    def up(t, factor, lname):
        return kl.Conv2DTranspose(
            n_classes, 2 * factor, strides=factor, padding="same", use_bias=False,
            kernel_initializer=L.BilinearInitializer(), name=lname,
        )(t)

    up2 = up(score_fr, 2, f"{name}_upscore2")
    score_pool4 = kl.Conv2D(n_classes, 1, name=f"{name}_score_pool4")(pool4)
    fuse4 = kl.Add(name=f"{name}_fuse_pool4")([up2, score_pool4])
    up4 = up(fuse4, 2, f"{name}_upscore_pool4")
    score_pool3 = kl.Conv2D(n_classes, 1, name=f"{name}_score_pool3")(pool3)
    fuse3 = kl.Add(name=f"{name}_fuse_pool3")([up4, score_pool3])
    logits = up(fuse3, 8, f"{name}_upscore8")
    outputs = L.output_activation(logits, n_classes, f"{name}_head", activation)
    return keras.Model(inputs, outputs, name=name)
