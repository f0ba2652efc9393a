"""Predictor: resize / letterbox round trip, sliding window vs whole image, flip TTA, batching;
predict_folder and the timing summary behind scripts/test.py."""

import time
import tracemalloc

import cv2
import numpy as np
import pytest

from kseg.errors import ExperimentError, KsegError
from kseg.data.preprocess import network_input
from kseg.predict import Predictor, StageTimer, format_timing, predict_folder, timing_summary
from kseg.runtime import keras_runner

# a fixed per-pixel "model": probabilities = softmax(W @ rgb + b) -- fully convolutional with a
# receptive field of one pixel, so every prediction mode must give exactly the same scores
W_PIX = np.array([[4.0, -2.0, 1.0], [-3.0, 5.0, 0.5], [1.0, 1.0, -4.0], [0.0, -1.0, 3.0]], np.float32)
B_PIX = np.array([0.1, -0.2, 0.3, 0.0], np.float32)


def pixel_run(batch):
    z = np.einsum("bhwc,kc->bhwk", np.asarray(batch, np.float32), W_PIX) + B_PIX
    z -= z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def pixel_reference(image):
    """Independent numpy reference of pixel_run on x/255 at the image's own size."""
    x = image.astype(np.float64) / 255.0
    z = x @ W_PIX.T.astype(np.float64) + B_PIX
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def cfg(size=(32, 32), n_classes=4, **kw):
    c = {"model_name": "unet", "n_classes": n_classes, "input_height": size[0], "input_width": size[1],
         "image_init": "divide", "resize_op": 1}
    c.update(kw)
    return c


class Recorder:
    """Wraps a run function and records the shape of every batch it receives."""

    def __init__(self, run, input_size=None):
        self.inner, self.shapes = run, []
        if input_size is not None:
            self.input_size = input_size

    def __call__(self, batch):
        self.shapes.append(tuple(batch.shape))
        return self.inner(batch)


def smooth_image(rng, h, w, sigma=3):
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.ascontiguousarray(cv2.GaussianBlur(img, (0, 0), sigma))


@pytest.fixture(scope="module")
def fcn():
    """A small fully convolutional zoo model (unet, 4 base filters, 3 levels) taking any size."""
    import keras

    from kseg.models import get_model

    keras.utils.set_random_seed(0)
    return get_model("unet", n_classes=4, base_filters=4, depth=3)


# ---------------------------------------------------------------------------------- resize / letterbox
@pytest.mark.parametrize("hw", [(37, 101), (101, 37), (1, 50), (45, 3), (64, 64), (200, 90)])
def test_letterbox_round_trip_restores_exact_size_and_crops_padding(hw):
    h, w = hw
    rec = Recorder(lambda b: np.stack([1.0 - b.mean(-1), b.mean(-1)], -1))  # bright -> class 1
    p = Predictor(rec, cfg(n_classes=2, resize_op=2))
    white = np.full((h, w, 3), 255, np.uint8)
    proba = p.predict_proba(white)
    assert proba.shape == (h, w, 2)
    assert rec.shapes == [(1, 32, 32, 3)]
    # the letterbox bars (0 -> class 0) must be cut away before mapping back: all white -> all class 1
    np.testing.assert_allclose(proba[..., 1], 1.0, atol=1e-6)
    assert p.predict(white).shape == (h, w)


def test_letterbox_round_trip_keeps_the_layout():
    h, w = 60, 150
    img = np.zeros((h, w, 3), np.uint8)
    img[:, 50:100] = 255  # a bright vertical band in the middle third
    img[:20, :25] = 255  # and a bright corner block
    expected = img[..., 0] > 127
    run = lambda b: np.stack([1.0 - b.mean(-1), b.mean(-1)], -1)  # noqa: E731
    mask = Predictor(run, cfg(size=(64, 64), n_classes=2, resize_op=2)).predict(img)
    assert mask.shape == (h, w)
    assert (mask == expected).mean() > 0.97  # only pixels at the band edges may differ


