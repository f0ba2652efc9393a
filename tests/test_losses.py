"""Tests of kseg.losses against hand-computed values and independent numpy references.

The numpy references below are written from the definitions (loops over pixels
or classes in float64), not from kseg's code. Run on the TensorFlow backend
(the JAX backend is checked in test_losses_jax.py).
"""

import json
import math

import numpy as np
import pytest
import keras

from kseg.errors import KsegError, UnknownNameError
from kseg.losses import (
    CompositeLoss,
    get_loss,
    list_losses,
)

#: the fourteen losses kseg documents (pinned: a loss added or removed must update the README)
EXPECTED_LOSSES = [
    "ce", "weighted_ce", "b_focal", "c_focal", "dice", "jaccard", "g_dice", "tversky",
    "f_tversky", "bce_dice", "ce_dice", "bce_jaccard", "ce_jaccard", "lovasz",
]
#: every test below that takes a loss name runs over the registry, so a new loss is tested
#: (reference values, logits, one-hot targets, absent classes, config round trip, training)
#: without being listed here
ALL_LOSSES = list_losses()
IGN = 255
EPS = 1e-5


def make_loss(name, n_classes, **kw):
    """get_loss with the class weights weighted_ce requires."""
    if name == "weighted_ce" and "class_weights" not in kw:
        kw["class_weights"] = [0.5, 1.0, 2.0, 1.5][: max(n_classes, 2)]
    return get_loss(name, n_classes, **kw)


def value(loss, y_true, y_pred):
    return float(keras.ops.convert_to_numpy(loss(y_true, y_pred)))


def gradient(loss, y_true, y_pred):
    """d loss / d y_pred as numpy, on the active backend."""
    backend = keras.backend.backend()
    x = np.asarray(y_pred, dtype="float32")
    if backend == "tensorflow":
        import tensorflow as tf

        v = tf.Variable(x)
        with tf.GradientTape() as tape:
            out = loss(y_true, v)
        return tape.gradient(out, v).numpy()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda t: loss(y_true, t))(x))
    pytest.skip(f"no gradient helper for backend {backend}")


# --------------------------------------------------------------------------------------
# independent numpy references (float64)


def ref_targets(y, k):
    """Sparse labels -> one-hot (zero on ignored/out-of-range) and valid mask."""
    y = np.asarray(y)
    if y.ndim == 4:
        y = y[..., 0]
    valid = (y != IGN) & (y >= 0) & (y < k)
    oh = np.stack([(y == c) & valid for c in range(k)], axis=-1).astype(np.float64)
    return oh, valid


def ref_class_probs(p, n_classes):
    p = np.asarray(p, np.float64)
    return np.concatenate([1 - p, p], axis=-1) if n_classes == 1 else p


def ref_ce(y, p, n_classes, w=None):
    k = max(n_classes, 2)
    _, valid = ref_targets(y, k)
    ys = np.asarray(y).reshape(valid.shape)
    probs = ref_class_probs(p, n_classes)
    num = den = 0.0
    for idx in np.ndindex(valid.shape):
        if valid[idx]:
            c = int(ys[idx])
            wc = 1.0 if w is None else w[c]
            num += wc * -math.log(max(probs[idx][c], 1e-7))
            den += wc
    return num / den if den else 0.0


def ref_binary_channels(y, p, n_classes):
    """Targets and probabilities of the per-channel binary view."""
    k = max(n_classes, 2)
    oh, valid = ref_targets(y, k)
    p = np.asarray(p, np.float64)
    t = oh[..., 1:] if n_classes == 1 else oh
    return t, p, valid


def ref_bce(y, p, n_classes):
    t, p, valid = ref_binary_channels(y, p, n_classes)
    lp, l1p = np.log(np.clip(p, 1e-7, 1)), np.log(np.clip(1 - p, 1e-7, 1))
    e = -(t * lp + (1 - t) * l1p)
    return e[valid].sum() / (valid.sum() * p.shape[-1]) if valid.any() else 0.0


def ref_b_focal(y, p, n_classes, alpha=0.25, gamma=2.0):
    t, p, valid = ref_binary_channels(y, p, n_classes)
    lp, l1p = np.log(np.clip(p, 1e-7, 1)), np.log(np.clip(1 - p, 1e-7, 1))
    e = -(alpha * t * (1 - p) ** gamma * lp + (1 - alpha) * (1 - t) * p**gamma * l1p)
    return e[valid].sum() / (valid.sum() * p.shape[-1]) if valid.any() else 0.0


