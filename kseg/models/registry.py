"""The model registry: builders register themselves by name with a decorator.

:func:`register_model` is also where the options every builder shares are
checked, ONCE for all builders: it wraps the builder so that, before anything is
built, a call -- direct (``unet(n_classes=2, input_shape=(65, 65, 3))``) or
through :func:`get_model` -- has

* only options the builder takes (``UnknownNameError`` listing them),
* every option in the type of its default (``int``, ``float``, ``bool``, a tuple of
  numbers, a name): text from a command line (``--model_option base_filters=32``)
  is converted, a value of another type is a one-line ``ModelConfigError``
  (:func:`kseg.models._checks.option_value`; :func:`parse_model_options` does the
  same for an options dict before anything is built),
* channels-last Keras, an integer ``n_classes`` from 1 to
  :data:`kseg.config.MAX_CLASSES` (labels are 16-bit), a well-formed
  ``input_shape`` and a known ``activation`` (:mod:`kseg.models._checks`),
* an input height and width that follow the model's size rule, the
  ``divisor`` / ``min_size`` given to :func:`register_model`
  (:func:`check_input_size`, ``InputShapeError`` naming every bad dimension).

Builders therefore check only their own options and never call
:func:`check_input_size` themselves.

One size rule everywhere
------------------------
A model built without a fixed size (``input_shape=(None, None, C)``, the default and
what training saves) meets its sizes only when it is called. The wrapper therefore
returns every model as a :class:`SizeCheckedModel`: the builder's functional graph,
unchanged (same layers, names, weights and parameter count), in a ``keras.Model``
subclass whose ``__call__`` checks the height and width of what it is given and raises
the SAME one-line ``InputShapeError`` as a fixed-size build
(:func:`kseg.models._checks.input_size_message`: every bad dimension, the rule, the
nearest valid sizes), instead of a raw backend shape error deep in the network or a
silently cropped output (FCN-8s used to return 224x224 for 225x225). A model built
for a fixed size and called with another allowed size gets a one-line
``InputShapeError`` too.

Why a model subclass and not a check layer after the ``Input``: inserting a layer
after the input of a graph the builder has already made means re-running every layer
on a new input; Keras then keeps two call nodes per layer and ``layer.output`` (used
to take encoder taps and sub-models: ``model.get_layer(n).output``) answers with the
discarded first graph. Wrapping the same input and output tensors in a
``keras.Model`` subclass adds no node and no layer, so layer lookup, weight loading
by name, parameter counts and exports are those of the builder's graph. The class is
registered (``kseg>SizeCheckedModel``) and stores its rule in its config, so a
``.keras`` file loads back checked; a model that Keras clones without its config
(``keras.models.clone_model``) is an unchecked functional model again.

Where the check runs: in Python on the static shape whenever it is known -- eager
calls, ``predict`` / ``predict_on_batch`` (checked on the array before Keras traces),
every JAX trace, graphs traced for one size. Inside a TensorFlow graph traced with
unknown height/width (a caller's own ``tf.function`` with a ``None`` signature) the
size is not known when the model is called, and Keras 3 has no backend-neutral
run-time assertion, so nothing is checked there; every kseg entry point
(``predict``, the Predictor, export, the demo) checks the concrete array first.
Exports carry no check.
"""

import dataclasses
import functools
import inspect

import keras

from kseg.errors import InputShapeError, UnknownNameError, unknown_name
from kseg.models import _checks as C
from kseg.models._checks import check_input_size  # noqa: F401 (public here: kseg.training imports it)


