"""Reading and writing images and label masks.

Labels are single-channel class-index images. Palette ("P") PNGs are read as
their indices, never converted to RGB. Everything that writes does so
atomically (:func:`kseg.data.layout.atomic_path`: temporary file in the same
folder, then rename), so an interrupted run never leaves a half-written file
under the final name. The accepted file extensions are the folder contract's
(:mod:`kseg.data.layout`), importable from here too.
"""

import os

import cv2
import numpy as np
from PIL import Image

from kseg.data.layout import IMAGE_EXTENSIONS, LABEL_EXTENSIONS  # noqa: F401 (re-exported)
from kseg.data.palette import color_lut, voc_palette  # noqa: F401 (voc_palette re-exported)
from kseg.errors import DataError
from kseg.files import atomic_path


def read_image(path):
    """Read an image file as an RGB ``uint8`` array ``(H, W, 3)``.

    Grey images are repeated to three channels, an alpha channel is dropped.
    Raises :class:`DataError` naming the file when it cannot be decoded.
    """
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e.strerror}; check the path") from None
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise DataError(
            f"cannot decode image {path}: the file is empty, corrupt or not an image; "
            "replace or remove it"
        )
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def read_label(path):
    """Read a label mask as a 2-D integer array of class indices.

    Palette PNGs give their indices; grey PNGs their values (8 or 16 bit). An RGB
    file whose three channels are equal is read as grey; a truly colour-coded RGB
    mask raises :class:`DataError` pointing at the colour conversion tool.
    """
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"label file {path} does not exist; check the path") from None
    except Exception as e:  # PIL raises many types for bad files
        raise DataError(
            f"cannot decode label {path} ({type(e).__name__}); replace or remove it"
        ) from None
    if mode in ("RGB", "RGBA"):
        rgb = arr[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return rgb[..., 0].copy()
        raise DataError(
            f"label {path} is a colour (RGB) image, not class indices; convert it with "
            "scripts/convert_colors.py and a class->colour table"
        )
    if mode == "LA":
        arr = arr[..., 0]
    if mode == "1":
        arr = arr.astype(np.uint8)
    if arr.ndim != 2:
        raise DataError(f"label {path} has mode {mode}, expected a single-channel image")
    if arr.dtype == np.int32 or arr.dtype == np.uint32:  # PIL "I" mode for 16-bit PNGs
        arr = arr.astype(np.int64)
    return arr.copy()


def write_label(path, mask, palette=None):
    """Write an index mask as a PNG, atomically.

    With values < 256 the file is a palette ("P") PNG coloured with ``palette``
    (values it does not cover: their VOC colour, see :mod:`kseg.data.palette`)
    whose pixel values are the class indices, so it reads back as indices and
    displays in colour. Larger values give a 16-bit grey PNG.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a label mask must be 2-D; received shape {mask.shape}")
    with atomic_path(path) as tmp:
        if mask.size == 0 or (mask.min() >= 0 and mask.max() < 256):
            im = Image.fromarray(mask.astype(np.uint8), mode="P")
            im.putpalette(color_lut(palette)[:256].flatten().tolist())
            im.save(tmp, format="PNG")
        else:
            Image.fromarray(mask.astype(np.uint16)).save(tmp, format="PNG")


def write_image(path, image_rgb, quality=95):
    """Write an RGB ``uint8`` image atomically (format from the extension)."""
    ext = os.path.splitext(path)[1].lower() or ".png"
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext in (".jpg", ".jpeg") else []
    img = np.asarray(image_rgb)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise DataError(f"cannot encode {path} as {ext}")
    with atomic_path(path) as tmp:
        buf.tofile(tmp)


def list_files(folder, extensions):
    """Files in ``folder`` with one of ``extensions`` (case-insensitive), sorted, hidden skipped."""
    if not os.path.isdir(folder):
        raise DataError(f"folder {folder} does not exist; check --data_dir/--dataset_name")
    out = []
    for f in sorted(os.listdir(folder)):
        if f.startswith("."):
            continue
        if os.path.splitext(f)[1].lower() in extensions and os.path.isfile(os.path.join(folder, f)):
            out.append(os.path.join(folder, f))
    return out


def pair_by_stem(image_dir, label_dir):
    """Pair images and labels by file stem (``0001.jpg`` <-> ``0001.png``).

    Returns a sorted list of ``(image_path, label_path)``. Raises
    :class:`DataError` listing unmatched files (or duplicate stems).
    """
    images = list_files(image_dir, IMAGE_EXTENSIONS)
    labels = list_files(label_dir, LABEL_EXTENSIONS)
    by_stem = {}
    for kind, files in (("image", images), ("label", labels)):
        seen = {}
        for f in files:
            stem = os.path.splitext(os.path.basename(f))[0]
            if stem in seen:
                raise DataError(
                    f"two {kind}s share the stem {stem!r}: {seen[stem]} and {f}; rename one"
                )
            seen[stem] = f
        by_stem[kind] = seen
    im, lb = by_stem["image"], by_stem["label"]
    no_label = sorted(set(im) - set(lb))
    no_image = sorted(set(lb) - set(im))
    if no_label or no_image:
        parts = []
        if no_label:
            parts.append(
                f"{len(no_label)} image(s) without a label in {label_dir}: "
                + ", ".join(os.path.basename(im[s]) for s in no_label[:5])
                + (" ..." if len(no_label) > 5 else "")
            )
        if no_image:
            parts.append(
                f"{len(no_image)} label(s) without an image in {image_dir}: "
                + ", ".join(os.path.basename(lb[s]) for s in no_image[:5])
                + (" ..." if len(no_image) > 5 else "")
            )
        raise DataError("; ".join(parts) + "; add the missing files or remove the extra ones")
    if not im:
        raise DataError(f"no images found in {image_dir}")
    return [(im[s], lb[s]) for s in sorted(im)]
