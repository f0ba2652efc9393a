"""The old project's README examples (Keras-Semantic-Segmentation), run as they are written.

Users arrive with these command lines. Each example runs through kseg's shims in
``scripts/`` in a folder laid out as the old README expects (``data/<dataset>``,
``data/test/``, ``weights/``); only the script's folder differs (``scripts/``).
The examples whose sizes are too big for CI (CamVid at 720x960) are checked up to
the point where training or prediction would start.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, run_command
from kseg.data.io import write_image, write_label

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _script(name, *args):
    return [sys.executable, os.path.join(REPO, "scripts", name), *args]


def _two_class_images(folder_img, folder_lbl, n, seed):
    rng = np.random.default_rng(seed)
    os.makedirs(folder_img, exist_ok=True)
    if folder_lbl:
        os.makedirs(folder_lbl, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 60, (64, 64, 3)).astype("uint8")
        lbl = np.zeros((64, 64), "uint8")
        y, x = rng.integers(8, 40, 2)
        img[y:y + 20, x:x + 20] = 220
        lbl[y:y + 20, x:x + 20] = 1
        write_image(os.path.join(folder_img, f"part_{i}.png"), img)
        if folder_lbl:
            write_label(os.path.join(folder_lbl, f"part_{i}.png"), lbl)


@pytest.fixture(scope="module")
def old_project(tmp_path_factory):
    """A working folder as the old README describes: data/bbufdataset/{train,test}_{image,label}
    (a 2-class parts dataset; its dataset.json asks for one epoch so the example stays short)
    and data/test/ (images to predict)."""
    root = tmp_path_factory.mktemp("old_project")
    ds = root / "data" / "bbufdataset"
    _two_class_images(str(ds / "train_image"), str(ds / "train_label"), 4, 0)
    _two_class_images(str(ds / "test_image"), str(ds / "test_label"), 2, 1)
    (ds / "dataset.json").write_text(json.dumps({"classes": ["background", "part"], "epochs": 1}))
    _two_class_images(str(root / "data" / "test"), None, 2, 2)
    return root


def test_old_train_example_runs_as_written(old_project):
    cmd = _script("train.py", "--dataset_name", "bbufdataset", "--model_name", "unet", "--input_height", "224",
                  "--input_width", "224", "--image_init", "divide", "--n_classes", "2")
    r = subprocess.run(cmd, cwd=old_project, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    exp = old_project / "weights" / "unet_bbufdataset"
    cfg = json.loads((exp / "config.json").read_text())
    assert cfg["n_classes"] == 2 and cfg["input_height"] == 224 and cfg["image_init"] == "divide"
    assert (exp / "best.keras").exists()


def test_old_test_example_runs_as_written(old_project):
    """``python test.py --model_name unet --weights_path weights/unet.xx.hdf5 --classes 2 --image_init divide``:
    a Keras HDF5 model file without a kseg experiment around it; the flags say what it is, and the
    old defaults (data/test/ in, data/output/ out, 224x224) apply."""
    import keras

    import kseg.models  # noqa: F401

    exp = old_project / "weights" / "unet_bbufdataset"
    if not (exp / "best.keras").exists():
        pytest.skip("needs the model of test_old_train_example_runs_as_written")
    model = keras.saving.load_model(str(exp / "best.keras"), compile=False)
    model.save(str(old_project / "weights" / "unet.xx.hdf5"))
    cmd = _script("test.py", "--model_name", "unet", "--weights_path", "weights/unet.xx.hdf5", "--classes", "2",
                  "--image_init", "divide")
    r = subprocess.run(cmd, cwd=old_project, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    out = old_project / "data" / "output"
    masks = sorted(os.listdir(out / "masks"))
    assert masks == ["part_0.png", "part_1.png"]

    # --mIOU with the old flags for the labelled images
    cmd = _script("test.py", "--model_name", "unet", "--weights_path", "weights/unet.xx.hdf5", "--classes", "2",
                  "--image_init", "divide", "--mIOU", "True",
                  "--val_images", "data/bbufdataset/test_image/", "--val_annotations", "data/bbufdataset/test_label/",
                  "--output_path", "data/scored/")
    r = subprocess.run(cmd, cwd=old_project, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mean IoU" in r.stdout and (old_project / "data" / "scored" / "report.json").exists()


def test_old_test_flags_are_checked_against_the_experiment(old_project, capsys):
    exp = old_project / "weights" / "unet_bbufdataset"
    if not (exp / "config.json").exists():
        pytest.skip("needs the experiment of test_old_train_example_runs_as_written")
    code, _, err = run_command("test", ["--weights_path", str(exp), "--classes", "3"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--classes 3" in err and "2" in err
    code, _, err = run_command("test", ["--weights_path", str(exp), "--image_init", "sub_mean"], capsys)
    assert code == 2 and "--image_init" in err


def test_old_camvid_examples_parse_and_prepare(tmp_path, capsys):
    """The CamVid examples (720x960, 32 classes) are too big to train in CI: their flags parse into
    the same TrainConfig a kseg user would write, and the test example's flags are accepted."""
    from kseg.cli import train
    from kseg.cli.common import config_from_args

    args = train.build_parser().parse_args(
        ["--dataset_name", "camvid", "--model_name", "unet", "--input_height", "720", "--input_width", "960",
         "--image_init", "sub_mean", "--n_classes", "32", "--train_batch_size", "2", "--val_batch_size", "2"])
    cfg, explicit = config_from_args(args)
    assert (cfg.input_height, cfg.input_width, cfg.n_classes, cfg.image_init) == (720, 960, 32, "sub_mean")
    assert cfg.train_batch_size == 2 and "epochs" not in explicit
    for spelled in (["--validate", "True"], ["--validate", "False"], ["--multi_gpus", "False"], ["--validate"]):
        cfg, _ = config_from_args(train.build_parser().parse_args(spelled))
    assert cfg.validate is True and cfg.multi_gpus is False
    cfg, _ = config_from_args(train.build_parser().parse_args(["--validate", "False"]))
    assert cfg.validate is False

    from kseg.cli import test

    a = test.build_parser().parse_args(["--model_name", "unet", "--weights_path", "weights/unet.xx.hdf5",
                                        "--classes", "32", "--image_init", "sub_mean", "--input_height", "720",
                                        "--input_width", "960"])
    assert a.n_classes == 32 and a.input_height == 720


