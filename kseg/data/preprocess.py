"""Image normalisation and geometric pre/post-processing shared by training and prediction.

:func:`normalize` is THE rule that turns decoded pixels (:func:`kseg.data.io.read_image`:
``uint8`` or ``uint16``, any number of channels) into network input, used by the
``tf.data`` pipeline (inside its ``tf.numpy_function``), the predictor, the export's
parity and calibration images and the web demo:

* with a per-channel ``mean`` and ``std`` (``dataset.json`` or ``--mean`` / ``--std``,
  one value per input channel, in the file's own units: 0-255 for 8-bit files,
  0-65535 for 16-bit ones): ``(x - mean) / std``, nothing else;
* otherwise ``image_init`` on the pixel type's range ``R`` (255 for 8-bit, 65535 for
  16-bit files): ``divide`` = ``x / R``, ``sub_and_divide`` = ``x / (R / 2) - 1``,
  ``sub_mean`` = ``x * 255 / R`` minus the ImageNet RGB mean (3 channels only).

The geometric functions (numpy, used by the predictor) have TensorFlow twins in
``kseg.data.pipeline`` with the same conventions: bilinear for images,
nearest-neighbour for labels, letterbox = aspect-preserving resize centred on a
zero (image) / ignore (label) canvas.
"""

import cv2
import numpy as np

from kseg.config import ExperimentConfig, IGNORE_INDEX
from kseg.errors import ConfigError, DataError, UnknownNameError

IMAGENET_MEAN_RGB = np.array([123.675, 116.28, 103.53], np.float32)
IMAGE_INITS = ("divide", "sub_and_divide", "sub_mean")
RESIZE_OPS = {1: "resize", 2: "letterbox"}


def check_image_init(name):
    if name not in IMAGE_INITS:
        raise UnknownNameError(
            f"unknown --image_init {name!r}; valid: {', '.join(IMAGE_INITS)}"
        )
    return name


def check_resize_op(op):
    if int(op) not in RESIZE_OPS:
        raise UnknownNameError(f"unknown --resize_op {op!r}; valid: 1 (resize), 2 (letterbox)")
    return int(op)


def value_range(dtype):
    """The largest value of a pixel type: 65535 for ``uint16``, else 255 (8-bit and float input)."""
    return 65535.0 if np.dtype(dtype) == np.uint16 else 255.0


def normalize(image, image_init="divide", mean=None, std=None):
    """Decoded pixels ``(H, W, C)`` -> float32 network input (the rule of the module docstring).

    ``mean`` / ``std``: per-channel lists (length ``C``) in the image's units; when given
    they replace ``image_init``.
    """
    x = np.asarray(image)
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise ConfigError("mean and std go together: give both (std 1 for mean subtraction only)")
        c = x.shape[-1] if x.ndim == 3 else 1
        m, s = np.asarray(mean, np.float32).reshape(-1), np.asarray(std, np.float32).reshape(-1)
        if len(m) != c or len(s) != c:
            raise DataError(f"the image has {c} channel(s) but mean/std have {len(m)}/{len(s)} values; "
                            "give one mean and one std per input channel")
        return (x.astype(np.float32) - m) / s
    r = value_range(x.dtype)
    x = x.astype(np.float32)
    if image_init == "divide":
        return x / np.float32(r)
    if image_init == "sub_and_divide":
        return x / np.float32(r / 2.0) - 1.0
    if image_init == "sub_mean":
        c = x.shape[-1] if x.ndim == 3 else 1
        if c != 3:
            raise ConfigError(f"--image_init sub_mean subtracts the ImageNet RGB mean, but the images have {c} "
                              "channel(s); use --mean and --std (kseg doctor prints them) or --image_init divide")
        return (x * np.float32(255.0 / r) if r != 255.0 else x) - IMAGENET_MEAN_RGB
    raise UnknownNameError(f"unknown image_init {image_init!r}; valid: {', '.join(IMAGE_INITS)}")


def network_input(image, size, image_init="divide", resize_op=1, mean=None, std=None):
    """One decoded image -> the float32 ``(h, w, C)`` network input of ``size=(h, w)``.

    The image is normalised (:func:`normalize`: ``mean`` / ``std``, else ``image_init``)
    first and then resized (``resize_op`` 1) or letterboxed (2), so letterbox padding is
    0 in normalised space -- the order and padding of the training pipeline. The
    predictor's ``resize`` mode and the export's parity-check and int8-calibration
    images all come from here.
    """
    return resize_image(normalize(image, image_init, mean, std), tuple(size), int(resize_op))


