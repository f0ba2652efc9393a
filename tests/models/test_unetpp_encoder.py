"""UNet++ over a keras.applications encoder: ``unet_plus_plus(encoder=...)`` and its
:func:`kseg.models.nested_unet.nested_decoder` (the paper's UNet++ is tested in
test_unet_variants.py, test_models.py and test_param_counts.py).

Parameter counts: the decoder + head over ResNet-50's taps (channels 64, 256, 512, 1024,
2048 at strides 2-32, stand-in inputs, no encoder built), compared with a count written out
by hand from the layer list of segmentation_models.pytorch's (SMP) ``UnetPlusPlus``
(decoders/unetplusplus/decoder.py: ``DecoderBlock(in, skip, out)`` = 3x3 conv (in + skip)
-> out, BN, ReLU, 3x3 conv out -> out, BN, ReLU, convs without bias; the 3x3 segmentation
head with bias). PyTorch counts 2 parameters per BatchNorm channel (weight, bias) where
Keras also counts the moving mean and variance (4): the difference is written out.
"""

import keras
import numpy as np
import pytest

from kseg.errors import ModelConfigError, UnknownNameError
from kseg.models import get_model, model_spec, unet_plus_plus
from kseg.models import layers as L
from kseg.models.freeze import encoder_layers, freeze_encoder
from kseg.models.nested_unet import nested_decoder

RESNET50 = {2: 64, 4: 256, 8: 512, 16: 1024, 32: 2048}
SIZE = 64


