"""Colour-coded label masks: RGB <-> index conversion, value remapping, whole folders.

kseg trains on single-channel index masks; this module converts colour-coded
masks with a :class:`~kseg.data.color_tables.ClassTable` (the tables live in
:mod:`kseg.data.color_tables`):

* :func:`colors_to_index`: RGB mask -> index mask. Colours not in the table
  become the ignore value and are counted, so the caller can report how many
  pixels were affected.
* :func:`index_to_colors`: index mask -> RGB, for looking at labels (drawn by
  :func:`kseg.data.palette.colorize`).
* :func:`remap_values`: index mask -> index mask with a value map (e.g. the
  ``255 -> 1`` fix for binary 0/255 masks).
* :func:`convert_color_folder`, :func:`index_folder_to_colors`,
  :func:`remap_folder`, :func:`convert_color_dataset`: the same over folders.
"""

import os
import re

import numpy as np
from PIL import Image

from kseg.config import IGNORE_INDEX
from kseg.data.color_tables import (  # noqa: F401 (the table API, re-exported for callers of this module)
    CAMVID11_COLORS,
    CAMVID_COLORS,
    DUBAI_COLORS,
    NAMED_TABLES,
    VOC_CLASSES,
    ClassTable,
    code_rgb,
    color_hex,
    load_class_table,
    named_table,
    parse_color,
)
from kseg.data.io import list_files, read_label, write_image, write_label
from kseg.data.layout import IMAGE_EXTENSIONS, LABEL_EXTENSIONS, split_items
from kseg.data.writer import DatasetWriter
from kseg.files import StagedDir
from kseg.data.palette import IGNORE_COLOR, colorize
from kseg.errors import DataError
from kseg.progress import progress


# --------------------------------------------------------------------------------------
# Conversion of arrays
# --------------------------------------------------------------------------------------


def read_color_mask(path):
    """Read a colour-coded mask as an RGB ``uint8`` array (palette PNGs through their palette)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "RGB":
                arr = np.asarray(im)
            elif im.mode in ("P", "PA", "RGBA", "L", "LA", "1", "CMYK", "YCbCr"):
                arr = np.asarray(im.convert("RGB"))
            else:
                raise DataError(
                    f"mask {path} has mode {im.mode} (not a colour image); if it already holds class "
                    "indices it needs no colour conversion"
                )
    except FileNotFoundError:
        raise DataError(f"mask {path} does not exist; check the path") from None
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot decode mask {path} ({type(e).__name__}); replace or remove it") from None
    return np.ascontiguousarray(arr)


def colors_to_index(rgb, table, tolerance=0):
    """Convert an RGB mask into class indices with ``table``.

    Args:
        rgb: ``(H, W, 3)`` uint8 array.
        table: a :class:`ClassTable`.
        tolerance: colours within this Euclidean RGB distance of a table colour are
            mapped to it (for masks saved as JPEG); 0 = exact match only.

    Returns:
        ``(mask, unknown)``: the index mask (uint8 when all values fit, else uint16),
        and ``{(r, g, b): pixel count}`` of the colours not in the table, which
        were set to ``table.ignore_index``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) RGB array; received shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    keys, vals = table.lookup()
    dtype = np.uint8 if max(int(vals.max(initial=0)), table.ignore_index) < 256 else np.uint16
    out = np.full(code.shape, table.ignore_index, dtype=dtype)
    if len(keys):
        pos = np.clip(np.searchsorted(keys, code), 0, len(keys) - 1)
        hit = keys[pos] == code
        out[hit] = vals[pos[hit]]
    else:
        hit = np.zeros(code.shape, bool)
    unknown = {}
    if not hit.all():
        ucodes, counts = np.unique(code[~hit], return_counts=True)
        if tolerance > 0 and len(keys):
            table_rgb = np.array([code_rgb(k) for k in keys], dtype=np.float64)
            for uc, cnt in zip(ucodes, counts):
                d = np.sqrt(((table_rgb - np.array(code_rgb(uc))) ** 2).sum(axis=1))
                j = int(np.argmin(d))
                if d[j] <= tolerance:
                    out[code == uc] = vals[j]
                else:
                    unknown[code_rgb(uc)] = int(cnt)
        else:
            unknown = {code_rgb(c): int(n) for c, n in zip(ucodes, counts)}
    return out, unknown


def index_to_colors(mask, table_or_palette=None, ignore_index=None, ignore_color=None):
    """Paint an index mask in colour (with :func:`kseg.data.palette.colorize`).

    Args:
        mask: 2-D array of non-negative label values.
        table_or_palette: a :class:`ClassTable`, an ``(n, 3)`` palette, or None (VOC colours).
        ignore_index: value painted with ``ignore_color`` (default the table's, else
            :data:`kseg.config.IGNORE_INDEX`).
        ignore_color: colour for ignored pixels (default the table's first ignore
            colour, else :data:`kseg.data.palette.IGNORE_COLOR`).

    Values with no colour in the palette are drawn with the VOC colour of that value.
    """
    pal = table_or_palette
    if isinstance(table_or_palette, ClassTable):
        pal = table_or_palette.palette()
        ignore_index = table_or_palette.ignore_index if ignore_index is None else ignore_index
        ignore_color = table_or_palette.ignore_color() if ignore_color is None else ignore_color
    ignore_index = IGNORE_INDEX if ignore_index is None else ignore_index
    return colorize(mask, pal, ignore_index, IGNORE_COLOR if ignore_color is None else ignore_color)


