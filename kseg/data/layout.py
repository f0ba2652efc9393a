"""The dataset folder contract: folder names, the class files, splits and safe writing.

A dataset folder (DESIGN.md section 4) looks like::

    data/<name>/train_image/*.jpg|png   train_label/*.png
    data/<name>/val_image/  (optional)  val_label/
    data/<name>/test_image/             test_label/
    data/<name>/classes.txt             one class name per line, line i = class id i
    data/<name>/dataset.json            {"classes": [...], "palette": [[r, g, b], ...], "ignore_index": 255,
                                         "input_channels": 4, "mean": [...], "std": [...]}

(``input_channels``, ``mean`` and ``std`` -- the images' channels and per-channel
normalisation, see :mod:`kseg.data.io` and :func:`kseg.data.preprocess.normalize` --
are optional; training takes them as the dataset's suggestions, like ``"train"``.)

This module is the one place that knows that contract:

* the split names (:data:`SPLITS`), the ``<split>_<kind>`` folder names
  (:func:`split_dir`, :func:`find_split_dirs`) and the accepted file extensions;
* THE reader (:func:`read_class_files`, :func:`read_class_file`) and THE writer
  (:func:`write_class_files`) of ``classes.txt`` / ``dataset.json``;
* the deterministic train/val/test split (:func:`parse_split`, :func:`split_items`);
* safe writing: :func:`atomic_path` (one file), :class:`StagedDir` (a folder) and
  :class:`DatasetWriter` (a dataset; every converter -- labelme, colour-coded,
  COCO -- uses it), so a failure never leaves a half-written file or dataset.

This module is below :mod:`kseg.data.io` (which imports the extensions and
:func:`atomic_path` from here) and encodes no image: converters write label
PNGs with :func:`kseg.data.io.write_label` at :meth:`DatasetWriter.label_path`.

Class-list rule (labelme's convention, the same for ``classes.txt``, a labelme
``labels.txt`` and the ``classes`` of ``dataset.json``):

* names are stripped of surrounding white space; blank lines are skipped;
* ``__ignore__`` may only be the FIRST entry; it names the ignore value (the
  dataset's ``ignore_index``, default 255) and is NOT a class;
* ``_background_`` is an ordinary class name, but only as class 0 (the first
  entry after ``__ignore__``), because unlabelled pixels are class 0.

So ``__ignore__ / _background_ / cat`` is the class list ``["_background_", "cat"]``.
When both files exist, ``dataset.json`` wins and a disagreement is reported.
"""

import dataclasses
import json
import math
import os
import re

import numpy as np

from kseg.config import IGNORE_INDEX, MAX_CLASSES, MAX_LABEL_VALUE
from kseg.data.palette import voc_palette
from kseg.errors import DataError
from kseg.files import atomic_path

SPLITS = ("train", "val", "test")
KINDS = ("image", "label", "viz")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")
# Files a tool may leave next to a dataset's images that are not data (manifests, notes).
SIDECAR_EXTENSIONS = (".json", ".txt", ".csv", ".md")
CLASSES_TXT = "classes.txt"
DATASET_JSON = "dataset.json"
IGNORE_NAME = "__ignore__"
BACKGROUND_NAME = "_background_"


# --------------------------------------------------------------------------------------
# Folder names
# --------------------------------------------------------------------------------------


def split_dir(root, split, kind):
    """``<root>/<split>_<kind>`` (kind ``image``, ``label`` or ``viz``)."""
    return os.path.join(root, f"{split}_{kind}")


