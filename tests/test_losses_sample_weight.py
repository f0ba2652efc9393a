"""``sample_weight`` in the kseg losses, against numpy formulas written here.

The semantics (kseg/losses.py, "Sample weights"): every loss is a weighted mean
(weights normalised by their sum, so all-ones weights give the unweighted value,
scaling the weights changes nothing and weights ``[1, 0]`` give the loss of the
first image alone); pixel losses weight each pixel's term; region losses use soft
counts weighted by ``q = s / max(s)`` and, with ``per_image``, a mean over images
weighted by each image's largest pixel weight. The expected values below come from
numpy code written from those definitions, not from kseg.
"""

import math

import numpy as np
import pytest
import keras

from kseg.errors import LossConfigError
from kseg.losses import get_loss, list_losses

IGN = 255
EPS = 1e-5
W3 = [0.5, 1.0, 2.0]
ALL = list_losses()
REGION = ["dice", "jaccard", "tversky", "f_tversky", "g_dice", "lovasz"]
PER_IMAGE = {"dice", "jaccard", "tversky", "f_tversky", "g_dice", "lovasz",
             "bce_dice", "ce_dice", "bce_jaccard", "ce_jaccard"}


def make(name, n_classes=3, **kw):
    if name == "weighted_ce" and "class_weights" not in kw:
        kw["class_weights"] = W3[: max(n_classes, 2)]
    return get_loss(name, n_classes, **kw)


def value(loss, y, p, sw=None):
    return float(keras.ops.convert_to_numpy(loss(y, p, sample_weight=sw)))


def cases():
    """(spec, options) for every loss, per_image variants and two sums."""
    out = [(n, {}) for n in ALL]
    out += [(n, {"per_image": True}) for n in sorted(PER_IMAGE)]
    out += [("ce+0.5*dice", {}), ("c_focal+lovasz", {"per_image": True})]
    return out


CASES = cases()
IDS = [s + ("|per_image" if o else "") for s, o in CASES]


# --------------------------------------------------------------------------------------
# numpy definitions (float64)


def np_targets(y, k):
    y = np.asarray(y)
    valid = (y != IGN) & (y >= 0) & (y < k)
    oh = np.stack([(y == c) & valid for c in range(k)], -1).astype(np.float64)
    return oh, valid.astype(np.float64)


def np_expand(sw, shape):
    """Per-image (B,) / (B, 1) or per-pixel (B, H, W) / (B, H, W, 1) weights -> (B, H, W)."""
    sw = np.asarray(sw, np.float64)
    if sw.ndim in (1, 2):
        sw = sw.reshape(-1, 1, 1)
    elif sw.ndim == 4:
        sw = sw[..., 0]
    return np.broadcast_to(sw, shape)


def np_ce(y, p, sw, cw=None):
    """sum_i s_i w_{y_i} (-log p_{i,y_i}) / sum_i s_i w_{y_i} over valid pixels."""
    p = np.asarray(p, np.float64)
    oh, valid = np_targets(y, p.shape[-1])
    s = np_expand(sw, valid.shape) * valid
    cwp = oh @ (np.ones(p.shape[-1]) if cw is None else np.asarray(cw, np.float64))
    nll = -(oh * np.log(np.clip(p, 1e-7, 1))).sum(-1)
    return float((s * cwp * nll).sum() / (s * cwp).sum())


def np_b_focal(y, p, sw, alpha=0.25, gamma=2.0, focal=True):
    """Per channel binary focal (or BCE), sum_i s_i sum_c e_ic / (C sum_i s_i)."""
    p = np.asarray(p, np.float64)
    c = p.shape[-1]
    if c == 1:
        _, valid = np_targets(y, 2)
        t = ((np.asarray(y) == 1) & (valid > 0)).astype(np.float64)[..., None]
    else:
        t, valid = np_targets(y, c)
    lp, l1p = np.log(np.clip(p, 1e-7, 1)), np.log(np.clip(1 - p, 1e-7, 1))
    if focal:
        e = -(alpha * t * (1 - p) ** gamma * lp + (1 - alpha) * (1 - t) * p**gamma * l1p)
    else:
        e = -(t * lp + (1 - t) * l1p)
    s = np_expand(sw, valid.shape) * valid
    return float((s * e.sum(-1)).sum() / (s.sum() * c))


