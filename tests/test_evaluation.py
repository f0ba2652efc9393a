"""kseg.evaluation: colours, overlays, the Evaluator, the confusion-matrix image, mask folders."""

import json
import os

import numpy as np
import pytest

from kseg.data.io import write_label
from kseg.data.palette import IGNORE_COLOR, colorize, overlay, voc_palette
from kseg.errors import DataError, KsegError
from kseg.evaluation import (
    Evaluator,
    confusion_matrix_image,
    dataset_panel,
    evaluate_folders,
    pair_masks,
    parse_class_names,
    save_prediction,
)

PAL = [[0, 0, 0], [200, 0, 0], [0, 100, 50]]


def test_colorize_uses_the_palette_and_marks_ignore():
    mask = np.array([[0, 1, 2], [7, 255, 1]])
    out = colorize(mask, PAL)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0].tolist() == [[0, 0, 0], [200, 0, 0], [0, 100, 50]]
    # no palette entry: the VOC colour of the value (255's is the VOC void colour)
    assert out[1, 0].tolist() == voc_palette()[7].tolist() and out[1, 1].tolist() == list(IGNORE_COLOR)
    out = colorize(mask, PAL, ignore_index=255)
    assert out[1, 1].tolist() == list(IGNORE_COLOR)


def test_overlay_blends_every_class_and_adds_a_legend_below():
    img = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:10] = 1
    mask[12:, 20:] = 2
    plain = overlay(img, mask, PAL, legend=False)
    assert plain.shape == (20, 30, 3)
    assert (plain[mask == 0] == 50).all()  # class 0 is coloured too: 0.5 * 100 + 0.5 * (0, 0, 0)
    assert plain[6, 6].tolist() == [150, 50, 50]  # 0.5 * 100 + 0.5 * (200, 0, 0)
    assert plain[15, 25].tolist() == [50, 100, 75]  # 0.5 * 100 + 0.5 * (0, 100, 50)
    with_legend = overlay(img, mask, PAL, ["bg", "red", "green"])
    assert with_legend.shape[1] == 30 and with_legend.shape[0] > 20
    np.testing.assert_array_equal(with_legend[:20], plain)
    strip = with_legend[20:]
    assert (strip == 255).mean() > 0.5 and (strip < 100).any()  # white strip with swatches/text


def test_legend_names_only_classes_present():
    img = np.full((40, 400, 3), 100, np.uint8)
    one = overlay(img, np.zeros((40, 400), np.uint8), PAL, ["bg", "red", "green"])
    mask = np.zeros((40, 400), np.uint8)
    mask[:, 200:] = 2
    two = overlay(img, mask, PAL, ["bg", "red", "green"])
    # the green swatch (0, 100, 50) appears only when class 2 is present
    green = np.all(two[40:] == [0, 100, 50], axis=-1)
    assert green.any() and not np.all(one[40:] == [0, 100, 50], axis=-1).any()


def test_save_prediction_writes_mask_and_overlay(tmp_path):
    from PIL import Image

    img = np.full((21, 34, 3), 90, np.uint8)
    mask = np.zeros((21, 34), np.uint8)
    mask[3:9, 2:20] = 2
    save_prediction(str(tmp_path), "a", img, mask, PAL, ["bg", "red", "green"])
    m = Image.open(tmp_path / "masks" / "a.png")
    assert m.mode == "P" and m.size == (34, 21)
    np.testing.assert_array_equal(np.asarray(m), mask)
    assert m.getpalette()[6:9] == [0, 100, 50]
    ov = Image.open(tmp_path / "overlays" / "a.png")
    assert ov.size[0] == 34 and ov.size[1] > 21


