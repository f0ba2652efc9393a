"""Export a trained experiment to ONNX, a TensorFlow SavedModel or TFLite, check it, run it.

Every exported model has the same interface, whatever the format:

* one input named ``image``: float32, NHWC ``(batch, height, width, channels)``
  (``input_channels`` of ``config.json``), already normalised the way the
  experiment's ``config.json`` says (:func:`kseg.data.preprocess.normalize`:
  per-channel ``(x - mean) / std`` when it has ``mean`` / ``std``, else
  ``image_init`` on the pixel type's range R, 255 or 65535: ``divide`` = x/R,
  ``sub_and_divide`` = x/(R/2) - 1, ``sub_mean`` = x*255/R - ImageNet mean) and
  resized / letterboxed to the training size (``resize_op``);
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

The package, by job:

* :mod:`kseg.export.model` -- loading the Keras model, float32, the exported input shape;
* :mod:`kseg.export.writers` -- ONNX / SavedModel / TFLite writers and the atomic rename;
* :mod:`kseg.export.parity` -- the parity check, its tolerances, its (and int8
  calibration) images, made by the predictor's own preprocessing;
* :mod:`kseg.export.core` -- :func:`export_keras_model` and :func:`export_model`;
* :mod:`kseg.export.bench` -- :func:`benchmark_runtimes`: Keras vs onnxruntime vs TFLite latency;
* :mod:`kseg.export.cache` -- the cached ONNX copy of ``--runtime auto``, made in a subprocess
  (``python -m kseg.export.cache``) that :func:`kseg.runtime.auto_runner` starts.

The runners that load an exported file (:func:`make_runner`, :func:`runtime_runner`,
used by :class:`kseg.predict.Predictor` for ``scripts/test.py --backend
onnx|tflite|savedmodel``) live in :mod:`kseg.runtime`, below both prediction and
export; they are re-exported here. Keras internals patched while tracing are in
:mod:`kseg.compat`.

TensorFlow (and, for ONNX, ``tf2onnx``/``onnx``/``onnxruntime``) is the export
engine, so exporting needs the TensorFlow Keras backend; running an exported
ONNX file needs only onnxruntime.
"""

from kseg.errors import ExportError
from kseg.export.bench import benchmark_runtimes, format_benchmark
from kseg.export.core import default_output, export_keras_model, export_model
from kseg.export.model import as_float32, input_shape_for_export, load_experiment
from kseg.export.parity import (ARGMAX_UNPOOL_TOLERANCE, TOLERANCES, calibration_images, format_parity,
                                parity_check, sample_images)
from kseg.export.writers import DEFAULT_OPSET, MIN_OPSET, onnx_resize_handler, to_onnx, to_saved_model, to_tflite
from kseg.runtime import (FILENAMES, FORMATS, INPUT_NAME, OUTPUT_NAME, RUNTIMES, SIGNATURE_KEY, make_runner,
                          runtime_runner)

__all__ = [
    "ARGMAX_UNPOOL_TOLERANCE", "DEFAULT_OPSET", "FILENAMES", "FORMATS", "INPUT_NAME", "MIN_OPSET", "OUTPUT_NAME",
    "RUNTIMES", "SIGNATURE_KEY", "TOLERANCES", "ExportError", "as_float32", "benchmark_runtimes",
    "calibration_images", "default_output", "export_keras_model", "export_model", "format_benchmark",
    "format_parity", "input_shape_for_export", "load_experiment", "make_runner", "onnx_resize_handler",
    "parity_check", "runtime_runner", "sample_images", "to_onnx", "to_saved_model", "to_tflite",
]