def test_letterbox_pads_with_zero_after_normalisation_like_training():
    # training normalises first and pads the normalised image with 0 (kseg.data.pipeline)
    rec = Recorder(lambda b: np.ones(b.shape[:3] + (2,), np.float32) / 2)
    p = Predictor(rec, cfg(size=(32, 32), n_classes=2, resize_op=2, image_init="sub_and_divide"))
    seen = []
    rec.inner = lambda b: (seen.append(b.copy()), np.ones(b.shape[:3] + (2,), np.float32) / 2)[1]
    p.predict(np.full((16, 32, 3), 255, np.uint8))  # 2:1 -> letterboxed 16x32 band, rows 8..23
    x = seen[0][0]
    np.testing.assert_allclose(x[8:24], 1.0, atol=1e-6)  # 255 / 127.5 - 1
    np.testing.assert_array_equal(x[:8], 0.0)
    np.testing.assert_array_equal(x[24:], 0.0)


def test_resize_mode_batches_images_and_keeps_their_sizes():
    rec = Recorder(pixel_run)
    p = Predictor(rec, cfg(), batch_size=2)
    rng = np.random.default_rng(0)
    images = [smooth_image(rng, h, w) for h, w in ((40, 50), (32, 32), (70, 20))]
    probs = p.predict_proba_batch(images)
    assert rec.shapes == [(2, 32, 32, 3), (1, 32, 32, 3)]
    assert [q.shape for q in probs] == [(40, 50, 4), (32, 32, 4), (70, 20, 4)]
    # the 32x32 image is not resized at all: exactly the per-pixel reference
    np.testing.assert_allclose(probs[1], pixel_reference(images[1]), atol=1e-5)


# ---------------------------------------------------------------------------------- slide
@pytest.mark.parametrize("hw,tile,stride", [((70, 101), (32, 32), (20, 20)), ((64, 96), (32, 48), (32, 48)),
                                            ((33, 129), (32, 32), (7, 31))])
def test_slide_equals_per_pixel_reference(hw, tile, stride):
    """With a receptive field of one pixel, averaging overlapping windows is exact anywhere."""
    rng = np.random.default_rng(1)
    img = smooth_image(rng, *hw)
    p = Predictor(pixel_run, cfg(), mode="slide", tile=tile, stride=stride, divisor=1)
    np.testing.assert_allclose(p.predict_proba(img), pixel_reference(img), atol=1e-5)


def test_slide_windows_cover_the_image_and_stay_inside():
    p = Predictor(pixel_run, cfg(size=(64, 64)), mode="slide", stride=(40, 40))
    corners = p.windows(500, 700)
    ys = sorted({y for y, _ in corners})
    xs = sorted({x for _, x in corners})
    assert ys == [0, 40, 80, 120, 160, 200, 240, 280, 320, 360, 400, 436]
    assert xs[:3] == [0, 40, 80] and xs[-2:] == [600, 636] and len(xs) == 17
    assert len(corners) == 12 * 17


def test_slide_fixed_size_model_pads_small_images():
    rec = Recorder(pixel_run, input_size=(32, 32))
    p = Predictor(rec, cfg(), mode="slide", divisor=1)
    img = smooth_image(np.random.default_rng(2), 20, 45)
    proba = p.predict_proba(img)
    assert {s[1:3] for s in rec.shapes} == {(32, 32)}
    assert proba.shape == (20, 45, 4)
    np.testing.assert_allclose(proba, pixel_reference(img), atol=1e-5)


def test_slide_agrees_with_whole_for_a_fully_convolutional_model(fcn):
    img = smooth_image(np.random.default_rng(0), 160, 224)
    c = cfg(size=(64, 64))
    whole = Predictor(fcn.predict_on_batch, c, mode="whole").predict_proba(img)
    rec = Recorder(fcn.predict_on_batch)
    slide = Predictor(rec, c, mode="slide", stride=(32, 32), batch_size=3).predict_proba(img)
    assert slide.shape == whole.shape == (160, 224, 4)
    np.testing.assert_allclose(slide.sum(-1), 1.0, atol=1e-5)
    assert {s[1:3] for s in rec.shapes} == {(64, 64)} and max(s[0] for s in rec.shapes) == 3
    # windows see zero padding near their borders, so scores differ a little at the seams; the
    # untrained model is undecided (near ties) on some pixels: compare where it is decided
    top2 = np.sort(whole, -1)[..., -2:]
    decided = top2[..., 1] - top2[..., 0] > 0.05
    assert decided.mean() > 0.5
    agree = slide.argmax(-1) == whole.argmax(-1)
    assert agree[decided].mean() >= 0.98
    assert np.abs(slide - whole).mean() < 0.02