def np_c_focal(y, p, sw, alpha=0.25, gamma=2.0):
    p = np.asarray(p, np.float64)
    oh, valid = np_targets(y, p.shape[-1])
    e = -(alpha * oh * (1 - p) ** gamma * np.log(np.clip(p, 1e-7, 1))).sum(-1)
    s = np_expand(sw, valid.shape) * valid
    return float((s * e).sum() / s.sum())


def np_region_of_counts(name, i, ys, ps, eps=EPS):
    if name == "dice":
        return 1 - np.mean((2 * i + eps) / (ys + ps + eps))
    if name == "jaccard":
        return 1 - np.mean((i + eps) / (ys + ps - i + eps))
    ti = (i + eps) / (i + 0.3 * (ps - i) + 0.7 * (ys - i) + eps)
    if name == "tversky":
        return 1 - np.mean(ti)
    if name == "f_tversky":
        return np.mean(np.maximum(1 - ti, 0) ** 0.75)
    if name == "g_dice":
        w = np.array([1 / v**2 if v > 0 else np.nan for v in ys])
        w[np.isnan(w)] = np.nanmax(w)
        w = w / w.sum()
        return 1 - (2 * np.sum(w * i) + eps) / (np.sum(w * (ys + ps)) + eps)
    raise AssertionError(name)


def np_lovasz_of_pixels(oh, p, q):
    """Lovasz extension of the weighted Jaccard loss; oh, p: (N, K), q: (N,) pixel weights."""
    per_class = []
    for c in range(oh.shape[1]):
        g, e = oh[:, c], np.abs(oh[:, c] - p[:, c])
        if (q * g).sum() <= 0:
            continue
        order = np.argsort(-e, kind="stable")
        g, e, w = g[order], e[order], q[order]
        total, prev = (w * g).sum(), 0.0
        loss = 0.0
        for j in range(len(e)):
            inter = total - (w * g)[: j + 1].sum()
            union = total + (w * (1 - g))[: j + 1].sum()
            jac = 1 - inter / union
            loss += e[j] * (jac - prev)
            prev = jac
        per_class.append(loss)
    return float(np.mean(per_class)) if per_class else None


def np_region(name, y, p, sw, per_image=False):
    """Region loss with pixel weights q = s / max(s) per group; per image: mean weighted
    by each image's largest weight."""
    p = np.asarray(p, np.float64)
    if p.shape[-1] == 1:
        p = np.concatenate([1 - p, p], -1)
    oh, valid = np_targets(y, p.shape[-1])
    s = np_expand(sw, valid.shape) * valid

    def one(sl):
        q = s[sl] / s[sl].max()
        if name == "lovasz":
            k = p.shape[-1]
            return np_lovasz_of_pixels(oh[sl].reshape(-1, k), p[sl].reshape(-1, k), q.reshape(-1))
        qq = q[..., None]
        return np_region_of_counts(
            name, (qq * oh[sl] * p[sl]).sum(axis=(0, 1, 2) if sl == slice(None) else (0, 1)),
            (qq * oh[sl]).sum(axis=(0, 1, 2) if sl == slice(None) else (0, 1)),
            (qq * p[sl]).sum(axis=(0, 1, 2) if sl == slice(None) else (0, 1)),
        )

    if not per_image:
        return float(one(slice(None)))
    num = den = 0.0
    for b in range(len(s)):
        if s[b].max() > 0:
            v = one(b)
            if v is not None:
                num += s[b].max() * v
                den += s[b].max()
    return float(num / den) if den else 0.0


def np_value(spec, opts, y, p, sw):
    """Reference for the specs used below."""
    per_image = opts.get("per_image", False)
    if spec in REGION:
        return np_region(spec, y, p, sw, per_image)
    if spec == "ce":
        return np_ce(y, p, sw)
    if spec == "weighted_ce":
        return np_ce(y, p, sw, W3)
    if spec == "b_focal":
        return np_b_focal(y, p, sw)
    if spec == "c_focal":
        return np_c_focal(y, p, sw)
    if spec in ("bce_dice", "ce_dice", "bce_jaccard", "ce_jaccard"):
        first, region = spec.split("_")
        pix = np_b_focal(y, p, sw, focal=False) if first == "bce" else np_ce(y, p, sw)
        return pix + np_region(region, y, p, sw, per_image)
    if spec == "ce+0.5*dice":
        return np_ce(y, p, sw) + 0.5 * np_region("dice", y, p, sw)
    if spec == "c_focal+lovasz":
        return np_c_focal(y, p, sw) + np_region("lovasz", y, p, sw, per_image)
    raise AssertionError(spec)


