"""Prediction at original resolution, shared by scripts/test.py and the web demo.

A :class:`Predictor` wraps a "run" function (a Keras model, or an ONNX / TFLite /
SavedModel session; see :mod:`kseg.runtime`) that maps a float32 batch
``(B, h, w, channels)`` to probabilities ``(B, h, w, C)``, plus the experiment's preprocessing
(``input_channels``, ``mean`` / ``std`` or ``image_init``, ``resize_op``, input size), and turns
an image -- as :func:`kseg.data.io.read_image` reads it for the model's channels, the
reader training used -- into class probabilities and a mask at the image's own size:

* ``mode="resize"``: resize (or letterbox) to the network size, predict, map the
  probabilities back (letterbox padding removed) and resize them bilinearly to
  the original size;
* ``mode="slide"``: a sliding window of the tile size (default: the training
  input size) moved by a stride; windows are run ``batch_size`` at a time and
  their probabilities accumulated into one ``(H, W, C)`` float32 score map and
  averaged where windows overlap, so an image of any size is segmented at full
  resolution with memory bounded by that one score map;
* ``mode="whole"``: the full image at once (zero-padded to the model's size
  divisor), for fully convolutional models.

:meth:`Predictor.from_experiment` picks how an experiment's ``.keras`` model runs
(``runtime="auto"``: onnxruntime on a cached, parity-checked ONNX copy on a CPU-only
machine, see :func:`kseg.runtime.auto_runner`); ``Predictor.runtime`` names it.

Preprocessing follows the training pipeline (``kseg.data.pipeline``): the image
is normalised first, then resized / letterboxed / padded, and padding is 0 in
normalised space (the value training pads with); :func:`network_input` is that
step for ``resize`` mode, also used by the export's parity check. ``flip=True`` adds
horizontal-flip test-time augmentation (the probabilities of the image and of its
mirror image are averaged).

A run function may carry an ``input_size`` attribute ``(h, w)`` when the model only
accepts that size (``None`` or absent: any size allowed by the model's divisor);
``whole`` mode is then refused and the slide tile must be that size.

:func:`predict_folder` predicts, writes, times and evaluates a folder of images
(``scripts/test.py``); :class:`StageTimer` and :func:`timing_summary` time it.
"""

import contextlib
import os
import time
from collections import defaultdict

import numpy as np

from kseg.config import ExperimentConfig
from kseg.data.io import Decoded, display_image, read_image, to_channels
from kseg.data.preprocess import check_image_init, check_resize_op, network_input, normalize, restore_size
from kseg.errors import KsegError
from kseg.progress import Progress
from kseg.runtime import auto_runner, describe_runtime, runtime_runner
from kseg.runtime import keras_runner  # noqa: F401 (importable from here too)

MODES = ("resize", "slide", "whole")
DEFAULT_DIVISOR = 32


def _to_two_channels(prob):
    """A single sigmoid channel -> [background, foreground] probabilities."""
    if prob.shape[-1] == 1:
        return np.concatenate([1.0 - prob, prob], axis=-1)
    return prob


def _mask_dtype(n_channels):
    return np.uint8 if n_channels <= 256 else np.uint16


def _ceil_to(v, d):
    return -(-int(v) // d) * d


class StageTimer:
    """Accumulates wall-clock seconds per stage (``preprocess``, ``model``, ``postprocess``).

    Attach one to a predictor (``predictor.timer = StageTimer()``) to measure where
    the time goes; :meth:`reset` before each image gives per-image stage times.
    """

    STAGES = ("preprocess", "model", "postprocess")

    def __init__(self):
        self.seconds = defaultdict(float)

    def reset(self):
        self.seconds = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, stage):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0

    def snapshot(self):
        return {s: float(self.seconds.get(s, 0.0)) for s in self.STAGES}


def timing_summary(per_image, n_warmup=1):
    """Median / p90 / mean per stage (milliseconds) and throughput from per-image stage seconds.

    ``per_image``: one dict per image with the :attr:`StageTimer.STAGES` seconds and their ``total``.
    """
    out = {"images": len(per_image), "warmup_images": n_warmup, "unit": "ms"}
    for s in StageTimer.STAGES + ("total",):
        v = np.array([t[s] for t in per_image], np.float64) * 1000.0
        out[s] = {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)), "mean": float(v.mean())}
    total = sum(t["total"] for t in per_image)
    model = sum(t["model"] for t in per_image)
    out["images_per_second"] = len(per_image) / total if total > 0 else None
    out["model_images_per_second"] = len(per_image) / model if model > 0 else None
    return out


