"""Is an exported file the Keras model? The parity check, its tolerances and its images.

:func:`parity_check` runs the Keras model and an exported copy on the same
network inputs and compares probabilities (largest absolute difference) and
masks (share of pixels whose argmax differs) against tolerances that depend on
the numeric precision (:data:`TOLERANCES`). The inputs (:func:`sample_images`)
and the int8 calibration images (:func:`calibration_images`) are read by
:func:`kseg.data.io.read_image` for the model's ``input_channels`` and made by
:func:`kseg.data.preprocess.network_input`, the functions the predictor feeds its
model with, so an export is checked on exactly what prediction will give it.
"""

import os

import numpy as np

from kseg.config import ExperimentConfig
from kseg.errors import ExportError, KsegError
from kseg.export.model import uses_argmax_unpooling
from kseg.data.preprocess import config_input
from kseg.runtime import first_line, make_runner

# Parity tolerances by numeric precision: (max |p_keras - p_exported|, share of pixels whose argmax differs).
# float32 runtimes differ from TensorFlow by float rounding only (typically 1e-7..1e-4);
# fp16 weights cost ~3 decimal digits; int8 is a coarse approximation whose error depends on
# the model and the calibration data, hence the loose bound (reported with the result).
TOLERANCES = {
    "float32": (1e-3, 1e-3),
    "float16": (2e-2, 1e-2),
    "int8": (0.35, 0.15),
}
# Models that unpool with max-pooling indices (SegNet, ENet: MaxPoolingWithArgmax2D) turn float
# rounding into discrete moves: when two values of a 2x2 window are within rounding of each other
# the runtime may pick the other one, and the unpooled value lands one pixel away. That is local
# and rare (one index in 500k at 256x256 for an untrained SegNet) but can move a probability by
# more than the float32 bound, so those models get at least these bounds (stated in the report).
ARGMAX_UNPOOL_TOLERANCE = (0.25, 5e-3)


def tolerances(model, precision, atol, max_mismatch):
    """``(atol, max_mismatch, reason)``: explicit values win, else the defaults for the precision/model."""
    d_atol, d_mis = TOLERANCES[precision]
    why = ""
    if uses_argmax_unpooling(model) and (atol is None or max_mismatch is None):
        d_atol, d_mis = max(d_atol, ARGMAX_UNPOOL_TOLERANCE[0]), max(d_mis, ARGMAX_UNPOOL_TOLERANCE[1])
        why = ("tolerance widened for max-unpooling with indices: a near-tie in a 2x2 window may resolve "
               "differently and move a value by one pixel")
    return (d_atol if atol is None else float(atol), d_mis if max_mismatch is None else float(max_mismatch), why)


def calibration_images(image_dir, config, size=None, limit=100):
    """Up to ``limit`` images of ``image_dir`` as the predictor feeds them (normalise + resize/letterbox)."""
    config = ExperimentConfig.coerce(config)
    from kseg.data.io import IMAGE_EXTENSIONS, list_files, read_image

    size = size or (config.input_height, config.input_width)
    if not os.path.isdir(image_dir):
        raise ExportError(f"--calibration_dir {image_dir} does not exist; pass a folder of training images")
    files = list_files(image_dir, IMAGE_EXTENSIONS)[: int(limit)]
    if not files:
        raise ExportError(f"--calibration_dir {image_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return np.stack([config_input(read_image(p, config.input_channels), config, size)
                     for p in files]).astype(np.float32)


def _dataset_dirs(config):
    root = config.dataset or ""
    return [os.path.join(root, f"{s}_image") for s in ("test", "val", "train")] if root else []


def sample_images(config, size, n=4, image_dirs=None, seed=0):
    """``n`` network inputs of ``size`` for the parity check.

    Real images come first (``image_dirs``, default the experiment dataset's
    test/val/train images, preprocessed like the predictor does); when there are
    not enough, deterministic random images fill up the batch.
    """
    config = ExperimentConfig.coerce(config)
    from kseg.data.io import IMAGE_EXTENSIONS, list_files, read_image

    out = []
    for d in image_dirs if image_dirs is not None else _dataset_dirs(config):
        if len(out) >= n or not os.path.isdir(d):
            continue
        for p in list_files(d, IMAGE_EXTENSIONS)[: n - len(out)]:
            try:
                out.append(config_input(read_image(p, config.input_channels), config, size))
            except KsegError:
                continue
    rng = np.random.default_rng(seed)
    while len(out) < n:
        noise = rng.integers(0, 256, size=(size[0], size[1], config.input_channels), dtype=np.uint8)
        out.append(config_input(noise, config, size))
    return np.stack(out).astype(np.float32)


