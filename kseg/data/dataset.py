"""Dataset folders: discovery, metadata, and a validating scan.

A dataset is ``<data_dir>/<name>/{train,val,test}_{image,label}/`` (DESIGN.md 4),
optionally with ``dataset.json`` (classes, palette, ignore_index, input_size)
and/or ``classes.txt`` (one class name per line).
"""

import dataclasses
import json
import os

import numpy as np
from PIL import Image

from kseg.data.io import DEFAULT_IGNORE_INDEX, pair_by_stem, read_label, voc_palette
from kseg.errors import DataError


@dataclasses.dataclass
class DatasetInfo:
    root: str
    classes: list = None
    palette: list = None
    ignore_index: int = DEFAULT_IGNORE_INDEX
    input_size: tuple = None
    epochs: int = None
    augment: bool = True

    def split_dirs(self, split):
        return (
            os.path.join(self.root, f"{split}_image"),
            os.path.join(self.root, f"{split}_label"),
        )

    def has_split(self, split, labels=True):
        img, lab = self.split_dirs(split)
        return os.path.isdir(img) and (not labels or os.path.isdir(lab))

    def pairs(self, split):
        img, lab = self.split_dirs(split)
        if not os.path.isdir(img):
            raise DataError(f"the dataset has no {split} split: {img} does not exist")
        if not os.path.isdir(lab):
            raise DataError(f"the {split} split has no labels: {lab} does not exist")
        return pair_by_stem(img, lab)


def load_dataset_info(root):
    """Read ``dataset.json`` / ``classes.txt`` of a dataset folder (both optional)."""
    if not os.path.isdir(root):
        raise DataError(
            f"dataset folder {root} does not exist; check --data_dir and --dataset_name"
        )
    info = DatasetInfo(root=root)
    meta = os.path.join(root, "dataset.json")
    if os.path.exists(meta):
        try:
            with open(meta, encoding="utf-8") as f:
                d = json.load(f)
        except ValueError as e:
            raise DataError(f"{meta} is not valid JSON ({e}); fix or delete it") from None
        info.classes = d.get("classes")
        info.palette = d.get("palette")
        info.ignore_index = d.get("ignore_index", DEFAULT_IGNORE_INDEX)
        if d.get("input_size"):
            info.input_size = tuple(d["input_size"])
        info.epochs = d.get("epochs")
        info.augment = bool(d.get("augment", True))
    txt = os.path.join(root, "classes.txt")
    if info.classes is None and os.path.exists(txt):
        with open(txt, encoding="utf-8") as f:
            names = [ln.strip() for ln in f if ln.strip()]
        info.classes = [n for n in names if n != "__ignore__"]
    return info


def default_class_names(n_classes):
    return [f"class_{i}" for i in range(n_classes)]


def palette_for(n_classes, palette=None):
    """A ``(n_classes, 3)`` uint8 palette: the given one (padded) or the VOC map."""
    pal = voc_palette(max(n_classes, 1)).astype(np.uint8)
    if palette is not None:
        p = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        k = min(len(p), n_classes)
        pal[:k] = p[:k]
    return pal


@dataclasses.dataclass
class ScanResult:
    pairs: list
    class_pixels: np.ndarray  # pixels per class (valid only)
    class_images: np.ndarray  # images containing the class
    ignored_pixels: int
    label_modes: set
    needs_python_decoder: bool  # palette / 16-bit labels that tf.io cannot read as indices


def scan_pairs(pairs, n_classes, ignore_index=DEFAULT_IGNORE_INDEX, check_images=True):
    """Validate every pair and count class pixels.

    Checks that each image can be opened, that image and label sizes agree,
    and that every label value is a class index (< n_classes) or the ignore
    value. Raises :class:`DataError` naming the first bad file and the fix.
    """
    counts = np.zeros(n_classes, np.int64)
    images_with = np.zeros(n_classes, np.int64)
    ignored = 0
    modes = set()
    needs_py = False
    binary_255 = 0
    for img_path, lab_path in pairs:
        if check_images:
            try:
                with Image.open(img_path) as im:
                    size = im.size
                    im.verify()
            except Exception as e:
                raise DataError(
                    f"cannot read image {img_path} ({type(e).__name__}): the file is corrupt or "
                    "not an image; replace or remove it (and its label)"
                ) from None
        else:
            size = None
        lab = read_label(lab_path)
        with Image.open(lab_path) as lim:
            modes.add(lim.mode)
            if lim.mode not in ("L",):
                needs_py = True
        if size is not None and (lab.shape[1], lab.shape[0]) != tuple(size):
            raise DataError(
                f"size mismatch: image {img_path} is {size[0]}x{size[1]} but label {lab_path} is "
                f"{lab.shape[1]}x{lab.shape[0]}; labels must have their image's size"
            )
        vals = np.bincount(lab.ravel().astype(np.int64), minlength=max(n_classes, 256))
        present = np.nonzero(vals)[0]
        bad = [v for v in present if v >= n_classes and v != ignore_index]
        if bad:
            raise DataError(
                f"label {lab_path} contains value {bad[0]} but n_classes is {n_classes} "
                f"(valid: 0..{n_classes - 1}, {ignore_index} = ignore); pass --n_classes "
                f"{bad[-1] + 1} or fix the label"
            )
        if set(present.tolist()) <= {0, 255} and 255 in present and ignore_index == 255:
            binary_255 += 1
        counts += vals[:n_classes]
        images_with += vals[:n_classes] > 0
        if 0 <= ignore_index < len(vals):
            ignored += int(vals[ignore_index])
    if pairs and binary_255 == len(pairs):
        raise DataError(
            f"every label in {os.path.dirname(pairs[0][1])} holds only 0 and 255, but 255 is the "
            "ignore value, so nothing would be learned: convert the masks to 0/1 "
            "(python scripts/check_dataset.py explains how) or pass --ignore_index -1"
        )
    return ScanResult(list(pairs), counts, images_with, ignored, modes, needs_py)
