"""The Flask application of the web demo.

Routes:

* ``GET /`` -- the upload page (``templates/index.html`` + ``static/app.js``);
* ``GET /api/info`` -- the model name, classes (id, name, colour), input size and limits;
* ``POST /api/predict`` -- an image (multipart field ``image``, or a raw body with an
  ``image/*`` content type) -> JSON with per-class statistics, the image size, the
  size it was predicted at, the inference time and the URLs of the original, the
  colour mask and the overlay;
* ``GET /results/<id>/<file>`` -- those result images.

Uploads are decoded by training's own reader (:func:`kseg.data.io.decode_image` /
:func:`~kseg.data.io.to_channels`) for the model's ``input_channels``, so the demo
reads a file exactly as training did (multi-band and 16-bit TIFFs included); the
original and the overlay show its 8-bit RGB picture (:func:`kseg.data.io.display_image`).

Robustness: every error caused by the request (no file, empty file, not an image,
corrupt image, a body over ``max_upload_mb`` -- with or without ``Content-Length``,
i.e. also ``Transfer-Encoding: chunked`` -- or an image over ``max_pixels`` /
``max_side``) is a 4xx JSON ``{"error": "<one line>", "status": N}``. A body is never
read past ``max_upload_mb`` (+1 byte). The image size is read from the file header
before any pixel is decoded (Pillow's ``Image.open`` is lazy), so a "decompression
bomb" is refused without allocating it, and before the request waits for the model.
Anything unexpected is logged with its traceback and answered with a generic JSON
500; the server keeps running.

Work per request is bounded. Images with more than ``slide_above`` pixels are
segmented with a sliding window of the network input size, at most ``max_tiles``
windows per request: a larger image is downscaled for prediction just enough to fit
that budget (the windows, their score map and the preprocessed copy all stay at
that size) and its mask is scaled back to the original size (nearest neighbour).
Smaller images are resized to the network size (one window); their score map is
kept at the original size up to ``MAX_SCORE_PIXELS``, above it the same
downscale-then-upscale applies. The answer says what happened: ``prediction_size``,
``windows`` and ``downscaled``. Decoding and the result images are at the original
size, bounded by ``max_pixels``.

Queueing: one request uses the model at a time (Keras models are not guaranteed
thread-safe, and it bounds memory to one image), the others wait in arrival order.
At most ``max_queue`` requests wait; one more is answered at once with a JSON 503
and a ``Retry-After`` header, as is a request that waited ``busy_timeout`` seconds.
The body is read and the image header checked before a request joins the queue,
so a slow upload does not hold a place in it.

Result files live in ``results_dir`` (a temporary folder removed at exit by
default), one folder per result named by a random token; only the
``max_results`` most recent results younger than ``result_ttl_minutes`` are kept
(older ones are deleted), so the folder cannot grow without bound.
"""

import atexit
import io
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import warnings
from collections import OrderedDict, deque

import numpy as np
from PIL import Image

from kseg.data.io import TIFF_MAGIC
from kseg.errors import DataError, KsegError, UploadError

try:
    import flask
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
except ImportError:  # pragma: no cover - depends on the installed extras
    raise KsegError("the web demo needs Flask; install it with: pip install 'kseg[serve]'") from None

log = logging.getLogger("kseg.serve")

DEFAULT_MAX_UPLOAD_MB = 20
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_SIDE = 16384
DEFAULT_SLIDE_ABOVE = 1024 * 1024
DEFAULT_MAX_TILES = 64
DEFAULT_MAX_QUEUE = 4
DEFAULT_MAX_RESULTS = 100
DEFAULT_MAX_RESULTS_MB = 500
DEFAULT_RESULT_TTL_MINUTES = 60
DEFAULT_BUSY_TIMEOUT = 120.0
#: In resize mode the class scores are restored at the original size up to this many
#: pixels; above it at a size with this many pixels, and the mask is scaled up.
MAX_SCORE_PIXELS = 1024 * 1024
#: Rows of the overlay are blended in bands of about this many pixels (bounded memory).
_BAND_PIXELS = 1 << 20

