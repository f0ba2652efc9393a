"""The ONNX copy of an experiment's ``.keras`` model that the automatic CPU runtime runs.

:func:`kseg.runtime.auto_runner` (``Predictor.from_experiment(runtime="auto")``,
``kseg test --runtime``, the demo) starts this module in a separate process::

    python -m kseg.export.cache KERAS_FILE FOLDER ONNX_PATH META_PATH SHA256

so that tf2onnx's memory is returned to the system when the conversion ends and so
that :mod:`kseg.runtime` (below both prediction and export) never imports the
exporter. :func:`convert` loads the model, exports it with
:func:`kseg.export.export_keras_model` -- the export's own parity check and
tolerances on the experiment's own images (a fixed random probe when it has none),
the file written under a temporary name and renamed into place only when the check
passes -- then times the Keras model and the ONNX copy against each other at batch 1
(interleaved; :func:`time_against_keras`) and writes what it found next to the
file (``META_PATH``, written atomically after the ONNX file: a kill in between
leaves a file without its record, which the runner treats as absent).

The copy has the experiment's input size (fixed height and width: onnxruntime runs
a graph with fixed spatial sizes several times faster than the same graph with
dynamic ones) and a dynamic batch axis.

The last line on stdout is ``KSEG_CACHE {json}``: ``{"ok": true, "meta": {...}}`` or
``{"ok": false, "reason": "..."}``.
"""

import json
import os
import sys
import time

import numpy as np

from kseg.errors import ExportError
from kseg.export.core import export_keras_model
from kseg.export.model import require_tensorflow_backend
from kseg.files import atomic_path
from kseg.runtime import CACHE_VERSION, file_sha256, first_line, keras_runner, make_runner

RESULT_PREFIX = "KSEG_CACHE "


def time_against_keras(model, run, size, channels, rounds=7, warmup=2, max_seconds=30.0):
    """Batch-1 latencies (ms) of ``model.predict_on_batch`` and ``run``, interleaved (at least
    3 rounds, at most ``rounds``, no new round after ``max_seconds``), after ``warmup`` calls
    of each.

    ``speedup`` is the ratio of the two fastest calls (Keras / ``run``): on a shared machine
    a call is only ever slowed down by other work, so the fastest call is the closest to
    the runtime's own speed, and a busy moment does not decide which runtime is used.
    Medians are reported too.
    """
    x = np.random.default_rng(0).random((1, size[0], size[1], channels), dtype=np.float32)
    fns = (model.predict_on_batch, run)
    for _ in range(warmup):  # tracing, session start, allocations
        for fn in fns:
            fn(x)
    t_start = time.perf_counter()
    times = ([], [])
    while len(times[0]) < rounds and (len(times[0]) < 3 or time.perf_counter() - t_start < max_seconds):
        for fn, out in zip(fns, times):
            t0 = time.perf_counter()
            fn(x)
            out.append(time.perf_counter() - t0)
    k, o = (np.asarray(t) * 1000 for t in times)
    return {"keras_ms": float(k.min()), "onnxruntime_ms": float(o.min()), "speedup": float(k.min() / o.min()),
            "keras_median_ms": float(np.median(k)), "onnxruntime_median_ms": float(np.median(o)),
            "rounds": int(len(k))}


def convert(keras_file, folder, onnx_path, meta_path, digest):
    """Export ``keras_file`` of experiment ``folder`` to ``onnx_path`` (parity-checked), time it,
    and write the record to ``meta_path``; returns the record."""
    import onnxruntime

    from kseg.experiment import read_config

    require_tensorflow_backend()
    config = read_config(folder)
    if file_sha256(keras_file) != digest:
        raise ExportError(f"{keras_file} changed while it was being converted; run again")
    model = keras_runner(keras_file, config=config).model
    _, mh, mw, ch = model.input_shape
    size = (mh or config.input_height, mw or config.input_width)
    shape = (None, size[0], size[1], ch or config.input_channels)
    config_dict = {**config.to_dict(), "input_height": size[0], "input_width": size[1]}
    try:
        path, report = export_keras_model(model, "onnx", onnx_path, config_dict)
    except ExportError as e:  # the parity line without the export command's advice (--atol ...)
        text = str(e)
        raise ExportError(text.split("; ")[0] if text.startswith("parity (") else text) from None
    speed = time_against_keras(model, make_runner("onnx", path, spinning=False), size, shape[3])
    parity = {k: report[k] for k in ("max_abs_diff", "mean_abs_diff", "argmax_mismatch_ratio", "n_images", "sizes",
                                     "precision", "atol", "max_mismatch", "passed")}
    meta = {"version": CACHE_VERSION, "keras_file": os.path.abspath(keras_file), "sha256": digest,
            "onnxruntime": onnxruntime.__version__, "input_size": list(size),
            "model_input_size": [mh, mw] if mh is not None and mw is not None else None,
            "parity": parity, "tolerance_note": report.get("tolerance_note", ""), "speed": speed}
    with atomic_path(meta_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
    return meta


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 5:
        raise SystemExit("usage: python -m kseg.export.cache KERAS_FILE FOLDER ONNX_PATH META_PATH SHA256")
    try:
        result = {"ok": True, "meta": convert(*argv)}
    except Exception as e:  # every failure is a reason for the parent's one warning line
        reason = first_line(e)
        if not isinstance(e, ExportError):
            reason = f"{type(e).__name__}: {reason}"
        result = {"ok": False, "reason": reason}
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
