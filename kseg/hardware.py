"""What this machine offers and how kseg uses it: GPUs, bfloat16 units, XLA, memory arenas.

Every probe is a function, called when a command needs the answer; importing this
module probes nothing and imports neither Keras nor TensorFlow. Training, the benchmark and the precision switch of every
command read these answers here and nowhere else.
"""

import os
import sys

from kseg.errors import ConfigError


def limit_malloc_arenas(n=2):
    """Cap glibc's malloc arenas (as ``MALLOC_ARENA_MAX=n`` would) unless the user set it.

    glibc gives threads their own allocation arenas; with tf.data and TensorFlow
    thread pools allocating and freeing large buffers, the resident memory of a
    training process then creeps up epoch after epoch (fragmentation, measured in
    README.md, Performance). With 2 arenas it levels off after a few epochs. Must run
    before TensorFlow starts its threads; a no-op outside glibc. Returns whether the
    cap was set.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(-8, int(n)))  # M_ARENA_MAX


def _glibc():
    """glibc (``ctypes.CDLL``) with ``mallopt`` and ``malloc_trim``, or ``None`` where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError):
        return None


def release_free_memory():
    """Hand the heap's free pages back to the system (glibc ``malloc_trim(0)``) after
    large objects were dropped, e.g. between test modules that each build dozens of
    models; a no-op outside glibc. Returns whether it ran."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def gpu_available():
    """Whether the current backend sees a GPU."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    try:
        return bool(keras.distribution.list_devices("gpu"))
    except Exception:  # backends without the distribution API, or no GPU runtime
        return False


def resolve_jit_compile(value, dist=None):
    """Map ``--jit_compile`` (``auto``/``on``/``off``, or a bool) to ``True``/``False``.

    ``auto`` is what measured fastest (README, Performance): XLA on a GPU; on a
    CPU-only machine TensorFlow's oneDNN graph kernels beat XLA for the conv nets
    of the zoo, so ``auto`` is off there. Under ``tf.distribute`` ``auto`` is off
    (as in Keras). The JAX backend always compiles with XLA; torch never does.
    """
    import keras

    if isinstance(value, bool):
        return value
    if value not in ("auto", "on", "off"):
        raise ConfigError(f"--jit_compile {value!r}: expected auto, on or off")
    if value != "auto":
        return value == "on"
    backend = keras.backend.backend()
    if backend == "jax":
        return True
    if backend != "tensorflow":
        return False
    if dist is not None and dist.uses_tf_distribute:
        return False
    return gpu_available()


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return set(f.read().split())
    except OSError:
        return set()


def cpu_supports_bfloat16():
    """Whether the CPU has native bfloat16 arithmetic (x86 AVX512-BF16 / AMX-BF16, ARM BF16)."""
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_bfloat16_matrix_units():
    """Whether the CPU has bfloat16 matrix units (x86 AMX-BF16), where oneDNN's bfloat16
    convolutions run several times faster than float32 ones (README, Performance)."""
    return "amx_bf16" in _cpu_flags()


