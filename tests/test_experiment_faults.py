"""Experiments are transactional: a new or overwriting run appears at its first checkpoint,
a run that dies earlier changes nothing, and a folder whose model and config.json disagree
is refused by every command that reads it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_command

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
# 16 training images, batch 8: 2 steps per epoch
SMALL = ["--model_name", "unet", "--model_option", "base_filters=4", "--model_option", "depth=2",
         "--input_height", "32", "--input_width", "32", "--train_batch_size", "8", "--val_batch_size", "4",
         "--no-mixed_precision", "--verbose", "0"]


def _args(dataset, weights, name, *extra, epochs=1):
    return [*SMALL, "--data_dir", os.path.dirname(dataset), "--dataset_name", os.path.basename(dataset),
            "--train_save_path", str(weights), "--exp_name", name, "--epochs", str(epochs), *extra]


def _snapshot(folder):
    """{relative path: (size, mtime)} of every file below ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            out[os.path.relpath(p, folder)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset):
    """One finished 1-epoch experiment ``<tmp>/old``."""
    from kseg.cli.common import run_main
    from kseg.cli.train import main

    weights = tmp_path_factory.mktemp("weights")
    with pytest.raises(SystemExit) as e:
        run_main(main, _args(tiny_dataset, weights, "old"), prog="kseg train")
    assert e.value.code in (0, None)
    return weights / "old"


def _copy_experiment(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_overwrite_killed_before_its_first_checkpoint_leaves_the_old_experiment(tmp_path, tiny_dataset, trained,
                                                                                capsys):
    weights = tmp_path / "w"
    old = _copy_experiment(trained, weights / "exp")
    (old / "model.onnx").write_bytes(b"stale export")
    before = _snapshot(old)
    # a long first epoch (many crops per image) so the run is caught before its checkpoint
    p = subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", "train.py"),
                          *_args(tiny_dataset, weights, "exp", "--overwrite", "--train_crops", "64")],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, staged = time.time() + 300, None
        while time.time() < deadline and p.poll() is None and staged is None:
            for name in os.listdir(weights):
                if name.startswith(".kseg-staging-exp-") and os.path.isfile(weights / name / "config.json"):
                    staged = weights / name
            time.sleep(0.05)
        assert staged is not None and p.poll() is None, "the run ended before it was caught"
        assert not (staged / "state.json").exists()
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    assert _snapshot(old) == before  # the old experiment, stale export included, untouched
    assert staged.exists()
    # the next run in the same parent removes what the killed one left, and runs in place
    code, out, err = run_command("train", _args(tiny_dataset, weights, "other"), capsys)
    assert code in (0, None), err
    assert not staged.exists()
    assert sorted(os.listdir(weights)) == ["exp", "other"]


def test_a_finished_overwrite_replaces_the_whole_folder(tmp_path, tiny_dataset, trained, capsys):
    weights = tmp_path / "w"
    old = _copy_experiment(trained, weights / "exp")
    (old / "model.onnx").write_bytes(b"stale export")
    (old / "predictions").mkdir()
    (old / "predictions" / "x.png").write_bytes(b"stale")
    code, out, err = run_command("train", _args(tiny_dataset, weights, "exp", "--overwrite"), capsys)
    assert code in (0, None), err
    assert not (old / "model.onnx").exists() and not (old / "predictions").exists()
    assert {"config.json", "best.keras", "last.keras", "state.json", "history.csv"} <= set(os.listdir(old))
    assert sorted(os.listdir(weights)) == ["exp"]  # no staging or replaced folder left


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path, tiny_dataset, monkeypatch):
    import kseg.training as T
    from kseg.config import TrainConfig

    def boom(*a, **k):
        raise RuntimeError("killed by the test")

    monkeypatch.setattr(T, "fit", boom)
    weights = tmp_path / "nested" / "weights"
    cfg = TrainConfig(model_name="unet", model_option={"base_filters": 4, "depth": 2}, input_height=32,
                      input_width=32, data_dir=os.path.dirname(tiny_dataset),
                      dataset_name=os.path.basename(tiny_dataset), train_save_path=str(weights), epochs=1,
                      mixed_precision=False, verbose=0)
    with pytest.raises(RuntimeError, match="killed by the test"):
        T.train(cfg)
    assert not (tmp_path / "nested").exists()


