"""SegNet (Badrinarayanan, Kendall, Cipolla 2017)."""

import keras

from kseg.models import layers as L
from kseg.models.registry import check_input_size, register_model

# (convs per stage, width) of the VGG16 topology
_VGG16_STAGES = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


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

    The encoder has the 13 convolutions of VGG16 (64..512) each followed by BN and
    ReLU, with 2x2 max pooling that remembers where each maximum came from
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
        encoder_weights: ``None`` or ``"imagenet"`` (VGG16 kernels, needs 3 channels).
        width_divisor: divide every width by this (1 = the paper's widths; for tests).
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> from kseg.models import segnet
        >>> model = segnet(n_classes=12, input_shape=(352, 480, 3))
    """
    L.check_channels_last()
    check_input_size(name, input_shape[0], input_shape[1], 32, 32)
    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    x = inputs
    indices = []
    widths = []
    for s, (n_convs, w) in enumerate(_VGG16_STAGES, start=1):
        w = max(1, w // width_divisor)
        for c in range(1, n_convs + 1):
            x = L.conv_bn_act(x, w, 3, name=f"{name}_enc{s}_conv{c}")
        x, idx = L.MaxPoolingWithArgmax2D(name=f"{name}_enc{s}_pool")(x)
        indices.append(idx)
        widths.append(w)
    for s in range(len(_VGG16_STAGES), 0, -1):
        n_convs, _ = _VGG16_STAGES[s - 1]
        w = widths[s - 1]
        out_w = widths[s - 2] if s > 1 else w
        x = L.MaxUnpooling2D(name=f"{name}_dec{s}_unpool")([x, indices[s - 1]])
        for c in range(1, n_convs + 1):
            x = L.conv_bn_act(x, out_w if c == n_convs else w, 3, name=f"{name}_dec{s}_conv{c}")
    outputs = L.classifier(x, n_classes, f"{name}_head", activation)
    model = keras.Model(inputs, outputs, name=name)
    if encoder_weights is not None:
        _load_vgg16_kernels(model, name, encoder_weights, input_shape[-1], width_divisor)
    return model


def _load_vgg16_kernels(model, name, encoder_weights, channels, width_divisor):
    from kseg.errors import KsegError

    if encoder_weights != "imagenet":
        raise ValueError(f"encoder_weights must be None or 'imagenet'; received {encoder_weights!r}")
    if channels != 3 or width_divisor != 1:
        raise ValueError("ImageNet encoder weights need 3 input channels and width_divisor=1")
    try:
        vgg = keras.applications.VGG16(include_top=False, weights="imagenet")
    except Exception as e:
        raise KsegError(
            f"could not load ImageNet weights for VGG16 ({type(e).__name__}); "
            "pass encoder_weights=None or place the weight file in ~/.keras/models/"
        ) from None
    for s, (n_convs, _) in enumerate(_VGG16_STAGES, start=1):
        for c in range(1, n_convs + 1):
            kernel = vgg.get_layer(f"block{s}_conv{c}").get_weights()[0]
            model.get_layer(f"{name}_enc{s}_conv{c}_conv").set_weights([kernel])