@pytest.mark.parametrize("hw,tile", [((160, 224), (160, 224)), ((48, 80), (64, 96))])
def test_slide_is_exactly_whole_when_the_tile_covers_the_image(fcn, hw, tile):
    img = smooth_image(np.random.default_rng(3), *hw)
    c = cfg(size=(64, 64))
    whole = Predictor(fcn.predict_on_batch, c, mode="whole").predict_proba(img)
    rec = Recorder(fcn.predict_on_batch)
    slide = Predictor(rec, c, mode="slide", tile=tile).predict_proba(img)
    assert rec.shapes == [(1,) + hw + (3,)]  # a single window: the image itself
    np.testing.assert_allclose(slide, whole, atol=1e-5)


def test_slide_big_image_with_a_64px_model_is_full_size_and_batched(tmp_path):
    """A 700x500 image through an experiment trained at 64x64: windows of 64x64, at most
    batch_size at a time, every window run once, masks at 700x500."""
    import keras

    from conftest import write_experiment
    from kseg.models import get_model

    keras.utils.set_random_seed(1)
    folder = write_experiment(str(tmp_path / "exp64"), get_model("unet", n_classes=3, base_filters=4, depth=2),
                              n_classes=3, size=(64, 64), model_kwargs={"base_filters": 4, "depth": 2})
    p = Predictor.from_experiment(folder, mode="slide", batch_size=4)
    rec = Recorder(p.run)
    p.run = rec
    img = smooth_image(np.random.default_rng(4), 500, 700)
    proba = p.predict_proba(img)
    assert proba.shape == (500, 700, 3) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(-1), 1.0, atol=1e-4)
    assert all(s[0] <= 4 and s[1:] == (64, 64, 3) for s in rec.shapes)
    assert sum(s[0] for s in rec.shapes) == len(p.windows(500, 700)) == 12 * 17
    assert p.predict(img).shape == (500, 700)


def test_slide_memory_is_bounded_by_one_score_map():
    """Peak numpy memory stays near one image's score map, far below holding all windows."""
    h, w, c = 500, 700, 4
    img = smooth_image(np.random.default_rng(5), h, w)
    p = Predictor(pixel_run, cfg(size=(64, 64)), mode="slide", stride=(16, 16), batch_size=4)
    n_windows = len(p.windows(h, w))
    one_image = h * w * 4 * (c + 1 + 3)  # score map + counts + normalised image, float32
    all_windows = n_windows * 64 * 64 * 4 * (3 + c)  # every window's input and output at once
    bound = 2 * one_image
    assert all_windows > 2 * bound  # the check below can tell the two apart
    tracemalloc.start()
    try:
        proba = p.predict_proba(img)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert proba.shape == (h, w, c)
    assert peak < bound, f"peak {peak / 1e6:.1f} MB, bound {bound / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------- whole
def test_whole_pads_to_the_divisor_and_groups_equal_sizes():
    rec = Recorder(pixel_run)
    p = Predictor(rec, cfg(), mode="whole", batch_size=2)  # unet: divisor 16
    rng = np.random.default_rng(6)
    images = [smooth_image(rng, 40, 50), smooth_image(rng, 33, 20), smooth_image(rng, 35, 60),
              smooth_image(rng, 48, 64), smooth_image(rng, 47, 63)]
    probs = p.predict_proba_batch(images)
    # 40x50, 35x60, 48x64 and 47x63 all pad to 48x64; 33x20 pads to 48x32
    assert sorted(rec.shapes) == [(1, 48, 32, 3), (2, 48, 64, 3), (2, 48, 64, 3)]
    for im, pr in zip(images, probs):
        assert pr.shape == im.shape[:2] + (4,)
        np.testing.assert_allclose(pr, pixel_reference(im), atol=1e-5)