def find_split_dirs(root):
    """``{split: {"image": path|None, "label": path|None}}`` for every ``<split>_image|label`` folder.

    Splits come in the order train, val, test, then any other name sorted.
    """
    found = {}
    for name in sorted(os.listdir(root)):
        m = re.fullmatch(r"(.+)_(image|label)", name)
        if m and os.path.isdir(os.path.join(root, name)):
            found.setdefault(m.group(1), {"image": None, "label": None})[m.group(2)] = os.path.join(root, name)
    order = {s: i for i, s in enumerate(SPLITS)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


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
    shown = " ".join(map(str, parts))
    try:
        fr = [float(p) for p in parts]
    except ValueError:
        raise DataError(
            f"--split {shown} is not a list of numbers; give train [val [test]] fractions, e.g. --split 0.8 0.1 0.1"
        ) from None
    if not 1 <= len(fr) <= 3 or any(f < 0 or not math.isfinite(f) for f in fr):
        raise DataError(
            f"--split {shown} must be 1 to 3 non-negative fractions (train [val [test]]), e.g. --split 0.8 0.1 0.1"
        )
    if len(fr) < 3:
        rest = 1.0 - sum(fr)
        if rest < -1e-6:
            raise DataError(f"--split {shown} sums to more than 1; lower the fractions")
        # "0.8" -> 0.8 train, 0 val, 0.2 test; "0.8 0.1" -> 0.8 train, 0.1 val, 0.1 test
        fr = (fr + [0.0])[:2] + [max(rest, 0.0)]
    if abs(sum(fr) - 1.0) > 1e-6:
        raise DataError(f"--split {shown} sums to {sum(fr):g}; the train, val and test fractions must sum to 1")
    if fr[0] <= 0:
        raise DataError(f"--split {shown} puts nothing in train; give train a fraction > 0")
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
# Reading the class files
# --------------------------------------------------------------------------------------


def class_names_from_lines(lines, source):
    """Apply the class-list rule (module docstring) to the lines / names of ``source``.

    Returns the class names (without ``__ignore__``). Raises :class:`DataError`
    when ``__ignore__`` is not the first entry or ``_background_`` is not class 0.
    """
    names = [str(n).strip() for n in lines]
    names = [n for n in names if n]
    if IGNORE_NAME in names:
        if names.index(IGNORE_NAME) != 0 or names.count(IGNORE_NAME) > 1:
            raise DataError(
                f"{source}: {IGNORE_NAME} must be the first line (labelme's convention: it names the "
                "ignore value, not a class); move it to the top or delete it"
            )
        names = names[1:]
    if BACKGROUND_NAME in names and names.index(BACKGROUND_NAME) != 0:
        raise DataError(
            f"{source}: {BACKGROUND_NAME} must be the first class (after {IGNORE_NAME}); unlabelled pixels are class 0"
        )
    if len(names) > MAX_CLASSES:
        raise DataError(
            f"{source} lists {len(names)} classes; at most {MAX_CLASSES} are possible (label values are 16-bit)"
        )
    return names


def _read_text_lines(path):
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read().splitlines()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}; check the path") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; save it as UTF-8") from None


def _read_json(path):
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}; check the path") from None
    except ValueError as e:
        raise DataError(f"{path} is not valid JSON ({e}); fix it or delete it") from None


def _json_class_names(obj, source):
    """Class names of a parsed JSON object: ``{"classes": [...]}`` or a bare list; None without a list."""
    names = obj.get("classes") if isinstance(obj, dict) else obj
    if names is None and isinstance(obj, dict):
        return None
    problem = _field_problem("classes", names)
    if problem:
        raise DataError(f"{source}: {problem}")
    flat = [n["name"] if isinstance(n, dict) else n for n in names]
    return class_names_from_lines(flat, source)


# --------------------------------------------------------------------------------------
# The fields of dataset.json and their types
# --------------------------------------------------------------------------------------


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_color(v):
    return isinstance(v, list) and len(v) == 3 and all(_is_int(c) and 0 <= c <= 255 for c in v)


def _is_class_name(v):
    return isinstance(v, str) or (isinstance(v, dict) and isinstance(v.get("name"), str))