def ref_c_focal(y, p, n_classes, alpha=0.25, gamma=2.0, w=None):
    k = max(n_classes, 2)
    oh, valid = ref_targets(y, k)
    probs = ref_class_probs(p, n_classes)
    a = np.full(k, alpha) if w is None else np.asarray(w, np.float64)
    total = 0.0
    for idx in np.ndindex(valid.shape):
        if valid[idx]:
            for c in range(k):
                pc = probs[idx][c]
                total += -a[c] * oh[idx][c] * (1 - pc) ** gamma * math.log(max(pc, 1e-7))
    return total / valid.sum() if valid.any() else 0.0


def ref_groups(y, p, n_classes, per_image):
    """Per group (image, or the whole batch): (I, Y, P) per class and the valid count."""
    k = max(n_classes, 2)
    oh, valid = ref_targets(y, k)
    probs = ref_class_probs(p, n_classes)
    groups = range(oh.shape[0]) if per_image else [slice(None)]
    out = []
    for g in groups:
        v = valid[g]
        yy = oh[g][v]
        pp = probs[g][v]
        out.append(((yy * pp).sum(0), yy.sum(0), pp.sum(0), v.sum()))
    return out


def ref_mean_over_groups(fn, y, p, n_classes, per_image):
    vals = [fn(i, ys, ps) for i, ys, ps, n in ref_groups(y, p, n_classes, per_image) if n > 0]
    return float(np.mean(vals)) if vals else 0.0


def wmean(s, w):
    return float(np.mean(s)) if w is None else float(np.dot(s, w) / np.sum(w))


def ref_dice(y, p, n_classes, eps=EPS, per_image=False, w=None):
    return ref_mean_over_groups(
        lambda i, ys, ps: 1 - wmean((2 * i + eps) / (ys + ps + eps), w), y, p, n_classes, per_image
    )


def ref_jaccard(y, p, n_classes, eps=EPS, per_image=False, w=None):
    return ref_mean_over_groups(
        lambda i, ys, ps: 1 - wmean((i + eps) / (ys + ps - i + eps), w), y, p, n_classes, per_image
    )


def ref_tversky_index(i, ys, ps, alpha, beta, eps):
    tp, fp, fn = i, ps - i, ys - i
    return (tp + eps) / (tp + alpha * fp + beta * fn + eps)


def ref_tversky(y, p, n_classes, alpha=0.3, beta=0.7, eps=EPS, per_image=False, w=None):
    return ref_mean_over_groups(
        lambda i, ys, ps: 1 - wmean(ref_tversky_index(i, ys, ps, alpha, beta, eps), w),
        y, p, n_classes, per_image,
    )


def ref_f_tversky(y, p, n_classes, alpha=0.3, beta=0.7, gamma=0.75, eps=EPS, per_image=False, w=None):
    return ref_mean_over_groups(
        lambda i, ys, ps: wmean(
            np.maximum(1 - ref_tversky_index(i, ys, ps, alpha, beta, eps), 0) ** gamma, w
        ),
        y, p, n_classes, per_image,
    )


def ref_g_dice(y, p, n_classes, per_image=False):
    """Sudre et al. 2017 without smoothing (classes absent: the largest finite weight)."""

    def one(i, ys, ps):
        w = np.array([1 / v**2 if v > 0 else np.nan for v in ys])
        w[np.isnan(w)] = np.nanmax(w)
        return 1 - 2 * np.sum(w * i) / np.sum(w * (ys + ps))

    return ref_mean_over_groups(one, y, p, n_classes, per_image)


def ref_lovasz_class(err, fg):
    """Lovasz extension of the Jaccard loss: sum_i e_(i) (J(S_i) - J(S_{i-1}))."""
    order = np.argsort(-err, kind="stable")
    e, g = err[order], fg[order]
    total, prev = 0.0, 0.0
    for i in range(len(e)):
        inter = g.sum() - g[: i + 1].sum()  # foreground pixels not in the i+1 worst
        union = g.sum() + (1 - g[: i + 1]).sum()
        j = 1 - inter / union
        total += e[i] * (j - prev)
        prev = j
    return total


