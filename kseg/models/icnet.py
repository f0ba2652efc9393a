"""ICNet: image cascade network for real-time segmentation (Zhao et al., ECCV 2018)."""

import keras
from keras import layers

from kseg.errors import ModelConfigError
from kseg.models import _checks as C
from kseg.models import layers as L
from kseg.models import pretrained as P
from kseg.models._context_blocks import cascade_feature_fusion, pyramid_pooling
from kseg.models.registry import register_model
from kseg.models.resnet import RESNET_BLOCKS, RESNET_FILTERS, resnet_stage, resnet_stem


@register_model(
    "icnet",
    divisor=32,
    min_size=32,
    test_size=(64, 64),
    test_kwargs={"width_multiplier": 0.125},
)
def icnet(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    bins=(1, 2, 3, 6),
    cascade_outputs=False,
    backbone_width=0.5,
    deep_stem=True,
    encoder_weights=None,
    width_multiplier=1.0,
    name="icnet",
):
    """ICNet: three input resolutions fused by cascade feature fusion units.

    Reference:
        H. Zhao, X. Qi, X. Shen, J. Shi, J. Jia, "ICNet for Real-Time Semantic
        Segmentation on High-Resolution Images", ECCV 2018,
        https://arxiv.org/abs/1704.08545

    Three branches:

    * low: the input downsampled to 1/4 goes through a PSPNet-like dilated
      ResNet-50 (stem, stages 1-2 with stride 8 in total, then stages 3-4 dilated 2
      and 4; ``backbone_width`` times ResNet-50's widths, 0.5 in the released
      model) to a 1/32 map, the pyramid pooling module (bins 1, 2, 3, 6, summed as
      in the released model) and a 1x1 conv to 256 channels;
    * medium: the input downsampled to 1/2 goes through the SAME layers (shared
      weights) as the low branch up to the first block of stage 2, giving a 1/16
      map with 256 channels (512 with ``backbone_width=1.0``);
    * high: the full input goes through three 3x3 stride-2 convs (32, 32, 64) to 1/8.

    A cascade feature fusion unit fuses low with medium (1/16) and another the result
    with high (1/8), each with 128 channels; the result is upsampled x2 to 1/4, a
    linear 1x1 classifier gives the class scores, and they are bilinearly resized x4
    to the input size.

    Cascade label guidance: with ``cascade_outputs=True`` the model returns
    ``[final, aux_16, aux_8]``. ``aux_16`` and ``aux_8`` are the CFF units' auxiliary
    classifiers (on the upsampled 1/32 and 1/16 maps, at 1/16 and 1/8), and
    ``final`` is the 1/4 classifier; ALL outputs are resized to the input size so
    one label map serves every loss. The paper's three guidance losses at 1/16,
    1/8, 1/4 with weights 0.4, 0.4, 1 then become
    ``loss_weights=[1.0, 0.4, 0.4]``: the 1/4 guidance output is ``final`` itself
    (returning it twice would only duplicate the tensor).

    ImageNet start: the paper trains a full-width PSPNet50-style network from
    ImageNet weights and then prunes it to half width. ``backbone_width=1.0,
    deep_stem=False, encoder_weights="imagenet"`` (or the path of a
    ``keras.applications.ResNet50`` weights file, ``include_top=False``) builds the
    unpruned network and loads keras' ImageNet ResNet-50 into its shared and
    unshared ResNet layers (stem, stage 1 and the first block of stage 2 in the
    shared sub-model ``{name}_shared``, the rest in the low branch) by a checked
    mapping (:func:`kseg.models.pretrained.load_resnet`: every tensor assigned
    once, conv biases folded into the BN moving means, BN epsilon 1.001e-5, the
    first kernel turned from BGR to RGB). With ``C != 3`` input channels the first
    kernel is adapted (:func:`kseg.models.pretrained.adapt_input_kernel`: ``C = 1``
    sums the RGB kernels, ``C > 3`` cycles them scaled by ``3 / C``); the high
    branch, the pyramid pooling and the CFF units start random.

    Differences from the paper:
        * Default widths are those of the released (compressed) ICNet: half of
          PSPNet's ResNet-50 (stem 32-32-64, stage outputs 128, 256, 512, 1024).
          The kernel pruning that produced them is not implemented; an ImageNet
          start gives the unpruned network (``backbone_width=1.0``), about 4x the
          backbone compute.
        * The ImageNet start uses He et al.'s 7x7 stem (``deep_stem=False``):
          keras ships no ImageNet weights of PSPNet's deep stem.
        * The low branch runs the shared layers on the 1/4 image, as the paper
          describes; the released Caffe model instead downsamples the medium
          branch's 1/16 features by 2, which saves a little compute.
        * Downsampling the input by 2 is 2x2 average pooling (what bilinear
          resizing by 1/2 with half-pixel centres computes); the 1/4 image is the
          1/2 image pooled again.
        * Bottlenecks stride on the first 1x1 conv (as in the Caffe ResNets) and
          their last BN starts with gamma = 0 (zero-init residual, replaced by the
          loaded weights in an ImageNet start); Keras BN momentum; half-pixel
          (``align_corners=False``) resizing.
        * The cascade outputs are at input resolution instead of compared with
          downsampled labels.

    Args:
        n_classes: number of classes (1 = binary with a sigmoid output).
        input_shape: ``(height, width, channels)``; height and width may be ``None``
            and must otherwise be multiples of 32.
        activation: ``"softmax"`` (default), ``"sigmoid"`` or ``None`` for logits.
        bins: pyramid pooling bin sizes.
        cascade_outputs: also return the two auxiliary outputs (for training).
        backbone_width: the ResNet's widths as a fraction of ResNet-50's (0.5:
            the released compressed model; 1.0: unpruned, needed for
            ``encoder_weights``).
        deep_stem: PSPNet's three-conv stem (default) or He et al.'s 7x7 one
            (needed for ``encoder_weights``).
        encoder_weights: ``None`` (random), ``"imagenet"`` or a
            ``keras.applications.ResNet50`` weights file.
        width_multiplier: scales every channel count (for tiny test models).
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` with output ``(B, H, W, n_classes)``, or three such
        outputs ``[final, aux_16, aux_8]`` with ``cascade_outputs=True``.

    Example:
        >>> model = icnet(n_classes=19, input_shape=(1024, 2048, 3))
        >>> train_model = icnet(19, (512, 512, 3), cascade_outputs=True)
        >>> imagenet = icnet(19, (512, 512, 3), backbone_width=1.0, deep_stem=False,
        ...                  encoder_weights="imagenet")
        >>> train_model.compile("adam", ["sparse_categorical_crossentropy"] * 3,
        ...                     loss_weights=[1.0, 0.4, 0.4])
    """
    C.positive_number("icnet", "width_multiplier", width_multiplier, " (1.0 = paper)")
    C.flag("icnet", "cascade_outputs", cascade_outputs)
    C.flag("icnet", "deep_stem", deep_stem)
    C.positive_number("icnet", "backbone_width", backbone_width, " (0.5 = released model)")
    C.positive_ints(
        "icnet", "bins", bins, hint=" (paper: 1, 2, 3, 6)",
        what="a sequence of bin sizes, and each pyramid bin must be a positive integer",
    )
    P.check_start("icnet", encoder_weights, width_multiplier, deep_stem)
    source = None
    if encoder_weights is not None:
        if backbone_width != 1:
            raise ModelConfigError(
                f"icnet: encoder_weights={encoder_weights!r} needs ResNet-50's widths; pass "
                f"backbone_width=1.0 (received {backbone_width!r}) or encoder_weights=None"
            )
        source = P.read_resnet("icnet", "resnet50", encoder_weights, name)
    wm = width_multiplier
    bw = backbone_width * wm  # the released ICNet halves PSPNet's ResNet-50 widths
    inputs = keras.Input(shape=input_shape, name=f"{name}_input")

    # Layers shared by the medium (1/2) and low (1/4) branches: output stride 8.
    shared_in = keras.Input(shape=(None, None, input_shape[2]), name=f"{name}_shared_input")
    s = resnet_stem(shared_in, f"{name}_stem", deep_stem=deep_stem, width_multiplier=bw)
    s = resnet_stage(s, L.scaled(RESNET_FILTERS[0], bw), 3, f"{name}_stage1")
    s = resnet_stage(s, L.scaled(RESNET_FILTERS[1], bw), 1, f"{name}_stage2", strides=2)
    shared = keras.Model(shared_in, s, name=f"{name}_shared")

    half = layers.AveragePooling2D(2, name=f"{name}_input_half")(inputs)
    quarter = layers.AveragePooling2D(2, name=f"{name}_input_quarter")(half)
    medium = shared(half)  # 1/16
    low = shared(quarter)  # 1/32

    low = resnet_stage(low, L.scaled(RESNET_FILTERS[1], bw), 3, f"{name}_stage2", first=2)
    low = resnet_stage(low, L.scaled(RESNET_FILTERS[2], bw), 6, f"{name}_stage3", dilation=2)
    low = resnet_stage(low, L.scaled(RESNET_FILTERS[3], bw), 3, f"{name}_stage4", dilation=4)
    low = pyramid_pooling(low, bins, name=f"{name}_ppm", mode="sum")
    low = L.conv_bn_act(low, L.scaled(256, wm), 1, name=f"{name}_ppm_reduce")

    high = inputs
    for i, filters in enumerate((32, 32, 64), start=1):
        high = L.conv_bn_act(high, L.scaled(filters, wm), 3, strides=2, name=f"{name}_high_conv{i}")

    f16, aux16 = cascade_feature_fusion(low, medium, L.scaled(128, wm), n_classes, f"{name}_cff16")
    f8, aux8 = cascade_feature_fusion(f16, high, L.scaled(128, wm), n_classes, f"{name}_cff8")
    x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up4")(f8)
    x = layers.Conv2D(n_classes, 1, name=f"{name}_logits")(x)
    x = L.ResizeLike(name=f"{name}_upsample")([x, inputs])
    outputs = L.output_activation(x, n_classes, name, activation)
    if cascade_outputs:
        outputs = [outputs]
        for tag, aux in (("aux16", aux16), ("aux8", aux8)):
            aux = L.ResizeLike(name=f"{name}_{tag}_upsample")([aux, inputs])
            outputs.append(L.output_activation(aux, n_classes, f"{name}_{tag}", activation))
    model = keras.Model(inputs, outputs, name=name)
    if source is not None:
        P.load_resnet(model, source, name, RESNET_BLOCKS["resnet50"])
    return model
