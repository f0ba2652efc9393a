"""The losses and metrics on the JAX backend give the TensorFlow values and train.

A subprocess with ``KERAS_BACKEND=jax`` computes every loss (probabilities and
logits, 3 classes and one sigmoid channel), its jitted gradient, every metric,
and fits a tiny model with a composite loss under ``jit``; this process (the
TensorFlow backend) computes the same values and compares.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import keras

from kseg.losses import get_loss, list_losses
from kseg.metrics import get_metric, list_metrics

pytest.importorskip("jax")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, sys
import numpy as np
import jax
import keras
from kseg.losses import get_loss, list_losses
from kseg.metrics import get_metric, list_metrics
assert keras.backend.backend() == "jax"

exec(sys.argv[1])  # defines cases() and the fixed inputs
out = {"loss": {}, "grad_finite": {}, "metric": {}}
# two jitted functions (one compilation each): every case's value, and the gradients
# of the 3-class logit cases
items = list(cases())
losses = [get_loss(spec, k, **kw) for _, spec, k, kw, _, _ in items]
vals = jax.jit(lambda preds: [l(it[4], q) for l, it, q in zip(losses, items, preds)])(
    [it[5] for it in items])
for it, v in zip(items, vals):
    out["loss"][it[0]] = float(v)
sel = [i for i, it in enumerate(items) if it[0].endswith("|3|logits")]

def total(preds):
    return sum(losses[i](items[i][4], q) for i, q in zip(sel, preds))

grads = jax.jit(jax.grad(total))([items[i][5] for i in sel])
for i, g in zip(sel, grads):
    out["grad_finite"][items[i][0]] = bool(np.isfinite(np.asarray(g)).all())
for name in list_metrics():
    m = get_metric(name, n_classes=3)
    m.update_state(Y3, P3)
    out["metric"][name] = float(m.result())

# a jitted fit with a composite loss and a metric
keras.utils.set_random_seed(0)
inp = keras.Input((8, 8, 3))
h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
model = keras.Model(inp, keras.layers.Conv2D(3, 1, activation="softmax")(h))
model.compile(keras.optimizers.Adam(0.05), loss=get_loss("c_focal+0.5*lovasz", 3),
              metrics=[get_metric("mean_iou", n_classes=3)], jit_compile=True)
hist = model.fit(XF, YF, batch_size=2, epochs=6, verbose=0).history
out["fit_loss"] = hist["loss"]
out["fit_miou_last"] = hist["mean_iou"][-1]
print("JSON" + json.dumps(out))
"""

CASES = r"""
rng = np.random.default_rng(0)
Y3 = rng.integers(0, 3, (2, 6, 6)).astype("int32")
Y3[0, 0] = 255
Z3 = rng.normal(0, 1.5, (2, 6, 6, 3)).astype("float32")
P3 = (np.exp(Z3) / np.exp(Z3).sum(-1, keepdims=True)).astype("float32")
Y1 = rng.integers(0, 2, (2, 6, 6)).astype("int32")
Y1[1, 2] = 255
Z1 = rng.normal(0, 1.5, (2, 6, 6, 1)).astype("float32")
P1 = (1 / (1 + np.exp(-Z1))).astype("float32")
XF = rng.normal(size=(2, 8, 8, 3)).astype("float32")
YF = np.argmax(XF, -1).astype("int32")

def cases():
    specs = list_losses() + ["ce+dice", "c_focal+0.5*dice"]
    for spec in specs:
        for k, y, z, p in ((3, Y3, Z3, P3), (1, Y1, Z1, P1)):
            kw = {"class_weights": [0.5, 1.0, 2.0][:max(k, 2)]} if spec == "weighted_ce" else {}
            yield f"{spec}|{k}|prob", spec, k, kw, y, p
            yield f"{spec}|{k}|logits", spec, k, dict(kw, from_logits=True), y, z
    yield "dice|3|per_image", "dice", 3, {"per_image": True}, Y3, P3
    yield "lovasz|3|per_image", "lovasz", 3, {"per_image": True}, Y3, P3
"""


@pytest.fixture(scope="module")
def jax_results():
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, CASES], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=600,
    )
    lines = [l for l in proc.stdout.splitlines() if l.startswith("JSON")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][4:])


@pytest.fixture(scope="module")
def local():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("compares the JAX subprocess with this (TensorFlow) process")
    ns = {"np": np, "list_losses": list_losses}
    exec(CASES, ns)
    return ns


def test_every_loss_gives_the_tensorflow_value_on_jax(jax_results, local):
    seen = 0
    for key, spec, k, kw, y, pred in local["cases"]():
        tf_value = float(get_loss(spec, k, **kw)(y, pred))
        assert jax_results["loss"][key] == pytest.approx(tf_value, rel=1e-5, abs=1e-6), key
        if key.endswith("|3|logits"):
            assert jax_results["grad_finite"][key], key
        seen += 1
    assert seen == len(jax_results["loss"]) == 2 * 2 * (len(list_losses()) + 2) + 2


def test_every_metric_gives_the_tensorflow_value_on_jax(jax_results, local):
    assert sorted(jax_results["metric"]) == list_metrics()
    for name in list_metrics():
        m = get_metric(name, n_classes=3)
        m.update_state(local["Y3"], local["P3"])
        assert jax_results["metric"][name] == pytest.approx(float(m.result()), rel=1e-6), name


def test_jitted_fit_on_jax_lowers_the_loss(jax_results):
    hist = jax_results["fit_loss"]
    assert all(np.isfinite(hist)) and hist[-1] < hist[0] * 0.9, hist
    assert 0.0 <= jax_results["fit_miou_last"] <= 1.0
