"""Writers: a Keras model to an ONNX, SavedModel or TFLite file at a given path (no checks).

Every file has the interface described in :mod:`kseg.export`: input ``image``
(float32 NHWC, normalised), output ``probabilities``. Graphs are traced with
:func:`kseg.compat.export_friendly_ops` (ONNX also with
:func:`kseg.compat.tf2onnx_numpy2`), so the Keras patches they need exist only
while tracing. :func:`temporary_path` and :func:`replace` let
:func:`kseg.export.export_keras_model` write under a temporary name and move the
file into place only after its parity check passed.
"""

import json
import os
import shutil
import tempfile

import numpy as np

from kseg.compat import export_friendly_ops, tf2onnx_low_memory, tf2onnx_numpy2
from kseg.errors import ExportError
from kseg.files import is_partial_write, remove_leftovers, set_default_mode
from kseg.runtime import INPUT_NAME, OUTPUT_NAME, SIGNATURE_KEY, first_line, is_delegate_error, quiet_stderr
from kseg.runtime import tflite_interpreter

DEFAULT_OPSET = 17
MIN_OPSET = 13


# ------------------------------------------------------------------------------------------
# ONNX


def _serving_function(model, shape):
    """A ``tf.function`` mapping ``image`` to ``{"probabilities": ...}`` with a fixed signature."""
    import tensorflow as tf

    spec = tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(image):
        return {OUTPUT_NAME: model(image, training=False)}

    return serve, spec


def onnx_resize_handler(ctx, node, name, args):
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
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    handlers = {op: (onnx_resize_handler, []) for op in ("ResizeBilinear", "ResizeNearestNeighbor")}
    # numpy>=2 fixes for tf2onnx; bounded tf2onnx memory; traceable Keras ops
    with tf2onnx_numpy2(), tf2onnx_low_memory(), export_friendly_ops():
        fn, spec = _serving_function(model, shape)
        try:
            proto, _ = tf2onnx.convert.from_function(fn, input_signature=[spec], opset=int(opset),
                                                     custom_op_handlers=handlers)
        except Exception as e:
            raise ExportError(f"tf2onnx cannot convert {model.name}: {type(e).__name__}: {first_line(e)}") from None
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


# ------------------------------------------------------------------------------------------
# SavedModel and TFLite


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

    with export_friendly_ops():
        try:
            archive = keras.export.ExportArchive()
            archive.track(model)
            archive.add_endpoint(SIGNATURE_KEY, serve, input_signature=[spec])
            archive.write_out(path, verbose=False)
        except Exception as e:
            raise ExportError(f"cannot trace {model.name} for export: {type(e).__name__}: {first_line(e)}") from None
    return path


def _tflite_blob(model, shape, fp16, int8, representative, workdir, prefix=".kseg_sm_"):
    """Convert once; returns ``(flatbuffer bytes, note)``."""
    import tensorflow as tf

    # named after the temporary output, so remove_stale_temporaries finds it after a kill
    tmp = tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=workdir)
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

        with quiet_stderr():
            try:
                blob = convert(int8_only=True)
            except Exception as e:
                if not int8:
                    raise
                note = (f"some ops have no int8 kernel ({first_line(e)[:160]}); "
                        "they run in float32 and the model keeps float32 input/output")
                blob = convert(int8_only=False)
        _tflite_check(blob)  # a converted model can still be one the interpreter rejects
        return blob, note
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tflite_check(blob):
    """Raise unless the interpreter can allocate ``blob`` (with XNNPACK, or else without)."""
    with quiet_stderr():
        try:
            tflite_interpreter(model_content=blob).allocate_tensors()
        except RuntimeError as e:
            if not is_delegate_error(e):
                raise
            tflite_interpreter(model_content=blob, delegates=False).allocate_tensors()


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
    scratch = os.path.basename(path) + "."
    try:
        try:
            blob, note = _tflite_blob(model, shape, fp16, int8, representative, workdir, scratch)
        except ExportError:
            raise
        except Exception as e:
            if shape[0] is not None:
                raise
            blob, note = _tflite_blob(model, (1,) + tuple(shape[1:]), fp16, int8, representative, workdir,
                                      scratch)
            note = "; ".join(n for n in (note, f"TFLite cannot handle a dynamic batch axis for this model "
                                               f"({first_line(e)[:120]}); exported with batch 1") if n)
            shape = (1,) + tuple(shape[1:])
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"TFLite cannot convert {model.name}: {type(e).__name__}: {first_line(e)}") from None
    with open(path, "wb") as f:
        f.write(blob)
    return note, shape


# ------------------------------------------------------------------------------------------
# Atomic replacement


def temporary_path(final, is_dir):
    """A new, unused temporary name beside ``final`` (a hidden ``.<name>.*.tmp`` file or folder name)."""
    parent, base = os.path.dirname(final), os.path.basename(final)
    if is_dir:
        tmp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
        os.rmdir(tmp)
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{os.path.splitext(base)[1]}", dir=parent)
        os.close(fd)
    return tmp


def remove_stale_temporaries(final):
    """Remove what a killed export of ``final`` left beside it: its hidden temporary
    (``.<name>.*.tmp*``) and replaced (``.<name>.old.*``) files and folders. Only names
    derived from ``final`` are touched, so other writers in the folder are safe."""
    parent, base = os.path.dirname(final) or ".", os.path.basename(final)
    return remove_leftovers(parent, lambda name: name.startswith(f".{base}.") and (
        is_partial_write(name) or name.startswith(f".{base}.old.")), dirs=True)


def remove(path):
    """Remove a file or folder if it exists."""
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def replace(tmp, final):
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
        set_default_mode(tmp)  # mkstemp files are private; an exported model is not
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
