"""The paper-fidelity details of fcn8, mobilenet_fcn8's head, segnet and enet.

FCN-8s's initial state as the authors' at-once net (zero scores, bilinear x2
upsamplings, a fixed bilinear x8, pool4/pool3 scaled by 0.01/0.0001), VGG16's
classifier fc1/fc2 mapped onto fc6/fc7, pretrained VGG16 weights from local files
(legacy ``.h5`` and Keras 3 ``.weights.h5``) with the first kernel turned from BGR to
RGB and adapted to other input channel counts, SegNet's
decoder widths as the authors' Caffe model, ENet's dropout-free decoder and any
number of input channels. Expected values are written by hand or come from Keras
itself (Flatten + Dense as the reference of the fc1 -> fc6 reshape); nothing is
downloaded (the ImageNet download is simulated to fail).

The synthetic VGG16 files hold the full 13 convolutions (14.7M float32, 59 MB) and,
for the "with classifier" file, fc1/fc2 of width 8 instead of 4096, so that fcn8
with ``fc_filters=8`` takes them: the mapping is the same for any width.
"""

import h5py
import keras
import numpy as np
import pytest
from keras import layers

from kseg.errors import EncoderConfigError, EncoderWeightsError, ModelConfigError
from kseg.models import enet, fcn8, mobilenet_fcn8, segnet
from kseg.models.pretrained import adapt_input_kernel

FC = 8  # fc width of the synthetic "with classifier" file and of the reduced fcn8
N = 3  # classes

CONVS = [
    ("block1_conv1", 3, 64), ("block1_conv2", 64, 64),
    ("block2_conv1", 64, 128), ("block2_conv2", 128, 128),
    ("block3_conv1", 128, 256), ("block3_conv2", 256, 256), ("block3_conv3", 256, 256),
    ("block4_conv1", 256, 512), ("block4_conv2", 512, 512), ("block4_conv3", 512, 512),
    ("block5_conv1", 512, 512), ("block5_conv2", 512, 512), ("block5_conv3", 512, 512),
]


def _k(model, layer, i=0):
    return model.get_layer(layer).get_weights()[i]


def _synthetic_vgg16(with_fc, seed):
    """``{layer: [kernel, bias]}``: VGG16's conv shapes, fc1 (7*7*512, FC), fc2 (FC, FC)."""
    rng = np.random.default_rng(seed)
    table = {
        name: [rng.standard_normal((3, 3, cin, cout), dtype=np.float32) * 0.05,
               rng.standard_normal(cout, dtype=np.float32)]
        for name, cin, cout in CONVS
    }
    if with_fc:
        table["fc1"] = [rng.standard_normal((7 * 7 * 512, FC), dtype=np.float32),
                        rng.standard_normal(FC, dtype=np.float32)]
        table["fc2"] = [rng.standard_normal((FC, FC), dtype=np.float32),
                        rng.standard_normal(FC, dtype=np.float32)]
        table["predictions"] = [rng.standard_normal((FC, 10), dtype=np.float32),
                                rng.standard_normal(10, dtype=np.float32)]
    return table


def _write_legacy_h5(path, table):
    """The legacy Keras layout of keras.applications' files: root attribute
    ``layer_names``, one group per layer with ``weight_names`` (``layer/kernel:0``,
    stored as nested paths, as Keras 2's save_weights does)."""
    with h5py.File(path, "w") as f:
        names = ["input_1", *table, "flatten"] if "fc1" in table else ["input_1", *table]
        f.attrs["layer_names"] = [n.encode() for n in names]
        f.attrs["backend"] = b"tensorflow"
        for name in names:
            g = f.create_group(name)
            arrays = table.get(name, [])
            wnames = [f"{name}/{w}:0" for w in ("kernel", "bias")][: len(arrays)]
            g.attrs["weight_names"] = [n.encode() for n in wnames]
            for wname, a in zip(wnames, arrays):
                g.create_dataset(wname, data=a)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("vgg16")
    top, notop = _synthetic_vgg16(True, 1), _synthetic_vgg16(False, 2)
    _write_legacy_h5(d / "top.h5", top)
    _write_legacy_h5(d / "notop.h5", notop)
    return {"top": (str(d / "top.h5"), top), "notop": (str(d / "notop.h5"), notop), "dir": d}


