"""Tests for COCO instances -> semantic masks (kseg.data.coco, scripts/coco_to_masks.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pycocotools")

from kseg.data.coco import category_map, convert_coco, semantic_mask  # noqa: E402
from kseg.data.doctor import check_dataset  # noqa: E402
from kseg.errors import DataError, UnknownNameError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "coco_to_masks.py")
EXAMPLES = os.path.join(REPO, "..", "shared", "datasets", "labelme-examples")

H, W = 16, 20


def rle(mask):
    """Uncompressed COCO RLE written here, independently of the code under test.

    Column-major (Fortran) order, runs alternate starting with zeros.
    """
    flat = np.asarray(mask, np.uint8).flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return {"counts": counts, "size": [mask.shape[0], mask.shape[1]]}


def box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


# the objects of image 1 (categories 3 "cat", 7 "dog", 12 "kite")
BIG_DOG = box(2, 12, 2, 14)  # 120 px, category 7
SMALL_CAT = box(4, 7, 4, 8)  # 12 px inside the dog, category 3
KITE = box(10, 14, 12, 18)  # 24 px, category 12, overlaps the dog at rows 10-11, cols 12-13
CROWD = box(10, 16, 0, 6)  # crowd of cats, 36 px, partly under the dog (rows 10-11, cols 2-5)


def write_dataset(tmp_path, ann_order=("cat", "dog", "kite", "crowd")):
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    for name in ("one.png", "two.jpg"):
        arr = np.random.default_rng(len(name)).integers(0, 255, (H, W, 3), dtype=np.uint8)
        Image.fromarray(arr).save(img_dir / name)
    anns = {
        "cat": {"id": 1, "image_id": 1, "category_id": 3, "segmentation": rle(SMALL_CAT), "iscrowd": 0},
        "dog": {"id": 2, "image_id": 1, "category_id": 7, "segmentation": rle(BIG_DOG), "iscrowd": 0},
        "kite": {"id": 3, "image_id": 1, "category_id": 12, "segmentation": rle(KITE), "iscrowd": 0},
        "crowd": {"id": 4, "image_id": 1, "category_id": 3, "segmentation": rle(CROWD), "iscrowd": 1},
    }
    d = {
        "images": [
            {"id": 1, "file_name": "one.png", "height": H, "width": W},
            {"id": 2, "file_name": "two.jpg", "height": H, "width": W},
        ],
        "categories": [
            {"id": 12, "name": "kite"},
            {"id": 3, "name": "cat"},
            {"id": 7, "name": "dog"},
        ],
        "annotations": [anns[k] for k in ann_order]
        + [
            # image 2: a polygon (axis-aligned square from (2,2) to (8,8))
            {"id": 5, "image_id": 2, "category_id": 12, "iscrowd": 0,
             "segmentation": [[2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0]]},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(d))
    return path, img_dir


def test_category_maps():
    cats = [{"id": 12, "name": "kite"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    names, m = category_map(cats, "contiguous")
    assert names == ["_background_", "cat", "dog", "kite"] and m == {3: 1, 7: 2, 12: 3}
    names, m = category_map(cats, "coco")
    assert len(names) == 13 and names[3] == "cat" and names[7] == "dog" and names[12] == "kite"
    assert names[0] == "_background_" and names[5] == "unused_5" and m == {3: 3, 7: 7, 12: 12}
    # labelme's COCO export has a "_background_" category with id 0
    names, m = category_map([{"id": 0, "name": "_background_"}, {"id": 1, "name": "cat"}], "coco")
    assert names == ["_background_", "cat"] and m == {0: 0, 1: 1}
    with pytest.raises(DataError, match="contiguous"):
        category_map([{"id": 0, "name": "person"}, {"id": 1, "name": "cat"}], "coco")
    names, m = category_map([{"id": 0, "name": "person"}, {"id": 1, "name": "cat"}], "contiguous")
    assert names == ["_background_", "person", "cat"] and m == {0: 1, 1: 2}
    with pytest.raises(UnknownNameError):
        category_map(cats, "sorted")


def _expected(overlap, crowd, ids):
    """Hand-built expectation for image 1 (ids: category -> class id)."""
    out = np.zeros((H, W), np.uint8)
    if crowd == "class":
        out[CROWD] = ids[3]
    if overlap == "area":  # big dog, then kite (24 px), then the small cat on top
        out[BIG_DOG] = ids[7]
        out[KITE] = ids[12]
        out[SMALL_CAT] = ids[3]
    elif overlap == "order":  # annotation ids 1 (cat), 2 (dog), 3 (kite): the dog hides the cat
        out[SMALL_CAT] = ids[3]
        out[BIG_DOG] = ids[7]
        out[KITE] = ids[12]
    else:  # ignore: pixels claimed by two classes -> 255
        out[BIG_DOG] = ids[7]
        out[KITE] = ids[12]
        out[SMALL_CAT] = ids[3]
        out[(BIG_DOG & KITE) | (BIG_DOG & SMALL_CAT)] = 255
    if crowd == "ignore":
        out[CROWD & ~(BIG_DOG | KITE | SMALL_CAT)] = 255
    return out


@pytest.mark.parametrize("overlap", ["area", "order", "ignore"])
@pytest.mark.parametrize("crowd", ["class", "ignore", "skip"])
def test_semantic_masks_hand_built(tmp_path, overlap, crowd):
    path, img_dir = write_dataset(tmp_path, ann_order=("kite", "crowd", "dog", "cat"))  # file order irrelevant
    out = tmp_path / "ds"
    s = convert_coco(str(path), str(out), image_dir=str(img_dir), overlap=overlap, crowd=crowd, subset="train")
    assert s["classes"] == ["_background_", "cat", "dog", "kite"]
    got = np.array(Image.open(out / "train_label" / "one.png"))
    np.testing.assert_array_equal(got, _expected(overlap, crowd, {3: 1, 7: 2, 12: 3}))


def test_coco_ids_and_polygon(tmp_path):
    path, img_dir = write_dataset(tmp_path)
    out = tmp_path / "ds"
    s = convert_coco(str(path), str(out), image_dir=str(img_dir), category_ids="coco", subset="val")
    assert s["splits"] == {"val": 2}
    got = np.array(Image.open(out / "val_label" / "one.png"))
    np.testing.assert_array_equal(got, _expected("area", "class", {3: 3, 7: 7, 12: 12}))
    poly = np.array(Image.open(out / "val_label" / "two.png"))
    # the square's interior is certainly inside, far pixels certainly outside
    assert (poly[3:7, 3:7] == 12).all()
    assert (poly[10:, :] == 0).all() and (poly[:, 10:] == 0).all() and poly[0, 0] == 0
    assert set(np.unique(poly)) == {0, 12}
    lines = (out / "classes.txt").read_text().splitlines()
    assert len(lines) == 13 and lines[12] == "kite" and lines[3] == "cat"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["coco_category_to_class"] == {"3": 3, "7": 7, "12": 12}
    # images copied byte for byte, named by stem
    assert (out / "val_image" / "two.jpg").read_bytes() == (img_dir / "two.jpg").read_bytes()


def test_subsets_share_one_class_list(tmp_path):
    path, img_dir = write_dataset(tmp_path)
    out = tmp_path / "ds"
    convert_coco(str(path), str(out), image_dir=str(img_dir), subset="train")
    convert_coco(str(path), str(out), image_dir=str(img_dir), subset="test")
    assert sorted(os.listdir(out / "train_label")) == sorted(os.listdir(out / "test_label")) == ["one.png", "two.png"]
    with pytest.raises(DataError, match="class list"):  # a different id scheme into the same dataset
        convert_coco(str(path), str(out), image_dir=str(img_dir), subset="val", category_ids="coco")
    assert not (out / "val_label").exists()
    with pytest.raises(DataError, match="--overwrite"):
        convert_coco(str(path), str(out), image_dir=str(img_dir), subset="train")
    assert check_dataset(str(out)).ok is False  # same images in train and test: leakage is reported


def test_errors(tmp_path):
    path, img_dir = write_dataset(tmp_path)
    d = json.loads(path.read_text())
    d["images"][1]["file_name"] = "missing.jpg"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))
    with pytest.raises(DataError, match="missing.jpg"):
        convert_coco(str(bad), str(tmp_path / "o"), image_dir=str(img_dir))
    assert not (tmp_path / "o").exists()
    s = convert_coco(str(bad), str(tmp_path / "o"), image_dir=str(img_dir), skip_missing=True, subset="train")
    assert s["splits"] == {"train": 1} and len(s["skipped"]) == 1
    d["images"][1]["file_name"] = "two.jpg"
    d["images"][1]["width"] = 99
    bad.write_text(json.dumps(d))
    with pytest.raises(DataError, match="99x16"):
        convert_coco(str(bad), str(tmp_path / "o2"), image_dir=str(img_dir))
    assert not (tmp_path / "o2").exists()
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="annotations"):
        convert_coco(str(bad), str(tmp_path / "o3"))


def test_semantic_mask_rejects_unknown_category():
    with pytest.raises(DataError, match="category 5"):
        semantic_mask([{"id": 1, "category_id": 5, "segmentation": rle(box(0, 1, 0, 1))}], H, W, {3: 1})


def test_script(tmp_path):
    path, img_dir = write_dataset(tmp_path)
    out = tmp_path / "ds"
    cmd = [sys.executable, SCRIPT, "--annotations", str(path), "--images", str(img_dir), "--output", str(out),
           "--split", "0.5", "--overlap", "order", "--crowd", "ignore"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert len(os.listdir(out / "train_label")) == 1 and len(os.listdir(out / "test_label")) == 1
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not os.path.isdir(EXAMPLES), reason="../shared/datasets/labelme-examples absent")
def test_labelme_examples_coco_agrees_with_voc_output(tmp_path):
    """labelme exported the same annotations as COCO and as VOC class PNGs: the masks must agree.

    pycocotools and PIL rasterise polygon borders differently, so only a thin band of
    border pixels may differ (and the VOC files hold __ignore__ regions COCO does not have).
    """
    ex = os.path.join(EXAMPLES, "instance_segmentation")
    out = tmp_path / "ds"
    s = convert_coco(os.path.join(ex, "data_dataset_coco", "annotations.json"), str(out), subset="train")
    voc_names = [n for n in open(os.path.join(ex, "data_dataset_voc", "class_names.txt")).read().split("\n") if n]
    assert s["classes"] == voc_names
    for f in sorted(os.listdir(out / "train_label")):
        ours = np.array(Image.open(out / "train_label" / f))
        ref = np.array(Image.open(os.path.join(ex, "data_dataset_voc", "SegmentationClass", f)))
        assert ours.shape == ref.shape
        valid = ref != 255
        agree = (ours == ref)[valid].mean()
        assert agree > 0.99, f"{f}: only {agree:.4f} of the pixels agree"
        assert set(np.unique(ours)) == set(np.unique(ref[valid]))
