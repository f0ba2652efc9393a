"""Export a trained experiment to ONNX, a TensorFlow SavedModel or TFLite, check it, run it.

Every exported model has the same interface, whatever the format:

* one input named ``image``: float32, NHWC ``(batch, height, width, 3)``, already
  normalised the way the experiment's ``config.json`` says (``image_init``:
  ``divide`` = x/255, ``sub_and_divide`` = x/127.5 - 1, ``sub_mean`` = x - ImageNet
  mean) and resized / letterboxed to the training size (``resize_op``);
* one output named ``probabilities``: float32 ``(batch, height, width, n_classes)``
  (softmax, or one sigmoid channel for a binary model).

The batch axis is dynamic by default (``dynamic_batch``); height and width are
fixed at the training size unless ``dynamic_size`` is asked for and the model
was built size-free. The SavedModel and TFLite files expose this as the
``serving_default`` signature; a full-integer TFLite model (``int8``) takes and
returns int8 tensors whose scale/zero-point are stored in the file (the runner
here quantises and dequantises for you).

Each export is written under a temporary name, checked against the Keras model
(:func:`parity_check`) and only then renamed to its final name, so a failed
check never leaves a file where a deployed model is expected.

:func:`runtime_runner` loads an exported file as the ``run`` callable of
:class:`kseg.predict.Predictor` (``scripts/test.py --backend onnx|tflite|savedmodel``);
:func:`benchmark_runtimes` measures Keras vs onnxruntime vs TFLite latency.

TensorFlow (and, for ONNX, ``tf2onnx``/``onnx``/``onnxruntime``) is the export
engine, so exporting needs the TensorFlow Keras backend; running an exported
ONNX file needs only onnxruntime.
"""

import contextlib
import json
import os
import shutil
import tempfile
import time

import numpy as np

from kseg.errors import ExportError  # noqa: F401 (defined in kseg.errors)
from kseg.errors import KsegError

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
SIGNATURE_KEY = "serving_default"
FORMATS = ("onnx", "savedmodel", "tflite")
RUNTIMES = ("keras", "onnx", "tflite", "savedmodel")
FILENAMES = {"onnx": "model.onnx", "savedmodel": "saved_model", "tflite": "model.tflite"}
DEFAULT_OPSET = 17
MIN_OPSET = 13

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




# ------------------------------------------------------------------------------------------
# Loading the model to export


def _require_tensorflow_backend():
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError(
            f"exporting needs the TensorFlow Keras backend (current: {keras.backend.backend()}); "
            "run with KERAS_BACKEND=tensorflow"
        )


def load_experiment(weights_path):
    """Load ``(model, folder, config)`` from an experiment folder or a ``.keras`` file."""
    from kseg.experiment import resolve_weights

    folder, keras_file, config = resolve_weights(weights_path)  # fails fast, before TensorFlow loads
    _require_tensorflow_backend()
    from kseg.predict import keras_runner

    model = keras_runner(keras_file).model
    return model, folder, config


