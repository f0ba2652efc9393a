"""Every decoder over every encoder (fpn, linknet, pan, manet, upernet, deeplabv3, unet++ x ENCODERS).

Building every encoder for real under every decoder would take minutes, so:

* stand-ins: each decoder is built over ``keras.Input`` tensors at 64x64 with the tap
  strides of each encoder of :data:`kseg.models.backbones.ENCODERS` (read from its spec,
  no build), also with the deepest tap at 1/16 as a dilated (output stride 16) encoder
  gives it, and without a stride-2 tap (ConvNeXt-like). The channels are stand-in widths
  per stride (:data:`STAND_IN_CHANNELS`): building all ~36 encoders to read their real
  channels takes minutes (``backbones.encoder_table()`` builds them too), and the
  decoders depend on channels only through layer widths. ``KSEG_FULL_MATRIX=1`` builds
  every encoder once and uses its real channels (divided by 8: MA-Net over 2048 channels
  allocates 113M weights);
* real builds: a representative subset of encoders (resnet50, mobilenetv2, efficientnetb0,
  vgg16, xception) is built once each and all decoders are put on its real taps (Xception's
  taps are a few pixels smaller than input/stride: the decoders must resize);
* pairs that cannot exist are one-line errors saying why: a dilated decoder (pan,
  deeplabv3 at their default output stride 16) over an encoder without a dilation plan,
  and any decoder over taps that miss a stride it needs.
"""

import os

import keras
import numpy as np
import pytest

from kseg.errors import KsegError, ModelConfigError
from kseg.models import _decoders as D
from kseg.models import get_model
from kseg.models.backbones import ENCODERS, build_encoder
from kseg.models.deeplabv3 import deeplabv3_decoder
from kseg.models.fpn import fpn_decoder
from kseg.models.linknet import linknet_decoder
from kseg.models.manet import manet_decoder
from kseg.models.nested_unet import nested_decoder
from kseg.models.pan import pan_decoder
from kseg.models.upernet import upernet_decoder

SIZE = 64
N_CLASSES = 3

#: decoder model -> (decoder function over taps, small widths, classifier kernel)
DECODERS = {
    "fpn": (fpn_decoder, {"pyramid_filters": 8, "segmentation_filters": 8}, 1),
    "linknet": (linknet_decoder, {"final_filters": 4}, 1),
    "pan": (pan_decoder, {"filters": 4}, 3),
    "manet": (manet_decoder, {"decoder_filters": (8, 4, 4, 4, 4), "pab_filters": 4}, 3),
    "upernet": (upernet_decoder, {"fpn_filters": 8, "ppm_filters": 4}, 1),
    "deeplabv3": (deeplabv3_decoder, {"filters": 8}, 1),
    "unet++": (nested_decoder, {"decoder_filters": (8, 4, 4, 4, 4)}, 3),
}
DILATED = ("pan", "deeplabv3")  # default output stride 16
REAL_SUBSET = ("resnet50", "mobilenetv2", "efficientnetb0", "vgg16", "xception")


def _decode(name, taps, inputs):
    fn, kwargs, kernel = DECODERS[name]
    x = fn(taps, inputs, name=name, **kwargs)
    return D.head(x, inputs, N_CLASSES, "softmax", name, kernel_size=kernel)


#: stand-in tap widths by stride (see the module docstring)
STAND_IN_CHANNELS = {1: 8, 2: 8, 4: 16, 8: 24, 16: 32, 32: 48}


