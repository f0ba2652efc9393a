"""The experiment folder: config.json, best/last.keras, state.json, history.csv, logs/.

``config.json`` holds an :class:`kseg.config.ExperimentConfig`; :func:`read_config`
and :func:`write_config` are its only reader and writer.

A new experiment is transactional (:class:`ExperimentStage`): it is written in a hidden
folder beside its final place and moved there at its first checkpoint, replacing an
older experiment of the same name (``--overwrite``) only then. A run that dies earlier
leaves the old experiment as it was; its hidden folder is removed by the next run.
"""

import json
import os
import shutil
import tempfile
import zipfile

from kseg.config import ExperimentConfig
from kseg.files import (STAGE_OWNER, STAGING_PREFIX, atomic_path, is_partial_write, missing_dirs, remove_leftovers,
                        replace_dir,
                        sweep_stale_stages, write_stage_owner)
from kseg.errors import ConfigError, ExperimentError

CONFIG = "config.json"
STATE = "state.json"
BEST = "best.keras"
LAST = "last.keras"
HISTORY = "history.csv"
LOGS = "logs"


def write_json(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ExperimentError(f"{path} does not exist") from None
    except ValueError as e:
        raise ExperimentError(f"{path} is not valid JSON ({e})") from None


def read_config(folder):
    """The :class:`~kseg.config.ExperimentConfig` of an experiment folder (one-line errors)."""
    path = os.path.join(folder, CONFIG)
    try:
        return ExperimentConfig.from_dict(read_json(path), source=path)
    except ConfigError as e:
        raise ExperimentError(str(e)) from None


def write_config(folder, config):
    """Write ``config`` (an :class:`~kseg.config.ExperimentConfig`) as ``folder/config.json``, atomically."""
    write_json(os.path.join(folder, CONFIG), config.to_dict())


def load_model_file(path, compile=True, config=None):
    """``keras.saving.load_model`` with kseg's custom objects registered and one-line errors:
    a missing file is "does not exist", an unreadable one is "corrupt". With ``config``
    (the experiment's :class:`ExperimentConfig`) the model must match it
    (:func:`check_model_matches`)."""
    import keras

    from kseg import register_keras_objects

    register_keras_objects()

    if not os.path.isfile(path):
        raise ExperimentError(f"{path} does not exist")
    try:
        model = keras.saving.load_model(path, compile=compile)
    except Exception as e:  # zip/h5 errors, truncated files, foreign formats
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if path.lower().endswith(".keras") and not zipfile.is_zipfile(path):
            first = "not a complete .keras (zip) file: truncated or overwritten"  # Keras says "File not found"
        raise ExperimentError(f"{path} is corrupt or not a Keras model file ({first}); retrain, or resume "
                              "from the other checkpoint (best.keras / last.keras)") from None
    if config is not None:
        check_model_matches(model, config, path)
    return model


def check_model_matches(model, config, path):
    """Refuse (one line) a model whose classes, input channels or fixed input size differ
    from its ``config.json``: predicting or resuming with a model the config does not
    describe gives wrong answers without an error."""
    config = ExperimentConfig.coerce(config)
    diffs = []
    out = tuple(model.output_shape)
    if out[-1] != config.n_classes:
        diffs.append(f"{out[-1]} output channels, the config says n_classes {config.n_classes}")
    channels = getattr(config, "channels", None) or 3
    shape = tuple(model.input_shape)
    if shape[-1] is not None and shape[-1] != channels:
        diffs.append(f"{shape[-1]} input channels, the config says {channels}")
    if None not in shape[1:3] and tuple(shape[1:3]) != (config.input_height, config.input_width):
        diffs.append(f"input {shape[1]}x{shape[2]}, the config says {config.input_height}x{config.input_width}")
    if diffs:
        raise ExperimentError(f"{path} does not match its config.json: the model has {'; '.join(diffs)}. The folder "
                              "mixes two experiments; retrain it or restore its config.json")


class ExperimentStage:
    """A new experiment written in a hidden folder next to ``final`` until its first checkpoint.

    ``path`` is where to write; :meth:`promote` moves the folder onto ``final``
    (replacing an older experiment there) and :meth:`discard` removes it when the run
    fails first, together with the parent folders it had to create.
    """

    def __init__(self, final):
        self.final = os.path.abspath(final)
        parent = os.path.dirname(self.final)
        self._created = missing_dirs(parent)
        os.makedirs(parent, exist_ok=True)
        sweep_stale_stages(parent)
        self.path = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.path.basename(self.final)}-", dir=parent)
        write_stage_owner(self.path)
        self.promoted = False

    def promote(self):
        """Move the staged experiment into place (the old one, if any, goes only now)."""
        if self.promoted:
            return self.final
        os.remove(os.path.join(self.path, STAGE_OWNER))
        replace_dir(self.path, self.final)
        self.path, self.promoted = self.final, True
        return self.final

    def discard(self):
        """Remove the staged folder of a run that ended before its first checkpoint."""
        if self.promoted:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        for p in self._created:  # deepest first
            try:
                os.rmdir(p)
            except OSError:
                break