def format_timing(t):
    """The table printed for a :func:`timing_summary`."""
    lines = [f"timing over {t['images']} image(s) (after {t['warmup_images']} warm-up), per image:",
             f"{'stage':<12} {'median ms':>10} {'p90 ms':>10}"]
    for s in StageTimer.STAGES + ("total",):
        lines.append(f"{s:<12} {t[s]['median']:>10.1f} {t[s]['p90']:>10.1f}")
    ips, mips = t["images_per_second"], t["model_images_per_second"]
    lines.append(f"throughput: {ips:.2f} images/s end to end (without writing outputs); "
                 f"model alone {mips:.2f} images/s" if ips and mips else "throughput: -")
    return "\n".join(lines)


class Predictor:
    """Predict masks at original resolution.

    Args:
        run: callable mapping a float32 array ``(B, h, w, channels)`` to probabilities
            ``(B, h, w, C)`` (``C == 1``: one sigmoid channel, expanded to
            background/foreground).
        config: the experiment's ``config.json`` dict (needs ``input_height``,
            ``input_width``, ``n_classes``; uses ``input_channels``, ``mean``, ``std``,
            ``image_init``, ``resize_op``, ``model_name`` when present).
        mode: ``"resize"``, ``"slide"`` or ``"whole"``.
        tile: ``(h, w)`` of the sliding window (default: the network input size).
        stride: ``(h, w)`` step of the window (default: 2/3 of the tile).
        flip: horizontal-flip test-time augmentation.
        batch_size: images (resize, whole) or windows (slide) per forward pass.
        divisor: input sizes must be multiples of this (default: from the model registry).
        min_size: smallest input height/width (default: from the model registry).

    Example:
        >>> p = Predictor.from_experiment("weights/unet_shapes", mode="slide", flip=True)
        >>> image, proba = p.predict_file("photo.jpg")   # proba: (H, W, C) at the photo's size
        >>> mask = proba.argmax(-1)
    """

    def __init__(self, run, config, *, mode="resize", tile=None, stride=None, flip=False,
                 batch_size=4, divisor=None, min_size=None):
        if mode not in MODES:
            raise KsegError(f"unknown prediction mode {mode!r}; valid: {', '.join(MODES)}")
        self.run = run
        self.config = config = ExperimentConfig.coerce(config)
        self.mode = mode
        self.size = config.input_size
        self.flip = bool(flip)
        self.batch_size = max(1, int(batch_size))
        self.image_init = check_image_init(config.image_init)
        self.resize_op = check_resize_op(config.resize_op)
        self.channels = int(config.input_channels)
        self.mean, self.std = config.mean, config.std
        self.n_classes = config.n_classes
        self.timer = None
        self.runtime = getattr(run, "runtime", None)  # keras, onnxruntime, tflite, savedmodel (None: unknown)
        fixed = getattr(run, "input_size", None)
        self.fixed_size = tuple(int(v) for v in fixed) if fixed and None not in tuple(fixed) else None

        known = divisor is not None
        if divisor is None or min_size is None:
            spec = None
            try:
                from kseg.models import model_spec

                spec = model_spec(config.model_name)
                known = True
            except Exception:
                pass
            rule = None
            if spec is not None:  # the rule of the model WITH its options (a depth-3 U-Net takes 8s)
                try:
                    rule = spec.size_rule(**config.model_kwargs)
                except Exception:  # options this kseg does not know: the default options' rule
                    rule = (spec.divisor, spec.min_size)
            if divisor is None:
                divisor = rule[0] if rule is not None else DEFAULT_DIVISOR
            if min_size is None:
                min_size = rule[1] if rule is not None else divisor
        self.divisor = max(1, int(divisor))
        self.min_size = max(1, int(min_size))

        if self.fixed_size is not None and mode == "whole":
            raise KsegError(
                f"the model only accepts {self.fixed_size[0]}x{self.fixed_size[1]} inputs, so it cannot "
                "predict whole images; use --mode slide or --mode resize"
            )
        self.tile = tuple(int(t) for t in tile) if tile else (self.fixed_size or self.size)
        if len(self.tile) != 2 or min(self.tile) < 1:
            raise KsegError(f"--tile {self.tile} must be two positive integers (height width)")
        if mode == "slide":
            if self.fixed_size is not None and self.tile != self.fixed_size:
                raise KsegError(
                    f"--tile {self.tile[0]} {self.tile[1]} does not fit a model that only accepts "
                    f"{self.fixed_size[0]}x{self.fixed_size[1]}; use --tile {self.fixed_size[0]} "
                    f"{self.fixed_size[1]} (or leave it out)"
                )
            if known and self.fixed_size is None:
                for t in self.tile:
                    if t % self.divisor or t < self.min_size:
                        ok = [max(self.min_size, _ceil_to(v, self.divisor)) for v in self.tile]
                        raise KsegError(
                            f"--tile {self.tile[0]} {self.tile[1]} is not allowed for "
                            f"{config.model_name}: sides must be multiples of {self.divisor} and at "
                            f"least {self.min_size}; use e.g. --tile {ok[0]} {ok[1]}"
                        )
        self.stride = tuple(int(s) for s in stride) if stride else tuple(max(1, (2 * t) // 3) for t in self.tile)
        if len(self.stride) != 2 or any(s <= 0 or s > t for s, t in zip(self.stride, self.tile)):
            raise KsegError(f"--stride {self.stride} must be between 1 and the tile size {self.tile}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_experiment(cls, weights_path, backend="keras", model_file=None, runtime=None, **kwargs):
        """Load an experiment folder (or a ``.keras`` file next to its config.json).

        Args:
            weights_path: ``weights/<exp>`` or a ``.keras`` file beside its ``config.json``.
            backend: ``"keras"`` or an exported runtime (``onnx``, ``tflite``,
                ``savedmodel``; files written by :mod:`kseg.export`, run by :mod:`kseg.runtime`).
            model_file: the model file to load instead of the experiment's default.
            runtime: how the ``.keras`` model runs (``backend="keras"``): ``"auto"``
                (onnxruntime on a CPU-only machine when the export extra is installed, on
                a parity-checked ONNX copy cached in the experiment; else Keras),
                ``"keras"`` or ``"onnx"`` (see :func:`kseg.runtime.auto_runner`);
                ``None``: ``$KSEG_RUNTIME``, else ``auto``. The predictor's ``runtime``
                attribute names what runs it; :meth:`runtime_line` says why.
            **kwargs: :class:`Predictor` options (``mode``, ``tile``, ``stride``, ``flip``,
                ``batch_size``).
        """
        from kseg.experiment import resolve_weights

        folder, keras_file, config = resolve_weights(weights_path)
        if backend == "keras":
            run = auto_runner(model_file or keras_file, folder, config, runtime,
                              whole_images=kwargs.get("mode") == "whole")
        else:
            if runtime not in (None, "auto"):
                raise KsegError(f"--runtime {runtime} applies to the .keras model (--backend keras); "
                                f"--backend {backend} runs the exported file; drop one of them")
            run = runtime_runner(backend, folder, model_file, config)
        p = cls(run, config, **kwargs)
        p.folder = folder
        return p

    def runtime_line(self):
        """One line naming the runtime and why (``runtime: onnxruntime (parity max |diff| ...)``)."""
        return describe_runtime(self.run)

    # ------------------------------------------------------------------ helpers
    def _stage(self, name):
        return self.timer(name) if self.timer is not None else contextlib.nullcontext()

    def _forward(self, batch):
        """Run the model (and its mirror image with ``flip``) on a normalised batch."""
        with self._stage("model"):
            out = np.asarray(self.run(np.ascontiguousarray(batch, dtype=np.float32)), dtype=np.float32)
            if self.flip:
                out_f = np.asarray(self.run(np.ascontiguousarray(batch[:, :, ::-1], dtype=np.float32)),
                                   dtype=np.float32)
                out = 0.5 * (out + out_f[:, :, ::-1])
        if out.ndim != 4 or out.shape[:3] != batch.shape[:3]:
            raise KsegError(
                f"the model returned shape {out.shape} for an input of shape {batch.shape}; expected "
                f"(B, H, W, C) at the input size -- is this a kseg segmentation model?"
            )
        return _to_two_channels(out)

    def _normalize(self, image):
        return normalize(image, self.image_init, self.mean, self.std)

    def _fit(self, image):
        """An image as the model takes it: ``(H, W, channels)`` (a 2-D array is grey; the
        channel rules of :func:`kseg.data.io.to_channels`)."""
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3:
            raise KsegError(f"an image must be (H, W) or (H, W, C); received shape {image.shape}")
        return to_channels(Decoded(image, False), self.channels, "the image")

    def _pad(self, x, H, W):
        """Zero-pad a normalised ``(h, w, C)`` image at the bottom/right to ``(H, W)``."""
        h, w = x.shape[:2]
        if (H, W) == (h, w):
            return x
        return np.pad(x, ((0, H - h), (0, W - w), (0, 0)), mode="constant")

    def _whole_size(self, h, w):
        return (max(self.min_size, _ceil_to(h, self.divisor)), max(self.min_size, _ceil_to(w, self.divisor)))

    def window_size(self, h, w):
        """The slide window for an ``h x w`` image: the tile, shrunk (to the model's
        divisor) along a side the image does not fill when the model takes any size."""
        if self.fixed_size is not None:
            return self.tile
        wh, ww = self._whole_size(h, w)
        return (min(self.tile[0], wh), min(self.tile[1], ww))

    def windows(self, h, w):
        """Top-left corners of the slide windows covering an ``h x w`` image."""
        th, tw = self.window_size(h, w)
        H, W = max(h, th), max(w, tw)
        ys = list(range(0, H - th + 1, self.stride[0]))
        xs = list(range(0, W - tw + 1, self.stride[1]))
        if ys[-1] != H - th:
            ys.append(H - th)
        if xs[-1] != W - tw:
            xs.append(W - tw)
        return [(y, x) for y in ys for x in xs]

    # ------------------------------------------------------------------ public API
    def predict_proba_batch(self, images):
        """Probabilities ``(H, W, C)`` at original size for a list of images (``uint8`` or
        ``uint16`` ``(H, W, channels)``, as :func:`kseg.data.io.read_image` gives them)."""
        images = [self._fit(im) for im in images]
        if self.mode == "resize":
            return self._resize_batch(images)
        if self.mode == "whole":
            return self._whole_batch(images)
        return [self._slide(im) for im in images]

    def predict_proba(self, image):
        """Probabilities ``(H, W, C)`` float32 at the size of one image."""
        return self.predict_proba_batch([image])[0]

    def predict(self, image):
        """Mask ``(H, W)`` (class indices) for one image."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images):
        """Masks ``(H, W)`` (class indices, uint8 up to 256 classes) for a list of images."""
        probs = self.predict_proba_batch(images)
        with self._stage("postprocess"):
            return [p.argmax(-1).astype(_mask_dtype(p.shape[-1])) for p in probs]

    def predict_file(self, path):
        """Read an image file; returns ``(image, probabilities)``."""
        with self._stage("preprocess"):
            image = read_image(path, self.channels)
        return image, self.predict_proba(image)

    # ------------------------------------------------------------------ modes
    def _resize_batch(self, images):
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i : i + self.batch_size]
            with self._stage("preprocess"):
                x = np.stack([network_input(im, self.size, self.image_init, self.resize_op, self.mean, self.std)
                              for im in chunk])
            probs = self._forward(x)
            with self._stage("postprocess"):
                out += [restore_size(p, im.shape[:2], self.resize_op) for p, im in zip(probs, chunk)]
        return out

    def _whole_batch(self, images):
        """Images are zero-padded to the divisor; images of equal padded size share a batch."""
        out = [None] * len(images)
        groups = defaultdict(list)
        for i, im in enumerate(images):
            groups[self._whole_size(*im.shape[:2])].append(i)
        for (H, W), idx in groups.items():
            for j in range(0, len(idx), self.batch_size):
                chunk = idx[j : j + self.batch_size]
                with self._stage("preprocess"):
                    x = np.stack([self._pad(self._normalize(images[i]), H, W) for i in chunk])
                probs = self._forward(x)
                with self._stage("postprocess"):
                    for i, p in zip(chunk, probs):
                        h, w = images[i].shape[:2]
                        out[i] = np.ascontiguousarray(p[:h, :w])
        return out

    def _slide(self, image):
        h, w = image.shape[:2]
        th, tw = self.window_size(h, w)
        H, W = max(h, th), max(w, tw)
        with self._stage("preprocess"):
            x = self._pad(self._normalize(image), H, W)
        corners = self.windows(h, w)
        acc = None
        count = np.zeros((H, W, 1), np.float32)
        for i in range(0, len(corners), self.batch_size):
            chunk = corners[i : i + self.batch_size]
            with self._stage("preprocess"):
                batch = np.stack([x[y : y + th, x0 : x0 + tw] for y, x0 in chunk])
            probs = self._forward(batch)
            with self._stage("postprocess"):
                if acc is None:
                    acc = np.zeros((H, W, probs.shape[-1]), np.float32)
                for (y, x0), p in zip(chunk, probs):
                    acc[y : y + th, x0 : x0 + tw] += p
                    count[y : y + th, x0 : x0 + tw] += 1.0
        with self._stage("postprocess"):
            acc /= count
            return acc[:h, :w] if (H, W) != (h, w) else acc


def folder_items(test_dir, label_dir=None):
    """The ``(image, label or None)`` pairs :func:`predict_folder` predicts; a missing or empty
    folder or unpaired files are a one-line ``DataError`` (cheap: callers check before
    loading a model)."""
    from kseg.data.io import IMAGE_EXTENSIONS, list_files, pair_by_stem
    from kseg.errors import DataError

    if label_dir is not None:
        return pair_by_stem(test_dir, label_dir)
    items = [(p, None) for p in list_files(test_dir, IMAGE_EXTENSIONS)]
    if not items:
        raise DataError(f"no images found in {test_dir}")
    return items


def predict_folder(predictor, test_dir, output=None, *, label_dir=None, overlays=True, timing=False,
                   batch_size=None):
    """Predict every image of ``test_dir`` at its own size; write, time and evaluate the masks.

    Args:
        predictor: a :class:`Predictor` (its ``config`` gives class names, palette, ignore value).
        test_dir: folder of images.
        output: folder receiving ``masks/<stem>.png`` (palette PNGs of class indices),
            ``overlays/<stem>.png`` (with ``overlays``), ``report.json`` + ``confusion_matrix.png``
            (with ``label_dir``) and ``timing.json`` (with ``timing``); ``None``: nothing is
            written and the masks are returned.
        label_dir: labels paired with the images by file stem; the masks are evaluated against them.
        overlays: also write colour overlays (image blended with the mask, legend of class names).
        timing: per-image latency of preprocessing (with reading), model and postprocessing,
            one image at a time after one unmeasured warm-up image.
        batch_size: images per forward pass (default: the predictor's; 1 in slide mode and when timing).

    Returns:
        A dict: ``images`` (count), ``seconds`` (the loop, reading and writing included),
        ``masks_dir``, ``masks`` (``{stem: mask}`` when ``output`` is ``None``), ``timing``
        (:func:`timing_summary`), ``report`` (evaluation) and ``report_text`` (its table).
    """
    from kseg.data.io import voc_palette
    from kseg.evaluation import Evaluator, save_prediction  # imports keras: after the cheap checks
    from kseg.experiment import write_json

    cfg = predictor.config
    items = folder_items(test_dir, label_dir)
    names = cfg.names()
    palette = cfg.palette or voc_palette(cfg.n_values).tolist()
    ev = Evaluator(cfg.n_classes, cfg.ignore_index, names)
    timer, per_image, kept = (StageTimer() if timing else None), [], ({} if output is None else None)
    if timer is not None and items:  # warm-up: compile / load kernels, not measured
        predictor.predict(read_image(items[0][0], predictor.channels))
        predictor.timer = timer
    bs = 1 if (predictor.mode == "slide" or timing) else int(batch_size or predictor.batch_size)
    t0 = time.perf_counter()
    bar = Progress(len(items), "predicting")
    try:
        for i in range(0, len(items), bs):
            chunk = items[i : i + bs]
            if timer is not None:
                timer.reset()
            with predictor._stage("preprocess"):
                images = [read_image(p, predictor.channels) for p, _ in chunk]
            masks = predictor.predict_batch(images)
            if timer is not None:
                t = timer.snapshot()
                per_image.append({**t, "total": sum(t.values())})
            for (img_path, lab_path), image, mask in zip(chunk, images, masks):
                stem = os.path.splitext(os.path.basename(img_path))[0]
                if output is None:
                    kept[stem] = mask
                else:
                    save_prediction(output, stem, display_image(image), mask, palette, names, overlays=overlays)
                if lab_path:
                    ev.update_file(lab_path, mask, pred_name=img_path)
            bar.update(len(chunk))
    finally:
        bar.close()
        seconds = time.perf_counter() - t0
        if timer is not None:
            predictor.timer = None
    summary = timing_summary(per_image) if per_image else None
    result = {"images": len(items), "seconds": seconds, "masks": kept, "timing": summary,
              "masks_dir": output and os.path.join(output, "masks"), "report": None, "report_text": None}
    if summary is not None and output is not None:
        write_json(os.path.join(output, "timing.json"), summary)
    if label_dir is not None:
        folder = getattr(predictor, "folder", None)
        extra = {"experiment": os.path.abspath(folder)} if folder else {}
        extra.update({"test_dir": os.path.abspath(test_dir), "mode": predictor.mode, "flip": predictor.flip})
        if predictor.mode == "slide":
            extra.update(tile=list(predictor.tile), stride=list(predictor.stride))
        if getattr(predictor, "runtime", None):
            extra["runtime"] = predictor.runtime
        if summary is not None:
            extra["timing"] = summary
        result["report"] = (ev.write(output, extra=extra) if output is not None
                            else {**ev.report(), **extra, "confusion_matrix": ev.cm.tolist()})
        result["report_text"] = ev.text()
    return result
