"""Convert labelme annotations (JSON files) into a kseg dataset folder.

The masks are drawn by labelme itself (``labelme.utils.shapes_to_label``), so
every shape type converts exactly as labelme converts it: polygon, rectangle,
circle, line, linestrip, point and mask. Unlike labelme's single-file
``labelme_json_to_dataset``, which numbers the classes of each file on its own,
all files share ONE class-id map, taken from a ``labels.txt`` in labelme's
convention::

    __ignore__        -> the ignore value (255); optional, must come first
    _background_      -> class 0
    aeroplane         -> class 1
    ...

This is the same map as labelme's ``labelme2voc.py`` example, so the labels
written here equal its ``SegmentationClass`` PNGs.

Requires the ``labelme`` package (``pip install kseg[labelme]``).
"""

import base64
import io
import json
import os

import numpy as np
from PIL import Image

from kseg.config import IGNORE_INDEX
from kseg.data.io import write_image, write_label
from kseg.data.layout import BACKGROUND_NAME, IGNORE_NAME, class_names_from_lines, split_items
from kseg.data.writer import DatasetWriter
from kseg.data.palette import overlay, voc_palette
from kseg.errors import DataError
from kseg.progress import Progress


def _import_labelme():
    try:
        import labelme  # noqa: F401  (imports onnxruntime/Qt bindings; slow, so done lazily)
        import labelme.utils
    except ImportError as e:
        raise DataError(
            f"the labelme package is needed to convert labelme JSON ({e}); install it with "
            "pip install labelme (or pip install kseg[labelme])"
        ) from None
    try:  # labelme logs every loaded image at DEBUG level through loguru
        from loguru import logger

        logger.disable("labelme")
    except ImportError:
        pass
    return labelme


