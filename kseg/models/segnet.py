"""SegNet (Badrinarayanan, Kendall, Cipolla 2017)."""

import keras

from kseg.errors import ModelConfigError
from kseg.models import _checks as C
from kseg.models import layers as L
from kseg.models.backbones import pretrained_reference
from kseg.models.registry import register_model
from kseg.models import vgg


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
    (arXiv:1511.00561).

    The encoder is kseg's VGG16 body (:func:`kseg.models.vgg.vgg16_body`): the 13
    convolutions of VGG16 (64..512) each followed by BN and ReLU, with 2x2 max pooling that remembers where each maximum came from
    (:class:`~kseg.models.layers.MaxPoolingWithArgmax2D`). Each decoder stage
    max-unpools its input with the indices of the matching encoder stage (a sparse
    map with values at the remembered positions) and densifies it with
    conv-BN-ReLU layers mirroring the encoder; a 1x1 convolution gives linear class
    scores followed by the softmax. No feature maps are copied from encoder to
    decoder, only indices.

    Differences from the paper:
        - the decoder's last conv of each stage reduces the width to the next
          stage's (512->256 etc.) as in the authors' Caffe model; the classifier is a
          1x1 linear conv (the Caffe model uses a 3x3 conv);
        - ``encoder_weights="imagenet"`` copies the conv kernels of keras.applications'
          VGG16 into the encoder (biases are dropped since BN follows each conv).

    Args:
        n_classes: number of classes (1 = binary, sigmoid output).
        input_shape: ``(H, W, C)`` with H and W multiples of 32, or ``None``.
        activation: ``"softmax"``, ``"sigmoid"`` or ``None`` for logits.
        encoder_weights: ``None`` or ``"imagenet"`` (VGG16 kernels, needs 3 channels
            and ``width_divisor=1``).
        width_divisor: divide every width by this (1 = the paper's widths; for tests).
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> from kseg.models import segnet
        >>> model = segnet(n_classes=12, input_shape=(352, 480, 3))
    """
    C.positive_int("segnet", "width_divisor", width_divisor, " (1 = the paper's widths)")
    C.one_of("segnet", "encoder_weights", encoder_weights, (None, "imagenet"))
    if encoder_weights is not None and (input_shape[-1] != 3 or width_divisor != 1):
        raise ModelConfigError(
            f"segnet: encoder_weights={encoder_weights!r} needs 3 input channels and "
            f"width_divisor=1; received {input_shape[-1]} channels, width_divisor={width_divisor}"
        )
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
        out_w = widths[s - 2] if s > 1 else w
        x = L.MaxUnpooling2D(name=f"{name}_dec{s}_unpool")([x, indices[s - 1]])
        for c in range(1, n_convs + 1):
            x = L.conv_bn_act(x, out_w if c == n_convs else w, 3, name=f"{name}_dec{s}_conv{c}")
    outputs = L.classifier(x, n_classes, f"{name}_head", activation)
    model = keras.Model(inputs, outputs, name=name)
    if encoder_weights is not None:
        _load_vgg16_kernels(model, name, encoder_weights)
    return model


def _load_vgg16_kernels(model, name, encoder_weights):
    """Copy the conv kernels of keras.applications' VGG16 into the encoder (the
    biases are dropped: BN follows each conv)."""
    reference = pretrained_reference("vgg16", encoder_weights)
    for s, (_, n_convs) in enumerate(vgg.VGG16_STAGES, start=1):
        for c in range(1, n_convs + 1):
            kernel = reference.get_layer(f"block{s}_conv{c}").get_weights()[0]
            model.get_layer(f"{name}_enc{s}_conv{c}_conv").set_weights([kernel])
