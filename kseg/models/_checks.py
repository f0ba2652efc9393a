"""Argument checks of the model builders: one module, one error style.

Every check raises a :mod:`kseg.errors` class (``ModelConfigError`` for a bad
option value, ``UnknownNameError`` for an unknown name, ``InputShapeError`` for
an input shape) with a ONE-LINE message that names the model, the option, the
value received and the values that would be valid::

    unet: base_filters must be a positive integer; received 0
    pspnet: output_stride must be 8 or 16; received 32
    deeplab_v2: unknown backbone 'resnet50'; valid values are: resnet101, vgg16

The options every builder shares (channels-last data, ``n_classes``,
``input_shape``, ``activation``) and the input-size rule are checked once for
all builders by :func:`kseg.models.registry.register_model`; a builder checks
only its own options, with the helpers below, before it builds anything. The
checks return the value they validated so they can be used inline.

Before any of that, the registry gives every option the type of its default
(:func:`option_value`: ``"32"`` -> 32 for ``base_filters=64``, ``"no"`` -> False for
``use_bn=True``, ``"6,12"`` -> (6, 12) for ``rates=(6, 12, 18)``), so a value given as
text (``--model_option``) reaches the builder typed, and one of the wrong type is a
one-line error naming the option, the value and the type.
"""

import math
import numbers
import re

import keras

from kseg.config import MAX_CLASSES, MAX_LABEL_VALUE, as_bool
from kseg.errors import ConfigError, InputShapeError, ModelConfigError, UnknownNameError

ACTIVATIONS = ("softmax", "sigmoid", None)
_LOGIT_ALIASES = ("linear", "none")  # accepted spellings of None (logits)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _or_list(choices):
    """``(8, 16)`` -> ``8 or 16``; ``(a, b, c)`` -> ``one of a, b, c``."""
    shown = [repr(c) if isinstance(c, str) else str(c) for c in choices]
    if len(shown) <= 2:
        return " or ".join(shown)
    return "one of " + ", ".join(shown)


def check_channels_last(model):
    """Raise :class:`ModelConfigError` unless Keras is set to channels-last data."""
    fmt = keras.config.image_data_format()
    if fmt != "channels_last":
        raise ModelConfigError(
            f"{model}: kseg models are channels-last; image_data_format is {fmt!r}; call "
            "keras.config.set_image_data_format('channels_last')"
        )


def positive_int(model, option, value, hint=""):
    """``value`` if it is an integer >= 1, else :class:`ModelConfigError`."""
    if not _is_int(value) or value < 1:
        raise ModelConfigError(
            f"{model}: {option} must be a positive integer{hint}; received {value!r}"
        )
    return value


def n_classes(model, value):
    """``value`` if it is a number of classes: an integer from 1 to :data:`kseg.config.MAX_CLASSES`
    (labels are at most 16-bit), else :class:`ModelConfigError`."""
    positive_int(model, "n_classes", value)
    if value > MAX_CLASSES:
        raise ModelConfigError(
            f"{model}: n_classes must be at most {MAX_CLASSES} (label values are at most {MAX_LABEL_VALUE}, "
            f"16-bit); received {value!r}"
        )
    return value


def positive_number(model, option, value, hint=""):
    """``value`` if it is a real number > 0, else :class:`ModelConfigError`."""
    if not _is_number(value) or not value > 0:
        raise ModelConfigError(
            f"{model}: {option} must be a positive number{hint}; received {value!r}"
        )
    return value


def rate(model, option, value):
    """``value`` if it is a number in [0, 1) (a dropout rate), else :class:`ModelConfigError`."""
    if not _is_number(value) or not 0 <= value < 1:
        raise ModelConfigError(
            f"{model}: {option} must be a number in [0, 1); received {value!r}"
        )
    return value


def flag(model, option, value):
    """``value`` if it is a bool (or 0 / 1), else :class:`ModelConfigError`."""
    if not isinstance(value, (bool, numbers.Integral)) or value not in (0, 1):
        raise ModelConfigError(f"{model}: {option} must be True or False; received {value!r}")
    return value


