"""ImageNet starts of pspnet, icnet and deeplab_v2, and pretrained weights with C != 3 channels.

kseg/models/pretrained.py maps keras.applications' ResNet50 / ResNet101 / VGG16 weights
onto kseg's own dilated backbones. Offline: each keras.applications network is built
with random weights (BN moving statistics and conv biases included, fixed seed) and
written in the layout of the published ``*_notop.h5`` files by h5py here (not by kseg,
and checked to be what keras.applications itself loads); kseg loads that file, and the
tests compare every tensor by the rules written below (independently of kseg's table)
and, the strong check, kseg's stage outputs with keras.applications' own on a random
image in inference mode.

The keras.applications ResNets and VGG16 were trained on BGR input; kseg feeds RGB, so
its first kernel is the source kernel with reversed input channels, and kseg on an RGB
image must equal keras.applications on the same image in BGR order.
"""

import os
import re
import shutil
import urllib.error
import urllib.request

import h5py
import keras
import numpy as np
import pytest

from kseg.errors import EncoderConfigError, EncoderWeightsError, InputShapeError, ModelConfigError
from kseg.models import get_model
from kseg.models.backbones import build_encoder
from kseg.models.pretrained import KERAS_RESNET_BN_EPSILON, adapt_input_kernel

SIZE = 64
PARTS = {"0": "proj", "1": "reduce", "2": "conv", "3": "expand"}


# ------------------------------------------------------------------ helpers


def _randomise(model, seed):
    """Random weights for every layer: He-scaled kernels, non-zero biases, BN gamma/beta
    and moving statistics far from their initial values."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for w in layer.weights:
            shape = tuple(w.shape)
            if w.name == "kernel":
                v = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
            elif w.name in ("moving_variance", "gamma"):
                v = rng.uniform(0.5, 1.5, shape)
            else:  # bias, beta, moving_mean
                v = rng.normal(0.0, 0.3, shape)
            values.append(v.astype("float32"))
        if values:
            layer.set_weights(values)


def _write_published_h5(model, path):
    """The layout of keras.applications' released files (legacy Keras 2 ``save_weights``):
    root attribute ``layer_names`` (every layer), one group per layer with ``weight_names``
    such as ``conv1_conv/kernel:0`` and the datasets at those paths."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = f.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0" for w in layer.weights]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for n, w in zip(names, layer.weights):
                group.create_dataset(n, data=keras.ops.convert_to_numpy(w))


def _reference(application, seed, tmp_path_factory):
    net = getattr(keras.applications, application)(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
    )
    _randomise(net, seed)
    path = str(tmp_path_factory.mktemp(application) / f"{application.lower()}_notop.h5")
    _write_published_h5(net, path)
    return net, path


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory):
    return _reference("ResNet50", 1, tmp_path_factory)


@pytest.fixture(scope="module")
def vgg16(tmp_path_factory):
    return _reference("VGG16", 2, tmp_path_factory)


def _weights(layer):
    return {w.name: keras.ops.convert_to_numpy(w) for w in layer.weights}


def _leaves(model):
    out = {}
    for layer in model.layers:
        out.update(_leaves(layer) if isinstance(layer, keras.Model) else {layer.name: layer})
    return out


def _image(channels=3, seed=0):
    return np.random.default_rng(seed).normal(0.0, 60.0, (2, SIZE, SIZE, channels)).astype("float32")


def _outputs(model, names, x):
    """The outputs of layers ``names`` on ``x`` in inference mode (eager: no tracing)."""
    sub = keras.Model(model.input, [model.get_layer(n).output for n in names])
    out = sub(x, training=False)
    return [keras.ops.convert_to_numpy(a) for a in (out if isinstance(out, (list, tuple)) else [out])]


