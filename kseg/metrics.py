"""Segmentation metrics: streaming Keras metrics and a numpy evaluation report.

Two halves share one definition of every score, both built on the confusion
matrix ``cm`` of hard predictions (rows = ground truth, columns = prediction):

* **Keras metrics** (:func:`get_metric`, :func:`list_metrics`) accumulate a
  ``(K, K)`` confusion matrix over everything seen since the last
  ``reset_state`` and compute the score from it, so the value reported for an
  epoch is the score over the whole epoch, not an average of batch scores.
  They use only ``keras.ops`` and run on the TensorFlow (also with
  ``jit_compile=True``), JAX and PyTorch backends.
* **numpy evaluation** (:func:`confusion_matrix`, :func:`segmentation_report`,
  :func:`format_report`) for ``scripts/test.py``: a fast confusion matrix of
  label images and a JSON-serialisable report.

Conventions:

* Predictions are made hard: ``argmax`` over the class axis, or ``p > 0.5``
  (logit ``> 0``) when the model has a single sigmoid channel (``n_classes == 1``),
  in which case the matrix is 2x2 (background, foreground) and the mean runs over
  both classes.
* Pixels whose ground truth is ``ignore_index`` (default 255), or outside
  ``0..K-1``, are not counted. One-hot ground truth rows that are all zero are
  not counted either.
* Per class ``c`` with ``TP = cm[c, c]``, ``FN = sum(cm[c, :]) - TP``,
  ``FP = sum(cm[:, c]) - TP``:
  ``IoU = TP / (TP + FP + FN)``,
  ``F_beta = (1 + beta^2) TP / ((1 + beta^2) TP + beta^2 FN + FP)`` (``F_1`` is
  the dice coefficient). A score is the mean over classes of the per-class score;
  a class with no ground truth and no prediction in everything seen so far is
  left out of the mean. With nothing counted at all the result is 0.
"""

import numpy as np
import keras
from keras import ops

from kseg.config import IGNORE_INDEX as DEFAULT_IGNORE_INDEX
from kseg.config import label_values
from kseg.errors import DataError, KsegError, MetricConfigError, unknown_name

__all__ = [
    "ConfusionMatrixMetric",
    "ClassIoU",
    "IoUScore",
    "FScore",
    "PixelAccuracy",
    "get_metric",
    "list_metrics",
    "confusion_matrix",
    "segmentation_report",
    "format_report",
]




def _matrix_size(n_classes):
    """Number of rows of the confusion matrix: 2 for a single sigmoid channel."""
    return label_values(n_classes)


def _check_n_classes(n_classes, what):
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise MetricConfigError(
            f"{what}: n_classes must be a positive integer; received {n_classes!r}"
        )
    return int(n_classes)


# --------------------------------------------------------------------------------------
# Keras (streaming) metrics


