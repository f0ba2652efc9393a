"""UPerNet (Xiao et al., ECCV 2018): pyramid pooling plus a feature pyramid, over any encoder."""

import keras
from keras import layers

from kseg.models import _checks as C
from kseg.models import _decoders as D
from kseg.models import layers as L
from kseg.models._context_blocks import pyramid_pooling
from kseg.models.registry import register_model

MODEL = "upernet"
_DIVISOR, _MIN_SIZE = D.size_rule(MODEL)


def upernet_decoder(taps, inputs, *, fpn_filters=512, ppm_filters=512, bins=(1, 2, 3, 6), dropout=0.0,
                    name="upernet"):
    """UPerNet's decoder on ``taps`` (strides 4-32); returns ``fpn_filters`` channels at 1/4.

    PPM on ``taps[32]`` (:func:`kseg.models._context_blocks.pyramid_pooling`: one 1x1
    conv-BN-ReLU of ``ppm_filters`` per bin, concatenated with the feature) and a 3x3
    conv-BN-ReLU to ``fpn_filters`` give P5; the taps at strides 16, 8, 4 get 1x1
    conv-BN-ReLU laterals, the top-down path adds the bilinearly resized level above, and
    each of P4-P2 gets a 3x3 conv-BN-ReLU; P2-P5 are resized to 1/4, concatenated and fused by
    a 3x3 conv-BN-ReLU (then dropout). Layers are named ``{name}_ppm_*``, ``{name}_p5``,
    ``{name}_lateral{s}``, ``{name}_topdown{s}``, ``{name}_fpn{s}``, ``{name}_fuse*``.
    """
    D.require_taps(MODEL, taps, (4, 8, 16, 32))
    x = pyramid_pooling(taps[32], bins, filters=ppm_filters, name=f"{name}_ppm")
    f = L.conv_bn_act(x, fpn_filters, 3, name=f"{name}_p5")
    outs = {32: f}
    for s in (16, 8, 4):
        lateral = L.conv_bn_act(taps[s], fpn_filters, 1, name=f"{name}_lateral{s}")
        f = L.ResizeLike(name=f"{name}_topdown{s}")([f, lateral])
        f = layers.Add(name=f"{name}_p{s}_add")([f, lateral])
        outs[s] = L.conv_bn_act(f, fpn_filters, 3, name=f"{name}_fpn{s}")
    fused = [outs[4]] + [L.ResizeLike(name=f"{name}_fuse_up{s}")([outs[s], outs[4]]) for s in (8, 16, 32)]
    x = layers.Concatenate(name=f"{name}_fuse_concat")(fused)
    x = L.conv_bn_act(x, fpn_filters, 3, name=f"{name}_fuse")
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


@register_model(MODEL, divisor=_DIVISOR, min_size=_MIN_SIZE, test_size=(64, 64),
                test_kwargs={"encoder": "mobilenetv2", "fpn_filters": 16, "ppm_filters": 8})
def upernet(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    encoder="resnet50",
    encoder_weights=None,
    fpn_filters=512,
    ppm_filters=512,
    bins=(1, 2, 3, 6),
    dropout=0.0,
    activation="softmax",
    name="upernet",
):
    """UPerNet: a pyramid pooling module on the deepest feature and an FPN fused at 1/4.

    Reference: T. Xiao, Y. Liu, B. Zhou, Y. Jiang, J. Sun, "Unified Perceptual Parsing for
    Scene Understanding", ECCV 2018 (arXiv:1807.10221), Sec. 3.2; layer layout and widths
    from the authors' code (CSAILVision/semantic-segmentation-pytorch, ``UPerNet`` with
    ``fpn_dim=512``).

    The deepest feature (stride 32) goes through PSPNet's pyramid pooling module (bins 1, 2,
    3, 6; 512 channels each) and a 3x3 conv-BN-ReLU (512): P5. Lateral 1x1 conv-BN-ReLU (512)
    on the stride-16, 8, 4 features, a top-down path (bilinear, added) and a 3x3 conv-BN-ReLU
    on each merged level give P4-P2; all four are resized to 1/4, concatenated (2048
    channels), fused by a 3x3 conv-BN-ReLU (512) and classified by a 1x1 conv; the class
    scores are resized bilinearly to the input (:func:`upernet_decoder`).

    Differences from the paper:
        - The encoder is a ``keras.applications`` ImageNet network (ResNet-50 by default, as
          in the paper's main setting) and only the scene-parsing head exists (no object,
          part, material and texture heads).
        - The pyramid pooling branches apply their 1x1 conv before upsampling (PSPNet's
          order, kseg's shared module); the authors' code upsamples first (same parameters).

    Differences from segmentation_models.pytorch's ``UPerNet``: SMP has no 3x3 conv on the
    FPN levels, uses the stride-2 feature as a fifth level and 256/64 channels; kseg follows
    the authors' code, whose decoder parameter count is derived by hand in
    tests/models/test_decoders.py. Whole model with ResNet-50: Keras' ResNet50 has 79,680
    parameters more than torchvision's (conv biases, BN moving statistics).

    Args:
        n_classes: number of classes (1 = binary with a sigmoid).
        input_shape: ``(height, width, channels)``; ``None`` sizes allowed, at least the
            encoder's minimum (32).
        encoder: a name from :data:`kseg.models.backbones.ENCODERS`.
        encoder_weights: ``None`` (random), ``"imagenet"`` or a local weights file.
        fpn_filters: channels of the FPN and the fusion (512; 256 in the authors'
            ``upernet_lite``).
        ppm_filters: channels of each pyramid pooling branch (512).
        bins: pyramid pooling bin sizes.
        dropout: dropout before the classifier (none in the authors' code; 0.1 in mmseg).
        activation: ``"softmax"`` (``"sigmoid"`` when ``n_classes == 1``), ``"sigmoid"`` or
            ``None`` for logits.
        name: model name and prefix of the decoder's layer names.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> model = upernet(n_classes=150, input_shape=(512, 512, 3))
        >>> model.output_shape
        (None, 512, 512, 150)
    """
    D.check_common(MODEL, encoder, dropout)
    C.positive_int(MODEL, "fpn_filters", fpn_filters, " (512 in the authors' code)")
    C.positive_int(MODEL, "ppm_filters", ppm_filters, " (512 in the authors' code)")
    bins = C.positive_ints(MODEL, "bins", bins, hint=" (paper: 1, 2, 3, 6)")
    inputs = keras.Input(tuple(input_shape), name=f"{name}_input")
    taps = D.encoder_taps(MODEL, inputs, encoder, encoder_weights)
    x = upernet_decoder(taps, inputs, fpn_filters=fpn_filters, ppm_filters=ppm_filters, bins=bins,
                        dropout=dropout, name=name)
    outputs = D.head(x, inputs, n_classes, activation, name)
    return keras.Model(inputs, outputs, name=name)
