"""Run a trained model: a ``.keras`` file or an exported ONNX / TFLite / SavedModel file.

Every runner here is a callable mapping a float32 batch ``(B, h, w, channels)`` (already
normalised and sized the way the experiment's ``config.json`` says) to numpy
probabilities ``(B, h, w, C)`` -- the ``run`` function of
:class:`kseg.predict.Predictor`:

* :func:`keras_runner` -- a saved ``.keras`` model (``--backend keras``);
* :func:`make_runner` -- an exported file of a given format (``onnx``, ``tflite``,
  ``savedmodel``), as written by :mod:`kseg.export`;
* :func:`runtime_runner` -- the exported file of an experiment folder
  (``scripts/test.py --backend onnx|tflite|savedmodel``);
* :func:`auto_runner` -- an experiment's ``.keras`` model run the fastest way this
  machine offers (``--runtime auto|keras|onnx``; :func:`choose_runtime` owns the choice).

Every runner has a ``runtime`` attribute naming what runs it (``keras``,
``onnxruntime``, ``tflite``, ``savedmodel``).

The automatic runtime. On a CPU-only machine with the export extra installed
(onnxruntime, tf2onnx), ``auto`` converts the ``.keras`` file to ONNX once, in a
separate process (``python -m kseg.export.cache``: the export's own writer, parity
check and tolerances, then a batch-1 timing of both runtimes), and caches it in
``<experiment>/cache/<checkpoint stem>.<sha256 prefix of the .keras file>.onnx`` with
a record of the parity and the timing beside it (``.json``). A copy made from
another checkpoint (another hash) or by another onnxruntime version is not used
(and is removed once a new copy is written). onnxruntime then runs every batch of
the experiment's input size; other sizes (slide windows cut at an image's border)
go to the Keras model, loaded when first needed. ``auto`` keeps Keras when a GPU
is visible, when onnxruntime/tf2onnx/TensorFlow are missing, when the copy ran
less than :data:`AUTO_MIN_SPEEDUP` times faster than Keras when it was timed, and
-- with one ``warning:`` line naming why -- when the conversion or its parity check
fails. ``onnx`` insists (an error instead of the fallback); ``keras`` never converts.
A read-only experiment folder gets its copy in a temporary folder, removed as soon
as onnxruntime has loaded it (converted again next time).

This module sits below both :mod:`kseg.predict` and :mod:`kseg.export` and imports
neither (the conversion runs :mod:`kseg.export.cache` as a separate program).
Running an exported ONNX file needs only onnxruntime; TFLite runs with
LiteRT (``ai_edge_litert``) when installed, else ``tf.lite``.
"""

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from kseg.errors import ConfigError, ExportError

#: Name of the one input of every exported model (float32 NHWC, normalised).
INPUT_NAME = "image"
#: Name of the one output of every exported model (float32 NHWC probabilities).
OUTPUT_NAME = "probabilities"
#: The SavedModel / TFLite signature holding that interface.
SIGNATURE_KEY = "serving_default"
#: Export formats (each has a runner here).
FORMATS = ("onnx", "savedmodel", "tflite")
#: What ``--backend`` accepts: the Keras model or an exported format.
RUNTIMES = ("keras", "onnx", "tflite", "savedmodel")
#: File (or folder) name of each format in an experiment folder.
FILENAMES = {"onnx": "model.onnx", "savedmodel": "saved_model", "tflite": "model.tflite"}


# ------------------------------------------------------------------------------------------
# Small utilities (shared with kseg.export)


