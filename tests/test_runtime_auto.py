"""The automatic CPU runtime (kseg.runtime.auto_runner): an experiment's .keras model converted once to a
parity-checked ONNX copy cached in the experiment, run by onnxruntime, with Keras as the fallback.

The conversion normally runs in a separate process (python -m kseg.export.cache); it does so once here,
for the module's experiment. The tests that need another conversion (a failing parity check, a
read-only folder) run kseg.export.cache.convert in this process instead, so that the parity function
can be replaced. The rest of the suite predicts with Keras (tests/conftest.py sets KSEG_RUNTIME=keras).

Runtime: about 60 s on a 2-core CPU shared with other jobs (one conversion subprocess, two
in-process conversions of a 4-filter U-Net).
"""

import json
import os
import shutil
import sys

import keras
import numpy as np
import pytest

from kseg import runtime as R
from kseg.data.io import IMAGE_EXTENSIONS, list_files, read_image
from kseg.errors import ConfigError, ExportError, KsegError
from kseg.predict import Predictor

from conftest import run_command

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="the ONNX copy is made with TensorFlow (KERAS_BACKEND=tensorflow)")

STALE = "0123456789ab"  # a 12-hex-digit prefix no real checkpoint of these tests has


def _cache(folder):
    return os.path.join(folder, R.CACHE_DIR)


def _test_images(dataset):
    return [read_image(p, 3) for p in list_files(os.path.join(dataset, "test_image"), IMAGE_EXTENSIONS)]


