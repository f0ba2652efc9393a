"""The dataset folder contract: safe writing, train/val/test splits, and the dataset doctor.

A dataset folder (DESIGN.md section 4) looks like::

    data/<name>/train_image/*.jpg|png   train_label/*.png
    data/<name>/val_image/  (optional)  val_label/
    data/<name>/test_image/             test_label/
    data/<name>/classes.txt             one class name per line, line i = class id i
    data/<name>/dataset.json            {"classes": [...], "palette": [[r, g, b], ...], "ignore_index": 255}

This module holds what every converter (labelme, colour-coded, COCO) needs to
write such a folder without ever leaving a half-written dataset behind
(:class:`DatasetWriter`), the deterministic split of items into train/val/test
(:func:`parse_split`, :func:`split_items`), and :func:`check_dataset`, which
inspects an existing folder and reports everything that would make training
fail or silently go wrong.
"""

import hashlib
import json
import math
import os
import re
import shutil
import tempfile

import numpy as np
from PIL import Image

from kseg.data.io import (
    DEFAULT_IGNORE_INDEX,
    IMAGE_EXTENSIONS,
    LABEL_EXTENSIONS,
    atomic_path,
    read_image,
    read_label,
    voc_palette,
)
from kseg.errors import DataError

SPLITS = ("train", "val", "test")
KINDS = ("image", "label", "viz")
STAGING_PREFIX = ".kseg-staging-"
# Files a tool may leave next to a dataset's images that are not data (manifests, notes).
SIDECAR_EXTENSIONS = (".json", ".txt", ".csv", ".md")


# --------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------


def parse_split(values):
    """Turn ``--split`` values into ``(train, val, test)`` fractions.

    Accepts one to three numbers (or one comma-separated string): ``0.8`` means
    80% train and 20% test; ``0.8 0.1`` means 80% train, 10% val, 10% test;
    three numbers must sum to 1.
    """
    if isinstance(values, str):
        values = [values]
    parts = []
    for v in values if values is not None else [0.8, 0.1, 0.1]:
        if isinstance(v, str):
            parts.extend(p for p in re.split(r"[,\s]+", v.strip()) if p)
        else:
            parts.append(v)
    try:
        fr = [float(p) for p in parts]
    except ValueError:
        raise DataError(
            f"--split {' '.join(map(str, parts))} is not a list of numbers; "
            "give train [val [test]] fractions, e.g. --split 0.8 0.1 0.1"
        ) from None
    if not 1 <= len(fr) <= 3 or any(f < 0 or not math.isfinite(f) for f in fr):
        raise DataError(
            f"--split {' '.join(map(str, parts))} must be 1 to 3 non-negative fractions "
            "(train [val [test]]), e.g. --split 0.8 0.1 0.1"
        )
    if len(fr) < 3:
        rest = 1.0 - sum(fr)
        if rest < -1e-6:
            raise DataError(f"--split {' '.join(map(str, parts))} sums to more than 1; lower the fractions")
        # "0.8" -> 0.8 train, 0 val, 0.2 test; "0.8 0.1" -> 0.8 train, 0.1 val, 0.1 test
        fr = (fr + [0.0])[:2] + [max(rest, 0.0)]
    if abs(sum(fr) - 1.0) > 1e-6:
        raise DataError(
            f"--split {' '.join(map(str, parts))} sums to {sum(fr):g}; the train, val and test "
            "fractions must sum to 1"
        )
    if fr[0] <= 0:
        raise DataError(f"--split {' '.join(map(str, parts))} puts nothing in train; give train a fraction > 0")
    return tuple(fr)


