"""Class colours: palettes, colourising an index mask, THE overlay and its legend.

Every picture kseg draws of a mask goes through this module: the evaluation
overlays (``scripts/test.py``), the web demo, the dataset panels
(``scripts/visualize.py``), labelme's ``<split>_viz`` images, the colour-coded
label conversion and the README figures (``scripts/reproduce.py``).

Colour rules (one set, used everywhere):

* class ``c`` is drawn with ``palette[c]``; a value the given palette does not
  cover is drawn with its PASCAL VOC colour (:func:`voc_palette`), so no value
  is ever silently black;
* the ignore value (when one is given) is drawn with :data:`IGNORE_COLOR`, the
  VOC "void" colour, and is named ``ignore`` in legends;
* :func:`overlay` blends EVERY pixel with its colour at the same ``alpha``:
  class 0 (background) is coloured like any other class, and ignored pixels are
  drawn distinctly, blended with :data:`IGNORE_COLOR`.

Images are RGB ``uint8`` arrays ``(H, W, 3)``; masks are 2-D arrays of
non-negative integer label values.
"""

import cv2
import numpy as np

from kseg.config import label_values
from kseg.errors import DataError

#: Colour of ignored pixels: the PASCAL VOC "void" colour (``voc_palette()[255]``).
IGNORE_COLOR = (224, 224, 192)

FONT = cv2.FONT_HERSHEY_SIMPLEX


def voc_palette(n=256):
    """The PASCAL VOC colour map (bit-interleaved), as an ``(n, 3)`` uint8 array.

    Defined for any ``n``: value ``i`` gets the colour VOC gives it (values past
    255 keep interleaving their higher bits).
    """
    idx = np.arange(int(n), dtype=np.int64)
    pal = np.zeros((int(n), 3), dtype=np.int64)
    c = idx.copy()
    for j in range(8):
        for ch in range(3):
            pal[:, ch] |= ((c >> ch) & 1) << (7 - j)
        c >>= 3
    return pal.astype(np.uint8)


def palette_for(n_classes, palette=None):
    """The ``(label_values(n_classes), 3)`` uint8 palette of a model or dataset.

    ``palette`` (e.g. ``dataset.json``'s) colours the first classes; classes it
    does not cover get their VOC colour. A one-channel sigmoid model has two
    classes, so two colours (see :func:`kseg.config.label_values`).
    """
    k = label_values(n_classes)
    pal = voc_palette(max(k, 1))[:k].copy()
    if palette is not None:
        p = np.asarray(palette, dtype=np.int64).reshape(-1, 3)[:k]
        pal[: len(p)] = np.clip(p, 0, 255)
    return pal


def color_lut(palette=None, ignore_index=None, ignore_color=IGNORE_COLOR, size=256):
    """A ``(max(size, len(palette)), 3)`` lookup table: value -> colour (see the module rules)."""
    p = np.zeros((0, 3), np.int64) if palette is None else np.asarray(palette, np.int64).reshape(-1, 3)
    lut = voc_palette(max(int(size), len(p)))
    lut[: len(p)] = np.clip(p, 0, 255)
    if ignore_index is not None and 0 <= int(ignore_index) < len(lut):
        lut[int(ignore_index)] = ignore_color
    return lut


def _check_mask(mask):
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"an index mask must be 2-D; received shape {m.shape}")
    if m.size and np.issubdtype(m.dtype, np.floating):
        if not np.array_equal(m, np.round(m)):
            raise DataError("the mask holds fractional values; a mask must hold integer class indices")
    m = m.astype(np.int64, copy=False)
    if m.size and m.min() < 0:
        raise DataError(f"the mask holds the negative value {int(m.min())}; label values must be >= 0")
    return m


def colorize(mask, palette=None, ignore_index=None, ignore_color=IGNORE_COLOR):
    """Index mask -> RGB ``uint8`` image ``(H, W, 3)``.

    Args:
        mask: 2-D array of non-negative label values.
        palette: ``(n, 3)`` colours of classes ``0..n-1``; values past it (or all
            values, without a palette) get their VOC colour.
        ignore_index: label value drawn with ``ignore_color`` (None: no ignore value).
        ignore_color: colour of ignored pixels (default :data:`IGNORE_COLOR`).

    Raises:
        DataError: for negative or fractional values.
    """
    m = _check_mask(mask)
    top = int(m.max()) + 1 if m.size else 0
    lut = color_lut(palette, ignore_index, ignore_color, size=max(256, top))
    return lut[m]


