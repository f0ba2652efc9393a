"""FCN-8s (Long, Shelhamer, Darrell 2015): the one FCN-8s head of the zoo, and ``fcn8``.

:func:`fcn8_head` is used by ``fcn8`` (VGG16 encoder, with the convolutionalised
fc6/fc7 layers) and ``mobilenet_fcn8`` (MobileNet encoder, scores on its last
feature map).
"""

import keras
from keras import layers

from kseg.models import _checks as C
from kseg.models import layers as L
from kseg.models import pretrained, vgg
from kseg.models.backbones import build_encoder
from kseg.models.registry import register_model

# Layer-name suffixes of the head, by role (strides 32, 16, 8 of the fused scores).
FCN8_STRIDE_NAMES = {
    "score32": "score32", "score16": "score16", "score8": "score8",
    "up32": "up32", "up16": "up16", "up8": "up8", "fuse16": "fuse16", "fuse8": "fuse8",
    "scale16": "scale16", "scale8": "scale8",
}
# The names of the authors' Caffe model (used by ``fcn8``).
FCN8_CAFFE_NAMES = {
    "score32": "score_fr", "score16": "score_pool4", "score8": "score_pool3",
    "up32": "upscore2", "up16": "upscore_pool4", "up8": "upscore8",
    "fuse16": "fuse_pool4", "fuse8": "fuse_pool3",
    "scale16": "scale_pool4", "scale8": "scale_pool3",
}
# The at-once FCN-8s's fixed factors on the pool4 and pool3 skips (voc-fcn8s-atonce).
AT_ONCE_SKIP_SCALES = (0.01, 0.0001)


