"""Structure tests of the keras.applications-encoder models.

backbones.py (build_encoder, ENCODERS), encoder_unet.py, vggunet, mobilenet_unet,
mobilenet_fcn8 (mobilenet.py), unet_xception_resnetblock (xception_unet.py) and
deeplabv3plus. The generic checks (training step, save/load, JAX) are in
tests/models/test_models.py; here: output sizes, taps by layer name, FCN bilinear
kernels against hand-written values, DeepLab's ASPP and output stride, encoder
weight handling (no network: the download is simulated to fail).
"""

import functools
import os
import urllib.error
import urllib.request

import keras
import numpy as np
import pytest
from keras import layers

from kseg.errors import InputShapeError, KsegError, ModelConfigError, UnknownNameError
from kseg.models import (
    deeplabv3plus,
    get_model,
    mobilenet_fcn8,
    model_spec,
    unet_xception_resnetblock,
)
from kseg.models.backbones import (
    ENCODERS,
    EncoderConfigError,
    EncoderWeightsError,
    build_encoder,
)
from kseg.models.encoder_unet import encoder_unet

MODELS = ["vggunet", "mobilenet_unet", "mobilenet_fcn8", "unet_xception_resnetblock", "deeplabv3plus"]


def _probs(model, h, w, seed=0):
    x = np.random.RandomState(seed).rand(1, h, w, 3).astype("float32")
    return keras.ops.convert_to_numpy(model(x, training=False))


@functools.lru_cache(maxsize=None)
def _dynamic_model(name):
    """The registered model with its cheap test options, any input size (built once)."""
    return get_model(name, n_classes=3, **model_spec(name).test_kwargs)


def _feature_shapes(model, layer_names, h, w):
    """Run the model eagerly at (h, w) and return the spatial size of the named layers."""
    probe = keras.Model(model.input, [model.get_layer(n).output for n in layer_names])
    x = np.zeros((1, h, w, 3), "float32")
    return [tuple(t.shape[1:3]) for t in probe(x, training=False)]


# ------------------------------------------------------------------ output size

ENCODER_OF = {
    "vggunet": "vgg16",
    "mobilenet_unet": "mobilenet",
    "mobilenet_fcn8": "mobilenet",
    "unet_xception_resnetblock": "xception",
    "deeplabv3plus": "resnet50",
}
TAPS_USED = {
    "vggunet": [1, 2, 4, 8, 16, 32],
    "mobilenet_unet": [2, 4, 8, 16, 32],
    "mobilenet_fcn8": [8, 16, 32],
    "unet_xception_resnetblock": [2, 4, 8, 16],
    "deeplabv3plus": [4, 32],  # low-level feature and the (dilated) last stage
}


@pytest.mark.parametrize("name", MODELS)
def test_output_has_input_size_for_several_sizes(name):
    """One dynamic-size model, called at 64x64, 96x128 (and an odd size where allowed)."""
    spec = model_spec(name)
    model = _dynamic_model(name)
    sizes = [(64, 64), (96, 128)]
    if spec.divisor == 1:
        sizes.append((70, 90))  # not a multiple of 32: decoders resize to the skips
    for h, w in sizes:
        y = _probs(model, h, w)
        assert y.shape == (1, h, w, 3)
        assert np.isfinite(y).all()
        np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    # the skips are the encoder layers named in ENCODERS, present in the model
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    for stride in TAPS_USED[name]:
        assert ENCODERS[ENCODER_OF[name]].taps[stride] in names


def test_input_size_errors_name_the_constraint():
    with pytest.raises(InputShapeError, match="multiple of 32"):
        get_model("mobilenet_fcn8", input_height=48, input_width=64)
    with pytest.raises(InputShapeError, match="at least 32"):
        get_model("vggunet", input_height=16, input_width=64)
    with pytest.raises(InputShapeError, match="at least 32"):
        mobilenet_fcn8(input_shape=(64, 16, 3))


# ------------------------------------------------------------------ taps by name


# Feature sizes for a 64x96 input, by hand. Padded encoders: 64/s x 96/s.
# Xception: 3x3 stride-2 valid conv -> (64-3)//2+1 = 31, (96-3)//2+1 = 47; 3x3 valid
# conv -> 29, 45 (stride-2 tap); then "same" stride-2 poolings: ceil(n/2) each time.
XCEPTION_SIZES = {2: (29, 45), 4: (15, 23), 8: (8, 12), 16: (4, 6), 32: (2, 3)}