def test_old_json_to_dataset_positional_folder(tmp_path, capsys):
    pytest.importorskip("labelme")
    src = tmp_path / "jsons"
    src.mkdir()
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), "uint8")).save(buf, format="PNG")
    for i in range(3):
        (src / f"a{i}.json").write_text(json.dumps({
            "version": "5.2.1", "flags": {}, "imagePath": f"a{i}.png", "imageHeight": 32, "imageWidth": 32,
            "imageData": base64.b64encode(buf.getvalue()).decode(),
            "shapes": [{"label": "part", "points": [[4, 4], [20, 4], [20, 20], [4, 20]], "shape_type": "polygon",
                        "group_id": None, "flags": {}}]}))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code, out, err = run_command("json_to_dataset", ["jsons"], capsys)
    finally:
        os.chdir(cwd)
    assert code == 0, err
    assert (tmp_path / "data" / "jsons" / "classes.txt").exists()


def test_old_augmentation_example_runs_as_written(tmp_path):
    _two_class_images(str(tmp_path / "img"), str(tmp_path / "mask"), 2, 3)
    cmd = _script("augmentation.py", "--train_path", "img", "--mask_path", "mask", "--augtrain_path", "new_img",
                  "--augtrain_mask", "new_mask")
    r = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(os.listdir(tmp_path / "new_img")) >= 2 and len(os.listdir(tmp_path / "new_mask")) >= 2
