"""Reading and writing images and label masks: THE decoder of dataset files.

Every image and label kseg trains on, checks or predicts is decoded here, by
Pillow, in :func:`read_image` and :func:`read_label`: the training scan
(:func:`kseg.data.dataset.scan_pairs`), the dataset doctor
(:mod:`kseg.data.doctor`), the ``tf.data`` pipeline (:mod:`kseg.data.pipeline`,
through ``tf.numpy_function``), prediction and export. So a file one of them
accepts, all of them read, to the same pixels; a file one of them refuses, all
refuse with the same one-line :class:`DataError` naming the file and the fix.
The accepted file extensions are the folder contract's (:mod:`kseg.data.layout`,
importable from here too); which formats a file of those extensions may hold
(by content, not by name) is :data:`IMAGE_FORMATS` / :data:`LABEL_FORMATS`.

Every file is fully decoded (a truncated JPEG or PNG is an error, never a
grey-filled image). What is read:

* images: 8-bit RGB, RGBA (alpha dropped), grey and palette images become RGB
  ``uint8``; 16-bit grey is scaled to 8 bits (``// 257``), 16-bit RGB keeps its
  high byte (Pillow); float images and images with other than 1, 3 or 4
  channels (multi-band TIFFs) are refused;
* labels: single-channel class indices: palette ("P") files give their indices
  (never colours), grey files their values (8 or 16 bit), an RGB file whose
  three channels are equal is read as grey; colour-coded RGB and float labels
  are refused.

Everything that writes does so atomically (:func:`kseg.files.atomic_path`:
temporary file in the same folder, then rename), so an interrupted run never
leaves a half-written file under the final name.
"""

import os
import warnings

import cv2
import numpy as np
from PIL import Image

from kseg.data.layout import IMAGE_EXTENSIONS, LABEL_EXTENSIONS  # noqa: F401 (re-exported)
from kseg.data.palette import color_lut, voc_palette  # noqa: F401 (voc_palette re-exported)
from kseg.errors import DataError
from kseg.files import atomic_path

#: The formats (Pillow's names) an image file may hold, whatever its extension says
#: (JPEG includes camera MPO files).
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")
#: The formats a label file may hold: lossless only (a JPEG changes class values).
LABEL_FORMATS = ("PNG", "BMP", "TIFF")

_FIX = "replace or remove it"


def read_image(path):
    """Read an image file as an RGB ``uint8`` array ``(H, W, 3)``.

    Grey images are repeated to three channels, an alpha channel is dropped,
    16-bit grey is scaled to 8 bits. Raises :class:`DataError` naming the file
    when it cannot be decoded (missing, empty, truncated, corrupt, another
    format, or pixels kseg does not read).
    """
    return _decode(path, "image", IMAGE_FORMATS, _image_pixels)


def read_label(path):
    """Read a label mask as a 2-D integer array of class indices.

    Palette PNGs give their indices; grey PNGs their values (8 or 16 bit). An RGB
    file whose three channels are equal is read as grey; a truly colour-coded RGB
    mask raises :class:`DataError` pointing at the colour conversion tool.
    """
    return decode_label(path)[0]


def decode_label(path):
    """:func:`read_label` plus the file's Pillow mode: ``(array, mode)``."""
    return _decode(path, "label", LABEL_FORMATS, _label_pixels)


def _decode(path, kind, formats, pixels):
    """Open ``path`` as one of ``formats``, decode every pixel, and convert with ``pixels(im, path)``."""
    path = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning, TIFF metadata notes
            with Image.open(path, formats=formats) as im:
                im.load()  # decodes everything: a truncated file raises here
                return pixels(im, path)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{kind} file {path} does not exist; check the path") from None
    except Image.DecompressionBombError:
        raise DataError(
            f"cannot decode {kind} {path}: it has more pixels than Pillow's limit "
            f"({2 * (Image.MAX_IMAGE_PIXELS or 0)}); cut it into tiles"
        ) from None
    except Exception as e:  # Pillow raises many types for bad files
        raise DataError(_undecodable(path, kind, formats, e)) from None