def positive_ints(model, option, values, length=None, hint="", what=None):
    """``tuple(values)`` if it is a sequence of positive integers (of ``length`` items).

    Raises :class:`ModelConfigError` naming the option and the whole value;
    ``what`` replaces the description of a valid value in the message.
    """
    if what is None:
        what = f"{length} positive integers" if length else "a sequence of positive integers"
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ModelConfigError(f"{model}: {option} must be {what}{hint}; received {values!r}")
    values = tuple(values)
    if (length is not None and len(values) != length) or not values or not all(
        _is_int(v) and v >= 1 for v in values
    ):
        raise ModelConfigError(f"{model}: {option} must be {what}{hint}; received {values!r}")
    return values


def one_of(model, option, value, choices):
    """``value`` if it is in ``choices`` (numbers, modes), else :class:`ModelConfigError`."""
    if isinstance(value, bool) or value not in choices:
        raise ModelConfigError(
            f"{model}: {option} must be {_or_list(choices)}; received {value!r}"
        )
    return value


def known_name(model, option, value, choices):
    """``value`` if it is one of the names ``choices``, else :class:`UnknownNameError`
    listing them (sorted)."""
    if not isinstance(value, str) or value not in choices:
        raise UnknownNameError(
            f"{model}: unknown {option} {value!r}; valid values are: {', '.join(sorted(choices))}"
        )
    return value


def activation(model, value):
    """The output ``activation`` option: ``"softmax"``, ``"sigmoid"`` or ``None``
    (also spelled ``"linear"`` / ``"none"``) for logits."""
    if value in _LOGIT_ALIASES:
        return value
    if isinstance(value, bool) or value not in ACTIVATIONS:
        raise ModelConfigError(
            f"{model}: activation must be 'softmax', 'sigmoid' or None (logits); received {value!r}"
        )
    return value


def input_shape(model, shape):
    """``(height, width, channels)``: height and width ``None`` or positive integers,
    channels a positive integer; else :class:`InputShapeError`."""
    ok = isinstance(shape, (tuple, list)) and len(shape) == 3
    if ok:
        h, w, c = shape
        ok = all(d is None or (_is_int(d) and d >= 1) for d in (h, w)) and _is_int(c) and c >= 1
    if not ok:
        raise InputShapeError(
            f"{model}: input_shape must be (height, width, channels) with positive integers "
            f"(height and width may be None); received {shape!r}"
        )
    return tuple(shape)


