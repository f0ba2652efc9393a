"""Tests for mask-safe offline augmentation (kseg.augment, scripts/augment.py)."""

import json
import os
import random
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("Augmentor")
import Augmentor.Operations  # noqa: E402

from kseg.augment import OPERATIONS, augment_folder, augment_pair, make_operations  # noqa: E402
from kseg.errors import DataError, UnknownNameError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "augment.py")

S = 64
# class k is painted in COLORS[k] in the image, so the image tells which class a pixel shows
COLORS = np.array([[20, 20, 200], [200, 30, 30], [30, 200, 30], [220, 220, 40]], np.uint8)


def make_pair():
    mask = np.zeros((S, S), np.uint8)
    mask[8:30, 10:40] = 1
    cv2.circle(mask, (44, 44), 14, 2, -1)
    mask[50:60, 5:25] = 3
    return COLORS[mask], mask


def colour_class(image):
    """The class whose colour is nearest to each image pixel."""
    d = ((image[:, :, None, :].astype(int) - COLORS[None, None].astype(int)) ** 2).sum(-1)
    return d.argmin(-1)


def inconsistent_pixels(image, mask, band=2):
    """Mask pixels whose class disagrees with the image colour, away from class boundaries.

    Pixels within ``band`` px of a boundary in the output mask (where bicubic image
    interpolation blends colours) and ignore pixels are not judged.
    """
    k = 2 * band + 1
    m = mask.astype(np.uint8)
    interior = (cv2.dilate(m, np.ones((k, k), np.uint8)) == cv2.erode(m, np.ones((k, k), np.uint8))) & (mask != 255)
    return int(((colour_class(image) != mask) & interior).sum()), int(interior.sum())


GEOMETRIC = [n for n, spec in OPERATIONS.items() if spec[0] == "geometric"]
PHOTOMETRIC = [n for n, spec in OPERATIONS.items() if spec[0] == "photometric"]


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_ops_keep_classes_and_geometry(name):
    img, mask = make_pair()
    ops = make_operations([(name, 1.0)])
    for seed in (0, 1):
        out_img, out_mask, applied = augment_pair(img, mask, ops, seed=seed)
        assert applied and applied[0].startswith(name)
        assert out_img.shape[:2] == out_mask.shape and out_img.dtype == np.uint8
        assert set(np.unique(out_mask)) <= {0, 1, 2, 3, 255}  # the input's label set (+ fill)
        bad, judged = inconsistent_pixels(out_img, out_mask)
        assert judged > 0.5 * out_mask.size
        assert bad == 0, f"{name} seed {seed}: {bad} mask pixels disagree with the image content"


def test_outside_pixels_get_the_fill_value():
    img, mask = make_pair()
    ops = make_operations([("rotate_without_crop", 1.0, 20, 20)])
    out_img, out_mask, _ = augment_pair(img, mask, ops, seed=0)
    assert out_mask[0, 0] == 255 and (out_img[0, 0] == 0).all()  # a corner rotated in from outside
    _, out_mask, _ = augment_pair(img, mask, ops, seed=0, mask_fill=0)
    assert out_mask[0, 0] == 0 and 255 not in out_mask


def test_checks_can_fail_negative_controls():
    """The consistency check catches the two ways masks go wrong."""
    img, mask = make_pair()
    ops = make_operations([("rotate", 1.0, 10, 10)])
    # 1. mask moved with different random draws than the image
    out_img, _, _ = augment_pair(img, mask, ops, seed=0)
    _, other_mask, _ = augment_pair(img, mask, ops, seed=7)
    assert inconsistent_pixels(out_img, other_mask)[0] > 0
    # 2. plain Augmentor resamples the mask bicubically: values stay in {0..3} (so
    #    re-quantising would not notice) but a ring of class 1 appears around the class-2
    #    circle, far from the real class-1 rectangle
    random.seed(0)
    plain = np.array(Augmentor.Operations.RotateRange(1, 10, 10).perform_operation([Image.fromarray(mask)])[0])
    assert set(np.unique(plain)) <= {0, 1, 2, 3}
    assert (plain == 1)[36:, 30:].sum() > 0
    _, ours, _ = augment_pair(img, mask, ops, seed=0)
    assert (ours == 1)[36:, 30:].sum() == 0


@pytest.mark.parametrize("name", PHOTOMETRIC)
def test_photometric_ops_leave_mask_alone(name):
    img, mask = make_pair()
    out_img, out_mask, applied = augment_pair(img, mask, make_operations([(name, 1.0)]), seed=3)
    assert applied
    np.testing.assert_array_equal(out_mask, mask)
    assert out_img.shape == img.shape and out_img.dtype == np.uint8


