"""The dataset doctor: named checks of a dataset folder, and their report.

:func:`check_dataset` inspects a dataset folder (the contract of
:mod:`kseg.data.layout`) and reports everything that would make training fail
or silently go wrong. It runs these named checks, in order, each adding
:class:`Issue` s (``error``, ``warning`` or ``info``) to one :class:`DoctorReport`:

* :func:`check_class_files` -- ``classes.txt`` / ``dataset.json`` readable and agreeing;
* :func:`check_staging_leftovers` -- hidden folders of an interrupted conversion;
* :func:`check_layout` -- the ``<split>_image`` / ``<split>_label`` folders;
* :func:`check_pairing` -- images and labels paired by stem (missing, duplicate,
  JPEG labels, foreign files);
* :func:`scan_files` + :func:`check_readability` -- every image and label decoded
  by :mod:`kseg.data.io`, the readers training's scan and ``tf.data`` pipeline use
  (so the doctor, the scan and training always agree on which files are bad, with
  the same message), sizes agree, colour (RGB) labels, all-ignore labels;
* :func:`check_channels` -- images whose channels the model's ``input_channels``
  (given, ``dataset.json``'s, else 3) cannot take (the reader's message, the one
  training gives), 8- and 16-bit images mixed, and the per-channel mean / std
  (:class:`kseg.data.stats.ChannelStats`) to put in ``dataset.json``;
* :func:`check_label_values` -- 0/255 binary masks, values out of range,
  the number of classes when no class file names it;
* :func:`check_class_statistics` -- per-class pixels, absent classes, the
  suggested class weights (:mod:`kseg.data.stats`: the same functions training's
  ``--class_weights auto|enet`` uses), mostly-ignore splits;
* :func:`check_duplicates` -- identical images within and across splits.
"""

import dataclasses
import hashlib
import os

import numpy as np

from kseg.config import IGNORE_INDEX, label_values
from kseg.data.io import decode_image, read_label, to_channels
from kseg.data.layout import (
    IMAGE_EXTENSIONS,
    LABEL_EXTENSIONS,
    SIDECAR_EXTENSIONS,
    find_split_dirs,
    read_class_files,
)
from kseg.data.stats import ChannelStats, LabelCounter, enet_weights, is_binary_255, median_frequency_weights
from kseg.errors import DataError
from kseg.files import STAGING_PREFIX