# the first six encoders; every encoder of the zoo: tests/models/test_encoder_zoo.py
@pytest.mark.parametrize("name", ["efficientnetb0", "mobilenet", "mobilenetv2", "resnet50", "vgg16", "xception"])
def test_build_encoder_taps_by_layer_name(name):
    inputs = keras.Input((64, 96, 3))
    kwargs = {"alpha": 0.25} if name == "mobilenet" else {}
    encoder, taps = build_encoder(name, inputs, **kwargs)
    spec = ENCODERS[name]
    assert sorted(taps) == sorted(spec.taps)
    for stride, tensor in taps.items():
        layer = encoder.get_layer(spec.taps[stride])
        assert tensor is layer.output
        expected = XCEPTION_SIZES[stride] if name == "xception" else (64 // stride, 96 // stride)
        assert tuple(tensor.shape[1:3]) == expected, (stride, tensor.shape)
    # the deepest tap is the encoder output
    assert taps[max(taps)] is encoder.output


def test_xception_unnamed_layers_get_stable_names():
    first, _ = build_encoder("xception", input_shape=(71, 71, 3))
    second, _ = build_encoder("xception", input_shape=(71, 71, 3))
    names = [layer.name for layer in first.layers[1:]]
    assert names == [layer.name for layer in second.layers[1:]]
    assert "block13_residual_conv" in names and "block2_add" in names
    assert not any(n.startswith(("conv2d", "batch_normalization", "add")) for n in names)
    # the residual 1x1 conv of block 13 is the one that halves the size
    assert first.get_layer("block13_residual_conv").strides == (2, 2)


def test_encoder_argument_errors():
    with pytest.raises(UnknownNameError, match="resnet50"):
        build_encoder("resnet18", input_shape=(64, 64, 3))
    with pytest.raises(EncoderConfigError, match="encoder_weights=None"):
        build_encoder("vgg16", input_shape=(64, 64, 3), weights="imagenet21k")
    with pytest.raises(EncoderConfigError, match="use 32"):
        build_encoder("vgg16", input_shape=(64, 64, 3), output_stride=16)
    # EfficientNet's pretrained input normalisation is RGB-only (other encoders adapt
    # their first conv: tests/models/test_imagenet_start.py); raised before any download
    with pytest.raises(InputShapeError, match="3 input channels, got 1"):
        build_encoder("efficientnetb0", input_shape=(64, 64, 1), weights="imagenet")
    # keras.applications has no ImageNet MobileNet with alpha=0.3: a KsegError, no download
    with pytest.raises(EncoderConfigError, match="alpha"):
        build_encoder("mobilenet", input_shape=(64, 64, 3), weights="imagenet", alpha=0.3)
    with pytest.raises(ModelConfigError, match="decoder_filters"):
        encoder_unet(2, (64, 64, 3), encoder="vgg16", decoder_filters=(8, 8))


def test_imagenet_download_failure_gives_kseg_error(monkeypatch):
    cached = os.path.join(
        os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")),
        "models",
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    )
    if os.path.exists(cached):
        pytest.skip("the VGG16 weights are cached; no download would happen")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("simulated: no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(EncoderWeightsError) as info:
        get_model("vggunet", n_classes=2, input_height=32, input_width=32,
                  encoder_weights="imagenet", decoder_filters=(8, 8, 8, 8, 8))
    assert isinstance(info.value, KsegError)
    msg = str(info.value)
    assert "\n" not in msg
    assert "could not download" in msg and "vgg16" in msg
    assert "encoder_weights=None" in msg
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert "~/.keras/models/" in msg


def test_output_stride_16_keeps_weights_and_dilates(tmp_path):
    """A weights file is loaded into the published network, then copied into the dilated one."""
    keras.utils.set_random_seed(3)
    reference = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(64, 64, 3), alpha=0.35
    )
    path = str(tmp_path / "mnv2.weights.h5")
    reference.save_weights(path)

    inputs = keras.Input((64, 64, 3))
    encoder, taps = build_encoder(
        "mobilenetv2", inputs, weights=path, output_stride=16, alpha=0.35
    )
    assert sorted(taps) == [2, 4, 8, 16]
    assert tuple(taps[16].shape[1:3]) == (4, 4)  # 64 / 16
    assert tuple(taps[8].shape[1:3]) == (8, 8)
    assert encoder.get_layer("block_13_depthwise").strides == (1, 1)
    assert encoder.get_layer("block_12_depthwise").dilation_rate == (1, 1)
    for i in (14, 15, 16):
        assert encoder.get_layer(f"block_{i}_depthwise").dilation_rate == (2, 2)
    for layer_name in ("Conv1", "block_13_depthwise", "block_16_depthwise", "Conv_1_bn"):
        for a, b in zip(reference.get_layer(layer_name).get_weights(),
                        encoder.get_layer(layer_name).get_weights()):
            np.testing.assert_array_equal(a, b)
    # the modified network is in the caller's graph
    model = keras.Model(inputs, taps[16])
    assert model.get_layer("block_14_depthwise") is encoder.get_layer("block_14_depthwise")


# ------------------------------------------------------------------ encoder_unet


@pytest.mark.parametrize("encoder", ["resnet50", "mobilenetv2", "efficientnetb0", "vgg16"])
def test_encoder_unet_builds_for_each_encoder(encoder):
    model = encoder_unet(
        2, (64, 64, 3), encoder=encoder, decoder_filters=(16, 16, 8, 8, 8), name="unet"
    )
    assert model.output_shape == (None, 64, 64, 2)
    names = {layer.name for layer in model.layers}
    for tap in ENCODERS[encoder].taps.values():
        assert tap in names
    # one decoder block per stride; a skip at every stride the encoder provides
    for stride in (16, 8, 4, 2, 1):
        assert f"unet_dec{stride}_conv2_conv" in names
        assert (f"unet_dec{stride}_concat" in names) == (stride in ENCODERS[encoder].taps)
    assert model.get_layer("unet_dec1_conv2_conv").filters == 8
    y = _probs(model, 64, 64)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)


