"""End-to-end CLI: train -> resume -> predict at original size, and every bad-input case
gives a one-line error and a non-zero exit."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np

from conftest import command, run_command
from kseg.data.io import read_image, read_label, write_label

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name):
    return command(name)


def _run(name, argv, capsys):
    """Run a command's main in-process as the console script does; return (exit code, stdout, stderr)."""
    return run_command(name, argv, capsys)


def _copy_dataset(src, dst):
    shutil.copytree(src, dst)
    return dst


TINY = ["--model_name", "unet", "--model_option", "base_filters=4", "--input_height", "32",
        "--input_width", "32", "--train_batch_size", "4", "--val_batch_size", "4", "--verbose", "0"]


def _train_args(tmp_path, dataset_dir, *extra):
    return TINY + ["--data_dir", os.path.dirname(dataset_dir), "--dataset_name", os.path.basename(dataset_dir),
                   "--train_save_path", str(tmp_path / "weights")] + list(extra)


def test_train_resume_and_predict_end_to_end(tmp_path, tiny_dataset):
    """The real command line in a subprocess, as a user runs it."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    base = [sys.executable, os.path.join(REPO, "scripts", "train.py")]
    args = _train_args(tmp_path, tiny_dataset, "--exp_name", "e2e", "--epochs", "1", "--loss", "ce+dice")
    r = subprocess.run(base + args, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    exp = tmp_path / "weights" / "e2e"
    for f in ("config.json", "best.keras", "last.keras", "history.csv", "state.json"):
        assert (exp / f).exists(), f
    assert (exp / "logs").is_dir()
    cfg = json.loads((exp / "config.json").read_text())
    assert cfg["n_classes"] == 4 and cfg["class_names"][1] == "circle" and cfg["input_height"] == 32

    # resume continues with the epoch count and appends to the history
    args = _train_args(tmp_path, tiny_dataset, "--exp_name", "e2e", "--epochs", "2", "--resume")
    r = subprocess.run(base + args, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(exp / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(float(r["epoch_time_s"]) > 0 for r in rows)  # wall clock per epoch is logged
    assert json.loads((exp / "state.json").read_text())["epoch"] == 2

    # test.py: masks at each image's ORIGINAL size, overlays, and the mean IoU
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "test.py"), "--weights_path", str(exp),
                        "--mIOU"], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mean IoU" in r.stdout
    test_images = sorted(os.listdir(os.path.join(tiny_dataset, "test_image")))
    for f in test_images:
        stem = os.path.splitext(f)[0]
        img = read_image(os.path.join(tiny_dataset, "test_image", f))
        mask = read_label(str(exp / "predictions" / "masks" / f"{stem}.png"))
        assert mask.shape == img.shape[:2]
        assert set(np.unique(mask)) <= {0, 1, 2, 3}
        assert (exp / "predictions" / "overlays" / f"{stem}.png").exists()
    report = json.loads((exp / "predictions" / "report.json").read_text())
    assert 0.0 <= report["mean_iou"] <= 1.0


def _assert_one_line_error(code, err, *needles):
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_image_without_label(tmp_path, tiny_dataset, capsys):
    ds = _copy_dataset(tiny_dataset, str(tmp_path / "d" / "ds"))
    os.remove(os.path.join(ds, "train_label", "train_0002.png"))
    code, _, err = _run("train", _train_args(tmp_path, ds, "--epochs", "1"), capsys)
    _assert_one_line_error(code, err, "train_0002.png", "without a label")


def test_label_without_image(tmp_path, tiny_dataset, capsys):
    ds = _copy_dataset(tiny_dataset, str(tmp_path / "d" / "ds"))
    os.remove(os.path.join(ds, "train_image", "train_0003.png"))
    code, _, err = _run("train", _train_args(tmp_path, ds, "--epochs", "1"), capsys)
    _assert_one_line_error(code, err, "train_0003.png", "without an image")


def test_label_value_too_large(tmp_path, tiny_dataset, capsys):
    ds = _copy_dataset(tiny_dataset, str(tmp_path / "d" / "ds"))
    p = os.path.join(ds, "train_label", "train_0001.png")
    lab = read_label(p)
    lab[0, 0] = 7
    write_label(p, lab)
    code, _, err = _run("train", _train_args(tmp_path, ds, "--epochs", "1"), capsys)
    _assert_one_line_error(code, err, "train_0001.png", "value 7", "--n_classes")


def test_unreadable_image(tmp_path, tiny_dataset, capsys):
    ds = _copy_dataset(tiny_dataset, str(tmp_path / "d" / "ds"))
    with open(os.path.join(ds, "train_image", "train_0000.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n garbage")
    code, _, err = _run("train", _train_args(tmp_path, ds, "--epochs", "1"), capsys)
    _assert_one_line_error(code, err, "train_0000.png")


def test_unknown_model(tmp_path, tiny_dataset, capsys):
    args = _train_args(tmp_path, tiny_dataset, "--epochs", "1")
    args[args.index("unet")] = "unet_v9"
    code, _, err = _run("train", args, capsys)
    _assert_one_line_error(code, err, "unet_v9", "segnet")


def test_unknown_loss(tmp_path, tiny_dataset, capsys):
    code, _, err = _run("train", _train_args(tmp_path, tiny_dataset, "--loss", "dise"), capsys)
    _assert_one_line_error(code, err, "dise", "dice")


def test_input_size_the_model_cannot_take(tmp_path, tiny_dataset, capsys):
    args = _train_args(tmp_path, tiny_dataset)
    args[args.index("--input_height") + 1] = "50"
    code, _, err = _run("train", args, capsys)
    _assert_one_line_error(code, err, "50", "multiple of 16")


def test_resume_without_experiment(tmp_path, tiny_dataset, capsys):
    code, _, err = _run("train", _train_args(tmp_path, tiny_dataset, "--exp_name", "nothing", "--resume"), capsys)
    _assert_one_line_error(code, err, "nothing", "--resume")


def test_bad_flag_value(capsys):
    code, _, err = _run("train", ["--epochs", "-3"], capsys)
    _assert_one_line_error(code, err, "--epochs")
    code, _, err = _run("train", ["--train_crops", "-1"], capsys)
    _assert_one_line_error(code, err, "--train_crops", ">= 0")


def test_crop_training_end_to_end(tmp_path, tiny_dataset):
    """--train_crops: native-resolution crops; an epoch has images x crops / batch steps."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    args = _train_args(tmp_path, tiny_dataset, "--exp_name", "crops", "--epochs", "1", "--train_crops", "3",
                       "--input_height", "32", "--input_width", "32", "--train_batch_size", "4",
                       "--no-mixed_precision", "--verbose", "2")
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py")] + args, capture_output=True,
                       text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    n_train = len(os.listdir(os.path.join(tiny_dataset, "train_image")))
    assert f"{n_train * 3 // 4}/{n_train * 3 // 4}" in r.stdout  # steps of the epoch in the progress line
    cfg = json.loads((tmp_path / "weights" / "crops" / "config.json").read_text())
    assert cfg["train"]["train_crops"] == 3 and cfg["dtype_policy"] == "float32"


