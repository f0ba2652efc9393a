"""PSPNet: pyramid scene parsing network (Zhao et al., CVPR 2017)."""

import keras
from keras import layers

from kseg.models import _checks as C
from kseg.models import layers as L
from kseg.models import pretrained as P
from kseg.models._context_blocks import pyramid_pooling
from kseg.models.registry import register_model
from kseg.models.resnet import RESNET_BLOCKS, dilated_resnet

MODEL = "pspnet"


def _divisor(options):
    """Input sizes must be multiples of the output stride (8 or 16)."""
    return C.one_of(MODEL, "output_stride", options["output_stride"], (8, 16))


@register_model(
    MODEL,
    divisor=_divisor,
    min_size=32,
    test_size=(64, 64),
    test_kwargs={"width_multiplier": 0.0625},
)
def pspnet(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
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
    """PSPNet: a dilated ResNet with a pyramid pooling module.

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

    Args:
        n_classes: number of classes (1 = binary with a sigmoid output).
        input_shape: ``(height, width, channels)``; height and width may be ``None``
            and must otherwise be multiples of ``output_stride``.
        activation: ``"softmax"`` (default), ``"sigmoid"`` or ``None`` for logits.
        backbone: ``"resnet50"`` (3-4-6-3 blocks) or ``"resnet101"`` (3-4-23-3).
        output_stride: 8 (paper) or 16 (cheaper: stage 3 strides, dilation 2 in
            stage 4 only).
        deep_stem: the three-conv stem (default) or the 7x7 one.
        encoder_weights: ``None`` (random), ``"imagenet"`` or a
            ``keras.applications`` ResNet weights file of ``backbone`` (needs
            ``deep_stem=False``).
        bins: pyramid bin sizes.
        dropout: dropout rate before the classifiers.
        aux_head: also return the auxiliary output (for training).
        width_multiplier: scales every channel count (for tiny test models).
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` with output ``(B, H, W, n_classes)``; with ``aux_head=True``
        two outputs ``[main, aux]``, both at input resolution.

    Example:
        >>> model = pspnet(n_classes=21, input_shape=(480, 480, 3))
        >>> imagenet = pspnet(21, (480, 480, 3), deep_stem=False, encoder_weights="imagenet")
        >>> train_model = pspnet(21, (480, 480, 3), aux_head=True)
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
    P.check_start(MODEL, encoder_weights, width_multiplier, deep_stem)
    source = None
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
    x = pyramid_pooling(features[3], bins, name=f"{name}_ppm")
    x = L.conv_bn_act(x, L.scaled(512, width_multiplier), 3, name=f"{name}_head")
    x = layers.Dropout(dropout, name=f"{name}_head_dropout")(x)
    x = layers.Conv2D(n_classes, 1, name=f"{name}_logits")(x)
    x = L.ResizeLike(name=f"{name}_upsample")([x, inputs])
    outputs = L.output_activation(x, n_classes, name, activation)
    if aux_head:
        a = L.conv_bn_act(features[2], L.scaled(256, width_multiplier), 3, name=f"{name}_aux")
        a = layers.Dropout(dropout, name=f"{name}_aux_dropout")(a)
        a = layers.Conv2D(n_classes, 1, name=f"{name}_aux_logits")(a)
        a = L.ResizeLike(name=f"{name}_aux_upsample")([a, inputs])
        outputs = [outputs, L.output_activation(a, n_classes, f"{name}_aux", activation)]
    model = keras.Model(inputs, outputs, name=name)
    if source is not None:
        P.load_resnet(model, source, f"{name}_backbone", RESNET_BLOCKS[backbone])
    return model