def remove_partial_writes(folder):
    """Delete the temporary files of writes a killed run left in ``folder`` (not below it)."""
    return remove_leftovers(folder, is_partial_write)


def is_experiment(folder):
    return os.path.isfile(os.path.join(folder, CONFIG))


def resolve_weights(path):
    """Map ``--weights_path`` (an experiment folder or a ``.keras`` file) to
    ``(experiment_dir, model_file, config)``.

    A folder uses ``best.keras`` (else ``last.keras``); a file needs a
    ``config.json`` beside it.
    """
    if os.path.isdir(path):
        folder = path
        model_file = None
        for name in (BEST, LAST):
            if os.path.isfile(os.path.join(folder, name)):
                model_file = os.path.join(folder, name)
                break
        if not is_experiment(folder):
            raise ExperimentError(
                f"{folder} holds no experiment (no {CONFIG}); pass the folder that "
                "scripts/train.py wrote (weights/<exp_name>)"
            )
        if model_file is None:
            raise ExperimentError(
                f"{folder} has no {BEST} or {LAST}; train first (scripts/train.py) or pass a .keras file"
            )
    elif os.path.isfile(path):
        folder = os.path.dirname(os.path.abspath(path))
        model_file = path
        if not is_experiment(folder):
            raise ExperimentError(
                f"{path} has no {CONFIG} beside it; pass the experiment folder written by scripts/train.py"
            )
    else:
        raise ExperimentError(f"--weights_path {path} does not exist; pass weights/<exp_name> or a .keras file")
    return folder, model_file, read_config(folder)


def latest_experiment(root="weights"):
    """The most recently created experiment folder under ``root`` that holds a model."""
    import glob

    cands = [os.path.dirname(p) for p in glob.glob(os.path.join(root, "*", CONFIG))]
    cands = [c for c in cands if glob.glob(os.path.join(c, "*.keras"))]
    if not cands:
        raise ExperimentError(f"no experiment found in {root}/; train one first or pass --weights_path")
    return max(cands, key=lambda c: os.path.getmtime(os.path.join(c, CONFIG)))


def weights_config(model_file, *, model_name, n_classes, input_height, input_width, image_init="divide",
                   resize_op=1):
    """The :class:`~kseg.config.ExperimentConfig` of a model file that has no kseg
    experiment around it (e.g. ``weights/unet.xx.hdf5`` of an older project): the
    command line says what the file is."""
    from kseg.data.palette import voc_palette
    from kseg.config import label_values

    k = label_values(n_classes)
    return ExperimentConfig(model_name=model_name, n_classes=n_classes, input_height=input_height,
                            input_width=input_width, image_init=image_init, resize_op=resize_op,
                            palette=voc_palette(k).tolist(), dataset="")


def load_weights_file(path, config):
    """A Keras model from a file outside any experiment: the whole model when the file
    holds one (``.keras``, Keras HDF5), else ``config``'s registered model built for
    ``config``'s classes and size with the file's weights (a weights-only HDF5 file)."""
    if not os.path.isfile(path):
        raise ExperimentError(f"--weights_path {path} does not exist")
    try:
        return load_model_file(path, compile=False)
    except ExperimentError as whole:
        from kseg.models import get_model, model_spec

        dyn = model_spec(config.model_name).dynamic
        model = get_model(config.model_name, n_classes=config.n_classes,
                          input_height=None if dyn else config.input_height,
                          input_width=None if dyn else config.input_width, **config.model_kwargs)
        try:
            model.load_weights(path)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ExperimentError(f"{path}: neither a Keras model ({str(whole)[len(path) + 1:][:80]}) nor weights "
                                  f"of {config.model_name} with {config.n_classes} classes ({first}); check "
                                  "--model_name and --classes") from None
        return model
