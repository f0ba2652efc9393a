"""Reading and writing images and label masks: THE decoder of dataset files.

Every image and label kseg trains on, checks or predicts is decoded here, in
:func:`read_image` / :func:`decode_image` and :func:`read_label`: the training
scan (:func:`kseg.data.dataset.scan_pairs`), the dataset doctor
(:mod:`kseg.data.doctor`), the ``tf.data`` pipeline (:mod:`kseg.data.pipeline`,
through ``tf.numpy_function``), prediction, export and the web demo. So a file one
of them accepts, all of them read, to the same pixels; a file one of them
refuses, all refuse with the same one-line :class:`DataError` naming the file and
the fix. The accepted file extensions are the folder contract's
(:mod:`kseg.data.layout`, importable from here too); which formats a file of those
extensions may hold (by content, not by name) is :data:`IMAGE_FORMATS` /
:data:`LABEL_FORMATS`.

Every file is fully decoded (a truncated JPEG, PNG or TIFF is an error, never a
grey-filled image). TIFF images are read by ``tifffile`` (every band of every
page, 8 or 16 bit), everything else by Pillow (16-bit colour PNGs by OpenCV,
which keeps their low byte).

Images, in two steps:

1. :func:`decode_image` gives the file's own pixels ``(H, W, C)``: ``C`` is the
   file's channel count (grey 1, grey + alpha 2, RGB 3, RGBA 4, a multi-band or
   multi-page TIFF its bands: every full-resolution page's samples, in order;
   palette, CMYK and YCbCr images become RGB). 8-bit files give ``uint8``, 16-bit
   files ``uint16`` with every value kept (1-bit: ``uint8`` 0/255). Float and
   signed or 32-bit pixels are refused.
2. :func:`to_channels` fits them to the model's ``input_channels``
   (:func:`read_image` does both): a file with that many channels is used as it is;
   an alpha channel is dropped when the model takes one channel less (RGBA to a
   3-channel model, grey + alpha to 1); a grey image is repeated to three channels
   for a 3-channel model -- the 8-bit RGB picture kseg always made, so 16-bit grey
   becomes ``v // 257`` there (train with ``--input_channels 1`` to keep every
   value). Any other count is a one-line :class:`DataError` naming the file, its
   channels and the fix (``--input_channels N`` or ``"input_channels"`` in
   ``dataset.json``).

How the pixels become network input (per-channel ``mean`` / ``std``, or
``image_init`` on the file's value range) is :func:`kseg.data.preprocess.normalize`;
:func:`display_image` makes the 8-bit RGB picture of any decoded image for
overlays and panels.

Labels: single-channel class indices: palette ("P") files give their indices
(never colours), grey files their values (8 or 16 bit), an RGB file whose three
channels are equal is read as grey; colour-coded RGB and float labels are
refused.

Everything that writes does so atomically (:func:`kseg.files.atomic_path`:
temporary file in the same folder, then rename), so an interrupted run never
leaves a half-written file under the final name.
"""

import io
import os
import typing
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
#: The first bytes of a TIFF (little/big endian, classic/BigTIFF): such files are read by tifffile.
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: Largest value of each pixel type an image may have (the range the normaliser scales by).
VALUE_RANGE = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_OWN_PHOTOMETRIC = (1, 2)  # MINISBLACK, RGB: read by tifffile; palette, CMYK, YCbCr, ...: by Pillow
_FIX = "replace or remove it"


class Decoded(typing.NamedTuple):
    """The pixels of an image file as stored: see :func:`decode_image`."""

    #: ``(H, W, C)`` ``uint8`` or ``uint16``; ``C`` is the file's channel count
    pixels: np.ndarray
    #: whether the last channel is an alpha (transparency) channel
    alpha: bool


def read_image(path, channels=3):
    """Read an image file as a model of ``channels`` input channels takes it.

    Returns ``(H, W, channels)`` ``uint8`` (8-bit files) or ``uint16`` (16-bit
    files, every value kept): :func:`decode_image` then :func:`to_channels`. With the
    default 3 this is the RGB picture kseg always read: grey repeated to three
    channels (16-bit grey as ``v // 257``), an alpha channel dropped. Raises
    :class:`DataError` naming the file when it cannot be decoded (missing, empty,
    truncated, corrupt, another format, pixels kseg does not read) or has another
    number of channels.
    """
    return to_channels(decode_image(path), channels, path)


