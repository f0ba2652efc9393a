"""SegNet (Badrinarayanan, Kendall, Cipolla 2017)."""

import keras

from kseg.errors import ModelConfigError
from kseg.models import _checks as C
from kseg.models import layers as L
from kseg.models import pretrained, vgg
from kseg.models.registry import register_model


@register_model(
    "segnet", divisor=32, min_size=32, test_size=(32, 32), test_kwargs={"width_divisor": 8}
)
def segnet(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    encoder_weights=None,
    width_divisor=1,
    name="segnet",
):
    """SegNet: a VGG16 encoder and a mirrored decoder that upsamples with pooling indices.

    Reference: V. Badrinarayanan, A. Kendall, R. Cipolla, "SegNet: A Deep
    Convolutional Encoder-Decoder Architecture for Image Segmentation", TPAMI 2017
    (arXiv:1511.00561); layer for layer the authors' Caffe model
    (alexgkendall/SegNet-Tutorial, Models/segnet_train.prototxt).

    The encoder is kseg's VGG16 body (:func:`kseg.models.vgg.vgg16_body`): the 13
    convolutions of VGG16 (64..512) each followed by BN and ReLU, with 2x2 max
    pooling that remembers where each maximum came from
    (:class:`~kseg.models.layers.MaxPoolingWithArgmax2D`). Each decoder stage
    max-unpools its input with the indices of the matching encoder stage (a sparse
    map with values at the remembered positions) and densifies it with 3x3
    conv-BN-ReLU layers, as the Caffe model's ``conv{s}_{i}_D``: stage 5: 512, 512,
    512; stage 4: 512, 512, 256; stage 3: 256, 256, 128; stage 2: 128, 64; stage 1:
    one conv of 64 (``segnet_dec1_conv1``), then the classifier: linear class scores
    and the softmax. No feature maps are copied from encoder to decoder, only indices.

    Differences from the paper:
        - the classifier is a 1x1 linear conv; the Caffe model's (``conv1_1_D``) is a
          3x3 conv (64 * 9 * n_classes weights instead of 64 * n_classes);
        - conv layers followed by BN have no bias (the Caffe convs have one, redundant
          with BN's shift); Keras' BN also counts its moving mean and variance;
        - "same" padding and sizes that are multiples of 32 instead of the Caffe
          model's explicit unpooling sizes (360x480 -> 384x512);
        - with pretrained weights the encoder kernels are keras.applications' VGG16's
          (converted from the Caffe VGG16 the authors started from); their biases
          are dropped since BN follows each conv.

    Pretrained weights (``encoder_weights``): ``"imagenet"`` reads keras.applications'
    VGG16 file without its classifier (``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``,
    into ``~/.keras/models/``); a path reads any Keras VGG16 weights file with
    keras.applications' layer names (legacy ``.h5`` or Keras 3 ``.weights.h5``, with or
    without the classifier, which is ignored). block1_conv1's kernel, trained on BGR
    images (Caffe), gets its input channels reversed for kseg's RGB input and, with
    ``C != 3`` input channels, is adapted (:func:`kseg.models.pretrained.rgb_input_kernel`,
    then :func:`~kseg.models.pretrained.adapt_input_kernel`).

    Args:
        n_classes: number of classes (1 = binary, sigmoid output).
        input_shape: ``(H, W, C)`` with H and W multiples of 32, or ``None``.
        activation: ``"softmax"``, ``"sigmoid"`` or ``None`` for logits.
        encoder_weights: ``None``, ``"imagenet"`` or a VGG16 weights file (above;
            needs ``width_divisor=1``).
        width_divisor: divide every width by this (1 = the paper's widths; for tests).
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Raises:
        EncoderConfigError: ``encoder_weights`` is not None, ``"imagenet"`` or a VGG16
            weights file.
        EncoderWeightsError: the ImageNet file could not be downloaded, or the file is
            not HDF5.

    Example:
        >>> from kseg.models import segnet
        >>> model = segnet(n_classes=12, input_shape=(352, 480, 3))
    """
    C.positive_int("segnet", "width_divisor", width_divisor, " (1 = the paper's widths)")
    encoder_weights = pretrained.check_weights_value("segnet", encoder_weights)
    if encoder_weights is not None and width_divisor != 1:
        raise ModelConfigError(
            f"segnet: encoder_weights={encoder_weights!r} needs width_divisor=1 (VGG16's "
            f"widths); received width_divisor={width_divisor}"
        )
    # read (and download) the weights before building: a failure costs nothing
    source = None if encoder_weights is None else vgg.vgg16_weights("segnet", encoder_weights)
    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    indices = []
    widths = []

    def conv(x, filters, stage, index):
        width = max(1, filters // width_divisor)
        return L.conv_bn_act(x, width, 3, name=f"{name}_enc{stage}_conv{index}")

    def pool(x, stage):
        x, idx = L.MaxPoolingWithArgmax2D(name=f"{name}_enc{stage}_pool")(x)
        indices.append(idx)
        widths.append(x.shape[-1])
        return x

    x = vgg.vgg16_body(inputs, conv, pool)
    for s in range(len(vgg.VGG16_STAGES), 0, -1):
        _, n_convs = vgg.VGG16_STAGES[s - 1]
        w = widths[s - 1]
        x = L.MaxUnpooling2D(name=f"{name}_dec{s}_unpool")([x, indices[s - 1]])
        if s == 1:
            # the Caffe model's conv1_2_D (64), then the classifier (conv1_1_D)
            x = L.conv_bn_act(x, w, 3, name=f"{name}_dec1_conv1")
            break
        # conv{s}_{n}_D ... conv{s}_1_D: the last one narrows to the next stage's width
        for c in range(1, n_convs + 1):
            x = L.conv_bn_act(x, widths[s - 2] if c == n_convs else w, 3, name=f"{name}_dec{s}_conv{c}")
    outputs = L.classifier(x, n_classes, f"{name}_head", activation)
    model = keras.Model(inputs, outputs, name=name)
    if source is not None:
        _load_vgg16_kernels(model, name, source, inputs.shape[-1])
    return model


def _load_vgg16_kernels(model, name, weights, channels):
    """Copy VGG16's conv kernels into the encoder (block1_conv1's adapted to
    ``channels``); the biases are dropped: BN follows each conv."""
    for s, (_, n_convs) in enumerate(vgg.VGG16_STAGES, start=1):
        for c in range(1, n_convs + 1):
            kernel = weights[f"block{s}_conv{c}"][0]
            if s == c == 1:
                kernel = vgg.first_kernel(kernel, channels)
            model.get_layer(f"{name}_enc{s}_conv{c}_conv").set_weights([kernel])