def gpu_has_tensor_cores():
    """Whether every visible GPU has float16 tensor cores (CUDA compute capability >= 7.0).
    Known only on the TensorFlow backend; ``False`` elsewhere."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return False
    for g in gpus:
        cc = tf.config.experimental.get_device_details(g).get("compute_capability")
        if not cc or tuple(cc) < (7, 0):
            return False
    return True


def cpu_bfloat16_speedup(repeats=15):
    """How much faster this CPU trains a convolution in bfloat16 than in float32, measured.

    Some CPUs have bfloat16 dot-product instructions (AVX512-BF16) but no matrix units: on
    some of them oneDNN's bfloat16 convolutions run about 2.5x the float32 rate (an AMD
    EPYC, measured 2026-12-02), on others the whole training step ran 1.3x slower in
    bfloat16 (README, Performance). The flags cannot tell these apart, so ``auto`` asks the
    machine: a 3x3 convolution of a U-Net's first level (batch 8, 48x48, 64 -> 64 channels),
    forward and both backward passes, timed alternately in the two precisions; the ratio of
    the medians (float32 time / bfloat16 time). About one second, once per process.
    """
    global _BF16_SPEEDUP
    if _BF16_SPEEDUP is None:
        import time

        import tensorflow as tf

        def step_fn(dtype):
            x = tf.random.normal((8, 48, 48, 64), dtype=tf.float32)
            k = tf.random.normal((3, 3, 64, 64), stddev=0.05, dtype=tf.float32)
            x, k = tf.cast(x, dtype), tf.cast(k, dtype)

            @tf.function
            def step():
                with tf.GradientTape() as tape:
                    tape.watch([x, k])
                    y = tf.nn.conv2d(x, k, 1, "SAME")
                    loss = tf.reduce_sum(tf.cast(y, tf.float32))
                return tape.gradient(loss, [x, k])

            return step

        steps = {d: step_fn(d) for d in (tf.float32, tf.bfloat16)}
        times = {d: [] for d in steps}
        for _ in range(2):  # trace and warm up
            for f in steps.values():
                f()
        for _ in range(repeats):
            for d, f in steps.items():
                t = time.perf_counter()
                [g.numpy() for g in f()]
                times[d].append(time.perf_counter() - t)
        median = {d: sorted(v)[len(v) // 2] for d, v in times.items()}
        _BF16_SPEEDUP = median[tf.float32] / median[tf.bfloat16]
    return _BF16_SPEEDUP


_BF16_SPEEDUP = None

#: ``auto`` trains in bfloat16 on a CPU without AMX only when :func:`cpu_bfloat16_speedup`
#: measures at least this ratio.
BF16_MIN_SPEEDUP = 1.3


def auto_cpu_bfloat16():
    """Whether ``--mixed_precision`` auto trains in bfloat16 on this CPU: with AMX always;
    with AVX512-BF16 when the measured speed-up is at least :data:`BF16_MIN_SPEEDUP`."""
    if cpu_has_bfloat16_matrix_units():
        return True
    if "avx512_bf16" not in _cpu_flags():
        return False
    return cpu_bfloat16_speedup() >= BF16_MIN_SPEEDUP


def precision_policy(mixed_precision):
    """The Keras dtype policy for ``--mixed_precision`` (``True``/``False``/``None`` = auto).

    On: ``mixed_float16`` on a GPU; ``mixed_bfloat16`` on a CPU with native bfloat16
    (elsewhere bfloat16 is emulated and slower, so float32 is kept). Auto (the default
    of ``scripts/train.py``): on where the hardware makes it clearly faster -- GPUs with
    tensor cores, CPUs with AMX, and CPUs with AVX512-BF16 where a one-second measurement
    finds bfloat16 convolutions at least 1.3x faster (:func:`auto_cpu_bfloat16`) -- and
    float32 elsewhere. Models compute their output activation, BatchNorm statistics and kseg
    losses their value in float32 either way.
    """
    if mixed_precision is None:
        if gpu_available():
            return "mixed_float16" if gpu_has_tensor_cores() else "float32"
        return "mixed_bfloat16" if auto_cpu_bfloat16() else "float32"
    if not mixed_precision:
        return "float32"
    if gpu_available():
        return "mixed_float16"
    if cpu_supports_bfloat16():
        return "mixed_bfloat16"
    return "float32"


#: Set to 1 to see TensorFlow's native start-up log (absl/oneDNN/CUDA lines) again.
ENV_ENGINE_LOG = "KSEG_ENGINE_LOG"


def start_engine(show_log=None):
    """Import Keras and its TensorFlow engine with their native start-up log captured.

    On a CPU-only machine TensorFlow prints oneDNN, "could not find cuda drivers" and
    ``cuInit`` lines from C++ before any kseg output; they say nothing a user can act
    on. The commands call this before they build a model: the lines are written to a
    temporary file and dropped, unless the import fails (then they are shown) or
    ``show_log`` (default: ``$KSEG_ENGINE_LOG=1``) asks for them; the libraries'
    Future/DeprecationWarnings are silenced the same way. Returns the module ``keras``.
    """
    import tempfile

    limit_malloc_arenas()  # before TensorFlow starts its threads
    if show_log is None:
        show_log = os.environ.get(ENV_ENGINE_LOG, "") not in ("", "0")
    if not show_log:  # the libraries' notes to their own developers, not to a kseg user
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    if show_log or "tensorflow" in sys.modules:
        import keras as k

        return k
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        failed = True
        try:
            import keras as k

            if k.backend.backend() == "tensorflow":
                import tensorflow as tf

                tf.config.list_physical_devices()  # device start-up prints here
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace"))
    return k