def test_whole_refuses_a_fixed_size_model():
    with pytest.raises(KsegError, match="fixed|only accepts"):
        Predictor(Recorder(pixel_run, input_size=(32, 32)), cfg(), mode="whole")


# ---------------------------------------------------------------------------------- flip, sigmoid
def test_flip_tta_averages_the_mirrored_prediction():
    def ramp_run(b):  # class-1 probability = column / (W - 1): not mirror-symmetric
        n, h, w, _ = b.shape
        p1 = np.broadcast_to(np.linspace(0, 1, w, dtype=np.float32), (n, h, w))
        return np.stack([1 - p1, p1], -1)

    img = np.zeros((32, 32, 3), np.uint8)
    plain = Predictor(ramp_run, cfg(n_classes=2)).predict_proba(img)
    np.testing.assert_allclose(plain[0, :, 1], np.arange(32) / 31, atol=1e-6)
    flipped = Predictor(ramp_run, cfg(n_classes=2), flip=True).predict_proba(img)
    np.testing.assert_allclose(flipped[..., 1], 0.5, atol=1e-6)  # (x + (31 - x)) / 2 / 31


def test_flip_tta_is_unchanged_for_a_mirror_symmetric_model():
    img = smooth_image(np.random.default_rng(7), 40, 56)
    a = Predictor(pixel_run, cfg(), mode="slide", flip=True, divisor=1).predict_proba(img)
    np.testing.assert_allclose(a, pixel_reference(img), atol=1e-5)


def test_single_sigmoid_channel_becomes_background_and_foreground():
    run = lambda b: np.full(b.shape[:3] + (1,), 0.8, np.float32)  # noqa: E731
    p = Predictor(run, cfg(n_classes=1))
    proba = p.predict_proba(np.zeros((10, 12, 3), np.uint8))
    assert proba.shape == (10, 12, 2)
    np.testing.assert_allclose(proba[0, 0], [0.2, 0.8], atol=1e-6)
    assert (p.predict(np.zeros((10, 12, 3), np.uint8)) == 1).all()


# ---------------------------------------------------------------------------------- errors, timing
@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "tiles"}, "unknown prediction mode"),
    ({"mode": "slide", "stride": (40, 40)}, "stride"),
    ({"mode": "slide", "tile": (40, 40)}, "multiples of 16"),
])
def test_bad_options_raise_one_line_errors(kwargs, match):
    with pytest.raises(KsegError, match=match) as e:
        Predictor(pixel_run, cfg(), **kwargs)
    assert "\n" not in str(e.value)


def test_fixed_size_model_rejects_another_tile():
    with pytest.raises(KsegError, match="--tile 64 64"):
        Predictor(Recorder(pixel_run, input_size=(32, 32)), cfg(), mode="slide", tile=(64, 64))


def test_wrong_output_shape_is_reported():
    p = Predictor(lambda b: np.zeros((b.shape[0], 8, 8, 2), np.float32), cfg())
    with pytest.raises(KsegError, match="returned shape"):
        p.predict(np.zeros((32, 32, 3), np.uint8))


def test_stage_timer_attributes_time_to_the_model():
    def slow_run(b):
        time.sleep(0.02)
        return pixel_run(b)

    p = Predictor(slow_run, cfg(), mode="slide", stride=(32, 32), batch_size=1)
    p.timer = StageTimer()
    p.predict(np.zeros((64, 64, 3), np.uint8))  # 4 windows -> 4 calls
    t = p.timer.snapshot()
    assert t["model"] >= 4 * 0.02
    assert t["preprocess"] > 0 and t["postprocess"] > 0
    assert t["preprocess"] + t["postprocess"] < t["model"]


