"""Convert COCO instance annotations into semantic index masks.

A COCO ``instances_*.json`` holds one record per object (polygon or RLE). For
semantic segmentation each image needs one mask in which every pixel holds the
class id of the object covering it. This module builds that mask:

* **category ids**: ``contiguous`` (default) renumbers the categories, sorted by
  COCO id, to 1..N (COCO's 80 classes become 1..80); ``coco`` keeps the COCO ids
  (1..90 for COCO, unused ids become unnamed classes). 0 is always background.
  A category with id 0 named like background (labelme's ``_background_``) is
  treated as the background.
* **overlaps** (deterministic): ``area`` paints larger objects first so smaller
  ones stay visible on top (ties by annotation id); ``order`` paints by
  annotation id (the later wins); ``ignore`` marks pixels claimed by objects of
  different classes with the ignore value.
* **crowd regions** (``iscrowd=1``): ``class`` paints them with their category
  (under the single objects), ``ignore`` marks the crowd pixels not covered by
  a single object as ignore, ``skip`` drops them.

Polygon and RLE decoding uses pycocotools (``pip install kseg[coco]``).
"""

import json
import os
import warnings

import numpy as np
from PIL import Image

from kseg.config import IGNORE_INDEX
from kseg.data.io import write_label
from kseg.data.layout import BACKGROUND_NAME, SPLITS, split_items
from kseg.data.writer import DatasetWriter
from kseg.data.palette import voc_palette
from kseg.errors import DataError, unknown_name
from kseg.progress import Progress

CATEGORY_MODES = ("contiguous", "coco")
OVERLAP_MODES = ("area", "order", "ignore")
CROWD_MODES = ("class", "ignore", "skip")
_BACKGROUND_NAMES = (BACKGROUND_NAME, "background", "__background__", "bg")


def _mask_utils():
    try:
        from pycocotools import mask as mask_utils
    except ImportError as e:
        raise DataError(
            f"pycocotools is needed to decode COCO masks ({e}); install it with pip install pycocotools "
            "(or pip install kseg[coco])"
        ) from None
    return mask_utils


