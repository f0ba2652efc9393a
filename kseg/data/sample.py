"""The built-in sample dataset ("shapes"), generated deterministically on demand.

Four classes: background, circle, square, triangle. Each image shows 1-3 non-touching shapes
of random size, colour and texture (squares roughly axis-aligned, triangles roughly
upright) over a textured, noisy background,
so the class is decided by the SHAPE, not by colour. Images are square (48, 56
or 64 pixels) so predictions at original size are exercised. Nothing of it is
committed: ``ensure_sample_dataset`` writes it into ``data/shapes/`` when the
folder is missing.
"""

import json
import os
import shutil

import cv2
import numpy as np

from kseg.config import IGNORE_INDEX
from kseg.data.io import write_image, write_label
from kseg.data.layout import split_dir, write_class_files
from kseg.data.palette import voc_palette

SAMPLE_NAME = "shapes"
SAMPLE_CLASSES = ("background", "circle", "square", "triangle")
SAMPLE_SPLITS = {"train": 320, "val": 64, "test": 64}
SAMPLE_VERSION = 4
SAMPLE_INPUT_SIZE = (48, 48)
#: The main job's recipe, chosen by measurement (README, "The two commands"): the
#: generator already varies size, position, colour and texture, so no online
#: augmentation; a cosine decay to zero after a one-epoch warm-up ends the run at a
#: small learning rate, so the last epochs settle instead of swinging.
SAMPLE_TRAIN = {"epochs": 20, "augment": False, "schedule": "cosine", "warmup_epochs": 1}


def _texture(rng, h, w):
    """A smooth random field plus oriented stripes plus fine noise, values ~[0, 1]."""
    low = rng.normal(size=(max(2, h // 16), max(2, w // 16)))
    low = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(0.15, 0.6)
    stripes = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6.3))
    t = 0.5 + 0.12 * low + 0.08 * stripes * rng.uniform(0.3, 1.0)
    return t.astype(np.float32)


def _shape_mask(rng, kind, h, w, r):
    m = np.zeros((h, w), np.uint8)
    cx, cy = rng.uniform(r * 1.3, w - r * 1.3), rng.uniform(r * 1.3, h - r * 1.3)
    if kind == 1:  # circle
        cv2.circle(m, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1, lineType=cv2.LINE_8)
    else:
        n = 4 if kind == 2 else 3
        # squares roughly axis-aligned, triangles roughly upright (+-15 degrees)
        a0 = (np.pi / 4 if n == 4 else -np.pi / 2) + rng.uniform(-1, 1) * np.pi / 12
        ang = a0 + np.arange(n) * 2 * np.pi / n
        rr = r * (1.3 if n == 3 else 1.15)
        pts = np.stack([cx + rr * np.cos(ang), cy + rr * np.sin(ang)], 1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return m.astype(bool)


def make_sample(rng, size):
    """One (image RGB uint8, label uint8) pair of side ``size``.

    1-3 shapes that do not touch each other (a shape that would overlap an
    earlier one is re-drawn elsewhere, up to a few tries, else skipped).
    """
    h = w = size
    base_color = rng.uniform(40, 215, size=3)
    img = _texture(rng, h, w)[..., None] * 2 * base_color[None, None, :]
    label = np.zeros((h, w), np.uint8)
    taken = np.zeros((h, w), bool)
    for _ in range(rng.integers(1, 4)):
        kind = int(rng.integers(1, 4))
        r = rng.uniform(0.16, 0.24) * size
        for _try in range(10):
            m = _shape_mask(rng, kind, h, w, r)
            if not (cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & taken).any():
                break
        else:
            continue
        color = rng.uniform(20, 235, size=3)
        while np.abs(color - base_color).sum() < 120:  # keep shapes visible on the background
            color = rng.uniform(20, 235, size=3)
        tex = _texture(rng, h, w)[..., None] * 2 * color[None, None, :]
        img[m] = tex[m]
        label[m] = kind
        taken |= m
    img += rng.normal(0, 8, size=img.shape)
    img = cv2.GaussianBlur(img.astype(np.float32), (3, 3), 0.6)
    return np.clip(img, 0, 255).astype(np.uint8), label


def generate_sample_dataset(root, splits=None, seed=0):
    """Write the sample dataset into ``root`` (``{split}_image``/``{split}_label``).

    Written into a temporary folder and renamed at the end, so an interrupted
    generation never leaves a partial dataset behind.
    """
    splits = dict(SAMPLE_SPLITS if splits is None else splits)
    tmp = root.rstrip("/\\") + ".tmp-generating"
    shutil.rmtree(tmp, ignore_errors=True)
    palette = voc_palette(len(SAMPLE_CLASSES))
    for s_i, (split, n) in enumerate(sorted(splits.items())):
        rng = np.random.default_rng([seed, s_i, SAMPLE_VERSION])
        for kind in ("image", "label"):
            os.makedirs(split_dir(tmp, split, kind))
        for i in range(n):
            size = int(rng.choice([48, 56, 64]))
            img, lab = make_sample(rng, size)
            stem = f"{split}_{i:04d}"
            write_image(os.path.join(split_dir(tmp, split, "image"), stem + ".png"), img)
            write_label(os.path.join(split_dir(tmp, split, "label"), stem + ".png"), lab, palette)
    write_class_files(tmp, SAMPLE_CLASSES, palette, IGNORE_INDEX, extra=sample_metadata(seed))
    if os.path.exists(root):
        shutil.rmtree(root)
    os.replace(tmp, root)
    return root


def sample_metadata(seed=0):
    """The dataset.json entries of the sample beyond classes and palette."""
    return {
        "name": SAMPLE_NAME,
        "description": "kseg built-in sample: shapes over textured backgrounds (generated)",
        "input_size": list(SAMPLE_INPUT_SIZE),
        "train": dict(SAMPLE_TRAIN),
        "version": SAMPLE_VERSION,
        "seed": seed,
    }


def ensure_sample_dataset(root, verbose=True):
    """Generate the sample dataset into ``root`` unless it is already there.

    A folder of the same generator version keeps its images; its dataset.json is
    rewritten when this kseg suggests other training options than the file does.
    """
    meta_path = os.path.join(root, "dataset.json")
    meta = None
    if os.path.exists(meta_path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            meta = None
    if isinstance(meta, dict) and meta.get("version") == SAMPLE_VERSION:
        expected = sample_metadata(meta.get("seed", 0))
        if any(meta.get(k) != v for k, v in expected.items()):
            write_class_files(root, SAMPLE_CLASSES, voc_palette(len(SAMPLE_CLASSES)), IGNORE_INDEX,
                              extra=expected)
        return root
    if verbose:
        print(f"generating the built-in sample dataset into {root} ...", flush=True)
    return generate_sample_dataset(root)