@keras.saving.register_keras_serializable(package="kseg")
class SizeCheckedModel(keras.Model):
    """A functional model that checks the height and width of its input when called.

    Built by the registry wrapper from a builder's model
    (``SizeCheckedModel(model.input, model.output, name=model.name, size_rule=...)``),
    so it has the builder's layers and weights; see the module docstring.

    Args:
        inputs, outputs, name: as for ``keras.Model(inputs, outputs, name=...)``.
        size_rule: ``{"model": registry name, "divisor": int, "min_size": int}``;
            ``None`` checks nothing (a plain functional model).
    """

    def __init__(self, inputs, outputs, name=None, **kwargs):
        rule = kwargs.pop("size_rule", None)
        super().__init__(inputs, outputs, name=name, **kwargs)
        rule = dict(rule) if rule else None
        self.kseg_name = rule["model"] if rule else None
        self.size_divisor = int(rule["divisor"]) if rule else 1
        self.size_min = int(rule["min_size"]) if rule else 1
        shape = tuple(self.inputs[0].shape) if len(self.inputs) == 1 else ()
        self._built_size = tuple(shape[1:3]) if len(shape) == 4 else (None, None)

    @property
    def size_rule(self):
        """``{"model", "divisor", "min_size"}`` or ``None``."""
        if self.kseg_name is None:
            return None
        return {"model": self.kseg_name, "divisor": self.size_divisor, "min_size": self.size_min}

    def check_size(self, x):
        """Raise ``InputShapeError`` when the (static) height/width of ``x`` cannot be
        taken; return ``x`` (unchecked when the size is unknown: see the module docstring)."""
        if self.kseg_name is None:
            return x
        single = isinstance(x, (list, tuple)) and len(x) == 1
        t = x[0] if single else x
        shape = getattr(t, "shape", None)
        if shape is None or len(shape) != 4:
            return x
        h, w = (None if v is None else int(v) for v in tuple(shape)[1:3])
        message = C.input_size_message(self.kseg_name, h, w, self.size_divisor, self.size_min)
        if message:
            raise InputShapeError(message)
        bh, bw = self._built_size
        if (bh is not None and h is not None and h != bh) or (bw is not None and w is not None and w != bw):
            raise InputShapeError(C.fixed_size_message(self.kseg_name, (bh, bw), (h, w)))
        return x

    def __call__(self, *args, **kwargs):
        if args:
            args = (self.check_size(args[0]),) + args[1:]
        elif "inputs" in kwargs:
            kwargs["inputs"] = self.check_size(kwargs["inputs"])
        return super().__call__(*args, **kwargs)

    def predict(self, x, *args, **kwargs):
        # checked on the array: after Keras retraced its predict step for a second
        # size, the traced graph no longer knows the size
        self.check_size(x)
        return super().predict(x, *args, **kwargs)

    def predict_on_batch(self, x):
        self.check_size(x)
        return super().predict_on_batch(x)

    def get_config(self):
        return {**super().get_config(), "size_rule": self.size_rule}


def _size_checked(model, name, divisor, min_size):
    """The builder's functional ``model`` as a :class:`SizeCheckedModel` (same graph);
    anything else a builder returns (a subclassed model, another object) unchanged."""
    if not isinstance(model, keras.Model) or type(model).__name__ != "Functional":
        return model
    return SizeCheckedModel(model.input, model.output, name=model.name,
                            size_rule={"model": name, "divisor": int(divisor), "min_size": int(min_size)})


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a model besides its builder.

    Attributes:
        name: registry name (``"unet++"``).
        builder: the public builder function (wrapped by :func:`register_model`).
        divisor: input height and width must be multiples of this (with the
            builder's default options; see :meth:`size_rule`).
        min_size: smallest allowed input height/width (default options).
        test_size: the smallest convenient (height, width) for tests and the cost table.
        test_kwargs: extra builder arguments used by the fast parametrized tests
            (e.g. narrower widths); the golden parameter count always uses defaults.
        dynamic: the model can be built with ``None`` height/width (any allowed size
            at run time). Training builds such models size-free so that one saved
            model serves every prediction mode; others are built at the input size.
        rule: ``rule(options) -> (divisor, min_size)`` for the builder's bound
            options (all parameters, defaults filled in).
    """

    name: str
    builder: object
    divisor: int = 1
    min_size: int = 1
    test_size: tuple = (64, 64)
    test_kwargs: dict = dataclasses.field(default_factory=dict)
    dynamic: bool = True
    rule: object = None

    def size_rule(self, **options):
        """``(divisor, min_size)`` of the model built with ``options`` (others default).

        An unknown option raises ``TypeError``; an option value not of its type a
        ``ModelConfigError`` (as the builder would).
        """
        sig = inspect.signature(self.builder)
        bound = sig.bind_partial(**options)
        _typed_options(self.name, sig.parameters, bound.arguments)
        bound.apply_defaults()
        return self.rule(dict(bound.arguments))


_REGISTRY = {}

#: Options every builder shares, checked by the wrapper itself (not by their default's type).
_SHARED = ("n_classes", "input_shape", "activation")


def _typed_options(model, params, arguments):
    """Convert, in place, the given ``arguments`` (name -> value) to the types of the
    builder's defaults (:func:`kseg.models._checks.option_value`)."""
    for k, v in list(arguments.items()):
        p = params.get(k)
        if k in _SHARED or p is None or p.default is p.empty:
            continue
        arguments[k] = C.option_value(model, k, v, p.default)


def _unknown_option(model, params, name):
    valid = [p for p in params if p not in ("n_classes", "input_shape")]
    return UnknownNameError(f"unknown option of model {model}: {name!r}; valid options are: {', '.join(valid)}")


def _as_rule(value):
    """An int or a callable of the options -> a callable of the options."""
    return value if callable(value) else (lambda options: value)


def register_model(name, *, divisor=1, min_size=None, test_size=None, test_kwargs=None, dynamic=True):
    """Decorator registering a model builder under ``name`` and checking its shared options.

    Args:
        name: registry name.
        divisor: input height and width must be multiples of this. Either an int
            or, when the rule depends on the builder's options, a function of the
            options dict (all parameters, defaults filled in) returning the int,
            e.g. ``lambda o: 2 ** o["depth"]``; such a function validates the
            options it reads (it runs before the builder).
        min_size: smallest allowed input height/width (int or function of the
            options); default ``divisor``.
        test_size, test_kwargs, dynamic: see :class:`ModelSpec`.

    The returned builder is a wrapper (``functools.wraps``: same name, docstring
    and ``inspect.signature``; ``__wrapped__`` is the undecorated function) that
    runs the shared checks described in the module docstring and then the builder.

    Example:
        >>> @register_model("my_net", divisor=16)
        ... def my_net(n_classes=2, input_shape=(None, None, 3), *, activation="softmax"): ...
    """

    def deco(fn):
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} is registered twice")
        sig = inspect.signature(fn)
        params = sig.parameters
        accepts_var = any(p.kind is p.VAR_KEYWORD for p in params.values())
        div_rule = _as_rule(divisor)
        min_rule = _as_rule(min_size) if min_size is not None else div_rule

        def rule(options):
            return div_rule(options), min_rule(options)

        defaults = sig.bind_partial()
        defaults.apply_defaults()
        d0, m0 = rule(dict(defaults.arguments))

        @functools.wraps(fn)
        def builder(*args, **kwargs):
            if not accepts_var:
                for k in kwargs:
                    if k not in params:
                        raise _unknown_option(name, params, k)
            bound = sig.bind(*args, **kwargs)
            _typed_options(name, params, bound.arguments)
            bound.apply_defaults()
            options = dict(bound.arguments)
            C.check_channels_last(name)
            C.n_classes(name, options["n_classes"])
            shape = C.input_shape(name, options["input_shape"])
            if "activation" in options:
                C.activation(name, options["activation"])
            div, min_ = rule(options)
            check_input_size(name, shape[0], shape[1], div, min_)
            return _size_checked(fn(*bound.args, **bound.kwargs), name, div, min_)

        builder.__kwdefaults__ = fn.__kwdefaults__  # functools.wraps does not copy them
        builder.kseg_name = name
        ts = test_size if test_size is not None else (max(m0, d0, 32),) * 2
        _REGISTRY[name] = ModelSpec(
            name, builder, d0, m0, tuple(ts), dict(test_kwargs or {}), dynamic, rule
        )
        return builder

    return deco