# --------------------------------------------------------------------------------------
# fixtures


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def batch():
    """2 images 4x5, 3 classes, ignored pixels, class 2 absent from image 2."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, (2, 4, 5))
    y[1][y[1] == 2] = 0
    y[0, 0, :2] = IGN
    y[1, 3, 4] = IGN
    p = softmax(rng.normal(0, 1.5, (2, 4, 5, 3))).astype("float32")
    s = rng.uniform(0.1, 2.0, (2, 4, 5)).astype("float32")
    s[0, 1, 1] = 0.0
    return y.astype("int32"), p, s


@pytest.fixture(scope="module")
def batch_sigmoid():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, (2, 4, 4))
    y[0, 0, 0] = IGN
    p = (1 / (1 + np.exp(-rng.normal(0, 1.5, (2, 4, 4, 1))))).astype("float32")
    s = rng.uniform(0.1, 2.0, (2, 4, 4)).astype("float32")
    return y.astype("int32"), p, s


# --------------------------------------------------------------------------------------
# the three rules: ones == none, scale changes nothing, [1, 0] == the first image alone


@pytest.mark.parametrize("spec,opts", CASES, ids=IDS)
def test_all_ones_weights_give_the_unweighted_value(spec, opts, batch):
    y, p, _ = batch
    loss = make(spec, **opts)
    plain = value(loss, y, p)
    assert value(loss, y, p, None) == plain
    for sw in (np.ones(2), np.ones((2, 1)), np.ones((2, 4, 5)), np.ones((2, 4, 5, 1))):
        assert value(loss, y, p, sw.astype("float32")) == plain, sw.shape  # bit for bit


@pytest.mark.parametrize("spec,opts", CASES, ids=IDS)
def test_scaling_the_weights_changes_nothing(spec, opts, batch):
    y, p, s = batch
    loss = make(spec, **opts)
    for sw in (np.array([0.3, 0.7], "float32"), s):
        assert value(loss, y, p, sw * 7.0) == pytest.approx(value(loss, y, p, sw), rel=1e-6)


@pytest.mark.parametrize("spec,opts", CASES, ids=IDS)
def test_weights_one_zero_give_the_first_image_alone(spec, opts, batch):
    y, p, _ = batch
    loss = make(spec, **opts)
    first = value(loss, y[:1], p[:1])
    assert value(loss, y, p, np.array([1.0, 0.0], "float32")) == pytest.approx(first, rel=1e-6, abs=1e-7)
    assert value(loss, y, p, np.array([[0.0], [1.0]], "float32")) == pytest.approx(
        value(loss, y[1:], p[1:]), rel=1e-6, abs=1e-7
    )
    # and the numpy definition of the first image alone
    assert first == pytest.approx(np_value(spec, opts, y[:1], p[:1], np.ones(1)), rel=1e-5)


@pytest.mark.parametrize("spec,opts", CASES, ids=IDS)
def test_zero_pixel_weight_is_like_the_ignore_index(spec, opts, batch):
    y, p, _ = batch
    loss = make(spec, **opts)
    drop = np.zeros((2, 4, 5), bool)
    drop[0, 2, :] = True
    drop[1, :, 0] = True
    sw = np.where(drop, 0.0, 1.0).astype("float32")
    assert value(loss, y, p, sw) == pytest.approx(value(loss, np.where(drop, IGN, y), p), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("spec,opts", CASES, ids=IDS)
def test_every_loss_follows_the_documented_formula(spec, opts, batch):
    """Per-image and per-pixel weights against the numpy definitions."""
    y, p, s = batch
    loss = make(spec, **opts)
    for sw in (np.array([2.0, 0.5], "float32"), s, s[..., None]):
        expected = np_value(spec, opts, y, p, sw)
        assert value(loss, y, p, sw) == pytest.approx(expected, rel=2e-5), sw.shape


@pytest.mark.parametrize("spec", ["ce", "b_focal", "dice", "bce_jaccard", "lovasz", "g_dice"])
def test_sigmoid_channel_with_pixel_weights(spec, batch_sigmoid):
    y, p, s = batch_sigmoid
    loss = get_loss(spec, 1)
    if spec == "ce":  # binary cross-entropy in the two-class form
        expected = np_ce(y, np.concatenate([1 - p, p], -1), s)
    elif spec == "b_focal":
        expected = np_b_focal(y, p, s)
    elif spec == "bce_jaccard":
        expected = np_b_focal(y, p, s, focal=False) + np_region("jaccard", y, p, s)
    else:
        expected = np_region(spec, y, p, s)
    assert value(loss, y, p, s) == pytest.approx(expected, rel=2e-5)


# --------------------------------------------------------------------------------------
# hand-written numbers


def test_ce_per_pixel_weights_is_the_weighted_mean_by_hand():
    # one image 1x3: labels 0, 1, ignored; probabilities of the true class 0.8 and 0.4
    y = np.array([[[0, 1, IGN]]], "int32")
    p = np.array([[[[0.8, 0.2], [0.6, 0.4], [0.5, 0.5]]]], "float32")
    s = np.array([[[3.0, 1.0, 100.0]]], "float32")  # the ignored pixel's weight is unused
    expected = (3 * -math.log(0.8) + 1 * -math.log(0.4)) / (3 + 1)
    assert value(get_loss("ce", 2), y, p, s) == pytest.approx(expected, rel=1e-6)
    # with class weights [0.5, 2]: pixel weights 3*0.5 and 1*2
    expected = (1.5 * -math.log(0.8) + 2 * -math.log(0.4)) / (1.5 + 2)
    assert value(get_loss("ce", 2, class_weights=[0.5, 2.0]), y, p, s) == pytest.approx(expected, rel=1e-6)


def test_dice_per_image_weights_by_hand():
    # two images of 1x2 pixels, 2 classes; image weights 1 and 0.5
    y = np.array([[[1, 0]], [[1, 1]]], "int32")
    p1 = np.array([[0.9, 0.2], [0.6, 0.3]])  # P(class 1) per pixel, image 1 then image 2
    p = np.stack([1 - p1, p1], -1)[:, None].astype("float32")
    # batch counts, image 2 counted half: class 1 then class 0
    i1 = 0.9 + 0.5 * (0.6 + 0.3)
    y1 = 1 + 0.5 * 2
    s1 = 0.9 + 0.2 + 0.5 * (0.6 + 0.3)
    i0 = 0.8
    y0 = 1
    s0 = 0.1 + 0.8 + 0.5 * (0.4 + 0.7)
    expected = 1 - ((2 * i0 + EPS) / (y0 + s0 + EPS) + (2 * i1 + EPS) / (y1 + s1 + EPS)) / 2
    sw = np.array([1.0, 0.5], "float32")
    assert value(get_loss("dice", 2), y, p, sw) == pytest.approx(expected, rel=1e-6)
    # per image: each image's own dice, then the weighted mean (1 * L1 + 0.5 * L2) / 1.5
    l1 = 1 - ((2 * 0.8 + EPS) / (1 + 0.9 + EPS) + (2 * 0.9 + EPS) / (1 + 1.1 + EPS)) / 2
    l2 = 1 - ((0 + EPS) / (0 + 1.1 + EPS) + (2 * 0.9 + EPS) / (2 + 0.9 + EPS)) / 2
    assert value(get_loss("dice", 2, per_image=True), y, p, sw) == pytest.approx(
        (l1 + 0.5 * l2) / 1.5, rel=1e-6
    )


# --------------------------------------------------------------------------------------
# edge cases and errors


@pytest.mark.parametrize("spec,opts", CASES, ids=IDS)
def test_all_zero_weights_give_zero_and_finite_gradients(spec, opts, batch):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("gradient helper written for TensorFlow")
    import tensorflow as tf

    y, p, _ = batch
    loss = make(spec, **opts, from_logits=True)
    z = tf.Variable(np.log(p))
    for sw in (np.zeros(2, "float32"), np.array([1.0, 0.0], "float32")):
        with tf.GradientTape() as tape:
            out = loss(y, z, sample_weight=sw)
        g = tape.gradient(out, z).numpy()
        assert np.isfinite(float(out)) and np.isfinite(g).all()
        if not sw.any():
            assert float(out) == 0.0 and np.abs(g).max() == 0.0
        else:  # the second image gets no gradient
            assert np.abs(g[1]).max() == 0.0 and np.abs(g[0]).max() > 0.0


def test_bad_weight_shape_is_a_one_line_error(batch):
    y, p, _ = batch
    for spec in ("dice", "ce+dice"):
        with pytest.raises(LossConfigError) as e:
            get_loss(spec, 3)(y, p, sample_weight=np.ones((2, 4), "float32"))
        msg = str(e.value)
        assert "\n" not in msg and "sample_weight must be per image (B,)" in msg and "(2, 4)" in msg


def test_weights_of_unknown_rank_in_a_graph(batch):
    # Keras retraces its train step with relaxed shapes: after per-image and per-pixel
    # weights the step sees a sample_weight of unknown rank
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow graph check")
    import tensorflow as tf

    y, p, s = batch
    loss = get_loss("dice+ce", 3, per_image=True)
    fn = tf.function(
        lambda a, b, w: loss(a, b, sample_weight=w),
        input_signature=[tf.TensorSpec([None] * 4, tf.int32), tf.TensorSpec([None, None, None, 3], tf.float32),
                         tf.TensorSpec(None, tf.float32)],
    )
    for sw in (np.array([2.0, 0.5], "float32"), s, s[..., None]):
        expected = np_region("dice", y, p, sw, per_image=True) + np_ce(y, p, sw)
        assert float(fn(y[..., None], p, sw)) == pytest.approx(expected, rel=2e-5), sw.shape


def test_float16_predictions_and_weights_give_a_float32_loss(batch):
    y, p, s = batch
    out = get_loss("ce+dice", 3)(y, p.astype("float16"), sample_weight=s.astype("float16"))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    p16 = p.astype("float16")
    s16 = s.astype("float16")
    assert float(out) == pytest.approx(np_ce(y, p16, s16) + np_region("dice", y, p16, s16), rel=1e-4)


# --------------------------------------------------------------------------------------
# Keras integration


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    return keras.Model(inp, keras.layers.Conv2D(3, 1, activation="softmax")(h))


def tiny_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    y = np.argmax(x, -1).astype("int32")
    y[0, :2, :2] = IGN
    s = rng.uniform(0.1, 2.0, (2, 8, 8)).astype("float32")
    return x, y, s


def test_fit_with_sample_weight_reports_and_trains_on_the_weighted_loss():
    x, y, s = tiny_data()
    model = tiny_model()
    model.compile(keras.optimizers.SGD(0.0), loss=get_loss("ce+0.5*dice", 3))
    pred = model.predict(x, verbose=0)

    def ref(sw):
        return np_ce(y, pred, sw) + 0.5 * np_region("dice", y, pred, sw)

    fit = lambda **kw: model.fit(x, y, batch_size=2, epochs=1, verbose=0, shuffle=False, **kw).history["loss"][0]
    assert fit() == pytest.approx(ref(np.ones(2)), rel=1e-5)
    assert fit(sample_weight=np.ones(2, "float32")) == pytest.approx(ref(np.ones(2)), rel=1e-5)
    assert fit(sample_weight=np.array([1.0, 0.0], "float32")) == pytest.approx(
        np_ce(y[:1], pred[:1], np.ones(1)) + 0.5 * np_region("dice", y[:1], pred[:1], np.ones(1)), rel=1e-5
    )
    assert fit(sample_weight=s) == pytest.approx(ref(s), rel=1e-5)
    assert model.evaluate(x, y, sample_weight=s, verbose=0) == pytest.approx(ref(s), rel=1e-5)

    # one SGD step with weights [1, 0] is the step on the first image alone
    def step(xs, ys, **kw):
        m = tiny_model(seed=1)
        m.compile(keras.optimizers.SGD(0.5), loss=get_loss("ce+0.5*dice", 3))
        m.fit(xs, ys, batch_size=len(xs), epochs=1, verbose=0, shuffle=False, **kw)
        return [w.numpy() if hasattr(w, "numpy") else np.asarray(w) for w in m.get_weights()]

    weighted = step(x, y, sample_weight=np.array([1.0, 0.0], "float32"))
    alone = step(x[:1], y[:1])
    start = tiny_model(seed=1).get_weights()
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(alone, start))  # it did move
    for a, b in zip(weighted, alone):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
