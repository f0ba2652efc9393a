"""Dataset folders for training: metadata, pairs, and a validating scan.

A dataset is ``<data_dir>/<name>/{train,val,test}_{image,label}/`` (docs/architecture.md),
optionally with ``dataset.json`` (classes, palette, ignore_index, input_size, and
``train``: the dataset's suggested training options) and/or ``classes.txt`` (one
class name per line); both are read by :func:`kseg.data.layout.read_class_files`,
the one reader of the folder contract.
"""

import dataclasses
import os

import numpy as np
from PIL import Image

from kseg.config import IGNORE_INDEX, TrainConfig, label_values
from kseg.data.io import pair_by_stem, read_label  # noqa: F401 (pair_by_stem re-exported)
from kseg.data.layout import read_class_files, split_dir
from kseg.data.palette import palette_for  # noqa: F401 (re-exported for training)
from kseg.data.stats import LabelCounter, is_binary_255
from kseg.errors import ConfigError, DataError

#: Options a dataset cannot suggest: they say where the data and the experiment are.
NOT_DATASET_OPTIONS = ("data_dir", "dataset_name", "resume", "overwrite", "allow_recipe_change", "exp_name",
                       "train_save_path")


@dataclasses.dataclass
class DatasetInfo:
    root: str
    classes: list = None
    palette: list = None
    ignore_index: int = IGNORE_INDEX
    input_size: tuple = None
    #: training options the dataset suggests (dataset.json "train", plus the older
    #: top-level "epochs" and "augment"); the lowest priority: any recipe, file or flag wins
    train: dict = dataclasses.field(default_factory=dict)

    @property
    def epochs(self):
        return self.train.get("epochs")

    def split_dirs(self, split):
        return split_dir(self.root, split, "image"), split_dir(self.root, split, "label")

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
    """Read ``dataset.json`` / ``classes.txt`` of a dataset folder (both optional).

    The class list follows :mod:`kseg.data.layout`'s rule (a first ``__ignore__``
    line is the ignore value, not a class). Raises :class:`DataError` for a
    missing folder or an unreadable / invalid class file.
    """
    if not os.path.isdir(root):
        raise DataError(
            f"dataset folder {root} does not exist; check --data_dir and --dataset_name"
        )
    files = read_class_files(root)
    meta = files.meta
    info = DatasetInfo(root=root, classes=files.classes, palette=files.palette)
    if files.ignore_index is not None:
        info.ignore_index = files.ignore_index
    if meta.get("input_size"):
        info.input_size = tuple(meta["input_size"])
    info.train = dataset_train_options(meta, os.path.join(root, "dataset.json"))
    return info


def dataset_train_options(meta, where):
    """The training options a ``dataset.json`` suggests, checked like a recipe's.

    ``"train": {"epochs": 15, "schedule": "cosine", ...}`` holds any :class:`TrainConfig`
    option except those of :data:`NOT_DATASET_OPTIONS`; the top-level ``"epochs"`` and
    ``"augment"`` of older files are read too (``"train"`` wins).
    """
    opts = {k: meta[k] for k in ("epochs", "augment") if meta.get(k) is not None}
    train = meta.get("train") or {}
    if not isinstance(train, dict):
        raise DataError(f"{where}: \"train\" must be an object of training options, not {type(train).__name__}")
    opts.update(train)
    bad = sorted(set(opts) & set(NOT_DATASET_OPTIONS))
    if bad:
        raise DataError(f"{where}: a dataset cannot set {', '.join(bad)}; remove them from \"train\"")
    try:
        TrainConfig.from_dict(opts)
    except ConfigError as e:
        raise DataError(f"{where}: \"train\": {e}") from None
    return opts


@dataclasses.dataclass
class ScanResult:
    pairs: list
    class_pixels: np.ndarray  # pixels per class (valid only), label_values(n_classes) entries
    class_images: np.ndarray  # images containing the class
    ignored_pixels: int
    label_modes: set
    needs_python_decoder: bool  # palette / 16-bit labels that tf.io cannot read as indices
    stats: object = None  # the kseg.data.stats.ClassStats of the labels (for class weights)


def scan_pairs(pairs, n_classes, ignore_index=IGNORE_INDEX, check_images=True):
    """Validate every pair and count class pixels.

    Checks that each image can be opened, that image and label sizes agree,
    and that every label value is a class index (< ``label_values(n_classes)``)
    or the ignore value. Raises :class:`DataError` naming the first bad file and
    the fix. ``result.stats`` (:class:`kseg.data.stats.ClassStats`) gives the
    class weights (:func:`kseg.data.stats.class_weights`).
    """
    k = label_values(n_classes)
    counter = LabelCounter(ignore_index)
    modes = set()
    needs_py = False
    binary_255 = 0
    for img_path, lab_path in pairs:
        size = _image_size(img_path) if check_images else None
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
        try:
            present = np.flatnonzero(counter.add(lab))
        except DataError as e:
            raise DataError(f"label {lab_path}: {e}") from None
        bad = [int(v) for v in present if v >= k and v != ignore_index]
        if bad:
            raise DataError(
                f"label {lab_path} contains value {bad[0]} but n_classes is {n_classes} "
                f"(valid: 0..{k - 1}, {ignore_index} = ignore); pass --n_classes "
                f"{bad[-1] + 1} or fix the label"
            )
        binary_255 += is_binary_255(present, ignore_index)
    if pairs and binary_255 == len(pairs):
        raise DataError(
            f"every label in {os.path.dirname(pairs[0][1])} holds only 0 and {ignore_index}, but "
            f"{ignore_index} is the ignore value, so nothing would be learned: convert the masks to 0/1 "
            "(python scripts/check_dataset.py explains how) or pass --ignore_index -1"
        )
    stats = counter.stats(n_classes)
    return ScanResult(list(pairs), stats.pixels, stats.images, stats.ignored, modes, needs_py, stats)


def _image_size(img_path):
    try:
        with Image.open(img_path) as im:
            size = im.size
            im.verify()
    except Exception as e:
        raise DataError(
            f"cannot read image {img_path} ({type(e).__name__}): the file is corrupt or "
            "not an image; replace or remove it (and its label)"
        ) from None
    return size
