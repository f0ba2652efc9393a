"""PSPNet: pyramid scene parsing network (Zhao et al., CVPR 2017)."""

import keras
from keras import layers

from kseg.errors import ModelConfigError
from kseg.models import _checks as C
from kseg.models import _decoders as D
from kseg.models import layers as L
from kseg.models import pretrained as P
from kseg.models._context_blocks import pyramid_pooling
from kseg.models.registry import register_model
from kseg.models.resnet import RESNET_BLOCKS, dilated_resnet

MODEL = "pspnet"


def _divisor(options):
    """The paper's backbone: input sizes must be multiples of the output stride (8 or 16).
    Any ``encoder``: every size from the encoder's minimum (the head resizes)."""
    if options["encoder"] is None:
        return C.one_of(MODEL, "output_stride", options["output_stride"], (8, 16))
    C.one_of(MODEL, "output_stride", options["output_stride"], (8, 16, 32))
    return 1


def _min_size(options):
    if options["encoder"] is None:
        return 32
    return D.encoder_spec_of(MODEL, options["encoder"]).min_size


#: Options of the paper's dilated ResNet that an ``encoder`` does not take, with their defaults.
_PAPER_BACKBONE_OPTIONS = {"backbone": "resnet50", "deep_stem": True, "width_multiplier": 1.0}


def _check_encoder_options(encoder, **given):
    """With ``encoder``, the paper backbone's options must stay at their defaults (one-line error)."""
    for option, value in given.items():
        if value != _PAPER_BACKBONE_OPTIONS[option]:
            raise ModelConfigError(
                f"{MODEL}: {option}={value!r} applies to the paper's dilated ResNet only, not to "
                f"encoder={encoder!r}; drop {option} (or encoder)"
            )


