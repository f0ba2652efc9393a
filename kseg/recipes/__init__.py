"""Training recipes: the papers' settings as files, and ``--config FILE``.

A recipe is a YAML file in this folder (``<model>.yaml``, ``+`` spelled ``pp``) with
``name`` (the model), ``title``, ``source`` (paper, section or table), ``paper`` (what
the paper trained on: dataset, input, budget, ImageNet start, result -- for reading),
``train`` (:class:`~kseg.config.TrainConfig` fields with the paper's values) and
``notes`` (what kseg does not reproduce). ``kseg train --recipe NAME`` starts from a
recipe; ``--recipe list`` lists them.

``--config FILE`` reads a JSON or YAML file holding TrainConfig fields, a recipe, or
an experiment's ``config.json`` (its resolved ``train`` section: the run is repeated
into a new experiment folder). Command-line flags override both.

Budgets scale to the user's dataset through ``iterations``: a recipe that names the
paper's budget in optimizer steps keeps that number of steps, which is
``ceil(iterations / steps per epoch)`` epochs on the user's data.
"""

import json
import os

from kseg.config import TrainConfig
from kseg.errors import ConfigError

RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))

#: Keys of a TrainConfig that say where one run lives, not how to train: dropped when
#: a finished experiment's config.json is used as a recipe, so it trains anew.
_RUN_PLACE = ("exp_name", "resume", "overwrite", "allow_recipe_change", "train_save_path")


def _file_name(name):
    return name.replace("+", "p") + ".yaml"


def _read_mapping(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"--config {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"--config {path} cannot be read ({e.strerror})") from None
    is_json = path.lower().endswith(".json")
    try:
        if is_json:
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{path} is not valid {'JSON' if is_json else 'YAML'} ({first})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of training options, not {type(data).__name__}")
    return data


def list_recipes():
    """The names of the shipped recipes (model names), sorted."""
    names = []
    for f in sorted(os.listdir(RECIPE_DIR)):
        if f.endswith(".yaml"):
            names.append(_read_mapping(os.path.join(RECIPE_DIR, f)).get("name", f[:-5]))
    return sorted(names)


def load_recipe(name):
    """The whole recipe mapping of ``name`` (``name``, ``title``, ``source``, ``paper``, ``train``, ``notes``)."""
    path = os.path.join(RECIPE_DIR, _file_name(str(name)))
    if not os.path.isfile(path):
        raise ConfigError(f"unknown recipe {name!r}; valid recipes are: {', '.join(list_recipes())} "
                          "(kseg train --recipe list)")
    return _read_mapping(path)


def recipe_options(recipe):
    """The TrainConfig options of a recipe mapping: its ``train`` section and its model."""
    train = dict(recipe.get("train") or {})
    train.setdefault("model_name", recipe["name"])
    return train


def config_file_options(path):
    """TrainConfig options from ``--config FILE`` (options, a recipe, or an experiment's config.json)."""
    data = _read_mapping(path)
    if "train" in data and isinstance(data["train"], dict):
        opts = dict(data["train"])
        if "model_name" in data and "name" not in data:  # an experiment's config.json: train anew
            for k in _RUN_PLACE:
                opts.pop(k, None)
        elif "name" in data:
            opts.setdefault("model_name", data["name"])
        return opts
    return data


def format_recipe_list():
    """One line per recipe: name, optimiser summary, budget and source; ``*`` marks a
    value the paper does not state (kseg's default is used)."""
    d = TrainConfig()
    rows = []
    for name in list_recipes():
        r = load_recipe(name)
        t = r.get("train") or {}

        def v(key):
            return f"{t[key]}" if key in t else f"{getattr(d, key)}*"

        opt = f"{v('optimizer_name')} lr {v('learning_rate')}, {v('schedule')}"
        if t.get("weight_decay"):
            opt += f", wd {t['weight_decay']}"
        budget = (f"{t['iterations']} it" if t.get("iterations") else
                  f"{t['epochs']} ep" if t.get("epochs") else "budget not stated")
        rows.append(f"{name:<26} {opt}, batch {v('train_batch_size')}, {budget} -- {r.get('source', '')}")
    rows.append("(* not stated by the paper: kseg's default)")
    return "\n".join(rows)


def check_options(opts, where):
    """Raise a one-line ConfigError unless every key is a TrainConfig field (and values are valid)."""
    try:
        return TrainConfig.from_dict(opts)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