# ---------------------------------------------------------------------------------- evaluator
def test_evaluator_accumulates_a_hand_computed_confusion_matrix(tmp_path):
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pr = np.array([[0, 1, 1, 1], [2, 0, 0, 2]])
    ev = Evaluator(3, 255, ["a", "b", "c"])
    ev.update(gt, pr)
    ev.update(np.array([[2]]), np.array([[2]]))
    expected = np.array([[1, 1, 0],   # gt 0: predicted 0, 1
                         [0, 2, 1],   # gt 1: predicted 1, 1, 2
                         [1, 0, 2]])  # gt 2: predicted 2, 0 and 2 (second update)
    np.testing.assert_array_equal(ev.cm, expected)
    rep = ev.write(str(tmp_path), extra={"mode": "slide"})
    # IoU: class 0 = 1 / (2 + 2 - 1) = 1/3; class 1 = 2 / (3 + 3 - 2) = 1/2; class 2 = 2 / (3 + 3 - 2) = 1/2
    assert rep["mean_iou"] == pytest.approx((1 / 3 + 0.5 + 0.5) / 3)
    assert rep["pixel_accuracy"] == pytest.approx(5 / 8)
    with open(tmp_path / "report.json") as f:
        saved = json.load(f)
    assert saved["confusion_matrix"] == expected.tolist() and saved["mode"] == "slide" and saved["images"] == 2
    assert os.path.isfile(tmp_path / "confusion_matrix.png")


def test_evaluator_update_file_checks_sizes(tmp_path):
    write_label(str(tmp_path / "l.png"), np.zeros((4, 5), np.uint8))
    ev = Evaluator(2)
    with pytest.raises(DataError, match=r"l\.png is 5x4 but .* is 6x4"):
        ev.update_file(str(tmp_path / "l.png"), np.zeros((4, 6), np.uint8))
    write_label(str(tmp_path / "bad.png"), np.full((4, 5), 7, np.uint8))
    with pytest.raises(DataError, match=r"bad\.png.*value 7"):
        ev.update_file(str(tmp_path / "bad.png"), np.zeros((4, 5), np.uint8))


def test_evaluator_rejects_wrong_number_of_names():
    with pytest.raises(KsegError, match="2 class names given for 3 classes"):
        Evaluator(3, class_names=["a", "b"])


# ---------------------------------------------------------------------------------- confusion matrix image
def test_confusion_matrix_image_colours_cells_by_row_fraction():
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 6]])
    img, lay = confusion_matrix_image(cm, ["water", "road", "building"], return_layout=True)
    top, left, cell = lay["top"], lay["left"], lay["cell"]
    assert img.ndim == 3 and img.dtype == np.uint8
    assert img.shape[0] >= top + 3 * cell and img.shape[1] >= left + 3 * cell

    def at(i, j):  # a pixel near the top-left corner of the cell, away from grid lines and text
        return img[top + i * cell + 4, left + j * cell + 4].tolist()

    # linear ramp white (0) -> (8, 48, 107) (1): 255 + (c - 255) * fraction, rounded
    assert at(0, 0) == [70, 100, 144]  # 3/4
    assert at(0, 1) == [193, 203, 218]  # 1/4
    assert at(0, 2) == [255, 255, 255]  # 0
    assert at(2, 0) == [193, 203, 218]  # 2/8
    assert at(2, 2) == [70, 100, 144]  # 6/8
    assert at(1, 1) == [200, 200, 200]  # no ground truth: grey row
    # class names are written left of the rows and above the columns (dark pixels there)
    assert (img[top : top + 3 * cell, :left - 2] < 128).any()
    assert (img[:top - 2, left : left + 3 * cell] < 128).any()


@pytest.mark.parametrize("k", [2, 20, 100])
def test_confusion_matrix_image_stays_readable_in_size(k):
    rng = np.random.default_rng(k)
    cm = rng.integers(0, 20, (k, k)) + np.diag(rng.integers(50, 100, k))
    names = [f"a rather long class name number {i}" for i in range(k)]
    img, lay = confusion_matrix_image(cm, names, return_layout=True)
    assert 10 <= lay["cell"] <= 80
    assert max(img.shape[:2]) <= 1700  # fits a screen
    assert min(img.shape[:2]) >= lay["cell"] * k


