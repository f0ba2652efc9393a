"""Choosing how training is distributed: one device, several GPUs, several machines.

kseg does not implement data parallelism itself; it selects one of the engines'
own strategies and handles the few things around them that a training script
must get right (batch sizes, which process writes files, fault tolerance):

* **one device** (default): no strategy.
* **several GPUs on one machine** (``--multi_gpus``, TensorFlow backend):
  ``tf.distribute.MirroredStrategy`` over all visible GPUs. Every step each GPU
  runs ``--train_batch_size`` images, so the *global* batch is
  ``train_batch_size x replicas``; gradients are summed across replicas and the
  per-replica losses are scaled by ``1 / replicas`` (Keras does this), so one
  step equals one step on the global batch.
* **several machines** (``TF_CONFIG`` names more than one task, TensorFlow backend):
  ``tf.distribute.MultiWorkerMirroredStrategy`` configured from ``TF_CONFIG``.
  Only the chief writes the experiment folder; the other workers write to
  temporary folders that are removed afterwards. Training state is backed up every
  epoch (``keras.callbacks.BackupAndRestore``), so a restarted worker group resumes
  from the last finished epoch.
* **JAX backend** with ``--multi_gpus``: ``keras.distribution.DataParallel`` over
  all accelerator devices (the batch is split across them).

Learning rate: kseg does not rescale ``--learning_rate``. With ``N`` replicas the
global batch is ``N`` times larger; the usual *linear scaling rule* (Goyal et al.
2017, "Accurate, Large Minibatch SGD") multiplies the learning rate by ``N``
(:func:`scaled_learning_rate`), best with a few epochs of warm-up.

For tests and demonstrations on machines without GPUs, setting the environment
variable ``KSEG_DISTRIBUTE_CPU_DEVICES=N`` makes ``--multi_gpus`` split the CPU into
``N`` logical devices and mirror over them (TensorFlow), or over ``N`` host devices
(JAX, through ``XLA_FLAGS=--xla_force_host_platform_device_count=N``). This must
happen before the engine initialises its devices, i.e. at the start of the process.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile

import keras

from kseg.errors import DistributeError

ENV_CPU_DEVICES = "KSEG_DISTRIBUTE_CPU_DEVICES"




@dataclasses.dataclass
class Distribution:
    """The chosen distribution and this process's role in it.

    Attributes:
        kind: ``"single"``, ``"mirrored"``, ``"multi_worker"`` or ``"jax_data_parallel"``.
        strategy: the ``tf.distribute.Strategy`` or ``keras.distribution.Distribution``
            (``None`` for ``"single"``).
        num_replicas: model replicas that each process a per-replica batch every step.
        num_workers: processes (machines) taking part.
        worker_index: this process's index among the workers.
        task: ``(task_type, task_index)`` from ``TF_CONFIG`` (``None`` otherwise).
        is_chief: this process writes the experiment folder.
    """

    kind: str = "single"
    strategy: object = None
    num_replicas: int = 1
    num_workers: int = 1
    worker_index: int = 0
    task: tuple = None
    is_chief: bool = True

    @property
    def uses_tf_distribute(self):
        return self.kind in ("mirrored", "multi_worker")

    def scope(self):
        """Context manager under which the model and optimizer must be created."""
        if self.kind in ("mirrored", "multi_worker"):
            return self.strategy.scope()
        return contextlib.nullcontext()

    def global_batch_size(self, per_replica_batch_size):
        """The batch of one training step over all replicas."""
        return int(per_replica_batch_size) * self.num_replicas

    def describe(self):
        if self.kind == "single":
            return "one device"
        if self.kind == "mirrored":
            return f"MirroredStrategy over {self.num_replicas} devices"
        if self.kind == "multi_worker":
            t = f"{self.task[0]} {self.task[1]}" if self.task else f"worker {self.worker_index}"
            return (f"MultiWorkerMirroredStrategy, {self.num_workers} workers, {self.num_replicas} replicas; "
                    f"this process is {t}{' (chief)' if self.is_chief else ''}")
        return f"keras.distribution.DataParallel over {self.num_replicas} devices"


def scaled_learning_rate(learning_rate, num_replicas):
    """The linear scaling rule: the learning rate for ``num_replicas`` times the batch."""
    return float(learning_rate) * int(num_replicas)


# --------------------------------------------------------------------------------------
# TF_CONFIG


def read_tf_config(environ=None):
    """Parse ``TF_CONFIG`` from the environment; ``None`` when unset or empty.

    Raises :class:`DistributeError` when it is not JSON with a ``cluster`` and a ``task``.
    """
    raw = (environ if environ is not None else os.environ).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except ValueError:
        raise DistributeError(
            f"TF_CONFIG is not valid JSON ({raw[:80]!r}); set it to "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}'
        ) from None
    cluster, task = cfg.get("cluster"), cfg.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict) or "type" not in task:
        raise DistributeError(
            "TF_CONFIG needs a 'cluster' dict and a 'task' with 'type' and 'index'; received "
            f"{raw[:120]!r}"
        )
    ttype, tindex = task["type"], int(task.get("index", 0))
    if ttype not in cluster or tindex >= len(cluster[ttype]):
        raise DistributeError(
            f"TF_CONFIG task {ttype}:{tindex} is not in its cluster {sorted(cluster)}; fix the task type/index"
        )
    return cfg


def cluster_size(cfg):
    """Number of training tasks (chief + workers) in a parsed ``TF_CONFIG``."""
    return sum(len(cfg["cluster"].get(k, [])) for k in ("chief", "worker"))


def is_chief_task(cfg):
    """The chief is task ``chief`` when the cluster has one, else ``worker`` 0."""
    ttype, tindex = cfg["task"]["type"], int(cfg["task"].get("index", 0))
    if "chief" in cfg["cluster"]:
        return ttype == "chief"
    return ttype == "worker" and tindex == 0


def _worker_index(cfg):
    ttype, tindex = cfg["task"]["type"], int(cfg["task"].get("index", 0))
    n_chief = len(cfg["cluster"].get("chief", []))
    return tindex if ttype == "chief" else n_chief + tindex


# --------------------------------------------------------------------------------------
# selection


def _cpu_devices_requested():
    raw = os.environ.get(ENV_CPU_DEVICES, "").strip()
    if not raw:
        return 0
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise DistributeError(f"{ENV_CPU_DEVICES}={raw!r}: expected a positive integer number of CPU devices")
    return n


def split_cpu(n):
    """Split the (single) physical CPU into ``n`` logical TensorFlow devices.

    Must run before TensorFlow initialises its devices; raises :class:`DistributeError`
    otherwise.
    """
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
        )
    except RuntimeError:
        raise DistributeError(
            f"cannot split the CPU into {n} devices: TensorFlow is already initialised; "
            f"set {ENV_CPU_DEVICES} before the process starts any TensorFlow work"
        ) from None


def select_distribution(multi_gpus=False, backend=None):
    """Choose the distribution for this process (see the module docstring).

    Call it at the very start of training, before any model, tensor or dataset is
    created: multi-worker and logical-CPU setups must precede device initialisation.

    Args:
        multi_gpus: the user asked for data parallelism on all local GPUs.
        backend: Keras backend name (default: the current one).

    Returns:
        A :class:`Distribution`.
    """
    backend = backend or keras.backend.backend()
    cfg = read_tf_config()
    if cfg is not None and cluster_size(cfg) > 1:
        if backend != "tensorflow":
            raise DistributeError(
                f"TF_CONFIG describes a multi-worker cluster but the Keras backend is {backend!r}; "
                "multi-machine training needs KERAS_BACKEND=tensorflow"
            )
        return _multi_worker(cfg)
    if not multi_gpus:
        return Distribution()
    if backend == "tensorflow":
        return _mirrored()
    if backend == "jax":
        return _jax_data_parallel()
    raise DistributeError(
        f"--multi_gpus is supported on the tensorflow and jax backends, not {backend!r}; "
        "set KERAS_BACKEND=tensorflow"
    )


def _mirrored():
    import tensorflow as tf

    n_cpu = _cpu_devices_requested()
    if n_cpu:
        split_cpu(n_cpu)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:n_cpu]
    else:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            raise DistributeError(
                "--multi_gpus needs visible GPUs and none were found; drop the flag to train on CPU "
                "(or install the GPU build: pip install 'kseg[gpu]')"
            )
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    return Distribution("mirrored", strategy, num_replicas=strategy.num_replicas_in_sync)


def _multi_worker(cfg):
    import tensorflow as tf

    n_cpu = _cpu_devices_requested()
    if n_cpu > 1:
        split_cpu(n_cpu)
    comm = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
    )
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=comm)
    except (ValueError, RuntimeError) as e:
        raise DistributeError(
            f"MultiWorkerMirroredStrategy could not start from TF_CONFIG ({str(e).splitlines()[0][:200]}); "
            "start every worker at the beginning of its process with the same cluster"
        ) from None
    task = (cfg["task"]["type"], int(cfg["task"].get("index", 0)))
    return Distribution(
        "multi_worker", strategy, num_replicas=strategy.num_replicas_in_sync,
        num_workers=cluster_size(cfg), worker_index=_worker_index(cfg), task=task,
        is_chief=is_chief_task(cfg),
    )


def _jax_data_parallel():
    n_cpu = _cpu_devices_requested()
    if n_cpu:
        flag = f"--xla_force_host_platform_device_count={n_cpu}"
        if flag not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
        devices = keras.distribution.list_devices("cpu")
        if len(devices) < n_cpu:
            raise DistributeError(
                f"{ENV_CPU_DEVICES}={n_cpu} but JAX shows {len(devices)} CPU device(s): it was initialised "
                f"before; set XLA_FLAGS={flag} when starting the process"
            )
        devices = devices[:n_cpu]
    else:
        devices = keras.distribution.list_devices("gpu")
        if not devices:
            raise DistributeError(
                "--multi_gpus needs visible GPUs and JAX found none; drop the flag to train on CPU "
                "(or install jax with CUDA support)"
            )
    dist = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(dist)
    return Distribution("jax_data_parallel", dist, num_replicas=len(devices))


# --------------------------------------------------------------------------------------
# where each process writes


def write_folder(folder, dist):
    """The folder this process writes its experiment files to.

    The chief (and a single-process run) writes ``folder``; other workers of a
    multi-worker run write to a fresh temporary folder (remove it with
    :func:`cleanup_write_folder`), so exactly one copy of every checkpoint exists.
    """
    if dist.is_chief:
        return folder
    return tempfile.mkdtemp(prefix=f"kseg_worker{dist.worker_index}_")


def cleanup_write_folder(path, folder, dist):
    """Remove a non-chief worker's temporary folder (no-op for the chief)."""
    if not dist.is_chief and os.path.abspath(path) != os.path.abspath(folder):
        shutil.rmtree(path, ignore_errors=True)


