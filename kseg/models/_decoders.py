"""What the decoders over any encoder (fpn, linknet, pan, manet, upernet, deeplabv3) share.

Each of those models is an encoder of :data:`kseg.models.backbones.ENCODERS` plus a
decoder written as a function of the encoder's feature taps::

    taps = encoder_taps(MODEL, inputs, encoder, encoder_weights, output_stride)
    x = some_decoder(taps, inputs, ..., name=name)     # class scores at any stride
    outputs = head(x, inputs, n_classes, activation, name)

``taps`` is ``{stride: tensor}`` keyed by the NOMINAL stride of each encoder stage (2, 4,
8, 16, 32; VGG16 also has 1): the stage's stride in the encoder as published. With a
dilated encoder (``output_stride=16``) the deepest stage is still ``taps[32]``, at 1/16
of the input, and ``taps[16]`` is the stage before it, also at 1/16; decoders align
sizes with :class:`kseg.models.layers.ResizeLike`, never by assuming a factor of 2, so
the same decoder serves both, and odd input sizes too. Encoders without a stride-2
feature (ConvNeXt starts at stride 4) have no ``taps[2]``: decoders that use that tap
fall back to a block without a skip.

The decoders are written over taps rather than over an encoder name so that a test can
build each of them over stand-in inputs with any encoder's tap strides and channels
(``tests/models/test_decoder_matrix.py``) without building the encoder.
"""

import math

from keras import layers

from kseg.errors import ModelConfigError
from kseg.models import _checks as C
from kseg.models import layers as L
from kseg.models.backbones import ENCODERS, build_encoder, named_taps

#: Norms the decoders offer where their reference uses one or the other.
NORMS = ("bn", "gn")


def size_rule(model):
    """``(divisor, min_size)`` rule functions for ``@register_model`` of a decoder model.

    Every decoder resizes to its skips and to the input, so any size from the encoder's
    minimum works (divisor 1); the minimum is the encoder's (``EncoderSpec.min_size``).
    """

    def min_size(options):
        return encoder_spec_of(model, options["encoder"]).min_size

    return 1, min_size


def encoder_spec_of(model, encoder):
    """The :class:`kseg.models.backbones.EncoderSpec` of ``encoder`` (an unknown name is a
    one-line ``UnknownNameError`` naming the model and listing the encoders)."""
    return ENCODERS[C.known_name(model, "encoder", encoder, ENCODERS)]


def encoder_taps(model, inputs, encoder, weights=None, output_stride=32):
    """Build ``encoder`` on ``inputs`` and return its taps keyed by nominal stride.

    ``output_stride`` 32 is the encoder as published; 16 (or another stride the encoder's
    dilation plan offers) removes the later downsampling steps (see
    :func:`kseg.models.backbones.build_encoder`); the taps of the dilated stages are then
    taken by layer name, keyed by their stride in the undilated network.

    Raises:
        ModelConfigError: the encoder has no dilated variant and ``output_stride`` is not 32.
    """
    spec = encoder_spec_of(model, encoder)
    if output_stride not in spec.output_strides:
        raise ModelConfigError(
            f"{model}: encoder {encoder} takes output_stride="
            f"{' or '.join(str(s) for s in spec.output_strides)}, not {output_stride!r} (no dilation plan "
            f"for it); use one of those or an encoder with one, e.g. resnet50"
        )
    enc, taps = build_encoder(encoder, inputs, weights=weights, output_stride=output_stride)
    if output_stride != 32:
        taps = named_taps(enc, encoder)
    return taps


def require_taps(model, taps, strides):
    """Raise a one-line :class:`ModelConfigError` unless ``taps`` has every stride of
    ``strides`` (the features the decoder cannot do without)."""
    missing = [s for s in strides if s not in taps]
    if missing:
        have = ", ".join(str(s) for s in sorted(taps)) or "none"
        raise ModelConfigError(
            f"{model}: the decoder needs encoder features at strides "
            f"{', '.join(str(s) for s in strides)}; this encoder has {have} "
            f"(missing {', '.join(str(s) for s in missing)}); choose another encoder"
        )
    return taps


def norm(x, kind, name):
    """Normalisation ``kind``: ``"bn"`` (kseg's BatchNormalization) or ``"gn"``
    (GroupNormalization with ``gcd(32, channels)`` groups: 32 as in the papers whenever the
    width is a multiple of 32, fewer for the narrow widths of tests; epsilon 1e-5 as PyTorch)."""
    if kind == "bn":
        return L.bn(x, f"{name}_bn")
    channels = x.shape[-1]
    return layers.GroupNormalization(groups=math.gcd(32, channels), epsilon=1e-5, name=f"{name}_gn")(x)


def conv_norm_act(x, filters, kernel_size, name, kind="bn", activation="relu", dilation_rate=1):
    """Conv (no bias) -> ``norm(kind)`` -> activation; with ``kind="bn"`` this is exactly
    :func:`kseg.models.layers.conv_bn_act` (same layer names)."""
    if kind == "bn":
        return L.conv_bn_act(x, filters, kernel_size, name=name, activation=activation,
                             dilation_rate=dilation_rate)
    x = layers.Conv2D(filters, kernel_size, padding="same", dilation_rate=dilation_rate, use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = norm(x, kind, name)
    if activation is not None:
        x = layers.Activation(activation, name=f"{name}_act")(x)
    return x


def head(x, inputs, n_classes, activation, name, kernel_size=1):
    """The class scores: a linear ``kernel_size`` conv on ``x`` (``{name}_logits``), resized
    bilinearly to the input (``{name}_logits_up``), then the output activation."""
    x = layers.Conv2D(n_classes, kernel_size, padding="same", name=f"{name}_logits")(x)
    x = L.ResizeLike(name=f"{name}_logits_up")([x, inputs])
    return L.output_activation(x, n_classes, name, activation=activation)


def check_common(model, encoder, dropout=None, norm_kind=None):
    """Check the options every decoder model shares; returns the encoder's spec."""
    spec = encoder_spec_of(model, encoder)
    if dropout is not None:
        C.rate(model, "dropout", dropout)
    if norm_kind is not None:
        C.one_of(model, "norm", norm_kind, NORMS)
    return spec