def ref_lovasz(y, p, n_classes, per_image=False):
    k = max(n_classes, 2)
    oh, valid = ref_targets(y, k)
    probs = ref_class_probs(p, n_classes)
    groups = range(oh.shape[0]) if per_image else [slice(None)]
    vals = []
    for g in groups:
        v = valid[g]
        yy, pp = oh[g][v], probs[g][v]
        per_class = [ref_lovasz_class(np.abs(yy[:, c] - pp[:, c]), yy[:, c]) for c in range(k) if yy[:, c].sum() > 0]
        if per_class:
            vals.append(np.mean(per_class))
    return float(np.mean(vals)) if vals else 0.0


W3 = [0.5, 1.0, 2.0]


def ref_value(name, y, p, n_classes, **kw):
    """Reference value of a registered loss (weighted_ce uses its class weights)."""
    w = kw.get("class_weights")
    region = dict(per_image=kw.get("per_image", False), w=w)
    if name == "ce":
        return ref_ce(y, p, n_classes, w)
    if name == "weighted_ce":
        return ref_ce(y, p, n_classes, w)
    if name == "b_focal":
        return ref_b_focal(y, p, n_classes)
    if name == "c_focal":
        return ref_c_focal(y, p, n_classes, w=w)
    if name == "dice":
        return ref_dice(y, p, n_classes, **region)
    if name == "jaccard":
        return ref_jaccard(y, p, n_classes, **region)
    if name == "g_dice":
        return ref_g_dice(y, p, n_classes, per_image=region["per_image"])
    if name == "tversky":
        return ref_tversky(y, p, n_classes, **region)
    if name == "f_tversky":
        return ref_f_tversky(y, p, n_classes, **region)
    if name == "bce_dice":
        return ref_bce(y, p, n_classes) + ref_dice(y, p, n_classes, **region)
    if name == "ce_dice":
        return ref_ce(y, p, n_classes, w) + ref_dice(y, p, n_classes, **region)
    if name == "bce_jaccard":
        return ref_bce(y, p, n_classes) + ref_jaccard(y, p, n_classes, **region)
    if name == "ce_jaccard":
        return ref_ce(y, p, n_classes, w) + ref_jaccard(y, p, n_classes, **region)
    if name == "lovasz":
        return ref_lovasz(y, p, n_classes, per_image=region["per_image"])
    raise AssertionError(name)


# --------------------------------------------------------------------------------------
# fixtures


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


@pytest.fixture(scope="module")
def batch3():
    """2 images 6x6, 3 classes, some ignored pixels, class 2 absent from image 1."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, (2, 6, 6))
    y[1][y[1] == 2] = 0
    y[0, 0, :3] = IGN
    y[1, 5, 5] = IGN
    z = rng.normal(0, 1.5, (2, 6, 6, 3)).astype("float32")
    return y.astype("int32"), z, softmax(z).astype("float32")


@pytest.fixture(scope="module")
def batch1():
    """Binary (sigmoid) batch: labels 0/1 with ignored pixels."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (2, 5, 5))
    y[0, 2, :2] = IGN
    z = rng.normal(0, 1.5, (2, 5, 5, 1)).astype("float32")
    return y.astype("int32"), z, sigmoid(z).astype("float32")


# --------------------------------------------------------------------------------------
# registry


def test_list_losses_has_the_fourteen_names():
    assert list_losses() == sorted(EXPECTED_LOSSES)


def test_unknown_loss_lists_valid_names():
    with pytest.raises(UnknownNameError, match="unknown loss 'dices'.*ce_dice.*lovasz"):
        get_loss("dices", 3)
    with pytest.raises(UnknownNameError, match="unknown loss 'foo'"):
        get_loss("ce+0.5*foo", 3)


@pytest.mark.parametrize("spec", ["ce++dice", "ce+", "0.5*", "*dice", "ce*0.5", "0.5 dice", "-1*ce"])
def test_malformed_composite_is_a_one_line_error(spec):
    with pytest.raises(KsegError, match="cannot read loss") as e:
        get_loss(spec, 3)
    assert "\n" not in str(e.value)


def test_option_not_taken_is_named():
    with pytest.raises(KsegError, match="does not take option 'gamma'"):
        get_loss("dice", 3, gamma=2.0)
    with pytest.raises(KsegError, match="does not take option 'per_image'"):
        get_loss("ce+c_focal", 3, per_image=True)
    with pytest.raises(KsegError, match="'b_focal' does not take option 'class_weights'"):
        get_loss("b_focal", 3, class_weights=W3)