def decode_image(source, name=None, formats=IMAGE_FORMATS):
    """The pixels of an image file as stored: a :class:`Decoded` ``(pixels, alpha)``.

    ``source``: a path, or the bytes of a file (``name`` then names it in messages).
    ``pixels`` is ``(H, W, C)`` with ``C`` the file's own channel count (module
    docstring); TIFFs are read by tifffile, other formats (Pillow's names in
    ``formats``; the web demo adds GIF) by Pillow.
    """
    name = os.fspath(source) if name is None and not isinstance(source, (bytes, bytearray)) else name
    name = name or "the image"

    def decode():
        head = _head(source)
        if head[:4] in TIFF_MAGIC:
            tiff = _tiff_pixels(source, name)
            if tiff is not None:
                return tiff
        decoded = _pillow(source, formats, _image_pixels, name)
        if head[:8] == _PNG_SIGNATURE and len(head) >= 26 and head[24] == 16 and head[25] in (2, 6):
            decoded = _png16_colour(source, name, decoded)  # Pillow keeps 8 of the 16 bits
        return decoded

    return _guarded(decode, source, name, "image", formats)


def channel_words(c, alpha=False):
    """``"3 channels (RGB)"``, ``"5 bands (multi-band)"``, ...: how messages name a channel count."""
    if alpha and c in (2, 4):
        return f"{c} channels ({'grey + alpha' if c == 2 else 'RGBA'})"
    if c in (1, 3):
        return f"{c} channel{'s' if c > 1 else ''} ({'grey' if c == 1 else 'RGB'})"
    return f"{c} bands (multi-band)"


def to_channels(decoded, channels, name="the image"):
    """Fit decoded pixels to a model of ``channels`` input channels (the rules of the
    module docstring); a :class:`DataError` naming ``name`` and the fix otherwise."""
    pixels, alpha = decoded
    c, channels = pixels.shape[2], int(channels)
    if c == channels:
        return pixels
    if alpha and c - 1 == channels:  # RGBA -> RGB, grey + alpha -> grey
        return np.ascontiguousarray(pixels[..., :-1])
    if channels == 3 and (c == 1 or (c == 2 and alpha)):  # the RGB picture of a grey image
        grey = pixels[..., 0]
        if grey.dtype == np.uint16:
            grey = (grey // 257).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    raise DataError(
        f"image {name} has {channel_words(c, alpha)} but the model takes {channels} "
        f"(--input_channels {channels}); train with --input_channels {c} (or \"input_channels\": {c} in "
        f"dataset.json), or save the image with {channels} channel{'s' if channels > 1 else ''}"
    )


def display_image(image):
    """The 8-bit RGB picture ``(H, W, 3)`` of a decoded image, for overlays, panels and the demo.

    8-bit images keep their values; other types are stretched linearly from their
    smallest to their largest value. One or two channels show as grey (the first),
    three or more as RGB (the first three).
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    a = a[..., :3] if a.shape[2] >= 3 else a[..., :1]
    if a.dtype != np.uint8:
        x = a.astype(np.float32)
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
        a = np.clip(np.round((x - lo) * (255.0 / max(hi - lo, 1e-12))), 0, 255).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def read_label(path):
    """Read a label mask as a 2-D integer array of class indices.

    Palette PNGs give their indices; grey PNGs their values (8 or 16 bit). An RGB
    file whose three channels are equal is read as grey; a truly colour-coded RGB
    mask raises :class:`DataError` pointing at the colour conversion tool.
    """
    return decode_label(path)[0]


def decode_label(path):
    """:func:`read_label` plus the file's Pillow mode: ``(array, mode)``."""
    path = os.fspath(path)
    return _guarded(lambda: _pillow(path, LABEL_FORMATS, _label_pixels, path), path, path, "label",
                    LABEL_FORMATS)


