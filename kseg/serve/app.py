"""The Flask application of the web demo.

Routes:

* ``GET /`` -- the upload page (``templates/index.html`` + ``static/app.js``);
* ``GET /api/info`` -- the model name, classes (id, name, colour) and input size;
* ``POST /api/predict`` -- an image (multipart field ``image``, or a raw body with an
  ``image/*`` content type) -> JSON with per-class statistics, the image size, the
  inference time and the URLs of the original, the colour mask and the overlay;
* ``GET /results/<id>/<file>`` -- those result images.

Robustness: every error caused by the upload (no file, empty file, not an
image, corrupt image, an image too large in bytes or in pixels) is a 4xx JSON
``{"error": "..."}``. The image size is read from the file header before any
pixel is decoded, so a "decompression bomb" is refused without allocating it.
Images with more than ``slide_above`` pixels are segmented with a sliding
window of the network size (memory bounded by the score map of one image), up to
``max_pixels``. Anything unexpected is logged with its traceback and answered
with a generic JSON 500; the server keeps running.

Result files live in ``results_dir`` (a temporary folder removed at exit by
default), one folder per result named by a random token; only the
``max_results`` most recent results younger than ``result_ttl_minutes`` are kept
(older ones are deleted), so the folder cannot grow without bound.

The model is loaded once, when the app is created. Decoding, inference and
writing the result files run under one lock (Keras models are not guaranteed
thread-safe, and it bounds memory to one image at a time), so the app can be
served by a threaded server; a request that waits longer than ``busy_timeout``
seconds for the lock gets a JSON 503.
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
from collections import OrderedDict

import numpy as np
from PIL import Image, ImageOps

from kseg.errors import KsegError, UploadError

try:
    import flask
    from werkzeug.exceptions import HTTPException
except ImportError:  # pragma: no cover - depends on the installed extras
    raise KsegError("the web demo needs Flask; install it with: pip install 'kseg[serve]'") from None

log = logging.getLogger("kseg.serve")

DEFAULT_MAX_UPLOAD_MB = 20
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_SIDE = 16384
DEFAULT_SLIDE_ABOVE = 1024 * 1024
DEFAULT_MAX_RESULTS = 100
DEFAULT_MAX_RESULTS_MB = 500
DEFAULT_RESULT_TTL_MINUTES = 60
DEFAULT_BUSY_TIMEOUT = 120.0

#: Pillow formats accepted for uploads (others are refused before any decoding).
ACCEPTED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")  # JPEG includes camera MPO files
#: The files of one result and their MIME types.
RESULT_FILES = {"original.jpg": "image/jpeg", "mask.png": "image/png", "overlay.png": "image/png"}
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")  # secrets.token_urlsafe(16)




# ---------------------------------------------------------------------------------- decoding
def decode_image(data, *, max_pixels=DEFAULT_MAX_PIXELS, max_side=DEFAULT_MAX_SIDE, name="the upload"):
    """Decode uploaded bytes into an RGB ``uint8`` array ``(H, W, 3)``.

    The size is checked from the header before the pixels are decoded. Grey,
    16-bit grey, palette, CMYK and images with an alpha channel become RGB (the
    alpha channel is dropped, as :func:`kseg.data.io.read_image` does); the EXIF
    orientation of camera photos is applied; animated images give their first frame.

    Raises:
        UploadError: 400 for empty / non-image / corrupt data, 413 for an image
            with more than ``max_pixels`` pixels or a side longer than ``max_side``.
    """
    if not data:
        raise UploadError(f"{name} is empty (0 bytes); choose an image file")
    formats = ", ".join(sorted(ACCEPTED_FORMATS))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            im = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError:
        raise UploadError(f"{name} is too large in pixels; the limit is {_pixels(max_pixels)}", 413) from None
    except Exception:  # Pillow raises several types for data it cannot identify
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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:  # a broken EXIF block: keep the stored orientation
                pass
            rgb = _to_rgb(im)
    except UploadError:
        raise
    except Exception:
        raise UploadError(f"{name} is a corrupt or truncated {im.format} image; upload another file") from None
    return rgb


def _pixels(n, times="x"):
    side = math.isqrt(int(n))
    return f"{side}{times}{side} pixels" if side * side == n else f"{n} pixels"


def _to_rgb(im):
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        a = np.asarray(im)
        if a.ndim != 2:
            raise UploadError(f"unsupported image mode {mode}; save the image as 8-bit RGB or grey")
        if mode.startswith("I;16") or (mode == "I" and a.max(initial=0) > 255):
            a = a.astype(np.int64) // 257  # 16-bit grey -> 8 bit, as read_image does
        grey = np.clip(a, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode != "RGB":
        im = im.convert("RGB")
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise UploadError(f"unsupported image mode {mode}; save the image as 8-bit RGB or grey")
    return np.ascontiguousarray(arr)


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


# ---------------------------------------------------------------------------------- app
class DemoState:
    """What the routes share: the predictors, class table, limits and result store."""

    def __init__(self, predictor, *, max_upload_mb, max_pixels, max_side, slide_above, store,
                 busy_timeout):
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
        self.max_pixels = int(max_pixels)
        self.max_side = int(max_side)
        self.slide_above = slide_above
        self.store = store
        self.busy_timeout = busy_timeout
        self.lock = threading.Lock()

    def class_table(self):
        return [{"id": i, "name": name, "color": "#%02x%02x%02x" % tuple(int(v) for v in self.palette[i])}
                for i, name in enumerate(self.class_names)]

    def info(self):
        return {
            "model": self.model_name,
            "experiment": self.experiment,
            "classes": self.class_table(),
            "n_classes": len(self.class_names),
            "input_size": {"height": self.predictor.size[0], "width": self.predictor.size[1]},
            "image_init": self.predictor.image_init,
            "resize_op": self.predictor.resize_op,
            "mode": self.predictor.mode,
            "slide_above_pixels": self.slide_above,
            "max_upload_mb": self.max_upload_mb,
            "max_upload_bytes": int(self.max_upload_mb * 1024 * 1024),
            "max_pixels": self.max_pixels,
            "max_side": self.max_side,
        }

    def choose_predictor(self, h, w):
        if self.slide_predictor is not None and h * w > self.slide_above:
            return self.slide_predictor
        return self.predictor

    def process(self, data, filename):
        """Decode, predict and write the result files; returns the response dict."""
        from kseg.data.io import write_image, write_label
        from kseg.data.palette import overlay

        label = f"the upload {filename!r}" if filename else "the upload"
        image = decode_image(data, max_pixels=self.max_pixels, max_side=self.max_side, name=label)
        h, w = image.shape[:2]
        pred = self.choose_predictor(h, w)
        t0 = time.perf_counter()
        proba = pred.predict_proba(image)
        dt = time.perf_counter() - t0
        n = len(self.class_names)
        if proba.shape[:2] != (h, w) or proba.shape[-1] > n:
            raise RuntimeError(f"the predictor returned shape {proba.shape} for a {h}x{w} image "
                               f"and {n} classes")
        mask = proba.argmax(-1).astype(np.uint8 if n <= 256 else np.uint16)
        conf = proba.max(-1)
        del proba
        flat = mask.ravel()
        area = np.bincount(flat, minlength=n)[:n]
        conf_sum = np.bincount(flat, weights=conf.ravel().astype(np.float64), minlength=n)[:n]
        del conf
        classes = []
        for c in self.class_table():
            i = c["id"]
            a = int(area[i])
            c.update(area_px=a, area_ratio=round(a / (h * w), 6),
                     mean_confidence=round(float(conf_sum[i] / a), 4) if a else None)
            classes.append(c)

        token, folder = self.store.new()
        try:
            write_image(os.path.join(folder, "original.jpg"), image, quality=90)
            write_label(os.path.join(folder, "mask.png"), mask, self.palette)
            write_image(os.path.join(folder, "overlay.png"),
                        overlay(image, mask, self.palette, legend=False))
        except BaseException:
            self.store.discard(token)
            raise
        self.store.add(token)
        log.info("%s: %dx%d, %s mode, %.0f ms", filename or "upload", w, h, pred.mode, dt * 1000)

        def url(name):
            return flask.url_for("result_file", token=token, name=name)

        return {
            "id": token,
            "model": self.model_name,
            "experiment": self.experiment,
            "filename": filename,
            "image_size": {"width": w, "height": h},
            "mode": pred.mode,
            "inference_ms": round(dt * 1000, 1),
            "classes": classes,
            "original_url": url("original.jpg"),
            "mask_url": url("mask.png"),
            "overlay_url": url("overlay.png"),
        }


def _positive(name, value):
    if not (isinstance(value, (int, float)) and value > 0):
        raise KsegError(f"{name} must be a positive number; received {value!r}")
    return value


def create_app(weights_path=None, *, predictor=None, max_upload_mb=DEFAULT_MAX_UPLOAD_MB,
               max_pixels=DEFAULT_MAX_PIXELS, max_side=DEFAULT_MAX_SIDE, slide_above=DEFAULT_SLIDE_ABOVE,
               max_results=DEFAULT_MAX_RESULTS, max_results_mb=DEFAULT_MAX_RESULTS_MB,
               result_ttl_minutes=DEFAULT_RESULT_TTL_MINUTES, results_dir=None, busy_timeout=DEFAULT_BUSY_TIMEOUT, flip=False, batch_size=4,
               warmup=True, debug=False):
    """Build the demo's Flask app for one experiment.

    Args:
        weights_path: experiment folder (``weights/<exp>``) or a ``.keras`` file beside
            its ``config.json``.
        predictor: a ready :class:`kseg.predict.Predictor` instead of ``weights_path``.
        max_upload_mb: the largest request body accepted (413 above).
        max_pixels: the largest image accepted, in pixels (413 above); default 4096x4096.
        max_side: the longest image side accepted (413 above).
        slide_above: images with more pixels than this are segmented with a sliding
            window of the network size; ``None`` never slides.
        max_results: how many results (folders of images) are kept.
        max_results_mb: the most disk space all kept results may take, in MB.
        result_ttl_minutes: results older than this are deleted.
        results_dir: where results are written (default: a temporary folder removed at exit).
        busy_timeout: seconds a request waits for the model before a 503.
        flip: horizontal-flip test-time augmentation.
        batch_size: sliding-window tiles per forward pass.
        warmup: run one forward pass at start-up so the first request is not slow.
        debug: add the exception text to JSON 500 answers (never an interactive debugger).

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
    if slide_above is not None and not (isinstance(slide_above, (int, float)) and slide_above >= 0):
        raise KsegError(f"slide_above must be a number of pixels >= 0 or None; received {slide_above!r}")
    if predictor is None:
        if weights_path is None:
            raise KsegError("create_app needs weights_path (weights/<exp_name>) or a predictor")
        predictor = Predictor.from_experiment(weights_path, mode="resize", flip=flip, batch_size=batch_size)
    if warmup:
        predictor.predict_proba(np.zeros(predictor.size + (3,), np.uint8))

    if results_dir is None:
        results_dir = tempfile.mkdtemp(prefix="kseg-serve-")
        atexit.register(shutil.rmtree, results_dir, ignore_errors=True)
    store = ResultStore(os.path.abspath(results_dir), int(max_results), float(result_ttl_minutes) * 60.0,
                        max_bytes=float(max_results_mb) * 1024 * 1024)
    state = DemoState(predictor, max_upload_mb=max_upload_mb, max_pixels=max_pixels, max_side=max_side,
                      slide_above=slide_above, store=store, busy_timeout=float(busy_timeout))

    here = os.path.dirname(os.path.abspath(__file__))
    app = flask.Flask(__name__, template_folder=os.path.join(here, "templates"),
                      static_folder=os.path.join(here, "static"))
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    app.json.sort_keys = False
    app.extensions["kseg"] = state

    def error(message, status):
        resp = flask.jsonify(error=message, status=status)
        resp.status_code = status
        return resp

    @app.errorhandler(UploadError)
    def _upload_error(e):
        return error(str(e), e.status)

    @app.errorhandler(HTTPException)
    def _http_error(e):
        if e.code == 413:
            return error(f"the upload is larger than the {max_upload_mb} MB limit; send a smaller file", 413)
        return error(e.description or e.name, e.code or 500)

    @app.errorhandler(Exception)
    def _internal_error(e):
        log.exception("error while handling %s %s", flask.request.method, flask.request.path)
        body = {"error": "internal error while processing the request; see the server log", "status": 500}
        if debug:
            body["detail"] = f"{type(e).__name__}: {e}"[:1000]
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

    @app.post("/api/predict")
    def api_predict():
        req = flask.request
        filename = None
        if (req.mimetype or "").startswith("image/") or req.mimetype == "application/octet-stream":
            data = req.get_data(cache=False)
        else:
            f = req.files.get("image") or next(iter(req.files.values()), None)
            if f is None:
                raise UploadError("no image in the request; send multipart/form-data with the file "
                                  "in a field named 'image'")
            filename = os.path.basename((f.filename or "").replace("\\", "/"))[:200] or None
            data = f.read()
            if not data and filename is None:
                raise UploadError("no file was chosen; pick an image to upload")
        if not data:
            what = f"the upload {filename!r}" if filename else "the upload"
            raise UploadError(f"{what} is empty (0 bytes); choose an image file")
        if not state.lock.acquire(timeout=state.busy_timeout):
            return error("the server is busy with other images; try again in a moment", 503)
        try:
            result = state.process(data, filename)
        finally:
            state.lock.release()
        return flask.jsonify(result)

    @app.get("/results/<token>/<name>")
    def result_file(token, name):
        folder = state.store.folder(token)
        if folder is None or name not in RESULT_FILES:
            return error("no such result (results expire; upload the image again)", 404)
        resp = flask.send_from_directory(folder, name, mimetype=RESULT_FILES[name], max_age=3600)
        return resp

    return app
