"""scripts/reproduce.py: dataset preparation (splits by file name, label conversion) and
the results table, on small generated stand-ins for the shared datasets."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from kseg.data.io import read_label

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def R(tmp_path, monkeypatch):
    from kseg.cli import reproduce as mod

    monkeypatch.setattr(mod, "RESULTS", str(tmp_path / "results"))
    return mod


def _save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def test_prepare_horse_splits_by_number_and_thresholds_jpeg_masks(R, tmp_path):
    src = tmp_path / "src" / "weizmann-horse"
    for n in range(1, 21):
        _save(str(src / "gray" / f"horse{n:03d}.jpg"), np.full((20, 30), 100, np.uint8))
        m = np.zeros((20, 30), np.uint8)
        m[5:15, 10:20] = 250  # JPEG-like: not exactly 255
        m[0, 0] = 127  # just below the threshold -> background
        m[0, 1] = 128  # at the threshold -> horse
        _save(str(src / "figure_ground" / f"horse{n:03d}.png"), m)
    R.prepare("horse", str(tmp_path / "src"), str(tmp_path / "data"))
    out = tmp_path / "data" / "horse"
    # n % 10 in {0, 5} -> test, 3 -> val, else train
    assert sorted(os.listdir(out / "test_image")) == ["horse005.jpg", "horse010.jpg", "horse015.jpg", "horse020.jpg"]
    assert sorted(os.listdir(out / "val_image")) == ["horse003.jpg", "horse013.jpg"]
    assert len(os.listdir(out / "train_image")) == 14
    lab = read_label(str(out / "train_label" / "horse001.png"))
    want = np.zeros((20, 30), np.uint8)
    want[5:15, 10:20] = 1
    want[0, 1] = 1
    np.testing.assert_array_equal(lab, want)
    assert json.loads((out / "dataset.json").read_text())["classes"] == ["background", "horse"]
    lines = (tmp_path / "results" / "splits" / "horse.txt").read_text().splitlines()
    assert len(lines) == 20 and "test\thorse005" in lines


def test_prepare_isbi_24_6_and_membrane_is_class_1(R, tmp_path):
    src = tmp_path / "src" / "isbi2012-membrane" / "train"
    for n in range(30):
        _save(str(src / "image" / f"{n}.png"), np.full((16, 16), n, np.uint8))
        lab = np.full((16, 16), 255, np.uint8)
        lab[:, 8] = 0  # a membrane line
        _save(str(src / "label" / f"{n}.png"), lab)
    R.prepare("isbi", str(tmp_path / "src"), str(tmp_path / "data"))
    out = tmp_path / "data" / "isbi"
    assert sorted(os.listdir(out / "test_image"), key=lambda f: int(f[:-4])) == [f"{n}.png" for n in range(24, 30)]
    assert len(os.listdir(out / "train_image")) == 24 and not (out / "val_image").exists()
    lab = read_label(str(out / "test_label" / "27.png"))
    assert (lab[:, 8] == 1).all() and lab.sum() == 16


def test_prepare_missing_source_is_a_clear_error(R, tmp_path):
    with pytest.raises(R.ReproduceError, match="not found; pass --source"):
        R.prepare("isbi", str(tmp_path / "nowhere"), str(tmp_path / "data"))


def test_run_commands_follow_the_recipe(R, tmp_path):
    exp, train, test = R.commands("isbi-losses", "weighted_ce", "data", str(tmp_path / "w"))
    assert train[train.index("--loss") + 1] == "weighted_ce" and "--class_weights" in train
    assert train[train.index("--model_name") + 1] == "unet" and "--no-validate" in train
    assert test[test.index("--weights_path") + 1].endswith(os.path.join("weighted_ce", "last.keras"))
    _, train, test = R.commands("dubai", "deeplabv3plus", "data", str(tmp_path / "w"))
    assert train[train.index("--model_name") + 1] == "deeplabv3plus" and "--train_crops" in train
    assert test[test.index("--mode") + 1] == "slide"
    assert train[-2:] == ["--model_option", "backbone=mobilenetv2"]  # the run's own builder options
    _, train, _ = R.commands("dubai", "unet", "data", str(tmp_path / "w"))
    assert "backbone=mobilenetv2" not in train and "base_filters=32" in train
    assert set(R.run_names("isbi-losses")) >= {"ce", "dice", "lovasz", "f_tversky"} and len(R.LOSSES) == 14
    # an off-recipe extra run: its model, and its options after the recipe's (argparse keeps the last)
    assert "deeplab_v2-lr1e-4" in R.run_names("horse-models")
    exp, train, _ = R.commands("horse-models", "deeplab_v2-lr1e-4", "data", str(tmp_path / "w"))
    assert train[train.index("--model_name") + 1] == "deeplab_v2" and exp.endswith("deeplab_v2-lr1e-4")
    lrs = [train[i + 1] for i, a in enumerate(train) if a == "--learning_rate"]
    assert lrs == ["1e-3", "1e-4"]


def _fake_run(root, table, run, ious, acc, times, params=1234567, model_kwargs=None, model_name=None):
    d = os.path.join(root, table, run)
    os.makedirs(d)
    per_class = [{"id": i, "name": n, "iou": v, "dice": 2 * v / (1 + v)} for i, (n, v) in enumerate(ious)]
    with open(os.path.join(d, "report.json"), "w") as f:
        json.dump({"n_classes": len(ious), "pixel_accuracy": acc, "mean_iou": float(np.mean([v for _, v in ious])),
                   "per_class": per_class}, f)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"model_name": model_name or run, "loss": "ce", "params": params, "dtype_policy": "float32",
                   "model_kwargs": model_kwargs or {}}, f)
    with open(os.path.join(d, "history.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "loss", "epoch_time_s"])
        for i, t in enumerate(times):
            w.writerow([i, 0.5, t])


def test_table_reads_the_logs(R, tmp_path):
    root = str(tmp_path / "results")
    _fake_run(root, "horse-models", "unet", [("background", 0.9), ("horse", 0.7)], 0.95, [30, 10, 11])
    _fake_run(root, "horse-models", "enet", [("background", 0.8), ("horse", 0.5)], 0.9, [5, 4, 6, 100])
    _fake_run(root, "horse-models", "deeplab_v2-lr1e-4", [("background", 0.6), ("horse", 0.2)], 0.7, [9],
              model_name="deeplab_v2")
    text = R.make_table("horse-models")
    rows = [ln for ln in text.splitlines() if ln.startswith("| `")]
    assert rows[2].startswith("| `deeplab_v2` (Adam 1e-4, off-recipe) | 0.700 | 0.400 | 0.200 |")
    # sorted by mIoU; mIoU (0.9+0.7)/2, foreground IoU and dice of class 1, median epoch time
    assert rows[0] == "| `unet` | 0.950 | 0.800 | 0.700 | 0.824 | 1.23M | 11 |"
    assert rows[1].startswith("| `enet` | 0.900 | 0.650 | 0.500 | 0.667 |") and rows[1].endswith("| 6 |")
    assert "Not run yet:" in text and "`segnet`" in text
    assert (tmp_path / "results" / "horse-models.md").read_text().startswith("# Every model on weizmann-horse")


def test_dubai_table_has_per_class_iou_and_model_options(R, tmp_path):
    root = str(tmp_path / "results")
    _fake_run(root, "dubai", "unet", [("Building", 0.5), ("Road", 0.25), ("Water", 0.75)], 0.8, [50, 52],
              params=7_760_000, model_kwargs={"base_filters": 32})
    text = R.make_table("dubai")
    rows = [ln for ln in text.splitlines() if ln.startswith("| `")]
    assert "| model | params | mIoU | pixel acc. | Building | Road | Water | s/epoch |" in text
    assert rows == ["| `unet` (base_filters=32) | 7.76M | 0.500 | 0.800 | 0.500 | 0.250 | 0.750 | 52 |"]
    assert "Not run yet: `deeplabv3plus`." in text


def test_figure_panels_image_truth_prediction(R, tmp_path):
    ds = tmp_path / "data" / "isbi"
    img = np.full((20, 40, 3), 100, np.uint8)
    gt = np.zeros((20, 40), np.uint8)
    gt[:, 10] = 1
    pred = np.zeros((20, 40), np.uint8)
    pred[:, 30] = 1
    _save(str(ds / "test_image" / "7.png"), img)
    _save(str(ds / "test_label" / "7.png"), gt)
    exp = tmp_path / "w" / "isbi-losses" / "ce"
    _save(str(exp / "test" / "masks" / "7.png"), pred)
    (exp / "config.json").write_text(json.dumps({"n_classes": 2, "palette": [[0, 0, 0], [255, 0, 0]]}))
    out = tmp_path / "fig.png"
    R.figure("isbi-losses", "ce", ["7"], str(out), str(tmp_path / "data"), str(tmp_path / "w"), width=40)
    fig = np.asarray(Image.open(out).convert("RGB"))  # a palette PNG (small README figures)
    assert fig.shape == (20, 120, 3)
    assert (fig[:, :40] == 100).all()  # the image
    # truth panel painted at column 10 only, prediction panel at column 30 only (binary:
    # background left unpainted)
    assert (fig[:, 40 + 10] != 100).any(axis=-1).all() and (fig[:, 40 + 30] == 100).all()
    assert (fig[:, 80 + 30] != 100).any(axis=-1).all() and (fig[:, 80 + 10] == 100).all()
    with pytest.raises(R.ReproduceError, match="not a test image"):
        R.figure("isbi-losses", "ce", ["8"], str(out), str(tmp_path / "data"), str(tmp_path / "w"))