def _stream(source):
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source


def _head(source):
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:32])
    with open(source, "rb") as f:
        return f.read(32)


def _pillow(source, formats, pixels, name):
    """Open ``source`` with Pillow as one of ``formats``, decode every pixel, convert with ``pixels(im, name)``."""
    with Image.open(_stream(source), formats=formats) as im:
        im.load()  # decodes everything: a truncated file raises here
        return pixels(im, name)


def _guarded(decode, source, name, kind, formats):
    """``decode()``, every failure turned into one :class:`DataError` line naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning, TIFF metadata notes
            return decode()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{kind} file {name} does not exist; check the path") from None
    except Image.DecompressionBombError:
        raise DataError(_too_many_pixels(kind, name)) from None
    except Exception as e:  # Pillow and tifffile raise many types for bad files
        raise DataError(_undecodable(source, name, kind, formats, e)) from None


def _too_many_pixels(kind, name):
    return (f"cannot decode {kind} {name}: it has more pixels than Pillow's limit "
            f"({2 * (Image.MAX_IMAGE_PIXELS or 0)}); cut it into tiles")


def _undecodable(source, name, kind, formats, err):
    """The one-line message for a file that could not be opened or decoded."""
    try:
        size = len(source) if isinstance(source, (bytes, bytearray)) else os.path.getsize(source)
    except OSError as e:
        return f"cannot read {kind} {name}: {e.strerror}; check the path"
    if size == 0:
        return f"cannot decode {kind} {name}: the file is empty (0 bytes); {_FIX}"
    if isinstance(err, OSError) and err.errno is not None:  # the system's error, not Pillow's
        return f"cannot read {kind} {name}: {err.strerror}; check the file and its permissions"
    if isinstance(err, Image.UnidentifiedImageError):
        names = "/".join(formats).replace("WEBP", "WebP")
        hint = " (labels must be lossless PNG, BMP or TIFF)" if kind == "label" else ""
        return f"cannot decode {kind} {name}: not a readable {names} file{hint}; {_FIX}"
    detail = " ".join(str(err).split())[:120] or type(err).__name__
    if "truncated" in detail.lower() or "failed to read" in detail.lower():
        return f"cannot decode {kind} {name}: the file is truncated (cut short); {_FIX}"
    return f"cannot decode {kind} {name}: the file is corrupt ({type(err).__name__}: {detail}); {_FIX}"


def _pixel_type(a, name):
    """``a`` as ``uint8`` / native ``uint16`` (1-bit: 0/255), or a DataError for other types."""
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype.kind == "u" and a.dtype.itemsize in (1, 2):
        return a.astype(a.dtype.newbyteorder("="), copy=False)
    if a.dtype.kind == "f":
        raise DataError(f"image {name} has floating-point pixels ({a.dtype.name}); "
                        "save it as 8- or 16-bit unsigned integers")
    raise DataError(f"image {name} has {a.dtype.name} pixels; save it as 8- or 16-bit unsigned integers")


def _tiff_pixels(source, name):
    """A TIFF's bands by tifffile, or None to let Pillow read it (palette, CMYK, YCbCr, ... files)."""
    import tifffile

    with tifffile.TiffFile(_stream(source)) as tif:
        pages = [p for p in tif.pages if not int(getattr(p, "subfiletype", 0) or 0) & 1]  # skip overviews
        if not pages:
            raise ValueError("the file holds no image")
        if any(int(p.photometric) not in _TIFF_OWN_PHOTOMETRIC for p in pages):
            if len(pages) > 1:
                raise DataError(f"image {name} is a multi-page TIFF whose pages are not grey or RGB "
                                "(photometric); save the bands as grey pages or one multi-sample page")
            return None
        h, w = pages[0].imagelength, pages[0].imagewidth
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        if limit and h * w > limit:
            raise DataError(_too_many_pixels("image", name))
        bands = []
        for p in pages:
            if (p.imagelength, p.imagewidth) != (h, w):
                raise DataError(f"image {name} is a multi-page TIFF with pages of different sizes "
                                f"({w}x{h} and {p.imagewidth}x{p.imagelength}); save every band at the "
                                "image's size")
            try:
                a = p.asarray()
            except ValueError as e:
                if "imagecodecs" not in str(e):
                    raise
                return _tiff_by_pillow(source, name, p, len(pages), e)
            axes = p.axes
            if "Y" not in axes or "X" not in axes or a.ndim != len(axes):
                raise DataError(f"image {name} is a TIFF of axes {axes}; kseg reads 2-D pages of one or more "
                                "samples")
            order = [axes.index("Y"), axes.index("X")] + [i for i, x in enumerate(axes) if x not in "YX"]
            bands.append(_pixel_type(a.transpose(order).reshape(h, w, -1), name))
        if len({b.dtype for b in bands}) > 1:
            raise DataError(f"image {name} mixes 8- and 16-bit pages; save every band with one pixel type")
        pixels = bands[0] if len(bands) == 1 else np.concatenate(bands, axis=2)
        extra = tuple(int(v) for v in (pages[0].extrasamples or ()))
        alpha = len(pages) == 1 and pixels.shape[2] in (2, 4) and bool(extra) and extra[-1] in (1, 2)
        return Decoded(np.ascontiguousarray(pixels), alpha)


