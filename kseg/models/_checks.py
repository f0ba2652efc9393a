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
"""

import numbers

import keras

from kseg.errors import InputShapeError, ModelConfigError, UnknownNameError

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


def nearest_size(value, divisor=1, min_size=1):
    """The allowed size (a multiple of ``divisor``, at least ``min_size``) closest to ``value``."""
    smallest = -(-max(min_size, 1) // divisor) * divisor
    return max(smallest, divisor * int(round(value / divisor)))


def check_input_size(name, height, width, divisor=1, min_size=1):
    """Raise :class:`InputShapeError` unless (height, width) suits the model.

    Every bad dimension is named with the nearest allowed size. ``None``
    dimensions (dynamic size) pass; they are checked when data arrives.
    """
    bad = []
    for what, v in (("height", height), ("width", width)):
        if v is None:
            continue
        if not _is_int(v) or v < 1:
            bad.append(f"{what} {v!r} (a positive integer is needed)")
        elif v < min_size or v % divisor:
            bad.append(f"{what} {v} (nearest allowed: {nearest_size(v, divisor, min_size)})")
    if bad:
        rule = f"a multiple of {divisor} and at least {min_size}" if divisor > 1 else f"at least {min_size}"
        raise InputShapeError(
            f"{name}: input {' and '.join(bad)} not allowed; height and width must each be "
            f"{rule}; change --input_height/--input_width"
        )