def _as_float32(model):
    """The model itself, or a float32 copy when it was trained with mixed precision.

    Exported graphs (and tf2onnx) want float32 compute; the variables of a
    mixed-precision model are float32 already, so the copy has the same weights.
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
        raise ExportError(f"model {model.name} could not be converted to float32 for export")
    return clone


def input_shape_for_export(model, config, dynamic_batch=True, dynamic_size=False):
    """The ``(batch, height, width, channels)`` of the exported input (``None`` = dynamic)."""
    _, mh, mw, ch = model.input_shape
    if dynamic_size:
        if mh is not None or mw is not None:
            raise ExportError(
                f"model {model.name} was built for fixed {mh}x{mw} inputs, so --dynamic_size is not "
                "possible; export without --dynamic_size (the predictor's resize/slide modes still work)"
            )
        h = w = None
    else:
        h = mh if mh is not None else int(config["input_height"])
        w = mw if mw is not None else int(config["input_width"])
    return (None if dynamic_batch else 1, h, w, ch or 3)


# ------------------------------------------------------------------------------------------
# Graph tracing helpers


@contextlib.contextmanager
def _export_friendly_ops():
    """Patch two Keras 3 TensorFlow-backend ops while the export graph is traced.

    * ``keras.ops.argmax``/``argmin`` of floats: Keras wraps them in a -0.0 fix
      that bit-casts the tensor to int32 (``signbit``); neither ONNX nor the
      TFLite builtins have that op, which made ``MaxPoolingWithArgmax2D`` (SegNet,
      ENet) unexportable. Traced here as a plain ``tf.argmax``; only a tie
      between -0.0 and +0.0 can resolve differently.
    * ``keras.ops.image.resize`` with a size that is a tensor (a dynamic
      height/width, as in ``ResizeLike`` or a bilinear ``UpSampling2D`` traced
      with ``None`` sizes): its argument check ``size[0] <= 0`` is a Python
      ``bool`` of a symbolic tensor and fails in graph mode. Such calls go
      straight to the backend resize, which takes tensor sizes.

    The patches live only inside this context; eager Keras is untouched.
    """
    try:
        import tensorflow as tf
        from keras import ops as public_ops
        from keras.src import backend as kbackend
        from keras.src import ops as src_ops
        from keras.src.backend.tensorflow import numpy as tfnp
    except ImportError:  # pragma: no cover - other Keras layouts: trace as is
        yield
        return

    def plain(tf_fn):
        def fn(x, axis=None, keepdims=False):
            x = tf.convert_to_tensor(x)
            y = tf_fn(tf.reshape(x, [-1]) if axis is None else x, axis=0 if axis is None else axis,
                      output_type=tf.int32)
            if keepdims:
                if axis is None:
                    y = tf.reshape(y, [1] * len(x.shape))
                else:
                    y = tf.expand_dims(y, axis)
            return y

        return fn

    original_resize = src_ops.image.resize

    def resize(images, size, interpolation="bilinear", antialias=False, **kwargs):
        if any(isinstance(v, tf.Tensor) for v in size) and not any(kwargs.get(k) for k in (
                "crop_to_aspect_ratio", "pad_to_aspect_ratio")):
            return kbackend.image.resize(images, tuple(size), interpolation=interpolation, antialias=antialias,
                                         data_format=kwargs.get("data_format"))
        return original_resize(images, size, interpolation=interpolation, antialias=antialias, **kwargs)

    patches = [(tfnp, "argmax", plain(tf.argmax)), (tfnp, "argmin", plain(tf.argmin)),
               (src_ops.image, "resize", resize), (public_ops.image, "resize", resize)]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches if hasattr(mod, name)]
    for mod, name, fn in patches:
        setattr(mod, name, fn)
    try:
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


def _serving_function(model, shape):
    """A ``tf.function`` mapping ``image`` to ``{"probabilities": ...}`` with a fixed signature."""
    import tensorflow as tf

    spec = tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(image):
        return {OUTPUT_NAME: model(image, training=False)}

    return serve, spec


def _onnx_resize_handler(ctx, node, name, args):
    """tf2onnx handler for TF ``ResizeBilinear`` / ``ResizeNearestNeighbor``.

    tf2onnx's own handler passes float ``scales`` (target/source) when shapes are
    static; with a non-integer ratio (e.g. 30 -> 29, as ``ResizeLike`` does to
    align a decoder to an odd-sized skip) ``30 * float32(29/30)`` is 28.99999, the
    ONNX output has 28 rows and the model does not load. Here bilinear resizing
    gets the integer output ``sizes`` instead, and nearest-neighbour resizing is
    built from two ``Gather`` ops whose source indices are computed exactly as
    TensorFlow does (``min(floor((i + 0.5) * float32(in / out)), in - 1)`` in
    float32), since ONNX's nearest modes round differently at some ratios.
    """
    from onnx import TensorProto

    align = bool(node.get_attr_value("align_corners", 0))
    half = bool(node.get_attr_value("half_pixel_centers", 0))
    out_shapes, out_dtypes = node.output_shapes, node.output_dtypes
    x, size = node.input[0], node.input[1]

    def const(suffix, value):
        return ctx.make_const(f"{name}__{suffix}", value).output[0]

    size64 = ctx.make_node("Cast", [size], {"to": TensorProto.INT64}).output[0]
    if node.type == "ResizeNearestNeighbor" and not align:
        shape = ctx.make_node("Shape", [x]).output[0]
        y = x
        for axis in (1, 2):
            n_in = ctx.make_node("Gather", [shape, const(f"axis{axis}", np.array(axis, np.int64))]).output[0]
            n_out = ctx.make_node("Gather", [size64, const(f"pos{axis}", np.array(axis - 1, np.int64))]).output[0]
            f_in = ctx.make_node("Cast", [n_in], {"to": TensorProto.FLOAT}).output[0]
            f_out = ctx.make_node("Cast", [n_out], {"to": TensorProto.FLOAT}).output[0]
            scale = ctx.make_node("Div", [f_in, f_out]).output[0]
            pos = ctx.make_node("Range", [const(f"zero{axis}", np.array(0, np.float32)), f_out,
                                          const(f"one{axis}", np.array(1, np.float32))]).output[0]
            if half:
                pos = ctx.make_node("Add", [pos, const(f"half{axis}", np.array(0.5, np.float32))]).output[0]
            src = ctx.make_node("Floor", [ctx.make_node("Mul", [pos, scale]).output[0]]).output[0]
            src = ctx.make_node("Cast", [src], {"to": TensorProto.INT64}).output[0]
            last = ctx.make_node("Sub", [n_in, const(f"i1{axis}", np.array(1, np.int64))]).output[0]
            idx = ctx.make_node("Min", [src, last]).output[0]
            if axis == 2:
                ctx.remove_node(node.name)
                ctx.make_node("Gather", [y, idx], {"axis": axis}, name=node.name, outputs=node.output,
                              shapes=out_shapes, dtypes=out_dtypes)
            else:
                y = ctx.make_node("Gather", [y, idx], {"axis": axis}).output[0]
        return
    mode = "linear" if node.type == "ResizeBilinear" else "nearest"
    attr = {"mode": mode, "coordinate_transformation_mode": "align_corners" if align else
            "half_pixel" if half else "asymmetric"}
    if mode == "nearest":
        attr["nearest_mode"] = "round_prefer_ceil"
    nchw = ctx.make_node("Transpose", [x], {"perm": [0, 3, 1, 2]}).output[0]
    shape = ctx.make_node("Shape", [nchw]).output[0]
    batch_channels = ctx.make_node("Slice", [shape, const("start", np.array([0], np.int64)),
                                             const("stop", np.array([2], np.int64))]).output[0]
    sizes = ctx.make_node("Concat", [batch_channels, size64], {"axis": 0}).output[0]
    resize = ctx.make_node("Resize", [nchw, const("roi", np.array([], np.float32)),
                                      const("scales", np.array([], np.float32)), sizes], attr)
    ctx.remove_node(node.name)
    ctx.make_node("Transpose", resize.output, {"perm": [0, 2, 3, 1]}, name=node.name,
                  outputs=node.output, shapes=out_shapes, dtypes=out_dtypes)


# ------------------------------------------------------------------------------------------
# Writers (to a path; no checks)


def to_onnx(model, path, shape, opset=DEFAULT_OPSET, fp16=False, metadata=None):
    """Write ``model`` as ONNX with input ``image`` of ``shape`` and output ``probabilities``."""
    import logging

    try:
        import onnx
        import tf2onnx
    except ImportError as e:
        raise ExportError(
            f"ONNX export needs tf2onnx and onnx ({e.name} is missing); pip install kseg[export]"
        ) from None
    max_opset = max(tf2onnx.constants.OPSET_TO_IR_VERSION)
    if not MIN_OPSET <= int(opset) <= max_opset:
        raise ExportError(f"--opset {opset} is not supported; use {MIN_OPSET}..{max_opset} (default {DEFAULT_OPSET})")
    try:  # numpy>=2 compatibility shims Keras applies before calling tf2onnx itself
        from keras.src.export.tf2onnx_lib import patch_tf2onnx

        patch_tf2onnx()
    except ImportError:  # pragma: no cover
        pass
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    handlers = {op: (_onnx_resize_handler, []) for op in ("ResizeBilinear", "ResizeNearestNeighbor")}
    with _export_friendly_ops():
        fn, spec = _serving_function(model, shape)
        try:
            proto, _ = tf2onnx.convert.from_function(fn, input_signature=[spec], opset=int(opset),
                                                     custom_op_handlers=handlers)
        except Exception as e:
            raise ExportError(f"tf2onnx cannot convert {model.name}: {type(e).__name__}: {_first_line(e)}") from None
    if fp16:
        try:
            from onnxconverter_common import float16
        except ImportError:
            raise ExportError(
                "--fp16 for ONNX needs onnxconverter-common (pip install onnxconverter-common); "
                "or use --format tflite --fp16"
            ) from None
        proto = float16.convert_float_to_float16(proto, keep_io_types=True)
    for k, v in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(k), v if isinstance(v, str) else json.dumps(v)
    onnx.save(proto, path)
    return path


def to_saved_model(model, path, shape):
    """Write a SavedModel whose ``serving_default`` signature maps ``image`` to ``probabilities``.

    Uses ``keras.export.ExportArchive`` so Keras variables are tracked the way
    TF-Serving and the TFLite converter expect.
    """
    import keras
    import tensorflow as tf

    spec = tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)

    def serve(image):
        return {OUTPUT_NAME: model(image, training=False)}

    with _export_friendly_ops():
        try:
            archive = keras.export.ExportArchive()
            archive.track(model)
            archive.add_endpoint(SIGNATURE_KEY, serve, input_signature=[spec])
            archive.write_out(path, verbose=False)
        except Exception as e:
            raise ExportError(f"cannot trace {model.name} for export: {type(e).__name__}: {_first_line(e)}") from None
    return path


def _tflite_blob(model, shape, fp16, int8, representative, workdir):
    """Convert once; returns ``(flatbuffer bytes, note)``."""
    import tensorflow as tf

    tmp = tempfile.mkdtemp(prefix=".kseg_sm_", dir=workdir)
    note = ""
    try:
        to_saved_model(model, tmp, shape)

        def convert(int8_only):
            conv = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[SIGNATURE_KEY])
            if fp16:
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
                conv.target_spec.supported_types = [tf.float16]
            if int8:
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
                conv.representative_dataset = lambda: ([x[None]] for x in representative)
                if int8_only:
                    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                    conv.inference_input_type = tf.int8
                    conv.inference_output_type = tf.int8
            return conv.convert()

        with _quiet_stderr():
            try:
                blob = convert(int8_only=True)
            except Exception as e:
                if not int8:
                    raise
                note = (f"some ops have no int8 kernel ({_first_line(e)[:160]}); "
                        "they run in float32 and the model keeps float32 input/output")
                blob = convert(int8_only=False)
        _tflite_check(blob)  # a converted model can still be one the interpreter rejects
        return blob, note
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def to_tflite(model, path, shape, fp16=False, int8=False, representative=None, workdir=None):
    """Write a TFLite flatbuffer (float32, fp16 weights, or full-integer int8).

    Some graphs convert with a dynamic batch axis into a file the interpreter
    rejects (TF's einsum lowering with a dynamic batch and a static height/width,
    as in ``AdaptiveAveragePooling2D``); those are exported again with batch 1
    (the runner then feeds images one at a time) and the note says so.

    Returns:
        ``(note, shape)``: a note (``""`` when none) and the input shape used.
    """
    if fp16 and int8:
        raise ExportError("--fp16 and --int8 exclude each other; pick one")
    if int8 and representative is None:
        raise ExportError("--int8 needs calibration images (--calibration_dir)")
    try:
        try:
            blob, note = _tflite_blob(model, shape, fp16, int8, representative, workdir)
        except ExportError:
            raise
        except Exception as e:
            if shape[0] is not None:
                raise
            blob, note = _tflite_blob(model, (1,) + tuple(shape[1:]), fp16, int8, representative, workdir)
            note = "; ".join(n for n in (note, f"TFLite cannot handle a dynamic batch axis for this model "
                                               f"({_first_line(e)[:120]}); exported with batch 1") if n)
            shape = (1,) + tuple(shape[1:])
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"TFLite cannot convert {model.name}: {type(e).__name__}: {_first_line(e)}") from None
    with open(path, "wb") as f:
        f.write(blob)
    return note, shape


# ------------------------------------------------------------------------------------------
# Runners: a callable float32 (B, h, w, 3) -> probabilities (B, h, w, C) per runtime


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
            f"onnxruntime cannot load {path}: {_first_line(e)}; re-export it with scripts/export.py"
        ) from None
    inp = sess.get_inputs()[0]
    outs = [o.name for o in sess.get_outputs()]
    out_name = OUTPUT_NAME if OUTPUT_NAME in outs else outs[0]
    fixed_batch = _dim(inp.shape[0])
    hw = (_dim(inp.shape[1]), _dim(inp.shape[2]))

    def run(batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        _check_hw(hw, batch.shape, path)
        if fixed_batch and batch.shape[0] != fixed_batch:
            return np.concatenate([sess.run([out_name], {inp.name: batch[i : i + fixed_batch]})[0]
                                   for i in range(0, batch.shape[0], fixed_batch)])
        return sess.run([out_name], {inp.name: batch})[0]

    run.session = sess
    return run


def _tflite_interpreter(model_path=None, model_content=None, threads=None, delegates=True):
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


def _is_delegate_error(e):
    text = str(e)
    return "XNNPACK" in text or "Delegate" in text or "delegate" in text


def _tflite_check(blob):
    """Raise unless the interpreter can allocate ``blob`` (with XNNPACK, or else without)."""
    with _quiet_stderr():
        try:
            _tflite_interpreter(model_content=blob).allocate_tensors()
        except RuntimeError as e:
            if not _is_delegate_error(e):
                raise
            _tflite_interpreter(model_content=blob, delegates=False).allocate_tensors()


def _tflite_runner(path, threads=None):
    try:
        with _quiet_stderr():
            first = _tflite_interpreter(model_path=path, threads=threads)
    except Exception as e:
        raise ExportError(f"the TFLite interpreter cannot load {path}: {_first_line(e)}; re-export it") from None
    inp = first.get_input_details()[0]
    out = first.get_output_details()[0]
    signature = inp.get("shape_signature", inp["shape"])
    fixed_batch = int(signature[0]) if signature[0] > 0 else None
    hw = (_dim(int(signature[1])), _dim(int(signature[2])))
    state = {"interp": first, "shape": None, "delegates": True}

    def quantize(x, detail):
        scale, zero = detail["quantization"]
        if detail["dtype"] in (np.int8, np.uint8) and scale:
            info = np.iinfo(detail["dtype"])
            return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])
        return x.astype(detail["dtype"])

    def dequantize(y, detail):
        scale, zero = detail["quantization"]
        if detail["dtype"] in (np.int8, np.uint8) and scale:
            return (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)

    def run_one(batch):
        interp = state["interp"]
        if state["shape"] != batch.shape:
            try:
                interp.resize_tensor_input(inp["index"], list(batch.shape), strict=False)
                with _quiet_stderr():  # the "Created TensorFlow Lite XNNPACK delegate" notice
                    interp.allocate_tensors()
                    interp.set_tensor(inp["index"], quantize(batch, inp))
                    interp.invoke()
            except RuntimeError as e:
                if not (state["delegates"] and _is_delegate_error(e)):
                    raise ExportError(f"TFLite cannot run {path} on a {batch.shape} batch: {_first_line(e)}") from None
                # XNNPACK cannot take some graphs (e.g. int8 squeeze-excitation): builtin kernels instead
                state["interp"] = _tflite_interpreter(model_path=path, threads=threads, delegates=False)
                state["delegates"], state["shape"] = False, None
                return run_one(batch)
            state["shape"] = batch.shape
        else:
            interp.set_tensor(inp["index"], quantize(batch, inp))
            interp.invoke()
        return dequantize(interp.get_tensor(out["index"]).copy(), out)

    def run(batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        _check_hw(hw, batch.shape, path)
        if fixed_batch and batch.shape[0] != fixed_batch:
            return np.concatenate([run_one(batch[i : i + fixed_batch])
                                   for i in range(0, batch.shape[0], fixed_batch)])
        return run_one(batch)

    run.interpreter = first
    run.state = state
    return run


def _savedmodel_runner(path):
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(path)
        fn = loaded.signatures[SIGNATURE_KEY]
    except Exception as e:
        raise ExportError(f"cannot load the SavedModel {path}: {_first_line(e)}; re-export it") from None
    specs = fn.structured_input_signature[1]
    name = INPUT_NAME if INPUT_NAME in specs else next(iter(specs))
    shape = specs[name].shape
    hw = (shape[1], shape[2])
    fixed_batch = shape[0]

    def run(batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        _check_hw(hw, batch.shape, path)
        if fixed_batch and batch.shape[0] != fixed_batch:
            return np.concatenate([run(batch[i : i + fixed_batch]) for i in range(0, batch.shape[0], fixed_batch)])
        outs = fn(**{name: tf.constant(batch)})
        y = outs[OUTPUT_NAME] if OUTPUT_NAME in outs else next(iter(outs.values()))
        return y.numpy()

    run.loaded = loaded
    return run


def make_runner(fmt, path, threads=None):
    """A run callable for an exported file ``path`` of format ``fmt``."""
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
        A callable mapping a float32 ``(B, h, w, 3)`` batch to numpy probabilities.
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
# Images for the parity check and int8 calibration


def _preprocess(image, config, size):
    from kseg.data.preprocess import normalize, resize_image

    return normalize(resize_image(image, size, int(config.get("resize_op", 1))), config.get("image_init", "divide"))


def calibration_images(image_dir, config, size=None, limit=100):
    """Up to ``limit`` images of ``image_dir`` preprocessed like training (resize + normalise)."""
    from kseg.data.io import IMAGE_EXTENSIONS, list_files, read_image

    size = size or (int(config["input_height"]), int(config["input_width"]))
    if not os.path.isdir(image_dir):
        raise ExportError(f"--calibration_dir {image_dir} does not exist; pass a folder of training images")
    files = list_files(image_dir, IMAGE_EXTENSIONS)[: int(limit)]
    if not files:
        raise ExportError(f"--calibration_dir {image_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return np.stack([_preprocess(read_image(p), config, size) for p in files]).astype(np.float32)


def _dataset_dirs(config):
    root = config.get("dataset") or ""
    return [os.path.join(root, f"{s}_image") for s in ("test", "val", "train")] if root else []


def sample_images(config, size, n=4, image_dirs=None, seed=0):
    """``n`` network inputs of ``size`` for the parity check.

    Real images come first (``image_dirs``, default the experiment dataset's
    test/val/train images, preprocessed like the predictor does); when there are
    not enough, deterministic random images fill up the batch.
    """
    from kseg.data.io import IMAGE_EXTENSIONS, list_files, read_image

    out = []
    for d in image_dirs if image_dirs is not None else _dataset_dirs(config):
        if len(out) >= n or not os.path.isdir(d):
            continue
        for p in list_files(d, IMAGE_EXTENSIONS)[: n - len(out)]:
            try:
                out.append(_preprocess(read_image(p), config, size))
            except KsegError:
                continue
    rng = np.random.default_rng(seed)
    while len(out) < n:
        noise = rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
        out.append(_preprocess(noise, config, size))
    return np.stack(out).astype(np.float32)


# ------------------------------------------------------------------------------------------
# Parity


def parity_check(model, exported, images, *, fmt=None, precision="float32", atol=None, max_mismatch=None,
                 batch_size=2):
    """Compare the Keras model with an exported copy on the same inputs.

    Args:
        model: the Keras model.
        exported: a run callable, or the path of an exported file (then ``fmt`` is needed).
        images: float32 network inputs ``(N, h, w, 3)`` or a list of such arrays
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
                                  f"{_first_line(e)}") from None
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


