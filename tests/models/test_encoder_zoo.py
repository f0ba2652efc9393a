"""The encoder zoo of kseg.models.backbones: every keras.applications family that yields a feature pyramid.

Two kinds of checks:

* a shape-only pass over EVERY encoder in one subprocess under Keras' numpy backend, inside
  ``keras.StatelessScope(initialize_variables=False)``: nothing is allocated, so ConvNeXt-XL
  (348M parameters) costs what a small net costs. It checks the taps' spatial sizes and channels
  against the hand table below, the parameter counts against hand formulas, the layer names of a
  second build, the output-stride-16/8 variants of one encoder per family and the smallest and
  an odd input size;
* real builds (TensorFlow, this process) of the small member of each family: weights copied by
  layer name into the dilated / other-channel clone, the changed layer settings, 1 and 4 input
  channels, freezing, the errors.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from kseg.errors import EncoderConfigError, InputShapeError
from kseg.models import get_model, list_encoders
from kseg.models import pretrained
from kseg.models.backbones import (
    ENCODERS,
    _dilated_clone,
    build_encoder,
    encoder_table,
    markdown_table,
    named_taps,
    pretrained_reference,
    stride_plan,
)
from kseg.models.freeze import encoder_layers, freeze_encoder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ---------------------------------------------------------------- the hand table
# Tap channels at strides 1, 2, 4, 8, 16, 32 (None: no tap), from the papers' layer tables:
# ResNet (He et al. 2016, Table 1): 64 stem, 256/512/1024/2048 stage outputs. DenseNet
# (Huang et al. 2017, growth k=32): block output = input + k * layers; the transition halves it:
# 121 (6, 12, 24, 16): 64+6*32=256, 128+12*32=512, 256+24*32=1024, 512+16*32=1024;
# 169 (6, 12, 32, 32): 256, 512, 256+1024=1280, 640+1024=1664; 201 (6, 12, 48, 32): 256, 512,
# 256+1536=1792, 896+1024=1920. MobileNetV3 (Howard et al. 2019, Tables 1-2, "exp size" of the
# first block at each stride, last 1x1 conv). EfficientNet: expansion 6 x the block's input
# width, widths = round_filters(w * base) (multiple of 8, not below 90%): B0 16/24/40/112 ->
# 96/144/240/672, top 1280 * w. EfficientNetV2 (Tan & Le 2021, Table 4 for S; the reference
# configs for B0-B3/M/L): stage-1 and -2 outputs, expansion 4 x stage-4 input, 6 x stage-6 input.
# ConvNeXt (Liu et al. 2022): stage widths; the stem has stride 4 (no stride-2 tap).
R = (None, 64, 256, 512, 1024, 2048)
ZOO = {
    "vgg16": (64, 128, 256, 512, 512, 512),
    "vgg19": (64, 128, 256, 512, 512, 512),
    "resnet50": R, "resnet101": R, "resnet152": R,
    "resnet50v2": R, "resnet101v2": R, "resnet152v2": R,
    "densenet121": (None, 64, 256, 512, 1024, 1024),
    "densenet169": (None, 64, 256, 512, 1280, 1664),
    "densenet201": (None, 64, 256, 512, 1792, 1920),
    "mobilenet": (None, 64, 128, 256, 512, 1024),
    "mobilenetv2": (None, 96, 144, 192, 576, 1280),
    "mobilenetv3small": (None, 16, 72, 96, 288, 576),
    "mobilenetv3large": (None, 64, 72, 240, 672, 960),
    "xception": (None, 128, 256, 728, 1024, 2048),
    "efficientnetb0": (None, 96, 144, 240, 672, 1280),  # w 1.0
    "efficientnetb1": (None, 96, 144, 240, 672, 1280),  # w 1.0
    "efficientnetb2": (None, 96, 144, 288, 720, 1408),  # w 1.1: 16, 24, 48, 120
    "efficientnetb3": (None, 144, 192, 288, 816, 1536),  # w 1.2: 24, 32, 48, 136
    "efficientnetb4": (None, 144, 192, 336, 960, 1792),  # w 1.4: 24, 32, 56, 160
    "efficientnetb5": (None, 144, 240, 384, 1056, 2048),  # w 1.6: 24, 40, 64, 176
    "efficientnetb6": (None, 192, 240, 432, 1200, 2304),  # w 1.8: 32, 40, 72, 200
    "efficientnetb7": (None, 192, 288, 480, 1344, 2560),  # w 2.0: 32, 48, 80, 224
    "efficientnetv2b0": (None, 16, 32, 192, 672, 1280),
    "efficientnetv2b1": (None, 16, 32, 192, 672, 1280),
    "efficientnetv2b2": (None, 16, 32, 224, 720, 1408),
    "efficientnetv2b3": (None, 16, 40, 224, 816, 1536),
    "efficientnetv2s": (None, 24, 48, 256, 960, 1280),
    "efficientnetv2m": (None, 24, 48, 320, 1056, 1280),
    "efficientnetv2l": (None, 32, 64, 384, 1344, 1280),
    "convnext_tiny": (None, None, 96, 192, 384, 768),
    "convnext_small": (None, None, 96, 192, 384, 768),
    "convnext_base": (None, None, 128, 256, 512, 1024),
    "convnext_large": (None, None, 192, 384, 768, 1536),
    "convnext_xlarge": (None, None, 256, 512, 1024, 2048),
}
STRIDES = (1, 2, 4, 8, 16, 32)
# output strides with a dilation plan: all but VGG
DILATED = {name for name in ZOO if not name.startswith("vgg")}
# the small member of each family: its output-stride-16/8 variants, smallest and odd sizes
FAMILY = ["vgg19", "resnet50", "resnet50v2", "densenet121", "mobilenet", "mobilenetv2",
          "mobilenetv3small", "mobilenetv3large", "xception", "efficientnetb0", "efficientnetv2b0",
          "efficientnetv2s", "convnext_tiny"]
# Xception at 64x64 (hand, tests/models/test_encoder_models.py): 3x3/2 valid -> 31, 3x3 valid
# -> 29, then "same" stride-2 steps: 15, 8, 4, 2
XCEPTION_64 = {2: 29, 4: 15, 8: 8, 16: 4, 32: 2}


# ---------------------------------------------------------------- parameters by hand
# Every weight counts (count_params): conv kernels and biases, BN gamma/beta/mean/variance (4 per
# channel), LayerNorm gamma/beta. Layer lists of the keras.applications reference implementations.


def _conv(k, cin, cout, bias=True):
    return k * k * cin * cout + (cout if bias else 0)


def _vgg19():
    widths = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256)] + [(256, 256)] * 3
    widths += [(256, 512)] + [(512, 512)] * 7
    return sum(_conv(3, a, b) for a, b in widths)


def _resnet_v1(blocks):
    """Caffe ResNet: convs with bias, each followed by BN; a projection in each stage's first block."""
    n = _conv(7, 3, 64) + 4 * 64
    cin = 64
    for f, count in zip((64, 128, 256, 512), blocks):
        for b in range(count):
            n += _conv(1, cin, f) + 4 * f + _conv(3, f, f) + 4 * f + _conv(1, f, 4 * f) + 16 * f
            if b == 0:
                n += _conv(1, cin, 4 * f) + 16 * f
            cin = 4 * f
    return n


