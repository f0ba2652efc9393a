"""Training orchestration: data -> model -> compile -> fit, into an experiment folder."""

import csv
import datetime
import os
import sys
import time


def limit_malloc_arenas(n=2):
    """Cap glibc's malloc arenas (as ``MALLOC_ARENA_MAX=n`` would) unless the user set it.

    glibc gives threads their own allocation arenas; with tf.data and TensorFlow
    thread pools allocating and freeing large buffers, the resident memory of a
    training process then creeps up epoch after epoch (fragmentation, measured in
    README.md, Performance). With 2 arenas it levels off after a few epochs. Must run
    before TensorFlow starts its threads; a no-op outside glibc. Returns whether the
    cap was set.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, int(n)))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


# before TensorFlow (imported by keras) starts its thread pools
limit_malloc_arenas()

import numpy as np  # noqa: E402
import keras  # noqa: E402

from kseg import __version__  # noqa: E402
from kseg import experiment as X  # noqa: E402
from kseg.data.dataset import load_dataset_info, palette_for, scan_pairs  # noqa: E402
from kseg.data.io import atomic_path  # noqa: E402
from kseg.data.preprocess import check_image_init, check_resize_op  # noqa: E402
from kseg.data.sample import SAMPLE_NAME, ensure_sample_dataset  # noqa: E402
from kseg.distribute import (  # noqa: E402
    backup_folder,
    cleanup_write_folder,
    distribute_dataset,
    loss_for_distribution,
    prepare_model_for,
    select_distribution,
    write_folder,
)
from kseg.errors import DataError, ExperimentError, KsegError  # noqa: E402
from kseg.losses import get_loss, median_frequency_weights  # noqa: E402
from kseg.metrics import get_metric  # noqa: E402
from kseg.models import get_model, model_spec  # noqa: E402
from kseg.models.registry import check_input_size  # noqa: E402

DEFAULT_INPUT_SIZE = 256
DEFAULT_EPOCHS = 50


def make_optimizer(name, learning_rate):
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    if name == "adadelta":
        return keras.optimizers.Adadelta(learning_rate)
    raise KsegError(f"unknown --optimizer_name {name!r}; valid: sgd, adam, adamw, rmsprop, adadelta")


def parse_class_weights(value, n_classes, class_pixels=None):
    if value is None:
        return None
    if value == "auto":
        if class_pixels is None:
            return "auto"
        return [float(w) for w in median_frequency_weights(class_pixels)]
    try:
        w = [float(v) for v in str(value).split(",")]
    except ValueError:
        raise KsegError(f"--class_weights {value!r}: expected 'auto' or comma-separated numbers") from None
    if len(w) != max(n_classes, 2 if n_classes == 1 else n_classes):
        raise KsegError(
            f"--class_weights has {len(w)} values but there are {n_classes} classes; give one per class"
        )
    return w


class ExperimentCheckpoint(keras.callbacks.Callback):
    """Saves ``last.keras`` every epoch and ``best.keras`` when the monitored
    metric improves, both atomically, and records the epoch for ``--resume``."""

    def __init__(self, folder, monitor, best=None, verbose=True):
        super().__init__()
        self.folder = folder
        self.monitor = monitor
        self.best = best
        self.verbose = verbose

    def _save(self, name):
        with atomic_path(os.path.join(self.folder, name)) as tmp:
            self.model.save(tmp)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        improved = value is not None and (self.best is None or value > self.best)
        if improved:
            self.best = float(value)
            self._save(X.BEST)
        self._save(X.LAST)
        X.write_json(
            os.path.join(self.folder, X.STATE),
            {"epoch": epoch + 1, "monitor": self.monitor, "best": self.best,
             "updated": datetime.datetime.now().isoformat(timespec="seconds")},
        )
        if improved and self.verbose:
            print(f"\nepoch {epoch + 1}: {self.monitor} improved to {value:.4f}, saved {X.BEST}", flush=True)


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_time_s`` (wall clock of the epoch, validation included) to the
    epoch logs, so ``history.csv`` and TensorBoard record it. Must run before the
    loggers."""

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and hasattr(self, "_t0"):
            logs["epoch_time_s"] = round(time.perf_counter() - self._t0, 2)