# ------------------------------------------------------------------------------------------
# Export with check and atomic rename


def default_output(folder, fmt):
    return os.path.join(folder, FILENAMES[fmt])


def _resolve_output(output, folder, fmt):
    if output is None:
        return default_output(folder, fmt)
    if fmt != "savedmodel" and os.path.isdir(output):
        return os.path.join(output, FILENAMES[fmt])
    return output


def _replace(tmp, final):
    """Move ``tmp`` (file or folder) onto ``final``, replacing what is there."""
    if os.path.isdir(tmp):
        old = None
        if os.path.lexists(final):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.old.", dir=os.path.dirname(final))
            os.rmdir(old)
            os.replace(final, old)
        os.replace(tmp, final)
        if old and os.path.isdir(old):
            shutil.rmtree(old, ignore_errors=True)
        elif old:
            os.remove(old)
    else:
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp files are private; an exported model is not
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)


def _check_options(fmt, fp16, int8):
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if int8 and fmt != "tflite":
        raise ExportError(f"--int8 is available for --format tflite only (not {fmt})")
    if fp16 and fmt == "savedmodel":
        raise ExportError(
            "--fp16 is available for --format tflite (and onnx with onnxconverter-common), not savedmodel"
        )
    if fp16 and int8:
        raise ExportError("--fp16 and --int8 exclude each other; pick one")