#: What kseg.data.io.read_label says of a colour-coded label (reported as ``rgb_label``).
_COLOUR_LABEL = "is a colour (RGB) mask"


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
        n_classes: number of classes (model outputs) checked against; a 1 (sigmoid)
            means the two classes 0 and 1 (:func:`kseg.config.label_values`).
        pixels: ``{split: {value: pixel count}}`` over readable pairs (all values, incl. ignore
            and out-of-range).
        images: ``{split: {value: number of labels containing it}}``.
        frequencies: per-class median-frequency ``freq(c)`` (None for absent classes), see
            :func:`kseg.data.stats.median_frequency_weights`.
        class_weights: the median-frequency class weights (list, one per class) that
            training's ``--class_weights auto`` computes from the same labels.
        enet_weights: ENet's class weights (``--class_weights enet``).
        weights_split: the split the weights were computed on.
        duplicates: list of groups of image paths with identical pixels.
        input_channels: the channels the images were checked against (and where that came from:
            ``input_channels_source``).
        image_types: ``{split: {"4 bands (multi-band), 16-bit": n}}``: the images' own channels and bits.
        channel_mean, channel_std: per-channel mean / std of the images as the model takes them,
            in their own units (``dataset.json``'s ``mean`` / ``std``), from ``channel_split``.
    """

    def __init__(self, root, ignore_index, input_channels=3):
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
        self.enet_weights = None
        self.weights_split = None
        self.duplicates = []
        self.image_sizes = {}
        self.input_channels = int(input_channels)
        self.input_channels_source = "default"
        self.image_types = {}
        self.channel_mean = None
        self.channel_std = None
        self.channel_split = None

    def n_values(self):
        """Number of classes (label values) of the report (0 while unknown)."""
        return label_values(self.n_classes) if self.n_classes else 0

    def name(self, c):
        """The name of class ``c`` (its id when unnamed)."""
        return self.class_names[c] if self.class_names and c < len(self.class_names) else str(c)

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
        """The report as a JSON-able dict (what ``check_dataset.py --json`` prints)."""
        classes = []
        for c in range(self.n_values()):
            classes.append(
                {
                    "id": c,
                    "name": self.name(c),
                    "pixels": {s: int(v.get(c, 0)) for s, v in self.pixels.items()},
                    "images": {s: int(v.get(c, 0)) for s, v in self.images.items()},
                    "frequency": None if self.frequencies is None else self.frequencies[c],
                    "weight": None if self.class_weights is None else self.class_weights[c],
                    "enet_weight": None if self.enet_weights is None else self.enet_weights[c],
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
            "class_weights_enet": self.enet_weights,
            "class_weights_split": self.weights_split,
            "image_sizes": self.image_sizes,
            "duplicates": self.duplicates,
            "input_channels": self.input_channels,
            "input_channels_source": self.input_channels_source,
            "image_types": self.image_types,
            "channel_mean": self.channel_mean,
            "channel_std": self.channel_std,
            "channel_split": self.channel_split,
        }

    def format_text(self):
        """A human-readable report."""
        lines = [f"dataset: {self.root}"]
        for s, d in self.splits.items():
            lines.append(f"  {s}: {d['images']} images, {d['labels']} labels, {d['pairs']} pairs")
        types = sorted({t for d in self.image_types.values() for t in d})
        lines.append(f"input channels: {self.input_channels} ({self.input_channels_source})"
                     + (f"; images: {', '.join(types)}" if types else ""))
        if self.channel_mean is not None:
            lines.append(f"  per-channel mean {_numbers(self.channel_mean)}, std {_numbers(self.channel_std)} "
                         f"({self.channel_split} images, their own units)")
        if self.n_classes is not None:
            lines.append(f"classes: {self.n_classes} ({self.n_classes_source}); ignore value {self.ignore_index}")
        if self.n_classes:
            lines += self._class_table()
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

    def _class_table(self):
        """Lines of the per-class table, the ignore shares and the suggested weights."""
        lines = [""]
        splits = list(self.pixels)
        head = f"  {'id':>3}  {'name':<20}"
        for s in splits:
            head += f" {s + ' px%':>10} {s + ' imgs':>10}"
        lines.append(head + f" {'weight':>8} {'enet':>8}")
        totals = {s: sum(v for k, v in self.pixels[s].items() if k != self.ignore_index) or 1 for s in splits}
        for c in range(self.n_values()):
            row = f"  {c:>3}  {self.name(c)[:20]:<20}"
            for s in splits:
                px = self.pixels[s].get(c, 0)
                row += f" {100.0 * px / totals[s]:>9.2f}% {self.images[s].get(c, 0):>10}"
            for ws in (self.class_weights, self.enet_weights):
                row += f" {ws[c]:>8.3f}" if ws else f" {'-':>8}"
            lines.append(row)
        for s in splits:
            ign = self.pixels[s].get(self.ignore_index, 0)
            if ign:
                tot = sum(self.pixels[s].values())
                lines.append(f"  ignore ({self.ignore_index}) in {s}: {100.0 * ign / tot:.2f}% of pixels")
        if self.class_weights:
            lines.append(
                f"  suggested class weights (--class_weights auto = median frequency, from {self.weights_split}): "
                + ", ".join(f"{w:.4g}" for w in self.class_weights)
            )
            lines.append("  ENet class weights (--class_weights enet): "
                         + ", ".join(f"{w:.4g}" for w in self.enet_weights))
        return lines


def check_dataset(root, n_classes=None, ignore_index=None, weights_split="train", input_channels=None):
    """Inspect a dataset folder and report problems and statistics.

    Runs the named checks listed in the module docstring.

    Args:
        root: the dataset folder.
        n_classes: number of classes; default from ``classes.txt``/``dataset.json``,
            else inferred from the largest label value.
        ignore_index: the ignore value; default from ``dataset.json``, else 255.
        weights_split: split whose labels give the class weights and whose images the
            per-channel mean / std (falls back to all splits together when absent).
        input_channels: the model's input channels; default from ``dataset.json``, else 3.

    Returns:
        A :class:`DoctorReport`; ``report.ok`` is False when an error was found.

    Raises:
        DataError: when ``root`` is not a folder.
    """
    if not os.path.isdir(root):
        raise DataError(f"dataset folder {root} does not exist; check the path (e.g. data/<name>)")
    files = read_class_files(root, strict=False)
    if ignore_index is None:
        ignore_index = files.ignore_index if files.ignore_index is not None else IGNORE_INDEX
    source = "given"
    if input_channels is None:
        input_channels, source = files.meta.get("input_channels"), "from dataset.json"
    if input_channels is None:
        input_channels, source = 3, "default: RGB"
    report = DoctorReport(os.path.abspath(root), int(ignore_index), input_channels)
    report.input_channels_source = source
    check_class_files(report, files, n_classes)
    check_staging_leftovers(report, root)
    dirs = find_split_dirs(root)
    if not check_layout(report, root, dirs):
        return report
    scan = scan_files(report, check_pairing(report, dirs))
    check_readability(report, scan)
    check_channels(report, scan, files.meta, weights_split)
    check_label_values(report, scan, root)
    check_class_statistics(report, scan, weights_split)
    check_duplicates(report, scan)
    return report


# --------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------


def check_class_files(report, files, n_classes=None):
    """Problems of ``classes.txt``/``dataset.json`` (errors); sets the class names and ``n_classes``."""
    for p in files.problems:
        report.add("error", "class_files", p)
    report.class_names = files.classes
    if n_classes is not None:
        report.n_classes, report.n_classes_source = int(n_classes), "given"
        k = label_values(n_classes)
        if files.classes is not None and len(files.classes) != k:
            report.add(
                "warning",
                "class_files",
                f"n_classes={n_classes} ({k} classes) but classes.txt/dataset.json list {len(files.classes)} "
                "classes; make them agree",
            )
    elif files.classes is not None:
        report.n_classes, report.n_classes_source = len(files.classes), "from classes.txt/dataset.json"
    if files.palette is not None and files.classes is not None and len(files.palette) < len(files.classes):
        report.add("warning", "class_files", f"dataset.json has fewer palette colours than classes in {report.root}")


def check_staging_leftovers(report, root):
    """Hidden staging folders left by an interrupted conversion (warning)."""
    leftovers = sorted(f for f in os.listdir(root) if f.startswith(STAGING_PREFIX))
    if leftovers:
        report.add(
            "warning",
            "staging_leftover",
            f"{root} holds leftover staging folder(s) from an interrupted conversion "
            f"({', '.join(leftovers)}); delete them",
        )


def check_layout(report, root, dirs):
    """The ``<split>_image``/``<split>_label`` folders; False when there are none at all."""
    if not dirs:
        sub = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
        report.add(
            "error",
            "layout",
            f"no <split>_image/<split>_label folders in {root} (found: {', '.join(sub) or 'nothing'}); "
            "expected train_image/, train_label/, test_image/, test_label/ (val_ optional)",
        )
        return False
    if "train" not in dirs:
        report.add("error", "layout", f"{root} has no train_image/train_label folders; training needs them")
    if not ({"val", "test"} & set(dirs)):
        report.add("warning", "layout", f"{root} has neither a val nor a test split; nothing to evaluate on")
    for split, d in dirs.items():
        if d["image"] is None or d["label"] is None:
            missing = "label" if d["label"] is None else "image"
            sev = "warning" if (split == "test" and missing == "label") else "error"
            report.add(
                sev,
                "layout",
                f"{d['image'] or d['label']} has no matching {split}_{missing} folder; add it"
                + (" (evaluation with --mIOU needs test labels)" if sev == "warning" else ""),
            )
    return True


def check_pairing(report, dirs):
    """Pair images and labels by stem in every split; returns ``{split: [(image, label), ...]}``."""
    pairs = {}
    for split, d in dirs.items():
        if d["image"] is None or d["label"] is None:  # reported by check_layout
            report.splits[split] = {
                "images": len(os.listdir(d["image"])) if d["image"] else 0,
                "labels": len(os.listdir(d["label"])) if d["label"] else 0,
                "pairs": 0,
            }
            continue
        ims = _list_folder(d["image"], IMAGE_EXTENSIONS, report, "image", split)
        lbs = _list_folder(d["label"], LABEL_EXTENSIONS, report, "label", split)
        for code, have, other, folder, other_folder, fix in (
            ("missing_label", ims, lbs, d["image"], d["label"], "add the labels or remove the images"),
            ("missing_image", lbs, ims, d["label"], d["image"], "add the images or remove the labels"),
        ):
            paths = [have[s] for s in sorted(set(have) - set(other))]
            if paths:
                what = "image(s)" if code == "missing_label" else "label(s)"
                lacks = "label" if code == "missing_label" else "image"
                report.add(
                    "error",
                    code,
                    f"{len(paths)} {what} in {folder} have no {lacks} in {other_folder} ({_examples(paths)}); {fix}",
                    paths,
                )
        common = sorted(set(ims) & set(lbs))
        if not ims:
            report.add("error", "empty_split", f"{d['image']} holds no images")
        pairs[split] = [(ims[s], lbs[s]) for s in common]
        report.splits[split] = {"images": len(ims), "labels": len(lbs), "pairs": len(common)}
    return pairs


@dataclasses.dataclass
class FileScan:
    """What :func:`scan_files` found while decoding every pair."""

    ignore_index: int
    counters: dict = dataclasses.field(default_factory=dict)  # split -> LabelCounter
    unreadable_images: list = dataclasses.field(default_factory=list)
    unreadable_labels: list = dataclasses.field(default_factory=list)
    rgb_labels: list = dataclasses.field(default_factory=list)
    reasons: dict = dataclasses.field(default_factory=dict)  # path -> the reader's one-line message
    mismatches: list = dataclasses.field(default_factory=list)  # (image, label, image hw, label hw)
    all_ignore: list = dataclasses.field(default_factory=list)
    hashes: dict = dataclasses.field(default_factory=dict)  # md5 of the pixels -> [(split, image)]
    value_files: dict = dataclasses.field(default_factory=dict)  # label value -> [label files]
    sizes: list = dataclasses.field(default_factory=list)  # (h, w) of every readable image
    input_channels: int = 3
    channel_misfits: list = dataclasses.field(default_factory=list)  # images the model cannot take
    image_types: dict = dataclasses.field(default_factory=dict)  # split -> {description: count}
    channel_stats: dict = dataclasses.field(default_factory=dict)  # split -> ChannelStats


def scan_files(report, pairs):
    """Decode every image and label once; fills ``report.pixels``/``report.images``."""
    scan = FileScan(report.ignore_index, input_channels=report.input_channels)
    for split, plist in pairs.items():
        counter = scan.counters.setdefault(split, LabelCounter(report.ignore_index))
        for ip, lp in plist:
            img = _scan_image(scan, split, ip)
            try:
                lbl = read_label(lp)
            except DataError as e:
                scan.reasons[lp] = str(e)
                (scan.rgb_labels if _COLOUR_LABEL in str(e) else scan.unreadable_labels).append(lp)
                continue
            if img is not None and img.shape[:2] != lbl.shape:
                scan.mismatches.append((ip, lp, img.shape[:2], lbl.shape))
            try:
                counts = counter.add(lbl)
            except DataError as e:  # negative values
                scan.reasons[lp] = f"label {lp}: {e}"
                scan.unreadable_labels.append(lp)
                continue
            ign = report.ignore_index
            if counts.sum() - (counts[ign] if 0 <= ign < len(counts) else 0) == 0:
                scan.all_ignore.append(lp)
            for v in np.flatnonzero(counts):
                scan.value_files.setdefault(int(v), []).append(lp)
        report.pixels[split] = counter.values()
        report.images[split] = counter.images_with()
    return scan


def _scan_image(scan, split, path):
    """Decode an image as training does (the same reader, fitted to the model's channels)."""
    try:
        decoded = decode_image(path)
    except DataError as e:
        scan.reasons[path] = str(e)
        scan.unreadable_images.append(path)
        return None
    raw = decoded.pixels
    kind = f"{raw.shape[2]} {'band' if raw.shape[2] > 4 and not decoded.alpha else 'channel'}" \
           f"{'s' if raw.shape[2] > 1 else ''}, {8 * raw.dtype.itemsize}-bit"
    types = scan.image_types.setdefault(split, {})
    types[kind] = types.get(kind, 0) + 1
    try:
        img = to_channels(decoded, scan.input_channels, path)
    except DataError as e:  # the message training's scan gives
        scan.reasons[path] = str(e)
        scan.channel_misfits.append(path)
        img = raw  # still checked for size and duplicates
    else:
        scan.channel_stats.setdefault(split, ChannelStats()).add(img)
    h = hashlib.md5()
    h.update(str(img.shape).encode())
    h.update(np.ascontiguousarray(img).tobytes())
    scan.hashes.setdefault(h.hexdigest(), []).append((split, path))
    scan.sizes.append(img.shape[:2])
    return img


def check_readability(report, scan):
    """Undecodable images/labels, colour labels, size mismatches (errors); all-ignore labels (warning)."""
    for code, files, what in (("unreadable_image", scan.unreadable_images, "image(s) cannot be decoded"),
                              ("unreadable_label", scan.unreadable_labels, "label(s) cannot be read as class indices"),
                              ("rgb_label", scan.rgb_labels, "label(s) are colour (RGB) masks")):
        if files:  # the reader's own message (what training's scan says) for the first file
            more = f" ({len(files) - 1} more {what}: {_examples(files[1:])})" if len(files) > 1 else ""
            report.add("error", code, scan.reasons[files[0]] + more, files)
    if scan.mismatches:
        ip, lp, si, sl = scan.mismatches[0]
        report.add("error", "size_mismatch",
                   f"{len(scan.mismatches)} image/label pair(s) differ in size, e.g. {os.path.basename(ip)} is "
                   f"{si[1]}x{si[0]} but {os.path.basename(lp)} is {sl[1]}x{sl[0]}; re-export the label at "
                   "the image's size", [p for m in scan.mismatches for p in m[:2]])
    if scan.all_ignore:
        files = scan.all_ignore
        report.add("warning", "all_ignore",
                   f"{len(files)} label(s) hold only the ignore value {report.ignore_index} ({_examples(files)}); "
                   "they contribute nothing to training", files)
    if scan.sizes:
        hs, ws = [s[0] for s in scan.sizes], [s[1] for s in scan.sizes]
        report.image_sizes = {"min": [int(min(hs)), int(min(ws))], "max": [int(max(hs)), int(max(ws))],
                              "distinct": len(set(scan.sizes))}


def check_channels(report, scan, meta, weights_split="train"):
    """Images the model's ``input_channels`` cannot take (error, the reader's message); 8- and
    16-bit images mixed (warning); the per-channel mean / std to normalise with (info)."""
    report.image_types = scan.image_types
    files = scan.channel_misfits
    if files:
        more = f" ({len(files) - 1} more: {_examples(files[1:])})" if len(files) > 1 else ""
        report.add("error", "channels", scan.reasons[files[0]] + more, files)
    bits = {kind.rsplit(", ", 1)[1] for d in scan.image_types.values() for kind in d}
    if len(bits) > 1:
        report.add("warning", "mixed_bit_depth",
                   f"the images mix {' and '.join(sorted(bits))} files; a 16-bit file is normalised on its own "
                   "range (or by mean/std in its own units), so save every image with one pixel type")
    stats = scan.channel_stats.get(weights_split)
    split = weights_split
    if stats is None and scan.channel_stats:
        stats, split = ChannelStats(), "all"
        for one in scan.channel_stats.values():  # every split together
            stats.merge(one)
    if stats is None or stats.mean() is None:
        return
    report.channel_mean = [round(v, 4) for v in stats.mean()]
    report.channel_std = [round(v, 4) for v in stats.std()]
    report.channel_split = split
    plain_rgb = report.input_channels == 3 and bits <= {"8-bit"}
    if not plain_rgb and meta.get("mean") is None:
        report.add("info", "channel_stats",
                   f"per-channel mean / std of the {split} images ({report.input_channels} channels, their own "
                   f"units): add \"mean\": {_numbers(report.channel_mean)}, \"std\": "
                   f"{_numbers(report.channel_std)} to dataset.json (or train with --mean/--std) to normalise "
                   "each channel with them")


def _numbers(values):
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"


def check_label_values(report, scan, root):
    """0/255 binary masks and values out of range (errors); infers ``n_classes`` when unknown."""
    ign = report.ignore_index
    values = sorted(scan.value_files)
    non_ignore = [v for v in values if v != ign]
    if is_binary_255(values, ign):
        files = scan.value_files[ign]
        report.add(
            "error",
            "binary_255",
            f"labels hold only the values 0 and {ign} ({len(files)} file(s) contain {ign}, e.g. "
            f"{_examples(files, 1)}); {ign} is the ignore value, so this looks like a binary 0/{ign} mask: "
            f"map {ign} -> 1 with: python scripts/convert_colors.py remap --input <label dir> --output "
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
    if report.n_classes is None:
        return
    k = label_values(report.n_classes)
    bad = [v for v in non_ignore if v >= k]
    if bad:
        files = sorted({f for v in bad for f in scan.value_files[v]})
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        report.add(
            "error",
            "value_out_of_range",
            f"label value(s) {shown} are >= n_classes={k} and not the ignore value "
            f"{ign} in {len(files)} file(s) (e.g. {_examples(files, 2)}); fix the labels, "
            "remap the values, or raise n_classes in classes.txt",
            files,
        )
    if report.class_names is None:
        report.class_names = [str(c) for c in range(k)]


def check_class_statistics(report, scan, weights_split="train"):
    """Class weights (median frequency and ENet, :mod:`kseg.data.stats`), absent classes, mostly-ignore splits."""
    if report.n_classes is None:
        return
    if weights_split in scan.counters:
        counter, report.weights_split = scan.counters[weights_split], weights_split
    else:
        counter, report.weights_split = LabelCounter(report.ignore_index), "all splits"
        for c in scan.counters.values():
            counter = counter.merge(c)
    stats = counter.stats(report.n_classes)
    if stats.n_images:
        report.frequencies = [None if np.isnan(f) else float(f) for f in stats.frequencies()]
        if stats.total:
            report.class_weights = median_frequency_weights(stats)
            report.enet_weights = enet_weights(stats)
        absent = [c for c in range(stats.n_values) if stats.pixels[c] == 0]
        if absent:
            names = [report.name(c) for c in absent]
            report.add(
                "warning",
                "absent_class",
                f"class(es) {', '.join(f'{c} ({n})' for c, n in zip(absent[:10], names[:10]))} never appear "
                f"in {report.weights_split}; the model cannot learn them",
            )
    ign = report.ignore_index
    for s, p in report.pixels.items():
        tot = sum(p.values())
        if tot and p.get(ign, 0) / tot > 0.5:
            report.add(
                "warning",
                "mostly_ignore",
                f"{100.0 * p[ign] / tot:.1f}% of the {s} label pixels are the ignore value {ign}; check the labels",
            )


def check_duplicates(report, scan):
    """Identical images across splits (error: inflated evaluation) and within a split (warning)."""
    groups = [g for g in scan.hashes.values() if len(g) > 1]
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


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _examples(paths, n=3):
    names = [os.path.basename(p) for p in paths[:n]]
    return ", ".join(names) + (" ..." if len(paths) > n else "")


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
