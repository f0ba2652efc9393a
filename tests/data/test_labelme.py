"""Tests for the labelme -> dataset conversion (kseg.data.labelme, scripts/json_to_dataset.py)."""

import base64
import glob
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("labelme")
import labelme.utils  # noqa: E402

from kseg.data.labelme import build_class_map, convert_labelme_folder, read_labels_txt  # noqa: E402
from kseg.errors import DataError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "json_to_dataset.py")
EXAMPLES = os.path.join(REPO, "..", "shared", "datasets", "labelme-examples")
needs_examples = pytest.mark.skipif(not os.path.isdir(EXAMPLES), reason="../shared/datasets/labelme-examples absent")


def _png_bytes(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _shape(label, points, shape_type, **extra):
    d = {"label": label, "points": points, "group_id": None, "shape_type": shape_type, "flags": {}}
    d.update(extra)
    return d


def _write_json(path, shapes, h, w, image_data=None, image_path=None):
    d = {
        "version": "5.7.0",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path or os.path.basename(path).replace(".json", ".png"),
        "imageData": base64.b64encode(image_data).decode() if image_data is not None else None,
        "imageHeight": h,
        "imageWidth": w,
    }
    with open(path, "w") as f:
        json.dump(d, f)


H, W = 30, 40
MASK_PATCH = np.array(
    [[1, 1, 0, 0, 1, 1], [1, 0, 0, 0, 0, 1], [0, 0, 1, 1, 0, 0], [1, 0, 0, 0, 0, 1], [1, 1, 0, 0, 1, 1]], bool
)


def all_shape_types():
    """One shape of every labelme type, in drawing order, plus the expected per-shape class."""
    patch = base64.b64encode(_png_bytes(MASK_PATCH.astype(np.uint8) * 255)).decode()
    return [
        _shape("a", [[2, 3], [10, 8]], "rectangle"),
        _shape("b", [[12, 2], [22, 2], [17, 12]], "polygon"),
        _shape("c", [[30, 15], [30, 19]], "circle"),
        _shape("a", [[5, 25]], "point"),
        _shape("b", [[14, 25], [24, 25]], "line"),
        _shape("c", [[26, 22], [30, 27], [36, 22]], "linestrip"),
        _shape("b", [[32, 2], [37, 6]], "mask", mask=patch),
        _shape("__ignore__", [[0, 0], [1, 1]], "rectangle"),
        _shape("a", [[16, 6], [18, 7]], "rectangle"),  # drawn over the polygon: later shape wins
    ]


LABELS_TXT = "__ignore__\n_background_\na\nb\nc\n"
IDS = {"__ignore__": 255, "_background_": 0, "a": 1, "b": 2, "c": 3}


def expected_label(shapes):
    """Independent reference: rectangles/masks by hand, other shapes with labelme's shape_to_mask."""
    out = np.zeros((H, W), np.uint8)
    for s in shapes:
        cid = IDS[s["label"]]
        if s["shape_type"] == "rectangle":
            (x0, y0), (x1, y1) = s["points"]
            out[y0 : y1 + 1, x0 : x1 + 1] = cid  # labelme rectangles include both corners
        elif s["shape_type"] == "mask":
            (x0, y0), _ = s["points"]
            out[y0 : y0 + MASK_PATCH.shape[0], x0 : x0 + MASK_PATCH.shape[1]][MASK_PATCH] = cid
        else:
            out[labelme.utils.shape_to_mask((H, W), s["points"], s["shape_type"])] = cid
    return out


@pytest.fixture
def annotated(tmp_path):
    folder = tmp_path / "ann"
    folder.mkdir()
    img = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    data = _png_bytes(img)
    shapes = all_shape_types()
    _write_json(str(folder / "embedded.json"), shapes, H, W, image_data=data)
    (tmp_path / "labels.txt").write_text(LABELS_TXT)
    return folder, tmp_path / "labels.txt", data, shapes


def test_every_shape_type_self_contained(annotated, tmp_path):
    folder, labels, data, shapes = annotated
    out = tmp_path / "data" / "demo"
    summary = convert_labelme_folder(str(folder), str(out), labels=str(labels), split=(1, 0, 0))
    assert summary["classes"] == ["_background_", "a", "b", "c"]
    lbl_im = Image.open(out / "train_label" / "embedded.png")
    assert lbl_im.mode == "P"  # palette PNG whose values are the class ids
    lbl = np.array(lbl_im)
    exp = expected_label(shapes)
    np.testing.assert_array_equal(lbl, exp)
    # hand-checked pixels
    assert lbl[0, 0] == 255 and lbl[1, 1] == 255  # __ignore__ -> 255
    assert lbl[3, 2] == 1 and lbl[8, 10] == 1 and lbl[9, 10] == 0  # rectangle corners inclusive
    assert lbl[15, 30] == 3  # circle centre
    assert lbl[25, 5] == 1  # point
    assert lbl[25, 19] == 2  # middle of the line
    assert lbl[6, 17] == 1  # later rectangle over the polygon
    assert lbl[4, 17] == 2  # polygon interior
    assert lbl[2, 32] == 2 and lbl[2, 34] == 0 and lbl[4, 34] == 2  # mask shape placed at its bbox
    assert set(np.unique(lbl)) == {0, 1, 2, 3, 255}
    # the embedded PNG is written byte for byte
    assert (out / "train_image" / "embedded.png").read_bytes() == data
    assert (out / "classes.txt").read_text() == "_background_\na\nb\nc\n"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["classes"] == ["_background_", "a", "b", "c"] and meta["ignore_index"] == 255
    assert meta["palette"][1] == [128, 0, 0]


def test_image_next_to_json_is_copied_and_exif_is_respected(tmp_path):
    folder = tmp_path / "ann"
    folder.mkdir()
    img = np.random.default_rng(1).integers(0, 255, (10, 20, 3), dtype=np.uint8)
    Image.fromarray(img).save(folder / "plain.jpg", quality=90)
    _write_json(str(folder / "plain.json"), [_shape("a", [[1, 1], [3, 2]], "rectangle")], 10, 20, image_path="plain.jpg")
    # a JPEG stored 20 wide x 10 high with EXIF orientation 6: labelme shows it 10 wide x 20 high
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(img).save(folder / "rot.jpg", quality=90, exif=exif)
    _write_json(str(folder / "rot.json"), [_shape("a", [[0, 15], [2, 19]], "rectangle")], 20, 10, image_path="rot.jpg")
    # the same EXIF JPEG embedded as imageData: labelme draws on the stored (unrotated) pixels
    _write_json(str(folder / "emb.json"), [_shape("a", [[15, 0], [19, 2]], "rectangle")], 10, 20,
                image_data=(folder / "rot.jpg").read_bytes())
    out = tmp_path / "out"
    convert_labelme_folder(str(folder), str(out), split=(1, 0, 0))
    assert (out / "train_image" / "plain.jpg").read_bytes() == (folder / "plain.jpg").read_bytes()
    # labelme re-encodes the rotated image (no EXIF tag left); it is written as labelme read it
    rot_im = Image.open(out / "train_image" / "rot.jpg")
    assert rot_im.getexif().get(0x0112, 1) == 1
    rot_img = np.array(rot_im)
    rot_lbl = np.array(Image.open(out / "train_label" / "rot.png"))
    assert rot_img.shape[:2] == rot_lbl.shape == (20, 10)
    assert (rot_lbl[15:20, 0:3] == 1).all() and rot_lbl.sum() == 15
    # an image that still carries an orientation tag is stored as a PNG without it, so no
    # reader can rotate the image away from its label
    emb_im = Image.open(out / "train_image" / "emb.png")
    assert emb_im.getexif().get(0x0112, 1) == 1
    np.testing.assert_array_equal(np.array(emb_im), np.array(Image.open(folder / "rot.jpg")))
    emb_lbl = np.array(Image.open(out / "train_label" / "emb.png"))
    assert emb_lbl.shape == (10, 20) and (emb_lbl[0:3, 15:20] == 1).all() and emb_lbl.sum() == 15
    plain_lbl = np.array(Image.open(out / "train_label" / "plain.png"))
    assert plain_lbl.shape == (10, 20) and (plain_lbl[1:3, 1:4] == 1).all() and plain_lbl.sum() == 6


def test_one_global_class_map(tmp_path):
    folder = tmp_path / "ann"
    folder.mkdir()
    img = _png_bytes(np.zeros((8, 8, 3), np.uint8))
    _write_json(str(folder / "one.json"), [_shape("dog", [[0, 0], [1, 1]], "rectangle")], 8, 8, image_data=img)
    _write_json(str(folder / "two.json"), [_shape("cat", [[0, 0], [1, 1]], "rectangle"),
                                           _shape("dog", [[4, 4], [5, 5]], "rectangle")], 8, 8, image_data=img)
    out = tmp_path / "out"
    s = convert_labelme_folder(str(folder), str(out), split=(1, 0, 0))
    assert s["classes"] == ["_background_", "cat", "dog"]  # sorted, not per file
    one = np.array(Image.open(out / "train_label" / "one.png"))
    two = np.array(Image.open(out / "train_label" / "two.png"))
    assert one[0, 0] == 2  # dog is 2 in every file (a per-file map would make it 1 here)
    assert two[0, 0] == 1 and two[4, 4] == 2


def test_unknown_label_error_and_add_unknown(annotated, tmp_path):
    folder, labels, _, _ = annotated
    labels.write_text("__ignore__\n_background_\na\nb\n")  # no "c"
    out = tmp_path / "out"
    with pytest.raises(DataError) as e:
        convert_labelme_folder(str(folder), str(out), labels=str(labels))
    msg = str(e.value)
    assert "'c'" in msg and "embedded.json" in msg and "--add_unknown" in msg and "\n" not in msg
    assert not out.exists()
    s = convert_labelme_folder(str(folder), str(out), labels=str(labels), add_unknown=True, split=(1, 0, 0))
    assert s["classes"] == ["_background_", "a", "b", "c"]


def test_labels_txt_rules(tmp_path):
    p = tmp_path / "l.txt"
    p.write_text("cat\ndog\n")
    names, m = read_labels_txt(str(p))
    assert names == ["_background_", "cat", "dog"] and m["dog"] == 2 and m["__ignore__"] == 255
    p.write_text("_background_\n__ignore__\ncat\n")
    with pytest.raises(DataError, match="first line"):
        read_labels_txt(str(p))
    p.write_text("cat\n_background_\n")
    with pytest.raises(DataError, match="first class"):
        read_labels_txt(str(p))
    p.write_text("_background_\ncat\ncat\n")
    with pytest.raises(DataError, match="twice"):
        read_labels_txt(str(p))
    names, m = build_class_map({"b": ["x"], "a": ["y"], "__ignore__": ["x"]})
    assert names == ["_background_", "a", "b"] and m["__ignore__"] == 255


def test_failure_midway_leaves_no_dataset(annotated, tmp_path):
    folder, labels, _, _ = annotated
    # a second file whose image is missing: found only while converting
    _write_json(str(folder / "zz_broken.json"), [_shape("a", [[0, 0], [1, 1]], "rectangle")], H, W,
                image_path="does_not_exist.jpg")
    out = tmp_path / "data" / "demo"
    with pytest.raises(DataError, match="zz_broken.json"):
        convert_labelme_folder(str(folder), str(out), labels=str(labels), split=(1, 0, 0))
    assert not out.exists()
    assert os.listdir(tmp_path / "data") == []  # no staging folder left either


def test_bad_shape_names_file_and_shape(annotated, tmp_path):
    folder, labels, _, _ = annotated
    img = _png_bytes(np.zeros((H, W, 3), np.uint8))
    _write_json(str(folder / "bad.json"), [_shape("a", [[0, 0], [3, 3]], "polygon")], H, W, image_data=img)
    with pytest.raises(DataError, match=r"bad.json.*shape 0"):
        convert_labelme_folder(str(folder), str(tmp_path / "out"), labels=str(labels))


def test_split_and_overwrite(tmp_path):
    folder = tmp_path / "ann"
    folder.mkdir()
    img = _png_bytes(np.zeros((4, 4, 3), np.uint8))
    for i in range(10):
        _write_json(str(folder / f"f{i}.json"), [_shape("a", [[0, 0], [1, 1]], "rectangle")], 4, 4, image_data=img)
    out = tmp_path / "out"
    s = convert_labelme_folder(str(folder), str(out), split=(0.8, 0.1, 0.1), seed=5)
    assert {k: len(v) for k, v in s["splits"].items()} == {"train": 8, "val": 1, "test": 1}
    for k, v in s["splits"].items():
        assert sorted(os.path.splitext(f)[0] for f in os.listdir(out / f"{k}_label")) == v
        assert sorted(os.path.splitext(f)[0] for f in os.listdir(out / f"{k}_image")) == v
    with pytest.raises(DataError, match="--overwrite"):
        convert_labelme_folder(str(folder), str(out))
    s2 = convert_labelme_folder(str(folder), str(out), split=(0.5, 0, 0.5), seed=5, overwrite=True)
    assert not (out / "val_image").exists()  # stale val split from the first run removed
    assert len(os.listdir(out / "train_label")) == 5 == len(s2["splits"]["train"])


def test_script(annotated, tmp_path):
    folder, labels, _, _ = annotated
    out = tmp_path / "data" / "demo"
    cmd = [sys.executable, SCRIPT, "--input_dir", str(folder), "--labels", str(labels), "--output", str(out),
           "--split", "1", "--viz"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (out / "train_label" / "embedded.png").exists() and (out / "train_viz" / "embedded.jpg").exists()
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ labelme's own reference outputs


def _segment_distance(p, a, b):
    p, a, b = (np.asarray(v, float) for v in (p, a, b))
    ab = b - a
    t = np.clip(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-12), 0, 1)
    return float(np.linalg.norm(p - (a + t * ab)))


def _pil_matches_reference_era():
    """The VOC references were drawn with a Pillow between 9.1 and 11.0 (checked by hand)."""
    import PIL

    v = tuple(int(x) for x in PIL.__version__.split(".")[:2])
    return (9, 1) <= v <= (11, 0)


def _compare_with_reference(ours, ref, json_path, exact):
    diff = ours != ref
    if exact:
        assert not diff.any(), f"{json_path}: {diff.sum()} pixels differ"
        return
    # Pillow changed its polygon rasteriser (11.1, 11.2): a vertex pixel may flip. Every
    # difference must be such an edge pixel, and there must be very few.
    assert diff.sum() <= max(10, diff.size // 10000), f"{json_path}: {diff.sum()} pixels differ"
    shapes = json.load(open(json_path))["shapes"]
    for y, x in np.argwhere(diff):
        d = min(
            _segment_distance((x, y), s["points"][i], s["points"][(i + 1) % len(s["points"])])
            for s in shapes
            for i in range(len(s["points"]))
        )
        assert d <= 1.5, f"{json_path}: pixel ({x}, {y}) differs {d:.2f} px away from any shape edge"


@needs_examples
@pytest.mark.parametrize(
    "example, ref_dir",
    [
        ("semantic_segmentation", "SegmentationClass"),
        ("instance_segmentation", "SegmentationClass"),
        ("video_annotation", "SegmentationClassPNG"),
    ],
)
def test_matches_labelme_reference_outputs(tmp_path, example, ref_dir):
    ex = os.path.join(EXAMPLES, example)
    out = tmp_path / "out"
    s = convert_labelme_folder(os.path.join(ex, "data_annotated"), str(out), labels=os.path.join(ex, "labels.txt"),
                               split=(1, 0, 0))
    ref_names = open(os.path.join(ex, "data_dataset_voc", "class_names.txt")).read().split("\n")
    assert s["classes"] == [n for n in ref_names if n]
    names, mapping = read_labels_txt(os.path.join(ex, "labels.txt"))
    jsons = sorted(glob.glob(os.path.join(ex, "data_annotated", "*.json")))
    assert len(jsons) == len(os.listdir(out / "train_label")) > 0
    for jp in jsons:
        stem = os.path.splitext(os.path.basename(jp))[0]
        ours = np.array(Image.open(out / "train_label" / f"{stem}.png"))
        ref_im = Image.open(os.path.join(ex, "data_dataset_voc", ref_dir, f"{stem}.png"))
        assert ref_im.mode == "P"
        ref = np.array(ref_im)
        assert ours.shape == ref.shape
        _compare_with_reference(ours, ref, jp, exact=_pil_matches_reference_era())
        # and exactly what labelme itself draws with the installed Pillow
        lf = labelme.LabelFile(filename=jp)
        img = labelme.utils.img_data_to_arr(lf.image_data if hasattr(lf, "image_data") else lf.imageData)
        ref_map = {n: i - 1 for i, n in enumerate(l.strip() for l in open(os.path.join(ex, "labels.txt")) if l.strip())}
        cls, _ = labelme.utils.shapes_to_label(img.shape, lf.shapes, ref_map)
        np.testing.assert_array_equal(ours, cls.astype(np.uint8))  # -1 -> 255, as labelme's lblsave
        # the images are labelme's inputs, byte for byte
        src = os.path.join(ex, "data_annotated", f"{stem}.jpg")
        assert (out / "train_image" / f"{stem}.jpg").read_bytes() == open(src, "rb").read()


@needs_examples
def test_matches_labelme_json_to_dataset_tutorial(tmp_path):
    """The tutorial file embeds its image; labelme_json_to_dataset wrote img.png and label.png."""
    ex = os.path.join(EXAMPLES, "tutorial")
    folder = tmp_path / "ann"
    folder.mkdir()
    shutil.copy(os.path.join(ex, "apc2016_obj3.json"), folder)
    labels = tmp_path / "labels.txt"
    labels.write_text(open(os.path.join(ex, "apc2016_obj3", "label_names.txt")).read())
    out = tmp_path / "out"
    convert_labelme_folder(str(folder), str(out), labels=str(labels), split=(1, 0, 0))
    img = np.array(Image.open(glob.glob(str(out / "train_image" / "*"))[0]).convert("RGB"))
    np.testing.assert_array_equal(img, np.array(Image.open(os.path.join(ex, "apc2016_obj3", "img.png")).convert("RGB")))
    ours = np.array(Image.open(out / "train_label" / "apc2016_obj3.png"))
    ref = np.array(Image.open(os.path.join(ex, "apc2016_obj3", "label.png")))
    _compare_with_reference(ours, ref, os.path.join(ex, "apc2016_obj3.json"), exact=False)


@needs_examples
def test_primitives_every_shape_type(tmp_path):
    """labelme's primitives.json (v5.7) holds every shape type, including a mask."""
    ex = os.path.join(EXAMPLES, "primitives")
    out = tmp_path / "out"
    s = convert_labelme_folder(ex, str(out), split=(1, 0, 0))
    d = json.load(open(os.path.join(ex, "primitives.json")))
    assert {sh["shape_type"] for sh in d["shapes"]} >= {"rectangle", "circle", "polygon", "line", "point",
                                                        "linestrip", "mask"}
    lbl = np.array(Image.open(out / "train_label" / "primitives.png"))
    # every label's class id appears, and each shape's own pixels carry a drawn class
    assert set(np.unique(lbl)) == set(range(len(s["classes"])))
    img_h, img_w = lbl.shape
    assert (img_h, img_w) == (d["imageHeight"], d["imageWidth"])