def export_keras_model(model, fmt, output, config, *, opset=DEFAULT_OPSET, dynamic_batch=True,
                       dynamic_size=False, fp16=False, int8=False, calibration=None, images=None,
                       atol=None, max_mismatch=None, divisor=None):
    """Export a Keras model to ``output`` after a parity check; returns ``(path, report)``.

    ``calibration``: float32 network inputs for int8 (see :func:`calibration_images`).
    ``images``: float32 network inputs for the parity check (default: :func:`sample_images`).
    Nothing is written under ``output`` unless the check passes.
    """
    _require_tensorflow_backend()
    _check_options(fmt, fp16, int8)
    if int8 and calibration is None:
        raise ExportError("--int8 needs --calibration_dir (a folder of training images)")
    model = _as_float32(model)
    shape = input_shape_for_export(model, config, dynamic_batch, dynamic_size)
    size = (shape[1] or int(config["input_height"]), shape[2] or int(config["input_width"]))
    if images is None:
        images = [sample_images(config, size, n=4)]
        if dynamic_size:  # also check another size, so "size-free" is tested, not assumed
            d = int(divisor or _divisor(config))
            other = (size[0] + d, size[1] + 2 * d)
            images.append(sample_images(config, other, n=2, seed=1))
    final = os.path.abspath(output)
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(final)
    precision = "int8" if int8 else "float16" if fp16 else "float32"
    metadata = _metadata(config, shape, precision)
    if fmt == "savedmodel":
        tmp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
        os.rmdir(tmp)
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{os.path.splitext(base)[1]}", dir=parent)
        os.close(fd)
    note = ""
    try:
        if fmt == "onnx":
            to_onnx(model, tmp, shape, opset=opset, fp16=fp16, metadata=metadata)
        elif fmt == "savedmodel":
            to_saved_model(model, tmp, shape)
        else:
            note, shape = to_tflite(model, tmp, shape, fp16=fp16, int8=int8, representative=calibration,
                                    workdir=parent)
        atol, max_mismatch, why = _tolerances(model, precision, atol, max_mismatch)
        report = parity_check(model, make_runner(fmt, tmp), images, precision=precision, atol=atol,
                              max_mismatch=max_mismatch, batch_size=2 if dynamic_batch else 1)
        report.update(format=fmt, path=final, input_shape=list(shape), n_classes=int(model.output_shape[-1]),
                      io_dtype="int8" if int8 and not note else "float32", note=note, tolerance_note=why)
        if not report["passed"]:
            raise ExportError(
                f"{format_parity(report)}; {final} was not written (loosen with --atol/--max_mismatch "
                "only if that precision loss is acceptable)"
            )
        _replace(tmp, final)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)
    return final, report


