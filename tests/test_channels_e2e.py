"""Any number of input channels, end to end: a 4-band 16-bit TIFF dataset and a grey 8-bit PNG
dataset each train one epoch, predict and export to ONNX with the parity check.

The references are independent of kseg's reader and normaliser: the arrays this file wrote,
normalised here by hand ((x - mean) / std for the TIFF bands, x / 255 for the grey PNGs) and run
through the trained Keras model itself; the exported file is compared with the same numbers.

Runtime: about 40 s on a 2-core CPU (two one-epoch trainings of a 4-filter U-Net at 32x32, two
ONNX conversions, one `kseg test` run), most of it TensorFlow tracing.
"""

import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import run_command

tifffile = pytest.importorskip("tifffile")
pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="training and export run on TensorFlow (KERAS_BACKEND=tensorflow)")

SIZE = 32
SPLITS = {"train": 8, "val": 4, "test": 4}
TINY = ["--model_name", "unet", "--model_option", "base_filters=4", "--model_option", "depth=2",
        "--input_height", str(SIZE), "--input_width", str(SIZE), "--epochs", "1", "--train_batch_size", "4",
        "--val_batch_size", "4", "--no-mixed_precision", "--verbose", "0"]


def _bands(rng):
    """A 4-band 12-bit-in-16 image whose label is where band 3 ("near infrared") is bright."""
    img = rng.integers(0, 4096, (SIZE, SIZE, 4)).astype(np.uint16)
    img[8:24, 8:24, 3] = rng.integers(3000, 4096, (16, 16))
    img[:, :, 3][img[:, :, 3] <= 3000] //= 2
    return img, (img[:, :, 3] > 3000).astype(np.uint8)


def _grey(rng):
    img = rng.integers(0, 120, (SIZE, SIZE)).astype(np.uint8)
    img[4:20, 10:30] += 120
    return img, (img >= 120).astype(np.uint8)


def _make(root, kind, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in SPLITS.items():
        for sub in ("image", "label"):
            os.makedirs(os.path.join(root, f"{split}_{sub}"))
        for i in range(n):
            img, lab = (_bands if kind == "bands" else _grey)(rng)
            stem = f"{split}{i:02d}"
            if kind == "bands":
                path = os.path.join(root, f"{split}_image", stem + ".tif")
                tifffile.imwrite(path, img, photometric="minisblack", planarconfig="contig")
            else:
                path = os.path.join(root, f"{split}_image", stem + ".png")
                Image.fromarray(img).save(path)
            Image.fromarray(lab).save(os.path.join(root, f"{split}_label", stem + ".png"))
            arrays[path] = img
    return arrays


@pytest.fixture(scope="module")
def bands(tmp_path_factory):
    """4-band uint16 TIFFs; dataset.json gives input_channels 4 and the bands' mean/std."""
    root = str(tmp_path_factory.mktemp("data") / "bands")
    arrays = _make(root, "bands")
    train = np.stack([a for p, a in arrays.items() if "train_image" in p]).astype(np.float64)
    mean = [round(float(v), 3) for v in train.mean(axis=(0, 1, 2))]
    std = [round(float(v), 3) for v in train.std(axis=(0, 1, 2))]
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump({"classes": ["background", "vegetation"], "input_channels": 4, "mean": mean, "std": std}, f)
    return root, arrays, np.array(mean, np.float32), np.array(std, np.float32)


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    """8-bit grey PNGs, no channel count in the dataset: --input_channels 1 says it."""
    root = str(tmp_path_factory.mktemp("data") / "grey")
    arrays = _make(root, "grey", seed=1)
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("background\nbright\n")
    return root, arrays


def _train_cli(capsys, root, weights, *extra):
    code, out, err = run_command("train", TINY + ["--data_dir", os.path.dirname(root), "--dataset_name",
                                                  os.path.basename(root), "--train_save_path", weights,
                                                  "--exp_name", os.path.basename(root), *extra], capsys)
    return code, out, err


def _model(folder):
    return keras.saving.load_model(os.path.join(folder, "best.keras"), compile=False)


def _check_prediction_and_export(folder, arrays, channels, by_hand):
    """The predictor and the ONNX export both give the Keras model's output on the input
    normalised by hand; returns the ONNX file."""
    import onnxruntime as ort

    from kseg import export
    from kseg.predict import Predictor

    model = _model(folder)
    assert model.input_shape[-1] == channels
    tests = sorted(p for p in arrays if "test_image" in p)
    x = np.stack([by_hand(arrays[p]) for p in tests]).astype(np.float32)
    assert x.shape == (len(tests), SIZE, SIZE, channels)
    ref = keras.ops.convert_to_numpy(model(x, training=False))
    pred = Predictor.from_experiment(folder)
    assert pred.channels == channels
    for i, p in enumerate(tests):
        _, proba = pred.predict_file(p)
        np.testing.assert_allclose(proba, ref[i], atol=1e-5, err_msg=p)

    path, report = export.export_model(folder, "onnx", return_report=True)
    assert report["passed"] and report["input_shape"] == [None, SIZE, SIZE, channels], report
    assert report["n_images"] == 4  # the dataset's own test images, read for `channels`
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(["probabilities"], {"image": x})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4)
    return path


