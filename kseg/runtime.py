"""Run a trained model: a ``.keras`` file or an exported ONNX / TFLite / SavedModel file.

Every runner here is a callable mapping a float32 batch ``(B, h, w, channels)`` (already
normalised and sized the way the experiment's ``config.json`` says) to numpy
probabilities ``(B, h, w, C)`` -- the ``run`` function of
:class:`kseg.predict.Predictor`:

* :func:`keras_runner` -- a saved ``.keras`` model (``--backend keras``);
* :func:`make_runner` -- an exported file of a given format (``onnx``, ``tflite``,
  ``savedmodel``), as written by :mod:`kseg.export`;
* :func:`runtime_runner` -- the exported file of an experiment folder
  (``scripts/test.py --backend onnx|tflite|savedmodel``).

This module sits below both :mod:`kseg.predict` and :mod:`kseg.export` and imports
neither. Running an exported ONNX file needs only onnxruntime; TFLite runs with
LiteRT (``ai_edge_litert``) when installed, else ``tf.lite``.
"""

import contextlib
import os

import numpy as np

from kseg.errors import ExportError

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
    if model is None:
        from kseg.experiment import load_model_file

        model = load_model_file(model_file, compile=False, config=config)
    model = as_float32(model)

    def run(batch):
        return np.asarray(model.predict_on_batch(batch))

    run.model = model
    shape = tuple(model.input_shape)
    run.input_size = tuple(shape[1:3]) if shape[1] is not None and shape[2] is not None else None
    return run


# ------------------------------------------------------------------------------------------
# ONNX Runtime


def _onnx_runner(path, threads=None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("--backend onnx needs onnxruntime (pip install onnxruntime)") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
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
    return run


# ------------------------------------------------------------------------------------------
# Entry points


def make_runner(fmt, path, threads=None):
    """A run callable for an exported file ``path`` of format ``fmt`` (``onnx``, ``tflite``, ``savedmodel``)."""
    if fmt == "onnx":
        return _onnx_runner(path, threads)
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
