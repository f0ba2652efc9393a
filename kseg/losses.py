"""The segmentation loss suite.

``get_loss(name, n_classes=C, **options)`` returns a Keras loss by name, or the
weighted sum of several (``"ce+dice"``, ``"c_focal+0.5*dice"``,
``"0.7*ce + 0.3*lovasz"``); ``list_losses()`` lists the names. Every loss is a
registered ``keras.losses.Loss`` subclass with ``get_config``, so a compiled model
saved to ``.keras`` loads back with ``compile=True`` and no ``custom_objects``.
Only ``keras.ops`` is used: the losses run on the TensorFlow, JAX and PyTorch
backends.

Inputs, shared by every loss:

* ``y_true``: sparse class indices ``(B, H, W)`` or ``(B, H, W, 1)``, or one-hot
  ``(B, H, W, C)``. Sparse pixels equal to ``ignore_index`` (default 255, ``None``
  for none) or outside ``0..K-1`` are ignored; so are one-hot rows that are all
  zero. Ignored pixels contribute nothing to any term.
* ``y_pred``: probabilities ``(B, H, W, C)`` (softmax; sigmoid when C == 1), or
  logits with ``from_logits=True``, in which case logarithms come from
  ``log_softmax`` / ``log_sigmoid`` (no clipping of the probabilities).
  ``y_pred`` is cast to float32 (mixed precision).
* Single sigmoid channel (``n_classes == 1``): ``y_true`` holds 0/1 (and the
  ignore value). The binary losses (``b_focal`` and the BCE term of ``bce_dice``
  / ``bce_jaccard``) use that channel as it is; every other loss uses the
  two-class form ``[1 - p, p]`` (background, foreground), so ``ce`` is the binary
  cross-entropy, and ``class_weights`` then has two entries (background,
  foreground).

Definitions (y = one-hot target, p = probability; sums run over the valid
pixels of the batch, or of each image when ``per_image=True``; ``mean_c`` is the
mean over classes, weighted by ``class_weights`` when given):

* ``ce``: ``sum_i w_{y_i} (-log p_{i,y_i}) / sum_i w_{y_i}``.
* ``weighted_ce``: ``ce`` with (required) class weights.
* ``b_focal``: each channel a binary problem,
  ``-[a y (1-p)^g log p + (1-a)(1-y) p^g log(1-p)]``, mean over valid pixels and
  channels (``a = 0.25``, ``g = 2``).
* ``c_focal``: ``-sum_c a_c y_c (1-p_c)^g log p_c``, mean over valid pixels
  (``a_c = alpha``, or ``class_weights[c]`` when given).
* ``dice``: ``1 - mean_c (2 I_c + eps) / (Y_c + P_c + eps)`` with
  ``I = sum y p``, ``Y = sum y``, ``P = sum p``.
* ``jaccard``: ``1 - mean_c (I_c + eps) / (Y_c + P_c - I_c + eps)``.
* ``g_dice`` (Sudre et al. 2017): ``1 - 2 sum_c w_c I_c / sum_c w_c (Y_c + P_c)``,
  ``w_c = 1 / Y_c^2``; a class absent from the target takes the largest finite
  weight. (Computed with the weights normalised to sum 1 and ``eps`` added to
  the numerator and denominator, which leaves the value unchanged up to eps.)
* ``tversky`` (Salehi et al. 2017): ``1 - mean_c TI_c``,
  ``TI = (TP + eps) / (TP + alpha FP + beta FN + eps)``, ``alpha = 0.3``,
  ``beta = 0.7``.
* ``f_tversky`` (Abraham & Khan 2019): ``mean_c (1 - TI_c)^gamma``, ``gamma = 0.75``.
* ``bce_dice`` = BCE (mean over valid pixels and channels) + ``dice``;
  ``ce_dice`` = ``ce`` + ``dice``; ``bce_jaccard``; ``ce_jaccard``.
* ``lovasz`` (Berman et al. 2018): the Lovasz-softmax loss, the Lovasz extension
  of the Jaccard loss applied to the sorted errors ``|y_c - p_c|``, averaged over
  the classes present in the target.

``per_image=True`` computes a region loss per image and averages over the
images that have at least one valid pixel.

Sample weights (``loss(y_true, y_pred, sample_weight)``, ``model.fit(x, y,
sample_weight=...)``):

* Shapes: per image ``(B,)`` or ``(B, 1)``, per pixel ``(B, H, W)`` or
  ``(B, H, W, 1)``; an image's weight is the weight of each of its pixels.
  Weights must be >= 0. The loss applies them itself and returns the weighted
  scalar (Keras does not multiply it again).
* Every loss stays a weighted *mean*: weights are normalised by their sum (as
  Keras' ``reduction="mean_with_sample_weight"``), not by the number of samples
  (Keras' default ``"sum_over_batch_size"``, with which ``CategoricalCrossentropy``
  gives half the first sample's loss for weights ``[1, 0]`` and ``c`` times the
  loss for weights times ``c``). So: all-ones weights give exactly the unweighted
  value; multiplying every weight by ``c > 0`` changes nothing; weights ``[1, 0]``
  give the loss of a batch holding the first image alone; a pixel of weight 0 is
  left out as if it held ``ignore_index``.
* Pixel losses (``ce``, ``weighted_ce``, ``b_focal``, ``c_focal`` and the CE/BCE
  terms of the combined losses) multiply each valid pixel's term by its weight
  ``s_i`` and divide by the weighted count: ``ce = sum_i s_i w_{y_i} (-log
  p_{i,y_i}) / sum_i s_i w_{y_i}``; ``b_focal`` and BCE divide by ``K sum_i s_i``
  (``K`` channels), ``c_focal`` by ``sum_i s_i``. Per-image weights thus weight
  the pixels of each image (images are pooled by pixels, as without weights).
* Region losses (``dice``, ``jaccard``, ``tversky``, ``f_tversky``, ``g_dice``,
  ``lovasz`` and the region terms of the combined losses) use weighted soft
  counts: ``I_c = sum_i q_i y_ic p_ic``, ``Y_c = sum_i q_i y_ic``,
  ``P_c = sum_i q_i p_ic`` with ``q_i = s_i / max_j s_j`` over the valid pixels of
  the group (dividing by the largest weight keeps ``eps`` in pixel units and the
  value independent of the weights' scale); ``lovasz`` is the Lovasz extension
  of the weighted Jaccard loss (a pixel counts ``q_i`` in the intersection and
  the union). Without ``per_image`` the group is the batch, so per-image weights
  scale each image's share of the counts. With ``per_image=True`` each image's
  loss ``L_b`` comes from its own weighted counts and the result is
  ``sum_b m_b L_b / sum_b m_b`` over the images with valid pixels, ``m_b`` the
  largest weight of the image's valid pixels: per-image weights ``w`` give
  ``sum_b w_b L_b / sum_b w_b``.
* A sum (``"ce+0.5*dice"``) weights each term as above and adds them.
"""