def test_a_4_band_16_bit_tiff_dataset_trains_predicts_and_exports(bands, tmp_path, capsys):
    root, arrays, mean, std = bands
    weights = str(tmp_path / "weights")
    code, out, err = _train_cli(capsys, root, weights)
    assert code == 0, err
    folder = os.path.join(weights, "bands")
    cfg = json.loads(open(os.path.join(folder, "config.json")).read())
    assert cfg["input_channels"] == 4 and cfg["train"]["input_channels"] == 4
    np.testing.assert_allclose(cfg["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(cfg["std"], std, rtol=1e-6)

    _check_prediction_and_export(folder, arrays, 4, lambda a: (a.astype(np.float32) - mean) / std)

    # kseg test with the exported file: masks, overlays and the evaluation of all 4 test images
    out_dir = str(tmp_path / "pred")
    code, out, err = run_command("test", ["--weights_path", folder, "--backend", "onnx", "--test_dir",
                                          os.path.join(root, "test_image"), "--label_dir",
                                          os.path.join(root, "test_label"), "--mIOU", "--output", out_dir],
                                 capsys)
    assert code == 0, err
    assert len(os.listdir(os.path.join(out_dir, "masks"))) == 4 and "mean IoU" in out
    overlay = np.asarray(Image.open(os.path.join(out_dir, "overlays", "test00.png")))
    assert overlay.dtype == np.uint8 and overlay.shape[1:] == (SIZE, 3)


def test_a_band_count_the_model_does_not_take_fails_before_training(bands, tmp_path, capsys):
    root = bands[0]
    code, out, err = _train_cli(capsys, root, str(tmp_path / "w"), "--input_channels", "3")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert os.path.join(root, "train_image", "train00.tif") in lines[0]
    assert "4 bands" in lines[0] and "--input_channels 4" in lines[0]
    assert not os.path.exists(str(tmp_path / "w" / "bands"))


def test_a_grey_png_dataset_trains_predicts_and_exports_with_one_channel(grey, tmp_path):
    import kseg

    root, arrays = grey
    cfg = kseg.TrainConfig(model_name="unet", model_option={"base_filters": 4, "depth": 2}, input_height=SIZE,
                           input_width=SIZE, input_channels=1, data_dir=os.path.dirname(root),
                           dataset_name=os.path.basename(root), train_save_path=str(tmp_path / "w"), epochs=1,
                           train_batch_size=4, val_batch_size=4, verbose=0, mixed_precision=False)
    folder = kseg.train(cfg)
    exp = kseg.ExperimentConfig.from_json(os.path.join(folder, "config.json"))
    assert exp.input_channels == 1 and exp.mean is None and exp.image_init == "divide"
    _check_prediction_and_export(folder, arrays, 1, lambda a: a[:, :, None].astype(np.float32) / 255.0)
