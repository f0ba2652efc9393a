"""Offline, mask-safe data augmentation with Augmentor.

:func:`augment_folder` writes ``samples_per_image`` augmented copies of every
image/mask pair of a folder. The operations are Augmentor's own, but the image
and the mask are not simply pushed through the same pipeline: Augmentor
resamples with bicubic interpolation, which would invent class values at the
boundaries of a mask (between class 1 and class 3 you would get 2). Instead,
for each operation:

* the image goes through the operation as Augmentor implements it (bicubic);
* the random state is rewound and the mask goes through the *same* operation
  with the *same* random draws, with every resampling filter replaced by
  nearest-neighbour. Each output mask pixel is therefore a copy of the source
  pixel at the same transformed position: values are always taken from the
  input mask, and a pixel's class moves with the image content;
* photometric operations (brightness, contrast, colour, greyscale, histogram
  equalisation, random erasing) change only the image.

Pixels that come from outside the source image (the corners of a skew, a
rotation without crop) are black in the image and get ``mask_fill`` (the ignore
value 255 by default) in the mask, so they are not trained on as background.
"""

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
import threading
import warnings

import numpy as np
from PIL import Image

from kseg.config import IGNORE_INDEX as DEFAULT_IGNORE_INDEX
from kseg.data.io import (
    atomic_path,
    pair_by_stem,
    read_image,
    read_label,
    write_image,
    write_label,
)
from kseg.errors import DataError, unknown_name
from kseg.files import STAGING_PREFIX, missing_dirs, sweep_stale_stages, write_stage_owner
from kseg.progress import progress

GEOMETRIC = "geometric"
PHOTOMETRIC = "photometric"


def _ops_module():
    try:
        import Augmentor.Operations as ops
    except ImportError as e:
        raise DataError(f"the Augmentor package is needed for augmentation ({e}); pip install Augmentor") from None
    return ops


# name -> (kind, parameter names, defaults, factory(ops_module, probability, *params))
OPERATIONS = {
    "rotate": (GEOMETRIC, ("max_left_rotation", "max_right_rotation"), (10, 10),
               lambda o, p, a, b: o.RotateRange(p, int(a), int(b))),
    "rotate_without_crop": (GEOMETRIC, ("max_left_rotation", "max_right_rotation"), (10, 10),
                            lambda o, p, a, b: o.RotateStandard(p, int(a), int(b), expand=False)),
    "rotate90": (GEOMETRIC, (), (), lambda o, p: o.Rotate(p, -1)),
    "flip_left_right": (GEOMETRIC, (), (), lambda o, p: o.Flip(p, "LEFT_RIGHT")),
    "flip_top_bottom": (GEOMETRIC, (), (), lambda o, p: o.Flip(p, "TOP_BOTTOM")),
    "flip_random": (GEOMETRIC, (), (), lambda o, p: o.Flip(p, "RANDOM")),
    "zoom": (GEOMETRIC, ("min_factor", "max_factor"), (1.1, 1.5),
             lambda o, p, a, b: o.Zoom(p, float(a), float(b))),
    "zoom_random": (GEOMETRIC, ("percentage_area",), (0.8,),
                    lambda o, p, a: o.ZoomRandom(p, float(a), randomise=False)),
    "crop_random": (GEOMETRIC, ("percentage_area",), (0.8,),
                    lambda o, p, a: o.CropPercentage(p, float(a), centre=False, randomise_percentage_area=False)),
    "random_distortion": (GEOMETRIC, ("grid_width", "grid_height", "magnitude"), (4, 4, 4),
                          lambda o, p, a, b, c: o.Distort(p, int(a), int(b), int(c))),
    "gaussian_distortion": (GEOMETRIC, ("grid_width", "grid_height", "magnitude"), (4, 4, 4),
                            lambda o, p, a, b, c: o.GaussianDistortion(p, int(a), int(b), int(c), "bell", "in",
                                                                        0.5, 0.5, 0.05, 0.05)),
    "skew": (GEOMETRIC, ("magnitude",), (0.2,), lambda o, p, a: o.Skew(p, "RANDOM", float(a))),
    "skew_tilt": (GEOMETRIC, ("magnitude",), (0.2,), lambda o, p, a: o.Skew(p, "TILT", float(a))),
    "skew_corner": (GEOMETRIC, ("magnitude",), (0.2,), lambda o, p, a: o.Skew(p, "CORNER", float(a))),
    "shear": (GEOMETRIC, ("max_shear_left", "max_shear_right"), (10, 10),
              lambda o, p, a, b: o.Shear(p, int(a), int(b))),
    "random_brightness": (PHOTOMETRIC, ("min_factor", "max_factor"), (0.7, 1.3),
                          lambda o, p, a, b: o.RandomBrightness(p, float(a), float(b))),
    "random_contrast": (PHOTOMETRIC, ("min_factor", "max_factor"), (0.7, 1.3),
                        lambda o, p, a, b: o.RandomContrast(p, float(a), float(b))),
    "random_color": (PHOTOMETRIC, ("min_factor", "max_factor"), (0.7, 1.3),
                     lambda o, p, a, b: o.RandomColor(p, float(a), float(b))),
    "greyscale": (PHOTOMETRIC, (), (), lambda o, p: o.Greyscale(p)),
    "histogram_equalisation": (PHOTOMETRIC, (), (), lambda o, p: o.HistogramEqualisation(p)),
    "random_erasing": (PHOTOMETRIC, ("rectangle_area",), (0.2,),
                       lambda o, p, a: o.RandomErasing(p, float(a))),
}  # fmt: skip