def test_test_script_on_a_folder_without_experiment(tmp_path, capsys):
    code, _, err = _run("test", ["--weights_path", str(tmp_path)], capsys)
    _assert_one_line_error(code, err, str(tmp_path), "config.json")


def test_train_restores_the_global_dtype_policy(tmp_path, tiny_dataset, capsys):
    """train() sets the run's precision policy (auto may pick mixed_bfloat16) and must put
    the caller's back, also when it fails on bad input."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    code, _, _ = _run("train", _train_args(tmp_path, tiny_dataset, "--model_name", "nosuchmodel",
                                           "--mixed_precision"), capsys)
    assert code == 2
    assert keras.mixed_precision.global_policy().name == "float32"


def test_a_data_error_is_reported_before_tensorflow_starts(tmp_path):
    """kseg train checks every pair before it imports TensorFlow: a bad file is one line at once."""
    import shutil
    import subprocess
    import sys

    from conftest import REPO
    from kseg.data.sample import generate_sample_dataset

    root = tmp_path / "data" / "bad"
    generate_sample_dataset(str(root), splits={"train": 8, "val": 2, "test": 2})
    bad = root / "train_image" / "train_0003.png"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    code = ("import sys\n"
            "from kseg.cli.common import run_main\n"
            "from kseg.cli.train import main\n"
            "try:\n"
            f"    run_main(main, ['--data_dir', {str(root.parent)!r}, '--dataset_name', 'bad',\n"
            f"                    '--train_save_path', {str(tmp_path / 'w')!r}], prog='kseg train')\n"
            "except SystemExit as e:\n"
            "    print('exit', e.code, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=REPO))
    assert r.stdout.strip().splitlines()[-1] == "exit 2 False False", (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "train_0003.png" in r.stderr, r.stderr
    assert not (tmp_path / "w").exists()
    shutil.rmtree(root)