@pytest.fixture(scope="module")
def fresh_fcn8():
    keras.utils.set_random_seed(0)
    return fcn8(n_classes=N, input_shape=(32, 32, 3), fc_filters=FC)


# ------------------------------------------------------------------ FCN-8s initial state

# FCN's bilinear kernel for x2 (k = 4): taps 1 - |i - 1.5| / 2 = 1/4, 3/4, 3/4, 1/4; the 2D
# kernel is their outer product, written out:
BILINEAR_4x4 = np.array([
    [1, 3, 3, 1],
    [3, 9, 9, 3],
    [3, 9, 9, 3],
    [1, 3, 3, 1],
]) / 16.0
# x8 (k = 16): taps 1 - |i - 7.5| / 8 = 1/16, 3/16, ..., 15/16, 15/16, ..., 1/16
TAPS_16 = np.array([1, 3, 5, 7, 9, 11, 13, 15, 15, 13, 11, 9, 7, 5, 3, 1]) / 16.0


def _per_class(kernel_2d, n):
    """A (k, k, n, n) kernel mapping class c to class c only."""
    out = np.zeros((*kernel_2d.shape, n, n))
    for c in range(n):
        out[:, :, c, c] = kernel_2d
    return out


def test_fcn8_score_layers_start_at_zero(fresh_fcn8):
    for layer in ("fcn8_score_fr", "fcn8_score_pool4", "fcn8_score_pool3"):
        assert not np.any(_k(fresh_fcn8, layer, 0)), layer  # kernel
        assert not np.any(_k(fresh_fcn8, layer, 1)), layer  # bias
    # so the untrained network predicts the uniform distribution everywhere
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    out = keras.ops.convert_to_numpy(fresh_fcn8(x))
    np.testing.assert_allclose(out, 1.0 / N, atol=1e-6)


def test_fcn8_upsamplings_start_bilinear_and_only_the_x2_ones_learn(fresh_fcn8):
    for layer in ("fcn8_upscore2", "fcn8_upscore_pool4"):
        up = fresh_fcn8.get_layer(layer)
        assert up.strides == (2, 2) and not up.use_bias and up.trainable
        np.testing.assert_allclose(_k(fresh_fcn8, layer), _per_class(BILINEAR_4x4, N), atol=1e-7)
    up8 = fresh_fcn8.get_layer("fcn8_upscore8")
    assert up8.strides == (8, 8) and not up8.use_bias
    assert not up8.trainable
    assert not any(w is up8.kernel for w in fresh_fcn8.trainable_weights)
    np.testing.assert_allclose(
        _k(fresh_fcn8, "fcn8_upscore8"), _per_class(np.outer(TAPS_16, TAPS_16), N), atol=1e-7
    )


def test_fcn8_fixed_x8_survives_training_while_the_x2_learn():
    keras.utils.set_random_seed(1)
    model = fcn8(n_classes=N, input_shape=(32, 32, 3), fc_filters=FC, activation=None)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    y = rng.integers(0, N, (2, 32, 32)).astype("int32")
    up8, up2 = _k(model, "fcn8_upscore8"), _k(model, "fcn8_upscore2")
    for _ in range(3):  # step 1 moves the zero scores; the x2 kernels see gradients after
        model.train_on_batch(x, y)
    np.testing.assert_array_equal(_k(model, "fcn8_upscore8"), up8)
    assert np.abs(_k(model, "fcn8_upscore2") - up2).max() > 1e-4


def test_fcn8_at_once_pool_scaling(fresh_fcn8):
    x = np.array([100.0, -250.0, 3.0, 0.0], "float32").reshape(1, 1, 1, 4)
    y4 = keras.ops.convert_to_numpy(fresh_fcn8.get_layer("fcn8_scale_pool4")(x))
    y3 = keras.ops.convert_to_numpy(fresh_fcn8.get_layer("fcn8_scale_pool3")(x))
    np.testing.assert_allclose(y4.ravel(), [1.0, -2.5, 0.03, 0.0], rtol=1e-6)
    np.testing.assert_allclose(y3.ravel(), [0.01, -0.025, 0.0003, 0.0], rtol=1e-6)
    # wired between the pools and their score layers
    for p, s in ((4, "pool4"), (3, "pool3")):
        scale = fresh_fcn8.get_layer(f"fcn8_scale_{s}")
        assert scale.input is fresh_fcn8.get_layer(f"block{p}_pool").output
        assert fresh_fcn8.get_layer(f"fcn8_score_{s}").input is scale.output