def test_timing_summary_and_its_table():
    per_image = [{"preprocess": 0.001 * i, "model": 0.01 * i, "postprocess": 0.002 * i} for i in (1, 2, 3, 4)]
    for t in per_image:
        t["total"] = sum(t.values())
    s = timing_summary(per_image)
    assert (s["images"], s["warmup_images"], s["unit"]) == (4, 1, "ms")
    assert s["model"]["median"] == pytest.approx(25.0) and s["model"]["mean"] == pytest.approx(25.0)
    assert s["model"]["p90"] == pytest.approx(37.0)  # numpy's linear percentile of 10, 20, 30, 40
    assert s["total"]["median"] == pytest.approx(32.5)
    assert s["images_per_second"] == pytest.approx(4 / 0.13) and s["model_images_per_second"] == pytest.approx(40)
    table = format_timing(s).splitlines()
    assert table[0] == "timing over 4 image(s) (after 1 warm-up), per image:"
    assert table[1].split() == ["stage", "median", "ms", "p90", "ms"]
    assert table[3].split() == ["model", "25.0", "37.0"]
    assert table[-1].startswith("throughput: 30.77 images/s end to end") and "model alone 40.00 images/s" in table[-1]


# ---------------------------------------------------------------------------------- the one preprocessing step
def test_network_input_normalises_before_resizing():
    img = np.random.default_rng(3).integers(0, 256, (20, 50, 3), dtype=np.uint8)
    x = network_input(img, (32, 32), "sub_mean", 2)
    assert x.dtype == np.float32 and x.shape == (32, 32, 3)
    # letterbox of 20x50 into 32x32: 13 rows of image (rows 9..21), 0 (normalised space) elsewhere
    np.testing.assert_array_equal(x[:9], 0.0)
    np.testing.assert_array_equal(x[22:], 0.0)
    # equal to what the predictor feeds its model in resize mode
    rec = Recorder(lambda b: np.full(b.shape[:3] + (2,), 0.5, np.float32))
    seen = []
    rec.inner = lambda b: (seen.append(b.copy()), np.full(b.shape[:3] + (2,), 0.5, np.float32))[1]
    Predictor(rec, cfg(n_classes=2, image_init="sub_mean", resize_op=2)).predict(img)
    np.testing.assert_array_equal(seen[0][0], x)


# ---------------------------------------------------------------------------------- folders
def _image_folder(tmp_path, shapes, seed=0):
    from kseg.data.io import write_image, write_label

    rng = np.random.default_rng(seed)
    images, labels = tmp_path / "images", tmp_path / "labels"
    for i, (h, w) in enumerate(shapes):
        write_image(str(images / f"im{i}.png"), smooth_image(rng, h, w))
        write_label(str(labels / f"im{i}.png"), rng.integers(0, 4, (h, w)).astype(np.uint8))
    return str(images), str(labels)


def test_predict_folder_writes_masks_report_and_timing(tmp_path):
    import json
    import os

    from kseg.data.io import read_image, read_label
    from kseg.metrics import confusion_matrix

    images, labels = _image_folder(tmp_path, [(40, 50), (32, 32), (70, 20)])
    rec = Recorder(pixel_run)
    p = Predictor(rec, cfg(class_names=["a", "b", "c", "d"]), batch_size=2)
    out = str(tmp_path / "out")
    res = predict_folder(p, images, out, label_dir=labels, overlays=False)
    assert res["images"] == 3 and res["seconds"] > 0 and res["masks_dir"] == os.path.join(out, "masks")
    assert rec.shapes == [(2, 32, 32, 3), (1, 32, 32, 3)]  # images batched by the predictor's batch size
    assert res["timing"] is None and not os.path.exists(os.path.join(out, "timing.json"))
    assert sorted(os.listdir(out)) == ["confusion_matrix.png", "masks", "report.json"]
    cm = np.zeros((4, 4), np.int64)
    for i in range(3):
        mask = read_label(os.path.join(out, "masks", f"im{i}.png"))
        np.testing.assert_array_equal(mask, p.predict(read_image(os.path.join(images, f"im{i}.png"))))
        cm += confusion_matrix(read_label(os.path.join(labels, f"im{i}.png")), mask, 4, 255)
    with open(os.path.join(out, "report.json")) as f:
        rep = json.load(f)
    assert rep["confusion_matrix"] == cm.tolist() == res["report"]["confusion_matrix"]
    assert rep["mode"] == "resize" and rep["flip"] is False and rep["test_dir"] == os.path.abspath(images)
    assert "experiment" not in rep  # a predictor not made from an experiment folder
    assert [c["name"] for c in rep["per_class"]] == ["a", "b", "c", "d"] and "mean IoU" in res["report_text"]

    # timing: one image at a time after a warm-up image; the predictor is left without the timer
    rec.shapes.clear()
    res = predict_folder(p, images, out, timing=True)
    assert rec.shapes == [(1, 32, 32, 3)] * 4 and p.timer is None
    assert res["timing"]["images"] == 3 and res["report"] is None and res["report_text"] is None
    with open(os.path.join(out, "timing.json")) as f:
        assert json.load(f) == res["timing"]