def list_models():
    """Return the sorted list of registered model names."""
    return sorted(_REGISTRY)


def model_spec(name):
    """Return the :class:`ModelSpec` of ``name`` (raises listing valid names)."""
    if name not in _REGISTRY:
        raise unknown_name("model", name, _REGISTRY)
    return _REGISTRY[name]


def parse_model_options(name, options):
    """The builder options ``options`` (e.g. ``--model_option`` values) of model ``name``,
    checked and converted to the builder's types, without building anything.

    Raises ``UnknownNameError`` for an unknown model or option and a one-line
    ``ModelConfigError`` naming the option, the value and the expected type for a
    value that is not of the option's type (``base_filters='abc'``). Ranges are
    checked when the model is built.
    """
    spec = model_spec(name)
    params = inspect.signature(spec.builder).parameters
    options = dict(options or {})
    accepts_var = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for k in options:
        if k in ("n_classes", "input_shape"):
            flags = "--n_classes" if k == "n_classes" else "--input_height/--input_width"
            raise UnknownNameError(f"{name}: {k} is not a model option; set it with {flags}")
        if k not in params and not accepts_var:
            raise _unknown_option(name, params, k)
    _typed_options(name, params, options)
    return options


def get_model(name, n_classes=2, input_height=None, input_width=None, channels=3, *, freeze_encoder=False,
              **kwargs):
    """Build a registered model by name.

    The builder's own wrapper (see :func:`register_model`) checks the options and
    the input size against the model's registered rule.

    Args:
        name: a name from :func:`list_models`.
        n_classes: number of output classes (1 = binary with a sigmoid).
        input_height, input_width: fixed input size, or ``None`` for any size.
        channels: input channels.
        freeze_encoder: build the model with its encoder frozen
            (:func:`kseg.models.freeze.freeze_encoder`: not trained, its BatchNorm
            layers in inference mode). An option of ``get_model``, not of the
            builders: it applies to any model that has an encoder, and one without
            (the plain ``unet``) raises ``ModelConfigError``.
        **kwargs: passed to the builder (``activation``, ``base_filters``, ...).

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, channels)`` to ``(B, H, W, n_classes)``
        (a :class:`SizeCheckedModel`).
    """
    spec = model_spec(name)
    model = spec.builder(
        n_classes=n_classes, input_shape=(input_height, input_width, channels), **kwargs
    )
    if C.flag(name, "freeze_encoder", freeze_encoder):
        from kseg.models.freeze import freeze_encoder as freeze

        freeze(model, name)
    return model
