"""Tests of kseg.metrics against hand-computed values and an independent numpy reference."""

import json

import numpy as np
import pytest
import keras

from kseg.errors import DataError, KsegError, UnknownNameError
from kseg.metrics import (
    FScore,
    IoUScore,
    PixelAccuracy,
    confusion_matrix,
    format_report,
    get_metric,
    list_metrics,
    segmentation_report,
)

IGN = 255
ALL_METRICS = ["mean_iou", "iou_score", "jaccard_score", "f1_score", "f2_score", "dice_score", "pixel_accuracy"]


# --------------------------------------------------------------------------------------
# independent reference: per-class counts by explicit loops


def ref_scores(y_true, y_pred_labels, k, ignore=IGN):
    """Per-class TP/FP/FN by looping over pixels, then the metric values."""
    tp = np.zeros(k)
    fp = np.zeros(k)
    fn = np.zeros(k)
    correct = total = 0
    for t, p in zip(np.ravel(y_true), np.ravel(y_pred_labels)):
        if t == ignore or not 0 <= t < k:
            continue
        total += 1
        if t == p:
            tp[t] += 1
            correct += 1
        else:
            fn[t] += 1
            fp[p] += 1
    seen = (tp + fp + fn) > 0

    def mean(v):
        return float(np.mean(v[seen])) if seen.any() else 0.0

    iou = np.where(seen, tp / np.maximum(tp + fp + fn, 1), 0)

    def fbeta(b):
        return mean(np.where(seen, (1 + b * b) * tp / np.maximum((1 + b * b) * tp + b * b * fn + fp, 1e-12), 0))

    return {
        "mean_iou": mean(iou),
        "iou_score": mean(iou),
        "jaccard_score": mean(iou),
        "f1_score": fbeta(1),
        "dice_score": fbeta(1),
        "f2_score": fbeta(2),
        "pixel_accuracy": correct / total if total else 0.0,
    }


def metric_value(name, k, y_true, y_pred, **kw):
    m = get_metric(name, n_classes=k, **kw)
    m.update_state(y_true, y_pred)
    return float(m.result())


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, (2, 7, 7))
    y[y == 3] = 0  # class 3 never in the ground truth ...
    y[0, :2] = IGN
    p = rng.random((2, 7, 7, 4)).astype("float32")
    p[..., 3] *= 0.6  # ... but sometimes predicted
    return y.astype("int32"), p


# --------------------------------------------------------------------------------------
# Keras metrics


def test_list_and_names():
    assert list_metrics() == sorted(ALL_METRICS)
    for n in ALL_METRICS:
        assert get_metric(n, n_classes=3).name == n


def test_unknown_metric_and_option_errors():
    with pytest.raises(UnknownNameError, match="unknown metric 'miou'.*mean_iou"):
        get_metric("miou", 3)
    with pytest.raises(KsegError, match="does not take option 'beta'"):
        get_metric("f1_score", 3, beta=3)
    with pytest.raises(KsegError, match="n_classes must be a positive integer"):
        get_metric("mean_iou", 0)


@pytest.mark.parametrize("name", ALL_METRICS)
def test_matches_reference(name, batch):
    y, p = batch
    expected = ref_scores(y, p.argmax(-1), 4)[name]
    assert metric_value(name, 4, y, p) == pytest.approx(expected, rel=1e-6)


def test_hand_computed_scores():
    # labels [[0, 0, 1], [1, 2, ignore]]; predicted [[0, 1, 1], [1, 1, 2]]
    # class 0: tp 1, fn 1, fp 0 -> IoU 1/2, F1 2/3, F2 5/(5+4) = 5/9
    # class 1: tp 2, fn 0, fp 2 -> IoU 1/2, F1 4/6, F2 10/(10+2) = 5/6
    # class 2: tp 0, fn 1, fp 0 (the ignored pixel does not count) -> 0
    y = np.array([[[0, 0, 1], [1, 2, IGN]]])
    pred = np.array([[[0, 1, 1], [1, 1, 2]]])
    p = np.eye(3, dtype="float32")[pred]
    assert metric_value("mean_iou", 3, y, p) == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert metric_value("f1_score", 3, y, p) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert metric_value("f2_score", 3, y, p) == pytest.approx((5 / 9 + 5 / 6 + 0) / 3)
    assert metric_value("pixel_accuracy", 3, y, p) == pytest.approx(3 / 5)


def test_unseen_classes_are_left_out_of_the_mean():
    # 4 classes, only 0 and 1 appear anywhere: IoU0 = 1/2 (tp 1, fp 1), IoU1 = 1/2 (tp 1, fn 1)
    y = np.array([[[0, 1, 1]]])
    pred = np.array([[[0, 0, 1]]])
    p = np.eye(4, dtype="float32")[pred]
    assert metric_value("iou_score", 4, y, p) == pytest.approx(0.5)
    # a class predicted but absent from the ground truth counts (IoU 0)
    pred2 = np.array([[[0, 3, 1]]])
    p2 = np.eye(4, dtype="float32")[pred2]
    assert metric_value("iou_score", 4, y, p2) == pytest.approx((1 + 0.5 + 0) / 3)