def test_weighted_ce_requires_class_weights():
    with pytest.raises(KsegError, match="--class_weights auto"):
        get_loss("weighted_ce", 3)


def test_bad_class_weights_are_errors():
    with pytest.raises(KsegError, match="3 are needed"):
        get_loss("ce", 3, class_weights=[1, 2])
    with pytest.raises(KsegError, match="2 are needed.*background, foreground"):
        get_loss("dice", 1, class_weights=[1.0])
    with pytest.raises(KsegError, match="kseg.data.stats.class_weights"):
        get_loss("ce", 3, class_weights="auto")
    with pytest.raises(KsegError, match=">= 0"):
        get_loss("ce", 3, class_weights=[1, -1, 1])
    with pytest.raises(KsegError, match="list of 3 numbers"):
        get_loss("ce", 3, class_weights=["a", "b", "c"])


# --------------------------------------------------------------------------------------
# hand-computed cases


def test_hand_computed_two_class_2x2():
    # one 2x2 image, labels [[0, 1], [1, ignore]], p(class 1) = [[.2, .6], [.9, .5]]
    y = np.array([[[0, 1], [1, IGN]]])
    p1 = np.array([[[0.2, 0.6], [0.9, 0.5]]])
    p = np.stack([1 - p1, p1], -1).astype("float32")
    # ce = -(log .8 + log .6 + log .9) / 3 (the ignored pixel is left out)
    ce = -(math.log(0.8) + math.log(0.6) + math.log(0.9)) / 3
    assert value(get_loss("ce", 2), y, p) == pytest.approx(ce, rel=1e-6)
    # weights [1, 3]: (1 * -log .8 + 3 * -log .6 + 3 * -log .9) / (1 + 3 + 3)
    wce = (-math.log(0.8) - 3 * math.log(0.6) - 3 * math.log(0.9)) / 7
    assert value(get_loss("weighted_ce", 2, class_weights=[1, 3]), y, p) == pytest.approx(wce, rel=1e-6)
    # class 0: I = .8, Y = 1, P = .8+.4+.1 = 1.3; class 1: I = .6+.9 = 1.5, Y = 2, P = .2+.6+.9 = 1.7
    d0, d1 = 2 * 0.8 / (1 + 1.3), 2 * 1.5 / (2 + 1.7)
    assert value(get_loss("dice", 2, eps=0), y, p) == pytest.approx(1 - (d0 + d1) / 2, rel=1e-6)
    j0, j1 = 0.8 / (1 + 1.3 - 0.8), 1.5 / (2 + 1.7 - 1.5)
    assert value(get_loss("jaccard", 2, eps=0), y, p) == pytest.approx(1 - (j0 + j1) / 2, rel=1e-6)
    # tversky: class 0 TP=.8 FP=.5 FN=.2; class 1 TP=1.5 FP=.2 FN=.5
    t0 = 0.8 / (0.8 + 0.3 * 0.5 + 0.7 * 0.2)
    t1 = 1.5 / (1.5 + 0.3 * 0.2 + 0.7 * 0.5)
    assert value(get_loss("tversky", 2, eps=0), y, p) == pytest.approx(1 - (t0 + t1) / 2, rel=1e-6)
    ft = ((1 - t0) ** 0.75 + (1 - t1) ** 0.75) / 2
    assert value(get_loss("f_tversky", 2, eps=0), y, p) == pytest.approx(ft, rel=1e-5)
    # g_dice: w0 = 1/1, w1 = 1/4 -> 1 - 2(.8 + 1.5/4) / (2.3 + 3.7/4)
    gd = 1 - 2 * (0.8 + 1.5 / 4) / (2.3 + 3.7 / 4)
    assert value(get_loss("g_dice", 2, eps=0), y, p) == pytest.approx(gd, rel=1e-5)
    # c_focal: -.25 * [(.2)^2 log .8 + (.4)^2 log .6 + (.1)^2 log .9] / 3
    cf = -0.25 * (0.04 * math.log(0.8) + 0.16 * math.log(0.6) + 0.01 * math.log(0.9)) / 3
    assert value(get_loss("c_focal", 2), y, p) == pytest.approx(cf, rel=1e-5)