def test_fcn8_variants_are_options():
    model = fcn8(
        n_classes=N, input_shape=(32, 32, 3), fc_filters=FC, pool_scaling=False,
        learnable_upsampling=False, learnable_final_upsampling=True,
    )
    names = {layer.name for layer in model.layers}
    assert "fcn8_scale_pool4" not in names and "fcn8_scale_pool3" not in names
    assert model.get_layer("fcn8_score_pool4").input is model.get_layer("block4_pool").output
    assert not model.get_layer("fcn8_upscore2").trainable
    assert not model.get_layer("fcn8_upscore_pool4").trainable
    assert model.get_layer("fcn8_upscore8").trainable
    with pytest.raises(ModelConfigError, match="pool_scaling"):
        fcn8(n_classes=N, input_shape=(32, 32, 3), fc_filters=FC, pool_scaling=2)


def test_mobilenet_fcn8_head_is_the_papers_without_pool_scaling():
    model = mobilenet_fcn8(n_classes=N, input_shape=(32, 32, 3), alpha=0.25)
    names = {layer.name for layer in model.layers}
    assert not any("scale" in n for n in names)
    assert not any(isinstance(layer, layers.Rescaling) for layer in model.layers)
    assert not model.get_layer("mobilenet_fcn8_up8").trainable
    for s in (8, 16, 32):
        assert not np.any(_k(model, f"mobilenet_fcn8_score{s}"))


# ------------------------------------------------------------------ fc6/fc7 from fc1/fc2


@pytest.fixture(scope="module")
def fcn8_from_top(files):
    path, _ = files["top"]
    return fcn8(n_classes=N, input_shape=(32, 32, 3), fc_filters=FC, encoder_weights=path)


def test_fc6_fc7_are_fc1_fc2_reshaped(files, fcn8_from_top):
    _, src = files["top"]
    fc1, b1 = src["fc1"]
    fc2, b2 = src["fc2"]
    fc6, fc7 = _k(fcn8_from_top, "fcn8_fc6"), _k(fcn8_from_top, "fcn8_fc7")
    assert fc6.shape == (7, 7, 512, FC) and fc7.shape == (1, 1, FC, FC)
    # Keras flattens block5_pool (7, 7, 512) as h, w, c: row (h * 7 + w) * 512 + c
    for h, w, c, o in [(0, 0, 0, 0), (6, 6, 511, 7), (2, 5, 300, 3), (5, 2, 300, 3), (3, 1, 17, 5)]:
        assert fc6[h, w, c, o] == fc1[(h * 7 + w) * 512 + c, o], (h, w, c, o)
    for i, o in [(0, 0), (1, 6), (6, 1), (7, 7)]:
        assert fc7[0, 0, i, o] == fc2[i, o]
    np.testing.assert_array_equal(_k(fcn8_from_top, "fcn8_fc6", 1), b1)
    np.testing.assert_array_equal(_k(fcn8_from_top, "fcn8_fc7", 1), b2)


def test_fc6_computes_keras_flatten_dense_at_the_centre(files, fcn8_from_top):
    """On a 7x7 map, the 7x7 "same" fc6 at the centre sees the whole map: it must equal
    Keras' own Flatten -> Dense(fc1) (the layer VGG16's classifier is)."""
    _, src = files["top"]
    inp = keras.Input((7, 7, 512))
    dense = layers.Dense(FC, activation="relu")
    reference = keras.Model(inp, dense(layers.Flatten()(inp)))
    dense.set_weights(src["fc1"])
    x = np.random.default_rng(3).uniform(0, 2, (1, 7, 7, 512)).astype("float32")
    ours = keras.ops.convert_to_numpy(fcn8_from_top.get_layer("fcn8_fc6")(x))[0, 3, 3]
    np.testing.assert_allclose(ours, keras.ops.convert_to_numpy(reference(x))[0], rtol=1e-4, atol=1e-3)