#: Every field of ``dataset.json`` kseg defines: ``name -> (expected type in words, test)``.
#: ``null`` counts as absent; other fields (a tool's own notes) are kept unread. The
#: options inside ``"train"`` are checked by :func:`kseg.data.dataset.dataset_train_options`.
META_FIELDS = {
    "classes": ('a list of class names (text, or {"name": text} objects)',
                lambda v: isinstance(v, list) and all(_is_class_name(n) for n in v)),
    "palette": ("a list of [r, g, b] colours, each three integers 0-255",
                lambda v: isinstance(v, list) and all(_is_color(c) for c in v)),
    "ignore_index": (f"an integer from 0 to {MAX_LABEL_VALUE} (or -1: none)",
                     lambda v: _is_int(v) and -1 <= v <= MAX_LABEL_VALUE),
    "input_size": ("[height, width], two positive integers",
                   lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v)),
    "input_channels": ("a positive integer (1 grey, 3 RGB, N bands)", lambda v: _is_int(v) and v > 0),
    "mean": ("a list of numbers, one per input channel, in the images' units",
             lambda v: isinstance(v, list) and v != [] and all(_is_number(x) for x in v)),
    "std": ("a list of positive numbers, one per input channel, in the images' units",
            lambda v: isinstance(v, list) and v != [] and all(_is_number(x) and x > 0 for x in v)),
    "epochs": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "augment": ("true or false", lambda v: isinstance(v, bool)),
    "train": ("an object of training options", lambda v: isinstance(v, dict)),
    "name": ("text", lambda v: isinstance(v, str)),
    "description": ("text", lambda v: isinstance(v, str)),
    "source": ("text", lambda v: isinstance(v, str)),
    "version": ("an integer", _is_int),
    "seed": ("an integer", _is_int),
    "ignore_colors": ('a list of colours ("#rrggbb" or [r, g, b])',
                      lambda v: isinstance(v, list) and all(isinstance(c, str) or _is_color(c) for c in v)),
    "category_ids": ("text", lambda v: isinstance(v, str)),
    "coco_category_to_class": ("an object", lambda v: isinstance(v, dict)),
}


def _shown(value, limit=60):
    text = json.dumps(value) if not isinstance(value, (set, tuple)) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field_problem(key, value):
    """``'"<key>" must be <type>, not <value>; fix the file'`` when ``value`` is not of the
    field's type, else None (``null`` and unknown fields are never a problem)."""
    if value is None or key not in META_FIELDS:
        return None
    what, ok = META_FIELDS[key]
    if ok(value):
        return None
    return f'"{key}" must be {what}, not {_shown(value)}; fix the file'


def check_meta_fields(meta, path):
    """Problems of a parsed ``dataset.json`` object, one line each naming ``path``, the field
    and the expected type; ``[]`` when every field has its type (:data:`META_FIELDS`)."""
    out = []
    for key in META_FIELDS:
        problem = _field_problem(key, meta.get(key))
        if problem:
            out.append((key, f"{path}: {problem}"))
    return out


def read_class_file(path):
    """The class names in one file: a ``.json`` (``dataset.json`` or a bare list) or a text file.

    Applies the class-list rule (module docstring). Raises :class:`DataError`
    when the file cannot be read or holds no class list.
    """
    if path.lower().endswith(".json"):
        names = _json_class_names(_read_json(path), path)
        if names is None:
            raise DataError(f"{path} has no 'classes' list; add one")
        return names
    return class_names_from_lines(_read_text_lines(path), path)


@dataclasses.dataclass
class ClassFiles:
    """What ``classes.txt`` / ``dataset.json`` of a folder say (see :func:`read_class_files`).

    Attributes:
        classes: class names (``__ignore__`` removed), or None when neither file names them.
        palette: ``dataset.json``'s palette (list of ``[r, g, b]``) or None.
        ignore_index: ``dataset.json``'s ignore value, or None when it names none
            (callers then use :data:`kseg.config.IGNORE_INDEX`).
        meta: the whole ``dataset.json`` object (``{}`` without one).
        problems: one-line descriptions of what is wrong with the files.
    """

    classes: list = None
    palette: list = None
    ignore_index: int = None
    meta: dict = dataclasses.field(default_factory=dict)
    problems: list = dataclasses.field(default_factory=list)