def _mismatched(trained, tmp_path):
    folder = _copy_experiment(trained, tmp_path / "w" / "exp")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_classes"] = 5
    cfg["class_names"] = [f"c{i}" for i in range(5)]
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("cmd", ["test", "export", "resume"])
def test_a_model_that_does_not_match_its_config_is_refused(tmp_path, trained, tiny_dataset, capsys, cmd):
    folder = _mismatched(trained, tmp_path)
    before = _snapshot(folder)
    if cmd == "test":
        argv = ["--weights_path", str(folder), "--test_dir", os.path.join(tiny_dataset, "test_image"),
                "--output", str(tmp_path / "out")]
    elif cmd == "export":
        argv = ["--weights_path", str(folder), "--format", "onnx"]
    else:
        argv = ["--train_save_path", str(folder.parent), "--exp_name", "exp", "--resume", "--epochs", "2"]
    code, out, err = run_command("train" if cmd == "resume" else cmd, argv, capsys)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "does not match its config.json" in err, err
    assert "4 output channels" in err and "n_classes 5" in err, err
    assert _snapshot(folder) == before
    assert not (tmp_path / "out").exists()


def test_resume_removes_what_a_killed_checkpoint_write_left(tmp_path, trained, tiny_dataset, capsys):
    weights = tmp_path / "w"
    folder = _copy_experiment(trained, weights / "exp")
    (folder / ".last.k3x9q2ab.tmp.keras").write_bytes(b"half a checkpoint")
    code, out, err = run_command("train", ["--train_save_path", str(weights), "--exp_name", "exp", "--resume",
                                           "--epochs", "2"], capsys)
    assert code in (0, None), err
    assert not (folder / ".last.k3x9q2ab.tmp.keras").exists()
    assert json.loads((folder / "state.json").read_text())["epoch"] == 2


def test_tensorboard_follows_the_experiment_into_place(tmp_path, tiny_dataset, capsys):
    """The logs written before the move (graph, first validation) and after it land in logs/."""
    import tensorflow as tf

    weights = tmp_path / "w"
    code, out, err = run_command("train", _args(tiny_dataset, weights, "tb", epochs=2), capsys)
    assert code in (0, None), err
    steps = {}
    for sub in ("train", "validation"):
        for f in (weights / "tb" / "logs" / sub).iterdir():
            for event in tf.compat.v1.train.summary_iterator(str(f)):
                for v in event.summary.value:
                    if v.tag == "epoch_loss":
                        steps.setdefault(sub, set()).add(event.step)
    assert steps == {"train": {0, 1}, "validation": {0, 1}}
    assert sorted(os.listdir(weights)) == ["tb"]


@pytest.mark.parametrize("order", ["import kseg, keras", "import keras, kseg"])
def test_keras_loads_a_kseg_file_after_import_kseg_alone(trained, order):
    code = (f"{order}\n"
            f"m = keras.saving.load_model({str(trained / 'best.keras')!r})\n"
            "print(type(m.loss).__name__, m.output_shape[-1])")
    r = subprocess.run([sys.executable, "-c", code], env=dict(ENV, PYTHONPATH=REPO), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    assert r.stdout.split()[-1] == "4"


def test_a_truncated_checkpoint_is_called_corrupt(tmp_path, trained, tiny_dataset, capsys):
    folder = _copy_experiment(trained, tmp_path / "w" / "exp")
    data = (folder / "best.keras").read_bytes()
    (folder / "best.keras").write_bytes(data[: len(data) // 2])
    code, out, err = run_command("test", ["--weights_path", str(folder), "--test_dir",
                                          os.path.join(tiny_dataset, "test_image"), "--output",
                                          str(tmp_path / "out")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "best.keras is corrupt" in err and "truncated" in err and "File not found" not in err, err