def _experiment_dir(args):
    base = args.train_save_path
    if args.exp_name:
        return os.path.join(base, args.exp_name), True
    name = f"{args.model_name}_{args.dataset_name}"
    folder = os.path.join(base, name)
    if args.resume:
        return folder, False
    i = 2
    while os.path.exists(folder) and not args.overwrite:
        folder = os.path.join(base, f"{name}_{i}")
        i += 1
    return folder, False


def gpu_available():
    """Whether the current backend sees a GPU."""
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
    if isinstance(value, bool):
        return value
    if value not in ("auto", "on", "off"):
        raise KsegError(f"--jit_compile {value!r}: expected auto, on or off")
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


def precision_policy(mixed_precision):
    """The Keras dtype policy for ``--mixed_precision`` (``True``/``False``/``None`` = auto).

    On: ``mixed_float16`` on a GPU; ``mixed_bfloat16`` on a CPU with native bfloat16
    (elsewhere bfloat16 is emulated and slower, so float32 is kept). Auto (the default
    of ``scripts/train.py``): on only where the hardware has 16-bit matrix units that
    make it clearly faster -- GPUs with tensor cores, CPUs with AMX -- and float32
    elsewhere. Models compute their output activation, BatchNorm statistics and kseg
    losses their value in float32 either way.
    """
    if mixed_precision is None:
        if gpu_available():
            return "mixed_float16" if gpu_has_tensor_cores() else "float32"
        return "mixed_bfloat16" if cpu_has_bfloat16_matrix_units() else "float32"
    if not mixed_precision:
        return "float32"
    if gpu_available():
        return "mixed_float16"
    if cpu_supports_bfloat16():
        return "mixed_bfloat16"
    return "float32"