def fcn8_head(
    feat8,
    feat16,
    feat32,
    n_classes,
    name,
    *,
    fc_filters=None,
    dropout=0.5,
    score_initializer="zeros",
    skip_scales=None,
    train_upsampling=True,
    train_final_upsampling=False,
    layer_names=None,
):
    """The FCN-8s head: class scores at strides 32, 16 and 8, fused and upsampled.

    Optional convolutionalised fully connected layers on ``feat32`` (``fc_filters``:
    fc6 7x7 and fc7 1x1, ReLU, each followed by dropout; ``{name}_fc6``,
    ``{name}_fc7``). Linear 1x1 score layers on (fc7 or) ``feat32``, ``feat16``
    and ``feat8`` (``feat16``/``feat8`` first multiplied by the fixed
    ``skip_scales`` when given); the stride-32 scores are upsampled x2 by a
    transposed convolution and added to the stride-16 scores, the sum is
    upsampled x2 and added to the stride-8 scores, and a x8 transposed
    convolution gives the scores at the input resolution. The three transposed
    convolutions (no bias) start as bilinear interpolation.

    Args:
        feat8, feat16, feat32: encoder features at strides 8, 16 and 32.
        n_classes: number of classes (score channels).
        name: layer-name prefix.
        fc_filters: width of fc6/fc7, or ``None`` for no fc layers.
        dropout: dropout rate after fc6 and fc7.
        score_initializer: kernel initializer of the score layers (``"zeros"``
            as in the paper; biases start at zero in any case).
        skip_scales: ``(s16, s8)``: fixed factors on ``feat16`` and ``feat8``
            before their score layers (``Rescaling`` layers ``{name}_scale16`` /
            ``_scale8``; the at-once FCN-8s: :data:`AT_ONCE_SKIP_SCALES`), or
            ``None``.
        train_upsampling: whether the two x2 upsamplings are trainable.
        train_final_upsampling: whether the x8 upsampling is trainable.
        layer_names: ``{role: suffix}`` for the score, scaling, upsampling and
            fusion layers (default :data:`FCN8_STRIDE_NAMES`; ``fcn8`` uses the
            Caffe model's :data:`FCN8_CAFFE_NAMES`).

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

    def skip(t, role, scale):
        if scale is None:
            return t
        return layers.Rescaling(scale, name=f"{name}_{n[role]}")(t)

    s16, s8 = skip_scales if skip_scales is not None else (None, None)
    x = upsample(score(x, "score32", score32_dtype), 2, "up32", trainable=train_upsampling)
    x = layers.Add(name=f"{name}_{n['fuse16']}")(
        [x, score(skip(feat16, "scale16", s16), "score16")]
    )
    x = upsample(x, 2, "up16", trainable=train_upsampling)
    x = layers.Add(name=f"{name}_{n['fuse8']}")([x, score(skip(feat8, "scale8", s8), "score8")])
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
    pool_scaling=True,
    learnable_upsampling=True,
    learnable_final_upsampling=False,
    name="fcn8",
):
    """FCN-8s: VGG16 with convolutionalised fc layers and skip fusion at strides 16 and 8.

    Reference: J. Long, E. Shelhamer, T. Darrell, "Fully Convolutional Networks for
    Semantic Segmentation", CVPR 2015 (arXiv:1411.4038); the "at-once" FCN-8s of the
    authors' reference code (shelhamer/fcn.berkeleyvision.org, voc-fcn8s-atonce/net.py)
    and of the PAMI 2017 version.

    As published, by default:

    - fc6 (7x7, 4096) and fc7 (1x1, 4096) are convolutions on pool5, each with ReLU
      and dropout 0.5; with ImageNet weights they are VGG16's classifier layers fc1
      and fc2 reshaped (:func:`kseg.models.vgg.fc_as_conv`), not random;
    - linear 1x1 score layers (``fcn8_score_fr``, ``_score_pool4``, ``_score_pool3``)
      start at zero, as in the authors' nets (Caffe's default filler), so training
      starts from the encoder's features with all-zero scores;
    - pool4 and pool3 are multiplied by the fixed 0.01 and 0.0001 before their score
      layers (``fcn8_scale_pool4``, ``_scale_pool3``): the at-once model's scaling,
      which lets the three streams be trained together from the start;
    - the stride-32 scores are upsampled 2x (``fcn8_upscore2``) and added to the pool4
      scores, the sum upsampled 2x (``fcn8_upscore_pool4``) and added to the pool3
      scores; these x2 transposed convolutions start as bilinear interpolation and
      are learned (the CVPR paper, Sec. 4.2);
    - the last 8x upsampling (``fcn8_upscore8``, 16x16 kernel, stride 8) is fixed
      bilinear interpolation (not trainable);
    - no ReLU or BN after the scores; then the output activation.

    Differences from the paper:
        - ``same`` padding everywhere instead of the 100-pixel input padding, the
          unpadded fc6 and the crop layers (with their offsets) of the Caffe model; any
          input whose sides are multiples of 32 gives an output of exactly the input
          size, and the skip scores are aligned without the Caffe crop offsets;
        - the encoder is kseg's VGG16 (:func:`kseg.models.vgg.vgg16_encoder`, the
          layers of keras.applications' VGG16), whose ImageNet weights are
          keras.applications' (converted from the same Caffe VGG16);
        - the authors' released nets (voc-fcn8s, voc-fcn8s-atonce) also fix the two x2
          upsamplings (``lr_mult: 0``); the paper's text learns them, which is kseg's
          default (``learnable_upsampling=False`` gives the released nets);
        - biases at twice the learning rate and without weight decay (Caffe
          ``lr_mult: 2, decay_mult: 0``) are a training setting, not part of the model.

    Options (the variants): ``pool_scaling=False`` gives the staged FCN-8s's unscaled
    skips, ``learnable_final_upsampling=True`` learns the 8x upsampling from its
    bilinear start (kseg's earlier fcn8), ``learnable_upsampling=False`` fixes the x2
    upsamplings.

    Pretrained weights (``encoder_weights``):
        - ``"imagenet"`` with ``fc_filters=4096``: keras.applications' VGG16 file *with*
          its classifier (``vgg16_weights_tf_dim_ordering_tf_kernels.h5``, 528 MB, into
          ``~/.keras/models/``) gives the 13 convolutions and fc6/fc7; with another
          ``fc_filters``, the file without the classifier (58 MB) gives the
          convolutions only and fc6/fc7 start random;
        - a file path: a Keras VGG16 weights file (legacy ``.h5`` as keras.applications
          writes it, or Keras 3 ``.weights.h5``) with keras.applications' layer names.
          A file without the classifier (``include_top=False``) gives the convolutions;
          one with ``fc1``/``fc2`` also gives fc6/fc7, and their width must equal
          ``fc_filters``;
        - block1_conv1's kernel, trained on BGR images (Caffe), gets its input
          channels reversed for kseg's RGB input and, with ``C != 3`` input channels,
          is adapted (:func:`kseg.models.pretrained.rgb_input_kernel`, then
          :func:`~kseg.models.pretrained.adapt_input_kernel`).

    Args:
        n_classes: number of classes (1 = binary, sigmoid output).
        input_shape: ``(H, W, C)`` with H and W multiples of 32, or ``None``.
        activation: ``"softmax"``, ``"sigmoid"`` or ``None`` for logits.
        encoder_weights: ``None``, ``"imagenet"`` or a VGG16 weights file (above).
        fc_filters: width of fc6/fc7 (4096 in the paper).
        dropout: dropout after fc6 and fc7.
        pool_scaling: multiply pool4 / pool3 by 0.01 / 0.0001 before scoring (at-once).
        learnable_upsampling: train the two x2 upsamplings (paper) or fix them.
        learnable_final_upsampling: train the x8 upsampling (default: fixed bilinear).
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Raises:
        EncoderConfigError: ``encoder_weights`` is not None, ``"imagenet"`` or a VGG16
            weights file, or the file's fc1/fc2 width is not ``fc_filters``.
        EncoderWeightsError: the ImageNet file could not be downloaded, or the file is
            not HDF5.

    Example:
        >>> from kseg.models import fcn8
        >>> model = fcn8(n_classes=21, input_shape=(320, 480, 3))
    """
    C.positive_int("fcn8", "fc_filters", fc_filters, " (4096 in the paper)")
    C.rate("fcn8", "dropout", dropout)
    C.flag("fcn8", "pool_scaling", pool_scaling)
    C.flag("fcn8", "learnable_upsampling", learnable_upsampling)
    C.flag("fcn8", "learnable_final_upsampling", learnable_final_upsampling)
    encoder_weights = pretrained.check_weights_value("fcn8", encoder_weights)
    # read (and download) the weights before building: a failure costs nothing
    source = (
        None if encoder_weights is None
        else vgg.vgg16_weights("fcn8", encoder_weights, fc_width=fc_filters)
    )
    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    encoder, _ = build_encoder("vgg16", inputs)
    pool3, pool4, pool5 = (encoder.get_layer(f"block{s}_pool").output for s in (3, 4, 5))
    logits = fcn8_head(
        pool3, pool4, pool5, n_classes, name,
        fc_filters=fc_filters, dropout=dropout, layer_names=FCN8_CAFFE_NAMES,
        score_initializer="zeros",
        skip_scales=AT_ONCE_SKIP_SCALES if pool_scaling else None,
        train_upsampling=bool(learnable_upsampling),
        train_final_upsampling=bool(learnable_final_upsampling),
    )
    outputs = L.output_activation(logits, n_classes, f"{name}_head", activation)
    model = keras.Model(inputs, outputs, name=name)
    if source is not None:
        _load_vgg16(model, source, name, inputs.shape[-1])
    return model


def _load_vgg16(model, weights, name, channels):
    """Set the 13 VGG16 convolutions (block1_conv1 adapted to ``channels``) and, when
    ``weights`` has them, fc6/fc7 from fc1/fc2."""
    for layer in vgg.VGG16_CONV_NAMES:
        kernel, bias = weights[layer]
        if layer == vgg.VGG16_CONV_NAMES[0]:
            kernel = vgg.first_kernel(kernel, channels)
        model.get_layer(layer).set_weights([kernel, bias])
    if "fc1" in weights:
        fc6, fc7 = vgg.fc_as_conv(weights["fc1"], weights["fc2"])
        model.get_layer(f"{name}_fc6").set_weights(fc6)
        model.get_layer(f"{name}_fc7").set_weights(fc7)
