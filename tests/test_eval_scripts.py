"""scripts/test.py, scripts/evaluate.py and scripts/visualize.py run as a user runs them."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from kseg.data.io import list_files, read_label, write_image, write_label

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(name, *args, cwd=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", name), *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def assert_one_line_error(r, *fragments):
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    for f in fragments:
        assert f in errors[0], errors[0]


def cm_reference(pairs, k, ignore=255):
    """Confusion matrix of (label, mask) pairs, written out for the test (rows = ground truth)."""
    cm = np.zeros((k, k), np.int64)
    for lab, mask in pairs:
        for g, p in zip(lab.ravel(), mask.ravel()):
            if g != ignore:
                cm[g, p] += 1
    return cm


# ---------------------------------------------------------------------------------- test.py
def test_test_script_writes_masks_overlays_report_and_timing(tiny_experiment, tiny_dataset, tmp_path):
    out = tmp_path / "out"
    r = run_script("test.py", "--weights_path", tiny_experiment, "--mIOU", "--time", "--output", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mean IoU" in r.stdout and "median ms" in r.stdout and "images/s" in r.stdout

    images = list_files(os.path.join(tiny_dataset, "test_image"), (".png", ".jpg"))
    pairs = []
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        h, w = cv2.imread(path).shape[:2]
        m = Image.open(out / "masks" / f"{stem}.png")
        assert m.mode == "P" and m.size == (w, h)  # original resolution, palette PNG
        ov = Image.open(out / "overlays" / f"{stem}.png")
        assert ov.size[0] == w and ov.size[1] > h  # image + legend strip
        pairs.append((read_label(os.path.join(tiny_dataset, "test_label", f"{stem}.png")), np.asarray(m)))
    assert {im.size[0] for im in map(Image.open, images)} != {32}  # sizes differ from the 32x32 training size

    with open(out / "report.json") as f:
        rep = json.load(f)
    cm = cm_reference(pairs, 4)
    assert rep["confusion_matrix"] == cm.tolist()
    tp, gt, pr = np.diag(cm), cm.sum(1), cm.sum(0)
    union = gt + pr - tp
    seen = union > 0
    assert rep["mean_iou"] == pytest.approx(np.mean(tp[seen] / union[seen]))
    assert rep["pixel_accuracy"] == pytest.approx(tp.sum() / cm.sum())
    assert [c["name"] for c in rep["per_class"]] == ["c0", "c1", "c2", "c3"]
    assert rep["mode"] == "resize" and rep["images"] == len(images)
    for stage in ("preprocess", "model", "postprocess", "total"):
        assert rep["timing"][stage]["median"] > 0 and rep["timing"][stage]["p90"] >= rep["timing"][stage]["median"]
    assert rep["timing"]["images"] == len(images) and rep["timing"]["images_per_second"] > 0
    with open(out / "timing.json") as f:
        assert json.load(f)["images"] == len(images)

    from kseg.evaluation import confusion_matrix_image

    cm_png = cv2.imread(str(out / "confusion_matrix.png"))
    assert cm_png.shape == confusion_matrix_image(cm, ["c0", "c1", "c2", "c3"]).shape


def test_test_script_slide_mode_segments_a_big_image_at_full_size(tiny_experiment, tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    write_image(str(folder / "big.jpg"), cv2.GaussianBlur(rng.integers(0, 256, (500, 700, 3), np.uint8), (0, 0), 2))
    write_image(str(folder / "small.png"), rng.integers(0, 256, (20, 45, 3), np.uint8))
    out = tmp_path / "out"
    r = run_script("test.py", "--weights_path", os.path.join(tiny_experiment, "best.keras"), "--test_dir", folder,
                   "--mode", "slide", "--stride", 24, 24, "--batch_size", 16, "--flip", "--no-overlay",
                   "--output", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert Image.open(out / "masks" / "big.png").size == (700, 500)
    assert Image.open(out / "masks" / "small.png").size == (45, 20)
    assert not os.path.exists(out / "overlays") and not os.path.exists(out / "report.json")
    assert np.asarray(Image.open(out / "masks" / "big.png")).max() < 4


def test_test_script_errors_are_one_line(tmp_path):
    r = run_script("test.py", "--weights_path", tmp_path / "nowhere")
    assert_one_line_error(r, "nowhere", "does not exist")
    r = run_script("test.py", "--weights_path", tmp_path, cwd=tmp_path)
    assert_one_line_error(r, "no experiment")


# ---------------------------------------------------------------------------------- evaluate.py
def test_evaluate_script_matches_a_hand_computed_confusion_matrix(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    # image "x": 2x3, image "y": 1x4 (a .png prediction pairs with a .png label of the same stem)
    write_label(str(pred / "x.png"), np.array([[0, 0, 1], [2, 2, 1]], np.uint8))
    write_label(str(gt / "x.png"), np.array([[0, 1, 1], [2, 0, 255]], np.uint8))
    write_label(str(pred / "y.png"), np.array([[1, 1, 2, 0]], np.uint8))
    write_label(str(gt / "y.png"), np.array([[1, 1, 2, 2]], np.uint8))
    # counted pairs (gt, pred): x: (0,0) (1,0) (1,1) (2,2) (0,2); y: (1,1) (1,1) (2,2) (2,0)
    #          pred 0 1 2
    # gt 0:         1 0 1
    # gt 1:         1 3 0
    # gt 2:         1 0 2
    out = tmp_path / "report"
    r = run_script("evaluate.py", "--pred_dir", pred, "--gt_dir", gt, "--n_classes", 3,
                   "--class_names", "sky,road,car", "--output", out)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(out / "report.json") as f:
        rep = json.load(f)
    assert rep["confusion_matrix"] == [[1, 0, 1], [1, 3, 0], [1, 0, 2]]
    assert rep["pixels"] == 9
    assert rep["pixel_accuracy"] == pytest.approx(6 / 9)
    # IoU: sky 1/(2+3-1) = 1/4, road 3/(4+3-3) = 3/4, car 2/(3+3-2) = 1/2
    ious = [c["iou"] for c in rep["per_class"]]
    assert ious == pytest.approx([0.25, 0.75, 0.5])
    assert rep["mean_iou"] == pytest.approx(0.5)
    # recall: 1/2, 3/4, 2/3; precision: 1/3, 3/3, 2/3; dice: 2/5, 6/7, 4/6
    assert [c["recall"] for c in rep["per_class"]] == pytest.approx([0.5, 0.75, 2 / 3])
    assert [c["precision"] for c in rep["per_class"]] == pytest.approx([1 / 3, 1.0, 2 / 3])
    assert [c["dice"] for c in rep["per_class"]] == pytest.approx([0.4, 6 / 7, 2 / 3])
    assert rep["mean_class_accuracy"] == pytest.approx((0.5 + 0.75 + 2 / 3) / 3)
    assert rep["fw_iou"] == pytest.approx(2 / 9 * 0.25 + 4 / 9 * 0.75 + 3 / 9 * 0.5)
    assert [c["name"] for c in rep["per_class"]] == ["sky", "road", "car"]
    assert "road" in r.stdout and "0.5000" in r.stdout
    img = cv2.imread(str(out / "confusion_matrix.png"))
    assert img is not None and min(img.shape[:2]) >= 3 * 10


def test_evaluate_script_rejects_unmatched_files_and_size_mismatch(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    write_label(str(pred / "a.png"), np.zeros((2, 2), np.uint8))
    write_label(str(pred / "b.png"), np.zeros((2, 2), np.uint8))
    write_label(str(gt / "a.png"), np.zeros((2, 3), np.uint8))
    r = run_script("evaluate.py", "--pred_dir", pred, "--gt_dir", gt, "--n_classes", 2)
    assert_one_line_error(r, "b.png", "no ground truth")
    os.remove(pred / "b.png")
    r = run_script("evaluate.py", "--pred_dir", pred, "--gt_dir", gt, "--n_classes", 2)
    assert_one_line_error(r, "a.png", "3x2", "2x2")


# ---------------------------------------------------------------------------------- visualize.py
def test_visualize_script_draws_image_label_overlay_panels(tiny_dataset, tmp_path):
    out = tmp_path / "vis"
    r = run_script("visualize.py", "--dataset_dir", tiny_dataset, "--split", "val", "--n", 2, "--output", out)
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted(os.listdir(out))
    assert len(files) == 2
    with open(os.path.join(tiny_dataset, "dataset.json")) as f:
        palette = np.array(json.load(f)["palette"], np.uint8)
    for name in files:
        stem = os.path.splitext(name)[0]
        image = cv2.cvtColor(cv2.imread(os.path.join(tiny_dataset, "val_image", name)), cv2.COLOR_BGR2RGB)
        label = read_label(os.path.join(tiny_dataset, "val_label", stem + ".png"))
        h, w = label.shape
        panel = cv2.cvtColor(cv2.imread(str(out / name)), cv2.COLOR_BGR2RGB)
        assert panel.shape[1] == 3 * w + 8 and panel.shape[0] > h  # image | label | overlay + legend
        np.testing.assert_array_equal(panel[:h, :w], image)
        np.testing.assert_array_equal(panel[:h, w + 4 : 2 * w + 4], palette[label])
