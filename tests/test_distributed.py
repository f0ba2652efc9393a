"""Distributed training on the engines' own strategies (kseg/distribute.py).

Logical devices and multi-worker strategies must be set up before TensorFlow
initialises, so every run here happens in a fresh subprocess (bounded timeouts;
children are killed on failure).
"""

import glob
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from kseg.distribute import (
    DistributeError,
    Distribution,
    cluster_size,
    is_chief_task,
    read_tf_config,
    scaled_learning_rate,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    for k in ("TF_CONFIG", "KSEG_DISTRIBUTE_CPU_DEVICES", "XLA_FLAGS", "KERAS_BACKEND"):
        env.pop(k, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run_py(code, env, timeout=300):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


# --------------------------------------------------------------------------------------
# TF_CONFIG parsing and roles (no TensorFlow work)


def test_tf_config_roles():
    cfg = read_tf_config({"TF_CONFIG": json.dumps(
        {"cluster": {"worker": ["h:1", "h:2", "h:3"]}, "task": {"type": "worker", "index": 0}})})
    assert cluster_size(cfg) == 3 and is_chief_task(cfg)
    cfg["task"]["index"] = 2
    assert not is_chief_task(cfg)
    with_chief = {"cluster": {"chief": ["h:0"], "worker": ["h:1"]}, "task": {"type": "worker", "index": 0}}
    assert cluster_size(with_chief) == 2 and not is_chief_task(with_chief)
    with_chief["task"] = {"type": "chief", "index": 0}
    assert is_chief_task(with_chief)
    assert read_tf_config({}) is None and read_tf_config({"TF_CONFIG": "  "}) is None


@pytest.mark.parametrize("raw, needle", [
    ("{not json", "not valid JSON"),
    ('{"task": {"type": "worker"}}', "needs a 'cluster'"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 3}}', "not in its cluster"),
])
def test_bad_tf_config_is_a_one_line_error(raw, needle):
    with pytest.raises(DistributeError) as e:
        read_tf_config({"TF_CONFIG": raw})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_global_batch_and_linear_lr_scaling():
    d = Distribution("mirrored", None, num_replicas=4)
    assert d.global_batch_size(8) == 32
    assert scaled_learning_rate(1e-3, 4) == pytest.approx(4e-3)


def test_multi_gpus_without_gpus_is_an_error(tmp_path, tiny_dataset):
    """No GPU and no KSEG_DISTRIBUTE_CPU_DEVICES: the one-line error of the CLI."""
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--multi_gpus", "--data_dir",
         os.path.dirname(tiny_dataset), "--dataset_name", os.path.basename(tiny_dataset), "--epochs", "1",
         "--train_save_path", str(tmp_path)],
        capture_output=True, text=True, env=_env(CUDA_VISIBLE_DEVICES="-1"), timeout=300)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: --multi_gpus needs visible GPUs"), r.stderr[-1000:]


# --------------------------------------------------------------------------------------
# MirroredStrategy on two logical CPU devices == one device with the same global batch

_MIRRORED_VS_SINGLE = """
import json, os
import numpy as np
import keras
from kseg.distribute import select_distribution, Distribution
from kseg.models import get_model
from kseg.optim import compile_model

dist = select_distribution(multi_gpus=True)          # KSEG_DISTRIBUTE_CPU_DEVICES=2
assert dist.kind == "mirrored" and dist.num_replicas == 2, dist
import tensorflow as tf

rng = np.random.default_rng(0)
GLOBAL = 4
x = rng.random((GLOBAL * 3, 32, 32, 3), dtype=np.float32)
y = np.argmax(x, axis=-1).astype("int32")              # a learnable per-pixel rule
y[0, :4, :4] = 255                                      # some ignored pixels

def curve(d):
    keras.utils.set_random_seed(1)
    with d.scope():
        m = get_model("unet", n_classes=3, input_height=32, input_width=32, base_filters=4,
                      use_bn=BN)
        compile_model(m, n_classes=3, loss="ce", optimizer_name="sgd", learning_rate=LR,
                      jit_compile=False, dist=d)
    m.set_weights(init)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL).repeat()
    h = m.fit(ds, steps_per_epoch=1, epochs=6, verbose=0, shuffle=False)
    return [float(v) for v in h.history["loss"]]

for BN, LR in ((False, 0.5), (True, 0.1)):
    keras.utils.set_random_seed(1)
    init = get_model("unet", n_classes=3, input_height=32, input_width=32, base_filters=4,
                     use_bn=BN).get_weights()
    single = curve(Distribution())
    mirrored = curve(dist)
    if not BN:
        nobn = {"single": single, "mirrored": mirrored}
print("RESULT " + json.dumps({"nobn": nobn, "bn": {"single": single, "mirrored": mirrored}}))
"""