def test_streaming_accumulates_the_matrix_not_batch_means(batch):
    y, p = batch
    m = get_metric("mean_iou", n_classes=4)
    m.update_state(y[:1], p[:1])
    m.update_state(y[1:], p[1:])
    whole = ref_scores(y, p.argmax(-1), 4)["mean_iou"]
    assert float(m.result()) == pytest.approx(whole, rel=1e-6)
    first = ref_scores(y[:1], p[:1].argmax(-1), 4)["mean_iou"]
    second = ref_scores(y[1:], p[1:].argmax(-1), 4)["mean_iou"]
    assert whole != pytest.approx((first + second) / 2, rel=1e-3)
    m.reset_state()
    assert float(m.result()) == 0.0  # nothing counted
    m.update_state(y[1:], p[1:])
    assert float(m.result()) == pytest.approx(second, rel=1e-6)


def test_target_forms_agree(batch):
    y, p = batch
    ref = metric_value("f2_score", 4, y, p)
    assert metric_value("f2_score", 4, y[..., None], p) == pytest.approx(ref)
    onehot = np.stack([(y == c) for c in range(4)], -1).astype("float32")  # ignored rows all 0
    assert metric_value("f2_score", 4, onehot, p) == pytest.approx(ref)
    assert metric_value("f2_score", 4, y.astype("uint8"), p) == pytest.approx(ref)


def test_ignore_index_option(batch):
    y, p = batch
    y9 = np.where(y == IGN, 9, y)
    assert metric_value("mean_iou", 4, y9, p, ignore_index=9) == pytest.approx(metric_value("mean_iou", 4, y, p))


def test_single_sigmoid_channel_uses_a_two_by_two_matrix():
    # p > 0.5 is foreground (0.5 itself is background)
    y = np.array([[[0, 1, 1, 0, IGN]]])
    p = np.array([[[0.2, 0.7, 0.5, 0.9, 0.9]]], "float32")[..., None]
    # predicted [0, 1, 0, 1]: bg tp 1 fn 1 fp 1 -> 1/3; fg tp 1 fn 1 fp 1 -> 1/3
    m = get_metric("mean_iou", n_classes=1)
    m.update_state(y, p)
    assert m.confusion.shape == (2, 2)
    assert float(m.result()) == pytest.approx(1 / 3)
    # logits: threshold 0
    z = np.log(p / (1 - p))
    assert metric_value("mean_iou", 1, y, z, from_logits=True) == pytest.approx(1 / 3)


def test_sample_weight_weights_pixels():
    y = np.array([[[0, 1]], [[1, 1]]])
    pred = np.array([[[0, 0]], [[1, 1]]])
    p = np.eye(2, dtype="float32")[pred]
    m = PixelAccuracy(n_classes=2)
    m.update_state(y, p, sample_weight=np.array([1.0, 3.0]))
    # image 0: 1 of 2 right (weight 1); image 1: 2 of 2 right (weight 3) -> (1 + 6) / (2 + 6)
    assert float(m.result()) == pytest.approx(7 / 8)


def test_config_round_trip(batch):
    y, p = batch
    for m in [IoUScore(4, name="mean_iou"), FScore(4, beta=2.0), PixelAccuracy(4, ignore_index=0)]:
        again = type(m).from_config(m.get_config())
        assert again.get_config() == m.get_config()
        m.update_state(y, p)
        again.update_state(y, p)
        assert float(again.result()) == float(m.result())


def tiny_model(k):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    out = keras.layers.Conv2D(k, 1, activation="softmax")(inp)
    return keras.Model(inp, out)


@pytest.mark.parametrize("jit", [False, True])
def test_inside_fit_and_saved_model(jit, tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow jit_compile check (JAX: test_losses_jax.py)")
    from kseg.losses import get_loss

    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, (4, 8, 8)).astype("int32")
    y[0, 0] = IGN
    model = tiny_model(3)
    model.compile(
        keras.optimizers.SGD(0.0),
        loss=get_loss("ce", 3),
        metrics=[get_metric(n, n_classes=3) for n in ALL_METRICS],
        jit_compile=jit,
    )
    # two batches of 2: the epoch value is the score over the whole epoch
    hist = model.fit(x, y, batch_size=2, epochs=1, verbose=0).history
    expected = ref_scores(y, model.predict(x, verbose=0).argmax(-1), 3)
    for n in ALL_METRICS:
        assert hist[n][0] == pytest.approx(expected[n], rel=1e-5), n
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    res = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert res["mean_iou"] == pytest.approx(expected["mean_iou"], rel=1e-5)
    assert res["f2_score"] == pytest.approx(expected["f2_score"], rel=1e-5)


# --------------------------------------------------------------------------------------
# numpy evaluation