def _uses_argmax_unpooling(model):
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        if type(layer).__name__ == "MaxPoolingWithArgmax2D":
            return True
        stack.extend(getattr(layer, "layers", []))
    return False


def _tolerances(model, precision, atol, max_mismatch):
    """``(atol, max_mismatch, reason)``: explicit values win, else the defaults for the precision/model."""
    d_atol, d_mis = TOLERANCES[precision]
    why = ""
    if _uses_argmax_unpooling(model) and (atol is None or max_mismatch is None):
        d_atol, d_mis = max(d_atol, ARGMAX_UNPOOL_TOLERANCE[0]), max(d_mis, ARGMAX_UNPOOL_TOLERANCE[1])
        why = ("tolerance widened for max-unpooling with indices: a near-tie in a 2x2 window may resolve "
               "differently and move a value by one pixel")
    return (d_atol if atol is None else float(atol), d_mis if max_mismatch is None else float(max_mismatch), why)


def _divisor(config):
    try:
        from kseg.models import model_spec

        return max(1, model_spec(config["model_name"]).divisor)
    except Exception:
        return 32


def _metadata(config, shape, precision):
    return {
        "kseg_model": config.get("model_name", ""),
        "input": f"{INPUT_NAME}: float32 NHWC {list(shape)}",
        "output": f"{OUTPUT_NAME}: float32 NHWC (batch, height, width, {config.get('n_classes')})",
        "image_init": config.get("image_init", "divide"),
        "resize_op": int(config.get("resize_op", 1)),
        "n_classes": int(config.get("n_classes", 0)),
        "class_names": config.get("class_names", []),
        "precision": precision,
    }