def _in_process_conversion(monkeypatch, calls=None):
    """Convert in this process (so monkeypatched export functions apply)."""
    from kseg.export import cache

    def convert(keras_file, folder, onnx_path, record_path, digest, timeout=None):
        if calls is not None:
            calls.append(onnx_path)
        return cache.convert(keras_file, folder, onnx_path, record_path, digest)

    monkeypatch.setattr(R, "convert_in_subprocess", convert)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_experiment):
    """A copy of the tiny experiment whose ONNX copy was made by the conversion subprocess, with
    the cache state found before: a stale copy of another checkpoint (with what a killed conversion
    of it left) and a copy of this checkpoint without its record (a kill between the two writes)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    folder = shutil.copytree(tiny_experiment, str(tmp_path_factory.mktemp("auto") / "exp"))
    cache = _cache(folder)
    os.makedirs(cache)
    digest = R.file_sha256(os.path.join(folder, "best.keras"))
    planted = {f"best.{STALE}.onnx": b"not an onnx file", f".best.{STALE}.onnx.abcdefgh.tmp.onnx": b"half",
               f"best.{digest[:12]}.onnx": b"no record beside me"}
    for name, data in planted.items():
        with open(os.path.join(cache, name), "wb") as f:
            f.write(data)
    with open(os.path.join(cache, f"best.{STALE}.json"), "w") as f:
        json.dump({"version": R.CACHE_VERSION, "sha256": STALE, "input_size": [32, 32]}, f)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(R, "AUTO_MIN_SPEEDUP", 0.0)  # the speed rule is tested on its own below
        pred = Predictor.from_experiment(folder, runtime="auto")
    return folder, pred, digest


def test_auto_converts_once_and_predicts_the_keras_masks(converted, tiny_dataset, monkeypatch):
    folder, pred, digest = converted
    onnx_path, record_path = R.cache_paths(_cache(folder), os.path.join(folder, "best.keras"), digest)
    assert pred.runtime == "onnxruntime" and pred.run.converted and pred.run.onnx_path == onnx_path
    # the stale copy, its leftover and the record-less copy are gone; the new copy and its record remain
    assert sorted(os.listdir(_cache(folder))) == sorted([os.path.basename(onnx_path), os.path.basename(record_path)])
    with open(record_path) as f:
        record = json.load(f)
    assert record["sha256"] == digest and record["input_size"] == [32, 32] and record["model_input_size"] is None
    assert record["parity"]["passed"] and record["parity"]["atol"] == 1e-3  # the export's float32 tolerance
    line = pred.runtime_line()
    assert line.startswith("runtime: onnxruntime (parity max |diff| ") and "converted now" in line

    keras_pred = Predictor.from_experiment(folder, runtime="keras")
    assert keras_pred.runtime == "keras"
    for image in _test_images(tiny_dataset):
        got, ref = pred.predict_proba(image), keras_pred.predict_proba(image)
        assert np.abs(got - ref).max() <= 1e-3
        assert np.array_equal(got.argmax(-1), ref.argmax(-1))
    assert not pred.run.keras_loaded()  # every batch had the training size: onnxruntime ran them all

    # a batch of another size runs on the Keras model
    x = np.random.default_rng(0).random((1, 48, 64, 3), dtype=np.float32)
    np.testing.assert_allclose(pred.run(x), keras_pred.run(x), atol=1e-6)
    assert pred.run.keras_loaded()

    # a second predictor reuses the copy: no conversion, the file untouched
    mtime = os.stat(onnx_path).st_mtime_ns
    monkeypatch.setattr(R, "convert_in_subprocess", lambda *a, **k: pytest.fail("converted again"))
    monkeypatch.setattr(R, "AUTO_MIN_SPEEDUP", 0.0)
    again = Predictor.from_experiment(folder, runtime="auto")
    assert again.runtime == "onnxruntime" and not again.run.converted
    assert os.stat(onnx_path).st_mtime_ns == mtime and "cached copy" in again.runtime_line()


def test_a_copy_is_used_only_for_its_checkpoint_and_onnxruntime(converted, monkeypatch):
    folder, _, digest = converted
    _, record_path = R.cache_paths(_cache(folder), os.path.join(folder, "best.keras"), digest)
    assert R._read_record(record_path, digest) is not None
    assert R._read_record(record_path, "f" * 64) is None  # another checkpoint
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "0.0.1")
    assert R._read_record(record_path, digest) is None  # another onnxruntime


def test_auto_keeps_keras_when_the_copy_measured_slower(converted, monkeypatch):
    folder, _, _ = converted
    monkeypatch.setattr(R, "convert_in_subprocess", lambda *a, **k: pytest.fail("converted again"))
    monkeypatch.setattr(R, "AUTO_MIN_SPEEDUP", 1e9)
    slow = Predictor.from_experiment(folder, runtime="auto")
    assert slow.runtime == "keras" and "x Keras' speed" in slow.runtime_line()
    assert Predictor.from_experiment(folder, runtime="onnx").runtime == "onnxruntime"  # onnx insists


def test_parity_failure_falls_back_to_keras_with_one_warning(tiny_experiment, tmp_path, monkeypatch, capsys):
    pytest.importorskip("tf2onnx")
    from kseg.export import core

    folder = shutil.copytree(tiny_experiment, str(tmp_path / "exp"))
    real = core.parity_check

    def failing(*args, **kwargs):
        return {**real(*args, **kwargs), "max_abs_diff": 0.5, "passed": False}

    monkeypatch.setattr(core, "parity_check", failing)
    _in_process_conversion(monkeypatch)
    capsys.readouterr()
    pred = Predictor.from_experiment(folder, runtime="auto")
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "parity" in warnings[0] and "FAILED" in warnings[0], err
    assert pred.runtime == "keras" and pred.runtime_line().startswith("runtime: keras (fallback: ")
    assert os.listdir(_cache(folder)) == []  # nothing half-written, no temporary left
    with pytest.raises(ExportError, match="parity"):  # --runtime onnx: an error, not a fallback
        Predictor.from_experiment(folder, runtime="onnx")


def test_read_only_experiment_converts_into_a_temporary_folder(tiny_experiment, tmp_path, monkeypatch):
    pytest.importorskip("tf2onnx")
    folder = shutil.copytree(tiny_experiment, str(tmp_path / "exp"))
    calls = []
    _in_process_conversion(monkeypatch, calls)
    monkeypatch.setattr(R, "writable_dir", lambda path: False)
    monkeypatch.setattr(R, "AUTO_MIN_SPEEDUP", 0.0)
    pred = Predictor.from_experiment(folder, runtime="auto")
    assert pred.runtime == "onnxruntime" and pred.run.onnx_path is None
    assert "temporary folder" in pred.runtime_line()
    assert len(calls) == 1 and not calls[0].startswith(folder)
    assert not os.path.exists(os.path.dirname(calls[0]))  # removed once onnxruntime loaded the file
    assert not os.path.exists(_cache(folder))
    x = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)
    keras_run = R.keras_runner(os.path.join(folder, "best.keras"))
    assert np.abs(pred.run(x) - keras_run(x)).max() <= 1e-3


def test_keras_without_onnxruntime_a_gpu_or_for_whole_images(tiny_experiment, monkeypatch):
    monkeypatch.setattr(R, "convert_in_subprocess", lambda *a, **k: pytest.fail("no conversion expected"))
    assert R.choose_runtime("auto", gpu=True) == ("keras", "a GPU is visible")
    assert R.choose_runtime("keras") == ("keras", "--runtime keras")
    assert R.choose_runtime("auto", gpu=False, whole_images=True)[0] == "keras"
    whole = Predictor.from_experiment(tiny_experiment, runtime="auto", mode="whole")
    assert whole.runtime == "keras" and "whole-image mode" in whole.runtime_line()

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    choice, why = R.choose_runtime("auto", gpu=False)
    assert choice == "keras" and why.startswith("onnxruntime not installed; pip install kseg[export]")
    pred = Predictor.from_experiment(tiny_experiment, runtime="auto")
    assert pred.runtime == "keras" and "onnxruntime not installed" in pred.runtime_line()
    with pytest.raises(ExportError, match=r"--runtime onnx needs onnxruntime \(pip install kseg\[export\]\)"):
        Predictor.from_experiment(tiny_experiment, runtime="onnx")


def test_bad_runtime_values_are_one_line_errors(tiny_experiment, monkeypatch, capsys):
    code, _, err = run_command("test", ["--weights_path", tiny_experiment, "--runtime", "fast"], capsys)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:") or ": error:" in ln]
    assert code == 2 and len(errors) == 1 and "--runtime" in errors[0] and "'fast'" in errors[0], err
    with pytest.raises(ConfigError, match=r"^unknown --runtime 'fast'; valid: auto, keras, onnx$"):
        Predictor.from_experiment(tiny_experiment, runtime="fast")
    with pytest.raises(KsegError, match="--runtime keras applies to the .keras model"):
        Predictor.from_experiment(tiny_experiment, backend="onnx", runtime="keras")
    monkeypatch.setenv(R.ENV_RUNTIME, "fast")
    with pytest.raises(ConfigError, match=r"^unknown \$KSEG_RUNTIME 'fast'; valid: auto, keras, onnx$"):
        Predictor.from_experiment(tiny_experiment)
    monkeypatch.setenv(R.ENV_RUNTIME, "keras")
    assert Predictor.from_experiment(tiny_experiment).runtime_line() == "runtime: keras ($KSEG_RUNTIME keras)"


def test_test_script_runtime_auto_end_to_end(converted, tiny_dataset, tmp_path, capsys):
    folder, _, _ = converted
    out = tmp_path / "out"
    # the command as the console script runs it; KSEG_RUNTIME=keras is set for the suite: the flag wins
    code, stdout, err = run_command("test", ["--weights_path", folder, "--runtime", "auto", "--mIOU", "--no-overlay",
                                             "--output", str(out)], capsys)
    assert code == 0, stdout + err
    lines = [ln for ln in stdout.splitlines() if ln.startswith("runtime: ")]
    assert len(lines) == 1 and lines[0].startswith("runtime: onnxruntime (parity max |diff| "), stdout
    assert "cached copy" in lines[0] and "warning:" not in err  # the module fixture's copy, reused
    assert "mean IoU" in stdout

    from PIL import Image

    keras_pred = Predictor.from_experiment(folder, runtime="keras")
    for path in list_files(os.path.join(tiny_dataset, "test_image"), IMAGE_EXTENSIONS):
        stem = os.path.splitext(os.path.basename(path))[0]
        mask = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert np.array_equal(mask, keras_pred.predict(read_image(path, 3))), stem


def test_benchmark_inference_table():
    from kseg.benchmark import format_inference

    row = {"model": "enet", "input_height": 224, "input_width": 224, "auto_runtime": "onnxruntime",
           "keras_model_ms": 50.19, "auto_model_ms": 36.67, "auto_model_speedup": 1.2, "auto_model_speedup_fastest": 1.98,
           "auto_predict_speedup": 0.53, "parity_max_abs_diff": 0.0021348}
    lines = format_inference([row, {"model": "unet", "error": "timed out after 60 s"}]).splitlines()
    assert lines[2] == "| enet | 224x224 | onnxruntime | 50.2 | 36.7 | 1.20x | 1.98x | 0.53x | - | 2.1e-03 |"
    assert lines[3].startswith("| unet | | error: timed out after 60 s |")
    columns = [ln.count("|") - ln.count("\\|") for ln in lines]  # escaped pipes are text
    assert columns == [11] * 4