@register_model(
    MODEL,
    divisor=_divisor,
    min_size=_min_size,
    test_size=(64, 64),
    test_kwargs={"width_multiplier": 0.0625},
)
def pspnet(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    encoder=None,
    backbone="resnet50",
    output_stride=8,
    deep_stem=True,
    encoder_weights=None,
    bins=(1, 2, 3, 6),
    dropout=0.1,
    aux_head=False,
    width_multiplier=1.0,
    name="pspnet",
):
    """PSPNet: a dilated ResNet (or any encoder) with a pyramid pooling module.

    Reference:
        H. Zhao, J. Shi, X. Qi, X. Wang, J. Jia, "Pyramid Scene Parsing Network",
        CVPR 2017, https://arxiv.org/abs/1612.01105

    The backbone is a dilated ResNet-50 (or -101) with output stride 8. Its last
    feature map (2048 channels) goes through the pyramid pooling module: adaptive
    average pooling to 1x1, 2x2, 3x3 and 6x6 bins, a 1x1 conv to 512 channels (BN,
    ReLU) per bin, bilinear upsampling back, and concatenation with the feature map
    (4096 channels). A 3x3 conv (512, BN, ReLU), dropout 0.1 and a linear 1x1
    classifier follow; the class scores are bilinearly resized to the input size.
    With ``aux_head=True`` a second head on stage 3 (3x3 conv 256, BN, ReLU,
    dropout, 1x1 classifier) gives the auxiliary output the paper trains with
    weight 0.4. Train with batches of several images: the 1x1 bin's BN sees one
    value per channel per image (the paper used batch 16).

    Any encoder: ``encoder="mobilenetv2"`` (a name of
    :data:`kseg.models.backbones.ENCODERS`) replaces the paper's ResNet with that
    ``keras.applications`` network, dilated to ``output_stride`` 8 (the paper's) or 16
    where its dilation plan offers it (:func:`kseg.models.backbones.build_encoder`; an
    encoder without a plan, e.g. vgg16, takes only ``output_stride=32``, no dilation).
    The head is the same: the pyramid pooling module on the deepest feature (bins of
    ``C / 4`` channels), the 3x3 conv (512), dropout, classifier, bilinear upsampling;
    ``aux_head`` sits on the encoder's stride-16 tap (its stage before the last).
    ``encoder_weights`` then loads that encoder's ImageNet weights; ``deep_stem``,
    ``width_multiplier`` and ``backbone`` belong to the paper's ResNet and must stay at
    their defaults. Any input size from the encoder's minimum (32) works.

    ImageNet start: ``encoder_weights="imagenet"`` (or the path of a
    ``keras.applications.ResNet50/101`` weights file, ``include_top=False``) loads
    keras' ImageNet ResNet into the backbone by a checked layer mapping
    (:func:`kseg.models.pretrained.load_resnet`: every tensor assigned once, conv
    biases folded into the BN moving means, BN epsilon 1.001e-5 copied, the first
    kernel turned from BGR to RGB). It needs ``deep_stem=False`` and
    ``width_multiplier=1.0``. With ``C != 3`` input channels the first kernel is
    adapted (:func:`kseg.models.pretrained.adapt_input_kernel`: ``C = 1`` sums the
    RGB kernels, ``C > 3`` cycles them scaled by ``3 / C``). The head starts random.

    Differences from the paper:
        * The stem is the paper's deep stem (three 3x3 convs, 64-64-128, as in the
          released PSPNet ResNets); ``deep_stem=False`` gives He et al.'s 7x7 stem.
          The paper started its deep-stem ResNets from its own ImageNet training,
          whose weights keras does not ship: the ImageNet start here is He et
          al.'s ResNet (7x7 stem) as converted by ``keras.applications``.
        * Bottlenecks stride on the first 1x1 conv, as in the Caffe ResNets; their
          last BN starts with gamma = 0 ("zero-init residual", for training from
          scratch; replaced by the loaded weights in an ImageNet start).
        * Upsampling uses half-pixel bilinear resizing (``align_corners=False``);
          the Caffe model used ``align_corners=True`` with 8k+1 crops (473).
        * BN uses Keras momentum 0.9 and epsilon 1e-3 (1.001e-5 in the backbone
          with ImageNet weights); without ``encoder_weights`` the backbone trains
          from scratch, which the paper never did.

    Differences from SMP's PSPNet (segmentation_models.pytorch): SMP cuts the encoder at
    depth 3 (stride 8, no dilation: ResNet-50's stage 3, 1024 channels, instead of the
    dilated stage 4), has no BN in the 1x1 bin's branch, a 1x1 conv (not 3x3) to 512
    after the concatenation, spatial dropout 0.2, a 3x3 classifier and no auxiliary
    segmentation head. ``encoder="resnet50"`` here keeps all four stages, dilated.

    Args:
        n_classes: number of classes (1 = binary with a sigmoid output).
        input_shape: ``(height, width, channels)``; height and width may be ``None``
            and must otherwise be multiples of ``output_stride``.
        activation: ``"softmax"`` (default), ``"sigmoid"`` or ``None`` for logits.
        encoder: ``None`` (the paper's dilated ResNet, default) or a name of
            :data:`kseg.models.backbones.ENCODERS`.
        backbone: ``"resnet50"`` (3-4-6-3 blocks) or ``"resnet101"`` (3-4-23-3); the
            paper's ResNet only.
        output_stride: 8 (paper) or 16 (cheaper: stage 3 strides, dilation 2 in
            stage 4 only); with ``encoder`` also 32 (no dilation, any encoder).
        deep_stem: the three-conv stem (default) or the 7x7 one (paper's ResNet only).
        encoder_weights: ``None`` (random), ``"imagenet"`` or a
            ``keras.applications`` ResNet weights file of ``backbone`` (needs
            ``deep_stem=False``); with ``encoder``, that encoder's weights.
        bins: pyramid bin sizes.
        dropout: dropout rate before the classifiers.
        aux_head: also return the auxiliary output (for training).
        width_multiplier: scales every channel count (for tiny test models; paper's
            ResNet only).
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` with output ``(B, H, W, n_classes)``; with ``aux_head=True``
        two outputs ``[main, aux]``, both at input resolution.

    Example:
        >>> model = pspnet(n_classes=21, input_shape=(480, 480, 3))
        >>> imagenet = pspnet(21, (480, 480, 3), deep_stem=False, encoder_weights="imagenet")
        >>> train_model = pspnet(21, (480, 480, 3), aux_head=True)
        >>> light = pspnet(21, (480, 480, 3), encoder="mobilenetv2", encoder_weights="imagenet")
        >>> train_model.compile("adam", ["sparse_categorical_crossentropy"] * 2,
        ...                     loss_weights=[1.0, 0.4])
    """
    C.known_name(MODEL, "backbone", backbone, RESNET_BLOCKS)
    C.flag(MODEL, "deep_stem", deep_stem)
    C.flag(MODEL, "aux_head", aux_head)
    C.positive_number(MODEL, "width_multiplier", width_multiplier, " (1.0 = paper)")
    C.rate(MODEL, "dropout", dropout)
    C.positive_ints(
        MODEL, "bins", bins, hint=" (paper: 1, 2, 3, 6)",
        what="a sequence of bin sizes, and each pyramid bin must be a positive integer",
    )
    source = None
    if encoder is not None:
        _check_encoder_options(encoder, backbone=backbone, deep_stem=deep_stem, width_multiplier=width_multiplier)
        inputs = keras.Input(shape=input_shape, name=f"{name}_input")
        taps = D.encoder_taps(MODEL, inputs, encoder, encoder_weights, output_stride)
        D.require_taps(MODEL, taps, (16, 32) if aux_head else (32,))
        deepest, stage3 = taps[32], taps.get(16)
    else:
        P.check_start(MODEL, encoder_weights, width_multiplier, deep_stem)
        if encoder_weights is not None:  # read before building: a bad value fails fast
            source = P.read_resnet(MODEL, backbone, encoder_weights, f"{name}_backbone")
        inputs = keras.Input(shape=input_shape, name=f"{name}_input")
        features = dilated_resnet(
            inputs,
            f"{name}_backbone",
            backbone=backbone,
            output_stride=output_stride,
            deep_stem=deep_stem,
            width_multiplier=width_multiplier,
        )
        deepest, stage3 = features[3], features[2]
    x = pyramid_pooling(deepest, bins, name=f"{name}_ppm")
    x = L.conv_bn_act(x, L.scaled(512, width_multiplier), 3, name=f"{name}_head")
    x = layers.Dropout(dropout, name=f"{name}_head_dropout")(x)
    x = layers.Conv2D(n_classes, 1, name=f"{name}_logits")(x)
    x = L.ResizeLike(name=f"{name}_upsample")([x, inputs])
    outputs = L.output_activation(x, n_classes, name, activation)
    if aux_head:
        a = L.conv_bn_act(stage3, L.scaled(256, width_multiplier), 3, name=f"{name}_aux")
        a = layers.Dropout(dropout, name=f"{name}_aux_dropout")(a)
        a = layers.Conv2D(n_classes, 1, name=f"{name}_aux_logits")(a)
        a = L.ResizeLike(name=f"{name}_aux_upsample")([a, inputs])
        outputs = [outputs, L.output_activation(a, n_classes, f"{name}_aux", activation)]
    model = keras.Model(inputs, outputs, name=name)
    if source is not None:
        P.load_resnet(model, source, f"{name}_backbone", RESNET_BLOCKS[backbone])
    return model
