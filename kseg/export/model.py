"""The Keras model to export: loading, the TensorFlow-backend requirement, float32, the input shape."""

from kseg.config import ExperimentConfig
from kseg.errors import ExportError
from kseg.runtime import as_float32  # noqa: F401 (re-exported: export computes in float32)


def require_tensorflow_backend():
    """Raise unless Keras runs on TensorFlow (the export engine)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError(
            f"exporting needs the TensorFlow Keras backend (current: {keras.backend.backend()}); "
            "run with KERAS_BACKEND=tensorflow"
        )


def load_experiment(weights_path):
    """Load ``(model, folder, config)`` from an experiment folder or a ``.keras`` file."""
    from kseg.experiment import resolve_weights
    from kseg.runtime import keras_runner

    folder, keras_file, config = resolve_weights(weights_path)  # fails fast, before TensorFlow loads
    require_tensorflow_backend()
    model = keras_runner(keras_file, config=config).model
    return model, folder, config


def input_shape_for_export(model, config, dynamic_batch=True, dynamic_size=False):
    """The ``(batch, height, width, channels)`` of the exported input (``None`` = dynamic)."""
    config = ExperimentConfig.coerce(config)
    _, mh, mw, ch = model.input_shape
    if dynamic_size:
        if mh is not None or mw is not None:
            raise ExportError(
                f"model {model.name} was built for fixed {mh}x{mw} inputs, so --dynamic_size is not "
                "possible; export without --dynamic_size (the predictor's resize/slide modes still work)"
            )
        h = w = None
    else:
        h = mh if mh is not None else config.input_height
        w = mw if mw is not None else config.input_width
    return (None if dynamic_batch else 1, h, w, ch or 3)


def model_divisor(config):
    """The registry's size divisor of the config's model with its options (32 when unknown)."""
    config = ExperimentConfig.coerce(config)
    try:
        from kseg.models import model_spec

        return max(1, model_spec(config.model_name).size_rule(**config.model_kwargs)[0])
    except Exception:
        return 32


def uses_argmax_unpooling(model):
    """True when a (nested) layer is ``MaxPoolingWithArgmax2D`` (SegNet, ENet)."""
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        if type(layer).__name__ == "MaxPoolingWithArgmax2D":
            return True
        stack.extend(getattr(layer, "layers", []))
    return False