def test_hand_computed_sigmoid_channel_matches_two_class_form():
    # same case as a single sigmoid channel: ce is the binary cross-entropy
    y = np.array([[[0, 1], [1, IGN]]])
    p = np.array([[[0.2, 0.6], [0.9, 0.5]]])[..., None].astype("float32")
    bce = -(math.log(0.8) + math.log(0.6) + math.log(0.9)) / 3
    assert value(get_loss("ce", 1), y, p) == pytest.approx(bce, rel=1e-6)
    d0, d1 = 2 * 0.8 / (1 + 1.3), 2 * 1.5 / (2 + 1.7)
    dice = 1 - (d0 + d1) / 2
    assert value(get_loss("dice", 1, eps=0), y, p) == pytest.approx(dice, rel=1e-6)
    # bce_dice: the BCE term uses the single channel (same numbers), plus the 2-class dice
    assert value(get_loss("bce_dice", 1, eps=0), y, p) == pytest.approx(bce + dice, rel=1e-6)
    # b_focal on the single channel: y=0,p=.2: -.75 * .2^2 log .8; y=1,p=.6: -.25 * .4^2 log .6;
    # y=1,p=.9: -.25 * .1^2 log .9
    bf = -(0.75 * 0.04 * math.log(0.8) + 0.25 * 0.16 * math.log(0.6) + 0.25 * 0.01 * math.log(0.9)) / 3
    assert value(get_loss("b_focal", 1), y, p) == pytest.approx(bf, rel=1e-5)


def test_hand_computed_lovasz_on_hard_predictions_is_one_minus_iou():
    # For 0/1 predictions the Lovasz extension equals the Jaccard loss itself.
    # labels [[0, 0, 1], [1, 2, 2]], predicted [[0, 1, 1], [1, 2, 0]]:
    # IoU0 = 1/3 (tp 1, gt 2, pred 2), IoU1 = 2/3 (tp 2, gt 2, pred 3), IoU2 = 1/2 (tp 1, gt 2, pred 1)
    y = np.array([[[0, 0, 1], [1, 2, 2]]])
    pred = np.array([[[0, 1, 1], [1, 2, 0]]])
    p = np.eye(3, dtype="float32")[pred]
    expected = 1 - (1 / 3 + 2 / 3 + 1 / 2) / 3
    assert value(get_loss("lovasz", 3), y, p) == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------------------
# every loss against the numpy reference


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_matches_reference_multiclass(name, batch3):
    y, _, p = batch3
    kw = {"class_weights": W3} if name == "weighted_ce" else {}
    assert value(make_loss(name, 3, **kw), y, p) == pytest.approx(
        ref_value(name, y, p, 3, **kw), rel=2e-5, abs=1e-6
    )


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_matches_reference_sigmoid(name, batch1):
    y, _, p = batch1
    kw = {"class_weights": [0.5, 1.0]} if name == "weighted_ce" else {}
    assert value(make_loss(name, 1, **kw), y, p) == pytest.approx(
        ref_value(name, y, p, 1, **kw), rel=2e-5, abs=1e-6
    )


@pytest.mark.parametrize(
    "name", ["ce", "c_focal", "dice", "jaccard", "tversky", "f_tversky", "ce_dice", "bce_jaccard"]
)
def test_matches_reference_with_class_weights(name, batch3):
    y, _, p = batch3
    assert value(get_loss(name, 3, class_weights=W3), y, p) == pytest.approx(
        ref_value(name, y, p, 3, class_weights=W3), rel=2e-5, abs=1e-6
    )


@pytest.mark.parametrize(
    "name", ["dice", "jaccard", "g_dice", "tversky", "f_tversky", "bce_dice", "lovasz"]
)
def test_matches_reference_per_image(name, batch3):
    y, _, p = batch3
    got = value(get_loss(name, 3, per_image=True), y, p)
    assert got == pytest.approx(ref_value(name, y, p, 3, per_image=True), rel=2e-5, abs=1e-6)
    # and per_image really changes the value on this batch
    assert got != pytest.approx(ref_value(name, y, p, 3, per_image=False), rel=1e-4)


def test_per_image_skips_images_without_valid_pixels(batch3):
    y, _, p = batch3
    y2 = y.copy()
    y2[1] = IGN  # the second image is entirely ignored
    got = value(get_loss("dice", 3, per_image=True), y2, p)
    assert got == pytest.approx(ref_dice(y[:1], p[:1], 3), rel=1e-5)