def config_input(image, config, size=None):
    """:func:`network_input` with the normalisation, ``resize_op`` (and size) of an experiment config."""
    config = ExperimentConfig.coerce(config)
    size = size or (config.input_height, config.input_width)
    return network_input(image, size, check_image_init(config.image_init), check_resize_op(config.resize_op),
                         getattr(config, "mean", None), getattr(config, "std", None))


def letterbox_params(h, w, out_h, out_w):
    """Scale and placement of an ``h x w`` image letterboxed into ``out_h x out_w``.

    Returns ``(new_h, new_w, top, left)``: the resized size and its offset.
    """
    scale = min(out_h / h, out_w / w)
    nh = min(out_h, max(1, int(round(h * scale))))
    nw = min(out_w, max(1, int(round(w * scale))))
    return nh, nw, (out_h - nh) // 2, (out_w - nw) // 2


def resize_image(image, size, resize_op=1, pad_value=0):
    """Resize (op 1) or letterbox (op 2) an ``(H, W, C)`` array to ``size=(h, w)`` (bilinear)."""
    out_h, out_w = size
    h, w = image.shape[:2]
    if resize_op == 1:
        return _cv_resize(image, out_w, out_h, cv2.INTER_LINEAR)
    nh, nw, top, left = letterbox_params(h, w, out_h, out_w)
    canvas = np.full((out_h, out_w) + image.shape[2:], pad_value, dtype=image.dtype)
    canvas[top : top + nh, left : left + nw] = _cv_resize(image, nw, nh, cv2.INTER_LINEAR)
    return canvas


def resize_label(label, size, resize_op=1, ignore_index=IGNORE_INDEX):
    """Resize a label with nearest neighbour (op 1) or letterbox it padding with ``ignore_index``."""
    out_h, out_w = size
    h, w = label.shape[:2]
    if resize_op == 1:
        return _cv_resize(label, out_w, out_h, cv2.INTER_NEAREST)
    nh, nw, top, left = letterbox_params(h, w, out_h, out_w)
    canvas = np.full((out_h, out_w), ignore_index, dtype=label.dtype)
    canvas[top : top + nh, left : left + nw] = _cv_resize(label, nw, nh, cv2.INTER_NEAREST)
    return canvas


def restore_size(prob, orig_hw, resize_op=1):
    """Map network-size scores ``(h, w, C)`` back to the original ``(H, W)``.

    For letterbox the padding is cropped away first. Scores are resized
    bilinearly (then argmax'ed by the caller), never the hard labels.
    """
    H, W = orig_hw
    h, w = prob.shape[:2]
    if resize_op == 2:
        nh, nw, top, left = letterbox_params(H, W, h, w)
        prob = prob[top : top + nh, left : left + nw]
    return _cv_resize(prob, W, H, cv2.INTER_LINEAR)


def _cv_resize(a, w, h, interp):
    if a.shape[0] == h and a.shape[1] == w:
        return a.copy()
    if a.ndim == 3 and a.shape[2] > 4:
        # cv2 handles at most 512 channels reliably; split to be safe for big C
        chunks = [cv2.resize(a[..., i : i + 4], (w, h), interpolation=interp) for i in range(0, a.shape[2], 4)]
        chunks = [c if c.ndim == 3 else c[..., None] for c in chunks]
        return np.concatenate(chunks, axis=2)
    dtype = a.dtype
    if dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        a = a.astype(np.int32 if interp == cv2.INTER_NEAREST else np.float32)
        if interp == cv2.INTER_NEAREST:
            # cv2 cannot resize int32 with INTER_NEAREST on all builds: use indices
            ys = np.minimum(((np.arange(h) + 0.5) * a.shape[0] / h).astype(np.int64), a.shape[0] - 1)
            xs = np.minimum(((np.arange(w) + 0.5) * a.shape[1] / w).astype(np.int64), a.shape[1] - 1)
            return a[ys][:, xs].astype(dtype)
    out = cv2.resize(a, (w, h), interpolation=interp)
    if a.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out.astype(dtype, copy=False)
