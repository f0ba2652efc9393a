"""Encoder freezing: which layers, BatchNorm in inference mode, and ``--freeze_encoder N`` in training.

The training test runs the library's ``kseg.train`` twice on the tiny dataset (a narrow SegNet,
whose VGG16 encoder has BatchNorm, at 32x32, 4 steps per epoch): one frozen epoch, then a
resume to epoch 3 that trains epoch 2 frozen and unfreezes the encoder when epoch 3 begins. A
recording callback (added by wrapping ``make_callbacks``) snapshots weights at every epoch end.
"""

import csv
import inspect
import os
import re
import types
import warnings

import keras
import numpy as np
import pytest

from kseg.config import TrainConfig
from kseg.errors import ConfigError, ModelConfigError
from kseg.models import get_model, list_models, model_spec
from kseg.models.freeze import ENCODERS, encoder_layers, freeze_encoder, frozen_layers, saved_unfrozen

SEGNET = {"width_divisor": 16}
ENCODER_KERNELS = ("segnet_enc1_conv1_conv", "segnet_enc5_conv3_conv")  # first and last encoder convs
ENCODER_BNS = ("segnet_enc1_conv1_bn", "segnet_enc5_conv3_bn")
DECODER_KERNELS = ("segnet_dec5_conv1_conv", "segnet_head_logits")
MOBILENET = {"alpha": 0.25, "decoder_filters": (8, 8, 8, 8, 8)}


def _tiny_segnet(**kw):
    return get_model("segnet", n_classes=2, **SEGNET, **kw)


def _tiny_mobilenet_unet(**kw):
    return get_model("mobilenet_unet", n_classes=2, **MOBILENET, **kw)


def _numpy(v):
    return keras.ops.convert_to_numpy(v)


def _snapshot(model):
    """Copies of the encoder kernels, encoder BN moving statistics and decoder kernels."""
    return {
        "encoder": [_numpy(model.get_layer(n).kernel) for n in ENCODER_KERNELS],
        "bn": [_numpy(v) for n in ENCODER_BNS
               for v in (model.get_layer(n).moving_mean, model.get_layer(n).moving_variance)],
        "decoder": [_numpy(model.get_layer(n).kernel) for n in DECODER_KERNELS],
    }


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------ which layers


def test_encoder_layers_follow_the_builder_and_its_options():
    model = _tiny_mobilenet_unet()
    names = {layer.name for layer in encoder_layers(model)}
    assert {"conv1", "conv1_bn", "conv_pw_13", "conv_pw_13_relu"} <= names  # keras.applications' names
    assert not any(n.startswith("mobilenet_unet_") for n in names)  # no decoder layer
    # the same registry name, two encoders: the plain U-Net has none, unet(encoder=...) has one
    with pytest.raises(ModelConfigError) as error:
        get_model("unet", n_classes=2, base_filters=2, freeze_encoder=True)
    msg = str(error.value)
    assert "\n" not in msg and msg.startswith("unet: the model has no pretrained encoder") and "segnet" in msg
    vgg = get_model("unet", n_classes=2, encoder="vgg16", freeze_encoder=True)
    frozen = frozen_layers(vgg)
    assert frozen[:2] == ["block1_conv1", "block1_conv2"] and "block5_pool" in frozen
    assert all(vgg.get_layer(n).trainable for n in ("unet_dec16_conv1_conv", "unet_logits"))
    # kseg's own backbones, by name prefix: segnet's encoder but not its decoder
    seg = get_model("segnet", n_classes=2, width_divisor=16)
    seg_names = [layer.name for layer in encoder_layers(seg)]
    assert "segnet_enc1_conv1_conv" in seg_names and "segnet_enc5_pool" in seg_names
    assert not [n for n in seg_names if "_dec" in n or "_head" in n]
    assert {"attunet", "r2unet"}.isdisjoint(ENCODERS)  # unet++ as unet: only with encoder=...


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_its_encoder_found_or_refused(name):
    spec = model_spec(name)
    if "encoder_weights" in inspect.signature(spec.builder).parameters:  # pretrainable: must be in the table
        assert name in ENCODERS, f"{name} takes encoder_weights: add its encoder to kseg.models.freeze.ENCODERS"
    model = spec.builder(n_classes=2, input_shape=(*spec.test_size, 3), **spec.test_kwargs)
    if name not in ENCODERS or name in ("unet", "unet++"):  # only with encoder=... (above; unet++: test_unetpp_encoder.py)
        with pytest.raises(ModelConfigError, match=f"^{re.escape(name)}: the model has no pretrained encoder"):
            encoder_layers(model)
        return
    encoder = {layer.name for layer in encoder_layers(model)}
    weighted = [layer.name for layer in model.layers if layer.weights]
    outputs = {t._keras_history[0].name for t in keras.tree.flatten(model.output)}
    assert encoder and not encoder & outputs, name  # an encoder, and the head is not in it
    assert set(weighted) & encoder and set(weighted) - encoder, name  # trained weights on both sides
    assert any(layer.weights for layer in encoder_layers(model)) and weighted[0] in encoder, name