DEFAULT_OPERATIONS = (
    ("flip_left_right", 0.5),
    ("rotate", 0.7, 10, 10),
    ("zoom", 0.5, 1.1, 1.3),
    ("random_brightness", 0.3, 0.8, 1.2),
)


class Operation:
    """One augmentation step: an Augmentor operation, its probability and its kind."""

    def __init__(self, name, probability, *params):
        if name not in OPERATIONS:
            raise unknown_name("augmentation", name, OPERATIONS)
        kind, pnames, defaults, factory = OPERATIONS[name]
        if len(params) > len(pnames):
            raise DataError(
                f"--{name} takes a probability and {len(pnames)} parameter(s) ({', '.join(pnames) or 'none'}); "
                f"received {len(params)}"
            )
        try:
            probability = float(probability)
            params = tuple(float(v) for v in params) + tuple(defaults[len(params):])
        except (TypeError, ValueError):
            raise DataError(f"--{name}: parameters must be numbers; received {probability} {params}") from None
        if not 0.0 <= probability <= 1.0:
            raise DataError(f"--{name}: probability {probability} must be between 0 and 1")
        self.name, self.kind, self.probability, self.params = name, kind, probability, params
        self.param_names = pnames
        self.op = factory(_ops_module(), probability, *params)

    def describe(self):
        args = ", ".join(f"{n}={v:g}" for n, v in zip(self.param_names, self.params))
        return f"{self.name}(p={self.probability:g}{', ' + args if args else ''})"

    def to_dict(self):
        return {"name": self.name, "probability": self.probability, "params": dict(zip(self.param_names, self.params))}


def make_operations(specs=None):
    """Build :class:`Operation` objects from ``[(name, probability, *params), ...]`` (default: a mild set)."""
    specs = DEFAULT_OPERATIONS if not specs else specs
    return [s if isinstance(s, Operation) else Operation(*s) for s in specs]


_PATCH_LOCK = threading.RLock()
_RESAMPLING_NAMES = ("BICUBIC", "BILINEAR", "LANCZOS", "ANTIALIAS", "HAMMING", "BOX")


class _NearestImageModule:
    """Stands in for ``PIL.Image`` inside ``Augmentor.Operations``: every filter is NEAREST."""

    def __getattr__(self, name):
        if name in _RESAMPLING_NAMES:
            return Image.Resampling.NEAREST
        return getattr(Image, name)


@contextlib.contextmanager
def _nearest_resampling():
    ops = _ops_module()
    with _PATCH_LOCK:
        original = ops.Image
        ops.Image = _NearestImageModule()
        try:
            yield
        finally:
            ops.Image = original