import inspect
import math
import re

import numpy as np
import keras
from keras import ops

from kseg.config import IGNORE_INDEX as DEFAULT_IGNORE_INDEX
from kseg.config import label_values
from kseg.errors import LossConfigError, unknown_name

LOG_FLOOR = 1e-7  # probabilities are clipped to [LOG_FLOOR, 1] inside logarithms

__all__ = [
    "get_loss",
    "list_losses",
    "SegmentationLoss",
    "CompositeLoss",
]




# --------------------------------------------------------------------------------------
# class weights (computed from labels by kseg.data.stats; checked here)


def _check_class_weights(class_weights, n_classes, loss_name):
    if class_weights is None:
        return None
    k = label_values(n_classes)
    if isinstance(class_weights, str):
        if class_weights == "auto":
            raise LossConfigError(
                f"loss {loss_name!r}: class_weights='auto' must be computed from the training "
                "labels first (kseg.data.stats.class_weights('auto', class_stats(...), n_classes))"
            )
        raise LossConfigError(
            f"loss {loss_name!r}: class_weights must be a list of {k} numbers or 'auto'; "
            f"received {class_weights!r}"
        )
    try:
        w = [float(v) for v in np.asarray(class_weights, dtype=np.float64).ravel()]
    except (TypeError, ValueError):
        raise LossConfigError(
            f"loss {loss_name!r}: class_weights must be a list of {k} numbers; "
            f"received {class_weights!r}"
        ) from None
    extra = " (background, foreground: a sigmoid model uses the two-class form)" if n_classes == 1 else ""
    if len(w) != k:
        raise LossConfigError(
            f"loss {loss_name!r}: class_weights has {len(w)} values but {k} are needed{extra}; "
            "pass one weight per class"
        )
    if not all(math.isfinite(v) and v >= 0 for v in w) or sum(w) <= 0:
        raise LossConfigError(
            f"loss {loss_name!r}: class_weights must be finite, >= 0 and not all 0; received {w}"
        )
    return w


# --------------------------------------------------------------------------------------
# shared tensor preparation


def _n_out(n_classes):
    return label_values(n_classes)


def _targets(y_true, n_classes, ignore_index):
    """One-hot targets ``(B, H, W, K)`` (zero on ignored pixels) and the valid mask."""
    k = _n_out(n_classes)
    y_true = ops.convert_to_tensor(y_true)
    rank = len(y_true.shape)
    if rank == 4 and y_true.shape[-1] == n_classes and n_classes > 1:
        y = ops.cast(y_true, "float32")
        valid = ops.cast(ops.sum(y, axis=-1) > 0, "float32")
        return y, valid
    if rank == 4 and y_true.shape[-1] in (1, None):  # unknown last axis: taken as (B, H, W, 1)
        y_true = y_true[..., 0]
    elif rank != 3:
        raise LossConfigError(
            f"y_true must be class indices (B, H, W) or (B, H, W, 1), or one-hot "
            f"(B, H, W, {n_classes}); received shape {tuple(y_true.shape)}"
        )
    t = ops.cast(y_true, "int32")
    ok = (t >= 0) & (t < k)
    if ignore_index is not None:
        ok = ok & (t != ignore_index)
    valid = ops.cast(ok, "float32")
    y = ops.one_hot(ops.where(ok, t, 0), k, dtype="float32") * valid[..., None]
    return y, valid