def test_encoder_convs_come_from_the_file(files, fcn8_from_top):
    _, src = files["top"]
    for name in ("block1_conv1", "block3_conv2", "block5_conv3"):
        kernel = src[name][0]
        if name == "block1_conv1":  # trained on BGR, kseg feeds RGB: input channels reversed
            kernel = kernel[:, :, [2, 1, 0], :]
        np.testing.assert_array_equal(_k(fcn8_from_top, name, 0), kernel)
        np.testing.assert_array_equal(_k(fcn8_from_top, name, 1), src[name][1])
    # the head keeps its published start
    assert not np.any(_k(fcn8_from_top, "fcn8_score_fr"))


def test_fc_width_must_match_the_file(files):
    path, _ = files["top"]
    with pytest.raises(EncoderConfigError) as info:
        fcn8(n_classes=N, input_shape=(32, 32, 3), fc_filters=16, encoder_weights=path)
    msg = str(info.value)
    assert "\n" not in msg and path in msg and f"fc_filters={FC}" in msg


def test_a_file_without_classifier_gives_the_encoder_only(files):
    path, src = files["notop"]
    keras.utils.set_random_seed(0)
    model = fcn8(n_classes=N, input_shape=(32, 32, 3), fc_filters=FC, encoder_weights=path)
    np.testing.assert_array_equal(_k(model, "block4_conv2"), src["block4_conv2"][0])
    assert _k(model, "fcn8_fc6").shape == (7, 7, 512, FC)  # random, no error


def test_keras3_weights_file(tmp_path):
    """A ``.weights.h5`` saved by Keras 3 from keras.applications' VGG16 (no top)."""
    keras.utils.set_random_seed(5)
    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = str(tmp_path / "vgg16_notop.weights.h5")
    reference.save_weights(path)
    model = segnet(n_classes=N, input_shape=(32, 32, 3), encoder_weights=path)
    for s, c in ((1, 1), (3, 3), (5, 2)):
        kernel = reference.get_layer(f"block{s}_conv{c}").get_weights()[0]
        if s == c == 1:
            kernel = kernel[:, :, ::-1, :]  # BGR -> RGB
        np.testing.assert_array_equal(_k(model, f"segnet_enc{s}_conv{c}_conv"), kernel)


# ------------------------------------------------------------------ input channels


def test_one_channel_fcn8_and_segnet_adapt_the_first_kernel(files):
    path, src = files["top"]
    source = src["block1_conv1"][0]  # (3, 3, 3, 64), input channels B, G, R
    grey_fcn = fcn8(n_classes=N, input_shape=(32, 32, 1), fc_filters=FC, encoder_weights=path)
    grey_seg = segnet(n_classes=N, input_shape=(32, 32, 1), encoder_weights=path)
    for kernel in (_k(grey_fcn, "block1_conv1"), _k(grey_seg, "segnet_enc1_conv1_conv")):
        assert kernel.shape == (3, 3, 1, 64)
        np.testing.assert_allclose(kernel, adapt_input_kernel(source, 1), atol=1e-6)  # sum order
        # the rule by hand: a grey image g answers as the colour image (g, g, g)
        np.testing.assert_allclose(kernel[:, :, 0], source.sum(axis=2), atol=1e-6)
    np.testing.assert_array_equal(_k(grey_seg, "segnet_enc2_conv1_conv"), src["block2_conv1"][0])


def test_four_channel_segnet_cycles_the_rgb_kernels(files):
    path, src = files["notop"]
    b, g, r = (src["block1_conv1"][0][:, :, i] for i in range(3))
    kernel = _k(segnet(n_classes=N, input_shape=(32, 32, 4), encoder_weights=path),
                "segnet_enc1_conv1_conv")
    # channels R, G, B, R (channel c takes RGB kernel c mod 3), each scaled by 3 / 4
    for c, expected in enumerate((r, g, b, r)):
        np.testing.assert_allclose(kernel[:, :, c], 0.75 * expected, rtol=1e-6)


# ------------------------------------------------------------------ weights errors