def _check_resnet_tensors(reference, model, prefix):
    """Every ResNet tensor where the keras/kseg naming rules say, biases folded.

    keras ``conv{s}_block{b}_{i}_{conv,bn}`` -> kseg ``{prefix}_stage{s-1}_block{b}_{part}``
    with part 0/1/2/3 = proj/reduce/conv/expand; ``conv1`` -> ``{prefix}_stem_conv1``.
    Returns the number of kseg layers that received weights.
    """
    ours = _leaves(model)
    done = set()
    for layer in reference.layers:
        m = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_conv", layer.name)
        if layer.name == "conv1_conv":
            dst, bn_name = f"{prefix}_stem_conv1", "conv1_bn"
        elif m:
            s, b, i = m.groups()
            dst = f"{prefix}_stage{int(s) - 1}_block{b}_{PARTS[i]}"
            bn_name = layer.name[:-4] + "bn"
        else:
            continue
        src, src_bn = _weights(layer), _weights(reference.get_layer(bn_name))
        conv, bn = ours[f"{dst}_conv"], ours[f"{dst}_bn"]
        kernel = src["kernel"][:, :, ::-1, :] if layer.name == "conv1_conv" else src["kernel"]
        got = _weights(conv)
        assert set(got) == {"kernel"}, dst  # no bias before BN
        np.testing.assert_array_equal(got["kernel"], kernel)
        got_bn = _weights(bn)
        for k in ("gamma", "beta", "moving_variance"):
            np.testing.assert_array_equal(got_bn[k], src_bn[k], err_msg=f"{dst} {k}")
        np.testing.assert_allclose(
            got_bn["moving_mean"], src_bn["moving_mean"] - src["bias"], rtol=0, atol=1e-6
        )
        assert bn.epsilon == reference.get_layer(bn_name).epsilon == KERAS_RESNET_BN_EPSILON
        done |= {conv.name, bn.name}
    backbone = {n for n, layer in ours.items() if n.startswith(prefix + "_st") and layer.weights}
    assert done == backbone  # every backbone layer received weights, from one source each
    return len(done)


# ------------------------------------------------------------------ the file format


