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

Importing ``kseg`` also registers nothing with Keras; ``kseg.load_model(path)``
loads any ``.keras`` file kseg wrote (models, losses and metrics registered).
"""

import importlib

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
