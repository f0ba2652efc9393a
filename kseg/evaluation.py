"""Evaluation at original resolution: masks, overlays, the confusion-matrix report and its image.

* :func:`save_prediction`: what ``scripts/test.py`` writes for a predicted mask
  (the mask and its :func:`kseg.data.palette.overlay`; ``colorize``, ``overlay``,
  ``add_legend`` and ``legend_strip`` are that module's, importable from here too).
* :class:`Evaluator`: accumulates the confusion matrix of predicted masks against
  label files and writes ``report.json`` (scores of :func:`kseg.metrics.segmentation_report`)
  and ``confusion_matrix.png`` (:func:`confusion_matrix_image`).
* :func:`pair_masks`, :func:`evaluate_folders`: the same report from two folders of
  index masks (``scripts/evaluate.py``), so results of any tool can be compared.
* :func:`parse_class_names`: ``--class_names`` (a list, a class file or a dataset folder).
* :func:`dataset_panel`: image | coloured label | overlay, to check a dataset
  (``scripts/visualize.py``).

Images are RGB ``uint8``; masks are 2-D arrays of class indices.
"""

import json
import os

import cv2
import numpy as np

from kseg.config import IGNORE_INDEX, label_values
from kseg.data.io import list_files, read_label, write_image, write_label
from kseg.files import atomic_path
from kseg.data.layout import CLASSES_TXT, DATASET_JSON, LABEL_EXTENSIONS, read_class_file, read_class_files
from kseg.data.palette import (  # noqa: F401 (add_legend, legend_strip re-exported)
    FONT,
    IGNORE_COLOR,
    add_legend,
    colorize,
    legend_entries,
    legend_strip,
    overlay,
)
from kseg.errors import DataError, KsegError
from kseg.metrics import confusion_matrix, format_report, segmentation_report

CM_LOW = (255, 255, 255)  # confusion-matrix colour of a 0 row fraction ...
CM_HIGH = (8, 48, 107)  # ... and of 1 (linear in between)
CM_EMPTY = (200, 200, 200)  # rows of classes without ground truth


def save_prediction(out_dir, stem, image, mask, palette, class_names, overlays=True):
    """Write ``masks/<stem>.png`` (palette PNG at original size) and ``overlays/<stem>.png``."""
    write_label(os.path.join(out_dir, "masks", stem + ".png"), mask, palette)
    if overlays:
        write_image(os.path.join(out_dir, "overlays", stem + ".png"),
                    overlay(image, mask, palette, class_names))


# ------------------------------------------------------------------------------ confusion matrix image
def _abbreviate(text, n):
    text = str(text)
    return text if len(text) <= n else text[: max(1, n - 2)] + ".."


def _cm_color(v):
    lo, hi = np.asarray(CM_LOW, np.float64), np.asarray(CM_HIGH, np.float64)
    return lo + (hi - lo) * np.asarray(v, np.float64)[..., None]


