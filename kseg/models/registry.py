"""The model registry: builders register themselves by name with a decorator."""

import dataclasses
import inspect

from kseg.errors import InputShapeError, unknown_name


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a model besides its builder.

    Attributes:
        name: registry name (``"unet++"``).
        builder: the public builder function.
        divisor: input height and width must be multiples of this.
        min_size: smallest allowed input height/width.
        test_size: the smallest convenient (height, width) for tests and the cost table.
        test_kwargs: extra builder arguments used by the fast parametrized tests
            (e.g. narrower widths); the golden parameter count always uses defaults.
        dynamic: the model can be built with ``None`` height/width (any allowed size
            at run time). Training builds such models size-free so that one saved
            model serves every prediction mode; others are built at the input size.
    """

    name: str
    builder: object
    divisor: int = 1
    min_size: int = 1
    test_size: tuple = (64, 64)
    test_kwargs: dict = dataclasses.field(default_factory=dict)
    dynamic: bool = True


_REGISTRY = {}


def register_model(name, *, divisor=1, min_size=None, test_size=None, test_kwargs=None, dynamic=True):
    """Decorator registering a model builder under ``name``.

    Example:
        >>> @register_model("my_net", divisor=16)
        ... def my_net(n_classes=2, input_shape=(None, None, 3), **kw): ...
    """

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        ms = min_size if min_size is not None else divisor
        ts = test_size if test_size is not None else (max(ms, divisor, 32),) * 2
        _REGISTRY[name] = ModelSpec(name, fn, divisor, ms, tuple(ts), dict(test_kwargs or {}), dynamic)
        fn.kseg_name = name
        return fn

    return deco


def list_models():
    """Return the sorted list of registered model names."""
    return sorted(_REGISTRY)


def model_spec(name):
    """Return the :class:`ModelSpec` of ``name`` (raises listing valid names)."""
    if name not in _REGISTRY:
        raise unknown_name("model", name, _REGISTRY)
    return _REGISTRY[name]


def check_input_size(name, height, width, divisor=1, min_size=1):
    """Raise :class:`InputShapeError` unless (height, width) suits the model.

    ``None`` dimensions (dynamic size) pass; they are checked when data arrives.
    """
    for what, v in (("height", height), ("width", width)):
        if v is None:
            continue
        if v < min_size or v % divisor:
            raise InputShapeError(
                f"{name}: input {what} {v} is not allowed; it must be a multiple of "
                f"{divisor} and at least {min_size} (e.g. {max(min_size, divisor * max(1, round(v / divisor)))}); "
                f"change --input_{what}"
            )


def get_model(name, n_classes=2, input_height=None, input_width=None, channels=3, **kwargs):
    """Build a registered model by name.

    Args:
        name: a name from :func:`list_models`.
        n_classes: number of output classes (1 = binary with a sigmoid).
        input_height, input_width: fixed input size, or ``None`` for any size.
        channels: input channels.
        **kwargs: passed to the builder (``activation``, ``base_filters``, ...).

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, channels)`` to ``(B, H, W, n_classes)``.
    """
    spec = model_spec(name)
    check_input_size(name, input_height, input_width, spec.divisor, spec.min_size)
    params = inspect.signature(spec.builder).parameters
    accepts_var = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for k in kwargs:
        if k not in params and not accepts_var:
            valid = [p for p in params if p not in ("n_classes", "input_shape")]
            raise unknown_name(f"option of model {name}", k, valid)
    return spec.builder(
        n_classes=n_classes, input_shape=(input_height, input_width, channels), **kwargs
    )