# ---------------------------------------------------------------------------------- folders
def _write_masks(folder, masks):
    for stem, m in masks.items():
        write_label(os.path.join(folder, stem + ".png"), np.asarray(m, np.uint8))


def test_pair_masks_and_evaluate_folders(tmp_path):
    _write_masks(tmp_path / "pred", {"b": [[1, 1], [0, 0]], "a": [[0, 1]]})
    _write_masks(tmp_path / "gt", {"a": [[0, 0]], "b": [[1, 0], [0, 255]]})
    pairs = pair_masks(str(tmp_path / "pred"), str(tmp_path / "gt"))
    assert [os.path.basename(p) for p, _ in pairs] == ["a.png", "b.png"]
    ev = evaluate_folders(str(tmp_path / "pred"), str(tmp_path / "gt"), 2)
    # a: gt 0 -> 0, gt 0 -> 1; b: gt 1 -> 1, gt 0 -> 1, gt 0 -> 0, 255 ignored
    np.testing.assert_array_equal(ev.cm, [[2, 2], [0, 1]])


def test_pair_masks_reports_unmatched_files(tmp_path):
    _write_masks(tmp_path / "pred", {"a": [[0]], "extra": [[0]]})
    _write_masks(tmp_path / "gt", {"a": [[0]], "lonely": [[0]]})
    with pytest.raises(DataError) as e:
        pair_masks(str(tmp_path / "pred"), str(tmp_path / "gt"))
    msg = str(e.value)
    assert "extra.png" in msg and "lonely.png" in msg and "\n" not in msg


def test_evaluate_folders_reports_size_mismatch(tmp_path):
    _write_masks(tmp_path / "pred", {"a": np.zeros((3, 4))})
    _write_masks(tmp_path / "gt", {"a": np.zeros((4, 4))})
    with pytest.raises(DataError, match="4x3"):
        evaluate_folders(str(tmp_path / "pred"), str(tmp_path / "gt"), 2)


def test_parse_class_names(tmp_path):
    assert parse_class_names(None) is None
    assert parse_class_names("sky, road,car") == ["sky", "road", "car"]
    (tmp_path / "classes.txt").write_text("__ignore__\nbg\ncat\n")
    assert parse_class_names(str(tmp_path / "classes.txt")) == ["bg", "cat"]
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps({"classes": ["x", "y"]}))
    assert parse_class_names(str(tmp_path / "ds")) == ["x", "y"]


# ---------------------------------------------------------------------------------- dataset panels
def test_dataset_panel_layout_and_ignore_colour():
    img = np.full((10, 12, 3), 60, np.uint8)
    lab = np.zeros((10, 12), np.uint8)
    lab[2:5, 2:5] = 1
    lab[8:, :] = 255
    panel = dataset_panel(img, lab, PAL, ["bg", "thing"], ignore_index=255, gap=4)
    assert panel.shape[1] == 3 * 12 + 2 * 4 and panel.shape[0] > 10
    np.testing.assert_array_equal(panel[:10, :12], img)
    colour = panel[:10, 16:28]
    assert colour[3, 3].tolist() == [200, 0, 0] and colour[0, 0].tolist() == [0, 0, 0]
    assert colour[9, 5].tolist() == list(IGNORE_COLOR)
    ov = panel[:10, 32:44]
    assert ov[3, 3].tolist() == [130, 30, 30] and ov[0, 0].tolist() == [30, 30, 30]  # class 0 blended too
    assert ov[9, 5].tolist() == [round(0.5 * 60 + 0.5 * c) for c in IGNORE_COLOR]
    with pytest.raises(DataError, match="12x10"):
        dataset_panel(img, lab[:5], PAL)


def test_dataset_panel_shrinks_large_images():
    img = np.zeros((300, 1000, 3), np.uint8)
    lab = np.zeros((300, 1000), np.uint8)
    panel = dataset_panel(img, lab, PAL, max_side=200, gap=4)
    assert panel.shape[1] == 3 * 200 + 8