def first_line(e):
    """The first line of an exception's message (at most 300 characters)."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


@contextlib.contextmanager
def quiet_stderr():
    """Silence C++ logging (TFLite converter/interpreter) written straight to fd 2."""
    try:
        fd = os.dup(2)
    except OSError:  # pragma: no cover
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(fd, 2)
    finally:
        os.close(fd)


def _check_hw(expected, batch_shape, path):
    """Raise when a fixed-size exported model gets a batch of another size."""
    eh, ew = expected
    h, w = batch_shape[1], batch_shape[2]
    if (eh not in (None, h)) or (ew not in (None, w)):
        raise ExportError(
            f"{path} was exported for {eh}x{ew} inputs but got {h}x{w}; predict with --mode resize "
            "(or a --tile of that size), or re-export with --dynamic_size"
        )


def _dim(v):
    return v if isinstance(v, int) and v > 0 else None


def _in_chunks(fn, batch, fixed_batch):
    """``fn`` over a batch, split into pieces of ``fixed_batch`` when the model has a fixed batch axis."""
    if fixed_batch and batch.shape[0] != fixed_batch:
        return np.concatenate([fn(batch[i : i + fixed_batch]) for i in range(0, batch.shape[0], fixed_batch)])
    return fn(batch)


# ------------------------------------------------------------------------------------------
# Keras


def as_float32(model):
    """The model itself, or a float32 copy when it was trained with mixed precision.

    Prediction and export both compute in float32, so every backend gives the same
    masks (a ``mixed_bfloat16`` model predicts in float32 like its ONNX export); the
    variables of a mixed-precision model are float32 already, so the copy has the same
    weights.
    """
    if all(getattr(layer, "compute_dtype", "float32") == "float32" for layer in model.layers):
        return model

    def fix(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(obj.get("config"), dict):
                return {**obj, "config": {**obj["config"], "name": "float32"}}
            return {k: fix(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [fix(v) for v in obj]
        if isinstance(obj, str) and obj.startswith("mixed_"):
            return "float32"
        return obj

    clone = model.__class__.from_config(fix(model.get_config()))
    clone.set_weights(model.get_weights())
    if not all(getattr(layer, "compute_dtype", "float32") == "float32" for layer in clone.layers):
        raise ExportError(f"model {model.name} could not be converted to float32")
    return clone




def keras_runner(model_file=None, model=None, config=None):
    """A run function for a saved ``.keras`` model (loaded without its optimizer, checked
    against ``config`` when given), or for a Keras ``model`` already in memory.

    The model runs in float32 (:func:`as_float32`) through ``predict_on_batch`` (the
    backend's compiled predict step). The returned function has attributes ``model``
    and ``input_size`` (``(h, w)`` when the model was built for one size, else ``None``).
    """
    from kseg.compat import direct_dilated_convolutions

    if model is None:
        from kseg.experiment import load_model_file

        model = load_model_file(model_file, compile=False, config=config)
    model = as_float32(model)

    def run(batch):
        with direct_dilated_convolutions():  # the predict function is traced on the first call
            return np.asarray(model.predict_on_batch(batch))

    run.model = model
    run.runtime = "keras"
    shape = tuple(model.input_shape)
    run.input_size = tuple(shape[1:3]) if shape[1] is not None and shape[2] is not None else None
    return run


# ------------------------------------------------------------------------------------------
# ONNX Runtime


def _onnx_runner(path, threads=None, spinning=True):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("--backend onnx needs onnxruntime (pip install onnxruntime)") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    if not spinning:  # idle threads sleep instead of spinning: no CPU taken from the work between batches
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(
            f"onnxruntime cannot load {path}: {first_line(e)}; re-export it with scripts/export.py"
        ) from None
    inp = sess.get_inputs()[0]
    outs = [o.name for o in sess.get_outputs()]
    out_name = OUTPUT_NAME if OUTPUT_NAME in outs else outs[0]
    fixed_batch = _dim(inp.shape[0])
    hw = (_dim(inp.shape[1]), _dim(inp.shape[2]))

    def run(batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        _check_hw(hw, batch.shape, path)
        return _in_chunks(lambda b: sess.run([out_name], {inp.name: b})[0], batch, fixed_batch)

    run.session = sess
    run.runtime = "onnxruntime"
    return run


# ------------------------------------------------------------------------------------------
# TFLite


def tflite_interpreter(model_path=None, model_content=None, threads=None, delegates=True):
    """A TFLite interpreter (LiteRT's when ``ai_edge_litert`` is installed, else ``tf.lite``).

    ``delegates=False`` runs the builtin kernels only, without the XNNPACK delegate.
    """
    import warnings

    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        import tensorflow as tf

        Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    kwargs = {"model_path": model_path, "model_content": model_content, "num_threads": threads or os.cpu_count() or 1}
    if not delegates:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite's "use LiteRT" deprecation notice
        return Interpreter(**kwargs)


def is_delegate_error(e):
    """True when a TFLite error comes from the (XNNPACK) delegate, not the model."""
    text = str(e)
    return "XNNPACK" in text or "Delegate" in text or "delegate" in text


def _quantize(x, detail):
    scale, zero = detail["quantization"]
    if detail["dtype"] in (np.int8, np.uint8) and scale:
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])
    return x.astype(detail["dtype"])


def _dequantize(y, detail):
    scale, zero = detail["quantization"]
    if detail["dtype"] in (np.int8, np.uint8) and scale:
        return (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def _tflite_runner(path, threads=None):
    try:
        with quiet_stderr():
            first = tflite_interpreter(model_path=path, threads=threads)
    except Exception as e:
        raise ExportError(f"the TFLite interpreter cannot load {path}: {first_line(e)}; re-export it") from None
    inp = first.get_input_details()[0]
    out = first.get_output_details()[0]
    signature = inp.get("shape_signature", inp["shape"])
    fixed_batch = int(signature[0]) if signature[0] > 0 else None
    hw = (_dim(int(signature[1])), _dim(int(signature[2])))
    state = {"interp": first, "shape": None, "delegates": True}

    def run_one(batch):
        interp = state["interp"]
        if state["shape"] != batch.shape:
            try:
                interp.resize_tensor_input(inp["index"], list(batch.shape), strict=False)
                with quiet_stderr():  # the "Created TensorFlow Lite XNNPACK delegate" notice
                    interp.allocate_tensors()
                    interp.set_tensor(inp["index"], _quantize(batch, inp))
                    interp.invoke()
            except RuntimeError as e:
                if not (state["delegates"] and is_delegate_error(e)):
                    raise ExportError(f"TFLite cannot run {path} on a {batch.shape} batch: {first_line(e)}") from None
                # XNNPACK cannot take some graphs (e.g. int8 squeeze-excitation): builtin kernels instead
                state["interp"] = tflite_interpreter(model_path=path, threads=threads, delegates=False)
                state["delegates"], state["shape"] = False, None
                return run_one(batch)
            state["shape"] = batch.shape
        else:
            interp.set_tensor(inp["index"], _quantize(batch, inp))
            interp.invoke()
        return _dequantize(interp.get_tensor(out["index"]).copy(), out)

    def run(batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        _check_hw(hw, batch.shape, path)
        return _in_chunks(run_one, batch, fixed_batch)

    run.interpreter = first
    run.state = state
    run.runtime = "tflite"
    return run


# ------------------------------------------------------------------------------------------
# SavedModel


def _savedmodel_runner(path):
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(path)
        fn = loaded.signatures[SIGNATURE_KEY]
    except Exception as e:
        raise ExportError(f"cannot load the SavedModel {path}: {first_line(e)}; re-export it") from None
    specs = fn.structured_input_signature[1]
    name = INPUT_NAME if INPUT_NAME in specs else next(iter(specs))
    shape = specs[name].shape
    hw = (shape[1], shape[2])
    fixed_batch = shape[0]

    def run_one(batch):
        outs = fn(**{name: tf.constant(batch)})
        y = outs[OUTPUT_NAME] if OUTPUT_NAME in outs else next(iter(outs.values()))
        return y.numpy()

    def run(batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        _check_hw(hw, batch.shape, path)
        return _in_chunks(run_one, batch, fixed_batch)

    run.loaded = loaded
    run.runtime = "savedmodel"
    return run


# ------------------------------------------------------------------------------------------
# Entry points


def make_runner(fmt, path, threads=None, spinning=True):
    """A run callable for an exported file ``path`` of format ``fmt`` (``onnx``, ``tflite``, ``savedmodel``).

    ``spinning=False``: onnxruntime's idle worker threads sleep at once instead of spinning
    (the automatic runtime's setting: reading, resizing and writing images between batches,
    and other processes on a shared machine, keep the CPU)."""
    if fmt == "onnx":
        return _onnx_runner(path, threads, spinning)
    if fmt == "tflite":
        return _tflite_runner(path, threads)
    if fmt == "savedmodel":
        return _savedmodel_runner(path)
    raise ExportError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")


def runtime_runner(backend, folder, model_file, config):
    """The run callable :class:`kseg.predict.Predictor` uses for ``--backend onnx|tflite|savedmodel``.

    Args:
        backend: ``"onnx"``, ``"tflite"`` or ``"savedmodel"``.
        folder: the experiment folder (the exported file is looked up there).
        model_file: an explicit exported file (``--model_file``), or ``None``.
        config: the experiment's config dict (unused today; the file carries its shapes).

    Returns:
        A callable mapping a float32 ``(B, h, w, channels)`` batch to numpy probabilities.
    """
    if backend not in FORMATS:
        raise ExportError(f"unknown runtime backend {backend!r}; valid: keras, {', '.join(FORMATS)}")
    path = model_file or os.path.join(folder, FILENAMES[backend])
    exists = os.path.isdir(path) if backend == "savedmodel" else os.path.isfile(path)
    if not exists:
        if model_file:
            raise ExportError(f"--model_file {path} does not exist; check the path")
        raise ExportError(
            f"{folder} has no {FILENAMES[backend]}; export it first: "
            f"python scripts/export.py --weights_path {folder} --format {backend}"
        )
    return make_runner(backend, path)


# ------------------------------------------------------------------------------------------
# The automatic runtime (see the module docstring)

#: What ``--runtime`` accepts: how an experiment's ``.keras`` model is run.
RUNTIME_CHOICES = ("auto", "keras", "onnx")
#: The environment variable holding the default ``--runtime`` (``auto`` when unset).
ENV_RUNTIME = "KSEG_RUNTIME"
#: The folder of an experiment that holds the cached ONNX copies.
CACHE_DIR = "cache"
#: Version of the cache record; a copy recorded by another version is converted again.
CACHE_VERSION = 1
#: ``auto`` runs the ONNX copy only when its fastest call was at least this many times faster
#: than Keras' (a margin: on a shared machine a 10 % difference is within the noise).
AUTO_MIN_SPEEDUP = 1.25
#: Seconds the conversion process may take before ``auto`` keeps Keras.
CONVERT_TIMEOUT_S = 1800
#: The program that converts (run as ``python -m``), and the prefix of its result line.
CONVERTER = "kseg.export.cache"
CACHE_RESULT_PREFIX = "KSEG_CACHE "
#: What the automatic runtime needs besides Keras (the export extra, and TensorFlow to convert).
AUTO_MODULES = ("onnxruntime", "tf2onnx", "onnx", "tensorflow")


def check_runtime(value, flag="--runtime"):
    """``value`` if it is one of :data:`RUNTIME_CHOICES`, else a one-line :class:`ConfigError`."""
    if value not in RUNTIME_CHOICES:
        raise ConfigError(f"unknown {flag} {value!r}; valid: {', '.join(RUNTIME_CHOICES)}")
    return value


def default_runtime():
    """The runtime used when none is asked for: ``$KSEG_RUNTIME``, else ``auto``."""
    value = os.environ.get(ENV_RUNTIME, "").strip() or "auto"
    return check_runtime(value, flag=f"${ENV_RUNTIME}")


def missing_modules(names=AUTO_MODULES):
    """The modules of ``names`` that cannot be imported here (looked up, not imported)."""
    out = []
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                out.append(name)
        except (ImportError, ValueError):
            out.append(name)
    return out


def choose_runtime(requested=None, gpu=None, whole_images=False):
    """The one place that decides how an experiment's ``.keras`` model runs.

    Args:
        requested: ``"auto"``, ``"keras"`` or ``"onnx"`` (``None``: :func:`default_runtime`).
        gpu: whether a GPU is visible (``None``: asked of the Keras backend).
        whole_images: the predictor feeds whole images (``--mode whole``), whose sizes
            vary; the ONNX copy takes the training size only, so ``auto`` keeps Keras.

    Returns:
        ``(runtime, reason)``: ``"onnx"`` (try the cached ONNX copy) or ``"keras"``, and
        why, in words (``""`` when there is nothing to say).
    """
    asked = f"${ENV_RUNTIME}" if requested is None else "--runtime"
    requested = default_runtime() if requested is None else check_runtime(requested)
    if requested == "keras":
        return "keras", f"{asked} keras"
    missing = missing_modules()
    if requested == "onnx":
        if missing:
            raise ExportError(f"--runtime onnx needs {', '.join(missing)} (pip install kseg[export]); "
                              "or use --runtime auto")
        return "onnx", ""
    if missing:
        return "keras", f"{', '.join(missing)} not installed; pip install kseg[export] to run it with onnxruntime"
    if whole_images:
        return "keras", "whole-image mode: the ONNX copy takes the training size only"
    if gpu is None:
        from kseg.hardware import gpu_available

        gpu = gpu_available()
    if gpu:
        return "keras", "a GPU is visible"
    return "onnx", ""


def file_sha256(path, chunk=1 << 20):
    """The SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def cache_paths(folder, keras_file, digest):
    """``(onnx, record)`` paths of the cached copy of ``keras_file`` (of SHA-256 ``digest``) in ``folder``."""
    stem = os.path.splitext(os.path.basename(keras_file))[0]
    base = os.path.join(folder, f"{stem}.{digest[:12]}")
    return base + ".onnx", base + ".json"


def _read_record(path, digest):
    """The cache record at ``path`` if it describes a usable copy of checkpoint ``digest``."""
    try:
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
        import onnxruntime
    except (OSError, ValueError, ImportError):
        return None
    if not isinstance(rec, dict) or rec.get("version") != CACHE_VERSION or rec.get("sha256") != digest:
        return None
    if rec.get("onnxruntime") != onnxruntime.__version__:
        return None
    return rec


def _remove_stale_copies(folder, keras_file, digest):
    """Remove the copies (and what a killed conversion left) of ``keras_file``'s other checkpoints."""
    from kseg.files import remove_leftovers

    stem = os.path.splitext(os.path.basename(keras_file))[0]
    pattern = re.compile(r"^\.?" + re.escape(stem) + r"\.([0-9a-f]{12})\.")

    def stale(name):
        m = pattern.match(name)
        return bool(m) and m.group(1) != digest[:12]

    return remove_leftovers(folder, stale, dirs=True)


def writable_dir(path):
    """Whether files can be created in ``path`` (made when missing)."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".kseg-probe-", dir=path)
        os.close(fd)
        os.remove(probe)
        return True
    except OSError:
        return False


def convert_in_subprocess(keras_file, folder, onnx_path, record_path, digest, timeout=None):
    """Run :data:`CONVERTER` on ``keras_file``; returns its record or raises :class:`ExportError` saying why."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    timeout = timeout or CONVERT_TIMEOUT_S
    cmd = [sys.executable, "-m", CONVERTER, os.path.abspath(keras_file), os.path.abspath(folder),
           os.path.abspath(onnx_path), os.path.abspath(record_path), digest]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise ExportError(f"the ONNX conversion took more than {timeout} s") from None
    for line in reversed(r.stdout.splitlines()):
        if line.startswith(CACHE_RESULT_PREFIX):
            res = json.loads(line[len(CACHE_RESULT_PREFIX):])
            if res.get("ok"):
                return res["meta"]
            raise ExportError(f"the ONNX conversion failed: {res.get('reason')}")
    tail = (r.stderr.strip().splitlines() or ["no message"])[-1][:300]
    why = "killed, out of memory?" if r.returncode in (-9, 137) else tail
    raise ExportError(f"the ONNX conversion process ended with status {r.returncode} ({why})")


def onnx_copy(keras_file, folder):
    """The cached ONNX copy of an experiment's ``keras_file``, converted first when needed.

    Returns:
        A dict: ``path`` (the ``.onnx`` file), ``record`` (its parity and timing),
        ``converted`` (converted in this call), ``temporary`` (a folder to remove once
        onnxruntime has loaded the file: the experiment folder was not writable, else
        ``None``).
    """
    from kseg.progress import step

    digest = file_sha256(keras_file)
    cache = os.path.join(folder, CACHE_DIR)
    onnx_path, record_path = cache_paths(cache, keras_file, digest)
    record = _read_record(record_path, digest) if os.path.isfile(onnx_path) else None
    if record is not None:
        return {"path": onnx_path, "record": record, "converted": False, "temporary": None}
    temporary = None
    if not writable_dir(cache):
        temporary = tempfile.mkdtemp(prefix="kseg-onnx-")
        onnx_path, record_path = cache_paths(temporary, keras_file, digest)
    step(f"onnxruntime: converting {os.path.basename(keras_file)} to ONNX once and checking it against Keras "
         f"({'in a temporary folder: ' + cache + ' is not writable' if temporary else 'cached in ' + cache})")
    try:
        record = convert_in_subprocess(keras_file, folder, onnx_path, record_path, digest)
    except BaseException:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    if not temporary:
        _remove_stale_copies(cache, keras_file, digest)
    return {"path": onnx_path, "record": record, "converted": True, "temporary": temporary}


def _sized_dispatch(ort_run, size, load_keras):
    """A run function: onnxruntime for batches of ``size`` (h, w), the Keras model (loaded by
    ``load_keras`` when first needed) for any other size."""
    import threading

    lock = threading.Lock()
    state = {"keras": None}

    def keras_run():
        with lock:
            if state["keras"] is None:
                state["keras"] = load_keras()
        return state["keras"]

    def run(batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if tuple(batch.shape[1:3]) == size:
            return ort_run(batch)
        return keras_run()(batch)

    run.keras_runner = keras_run
    run.keras_loaded = lambda: state["keras"] is not None
    return run


def auto_runner(keras_file, folder, config=None, runtime=None, *, whole_images=False, warn=None):
    """The run callable for an experiment's ``keras_file`` under ``--runtime`` ``runtime``.

    ``auto`` / ``onnx`` use the cached ONNX copy (:func:`onnx_copy`) as the module
    docstring describes; ``auto`` falls back to Keras with one warning line (written
    by ``warn``, default: to stderr) when the copy cannot be made or fails its parity
    check. ``whole_images``: see :func:`choose_runtime`. A Keras callable kept because the
    copy measured slower has that copy's record as ``slower_copy``. The callable has ``runtime`` (``"onnxruntime"`` or ``"keras"``) and
    ``runtime_note`` (why, for :func:`describe_runtime`); an onnxruntime one also has
    ``record`` (parity and timing), ``onnx_path``, ``converted`` and ``input_size``.
    """
    choice, reason = choose_runtime(runtime, whole_images=whole_images)
    requested = default_runtime() if runtime is None else runtime
    slower = None  # the record of a copy that auto did not use because Keras was faster
    if choice == "onnx":
        copy = None
        try:
            copy = onnx_copy(keras_file, folder)
            rec = copy["record"]
            speed = rec.get("speed") or {}
            size = tuple(rec["input_size"])
            if requested == "auto" and speed.get("speedup", 0.0) < AUTO_MIN_SPEEDUP:
                reason = (f"onnxruntime ran {speed.get('speedup', 0.0):.2f}x Keras' speed at batch 1, "
                          f"{size[0]}x{size[1]}, when timed; --runtime onnx to use it anyway")
                slower = rec
            else:
                ort_run = make_runner("onnx", copy["path"], spinning=False)
                run = _sized_dispatch(ort_run, size, lambda: keras_runner(keras_file, config=config))
                run.session = ort_run.session
                run.runtime = "onnxruntime"
                run.record, run.converted = rec, copy["converted"]
                run.onnx_path = None if copy["temporary"] else copy["path"]
                run.input_size = tuple(rec["model_input_size"]) if rec.get("model_input_size") else None
                run.runtime_note = ""
                return run
        except Exception as e:
            if requested == "onnx":
                raise
            why = first_line(e)
            (warn or _warn)(f"warning: running the Keras model instead of onnxruntime: {why}")
            reason = f"fallback: {why}"
        finally:
            if copy is not None and copy["temporary"]:
                shutil.rmtree(copy["temporary"], ignore_errors=True)
    run = keras_runner(keras_file, config=config)
    run.runtime_note = reason
    run.slower_copy = slower
    return run


def _warn(line):
    print(line, file=sys.stderr, flush=True)


def describe_runtime(run):
    """One line saying what runs the model and why: ``runtime: onnxruntime (parity max |diff| ...)``."""
    name = getattr(run, "runtime", None) or "custom"
    if name == "onnxruntime" and getattr(run, "record", None):
        rec = run.record
        p, speed = rec["parity"], rec.get("speed") or {}
        h, w = rec["input_size"]
        where = (f"converted now, cached in {run.onnx_path}" if run.converted and run.onnx_path else
                 f"cached copy {run.onnx_path}" if run.onnx_path else
                 "converted into a temporary folder (the experiment folder is not writable)")
        return (f"runtime: onnxruntime (parity max |diff| {p['max_abs_diff']:.1e} <= {p['atol']:g} and argmax "
                f"differs on {100 * p['argmax_mismatch_ratio']:.3f}% of pixels, on {p['n_images']} images; "
                f"{speed.get('speedup', float('nan')):.1f}x Keras at batch 1 when timed; {h}x{w} inputs, other "
                f"sizes run on Keras; {where})")
    note = getattr(run, "runtime_note", "")
    return f"runtime: {name}" + (f" ({note})" if note else "")