# ------------------------------------------------------------------------------------------
# Parity


def parity_check(model, exported, images, *, fmt=None, precision="float32", atol=None, max_mismatch=None,
                 batch_size=2):
    """Compare the Keras model with an exported copy on the same inputs.

    Args:
        model: the Keras model.
        exported: a run callable, or the path of an exported file (then ``fmt`` is needed).
        images: float32 network inputs ``(N, h, w, C)`` or a list of such arrays
            (several sizes for a size-free export).
        fmt: format of ``exported`` when it is a path.
        precision: ``"float32"``, ``"float16"`` or ``"int8"``; picks the default tolerances.
        atol: largest allowed ``max |p_keras - p_exported|`` (default from :data:`TOLERANCES`).
        max_mismatch: largest allowed share of pixels whose argmax differs.
        batch_size: images per forward pass (>1 exercises a dynamic batch axis).

    Returns:
        A dict with ``max_abs_diff``, ``mean_abs_diff``, ``argmax_mismatch_ratio``,
        ``n_images``, ``sizes``, ``atol``, ``max_mismatch``, ``precision`` and ``passed``.
    """
    import keras

    run = make_runner(fmt, exported) if isinstance(exported, (str, os.PathLike)) else exported
    d_atol, d_mis = TOLERANCES[precision]
    atol = d_atol if atol is None else float(atol)
    max_mismatch = d_mis if max_mismatch is None else float(max_mismatch)
    groups = images if isinstance(images, (list, tuple)) else [images]
    max_diff, sum_diff, n_vals, n_mis, n_pix, n_img, sizes = 0.0, 0.0, 0, 0, 0, 0, []
    for group in groups:
        group = np.asarray(group, np.float32)
        sizes.append(list(group.shape[1:3]))
        for i in range(0, len(group), batch_size):
            x = group[i : i + batch_size]
            ref = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), np.float32)
            try:
                got = np.asarray(run(x), np.float32)
            except KsegError:
                raise
            except Exception as e:
                raise ExportError(f"the exported model fails on a {x.shape} batch: {type(e).__name__}: "
                                  f"{first_line(e)}") from None
            if got.shape != ref.shape:
                raise ExportError(f"exported model returns shape {got.shape}, Keras {ref.shape}; re-export it")
            diff = np.abs(got - ref)
            diff[~np.isfinite(diff)] = np.inf  # NaN from the runtime must fail, not vanish in max()
            max_diff = max(max_diff, float(diff.max()))
            sum_diff += float(diff.sum())
            n_vals += diff.size
            if ref.shape[-1] == 1:
                mis = (ref[..., 0] > 0.5) != (got[..., 0] > 0.5)
            else:
                mis = ref.argmax(-1) != got.argmax(-1)
            n_mis += int(mis.sum())
            n_pix += mis.size
            n_img += len(x)
    ratio = n_mis / max(n_pix, 1)
    return {
        "max_abs_diff": max_diff,
        "mean_abs_diff": sum_diff / max(n_vals, 1),
        "argmax_mismatch_ratio": ratio,
        "n_images": n_img,
        "sizes": sizes,
        "precision": precision,
        "atol": atol,
        "max_mismatch": max_mismatch,
        "passed": bool(max_diff <= atol and ratio <= max_mismatch),
    }


def format_parity(report):
    """One line describing a parity report."""
    return (f"parity ({report['precision']}, {report['n_images']} images at "
            f"{', '.join('x'.join(map(str, s)) for s in report['sizes'])}): "
            f"max |dp| = {report['max_abs_diff']:.2e} (tolerance {report['atol']:g}), "
            f"argmax differs on {100 * report['argmax_mismatch_ratio']:.3f}% of pixels "
            f"(tolerance {100 * report['max_mismatch']:g}%): {'ok' if report['passed'] else 'FAILED'}")