# ------------------------------------------------------------------ mobilenet_fcn8


def _bilinear_1d_by_hand(k):
    """FCN's bilinear taps: k=4 -> [1, 3, 3, 1] / 4; k=16 -> [1, 3, ..., 15, 15, ..., 1] / 16."""
    half = [(2 * i + 1) / k for i in range(k // 2)]
    return np.array(half + half[::-1])


def test_fcn8_upsampling_kernels_start_bilinear():
    np.testing.assert_allclose(_bilinear_1d_by_hand(4), [0.25, 0.75, 0.75, 0.25])
    n = 3
    model = _dynamic_model("mobilenet_fcn8")  # n_classes=3, never trained here
    for label, k in (("up32", 4), ("up16", 4), ("up8", 16)):
        layer = model.get_layer(f"mobilenet_fcn8_{label}")
        assert isinstance(layer, layers.Conv2DTranspose)
        assert layer.strides == (k // 2, k // 2)
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        assert kernel.shape == (k, k, n, n)
        expected = np.zeros((k, k, n, n))
        for c in range(n):
            expected[:, :, c, c] = np.outer(_bilinear_1d_by_hand(k), _bilinear_1d_by_hand(k))
        np.testing.assert_allclose(kernel, expected, atol=1e-7)
        assert not layer.use_bias
    # the paper: learned x2 upsamplings, the final x8 fixed to bilinear
    assert model.get_layer("mobilenet_fcn8_up32").trainable
    assert model.get_layer("mobilenet_fcn8_up16").trainable
    assert not model.get_layer("mobilenet_fcn8_up8").trainable
    # score layers start at zero and are linear (no activation/BN after them)
    for s in (8, 16, 32):
        score = model.get_layer(f"mobilenet_fcn8_score{s}")
        assert not np.any(keras.ops.convert_to_numpy(score.kernel))
        assert score.get_config()["activation"] == "linear"
    assert _feature_shapes(model, ["conv_pw_5_relu", "mobilenet_fcn8_fuse8"], 64, 96) == [
        (8, 12), (8, 12)]


def test_fcn8_x2_upsampling_interpolates_a_ramp():
    """The x2 transposed conv maps a ramp to the half-pixel bilinear ramp (interior)."""
    up = _dynamic_model("mobilenet_fcn8").get_layer("mobilenet_fcn8_up16")
    ramp = np.arange(6, dtype="float32")
    x = np.broadcast_to(ramp[None, :, None, None], (1, 6, 6, 3)).copy()
    y = keras.ops.convert_to_numpy(up(x))[0, :, 3, 0]
    # output row j samples input position (j + 0.5) / 2 - 0.5
    expected = (np.arange(12) + 0.5) / 2 - 0.5
    np.testing.assert_allclose(y[1:-1], expected[1:-1], atol=1e-6)


# ------------------------------------------------------------------ deeplabv3plus


def test_deeplabv3plus_aspp_and_output_stride():
    model = _dynamic_model("deeplabv3plus")  # resnet50, filters=32, low_level_filters=8
    f = model_spec("deeplabv3plus").test_kwargs["filters"]
    for r in (6, 12, 18):
        conv = model.get_layer(f"deeplabv3plus_aspp_rate{r}_conv")
        assert conv.dilation_rate == (r, r)
        assert conv.kernel_size == (3, 3) and conv.filters == f
    assert model.get_layer("deeplabv3plus_aspp_1x1_conv").kernel_size == (1, 1)
    # image pooling branch: global average -> 1x1 conv -> resized back
    gap = model.get_layer("deeplabv3plus_aspp_pool_gap")
    assert isinstance(gap, layers.GlobalAveragePooling2D) and gap.keepdims
    assert gap.input is model.get_layer("conv5_block3_out").output
    assert model.get_layer("deeplabv3plus_aspp_pool_conv").kernel_size == (1, 1)
    # five branches concatenated, then projected
    assert model.get_layer("deeplabv3plus_aspp_concat").output.shape[-1] == 5 * f
    # ResNet50 at output stride 16: stage 5 without stride, 3x3 convs dilated by 2
    assert model.get_layer("conv5_block1_1_conv").strides == (1, 1)
    assert model.get_layer("conv5_block1_0_conv").strides == (1, 1)
    for b in (1, 2, 3):
        assert model.get_layer(f"conv5_block{b}_2_conv").dilation_rate == (2, 2)
    assert model.get_layer("conv4_block6_2_conv").dilation_rate == (1, 1)
    # decoder: reduction of the stride-4 feature, ASPP upsampled x4 to it
    low = model.get_layer("deeplabv3plus_low_level_conv")
    assert low.filters == 8 and low.kernel_size == (1, 1)
    shapes = _feature_shapes(
        model,
        ["conv5_block3_out", "deeplabv3plus_aspp_pool_resize", "conv2_block3_out",
         "deeplabv3plus_aspp_up", "deeplabv3plus_logits"],
        64, 96,
    )
    assert shapes == [(4, 6), (4, 6), (16, 24), (16, 24), (16, 24)]
    # the default widths are the paper's
    default = deeplabv3plus.__kwdefaults__
    assert (default["filters"], default["low_level_filters"], default["atrous_rates"]) == (
        256, 48, (6, 12, 18))
    assert (default["encoder"], default["backbone"], default["output_stride"]) == ("resnet50", None, 16)


@pytest.mark.parametrize("backbone,low_level,deepest", [
    ("mobilenetv2", "block_3_expand_relu", "out_relu"),
    ("xception", "block3_sepconv2_bn", "block14_sepconv2_act"),
])
def test_deeplabv3plus_other_backbones(backbone, low_level, deepest):
    model = deeplabv3plus(2, (None, None, 3), backbone=backbone, filters=8, low_level_filters=8)
    assert model.get_layer("deeplabv3plus_aspp_pool_gap").input is model.get_layer(deepest).output
    # output stride 16; Xception's stride-4 map is 15x23 for 64x96 (unpadded convs)
    low_size = (16, 24) if backbone == "mobilenetv2" else (15, 23)
    assert _feature_shapes(model, [deepest, low_level], 64, 96) == [(4, 6), low_size]
    assert _probs(model, 64, 96).shape == (1, 64, 96, 2)


def test_deeplabv3plus_unknown_backbone():
    # backbone= is the old name of encoder= and takes any encoder; vgg16 is one without a dilation plan
    with pytest.raises(UnknownNameError, match="mobilenetv2"):
        deeplabv3plus(2, (64, 64, 3), backbone="resnet18")
    with pytest.raises(ModelConfigError, match="encoder vgg16 takes output_stride=32"):
        deeplabv3plus(2, (64, 64, 3), backbone="vgg16")


# ------------------------------------------------------------------ xception unet


def test_unet_xception_resnetblock_structure():
    model = _dynamic_model("unet_xception_resnetblock")
    f = model_spec("unet_xception_resnetblock").test_kwargs["start_filters"]
    # decoder widths 32, 16, 8, 4, 2, 1 x start_filters (the kernel's start_neurons)
    widths = {"bottleneck": 32, "dec16": 16, "dec8": 8, "dec4": 4, "dec2": 2, "dec1": 1}
    for level, k in widths.items():
        assert model.get_layer(f"unet_xception_resnetblock_{level}_conv").filters == k * f
        for r in (1, 2):
            add = model.get_layer(f"unet_xception_resnetblock_{level}_res{r}_add")
            assert isinstance(add, layers.Add)
    assert unet_xception_resnetblock.__kwdefaults__["start_filters"] == 16
    # the stride-16 skip is block13's BN output, after a LeakyReLU(0.1)
    act = model.get_layer("unet_xception_resnetblock_enc16_act")
    assert act.input is model.get_layer("block13_sepconv2_bn").output
    assert act.negative_slope == pytest.approx(0.1)
    # Xception's exit flow is not used
    names = {layer.name for layer in model.layers}
    assert "block14_sepconv1" not in names
    # the transposed convs of a 64x96 input are resized to Xception's smaller skips
    shapes = _feature_shapes(
        model,
        ["block2_sepconv2_bn", "unet_xception_resnetblock_dec2_upconv",
         "unet_xception_resnetblock_dec2_align", "unet_xception_resnetblock_dec1_align"],
        64, 96,
    )
    assert shapes == [(29, 45), (30, 46), (29, 45), (64, 96)]


def test_encoder_batchnorm_momentum_is_kseg_default_and_survives_saving():
    # keras.applications uses 0.99 (MobileNetV2 0.999): from scratch, the moving variance
    # (starting at 1) stays far above a small true variance for hundreds of steps and
    # inference predicts one class. kseg's encoders use kseg's 0.9 like every kseg layer.
    def momenta(model):
        return {layer.momentum for layer in model.layers if isinstance(layer, layers.BatchNormalization)}

    kept, _ = build_encoder("mobilenetv2", input_shape=(32, 32, 3), bn_momentum=None)
    assert momenta(kept) == {0.999}
    for stride in (32, 16):
        enc, _ = build_encoder("mobilenetv2", input_shape=(32, 32, 3), output_stride=stride)
        assert momenta(enc) == {0.9}
    enc, _ = build_encoder("resnet50", input_shape=(32, 32, 3), bn_momentum=0.97)
    assert momenta(enc) == {0.97}
    model = deeplabv3plus(n_classes=3, input_shape=(32, 32, 3), backbone="mobilenetv2")
    bns = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    assert len(bns) > 40 and momenta(model) == {0.9}
    rebuilt = keras.Model.from_config(model.get_config())
    assert momenta(rebuilt) == {0.9}


def test_encoder_moving_statistics_converge_in_a_short_run():
    # 60 training-mode calls on inputs of variance ~0.01: with kseg's momentum the
    # inference-mode output has the training-mode scale; with MobileNetV2's 0.999 it
    # is ~10x too small (moving variance still ~0.94 instead of ~0.01).
    x = np.random.default_rng(0).normal(0.5, 0.1, (4, 32, 32, 3)).astype("float32")

    def bn_gap(bn_momentum):
        keras.utils.set_random_seed(0)
        enc, taps = build_encoder("mobilenetv2", input_shape=(32, 32, 3), bn_momentum=bn_momentum)
        first = keras.Model(enc.input, enc.get_layer("bn_Conv1").output)
        for _ in range(60):
            first(x, training=True)
        train_std = float(np.std(first(x, training=True)))
        infer_std = float(np.std(first(x, training=False)))
        return infer_std / train_std

    assert bn_gap(None) < 0.3  # MobileNetV2's own 0.999
    assert 0.8 < bn_gap(0.9) < 1.25