def _set_precision(args):
    policy = precision_policy(args.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    how = "auto" if args.mixed_precision is None else ("--mixed_precision" if args.mixed_precision else "off")
    if args.mixed_precision and policy == "float32":
        print("mixed precision: no GPU and no native bfloat16 on this CPU; training in float32",
              file=sys.stderr)
    elif policy != "float32":
        print(f"mixed precision ({how}): {policy}, loss and output activation in float32 "
              f"(--no-mixed_precision trains in float32)")
    return policy


def compile_model(model, *, n_classes, loss="ce", loss_kwargs=None, ignore_index=255,
                  optimizer_name="adam", learning_rate=1e-3, jit_compile=False,
                  steps_per_execution=1, metrics=True, dist=None):
    """Compile ``model`` as ``scripts/train.py`` does (the benchmark measures this).

    The kseg loss is computed in float32 whatever the dtype policy; with
    ``mixed_float16`` Keras wraps the optimizer in a ``LossScaleOptimizer``. Under a
    multi-replica ``tf.distribute`` strategy (``dist``) the loss is divided by the
    number of replicas (:class:`kseg.distribute.ReplicaScaledLoss`) so the summed
    replica gradients are those of the global batch.
    """
    loss_obj = loss_for_distribution(get_loss(loss, n_classes=n_classes, **(loss_kwargs or {})), dist)
    model.compile(
        optimizer=make_optimizer(optimizer_name, learning_rate),
        loss=loss_obj,
        metrics=[get_metric("mean_iou", n_classes=n_classes, ignore_index=ignore_index)] if metrics else None,
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model


def _steps_per_execution(args):
    """``--steps_per_execution`` when the CLI has it (1 = a Python call per step)."""
    return int(getattr(args, "steps_per_execution", None) or 1)


def prepare(args):
    """Resolve the dataset, sizes and classes; validate names and data. No training."""
    check_image_init(args.image_init)
    check_resize_op(args.resize_op)
    spec = model_spec(args.model_name)  # unknown model -> error listing names
    root = os.path.join(args.data_dir, args.dataset_name)
    if args.dataset_name == SAMPLE_NAME and not os.path.exists(root):
        ensure_sample_dataset(root)
    info = load_dataset_info(root)
    n_classes = args.n_classes or (len(info.classes) if info.classes else None)
    if n_classes is None:
        raise DataError(
            f"the number of classes is unknown for {root} (no dataset.json or classes.txt); pass --n_classes"
        )
    ignore_index = args.ignore_index if args.ignore_index is not None else info.ignore_index
    h = args.input_height or (info.input_size[0] if info.input_size else DEFAULT_INPUT_SIZE)
    w = args.input_width or (args.input_height or (info.input_size[1] if info.input_size else DEFAULT_INPUT_SIZE))
    check_input_size(args.model_name, h, w, spec.divisor, spec.min_size)
    model_kwargs = dict(args.model_option)
    class_names = list(info.classes) if info.classes and len(info.classes) == n_classes else None
    # building the loss validates its name and options before any data is read
    cw = parse_class_weights(args.class_weights, n_classes)
    get_loss(args.loss, n_classes=n_classes, ignore_index=ignore_index,
             **({"class_weights": [1.0] * (2 if n_classes == 1 else n_classes)} if cw == "auto" else
                ({"class_weights": cw} if cw else {})))
    return dict(root=root, info=info, n_classes=n_classes, ignore_index=ignore_index,
                input_size=(h, w), model_kwargs=model_kwargs, class_names=class_names,
                class_weights=cw)


def train(args):
    """Train according to parsed CLI ``args``; returns the experiment folder.

    The Keras dtype policy chosen for the run (``--mixed_precision``) is global state;
    it is restored when training ends or fails, so a caller's later models are unaffected.
    See :func:`_train`.
    """
    previous = keras.mixed_precision.global_policy()
    try:
        return _train(args)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _train(args):
    """Train according to parsed CLI ``args``; returns the experiment folder.

    Distribution (see :mod:`kseg.distribute`): ``--multi_gpus`` mirrors the model over
    all local GPUs (``--train_batch_size`` is per replica); a ``TF_CONFIG`` naming
    several workers trains on all of them, the chief writing the experiment folder.
    """
    limit_malloc_arenas()  # before TensorFlow's threads exist: flat memory across epochs
    # the strategy must exist before any TensorFlow work (multi-worker, logical devices)
    dist = select_distribution(multi_gpus=args.multi_gpus)
    keras.utils.set_random_seed(args.seed)
    folder, explicit = _experiment_dir(args)
    if args.resume:
        if not (X.is_experiment(folder) and os.path.isfile(os.path.join(folder, X.LAST))
                and os.path.isfile(os.path.join(folder, X.STATE))):
            raise ExperimentError(
                f"--resume: {folder} holds no experiment to continue (needs {X.CONFIG}, {X.LAST}, "
                f"{X.STATE}); check --exp_name/--train_save_path or train without --resume"
            )
        saved = X.read_json(os.path.join(folder, X.CONFIG))
        for k in ("model_name", "dataset_name", "data_dir", "loss", "input_height", "input_width",
                  "n_classes", "image_init", "resize_op", "model_option", "class_weights", "ignore_index"):
            if k in saved["args"]:
                setattr(args, k, saved["args"][k])
        args.model_option = [tuple(kv) for kv in args.model_option]
    elif (explicit and dist.is_chief and os.path.exists(folder)
          and [f for f in os.listdir(folder) if f != ".backup"] and not args.overwrite):
        raise ExperimentError(
            f"experiment folder {folder} already exists; pass --resume to continue it, "
            "--overwrite to replace it, or another --exp_name"
        )
    _set_precision(args)
    p = prepare(args)
    n_classes, ignore_index, (h, w) = p["n_classes"], p["ignore_index"], p["input_size"]
    info = p["info"]

    train_pairs = info.pairs("train")
    print(f"checking {len(train_pairs)} training pairs in {p['root']} ...", flush=True)
    scan = scan_pairs(train_pairs, n_classes, ignore_index)
    val_split = None
    if args.validate:
        val_split = "val" if info.has_split("val") else ("test" if info.has_split("test") else None)
        if val_split is None:
            print("warning: no val or test split with labels; training without validation", file=sys.stderr)
        elif val_split == "test":
            print("note: no val split; the test split is used for validation and model selection")
    val_pairs = info.pairs(val_split) if val_split else []
    vscan = scan_pairs(val_pairs, n_classes, ignore_index) if val_pairs else None

    class_weights = p["class_weights"]
    if class_weights == "auto":
        class_weights = [float(v) for v in median_frequency_weights(
            scan.class_pixels if n_classes > 1 else np.array([scan.class_pixels[0], scan.class_pixels.sum() - scan.class_pixels[0]]))]
        print("class weights (median frequency):", ", ".join(f"{v:.3f}" for v in class_weights))
    loss_kwargs = {"ignore_index": ignore_index}
    if class_weights:
        loss_kwargs["class_weights"] = class_weights

    from kseg.data.pipeline import make_dataset

    train_kw = dict(training=True, image_init=args.image_init, resize_op=args.resize_op,
                    ignore_index=ignore_index, augment=(args.augment if args.augment is not None
                                                     else info.augment),
                    python_label_decoder=scan.needs_python_decoder, cache=args.cache, seed=args.seed,
                    crops=args.train_crops)
    val_kw = dict(training=False, image_init=args.image_init, resize_op=args.resize_op,
                  ignore_index=ignore_index, python_label_decoder=vscan.needs_python_decoder if vscan else True,
                  cache=args.cache, crops=args.train_crops)
    per_image = max(1, args.train_crops)  # training samples per image and epoch
    global_batch = dist.global_batch_size(args.train_batch_size)
    val_global_batch = dist.global_batch_size(args.val_batch_size)
    steps_per_epoch = validation_steps = None
    if dist.kind == "multi_worker":
        # every worker reads its own share of the files; fixed-length epochs keep them in step
        train_ds, steps_per_epoch = distribute_dataset(
            dist, lambda i, n, b: make_dataset(train_pairs[i::n], (h, w), b, repeat=True, **train_kw),
            len(train_pairs) * per_image, args.train_batch_size)
        val_ds = None
        if val_pairs:
            val_ds, validation_steps = distribute_dataset(
                dist, lambda i, n, b: make_dataset(val_pairs[i::n], (h, w), b, drop_remainder=True,
                                                   repeat=True, **val_kw),
                len(val_pairs), args.val_batch_size)
    else:
        # one iterator for the whole run: the next epoch's first batches are decoded and
        # prefetched while the current epoch ends, instead of after it
        train_ds = make_dataset(train_pairs, (h, w), global_batch, repeat=True, **train_kw)
        steps_per_epoch = max(1, len(train_pairs) * per_image // global_batch)
        val_ds = make_dataset(val_pairs, (h, w), val_global_batch, **val_kw) if val_pairs else None

    write_dir = write_folder(folder, dist)
    os.makedirs(write_dir, exist_ok=True)
    initial_epoch, best = 0, None
    jit = resolve_jit_compile(args.jit_compile, dist)
    with dist.scope():
        if args.resume:
            state = X.read_json(os.path.join(folder, X.STATE))
            initial_epoch, best = int(state["epoch"]), state.get("best")
            model = keras.saving.load_model(os.path.join(folder, X.LAST))
            print(f"resuming {folder} from epoch {initial_epoch}")
        else:
            dyn = model_spec(args.model_name).dynamic
            model = get_model(args.model_name, n_classes=n_classes,
                              input_height=None if dyn else h, input_width=None if dyn else w,
                              **p["model_kwargs"])
            compile_model(model, n_classes=n_classes, loss=args.loss, loss_kwargs=loss_kwargs,
                          ignore_index=ignore_index, optimizer_name=args.optimizer_name,
                          learning_rate=args.learning_rate, jit_compile=jit,
                          steps_per_execution=_steps_per_execution(args), dist=dist)
    prepare_model_for(model, dist)
    epochs = args.epochs or info.epochs or DEFAULT_EPOCHS
    config = {
        "kseg_version": __version__,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "model_name": args.model_name,
        "model_kwargs": p["model_kwargs"],
        "n_classes": n_classes,
        "input_height": h,
        "input_width": w,
        "image_init": args.image_init,
        "resize_op": args.resize_op,
        "ignore_index": ignore_index,
        "class_names": p["class_names"] or [f"class_{i}" for i in range(max(n_classes, 2))],
        "palette": palette_for(max(n_classes, 2), info.palette).tolist(),
        "dataset": os.path.abspath(p["root"]),
        "loss": args.loss,
        "class_weights": class_weights,
        "args": {k: v for k, v in vars(args).items()},
        "distribution": {"kind": dist.kind, "replicas": dist.num_replicas, "workers": dist.num_workers,
                         "global_batch_size": global_batch},
        "jit_compile": bool(jit),
        "dtype_policy": keras.mixed_precision.global_policy().name,
        "params": int(model.count_params()),
    }
    if not args.resume:
        X.write_json(os.path.join(write_dir, X.CONFIG), config)
    monitor = "val_mean_iou" if val_ds is not None else "mean_iou"
    callbacks = []
    backup = backup_folder(folder, dist)
    if backup:  # fault tolerance: a restarted worker group continues from the last epoch
        callbacks.append(keras.callbacks.BackupAndRestore(backup, delete_checkpoint=True))
    callbacks += [
        EpochTimer(),
        ExperimentCheckpoint(write_dir, monitor, best, verbose=dist.is_chief),
        keras.callbacks.CSVLogger(os.path.join(write_dir, X.HISTORY), append=args.resume),
        keras.callbacks.TensorBoard(os.path.join(write_dir, X.LOGS), update_freq="epoch"),
    ]
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    if not dist.is_chief:
        verbose = 0
    where = f"; {dist.describe()}, global batch {global_batch}" if dist.kind != "single" else ""
    print(
        f"training {args.model_name} ({model.count_params():,} parameters) on {args.dataset_name}: "
        f"{len(train_pairs)} train / {len(val_pairs)} {val_split or 'no validation'} images, input {h}x{w}, "
        f"{n_classes} classes, loss {args.loss}, epochs {initial_epoch}->{epochs}{where}; saving to {folder}",
        flush=True,
    )
    if initial_epoch >= epochs:
        print(f"nothing to do: the experiment already ran {initial_epoch} epochs (raise --epochs)")
        cleanup_write_folder(write_dir, folder, dist)
        return folder
    t0 = time.time()
    try:
        model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
                  callbacks=callbacks, verbose=verbose, shuffle=False)
    except Exception as e:  # decoding errors inside tf.data surface here
        if type(e).__name__ in ("InvalidArgumentError", "UnknownError", "NotFoundError"):
            first = str(e).strip().splitlines()[0][:300]
            raise DataError(
                f"reading the data failed during training ({first}); run scripts/check_dataset.py on "
                f"{p['root']} to find the bad file"
            ) from None
        raise
    finally:
        cleanup_write_folder(write_dir, folder, dist)
    if backup:
        _remove_empty_dirs(os.path.dirname(backup), folder)
    elapsed = time.time() - t0
    summary = _summarise(folder, monitor) if dist.is_chief else "(see the chief)"
    print(f"done in {elapsed / 60:.1f} min; best {monitor} = {summary}; experiment: {folder}")
    return folder


def _remove_empty_dirs(path, stop):
    """Remove ``path`` and its parents up to ``stop`` (exclusive) while they are empty."""
    path, stop = os.path.abspath(path), os.path.abspath(stop)
    while path.startswith(stop) and path != stop:
        try:
            os.rmdir(path)
        except OSError:
            return
        path = os.path.dirname(path)
    if path == stop:
        try:
            os.rmdir(path)  # a worker's copy of the folder with nothing in it
        except OSError:
            pass


def _summarise(folder, monitor):
    try:
        with open(os.path.join(folder, X.HISTORY)) as f:
            vals = [float(r[monitor]) for r in csv.DictReader(f) if r.get(monitor)]
        return f"{max(vals):.4f}" if vals else "n/a"
    except (OSError, ValueError, KeyError):
        return "n/a"
