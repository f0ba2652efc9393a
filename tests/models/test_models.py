"""One parametrized test over every registered model (DESIGN.md 7).

For each model at its smallest test size: build by name, output shape and
finiteness, probabilities summing to one, a few training steps lowering the loss
on a fixed batch, a .keras save/load round trip with identical outputs, the
input-size error, and (in one subprocess, for JAX_MODELS) a forward pass under the JAX
backend.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras

from kseg.errors import InputShapeError
from kseg.models import get_model, list_models, model_spec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = list_models()


def _build(name, n_classes=3, **extra):
    spec = model_spec(name)
    h, w = spec.test_size
    kw = {**spec.test_kwargs, **extra}
    return get_model(name, n_classes=n_classes, input_height=h, input_width=w, **kw), (h, w)


def _batch(hw, n_classes, seed=0):
    rng = np.random.default_rng(seed)
    h, w = hw
    x = rng.random((2, h, w, 3), dtype=np.float32)
    # a learnable target: class from the brightness of the first channel
    y = np.minimum((x[..., 0] * n_classes).astype(np.int32), n_classes - 1)
    return x, y


def _first_output(out):
    out = out[0] if isinstance(out, (list, tuple)) else out
    return keras.ops.convert_to_numpy(out)


def _forward(model, x):
    """An eager forward pass in inference mode (no graph tracing or XLA compilation,
    which would dominate the test time of the large models)."""
    return _first_output(model(x, training=False))


def test_registry_has_the_zoo():
    expected = {"enet", "fcn8", "unet", "segnet"}
    assert expected <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_model(name, tmp_path):
    keras.utils.set_random_seed(0)
    model, hw = _build(name)
    x, y = _batch(hw, 3)
    out = _forward(model, x)
    assert out.shape == (2, hw[0], hw[1], 3)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-4)
    assert out.min() >= 0.0

    # a few training steps lower the loss on a fixed batch
    # eagerly: six steps cost less than tracing the training function of a large graph
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  jit_compile=False, run_eagerly=True)
    n_out = len(model.outputs)
    yy = [y] * n_out if n_out > 1 else y
    losses = [float(np.ravel(model.train_on_batch(x, yy))[0]) for _ in range(6)]
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0], losses

    # .keras round trip gives identical outputs
    before = _forward(model, x)
    path = str(tmp_path / f"{name.replace('+', 'p')}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    after = _forward(loaded, x)
    np.testing.assert_allclose(before, after, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_logits_and_binary_heads(name):
    """Also: every model takes any number of input channels (here 1 and 4)."""
    spec = model_spec(name)
    h, w = spec.test_size
    logits = get_model(name, n_classes=2, input_height=h, input_width=w, channels=1, activation=None,
                       **spec.test_kwargs)
    x, _ = _batch((h, w), 2)
    out = _forward(logits, x[..., :1])
    assert out.shape == (2, h, w, 2)
    # logits are not probabilities: not all in [0, 1] summing to 1
    assert not np.allclose(out.sum(-1), 1.0, atol=1e-3) or out.min() < 0 or out.max() > 1
    binary = get_model(name, n_classes=1, input_height=h, input_width=w, channels=4, **spec.test_kwargs)
    out = _forward(binary, np.concatenate([x, x[..., :1]], axis=-1))
    assert out.shape == (2, h, w, 1)
    assert 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("name", [m for m in MODELS if model_spec(m).divisor > 1])
def test_bad_input_size_is_a_clear_error(name):
    spec = model_spec(name)
    bad = spec.test_size[0] + 1
    with pytest.raises(InputShapeError, match=f"multiple of {spec.divisor}"):
        get_model(name, n_classes=2, input_height=bad, input_width=spec.test_size[1], **spec.test_kwargs)


@pytest.mark.parametrize("name", [m for m in MODELS if model_spec(m).dynamic])
def test_dynamic_models_take_other_sizes(name):
    spec = model_spec(name)
    model = get_model(name, n_classes=2, **spec.test_kwargs)
    h, w = spec.test_size
    x = np.zeros((1, h + spec.divisor * 2, w + spec.divisor, 3), np.float32)
    out = _forward(model, x)
    assert out.shape[1:3] == x.shape[1:3]


def test_unknown_model_lists_valid_names():
    from kseg.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="unet"):
        get_model("unet3000")


_FCN8_BF16 = r"""
import numpy as np
import keras
keras.mixed_precision.set_global_policy("mixed_bfloat16")
from kseg.models import get_model
from kseg.optim import compile_model
m = get_model("fcn8", n_classes=2, input_height=64, input_width=64)
assert m.get_layer("fcn8_score_fr").dtype_policy.compute_dtype == "float32"
assert m.get_layer("fcn8_fc7").dtype_policy.compute_dtype == "bfloat16"
# plain SGD: no optimizer slots (Adam's two would add 1.1 GB for fcn8's 134M weights)
compile_model(m, n_classes=2, optimizer_name="sgd")
x = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
y = np.random.default_rng(1).integers(0, 2, (2, 64, 64))
for _ in range(3):
    loss = m.train_on_batch(x, y)
print("TRAINED", loss)
"""


def test_fcn8_trains_under_mixed_bfloat16():
    """A bfloat16 conv from fc7's 4096 channels aborted the process with heap corruption
    in TensorFlow 2.21 (oneDNN); fcn8 computes that layer in float32 under mixed_bfloat16.
    In a subprocess, because the failure is an abort, not an exception."""
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", _FCN8_BF16], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0 and "TRAINED" in proc.stdout, proc.stderr[-2000:]


_JAX_SCRIPT = r"""
import json, os, sys
import numpy as np
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
from kseg.models import get_model, list_models, model_spec
res = {}
for name in sys.argv[1:]:
    spec = model_spec(name)
    h, w = spec.test_size
    try:
        m = get_model(name, n_classes=3, input_height=h, input_width=w, **spec.test_kwargs)
        out = m(np.random.default_rng(0).random((1, h, w, 3), dtype=np.float32), training=False)
        out = keras.ops.convert_to_numpy(out[0] if isinstance(out, (list, tuple)) else out)
        res[name] = {"shape": list(out.shape), "finite": bool(np.isfinite(out).all()),
                     "sum": float(np.abs(out.sum(-1) - 1).max())}
    except Exception as e:
        res[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
print("JSON" + json.dumps(res))
"""


#: The zoo models run end to end on JAX in every test run. Each custom layer of kseg is
#: checked on JAX against TensorFlow's outputs on its own
#: (tests/models/test_conventions.py::test_every_custom_layer_gives_the_same_outputs_on_jax),
#: and the rest of a model is Keras' own layers, which Keras runs on every backend; building a
#: zoo model on JAX takes 10-60 s, so building all of them would cost most of the CI budget.
#: These three cover a plain U-Net, ENet's pooling indices and a keras.applications encoder
#: with a decoder over its taps.
JAX_MODELS = ("unet", "enet", "fpn")


@pytest.fixture(scope="module")
def jax_results():
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _JAX_SCRIPT, *JAX_MODELS], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=900)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")]
    assert line, proc.stderr[-3000:]
    return json.loads(line[-1][4:])


@pytest.mark.parametrize("name", JAX_MODELS)
def test_model_runs_on_jax(name, jax_results):
    r = jax_results[name]
    assert "error" not in r, r.get("error")
    h, w = model_spec(name).test_size
    assert r["shape"] == [1, h, w, 3]
    assert r["finite"]
    assert r["sum"] < 1e-4
