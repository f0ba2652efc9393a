"""FPN: the semantic segmentation branch of Panoptic FPN (Kirillov et al., CVPR 2019) over any encoder."""

import keras
from keras import layers

from kseg.models import _checks as C
from kseg.models import _decoders as D
from kseg.models import layers as L
from kseg.models.registry import register_model

MODEL = "fpn"
LEVELS = (4, 8, 16, 32)
_DIVISOR, _MIN_SIZE = D.size_rule(MODEL)


def fpn_decoder(taps, inputs, *, pyramid_filters=256, segmentation_filters=128, smoothing=True, norm="gn",
                dropout=0.2, name="fpn"):
    """The FPN and its semantic head on ``taps`` (strides 4-32); returns the merged
    ``segmentation_filters``-channel map at 1/4 (after dropout).

    Feature pyramid: a 1x1 lateral conv (``pyramid_filters``, with bias) on every tap, a
    top-down path of x2 nearest upsampling added to the laterals, and (``smoothing``) a 3x3
    conv on every merged level. Semantic head: per level P_s, ``log2(s / 4)`` stages of
    3x3 conv-norm-ReLU then x2 bilinear upsampling (one stage without upsampling for P4),
    all with ``segmentation_filters`` channels; the four maps are summed and go through
    spatial dropout. Layers are named ``{name}_lateral{s}``, ``{name}_topdown{s}``,
    ``{name}_p{s}_add``, ``{name}_smooth{s}``, ``{name}_seg{s}_{k}_*``, ``{name}_seg{s}_up{k}``,
    ``{name}_merge``, ``{name}_dropout``.
    """
    D.require_taps(MODEL, taps, LEVELS)
    p = {32: layers.Conv2D(pyramid_filters, 1, name=f"{name}_lateral32")(taps[32])}
    for s in (16, 8, 4):
        lateral = layers.Conv2D(pyramid_filters, 1, name=f"{name}_lateral{s}")(taps[s])
        top_down = L.ResizeLike(interpolation="nearest", name=f"{name}_topdown{s}")([p[2 * s], lateral])
        p[s] = layers.Add(name=f"{name}_p{s}_add")([top_down, lateral])
    if smoothing:
        for s in LEVELS:
            p[s] = layers.Conv2D(pyramid_filters, 3, padding="same", name=f"{name}_smooth{s}")(p[s])
    branches = []
    for s in LEVELS:
        x = p[s]
        ups = {4: 0, 8: 1, 16: 2, 32: 3}[s]
        for k in range(max(ups, 1)):
            x = D.conv_norm_act(x, segmentation_filters, 3, f"{name}_seg{s}_{k}", kind=norm)
            if k < ups:
                x = L.ResizeLike(name=f"{name}_seg{s}_up{k}")([x, p[s >> (k + 1)]])
        branches.append(x)
    x = layers.Add(name=f"{name}_merge")(branches)
    if dropout:
        x = layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(x)
    return x


@register_model(MODEL, divisor=_DIVISOR, min_size=_MIN_SIZE, test_size=(64, 64),
                test_kwargs={"encoder": "mobilenetv2", "pyramid_filters": 16, "segmentation_filters": 16,
                             "dropout": 0.0})
def fpn(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    encoder="resnet50",
    encoder_weights=None,
    pyramid_filters=256,
    segmentation_filters=128,
    smoothing=True,
    norm="gn",
    dropout=0.2,
    activation="softmax",
    name="fpn",
):
    """FPN: a feature pyramid on the encoder and Panoptic FPN's semantic segmentation branch.

    Reference: A. Kirillov, R. Girshick, K. He, P. Dollar, "Panoptic Feature Pyramid
    Networks", CVPR 2019 (arXiv:1901.02446), Sec. 3 "Semantic segmentation branch"; the
    pyramid is T.-Y. Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017.

    The encoder's features at strides 4, 8, 16, 32 get 1x1 lateral convs to 256 channels,
    a top-down path (x2 nearest upsampling, added) and a 3x3 smoothing conv each (P2-P5).
    Each level is brought to 1/4 by stages of 3x3 conv (128), GroupNorm, ReLU and x2
    bilinear upsampling (3 stages for P5, 2 for P4, 1 for P3, one conv without upsampling for
    P2); the four maps are summed, spatial dropout 0.2 follows, then a 1x1 classifier and a
    bilinear upsampling (x4) to the input size (:func:`fpn_decoder`).

    Differences from the paper:
        - The encoder is a ``keras.applications`` ImageNet network of
          :mod:`kseg.models.backbones` (ResNet-50 by default; the paper uses ResNet-50/101 with
          the pyramid shared with Mask R-CNN) and only the semantic branch exists.
        - Spatial dropout before the classifier, as in segmentation_models.pytorch (SMP);
          the paper has none (``dropout=0`` for the paper's head).
        - Upsampling resizes to the next level's size (half-pixel bilinear), so any input size
          works; the paper upsamples by exactly 2 (SMP: ``align_corners=True``).
        - GroupNorm uses ``gcd(32, channels)`` groups (32 at the default widths).

    Differences from SMP's ``FPN`` (decoder_merge_policy "add"): SMP has no 3x3 smoothing
    conv after the top-down sums (``smoothing=False`` gives SMP's layout and its decoder
    parameter count, checked in tests/models/test_decoders.py). Whole model with the
    default ResNet-50: Keras' ResNet50 has 23,587,712 parameters where torchvision's
    has 23,508,032 (+79,680: conv biases and BatchNorm moving statistics, which Keras counts).

    Args:
        n_classes: number of classes (1 = binary with a sigmoid).
        input_shape: ``(height, width, channels)``; ``None`` sizes allowed, at least the
            encoder's minimum (32).
        encoder: a name from :data:`kseg.models.backbones.ENCODERS`.
        encoder_weights: ``None`` (random), ``"imagenet"`` or a local weights file.
        pyramid_filters: channels of the pyramid (256).
        segmentation_filters: channels of the semantic head (128).
        smoothing: the 3x3 conv on every pyramid level (paper; SMP has none).
        norm: ``"gn"`` (GroupNorm, paper and SMP) or ``"bn"``.
        dropout: spatial dropout rate before the classifier (SMP: 0.2).
        activation: ``"softmax"`` (``"sigmoid"`` when ``n_classes == 1``), ``"sigmoid"`` or
            ``None`` for logits.
        name: model name and prefix of the decoder's layer names.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> model = fpn(n_classes=21, input_shape=(512, 512, 3), encoder="resnet50")
        >>> model.output_shape
        (None, 512, 512, 21)
    """
    D.check_common(MODEL, encoder, dropout, norm)
    C.positive_int(MODEL, "pyramid_filters", pyramid_filters, " (256 in the paper)")
    C.positive_int(MODEL, "segmentation_filters", segmentation_filters, " (128 in the paper)")
    C.flag(MODEL, "smoothing", smoothing)
    inputs = keras.Input(tuple(input_shape), name=f"{name}_input")
    taps = D.encoder_taps(MODEL, inputs, encoder, encoder_weights)
    x = fpn_decoder(taps, inputs, pyramid_filters=pyramid_filters, segmentation_filters=segmentation_filters,
                    smoothing=bool(smoothing), norm=norm, dropout=dropout, name=name)
    outputs = D.head(x, inputs, n_classes, activation, name)
    return keras.Model(inputs, outputs, name=name)