def test_written_file_is_what_keras_applications_loads(vgg16):
    """The tests' file writer produces the published format: keras.applications reads it."""
    reference, path = vgg16
    loaded = keras.applications.VGG16(include_top=False, weights=path, input_shape=(SIZE, SIZE, 3))
    for a, b in zip(reference.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


# ------------------------------------------------------------------ ResNets


def test_pspnet_resnet50_start_matches_keras_applications(resnet50):
    reference, path = resnet50
    model = get_model("pspnet", 3, SIZE, SIZE, backbone="resnet50", deep_stem=False,
                      encoder_weights=path)
    n = _check_resnet_tensors(reference, model, "pspnet_backbone")
    assert n == 2 * (1 + 16 * 3 + 4)  # stem, 16 bottlenecks of 3 convs, 4 projections
    x = _image()
    ours = _outputs(model, ["pspnet_backbone_stage1_block3_out", "pspnet_backbone_stage2_block4_out"], x)
    theirs = _outputs(reference, ["conv2_block3_out", "conv3_block4_out"], x[..., ::-1])
    for a, b in zip(ours, theirs):  # strides 4 and 8, before any dilation
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_deeplab_v2_resnet101_start_matches_keras_applications(tmp_path_factory):
    reference, path = _reference("ResNet101", 3, tmp_path_factory)
    model = get_model("deeplab_v2", 3, SIZE, SIZE, backbone="resnet101", encoder_weights=path)
    n = _check_resnet_tensors(reference, model, "deeplab_v2_resnet101")
    assert n == 2 * (1 + 33 * 3 + 4)
    x = _image(seed=1)
    ours = _outputs(model, ["deeplab_v2_resnet101_stage1_block3_out",
                            "deeplab_v2_resnet101_stage2_block4_out"], x)
    theirs = _outputs(reference, ["conv2_block3_out", "conv3_block4_out"], x[..., ::-1])
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_icnet_start_fills_shared_and_unshared_layers(resnet50):
    reference, path = resnet50
    model = get_model("icnet", 3, SIZE, SIZE, backbone_width=1.0, deep_stem=False,
                      encoder_weights=path)
    _check_resnet_tensors(reference, model, "icnet")
    # the shared sub-model (stem, stage 1, stage 2 block 1) computes keras' layers
    shared = model.get_layer("icnet_shared")
    x = _image(seed=2)
    ours = _outputs(shared, ["icnet_stage1_block3_out", "icnet_stage2_block1_out"], x)
    theirs = _outputs(reference, ["conv2_block3_out", "conv3_block1_out"], x[..., ::-1])
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


# ------------------------------------------------------------------ VGG16


def _check_vgg_tensors(reference, model, prefix, channels=3):
    count = 0
    for layer in reference.layers:
        m = re.fullmatch(r"block(\d)_conv(\d)", layer.name)
        if not m:
            continue
        src, got = _weights(layer), _weights(model.get_layer(f"{prefix}_conv{m[1]}_{m[2]}"))
        kernel = src["kernel"]
        if layer.name == "block1_conv1":
            kernel = adapt_input_kernel(kernel[:, :, ::-1, :], channels)
        np.testing.assert_array_equal(got["kernel"], kernel)
        np.testing.assert_array_equal(got["bias"], src["bias"])
        count += 1
    assert count == 13


def test_deeplab_v2_vgg16_start_matches_keras_applications(vgg16):
    reference, path = vgg16
    # one ASPP branch wherever the head does not matter: cheaper to build
    model = get_model("deeplab_v2", 3, SIZE, SIZE, rates=(6,), encoder_weights=path)
    _check_vgg_tensors(reference, model, "deeplab_v2_vgg16")
    # Stage 1 runs at stride 1 in both (DeepLab's 3x3 pools differ from VGG16's 2x2 after it).
    x = _image(seed=3)
    (ours,) = _outputs(model, ["deeplab_v2_vgg16_conv1_2"], x)
    (theirs,) = _outputs(reference, ["block1_conv2"], x[..., ::-1])
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_keras3_weights_file_loads_too(vgg16, tmp_path):
    """A ``.weights.h5`` file (Keras 3's format, by layer order) goes through keras.applications."""
    reference, _ = vgg16
    path = str(tmp_path / "vgg16.weights.h5")
    reference.save_weights(path)
    model = get_model("deeplab_v2", 3, SIZE, SIZE, rates=(6,), encoder_weights=path)
    _check_vgg_tensors(reference, model, "deeplab_v2_vgg16")


def test_extra_or_missing_tensors_are_named(vgg16, tmp_path):
    _, path = vgg16
    extra = str(tmp_path / "extra.h5")
    shutil.copy(path, extra)
    with h5py.File(extra, "a") as f:
        f.attrs["layer_names"] = _layer_names(f) + [b"fc9"]
        g = f.create_group("fc9")
        g.attrs["weight_names"] = [b"fc9/kernel:0"]
        g.create_dataset("fc9/kernel:0", data=np.zeros((2, 2), "float32"))
    with pytest.raises(EncoderConfigError) as info:
        get_model("deeplab_v2", 3, SIZE, SIZE, encoder_weights=extra)
    msg = str(info.value)
    assert "\n" not in msg and "left over fc9" in msg and extra in msg and "VGG16" in msg

    missing = str(tmp_path / "missing.h5")
    shutil.copy(path, missing)
    with h5py.File(missing, "a") as f:
        f.attrs["layer_names"] = [n for n in _layer_names(f) if n != b"block5_conv3"]
        del f["block5_conv3"]
    with pytest.raises(EncoderConfigError) as info:
        get_model("deeplab_v2", 3, SIZE, SIZE, encoder_weights=missing)
    msg = str(info.value)
    assert "\n" not in msg and "missing block5_conv3" in msg and "left over" not in msg

    # a ResNet file for the VGG16 backbone: everything missing, everything left over
    with pytest.raises(EncoderConfigError, match=r"missing block1_conv1.*left over conv1_bn"):
        get_model("deeplab_v2", 3, SIZE, SIZE, encoder_weights=_resnet_file_stub(tmp_path))


def _layer_names(f):
    return [n if isinstance(n, bytes) else str(n).encode() for n in f.attrs["layer_names"]]


def _resnet_file_stub(tmp_path):
    path = str(tmp_path / "resnet_stub.h5")
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"conv1_conv", b"conv1_bn"]
        for name, weights in (("conv1_conv", ("kernel", "bias")),
                              ("conv1_bn", ("gamma", "beta", "moving_mean", "moving_variance"))):
            g = f.create_group(name)
            g.attrs["weight_names"] = [f"{name}/{w}:0".encode() for w in weights]
            for w in weights:
                g.create_dataset(f"{name}/{w}:0", data=np.ones((3,), "float32"))
    return path


# ------------------------------------------------------------------ C != 3 channels