def test_mirrored_on_two_cpu_devices_matches_one_device():
    res = _run_py(_MIRRORED_VS_SINGLE, _env(KSEG_DISTRIBUTE_CPU_DEVICES=2))
    single, mirrored = res["nobn"]["single"], res["nobn"]["mirrored"]
    assert len(single) == len(mirrored) == 6
    assert single[-1] < single[0]  # it trains
    # same global batch, same initial weights: the same loss curve (float32 reduction order aside)
    for a, b in zip(single, mirrored):
        assert b == pytest.approx(a, rel=2e-4, abs=1e-5)
    # with BatchNorm each replica normalises with its own half-batch statistics
    # (MirroredStrategy's documented behaviour): the first loss is still the same
    # computation up to those statistics, and the curves stay close
    bs, bm = res["bn"]["single"], res["bn"]["mirrored"]
    assert bm[-1] < bm[0]
    assert abs(bm[0] - bs[0]) < 0.1 * bs[0]


def test_train_cli_multi_gpus_on_logical_cpus(tmp_path, tiny_dataset):
    """scripts/train.py --multi_gpus with two logical CPU devices: per-replica batch 2,
    global batch 4, recorded in config.json."""
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--multi_gpus", "--model_name", "unet",
         "--model_option", "base_filters=4", "--input_height", "32", "--input_width", "32",
         "--train_batch_size", "2", "--val_batch_size", "2", "--epochs", "1", "--verbose", "0",
         "--data_dir", os.path.dirname(tiny_dataset), "--dataset_name", os.path.basename(tiny_dataset),
         "--train_save_path", str(tmp_path), "--exp_name", "mirrored"],
        capture_output=True, text=True, env=_env(KSEG_DISTRIBUTE_CPU_DEVICES=2), timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((tmp_path / "mirrored" / "config.json").read_text())
    assert cfg["distribution"] == {"kind": "mirrored", "replicas": 2, "workers": 1, "global_batch_size": 4}
    assert (tmp_path / "mirrored" / "last.keras").exists()
    assert "MirroredStrategy over 2 devices, global batch 4" in r.stdout


# --------------------------------------------------------------------------------------
# two workers on loopback


def _free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def test_two_workers_on_loopback_write_one_checkpoint(tmp_path, tiny_dataset):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    save = tmp_path / "weights"
    procs, tmpdirs = [], []
    args = [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--model_name", "unet",
            "--model_option", "base_filters=4", "--input_height", "32", "--input_width", "32",
            "--train_batch_size", "2", "--val_batch_size", "2", "--epochs", "2", "--verbose", "0",
            "--data_dir", os.path.dirname(tiny_dataset), "--dataset_name", os.path.basename(tiny_dataset),
            "--train_save_path", str(save), "--exp_name", "mw"]
    try:
        for i in range(2):
            td = tmp_path / f"tmp{i}"
            td.mkdir()
            tmpdirs.append(td)
            env = _env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                       TMPDIR=str(td))
            procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env=env, cwd=str(tmp_path)))
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "MultiWorkerMirroredStrategy, 2 workers, 2 replicas" in outs[0][0]
    exp = save / "mw"
    # exactly one checkpoint (last + best of the chief), nothing from the worker
    keras_files = sorted(os.path.relpath(f, save) for f in glob.glob(str(save / "**" / "*.keras"), recursive=True))
    assert keras_files == [os.path.join("mw", "best.keras"), os.path.join("mw", "last.keras")]
    assert not (exp / ".backup").exists()  # BackupAndRestore state removed after success
    assert json.loads((exp / "state.json").read_text())["epoch"] == 2
    cfg = json.loads((exp / "config.json").read_text())
    assert cfg["distribution"]["kind"] == "multi_worker" and cfg["distribution"]["global_batch_size"] == 4
    with open(exp / "history.csv") as f:
        assert len(f.read().strip().splitlines()) == 3  # header + 2 epochs
    # the worker's temporary experiment folder is gone
    assert os.listdir(tmpdirs[1]) == []