def test_predict_folder_without_output_returns_the_masks(tmp_path):
    import os

    from kseg.data.io import read_image
    from kseg.errors import DataError

    images, labels = _image_folder(tmp_path, [(33, 47), (64, 20)], seed=1)
    p = Predictor(pixel_run, cfg(), mode="slide", stride=(16, 16), batch_size=8)
    res = predict_folder(p, images, label_dir=labels)
    assert sorted(res["masks"]) == ["im0", "im1"] and res["masks_dir"] is None
    for stem, mask in res["masks"].items():
        image = read_image(os.path.join(images, f"{stem}.png"))
        assert mask.shape == image.shape[:2]
        np.testing.assert_array_equal(mask, p.predict(image))
    assert res["report"]["images"] == 2 and res["report"]["tile"] == [32, 32] and res["report"]["stride"] == [16, 16]
    assert sorted(os.listdir(tmp_path)) == ["images", "labels"]  # nothing written
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images found"):
        predict_folder(p, str(empty))


# ---------------------------------------------------------------------------------- experiments
def test_from_experiment_folder_and_keras_file(tiny_experiment, tmp_path):
    import os

    img = smooth_image(np.random.default_rng(8), 45, 70)
    a = Predictor.from_experiment(tiny_experiment)
    b = Predictor.from_experiment(os.path.join(tiny_experiment, "best.keras"), mode="whole")
    assert a.folder == b.folder == tiny_experiment
    assert a.run.input_size is None  # built size-free
    assert a.predict(img).shape == b.predict(img).shape == (45, 70)
    assert a.predict_proba(img).shape == (45, 70, 4)
    with pytest.raises(ExperimentError):
        Predictor.from_experiment(str(tmp_path / "missing"))


def test_keras_runner_reports_a_fixed_input_size(tmp_path):
    from kseg.models import get_model

    path = str(tmp_path / "fixed.keras")
    get_model("unet", n_classes=2, input_height=32, input_width=48, base_filters=4, depth=2).save(path)
    run = keras_runner(path)
    assert run.input_size == (32, 48)
    assert run(np.zeros((1, 32, 48, 3), np.float32)).shape == (1, 32, 48, 2)
    with pytest.raises(KsegError, match="does not exist"):
        keras_runner(str(tmp_path / "nope.keras"))


def test_a_mixed_precision_model_predicts_in_float32():
    """One precision for prediction: a model trained under mixed_bfloat16 runs in float32 in
    the Keras runner, as its exports do, so both give the same masks."""
    import keras

    from kseg.models import get_model
    from kseg.runtime import keras_runner

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = get_model("unet", n_classes=3, input_height=32, input_width=32, base_filters=4, depth=2)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert any(layer.compute_dtype == "bfloat16" for layer in mixed.layers)
    run = keras_runner(model=mixed)
    assert all(layer.compute_dtype == "float32" for layer in run.model.layers)
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    f32 = get_model("unet", n_classes=3, input_height=32, input_width=32, base_filters=4, depth=2)
    f32.set_weights(mixed.get_weights())
    np.testing.assert_allclose(run(x), np.asarray(f32(x, training=False)), atol=1e-6)