def test_freezing_keeps_intentionally_fixed_layers_and_unfreezes_only_the_encoder():
    model = get_model("mobilenet_fcn8", n_classes=2, alpha=0.25)
    fixed = model.get_layer("mobilenet_fcn8_up8")  # the paper's fixed bilinear x8 upsampling
    assert not fixed.trainable
    layers = freeze_encoder(model)
    assert not any(layer.trainable for layer in layers)
    trainable = {v.path for v in model.trainable_variables}
    assert trainable and all(v.startswith("mobilenet_fcn8_") for v in trainable)  # the head only
    freeze_encoder(model, frozen=False)
    assert all(layer.trainable for layer in layers) and not fixed.trainable
    assert frozen_layers(model) == []


def test_a_frozen_batchnorm_normalises_with_its_moving_statistics_and_keeps_them():
    model = _tiny_segnet()
    bn = model.get_layer(ENCODER_BNS[0])
    rng = np.random.default_rng(0)
    bn.moving_mean.assign(rng.normal(size=bn.moving_mean.shape).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=bn.moving_variance.shape).astype("float32"))
    bn.gamma.assign(rng.uniform(0.5, 1.5, size=bn.gamma.shape).astype("float32"))
    bn.beta.assign(rng.normal(size=bn.beta.shape).astype("float32"))
    mm, mv, gamma, beta = (_numpy(v) for v in (bn.moving_mean, bn.moving_variance, bn.gamma, bn.beta))
    x = (rng.normal(size=(4, 5, 5, mm.shape[0])) * 3 + 2).astype("float32")  # far from the moving stats

    inference = (x - mm) / np.sqrt(mv + bn.epsilon) * gamma + beta  # written out, not Keras'
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    batch_stats = (x - mean) / np.sqrt(var + bn.epsilon) * gamma + beta

    freeze_encoder(model)
    frozen_out = keras.ops.convert_to_numpy(bn(x, training=True))
    np.testing.assert_allclose(frozen_out, inference, rtol=1e-4, atol=1e-4)
    assert np.array_equal(_numpy(bn.moving_mean), mm) and np.array_equal(_numpy(bn.moving_variance), mv)
    freeze_encoder(model, frozen=False)
    trained_out = keras.ops.convert_to_numpy(bn(x, training=True))
    np.testing.assert_allclose(trained_out, batch_stats, rtol=1e-4, atol=1e-4)
    assert not np.allclose(_numpy(bn.moving_mean), mm)  # training mode moves them


def test_saved_unfrozen_restores_the_frozen_state():
    model = _tiny_segnet(freeze_encoder=True)
    frozen = frozen_layers(model)
    with saved_unfrozen(model):
        assert all(model.get_layer(n).trainable for n in frozen)
    assert frozen_layers(model) == frozen and not model.get_layer(ENCODER_KERNELS[0]).trainable


# ------------------------------------------------------------------ the option


def test_the_option_takes_epochs_all_and_off():
    assert TrainConfig(freeze_encoder="all").freeze_encoder == -1
    assert TrainConfig(freeze_encoder=-1).freeze_encoder == -1
    assert TrainConfig(freeze_encoder="3").freeze_encoder == 3
    assert TrainConfig().freeze_encoder == 0
    for bad in (-2, "some", 1.5, True):
        with pytest.raises(ConfigError, match="--freeze_encoder: expected a number of epochs"):
            TrainConfig(freeze_encoder=bad)