def overlay(image, mask, palette=None, class_names=None, alpha=0.5, legend=True, ignore_index=None,
            ignore_color=IGNORE_COLOR):
    """Blend ``image`` with the coloured ``mask``; optionally add a legend strip below.

    Every pixel becomes ``(1 - alpha) * image + alpha * colour`` (rounded), the
    same for every class INCLUDING class 0; ignored pixels (``ignore_index``) are
    blended with ``ignore_color`` the same way, so they stay visible and distinct.

    With ``legend`` and ``class_names`` a white strip below the image names each
    value present (``ignore`` for the ignore value, ``?`` for a value without a
    name), so the result is ``(H + strip, W, 3)``; otherwise it is ``(H, W, 3)``.

    Args:
        image: ``(H, W, 3)`` RGB image (a grey ``(H, W)`` image or an alpha
            channel is accepted).
        mask: ``(H, W)`` label values.
        palette: class colours (see :func:`colorize`).
        class_names: names for the legend.
        alpha: opacity of the colours, in ``[0, 1]``.
        legend: add the legend strip (only with ``class_names``).
        ignore_index: the ignore value, or None.
        ignore_color: colour of ignored pixels.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = img[..., :3].astype(np.float32)
    m = _check_mask(mask)
    if m.shape != img.shape[:2]:
        raise DataError(
            f"the mask is {m.shape[1]}x{m.shape[0]} but the image is {img.shape[1]}x{img.shape[0]}; "
            "a mask must have its image's size"
        )
    color = colorize(m, palette, ignore_index, ignore_color).astype(np.float32)
    out = np.clip(np.round((1.0 - alpha) * img + alpha * color), 0, 255).astype(np.uint8)
    if legend and class_names is not None:
        entries = legend_entries(np.unique(m).tolist(), palette, class_names, ignore_index, ignore_color)
        out = np.concatenate([out, legend_strip(entries, out.shape[1])], axis=0)
    return out


def legend_entries(values, palette=None, class_names=None, ignore_index=None, ignore_color=IGNORE_COLOR):
    """``[(colour, text), ...]`` for the label ``values`` (sorted), as :func:`legend_strip` takes them.

    The text is ``"<value> <name>"``; the ignore value is called ``ignore``, a
    value without a name ``?``.
    """
    values = sorted(int(v) for v in values)
    lut = color_lut(palette, ignore_index, ignore_color, size=max([256] + [v + 1 for v in values]))
    out = []
    for v in values:
        if ignore_index is not None and v == int(ignore_index):
            out.append((tuple(int(c) for c in ignore_color), f"{v} ignore"))
            continue
        name = class_names[v] if class_names is not None and 0 <= v < len(class_names) else "?"
        out.append((tuple(int(c) for c in lut[v]), f"{v} {name}"))
    return out


def add_legend(image, class_ids, palette, class_names):
    """Append a legend strip below ``image`` naming ``class_ids`` (ids without a name are skipped)."""
    ids = [c for c in class_ids if 0 <= c < len(class_names)]
    return np.concatenate([image, legend_strip(legend_entries(ids, palette, class_names), image.shape[1])], axis=0)


def legend_strip(entries, width):
    """A white ``(h, width, 3)`` strip of ``(colour, text)`` swatches, wrapped into rows."""
    scale = float(np.clip(width / 1400, 0.35, 1.2))  # grows with the image so it stays legible
    thick = 2 if scale >= 0.9 else 1
    th = cv2.getTextSize("Ag", FONT, scale, thick)[0][1]
    row_h = th + 10
    sw = row_h - 6  # swatch side
    x, rows = 4, [[]]
    for color, text in entries:
        tw = cv2.getTextSize(text, FONT, scale, thick)[0][0] + sw + 12
        if x + tw > width and rows[-1]:
            rows.append([])
            x = 4
        rows[-1].append((color, text, x))
        x += tw
    strip = np.full((row_h * len(rows) + 4, width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        y = 2 + r * row_h
        for color, text, x0 in row:
            cv2.rectangle(strip, (x0, y + 3), (x0 + sw, y + 3 + sw), tuple(int(v) for v in color), -1)
            cv2.rectangle(strip, (x0, y + 3), (x0 + sw, y + 3 + sw), (0, 0, 0), 1)
            cv2.putText(strip, text, (x0 + sw + 4, y + 3 + sw - 1), FONT, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return strip
