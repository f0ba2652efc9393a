"""Training as the papers train: the schedule logged per epoch, an exact resume after
kill -9, recipe checks on resume, early stopping, per-class IoU columns."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, run_command

import kseg.config as kseg_config

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
# 16 training images, batch 4: 4 steps per epoch, 12 in 3 epochs
RUN = ["--model_name", "unet", "--model_option", "base_filters=4", "--model_option", "depth=2",
       "--input_height", "32", "--input_width", "32", "--train_batch_size", "4", "--val_batch_size", "4",
       "--epochs", "3", "--schedule", "poly", "--learning_rate", "0.01", "--optimizer_name", "sgd",
       "--weight_decay", "1e-4", "--warmup_epochs", "0", "--no-mixed_precision", "--verbose", "2"]


def _args(tmp_path, dataset, name, *extra):
    return RUN + ["--data_dir", os.path.dirname(dataset), "--dataset_name", os.path.basename(dataset),
                  "--train_save_path", str(tmp_path / "weights"), "--exp_name", name, *extra]


def _one_epoch(tmp_path, dataset, name):
    args = _args(tmp_path, dataset, name)
    args[args.index("--epochs") + 1] = "1"
    return args


def _history(folder):
    with open(os.path.join(folder, "history.csv")) as f:
        return list(csv.DictReader(f))


def _train(args, timeout=600):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py"), *args], env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_resume_after_kill_continues_the_schedule_exactly(tmp_path, tiny_dataset):
    r = _train(_args(tmp_path, tiny_dataset, "straight"))
    assert r.returncode == 0, r.stderr[-2000:]
    straight = _history(tmp_path / "weights" / "straight")
    # poly: lr at the first step of epoch e = 0.01 * (1 - 4e / 12) ** 0.9
    want = [0.01 * (1 - 4 * e / 12) ** 0.9 for e in range(3)]
    assert [float(row["learning_rate"]) for row in straight] == pytest.approx(want, rel=1e-5)
    assert {"iou_background", "val_iou_circle", "val_mean_iou"} <= set(straight[0])

    folder = tmp_path / "weights" / "killed"
    p = subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", "train.py"),
                          *_args(tmp_path, tiny_dataset, "killed")], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and p.poll() is None:
            try:
                if json.loads((folder / "state.json").read_text())["epoch"] >= 1:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        assert p.poll() is None, "the run ended before it could be killed"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    done = json.loads((folder / "state.json").read_text())["epoch"]
    assert 1 <= done < 3
    r = _train(["--train_save_path", str(tmp_path / "weights"), "--exp_name", "killed", "--resume"])
    assert r.returncode == 0, r.stderr[-2000:]
    resumed = _history(folder)
    assert [int(row["epoch"]) for row in resumed] == [0, 1, 2]
    assert [float(row["learning_rate"]) for row in resumed] == pytest.approx(
        [float(row["learning_rate"]) for row in straight], rel=1e-6)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["run"]["epochs_done"] == 3 and cfg["run"]["resumes"][0]["from_epoch"] == done
    assert cfg["train"]["train_batch_size"] == 4 and cfg["train"]["schedule"] == "poly"


def test_a_recipe_change_on_resume_is_refused_in_one_line(tmp_path, tiny_dataset, capsys):
    r = _train(_one_epoch(tmp_path, tiny_dataset, "base"))
    assert r.returncode == 0, r.stderr[-2000:]
    code, _, err = run_command("train", ["--train_save_path", str(tmp_path / "weights"), "--exp_name", "base",
                                         "--resume", "--epochs", "2", "--learning_rate", "0.1",
                                         "--train_batch_size", "8"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "--learning_rate 0.1" in lines[0] and "--train_batch_size 8" in lines[0] and "0.01" in lines[0]
    # --allow_recipe_change applies it and records it
    code, _, err = run_command("train", ["--train_save_path", str(tmp_path / "weights"), "--exp_name", "base",
                                         "--resume", "--epochs", "2", "--learning_rate", "0.1",
                                         "--allow_recipe_change"], capsys)
    assert code == 0, err
    cfg = json.loads((tmp_path / "weights" / "base" / "config.json").read_text())
    assert cfg["run"]["resumes"][-1]["changed"] == ["learning_rate"]
    assert cfg["train"]["learning_rate"] == 0.1 and cfg["run"]["epochs_done"] == 2


def test_config_json_repeats_the_run(tmp_path, tiny_dataset, capsys):
    """kseg train --config weights/<exp>/config.json trains the same recipe into a new folder."""
    r = _train(_one_epoch(tmp_path, tiny_dataset, "first"))
    assert r.returncode == 0, r.stderr[-2000:]
    first = json.loads((tmp_path / "weights" / "first" / "config.json").read_text())
    code, out, err = run_command("train", ["--config", str(tmp_path / "weights" / "first" / "config.json"),
                                           "--train_save_path", str(tmp_path / "weights")], capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "weights" / "unet_tiny" / "config.json").read_text())
    for k in ("schedule", "learning_rate", "weight_decay", "train_batch_size", "model_option", "epochs",
              "input_height", "optimizer_name"):
        assert again["train"][k] == first["train"][k], k


def test_kseg_train_from_python(tmp_path, tiny_dataset):
    """The notebook path: kseg.train(kseg.TrainConfig(...)) returns the experiment folder."""
    import kseg

    cfg = kseg.TrainConfig(model_name="unet", model_option={"base_filters": 4, "depth": 2}, input_height=32,
                           input_width=32, data_dir=os.path.dirname(tiny_dataset),
                           dataset_name=os.path.basename(tiny_dataset), train_save_path=str(tmp_path / "w"),
                           epochs=1, train_batch_size=4, schedule="cosine", verbose=0, mixed_precision=False)
    folder = kseg.train(cfg)
    exp = kseg.ExperimentConfig.from_json(os.path.join(folder, "config.json"))
    assert exp.train_config().schedule == "cosine" and exp.run["epochs_done"] == 1
    mask = kseg.Predictor.from_experiment(folder).predict(np.zeros((40, 30, 3), "uint8"))
    assert mask.shape == (40, 30)


def _dataset_with(tmp_path, tiny_dataset, train):
    """A copy of the tiny dataset's folder whose dataset.json suggests ``train``."""
    import shutil

    root = tmp_path / "data" / "suggesting"
    shutil.copytree(tiny_dataset, root)
    meta = json.loads((root / "dataset.json").read_text())
    meta.pop("epochs", None)
    meta["train"] = train
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_dataset_suggestions_are_the_lowest_priority(tmp_path, tiny_dataset):
    from kseg.config import TrainConfig
    from kseg.training import prepare

    root = _dataset_with(tmp_path, tiny_dataset, {"schedule": "poly", "power": 2.0, "epochs": 7, "augment": False})
    base = dict(data_dir=str(root.parent), dataset_name=root.name, train_save_path=str(tmp_path / "w"))
    plan = prepare(TrainConfig(**base))
    assert (plan.config.schedule, plan.config.power, plan.epochs, plan.config.augment) == ("poly", 2.0, 7, False)
    # a given option wins; a given budget (iterations) keeps the suggested epochs out
    plan = prepare(TrainConfig(**base, schedule="cosine", iterations=30))
    assert (plan.config.schedule, plan.config.power, plan.config.epochs) == ("cosine", 2.0, None)
    # given explicitly with the default's value: still the user's choice
    plan = prepare(TrainConfig(**base), explicit={"schedule"})
    assert plan.config.schedule == "constant"


