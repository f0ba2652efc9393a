"""Class pixel statistics of label masks, and THE class weights derived from them.

Training (``--class_weights auto|enet``) and the dataset doctor use these
functions, so the weights the doctor suggests are the weights training uses.

Counting rules: the ignore value is excluded from every count, and so is any
value that is not a class (``>= label_values(n_classes)``; the doctor reports
such values and training refuses them). "Pixels" below always means pixels of
a class.

* :class:`LabelCounter` accumulates label masks one by one (values need not be
  known in advance); :meth:`LabelCounter.stats` gives a :class:`ClassStats` for
  a number of classes; :func:`class_stats` does both for a list of masks or files.
* :func:`median_frequency_weights`: median-frequency balancing as in SegNet
  (Badrinarayanan et al. 2017, following Eigen & Fergus 2015)::

      freq(c)   = pixels of class c / total pixels of the images in which c appears
      weight(c) = median(freq over the classes that appear) / freq(c)

  A class that never appears gets weight 0.0: it has no pixels to weigh (and a
  weight of 0 keeps it out of the class mean of region losses).
* :func:`enet_weights`: ENet's weighting (Paszke et al. 2016)::

      p(c)      = pixels of class c / pixels of all classes
      weight(c) = 1 / ln(k + p(c))         (k = 1.02)

  bounded by ``1 / ln(k)`` (about 50.5); a class that never appears gets 0.0,
  for the same reason as above.
* :func:`class_weights` turns a ``--class_weights`` value (``auto``, ``enet`` or
  a comma-separated list) into one weight per class.

Images: :class:`ChannelStats` accumulates the per-channel mean and standard
deviation of images in their own units -- the ``mean`` / ``std`` of
``dataset.json`` (:func:`kseg.data.preprocess.normalize`), printed by the doctor.
"""

import dataclasses
import math

import numpy as np

from kseg.config import IGNORE_INDEX, label_values
from kseg.data.io import read_label
from kseg.errors import ConfigError, DataError

#: The foreground value of 8-bit black/white masks (0/255), which clashes with
#: the default ignore value; see :func:`is_binary_255`.
BINARY_FOREGROUND = 255

#: ENet's constant ``k`` in ``1 / ln(k + p)``.
ENET_C = 1.02

#: ``--class_weights`` keywords and what they compute.
WEIGHT_METHODS = ("auto", "enet")


@dataclasses.dataclass(frozen=True)
class ClassStats:
    """Per-class pixel statistics of a set of label masks (ignored pixels excluded).

    Attributes:
        pixels: ``(K,)`` pixels of each class.
        image_pixels: ``(K,)`` for each class, the summed class pixels of the
            images in which that class appears.
        images: ``(K,)`` number of images in which each class appears.
        n_images: number of masks counted.
        ignored: pixels holding the ignore value.
        other: pixels holding a value that is neither a class nor the ignore value.
        ignore_index: the ignore value used (None: nothing ignored).
    """

    pixels: np.ndarray
    image_pixels: np.ndarray
    images: np.ndarray
    n_images: int = 0
    ignored: int = 0
    other: int = 0
    ignore_index: int = IGNORE_INDEX

    @property
    def n_values(self):
        """K, the number of classes (label values) counted."""
        return len(self.pixels)

    @property
    def total(self):
        """Pixels of all classes."""
        return int(self.pixels.sum())

    def present(self):
        """Boolean ``(K,)``: which classes appear at least once."""
        return self.pixels > 0

    def frequencies(self):
        """``freq(c)`` of median-frequency balancing (float ``(K,)``, NaN for absent classes)."""
        out = np.full(self.n_values, np.nan)
        p = self.present()
        out[p] = self.pixels[p] / self.image_pixels[p]
        return out

    def proportions(self):
        """``p(c)`` = pixels of c / pixels of all classes (float ``(K,)``; zeros without pixels)."""
        tot = self.total
        return self.pixels / tot if tot else np.zeros(self.n_values)


def _histogram(label):
    a = np.asarray(label)
    if a.size and np.issubdtype(a.dtype, np.floating):
        if not np.array_equal(a, np.round(a)):
            raise DataError("a label holds fractional values; labels must hold integer class indices")
    a = a.astype(np.int64, copy=False).ravel()
    if a.size and a.min() < 0:
        raise DataError(f"a label holds the negative value {int(a.min())}; label values must be >= 0")
    return np.bincount(a)