def _log1m_exp(logp):
    """``log(1 - exp(logp))`` for log-probabilities, finite (floored near 1)."""
    return ops.log(-ops.expm1(ops.minimum(logp, -LOG_FLOOR)))


class _Pred:
    """Probabilities and log-probabilities of ``y_pred`` in the views losses need."""

    def __init__(self, y_pred, n_classes, from_logits):
        z = ops.cast(ops.convert_to_tensor(y_pred), "float32")
        self.binary = n_classes == 1
        if from_logits:
            if self.binary:
                self.p = ops.sigmoid(z)
                self.logp = ops.log_sigmoid(z)
                self.log1mp = ops.log_sigmoid(-z)
            else:
                self.logp = ops.log_softmax(z, axis=-1)
                self.p = ops.exp(self.logp)
                self.log1mp = None  # computed on demand
        else:
            self.p = z
            self.logp = ops.log(ops.clip(z, LOG_FLOOR, 1.0))
            self.log1mp = ops.log(ops.clip(1.0 - z, LOG_FLOOR, 1.0))

    def channels(self):
        """Per-channel binary view: ``(p, log p, log(1 - p))`` over the output channels."""
        if self.log1mp is None:
            self.log1mp = _log1m_exp(self.logp)
        return self.p, self.logp, self.log1mp

    def classes(self):
        """Class view ``(p, log p)`` with K classes (``[1 - p, p]`` for one sigmoid channel)."""
        if self.binary:
            return (
                ops.concatenate([1.0 - self.p, self.p], axis=-1),
                ops.concatenate([self.log1mp, self.logp], axis=-1),
            )
        return self.p, self.logp


def _safe_div(num, den):
    return num / ops.where(den > 0, den, 1.0)


def _safe_pow(x, gamma):
    """``x ** gamma`` for ``x >= 0`` with a finite gradient at 0 (0 for ``x <= 0``)."""
    pos = x > 0
    return ops.where(pos, ops.power(ops.where(pos, x, 1.0), gamma), 0.0)


def _weights(class_weights):
    return None if class_weights is None else ops.convert_to_tensor(np.asarray(class_weights, "float32"))


def _class_mean(score, w):
    """Mean over the last (class) axis, weighted by ``w`` when given."""
    if w is None:
        return ops.mean(score, axis=-1)
    return ops.sum(score * w, axis=-1) / ops.sum(w)


def _group_mean(values, n_valid, group_weights=None):
    """Mean over groups (images, or the one batch group) that have valid pixels.

    With ``group_weights`` (sample weights), the mean over those groups is weighted
    by them (a group of weight 0 contributes nothing; all weights 0 gives 0).
    """
    if group_weights is None:
        has = ops.cast(n_valid > 0, "float32")
        return ops.sum(values * has) / ops.maximum(ops.sum(has), 1.0)
    has = n_valid > 0
    num = ops.sum(ops.where(has, values * group_weights, 0.0))
    return _safe_div(num, ops.sum(ops.where(has, group_weights, 0.0)))


def _region_weights(valid, sw, per_image):
    """Pixel weights of the soft counts, and the weight of each group.

    The pixel weights are the sample weights of the valid pixels divided by their
    largest value in the group (so multiplying every weight by a constant changes
    nothing, ``eps`` included); the group's weight is that largest value.
    """
    w = sw * valid
    if per_image:
        top = ops.max(w, axis=(1, 2), keepdims=True)
        group = ops.reshape(top, (-1,))
    else:
        top = ops.max(w)
        group = ops.reshape(top, (1,))
    return _safe_div(w, top), group


def _region_stats(y, p, valid, per_image, sw=None):
    """``I = sum y p``, ``Y = sum y``, ``P = sum p`` per group and class, valid counts, and
    the group weights (``None`` without sample weights).

    With sample weights ``sw`` each valid pixel counts with its normalised weight
    (:func:`_region_weights`) in ``I``, ``Y``, ``P`` and the valid count.
    """
    group = None
    if sw is None:
        pv = p * valid[..., None]
        inter = ops.sum(y * pv, axis=(1, 2))
        ysum = ops.sum(y, axis=(1, 2))
        psum = ops.sum(pv, axis=(1, 2))
        n = ops.sum(valid, axis=(1, 2))
    else:
        q, group = _region_weights(valid, sw, per_image)
        pq = p * q[..., None]
        inter = ops.sum(y * pq, axis=(1, 2))
        ysum = ops.sum(y * q[..., None], axis=(1, 2))
        psum = ops.sum(pq, axis=(1, 2))
        n = ops.sum(q, axis=(1, 2))
    if not per_image:
        inter, ysum, psum = (ops.sum(a, axis=0, keepdims=True) for a in (inter, ysum, psum))
        n = ops.sum(n, axis=0, keepdims=True)
    return inter, ysum, psum, n, group