def test_options_change_values_as_defined(batch3):
    y, _, p = batch3
    assert value(get_loss("tversky", 3, alpha=0.5, beta=0.5), y, p) == pytest.approx(
        ref_tversky(y, p, 3, alpha=0.5, beta=0.5), rel=1e-5
    )
    # alpha = beta = 0.5 makes Tversky the dice loss
    assert value(get_loss("tversky", 3, alpha=0.5, beta=0.5, eps=0), y, p) == pytest.approx(
        ref_dice(y, p, 3, eps=0), rel=1e-5
    )
    assert value(get_loss("b_focal", 3, alpha=0.5, gamma=0.0), y, p) == pytest.approx(
        0.5 * ref_bce(y, p, 3), rel=1e-5
    )
    assert value(get_loss("c_focal", 3, alpha=1.0, gamma=0.0), y, p) == pytest.approx(
        ref_ce(y, p, 3), rel=1e-5
    )
    assert value(get_loss("f_tversky", 3, gamma=1.0), y, p) == pytest.approx(
        ref_tversky(y, p, 3), rel=1e-5
    )
    assert value(get_loss("dice", 3, eps=1.0), y, p) == pytest.approx(ref_dice(y, p, 3, eps=1.0), rel=1e-5)


# --------------------------------------------------------------------------------------
# input forms


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_sparse_channel_and_one_hot_targets_agree(name, batch3):
    y, _, p = batch3
    loss = make_loss(name, 3)
    ref = value(loss, y, p)
    assert value(loss, y[..., None], p) == pytest.approx(ref, rel=1e-6, abs=1e-7)
    onehot, _ = ref_targets(y, 3)  # ignored pixels: all-zero rows
    assert value(loss, onehot.astype("float32"), p) == pytest.approx(ref, rel=1e-6, abs=1e-7)
    assert value(loss, y.astype("uint8"), p) == pytest.approx(ref, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.parametrize("n_classes", [3, 1])
def test_logits_match_probabilities(name, n_classes, batch3, batch1):
    y, z, p = batch3 if n_classes == 3 else batch1
    a = value(make_loss(name, n_classes), y, p)
    b = value(make_loss(name, n_classes, from_logits=True), y, z)
    assert b == pytest.approx(a, rel=1e-4, abs=1e-6)


def test_logits_are_not_clipped():
    # a confidently wrong pixel: the logit loss keeps growing where probabilities saturate
    y = np.zeros((1, 1, 1), "int32")
    z = np.array([[[[0.0, 60.0]]]], "float32")
    assert value(get_loss("ce", 2, from_logits=True), y, z) == pytest.approx(60.0, rel=1e-5)
    z1 = np.array([[[[60.0]]]], "float32")
    assert value(get_loss("ce", 1, from_logits=True), y, z1) == pytest.approx(60.0, rel=1e-5)


def test_ignore_index_option_and_out_of_range_labels(batch3):
    y, _, p = batch3
    y7 = np.where(y == IGN, 7, y)
    assert value(get_loss("ce_dice", 3, ignore_index=7), y7, p) == pytest.approx(
        value(get_loss("ce_dice", 3), y, p), rel=1e-6
    )
    # 7 with the default ignore index is out of range for 3 classes: not counted either
    assert value(get_loss("ce_dice", 3), y7, p) == pytest.approx(value(get_loss("ce_dice", 3), y, p), rel=1e-6)


def test_mixed_precision_prediction_is_cast_to_float32(batch3):
    y, _, p = batch3
    out = get_loss("ce+dice", 3)(y, p.astype("float16"))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert float(out) == pytest.approx(ref_ce(y, p.astype("float16"), 3) + ref_dice(y, p.astype("float16"), 3), rel=1e-4)


def test_bad_target_shape_is_an_error(batch3):
    _, _, p = batch3
    with pytest.raises(KsegError, match=r"y_true must be.*\(2, 6, 6, 2\)"):
        get_loss("dice", 3)(np.zeros((2, 6, 6, 2)), p)


# --------------------------------------------------------------------------------------
# edge cases: perfect, worst, absent classes, everything ignored


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_perfect_prediction_gives_zero(name):
    y = np.array([[[0, 1, 2], [2, 1, IGN]]])
    p = np.eye(3, dtype="float32")[np.where(y == IGN, 0, y)]
    assert value(make_loss(name, 3), y, p) == pytest.approx(0.0, abs=1e-5)


def test_worst_prediction_values():
    # every valid pixel gets probability 1 on a wrong class; every class present
    y = np.array([[[0, 1, 2], [2, 1, IGN]]])
    wrong = np.array([[[1, 2, 0], [0, 0, 1]]])
    p = np.eye(3, dtype="float32")[wrong]
    assert value(get_loss("ce", 3), y, p) == pytest.approx(-math.log(1e-7), rel=1e-5)
    for name in ["dice", "jaccard", "tversky", "f_tversky", "g_dice", "lovasz"]:
        assert value(get_loss(name, 3, eps=0) if name not in ("lovasz",) else get_loss(name, 3), y, p) == pytest.approx(1.0, abs=1e-6), name
    # with the default eps the dice of a worst prediction is 1 - eps / (Y + P + eps) per class
    got = value(get_loss("dice", 3), y, p)
    expected = 1 - np.mean([EPS / (1 + 2 + EPS), EPS / (2 + 2 + EPS), EPS / (2 + 1 + EPS)])
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ALL_LOSSES + ["ce+dice", "c_focal+0.5*lovasz"])
@pytest.mark.parametrize("from_logits", [False, True])
def test_absent_class_and_all_ignored_are_finite(name, from_logits, batch3):
    y, z, p = batch3
    pred = z if from_logits else p
    loss = make_loss(name, 3, from_logits=from_logits)
    # class 2 absent from the whole batch
    y_abs = np.where(y == 2, 0, y)
    v = value(loss, y_abs, pred)
    assert np.isfinite(v)
    assert np.isfinite(gradient(loss, y_abs, pred)).all()
    # every pixel ignored: zero loss, finite zero gradient
    y_ign = np.full_like(y, IGN)
    assert value(loss, y_ign, pred) == 0.0
    g = gradient(loss, y_ign, pred)
    assert np.isfinite(g).all() and np.abs(g).max() == 0.0