def export_model(weights_path, fmt, output=None, opset=DEFAULT_OPSET, dynamic_batch=True, dynamic_size=False,
                 fp16=False, int8=False, calibration_dir=None, *, atol=None, max_mismatch=None,
                 calibration_limit=100, return_report=False):
    """Export an experiment (folder or ``.keras`` file) and check it against the Keras model.

    Args:
        weights_path: ``weights/<exp>`` or a ``.keras`` file beside its ``config.json``.
        fmt: ``"onnx"``, ``"savedmodel"`` or ``"tflite"``.
        output: target path (default: ``model.onnx`` / ``saved_model/`` / ``model.tflite``
            in the experiment folder).
        opset: ONNX opset (13..18).
        dynamic_batch: dynamic batch axis (else batch 1).
        dynamic_size: dynamic height/width (models built size-free only).
        fp16: TFLite float16 weights (ONNX: needs onnxconverter-common).
        int8: TFLite full-integer post-training quantisation.
        calibration_dir: images for int8 calibration (preprocessed like training).
        atol, max_mismatch: parity tolerances (default from :data:`TOLERANCES`).
        calibration_limit: at most this many calibration images.
        return_report: return ``(path, report)`` instead of the path.

    Returns:
        The path written (and the parity report with ``return_report=True``).

    Raises:
        ExportError: impossible option combination, conversion failure, or a
            parity check over tolerance (then nothing is written).

    Example:
        >>> export_model("weights/unet_shapes", "onnx")
        'weights/unet_shapes/model.onnx'
    """
    _check_options(fmt, fp16, int8)
    model, folder, config = load_experiment(weights_path)
    calibration = None
    if int8:
        if calibration_dir is None:
            raise ExportError(
                "--int8 needs --calibration_dir (a folder of training images, e.g. <dataset>/train_image)"
            )
        shape = input_shape_for_export(model, config, True, False)
        calibration = calibration_images(calibration_dir, config, (shape[1], shape[2]), calibration_limit)
    path, report = export_keras_model(
        model, fmt, _resolve_output(output, folder, fmt), config, opset=opset, dynamic_batch=dynamic_batch,
        dynamic_size=dynamic_size, fp16=fp16, int8=int8, calibration=calibration, atol=atol,
        max_mismatch=max_mismatch,
    )
    return (path, report) if return_report else path


