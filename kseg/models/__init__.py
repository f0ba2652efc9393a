"""The kseg model zoo.

``get_model(name, n_classes=..., input_height=..., input_width=...)`` builds any
registered model by name; ``list_models()`` lists them. Every builder is also
importable by its function name: ``from kseg.models import unet``.

Each module of this package registers its models with ``@register_model``; the
modules are imported here automatically, so adding a model is adding one file.
"""

import importlib
import pkgutil

from kseg.models.registry import (  # noqa: F401
    ModelSpec,
    check_input_size,
    get_model,
    list_models,
    model_spec,
    register_model,
)

_SKIP = {"registry", "layers", "backbones"}

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name not in _SKIP and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

for _name in list_models():
    _fn = model_spec(_name).builder
    globals()[_fn.__name__] = _fn

__all__ = ["get_model", "list_models", "model_spec", "register_model"] + sorted(
    model_spec(n).builder.__name__ for n in list_models()
)
