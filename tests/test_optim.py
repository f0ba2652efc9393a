"""Schedules and weight decay (kseg.optim) against hand-computed formulas."""

import math

import keras
import numpy as np
import pytest

from kseg.errors import ConfigError
from kseg.optim import LinearWarmup, make_optimizer, make_schedule


def _lr(s, step):
    return float(s(step)) if callable(s) else float(s)


@pytest.mark.parametrize("name,kw,checks", [
    # poly: lr * (1 - t/T)^0.9 over T = 100 steps
    ("poly", {}, [(0, 0.01), (50, 0.01 * 0.5 ** 0.9), (75, 0.01 * 0.25 ** 0.9), (100, 0.0)]),
    # poly down to a floor: (lr - min) (1 - t/T)^p + min
    ("poly", {"min_learning_rate": 0.001, "power": 1.0}, [(50, 0.0055), (100, 0.001)]),
    # cosine: lr * (1 + cos(pi t / T)) / 2
    ("cosine", {}, [(0, 0.01), (25, 0.01 * (1 + math.cos(math.pi / 4)) / 2), (50, 0.005), (100, 0.0)]),
    # step: x0.1 every 2 epochs of 10 steps
    ("step", {"step_epochs": 2}, [(0, 0.01), (19, 0.01), (20, 0.001), (45, 0.0001)]),
    # multistep at epochs 3 and 5
    ("multistep", {"milestones": [3, 5]}, [(29, 0.01), (30, 0.001), (49, 0.001), (50, 0.0001)]),
    # exponential: x0.5 per epoch, smoothly
    ("exponential", {"gamma": 0.5}, [(0, 0.01), (10, 0.005), (15, 0.01 * 0.5 ** 1.5)]),
    ("constant", {}, [(0, 0.01), (99, 0.01)]),
])
def test_schedules_match_their_formulas(name, kw, checks):
    s = make_schedule(name, 0.01, total_steps=100, steps_per_epoch=10, **kw)
    for step, want in checks:
        assert _lr(s, step) == pytest.approx(want, rel=1e-5, abs=1e-9), (name, step)


def test_linear_warmup_then_poly():
    # 10 warm-up steps from 0.1 x lr, then poly over the remaining 100 steps
    s = make_schedule("poly", 0.01, total_steps=110, steps_per_epoch=10, warmup_steps=10, warmup_factor=0.1)
    assert _lr(s, 0) == pytest.approx(0.001)
    assert _lr(s, 5) == pytest.approx(0.01 * (0.1 + 0.9 * 0.5))
    assert _lr(s, 10) == pytest.approx(0.01)
    assert _lr(s, 60) == pytest.approx(0.01 * 0.5 ** 0.9, rel=1e-5)
    assert _lr(s, 110) == pytest.approx(0.0, abs=1e-9)
    # a constant rate with warm-up
    c = make_schedule("constant", 0.02, total_steps=50, steps_per_epoch=5, warmup_steps=4, warmup_factor=0.5)
    assert [round(_lr(c, t), 6) for t in (0, 2, 4, 40)] == [0.01, 0.015, 0.02, 0.02]


def test_schedule_config_round_trip():
    s = make_schedule("multistep", 0.01, 100, 10, milestones=[3, 5], warmup_steps=5)
    again = LinearWarmup.from_config(s.get_config())
    for t in (0, 3, 5, 29, 30, 50, 99):
        assert _lr(again, t) == pytest.approx(_lr(s, t))
    opt = make_optimizer("sgd", s, weight_decay=1e-4)
    opt2 = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(opt2).__name__ == "SGD" and opt2.l2 == pytest.approx(1e-4)
    assert float(opt2.learning_rate) == pytest.approx(0.001)  # step 0 of the warm-up