# ------------------------------------------------------------------------------------------
# Latency


def _time_runs(fn, x, runs, warmup):
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return np.asarray(times) * 1000.0


def benchmark_runtimes(weights_path=None, *, model=None, config=None, size=None, batch_sizes=(1, 8),
                       backends=("keras", "onnx", "tflite"), runs=20, warmup=3, opset=DEFAULT_OPSET,
                       threads=None, workdir=None, atol=None, max_mismatch=None):
    """Inference latency of the Keras model and its exported copies.

    The model comes from ``weights_path`` (an experiment) or is given as ``model``
    (with ``config``, e.g. an untrained registry model). Each runtime other than
    Keras gets a fresh export (dynamic batch, fixed ``size``) in a temporary
    folder (parity-checked as usual); the experiment folder is not touched.
    Inputs are random float32 batches; times are wall-clock per forward pass
    after ``warmup`` runs.

    Returns:
        A list of dicts ``{"backend", "batch", "size", "median_ms", "p90_ms",
        "images_per_s", "max_abs_diff", "note"}`` (``max_abs_diff``: the export's
        parity figure, ``None`` for Keras). Keras runs ``model.predict_on_batch``
        (a compiled TF graph).
    """
    _require_tensorflow_backend()
    if model is None:
        if weights_path is None:
            raise ExportError("benchmark needs --weights_path or --model_name")
        model, _, config = load_experiment(weights_path)
    config = dict(config or {})
    model = _as_float32(model)
    if size is None:
        _, mh, mw, _ = model.input_shape
        size = (mh or int(config.get("input_height", 256)), mw or int(config.get("input_width", 256)))
    config.setdefault("input_height", size[0])
    config.setdefault("input_width", size[1])
    config.setdefault("n_classes", model.output_shape[-1])
    for b in backends:
        if b not in ("keras",) + FORMATS:
            raise ExportError(f"unknown benchmark backend {b!r}; valid: keras, {', '.join(FORMATS)}")
    cfg_size = {**config, "input_height": size[0], "input_width": size[1]}
    rows = []
    tmpdir = tempfile.mkdtemp(prefix="kseg_bench_", dir=workdir)
    rng = np.random.default_rng(0)
    try:
        runners, reports = {}, {}
        for b in backends:
            if b == "keras":
                runners[b] = model.predict_on_batch
            else:
                path, reports[b] = export_keras_model(
                    model, b, os.path.join(tmpdir, FILENAMES[b]), cfg_size, opset=opset, atol=atol,
                    max_mismatch=max_mismatch, images=[rng.random((2, size[0], size[1], 3), np.float32)])
                runners[b] = make_runner(b, path, threads=threads)
        for bs in batch_sizes:
            x = rng.random((int(bs), size[0], size[1], 3), np.float32)
            for b, fn in runners.items():
                t = _time_runs(fn, x, runs, warmup)
                med = float(np.median(t))
                rep = reports.get(b, {})
                rows.append({"backend": b, "batch": int(bs), "size": list(size), "median_ms": med,
                             "p90_ms": float(np.percentile(t, 90)), "images_per_s": 1000.0 * bs / med,
                             "max_abs_diff": rep.get("max_abs_diff"), "note": rep.get("note", "")})
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return rows


def format_benchmark(rows, title=None):
    """A Markdown table of :func:`benchmark_runtimes` rows."""
    lines = [f"**{title}**", ""] if title else []
    lines += ["| runtime | batch | median ms | p90 ms | images/s | max \\|dp\\| vs Keras |",
              "|---|---:|---:|---:|---:|---:|"]
    notes = []
    for r in rows:
        diff = "-" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.1e}"
        mark = ""
        if r.get("note"):
            if r["note"] not in notes:
                notes.append(r["note"])
            mark = " " + "*" * (notes.index(r["note"]) + 1)
        lines.append(f"| {r['backend']}{mark} | {r['batch']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | "
                     f"{r['images_per_s']:.1f} | {diff} |")
    lines += [f"{'*' * (i + 1)} {n}" for i, n in enumerate(notes)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Small utilities


def _first_line(e):
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


@contextlib.contextmanager
def _quiet_stderr():
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
