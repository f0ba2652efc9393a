"""Measuring speed and memory: what ``scripts/benchmark.py`` runs.

Every figure is measured, in this run, on this machine:

* ``params``: ``model.count_params()``.
* ``forward_gflop``: FLOPs of one forward pass of one image, ``2 x MACs`` of the conv
  and dense layers (:func:`kseg.models.profile.count_macs`).
* ``train_images_per_s``: steady-state training speed: the model is compiled as
  ``scripts/train.py`` compiles it (kseg models) or with Keras defaults (the plain
  baseline), trained with ``fit`` on one in-memory batch repeated (so no input
  pipeline is involved); after ``warmup`` steps (tracing, compilation, allocator
  warm-up) the median of the per-step times over ``steps`` steps is taken.
* ``train_gflop_per_s``: achieved training FLOP rate, counting a training step as
  3 forward passes (forward + backward w.r.t. activations and weights).
* ``infer_latency_ms_median`` / ``_p90``: ``predict_on_batch`` on one image.
* ``infer_images_per_s_b8``: ``predict_on_batch`` throughput at batch 8.
* ``peak_rss_mb``: the peak resident memory (``VmHWM``) of the subprocess that ran
  this configuration and nothing else.
* ``conv_peak_gflop_per_s``: the machine's own 3x3-convolution rate, measured on the
  convolution shapes of a U-Net (see :func:`conv_peak`), so every speed can be read
  as a fraction of it.
* ``pipeline_images_per_s``: :func:`kseg.data.pipeline.make_dataset` alone (no
  model) on a real dataset folder: read, decode (JPEG image, PNG index label), resize
  and batch.
* ``--inference`` (:func:`inference_runtimes`): batch-1 CPU inference through Keras and
  through the automatic runtime (``--runtime auto``), interleaved in one process; the
  speed-ups are medians of per-round ratios.

Each configuration runs in its own subprocess (``python -m kseg.benchmark TASK JSON``)
so memory figures do not mix and thread settings apply from the start.
"""

import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# U-Net 3x3 conv shapes at 224x224 (height/width, channels): one per level
UNET_CONV_SHAPES = ((224, 64), (112, 128), (56, 256), (28, 512), (14, 1024))
TRAIN_FLOP_FACTOR = 3  # a training step ~ 3 forward passes

JSON_KEYS = (
    "model", "impl", "input_height", "input_width", "batch_size", "n_classes", "params",
    "forward_gflop", "train_images_per_s", "train_step_s", "train_gflop_per_s",
    "conv_peak_gflop_per_s", "fraction_of_conv_peak", "infer_latency_ms_median",
    "infer_latency_ms_p90", "infer_images_per_s_b8", "peak_rss_mb", "pipeline_images_per_s",
    "jit_compile", "dtype_policy", "steps_per_execution", "direct_dilation", "load_avg", "machine", "date",
)


# --------------------------------------------------------------------------------------
# machine