def read_labels_txt(path, ignore_index=IGNORE_INDEX):
    """Read a labelme ``labels.txt``.

    Returns:
        ``(class_names, name_to_value)``: the class names by id (``class_names[0]``
        is ``_background_``) and the map from every label name, including
        ``__ignore__``, to the value written in the mask.

    The lines follow the class-list rule of :mod:`kseg.data.layout` (the same as
    ``classes.txt``): ``__ignore__`` may appear (first, as in labelme) and maps to
    ``ignore_index``. A file without ``_background_`` gets it as class 0 in front
    of its classes, because unlabelled pixels are class 0.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DataError(f"cannot read labels file {path}: {e.strerror}; check --labels") from None
    names = [n.strip() for n in lines if n.strip()]
    if not names:
        raise DataError(f"labels file {path} is empty; list one class per line, starting with _background_")
    seen = set()
    for n in names:
        if n in seen:
            raise DataError(f"labels file {path} lists {n!r} twice; keep one")
        seen.add(n)
    classes = class_names_from_lines(names, f"labels file {path}")  # the one class-list rule
    if BACKGROUND_NAME not in classes:
        classes = [BACKGROUND_NAME] + classes
    return classes, _value_map(classes, ignore_index)


def _value_map(classes, ignore_index):
    m = {n: i for i, n in enumerate(classes)}
    m[IGNORE_NAME] = ignore_index
    return m


def list_labelme_files(input_dir):
    """The labelme JSON files of a folder, sorted (non-recursive)."""
    if not os.path.isdir(input_dir):
        raise DataError(f"labelme folder {input_dir} does not exist; check --input_dir")
    files = sorted(
        os.path.join(input_dir, f)
        for f in os.listdir(input_dir)
        if f.lower().endswith(".json") and not f.startswith(".")
    )
    if not files:
        raise DataError(f"no .json files in {input_dir}; point --input_dir at the folder of labelme annotations")
    return files


def scan_labels(json_files):
    """Read every JSON file (without decoding images) and collect its shape labels.

    Returns ``{label: [files using it]}``. Raises :class:`DataError` naming the
    file when a JSON is unreadable or not a labelme annotation.
    """
    labels = {}
    for f in json_files:
        try:
            with open(f, encoding="utf-8") as fh:
                d = json.load(fh)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read labelme file {f} ({e}); fix or remove it") from None
        if not isinstance(d, dict) or not isinstance(d.get("shapes"), list):
            raise DataError(f"{f} is not a labelme annotation (no 'shapes' list); remove it from the folder")
        for i, s in enumerate(d["shapes"]):
            if not isinstance(s, dict) or not isinstance(s.get("label"), str):
                raise DataError(f"{f}: shape {i} has no text 'label'; fix it in labelme")
            labels.setdefault(s["label"], [])
            if f not in labels[s["label"]]:
                labels[s["label"]].append(f)
    return labels


def build_class_map(found_labels, labels_txt=None, add_unknown=False, ignore_index=IGNORE_INDEX):
    """The single class list for a whole folder.

    Args:
        found_labels: ``{label: [files]}`` from :func:`scan_labels`.
        labels_txt: path of a labelme ``labels.txt``; without it the classes are
            ``_background_`` followed by the labels found, sorted by name.
        add_unknown: append labels missing from ``labels_txt`` (sorted) instead of failing.

    Returns:
        ``(class_names, name_to_value)``.
    """
    if labels_txt is None:
        rest = sorted(n for n in found_labels if n not in (IGNORE_NAME, BACKGROUND_NAME))
        classes = [BACKGROUND_NAME] + rest
        return classes, _value_map(classes, ignore_index)
    classes, mapping = read_labels_txt(labels_txt, ignore_index)
    unknown = sorted(n for n in found_labels if n not in mapping)
    if unknown and not add_unknown:
        desc = "; ".join(
            f"{n!r} in {', '.join(os.path.basename(f) for f in found_labels[n][:3])}"
            + (" ..." if len(found_labels[n]) > 3 else "")
            for n in unknown[:10]
        )
        raise DataError(
            f"{len(unknown)} label(s) are not in {labels_txt}: {desc}; add them to the labels file "
            "or pass --add_unknown"
        )
    classes = classes + unknown
    return classes, _value_map(classes, ignore_index)


def _image_format(data):
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            exif = im.getexif()
            oriented = exif.get(0x0112, 1) not in (1, None)
    except Exception:
        return None, False
    return fmt, oriented


def load_labelme(json_path, name_to_value, ignore_index=IGNORE_INDEX):
    """Convert one labelme file.

    Returns:
        ``(image_bytes, ext, image_array, label)``: the image as labelme loaded it
        (encoded bytes and their extension, ``None`` when they must be re-encoded),
        the decoded RGB array, and the ``uint8`` label (class ids, ``ignore_index``
        for ``__ignore__`` shapes) drawn by ``labelme.utils.shapes_to_label``.
    """
    labelme = _import_labelme()
    try:
        lf = labelme.LabelFile(filename=json_path)
    except Exception as e:  # LabelFileError, AssertionError, OSError ... depending on the version
        raise DataError(
            f"cannot load labelme file {json_path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "check its imagePath/imageData"
        ) from None
    data = getattr(lf, "image_data", None)
    if data is None:
        data = lf.__dict__.get("imageData")
    if isinstance(data, str):
        data = base64.b64decode(data)
    try:
        img = labelme.utils.img_data_to_arr(data)
    except Exception as e:
        raise DataError(f"cannot decode the image of {json_path} ({type(e).__name__}); fix its image") from None
    shapes = lf.shapes
    for i, s in enumerate(shapes):
        if s["label"] not in name_to_value:
            raise DataError(f"{json_path}: label {s['label']!r} (shape {i}) has no class id; add it to the labels file")
    try:
        cls, _ = labelme.utils.shapes_to_label(
            img_shape=img.shape, shapes=shapes, label_name_to_value=name_to_value
        )
    except (AssertionError, ValueError, KeyError, TypeError, IndexError) as e:
        bad = _first_bad_shape(labelme, img.shape, shapes)
        where = f" (shape {bad[0]}, label {bad[1]!r}, type {bad[2]})" if bad else ""
        raise DataError(
            f"cannot draw the shapes of {json_path}{where}: {e or type(e).__name__}; fix or delete that shape in labelme"
        ) from None
    if cls.min() < 0 or cls.max() > 255:
        raise DataError(f"{json_path}: class ids must be 0-255 (got {cls.min()}..{cls.max()})")
    lbl = cls.astype(np.uint8)
    fmt, oriented = _image_format(data)
    ext = {"JPEG": ".jpg", "PNG": ".png"}.get(fmt) if not oriented else None
    rgb = _to_rgb(img)
    return (data if ext else None), ext, rgb, lbl


def _first_bad_shape(labelme, img_shape, shapes):
    for i, s in enumerate(shapes):
        try:
            if s.get("shape_type") == "mask":
                continue
            labelme.utils.shape_to_mask(img_shape[:2], s["points"], s.get("shape_type"))
        except Exception:
            return i, s["label"], s.get("shape_type")
    return None


def _to_rgb(img):
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (img // 257).astype(np.uint8) if img.dtype == np.uint16 else img.astype(np.uint8)
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        return img[:, :, :3]
    if img.shape[2] == 2:
        return np.repeat(img[:, :, :1], 3, axis=2)
    return img


def convert_labelme_folder(
    input_dir,
    output,
    labels=None,
    split=(0.8, 0.1, 0.1),
    seed=0,
    add_unknown=False,
    visualize=False,
    overwrite=False,
    ignore_index=IGNORE_INDEX,
    log=None,
):
    """Convert a folder of labelme JSON files into ``output/{train,val,test}_{image,label}``.

    Args:
        input_dir: folder with the ``.json`` files (images next to them, or embedded
            in the JSON as ``imageData``).
        output: the dataset folder to create, e.g. ``data/labelme_demo``.
        labels: path of the ``labels.txt`` (labelme convention). Without it the
            classes are ``_background_`` + the labels found, sorted.
        split: ``(train, val, test)`` fractions (see :func:`kseg.data.layout.parse_split`).
        seed: seed of the split.
        add_unknown: append labels missing from ``labels`` instead of failing.
        visualize: also write ``<split>_viz/<stem>.jpg`` overlays.
        overwrite: replace existing split folders.
        ignore_index: value of ``__ignore__`` pixels.
        log: optional ``print``-like callable for progress.

    Images are written byte for byte as labelme read them (JPEG stays JPEG);
    images labelme had to rotate (EXIF orientation) are written as PNG. Labels are
    palette PNGs (VOC colours), ``classes.txt`` and ``dataset.json`` hold the class
    list. Everything is written to a staging folder first, so a failure leaves no
    partial dataset.

    Returns:
        A summary dict: ``classes`` and ``splits`` (``{split: [stems]}``).
    """
    files = list_labelme_files(input_dir)
    found = scan_labels(files)
    classes, mapping = build_class_map(found, labels, add_unknown, ignore_index)
    if len(classes) > 255 or ignore_index < len(classes):
        raise DataError(f"{len(classes)} classes do not fit 8-bit labels with ignore value {ignore_index}")
    stems = {}
    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        stems[stem] = f
    assignment = split_items(list(stems), split, seed)
    palette = voc_palette(len(classes))
    label_palette = voc_palette(256)  # the label PNGs show the ignore value in the VOC void colour too
    _import_labelme()
    with DatasetWriter(output, overwrite=overwrite) as w:
        bar = Progress(len(stems), "converting")
        for s, names in assignment.items():
            for stem in names:
                data, ext, rgb, lbl = load_labelme(stems[stem], mapping, ignore_index)
                if data is not None:
                    w.write_image_bytes(s, stem, data, ext)
                else:
                    write_image(w.path(s, "image", stem + ".png"), rgb)
                write_label(w.label_path(s, stem), lbl, palette=label_palette)
                if visualize:
                    viz = overlay(rgb, lbl, palette, alpha=0.5, legend=False, ignore_index=ignore_index)
                    write_image(w.path(s, "viz", stem + ".jpg"), viz)
                if log:
                    log(f"{s}: {stem}")
                bar.update()
        w.set_classes(classes, palette, ignore_index, extra={"source": "labelme"})
    return {"classes": classes, "splits": assignment}
