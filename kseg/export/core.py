"""Export with a check: write under a temporary name, compare with Keras, then rename into place.

:func:`export_keras_model` exports a Keras model; :func:`export_model` loads an
experiment first (and its int8 calibration images). A file reaches its final
name only when :func:`kseg.export.parity.parity_check` passes, so a failed
check never leaves a file where a deployed model is expected.
"""

import os

from kseg.config import ExperimentConfig
from kseg.errors import ExportError
from kseg.files import missing_dirs
from kseg.export.model import (as_float32, input_shape_for_export, load_experiment, model_divisor,
                               require_tensorflow_backend)
from kseg.export.parity import calibration_images, format_parity, parity_check, sample_images, tolerances
from kseg.export.writers import (DEFAULT_OPSET, remove, remove_stale_temporaries, replace, temporary_path, to_onnx,
                                 to_saved_model, to_tflite)
from kseg.progress import step
from kseg.runtime import FILENAMES, FORMATS, INPUT_NAME, OUTPUT_NAME, make_runner


def default_output(folder, fmt):
    """Where an export of format ``fmt`` goes in an experiment folder (``model.onnx`` ...)."""
    return os.path.join(folder, FILENAMES[fmt])


def _resolve_output(output, folder, fmt):
    if output is None:
        return default_output(folder, fmt)
    if fmt != "savedmodel" and os.path.isdir(output):
        return os.path.join(output, FILENAMES[fmt])
    return output


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
    config = ExperimentConfig.coerce(config, model_name=model.name, n_classes=int(model.output_shape[-1]),
                                     input_channels=int(model.input_shape[-1] or 3))
    require_tensorflow_backend()
    _check_options(fmt, fp16, int8)
    if int8 and calibration is None:
        raise ExportError("--int8 needs --calibration_dir (a folder of training images)")
    model = as_float32(model)
    shape = input_shape_for_export(model, config, dynamic_batch, dynamic_size)
    size = (shape[1] or config.input_height, shape[2] or config.input_width)
    if images is None:
        images = [sample_images(config, size, n=4)]
        if dynamic_size:  # also check another size, so "size-free" is tested, not assumed
            d = int(divisor or model_divisor(config))
            other = (size[0] + d, size[1] + 2 * d)
            images.append(sample_images(config, other, n=2, seed=1))
    final = os.path.abspath(output)
    parent = os.path.dirname(final)
    created = missing_dirs(parent)
    os.makedirs(parent, exist_ok=True)
    precision = "int8" if int8 else "float16" if fp16 else "float32"
    metadata = _metadata(config, shape, precision)
    gone = remove_stale_temporaries(final)
    if gone:
        print(f"removed what a killed export left: {', '.join(sorted(gone))}")
    tmp = temporary_path(final, is_dir=fmt == "savedmodel")
    note = ""
    try:
        step(f"{fmt}: converting {model.name} ({model.count_params():,} parameters)")
        if fmt == "onnx":
            to_onnx(model, tmp, shape, opset=opset, fp16=fp16, metadata=metadata)
        elif fmt == "savedmodel":
            to_saved_model(model, tmp, shape)
        else:
            note, shape = to_tflite(model, tmp, shape, fp16=fp16, int8=int8, representative=calibration,
                                    workdir=parent)
        atol, max_mismatch, why = tolerances(model, precision, atol, max_mismatch)
        step(f"{fmt}: checking parity with the Keras model on {sum(len(b) for b in images)} images")
        report = parity_check(model, make_runner(fmt, tmp), images, precision=precision, atol=atol,
                              max_mismatch=max_mismatch, batch_size=2 if dynamic_batch else 1)
        report.update(format=fmt, path=final, input_shape=list(shape), n_classes=int(model.output_shape[-1]),
                      io_dtype="int8" if int8 and not note else "float32", note=note, tolerance_note=why)
        if not report["passed"]:
            raise ExportError(
                f"{format_parity(report)}; {final} was not written (loosen with --atol/--max_mismatch "
                "only if that precision loss is acceptable)"
            )
        replace(tmp, final)
    except BaseException:
        remove(tmp)
        for d in created:  # deepest first: a failed export leaves no empty folders
            try:
                os.rmdir(d)
            except OSError:
                break
        raise
    finally:
        remove(tmp)
    return final, report


def _metadata(config, shape, precision):
    return {
        "kseg_model": config.model_name,
        "input": f"{INPUT_NAME}: float32 NHWC {list(shape)}",
        "output": f"{OUTPUT_NAME}: float32 NHWC (batch, height, width, {config.n_classes})",
        "image_init": config.image_init,
        "input_channels": config.input_channels,
        "mean": config.mean,
        "std": config.std,
        "resize_op": config.resize_op,
        "n_classes": config.n_classes,
        "class_names": config.class_names,
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