def split_counts(n, fractions):
    """How many of ``n`` items go to each split (largest-remainder rounding).

    Every split with a positive fraction gets at least one item when ``n``
    allows it, so a tiny dataset still has a test set.
    """
    fractions = list(fractions)
    raw = [f * n for f in fractions]
    counts = [int(math.floor(r + 1e-9)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    for i in (0, 2, 1):  # train first, then test, then val
        if i < len(fractions) and fractions[i] > 0 and counts[i] == 0:
            donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[i] += 1
    return counts


def split_items(keys, fractions, seed=0):
    """Assign ``keys`` to train/val/test deterministically.

    The keys are sorted, shuffled with ``numpy.random.default_rng(seed)`` and cut
    according to :func:`split_counts`. Returns ``{"train": [...], "val": [...],
    "test": [...]}`` with each list sorted.
    """
    keys = sorted(keys)
    counts = split_counts(len(keys), fractions)
    perm = np.random.default_rng(seed).permutation(len(keys))
    out, start = {}, 0
    for split, c in zip(SPLITS, counts):
        out[split] = sorted(keys[i] for i in perm[start : start + c])
        start += c
    return out


# --------------------------------------------------------------------------------------
# Class files
# --------------------------------------------------------------------------------------


def class_files_payload(names, palette=None, ignore_index=DEFAULT_IGNORE_INDEX, extra=None):
    """The ``classes.txt`` text and ``dataset.json`` dict for a class list."""
    names = [str(n) for n in names]
    for n in names:
        if "\n" in n or "\r" in n:
            raise DataError(f"class name {n!r} contains a line break; rename the class")
    if palette is None:
        palette = voc_palette(max(len(names), 1))[: len(names)]
    palette = np.asarray(palette, dtype=np.int64).reshape(-1, 3)[: len(names)]
    if len(palette) < len(names):
        pad = voc_palette(len(names))[len(palette) :]
        palette = np.concatenate([palette, pad.astype(np.int64)], axis=0)
    meta = {
        "classes": names,
        "palette": [[int(c) for c in row] for row in palette],
        "ignore_index": int(ignore_index),
    }
    if extra:
        meta.update(extra)
    return "\n".join(names) + "\n", meta


def write_class_files(folder, names, palette=None, ignore_index=DEFAULT_IGNORE_INDEX, extra=None):
    """Write ``classes.txt`` and ``dataset.json`` into ``folder`` atomically."""
    text, meta = class_files_payload(names, palette, ignore_index, extra)
    with atomic_path(os.path.join(folder, "classes.txt")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    with atomic_path(os.path.join(folder, "dataset.json")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")


def read_class_files(folder):
    """Read ``classes.txt`` / ``dataset.json`` from a dataset folder.

    Returns a dict with ``classes`` (list or None), ``palette`` (list or None),
    ``ignore_index`` (int or None) and ``problems`` (list of strings describing
    inconsistencies between the two files).
    """
    out = {"classes": None, "palette": None, "ignore_index": None, "problems": []}
    txt = os.path.join(folder, "classes.txt")
    js = os.path.join(folder, "dataset.json")
    txt_names = None
    if os.path.isfile(txt):
        with open(txt, encoding="utf-8") as f:
            txt_names = [line.rstrip("\r\n") for line in f]
        while txt_names and not txt_names[-1].strip():
            txt_names.pop()
        out["classes"] = txt_names
    if os.path.isfile(js):
        try:
            with open(js, encoding="utf-8") as f:
                meta = json.load(f)
            if not isinstance(meta, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as e:
            out["problems"].append(f"{js} is not valid JSON ({e}); rewrite it or delete it")
            return out
        names = meta.get("classes")
        if names is not None:
            if txt_names is not None and list(map(str, names)) != txt_names:
                out["problems"].append(
                    f"{txt} and {js} list different classes; make them agree (or delete one)"
                )
            out["classes"] = list(map(str, names))
        if meta.get("palette") is not None:
            out["palette"] = meta["palette"]
        if meta.get("ignore_index") is not None:
            out["ignore_index"] = int(meta["ignore_index"])
    return out


# --------------------------------------------------------------------------------------
# Safe writing of a dataset folder
# --------------------------------------------------------------------------------------


def _non_empty_dir(path):
    return os.path.isdir(path) and any(not f.startswith(".") for f in os.listdir(path))


def _check_new_dir_free(path, overwrite, flag="--overwrite"):
    """Refuse to write into an existing non-empty folder unless ``overwrite``."""
    if not overwrite and _non_empty_dir(path):
        raise DataError(
            f"output folder {path} already exists and is not empty; choose another output "
            f"or pass {flag} to replace it"
        )


class StagedDir:
    """A folder written in a hidden staging folder and renamed into place on success.

    ``with StagedDir(final) as tmp: ...write into tmp...`` leaves ``final``
    untouched when the block raises; on success the staged folder replaces
    ``final`` (the old one is removed only after the new one is complete).
    """

    def __init__(self, final, overwrite=False):
        self.final = os.path.abspath(final)
        _check_new_dir_free(self.final, overwrite)
        parent = os.path.dirname(self.final)
        os.makedirs(parent, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent)

    def __enter__(self):
        return self.path

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return False
        _replace_dir(self.path, self.final)
        return False


def _replace_dir(src, dst):
    """Move folder ``src`` onto ``dst``; an existing ``dst`` is removed after the move."""
    if os.path.lexists(dst):
        trash = tempfile.mkdtemp(prefix=STAGING_PREFIX + "old-", dir=os.path.dirname(dst))
        old = os.path.join(trash, "old")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


class DatasetWriter:
    """Write a dataset folder so that a failure never leaves a partial dataset behind.

    Everything is written into a hidden staging folder; :meth:`commit` moves the
    finished ``<split>_<kind>`` folders and the class files into ``root``. If
    ``root`` did not exist, the whole staging folder is renamed to ``root`` in one
    step. Used as a context manager it commits on success and deletes the
    staging folder on error.

    Args:
        root: the dataset folder (``data/<name>``).
        splits: the splits this conversion owns. Their ``_image``, ``_label`` and
            ``_viz`` folders must not exist (non-empty) unless ``overwrite``; with
            ``overwrite`` they are all replaced (an owned split that ends up empty
            is removed, so no stale files from an earlier run remain).
        overwrite: allow replacing existing split folders and class files.
    """

    def __init__(self, root, splits=SPLITS, overwrite=False):
        self.root = os.path.abspath(root)
        self.splits = tuple(splits)
        self.overwrite = overwrite
        self.classes = None
        self._committed = False
        conflicts = []
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise DataError(f"output {self.root} exists and is not a folder; choose another output")
        for s in self.splits:
            for k in KINDS:
                d = os.path.join(self.root, f"{s}_{k}")
                if _non_empty_dir(d):
                    conflicts.append(os.path.basename(d))
        if conflicts and not overwrite:
            raise DataError(
                f"output {self.root} already holds {', '.join(conflicts)}; choose another output "
                "or pass --overwrite to replace them"
            )
        self._fresh = not os.path.exists(self.root)
        parent = os.path.dirname(self.root)
        os.makedirs(parent, exist_ok=True)
        if self._fresh:
            self.stage = tempfile.mkdtemp(prefix=f".{os.path.basename(self.root)}{STAGING_PREFIX}", dir=parent)
        else:
            self.stage = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root)
        self.counts = {}

    # -- paths -----------------------------------------------------------------------
    def folder(self, split, kind):
        """The staged folder for ``<split>_<kind>`` (created on first use)."""
        if split not in self.splits:
            raise ValueError(f"split {split!r} is not one of this writer's splits {self.splits}")
        d = os.path.join(self.stage, f"{split}_{kind}")
        os.makedirs(d, exist_ok=True)
        return d

    def path(self, split, kind, filename):
        """A staged file path ``<split>_<kind>/<filename>``."""
        self.counts[(split, kind)] = self.counts.get((split, kind), 0) + 1
        return os.path.join(self.folder(split, kind), filename)

    # -- writing ---------------------------------------------------------------------
    def copy_image(self, split, src, stem=None):
        """Copy an image file byte for byte (no re-encoding) under ``stem`` + its extension."""
        ext = os.path.splitext(src)[1].lower()
        if ext == ".jpeg":
            ext = ".jpg"
        stem = stem or os.path.splitext(os.path.basename(src))[0]
        dst = self.path(split, "image", stem + ext)
        shutil.copyfile(src, dst)
        return dst

    def write_image_bytes(self, split, stem, data, ext):
        """Write already-encoded image bytes as ``<stem><ext>``."""
        dst = self.path(split, "image", stem + ext)
        with open(dst, "wb") as f:
            f.write(data)
        return dst

    def write_label(self, split, stem, mask, palette=None):
        """Write an index mask as ``<split>_label/<stem>.png`` (palette PNG)."""
        from kseg.data.io import write_label

        dst = self.path(split, "label", stem + ".png")
        write_label(dst, mask, palette=palette)
        return dst

    def set_classes(self, names, palette=None, ignore_index=DEFAULT_IGNORE_INDEX, extra=None):
        """Remember the class list written to ``classes.txt`` / ``dataset.json`` on commit."""
        self.classes = (list(names), palette, ignore_index, extra)

    # -- commit / abort --------------------------------------------------------------
    def _class_conflict(self):
        if self.classes is None or self._fresh or self.overwrite:
            return None
        existing = read_class_files(self.root)
        if existing["classes"] is not None and existing["classes"] != [str(n) for n in self.classes[0]]:
            return (
                f"{self.root} already has a class list ({len(existing['classes'])} classes) that differs "
                f"from this conversion's ({len(self.classes[0])}); use the same class list or pass --overwrite"
            )
        return None

    def commit(self):
        """Move the staged folders and class files into ``root``."""
        if self._committed:
            return
        conflict = self._class_conflict()
        if conflict:
            self.abort()
            raise DataError(conflict)
        if self.classes is not None:
            names, palette, ignore_index, extra = self.classes
            write_class_files(self.stage, names, palette, ignore_index, extra)
        if self._fresh:
            os.replace(self.stage, self.root)
        else:
            for s in self.splits:
                for k in KINDS:
                    name = f"{s}_{k}"
                    staged = os.path.join(self.stage, name)
                    final = os.path.join(self.root, name)
                    if os.path.isdir(staged):
                        _replace_dir(staged, final)
                    elif self.overwrite and os.path.isdir(final):
                        shutil.rmtree(final)
            for f in ("classes.txt", "dataset.json"):
                staged = os.path.join(self.stage, f)
                if os.path.exists(staged):
                    os.replace(staged, os.path.join(self.root, f))
            shutil.rmtree(self.stage, ignore_errors=True)
        self._committed = True

    def abort(self):
        """Delete the staging folder; ``root`` is left as it was."""
        shutil.rmtree(self.stage, ignore_errors=True)
        self._committed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
            return False
        self.commit()
        return False


# --------------------------------------------------------------------------------------
# The dataset doctor
# --------------------------------------------------------------------------------------


class Issue:
    """One finding of the doctor: ``severity`` is ``error``, ``warning`` or ``info``."""

    def __init__(self, severity, code, message, files=()):
        self.severity = severity
        self.code = code
        self.message = message
        self.files = list(files)

    def to_dict(self):
        return {"severity": self.severity, "code": self.code, "message": self.message, "files": self.files}

    def __repr__(self):
        return f"Issue({self.severity}, {self.code}, {self.message!r})"


class DoctorReport:
    """The result of :func:`check_dataset`: issues plus statistics.

    Attributes:
        issues: list of :class:`Issue`.
        splits: ``{split: {"images": n, "labels": n, "pairs": n}}``.
        class_names: the class list used (from classes.txt/dataset.json, or generated).
        n_classes: number of classes checked against.
        pixels: ``{split: {value: pixel count}}`` over readable pairs (all values, incl. ignore
            and out-of-range).
        images: ``{split: {value: number of labels containing it}}``.
        frequencies: per-class frequency used for the weights (see :func:`median_frequency_weights`).
        class_weights: median-frequency class weights (list, one per class).
        duplicates: list of groups of image paths with identical pixels.
    """

    def __init__(self, root, ignore_index):
        self.root = root
        self.ignore_index = ignore_index
        self.issues = []
        self.splits = {}
        self.class_names = None
        self.n_classes = None
        self.n_classes_source = None
        self.pixels = {}
        self.images = {}
        self.frequencies = None
        self.class_weights = None
        self.weights_split = None
        self.duplicates = []
        self.image_sizes = {}

    def add(self, severity, code, message, files=()):
        self.issues.append(Issue(severity, code, message, files))

    @property
    def errors(self):
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self):
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self):
        """True when no error was found (warnings allowed)."""
        return not self.errors

    def codes(self, severity=None):
        """The set of issue codes (optionally of one severity)."""
        return {i.code for i in self.issues if severity is None or i.severity == severity}

    def to_dict(self):
        classes = []
        n = self.n_classes or 0
        for c in range(n):
            classes.append(
                {
                    "id": c,
                    "name": self.class_names[c] if self.class_names and c < len(self.class_names) else str(c),
                    "pixels": {s: int(v.get(c, 0)) for s, v in self.pixels.items()},
                    "images": {s: int(v.get(c, 0)) for s, v in self.images.items()},
                    "frequency": None if self.frequencies is None else self.frequencies[c],
                    "weight": None if self.class_weights is None else self.class_weights[c],
                }
            )
        return {
            "root": self.root,
            "ok": self.ok,
            "n_errors": len(self.errors),
            "n_warnings": len(self.warnings),
            "issues": [i.to_dict() for i in self.issues],
            "splits": self.splits,
            "n_classes": self.n_classes,
            "n_classes_source": self.n_classes_source,
            "ignore_index": self.ignore_index,
            "classes": classes,
            "label_values": {s: {str(k): int(v) for k, v in sorted(d.items())} for s, d in self.pixels.items()},
            "class_weights": self.class_weights,
            "class_weights_split": self.weights_split,
            "image_sizes": self.image_sizes,
            "duplicates": self.duplicates,
        }

    def format_text(self):
        """A human-readable report."""
        lines = [f"dataset: {self.root}"]
        for s, d in self.splits.items():
            lines.append(f"  {s}: {d['images']} images, {d['labels']} labels, {d['pairs']} pairs")
        if self.n_classes is not None:
            lines.append(f"classes: {self.n_classes} ({self.n_classes_source}); ignore value {self.ignore_index}")
        if self.n_classes:
            lines.append("")
            head = f"  {'id':>3}  {'name':<20}"
            splits = list(self.pixels)
            for s in splits:
                head += f" {s + ' px%':>10} {s + ' imgs':>10}"
            head += f" {'weight':>8}"
            lines.append(head)
            totals = {s: sum(v for k, v in self.pixels[s].items() if k != self.ignore_index) or 1 for s in splits}
            for c in range(self.n_classes):
                name = self.class_names[c] if self.class_names and c < len(self.class_names) else str(c)
                row = f"  {c:>3}  {name[:20]:<20}"
                for s in splits:
                    px = self.pixels[s].get(c, 0)
                    row += f" {100.0 * px / totals[s]:>9.2f}% {self.images[s].get(c, 0):>10}"
                w = self.class_weights[c] if self.class_weights else None
                row += f" {w:>8.3f}" if w is not None else f" {'-':>8}"
                lines.append(row)
            for s in splits:
                ign = self.pixels[s].get(self.ignore_index, 0)
                if ign:
                    tot = sum(self.pixels[s].values())
                    lines.append(f"  ignore ({self.ignore_index}) in {s}: {100.0 * ign / tot:.2f}% of pixels")
            if self.class_weights:
                lines.append(
                    f"  suggested class weights (median frequency, from {self.weights_split}): "
                    + ", ".join(f"{w:.4g}" for w in self.class_weights)
                )
        for sev in ("error", "warning", "info"):
            items = [i for i in self.issues if i.severity == sev]
            if not items:
                continue
            lines.append("")
            lines.append(f"{sev.upper()}S ({len(items)}):" if sev != "info" else "NOTES:")
            for i in items:
                lines.append(f"  [{i.code}] {i.message}")
        lines.append("")
        lines.append(
            f"result: {len(self.errors)} error(s), {len(self.warnings)} warning(s) -> "
            + ("OK" if self.ok else "FIX THE ERRORS ABOVE")
        )
        return "\n".join(lines)


def median_frequency_weights(pixels, image_totals, n_classes):
    """Median-frequency class weights (Eigen & Fergus, 2015).

    ``f_c`` = pixels of class ``c`` / total (non-ignore) pixels of the images in
    which ``c`` appears; ``w_c = median_k f_k / f_c`` over the classes that
    appear. Classes that never appear get weight 0.

    Args:
        pixels: ``{class: pixel count}``.
        image_totals: ``{class: summed non-ignore pixel count of the images containing it}``.
        n_classes: number of classes.

    Returns:
        ``(frequencies, weights)``: two lists of length ``n_classes`` (frequency
        ``None`` for absent classes).
    """
    freqs = []
    for c in range(n_classes):
        px, tot = pixels.get(c, 0), image_totals.get(c, 0)
        freqs.append(px / tot if px > 0 and tot > 0 else None)
    present = [f for f in freqs if f is not None]
    if not present:
        return freqs, [0.0] * n_classes
    med = float(np.median(present))
    return freqs, [float(med / f) if f is not None else 0.0 for f in freqs]


def _split_dirs(root):
    """``{split: {"image": path|None, "label": path|None}}`` for every ``<split>_image|label`` folder."""
    found = {}
    for name in sorted(os.listdir(root)):
        m = re.fullmatch(r"(.+)_(image|label)", name)
        if m and os.path.isdir(os.path.join(root, name)):
            found.setdefault(m.group(1), {"image": None, "label": None})[m.group(2)] = os.path.join(root, name)
    order = {s: i for i, s in enumerate(SPLITS)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _list_folder(folder, allowed, report, kind, split):
    """Files of ``folder`` by stem; reports duplicates, JPEG labels and foreign files."""
    by_stem, dups, foreign, jpeg_labels = {}, [], [], []
    for f in sorted(os.listdir(folder)):
        p = os.path.join(folder, f)
        if f.startswith(".") or not os.path.isfile(p):
            continue
        stem, ext = os.path.splitext(f)
        ext = ext.lower()
        if ext not in allowed:
            if kind == "label" and ext in (".jpg", ".jpeg"):
                jpeg_labels.append(p)
            elif ext not in SIDECAR_EXTENSIONS:
                foreign.append(p)
            continue
        if stem in by_stem:
            dups.append((by_stem[stem], p))
            continue
        by_stem[stem] = p
    if jpeg_labels:
        report.add(
            "error",
            "jpeg_label",
            f"{len(jpeg_labels)} label(s) in {folder} are JPEG files (e.g. {os.path.basename(jpeg_labels[0])}); "
            "JPEG compression changes class values: re-export the masks as PNG (threshold binary "
            "masks at 128 first)",
            jpeg_labels,
        )
    if foreign:
        report.add(
            "warning",
            "ignored_files",
            f"{len(foreign)} file(s) in {folder} are not {kind}s and are ignored "
            f"(e.g. {os.path.basename(foreign[0])})",
            foreign,
        )
    if dups:
        report.add(
            "error",
            "duplicate_stem",
            f"{len(dups)} {kind} stem(s) in {folder} are used twice (e.g. {os.path.basename(dups[0][0])} "
            f"and {os.path.basename(dups[0][1])}); rename or remove one of each",
            [p for d in dups for p in d],
        )
    return by_stem


def _examples(paths, n=3):
    names = [os.path.basename(p) for p in paths[:n]]
    return ", ".join(names) + (" ..." if len(paths) > n else "")


def _label_is_colour(path):
    try:
        with Image.open(path) as im:
            return im.mode in ("RGB", "RGBA")
    except Exception:
        return False


def check_dataset(root, n_classes=None, ignore_index=None, weights_split="train"):
    """Inspect a dataset folder and report problems and statistics.

    Checks: the ``<split>_image``/``<split>_label`` layout (a ``train`` split is
    required), pairing by stem (missing or duplicate files), unreadable images and
    labels, image/label size mismatches, colour (RGB) labels, JPEG labels, the
    label values found (values ``>= n_classes`` other than the ignore value are
    errors; labels that hold only 0 and 255 are flagged as binary masks that need
    255 -> 1), per-class pixel and image frequencies per split, median-frequency
    class weights, duplicate images (identical pixels) within and across splits,
    and agreement of ``classes.txt`` with ``dataset.json``.

    Args:
        root: the dataset folder.
        n_classes: number of classes; default from ``classes.txt``/``dataset.json``,
            else inferred from the largest label value.
        ignore_index: the ignore value; default from ``dataset.json``, else 255.
        weights_split: split whose frequencies give the class weights (falls back to
            all splits together when absent).

    Returns:
        A :class:`DoctorReport`; ``report.ok`` is False when an error was found.

    Raises:
        DataError: when ``root`` is not a folder.
    """
    if not os.path.isdir(root):
        raise DataError(f"dataset folder {root} does not exist; check the path (e.g. data/<name>)")
    meta = read_class_files(root)
    if ignore_index is None:
        ignore_index = meta["ignore_index"] if meta["ignore_index"] is not None else DEFAULT_IGNORE_INDEX
    report = DoctorReport(os.path.abspath(root), int(ignore_index))
    for p in meta["problems"]:
        report.add("error", "class_files", p)
    report.class_names = meta["classes"]
    if n_classes is not None:
        report.n_classes, report.n_classes_source = int(n_classes), "given"
        if meta["classes"] is not None and len(meta["classes"]) != int(n_classes):
            report.add(
                "warning",
                "class_files",
                f"n_classes={n_classes} but classes.txt/dataset.json list {len(meta['classes'])} classes; "
                "make them agree",
            )
    elif meta["classes"] is not None:
        report.n_classes, report.n_classes_source = len(meta["classes"]), "from classes.txt/dataset.json"
    if meta["palette"] is not None and meta["classes"] is not None and len(meta["palette"]) < len(meta["classes"]):
        report.add("warning", "class_files", f"dataset.json has fewer palette colours than classes in {root}")

    leftovers = [f for f in os.listdir(root) if f.startswith(STAGING_PREFIX)]
    if leftovers:
        report.add(
            "warning",
            "staging_leftover",
            f"{root} holds leftover staging folder(s) from an interrupted conversion "
            f"({', '.join(leftovers)}); delete them",
        )

    dirs = _split_dirs(root)
    if not dirs:
        sub = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
        report.add(
            "error",
            "layout",
            f"no <split>_image/<split>_label folders in {root} (found: {', '.join(sub) or 'nothing'}); "
            "expected train_image/, train_label/, test_image/, test_label/ (val_ optional)",
        )
        return report
    if "train" not in dirs:
        report.add("error", "layout", f"{root} has no train_image/train_label folders; training needs them")
    if not ({"val", "test"} & set(dirs)):
        report.add("warning", "layout", f"{root} has neither a val nor a test split; nothing to evaluate on")

    pairs = {}
    for split, d in dirs.items():
        if d["image"] is None or d["label"] is None:
            missing = "label" if d["label"] is None else "image"
            have = d["image"] or d["label"]
            sev = "warning" if (split == "test" and missing == "label") else "error"
            report.add(
                sev,
                "layout",
                f"{have} has no matching {split}_{missing} folder; add it"
                + (" (evaluation with --mIOU needs test labels)" if sev == "warning" else ""),
            )
            report.splits[split] = {
                "images": len(os.listdir(d["image"])) if d["image"] else 0,
                "labels": len(os.listdir(d["label"])) if d["label"] else 0,
                "pairs": 0,
            }
            continue
        ims = _list_folder(d["image"], IMAGE_EXTENSIONS, report, "image", split)
        lbs = _list_folder(d["label"], LABEL_EXTENSIONS, report, "label", split)
        no_label = sorted(set(ims) - set(lbs))
        no_image = sorted(set(lbs) - set(ims))
        if no_label:
            paths = [ims[s] for s in no_label]
            report.add(
                "error",
                "missing_label",
                f"{len(paths)} image(s) in {d['image']} have no label in {d['label']} "
                f"({_examples(paths)}); add the labels or remove the images",
                paths,
            )
        if no_image:
            paths = [lbs[s] for s in no_image]
            report.add(
                "error",
                "missing_image",
                f"{len(paths)} label(s) in {d['label']} have no image in {d['image']} "
                f"({_examples(paths)}); add the images or remove the labels",
                paths,
            )
        common = sorted(set(ims) & set(lbs))
        if not ims:
            report.add("error", "empty_split", f"{d['image']} holds no images")
        pairs[split] = [(ims[s], lbs[s]) for s in common]
        report.splits[split] = {"images": len(ims), "labels": len(lbs), "pairs": len(common)}

    unreadable_img, unreadable_lbl, rgb_lbl, mismatch, all_ignore = [], [], [], [], []
    hashes = {}
    values_files = {}  # value -> list of label files containing it
    image_totals = {}  # split -> {class: non-ignore pixels of images containing class}
    sizes = []
    for split, plist in pairs.items():
        px = report.pixels.setdefault(split, {})
        imgs = report.images.setdefault(split, {})
        tots = image_totals.setdefault(split, {})
        for ip, lp in plist:
            img = lbl = None
            try:
                img = read_image(ip)
            except DataError:
                unreadable_img.append(ip)
            try:
                lbl = read_label(lp)
            except DataError:
                (rgb_lbl if _label_is_colour(lp) else unreadable_lbl).append(lp)
            if img is not None:
                h = hashlib.md5()
                h.update(str(img.shape).encode())
                h.update(np.ascontiguousarray(img).tobytes())
                hashes.setdefault(h.hexdigest(), []).append((split, ip))
                sizes.append(img.shape[:2])
            if lbl is None:
                continue
            if img is not None and img.shape[:2] != lbl.shape:
                mismatch.append((ip, lp, img.shape[:2], lbl.shape))
            if lbl.min() < 0:
                unreadable_lbl.append(lp)
                continue
            counts = np.bincount(lbl.ravel().astype(np.int64))
            present = np.nonzero(counts)[0]
            valid = int(counts.sum() - (counts[ignore_index] if ignore_index < len(counts) else 0))
            if valid == 0:
                all_ignore.append(lp)
            for v in present:
                v = int(v)
                px[v] = px.get(v, 0) + int(counts[v])
                imgs[v] = imgs.get(v, 0) + 1
                if v != ignore_index:
                    tots[v] = tots.get(v, 0) + valid
                values_files.setdefault(v, []).append(lp)

    if unreadable_img:
        report.add(
            "error",
            "unreadable_image",
            f"{len(unreadable_img)} image(s) cannot be decoded ({_examples(unreadable_img)}); replace or remove them",
            unreadable_img,
        )
    if unreadable_lbl:
        report.add(
            "error",
            "unreadable_label",
            f"{len(unreadable_lbl)} label(s) cannot be read as class indices ({_examples(unreadable_lbl)}); "
            "replace or remove them",
            unreadable_lbl,
        )
    if rgb_lbl:
        report.add(
            "error",
            "rgb_label",
            f"{len(rgb_lbl)} label(s) are colour (RGB) masks, not class indices ({_examples(rgb_lbl)}); "
            "convert them with: python scripts/convert_colors.py to-index --input <label dir> "
            "--output <new dir> --table <classes.json|voc|camvid>",
            rgb_lbl,
        )
    if mismatch:
        ip, lp, si, sl = mismatch[0]
        report.add(
            "error",
            "size_mismatch",
            f"{len(mismatch)} image/label pair(s) differ in size, e.g. {os.path.basename(ip)} is "
            f"{si[1]}x{si[0]} but {os.path.basename(lp)} is {sl[1]}x{sl[0]}; re-export the label at "
            "the image's size",
            [p for m in mismatch for p in m[:2]],
        )
    if all_ignore:
        report.add(
            "warning",
            "all_ignore",
            f"{len(all_ignore)} label(s) hold only the ignore value {ignore_index} ({_examples(all_ignore)}); "
            "they contribute nothing to training",
            all_ignore,
        )

    values = sorted(values_files)
    non_ignore = [v for v in values if v != ignore_index]
    if values and set(values) <= {0, 255} and 255 in values and ignore_index == 255:
        files = values_files[255]
        report.add(
            "error",
            "binary_255",
            f"labels hold only the values 0 and 255 ({len(files)} file(s) contain 255, e.g. "
            f"{_examples(files, 1)}); 255 is the ignore value, so this looks like a binary 0/255 mask: "
            "map 255 -> 1 with: python scripts/convert_colors.py remap --input <label dir> --output "
            "<new dir> --binary_255_to_1",
            files,
        )
    if report.n_classes is None and non_ignore:
        report.n_classes = max(non_ignore) + 1
        report.n_classes_source = "inferred from the largest label value (no classes.txt)"
        report.add(
            "info",
            "n_classes_inferred",
            f"no classes.txt/dataset.json in {root}; assuming n_classes = {report.n_classes} "
            "(pass --n_classes to check against the real number)",
        )
    if report.n_classes is not None:
        bad = [v for v in non_ignore if v >= report.n_classes]
        if bad:
            files = sorted({f for v in bad for f in values_files[v]})
            shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
            report.add(
                "error",
                "value_out_of_range",
                f"label value(s) {shown} are >= n_classes={report.n_classes} and not the ignore value "
                f"{ignore_index} in {len(files)} file(s) (e.g. {_examples(files, 2)}); fix the labels, "
                "remap the values, or raise n_classes in classes.txt",
                files,
            )
        if report.class_names is None:
            report.class_names = [str(c) for c in range(report.n_classes)]

        wsplit = weights_split if weights_split in report.pixels else None
        if wsplit is not None:
            pix, tots = report.pixels[wsplit], image_totals[wsplit]
        else:
            pix, tots = {}, {}
            for s in report.pixels:
                for k, v in report.pixels[s].items():
                    pix[k] = pix.get(k, 0) + v
                for k, v in image_totals[s].items():
                    tots[k] = tots.get(k, 0) + v
        report.weights_split = wsplit or "all splits"
        if pix:
            report.frequencies, report.class_weights = median_frequency_weights(pix, tots, report.n_classes)
            absent = [c for c in range(report.n_classes) if pix.get(c, 0) == 0]
            if absent:
                names = [report.class_names[c] if c < len(report.class_names) else str(c) for c in absent]
                report.add(
                    "warning",
                    "absent_class",
                    f"class(es) {', '.join(f'{c} ({n})' for c, n in zip(absent[:10], names[:10]))} never appear "
                    f"in {report.weights_split}; the model cannot learn them",
                )
        for s, p in report.pixels.items():
            tot = sum(p.values())
            if tot and p.get(ignore_index, 0) / tot > 0.5:
                report.add(
                    "warning",
                    "mostly_ignore",
                    f"{100.0 * p[ignore_index] / tot:.1f}% of the {s} label pixels are the ignore value "
                    f"{ignore_index}; check the labels",
                )

    groups = [g for g in hashes.values() if len(g) > 1]
    cross = [g for g in groups if len({s for s, _ in g}) > 1]
    within = [g for g in groups if len({s for s, _ in g}) == 1]
    report.duplicates = [[f"{s}:{p}" for s, p in g] for g in groups]
    if cross:
        g = cross[0]
        report.add(
            "error",
            "duplicate_across_splits",
            f"{len(cross)} image(s) appear in more than one split (identical pixels), e.g. "
            + " and ".join(f"{s}/{os.path.basename(p)}" for s, p in g[:2])
            + "; evaluation would be inflated: keep each image in one split",
            [p for g in cross for _, p in g],
        )
    if within:
        g = within[0]
        report.add(
            "warning",
            "duplicate_within_split",
            f"{len(within)} group(s) of identical images inside a split, e.g. "
            + " and ".join(os.path.basename(p) for _, p in g[:2]),
            [p for g in within for _, p in g],
        )
    if sizes:
        hs = [s[0] for s in sizes]
        ws = [s[1] for s in sizes]
        report.image_sizes = {
            "min": [int(min(hs)), int(min(ws))],
            "max": [int(max(hs)), int(max(ws))],
            "distinct": len(set(sizes)),
        }
    return report