def _pixel_weights(sample_weight, valid, loss_name):
    """Keras' ``sample_weight`` as float32 pixel weights ``(B, H, W)`` (``None`` stays ``None``).

    Per image ``(B,)`` or ``(B, 1)`` (each image's weight on all its pixels), or per
    pixel ``(B, H, W)`` or ``(B, H, W, 1)``; a scalar applies to every pixel.
    """
    if sample_weight is None:
        return None
    sw = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
    try:
        shape = tuple(sw.shape)
    except ValueError:  # unknown rank: Keras' retraced train step after weights of other shapes
        shape = None
    if shape == ():
        return ops.broadcast_to(sw, ops.shape(valid))
    if shape is not None and not (
        len(shape) in (1, 3)
        or (len(shape) == 2 and shape[1] in (1, None))
        or (len(shape) == 4 and shape[3] in (1, None))
    ):
        raise LossConfigError(
            f"loss {loss_name!r}: sample_weight must be per image (B,) or (B, 1), or per pixel "
            f"(B, H, W) or (B, H, W, 1); received shape {shape}"
        )
    # (B,) / (B, 1) -> (B, 1) and (B, H, W) / (B, H, W, 1) -> (B, H*W), then broadcast:
    # works whether the rank and sizes are known when tracing or only when running
    b, h, w = ops.shape(valid)
    sw = ops.broadcast_to(ops.reshape(sw, (b, -1)), (b, h * w))
    return ops.reshape(sw, (b, h, w))


def _prepare(loss, y_true, y_pred, sample_weight):
    """What ``keras.losses.Loss.__call__`` does before ``call`` (float inputs in the loss
    dtype), then the targets, predictions and pixel weights of a kseg loss."""
    y_pred = ops.convert_to_tensor(y_pred, dtype=loss.dtype)
    y_true = ops.convert_to_tensor(y_true, dtype=loss.dtype)
    y, valid = _targets(y_true, loss.n_classes, loss.ignore_index)
    pred = _Pred(y_pred, loss.n_classes, loss.from_logits)
    return y, valid, pred, _pixel_weights(sample_weight, valid, loss.name)


# --------------------------------------------------------------------------------------
# loss terms (functions of prepared tensors)


def _ce_term(y, valid, pred, class_weights, sw=None):
    _, logp = pred.classes()
    nll = -ops.sum(y * logp, axis=-1)
    w = _weights(class_weights)
    wpix = valid if w is None else ops.sum(y * w, axis=-1)
    if sw is not None:
        wpix = wpix * sw
    return _safe_div(ops.sum(wpix * nll), ops.sum(wpix))


def _binary_y(y, pred):
    """Targets matching the per-channel view (the foreground channel for sigmoid)."""
    return y[..., 1:] if pred.binary else y


def _bce_term(y, valid, pred, sw=None):
    p, logp, log1mp = pred.channels()
    yb = _binary_y(y, pred)
    if sw is not None:
        valid = valid * sw  # pixel weights (zero on ignored pixels)
    per = -(yb * logp + (1.0 - yb) * log1mp) * valid[..., None]
    n = ops.sum(valid) * ops.cast(ops.shape(p)[-1], "float32")
    return _safe_div(ops.sum(per), n)


def _b_focal_term(y, valid, pred, alpha, gamma, sw=None):
    p, logp, log1mp = pred.channels()
    yb = _binary_y(y, pred)
    if sw is not None:
        valid = valid * sw
    per = -(
        alpha * yb * _safe_pow(1.0 - p, gamma) * logp
        + (1.0 - alpha) * (1.0 - yb) * _safe_pow(p, gamma) * log1mp
    ) * valid[..., None]
    n = ops.sum(valid) * ops.cast(ops.shape(p)[-1], "float32")
    return _safe_div(ops.sum(per), n)


def _c_focal_term(y, valid, pred, alpha, gamma, class_weights, sw=None):
    p, logp = pred.classes()
    a = alpha if class_weights is None else _weights(class_weights)
    per = -ops.sum(a * y * _safe_pow(1.0 - p, gamma) * logp, axis=-1)
    if sw is None:
        return _safe_div(ops.sum(per), ops.sum(valid))
    return _safe_div(ops.sum(per * sw), ops.sum(valid * sw))


def _dice_term(y, valid, pred, eps, per_image, class_weights, sw=None):
    p, _ = pred.classes()
    inter, ysum, psum, n, group = _region_stats(y, p, valid, per_image, sw)
    score = (2.0 * inter + eps) / (ysum + psum + eps)
    return _group_mean(1.0 - _class_mean(score, _weights(class_weights)), n, group)


def _jaccard_term(y, valid, pred, eps, per_image, class_weights, sw=None):
    p, _ = pred.classes()
    inter, ysum, psum, n, group = _region_stats(y, p, valid, per_image, sw)
    score = (inter + eps) / (ysum + psum - inter + eps)
    return _group_mean(1.0 - _class_mean(score, _weights(class_weights)), n, group)


def _tversky_index(y, valid, pred, alpha, beta, eps, per_image, sw=None):
    p, _ = pred.classes()
    tp, ysum, psum, n, group = _region_stats(y, p, valid, per_image, sw)
    fp = psum - tp
    fn = ysum - tp
    return (tp + eps) / (tp + alpha * fp + beta * fn + eps), n, group