def _stand_ins(channels, size=SIZE, sizes=None):
    """The input and ``{stride: keras.Input}`` taps of ``channels`` (``{stride: c}``);
    ``sizes`` overrides a tap's spatial size."""
    inputs = keras.Input((size, size, 3))
    sizes = sizes or {}
    taps = {s: keras.Input((*sizes.get(s, (size // s,) * 2), c), name=f"tap{s}") for s, c in channels.items()}
    return inputs, taps


def _decoder_model(channels, n_classes=2, sizes=None, **kwargs):
    inputs, taps = _stand_ins(channels, sizes=sizes)
    x = nested_decoder(taps, inputs, **kwargs)
    out = L.classifier(x, n_classes, "probe", activation="softmax", kernel_size=3)
    return keras.Model([inputs, *taps.values()], out)


def _block(i, s, o):
    """SMP's DecoderBlock(in_channels=i, skip_channels=s, out_channels=o), PyTorch's count."""
    return 9 * (i + s) * o + 2 * o + 9 * o * o + 2 * o


def test_decoder_parameters_match_smp():
    # SMP UnetPlusPlus(encoder "resnet50", classes=2, decoder_channels (256, 128, 64, 32, 16)).
    # Blocks x_{depth}_{layer} (in, skip, out), from SMP's layer list; the nodes that end a
    # pathway (depth 0) take decoder_channels, the inner ones the encoder's skip widths:
    smp = (_block(2048, 1024, 256)  # x_0_0 (kseg x31): stride 32 up to 16, + the stride-16 tap
           + _block(1024, 512, 512)  # x_1_1 (x21)
           + _block(512, 256, 256)  # x_2_2 (x11)
           + _block(256, 64, 64)  # x_3_3 (x01)
           + _block(256, 2 * 512, 128)  # x_0_1 (x22)
           + _block(512, 2 * 256, 256)  # x_1_2 (x12)
           + _block(256, 2 * 64, 64)  # x_2_3 (x02)
           + _block(128, 3 * 256, 64)  # x_0_2 (x13)
           + _block(256, 3 * 64, 64)  # x_1_3 (x03)
           + _block(64, 4 * 64, 32)  # x_0_3 (x04)
           + _block(32, 0, 16))  # x_0_4 (dec1): no skip, to the input size
    assert smp == 25_477_568  # = sum(p.numel() for p in smp_model.decoder.parameters()), measured once
    head = 9 * 16 * 2 + 2  # 3x3 conv 16 -> 2 with bias
    bn_channels = 2 * (256 + 512 + 256 + 64 + 128 + 256 + 64 + 64 + 64 + 32 + 16)  # two BNs per block
    assert bn_channels == 3424
    with keras.StatelessScope():  # shapes only: no weight values are drawn
        model = _decoder_model(RESNET50)
    # Keras' BN also counts its moving mean and variance: + 2 per BN channel
    assert model.count_params() == smp + head + 2 * bn_channels == 25_484_706


def _np_conv3(x, kernel, bias):
    """3x3 'same' convolution (cross-correlation) + bias, ``x`` (H, W, Cin)."""
    h, w = x.shape[:2]
    p = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    return sum(p[a:a + h, b:b + w] @ kernel[a, b] for a in range(3) for b in range(3)) + bias


def test_forward_matches_smp_wiring_in_numpy():
    """The decoder's output equals a numpy forward pass written from SMP's
    ``UnetPlusPlusDecoder.forward`` (nodes x_{depth}_{layer}, x2 nearest upsampling,
    concat [upsampled, dense nodes deepest-first, encoder feature]), with kseg's weights
    (``use_bn=False``: conv + bias + ReLU, so no BN statistics are involved).
    (Once, with weights ported from SMP 0.6.0 itself and BN epsilon set to PyTorch's,
    the outputs agreed to 2e-7.)"""
    keras.utils.set_random_seed(1)
    channels = {2: 2, 4: 3, 8: 3, 16: 4, 32: 4}
    inputs, taps = _stand_ins(channels, size=32)
    x = nested_decoder(taps, inputs, decoder_filters=(3, 3, 2, 2, 2), use_bn=False, name="u")
    model = keras.Model([inputs, *taps.values()], x)
    rng = np.random.default_rng(0)
    feeds = [rng.standard_normal((1, *t.shape[1:])).astype("float32") for t in model.inputs]
    out = keras.ops.convert_to_numpy(model(feeds))[0]

    kseg_name = {"x_0_0": "x31", "x_1_1": "x21", "x_2_2": "x11", "x_3_3": "x01", "x_0_1": "x22",
                 "x_1_2": "x12", "x_2_3": "x02", "x_0_2": "x13", "x_1_3": "x03", "x_0_3": "x04", "x_0_4": "dec1"}

    def block(key, x, skip=None):  # SMP's DecoderBlock.forward
        x = x.repeat(2, axis=0).repeat(2, axis=1)
        if skip is not None:
            x = np.concatenate([x, skip], axis=-1)
        for conv in ("conv1", "conv2"):
            kernel, bias = model.get_layer(f"u_{kseg_name[key]}_{conv}_conv").get_weights()
            x = np.maximum(_np_conv3(x, kernel, bias), 0)
        return x

    features = [f[0] for f in feeds[1:]][::-1]  # deepest first, as SMP reverses them
    dense, depth = {}, 4
    for layer in range(depth):
        for d in range(depth - layer):
            if layer == 0:
                dense[d, d] = block(f"x_{d}_{d}", features[d], features[d + 1])
            else:
                l_ = d + layer
                cat = [dense[i, l_] for i in range(d + 1, l_ + 1)] + [features[l_ + 1]]
                dense[d, l_] = block(f"x_{d}_{l_}", dense[d, l_ - 1], np.concatenate(cat, axis=-1))
    reference = block("x_0_4", dense[0, depth - 1])
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-4)


def test_whole_resnet50_model_count_against_smp():
    """The whole model = Keras' ResNet50 (include_top=False) + the decoder above.

    SMP's ``UnetPlusPlus("resnet50", encoder_weights=None, classes=2)`` has 48,985,890
    parameters (torch 2.14, segmentation_models_pytorch 0.6.0, counted once with
    ``sum(p.numel() for p in model.parameters())``): torchvision's ResNet-50 trunk
    23,508,032, decoder 25,477,568, head 290. Keras' ResNet50 has 23,587,712: its
    convolutions have biases (26,560 output channels, each followed by a BN of the same
    width) and its 26,560 BN channels count their moving statistics (2 x 26,560), so
    23,508,032 + 26,560 + 2 * 26,560 = 23,587,712; the decoder's 3,424 BN channels add 2 each.
    """
    smp = 48_985_890
    assert 23_508_032 + 25_477_568 + 290 == smp
    keras_resnet50 = 23_508_032 + 26_560 + 2 * 26_560
    assert keras_resnet50 == 23_587_712  # as test_param_counts.py's decoders over ResNet50
    expected = smp + (26_560 + 2 * 26_560) + 2 * 3_424
    assert expected == 49_072_418
    with keras.StatelessScope():
        model = get_model("unet++", n_classes=2, input_height=SIZE, input_width=SIZE, encoder="resnet50")
    assert model.count_params() == expected


def test_resnet50_build_freezes_only_the_encoder():
    keras.utils.set_random_seed(0)
    model = get_model("unet++", n_classes=3, input_height=SIZE, input_width=SIZE, encoder="resnet50",
                      decoder_filters=(8, 8, 8, 8, 4), freeze_encoder=True)
    assert model.output_shape == (None, SIZE, SIZE, 3)
    frozen = {layer.name for layer in encoder_layers(model)}
    assert {"conv1_conv", "conv5_block3_out"} <= frozen and not model.get_layer("conv1_conv").trainable
    assert not any(n.startswith("unet_plus_plus_") for n in frozen)
    # the grid: 10 nodes X(i, j) + the stride-1 block; inner nodes as wide as their tap
    names = {layer.name for layer in model.layers}
    grid = sorted(n[len("unet_plus_plus_"):-len("_conv2_conv")] for n in names if n.endswith("_conv2_conv"))
    assert grid == ["dec1", "x01", "x02", "x03", "x04", "x11", "x12", "x13", "x21", "x22", "x31"]
    widths = {g: model.get_layer(f"unet_plus_plus_{g}_conv2_conv").filters for g in grid}
    assert widths == {"x31": 8, "x22": 8, "x13": 8, "x04": 8, "dec1": 4,  # decoder_filters
                      "x21": 512, "x11": 256, "x12": 256, "x01": 64, "x02": 64, "x03": 64}  # ResNet-50's taps
    assert model.get_layer("unet_plus_plus_x13_concat").output.shape[-1] == 8 + 3 * 256  # up + X(1, 0..2)
    assert model.get_layer("unet_plus_plus_head_logits").kernel_size == (3, 3)
    assert model.get_layer("unet_plus_plus_x04_conv1_conv").trainable


def test_mobilenetv2_at_an_odd_size():
    """72x88 is no multiple of 32: the taps have rounded sizes and the up steps resize to them."""
    assert model_spec("unet++").size_rule(encoder="mobilenetv2") == (1, 32)
    model = unet_plus_plus(n_classes=3, input_shape=(None, None, 3), encoder="mobilenetv2",
                           decoder_filters=(8, 8, 8, 8, 8))
    out = keras.ops.convert_to_numpy(model(np.random.default_rng(0).random((1, 72, 88, 3), "float32")))
    assert out.shape == (1, 72, 88, 3)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-4)


def test_encoder_without_a_stride_2_tap():
    """ConvNeXt's taps (strides 4-32): the grid over rows 4, 8, 16, then blocks without skip
    at strides 2 and 1 (at the input size); SMP cannot build this (zero-width nodes)."""
    model = _decoder_model({4: 8, 8: 16, 16: 24, 32: 32}, n_classes=3, decoder_filters=(8, 8, 8, 8, 4))
    names = {layer.name for layer in model.layers}
    convs = sorted(n[len("unet_plus_plus_"):-len("_conv2_conv")] for n in names if n.endswith("_conv2_conv"))
    assert convs == ["dec1", "dec2", "x11", "x12", "x13", "x21", "x22", "x31"]
    assert "unet_plus_plus_dec2_concat" not in names and "unet_plus_plus_dec1_concat" not in names
    assert model.get_layer("unet_plus_plus_x13_conv2_conv").output.shape[1:3] == (SIZE // 4, SIZE // 4)
    assert model.get_layer("unet_plus_plus_dec2_conv2_conv").output.shape[1:3] == (SIZE, SIZE)
    x = [np.ones((1, *t.shape[1:]), "float32") for t in model.inputs]
    assert model(x).shape == (1, SIZE, SIZE, 3)


def test_vgg_stride_1_tap_and_off_size_taps():
    """VGG16's stride-1 tap is the skip of the last block (no grid row); taps a few pixels
    smaller than input / stride (Xception) are resized to."""
    vgg = _decoder_model({1: 4, 2: 4, 4: 8, 8: 8, 16: 8, 32: 8}, decoder_filters=(4, 4, 4, 4, 4))
    assert vgg.get_layer("unet_plus_plus_dec1_concat").output.shape[-1] == 4 + 4
    assert "unet_plus_plus_x41_conv1_conv" not in {layer.name for layer in vgg.layers}
    off = {2: (31, 31), 4: (15, 15), 8: (7, 7), 16: (3, 3), 32: (2, 2)}
    xception = _decoder_model({2: 4, 4: 4, 8: 8, 16: 8, 32: 8}, sizes=off, decoder_filters=(4, 4, 4, 4, 4))
    x = [np.ones((1, *t.shape[1:]), "float32") for t in xception.inputs]
    out = keras.ops.convert_to_numpy(xception(x))
    assert out.shape == (1, SIZE, SIZE, 2)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


def test_bad_options_are_one_line_errors():
    for options, error, words in [
        ({"encoder": "resnet5"}, UnknownNameError, "unet++: unknown encoder 'resnet5'; valid values are"),
        ({"encoder_weights": "imagenet"}, ModelConfigError, "unet++: encoder_weights='imagenet' needs an encoder="),
        ({"encoder": "mobilenetv2", "decoder_filters": (8, 8)}, ModelConfigError,
         "unet++: decoder_filters must be 5 positive integers"),
        ({"decoder_filters": (8, 8, 8, 8, 8)}, ModelConfigError, "unet++: decoder_filters=(8, 8, 8, 8, 8) sets"),
        ({"encoder": "mobilenetv2", "deep_supervision": True}, ModelConfigError,
         "unet++: deep_supervision is an option of the paper's model"),
        ({"encoder": "mobilenetv2", "base_filters": 8}, ModelConfigError, "unet++: base_filters=8 sets the paper's"),
    ]:
        with pytest.raises(error) as raised:
            get_model("unet++", n_classes=2, **options)
        msg = str(raised.value)
        assert "\n" not in msg and msg.startswith(words), msg
    inputs, taps = _stand_ins({2: 4, 8: 4, 16: 4, 32: 4})  # no stride-4 tap
    with pytest.raises(ModelConfigError, match=r"^unet\+\+: the decoder needs .*\(missing 4\)"):
        nested_decoder(taps, inputs)


def test_paper_model_has_no_encoder_to_freeze():
    model = get_model("unet++", n_classes=2, base_filters=2)
    with pytest.raises(ModelConfigError, match=r"^unet\+\+: the model has no pretrained encoder.*unet\+\+ with encoder="):
        freeze_encoder(model)