def test_dilated_models_adapt_the_first_kernel(vgg16):
    reference, path = vgg16
    src = keras.ops.convert_to_numpy(reference.get_layer("block1_conv1").kernel)  # BGR order
    one = get_model("deeplab_v2", 3, SIZE, SIZE, channels=1, rates=(6,),
                    encoder_weights=path)
    _check_vgg_tensors(reference, one, "deeplab_v2_vgg16", channels=1)
    k1 = keras.ops.convert_to_numpy(one.get_layer("deeplab_v2_vgg16_conv1_1").kernel)
    assert k1.shape == (3, 3, 1, 64)
    np.testing.assert_allclose(k1[1, 2, 0, 5], src[1, 2, 0, 5] + src[1, 2, 1, 5] + src[1, 2, 2, 5],
                               rtol=1e-6)

    four = get_model("deeplab_v2", 3, SIZE, SIZE, channels=4, rates=(6,),
                    encoder_weights=path)
    _check_vgg_tensors(reference, four, "deeplab_v2_vgg16", channels=4)
    k4 = keras.ops.convert_to_numpy(four.get_layer("deeplab_v2_vgg16_conv1_1").kernel)
    # RGB order: channel 0 = R = BGR channel 2; channel 3 cycles back to R; all times 3/4
    np.testing.assert_allclose(k4[0, 0, 3, 7], 0.75 * src[0, 0, 2, 7], rtol=1e-6)
    np.testing.assert_allclose(k4[0, 0, 1, 7], 0.75 * src[0, 0, 1, 7], rtol=1e-6)


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory):
    net = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3),
                                       alpha=0.25)
    _randomise(net, 4)
    path = str(tmp_path_factory.mktemp("mobilenet") / "mobilenet.weights.h5")
    net.save_weights(path)
    return net, path


def test_keras_applications_encoders_adapt_the_first_kernel(mobilenet_file, vgg16):
    reference, path = mobilenet_file
    src = keras.ops.convert_to_numpy(reference.get_layer("conv1").kernel)
    # C = 1 through a model: the RGB kernels summed, everything else copied unchanged
    model = get_model("mobilenet_unet", 2, SIZE, SIZE, channels=1, alpha=0.25,
                      encoder_weights=path, decoder_filters=(8, 8, 8, 8, 8))
    got = keras.ops.convert_to_numpy(model.get_layer("conv1").kernel)
    assert got.shape == (3, 3, 1, 8)
    np.testing.assert_allclose(got[2, 1, 0, 3], src[2, 1, 0, 3] + src[2, 1, 1, 3] + src[2, 1, 2, 3],
                               rtol=1e-6)
    np.testing.assert_array_equal(got, adapt_input_kernel(src, 1))
    for name in ("conv_dw_1", "conv_pw_13", "conv_pw_13_bn"):
        for a, b in zip(reference.get_layer(name).get_weights(), model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)

    # C = 4 at output stride 16 (the network rebuilt and dilated): cycled, times 3/4
    inputs = keras.Input((SIZE, SIZE, 4))
    encoder, _ = build_encoder("mobilenet", inputs, weights=path, output_stride=16, alpha=0.25)
    assert encoder.get_layer("conv_dw_13").dilation_rate == (2, 2)
    got = encoder.get_layer("conv1").get_weights()[0]
    assert got.shape == (3, 3, 4, 8)
    np.testing.assert_allclose(got[2, 1, 3, 3], 0.75 * src[2, 1, 0, 3], rtol=1e-6)
    np.testing.assert_array_equal(got, adapt_input_kernel(src, 4))

    # kseg's own VGG16 encoder (copied by layer name) takes the same rule, after
    # reversing the BGR-trained kernel to RGB
    vgg_ref, vgg_path = vgg16
    encoder, _ = build_encoder("vgg16", input_shape=(32, 32, 4), weights=vgg_path)
    np.testing.assert_array_equal(
        encoder.get_layer("block1_conv1").get_weights()[0],
        adapt_input_kernel(vgg_ref.get_layer("block1_conv1").get_weights()[0][:, :, ::-1], 4))