def _seed_for(seed, key, sample):
    """A 32-bit seed from the run seed, the file key and the sample number (stable across runs)."""
    h = hashlib.sha256(f"{int(seed)}|{key}|{int(sample)}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def augment_pair(image, mask, operations, seed=0, mask_fill=DEFAULT_IGNORE_INDEX):
    """Augment one image and its mask with the same random geometry.

    Args:
        image: ``(H, W, 3)`` uint8 RGB array.
        mask: ``(H, W)`` integer index mask (values >= 0).
        operations: list of :class:`Operation` (see :func:`make_operations`).
        seed: integer seed; the same seed gives the same result.
        mask_fill: mask value for pixels that come from outside the source image.

    Returns:
        ``(image, mask, applied)``: the augmented RGB uint8 image, the mask (same
        dtype family: uint8 when values fit) and the descriptions of the operations
        that were applied. Python's ``random`` and NumPy's global random state are
        restored afterwards.
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3); received {image.shape}")
    if mask.shape != image.shape[:2]:
        raise DataError(
            f"mask is {mask.shape[1]}x{mask.shape[0]} but image is {image.shape[1]}x{image.shape[0]}; "
            "they must have the same size"
        )
    if mask.size and mask.min() < 0:
        raise DataError("mask values must be >= 0")
    img = Image.fromarray(np.ascontiguousarray(image.astype(np.uint8)), mode="RGB")
    # Mask as 32-bit integers shifted by one, so 0 marks "outside the source image".
    msk = Image.fromarray(mask.astype(np.int32) + 1, mode="I")
    py_state, np_state = random.getstate(), np.random.get_state()
    applied = []
    try:
        with warnings.catch_warnings():
            # Augmentor's Skew builds an np.matrix, which NumPy flags as pending deprecation.
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            random.seed(seed)
            np.random.seed(seed)
            decide = random.Random(seed ^ 0x5EED)
            for op in operations:
                if decide.random() >= op.probability:
                    continue
                if op.kind == GEOMETRIC:
                    # same random draws for image and mask; the mask is sampled nearest-neighbour
                    state = (random.getstate(), np.random.get_state())
                    img = op.op.perform_operation([img])[0]
                    random.setstate(state[0])
                    np.random.set_state(state[1])
                    with _nearest_resampling():
                        msk = op.op.perform_operation([msk])[0]
                    if img.size != msk.size:  # pragma: no cover - both follow the same code path
                        raise RuntimeError(f"{op.name} gave image {img.size} but mask {msk.size}")
                else:
                    img = op.op.perform_operation([img])[0]
                applied.append(op.describe())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    out_img = np.asarray(img.convert("RGB"), dtype=np.uint8)
    m = np.asarray(msk, dtype=np.int64) - 1
    m[m < 0] = mask_fill
    dtype = np.uint8 if m.size == 0 or m.max() < 256 else np.uint16
    return out_img, m.astype(dtype), applied


def _mask_palette(path):
    try:
        with Image.open(path) as im:
            if im.mode == "P" and im.getpalette():
                return np.array(im.getpalette()[:768], dtype=np.uint8).reshape(-1, 3)
    except Exception:
        pass
    return None


def augment_folder(
    image_dir,
    mask_dir,
    out_image_dir,
    out_mask_dir,
    samples_per_image=5,
    seed=0,
    operations=None,
    mask_fill=DEFAULT_IGNORE_INDEX,
    copy_originals=False,
    overwrite=False,
    manifest_path=None,
    log=None,
):
    """Write augmented copies of every image/mask pair of a folder.

    Args:
        image_dir, mask_dir: input images and their index masks (paired by stem).
        out_image_dir, out_mask_dir: where the results go (created if missing; may be
            the input folders).
        samples_per_image: augmented copies per pair.
        seed: run seed; each file's randomness depends only on the seed, its stem
            and the sample number, so adding files does not change the others.
        operations: see :func:`make_operations`.
        mask_fill: mask value for pixels from outside the source image.
        copy_originals: also copy the un-augmented pairs to the output folders.
        overwrite: replace output files that already exist (otherwise an error).
        manifest_path: where to write the manifest (default
            ``<out_image_dir>/augment_manifest.json``).

    Output names are ``<stem>_aug<k>`` (image keeps its extension, mask is
    ``.png``), so each augmented image pairs with its mask by stem. Every file is
    written atomically; all names are checked before anything is written.

    Returns:
        The manifest dict (also written as JSON): settings and one record per
        generated pair (``image``, ``mask``, ``source_image``, ``source_mask``,
        ``sample``, ``seed``, ``operations`` applied).
    """
    if int(samples_per_image) < 1 and not copy_originals:
        raise DataError(f"--samples_per_image must be >= 1; received {samples_per_image}")
    if os.path.abspath(out_image_dir) == os.path.abspath(out_mask_dir):
        raise DataError(
            f"--augtrain_path and --augtrain_mask are the same folder ({out_image_dir}); images and masks "
            "share their names, so give them separate folders"
        )
    operations = make_operations(operations)
    pairs = pair_by_stem(image_dir, mask_dir)
    width = max(2, len(str(int(samples_per_image) - 1)))
    plan = []
    for ip, mp in pairs:
        stem = os.path.splitext(os.path.basename(ip))[0]
        ext = os.path.splitext(ip)[1].lower()
        ext = ".jpg" if ext in (".jpg", ".jpeg") else ".png"
        if copy_originals:
            plan.append((ip, mp, None, stem + ext, stem + ".png"))
        for k in range(int(samples_per_image)):
            name = f"{stem}_aug{k:0{width}d}"
            plan.append((ip, mp, k, name + ext, name + ".png"))
    targets = [os.path.join(out_image_dir, p[3]) for p in plan] + [os.path.join(out_mask_dir, p[4]) for p in plan]
    same_dirs = os.path.abspath(out_image_dir) == os.path.abspath(image_dir)
    if same_dirs and copy_originals:
        raise DataError("--copy_originals with the output folder equal to the input folder would copy files onto themselves")
    existing = [t for t in targets if os.path.exists(t)]
    if existing and not overwrite:
        raise DataError(
            f"{len(existing)} output file(s) already exist (e.g. {existing[0]}); choose empty output folders "
            "or pass --overwrite"
        )
    manifest_path = manifest_path or os.path.join(out_image_dir, "augment_manifest.json")
    created = missing_dirs(out_image_dir) + missing_dirs(out_mask_dir)
    os.makedirs(out_image_dir, exist_ok=True)
    os.makedirs(out_mask_dir, exist_ok=True)
    # Everything is written to hidden staging folders first and moved into place at the
    # end, so an error half-way leaves no partial set of augmented files behind; the
    # staging folders a killed run left are removed first.
    stages = []
    try:
        for d in (out_image_dir, out_mask_dir):
            sweep_stale_stages(d)
            stages.append(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=d))
            write_stage_owner(stages[-1])
        stage_img, stage_msk = stages
        records = _run_plan(plan, stage_img, stage_msk, operations, seed, mask_fill, log)
        for _, _, _, iname, mname in plan:
            os.replace(os.path.join(stage_img, iname), os.path.join(out_image_dir, iname))
            os.replace(os.path.join(stage_msk, mname), os.path.join(out_mask_dir, mname))
    except BaseException:
        for st in stages:
            shutil.rmtree(st, ignore_errors=True)
        for d in sorted(created, key=len, reverse=True):  # a failed run leaves no new folders
            try:
                os.rmdir(d)
            except OSError:
                pass
        raise
    finally:
        for st in stages:
            shutil.rmtree(st, ignore_errors=True)
    manifest = {
        "image_dir": os.path.abspath(image_dir),
        "mask_dir": os.path.abspath(mask_dir),
        "out_image_dir": os.path.abspath(out_image_dir),
        "out_mask_dir": os.path.abspath(out_mask_dir),
        "samples_per_image": int(samples_per_image),
        "seed": int(seed),
        "mask_fill": int(mask_fill),
        "operations": [op.to_dict() for op in operations],
        "items": records,
    }
    with atomic_path(manifest_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
    return manifest


def _record(iname, mname, ip, mp, k, s, shape, applied):
    return {
        "image": iname,
        "mask": mname,
        "source_image": ip,
        "source_mask": mp,
        "sample": k,
        "seed": s,
        "size": [int(shape[0]), int(shape[1])],
        "operations": applied,
    }


def _run_plan(plan, out_image_dir, out_mask_dir, operations, seed, mask_fill, log):
    records = []
    cache = {}
    for ip, mp, k, iname, mname in progress(plan, "augmenting"):
        if ip not in cache:
            cache.clear()
            cache[ip] = (read_image(ip), read_label(mp), _mask_palette(mp))
        img, msk, pal = cache[ip]
        if msk.shape != img.shape[:2]:
            raise DataError(
                f"mask {mp} is {msk.shape[1]}x{msk.shape[0]} but image {ip} is {img.shape[1]}x{img.shape[0]}; "
                "masks must have their image's size"
            )
        stem = os.path.splitext(os.path.basename(ip))[0]
        if k is None:  # an original: copy the image bytes when the format is kept
            if os.path.splitext(ip)[1].lower() in (".jpg", ".jpeg", ".png"):
                shutil.copyfile(ip, os.path.join(out_image_dir, iname))
            else:
                write_image(os.path.join(out_image_dir, iname), img)
            write_label(os.path.join(out_mask_dir, mname), msk, palette=pal)
            records.append(_record(iname, mname, ip, mp, None, None, img.shape, []))
            continue
        s = _seed_for(seed, stem, k)
        out_img, out_msk, applied = augment_pair(img, msk, operations, s, mask_fill)
        write_image(os.path.join(out_image_dir, iname), out_img)
        write_label(os.path.join(out_mask_dir, mname), out_msk, palette=pal)
        records.append(_record(iname, mname, ip, mp, k, s, out_img.shape, applied))
        if log:
            log(f"{iname}: {', '.join(applied) or 'original'}")
    return records


__all__ = [
    "OPERATIONS",
    "DEFAULT_OPERATIONS",
    "Operation",
    "make_operations",
    "augment_pair",
    "augment_folder",
]
