"""Tests for the dataset doctor, the split helpers and the safe dataset writer."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kseg.data.doctor import check_dataset
from kseg.data.io import write_label
from kseg.data.layout import parse_split, split_counts, split_items
from kseg.data.writer import DatasetWriter
from kseg.files import StagedDir
from kseg.data.stats import class_stats, class_weights, median_frequency_weights
from kseg.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "check_dataset.py")


def _img(seed, h=4, w=4):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _save_img(path, arr):
    Image.fromarray(arr).save(path)


def _save_lbl(path, arr):
    Image.fromarray(np.asarray(arr, np.uint8), mode="L").save(path)


def make_clean(root):
    """train: A (12 px class 0, 4 px class 1), B (8 px class 0, 8 px class 2); test: C."""
    for s in ("train", "test"):
        os.makedirs(os.path.join(root, f"{s}_image"))
        os.makedirs(os.path.join(root, f"{s}_label"))
    a = np.zeros((4, 4), np.uint8)
    a[0, :] = 1
    b = np.zeros((4, 4), np.uint8)
    b[2:, :] = 2
    c = np.zeros((4, 4), np.uint8)
    c[:, 0] = 1
    c[:, 3] = 2
    _save_img(os.path.join(root, "train_image", "a.png"), _img(1))
    _save_lbl(os.path.join(root, "train_label", "a.png"), a)
    _save_img(os.path.join(root, "train_image", "b.png"), _img(2))
    _save_lbl(os.path.join(root, "train_label", "b.png"), b)
    _save_img(os.path.join(root, "test_image", "c.png"), _img(3))
    _save_lbl(os.path.join(root, "test_label", "c.png"), c)
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("background\nroad\nsky\n")
    return root


# ---------------------------------------------------------------------------------- splits


def test_parse_split_forms():
    assert parse_split(["0.8"]) == pytest.approx((0.8, 0.0, 0.2))
    assert parse_split(["0.8", "0.1"]) == pytest.approx((0.8, 0.1, 0.1))
    assert parse_split("0.7,0,0.3") == pytest.approx((0.7, 0.0, 0.3))
    with pytest.raises(DataError, match="sum"):
        parse_split(["0.5", "0.1", "0.1"])
    with pytest.raises(DataError, match="train"):
        parse_split(["0", "0.5", "0.5"])
    with pytest.raises(DataError, match="numbers"):
        parse_split(["abc"])


def test_split_counts_hand_values():
    assert split_counts(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert split_counts(3, (0.7, 0.0, 0.3)) == [2, 0, 1]  # 2.1 / 0 / 0.9 -> largest remainder
    assert split_counts(3, (0.8, 0.1, 0.1)) == [1, 1, 1]  # every positive split gets one
    assert split_counts(2, (0.8, 0.1, 0.1)) == [1, 0, 1]  # test before val when short
    assert split_counts(5, (1.0, 0.0, 0.0)) == [5, 0, 0]


def test_split_items_deterministic_and_disjoint():
    keys = [f"k{i:02d}" for i in range(20)]
    a = split_items(keys, (0.6, 0.2, 0.2), seed=3)
    b = split_items(list(reversed(keys)), (0.6, 0.2, 0.2), seed=3)
    assert a == b  # independent of the input order
    assert [len(a[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    assert sorted(a["train"] + a["val"] + a["test"]) == keys
    assert split_items(keys, (0.6, 0.2, 0.2), seed=4) != a


# ---------------------------------------------------------------------------------- writer


def test_dataset_writer_commits_fresh_folder(tmp_path):
    root = tmp_path / "ds"
    with DatasetWriter(str(root)) as w:
        write_label(w.label_path("train", "x"), np.zeros((2, 2), np.uint8))
        w.set_classes(["bg", "fg"])
        assert not root.exists()  # nothing visible before commit
    assert (root / "train_label" / "x.png").exists()
    assert (root / "classes.txt").read_text() == "bg\nfg\n"
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["classes"] == ["bg", "fg"] and meta["ignore_index"] == 255
    assert meta["palette"][:2] == [[0, 0, 0], [128, 0, 0]]  # VOC colours
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no staging leftovers


def test_dataset_writer_error_leaves_nothing(tmp_path):
    root = tmp_path / "ds"
    with pytest.raises(RuntimeError):
        with DatasetWriter(str(root)) as w:
            write_label(w.label_path("train", "x"), np.zeros((2, 2), np.uint8))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_dataset_writer_refuses_and_overwrites(tmp_path):
    root = make_clean(str(tmp_path / "ds"))
    with pytest.raises(DataError, match="--overwrite"):
        DatasetWriter(root)
    with DatasetWriter(root, overwrite=True) as w:
        write_label(w.label_path("train", "new"), np.ones((2, 2), np.uint8))
        w.set_classes(["bg", "fg"])
    assert sorted(os.listdir(os.path.join(root, "train_label"))) == ["new.png"]
    assert not os.path.exists(os.path.join(root, "test_label"))  # owned split, now empty: removed
    assert not [f for f in os.listdir(root) if f.startswith(".")]


def test_dataset_writer_subset_keeps_other_splits_and_checks_classes(tmp_path):
    root = make_clean(str(tmp_path / "ds"))
    shutil_before = sorted(os.listdir(os.path.join(root, "train_label")))
    with pytest.raises(DataError, match="class list"):
        with DatasetWriter(root, splits=("val",)) as w:
            write_label(w.label_path("val", "v"), np.zeros((2, 2), np.uint8))
            w.set_classes(["other"])
    assert not os.path.exists(os.path.join(root, "val_label"))
    with DatasetWriter(root, splits=("val",)) as w:
        write_label(w.label_path("val", "v"), np.zeros((2, 2), np.uint8))
        w.set_classes(["background", "road", "sky"])
    assert os.listdir(os.path.join(root, "val_label")) == ["v.png"]
    assert sorted(os.listdir(os.path.join(root, "train_label"))) == shutil_before


def test_staged_dir(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError):
        with StagedDir(str(out)) as d:
            open(os.path.join(d, "f"), "w").close()
            raise ValueError
    assert not out.exists()
    with StagedDir(str(out)) as d:
        open(os.path.join(d, "f"), "w").close()
    assert os.listdir(out) == ["f"]
    with pytest.raises(DataError, match="not empty"):
        StagedDir(str(out))


# ---------------------------------------------------------------------------------- doctor


def test_median_frequency_weights_hand_computed():
    # the clean dataset's train labels: a = 12 px class 0 + 4 px class 1, b = 8 px class 0 + 8 px class 2
    a = np.zeros((4, 4), np.uint8)
    a[0, :] = 1
    b = np.zeros((4, 4), np.uint8)
    b[2:, :] = 2
    stats = class_stats([a, b], 4)
    # f0 = 20/32, f1 = 4/16, f2 = 8/16, class 3 absent; median 0.5
    np.testing.assert_allclose(stats.frequencies()[:3], [0.625, 0.25, 0.5])
    assert np.isnan(stats.frequencies()[3])
    assert median_frequency_weights(stats) == pytest.approx([0.8, 2.0, 1.0, 0.0])


def test_clean_dataset(tmp_path):
    root = make_clean(str(tmp_path / "ds"))
    r = check_dataset(root)
    assert r.ok, r.format_text()
    assert r.errors == [] and r.warnings == []
    assert r.n_classes == 3 and r.class_names == ["background", "road", "sky"]
    assert r.splits["train"] == {"images": 2, "labels": 2, "pairs": 2}
    assert r.pixels["train"] == {0: 20, 1: 4, 2: 8}
    assert r.images["train"] == {0: 2, 1: 1, 2: 1}
    assert r.pixels["test"] == {0: 8, 1: 4, 2: 4}
    assert r.class_weights == pytest.approx([0.8, 2.0, 1.0])
    text = r.format_text()
    assert "road" in text and "0 error(s)" in text
    d = r.to_dict()
    assert d["classes"][1]["pixels"] == {"train": 4, "test": 4}
    json.dumps(d)  # JSON-able


def _codes(root, **kw):
    r = check_dataset(root, **kw)
    return r.codes("error"), r.codes("warning"), r


@pytest.mark.parametrize(
    "defect, code",
    [
        ("missing_label", "missing_label"),
        ("missing_image", "missing_image"),
        ("unreadable_image", "unreadable_image"),
        ("size_mismatch", "size_mismatch"),
        ("rgb_label", "rgb_label"),
        ("out_of_range", "value_out_of_range"),
        ("dup_across", "duplicate_across_splits"),
        ("jpeg_label", "jpeg_label"),
        ("dup_stem", "duplicate_stem"),
        ("no_train", "layout"),
        ("class_files", "class_files"),
        ("unreadable_label", "unreadable_label"),
    ],
)
def test_doctor_finds_planted_error(tmp_path, defect, code):
    root = make_clean(str(tmp_path / "ds"))
    ti, tl = os.path.join(root, "train_image"), os.path.join(root, "train_label")
    if defect == "missing_label":
        _save_img(os.path.join(ti, "extra.png"), _img(9))
    elif defect == "missing_image":
        _save_lbl(os.path.join(tl, "orphan.png"), np.zeros((4, 4)))
    elif defect == "unreadable_image":
        with open(os.path.join(ti, "a.png"), "wb") as f:
            f.write(b"not a png at all")
    elif defect == "size_mismatch":
        _save_lbl(os.path.join(tl, "a.png"), np.zeros((5, 4)))
    elif defect == "rgb_label":
        rgb = np.zeros((4, 4, 3), np.uint8)
        rgb[0, 0] = (128, 0, 0)
        Image.fromarray(rgb).save(os.path.join(tl, "a.png"))
    elif defect == "out_of_range":
        lbl = np.zeros((4, 4), np.uint8)
        lbl[1, 1] = 7
        _save_lbl(os.path.join(tl, "b.png"), lbl)
    elif defect == "dup_across":
        _save_img(os.path.join(root, "test_image", "c.png"), _img(1))  # same pixels as train/a
    elif defect == "jpeg_label":
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(os.path.join(tl, "j.jpg"))
        _save_img(os.path.join(ti, "j.png"), _img(5))
    elif defect == "dup_stem":
        Image.fromarray(_img(1)).save(os.path.join(ti, "a.jpg"))
    elif defect == "no_train":
        os.rename(ti, os.path.join(root, "training_images"))
        os.rename(tl, os.path.join(root, "training_labels"))
    elif defect == "class_files":
        with open(os.path.join(root, "dataset.json"), "w") as f:
            json.dump({"classes": ["a", "b", "c"], "palette": [[0, 0, 0]] * 3}, f)
    elif defect == "unreadable_label":
        with open(os.path.join(tl, "b.png"), "wb") as f:
            f.write(b"\x89PNG broken")
    errors, _, r = _codes(root)
    assert code in errors, r.format_text()
    assert not r.ok


def test_doctor_binary_255_mask(tmp_path):
    root = str(tmp_path / "bin")
    for s in ("train", "test"):
        os.makedirs(os.path.join(root, f"{s}_image"))
        os.makedirs(os.path.join(root, f"{s}_label"))
        lbl = np.zeros((4, 4), np.uint8)
        lbl[:2] = 255
        _save_lbl(os.path.join(root, f"{s}_label", "m.png"), lbl)
        _save_img(os.path.join(root, f"{s}_image", "m.png"), _img(1 if s == "train" else 2))
    errors, _, r = _codes(root)
    assert "binary_255" in errors
    msg = next(i.message for i in r.errors if i.code == "binary_255")
    assert "--binary_255_to_1" in msg


def test_doctor_warnings_only(tmp_path):
    root = make_clean(str(tmp_path / "ds"))
    # a class that never appears, an all-ignore label, a stray file, a duplicate inside train
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("background\nroad\nsky\ncar\n")
    _save_img(os.path.join(root, "train_image", "d.png"), _img(1))  # duplicate of a
    _save_lbl(os.path.join(root, "train_label", "d.png"), np.full((4, 4), 255))
    with open(os.path.join(root, "train_image", "notes.xyz"), "w") as f:
        f.write("x")
    errors, warnings, r = _codes(root)
    assert errors == set(), r.format_text()
    assert {"absent_class", "all_ignore", "ignored_files", "duplicate_within_split"} <= warnings
    assert r.class_weights[3] == 0.0


def test_doctor_missing_folder_raises(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        check_dataset(str(tmp_path / "nope"))


def test_doctor_n_classes_override(tmp_path):
    root = make_clean(str(tmp_path / "ds"))
    errors, _, _ = _codes(root, n_classes=2)  # class 2 present -> out of range
    assert "value_out_of_range" in errors


def test_check_dataset_script_exit_codes(tmp_path):
    root = make_clean(str(tmp_path / "ds"))
    p = subprocess.run([sys.executable, SCRIPT, root, "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["ok"] and rep["class_weights"] == pytest.approx([0.8, 2.0, 1.0])
    _save_lbl(os.path.join(root, "train_label", "a.png"), np.full((4, 4), 9))
    p = subprocess.run([sys.executable, SCRIPT, root], capture_output=True, text=True)
    assert p.returncode == 1 and "value_out_of_range" in p.stdout
    p = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "missing")], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1


def test_doctor_weights_are_the_training_weights(tmp_path):
    """The doctor suggests exactly what --class_weights auto / enet train with, on the same labels."""
    root = make_clean(str(tmp_path / "ds"))
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("__ignore__\nbackground\nroad\nsky\ncar\n")  # car never appears; __ignore__ is no class
    lbl = np.zeros((4, 4), np.uint8)
    lbl[:, :2] = 1
    lbl[3, 3] = 255
    _save_img(os.path.join(root, "train_image", "e.png"), _img(7))
    _save_lbl(os.path.join(root, "train_label", "e.png"), lbl)
    r = check_dataset(root)
    assert r.n_classes == 4 and r.ok, r.format_text()
    train_labels = sorted(os.path.join(root, "train_label", f) for f in os.listdir(os.path.join(root, "train_label")))
    stats = class_stats(train_labels, 4)
    assert r.class_weights == pytest.approx(class_weights("auto", stats, 4))
    assert r.enet_weights == pytest.approx(class_weights("enet", stats, 4))
    # by hand: a 12/16 bg + 4/16 road, b 8/16 bg + 8/16 sky, e 7/15 bg + 8/15 road (1 px ignored)
    # freq bg = 27/47, road = 12/31, sky = 8/16; median 1/2 -> 0.8704, 1.2917, 1.0, absent car 0
    assert r.class_weights == pytest.approx([0.5 * 47 / 27, 0.5 * 31 / 12, 1.0, 0.0])
    assert "suggested class weights (--class_weights auto" in r.format_text()