class LabelCounter:
    """Accumulate label masks; give per-value totals and :class:`ClassStats` for any K.

    Each added mask is kept as its sparse histogram (the values it holds and their
    pixel counts), so the statistics can be taken for a number of classes that is
    only known after every mask was read (the doctor infers it).

    Args:
        ignore_index: the ignore value, excluded from the class statistics (None or
            a negative value: nothing is ignored).
    """

    def __init__(self, ignore_index=IGNORE_INDEX):
        self.ignore_index = None if ignore_index is None or int(ignore_index) < 0 else int(ignore_index)
        self._hists = []  # per mask: (values, counts), int64 arrays
        self.value_pixels = np.zeros(0, np.int64)  # pixels of every value, incl. ignore and non-classes
        self.value_images = np.zeros(0, np.int64)  # masks holding each value

    def add(self, label):
        """Count one mask (any shape); returns its dense histogram ``bincount(label)``."""
        counts = _histogram(label)
        vals = np.flatnonzero(counts)
        self._record(vals, counts[vals])
        return counts

    def merge(self, other):
        """A new counter holding the masks of ``self`` and then ``other`` (``self``'s ignore value)."""
        out = LabelCounter(self.ignore_index)
        for vals, cnts in self._hists + other._hists:
            out._record(vals, cnts)
        return out

    def _record(self, vals, cnts):
        self._hists.append((vals, cnts))
        n = int(vals[-1]) + 1 if len(vals) else 0
        if n > len(self.value_pixels):
            self.value_pixels = np.pad(self.value_pixels, (0, n - len(self.value_pixels)))
            self.value_images = np.pad(self.value_images, (0, n - len(self.value_images)))
        self.value_pixels[vals] += cnts
        self.value_images[vals] += 1

    @property
    def n_images(self):
        return len(self._hists)

    def values(self):
        """``{value: pixels}`` of every value found (ignore and non-class values included)."""
        return {int(v): int(self.value_pixels[v]) for v in np.flatnonzero(self.value_pixels)}

    def images_with(self):
        """``{value: number of masks holding it}`` of every value found."""
        return {int(v): int(self.value_images[v]) for v in np.flatnonzero(self.value_images)}

    def stats(self, n_classes):
        """The :class:`ClassStats` for a model with ``n_classes`` outputs (``label_values`` classes)."""
        k = label_values(n_classes)
        pixels, image_pixels, images = (np.zeros(k, np.int64) for _ in range(3))
        ignored = other = 0
        for vals, cnts in self._hists:
            is_ign = vals == self.ignore_index if self.ignore_index is not None else np.zeros(len(vals), bool)
            is_cls = (vals < k) & ~is_ign
            ignored += int(cnts[is_ign].sum())
            other += int(cnts[~is_cls & ~is_ign].sum())
            cls, n = vals[is_cls], cnts[is_cls]
            pixels[cls] += n
            images[cls] += 1
            image_pixels[cls] += int(n.sum())
        return ClassStats(pixels, image_pixels, images, self.n_images, ignored, other, self.ignore_index)


def class_stats(labels, n_classes, ignore_index=IGNORE_INDEX):
    """:class:`ClassStats` of label masks: an iterable of arrays or of label file paths."""
    counter = LabelCounter(ignore_index)
    for lab in labels:
        if isinstance(lab, (str, bytes)) or hasattr(lab, "__fspath__"):
            lab = read_label(lab)
        counter.add(lab)
    return counter.stats(n_classes)


def is_binary_255(values, ignore_index):
    """True when label values ``values`` are exactly {0, 255} and 255 is the ignore value.

    Such labels are black/white masks whose foreground would be ignored: nothing
    would be learned. The fix is ``255 -> 1`` (``convert_colors.py remap --binary_255_to_1``).
    """
    values = {int(v) for v in values}
    return BINARY_FOREGROUND in values and values <= {0, BINARY_FOREGROUND} and ignore_index == BINARY_FOREGROUND


def median_frequency_weights(stats):
    """SegNet's median-frequency class weights (see the module docstring), one per class.

    ``freq(c)`` = pixels of c / total class pixels of the images in which c
    appears; ``weight(c) = median(freq of the classes that appear) / freq(c)``; a
    class that never appears gets 0.0 (it has no pixels to weigh).

    Raises:
        DataError: when no class appears at all.
    """
    _need_pixels(stats, "median frequency")
    freq = stats.frequencies()
    present = stats.present()
    med = float(np.median(freq[present]))
    return [float(med / f) if p else 0.0 for f, p in zip(freq, present)]


def enet_weights(stats, c=ENET_C):
    """ENet's class weights ``1 / ln(c + p(class))`` (see the module docstring), one per class.

    ``p`` is the class's share of all class pixels; a class that never appears
    gets 0.0 (it has no pixels to weigh).

    Raises:
        DataError: when no class appears at all.
        ConfigError: when ``c <= 1`` (the logarithm would not be positive).
    """
    if not c > 1:
        raise ConfigError(f"the ENet weighting constant must be > 1 (1.02 in the paper); received {c!r}")
    _need_pixels(stats, "ENet")
    p = stats.proportions()
    return [float(1.0 / math.log(c + q)) if n > 0 else 0.0 for q, n in zip(p, stats.pixels)]