def _resnet_v2(blocks):
    """Pre-activation ResNet: stem conv with bias and no BN; per block BN of the input, a
    projection with bias in the first block, 1x1 and 3x3 without bias each with BN, 1x1 with bias;
    a final BN."""
    n = _conv(7, 3, 64)
    cin = 64
    for f, count in zip((64, 128, 256, 512), blocks):
        for b in range(count):
            n += 4 * cin + _conv(1, cin, f, False) + 4 * f + _conv(3, f, f, False) + 4 * f
            n += _conv(1, f, 4 * f)
            if b == 0:
                n += _conv(1, cin, 4 * f)
            cin = 4 * f
    return n + 4 * cin


def _densenet(blocks, k=32):
    """BN-ReLU-conv everywhere without biases: 7x7 stem, per dense layer BN + 1x1 (4k) + BN + 3x3
    (k), per transition BN + 1x1 halving the width, a final BN."""
    n = _conv(7, 3, 64, False) + 4 * 64
    c = 64
    for i, count in enumerate(blocks):
        for _ in range(count):
            n += 4 * c + _conv(1, c, 4 * k, False) + 4 * 4 * k + _conv(3, 4 * k, k, False)
            c += k
        if i < len(blocks) - 1:
            n += 4 * c + _conv(1, c, c // 2, False)
            c //= 2
    return n + 4 * c


def _convnext(depths, dims):
    """4x4/4 stem conv + LN; per block 7x7 depthwise conv, LN, 1x1 to 4C, 1x1 back, layer scale;
    between stages LN + 2x2/2 conv; a final LN (the input normalisation holds constants only)."""
    n = _conv(4, 3, dims[0]) + 2 * dims[0]
    for i, (d, c) in enumerate(zip(depths, dims)):
        if i:
            n += 2 * dims[i - 1] + _conv(2, dims[i - 1], c)
        n += d * ((49 * c + c) + 2 * c + (c * 4 * c + 4 * c) + (4 * c * c + c) + c)
    return n + 2 * dims[-1]


PARAMETERS = {
    "vgg19": _vgg19(),
    "resnet50": _resnet_v1((3, 4, 6, 3)),
    "resnet101": _resnet_v1((3, 4, 23, 3)),
    "resnet152": _resnet_v1((3, 8, 36, 3)),
    "resnet50v2": _resnet_v2((3, 4, 6, 3)),
    "resnet101v2": _resnet_v2((3, 4, 23, 3)),
    "resnet152v2": _resnet_v2((3, 8, 36, 3)),
    "densenet121": _densenet((6, 12, 24, 16)),
    "densenet169": _densenet((6, 12, 32, 32)),
    "densenet201": _densenet((6, 12, 48, 32)),
    "convnext_tiny": _convnext((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": _convnext((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": _convnext((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": _convnext((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnext_xlarge": _convnext((3, 3, 27, 3), (256, 512, 1024, 2048)),
}


def test_hand_formulas_match_published_figures():
    """The formulas against figures published with the networks (with their classifiers)."""
    head = 2048 * 1000 + 1000
    assert PARAMETERS["resnet50"] + head == 25_636_712  # keras.applications ResNet50
    assert PARAMETERS["vgg19"] == 20_024_384  # VGG19 convolutions (143.67M - fc 123.64M)
    assert PARAMETERS["densenet121"] + 1024 * 1000 + 1000 == 8_062_504  # keras DenseNet121
    # ConvNeXt-T: 28.6M with its head (paper Table 1: 28M; LN + 768 x 1000 classifier)
    assert round((PARAMETERS["convnext_tiny"] + 2 * 768 + 768 * 1000 + 1000) / 1e5) == 286


# ---------------------------------------------------------------- the shape-only pass

_SHAPE_SCRIPT = r"""
import json, sys
import keras
from kseg.models.backbones import ENCODERS, build_encoder

names, family = json.loads(sys.argv[1])

def shapes(taps):
    return {s: list(t.shape[1:]) for s, t in taps.items()}

out = {}
with keras.StatelessScope(initialize_variables=False):
    for name in names:
        enc, taps = build_encoder(name, keras.Input((64, 64, 3)))
        spec = ENCODERS[name]
        ops = {op.name: op for op in enc.operations}
        row = {
            "taps": shapes(taps),
            "parameters": enc.count_params(),
            "names": [op.name for op in enc.operations[1:]],
            "deepest_is_output": ops[spec.taps[max(spec.taps)]].output is enc.output,
            "named": sorted(n for n in spec.taps.values() if n in ops),
        }
        if name in family:
            again, _ = build_encoder(name, keras.Input((64, 64, 3)))
            row["names_again"] = [op.name for op in again.operations[1:]]
            for os in spec.output_strides[1:]:
                row[f"os{os}"] = shapes(build_encoder(name, keras.Input((64, 64, 3)), output_stride=os)[1])
            row["odd"] = shapes(build_encoder(name, keras.Input((spec.min_size + 1, spec.min_size + 13, 3)))[1])
        out[name] = row
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def shapes():
    """Two subprocesses (numpy backend, nothing allocated; one per CI core) build every encoder."""
    env = dict(os.environ, KERAS_BACKEND="numpy", PYTHONPATH=REPO)
    names = sorted(ENCODERS)
    halves = [names[0::2], names[1::2]]  # alphabetical neighbours (same family) go apart
    procs = [subprocess.Popen([sys.executable, "-c", _SHAPE_SCRIPT, json.dumps([half, FAMILY])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for half in halves]
    result = {}
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        line = [x for x in out.splitlines() if x.startswith("RESULT")][-1]
        result.update(json.loads(line[6:]))
    return {name: {k: ({int(s): v for s, v in row.items()} if isinstance(row, dict) else row)
                   for k, row in entry.items()} for name, entry in result.items()}


def test_the_zoo_lists_every_family():
    names = list_encoders()
    assert names == sorted(ENCODERS) == sorted(ZOO)
    assert len(names) >= 25
    for name in names:
        assert name == name.lower() and " " not in name


@pytest.mark.parametrize("name", sorted(ZOO))
def test_taps_have_input_over_stride_and_the_table_channels(shapes, name):
    got, spec = shapes[name], ENCODERS[name]
    expected = {s: c for s, c in zip(STRIDES, ZOO[name]) if c is not None}
    assert sorted(got["taps"]) == sorted(expected) == sorted(spec.taps)
    for s, c in expected.items():
        size = XCEPTION_64[s] if name == "xception" else 64 // s
        assert got["taps"][s] == [size, size, c], (s, got["taps"][s])
    assert got["deepest_is_output"]
    assert got["named"] == sorted(spec.taps.values())  # every tap found by its name
    assert len(set(got["names"])) == len(got["names"])
    assert not [n for n in got["names"] if n.split("_")[0] in ("conv2d", "activation", "re", "add")
                and n.rsplit("_", 1)[-1].isdigit()]
    if name in PARAMETERS:
        assert got["parameters"] == PARAMETERS[name]
    assert spec.output_strides == ((32, 16, 8) if name in DILATED else (32,))


@pytest.mark.parametrize("name", FAMILY)
def test_output_stride_16_and_8_and_sizes(shapes, name):
    got, spec = shapes[name], ENCODERS[name]
    deep = ZOO[name][-1]
    # names stable: a second build in the same process has the same layer and operation names
    assert got["names"] == got["names_again"]
    if name in DILATED:
        for os in (16, 8):
            taps = got[f"os{os}"]
            assert max(taps) == os and sorted(taps) == [s for s in sorted(spec.taps) if s <= os]
            assert taps[os][-1] == deep  # the last feature, now at 64/os
            if name != "xception":
                assert taps[os][:2] == [64 // os] * 2
            else:
                assert taps[os][:2] == [XCEPTION_64[os]] * 2
    else:
        assert "os16" not in got
    # odd sizes just above the smallest (33x45) build, every tap side floor or ceil of n / stride
    # (steps round up with padding that centres the window, down with VGG's and DenseNet's 2x2
    # pooling, MobileNet's one-sided padding, ConvNeXt's unpadded steps): only multiples of the
    # divisor give exactly n / stride; decoders resize to the skips
    h, w = spec.min_size + 1, spec.min_size + 13
    for s, shape in got["odd"].items():
        if name != "xception":
            assert shape[0] in (h // s, -(-h // s)) and shape[1] in (w // s, -(-w // s)), (s, shape)
        assert shape[0] >= 1 and shape[1] >= 1


# ---------------------------------------------------------------- real builds


def _weights(layer):
    return [np.asarray(w) for w in layer.get_weights()]


def _leaf(model, name):
    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model):
            try:
                return _leaf(layer, name)
            except ValueError:
                pass
    raise ValueError(name)


# (encoder, output stride, channels, {layer: (strides, dilation, padding)} expected in the clone)
CLONES = [
    ("resnet50v2", 8, 3, {
        "conv3_block4_2_conv": ((1, 1), (1, 1), "valid"),
        "conv3_block4_2_pad": (None, None, ((1, 1), (1, 1))),
        "conv4_block2_2_conv": ((1, 1), (2, 2), "valid"),
        "conv4_block2_2_pad": (None, None, ((2, 2), (2, 2))),
        "conv4_block6_2_conv": ((1, 1), (2, 2), "valid"),  # the stride-32 step, at rate 2
        "conv4_block6_shortcut_pool": ((1, 1), None, "same"),  # a 1x1 window: the identity
        "conv5_block3_2_conv": ((1, 1), (4, 4), "valid"),
        "conv5_block3_2_pad": (None, None, ((4, 4), (4, 4))),
    }),
    ("densenet121", 16, 1, {
        "pool4_pool": ((1, 1), None, "same"),
        "conv5_block1_2_conv": ((1, 1), (2, 2), "same"),
        "conv4_block24_2_conv": ((1, 1), (1, 1), "same"),
    }),
    ("mobilenetv3small", 16, 4, {
        "expanded_conv_8_depthwise": ((1, 1), (1, 1), "valid"),
        "expanded_conv_8_depthwise_pad": (None, None, ((2, 2), (2, 2))),  # 5x5 kernel
        "expanded_conv_10_depthwise": ((1, 1), (2, 2), "same"),
    }),
    ("efficientnetv2b0", 8, 3, {
        "block4a_dwconv2": ((1, 1), (1, 1), "same"),
        "block5e_dwconv2": ((1, 1), (2, 2), "same"),
        "block6a_dwconv2": ((1, 1), (2, 2), "same"),
        "block6h_dwconv2": ((1, 1), (4, 4), "same"),
    }),
    ("convnext_tiny", 16, 3, {
        "convnext_tiny_downsampling_conv_2": ((1, 1), (1, 1), "same"),
        "convnext_tiny_stage_3_block_2_depthwise_conv": ((1, 1), (2, 2), "same"),
        "convnext_tiny_stage_2_block_8_depthwise_conv": ((1, 1), (1, 1), "same"),
    }),
    ("vgg19", 32, 4, {}),
]


@pytest.mark.parametrize("name, output_stride, channels, changes", CLONES, ids=[c[0] for c in CLONES])
def test_clone_copies_weights_by_layer_name_and_changes_strides(name, output_stride, channels, changes):
    """The path of weights=... (no download): a randomly initialised published network is the
    source, its weights are copied by name into the dilated / C-channel clone."""
    spec = ENCODERS[name]
    keras.utils.set_random_seed(1)
    source = pretrained_reference(name, None)
    inputs = keras.Input((32, 32, channels))
    clone = _dilated_clone(source, inputs, stride_plan(spec, output_stride, source), True, spec.application)
    for layer, (strides, dilation, padding) in changes.items():
        config = _leaf(clone, layer).get_config()
        if strides is not None:
            assert tuple(config["strides"]) == strides, layer
        if dilation is not None:
            assert tuple(config["dilation_rate"]) == dilation, layer
        assert (tuple(tuple(p) for p in config["padding"]) if isinstance(config["padding"], (list, tuple))
                else config["padding"]) == padding, layer
    src_layers = {layer.name: layer for layer in _leaf_layers_of(source)}
    first = next(layer for layer in _leaf_layers_of(source) if type(layer).__name__ == "Conv2D")
    copied = 0
    for layer in _leaf_layers_of(clone):
        if not layer.weights:
            continue
        ref = _weights(src_layers[layer.name])
        got = _weights(layer)
        if layer.name == first.name:
            # RGB-trained kernel (BGR ones reversed) adapted to C channels by hand: C = 1 sums,
            # C = 4 cycles R, G, B, R and scales by 3/4
            k = ref[0][:, :, ::-1] if spec.application in pretrained.BGR_APPLICATIONS else ref[0]
            hand = {1: k.sum(2, keepdims=True), 3: k, 4: k[:, :, [0, 1, 2, 0]] * 0.75}[channels]
            np.testing.assert_allclose(got[0], hand, rtol=1e-6)
            ref, got = ref[1:], got[1:]
        for a, b in zip(ref, got):
            np.testing.assert_array_equal(a, b)
        copied += 1
    assert copied == sum(1 for layer in _leaf_layers_of(source) if layer.weights)
    y = clone(np.random.RandomState(0).rand(1, 32, 32, channels).astype("float32") * 255)
    assert y.shape[1:3] == (32 // output_stride, 32 // output_stride) and np.isfinite(y).all()


def _leaf_layers_of(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers_of(layer)
        else:
            yield layer


def test_unchanged_clone_answers_as_the_source():
    """Output stride 32 and 3 channels: the clone computes what the source computes."""
    keras.utils.set_random_seed(2)
    source = pretrained_reference("mobilenetv3small", None)
    plan = stride_plan(ENCODERS["mobilenetv3small"], 32, source)
    assert plan == {"stride1": {}, "dilate": {}}
    clone = _dilated_clone(source, keras.Input((32, 32, 3)), plan, True, "MobileNetV3Small")
    x = np.random.RandomState(1).rand(2, 32, 32, 3).astype("float32") * 255
    np.testing.assert_allclose(np.asarray(clone(x)), np.asarray(source(x)), rtol=1e-5, atol=1e-5)


# ConvNeXt and EfficientNetV2-B* pick their input normalisation by channel count (pass_input_shape);
# the clone test above runs DenseNet with 1 channel and MobileNetV3 and VGG19 with 4
@pytest.mark.parametrize("name, channels", [("convnext_tiny", 1), ("efficientnetv2b0", 4), ("resnet50v2", 1)])
def test_any_channel_count_without_weights(name, channels):
    inputs = keras.Input((32, 32, channels))
    _, taps = build_encoder(name, inputs)
    probe = keras.Model(inputs, taps[max(taps)])
    y = np.asarray(probe(np.random.RandomState(0).rand(1, 32, 32, channels).astype("float32")))
    assert y.shape == (1, 1, 1, ZOO[name][-1]) and np.isfinite(y).all()


def test_errors_are_one_line_and_name_the_fix():
    with pytest.raises(EncoderConfigError, match="output_stride 16 is not available for encoder vgg19; use 32$"):
        build_encoder("vgg19", input_shape=(64, 64, 3), output_stride=16)
    with pytest.raises(EncoderConfigError, match="use 8 or 16 or 32"):
        build_encoder("resnet50v2", input_shape=(64, 64, 3), output_stride=4)
    for name in ("convnext_tiny", "efficientnetv2b0", "efficientnetb3"):  # RGB statistics inside
        with pytest.raises(InputShapeError, match=f"encoder {name} with pretrained weights needs 3"):
            build_encoder(name, input_shape=(64, 64, 1), weights="imagenet")
    assert not ENCODERS["efficientnetv2s"].rgb_only  # S/M/L only scale to [-1, 1]
    # BGR-trained (caffe preprocessing): VGG19 and ResNet152 join VGG16/ResNet50/101
    assert {"VGG19", "ResNet152"} <= pretrained.BGR_APPLICATIONS
    assert not {"ResNet50V2", "DenseNet121"} & pretrained.BGR_APPLICATIONS


@pytest.mark.parametrize("encoder", ["mobilenetv3small", "convnext_tiny"])
def test_unet_takes_new_encoders_and_freezes_them(encoder):
    model = get_model("unet", n_classes=2, input_height=32, input_width=32, encoder=encoder)
    assert model.output_shape == (None, 32, 32, 2)
    names = {layer.name for layer in encoder_layers(model)}
    first = {"mobilenetv3small": "conv", "convnext_tiny": "convnext_tiny_stem"}[encoder]
    assert first in names and not any(n.startswith("unet_") for n in names)
    taps = named_taps(model, encoder)  # found in the whole model, ConvNeXt's sums included
    assert sorted(taps) == sorted(ENCODERS[encoder].taps)
    layers = freeze_encoder(model)
    assert not any(layer.trainable for layer in layers)
    assert model.get_layer("unet_dec1_conv2_conv").trainable


def test_encoder_table_rows():
    rows = encoder_table(["mobilenetv3small", "vgg19"])
    assert [r["name"] for r in rows] == ["mobilenetv3small", "vgg19"]
    assert rows[1]["parameters"] == PARAMETERS["vgg19"]
    assert rows[0]["taps"] == {s: c for s, c in zip(STRIDES, ZOO["mobilenetv3small"]) if c}
    assert rows[0]["output_strides"] == (32, 16, 8) and rows[0]["image_init"] is None
    table = markdown_table(rows)
    assert "| `vgg19` | VGG19 | 20.02M | 64/128/256/512/512/512 | 32 | `sub_mean`" in table


_JAX_SCRIPT = r"""
import keras, numpy as np
from kseg.models.backbones import build_encoder
assert keras.backend.backend() == "jax"
# ConvNeXt: nested Sequential blocks cloned, taps on operations, 1 channel (no RGB normalisation)
for name, os, c in (("convnext_tiny", 16, 1),):
    inputs = keras.Input((32, 32, c))
    _, taps = build_encoder(name, inputs, output_stride=os)
    y = keras.Model(inputs, taps[os])(np.random.rand(1, 32, 32, c).astype("float32") * 255)
    assert y.shape[1:3] == (32 // os, 32 // os) and np.isfinite(np.asarray(y)).all(), (name, y.shape)
print("JAX OK")
"""


def test_dilated_encoders_run_on_jax():
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _JAX_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0 and "JAX OK" in proc.stdout, proc.stderr[-3000:]