def read_class_files(folder, strict=True):
    """THE reader of a dataset folder's ``classes.txt`` and ``dataset.json`` (both optional).

    ``dataset.json``'s class list wins over ``classes.txt``; when both list
    classes and disagree (after the class-list rule) that is recorded in
    ``problems``. With ``strict`` (training, conversion) an unreadable or invalid
    file raises :class:`DataError`; without (the doctor) it is recorded in
    ``problems`` and the other file is still read.

    Returns:
        A :class:`ClassFiles`.
    """
    out = ClassFiles()
    txt = os.path.join(folder, CLASSES_TXT)
    js = os.path.join(folder, DATASET_JSON)

    def attempt(fn):
        """``fn()``; a DataError is raised (strict) or recorded, giving None."""
        try:
            return fn()
        except DataError as e:
            if strict:
                raise
            out.problems.append(str(e))
            return None

    txt_names = attempt(lambda: read_class_file(txt)) if os.path.isfile(txt) else None
    out.classes = txt_names
    meta = attempt(lambda: _read_meta(js)) if os.path.isfile(js) else None
    if meta is None:
        return out
    bad = check_meta_fields(meta, js)
    if bad and strict:
        raise DataError(bad[0][1])
    out.problems.extend(msg for _, msg in bad)
    meta = {k: v for k, v in meta.items() if k not in {key for key, _ in bad}}  # the doctor reads the rest
    out.meta = meta
    names = attempt(lambda: _json_class_names(meta, js))
    if names is not None:
        if txt_names is not None and names != txt_names:
            out.problems.append(f"{txt} and {js} list different classes; make them agree (or delete one)")
        out.classes = names
    out.palette = meta.get("palette")
    out.ignore_index = attempt(lambda: _meta_ignore_index(meta, js))
    return out


def _read_meta(path):
    meta = _read_json(path)
    if isinstance(meta, list):  # a bare class list
        return {"classes": meta}
    if not isinstance(meta, dict):
        raise DataError(f"{path} is not a JSON object; rewrite it or delete it")
    return meta


def _meta_ignore_index(meta, path):
    value = meta.get("ignore_index")
    if value is None:
        return None
    problem = _field_problem("ignore_index", value)
    if problem:
        raise DataError(f"{path}: {problem}")
    return int(value)


# --------------------------------------------------------------------------------------
# Writing the class files
# --------------------------------------------------------------------------------------


def check_class_names(names):
    names = [str(n) for n in names]
    for i, n in enumerate(names):
        if "\n" in n or "\r" in n:
            raise DataError(f"class name {n!r} contains a line break; rename the class")
        if not n.strip() or n != n.strip():
            raise DataError(f"class {i} has the name {n!r}; class names must be non-empty without surrounding spaces")
        if n == IGNORE_NAME:
            raise DataError(
                f"{IGNORE_NAME} names the ignore value, not a class (class {i}); remove it from the classes"
            )
        if n == BACKGROUND_NAME and i != 0:
            raise DataError(f"{BACKGROUND_NAME} is class {i} but may only be class 0; rename or reorder the classes")
    return names


def class_files_payload(names, palette=None, ignore_index=IGNORE_INDEX, extra=None):
    """The ``classes.txt`` text and ``dataset.json`` dict for a class list.

    ``classes.txt`` lists the classes only (no ``__ignore__`` line: the ignore value
    is ``dataset.json``'s ``ignore_index``); reading both back with
    :func:`read_class_files` gives ``names`` again.
    """
    names = check_class_names(names)
    pal = voc_palette(max(len(names), 1))[: len(names)].astype(np.int64)
    if palette is not None:
        given = np.asarray(palette, dtype=np.int64).reshape(-1, 3)[: len(names)]
        pal[: len(given)] = given
    meta = {
        "classes": names,
        "palette": [[int(c) for c in row] for row in pal],
        "ignore_index": int(ignore_index),
    }
    if extra:
        meta.update(extra)
    return "\n".join(names) + "\n", meta


def write_class_files(folder, names, palette=None, ignore_index=IGNORE_INDEX, extra=None):
    """THE writer of ``classes.txt`` and ``dataset.json`` (into ``folder``, atomically)."""
    text, meta = class_files_payload(names, palette, ignore_index, extra)
    with atomic_path(os.path.join(folder, CLASSES_TXT)) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    with atomic_path(os.path.join(folder, DATASET_JSON)) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
