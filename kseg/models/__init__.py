"""The kseg model zoo.

``get_model(name, n_classes=..., input_height=..., input_width=...)`` builds any
registered model by name; ``list_models()`` lists them. Every builder is also
importable by its function name: ``from kseg.models import unet``.

Adding a model: write its module with an ``@register_model`` builder, then
import the builder below and add it to ``__all__`` (a module that is not
imported here is not registered; tests/models/test_conventions.py checks both).

Name clash, resolved on purpose: most submodules have the name of their builder
(``unet``, ``enet``, ``segnet``, ``pspnet``, ``icnet``, ``hrnet``, ``attunet``,
``r2unet``, ``vggunet``, ``deeplabv3``, ``deeplabv3plus``, ``fpn``, ``linknet``, ``pan``,
``manet``, ``upernet``, ``segformer``). Importing ``kseg.models.unet``
first binds the MODULE to the attribute ``kseg.models.unet``; the
``from kseg.models.unet import unet`` statement below then rebinds that name to
the FUNCTION, and nothing imports these modules again afterwards (a repeated
import does not rebind the attribute). So in this namespace the function wins:
``from kseg.models import unet`` gives the builder, while
``import kseg.models.unet`` / ``importlib.import_module("kseg.models.unet")``
and ``sys.modules["kseg.models.unet"]`` still give the module. The check at the
end of this file enforces it.
"""

import types as _types

from kseg.models.registry import (
    ModelSpec,
    check_input_size,
    get_model,
    list_models,
    model_spec,
    register_model,
)
from kseg.models.backbones import list_encoders  # the keras.applications encoders (unet(encoder=...))

# One import per model module, alphabetical by module; each binds the builder
# function(s) over the submodule of the same name (see the module docstring).
from kseg.models.attunet import attunet, r2attunet
from kseg.models.deeplab import deeplab_v2
from kseg.models.deeplabv3 import deeplabv3
from kseg.models.deeplabv3plus import deeplabv3plus
from kseg.models.enet import enet
from kseg.models.fcn import fcn8
from kseg.models.fpn import fpn
from kseg.models.hrnet import hrnet
from kseg.models.icnet import icnet
from kseg.models.linknet import linknet
from kseg.models.manet import manet
from kseg.models.mobilenet import mobilenet_fcn8, mobilenet_unet
from kseg.models.nested_unet import unet_plus_plus
from kseg.models.pan import pan
from kseg.models.pspnet import pspnet
from kseg.models.r2unet import r2unet
from kseg.models.se_unet import scseunet, seunet
from kseg.models.segformer import segformer
from kseg.models.segnet import segnet
from kseg.models.unet import unet
from kseg.models.upernet import upernet
from kseg.models.vggunet import vggunet
from kseg.models.xception_unet import unet_xception_resnetblock

__all__ = [
    # the registry
    "ModelSpec",
    "check_input_size",
    "get_model",
    "list_models",
    "model_spec",
    "register_model",
    "list_encoders",
    # the builders, one per registered model
    "attunet",
    "deeplab_v2",
    "deeplabv3",
    "deeplabv3plus",
    "enet",
    "fcn8",
    "fpn",
    "hrnet",
    "icnet",
    "linknet",
    "manet",
    "mobilenet_fcn8",
    "mobilenet_unet",
    "pan",
    "pspnet",
    "r2attunet",
    "r2unet",
    "scseunet",
    "segformer",
    "segnet",
    "seunet",
    "unet",
    "unet_plus_plus",
    "unet_xception_resnetblock",
    "upernet",
    "vggunet",
]

for _name in __all__:  # the builder function, never the same-named submodule
    if isinstance(globals()[_name], _types.ModuleType):  # pragma: no cover
        raise ImportError(f"kseg.models.{_name} is a module, not the builder function")
del _name