@pytest.fixture(scope="module")
def tap_channels():
    """``{encoder: {stride: channels}}``: stand-in widths at each encoder's tap strides, or
    with ``KSEG_FULL_MATRIX=1`` the real channels (divided by 8) of every encoder, built once."""
    if os.environ.get("KSEG_FULL_MATRIX") != "1":
        return {name: {s: STAND_IN_CHANNELS[s] for s in spec.taps} for name, spec in ENCODERS.items()}
    channels = {}
    for name in ENCODERS:
        with keras.StatelessScope():  # no weight values: only the shapes are wanted
            _, taps = build_encoder(name, input_shape=(SIZE, SIZE, 3))
        channels[name] = {s: max(1, int(t.shape[-1]) // 8) for s, t in taps.items()}
        keras.backend.clear_session()
    return channels


def _stand_ins(channels, deepest_stride=32, drop=()):
    inputs = keras.Input((SIZE, SIZE, 3))
    taps = {}
    for s, c in channels.items():
        if s in drop:
            continue
        at = deepest_stride if s == 32 else s
        taps[s] = keras.Input((SIZE // at, SIZE // at, c), name=f"tap{s}")
    return inputs, taps


def _groups():
    """Encoders grouped by what the stand-ins can tell apart: tap strides and whether a
    dilation plan exists (every encoder on its own with ``KSEG_FULL_MATRIX=1``)."""
    groups = {}
    for name, spec in sorted(ENCODERS.items()):
        key = name if os.environ.get("KSEG_FULL_MATRIX") == "1" else (
            tuple(sorted(spec.taps)), spec.dilation is not None)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


@pytest.mark.parametrize("encoders", _groups(), ids=lambda names: "+".join(names[:3]) + ("+..." if len(names) > 3 else ""))
def test_every_decoder_builds_over_stand_ins_of_every_encoder(encoders, tap_channels):
    encoder = encoders[0]
    channels = tap_channels[encoder]
    for name in DECODERS:
        variants = [32] + ([16] if name in DILATED and ENCODERS[encoder].dilation is not None else [])
        for deepest in variants:
            inputs, taps = _stand_ins(channels, deepest)
            out = _decode(name, taps, inputs)
            assert tuple(out.shape) == (None, SIZE, SIZE, N_CLASSES), (encoders, name, deepest)


def test_the_groups_cover_every_encoder():
    assert sorted(n for group in _groups() for n in group) == sorted(ENCODERS)


def test_decoders_cope_without_a_stride_2_tap():
    """ConvNeXt-like encoders start at stride 4: the decoders that use the stride-2 tap
    (linknet, manet) put a block without a skip there; the others never look at it."""
    for name in DECODERS:
        inputs, taps = _stand_ins({s: c // 8 for s, c in {2: 64, 4: 256, 8: 512, 16: 1024, 32: 2048}.items()}, drop=(2,))
        out = _decode(name, taps, inputs)
        assert tuple(out.shape) == (None, SIZE, SIZE, N_CLASSES), name
        model = keras.Model([inputs, *taps.values()], out)
        layer_names = {layer.name for layer in model.layers}
        if name in ("linknet", "manet"):
            assert f"{name}_dec2_add" not in layer_names and f"{name}_dec2_concat" not in layer_names
        x = [np.zeros((1, *t.shape[1:]), "float32") for t in [inputs, *taps.values()]]
        assert model(x).shape == (1, SIZE, SIZE, N_CLASSES)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_taps_a_decoder_needs_are_a_one_line_error(name):
    inputs, taps = _stand_ins({2: 8, 8: 8, 16: 8, 32: 8})  # no stride-4 feature
    needs_4 = name != "deeplabv3"
    if not needs_4:
        inputs, taps = _stand_ins({4: 8, 8: 8, 16: 8})  # no deepest feature
    with pytest.raises(ModelConfigError) as error:
        _decode(name, taps, inputs)
    msg = str(error.value)
    assert "\n" not in msg and msg.startswith(f"{name}: the decoder needs encoder features"), msg
    assert ("missing 4" if needs_4 else "missing 32") in msg, msg


@pytest.mark.parametrize("name", DILATED)
def test_dilated_decoders_over_encoders_without_a_dilation_plan_say_why(name):
    plain = [e for e, spec in ENCODERS.items() if spec.dilation is None]
    assert "vgg16" in plain
    for encoder in plain:
        with pytest.raises(KsegError) as error:
            get_model(name, n_classes=2, input_height=SIZE, input_width=SIZE, encoder=encoder)
        msg = str(error.value)
        assert "\n" not in msg and encoder in msg and "output_stride=32" in msg, msg
    # ... and output stride 32 builds them
    model = get_model(name, n_classes=2, input_height=SIZE, input_width=SIZE, encoder="vgg16",
                      output_stride=32, **DECODERS[name][1])
    assert model.output_shape == (None, SIZE, SIZE, 2)


@pytest.mark.parametrize("encoder", REAL_SUBSET)
def test_every_decoder_on_real_taps(encoder):
    """One real encoder with the decoders on its taps (one model, one output each), one
    forward pass at an odd size (65x97: taps of rounded sizes). MA-Net only over encoders
    of at most 512 deepest channels: its PAB and first MFAB have 3x3 convs as wide as the
    deepest feature (113M weights over 2048 channels); its sizes are handled like linknet's.
    UNet++ likewise (its inner nodes are as wide as the taps: 17M weights over ResNet-50's;
    test_unetpp_encoder.py builds it over resnet50, mobilenetv2 and Xception-sized taps)."""
    keras.backend.clear_session()
    inputs = keras.Input((None, None, 3))
    _, taps = build_encoder(encoder, inputs)
    names = [n for n in DECODERS if n not in ("manet", "unet++") or taps[32].shape[-1] <= 512]
    model = keras.Model(inputs, [_decode(name, taps, inputs) for name in names])
    x = np.random.default_rng(0).random((1, 65, 97, 3), dtype=np.float32)
    for name, out in zip(names, model(x, training=False)):
        out = keras.ops.convert_to_numpy(out)
        assert out.shape == (1, 65, 97, N_CLASSES), (encoder, name)
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-4)
