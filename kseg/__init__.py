"""kseg: semantic segmentation for Keras 3.

The top-level names are imported lazily (``import kseg`` loads neither Keras nor
TensorFlow):

    import kseg
    model = kseg.get_model("unet", n_classes=3)
    loss = kseg.get_loss("ce+dice", n_classes=3)
    metric = kseg.get_metric("mean_iou", n_classes=3)
    folder = kseg.train(kseg.TrainConfig(model_name="unet", loss="dice"))
    masks = kseg.Predictor.from_experiment(folder).predict(images)
    kseg.export_model(folder, "onnx")

``import kseg`` is all ``keras.saving.load_model`` needs to read a ``.keras`` file kseg
wrote: kseg's layers, losses and metrics are registered with Keras as soon as Keras
is imported (at once when it already is). ``kseg.load_model(path)`` does the same
with one-line errors.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys

__version__ = "0.1.0"

from kseg.errors import KsegError  # noqa: E402,F401

#: public name -> (module, attribute)
_LAZY = {
    "get_model": ("kseg.models", "get_model"),
    "list_models": ("kseg.models", "list_models"),
    "get_loss": ("kseg.losses", "get_loss"),
    "list_losses": ("kseg.losses", "list_losses"),
    "get_metric": ("kseg.metrics", "get_metric"),
    "train": ("kseg.training", "train"),
    "TrainConfig": ("kseg.config", "TrainConfig"),
    "ExperimentConfig": ("kseg.config", "ExperimentConfig"),
    "Predictor": ("kseg.predict", "Predictor"),
    "export_model": ("kseg.export", "export_model"),
    "load_model": ("kseg.experiment", "load_model_file"),
}

__all__ = ["__version__", "KsegError"] + sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kseg' has no attribute {name!r}")


def __dir__():
    return __all__


def register_keras_objects():
    """Import the modules that register kseg's layers, losses, metrics, optimizers and
    schedules with Keras (what a saved model may name)."""
    import kseg.losses  # noqa: F401
    import kseg.metrics  # noqa: F401
    import kseg.models  # noqa: F401
    import kseg.optim  # noqa: F401


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """Runs :func:`register_keras_objects` once Keras is imported, so that ``import kseg``
    stays light and still lets Keras deserialise kseg's files.

    When a kseg module is what imports Keras, the registration waits until that module
    (and every kseg module being imported with it) has finished, so the modules it
    imports never meet a half-initialised one.
    """

    def __init__(self):
        self.depth = 0  # kseg modules being executed right now
        self.pending = False

    def find_spec(self, name, path=None, target=None):
        is_kseg = name.startswith("kseg.")
        if name != "keras" and not is_kseg:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            self.depth += is_kseg
            try:
                run(module)
            finally:
                self.depth -= is_kseg
            if name == "keras":
                self.pending = True
            if self.pending and self.depth == 0:
                self.pending = False
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                register_keras_objects()

        spec.loader.exec_module = exec_module
        return spec


if "keras" in sys.modules:
    register_keras_objects()
elif not any(isinstance(f, _RegisterAfterKeras) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKeras())
