"""kseg.config: the shared facts, TrainConfig and ExperimentConfig, and the flags made from them."""

import json

import pytest

from kseg.config import (IGNORE_INDEX, ExperimentConfig, TrainConfig, is_binary_sigmoid, label_values)
from kseg.errors import ConfigError, KsegError


def test_the_sigmoid_rule_and_the_ignore_value():
    assert [label_values(n) for n in (1, 2, 5)] == [2, 2, 5]
    assert is_binary_sigmoid(1) and not is_binary_sigmoid(2)
    assert IGNORE_INDEX == 255


@pytest.mark.parametrize("kw,needle", [
    ({"epochs": 0}, "--epochs"), ({"train_batch_size": -1}, "--train_batch_size"),
    ({"learning_rate": "fast"}, "--learning_rate"), ({"optimizer_name": "lamb"}, "--optimizer_name"),
    ({"validate": "maybe"}, "--validate"), ({"momentum": 1.5}, "--momentum"),
    ({"epochs": 3, "iterations": 100}, "--iterations"), ({"warmup_epochs": 1, "warmup_steps": 5}, "--warmup"),
    ({"milestones": "30,x"}, "--milestones"), ({"schedule": "linear"}, "--schedule"),
    ({"early_stopping": 3, "validate": False}, "--early_stopping"), ({"model_name": ""}, "--model_name"),
])
def test_train_config_checks_values_in_one_line(kw, needle):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**kw)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_train_config_converts_spellings():
    c = TrainConfig(validate="False", epochs="7", milestones="30,60", model_option=[("depth", 3)], resume="true")
    assert c.validate is False and c.epochs == 7 and c.milestones == [30, 60]
    assert c.model_option == {"depth": 3} and c.resume is True
    assert TrainConfig(resume="weights/unet.xx.hdf5").resume == "weights/unet.xx.hdf5"
    with pytest.raises(ConfigError, match="learning_rat"):
        TrainConfig.from_dict({"learning_rat": 0.1})


def test_every_field_is_a_flag_and_defaults_live_in_the_dataclass():
    from kseg.cli import train
    from kseg.cli.common import config_from_args

    parser = train.build_parser()
    flags = {a.dest for a in parser._actions}
    assert {f.name for f in TrainConfig.fields()} <= flags
    cfg, explicit = config_from_args(parser.parse_args([]))
    assert cfg == TrainConfig() and explicit == set()
    cfg, explicit = config_from_args(parser.parse_args(["--schedule", "poly", "--no-augment", "--milestones", "3,6"]))
    assert (cfg.schedule, cfg.augment, cfg.milestones) == ("poly", False, [3, 6])
    assert explicit == {"schedule", "augment", "milestones"}


def test_experiment_config_json_round_trip_and_errors(tmp_path):
    e = ExperimentConfig(model_name="unet", n_classes=1, input_height=32, input_width=48,
                         train=TrainConfig(epochs=3).to_dict())
    assert e.class_names == ["class_0", "class_1"] and e.n_values == 2 and e.input_size == (32, 48)
    p = tmp_path / "config.json"
    p.write_text(json.dumps(e.to_dict()))
    again = ExperimentConfig.from_json(str(p))
    assert again == e and again.train_config().epochs == 3
    assert again["n_classes"] == 1 and again.get("nothing", 5) == 5
    # a config.json written before TrainConfig existed kept the flags under "args"
    old = dict(e.to_dict(), args={"epochs": 4})
    del old["train"]
    assert ExperimentConfig.from_dict(old).train_config().epochs == 4
    for bad, needle in [({"n_classes": "x"}, "n_classes"), ({"image_init": "raw"}, "image_init")]:
        with pytest.raises(KsegError, match=needle):
            ExperimentConfig.from_dict(dict(e.to_dict(), **bad))
    with pytest.raises(KsegError, match="lacks input_height"):
        ExperimentConfig.from_dict({"model_name": "unet", "n_classes": 2, "input_width": 4})
    p.write_text("{")
    with pytest.raises(KsegError, match="not valid JSON"):
        ExperimentConfig.from_json(str(p))