def test_bgr_trained_encoders_answer_rgb_as_keras_answers_bgr(resnet50, mobilenet_file):
    """keras' ResNet50 weights expect BGR ("caffe" preprocessing), kseg feeds RGB: the
    encoder on an RGB image gives keras' answer on the BGR image. MobileNet's weights
    expect RGB: its first kernel is copied as it is."""
    reference, path = resnet50
    encoder, taps = build_encoder("resnet50", input_shape=(SIZE, SIZE, 3), weights=path)
    x = _image()
    ours = keras.Model(encoder.input, taps[8])(x)
    theirs = keras.Model(reference.input, reference.get_layer("conv3_block4_out").output)(x[..., ::-1])
    ours, theirs = keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs)
    # float32 sums of random weights reach ~3e3 here: compare at 1e-4 of that scale
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * np.abs(theirs).max())
    # the unflipped kernel would be far off (the check can fail)
    wrong = keras.Model(reference.input, reference.get_layer("conv3_block4_out").output)(x)
    assert np.abs(keras.ops.convert_to_numpy(wrong) - theirs).max() > 1e-2 * np.abs(theirs).max()
    np.testing.assert_array_equal(encoder.get_layer("conv1_conv").get_weights()[0],
                                  reference.get_layer("conv1_conv").get_weights()[0][:, :, ::-1])

    mobile, mobile_path = mobilenet_file
    encoder, _ = build_encoder("mobilenet", input_shape=(SIZE, SIZE, 3), weights=mobile_path, alpha=0.25)
    np.testing.assert_array_equal(encoder.get_layer("conv1").get_weights()[0],
                                  mobile.get_layer("conv1").get_weights()[0])


def test_efficientnet_refuses_other_channels_with_weights():
    # raised before any download: its input normalisation holds RGB statistics
    with pytest.raises(InputShapeError, match="3 input channels, got 1"):
        build_encoder("efficientnetb0", input_shape=(64, 64, 1), weights="imagenet")


# ------------------------------------------------------------------ option errors


def test_options_a_pretrained_start_cannot_take(tmp_path):
    path = _resnet_file_stub(tmp_path)
    with pytest.raises(ModelConfigError, match="pass deep_stem=False"):
        get_model("pspnet", 2, SIZE, SIZE, encoder_weights=path)
    with pytest.raises(ModelConfigError, match="pass width_multiplier=1.0"):
        get_model("pspnet", 2, SIZE, SIZE, deep_stem=False, width_multiplier=0.5,
                  encoder_weights=path)
    with pytest.raises(ModelConfigError, match="pass backbone_width=1.0"):
        get_model("icnet", 2, SIZE, SIZE, deep_stem=False, encoder_weights=path)
    with pytest.raises(ModelConfigError, match="pass deep_stem=False"):
        get_model("icnet", 2, SIZE, SIZE, backbone_width=1.0, encoder_weights=path)
    for bad in ("imagenet21k", str(tmp_path / "absent.h5"), 3):
        with pytest.raises(EncoderConfigError, match="encoder_weights=None") as info:
            get_model("deeplab_v2", 2, SIZE, SIZE, encoder_weights=bad)
        assert "\n" not in str(info.value)
    # a ResNet-50 file for ResNet-101 fails on its names, before the model is built
    with pytest.raises(EncoderConfigError, match="missing conv2_block1_0_bn"):
        get_model("deeplab_v2", 2, SIZE, SIZE, backbone="resnet101", encoder_weights=path)
    not_h5 = tmp_path / "notes.h5"
    not_h5.write_text("not a weights file")
    with pytest.raises(EncoderWeightsError, match="deeplab_v2 \\(VGG16\\) could not read") as info:
        get_model("deeplab_v2", 2, SIZE, SIZE, encoder_weights=str(not_h5))
    assert "\n" not in str(info.value) and str(not_h5) in str(info.value)


def test_imagenet_download_failure_gives_kseg_error(monkeypatch):
    cached = os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")), "models",
                          "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    if os.path.exists(cached):
        pytest.skip("the ResNet50 weights are cached; no download would happen")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("simulated: no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(EncoderWeightsError) as info:
        get_model("pspnet", 2, SIZE, SIZE, deep_stem=False, encoder_weights="imagenet")
    msg = str(info.value)
    assert "\n" not in msg and "could not download" in msg and "pspnet (ResNet50)" in msg
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert "encoder_weights=None" in msg
