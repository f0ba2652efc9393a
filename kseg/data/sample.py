"""The built-in sample dataset ("shapes"), generated deterministically on demand.

Four classes: background, circle, square, triangle. Each image shows 1-3 shapes
of random size, rotation, colour and texture over a textured, noisy background,
so the class is decided by the SHAPE, not by colour. Images are square (64, 80
or 96 pixels) so predictions at original size are exercised. Nothing of it is
committed: ``ensure_sample_dataset`` writes it into ``data/shapes/`` when the
folder is missing.
"""

import json
import os
import shutil

import cv2
import numpy as np

from kseg.data.io import voc_palette, write_image, write_label

SAMPLE_NAME = "shapes"
SAMPLE_CLASSES = ("background", "circle", "square", "triangle")
SAMPLE_SPLITS = {"train": 480, "val": 80, "test": 80}
SAMPLE_VERSION = 1
SAMPLE_INPUT_SIZE = (64, 64)
SAMPLE_EPOCHS = 12


def _texture(rng, h, w):
    """A smooth random field plus oriented stripes plus fine noise, values ~[0, 1]."""
    low = rng.normal(size=(max(2, h // 16), max(2, w // 16)))
    low = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(0.15, 0.6)
    stripes = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6.3))
    t = 0.5 + 0.18 * low + 0.12 * stripes * rng.uniform(0.3, 1.0)
    return t.astype(np.float32)


def _shape_mask(rng, kind, h, w):
    m = np.zeros((h, w), np.uint8)
    r = rng.uniform(0.13, 0.24) * min(h, w)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    if kind == 1:  # circle
        cv2.circle(m, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1, lineType=cv2.LINE_8)
    else:
        n = 4 if kind == 2 else 3
        a0 = rng.uniform(0, 2 * np.pi)
        ang = a0 + np.arange(n) * 2 * np.pi / n
        rr = r * (1.25 if n == 3 else 1.1)
        pts = np.stack([cx + rr * np.cos(ang), cy + rr * np.sin(ang)], 1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return m.astype(bool)


def make_sample(rng, size):
    """One (image RGB uint8, label uint8) pair of side ``size``."""
    h = w = size
    base_color = rng.uniform(40, 215, size=3)
    img = _texture(rng, h, w)[..., None] * 2 * base_color[None, None, :]
    label = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(1, 4)):
        kind = int(rng.integers(1, 4))
        m = _shape_mask(rng, kind, h, w)
        color = rng.uniform(20, 235, size=3)
        tex = _texture(rng, h, w)[..., None] * 2 * color[None, None, :]
        img[m] = tex[m]
        label[m] = kind
    img += rng.normal(0, 12, size=img.shape)
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
        os.makedirs(os.path.join(tmp, f"{split}_image"))
        os.makedirs(os.path.join(tmp, f"{split}_label"))
        for i in range(n):
            size = int(rng.choice([64, 80, 96]))
            img, lab = make_sample(rng, size)
            stem = f"{split}_{i:04d}"
            write_image(os.path.join(tmp, f"{split}_image", stem + ".png"), img)
            write_label(os.path.join(tmp, f"{split}_label", stem + ".png"), lab, palette)
    meta = {
        "name": SAMPLE_NAME,
        "description": "kseg built-in sample: shapes over textured backgrounds (generated)",
        "classes": list(SAMPLE_CLASSES),
        "palette": palette.tolist(),
        "ignore_index": 255,
        "input_size": list(SAMPLE_INPUT_SIZE),
        "epochs": SAMPLE_EPOCHS,
        "version": SAMPLE_VERSION,
        "seed": seed,
    }
    with open(os.path.join(tmp, "dataset.json"), "w") as f:
        json.dump(meta, f, indent=2)
    with open(os.path.join(tmp, "classes.txt"), "w") as f:
        f.write("\n".join(SAMPLE_CLASSES) + "\n")
    if os.path.exists(root):
        shutil.rmtree(root)
    os.replace(tmp, root)
    return root


def ensure_sample_dataset(root, verbose=True):
    """Generate the sample dataset into ``root`` unless it is already there."""
    meta = os.path.join(root, "dataset.json")
    if os.path.exists(meta):
        try:
            with open(meta) as f:
                if json.load(f).get("version") == SAMPLE_VERSION:
                    return root
        except (OSError, ValueError):
            pass
    if verbose:
        print(f"generating the built-in sample dataset into {root} ...", flush=True)
    return generate_sample_dataset(root)