def test_imagenet_download_failure_is_one_line(monkeypatch):
    def offline(fname, origin, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- simulated: no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    for build, fname in (
        (lambda: fcn8(n_classes=N, input_shape=(32, 32, 3), encoder_weights="imagenet"),
         "vgg16_weights_tf_dim_ordering_tf_kernels.h5"),
        (lambda: fcn8(n_classes=N, input_shape=(32, 32, 3), fc_filters=FC, encoder_weights="imagenet"),
         "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        (lambda: segnet(n_classes=N, input_shape=(32, 32, 3), encoder_weights="imagenet"),
         "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ):
        with pytest.raises(EncoderWeightsError) as info:
            build()
        msg = str(info.value)
        assert "\n" not in msg and "could not download" in msg and "encoder_weights=None" in msg
        assert f"/{fname} " in msg  # the file to fetch by hand, named exactly


def test_unsuitable_weights_are_one_line_errors(files, tmp_path):
    text = tmp_path / "weights.txt"
    text.write_text("not hdf5")
    with pytest.raises(EncoderWeightsError, match="weights.txt"):
        fcn8(n_classes=N, input_shape=(32, 32, 3), fc_filters=FC, encoder_weights=str(text))
    partial = {k: v for k, v in files["notop"][1].items() if k != "block3_conv2"}
    _write_legacy_h5(tmp_path / "partial.h5", partial)
    with pytest.raises(EncoderConfigError, match="partial.h5 has no layer 'block3_conv2'"):
        segnet(n_classes=N, input_shape=(32, 32, 3), encoder_weights=str(tmp_path / "partial.h5"))
    for build in (fcn8, segnet):
        with pytest.raises(EncoderConfigError, match="imagenet21k") as info:
            build(n_classes=N, input_shape=(32, 32, 3), encoder_weights="imagenet21k")
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------ SegNet, ENet


def test_segnet_decoder_widths_are_the_caffe_models():
    model = segnet(n_classes=11, input_shape=(32, 32, 3))
    convs = [layer for layer in model.layers
             if isinstance(layer, layers.Conv2D) and "_dec" in layer.name]
    # segnet_train.prototxt: conv5_3_D .. conv1_2_D, then the classifier conv1_1_D
    assert [c.filters for c in convs] == [512, 512, 512, 512, 512, 256, 256, 256, 128, 128, 64, 64]
    assert convs[-1].name == "segnet_dec1_conv1_conv"
    head = model.get_layer("segnet_head_logits")
    assert head.filters == 11 and head.kernel_size == (1, 1)
    assert head.input is model.get_layer("segnet_dec1_conv1_act").output


def test_enet_decoder_has_no_dropout():
    model = enet(n_classes=N, input_shape=(32, 32, 3))
    drops = {layer.name: layer.rate for layer in model.layers
             if isinstance(layer, layers.SpatialDropout2D)}
    assert not [n for n in drops if n.startswith(("enet_b4", "enet_b5"))]
    # encoder: 0.01 in stage 1 (5 bottlenecks), 0.1 in stages 2-3 (1 + 8 + 8)
    assert sorted(drops.values()) == [0.01] * 5 + [0.1] * 17


@pytest.mark.parametrize("channels,conv_maps", [(1, 15), (4, 12), (3, 13)])
def test_enet_takes_other_input_channels(channels, conv_maps):
    model = enet(n_classes=N, input_shape=(32, 32, channels))
    assert model.get_layer("enet_initial_conv").filters == conv_maps
    assert model.get_layer("enet_initial_concat").output.shape[-1] == 16
    x = np.random.default_rng(0).random((1, 32, 32, channels), dtype=np.float32)
    out = keras.ops.convert_to_numpy(model(x))
    assert out.shape == (1, 32, 32, N) and np.isfinite(out).all()


def test_enet_channel_limit():
    model = enet(n_classes=N, input_shape=(32, 32, 63))
    assert model.get_layer("enet_initial_concat").output.shape[-1] == 64
    with pytest.raises(ModelConfigError, match="at most 63 input channels") as info:
        enet(n_classes=N, input_shape=(32, 32, 64))
    assert "\n" not in str(info.value)