def backup_folder(folder, dist):
    """A stable per-task folder for ``BackupAndRestore`` (must survive a restart)."""
    if dist.kind != "multi_worker":
        return None
    ttype, tindex = dist.task or ("worker", dist.worker_index)
    return os.path.join(folder, ".backup", f"{ttype}_{tindex}")


def distribute_dataset(dist, make_fn, n_items, per_replica_batch):
    """A multi-worker dataset in which every input pipeline reads its own share of the files.

    ``make_fn(shard_index, num_shards, batch_size)`` must return a ``tf.data.Dataset``
    that repeats forever (``make_dataset(..., repeat=True)``), batched by
    ``batch_size`` (the per-replica batch). Returns ``(distributed_dataset,
    steps_per_epoch)``: an epoch is ``n_items // global_batch`` steps (at least 1) on
    every worker, so no worker waits for another that ran out of data.
    """
    import tensorflow as tf

    n_pipelines = dist.num_workers
    if int(n_items) < n_pipelines:
        raise DistributeError(
            f"{n_items} files cannot be shared among {n_pipelines} workers; use fewer workers or more data"
        )

    def fn(ctx):
        ds = make_fn(ctx.input_pipeline_id, ctx.num_input_pipelines, per_replica_batch)
        opts = tf.data.Options()
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(opts)

    ds = dist.strategy.distribute_datasets_from_function(fn)
    steps = max(1, int(n_items) // dist.global_batch_size(per_replica_batch))
    return ds, steps


# --------------------------------------------------------------------------------------
# losses under tf.distribute


@keras.saving.register_keras_serializable(package="kseg")
class ReplicaScaledLoss(keras.losses.Loss):
    """Divides a scalar (already averaged) loss by the number of ``tf.distribute`` replicas.

    Under ``MirroredStrategy`` / ``MultiWorkerMirroredStrategy`` every replica
    computes the loss of its share of the global batch and the gradients are
    *summed* across replicas. Keras's own losses divide by the number of replicas
    when they reduce per-sample values; a loss that returns an already-reduced
    scalar (the kseg losses) is left as it is, which would make the gradient
    ``replicas`` times too large (and the logged loss ``replicas`` times too high).
    This wrapper applies the division. It is a no-op outside ``tf.distribute``.

    Args:
        loss: the wrapped ``keras.losses.Loss`` (returning a scalar).
    """

    def __init__(self, loss, name=None, reduction="sum", dtype=None):
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        super().__init__(name=name or getattr(loss, "name", "loss"), reduction=reduction, dtype=dtype)
        self.loss = loss

    def __call__(self, y_true, y_pred, sample_weight=None):
        # the wrapped kseg loss applies sample_weight itself (kseg.losses, "Sample weights");
        # Keras' Loss.__call__ would multiply the scalar by the weights once more
        return self._scale(self.loss(y_true, y_pred, sample_weight=sample_weight))

    def call(self, y_true, y_pred):
        return self._scale(self.loss(y_true, y_pred))

    @staticmethod
    def _scale(value):
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            n = tf.distribute.get_strategy().num_replicas_in_sync
            if n > 1:
                value = value * (1.0 / n)
        return value

    def get_config(self):
        return {**super().get_config(), "loss": keras.saving.serialize_keras_object(self.loss)}


def loss_for_distribution(loss, dist):
    """Wrap ``loss`` in :class:`ReplicaScaledLoss` when ``dist`` runs several
    ``tf.distribute`` replicas and the loss does not scale itself
    (``loss.scales_for_distribution`` true)."""
    if dist is None or not dist.uses_tf_distribute or dist.num_replicas <= 1:
        return loss
    if getattr(loss, "scales_for_distribution", False) or isinstance(loss, ReplicaScaledLoss):
        return loss
    return ReplicaScaledLoss(loss)


def prepare_model_for(model, dist):
    """Work around engine limitations for ``dist``; call on the compiled model before ``fit``.

    Keras 3's TensorFlow trainer builds a model's metrics and optimizer before the
    first step from one batch, which under a strategy it first reduces with
    ``strategy.reduce("MEAN", batch)``; ``MultiWorkerMirroredStrategy`` cannot reduce
    a nested ``(images, labels)`` batch, so ``fit`` fails with "Attempt to convert a
    value (PerReplica...) to a Tensor" (keras-team/keras#20585,
    tensorflow/tensorflow#72388). For multi-worker runs the model's build uses this
    worker's first local replica batch instead (:func:`kseg.compat.multi_worker_symbolic_build`).
    Nothing changes for other distributions or when Keras lacks these hooks.
    """
    if dist.kind != "multi_worker":
        return model
    from kseg.compat import multi_worker_symbolic_build

    return multi_worker_symbolic_build(model, dist.strategy)


@contextlib.contextmanager
def fit_context(dist):
    """The context ``model.fit`` runs in under ``dist``: dilated convolutions as one op
    (:func:`kseg.compat.direct_dilated_convolutions`), and for multi-worker runs Keras'
    reduction of scalar step logs with ``axis=None``
    (:func:`kseg.compat.multi_worker_log_reduction`)."""
    from kseg.compat import direct_dilated_convolutions, multi_worker_log_reduction

    with direct_dilated_convolutions():
        if dist.kind != "multi_worker":
            yield
        else:
            with multi_worker_log_reduction():
                yield