def remap_values(mask, mapping):
    """Return a copy of an index mask with values replaced by ``mapping`` (``{old: new}``)."""
    mask = np.asarray(mask)
    out = mask.copy()
    for old, new in mapping.items():
        out[mask == old] = new
    if out.size and out.max() > np.iinfo(np.uint8).max:
        return out.astype(np.uint16)
    return out.astype(np.uint8) if out.size == 0 or out.min() >= 0 else out


def parse_value_map(items):
    """Parse ``["255:1", "3:0"]`` into ``{255: 1, 3: 0}``."""
    mapping = {}
    for it in items or []:
        for part in re.split(r"[,\s]+", str(it).strip()):
            if not part:
                continue
            m = re.fullmatch(r"(\d+)[:=](\d+)", part)
            if not m:
                raise DataError(f"--map {part!r} is not OLD:NEW (e.g. --map 255:1)")
            mapping[int(m.group(1))] = int(m.group(2))
    return mapping


# --------------------------------------------------------------------------------------
# Folders and datasets
# --------------------------------------------------------------------------------------


def _summarise_unknown(per_file, table):
    total = {}
    for unk in per_file.values():
        for c, n in unk.items():
            total[c] = total.get(c, 0) + n
    return {
        "pixels": int(sum(total.values())),
        "files": len(per_file),
        "colors": {color_hex(c): n for c, n in sorted(total.items(), key=lambda kv: -kv[1])},
        "per_file": {f: int(sum(u.values())) for f, u in sorted(per_file.items())},
        "ignore_index": table.ignore_index,
    }


def format_unknown(summary, limit=5):
    """One line describing the unknown colours found (or an empty string)."""
    if not summary["pixels"]:
        return ""
    cols = ", ".join(f"{c}: {n} px" for c, n in list(summary["colors"].items())[:limit])
    more = " ..." if len(summary["colors"]) > limit else ""
    return (
        f"{summary['pixels']} pixel(s) in {summary['files']} file(s) had colours not in the table and were "
        f"set to the ignore value {summary['ignore_index']} ({cols}{more}); add these colours to the table "
        "if they are classes"
    )


def convert_color_folder(input_dir, output_dir, table, tolerance=0, overwrite=False, binary_255_to_1=False):
    """Convert every colour mask in ``input_dir`` into an index PNG in ``output_dir``.

    The output folder is written in a staging folder and renamed into place at the end.

    Returns:
        A summary dict: ``files`` (count), ``unknown`` (see :func:`format_unknown`).
    """
    files = list_files(input_dir, LABEL_EXTENSIONS + (".jpg", ".jpeg"))
    if not files:
        raise DataError(f"no mask files in {input_dir}")
    pal = table.palette()
    unknown = {}
    with StagedDir(output_dir, overwrite) as tmp:
        for f in progress(files, "converting"):
            idx, unk = colors_to_index(read_color_mask(f), table, tolerance)
            if unk:
                unknown[f] = unk
            stem = os.path.splitext(os.path.basename(f))[0]
            write_label(os.path.join(tmp, stem + ".png"), idx, palette=pal)
    return {"files": len(files), "unknown": _summarise_unknown(unknown, table)}


def index_folder_to_colors(input_dir, output_dir, table_or_palette=None, overwrite=False):
    """Paint every index label of ``input_dir`` in colour (RGB PNGs) into ``output_dir``."""
    files = list_files(input_dir, LABEL_EXTENSIONS)
    if not files:
        raise DataError(f"no label files in {input_dir}")
    with StagedDir(output_dir, overwrite) as tmp:
        for f in progress(files, "colouring"):
            rgb = index_to_colors(read_label(f), table_or_palette)
            stem = os.path.splitext(os.path.basename(f))[0]
            write_image(os.path.join(tmp, stem + ".png"), rgb)
    return {"files": len(files)}


def remap_folder(input_dir, output_dir, mapping, overwrite=False):
    """Rewrite every index label of ``input_dir`` with ``mapping`` into ``output_dir``.

    Returns a summary with the number of files and of changed pixels per mapping.
    """
    if not mapping:
        raise DataError("no value mapping given; pass --map OLD:NEW or --binary_255_to_1")
    files = list_files(input_dir, LABEL_EXTENSIONS)
    if not files:
        raise DataError(f"no label files in {input_dir}")
    changed = {k: 0 for k in mapping}
    with StagedDir(output_dir, overwrite) as tmp:
        for f in progress(files, "remapping"):
            lbl = read_label(f)
            for k in mapping:
                changed[k] += int((lbl == k).sum())
            pal = None
            with Image.open(f) as im:
                if im.mode == "P":
                    p = im.getpalette()
                    if p:
                        pal = np.array(p[: 768], dtype=np.uint8).reshape(-1, 3)
            stem = os.path.splitext(os.path.basename(f))[0]
            write_label(os.path.join(tmp, stem + ".png"), remap_values(lbl, mapping), palette=pal)
    return {"files": len(files), "changed_pixels": changed}