#: Pillow formats accepted for uploads (others are refused before any decoding).
ACCEPTED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")  # JPEG includes camera MPO files
#: The files of one result and their MIME types.
RESULT_FILES = {"original.jpg": "image/jpeg", "mask.png": "image/png", "overlay.png": "image/png"}
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")  # secrets.token_urlsafe(16)


# ---------------------------------------------------------------------------------- decoding
def open_image(data, *, max_pixels=DEFAULT_MAX_PIXELS, max_side=DEFAULT_MAX_SIDE, name="the upload"):
    """Open uploaded bytes lazily and check the size from the header; no pixel is decoded.

    Returns:
        The lazily opened ``PIL.Image`` (``.size`` is ``(width, height)``), or for a TIFF
        (read by tifffile, as training reads it) a :class:`_TiffHeader` with ``size``.

    Raises:
        UploadError: 400 for empty / non-image data or an invalid size, 413 for an
            image with more than ``max_pixels`` pixels or a side longer than ``max_side``.
    """
    if not data:
        raise UploadError(f"{name} is empty (0 bytes); choose an image file")
    formats = ", ".join(sorted(ACCEPTED_FORMATS))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            im = _tiff_header(data) if data[:4] in TIFF_MAGIC else Image.open(io.BytesIO(data),
                                                                                formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError:
        raise UploadError(f"{name} is too large in pixels; the limit is {_pixels(max_pixels)}", 413) from None
    except Exception:  # Pillow and tifffile raise several types for data they cannot identify
        raise UploadError(f"{name} is not a supported image ({formats}); upload an image file") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise UploadError(f"{name} has an invalid size {w}x{h}; upload another image")
    if w * h > max_pixels:
        raise UploadError(f"{name} is {w}x{h} pixels, more than the limit of {_pixels(max_pixels)}; "
                          "downscale it first", 413)
    if max(w, h) > max_side:
        raise UploadError(f"{name} is {w}x{h} pixels, longer than the limit of {max_side} pixels per side; "
                          "crop or downscale it first", 413)
    return im


class _TiffHeader:
    """The size of a TIFF's first full-resolution page, read from its header by tifffile."""

    format = "TIFF"

    def __init__(self, size):
        self.size = size


def _tiff_header(data):
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        return _TiffHeader((int(page.imagewidth), int(page.imagelength)))


def decode_image(data, *, max_pixels=DEFAULT_MAX_PIXELS, max_side=DEFAULT_MAX_SIDE, name="the upload", channels=3):
    """Decode uploaded bytes into the image a model of ``channels`` input channels takes.

    The size is checked from the header (:func:`open_image`) before the pixels are
    decoded; then the pixels are decoded by training's own reader
    (:func:`kseg.data.io.decode_image` and :func:`~kseg.data.io.to_channels`, GIF
    uploads too): with 3 channels grey, 16-bit grey, palette, CMYK and images with an
    alpha channel become RGB (the alpha channel is dropped), multi-band TIFFs keep
    their bands for a model trained on them. The EXIF orientation of camera photos is
    applied; animated images give their first frame.

    Raises:
        UploadError: 400 for empty / non-image / corrupt data or channels the model does
            not take, 413 for an image with more than ``max_pixels`` pixels or a side
            longer than ``max_side``.
    """
    from kseg.data.io import Decoded, decode_image as read_pixels, to_channels

    im = open_image(data, max_pixels=max_pixels, max_side=max_side, name=name)
    orientation = 1
    if isinstance(im, Image.Image):
        try:
            orientation = int(im.getexif().get(0x0112) or 1)
        except Exception:  # a broken EXIF block: keep the stored orientation
            pass
    try:
        decoded = read_pixels(data, name=name, formats=ACCEPTED_FORMATS)
        return to_channels(Decoded(_orient(decoded.pixels, orientation), decoded.alpha), channels, name)
    except DataError as e:
        msg = str(e)
        if msg.startswith(("cannot decode", "cannot read")):
            raise UploadError(f"{name} is a corrupt or truncated {im.format} image; upload another file") from None
        raise UploadError(msg[len("image "):] if msg.startswith("image ") else msg) from None


def _orient(a, orientation):
    """Apply an EXIF orientation (1-8) to ``(H, W, C)`` pixels, as Pillow's ``exif_transpose`` does."""
    turn = {2: lambda: a[:, ::-1], 3: lambda: a[::-1, ::-1], 4: lambda: a[::-1], 5: lambda: a.transpose(1, 0, 2),
            6: lambda: np.rot90(a, -1), 7: lambda: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda: np.rot90(a, 1)}
    return np.ascontiguousarray(turn[orientation]()) if orientation in turn else a


def _pixels(n, times="x"):
    side = math.isqrt(int(n))
    return f"{side}{times}{side} pixels" if side * side == n else f"{n} pixels"


# ---------------------------------------------------------------------------------- results
class ResultStore:
    """Result folders ``<root>/<token>/``, capped in number, total size and age.

    Only folders created by this store (and fully written) are served; the
    oldest are deleted beyond ``max_results``, when all together take more than
    ``max_bytes`` (the newest result is always kept), or after ``ttl`` seconds.
    """

    def __init__(self, root, max_results, ttl, max_bytes=float("inf"), clock=time.monotonic):
        self.root = root
        self.max_results = max_results
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.clock = clock
        self._items = OrderedDict()  # token -> (creation time, bytes), oldest first
        self._bytes = 0
        self._lock = threading.Lock()
        os.makedirs(root, exist_ok=True)

    def new(self):
        """A fresh (unregistered) folder; returns ``(token, path)``."""
        while True:
            token = secrets.token_urlsafe(16)
            path = os.path.join(self.root, token)
            try:
                os.mkdir(path)
                return token, path
            except FileExistsError:  # pragma: no cover - 128 random bits
                continue

    def add(self, token):
        """Register a fully written result and prune old ones."""
        folder = os.path.join(self.root, token)
        size = sum(e.stat().st_size for e in os.scandir(folder) if e.is_file())
        with self._lock:
            self._items[token] = (self.clock(), size)
            self._bytes += size
        self.prune()

    def discard(self, token):
        with self._lock:
            _, size = self._items.pop(token, (0, 0))
            self._bytes -= size
        shutil.rmtree(os.path.join(self.root, token), ignore_errors=True)

    def prune(self):
        now = self.clock()
        doomed = []
        with self._lock:
            while self._items:
                token, (created, size) = next(iter(self._items.items()))
                if (len(self._items) > self.max_results or now - created > self.ttl
                        or (self._bytes > self.max_bytes and len(self._items) > 1)):
                    self._items.popitem(last=False)
                    self._bytes -= size
                    doomed.append(token)
                else:
                    break
        for token in doomed:
            shutil.rmtree(os.path.join(self.root, token), ignore_errors=True)

    def folder(self, token):
        """The folder of a live result, or None (unknown, malformed or expired token)."""
        if not isinstance(token, str) or not _TOKEN_RE.match(token):
            return None
        self.prune()
        with self._lock:
            if token not in self._items:
                return None
        return os.path.join(self.root, token)

    def __len__(self):
        with self._lock:
            return len(self._items)


# ---------------------------------------------------------------------------------- queueing
class QueueFull(Exception):
    """The model is busy and ``max_waiting`` requests are already waiting for it."""


class ModelGate:
    """One holder at a time; at most ``max_waiting`` others wait, served in arrival order.

    :meth:`acquire` returns True once the caller holds the gate, False after
    ``timeout`` seconds of waiting, and raises :class:`QueueFull` at once when
    ``max_waiting`` callers are already waiting. :meth:`release` hands the gate
    directly to the longest waiter.
    """

    def __init__(self, max_waiting):
        self.max_waiting = int(max_waiting)
        self._lock = threading.Lock()
        self._busy = False
        self._waiters = deque()  # one Event per waiting caller, oldest first

    @property
    def waiting(self):
        with self._lock:
            return len(self._waiters)

    @property
    def busy(self):
        with self._lock:
            return self._busy

    def acquire(self, timeout=None):
        with self._lock:
            if not self._busy:  # nobody holds it, so nobody waits either
                self._busy = True
                return True
            if len(self._waiters) >= self.max_waiting:
                raise QueueFull()
            ready = threading.Event()
            self._waiters.append(ready)
        if ready.wait(timeout):
            return True
        with self._lock:
            try:
                self._waiters.remove(ready)
            except ValueError:  # handed over between the timeout and this lock: we hold it
                return True
            return False

    def release(self):
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()  # stays busy: the gate passes to that waiter
            else:
                self._busy = False


class ServerBusy(Exception):
    """Answered with a JSON 503 and ``Retry-After``."""

    def __init__(self, message, retry_after):
        super().__init__(message)
        self.retry_after = retry_after


# ---------------------------------------------------------------------------------- sizes
def _scaled(h, w, long_side):
    """``(h, w)`` scaled so that the longer side is ``long_side`` (each side >= 1)."""
    if h >= w:
        return long_side, max(1, min(w, round(w * long_side / h)))
    return max(1, min(h, round(h * long_side / w))), long_side


def _largest_fitting(h, w, fits):
    """The largest ``(h', w') <= (h, w)`` of the image's aspect ratio for which ``fits``
    is true (``fits`` is monotone in the size and true for the smallest one)."""
    if fits(h, w):
        return h, w
    lo, hi = 1, max(h, w) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(*_scaled(h, w, mid)):
            lo = mid
        else:
            hi = mid - 1
    return _scaled(h, w, lo)


def _nearest_index(n_out, n_in):
    """Source index of each of ``n_out`` output pixels for a nearest-neighbour resize
    from ``n_in`` pixels (pixel centres aligned)."""
    return ((2 * np.arange(n_out, dtype=np.int64) + 1) * n_in) // (2 * n_out)


def _overlay(image, mask, palette):
    """:func:`kseg.data.palette.overlay` (no legend) computed in bands of rows, so its
    float temporaries stay small for large images; the result is the same."""
    from kseg.data.palette import overlay

    h, w = mask.shape
    rows = max(1, _BAND_PIXELS // max(1, w))
    out = np.empty(image.shape, np.uint8)
    for y in range(0, h, rows):
        out[y : y + rows] = overlay(image[y : y + rows], mask[y : y + rows], palette, legend=False)
    return out


# ---------------------------------------------------------------------------------- app
class DemoState:
    """What the routes share: the predictors, class table, limits, queue and result store."""

    def __init__(self, predictor, *, max_upload_mb, max_pixels, max_side, slide_above, store,
                 busy_timeout, max_tiles=DEFAULT_MAX_TILES, max_queue=DEFAULT_MAX_QUEUE):
        from kseg.data.palette import palette_for
        from kseg.predict import Predictor

        self.predictor = predictor
        self.slide_predictor = None
        if slide_above is not None:
            self.slide_predictor = Predictor(predictor.run, predictor.config, mode="slide",
                                             flip=predictor.flip, batch_size=predictor.batch_size,
                                             divisor=predictor.divisor)
        cfg = predictor.config
        self.config = cfg
        self.model_name = cfg.model_name or "model"
        folder = getattr(predictor, "folder", None)
        self.experiment = os.path.basename(os.path.normpath(folder)) if folder else None
        self.class_names = cfg.names()
        self.palette = palette_for(cfg.n_classes, cfg.palette).astype(np.uint8)
        self.max_upload_mb = max_upload_mb
        self.max_upload_bytes = int(max_upload_mb * 1024 * 1024)
        self.max_pixels = int(max_pixels)
        self.max_side = int(max_side)
        self.slide_above = slide_above
        self.max_tiles = int(max_tiles)
        self.max_queue = int(max_queue)
        self.store = store
        self.busy_timeout = busy_timeout
        self.gate = ModelGate(self.max_queue)
        self.window_seconds = None  # one forward pass of the network size, timed at warm-up
        self._request_seconds = None  # running mean of the time a request holds the model
        self._stats_lock = threading.Lock()

    # ---------------------------------------------------------------- description
    def class_table(self):
        return [{"id": i, "name": name, "color": "#%02x%02x%02x" % tuple(int(v) for v in self.palette[i])}
                for i, name in enumerate(self.class_names)]

    def max_model_seconds(self):
        """Estimated longest model time of one request (``max_tiles`` windows), or None."""
        if self.window_seconds is None:
            return None
        per_request = self.max_tiles if self.slide_predictor is not None else 1
        return per_request * self.window_seconds

    def info(self):
        est = self.max_model_seconds()
        return {
            "model": self.model_name,
            "experiment": self.experiment,
            "classes": self.class_table(),
            "n_classes": len(self.class_names),
            "input_size": {"height": self.predictor.size[0], "width": self.predictor.size[1]},
            "image_init": self.predictor.image_init,
            "input_channels": self.predictor.channels,
            "resize_op": self.predictor.resize_op,
            "mode": self.predictor.mode,
            "slide_above_pixels": self.slide_above,
            "max_upload_mb": self.max_upload_mb,
            "max_upload_bytes": self.max_upload_bytes,
            "max_pixels": self.max_pixels,
            "max_side": self.max_side,
            "max_tiles": self.max_tiles,
            "max_queue": self.max_queue,
            "busy_timeout_s": self.busy_timeout,
            "max_model_seconds_estimate": None if est is None else round(est, 3),
        }

    # ---------------------------------------------------------------- the work budget
    def plan(self, h, w):
        """``(predictor, (ph, pw), windows)``: how an ``h x w`` image is predicted.

        Slide mode (more than ``slide_above`` pixels): at the largest size of the
        image's aspect ratio, up to the original, whose sliding window needs at most
        ``max_tiles`` windows. Resize mode: one window; the scores are restored at
        the original size up to ``MAX_SCORE_PIXELS`` pixels, else at a smaller size.
        """
        sp = self.slide_predictor
        if sp is not None and h * w > self.slide_above:
            ph, pw = _largest_fitting(h, w, lambda a, b: len(sp.windows(a, b)) <= self.max_tiles)
            return sp, (ph, pw), len(sp.windows(ph, pw))
        ph, pw = _largest_fitting(h, w, lambda a, b: a * b <= MAX_SCORE_PIXELS)
        return self.predictor, (ph, pw), 1

    def retry_after(self):
        """Seconds a client should wait before trying again (whole seconds, 1 to 600)."""
        per = self._request_seconds or self.max_model_seconds() or 1.0
        return int(min(600, max(1, math.ceil(per * (self.gate.waiting + 1)))))

    def _record(self, seconds):
        with self._stats_lock:
            prev = self._request_seconds
            self._request_seconds = seconds if prev is None else 0.7 * prev + 0.3 * seconds

    # ---------------------------------------------------------------- the request
    def run_exclusive(self, data, filename):
        """:meth:`process` while holding the model; raises :class:`ServerBusy` when the
        queue is full (at once) or after ``busy_timeout`` seconds of waiting."""
        try:
            held = self.gate.acquire(timeout=self.busy_timeout)
        except QueueFull:
            raise ServerBusy(f"the server is busy and its queue is full ({self.max_queue} uploads waiting for "
                             "the model); try again in a moment", self.retry_after()) from None
        if not held:
            raise ServerBusy(f"the server stayed busy with other images for {self.busy_timeout:g} s; "
                             "try again in a moment", self.retry_after())
        t0 = time.perf_counter()
        try:
            return self.process(data, filename)
        finally:
            self._record(time.perf_counter() - t0)
            self.gate.release()

    def process(self, data, filename):
        """Decode, predict and write the result files; returns the response dict."""
        import cv2

        from kseg.data.io import display_image, write_image, write_label

        label = f"the upload {filename!r}" if filename else "the upload"
        image = decode_image(data, max_pixels=self.max_pixels, max_side=self.max_side, name=label,
                             channels=self.predictor.channels)
        h, w = image.shape[:2]
        pred, (ph, pw), n_windows = self.plan(h, w)
        small = image if (ph, pw) == (h, w) else np.concatenate(  # cv2 resizes at most 4 channels at once
            [cv2.resize(image[..., i : i + 4], (pw, ph), interpolation=cv2.INTER_AREA).reshape(ph, pw, -1)
             for i in range(0, image.shape[2], 4)], axis=2)
        t0 = time.perf_counter()
        proba = pred.predict_proba(small)
        dt = time.perf_counter() - t0
        del small
        n = len(self.class_names)
        if proba.shape[:2] != (ph, pw) or proba.shape[-1] > n:
            raise RuntimeError(f"the predictor returned shape {proba.shape} for a {ph}x{pw} image "
                               f"and {n} classes")
        mask = proba.argmax(-1).astype(np.uint8 if n <= 256 else np.uint16)
        conf = proba.max(-1).astype(np.float64)
        del proba
        if (ph, pw) == (h, w):
            weights = None
        else:  # each predicted pixel stands for a block of original pixels (nearest neighbour)
            ys, xs = _nearest_index(h, ph), _nearest_index(w, pw)
            weights = np.outer(np.bincount(ys, minlength=ph), np.bincount(xs, minlength=pw)).astype(np.float64)
            conf *= weights
        flat = mask.ravel()
        area = np.bincount(flat, weights=None if weights is None else weights.ravel(), minlength=n)[:n]
        conf_sum = np.bincount(flat, weights=conf.ravel(), minlength=n)[:n]
        del conf, weights
        if (ph, pw) != (h, w):
            mask = mask[ys][:, xs]
        classes = []
        for c in self.class_table():
            i = c["id"]
            a = int(round(area[i]))
            c.update(area_px=a, area_ratio=round(a / (h * w), 6),
                     mean_confidence=round(float(conf_sum[i] / a), 4) if a else None)
            classes.append(c)

        image = display_image(image)  # the 8-bit RGB picture of 16-bit or multi-band uploads
        token, folder = self.store.new()
        try:
            write_image(os.path.join(folder, "original.jpg"), image, quality=90)
            write_label(os.path.join(folder, "mask.png"), mask, self.palette)
            write_image(os.path.join(folder, "overlay.png"), _overlay(image, mask, self.palette))
        except BaseException:
            self.store.discard(token)
            raise
        self.store.add(token)
        log.info("%s: %dx%d predicted at %dx%d, %s mode, %d windows, %.0f ms", filename or "upload",
                 w, h, pw, ph, pred.mode, n_windows, dt * 1000)

        def url(name):
            return flask.url_for("result_file", token=token, name=name)

        return {
            "id": token,
            "model": self.model_name,
            "experiment": self.experiment,
            "filename": filename,
            "image_size": {"width": w, "height": h},
            "prediction_size": {"width": pw, "height": ph},
            "downscaled": (ph, pw) != (h, w),
            "mode": pred.mode,
            "windows": n_windows,
            "inference_ms": round(dt * 1000, 1),
            "classes": classes,
            "original_url": url("original.jpg"),
            "mask_url": url("mask.png"),
            "overlay_url": url("overlay.png"),
        }


def _positive(name, value):
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        raise KsegError(f"{name} must be a positive number; received {value!r}")
    return value


def _one_line(text):
    return " ".join(str(text).split())


def create_app(weights_path=None, *, predictor=None, max_upload_mb=DEFAULT_MAX_UPLOAD_MB,
               max_pixels=DEFAULT_MAX_PIXELS, max_side=DEFAULT_MAX_SIDE, slide_above=DEFAULT_SLIDE_ABOVE,
               max_tiles=DEFAULT_MAX_TILES, max_queue=DEFAULT_MAX_QUEUE,
               max_results=DEFAULT_MAX_RESULTS, max_results_mb=DEFAULT_MAX_RESULTS_MB,
               result_ttl_minutes=DEFAULT_RESULT_TTL_MINUTES, results_dir=None, busy_timeout=DEFAULT_BUSY_TIMEOUT,
               flip=False, batch_size=4, warmup=True, debug=False, runtime=None):
    """Build the demo's Flask app for one experiment.

    Args:
        weights_path: experiment folder (``weights/<exp>``) or a ``.keras`` file beside
            its ``config.json``.
        predictor: a ready :class:`kseg.predict.Predictor` instead of ``weights_path``.
        max_upload_mb: the largest request body accepted (413 above), with or without
            ``Content-Length``.
        max_pixels: the largest image accepted, in pixels (413 above); default 4096x4096.
        max_side: the longest image side accepted (413 above).
        slide_above: images with more pixels than this are segmented with a sliding
            window of the network size; ``None`` never slides.
        max_tiles: the most sliding windows one request may run; a larger image is
            downscaled for prediction until it fits, and its mask scaled back.
        max_queue: how many requests may wait for the model; more get a 503 at once.
        max_results: how many results (folders of images) are kept.
        max_results_mb: the most disk space all kept results may take, in MB.
        result_ttl_minutes: results older than this are deleted.
        results_dir: where results are written (default: a temporary folder removed at exit).
        busy_timeout: seconds a request waits for the model before a 503.
        flip: horizontal-flip test-time augmentation.
        batch_size: sliding-window tiles per forward pass.
        warmup: run forward passes at start-up so the first request is not slow (the
            second is timed to estimate the longest model time of a request).
        debug: add the exception text to JSON 500 answers (never an interactive debugger).
        runtime: how the ``.keras`` model runs (``"auto"``, ``"keras"``, ``"onnx"``; ``None``:
            ``$KSEG_RUNTIME``, else ``auto``; see :meth:`kseg.predict.Predictor.from_experiment`).
            The choice is logged and is ``app.extensions["kseg"].predictor.runtime``.

    Returns:
        A ``flask.Flask`` app; its demo state is ``app.extensions["kseg"]``.

    Example:
        >>> app = create_app("weights/unet_shapes")          # doctest: +SKIP
        >>> app.run(host="127.0.0.1", port=8000, threaded=True)  # doctest: +SKIP
    """
    from kseg.predict import Predictor

    _positive("max_upload_mb", max_upload_mb)
    _positive("max_pixels", max_pixels)
    _positive("max_side", max_side)
    _positive("max_results", max_results)
    _positive("max_results_mb", max_results_mb)
    _positive("result_ttl_minutes", result_ttl_minutes)
    _positive("busy_timeout", busy_timeout)
    if not (isinstance(max_tiles, int) and not isinstance(max_tiles, bool) and max_tiles >= 1):
        raise KsegError(f"max_tiles must be a whole number >= 1; received {max_tiles!r}")
    if not (isinstance(max_queue, int) and not isinstance(max_queue, bool) and max_queue >= 0):
        raise KsegError(f"max_queue must be a whole number >= 0; received {max_queue!r}")
    if slide_above is not None and not (isinstance(slide_above, (int, float)) and slide_above >= 0):
        raise KsegError(f"slide_above must be a number of pixels >= 0 or None; received {slide_above!r}")
    if predictor is None:
        if weights_path is None:
            raise KsegError("create_app needs weights_path (weights/<exp_name>) or a predictor")
        predictor = Predictor.from_experiment(weights_path, mode="resize", flip=flip, batch_size=batch_size,
                                              runtime=runtime)
    log.info("%s", predictor.runtime_line())
    window_seconds = None
    if warmup:
        blank = np.zeros(predictor.size + (3,), np.uint8)
        predictor.predict_proba(blank)
        t0 = time.perf_counter()
        predictor.predict_proba(blank)
        window_seconds = time.perf_counter() - t0

    if results_dir is None:
        results_dir = tempfile.mkdtemp(prefix="kseg-serve-")
        atexit.register(shutil.rmtree, results_dir, ignore_errors=True)
    store = ResultStore(os.path.abspath(results_dir), int(max_results), float(result_ttl_minutes) * 60.0,
                        max_bytes=float(max_results_mb) * 1024 * 1024)
    state = DemoState(predictor, max_upload_mb=max_upload_mb, max_pixels=max_pixels, max_side=max_side,
                      slide_above=slide_above, store=store, busy_timeout=float(busy_timeout),
                      max_tiles=max_tiles, max_queue=max_queue)
    state.window_seconds = window_seconds
    est = state.max_model_seconds()
    log.info("work per request: at most %s windows of %dx%d%s; at most %d requests wait for the model",
             max_tiles if slide_above is not None else 1, *predictor.size,
             f" (about {est:.2f} s of model time)" if est is not None else "", max_queue)

    here = os.path.dirname(os.path.abspath(__file__))
    app = flask.Flask(__name__, template_folder=os.path.join(here, "templates"),
                      static_folder=os.path.join(here, "static"))
    # one byte over the limit: Werkzeug stops a body without Content-Length (chunked)
    # at this size, so a body that reaches it is known to be over the limit
    app.config["MAX_CONTENT_LENGTH"] = state.max_upload_bytes + 1
    app.json.sort_keys = False
    app.extensions["kseg"] = state
    too_large = f"the upload is larger than the {max_upload_mb:g} MB limit; send a smaller file"

    def error(message, status, headers=None):
        resp = flask.jsonify(error=_one_line(message), status=status)
        resp.status_code = status
        for k, v in (headers or {}).items():
            resp.headers[k] = v
        return resp

    @app.errorhandler(UploadError)
    def _upload_error(e):
        return error(str(e), e.status)

    @app.errorhandler(ServerBusy)
    def _busy(e):
        return error(str(e), 503, {"Retry-After": str(e.retry_after)})

    @app.errorhandler(HTTPException)
    def _http_error(e):
        if e.code == 413:
            return error(too_large, 413)
        return error(e.description or e.name, e.code or 500)

    @app.errorhandler(Exception)
    def _internal_error(e):
        log.exception("error while handling %s %s", flask.request.method, flask.request.path)
        body = {"error": "internal error while processing the request; see the server log", "status": 500}
        if debug:
            body["detail"] = _one_line(f"{type(e).__name__}: {e}")[:1000]
        resp = flask.jsonify(body)
        resp.status_code = 500
        return resp

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'")
        return resp

    @app.get("/")
    def index():
        return flask.render_template("index.html", info=state.info(),
                                     max_pixels_text=_pixels(state.max_pixels, "\u00d7"))

    @app.get("/api/info")
    def api_info():
        return flask.jsonify(state.info())

    def read_upload(req):
        """``(data, filename)`` of the request's image; the body is read at most to the
        limit + 1 byte, whether or not it has a ``Content-Length``."""
        no_image = ("no image in the request; send multipart/form-data with the file in a field named "
                    "'image', or the image itself as the body with an image/* content type")
        if req.content_length is not None and req.content_length > state.max_upload_bytes:
            raise UploadError(too_large, 413)
        mimetype = req.mimetype or ""
        raw = mimetype.startswith("image/") or mimetype == "application/octet-stream"
        if not raw and mimetype != "multipart/form-data":
            raise UploadError(no_image)
        body = req.get_data(cache=True)  # stops at MAX_CONTENT_LENGTH (limit + 1)
        if len(body) > state.max_upload_bytes:
            raise UploadError(too_large, 413)
        if raw:
            return body, None
        try:
            files = req.files  # parsed from the cached body
        except RequestEntityTooLarge:
            raise UploadError("the form has too many parts or too large a text field; send only the image, "
                              "in a field named 'image'", 413) from None
        f = files.get("image") or next(iter(files.values()), None)
        if f is None:
            raise UploadError(no_image)
        filename = os.path.basename((f.filename or "").replace("\\", "/"))[:200] or None
        data = f.read()
        if not data and filename is None:
            raise UploadError("no file was chosen; pick an image to upload")
        return data, filename

    @app.post("/api/predict")
    def api_predict():
        data, filename = read_upload(flask.request)
        label = f"the upload {filename!r}" if filename else "the upload"
        # bad files are answered without waiting for the model: only the header is read
        open_image(data, max_pixels=state.max_pixels, max_side=state.max_side, name=label)
        return flask.jsonify(state.run_exclusive(data, filename))

    @app.get("/results/<token>/<name>")
    def result_file(token, name):
        folder = state.store.folder(token)
        if folder is None or name not in RESULT_FILES:
            return error("no such result (results expire; upload the image again)", 404)
        resp = flask.send_from_directory(folder, name, mimetype=RESULT_FILES[name], max_age=3600)
        return resp

    return app