def _tiff_by_pillow(source, name, page, n_pages, err):
    """A one-page TIFF whose compression tifffile cannot decode without imagecodecs (LZW, JPEG):
    Pillow's pixels when they have the page's shape, else a DataError saying what to install."""
    need = (f"cannot decode image {name}: its {page.compression.name} compression needs the imagecodecs "
            "package (pip install imagecodecs), or save it uncompressed or with deflate")
    if n_pages != 1:
        raise DataError(need)
    try:
        decoded = _pillow(source, ("TIFF",), _image_pixels, name)
    except Exception:
        raise DataError(need) from None
    if decoded.pixels.shape != (page.imagelength, page.imagewidth, page.samplesperpixel):
        raise DataError(need)
    return decoded


def _png16_colour(source, name, decoded):
    """The 16-bit values of a colour PNG (OpenCV; Pillow gave only the high byte)."""
    data = source if isinstance(source, (bytes, bytearray)) else np.fromfile(source, np.uint8)
    a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if a is None or a.dtype != np.uint16 or a.ndim != 3 or a.shape[:2] != decoded.pixels.shape[:2]:
        raise DataError(f"cannot decode image {name}: the 16-bit colour PNG is corrupt; {_FIX}")
    a = cv2.cvtColor(a, cv2.COLOR_BGRA2RGBA if a.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return Decoded(np.ascontiguousarray(a), a.shape[2] == 4)


def _image_pixels(im, name):
    """A decoded Pillow image as :class:`Decoded`: its own channels, 8 or 16 bit."""
    mode = im.mode
    if mode == "F":
        raise DataError(f"image {name} has floating-point pixels (mode F); save it as 8- or 16-bit integers")
    if mode.startswith("I"):  # 16-bit grey ("I;16*"; "I" in older Pillow)
        a = np.asarray(im)
        if a.ndim != 2 or (mode == "I" and a.size and (a.min() < 0 or a.max() > 65535)):
            raise DataError(f"image {name} has 32-bit pixels (mode {mode}); save it as 8- or 16-bit integers")
        return Decoded(np.ascontiguousarray(a.astype(np.uint16)[:, :, None]), False)
    convert = {"1": "L", "La": "LA", "RGBa": "RGBA", "PA": "RGBA"}.get(mode)
    if convert is None and mode not in ("L", "LA", "RGB", "RGBA"):
        convert = "RGB"  # palette, RGBX, CMYK, YCbCr, LAB, HSV
    if convert:
        try:
            im = im.convert(convert)
        except ValueError:
            raise DataError(f"image {name} has mode {mode}, which kseg cannot read as RGB; "
                            "save it as RGB or grey") from None
    arr = np.asarray(im)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise DataError(f"image {name} has mode {mode}, which kseg cannot read; save it as RGB or grey")
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return Decoded(np.array(arr, order="C"), im.mode in ("LA", "RGBA"))


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
