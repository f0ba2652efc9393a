"""The shipped recipes (kseg/recipes/*.yaml), --recipe and --config."""

import json

import numpy as np
import pytest

from conftest import run_command
from kseg.config import TrainConfig
from kseg.models import list_models, model_spec
from kseg.recipes import config_file_options, list_recipes, load_recipe, recipe_options

#: every model of the old project's zoo (the "seed" models) has a recipe
SEED_MODELS = ["attunet", "deeplab_v2", "deeplabv3plus", "enet", "fcn8", "hrnet", "icnet", "mobilenet_fcn8",
               "mobilenet_unet", "pspnet", "r2attunet", "r2unet", "scseunet", "segnet", "seunet", "unet", "unet++",
               "unet_xception_resnetblock", "vggunet"]
#: decoders over any encoder (issue #22) with a recipe each
DECODER_MODELS = ["deeplabv3", "fpn", "linknet", "manet", "pan", "upernet"]


#: every shipped recipe (the seed models' and those of models added since)
RECIPES = list_recipes()


def test_every_seed_model_has_a_recipe():
    assert set(SEED_MODELS + DECODER_MODELS) <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_names_only_real_options_and_models(name):
    r = load_recipe(name)
    assert set(r) == {"name", "title", "source", "paper", "train", "notes"}, name
    assert r["name"] == name and r["name"] in list_models()
    assert r["source"] and isinstance(r["paper"], dict)
    cfg = TrainConfig.from_dict(recipe_options(r))  # unknown keys or bad values raise
    assert cfg.model_name == name
    # builder options the recipe names are real parameters of the builder
    import inspect

    params = inspect.signature(model_spec(name).builder).parameters
    assert set(cfg.model_option) <= set(params), (name, cfg.model_option)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_its_model_for_one_step(name):
    """The recipe's optimiser, schedule, weight decay, loss and class weighting on its model
    (built small: the registry's test size and widths) for one training step."""
    import keras

    from kseg.data.stats import class_stats, class_weights
    from kseg.models import get_model
    from kseg.optim import compile_model, make_optimizer, make_schedule

    cfg = TrainConfig.from_dict(recipe_options(load_recipe(name)))
    spec = model_spec(name)
    h, w = spec.test_size
    keras.utils.set_random_seed(0)
    options = {**cfg.model_option, **spec.test_kwargs}
    for k in ("encoder_weights", "weights"):  # no downloads in the tests: the ImageNet start stays off here
        if k in options:
            options[k] = None
    model = get_model(name, n_classes=3, input_height=h, input_width=w, **options)
    rng = np.random.default_rng(0)
    x = rng.random((2, h, w, 3), dtype=np.float32)
    y = rng.integers(0, 3, (2, h, w)).astype("int32")
    cw = class_weights(cfg.class_weights, class_stats(list(y), 3), 3) if cfg.class_weights else None
    sched = make_schedule(cfg.schedule, cfg.learning_rate, total_steps=10, steps_per_epoch=5, power=cfg.power,
                          min_learning_rate=cfg.min_learning_rate, step_epochs=cfg.step_epochs,
                          milestones=cfg.milestones, gamma=cfg.gamma, warmup_steps=cfg.warmup_steps,
                          warmup_factor=cfg.warmup_factor)
    opt = make_optimizer(cfg.optimizer_name, sched, momentum=cfg.momentum, nesterov=cfg.nesterov,
                         weight_decay=cfg.weight_decay, weight_decay_mode=cfg.weight_decay_mode,
                         clipnorm=cfg.clipnorm, ema=cfg.ema)
    compile_model(model, n_classes=3, loss=cfg.loss, loss_kwargs={"class_weights": cw} if cw else None,
                  optimizer=opt, run_eagerly=True)  # one step: tracing would cost more than it saves
    before = [np.array(v) for v in model.trainable_variables]
    loss = model.train_on_batch(x, y, return_dict=True)["loss"]
    assert np.isfinite(loss)
    changed = sum(not np.array_equal(b, np.array(v)) for b, v in zip(before, model.trainable_variables))
    assert changed > 0, "the step changed no weight"


def test_recipe_list_prints_every_recipe_with_its_source(capsys):
    code, out, _ = run_command("train", ["--recipe", "list"], capsys)
    assert code == 0
    for name in RECIPES:
        line = next(ln for ln in out.splitlines() if ln.split()[0] == name)
        assert load_recipe(name)["source"] in line


def test_unknown_recipe_and_bad_config_files_are_one_line_errors(tmp_path, capsys):
    code, _, err = run_command("train", ["--recipe", "segnett"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "segnett" in err and "segnet" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer_name: sgd\nlearning_rat: 0.1\n")
    code, _, err = run_command("train", ["--config", str(bad)], capsys)
    assert code == 2 and "learning_rat" in err and len(err.strip().splitlines()) == 1
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    code, _, err = run_command("train", ["--config", str(broken)], capsys)
    assert code == 2 and "not valid JSON" in err
    code, _, err = run_command("train", ["--config", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "does not exist" in err


def test_priority_recipe_then_config_file_then_flags(tmp_path):
    from kseg.cli import train

    f = tmp_path / "mine.yaml"
    f.write_text("learning_rate: 0.02\ntrain_batch_size: 4\n")
    args = train.build_parser().parse_args(["--recipe", "pspnet", "--config", str(f), "--train_batch_size", "2"])
    cfg, explicit = train.resolve_options(args)
    assert cfg.model_name == "pspnet" and cfg.schedule == "poly" and cfg.power == pytest.approx(0.9)
    assert cfg.learning_rate == pytest.approx(0.02) and cfg.train_batch_size == 2
    assert {"schedule", "learning_rate", "train_batch_size"} <= explicit


def test_an_experiment_config_json_is_a_recipe_for_a_new_run(tmp_path):
    exp = tmp_path / "config.json"
    exp.write_text(json.dumps({"model_name": "unet", "n_classes": 2, "input_height": 32, "input_width": 32,
                               "train": {"model_name": "unet", "exp_name": "old", "resume": False,
                                         "learning_rate": 0.005, "epochs": 3, "schedule": "cosine"}}))
    opts = config_file_options(str(exp))
    assert "exp_name" not in opts and opts["schedule"] == "cosine" and opts["epochs"] == 3