def _need_pixels(stats, what):
    if stats.total == 0:
        raise DataError(
            f"cannot compute {what} class weights: the {stats.n_images} label(s) hold no pixel of any class "
            "(only ignored or out-of-range values); check the labels or pass explicit --class_weights"
        )


def parse_class_weights(spec, n_classes):
    """Check a ``--class_weights`` value without reading any label.

    Returns None (no weights), ``"auto"`` or ``"enet"`` (computed later from the
    labels), or the explicit list of ``label_values(n_classes)`` floats.

    Raises:
        ConfigError: a one-line message naming the value, when it is none of these.
    """
    if spec is None:
        return None
    k = label_values(n_classes)
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in WEIGHT_METHODS:
            return key
        parts = [p for p in spec.replace(";", ",").split(",")]
    else:
        parts = list(spec)
    try:
        w = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise ConfigError(
            f"--class_weights {spec!r}: expected 'auto' (median frequency), 'enet' or {k} comma-separated numbers"
        ) from None
    if len(w) != k:
        extra = " (a one-channel sigmoid model has 2 classes: background, foreground)" if k != n_classes else ""
        raise ConfigError(f"--class_weights {spec!r} has {len(w)} values but there are {k} classes{extra}; "
                          "give one weight per class")
    if not all(math.isfinite(v) and v >= 0 for v in w) or sum(w) <= 0:
        raise ConfigError(f"--class_weights {spec!r}: weights must be finite, >= 0 and not all 0")
    return w


def class_weights(spec, stats_or_callable, n_classes):
    """One weight per class for a ``--class_weights`` value.

    Args:
        spec: None, ``"auto"`` (:func:`median_frequency_weights`), ``"enet"``
            (:func:`enet_weights`), or explicit weights (a comma-separated string
            or a list) of length ``label_values(n_classes)``.
        stats_or_callable: a :class:`ClassStats`, or a callable returning one;
            called only when ``spec`` needs the label statistics.
        n_classes: the model's number of outputs.

    Returns:
        None (``spec`` None) or a list of ``label_values(n_classes)`` floats.

    Raises:
        ConfigError: for a bad ``spec`` (one line naming it).
        DataError: when ``auto``/``enet`` meet labels without any class pixel.
    """
    parsed = parse_class_weights(spec, n_classes)
    if not isinstance(parsed, str):
        return parsed
    stats = stats_or_callable() if callable(stats_or_callable) else stats_or_callable
    if stats is None:
        raise ConfigError(f"--class_weights {spec}: the label statistics are needed to compute the weights")
    if stats.n_values != label_values(n_classes):
        raise ConfigError(
            f"--class_weights {spec}: statistics of {stats.n_values} classes given for a model with "
            f"{label_values(n_classes)}; count the labels with the same n_classes"
        )
    return median_frequency_weights(stats) if parsed == "auto" else enet_weights(stats)


class ChannelStats:
    """Per-channel mean and (population) standard deviation of images, in their own units.

    Images are added one by one (``(H, W, C)``, every image with the same ``C``); each
    image's mean and variance are merged in float64 (Chan et al.'s pairwise update), so
    16-bit values over many images lose no precision. ``mean`` / ``std`` are the values
    ``dataset.json`` takes: the input becomes ``(x - mean) / std``.
    """

    def __init__(self):
        self.pixels = 0
        self.images = 0
        self._mean = None
        self._m2 = None

    @property
    def channels(self):
        return None if self._mean is None else len(self._mean)

    def add(self, image):
        """Add one image; returns False (and adds nothing) when its channel count differs."""
        x = np.asarray(image)
        x = x.reshape(-1, x.shape[-1] if x.ndim == 3 else 1).astype(np.float64)
        if not len(x):
            return False
        mean = x.mean(axis=0)
        return self._combine(len(x), mean, ((x - mean) ** 2).sum(axis=0), 1)

    def merge(self, other):
        """Add the images of another :class:`ChannelStats`; False when the channel counts differ."""
        if other._mean is None:
            return True
        return self._combine(other.pixels, other._mean, other._m2, other.images)

    def _combine(self, n, mean, m2, images):
        if self._mean is not None and len(mean) != len(self._mean):
            return False
        if self._mean is None:
            self._mean, self._m2 = np.array(mean, np.float64), np.array(m2, np.float64)
        else:
            total = self.pixels + n
            delta = mean - self._mean
            self._mean = self._mean + delta * (n / total)
            self._m2 = self._m2 + m2 + delta ** 2 * (self.pixels * n / total)
        self.pixels += n
        self.images += images
        return True

    def mean(self):
        """One mean per channel (list of floats), or None before the first image."""
        return None if self._mean is None else [float(v) for v in self._mean]

    def std(self):
        """One standard deviation per channel (list of floats), or None before the first image."""
        return None if self._mean is None else [float(v) for v in np.sqrt(self._m2 / self.pixels)]
