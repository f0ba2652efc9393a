"""kseg.data.palette: the VOC map, colourising, THE overlay (class 0 included) and its legend."""

import numpy as np
import pytest

from kseg.data.palette import IGNORE_COLOR, colorize, overlay, palette_for, voc_palette
from kseg.errors import DataError

PAL = [[0, 0, 0], [200, 0, 0], [0, 100, 50]]


def test_voc_palette_known_colours():
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0] and pal[15].tolist() == [192, 128, 128]
    assert tuple(pal[255]) == IGNORE_COLOR  # the VOC "void" colour
    np.testing.assert_array_equal(voc_palette(300)[:256], pal)


def test_palette_for_uses_label_values():
    assert palette_for(1).tolist() == [[0, 0, 0], [128, 0, 0]]  # one sigmoid channel = 2 classes
    assert palette_for(3, [[9, 9, 9]]).tolist() == [[9, 9, 9], [128, 0, 0], [0, 128, 0]]


def test_colorize_rules():
    mask = np.array([[0, 1, 2], [7, 255, 300]])
    out = colorize(mask, PAL, ignore_index=255)
    assert out[0].tolist() == PAL
    assert out[1, 0].tolist() == voc_palette()[7].tolist()  # no palette entry: its VOC colour
    assert tuple(out[1, 1]) == IGNORE_COLOR
    assert out[1, 2].tolist() == voc_palette(301)[300].tolist()
    with pytest.raises(DataError, match="negative"):
        colorize(np.array([[-1]]), PAL)


def test_overlay_colours_class_0_like_every_class():
    img = np.full((4, 6, 3), 100, np.uint8)
    mask = np.zeros((4, 6), np.uint8)
    mask[:, 3:] = 1
    out = overlay(img, mask, [[0, 0, 200], [200, 0, 0]], legend=False)
    assert out.shape == (4, 6, 3)
    assert out[0, 0].tolist() == [50, 50, 150]  # class 0 pixels change: 0.5 * 100 + 0.5 * (0, 0, 200)
    assert out[0, 5].tolist() == [150, 50, 50]  # class 1, the same alpha
    black_bg = overlay(img, np.zeros((4, 6), np.uint8), PAL, alpha=0.25, legend=False)
    assert (black_bg == 75).all()  # even a black class 0 is blended (0.75 * 100)


def test_overlay_draws_ignore_distinctly_and_lists_it():
    img = np.full((20, 200, 3), 0, np.uint8)
    mask = np.zeros((20, 200), np.uint8)
    mask[:, 100:] = 255
    out = overlay(img, mask, PAL, ["bg", "red", "green"], alpha=1.0, ignore_index=255)
    assert tuple(out[0, 150]) == IGNORE_COLOR and out[0, 0].tolist() == [0, 0, 0]
    legend = out[20:]
    assert legend.shape[0] > 0 and np.all(legend == IGNORE_COLOR, axis=-1).any()  # the "255 ignore" swatch
    with pytest.raises(DataError, match="6x4 but the image is 200x20"):
        overlay(img, np.zeros((4, 6), np.uint8), PAL)