def test_kseg_train_refuses_to_freeze_a_model_without_encoder_before_training(tmp_path, tiny_dataset, capsys):
    from conftest import run_command

    code, out, err = run_command("train", [
        "--model_name", "unet", "--model_option", "base_filters=2", "--freeze_encoder", "1",
        "--data_dir", os.path.dirname(tiny_dataset), "--dataset_name", os.path.basename(tiny_dataset),
        "--train_save_path", str(tmp_path / "w"), "--input_height", "32", "--input_width", "32"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: unet: the model has no pretrained encoder to freeze"), err
    assert "training unet" not in out and not os.path.exists(tmp_path / "w")  # nothing trained or written
    code, _, err = run_command("train", ["--freeze_encoder", "some"], capsys)
    assert code == 2 and "--freeze_encoder" in err


def test_resuming_freezes_only_before_the_unfreeze_epoch():
    from kseg.training import _apply_freeze

    for n, initial_epoch, frozen in ((2, 1, True), (2, 2, False), (-1, 5, True), (0, 0, False)):
        model = _tiny_segnet()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        plan = types.SimpleNamespace(config=TrainConfig(model_name="segnet", freeze_encoder=n),
                                     initial_epoch=initial_epoch)
        _apply_freeze(plan, model)
        assert bool(frozen_layers(model)) is frozen, (n, initial_epoch)
        if n:  # the optimizer holds its slots for every weight, frozen or not
            slots = {v.name for v in model.optimizer.variables}
            assert {"segnet_enc1_conv1_conv_kernel_momentum", "segnet_head_logits_kernel_momentum"} <= slots


# ------------------------------------------------------------------ training


@pytest.fixture
def recorder(monkeypatch):
    """Snapshots at the start of every ``fit`` and at every epoch end, per run; a run stops
    after epoch ``stop_after[0]`` when that is set (as if it had been killed there)."""
    import kseg.training as T

    runs, stop_after = [], [None]

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            runs.append([_snapshot(self.model)])

        def on_epoch_end(self, epoch, logs=None):
            runs[-1].append(_snapshot(self.model))
            if stop_after[0] == epoch + 1:
                self.model.stop_training = True

    real = T.make_callbacks

    def make_callbacks(plan):
        callbacks, monitor, backup = real(plan)
        return [Record()] + callbacks, monitor, backup

    monkeypatch.setattr(T, "make_callbacks", make_callbacks)
    return runs, stop_after


def _iterations(model):
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def test_freeze_then_unfreeze_through_train_and_resume(tmp_path, tiny_dataset, recorder):
    import kseg
    from kseg.experiment import load_model_file

    runs, stop_after = recorder
    cfg = TrainConfig(model_name="segnet", model_option=SEGNET, input_height=32, input_width=32,
                      data_dir=os.path.dirname(tiny_dataset), dataset_name=os.path.basename(tiny_dataset),
                      train_save_path=str(tmp_path / "w"), exp_name="frozen", train_batch_size=4, epochs=3,
                      optimizer_name="sgd", learning_rate=0.05, schedule="poly", verbose=0,
                      mixed_precision=False, augment=False, validate=False, freeze_encoder=2)
    stop_after[0] = 1
    folder = kseg.train(cfg)  # stops after epoch 1 of 3, as if killed there
    (start, e1), = runs
    assert _same(start["encoder"], e1["encoder"]) and _same(start["bn"], e1["bn"])  # epoch 1: frozen
    assert not _same(start["decoder"], e1["decoder"])

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # Keras' "Skipping variable loading for optimizer"
        saved = load_model_file(os.path.join(folder, "last.keras"))
    assert _iterations(saved) == 4  # 16 images, batch 4: 4 steps per epoch
    assert all(layer.trainable for layer in saved.layers)  # saved unfrozen (see saved_unfrozen)

    stop_after[0] = None
    # resumes at epoch 1 < 2: frozen again, unfrozen at epoch 3
    kseg.train(TrainConfig(train_save_path=cfg.train_save_path, exp_name="frozen", resume=True, verbose=0))
    _, e2, e3 = runs[1]
    assert _same(e1["encoder"], e2["encoder"]) and _same(e1["bn"], e2["bn"])  # epoch 2: still frozen
    assert not _same(e1["decoder"], e2["decoder"])
    assert not any(np.array_equal(a, b) for a, b in zip(e2["encoder"], e3["encoder"]))  # epoch 3: trained
    assert not any(np.array_equal(a, b) for a, b in zip(e2["bn"], e3["bn"]))
    assert not _same(e2["decoder"], e3["decoder"])

    with open(os.path.join(folder, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    # one curve over the run's 12 steps, across the resume and the unfreeze: the sample dataset
    # suggests a 1-epoch warm-up (4 steps from 0.1 x 0.05), then poly over the other 8 steps,
    # so the rate at the first step of epochs 1, 2, 3 is 0.005, 0.05, 0.05 * (1 - 4/8) ** 0.9
    got = [float(r["learning_rate"]) for r in rows]
    assert got == pytest.approx([0.005, 0.05, 0.05 * 0.5 ** 0.9], rel=1e-5)
    assert _iterations(load_model_file(os.path.join(folder, "last.keras"))) == 12