def test_schedule_errors_are_one_line():
    with pytest.raises(ConfigError, match="step_epochs"):
        make_schedule("step", 0.01, 100, 10)
    with pytest.raises(ConfigError, match="milestones"):
        make_schedule("multistep", 0.01, 100, 10)
    with pytest.raises(ConfigError, match="--schedule"):
        make_schedule("linear", 0.01, 100, 10)


def _one_step(opt, w0, b0, g):
    """Apply one gradient step to a kernel (2-D) and a bias (1-D) variable; return their values."""
    w = keras.Variable(np.array(w0, "float32"))
    b = keras.Variable(np.array(b0, "float32"))
    opt.apply([keras.ops.convert_to_tensor(np.array(g, "float32")),
               keras.ops.convert_to_tensor(np.array(g[0], "float32"))], [w, b])
    return keras.ops.convert_to_numpy(w), keras.ops.convert_to_numpy(b)


W0 = [[1.0, -2.0], [0.5, 4.0]]
G = [[0.1, 0.2], [-0.3, 0.0]]


def test_coupled_weight_decay_adds_l2_to_the_gradient():
    lr, wd = 0.1, 0.01
    w, b = _one_step(make_optimizer("sgd", lr, momentum=0.0, weight_decay=wd, weight_decay_mode="coupled"),
                     W0, [1.0, 1.0], G)
    # w1 = w0 - lr * (g + wd * w0); the bias is not decayed: b1 = b0 - lr * g
    np.testing.assert_allclose(w, [[1.0 - 0.1 * (0.1 + 0.01),  -2.0 - 0.1 * (0.2 - 0.02)],
                                   [0.5 - 0.1 * (-0.3 + 0.005), 4.0 - 0.1 * (0.0 + 0.04)]], rtol=1e-6)
    np.testing.assert_allclose(b, [1.0 - 0.01, 1.0 - 0.02], rtol=1e-6)


def test_decoupled_weight_decay_shrinks_the_weights_apart_from_the_gradient():
    lr, wd = 0.1, 0.01
    w, b = _one_step(make_optimizer("sgd", lr, momentum=0.0, weight_decay=wd, weight_decay_mode="decoupled"),
                     W0, [1.0, 1.0], G)
    # w1 = w0 - lr * wd * w0 - lr * g  (Keras decays first, then steps)
    w0, g = np.array(W0), np.array(G)
    np.testing.assert_allclose(w, w0 * (1 - lr * wd) - lr * g, rtol=1e-6)
    np.testing.assert_allclose(b, [0.99, 0.98], rtol=1e-6)


def test_the_two_decays_differ_under_adam():
    """With Adam the coupled decay is normalised like any gradient, the decoupled one is not."""
    lr, wd, eps = 0.1, 0.5, 1e-7
    w0, g = np.array(W0), np.array(G)
    wc, _ = _one_step(make_optimizer("adam", lr, weight_decay=wd, weight_decay_mode="coupled"), W0, [0, 0], G)
    wd_, _ = _one_step(make_optimizer("adamw", lr, weight_decay=wd), W0, [0, 0], G)
    # first Adam step: m_hat = g', v_hat = g'^2, update = lr * g' / (|g'| + eps)
    gc = g + wd * w0
    np.testing.assert_allclose(wc, w0 - lr * gc / (np.abs(gc) + eps), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(wd_, w0 * (1 - lr * wd) - lr * g / (np.abs(g) + eps), rtol=1e-5, atol=1e-6)


def test_optimizer_options():
    sgd = make_optimizer("sgd", 0.01, momentum=0.95, nesterov=True, clipnorm=1.0, ema=0.99)
    assert sgd.momentum == pytest.approx(0.95) and sgd.nesterov and sgd.clipnorm == 1.0 and sgd.use_ema
    assert make_optimizer("adamw", 0.01).weight_decay == 0.0  # no hidden Keras default decay
    assert make_optimizer("adamw", 0.01, weight_decay=0.05).weight_decay == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="optimizer_name"):
        make_optimizer("lamb", 0.01)
