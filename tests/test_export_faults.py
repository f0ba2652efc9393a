"""An export that fails or is killed leaves nothing behind, and the next one cleans up after it."""

import os

import keras
import pytest

from kseg import export
from kseg.models import get_model

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="export traces models with TensorFlow (KERAS_BACKEND=tensorflow)")

CONFIG = {"model_name": "unet", "n_classes": 3, "input_height": 32, "input_width": 32,
          "image_init": "divide", "resize_op": 1}


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return get_model("unet", n_classes=3, input_height=32, input_width=32, base_filters=4, depth=2)


def test_the_next_export_removes_what_a_killed_one_left(tmp_path, model):
    left = [".model.onnx.k3x9q2ab.tmp.onnx", ".model.onnx.old.zz81kq0p"]
    for name in left:
        (tmp_path / name).write_bytes(b"half a file")
    other = tmp_path / ".last.k3x9q2ab.tmp.keras"  # another writer's file in the same folder
    other.write_bytes(b"a checkpoint being written")
    path, report = export.export_keras_model(model, "onnx", str(tmp_path / "model.onnx"), CONFIG)
    assert report["passed"]
    assert sorted(os.listdir(tmp_path)) == [".last.k3x9q2ab.tmp.keras", "model.onnx"]


def test_a_failed_export_leaves_no_file_and_no_folder(tmp_path, model, monkeypatch):
    from kseg.export import core

    def fail(*args, **kwargs):
        raise export.ExportError("conversion failed (test)")

    monkeypatch.setattr(core, "to_onnx", fail)
    target = tmp_path / "new" / "deeper" / "model.onnx"
    with pytest.raises(export.ExportError, match="conversion failed"):
        export.export_keras_model(model, "onnx", str(target), CONFIG)
    assert os.listdir(tmp_path) == []