def test_confusion_matrix_hand_computed():
    y = np.array([[0, 0, 1], [1, 2, IGN]])
    pred = np.array([[0, 1, 1], [1, 1, 2]])
    cm = confusion_matrix(y, pred, 3)
    assert cm.dtype == np.int64
    # rows = truth, columns = prediction
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    # scores given as (H, W, C) are arg-maxed
    assert confusion_matrix(y, np.eye(3)[pred], 3).tolist() == cm.tolist()
    # a batch (B, H, W)
    assert confusion_matrix(np.stack([y, y]), np.stack([pred, pred]), 3).tolist() == (2 * cm).tolist()


def test_confusion_matrix_binary_and_errors():
    y = np.array([0, 1, 1, IGN])
    p = np.array([0.2, 0.7, 0.4, 0.9])[:, None]
    assert confusion_matrix(y, p, 1).tolist() == [[1, 0], [1, 1]]
    with pytest.raises(DataError, match="label value 5 is out of range for n_classes=3"):
        confusion_matrix(np.array([0, 5]), np.array([0, 1]), 3)
    with pytest.raises(DataError, match="predicted class 3"):
        confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(DataError, match="does not match"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)
    # ignore_index=None counts every pixel (and 255 is then out of range)
    with pytest.raises(DataError, match="255"):
        confusion_matrix(np.array([0, IGN]), np.array([0, 1]), 3, ignore_index=None)


def test_confusion_matrix_matches_bruteforce():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 5, (3, 9, 11))
    y[rng.random(y.shape) < 0.1] = IGN
    pred = rng.integers(0, 5, y.shape)
    expected = np.zeros((5, 5), int)
    for t, p in zip(y.ravel(), pred.ravel()):
        if t != IGN:
            expected[t, p] += 1
    assert (confusion_matrix(y, pred, 5) == expected).all()


def test_segmentation_report_hand_computed():
    cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    r = segmentation_report(cm, ["bg", "cat", "dog"])
    json.dumps(r)  # plain JSON types
    assert r["pixels"] == 6
    assert r["pixel_accuracy"] == pytest.approx(5 / 6)
    # recall: 3/4 and 2/2; class 2 has no ground truth
    assert r["mean_class_accuracy"] == pytest.approx((0.75 + 1.0) / 2)
    # IoU0 = 3 / (4 + 3 - 3) = .75; IoU1 = 2 / (2 + 3 - 2) = 2/3; class 2 never seen
    assert r["mean_iou"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert r["fw_iou"] == pytest.approx(4 / 6 * 0.75 + 2 / 6 * 2 / 3)
    bg, cat, dog = r["per_class"]
    assert bg == {
        "id": 0, "name": "bg", "iou": pytest.approx(0.75), "dice": pytest.approx(6 / 7),
        "precision": pytest.approx(1.0), "recall": pytest.approx(0.75), "pixels": 4, "predicted_pixels": 3,
    }
    assert cat["dice"] == pytest.approx(4 / 5) and cat["precision"] == pytest.approx(2 / 3)
    assert dog["iou"] is None and dog["dice"] is None and dog["precision"] is None and dog["recall"] is None
    assert dog["pixels"] == 0 and dog["predicted_pixels"] == 0


def test_segmentation_report_predicted_only_and_empty():
    # class 1 predicted once, never in the ground truth: IoU 0, counted in mean IoU,
    # not in mean class accuracy
    r = segmentation_report(np.array([[2, 1], [0, 0]]))
    assert [c["name"] for c in r["per_class"]] == ["class_0", "class_1"]
    assert r["per_class"][1]["iou"] == 0.0 and r["per_class"][1]["recall"] == 0.0
    assert r["mean_iou"] == pytest.approx((2 / 3 + 0) / 2)
    assert r["mean_class_accuracy"] == pytest.approx(2 / 3)
    empty = segmentation_report(np.zeros((3, 3)))
    assert empty["mean_iou"] is None and empty["pixel_accuracy"] is None and empty["fw_iou"] is None
    with pytest.raises(KsegError, match="2 class names given for 3 classes"):
        segmentation_report(np.eye(3), ["a", "b"])


def test_report_agrees_with_keras_metric(batch):
    y, p = batch
    r = segmentation_report(confusion_matrix(y, p, 4))
    assert r["mean_iou"] == pytest.approx(metric_value("mean_iou", 4, y, p), rel=1e-6)
    assert r["pixel_accuracy"] == pytest.approx(metric_value("pixel_accuracy", 4, y, p), rel=1e-6)


def test_format_report_is_an_aligned_table():
    r = segmentation_report(np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]]), ["background", "cat", "dog"])
    text = format_report(r)
    lines = text.splitlines()
    table = lines[: 2 + 3]
    assert len({len(line) for line in table}) == 1  # every table line has the same width
    assert lines[0].split() == ["id", "class", "IoU", "dice", "precision", "recall", "pixels", "predicted"]
    assert lines[2].split() == ["0", "background", "0.7500", "0.8571", "1.0000", "0.7500", "4", "3"]
    assert lines[4].split() == ["2", "dog", "-", "-", "-", "-", "0", "0"]
    assert "mean IoU" in text and "0.7083" in text