def load_coco_json(path):
    """Read and sanity-check a COCO instances JSON; returns the dict."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except OSError as e:
        raise DataError(f"cannot read COCO file {path}: {e.strerror}; check --annotations") from None
    except ValueError as e:
        raise DataError(f"COCO file {path} is not valid JSON ({e}); fix the file") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(d, dict) or not isinstance(d.get(key), list):
            raise DataError(f"{path} has no '{key}' list; it is not a COCO instances file")
    return d


def category_map(categories, mode="contiguous", annotations=()):
    """Map COCO category ids to class ids.

    Returns:
        ``(class_names, cat_to_class)``: names by class id (``class_names[0]`` is
        ``_background_``) and ``{coco category id: class id}`` (the background
        category, if any, maps to 0).
    """
    if mode not in CATEGORY_MODES:
        raise unknown_name("category id mode", mode, CATEGORY_MODES)
    cats = sorted(categories, key=lambda c: int(c["id"]))
    ids = [int(c["id"]) for c in cats]
    if len(set(ids)) != len(ids):
        raise DataError("the COCO categories repeat an id; each category needs its own id")
    used = {int(a["category_id"]) for a in annotations}
    bg = [c for c in cats if int(c["id"]) == 0]
    if bg:
        if str(bg[0].get("name", "")).lower() not in _BACKGROUND_NAMES or 0 in used:
            if mode == "coco":
                raise DataError(
                    f"category id 0 ({bg[0].get('name')!r}) collides with background (0) in --category_ids coco; "
                    "use --category_ids contiguous"
                )
            bg = []
    real = [c for c in cats if not (bg and int(c["id"]) == 0)]
    if any(int(c["id"]) < 0 for c in real):
        raise DataError("COCO category ids must be >= 0")
    cat_to_class = {0: 0} if bg else {}
    if mode == "contiguous":
        names = [BACKGROUND_NAME] + [str(c.get("name", c["id"])) for c in real]
        for i, c in enumerate(real, start=1):
            cat_to_class[int(c["id"])] = i
    else:
        n = max([int(c["id"]) for c in real] + [0]) + 1
        names = [BACKGROUND_NAME] + [f"unused_{i}" for i in range(1, n)]
        for c in real:
            names[int(c["id"])] = str(c.get("name", c["id"]))
            cat_to_class[int(c["id"])] = int(c["id"])
    return names, cat_to_class


def annotation_mask(ann, height, width):
    """Decode one annotation (polygons, uncompressed or compressed RLE) to a bool mask."""
    mu = _mask_utils()
    seg = ann.get("segmentation")
    try:
        if isinstance(seg, list):
            polys = [p for p in seg if len(p) >= 6]
            if not polys:
                return np.zeros((height, width), bool)
            rle = mu.merge(mu.frPyObjects(polys, height, width))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            rle = mu.frPyObjects(seg, height, width)
        elif isinstance(seg, dict) and "counts" in seg:
            rle = dict(seg)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        else:
            raise ValueError("no polygon or RLE")
        with warnings.catch_warnings():  # pycocotools + NumPy 2 emit a DeprecationWarning on decode
            warnings.simplefilter("ignore", DeprecationWarning)
            m = mu.decode(rle)
    except Exception as e:
        raise DataError(
            f"annotation {ann.get('id')} (image {ann.get('image_id')}) has an unreadable segmentation "
            f"({type(e).__name__}: {e}); fix or remove it"
        ) from None
    if m.ndim == 3:
        m = m.any(axis=2)
    if m.shape != (height, width):
        raise DataError(
            f"annotation {ann.get('id')} mask is {m.shape[1]}x{m.shape[0]} but image {ann.get('image_id')} "
            f"is {width}x{height}; fix the RLE size"
        )
    return m.astype(bool)


def semantic_mask(
    anns, height, width, cat_to_class, overlap="area", crowd="class", ignore_index=IGNORE_INDEX
):
    """Build the semantic index mask of one image from its annotations.

    See the module docstring for ``overlap`` and ``crowd``. Returns a ``uint8``
    (or ``uint16`` for class ids > 255) array.
    """
    if overlap not in OVERLAP_MODES:
        raise unknown_name("overlap mode", overlap, OVERLAP_MODES)
    if crowd not in CROWD_MODES:
        raise unknown_name("crowd mode", crowd, CROWD_MODES)
    n_max = max(list(cat_to_class.values()) + [ignore_index])
    dtype = np.uint8 if n_max < 256 else np.uint16
    out = np.zeros((height, width), dtype)
    decoded = []
    for a in anns:
        cid = int(a["category_id"])
        if cid not in cat_to_class:
            raise DataError(f"annotation {a.get('id')} uses category {cid}, which is not in 'categories'")
        is_crowd = bool(a.get("iscrowd", 0))
        if is_crowd and crowd == "skip":
            continue
        m = annotation_mask(a, height, width)
        decoded.append((is_crowd, int(m.sum()), int(a.get("id", 0)), cat_to_class[cid], m))
    crowds = [d for d in decoded if d[0]]
    singles = [d for d in decoded if not d[0]]

    def order(items):
        if overlap == "area":
            return sorted(items, key=lambda d: (-d[1], d[2]))
        return sorted(items, key=lambda d: d[2])

    if crowd == "class":
        for _, _, _, c, m in order(crowds):
            out[m] = c
    owner = np.full((height, width), -1, np.int64) if overlap == "ignore" else None
    conflict = np.zeros((height, width), bool) if overlap == "ignore" else None
    for _, _, _, c, m in order(singles):
        if overlap == "ignore":
            conflict |= m & (owner >= 0) & (owner != c)
            owner[m] = c
        out[m] = c
    if overlap == "ignore":
        out[conflict] = ignore_index
    if crowd == "ignore" and crowds:
        covered = np.zeros((height, width), bool)
        for *_, m in singles:
            covered |= m
        for *_, m in crowds:
            out[m & ~covered] = ignore_index
    return out


def convert_coco(
    annotations,
    output,
    image_dir=None,
    category_ids="contiguous",
    overlap="area",
    crowd="class",
    subset=None,
    split=(0.8, 0.1, 0.1),
    seed=0,
    overwrite=False,
    ignore_index=IGNORE_INDEX,
    skip_missing=False,
):
    """Convert a COCO instances JSON into a kseg dataset folder.

    Args:
        annotations: path of the COCO JSON.
        output: the dataset folder (``data/<name>``).
        image_dir: folder the images' ``file_name`` are relative to (default: the
            JSON's folder).
        category_ids: ``contiguous`` or ``coco`` (see :func:`category_map`).
        overlap: ``area``, ``order`` or ``ignore``.
        crowd: ``class``, ``ignore`` or ``skip``.
        subset: put every image into this one split (``train``, ``val`` or ``test``),
            e.g. for ``instances_val2017.json``; other splits of ``output`` are kept.
        split: ``(train, val, test)`` fractions, used when ``subset`` is None.
        seed: seed of the split.
        overwrite: replace existing split folders / a different class list.
        ignore_index: the ignore value.
        skip_missing: skip images whose file is missing instead of failing.

    Images are copied byte for byte and named by their file-name stem; labels are
    palette PNGs. ``classes.txt``/``dataset.json`` hold the class list (plus the
    category id mapping).

    Returns:
        A summary dict (``classes``, ``splits`` with counts, ``skipped``).
    """
    d = load_coco_json(annotations)
    image_dir = image_dir or os.path.dirname(os.path.abspath(annotations))
    names, cat_to_class = category_map(d["categories"], category_ids, d["annotations"])
    if max(cat_to_class.values(), default=0) >= ignore_index:
        raise DataError(
            f"class ids reach {max(cat_to_class.values())}, which collides with the ignore value {ignore_index}; "
            "use --category_ids contiguous"
        )
    by_image = {}
    for a in d["annotations"]:
        by_image.setdefault(a.get("image_id"), []).append(a)
    images, stems, skipped = {}, {}, []
    for info in d["images"]:
        fn = info.get("file_name")
        if not fn:
            raise DataError(f"image record {info.get('id')} in {annotations} has no file_name")
        path = os.path.join(image_dir, fn)
        if not os.path.isfile(path):
            if skip_missing:
                skipped.append(path)
                continue
            raise DataError(
                f"image {path} (id {info.get('id')}) does not exist; pass --images with the image folder "
                "or --skip_missing"
            )
        stem = os.path.splitext(os.path.basename(fn))[0]
        if stem in stems:
            raise DataError(f"images {stems[stem]} and {path} have the same stem {stem!r}; rename one")
        stems[stem] = path
        images[stem] = (info, path)
    if not images:
        raise DataError(f"no images to convert in {annotations}")
    if subset is not None:
        if subset not in SPLITS:
            raise unknown_name("subset", subset, SPLITS)
        assignment = {subset: sorted(images)}
        splits = (subset,)
    else:
        assignment = split_items(list(images), split, seed)
        splits = SPLITS
    palette = voc_palette(256)
    with DatasetWriter(output, splits=splits, overwrite=overwrite) as w:
        bar = Progress(sum(len(v) for v in assignment.values()), "converting")
        for s, stem_list in assignment.items():
            for stem in stem_list:
                info, path = images[stem]
                h, w_ = int(info["height"]), int(info["width"])
                try:
                    with Image.open(path) as im:
                        size = im.size
                except Exception as e:
                    raise DataError(f"cannot read image {path} ({type(e).__name__}); replace or remove it") from None
                if size != (w_, h):
                    raise DataError(
                        f"image {path} is {size[0]}x{size[1]} but {annotations} says {w_}x{h}; "
                        "use the images the annotations were made on"
                    )
                mask = semantic_mask(by_image.get(info["id"], []), h, w_, cat_to_class, overlap, crowd, ignore_index)
                w.copy_image(s, path, stem=stem)
                write_label(w.label_path(s, stem), mask, palette=palette if mask.dtype == np.uint8 else None)
                bar.update()
        w.set_classes(
            names,
            palette[: len(names)] if len(names) <= 256 else None,
            ignore_index,
            extra={
                "source": "coco",
                "category_ids": category_ids,
                "coco_category_to_class": {str(k): v for k, v in sorted(cat_to_class.items())},
            },
        )
    return {
        "classes": names,
        "splits": {s: len(v) for s, v in assignment.items()},
        "skipped": skipped,
        "category_to_class": cat_to_class,
    }