def _pair_folder(image_dir, mask_dir):
    """Pair images with colour masks by stem (masks may be .png/.bmp/.tif or JPEG)."""
    ims = {os.path.splitext(os.path.basename(p))[0]: p for p in list_files(image_dir, IMAGE_EXTENSIONS)}
    mks = {os.path.splitext(os.path.basename(p))[0]: p for p in list_files(mask_dir, LABEL_EXTENSIONS + (".jpg", ".jpeg"))}
    no_mask = sorted(set(ims) - set(mks))
    no_img = sorted(set(mks) - set(ims))
    if no_mask or no_img:
        parts = []
        if no_mask:
            parts.append(f"{len(no_mask)} image(s) in {image_dir} without a mask in {mask_dir} (e.g. {no_mask[0]})")
        if no_img:
            parts.append(f"{len(no_img)} mask(s) in {mask_dir} without an image in {image_dir} (e.g. {no_img[0]})")
        raise DataError("; ".join(parts) + "; add the missing files or remove the extra ones")
    if not ims:
        raise DataError(f"no images in {image_dir}")
    return [(ims[s], mks[s], s) for s in sorted(ims)]


def _safe_prefix(path):
    return re.sub(r"[^0-9A-Za-z._-]+", "_", path).strip("_")


def convert_color_dataset(
    image_dirs,
    mask_dirs,
    output,
    table,
    split=(0.8, 0.1, 0.1),
    seed=0,
    tolerance=0,
    overwrite=False,
):
    """Build a kseg dataset folder from images and colour-coded masks.

    Args:
        image_dirs, mask_dirs: lists of folders, paired in order (folder ``i`` of images
            goes with folder ``i`` of masks; files pair by stem inside each).
        output: the dataset folder to create (``data/<name>``).
        table: a :class:`ClassTable`.
        split: ``(train, val, test)`` fractions.
        seed: seed of the split.
        tolerance: see :func:`colors_to_index`.
        overwrite: replace existing split folders.

    With several folder pairs, output names get the pair's distinguishing folder
    name as prefix (``Tile_1_image_part_001``) so stems from different folders
    cannot collide. Images are copied byte for byte; masks become palette PNGs.

    Returns:
        A summary dict (counts per split, unknown colours).
    """
    if isinstance(image_dirs, str):
        image_dirs = [image_dirs]
    if isinstance(mask_dirs, str):
        mask_dirs = [mask_dirs]
    if len(image_dirs) != len(mask_dirs):
        raise DataError(
            f"{len(image_dirs)} image folder(s) but {len(mask_dirs)} mask folder(s); give one mask folder per image folder"
        )
    items = {}
    common = os.path.commonpath([os.path.abspath(p) for p in list(image_dirs) + list(mask_dirs)])
    for idir, mdir in zip(image_dirs, mask_dirs):
        prefix = ""
        if len(image_dirs) > 1:
            own = os.path.commonpath([os.path.abspath(idir), os.path.abspath(mdir)])
            prefix = _safe_prefix(os.path.relpath(own, common)) + "_"
        for ip, mp, stem in _pair_folder(idir, mdir):
            name = prefix + stem
            if name in items:
                raise DataError(
                    f"two images map to the output name {name!r} ({items[name][0]} and {ip}); rename one"
                )
            items[name] = (ip, mp)
    split_assignment = split_items(list(items), split, seed)
    unknown = {}
    pal = table.palette()
    with DatasetWriter(output, overwrite=overwrite) as w:
        for s, names in split_assignment.items():
            for name in names:
                ip, mp = items[name]
                rgb = read_color_mask(mp)
                idx, unk = colors_to_index(rgb, table, tolerance)
                try:
                    with Image.open(ip) as im:
                        size = im.size
                except Exception as e:
                    raise DataError(f"cannot read image {ip} ({type(e).__name__}); replace or remove it") from None
                if (idx.shape[1], idx.shape[0]) != size:
                    raise DataError(
                        f"mask {mp} is {idx.shape[1]}x{idx.shape[0]} but image {ip} is {size[0]}x{size[1]}; "
                        "masks must have their image's size"
                    )
                if unk:
                    unknown[mp] = unk
                w.copy_image(s, ip, stem=name)
                write_label(w.label_path(s, name), idx, palette=pal)
        w.set_classes(
            table.names,
            pal,
            table.ignore_index,
            extra={"source": "colour-coded masks", "ignore_colors": [color_hex(c) for c in table.ignore_colors]},
        )
    return {
        "splits": {s: len(v) for s, v in split_assignment.items()},
        "classes": table.names,
        "unknown": _summarise_unknown(unknown, table),
    }
