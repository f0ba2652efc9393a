"""Latency of the Keras model against its exported copies (onnxruntime, TFLite, SavedModel)."""

import os
import shutil
import tempfile
import time

import numpy as np

from kseg.config import ExperimentConfig

from kseg.errors import ExportError
from kseg.export.core import export_keras_model
from kseg.export.model import as_float32, load_experiment, require_tensorflow_backend
from kseg.export.writers import DEFAULT_OPSET
from kseg.runtime import FILENAMES, FORMATS, make_runner


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
    require_tensorflow_backend()
    if model is None:
        if weights_path is None:
            raise ExportError("benchmark needs --weights_path or --model_name")
        model, _, config = load_experiment(weights_path)
    config = config.to_dict() if isinstance(config, ExperimentConfig) else dict(config or {})
    model = as_float32(model)
    if size is None:
        _, mh, mw, _ = model.input_shape
        size = (mh or int(config.get("input_height", 256)), mw or int(config.get("input_width", 256)))
    config.setdefault("model_name", getattr(model, "name", ""))
    config.setdefault("n_classes", model.output_shape[-1])
    config["input_height"], config["input_width"] = size  # exported and timed at this size
    config = ExperimentConfig.coerce(config)
    for b in backends:
        if b not in ("keras",) + FORMATS:
            raise ExportError(f"unknown benchmark backend {b!r}; valid: keras, {', '.join(FORMATS)}")
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
                    model, b, os.path.join(tmpdir, FILENAMES[b]), config, opset=opset, atol=atol,
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