# --------------------------------------------------------------------------------------
# JAX: keras.distribution.DataParallel

_JAX_DP = """
import json
import numpy as np
import keras
from kseg.distribute import select_distribution
from kseg.models import get_model
from kseg.optim import compile_model

assert keras.backend.backend() == "jax"
rng = np.random.default_rng(0)
x = rng.random((8, 32, 32, 3), dtype=np.float32)
y = np.argmax(x, axis=-1).astype("int32")

def curve():
    keras.utils.set_random_seed(1)
    m = get_model("unet", n_classes=3, input_height=32, input_width=32, base_filters=4)
    compile_model(m, n_classes=3, optimizer_name="sgd", learning_rate=0.5, jit_compile=True)
    m.set_weights(init)
    h = m.fit(x, y, batch_size=4, epochs=3, verbose=0, shuffle=False)
    return [float(v) for v in h.history["loss"]]

keras.utils.set_random_seed(1)
init = get_model("unet", n_classes=3, input_height=32, input_width=32, base_filters=4).get_weights()
single = curve()
dist = select_distribution(multi_gpus=True)   # KSEG_DISTRIBUTE_CPU_DEVICES=2
assert dist.kind == "jax_data_parallel" and dist.num_replicas == 2, dist
dp = curve()
print("RESULT " + json.dumps({"single": single, "dp": dp}))
"""


def test_jax_data_parallel_matches_one_device():
    res = _run_py(_JAX_DP, _env(KERAS_BACKEND="jax", KSEG_DISTRIBUTE_CPU_DEVICES=2,
                                XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    # DataParallel shards the batch but computes the global-batch step (BN included)
    for a, b in zip(res["single"], res["dp"]):
        assert b == pytest.approx(a, rel=2e-4, abs=1e-5)
    assert res["dp"][-1] < res["dp"][0]


def test_replica_scaled_loss_is_transparent_outside_a_strategy_and_serializable():
    import keras
    import numpy as np

    from kseg.distribute import ReplicaScaledLoss, loss_for_distribution
    from kseg.losses import get_loss

    inner = get_loss("ce", n_classes=3)
    y = np.array([[[0, 2]]], dtype="int32")
    p = np.array([[[[0.5, 0.25, 0.25], [0.2, 0.2, 0.6]]]], dtype="float32")
    want = -(np.log(0.5) + np.log(0.6)) / 2  # mean over the two pixels, by hand
    wrapped = ReplicaScaledLoss(inner)
    assert float(wrapped(y, p)) == pytest.approx(want, rel=1e-5)
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(wrapped))
    assert isinstance(back, ReplicaScaledLoss) and type(back.loss) is type(inner)
    assert float(back(y, p)) == pytest.approx(want, rel=1e-5)
    # sample weights reach the wrapped loss once (not multiplied again by Keras)
    y2, p2 = np.concatenate([y, y[:, :, ::-1]]), np.concatenate([p, p])
    other = -(np.log(0.25) + np.log(0.2)) / 2  # image 2: labels swapped, by hand
    assert float(wrapped(y2, p2, sample_weight=np.array([1.0, 1.0]))) == pytest.approx((want + other) / 2, rel=1e-5)
    assert float(wrapped(y2, p2, sample_weight=np.array([1.0, 0.0]))) == pytest.approx(want, rel=1e-5)
    # wrapped only for several tf.distribute replicas
    assert loss_for_distribution(inner, Distribution()) is inner
    assert loss_for_distribution(inner, Distribution("jax_data_parallel", None, 2)) is inner
    assert isinstance(loss_for_distribution(inner, Distribution("mirrored", None, 2)), ReplicaScaledLoss)