def test_g_dice_absent_class_takes_largest_weight():
    # 2 pixels of class 0, 1 of class 1, class 2 absent: w0 = 1/4, w1 = 1, w2 = 1 (the largest)
    y = np.array([[[0, 0, 1]]])
    p = np.array([[[[0.6, 0.3, 0.1], [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]]]], "float32")
    i = np.array([0.6 + 0.5, 0.5, 0.0])
    ys = np.array([2.0, 1.0, 0.0])
    ps = p[0, 0].sum(0)
    w = np.array([0.25, 1.0, 1.0])
    expected = 1 - 2 * np.sum(w * i) / np.sum(w * (ys + ps))
    assert value(get_loss("g_dice", 3, eps=0), y, p) == pytest.approx(expected, rel=1e-5)


def test_extreme_logits_give_finite_gradients():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, (1, 4, 4))
    z = rng.choice([-80.0, 0.0, 80.0], size=(1, 4, 4, 3)).astype("float32")
    for name in ALL_LOSSES:
        loss = make_loss(name, 3, from_logits=True)
        assert np.isfinite(value(loss, y, z)), name
        assert np.isfinite(gradient(loss, y, z)).all(), name


# --------------------------------------------------------------------------------------
# composites


def test_composite_is_the_weighted_sum(batch3):
    y, _, p = batch3
    assert value(get_loss("ce+dice", 3), y, p) == pytest.approx(ref_ce(y, p, 3) + ref_dice(y, p, 3), rel=1e-5)
    assert value(get_loss("c_focal+0.5*dice", 3), y, p) == pytest.approx(
        ref_c_focal(y, p, 3) + 0.5 * ref_dice(y, p, 3), rel=1e-5
    )
    assert value(get_loss(" 0.7*ce + .3 * lovasz ", 3), y, p) == pytest.approx(
        0.7 * ref_ce(y, p, 3) + 0.3 * ref_lovasz(y, p, 3), rel=1e-5
    )
    assert value(get_loss("CE+Dice", 3), y, p) == pytest.approx(ref_ce(y, p, 3) + ref_dice(y, p, 3), rel=1e-5)


def test_composite_gives_each_term_the_options_it_takes(batch3):
    y, _, p = batch3
    loss = get_loss("c_focal+2*tversky", 3, gamma=1.0, alpha=0.5, per_image=True, class_weights=W3)
    assert isinstance(loss, CompositeLoss)
    # c_focal takes gamma, alpha (replaced by the class weights) and class_weights; tversky
    # takes alpha, per_image, class_weights
    expected = ref_c_focal(y, p, 3, gamma=1.0, w=W3) + 2 * ref_tversky(
        y, p, 3, alpha=0.5, per_image=True, w=W3
    )
    assert value(loss, y, p) == pytest.approx(expected, rel=1e-5)