def _valid_below_above(value, divisor, min_size):
    """``(below, above)``: the largest allowed size <= ``value`` (the smallest allowed
    one when there is none) and the smallest allowed size >= ``value``."""
    smallest = -(-max(min_size, 1) // divisor) * divisor
    return max(smallest, value // divisor * divisor), max(smallest, -(-value // divisor) * divisor)


def size_rule_text(divisor=1, min_size=1):
    """The size rule in words: ``"a multiple of 16 and at least 32"``."""
    if divisor > 1:
        return f"a multiple of {divisor}" + (f" and at least {min_size}" if min_size > 1 else "")
    return f"at least {max(min_size, 1)}"


def input_size_message(name, height, width, divisor=1, min_size=1):
    """The one-line message of an input size that breaks the size rule, or ``None``.

    The ONE text of a bad size, whether the model is being built with a fixed size
    (:func:`check_input_size`) or a size-free model is called on data
    (:class:`kseg.models.registry.SizeCheckedModel`); ``None`` dimensions are not
    judged. Every bad dimension is named, then the rule and the nearest valid size
    below and above, e.g.::

        unet: input 225x230 is not allowed: height 225 and width 230 must each be a
        multiple of 16 (nearest valid size 224x224 or 240x240)
    """
    dims = [(what, v) for what, v in (("height", height), ("width", width)) if v is not None]
    for what, v in dims:
        if not _is_int(v) or v < 1:
            return f"{name}: input {what} must be a positive integer; received {v!r}"
    bad = [(what, v) for what, v in dims if v < min_size or v % divisor]
    if not bad:
        return None
    below = [_valid_below_above(v, divisor, min_size)[0] if (w, v) in bad else v for w, v in dims]
    above = [_valid_below_above(v, divisor, min_size)[1] if (w, v) in bad else v for w, v in dims]
    if len(dims) == 2:
        size, down, up = (f"{a}x{b}" for a, b in ((height, width), below, above))
        near = "size"
    else:  # one dimension fixed, the other left free
        size, down, up = f"{dims[0][0]} {dims[0][1]}", str(below[0]), str(above[0])
        near = dims[0][0]
    named = " and ".join(f"{what} {v}" for what, v in bad)
    verb = "must each be" if len(bad) == 2 else "must be"
    nearest = down if down == up else f"{down} or {up}"
    return (f"{name}: input {size} is not allowed: {named} {verb} {size_rule_text(divisor, min_size)} "
            f"(nearest valid {near} {nearest})")


def check_input_size(name, height, width, divisor=1, min_size=1):
    """Raise :class:`InputShapeError` unless (height, width) suits the model.

    The message is :func:`input_size_message`'s: every bad dimension is named, with
    the nearest valid size. ``None`` dimensions (a size-free model) pass; they are
    checked when data arrives (:class:`kseg.models.registry.SizeCheckedModel`).
    """
    message = input_size_message(name, height, width, divisor, min_size)
    if message:
        raise InputShapeError(message)


def fixed_size_message(name, built, received):
    """The one-line message of a model built for one size and called with another
    (a size its rule allows)."""
    (bh, bw), (h, w) = built, received
    return (f"{name}: this model was built for {bh or 'any'}x{bw or 'any'} inputs; received {h}x{w}; resize the "
            "input to that size, or build the model without a fixed size (input_height/input_width None)")


# ------------------------------------------------------------------------------------------
# Option types: a builder option takes the type of its default
# ------------------------------------------------------------------------------------------
_INT_TEXT = re.compile(r"[+-]?\d+")


def _kind(default):
    """The type of a builder option from its default: ``bool``, ``int``, ``float``, ``str``,
    ``("tuple", item kind)`` or None (no rule: the builder checks the value itself)."""
    if isinstance(default, bool):
        return bool
    if isinstance(default, numbers.Integral):
        return int
    if isinstance(default, numbers.Real):
        return float
    if isinstance(default, str):
        return str
    if isinstance(default, (tuple, list)) and default:
        kinds = {_kind(v) for v in default}
        if kinds == {int}:
            return ("tuple", int)
        if kinds <= {int, float}:
            return ("tuple", float)
    return None


_WHAT = {bool: "true or false", int: "an integer", float: "a number", str: "a name (text)"}


def _example(default):
    if isinstance(default, (tuple, list)):
        return ",".join(map(str, default))
    return str(default).lower() if isinstance(default, bool) else str(default)


_BAD = object()  # what _scalar gives for a value that is not of the kind


def _scalar(kind, value):
    """``value`` as ``kind`` (bool, int or float), from a value of that type or its text; else ``_BAD``."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, numbers.Integral) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            try:
                return as_bool(value)
            except ConfigError:
                return _BAD
        return _BAD
    if isinstance(value, bool):
        return _BAD
    if kind is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
            return int(value.strip())
        return _BAD
    if not isinstance(value, (numbers.Real, str)):
        return _BAD
    try:
        x = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        return _BAD
    return x if math.isfinite(x) else _BAD


def option_value(model, option, value, default):
    """``value`` of the builder option ``option`` in the type of its ``default``.

    Text (``--model_option base_filters=32``, ``use_bn=no``, ``rates=6,12,18``) is converted;
    a value of the right type passes unchanged (an int for a float option becomes a float,
    a list for a tuple option a tuple). A value that is not of the option's type raises a
    one-line :class:`ModelConfigError` naming the option, the value and the type, e.g.
    ``unet: base_filters must be an integer (e.g. 64); received 'abc'``. Options whose
    default is ``None`` (or of another type) are returned unchanged: the builder checks them.
    Ranges (positive, a rate in [0, 1), ...) are the builder's checks.
    """
    kind = _kind(default)
    if kind is None:
        return value
    if kind is str:
        if value is None or isinstance(value, str):
            return value
        what = f"{_WHAT[str]} (e.g. {default!r})"
    elif isinstance(kind, tuple):
        item = kind[1]
        items = value
        if isinstance(value, str):
            text = value.strip().strip("()[]")
            items = [t for t in re.split(r"[,\s]+", text) if t]
        if isinstance(items, (tuple, list)) and items:
            out = tuple(_scalar(item, v) for v in items)
            if _BAD not in out:
                return out
        what = f"{'integers' if item is int else 'numbers'} separated by commas (e.g. {_example(default)})"
    else:
        out = _scalar(kind, value)
        if out is not _BAD:
            return out
        what = f"{_WHAT[kind]} (e.g. {_example(default)})"
    raise ModelConfigError(f"{model}: {option} must be {what}; received {value!r}")
