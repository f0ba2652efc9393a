"""FCN-8s (Long, Shelhamer, Darrell 2015): the one FCN-8s head of the zoo, and ``fcn8``.

:func:`fcn8_head` is used by ``fcn8`` (VGG16 encoder, with the convolutionalised
fc6/fc7 layers) and ``mobilenet_fcn8`` (MobileNet encoder, scores on its last
feature map).
"""

import keras
from keras import layers

from kseg.models import _checks as C
from kseg.models import layers as L
from kseg.models.backbones import build_encoder
from kseg.models.registry import register_model

# Layer-name suffixes of the head, by role (strides 32, 16, 8 of the fused scores).
FCN8_STRIDE_NAMES = {
    "score32": "score32", "score16": "score16", "score8": "score8",
    "up32": "up32", "up16": "up16", "up8": "up8", "fuse16": "fuse16", "fuse8": "fuse8",
}
# The names of the authors' Caffe model (used by ``fcn8``).
FCN8_CAFFE_NAMES = {
    "score32": "score_fr", "score16": "score_pool4", "score8": "score_pool3",
    "up32": "upscore2", "up16": "upscore_pool4", "up8": "upscore8",
    "fuse16": "fuse_pool4", "fuse8": "fuse_pool3",
}


def fcn8_head(
    feat8,
    feat16,
    feat32,
    n_classes,
    name,
    *,
    fc_filters=None,
    dropout=0.5,
    score_initializer="glorot_uniform",
    train_final_upsampling=True,
    layer_names=None,
):
    """The FCN-8s head: class scores at strides 32, 16 and 8, fused and upsampled.

    Optional convolutionalised fully connected layers on ``feat32`` (``fc_filters``:
    fc6 7x7 and fc7 1x1, ReLU, each followed by dropout; ``{name}_fc6``,
    ``{name}_fc7``). Linear 1x1 score layers on (fc7 or) ``feat32``, ``feat16``
    and ``feat8``; the stride-32 scores are upsampled x2 by a transposed
    convolution and added to the stride-16 scores, the sum is upsampled x2 and
    added to the stride-8 scores, and a x8 transposed convolution gives the
    scores at the input resolution. The three transposed convolutions (no bias)
    start as bilinear interpolation; the x2 ones are learned, the x8 one too
    unless ``train_final_upsampling=False`` (fixed bilinear, as in the paper).

    Args:
        feat8, feat16, feat32: encoder features at strides 8, 16 and 32.
        n_classes: number of classes (score channels).
        name: layer-name prefix.
        fc_filters: width of fc6/fc7, or ``None`` for no fc layers.
        dropout: dropout rate after fc6 and fc7.
        score_initializer: kernel initializer of the score layers (``"zeros"``
            as in the paper, or Keras' default).
        train_final_upsampling: whether the x8 upsampling is trainable.
        layer_names: ``{role: suffix}`` for the score, upsampling and fusion
            layers (default :data:`FCN8_STRIDE_NAMES`; ``fcn8`` uses the Caffe
            model's :data:`FCN8_CAFFE_NAMES`).

    Returns:
        The linear class scores at 8x the resolution of ``feat8``.
    """
    n = {**FCN8_STRIDE_NAMES, **(layer_names or {})}
    x = feat32
    if fc_filters:
        # TensorFlow 2.21's oneDNN bfloat16 training step of a conv from 4096 input channels
        # to a few outputs (the stride-32 scores) corrupts the heap: the process aborts with
        # "malloc(): unaligned tcache chunk detected" (2048 channels are fine, float32 is
        # fine). Under mixed_bfloat16 that one layer computes in float32 (0.01% of the FLOPs).
        bf16 = keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        score32_dtype = "float32" if fc_filters > 2048 and bf16 else None
        x = layers.Conv2D(fc_filters, 7, padding="same", activation="relu", name=f"{name}_fc6")(x)
        x = layers.Dropout(dropout, name=f"{name}_fc6_dropout")(x)
        x = layers.Conv2D(fc_filters, 1, padding="same", activation="relu", name=f"{name}_fc7")(x)
        x = layers.Dropout(dropout, name=f"{name}_fc7_dropout")(x)
    else:
        score32_dtype = None

    def score(t, role, dtype=None):
        return layers.Conv2D(
            n_classes, 1, kernel_initializer=score_initializer, dtype=dtype,
            name=f"{name}_{n[role]}",
        )(t)

    def upsample(t, factor, role, trainable=True):
        return layers.Conv2DTranspose(
            n_classes,
            2 * factor,
            strides=factor,
            padding="same",
            use_bias=False,
            kernel_initializer=L.BilinearInitializer(),
            trainable=trainable,
            name=f"{name}_{n[role]}",
        )(t)

    x = upsample(score(x, "score32", score32_dtype), 2, "up32")
    x = layers.Add(name=f"{name}_{n['fuse16']}")([x, score(feat16, "score16")])
    x = upsample(x, 2, "up16")
    x = layers.Add(name=f"{name}_{n['fuse8']}")([x, score(feat8, "score8")])
    return upsample(x, 8, "up8", trainable=train_final_upsampling)


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
        - the encoder is kseg's VGG16 (:func:`kseg.models.vgg.vgg16_encoder`, the
          layers of keras.applications' VGG16; ImageNet weights optional); the
          fc6/fc7 weights are not converted from the classifier, they start random;
        - the score layers are not zero-initialised (Keras' default initialiser);
          the pool4/pool3 scores are not rescaled (the "at-once" variant's 0.01/0.0001).

    Args:
        n_classes: number of classes (1 = binary, sigmoid output).
        input_shape: ``(H, W, 3)`` with H and W multiples of 32, or ``None``.
        activation: ``"softmax"``, ``"sigmoid"`` or ``None`` for logits.
        encoder_weights: ``None``, ``"imagenet"`` or a keras.applications VGG16
            weights file for the encoder.
        fc_filters: width of fc6/fc7 (4096 in the paper).
        dropout: dropout after fc6 and fc7.
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, 3)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> from kseg.models import fcn8
        >>> model = fcn8(n_classes=21, input_shape=(320, 480, 3))
    """
    C.positive_int("fcn8", "fc_filters", fc_filters, " (4096 in the paper)")
    C.rate("fcn8", "dropout", dropout)
    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    vgg, _ = build_encoder("vgg16", inputs, weights=encoder_weights)
    pool3, pool4, pool5 = (vgg.get_layer(f"block{s}_pool").output for s in (3, 4, 5))
    logits = fcn8_head(
        pool3, pool4, pool5, n_classes, name,
        fc_filters=fc_filters, dropout=dropout, layer_names=FCN8_CAFFE_NAMES,
    )
    outputs = L.output_activation(logits, n_classes, f"{name}_head", activation)
    return keras.Model(inputs, outputs, name=name)