def _undecodable(path, kind, formats, err):
    """The one-line message for a file Pillow could not open or decode."""
    try:
        size = os.path.getsize(path)
    except OSError as e:
        return f"cannot read {kind} {path}: {e.strerror}; check the path"
    if size == 0:
        return f"cannot decode {kind} {path}: the file is empty (0 bytes); {_FIX}"
    if isinstance(err, OSError) and err.errno is not None:  # the system's error, not Pillow's
        return f"cannot read {kind} {path}: {err.strerror}; check the file and its permissions"
    if isinstance(err, Image.UnidentifiedImageError):
        names = "/".join(formats).replace("WEBP", "WebP")
        hint = ""
        if os.path.splitext(path)[1].lower() in (".tif", ".tiff"):
            hint = " (kseg reads 1-, 3- and 4-channel TIFFs of 8/16-bit integers; not multi-band ones)"
        elif kind == "label":
            hint = " (labels must be lossless PNG, BMP or TIFF)"
        return f"cannot decode {kind} {path}: not a readable {names} file{hint}; {_FIX}"
    detail = " ".join(str(err).split())[:120] or type(err).__name__
    if "truncated" in detail.lower():
        return f"cannot decode {kind} {path}: the file is truncated (cut short); {_FIX}"
    return f"cannot decode {kind} {path}: the file is corrupt ({type(err).__name__}: {detail}); {_FIX}"


def _image_pixels(im, path):
    mode = im.mode
    if mode == "F":
        raise DataError(f"image {path} has floating-point pixels (mode F); save it as 8- or 16-bit integers")
    if mode.startswith("I"):  # 16-bit grey ("I;16*"; "I" in older Pillow): scaled to 8 bits
        a = np.asarray(im)
        if a.ndim != 2 or (mode == "I" and a.size and (a.min() < 0 or a.max() > 65535)):
            raise DataError(f"image {path} has 32-bit pixels (mode {mode}); save it as 8- or 16-bit integers")
        grey = (a.astype(np.int64) // 257).astype(np.uint8)
    elif mode in ("L", "1", "LA", "La"):
        grey = np.asarray(im if mode == "L" else im.convert("L"))
    else:
        if mode != "RGB":
            try:
                im = im.convert("RGB")  # RGBA / RGBX (alpha dropped), P, PA, CMYK, YCbCr, ...
            except ValueError:
                raise DataError(f"image {path} has mode {mode}, which kseg cannot read as RGB; "
                                "save it as RGB or grey") from None
        arr = np.asarray(im)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise DataError(f"image {path} has mode {mode}, which kseg cannot read as RGB; save it as RGB or grey")
        return np.array(arr, order="C")  # writable copy
    return np.repeat(grey[:, :, None], 3, axis=2)


def _label_pixels(im, path):
    mode = im.mode
    arr = np.asarray(im)
    if mode in ("RGB", "RGBA", "RGBX"):
        rgb = arr[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return rgb[..., 0].copy(), mode
        raise DataError(
            f"label {path} is a colour (RGB) mask, not class indices; convert the masks with: "
            "python scripts/convert_colors.py to-index --input <label dir> --output <new dir> "
            "--table <classes.json|voc|camvid>"
        )
    if mode == "F":
        raise DataError(f"label {path} has floating-point pixels (mode F), not class indices; "
                        "save it as a grey or palette PNG of integer class indices")
    if mode in ("LA", "La", "PA"):
        arr = arr[..., 0]
    if mode == "1":
        arr = arr.astype(np.uint8)
    if arr.ndim != 2:
        raise DataError(f"label {path} has mode {mode}, not single-channel class indices; "
                        "save it as a grey or palette PNG")
    if not arr.dtype.isnative:  # "I;16B"
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype == np.int32 or arr.dtype == np.uint32:  # PIL "I" mode (16-bit PNGs in older Pillow)
        arr = arr.astype(np.int64)
    return arr.copy(), mode


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
