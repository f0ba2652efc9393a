"""Facts every layer of kseg shares, written once.

This module is the bottom of the house: it imports nothing from kseg except
:mod:`kseg.errors`, so anything may import it.

* :data:`IGNORE_INDEX` -- the label value excluded from losses, metrics and
  class statistics unless a dataset says otherwise.
* The sigmoid rule: a model with ONE output channel is a binary model with a
  sigmoid; its labels still take two values (0 and 1). :func:`label_values`
  gives the number of label values (and the size of the confusion matrix,
  class-weight lists, palettes and class-name lists) for a number of output
  channels; :func:`is_binary_sigmoid` says whether the one-channel rule applies.
"""

#: Label value excluded from losses, metrics and class statistics (the VOC
#: "void"/boundary convention); a dataset's ``dataset.json`` may name another.
IGNORE_INDEX = 255

#: Largest label value kseg accepts: labels are stored as 8- or 16-bit PNGs.
MAX_LABEL_VALUE = 65535

#: Network input size used when neither the flags nor the dataset name one.
DEFAULT_INPUT_SIZE = 256

#: Training epochs used when neither the flags nor the dataset name a budget.
DEFAULT_EPOCHS = 50


def is_binary_sigmoid(n_classes):
    """True when ``n_classes`` output channels mean "one sigmoid channel, 2 label values"."""
    return int(n_classes) == 1


def label_values(n_classes):
    """Number of distinct label values (classes) a model with ``n_classes`` outputs predicts.

    One sigmoid channel predicts 2 values (background 0, foreground 1); a
    softmax over ``K >= 2`` channels predicts ``K``. Use it for the confusion
    matrix, the length of class weights, class names and palettes.
    """
    return 2 if is_binary_sigmoid(n_classes) else int(n_classes)