def _g_dice_term(y, valid, pred, eps, per_image, sw=None):
    p, _ = pred.classes()
    inter, ysum, psum, n, group = _region_stats(y, p, valid, per_image, sw)
    present = ysum > 0
    w = ops.where(present, 1.0 / ops.square(ops.where(present, ysum, 1.0)), 0.0)
    wmax = ops.max(w, axis=-1, keepdims=True)
    w = ops.where(present, w, wmax)  # absent classes: the largest finite weight
    w = ops.where(wmax > 0, w, 1.0)  # nothing present: equal weights
    w = w / ops.sum(w, axis=-1, keepdims=True)
    num = 2.0 * ops.sum(w * inter, axis=-1) + eps
    den = ops.sum(w * (ysum + psum), axis=-1) + eps
    return _group_mean(1.0 - num / den, n, group)


def _lovasz_term(y, valid, pred, per_image, sw=None):
    p, _ = pred.classes()
    k = ops.shape(p)[-1]
    err = ops.abs(y - p) * valid[..., None]
    groups = ops.shape(p)[0] if per_image else 1

    def by_class(a):  # (B, H, W, K) -> (G, K, N)
        return ops.transpose(ops.reshape(a, (groups, -1, k)), (0, 2, 1))

    err = by_class(err)
    gt = by_class(y)
    order = ops.argsort(-err, axis=-1)
    err = ops.take_along_axis(err, order, axis=-1)
    gt = ops.take_along_axis(gt, order, axis=-1)
    group = None
    if sw is None:
        gts = ops.sum(gt, axis=-1, keepdims=True)
        inter = gts - ops.cumsum(gt, axis=-1)
        union = gts + ops.cumsum(1.0 - gt, axis=-1)
        jac = 1.0 - inter / ops.maximum(union, 1e-12)
    else:
        # the Lovasz extension of the weighted Jaccard loss: each pixel counts with
        # its normalised weight q in the intersection and the union
        q, group = _region_weights(valid, sw, per_image)
        q = ops.take_along_axis(by_class(ops.repeat(q[..., None], k, axis=-1)), order, axis=-1)
        gq = gt * q
        gts = ops.sum(gq, axis=-1, keepdims=True)
        inter = gts - ops.cumsum(gq, axis=-1)
        union = gts + ops.cumsum((1.0 - gt) * q, axis=-1)
        jac = 1.0 - _safe_div(inter, union)
    grad = ops.concatenate([jac[..., :1], jac[..., 1:] - jac[..., :-1]], axis=-1)
    per_class = ops.sum(err * grad, axis=-1)  # (G, K)
    present = ops.cast(gts[..., 0] > 0, "float32")
    n_present = ops.sum(present, axis=-1)
    per_group = ops.sum(per_class * present, axis=-1) / ops.maximum(n_present, 1.0)
    return _group_mean(per_group, n_present, group)


# --------------------------------------------------------------------------------------
# loss classes


_LOSSES = {}


def _register(name):
    def deco(cls):
        cls.loss_name = name
        _LOSSES[name] = cls
        return keras.saving.register_keras_serializable(package="kseg")(cls)

    return deco


