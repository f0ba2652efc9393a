"""kseg.callbacks.ExperimentCheckpoint: what best.keras and last.keras hold after each epoch."""

import os

import numpy as np

import keras

from kseg import experiment as X
from kseg.callbacks import ExperimentCheckpoint


def _tiny_model():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(2, name="d")(inputs))


def _kernel(path):
    return keras.models.load_model(path).get_layer("d").get_weights()[0]


def test_best_follows_the_monitored_metric_and_last_every_epoch(tmp_path):
    model = _tiny_model()
    cb = ExperimentCheckpoint(str(tmp_path), "val_mean_iou", verbose=False)
    cb.set_model(model)
    kernels = []
    for epoch, score in enumerate([0.5, 0.7, 0.6]):  # improves, improves, does not
        k = np.full((4, 2), float(epoch + 1), np.float32)
        model.get_layer("d").set_weights([k, np.zeros(2, np.float32)])
        kernels.append(k)
        cb.on_epoch_end(epoch, {"val_mean_iou": score})
        np.testing.assert_array_equal(_kernel(tmp_path / X.LAST), k)
    # best is epoch 2's weights although last.keras was rewritten after it
    np.testing.assert_array_equal(_kernel(tmp_path / X.BEST), kernels[1])
    assert cb.best == 0.7
    assert X.read_json(os.path.join(tmp_path, X.STATE))["epoch"] == 3
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporaries left


def test_best_is_written_even_without_hard_links(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_link)
    model = _tiny_model()
    cb = ExperimentCheckpoint(str(tmp_path), "mean_iou", verbose=False)
    cb.set_model(model)
    cb.on_epoch_end(0, {"mean_iou": 0.1})
    np.testing.assert_array_equal(_kernel(tmp_path / X.BEST), model.get_layer("d").get_weights()[0])