def peak_rss_mb():
    """Peak resident memory of this process in MiB (``VmHWM``; ``ru_maxrss`` elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


def current_rss_mb():
    """Current resident memory of this process in MiB (``VmRSS``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb()


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info():
    """A short description of the machine and software, for the report."""
    import keras

    info = {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "platform": platform.platform(terse=True),
    }
    try:
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def load_avg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# --------------------------------------------------------------------------------------
# the machine's conv rate


def conv_peak(shapes=UNET_CONV_SHAPES, batch=4, dtype="float32", min_seconds=1.0, repeats=5):
    """Forward 3x3 ``same`` convolution rate of TensorFlow on this machine.

    For every ``(size, channels)`` in ``shapes`` a ``(batch, size, size, channels)``
    input is convolved with a ``(3, 3, channels, channels)`` kernel inside a
    ``tf.function``; FLOPs are ``2 * batch * size^2 * 9 * channels^2``. Each shape is
    timed ``repeats`` times over at least ``min_seconds``; the median rate per shape
    is kept. Returns ``{"gflop_per_s": best shape's rate, "per_shape": {...}}``.
    """
    import tensorflow as tf

    per_shape = {}
    for size, ch in shapes:
        x = tf.random.uniform((batch, size, size, ch), dtype=dtype)
        k = tf.random.uniform((3, 3, ch, ch), dtype=dtype) * 0.01

        @tf.function(jit_compile=False)
        def conv(a, kk):
            return tf.reduce_sum(tf.cast(tf.nn.conv2d(a, kk, 1, "SAME")[0, 0, 0, :1], tf.float32))

        float(conv(x, k))  # trace + warm-up
        float(conv(x, k))
        t0 = time.perf_counter()
        float(conv(x, k))
        one = max(time.perf_counter() - t0, 1e-4)
        n = max(1, int(min_seconds / one))
        rates = []
        flop = 2.0 * batch * size * size * 9 * ch * ch
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(n):
                r = conv(x, k)
            float(r)
            rates.append(flop * n / (time.perf_counter() - t0) / 1e9)
        per_shape[f"{size}x{size}x{ch}"] = round(statistics.median(rates), 1)
    return {"gflop_per_s": max(per_shape.values()), "per_shape": per_shape, "batch": batch, "dtype": dtype}


# --------------------------------------------------------------------------------------
# the straightforward baseline


def plain_unet(n_classes=2, input_shape=(224, 224, 3), base_filters=64, depth=4):
    """A straightforward Keras 3 U-Net: the comparison baseline.

    What one writes from the paper with Keras defaults: every 3x3 ``Conv2D`` (with
    bias, as ``Conv2D`` defaults) followed by ``BatchNormalization()`` (default
    momentum) and ``ReLU``; 2x2 ``MaxPooling2D``; 2x2 stride-2 ``Conv2DTranspose``;
    skip ``Concatenate``; a 1x1 softmax ``Conv2D`` head. Same layers and widths as
    :func:`kseg.models.unet` (so the same FLOPs); its parameter count is kseg's plus
    the conv biases that BN makes redundant (:func:`redundant_bias_params`).
    """
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    x, skips = inputs, []

    def block(x, filters):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same")(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        return x

    for level in range(depth):
        x = block(x, base_filters * 2**level)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = block(x, base_filters * 2**depth)
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(base_filters * 2**level, 2, strides=2, padding="same")(x)
        x = layers.Concatenate()([skips[level], x])
        x = block(x, base_filters * 2**level)
    outputs = layers.Conv2D(n_classes, 1, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="plain_unet")


def compile_plain(model):
    """Keras defaults: Adam(1e-3), sparse categorical cross-entropy, ``jit_compile="auto"``."""
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def redundant_bias_params(model):
    """Bias parameters of convolutions directly followed by BatchNormalization."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for node in layer._inbound_nodes:
                for t in keras.tree.flatten(node.input_tensors):
                    src = t._keras_history.operation
                    if isinstance(src, keras.layers.Conv2D) and src.use_bias:
                        total += int(np.prod(src.bias.shape))
    return total


def forward_gflop(model):
    """Forward FLOPs of one image in GFLOP (``2 x MACs``); ``None`` when the model's
    layer shapes do not allow counting (e.g. a nested model built size-free)."""
    from kseg.models.profile import count_macs

    try:
        return 2.0 * count_macs(model) / 1e9
    except ValueError:
        return None


# --------------------------------------------------------------------------------------
# timing


def _random_batch(batch, h, w, n_classes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((batch, h, w, 3), dtype=np.float32)
    y = rng.integers(0, max(n_classes, 2) if n_classes > 1 else 2, (batch, h, w)).astype("int32")
    return x, y


def time_training(model, batch, steps=10, warmup=2, steps_per_execution=1, seed=0):
    """Per-step training times (seconds) of a compiled ``model`` via ``fit``.

    ``batch = (x, y)`` is repeated from memory, so only the training step is timed.
    A timing callback records the wall clock at every ``on_train_batch_end`` (once
    per ``steps_per_execution`` steps); the first ``warmup`` steps are dropped.
    """
    import keras
    import tensorflow as tf

    x, y = batch
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    stamps = []

    class _Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            stamps.append(time.perf_counter())

        def on_train_batch_end(self, b, logs=None):
            stamps.append(time.perf_counter())

    k = max(1, int(steps_per_execution))
    n_exec = -(-int(warmup) // k) + max(1, -(-int(steps) // k))
    model.fit(ds, steps_per_epoch=n_exec * k, epochs=1, verbose=0, callbacks=[_Clock()], shuffle=False)
    per_exec = np.diff(stamps) / k
    skip = -(-int(warmup) // k)
    return [float(t) for t in per_exec[skip:]]


def time_inference(model, h, w, batch=1, runs=20, warmup=3):
    """Per-call times (seconds) of ``model.predict_on_batch`` on ``batch`` random images."""
    x = np.random.default_rng(1).random((batch, h, w, 3), dtype=np.float32)
    for _ in range(warmup):
        model.predict_on_batch(x)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.predict_on_batch(x)
        out.append(time.perf_counter() - t0)
    return out


def _round(v, digits):
    return None if v is None else round(v, digits)


def _percentile(v, q):
    return float(np.percentile(np.asarray(v), q))


# --------------------------------------------------------------------------------------
# one configuration (run in a subprocess)


def configure_threads(intra=0, inter=0):
    """TensorFlow thread pools (0 = TensorFlow's default); must precede TF's first op."""
    if not (intra or inter):
        return
    import tensorflow as tf

    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(int(intra))
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(int(inter))


def dilation_context(direct):
    """:func:`kseg.compat.direct_dilated_convolutions` when ``direct`` (kseg's own runs, as
    ``kseg train`` and prediction run), else nothing (the plain-Keras baseline)."""
    if not direct:
        return contextlib.nullcontext()
    from kseg.compat import direct_dilated_convolutions

    return direct_dilated_convolutions()


def run_model_config(cfg):
    """Measure one model configuration; returns a dict of the figures (see module doc).

    ``cfg`` keys: ``model`` (registry name), ``impl`` (``"kseg"`` or ``"plain"``, the
    baseline U-Net), ``input_height``, ``input_width``, ``batch_size``, ``n_classes``,
    ``model_kwargs``, ``steps``, ``warmup``, ``jit_compile`` (auto/on/off),
    ``mixed_precision`` (bool; ``None`` = auto as scripts/train.py), ``steps_per_execution``, ``inference`` (bool),
    ``infer_runs``, ``intra_threads``, ``inter_threads``.
    """
    impl = cfg.get("impl", "kseg")
    if impl == "kseg":
        # kseg caps malloc arenas before TensorFlow starts, as kseg train does; the
        # baseline process does not
        from kseg.hardware import limit_malloc_arenas, precision_policy, resolve_jit_compile

        limit_malloc_arenas()
        from kseg.optim import compile_model
    configure_threads(cfg.get("intra_threads", 0), cfg.get("inter_threads", 0))
    import keras

    from kseg.models import get_model

    h, w = int(cfg["input_height"]), int(cfg["input_width"])
    b, n_classes = int(cfg.get("batch_size", 4)), int(cfg.get("n_classes", 2))
    policy = precision_policy(cfg.get("mixed_precision", False)) if impl == "kseg" else "float32"
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(int(cfg.get("seed", 0)))
    kwargs = dict(cfg.get("model_kwargs") or {})
    spe = int(cfg.get("steps_per_execution", 1))
    if impl == "plain":
        model = plain_unet(n_classes, (h, w, 3), kwargs.get("base_filters", 64), kwargs.get("depth", 4))
        compile_plain(model)
        jit = model.jit_compile
    else:
        model = get_model(cfg["model"], n_classes=n_classes, input_height=h, input_width=w, **kwargs)
        jit = resolve_jit_compile(cfg.get("jit_compile", "auto"))
        compile_model(model, n_classes=n_classes, loss=cfg.get("loss", "ce"), jit_compile=jit,
                      steps_per_execution=spe, metrics=cfg.get("metrics", True))
    res = {
        "model": cfg["model"] if impl == "kseg" else "plain_unet",
        "impl": impl,
        "input_height": h,
        "input_width": w,
        "batch_size": b,
        "n_classes": n_classes,
        "params": int(model.count_params()),
        "redundant_bias_params": redundant_bias_params(model),
        "forward_gflop": _round(forward_gflop(model), 3),
        "jit_compile": bool(jit),
        "dtype_policy": policy,
        "steps_per_execution": spe,
    }
    res["direct_dilation"] = impl == "kseg" and bool(cfg.get("direct_dilation", True))
    with dilation_context(res["direct_dilation"]):
        times = time_training(model, _random_batch(b, h, w, n_classes), steps=int(cfg.get("steps", 10)),
                              warmup=int(cfg.get("warmup", 2)), steps_per_execution=spe)
    step = statistics.median(times)
    res["train_step_s"] = round(step, 4)
    res["train_step_s_all"] = [round(t, 4) for t in times]
    res["train_images_per_s"] = round(b / step, 3)
    res["train_gflop_per_s"] = (None if res["forward_gflop"] is None
                                else round(TRAIN_FLOP_FACTOR * res["forward_gflop"] * b / step, 1))
    res["train_peak_rss_mb"] = round(peak_rss_mb(), 1)
    if cfg.get("inference", True):
        runs = int(cfg.get("infer_runs", 20))
        with dilation_context(res["direct_dilation"]):
            lat = time_inference(model, h, w, batch=1, runs=runs)
            thr = time_inference(model, h, w, batch=8, runs=max(3, runs // 4), warmup=2)
        res["infer_latency_ms_median"] = round(1000 * statistics.median(lat), 2)
        res["infer_latency_ms_p90"] = round(1000 * _percentile(lat, 90), 2)
        res["infer_images_per_s_b8"] = round(8 / statistics.median(thr), 2)
    else:
        res["infer_latency_ms_median"] = res["infer_latency_ms_p90"] = res["infer_images_per_s_b8"] = None
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    res["load_avg"] = load_avg()
    return res


def interleaved_comparison(cfg):
    """Train the baseline and kseg's unet in ONE process, alternating steps.

    On a shared, noisy machine separate runs see different loads; alternating
    single training steps (``train_on_batch``, same compiled step as ``fit``)
    exposes every implementation to the same conditions. Each round runs one step of
    every variant; per variant the median wall time and the median CPU time of this
    process per step (all TensorFlow threads; less sensitive to other processes) are
    reported, and the speed-up is the median over rounds of the per-round ratio.

    ``cfg``: ``input_height``, ``input_width``, ``batch_size``, ``n_classes``,
    ``model_kwargs``, ``rounds``, ``warmup``, ``mixed`` (also a mixed-precision kseg
    variant).
    """
    configure_threads(cfg.get("intra_threads", 0), cfg.get("inter_threads", 0))
    import keras

    from kseg.models import get_model
    from kseg.hardware import precision_policy, resolve_jit_compile
    from kseg.optim import compile_model

    h, w = int(cfg["input_height"]), int(cfg["input_width"])
    b, n_classes = int(cfg.get("batch_size", 4)), int(cfg.get("n_classes", 2))
    kwargs = dict(cfg.get("model_kwargs") or {})
    variants = {}
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    variants["plain_unet float32"] = compile_plain(
        plain_unet(n_classes, (h, w, 3), kwargs.get("base_filters", 64), kwargs.get("depth", 4)))
    policies = ["float32"]
    if cfg.get("mixed"):
        mp = precision_policy(True)
        if mp != "float32":
            policies.append(mp)
    for pol in policies:
        keras.mixed_precision.set_global_policy(pol)
        keras.utils.set_random_seed(0)
        m = get_model("unet", n_classes=n_classes, input_height=h, input_width=w, **kwargs)
        variants[f"unet {pol}"] = compile_model(m, n_classes=n_classes, jit_compile=resolve_jit_compile("auto"))
    keras.mixed_precision.set_global_policy("float32")
    x, y = _random_batch(b, h, w, n_classes)
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    for r in range(int(cfg.get("warmup", 2)) + int(cfg.get("rounds", 8))):
        for name, model in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            model.train_on_batch(x, y)
            t1, c1 = time.perf_counter(), time.process_time()
            if r >= int(cfg.get("warmup", 2)):
                wall[name].append(t1 - t0)
                cpu[name].append(c1 - c0)
    base = "plain_unet float32"
    out = {"variants": {}, "batch_size": b, "input_height": h, "input_width": w,
           "rounds": len(wall[base]), "load_avg": load_avg()}
    for name in variants:
        out["variants"][name] = {
            "train_step_s": round(statistics.median(wall[name]), 4),
            "train_images_per_s": round(b / statistics.median(wall[name]), 3),
            "cpu_s_per_step": round(statistics.median(cpu[name]), 3),
            "speedup_vs_plain": round(statistics.median(
                [p / q for p, q in zip(wall[base], wall[name])]), 3),
            "cpu_ratio_plain_over_this": round(statistics.median(cpu[base]) / statistics.median(cpu[name]), 3),
        }
    return out


def inference_runtimes(cfg):
    """Batch-1 CPU inference of one model through Keras and through the automatic runtime
    (``--runtime auto``, :func:`kseg.runtime.auto_runner`), side by side in ONE process.

    An untrained registry model is saved as a temporary experiment (``best.keras`` and
    ``config.json``) and loaded twice with :meth:`kseg.predict.Predictor.from_experiment`:
    ``runtime="keras"`` and ``cfg["runtime"]`` (default ``auto``: the ONNX copy is made
    and parity-checked there, its conversion time reported). When ``auto`` kept Keras
    (it measured the copy slower), the copy is timed too (``runtime="onnx"``), so the
    figures say why. Each round times every predictor once, in an order that alternates
    between rounds: the model call on a random normalised ``(1, h, w, channels)`` batch
    and :meth:`Predictor.predict_proba` end to end on a random ``uint8`` image of the
    network size. Ratios are the median over rounds of the per-round ratio (robust to a
    shared machine; ``*_model_speedup_fastest``: the ratio of the fastest calls, as the
    automatic runtime's own timing); milliseconds are medians.

    ``cfg``: ``model``, ``input_height``, ``input_width``, ``n_classes``, ``model_kwargs``,
    ``rounds``, ``warmup``, ``runtime``, ``workdir``.
    """
    configure_threads(cfg.get("intra_threads", 0), cfg.get("inter_threads", 0))
    import shutil

    import keras

    from kseg.config import ExperimentConfig
    from kseg.experiment import write_config
    from kseg.models import get_model, model_spec
    from kseg.predict import Predictor

    name, h, w = cfg["model"], int(cfg["input_height"]), int(cfg["input_width"])
    n_classes, kwargs = int(cfg.get("n_classes", 2)), dict(cfg.get("model_kwargs") or {})
    keras.utils.set_random_seed(0)
    size_free = model_spec(name).dynamic
    model = get_model(name, n_classes=n_classes, input_height=None if size_free else h,
                      input_width=None if size_free else w, **kwargs)
    folder = tempfile.mkdtemp(prefix="kseg-bench-infer-", dir=cfg.get("workdir"))
    try:
        model.save(os.path.join(folder, "best.keras"))
        write_config(folder, ExperimentConfig(model_name=name, model_kwargs=kwargs, n_classes=n_classes,
                                              input_height=h, input_width=w))
        del model
        t0 = time.perf_counter()
        auto = Predictor.from_experiment(folder, runtime=cfg.get("runtime", "auto"), batch_size=1)
        conversion_s = time.perf_counter() - t0
        preds = {"keras": Predictor.from_experiment(folder, runtime="keras", batch_size=1), "auto": auto}
        rec = getattr(auto.run, "record", None) or getattr(auto.run, "slower_copy", None)
        if getattr(auto.run, "slower_copy", None):  # auto kept Keras for speed: time the copy as well
            preds["onnx"] = Predictor.from_experiment(folder, runtime="onnx", batch_size=1)
        rng = np.random.default_rng(0)
        x = rng.random((1, h, w, auto.channels), dtype=np.float32)
        image = rng.integers(0, 256, (h, w, auto.channels), dtype=np.uint8)
        names = list(preds)
        model_t = {k: [] for k in names}
        e2e_t = {k: [] for k in names}
        for r in range(int(cfg.get("warmup", 2)) + int(cfg.get("rounds", 10))):
            order = names if r % 2 == 0 else names[::-1]
            for k in order:
                t1 = time.perf_counter()
                preds[k].run(x)
                t2 = time.perf_counter()
                preds[k].predict_proba(image)
                t3 = time.perf_counter()
                if r >= int(cfg.get("warmup", 2)):
                    model_t[k].append(t2 - t1)
                    e2e_t[k].append(t3 - t2)
        out = {"model": name, "input_height": h, "input_width": w, "batch": 1, "rounds": len(model_t["keras"]),
               "auto_runtime": auto.runtime, "runtime_line": auto.runtime_line(),
               "conversion_s": round(conversion_s, 1),
               "parity_max_abs_diff": rec["parity"]["max_abs_diff"] if rec else None,
               "params": int(preds["keras"].run.model.count_params()) if hasattr(preds["keras"].run, "model")
               else None}
        for k in names:
            out[f"{k}_model_ms"] = round(1000 * statistics.median(model_t[k]), 2)
            out[f"{k}_predict_ms"] = round(1000 * statistics.median(e2e_t[k]), 2)
            if k != "keras":
                out[f"{k}_model_speedup"] = round(statistics.median(
                    [a / b for a, b in zip(model_t["keras"], model_t[k])]), 2)
                out[f"{k}_model_speedup_fastest"] = round(min(model_t["keras"]) / min(model_t[k]), 2)
                out[f"{k}_predict_speedup"] = round(statistics.median(
                    [a / b for a, b in zip(e2e_t["keras"], e2e_t[k])]), 2)
        out["load_avg"] = load_avg()
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def format_inference(rows):
    """A Markdown table of :func:`inference_runtimes` results."""
    lines = ["| model | size | auto runs | Keras model ms | auto model ms | speed-up (model) | "
             "speed-up (model, fastest calls) | speed-up (predict) | ONNX copy speed-up (model) | "
             "parity max \\|dp\\| |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('model')} | | error: {r['error'][:100]} | | | | | | | |")
            continue
        onnx = r.get("onnx_model_speedup")
        diff = r.get("parity_max_abs_diff")
        lines.append(f"| {r['model']} | {r['input_height']}x{r['input_width']} | {r['auto_runtime']} | "
                     f"{r['keras_model_ms']:.1f} | {r['auto_model_ms']:.1f} | {r['auto_model_speedup']:.2f}x | "
                     f"{r['auto_model_speedup_fastest']:.2f}x | "
                     f"{r['auto_predict_speedup']:.2f}x | {'-' if onnx is None else f'{onnx:.2f}x'} | "
                     f"{'-' if diff is None else f'{diff:.1e}'} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# input pipeline


def dataset_pairs(path, limit=None, workdir=None):
    """``(image, label)`` pairs of a dataset folder for the pipeline measurement.

    ``path`` is a kseg dataset (``train_image``/``train_label``), or a folder of
    ``*/images`` + ``*/masks`` with colour-coded masks (the Dubai aerial layout): then
    the first ``limit`` masks are converted to kseg index PNGs (palette PNGs, as
    ``scripts/convert_colors.py`` writes them) in ``workdir`` and the images are
    used where they are.
    """
    from kseg.data.dataset import pair_by_stem

    if os.path.isdir(os.path.join(path, "train_image")):
        pairs = pair_by_stem(os.path.join(path, "train_image"), os.path.join(path, "train_label"))
        return pairs[:limit] if limit else pairs
    from kseg.data.colors import colors_to_index, named_table, read_color_mask
    from kseg.data.io import IMAGE_EXTENSIONS, write_label

    table = named_table("dubai")
    tiles = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d, "images")))
    items = []
    for t in tiles:
        img_dir, mask_dir = os.path.join(path, t, "images"), os.path.join(path, t, "masks")
        for f in sorted(os.listdir(img_dir)):
            stem, ext = os.path.splitext(f)
            m = os.path.join(mask_dir, stem + ".png")
            if ext.lower() in IMAGE_EXTENSIONS and os.path.isfile(m):
                items.append((os.path.join(img_dir, f), m, f"{t.replace(' ', '_')}_{stem}"))
    if not items:
        raise FileNotFoundError(f"{path} is neither a kseg dataset nor an images/masks folder")
    items = items[:limit] if limit else items
    workdir = workdir or tempfile.mkdtemp(prefix="kseg_bench_labels_")
    os.makedirs(workdir, exist_ok=True)
    pairs = []
    for img, mask, name in items:
        out = os.path.join(workdir, name + ".png")
        if not os.path.exists(out):
            idx, _ = colors_to_index(read_color_mask(mask), table)
            write_label(out, idx, palette=table.palette())
        pairs.append((img, out))
    return pairs


def dataset_n_classes(path):
    """Number of classes of a :func:`dataset_pairs` folder (its dataset.json, else Dubai's 6)."""
    if os.path.isdir(os.path.join(path, "train_image")):
        from kseg.data.dataset import load_dataset_info

        info = load_dataset_info(path)
        if info.classes:
            return len(info.classes)
    from kseg.data.colors import DUBAI_COLORS

    return len(DUBAI_COLORS)


def pipeline_speed(pairs, size=(512, 512), batch_size=8, epochs=3, training=True, augment=True):
    """Images/s that :func:`kseg.data.pipeline.make_dataset` delivers, with no model.

    The first batch (pipeline start-up) is not timed; ``epochs`` passes over
    ``pairs`` are. Every file is decoded by :mod:`kseg.data.io`, as in training.
    Returns ``{"images_per_s", "images", "seconds", "decoder"}``.
    """
    from kseg.data.pipeline import make_dataset

    ds = make_dataset(pairs, size, batch_size, training=training, augment=augment, repeat=True, seed=None)
    it = iter(ds)
    next(it)
    n_batches = max(1, epochs * len(pairs) // batch_size)
    t0 = time.perf_counter()
    n = 0
    for _ in range(n_batches):
        x, _ = next(it)
        n += int(x.shape[0])
    dt = time.perf_counter() - t0
    return {"images_per_s": round(n / dt, 2), "images": n, "seconds": round(dt, 6),
            "decoder": "kseg.data.io (Pillow)"}


# --------------------------------------------------------------------------------------
# memory over epochs of real (streaming) training


def rss_over_epochs(cfg):
    """Train on real files for ``cfg["epochs"]`` epochs; RSS (MiB) at every epoch end.

    ``cfg``: ``model``, ``impl``, ``pairs`` (list of [image, label]), ``input_height``,
    ``input_width``, ``batch_size``, ``n_classes``, ``model_kwargs``, ``epochs``.
    The data streams from disk through ``make_dataset`` (no cache).
    """
    impl = cfg.get("impl", "kseg")
    if impl == "kseg":  # kseg caps malloc arenas before TensorFlow starts (not the baseline)
        from kseg.hardware import limit_malloc_arenas, precision_policy, resolve_jit_compile

        limit_malloc_arenas()
        from kseg.optim import compile_model
    configure_threads(cfg.get("intra_threads", 0), cfg.get("inter_threads", 0))
    import keras

    from kseg.data.pipeline import make_dataset
    from kseg.models import get_model

    h, w = int(cfg["input_height"]), int(cfg["input_width"])
    b, n_classes = int(cfg.get("batch_size", 4)), int(cfg.get("n_classes", 2))
    policy = precision_policy(cfg.get("mixed_precision", False)) if impl == "kseg" else "float32"
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    kwargs = dict(cfg.get("model_kwargs") or {})
    if impl == "plain":
        # Keras defaults, except that ignored label pixels (255) must be skipped
        model = plain_unet(n_classes, (h, w, 3), kwargs.get("base_filters", 64), kwargs.get("depth", 4))
        model.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(ignore_class=255))
    else:
        model = get_model(cfg["model"], n_classes=n_classes, input_height=h, input_width=w, **kwargs)
        compile_model(model, n_classes=n_classes, jit_compile=resolve_jit_compile("auto"))
    pairs = [tuple(p) for p in cfg["pairs"]]
    # kseg: one repeated iterator with fixed-length epochs, as kseg.training.train;
    # baseline: a fresh iterator every epoch, as a plain fit(dataset) does
    ds = make_dataset(pairs, (h, w), b, training=True, seed=0, repeat=impl == "kseg")
    steps = max(1, len(pairs) // b) if impl == "kseg" else None
    rss = []

    class _Mem(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            rss.append(round(current_rss_mb(), 1))

    model.fit(ds, epochs=int(cfg.get("epochs", 5)), steps_per_epoch=steps, verbose=0, callbacks=[_Mem()],
              shuffle=False)
    return {"rss_mb_per_epoch": rss, "peak_rss_mb": round(peak_rss_mb(), 1), "images": len(pairs),
            "impl": impl, "model": cfg["model"] if impl == "kseg" else "plain_unet",
            "dtype_policy": policy, "input_height": h, "input_width": w, "batch_size": b, "load_avg": load_avg()}


# --------------------------------------------------------------------------------------
# subprocess plumbing


def run_in_subprocess(task, cfg, timeout=1800, env=None, module="kseg.benchmark", python=None):
    """Run ``task`` of ``module`` (kseg.benchmark's ``model``, ``conv_peak``, ``pipeline``,
    ``rss_epochs``, ``interleaved``, ``inference_runtimes``, ``machine``; kseg.bench_peers'
    ``peer``, ``profile``) with ``cfg`` in a fresh ``python`` process (default: this
    interpreter); return its result dict (``{"error": ...}`` when it fails). The task prints
    its result as one ``KSEG_BENCH {json}`` line."""
    e = dict(os.environ, **(env or {}))
    e.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    e["PYTHONPATH"] = root + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    cmd = [python or sys.executable, "-m", module, task, json.dumps(cfg)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("KSEG_BENCH "):
            return json.loads(line[len("KSEG_BENCH "):])
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {r.returncode}: {tail[:300]}"}


def _main(argv):
    task, cfg = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    if task == "model":
        out = run_model_config(cfg)
    elif task == "conv_peak":
        configure_threads(cfg.get("intra_threads", 0), cfg.get("inter_threads", 0))
        out = conv_peak(batch=int(cfg.get("batch", 4)), dtype=cfg.get("dtype", "float32"),
                        min_seconds=float(cfg.get("min_seconds", 1.0)), repeats=int(cfg.get("repeats", 5)),
                        shapes=[tuple(s) for s in cfg.get("shapes", UNET_CONV_SHAPES)])
        out["load_avg"] = load_avg()
    elif task == "pipeline":
        configure_threads(cfg.get("intra_threads", 0), cfg.get("inter_threads", 0))
        pairs = [tuple(p) for p in cfg["pairs"]]
        kw = dict(size=tuple(cfg.get("size", (512, 512))), batch_size=int(cfg.get("batch_size", 8)),
                  epochs=int(cfg.get("epochs", 3)))
        out = pipeline_speed(pairs, training=True, augment=True, **kw)  # what training reads
        out["images_per_s_eval"] = pipeline_speed(pairs, training=False, augment=False, **kw)["images_per_s"]
        out["load_avg"] = load_avg()
    elif task == "rss_epochs":
        out = rss_over_epochs(cfg)
    elif task == "interleaved":
        out = interleaved_comparison(cfg)
    elif task == "inference_runtimes":
        out = inference_runtimes(cfg)
    elif task == "machine":
        out = machine_info()
    else:
        raise SystemExit(f"unknown task {task!r}")
    print("KSEG_BENCH " + json.dumps(out), flush=True)


def now_iso():
    return datetime.datetime.now().isoformat(timespec="seconds")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _main(sys.argv[1:])