class SegmentationLoss(keras.losses.Loss):
    """Base class of the kseg losses: prepares targets and predictions, returns a scalar.

    Subclasses implement ``compute(y, valid, pred, sample_weight=None)`` where ``y``
    is the one-hot target ``(B, H, W, K)`` (zero on ignored pixels), ``valid`` the
    ``(B, H, W)`` mask of counted pixels, ``pred`` the predictions in the views a
    loss needs and ``sample_weight`` ``None`` or the ``(B, H, W)`` pixel weights.
    ``loss(y_true, y_pred, sample_weight=None)`` passes Keras' ``sample_weight``
    (per image ``(B,)`` / ``(B, 1)``, per pixel ``(B, H, W)`` / ``(B, H, W, 1)``)
    into the computation, so the scalar it returns is the weighted loss itself
    (Keras never multiplies it); see "Sample weights" in :mod:`kseg.losses`.
    Keras masks on ``y_pred`` are not used (use ``ignore_index`` or pixel weights).

    Args:
        n_classes: number of model output channels (1 = one sigmoid channel).
        ignore_index: target value contributing nothing (``None``: none).
        from_logits: ``y_pred`` holds logits rather than probabilities.
    """

    loss_name = None

    def __init__(self, n_classes, ignore_index=DEFAULT_IGNORE_INDEX, from_logits=False,
                 name=None, reduction="sum", dtype=None):
        super().__init__(name=name or self.loss_name, reduction=reduction, dtype=dtype)
        if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
            raise LossConfigError(
                f"loss {self.loss_name!r}: n_classes must be a positive integer; received {n_classes!r}"
            )
        self.n_classes = int(n_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.from_logits = bool(from_logits)

    @classmethod
    def option_names(cls):
        """The options this loss takes besides n_classes/ignore_index/from_logits."""
        skip = {"self", "n_classes", "ignore_index", "from_logits", "name", "reduction", "dtype"}
        names = []
        for klass in cls.__mro__:
            if klass is SegmentationLoss:
                break
            if "__init__" in vars(klass):
                for p in inspect.signature(klass.__init__).parameters.values():
                    if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in skip and p.name not in names:
                        names.append(p.name)
        return names

    def __call__(self, y_true, y_pred, sample_weight=None):
        with keras.name_scope(self.name):
            y, valid, pred, sw = _prepare(self, y_true, y_pred, sample_weight)
            return ops.convert_to_tensor(self.compute(y, valid, pred, sw), dtype=self.dtype)

    def call(self, y_true, y_pred):
        """The unweighted loss (what ``loss(y_true, y_pred)`` returns)."""
        y, valid = _targets(y_true, self.n_classes, self.ignore_index)
        pred = _Pred(y_pred, self.n_classes, self.from_logits)
        return self.compute(y, valid, pred)

    def compute(self, y, valid, pred, sample_weight=None):
        raise NotImplementedError

    def get_config(self):
        config = {
            **super().get_config(),
            "n_classes": self.n_classes,
            "ignore_index": self.ignore_index,
            "from_logits": self.from_logits,
        }
        for k in self.option_names():
            config[k] = getattr(self, k)
        return config


class _RegionLoss(SegmentationLoss):
    def __init__(self, n_classes, eps=1e-5, per_image=False, class_weights=None, **kwargs):
        super().__init__(n_classes, **kwargs)
        if not eps >= 0:
            raise LossConfigError(f"loss {self.loss_name!r}: eps must be >= 0; received {eps!r}")
        self.eps = float(eps)
        self.per_image = bool(per_image)
        self.class_weights = _check_class_weights(class_weights, self.n_classes, self.loss_name)


@_register("ce")
class CrossEntropy(SegmentationLoss):
    """Categorical cross-entropy, weighted mean over valid pixels.

    ``sum_i w_{y_i} (-log p_{i, y_i}) / sum_i w_{y_i}`` (``w = 1`` by default).
    With one sigmoid channel this is the binary cross-entropy.

    Args:
        n_classes: number of output channels.
        class_weights: optional per-class weights (length K).
        ignore_index, from_logits: see :class:`SegmentationLoss`.
    """

    def __init__(self, n_classes, class_weights=None, **kwargs):
        super().__init__(n_classes, **kwargs)
        self.class_weights = _check_class_weights(class_weights, self.n_classes, self.loss_name)

    def compute(self, y, valid, pred, sample_weight=None):
        return _ce_term(y, valid, pred, self.class_weights, sample_weight)


@_register("weighted_ce")
class WeightedCrossEntropy(CrossEntropy):
    """Cross-entropy with per-class weights (required; e.g. median-frequency balancing)."""

    def __init__(self, n_classes, class_weights=None, **kwargs):
        if class_weights is None:
            raise LossConfigError(
                "loss 'weighted_ce' needs class weights: pass --class_weights auto "
                "(median-frequency balancing) or a list such as --class_weights 0.5,2"
            )
        super().__init__(n_classes, class_weights=class_weights, **kwargs)


@_register("b_focal")
class BinaryFocalLoss(SegmentationLoss):
    """Binary focal loss (Lin et al. 2017) on each channel, mean over valid pixels and channels.

    ``-[alpha y (1-p)^gamma log p + (1-alpha) (1-y) p^gamma log(1-p)]``.
    """

    def __init__(self, n_classes, alpha=0.25, gamma=2.0, **kwargs):
        super().__init__(n_classes, **kwargs)
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def compute(self, y, valid, pred, sample_weight=None):
        return _b_focal_term(y, valid, pred, self.alpha, self.gamma, sample_weight)


@_register("c_focal")
class CategoricalFocalLoss(SegmentationLoss):
    """Categorical focal loss (Lin et al. 2017), mean over valid pixels.

    ``-sum_c alpha_c y_c (1-p_c)^gamma log p_c``; ``alpha_c = alpha`` unless
    ``class_weights`` gives a per-class alpha.
    """

    def __init__(self, n_classes, alpha=0.25, gamma=2.0, class_weights=None, **kwargs):
        super().__init__(n_classes, **kwargs)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.class_weights = _check_class_weights(class_weights, self.n_classes, self.loss_name)

    def compute(self, y, valid, pred, sample_weight=None):
        return _c_focal_term(y, valid, pred, self.alpha, self.gamma, self.class_weights, sample_weight)


@_register("dice")
class DiceLoss(_RegionLoss):
    """Soft dice loss: ``1 - mean_c (2 I_c + eps) / (Y_c + P_c + eps)``."""

    def compute(self, y, valid, pred, sample_weight=None):
        return _dice_term(y, valid, pred, self.eps, self.per_image, self.class_weights, sample_weight)


@_register("jaccard")
class JaccardLoss(_RegionLoss):
    """Soft Jaccard (IoU) loss: ``1 - mean_c (I_c + eps) / (Y_c + P_c - I_c + eps)``."""

    def compute(self, y, valid, pred, sample_weight=None):
        return _jaccard_term(y, valid, pred, self.eps, self.per_image, self.class_weights, sample_weight)


@_register("g_dice")
class GeneralizedDiceLoss(SegmentationLoss):
    """Generalised dice loss (Sudre et al. 2017), class weights ``1 / Y_c^2``.

    ``1 - 2 sum_c w_c I_c / sum_c w_c (Y_c + P_c)``; a class absent from the target
    takes the largest finite weight.
    """

    def __init__(self, n_classes, eps=1e-5, per_image=False, **kwargs):
        super().__init__(n_classes, **kwargs)
        self.eps = float(eps)
        self.per_image = bool(per_image)

    def compute(self, y, valid, pred, sample_weight=None):
        return _g_dice_term(y, valid, pred, self.eps, self.per_image, sample_weight)


@_register("tversky")
class TverskyLoss(_RegionLoss):
    """Tversky loss (Salehi et al. 2017): ``1 - mean_c TI_c``.

    ``TI = (TP + eps) / (TP + alpha FP + beta FN + eps)``; ``beta > alpha``
    penalises false negatives more (better recall on small structures).
    """

    def __init__(self, n_classes, alpha=0.3, beta=0.7, **kwargs):
        super().__init__(n_classes, **kwargs)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def compute(self, y, valid, pred, sample_weight=None):
        ti, n, group = _tversky_index(
            y, valid, pred, self.alpha, self.beta, self.eps, self.per_image, sample_weight
        )
        return _group_mean(1.0 - _class_mean(ti, _weights(self.class_weights)), n, group)


@_register("f_tversky")
class FocalTverskyLoss(_RegionLoss):
    """Focal Tversky loss (Abraham & Khan 2019): ``mean_c (1 - TI_c)^gamma``, gamma = 0.75."""

    def __init__(self, n_classes, alpha=0.3, beta=0.7, gamma=0.75, **kwargs):
        super().__init__(n_classes, **kwargs)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.gamma = float(gamma)

    def compute(self, y, valid, pred, sample_weight=None):
        ti, n, group = _tversky_index(
            y, valid, pred, self.alpha, self.beta, self.eps, self.per_image, sample_weight
        )
        return _group_mean(
            _class_mean(_safe_pow(1.0 - ti, self.gamma), _weights(self.class_weights)), n, group
        )


@_register("bce_dice")
class BCEDiceLoss(_RegionLoss):
    """Binary cross-entropy (per channel) + dice. ``class_weights`` weight the dice term."""

    def compute(self, y, valid, pred, sample_weight=None):
        return _bce_term(y, valid, pred, sample_weight) + _dice_term(
            y, valid, pred, self.eps, self.per_image, self.class_weights, sample_weight
        )


@_register("ce_dice")
class CEDiceLoss(_RegionLoss):
    """Cross-entropy + dice. ``class_weights`` weight both terms."""

    def compute(self, y, valid, pred, sample_weight=None):
        return _ce_term(y, valid, pred, self.class_weights, sample_weight) + _dice_term(
            y, valid, pred, self.eps, self.per_image, self.class_weights, sample_weight
        )


@_register("bce_jaccard")
class BCEJaccardLoss(_RegionLoss):
    """Binary cross-entropy (per channel) + Jaccard. ``class_weights`` weight the Jaccard term."""

    def compute(self, y, valid, pred, sample_weight=None):
        return _bce_term(y, valid, pred, sample_weight) + _jaccard_term(
            y, valid, pred, self.eps, self.per_image, self.class_weights, sample_weight
        )


@_register("ce_jaccard")
class CEJaccardLoss(_RegionLoss):
    """Cross-entropy + Jaccard. ``class_weights`` weight both terms."""

    def compute(self, y, valid, pred, sample_weight=None):
        return _ce_term(y, valid, pred, self.class_weights, sample_weight) + _jaccard_term(
            y, valid, pred, self.eps, self.per_image, self.class_weights, sample_weight
        )


@_register("lovasz")
class LovaszSoftmaxLoss(SegmentationLoss):
    """Lovasz-softmax loss (Berman et al. 2018), a smooth surrogate of the Jaccard loss.

    For each class the errors ``|y_c - p_c|`` of the valid pixels are sorted in
    decreasing order and dotted with the gradient of the Lovasz extension of the
    Jaccard loss; the result is averaged over the classes present in the target
    (of the batch, or of each image with ``per_image=True``).
    """

    def __init__(self, n_classes, per_image=False, **kwargs):
        super().__init__(n_classes, **kwargs)
        self.per_image = bool(per_image)

    def compute(self, y, valid, pred, sample_weight=None):
        return _lovasz_term(y, valid, pred, self.per_image, sample_weight)


# --------------------------------------------------------------------------------------
# composite losses and the registry


_COMMON = ("ignore_index", "from_logits")
_TERM = re.compile(r"^(?:(\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?([a-z_][a-z0-9_]*)$")


def list_losses():
    """Return the sorted names accepted by :func:`get_loss`."""
    return sorted(_LOSSES)


def _parse(spec):
    """``"c_focal+0.5*dice"`` -> ``[(1.0, "c_focal"), (0.5, "dice")]``."""
    terms = []
    for part in str(spec).lower().split("+"):
        m = _TERM.match(part.strip())
        if not m:
            raise LossConfigError(
                f"cannot read loss {spec!r}: write loss names joined by '+', each optionally "
                "prefixed by a weight, e.g. 'ce+dice' or 'c_focal+0.5*dice'"
            )
        weight = float(m.group(1)) if m.group(1) else 1.0
        if m.group(2) not in _LOSSES:
            raise unknown_name("loss", m.group(2), _LOSSES)
        terms.append((weight, m.group(2)))
    return terms


def _split_options(terms, options, spec):
    """Give each term the options it takes; an option no term takes is an error."""
    per_term = [{} for _ in terms]
    for key, value in options.items():
        if key in _COMMON:
            continue
        takers = [i for i, (_, n) in enumerate(terms) if key in _LOSSES[n].option_names()]
        if not takers:
            takes = sorted({o for _, n in terms for o in _LOSSES[n].option_names()} | set(_COMMON))
            raise LossConfigError(
                f"loss {spec!r} does not take option {key!r}; it takes: {', '.join(takes)}"
            )
        for i in takers:
            per_term[i][key] = value
    return per_term


@keras.saving.register_keras_serializable(package="kseg")
class CompositeLoss(keras.losses.Loss):
    """A weighted sum of kseg losses, e.g. ``"c_focal+0.5*dice"``.

    ``loss(y_true, y_pred, sample_weight)`` gives every term the same sample
    weights (see "Sample weights" in :mod:`kseg.losses`) and adds the weighted terms.

    Args:
        terms: list of ``(weight, loss_name, options)``.
        n_classes, ignore_index, from_logits: passed to every term.

    Example:
        >>> loss = CompositeLoss([(1.0, "ce", {}), (0.5, "dice", {"per_image": True})], n_classes=3)
    """

    def __init__(self, terms, n_classes, ignore_index=DEFAULT_IGNORE_INDEX, from_logits=False,
                 name=None, reduction="sum", dtype=None):
        terms = [(float(w), str(n), dict(o or {})) for w, n, o in terms]
        if not terms:
            raise LossConfigError("a composite loss needs at least one term")
        if name is None:
            name = "_".join((n if w == 1 else f"{w:g}x{n}") for w, n, _ in terms)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.terms = terms
        self.n_classes = int(n_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.from_logits = bool(from_logits)
        self.losses = []
        for i, (w, n, opts) in enumerate(terms):
            if n not in _LOSSES:
                raise unknown_name("loss", n, _LOSSES)
            loss = _LOSSES[n](n_classes, ignore_index=ignore_index, from_logits=from_logits, **opts)
            self.losses.append(loss)
            # keep the validated (plain Python) option values, so the config is JSON
            terms[i] = (w, n, {k: getattr(loss, k) for k in opts})

    def __call__(self, y_true, y_pred, sample_weight=None):
        with keras.name_scope(self.name):
            y, valid, pred, sw = _prepare(self, y_true, y_pred, sample_weight)
            return ops.convert_to_tensor(self._total(y, valid, pred, sw), dtype=self.dtype)

    def call(self, y_true, y_pred):
        """The unweighted loss (what ``loss(y_true, y_pred)`` returns)."""
        y, valid = _targets(y_true, self.n_classes, self.ignore_index)
        pred = _Pred(y_pred, self.n_classes, self.from_logits)
        return self._total(y, valid, pred)

    def _total(self, y, valid, pred, sample_weight=None):
        total = 0.0
        for (w, _, _), loss in zip(self.terms, self.losses):
            total = total + w * loss.compute(y, valid, pred, sample_weight)
        return total

    def get_config(self):
        return {
            **super().get_config(),
            "terms": [[w, n, o] for w, n, o in self.terms],
            "n_classes": self.n_classes,
            "ignore_index": self.ignore_index,
            "from_logits": self.from_logits,
        }


def get_loss(name, n_classes=2, **options):
    """Build a loss by name, or a weighted sum of losses.

    Args:
        name: a name from :func:`list_losses`, or a sum such as ``"ce+dice"``,
            ``"c_focal+0.5*dice"`` or ``"0.7*ce + 0.3*lovasz"``.
        n_classes: number of model output channels (1 = one sigmoid channel).
        **options: ``ignore_index`` (default 255), ``from_logits`` (default False)
            and the options of the losses: ``class_weights`` (list of K numbers),
            ``alpha``, ``beta``, ``gamma``, ``eps``, ``per_image``. In a sum, each
            term receives the options it takes; an option no term takes raises
            :class:`LossConfigError` naming it.

    Returns:
        A ``keras.losses.Loss`` returning a scalar; ``loss(y_true, y_pred,
        sample_weight)`` takes per-image or per-pixel weights (see the module
        docstring, "Sample weights").

    Raises:
        UnknownNameError: an unknown loss name (the message lists the valid ones).
        LossConfigError: an option the loss does not take, malformed weights, or
            ``weighted_ce`` without ``class_weights``.

    Example:
        >>> loss = get_loss("c_focal+0.5*dice", n_classes=3, class_weights=[0.5, 1, 2])
        >>> model.compile("adam", loss=loss)
    """
    terms = _parse(name)
    per_term = _split_options(terms, options, name)
    common = {k: options[k] for k in _COMMON if k in options}
    if len(terms) == 1 and terms[0][0] == 1.0:
        return _LOSSES[terms[0][1]](n_classes, **common, **per_term[0])
    return CompositeLoss(
        [(w, n, o) for (w, n), o in zip(terms, per_term)], n_classes, **common
    )