def test_single_name_returns_the_plain_loss():
    loss = get_loss("dice", 3)
    assert type(loss).__name__ == "DiceLoss" and loss.name == "dice"
    assert isinstance(get_loss("1.5*dice", 3), CompositeLoss)


# --------------------------------------------------------------------------------------
# serialisation and Keras integration


@pytest.mark.parametrize("spec", ALL_LOSSES + ["c_focal+0.5*dice"])
def test_config_round_trip(spec, batch3):
    y, _, p = batch3
    kw = {"class_weights": np.array(W3)} if spec in ("weighted_ce", "c_focal+0.5*dice") else {}
    loss = get_loss(spec, 3, ignore_index=IGN, **kw)
    config = keras.saving.serialize_keras_object(loss)
    json.dumps(config)  # plain JSON values only
    again = keras.saving.deserialize_keras_object(config)
    assert type(again) is type(loss)
    assert value(again, y, p) == pytest.approx(value(loss, y, p), rel=1e-7)


def tiny_model(n_classes, size=16, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    out = keras.layers.Conv2D(n_classes, 1, name="c2")(h)
    act = "sigmoid" if n_classes == 1 else "softmax"
    return keras.Model(inp, keras.layers.Activation(act, name="act")(out))


def tiny_data(n_classes, size=16, seed=0):
    """A learnable batch: the label is a function of the input colours, a few pixels ignored."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, size, size, 3)).astype("float32")
    k = max(n_classes, 2)
    y = np.argmax(x[..., :k] if k <= 3 else np.concatenate([x, -x], -1)[..., :k], axis=-1)
    y[0, :2, :2] = IGN
    return x, y.astype("int32")


def test_fit_reports_exactly_the_loss_and_compiled_model_round_trips(tmp_path):
    x, y = tiny_data(3)
    model = tiny_model(3)
    loss = get_loss("ce+0.5*dice", 3, class_weights=W3)
    model.compile(keras.optimizers.SGD(0.0), loss=loss)
    hist = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    pred = model.predict(x, verbose=0)
    expected = ref_ce(y, pred, 3, W3) + 0.5 * ref_dice(y, pred, 3, w=W3)
    assert hist.history["loss"][0] == pytest.approx(expected, rel=1e-5)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=True)
    assert isinstance(loaded.loss, CompositeLoss)
    assert loaded.loss.get_config()["terms"] == loss.get_config()["terms"]
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(expected, rel=1e-5)


def train_steps(model, loss, x, y, steps=8, lr=0.05):
    """A few Adam steps on one fixed batch (TensorFlow eager); returns the loss per step."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("training loop written for the TensorFlow backend (JAX: test_losses_jax.py)")
    import tensorflow as tf

    opt = keras.optimizers.Adam(lr)
    hist = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            value_ = loss(y, model(x, training=True))
        grads = tape.gradient(value_, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        hist.append(float(value_))
    return hist


@pytest.mark.parametrize("name", ALL_LOSSES + ["c_focal+0.5*dice"])
def test_every_loss_trains(name):
    x, y = tiny_data(3)
    hist = train_steps(tiny_model(3), make_loss(name, 3), x, y)
    assert all(np.isfinite(hist))
    assert hist[-1] < hist[0] * 0.95, hist


@pytest.mark.parametrize("name", ["ce", "b_focal", "dice", "bce_jaccard", "lovasz"])
def test_sigmoid_model_trains(name):
    x, y = tiny_data(1)
    hist = train_steps(tiny_model(1), get_loss(name, 1), x, y[..., None])
    assert hist[-1] < hist[0] * 0.95, hist


def test_targets_with_unknown_static_shape_in_a_graph(batch3):
    # a tf.data pipeline can give labels of unknown static shape (B, H, W, ?): taken as (B, H, W, 1)
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow graph check")
    import tensorflow as tf

    y, _, p = batch3
    loss = get_loss("lovasz+dice", 3, per_image=True)
    fn = tf.function(
        lambda a, b: loss(a, b),
        input_signature=[tf.TensorSpec([None] * 4, tf.int32), tf.TensorSpec([None, None, None, 3], tf.float32)],
    )
    expected = ref_lovasz(y, p, 3, per_image=True) + ref_dice(y, p, 3, per_image=True)
    assert float(fn(y[..., None], p)) == pytest.approx(expected, rel=1e-5)
