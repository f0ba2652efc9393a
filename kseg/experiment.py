"""The experiment folder (DESIGN.md section 5): config.json, best/last.keras, history, logs."""

import json
import os

from kseg.data.io import atomic_path
from kseg.errors import ExperimentError

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
    return folder, model_file, read_json(os.path.join(folder, CONFIG))


def latest_experiment(root="weights"):
    """The most recently created experiment folder under ``root`` that holds a model."""
    import glob

    cands = [os.path.dirname(p) for p in glob.glob(os.path.join(root, "*", CONFIG))]
    cands = [c for c in cands if glob.glob(os.path.join(c, "*.keras"))]
    if not cands:
        raise ExperimentError(f"no experiment found in {root}/; train one first or pass --weights_path")
    return max(cands, key=lambda c: os.path.getmtime(os.path.join(c, CONFIG)))