@pytest.mark.parametrize("train, words", [
    ({"schedule": "sawtooth"}, ["dataset.json", "schedule", "sawtooth"]),
    ({"not_an_option": 1}, ["dataset.json", "not_an_option"]),
    ({"data_dir": "elsewhere"}, ["dataset.json", "cannot set data_dir"]),
    ("cosine", ["dataset.json", "must be an object"]),
])
def test_a_bad_dataset_suggestion_is_one_line_naming_the_file(tmp_path, tiny_dataset, capsys, train, words):
    root = _dataset_with(tmp_path, tiny_dataset, train)
    code, out, err = run_command("train", ["--data_dir", str(root.parent), "--dataset_name", root.name,
                                           "--train_save_path", str(tmp_path / "w")], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "w").exists()


def test_the_sample_dataset_json_follows_this_kseg_without_regenerating(tmp_path):
    from kseg.data.sample import SAMPLE_TRAIN, ensure_sample_dataset, generate_sample_dataset

    root = str(tmp_path / "shapes")
    generate_sample_dataset(root, splits={"train": 2, "val": 1, "test": 1})
    image = os.path.join(root, "train_image", "train_0000.png")
    before = os.stat(image).st_mtime_ns
    meta_path = os.path.join(root, "dataset.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta.pop("train")
    meta.update(epochs=3, augment=True)  # what an older kseg wrote
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    ensure_sample_dataset(root, verbose=False)
    with open(meta_path) as f:
        meta = json.load(f)
    assert meta["train"] == SAMPLE_TRAIN and "epochs" not in meta
    assert os.stat(image).st_mtime_ns == before


def test_resume_compares_model_options_by_value(monkeypatch):
    """A tuple option given again on --resume equals the list config.json recorded;
    another value is still a recipe change."""
    import types

    from kseg import training
    from kseg.errors import ConfigError

    saved = kseg_config.TrainConfig(model_name="mobilenet_unet", model_option={"decoder_filters": [8, 8, 8, 8, 8]})
    monkeypatch.setattr(training.X, "read_config", lambda folder: types.SimpleNamespace(train_config=lambda: saved))
    same = kseg_config.TrainConfig(model_name="mobilenet_unet", model_option={"decoder_filters": "8,8,8,8,8"})
    changed, resumed = training._restore_recipe(same, "weights/x", {"model_option"})
    assert changed == [] and resumed.model_option == {"decoder_filters": (8, 8, 8, 8, 8)}
    other = kseg_config.TrainConfig(model_name="mobilenet_unet", model_option={"decoder_filters": "8,8,8,8,4"})
    with pytest.raises(ConfigError, match="model_option"):
        training._restore_recipe(other, "weights/x", {"model_option"})