def test_determinism_and_global_state():
    img, mask = make_pair()
    ops = make_operations([("rotate", 1.0, 10, 10), ("random_distortion", 1.0, 4, 4, 4), ("random_brightness", 1.0, 0.5, 1.5)])
    random.seed(123)
    np.random.seed(123)
    expect_py, expect_np = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    a = augment_pair(img, mask, ops, seed=5)
    assert random.random() == expect_py and np.random.rand() == expect_np  # caller's RNG untouched
    b = augment_pair(img, mask, ops, seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = augment_pair(img, mask, ops, seed=6)
    assert not np.array_equal(a[1], c[1])


def test_probability_zero_and_bad_specs():
    img, mask = make_pair()
    out_img, out_mask, applied = augment_pair(img, mask, make_operations([("rotate", 0.0)]), seed=0)
    assert applied == []
    np.testing.assert_array_equal(out_img, img)
    with pytest.raises(DataError, match="between 0 and 1"):
        make_operations([("rotate", 1.5)])
    with pytest.raises(DataError, match="takes a probability"):
        make_operations([("flip_left_right", 0.5, 3)])
    with pytest.raises(UnknownNameError, match="unknown augmentation"):
        make_operations([("twirl", 0.5)])
    with pytest.raises(DataError, match="same size"):
        augment_pair(img, mask[:10], make_operations(None))


def _write_folder(tmp_path, n=2):
    ti, tm = tmp_path / "train_image", tmp_path / "train_label"
    ti.mkdir()
    tm.mkdir()
    img, mask = make_pair()
    for i in range(n):
        Image.fromarray(np.roll(img, 5 * i, axis=1)).save(ti / f"img{i}.png")
        Image.fromarray(np.roll(mask, 5 * i, axis=1), mode="L").save(tm / f"img{i}.png")
    return ti, tm


def test_augment_folder(tmp_path):
    ti, tm = _write_folder(tmp_path)
    oi, om = tmp_path / "aug" / "img", tmp_path / "aug" / "mask"  # missing folders are created
    m = augment_folder(str(ti), str(tm), str(oi), str(om), samples_per_image=2, seed=0,
                       operations=[("rotate", 1.0, 10, 10), ("flip_left_right", 0.5), ("random_contrast", 0.5)])
    images = sorted(f for f in os.listdir(oi) if f.endswith(".png"))
    masks = sorted(os.listdir(om))
    assert images == masks == ["img0_aug00.png", "img0_aug01.png", "img1_aug00.png", "img1_aug01.png"]
    assert len(m["items"]) == 4 and m["samples_per_image"] == 2
    on_disk = json.load(open(oi / "augment_manifest.json"))
    assert on_disk["items"] == m["items"]
    for rec in m["items"]:
        assert rec["image"].replace(".png", "") == rec["mask"].replace(".png", "")
        assert os.path.basename(rec["source_image"]) == rec["image"].split("_aug")[0] + ".png"
        im = np.array(Image.open(oi / rec["image"]))
        mk = np.array(Image.open(om / rec["mask"]))
        assert Image.open(om / rec["mask"]).format == "PNG"
        assert set(np.unique(mk)) <= {0, 1, 2, 3, 255}
        assert inconsistent_pixels(im, mk)[0] == 0
    assert not [f for f in os.listdir(oi) if f.startswith(".")]  # no staging leftovers
    with pytest.raises(DataError, match="--overwrite"):
        augment_folder(str(ti), str(tm), str(oi), str(om), samples_per_image=2)
    augment_folder(str(ti), str(tm), str(oi), str(om), samples_per_image=2, overwrite=True, copy_originals=True)
    assert (oi / "img0.png").read_bytes() == (ti / "img0.png").read_bytes()


def test_augment_folder_error_leaves_nothing(tmp_path):
    ti, tm = _write_folder(tmp_path)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tm / "img1.png")  # wrong size, found mid-run
    oi, om = tmp_path / "oi", tmp_path / "om"
    with pytest.raises(DataError, match="img1.png"):
        augment_folder(str(ti), str(tm), str(oi), str(om), samples_per_image=2)
    assert not oi.exists() and not om.exists()  # the folders it created are gone too
    oi.mkdir()
    om.mkdir()
    with pytest.raises(DataError, match="img1.png"):  # folders that existed stay, empty
        augment_folder(str(ti), str(tm), str(oi), str(om), samples_per_image=2)
    assert os.listdir(oi) == [] and os.listdir(om) == []


def test_script(tmp_path):
    ti, tm = _write_folder(tmp_path, n=1)
    oi, om = tmp_path / "o" / "i", tmp_path / "o" / "m"
    cmd = [sys.executable, SCRIPT, "--train_path", str(ti), "--mask_path", str(tm), "--augtrain_path", str(oi),
           "--augtrain_mask", str(om), "--samples_per_image", "2", "--seed", "1", "--skew", "1", "0.3",
           "--flip_top_bottom", "0.5", "--quiet"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    man = json.load(open(oi / "augment_manifest.json"))
    assert [o["name"] for o in man["operations"]] == ["skew", "flip_top_bottom"]  # command-line order
    assert man["operations"][0]["params"] == {"magnitude": 0.3}
    assert sorted(os.listdir(om)) == ["img0_aug00.png", "img0_aug01.png"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1


def test_a_failed_augmentation_leaves_no_new_folder_and_sweeps_a_killed_ones(tmp_path):
    import json
    import os

    from kseg.augment import augment_folder
    from kseg.data.sample import generate_sample_dataset
    from kseg.errors import DataError
    from kseg.files import STAGE_OWNER

    root = tmp_path / "d"
    generate_sample_dataset(str(root), splits={"train": 2})
    (root / "train_label" / "train_0001.png").write_bytes(b"not a png")
    out = tmp_path / "out" / "deep"
    with pytest.raises(DataError, match="train_0001.png"):
        augment_folder(str(root / "train_image"), str(root / "train_label"), str(out / "img"), str(out / "msk"),
                       samples_per_image=1, seed=0)
    assert not (tmp_path / "out").exists()
    # a staging folder of a process that no longer exists is removed by the next run
    (out / "img").mkdir(parents=True)
    stale = out / "img" / ".kseg-staging-dead"
    stale.mkdir()
    (stale / STAGE_OWNER).write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": os.uname().nodename}))
    generate_sample_dataset(str(root), splits={"train": 2})
    augment_folder(str(root / "train_image"), str(root / "train_label"), str(out / "img"), str(out / "msk"),
                   samples_per_image=1, seed=0)
    assert not stale.exists()