class ConfusionMatrixMetric(keras.metrics.Metric):
    """Base class of the streaming metrics: accumulates a confusion matrix.

    Subclasses implement :meth:`score` mapping the ``(K, K)`` matrix to a scalar.

    Args:
        n_classes: number of model output channels (1 = one sigmoid channel; the
            matrix is then 2x2).
        ignore_index: ground-truth value that is not counted (``None``: none).
        from_logits: ``y_pred`` holds logits (only matters when ``n_classes == 1``,
            where the threshold becomes 0 instead of 0.5).
        name, dtype: as for every ``keras.metrics.Metric``.

    ``update_state(y_true, y_pred, sample_weight=None)`` takes ``y_true`` as
    sparse class indices ``(B, H, W)`` / ``(B, H, W, 1)`` or one-hot
    ``(B, H, W, C)``, and ``y_pred`` as scores ``(B, H, W, C)``. ``sample_weight``
    (optional) is broadcast from ``(B,)``, ``(B, H, W)`` or ``(B, H, W, 1)``.
    """

    def __init__(self, n_classes, ignore_index=DEFAULT_IGNORE_INDEX, from_logits=False,
                 name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.n_classes = _check_n_classes(n_classes, type(self).__name__)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.from_logits = bool(from_logits)
        k = _matrix_size(self.n_classes)
        self.confusion = self.add_variable(
            shape=(k, k), initializer="zeros", dtype="float32", name="confusion"
        )

    # -- accumulation --------------------------------------------------------------
    def _labels(self, y_true):
        """Sparse int labels (B, H, W) and a float validity mask."""
        k = _matrix_size(self.n_classes)
        rank = len(y_true.shape)
        if rank == 4 and y_true.shape[-1] == self.n_classes and self.n_classes > 1:
            y_true = ops.convert_to_tensor(y_true)
            valid = ops.sum(ops.cast(y_true, "float32"), axis=-1) > 0
            t = ops.cast(ops.argmax(y_true, axis=-1), "int32")
            return t, valid
        if rank == 4 and y_true.shape[-1] in (1, None):  # unknown last axis: (B, H, W, 1)
            y_true = y_true[..., 0]
        elif rank != 3:
            raise MetricConfigError(
                f"{self.name}: y_true must be (B, H, W), (B, H, W, 1) or one-hot "
                f"(B, H, W, {self.n_classes}); received shape {tuple(y_true.shape)}"
            )
        t = ops.cast(y_true, "int32")
        valid = (t >= 0) & (t < k)
        if self.ignore_index is not None:
            valid = valid & (t != self.ignore_index)
        return t, valid

    def _hard_pred(self, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        if self.n_classes == 1:
            thr = 0.0 if self.from_logits else 0.5
            return ops.cast(ops.cast(y_pred[..., 0], "float32") > thr, "int32")
        return ops.cast(ops.argmax(y_pred, axis=-1), "int32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        k = _matrix_size(self.n_classes)
        t, valid = self._labels(y_true)
        p = self._hard_pred(y_pred)
        w = ops.cast(valid, "float32")
        if sample_weight is not None:
            sw = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
            if len(sw.shape) == 1:
                sw = ops.reshape(sw, (-1, 1, 1))
            elif len(sw.shape) == 4:
                sw = sw[..., 0]
            w = w * ops.broadcast_to(sw, ops.shape(w))
        idx = ops.where(valid, t * k + p, 0)
        counts = ops.segment_sum(
            ops.reshape(w, (-1,)), ops.reshape(idx, (-1,)), num_segments=k * k
        )
        self.confusion.assign_add(ops.reshape(counts, (k, k)))

    def reset_state(self):
        self.confusion.assign(ops.zeros(self.confusion.shape, dtype=self.confusion.dtype))

    def result(self):
        return self.score(ops.convert_to_tensor(self.confusion))

    def score(self, cm):
        raise NotImplementedError

    # -- helpers for subclasses ----------------------------------------------------
    @staticmethod
    def _counts(cm):
        tp = ops.diagonal(cm)
        gt = ops.sum(cm, axis=1)
        pred = ops.sum(cm, axis=0)
        return tp, gt - tp, pred - tp, gt + pred > 0

    @staticmethod
    def _mean_over(values, mask):
        m = ops.cast(mask, "float32")
        n = ops.sum(m)
        return ops.sum(values * m) / ops.maximum(n, 1.0)

    def get_config(self):
        return {
            **super().get_config(),
            "n_classes": self.n_classes,
            "ignore_index": self.ignore_index,
            "from_logits": self.from_logits,
        }


@keras.saving.register_keras_serializable(package="kseg")
class IoUScore(ConfusionMatrixMetric):
    """Mean intersection-over-union (Jaccard index) over classes, from the confusion matrix.

    ``IoU_c = TP / (TP + FP + FN)``; classes never seen (no ground truth, no
    prediction) are left out of the mean.

    Example:
        >>> m = IoUScore(n_classes=3, name="mean_iou")
        >>> m.update_state(labels, probabilities); float(m.result())
    """

    def __init__(self, n_classes, ignore_index=DEFAULT_IGNORE_INDEX, from_logits=False,
                 name="iou_score", dtype=None):
        super().__init__(n_classes, ignore_index, from_logits, name=name, dtype=dtype)

    def score(self, cm):
        tp, fn, fp, seen = self._counts(cm)
        iou = tp / ops.maximum(tp + fp + fn, 1e-12)
        return self._mean_over(iou, seen)


@keras.saving.register_keras_serializable(package="kseg")
class FScore(ConfusionMatrixMetric):
    """Mean F-beta score over classes (beta = 1: F1 = dice), from the confusion matrix.

    ``F_c = (1 + beta^2) TP / ((1 + beta^2) TP + beta^2 FN + FP)``; classes never
    seen are left out of the mean. ``beta = 2`` weighs recall more than precision.
    """

    def __init__(self, n_classes, beta=1.0, ignore_index=DEFAULT_IGNORE_INDEX,
                 from_logits=False, name=None, dtype=None):
        if name is None:
            name = "f1_score" if beta == 1 else ("f2_score" if beta == 2 else f"f{beta:g}_score")
        super().__init__(n_classes, ignore_index, from_logits, name=name, dtype=dtype)
        if not beta > 0:
            raise MetricConfigError(f"{name}: beta must be > 0; received {beta!r}")
        self.beta = float(beta)

    def score(self, cm):
        tp, fn, fp, seen = self._counts(cm)
        b2 = self.beta**2
        f = (1 + b2) * tp / ops.maximum((1 + b2) * tp + b2 * fn + fp, 1e-12)
        return self._mean_over(f, seen)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package="kseg")
class PixelAccuracy(ConfusionMatrixMetric):
    """Fraction of counted pixels whose predicted class is right (trace / total)."""

    def __init__(self, n_classes, ignore_index=DEFAULT_IGNORE_INDEX, from_logits=False,
                 name="pixel_accuracy", dtype=None):
        super().__init__(n_classes, ignore_index, from_logits, name=name, dtype=dtype)

    def score(self, cm):
        return ops.sum(ops.diagonal(cm)) / ops.maximum(ops.sum(cm), 1.0)


@keras.saving.register_keras_serializable(package="kseg")
class ClassIoU(ConfusionMatrixMetric):
    """IoU of every class, as a dict ``{"iou_<class name>": value}`` (Keras logs each key;
    validation adds the ``val_`` prefix), from the same confusion matrix as :class:`IoUScore`.

    A class not seen at all (no ground truth, no prediction) reports 0.
    """

    def __init__(self, n_classes, class_names=None, ignore_index=DEFAULT_IGNORE_INDEX, from_logits=False,
                 name="class_iou", dtype=None):
        super().__init__(n_classes, ignore_index, from_logits, name=name, dtype=dtype)
        k = _matrix_size(self.n_classes)
        names = list(class_names) if class_names else [str(i) for i in range(k)]
        if len(names) != k:
            raise MetricConfigError(f"class_iou: {len(names)} class names for {k} classes")
        self.class_names = names
        self.keys = [f"iou_{_key(n)}" for n in names]
        if len(set(self.keys)) != k:  # names that collapse to the same key: number them
            self.keys = [f"iou_{i}_{_key(n)}" for i, n in enumerate(names)]

    def score(self, cm):
        tp, fn, fp, _ = self._counts(cm)
        return tp / ops.maximum(tp + fp + fn, 1e-12)

    def result(self):
        iou = self.score(ops.convert_to_tensor(self.confusion))
        return {k: iou[i] for i, k in enumerate(self.keys)}

    def get_config(self):
        return {**super().get_config(), "class_names": self.class_names}


def _key(name):
    """A class name as a log key: lower case, runs of other characters as ``_``."""
    import re

    return re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_") or "class"


_METRICS = {
    "mean_iou": (IoUScore, {}),
    "iou_score": (IoUScore, {}),
    "jaccard_score": (IoUScore, {}),
    "f1_score": (FScore, {"beta": 1.0}),
    "f2_score": (FScore, {"beta": 2.0}),
    "dice_score": (FScore, {"beta": 1.0}),
    "pixel_accuracy": (PixelAccuracy, {}),
}


def list_metrics():
    """Return the sorted names accepted by :func:`get_metric`."""
    return sorted(_METRICS)


def get_metric(name, n_classes=2, ignore_index=DEFAULT_IGNORE_INDEX, **options):
    """Build a streaming metric by name.

    Args:
        name: one of :func:`list_metrics` (``"mean_iou"``, ``"iou_score"``,
            ``"jaccard_score"``, ``"f1_score"``, ``"f2_score"``, ``"dice_score"``,
            ``"pixel_accuracy"``).
        n_classes: number of model output channels (1 = single sigmoid channel).
        ignore_index: ground-truth value that is not counted.
        **options: ``from_logits`` (threshold 0 instead of 0.5 when
            ``n_classes == 1``).

    Returns:
        A ``keras.metrics.Metric`` named ``name`` (so Keras logs ``mean_iou`` and
        ``val_mean_iou``).

    Example:
        >>> model.compile("adam", get_loss("ce", n_classes=3),
        ...               metrics=[get_metric("mean_iou", n_classes=3)])
    """
    key = str(name).strip().lower()
    if key not in _METRICS:
        raise unknown_name("metric", name, _METRICS)
    for k in options:
        if k != "from_logits":
            raise MetricConfigError(
                f"metric {key!r} does not take option {k!r}; it takes: from_logits, ignore_index"
            )
    cls, fixed = _METRICS[key]
    return cls(n_classes=n_classes, ignore_index=ignore_index, name=key, **fixed, **options)


# --------------------------------------------------------------------------------------
# numpy evaluation


def confusion_matrix(y_true, y_pred, n_classes, ignore_index=DEFAULT_IGNORE_INDEX):
    """Confusion matrix of label arrays (numpy).

    Args:
        y_true: ground-truth class indices, any shape (e.g. ``(H, W)`` or
            ``(B, H, W)``).
        y_pred: predicted class indices of the same shape, or scores with one more
            trailing axis (argmax; ``> 0.5`` when that axis has size 1).
        n_classes: number of classes (1 = binary sigmoid model: a 2x2 matrix).
        ignore_index: ground-truth value that is skipped (``None``: none).

    Returns:
        ``int64`` array ``(K, K)``, rows = ground truth, columns = prediction,
        ``K = max(n_classes, 2)``.

    Raises:
        DataError: a ground-truth value that is neither a class nor ``ignore_index``,
            or a prediction outside ``0..K-1``.
    """
    n_classes = _check_n_classes(n_classes, "confusion_matrix")
    k = _matrix_size(n_classes)
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if p.ndim == t.ndim + 1:
        p = (p[..., 0] > 0.5) if p.shape[-1] == 1 else np.argmax(p, axis=-1)
    if p.shape != t.shape:
        raise DataError(
            f"confusion_matrix: prediction shape {p.shape} does not match label shape {t.shape}"
        )
    t = t.astype(np.int64, copy=False).ravel()
    p = p.astype(np.int64, copy=False).ravel()
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    if t.size:
        bad = (t < 0) | (t >= k)
        if bad.any():
            v = int(t[bad][0])
            raise DataError(
                f"label value {v} is out of range for n_classes={n_classes} (valid 0..{k - 1}, "
                f"ignore {ignore_index}); check --n_classes or the label files"
            )
        if p.min() < 0 or p.max() >= k:
            raise DataError(
                f"predicted class {int(p[(p < 0) | (p >= k)][0])} is out of range 0..{k - 1}"
            )
    return np.bincount(t * k + p, minlength=k * k).astype(np.int64).reshape(k, k)


def _ratio(num, den):
    return float(num) / float(den) if den else None


def segmentation_report(cm, class_names=None):
    """Scores of a confusion matrix, as a JSON-serialisable dict.

    Args:
        cm: ``(K, K)`` confusion matrix, rows = ground truth, columns = prediction.
        class_names: optional list of K names (default ``"class_<id>"``).

    Returns:
        A dict with ``pixels`` (counted pixels), ``pixel_accuracy``
        (trace / total), ``mean_class_accuracy`` (mean recall over classes with
        ground truth), ``mean_iou`` (mean IoU over classes with ground truth or
        prediction), ``fw_iou`` (IoU weighted by ground-truth frequency) and
        ``per_class``: a list of ``{id, name, iou, dice, precision, recall,
        pixels, predicted_pixels}``. A class with neither ground truth nor
        prediction has ``None`` scores and is left out of every mean; precision
        (recall) of a class never predicted (absent from the ground truth) but
        otherwise present is 0. Scores are ``None`` when nothing was counted.
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"segmentation_report: cm must be square (K, K); received {cm.shape}")
    k = cm.shape[0]
    if class_names is None:
        class_names = [f"class_{i}" for i in range(k)]
    class_names = [str(n) for n in class_names]
    if len(class_names) != k:
        raise KsegError(
            f"{len(class_names)} class names given for {k} classes; give one name per class"
        )
    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    total = cm.sum()
    per_class, ious, recalls = [], [], []
    fw = 0.0
    for c in range(k):
        seen = gt[c] + pred[c] > 0
        union = gt[c] + pred[c] - tp[c]
        entry = {
            "id": c,
            "name": class_names[c],
            "iou": _ratio(tp[c], union) if seen else None,
            "dice": _ratio(2 * tp[c], gt[c] + pred[c]) if seen else None,
            "precision": (_ratio(tp[c], pred[c]) or 0.0) if seen else None,
            "recall": (_ratio(tp[c], gt[c]) or 0.0) if seen else None,
            "pixels": int(gt[c]),
            "predicted_pixels": int(pred[c]),
        }
        per_class.append(entry)
        if seen:
            ious.append(entry["iou"])
            fw += gt[c] / total * entry["iou"]
        if gt[c] > 0:
            recalls.append(entry["recall"])
    return {
        "n_classes": k,
        "pixels": int(total),
        "pixel_accuracy": _ratio(tp.sum(), total),
        "mean_class_accuracy": float(np.mean(recalls)) if recalls else None,
        "mean_iou": float(np.mean(ious)) if ious else None,
        "fw_iou": float(fw) if total else None,
        "per_class": per_class,
    }


def format_report(report, digits=4):
    """Render a :func:`segmentation_report` dict as an aligned text table.

    Scores that are ``None`` (class never seen) print as ``-``.
    """

    def fmt(v):
        return "-" if v is None else f"{v:.{digits}f}"

    header = ["id", "class", "IoU", "dice", "precision", "recall", "pixels", "predicted"]
    rows = [
        [
            str(e["id"]),
            e["name"],
            fmt(e["iou"]),
            fmt(e["dice"]),
            fmt(e["precision"]),
            fmt(e["recall"]),
            str(e["pixels"]),
            str(e["predicted_pixels"]),
        ]
        for e in report["per_class"]
    ]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(r):
        cells = [r[0].rjust(widths[0]), r[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(r[2:], widths[2:])]
        return "  ".join(cells).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    out.append("")
    summary = [
        ("pixel accuracy", report["pixel_accuracy"]),
        ("mean class accuracy", report["mean_class_accuracy"]),
        ("mean IoU", report["mean_iou"]),
        ("frequency-weighted IoU", report["fw_iou"]),
    ]
    lw = max(len(s) for s, _ in summary)
    out += [f"{s.ljust(lw)}  {fmt(v)}" for s, v in summary]
    out.append(f"{'pixels'.ljust(lw)}  {report['pixels']}")
    return "\n".join(out)
