"""Tests for colour-coded labels: tables, RGB <-> index conversion, remapping."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kseg.data.color_tables import ClassTable, load_class_table, parse_color
from kseg.data.colors import (
    colors_to_index,
    convert_color_dataset,
    convert_color_folder,
    index_to_colors,
    parse_value_map,
    read_color_mask,
    remap_folder,
    remap_values,
)
from kseg.data.doctor import check_dataset
from kseg.errors import DataError, UnknownNameError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "convert_colors.py")
DUBAI = os.path.join(REPO, "..", "shared", "datasets", "dubai-aerial")

# The Dubai aerial colours as found in the masks (see ../shared/datasets/README.md).
DUBAI_TABLE = {
    "classes": [
        {"name": "Building", "color": "#3C1098"},
        {"name": "Land", "color": "#8429F6"},
        {"name": "Road", "color": "#6EC1E4"},
        {"name": "Vegetation", "color": "#FEDD3A"},
        {"name": "Water", "color": "#E2A929"},
        {"name": "Unlabeled", "color": "#9B9B9B"},
    ]
}

RED, GREEN, BLUE, GREY = (200, 0, 0), (0, 180, 0), (0, 0, 220), (90, 90, 90)


def small_table(**kw):
    return ClassTable(["bg", "red", "green", "blue"], [GREY, RED, GREEN, BLUE], ignore_colors=[(255, 255, 255)], **kw)


def test_parse_color_forms():
    assert parse_color("#3C1098") == (60, 16, 152)
    assert parse_color("3c1098") == (60, 16, 152)
    assert parse_color([1, 2, 3]) == (1, 2, 3)
    assert parse_color("4, 5, 6") == (4, 5, 6)
    assert parse_color("7 8 9") == (7, 8, 9)
    for bad in ("#12345", [1, 2], [0, 0, 300], "red"):
        with pytest.raises(DataError):
            parse_color(bad)


def test_round_trip_index_color_index():
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 4, (17, 23)).astype(np.uint8)
    idx[0, :5] = 255
    t = small_table()
    rgb = index_to_colors(idx, t)
    # hand-checked colours
    assert tuple(rgb[0, 0]) == (255, 255, 255)  # ignore colour
    r, c = np.argwhere(idx == 1)[0]
    assert tuple(rgb[r, c]) == RED
    r, c = np.argwhere(idx == 3)[0]
    assert tuple(rgb[r, c]) == BLUE
    back, unknown = colors_to_index(rgb, t)
    assert unknown == {}
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, idx)


def test_unknown_colours_become_ignore_and_are_counted():
    t = small_table()
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[:] = GREY
    rgb[0, :4] = (1, 2, 3)  # 4 unknown pixels
    rgb[5, :3] = (9, 9, 9)  # 3 unknown pixels
    rgb[2, 2] = RED
    idx, unknown = colors_to_index(rgb, t)
    assert unknown == {(1, 2, 3): 4, (9, 9, 9): 3}
    assert (idx[0, :4] == 255).all() and (idx[5, :3] == 255).all()
    assert idx[2, 2] == 1 and idx[3, 3] == 0
    assert (idx == 255).sum() == 7


def test_tolerance_maps_near_colours():
    t = small_table()
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[:] = (202, 1, 0)  # distance sqrt(5) from RED
    idx, unk = colors_to_index(rgb, t)
    assert (idx == 255).all() and unk == {(202, 1, 0): 4}
    idx, unk = colors_to_index(rgb, t, tolerance=3)
    assert (idx == 1).all() and unk == {}


def test_table_formats(tmp_path):
    expected_names = ["bg", "road", "sky"]
    expected = [(0, 0, 0), (128, 64, 128), (128, 128, 128)]

    def check(t):
        assert t.names == expected_names
        assert [c[0] for c in t.colors] == expected

    p = tmp_path / "a.json"
    p.write_text(json.dumps({"classes": expected_names, "palette": [[0, 0, 0], "#804080", "128,128,128"]}))
    check(load_class_table(str(p)))
    p = tmp_path / "b.json"
    p.write_text(json.dumps({"bg": "#000000", "road": [128, 64, 128], "sky": "#808080", "__ignore__": ["#FFFFFF"]}))
    t = load_class_table(str(p))
    check(t)
    assert t.ignore_colors == [(255, 255, 255)]
    p = tmp_path / "c.json"  # Supervisely-like "title" entries, explicit ids, an ignore entry
    p.write_text(
        json.dumps(
            {
                "classes": [
                    {"title": "sky", "color": "#808080", "id": 2},
                    {"title": "bg", "color": "#000000", "id": 0},
                    {"title": "road", "color": ["#804080", "#804081"], "id": 1},
                    {"name": "void", "color": "#FF00FF", "ignore": True},
                ]
            }
        )
    )
    t = load_class_table(str(p))
    check(t)
    assert t.colors[1] == [(128, 64, 128), (128, 64, 129)] and t.ignore_colors == [(255, 0, 255)]
    p2 = tmp_path / "c2.json"  # to_dict() is itself a readable table
    p2.write_text(json.dumps(t.to_dict()))
    t2 = load_class_table(str(p2))
    assert (t2.names, t2.colors, t2.ignore_colors) == (t.names, t.colors, t.ignore_colors)
    p = tmp_path / "d.csv"
    p.write_text("name,r,g,b\nbg,0,0,0\nroad,128,64,128\nsky,128,128,128\n")
    check(load_class_table(str(p)))
    p = tmp_path / "e.csv"
    p.write_text("bg,#000000\nroad,#804080\nsky,#808080\n")
    check(load_class_table(str(p)))
    p = tmp_path / "f.csv"
    p.write_text("2,sky,128,128,128\n0,bg,0,0,0\n1,road,128,64,128\n")
    check(load_class_table(str(p)))
    p = tmp_path / "g.txt"
    p.write_text("# CamVid style\n0 0 0\tbg\n128 64 128\troad\n128 128 128\tsky\n")
    check(load_class_table(str(p)))


def test_table_errors(tmp_path):
    p = tmp_path / "dup.json"
    p.write_text(json.dumps({"a": "#000000", "b": "#000000"}))
    with pytest.raises(DataError, match="both"):
        load_class_table(str(p))
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_class_table(str(p))
    with pytest.raises(DataError, match="neither a file nor a named palette"):
        load_class_table(str(tmp_path / "missing.json"))
    with pytest.raises(UnknownNameError):
        from kseg.data.colors import named_table

        named_table("cityscapes")


def test_named_tables():
    voc = load_class_table("voc")
    assert voc.n_classes == 21 and voc.names[15] == "person"
    assert voc.colors[15] == [(192, 128, 128)]  # VOC person
    assert voc.colors[1] == [(128, 0, 0)]
    assert voc.ignore_colors == [(224, 224, 192)]
    cam = load_class_table("camvid")
    assert cam.n_classes == 31 and cam.ignore_colors == [(0, 0, 0)]
    assert cam.colors[cam.names.index("Road")] == [(128, 64, 128)]
    cam11 = load_class_table("camvid11")
    assert cam11.names[0] == "Sky" and cam11.colors[0] == [(128, 128, 128)] and cam11.n_classes == 11


def test_read_color_mask_palette_png(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * 759)
    im.save(tmp_path / "p.png")
    rgb = read_color_mask(str(tmp_path / "p.png"))
    assert rgb.shape == (2, 2, 3)
    assert tuple(rgb[0, 0]) == (10, 20, 30) and tuple(rgb[1, 0]) == (70, 80, 90)


def _make_colour_pair(folder, stem, seed, size=(12, 10)):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 4, size).astype(np.uint8)
    cols = np.array([GREY, RED, GREEN, BLUE], np.uint8)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
    Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(os.path.join(folder, "images", stem + ".jpg"))
    Image.fromarray(cols[idx]).save(os.path.join(folder, "masks", stem + ".png"))
    return idx


def test_convert_color_dataset_with_colliding_stems(tmp_path):
    truth = {}
    for tile in ("Tile 1", "Tile 2"):
        for k in range(3):
            truth[f"Tile_{tile[-1]}_img{k}"] = _make_colour_pair(str(tmp_path / tile), f"img{k}", seed=10 * int(tile[-1]) + k)
    out = str(tmp_path / "data" / "tiles")
    t = small_table()
    summary = convert_color_dataset(
        [str(tmp_path / "Tile 1" / "images"), str(tmp_path / "Tile 2" / "images")],
        [str(tmp_path / "Tile 1" / "masks"), str(tmp_path / "Tile 2" / "masks")],
        out, t, split=(0.5, 0.0, 0.5), seed=1,
    )
    assert summary["splits"] == {"train": 3, "val": 0, "test": 3}
    assert summary["unknown"]["pixels"] == 0
    seen = {}
    for s in ("train", "test"):
        for f in glob.glob(os.path.join(out, f"{s}_label", "*.png")):
            stem = os.path.splitext(os.path.basename(f))[0]
            im = Image.open(f)
            assert im.mode == "P"
            seen[stem] = np.array(im)
    assert sorted(seen) == sorted(truth)
    for k, v in truth.items():
        np.testing.assert_array_equal(seen[k], v)
    assert open(os.path.join(out, "classes.txt")).read().split() == ["bg", "red", "green", "blue"]
    meta = json.load(open(os.path.join(out, "dataset.json")))
    assert meta["palette"][1] == list(RED) and meta["ignore_index"] == 255
    assert check_dataset(out).ok


def test_convert_color_dataset_mismatch_and_missing(tmp_path):
    _make_colour_pair(str(tmp_path / "a"), "x", 0)
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "a" / "masks" / "x.png")
    with pytest.raises(DataError, match="x.png is 3x3 but image"):
        convert_color_dataset(str(tmp_path / "a" / "images"), str(tmp_path / "a" / "masks"), str(tmp_path / "o"), small_table())
    assert not (tmp_path / "o").exists()
    os.remove(tmp_path / "a" / "masks" / "x.png")
    with pytest.raises(DataError, match="without a mask"):
        convert_color_dataset(str(tmp_path / "a" / "images"), str(tmp_path / "a" / "masks"), str(tmp_path / "o"), small_table())


def test_remap_binary_255(tmp_path):
    src = tmp_path / "lbl"
    src.mkdir()
    m = np.zeros((4, 5), np.uint8)
    m[1:3, 1:4] = 255
    Image.fromarray(m).save(src / "a.png")
    out = remap_folder(str(src), str(tmp_path / "fixed"), {255: 1})
    assert out == {"files": 1, "changed_pixels": {255: 6}}
    got = np.array(Image.open(tmp_path / "fixed" / "a.png"))
    exp = np.zeros((4, 5), np.uint8)
    exp[1:3, 1:4] = 1
    np.testing.assert_array_equal(got, exp)
    assert parse_value_map(["255:1", "3=0"]) == {255: 1, 3: 0}
    with pytest.raises(DataError):
        parse_value_map(["255-1"])
    np.testing.assert_array_equal(remap_values(np.array([[1, 2], [3, 1]]), {1: 2, 2: 1}), [[2, 1], [3, 2]])


def test_script_subcommands(tmp_path):
    _make_colour_pair(str(tmp_path / "d"), "x", 3)
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"bg": list(GREY), "red": list(RED), "green": list(GREEN), "blue": list(BLUE)}))
    run = lambda *a: subprocess.run([sys.executable, SCRIPT, *a], capture_output=True, text=True)  # noqa: E731
    p = run("to-index", "--input", str(tmp_path / "d" / "masks"), "--output", str(tmp_path / "idx"), "--table", str(table))
    assert p.returncode == 0, p.stderr
    p = run("to-color", "--input", str(tmp_path / "idx"), "--output", str(tmp_path / "col"), "--table", str(table))
    assert p.returncode == 0, p.stderr
    np.testing.assert_array_equal(
        np.array(Image.open(tmp_path / "col" / "x.png").convert("RGB")),
        np.array(Image.open(tmp_path / "d" / "masks" / "x.png").convert("RGB")),
    )
    p = run("remap", "--input", str(tmp_path / "idx"), "--output", str(tmp_path / "r"), "--binary_255_to_1")
    assert p.returncode == 0, p.stderr
    p = run("to-index", "--input", str(tmp_path / "d" / "masks"), "--output", str(tmp_path / "idx"), "--table", str(table))
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "--overwrite" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = run("table", "--table", "voc")
    assert p.returncode == 0 and "person" in p.stdout


def test_unknown_colours_reported_by_script(tmp_path):
    masks = tmp_path / "m"
    masks.mkdir()
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[:] = RED
    rgb[0, 0] = (1, 1, 1)
    Image.fromarray(rgb).save(masks / "a.png")
    p = subprocess.run(
        [sys.executable, SCRIPT, "to-index", "--input", str(masks), "--output", str(tmp_path / "o"), "--table",
         os.path.join(str(tmp_path), "t.csv"), "--report", str(tmp_path / "rep.json")],
        capture_output=True, text=True,
    )
    assert p.returncode == 2  # the table file does not exist yet
    (tmp_path / "t.csv").write_text("name,color\nbg,#000000\nred,#C80000\n")
    p = subprocess.run(
        [sys.executable, SCRIPT, "to-index", "--input", str(masks), "--output", str(tmp_path / "o"), "--table",
         str(tmp_path / "t.csv"), "--report", str(tmp_path / "rep.json")],
        capture_output=True, text=True,
    )
    assert p.returncode == 0, p.stderr
    assert "1 pixel(s) in 1 file(s)" in p.stderr and "#010101" in p.stderr
    rep = json.load(open(tmp_path / "rep.json"))
    assert rep["pixels"] == 1 and rep["colors"] == {"#010101": 1}
    got = np.array(Image.open(tmp_path / "o" / "a.png"))
    assert got[0, 0] == 255 and (got.ravel()[1:] == 1).all()


@pytest.mark.skipif(not os.path.isdir(DUBAI), reason="../shared/datasets/dubai-aerial not available")
def test_dubai_aerial_round_trip(tmp_path):
    """Convert real colour masks (RGB and palette PNGs); black pixels are the only unknown colour."""
    table_path = tmp_path / "dubai.json"
    table_path.write_text(json.dumps(DUBAI_TABLE))
    t = load_class_table(str(table_path))
    out = convert_color_folder(os.path.join(DUBAI, "Tile 3", "masks"), str(tmp_path / "idx"), t)
    assert out["files"] == 9
    black = 0
    for f in sorted(glob.glob(os.path.join(DUBAI, "Tile 3", "masks", "*.png"))):
        rgb = np.array(Image.open(f).convert("RGB"))
        is_black = (rgb == 0).all(axis=2)
        black += int(is_black.sum())
        idx = np.array(Image.open(tmp_path / "idx" / os.path.basename(f)))
        assert set(np.unique(idx)) <= {0, 1, 2, 3, 4, 5, 255}
        assert ((idx == 255) == is_black).all()
        back = index_to_colors(idx, t)
        np.testing.assert_array_equal(back[~is_black], rgb[~is_black])
        # an independent numpy reference for a few classes
        for cid, hexcol in ((0, "3C1098"), (2, "6EC1E4")):
            col = np.array([int(hexcol[i : i + 2], 16) for i in (0, 2, 4)])
            assert ((idx == cid) == (rgb == col).all(axis=2)).all()
    assert black > 0  # Tile 3 has a few black (unlabelled) pixels
    assert out["unknown"]["pixels"] == black and list(out["unknown"]["colors"]) == ["#000000"]


def test_binary_table_thresholds_grey_masks(tmp_path):
    """0/255 grey masks (also JPEG-damaged ones) -> 0/1 with the named 'binary' table."""
    grey = np.array([[0, 10, 120, 127], [128, 140, 250, 255]], np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "m.png")
    rgb = read_color_mask(str(tmp_path / "m.png"))  # grey read as r = g = b
    t = load_class_table("binary")
    exact, unknown = colors_to_index(rgb, t)
    assert exact[0, 0] == 0 and exact[1, 3] == 1 and unknown[(120, 120, 120)] == 1 and len(unknown) == 6
    near, unknown = colors_to_index(rgb, t, tolerance=221)  # nearest of black/white: threshold at 128
    np.testing.assert_array_equal(near, [[0, 0, 0, 0], [1, 1, 1, 1]])
    assert unknown == {}