def confusion_matrix_image(cm, class_names=None, *, max_matrix_side=1000, return_layout=False):
    """Draw a confusion matrix as an RGB heat map, normalised per row (ground truth).

    Cell ``(i, j)`` is coloured by ``cm[i, j] / sum(cm[i])`` on a linear ramp from
    :data:`CM_LOW` (0) to :data:`CM_HIGH` (1); rows of classes without ground truth are
    grey. Class names label the rows (ground truth) and the columns (prediction,
    written vertically); names are abbreviated to fit, and the per-cell fractions
    are printed only while the cells are large enough (up to ~25 classes). Readable
    from 2 to ~100 classes.

    Args:
        cm: ``(K, K)`` matrix, rows = ground truth, columns = prediction.
        class_names: K names (default ``0..K-1``).
        max_matrix_side: size in pixels the K cells aim at (cells are 10..80 px).
        return_layout: also return ``{"top", "left", "cell"}`` (matrix origin and cell size).
    """
    cm = np.asarray(cm, np.float64)
    k = cm.shape[0]
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(k)]
    labels = [f"{i} {_abbreviate(n, 24)}" if class_names is not None else n for i, n in enumerate(names)]
    cell = int(np.clip(max_matrix_side // max(k, 1), 10, 80))
    scale = float(np.clip(cell / 40.0, 0.3, 0.5))
    text_h = cv2.getTextSize("Ag", FONT, scale, 1)[0][1]
    label_w = max(cv2.getTextSize(t, FONT, scale, 1)[0][0] for t in labels) + 10
    title_scale = 0.5
    title_h = cv2.getTextSize("Ag", FONT, title_scale, 1)[0][1] + 14
    axis_h = title_h  # "prediction" / "ground truth" captions
    top = title_h + axis_h + label_w
    left = axis_h + label_w
    side = k * cell
    bar_w = 60
    width = left + side + 20 + bar_w
    height = top + side + 10
    min_w = cv2.getTextSize("confusion matrix (rows normalised)", FONT, title_scale, 1)[0][0] + 20
    width = max(width, min_w)
    img = np.full((height, width, 3), 255, np.uint8)

    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    colors = np.clip(np.round(_cm_color(frac)), 0, 255).astype(np.uint8)
    colors[rows[:, 0] == 0] = CM_EMPTY
    block = np.repeat(np.repeat(colors, cell, axis=0), cell, axis=1)
    img[top : top + side, left : left + side] = block
    if cell >= 14:  # thin grid lines between cells
        for i in range(k + 1):
            c = (235, 235, 235) if 0 < i < k else (90, 90, 90)
            cv2.line(img, (left, top + i * cell), (left + side, top + i * cell), c, 1)
            cv2.line(img, (left + i * cell, top), (left + i * cell, top + side), c, 1)
    if cell >= 36:
        for i in range(k):
            if rows[i, 0] == 0:
                continue
            for j in range(k):
                s = f"{frac[i, j]:.2f}"
                (tw, _), _ = cv2.getTextSize(s, FONT, scale * 0.9, 1)
                col = (255, 255, 255) if frac[i, j] > 0.5 else (0, 0, 0)
                cv2.putText(img, s, (left + j * cell + (cell - tw) // 2, top + i * cell + (cell + text_h) // 2),
                            FONT, scale * 0.9, col, 1, cv2.LINE_AA)

    # row labels (ground truth), right-aligned against the matrix
    for i, t in enumerate(labels):
        tw = cv2.getTextSize(t, FONT, scale, 1)[0][0]
        cv2.putText(img, t, (left - 6 - tw, top + i * cell + (cell + text_h) // 2), FONT, scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    # column labels (prediction): drawn horizontally on a strip, then rotated
    strip = np.full((cell * k, label_w, 3), 255, np.uint8)
    for j, t in enumerate(labels):
        cv2.putText(strip, t, (4, j * cell + (cell + text_h) // 2), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    rot = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)  # (label_w, side)
    img[top - label_w : top, left : left + side] = rot
    # captions
    cv2.putText(img, "confusion matrix (rows normalised)", (10, title_h - 6), FONT, title_scale, (0, 0, 0), 1,
                cv2.LINE_AA)
    cap = "prediction"
    cw = cv2.getTextSize(cap, FONT, title_scale, 1)[0][0]
    cv2.putText(img, cap, (left + max(0, (side - cw) // 2), title_h + axis_h - 6), FONT, title_scale,
                (0, 0, 0), 1, cv2.LINE_AA)
    cap = "ground truth"
    cw = cv2.getTextSize(cap, FONT, title_scale, 1)[0][0]
    vert = np.full((axis_h, cw + 8, 3), 255, np.uint8)
    cv2.putText(vert, cap, (4, axis_h - 6), FONT, title_scale, (0, 0, 0), 1, cv2.LINE_AA)
    vert = cv2.rotate(vert, cv2.ROTATE_90_COUNTERCLOCKWISE)  # (cw + 8, axis_h)
    y0 = top + max(0, (side - vert.shape[0]) // 2)
    y1 = min(height, y0 + vert.shape[0])
    img[y0:y1, 0:axis_h] = vert[: y1 - y0]
    # colour bar 0..1
    bx = left + side + 20
    bar_h = max(side, 40)
    ramp = np.clip(np.round(_cm_color(np.linspace(1, 0, bar_h))), 0, 255).astype(np.uint8)
    img[top : top + bar_h, bx : bx + 12] = ramp[:, None, :][: max(0, min(bar_h, height - top))]
    cv2.rectangle(img, (bx, top), (bx + 12, top + bar_h - 1), (90, 90, 90), 1)
    for v, y in (("1", top + text_h), ("0", top + bar_h - 2)):
        cv2.putText(img, v, (bx + 16, y), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    if return_layout:
        return img, {"top": top, "left": left, "cell": cell}
    return img


def save_confusion_matrix(path, cm, class_names=None):
    """Write :func:`confusion_matrix_image` to ``path`` (PNG)."""
    write_image(path, confusion_matrix_image(cm, class_names))
    return path


# ------------------------------------------------------------------------------ evaluator
class Evaluator:
    """Accumulates a confusion matrix of masks against label files at original resolution.

    Args:
        n_classes: number of classes (1 = binary sigmoid model: a 2x2 matrix).
        ignore_index: label value that is not counted.
        class_names: names for the report and the confusion-matrix image.
    """

    def __init__(self, n_classes, ignore_index=IGNORE_INDEX, class_names=None):
        self.n = label_values(n_classes)
        self.n_classes = int(n_classes)
        self.ignore_index = ignore_index
        if class_names is not None and len(class_names) != self.n:
            raise KsegError(
                f"{len(class_names)} class names given for {self.n} classes; give one name per class"
            )
        self.class_names = list(class_names) if class_names is not None else None
        self.cm = np.zeros((self.n, self.n), np.int64)
        self.n_images = 0

    def update(self, label, mask):
        self.cm += confusion_matrix(label, mask, self.n, self.ignore_index)
        self.n_images += 1

    def update_file(self, label_path, mask, pred_name=None):
        """Add one mask against the label file ``label_path`` (sizes must agree)."""
        label = read_label(label_path)
        what = f"prediction {pred_name}" if pred_name else "its prediction"
        if label.shape != mask.shape:
            raise DataError(
                f"label {label_path} is {label.shape[1]}x{label.shape[0]} but {what} is "
                f"{mask.shape[1]}x{mask.shape[0]}; masks must have their label's size"
            )
        try:
            self.update(label, mask)
        except DataError as e:
            where = f"{label_path} vs {pred_name}" if pred_name else str(label_path)
            raise DataError(f"{where}: {e}") from None

    def report(self):
        rep = segmentation_report(self.cm, self.class_names)
        rep["images"] = self.n_images
        rep["ignore_index"] = self.ignore_index
        return rep

    def write(self, out_dir, extra=None, image=True):
        """Write ``report.json`` (with the confusion matrix and ``extra`` entries) and,
        with ``image``, ``confusion_matrix.png`` into ``out_dir``; returns the report."""
        rep = self.report()
        if extra:
            rep.update(extra)
        rep["confusion_matrix"] = self.cm.tolist()
        with atomic_path(os.path.join(out_dir, "report.json")) as tmp:
            with open(tmp, "w") as f:
                json.dump(rep, f, indent=2)
        if image:
            save_confusion_matrix(os.path.join(out_dir, "confusion_matrix.png"), self.cm,
                                  self.class_names or [f"class_{i}" for i in range(self.n)])
        return rep

    def text(self):
        return format_report(self.report())


# ------------------------------------------------------------------------------ folders of masks
def pair_masks(pred_dir, gt_dir):
    """Pair prediction and ground-truth masks by file stem.

    Returns a sorted list of ``(pred_path, gt_path)``; raises :class:`DataError`
    listing unmatched files or duplicate stems.
    """
    found = {}
    for kind, folder in (("prediction", pred_dir), ("ground-truth mask", gt_dir)):
        seen = {}
        for f in list_files(folder, LABEL_EXTENSIONS):
            stem = os.path.splitext(os.path.basename(f))[0]
            if stem in seen:
                raise DataError(f"two {kind}s share the stem {stem!r}: {seen[stem]} and {f}; remove one")
            seen[stem] = f
        found[kind] = seen
    pred, gt = found["prediction"], found["ground-truth mask"]
    no_gt, no_pred = sorted(set(pred) - set(gt)), sorted(set(gt) - set(pred))
    if no_gt or no_pred:
        parts = []
        for n, stems, src, other in ((len(no_gt), no_gt, pred, f"no ground truth in {gt_dir}"),
                                     (len(no_pred), no_pred, gt, f"no prediction in {pred_dir}")):
            if n:
                parts.append(f"{n} file(s) with {other}: "
                             + ", ".join(os.path.basename(src[s]) for s in stems[:5]) + (" ..." if n > 5 else ""))
        raise DataError("; ".join(parts) + "; masks pair by file stem -- add or remove files so both folders match")
    if not pred:
        raise DataError(f"no masks ({', '.join(LABEL_EXTENSIONS)}) found in {pred_dir}")
    return [(pred[s], gt[s]) for s in sorted(pred)]


def evaluate_folders(pred_dir, gt_dir, n_classes, ignore_index=IGNORE_INDEX, class_names=None):
    """Confusion matrix of every predicted mask in ``pred_dir`` against ``gt_dir`` (by stem).

    Returns the filled :class:`Evaluator`.
    """
    ev = Evaluator(n_classes, ignore_index, class_names)
    for pred_path, gt_path in pair_masks(pred_dir, gt_dir):
        try:
            mask = read_label(pred_path)
        except DataError as e:
            raise DataError(f"prediction: {e}") from None
        ev.update_file(gt_path, mask, pred_name=pred_path)
    return ev


def parse_class_names(spec):
    """Class names from ``--class_names``: a ``classes.txt`` / ``dataset.json`` file, a
    dataset folder holding one, or a comma-separated list.

    Files are read by :mod:`kseg.data.layout` (the one class-list rule: a first
    ``__ignore__`` line is the ignore value, not a class).
    """
    if spec is None:
        return None
    spec = str(spec)
    if os.path.isdir(spec):
        names = read_class_files(spec).classes
        if names is None:
            raise DataError(f"--class_names {spec} is a folder without {DATASET_JSON} or {CLASSES_TXT}")
        return names
    if os.path.isfile(spec):
        return read_class_file(spec)
    return [n.strip() for n in spec.split(",")]


# ------------------------------------------------------------------------------ dataset panels
def _fit(image, max_side, interp):
    if not max_side or max(image.shape[:2]) <= max_side:
        return image
    s = max_side / max(image.shape[:2])
    h, w = max(1, round(image.shape[0] * s)), max(1, round(image.shape[1] * s))
    return cv2.resize(image, (w, h), interpolation=interp)


def dataset_panel(image, label, palette, class_names=None, ignore_index=IGNORE_INDEX, alpha=0.5, max_side=None,
                  gap=4):
    """``image | coloured label | overlay`` side by side with a legend below.

    Colours as everywhere (:mod:`kseg.data.palette`): ignored pixels
    (``ignore_index``) in :data:`IGNORE_COLOR`, values without a palette entry in
    their VOC colour; the overlay colours every class, class 0 included.
    ``max_side`` shrinks large images (labels with nearest neighbour) before drawing.
    """
    label = np.asarray(label)
    if label.shape != image.shape[:2]:
        raise DataError(
            f"label is {label.shape[1]}x{label.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}"
        )
    if label.size and label.max() > np.iinfo(np.uint8).max:
        raise DataError(f"label values up to {int(label.max())} cannot be drawn (at most 255)")
    image = _fit(image, max_side, cv2.INTER_AREA)
    label = _fit(label.astype(np.uint8), max_side, cv2.INTER_NEAREST)
    color = colorize(label, palette, ignore_index)
    ov = overlay(image, label, palette, alpha=alpha, legend=False, ignore_index=ignore_index)
    sep = np.full((image.shape[0], gap, 3), 255, np.uint8)
    panel = np.concatenate([image, sep, color, sep, ov], axis=1)
    entries = legend_entries(np.unique(label).tolist(), palette, class_names, ignore_index)
    return np.concatenate([panel, legend_strip(entries, panel.shape[1])], axis=0)
