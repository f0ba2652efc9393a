"""Dataset folders for training: metadata, pairs, and a validating scan.

A dataset is ``<data_dir>/<name>/{train,val,test}_{image,label}/`` (docs/architecture.md),
optionally with ``dataset.json`` (classes, palette, ignore_index, input_size,
``input_channels`` / ``mean`` / ``std`` (the images' channels and normalisation), and
``train``: the dataset's suggested training options) and/or ``classes.txt`` (one
class name per line); both are read by :func:`kseg.data.layout.read_class_files`,
the one reader of the folder contract.
"""

import collections
import contextlib
import dataclasses
import itertools
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kseg.config import IGNORE_INDEX, TrainConfig, label_values
from kseg.data.io import decode_label, pair_by_stem, read_image  # noqa: F401 (pair_by_stem re-exported)
from kseg.data.layout import read_class_files, split_dir
from kseg.data.palette import palette_for  # noqa: F401 (re-exported for training)
from kseg.data.stats import LabelCounter, is_binary_255
from kseg.errors import ConfigError, DataError

#: Training options ``dataset.json`` may hold at its top level (not only under ``"train"``).
TOP_LEVEL_OPTIONS = ("input_channels", "mean", "std", "epochs", "augment")

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
    option except those of :data:`NOT_DATASET_OPTIONS`; the top-level ``"input_channels"``,
    ``"mean"`` and ``"std"`` (facts of the images) and the ``"epochs"`` and ``"augment"`` of
    older files are read too (``"train"`` wins).
    """
    opts = {k: meta[k] for k in TOP_LEVEL_OPTIONS if meta.get(k) is not None}
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


#: Options that together say how long to train: one given keeps the dataset's others out.
BUDGET = ("epochs", "iterations")
#: The per-channel normalisation: one given keeps the dataset's other out.
NORMALISATION = ("mean", "std")


def apply_dataset_defaults(cfg, suggested, explicit):
    """``cfg`` with the dataset's suggested options (dataset.json "train") where none was given.

    Given options (recipe, file, flags) win; a resumed run keeps its recorded recipe
    and takes a suggestion only for an option it never resolved (``None``).
    """
    given = set(explicit)
    if given & set(BUDGET):
        given |= set(BUDGET)
    if given & set(NORMALISATION):
        given |= set(NORMALISATION)
    mean = suggested.get("mean")
    if "input_channels" in given and isinstance(mean, list) and len(mean) != cfg.input_channels:
        given |= set(NORMALISATION)  # the dataset's mean/std are for its own channel count
    take = {k: v for k, v in suggested.items()
            if k not in given and (not cfg.resume or getattr(cfg, k) is None)}
    return cfg.replace(**take) if take else cfg


def resolve_dataset(cfg, explicit):
    """The dataset of a :class:`TrainConfig`, without TensorFlow.

    Generates the built-in sample when it is asked for and missing, reads the folder's
    class files, applies its suggested options (:func:`apply_dataset_defaults`) and
    resolves ``input_channels`` (given, else the dataset's, else 3).
    Returns ``(config, root, info, n_classes, ignore_index)``.
    """
    from kseg.data.sample import SAMPLE_NAME, ensure_sample_dataset

    root = os.path.join(cfg.data_dir, cfg.dataset_name)
    if cfg.dataset_name == SAMPLE_NAME and not os.path.exists(root):
        ensure_sample_dataset(root)
    info = load_dataset_info(root)
    cfg = apply_dataset_defaults(cfg, info.train, explicit)
    if cfg.input_channels is None:
        try:
            cfg = cfg.replace(input_channels=3)
        except ConfigError as e:
            raise ConfigError(f"{os.path.join(root, 'dataset.json')} gives no input_channels, so the images are "
                              f"read with 3: {e}") from None
    n_classes = cfg.n_classes or (len(info.classes) if info.classes else None)
    if n_classes is None:
        raise DataError(f"the number of classes is unknown for {root} (no dataset.json or classes.txt); "
                        "pass --n_classes")
    ignore_index = cfg.ignore_index if cfg.ignore_index is not None else info.ignore_index
    return cfg, root, info, n_classes, ignore_index


@dataclasses.dataclass
class DataCheck:
    """What :func:`check_training_data` found: the pairs of training and validation and their scans."""

    train_pairs: list
    train_scan: object
    val_split: str
    val_pairs: list
    val_scan: object


_CHECKED = {}  # the last check: key -> DataCheck


def _fingerprint(pairs):
    out = []
    for pair in pairs:
        for path in pair:
            try:
                st = os.stat(path)
                out.append((path, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((path, None, None))
    return tuple(out)


def check_training_data(root, info, n_classes, ignore_index, validate=True, channels=3):
    """Scan the training pairs and the validation pairs (the val split, else test) the way
    training reads them (:func:`scan_pairs`, images fitted to ``channels`` input channels);
    one-line :class:`DataError` for the first bad file. Needs no TensorFlow, so ``kseg
    train`` runs it before TensorFlow starts; the result is remembered (same files, sizes
    and times), so training does not decode everything a second time.
    """
    train_pairs = info.pairs("train")
    val_split = None
    if validate:
        val_split = "val" if info.has_split("val") else ("test" if info.has_split("test") else None)
    val_pairs = info.pairs(val_split) if val_split else []
    channels = int(channels or 3)
    key = (os.path.abspath(root), n_classes, ignore_index, val_split, channels,
           _fingerprint(train_pairs), _fingerprint(val_pairs))
    if key in _CHECKED:
        return _CHECKED[key]
    print(f"checking {len(train_pairs)} training pairs in {root} ...", flush=True)
    scan = scan_pairs(train_pairs, n_classes, ignore_index, channels=channels)
    if validate and val_split is None:
        print("warning: no val or test split with labels; training without validation", file=sys.stderr)
    elif val_split == "test":
        print("note: no val split; the test split is used for validation and model selection")
    vscan = scan_pairs(val_pairs, n_classes, ignore_index, channels=channels) if val_pairs else None
    _CHECKED.clear()
    _CHECKED[key] = DataCheck(train_pairs, scan, val_split, val_pairs, vscan)
    return _CHECKED[key]


@dataclasses.dataclass
class ScanResult:
    pairs: list
    class_pixels: np.ndarray  # pixels per class (valid only), label_values(n_classes) entries
    class_images: np.ndarray  # images containing the class
    ignored_pixels: int
    label_modes: set
    stats: object = None  # the kseg.data.stats.ClassStats of the labels (for class weights)


def scan_pairs(pairs, n_classes, ignore_index=IGNORE_INDEX, check_images=True, workers=None, channels=3):
    """Decode every pair as training will, check it, and count class pixels.

    Every image and label is fully decoded by :mod:`kseg.data.io` -- the readers the
    training pipeline decodes with -- so a file that training could not read (missing,
    empty, truncated, corrupt, a format or pixel type kseg does not read) fails here,
    before any training, with the reader's one-line :class:`DataError` naming the file;
    so does an image whose channels do not fit ``channels`` (the model's
    ``input_channels``, :func:`kseg.data.io.to_channels`). Then: image and label sizes
    agree, and every label value is a class index
    (< ``label_values(n_classes)``) or the ignore value. Raises :class:`DataError` for
    the first bad pair (in ``pairs`` order) with the fix. ``result.stats``
    (:class:`kseg.data.stats.ClassStats`) gives the class weights
    (:func:`kseg.data.stats.class_weights`). Needs no TensorFlow; files are decoded by
    ``workers`` threads (default: up to 8, one per CPU).
    """
    k = label_values(n_classes)
    counter = LabelCounter(ignore_index)
    modes = set()
    binary_255 = 0
    with contextlib.closing(_decoded(pairs, check_images, workers, channels)) as decoded:
        for (img_path, lab_path), (hw, lab, mode) in zip(pairs, decoded):
            modes.add(mode)
            if hw is not None and lab.shape != hw:
                raise DataError(
                    f"size mismatch: image {img_path} is {hw[1]}x{hw[0]} but label {lab_path} is "
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
    return ScanResult(list(pairs), stats.pixels, stats.images, stats.ignored, modes, stats)


def _read_pair(pair, check_images, channels=3):
    """``(image (h, w) or None, label array, label mode)`` of one pair, decoded by kseg.data.io."""
    img_path, lab_path = pair
    hw = read_image(img_path, channels).shape[:2] if check_images else None
    lab, mode = decode_label(lab_path)
    return hw, lab, mode


def _decoded(pairs, check_images, workers=None, channels=3):
    """:func:`_read_pair` of every pair, in order, decoded ahead by a few threads.

    At most ``2 * workers`` decoded pairs wait at a time, so memory stays bounded
    on large datasets; the first error (in order) is raised when its pair is reached.
    """
    workers = int(workers or min(8, os.cpu_count() or 1))
    if workers <= 1 or len(pairs) < 2:
        for p in pairs:
            yield _read_pair(p, check_images, channels)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="kseg-scan")
    try:
        todo = iter(pairs)
        pending = collections.deque(pool.submit(_read_pair, p, check_images, channels)
                                    for p in itertools.islice(todo, 2 * workers))
        while pending:
            result = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(_read_pair, nxt, check_images, channels))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
