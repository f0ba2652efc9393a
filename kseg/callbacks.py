"""Keras callbacks of a kseg run: the experiment's checkpoints and the epoch timer."""

import datetime
import os
import shutil
import time

import keras
import numpy as np

from kseg import experiment as X
from kseg.files import atomic_path
from kseg.models.freeze import freeze_encoder, frozen_layers, saved_unfrozen


class ExperimentCheckpoint(keras.callbacks.Callback):
    """Saves ``last.keras`` every epoch and ``best.keras`` when the monitored
    metric improves, both atomically, and records the epoch for ``--resume``.

    With a ``stage`` (:class:`kseg.experiment.ExperimentStage`) the first checkpoint is
    written in the staging folder, which then moves into place; ``movers`` (callbacks
    with a ``move_to(folder)`` method) close their files first and write to the final
    folder afterwards.
    """

    def __init__(self, folder, monitor, best=None, verbose=True, stage=None, movers=()):
        super().__init__()
        self.folder = folder
        self.monitor = monitor
        self.best = best
        self.verbose = verbose
        self.stage = stage
        self.movers = list(movers)

    def _save(self, name):
        # a frozen encoder is saved trainable: the optimizer in the file then matches the
        # weights Keras rebuilds it for on --resume (kseg.models.freeze.saved_unfrozen)
        with atomic_path(os.path.join(self.folder, name)) as tmp, saved_unfrozen(self.model):
            self.model.save(tmp)

    def _link_best(self):
        """``best.keras`` = the ``last.keras`` just written: a hard link (a copy where the
        file system has none), put in place atomically. Serialising the model once per
        epoch instead of twice saves ~1 s per epoch for a 31M-parameter U-Net. The next
        ``last.keras`` is a new file renamed into place, so the link keeps this one."""
        last = os.path.join(self.folder, X.LAST)
        with atomic_path(os.path.join(self.folder, X.BEST)) as tmp:
            os.remove(tmp)
            try:
                os.link(last, tmp)
            except OSError:
                shutil.copyfile(last, tmp)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        improved = value is not None and (self.best is None or value > self.best)
        self._save(X.LAST)
        if improved:
            self.best = float(value)
            self._link_best()
        X.write_json(
            os.path.join(self.folder, X.STATE),
            {"epoch": epoch + 1, "monitor": self.monitor, "best": self.best,
             "updated": datetime.datetime.now().isoformat(timespec="seconds")},
        )
        if self.stage is not None and not self.stage.promoted:
            for m in self.movers:
                m.move_to(self.stage.final)
            self.folder = self.stage.promote()
        if improved and self.verbose:
            print(f"\nepoch {epoch + 1}: {self.monitor} improved to {value:.4f}, saved {X.BEST}", flush=True)


class EncoderUnfreeze(keras.callbacks.Callback):
    """``--freeze_encoder N``: makes the encoder trainable when epoch ``N`` (0-based) begins.

    The optimizer already holds state for the encoder's weights (``kseg.training``
    builds it over all of them before freezing), so only the train step is retraced:
    the step count, the learning-rate schedule and the decoder's optimizer moments go
    on unchanged.
    """

    def __init__(self, model_name, epoch):
        super().__init__()
        self.model_name = model_name
        self.epoch = int(epoch)

    def on_epoch_begin(self, epoch, logs=None):
        # ">=": a run that BackupAndRestore restarts past epoch N starts frozen too
        if epoch < self.epoch or not frozen_layers(self.model):
            return
        freeze_encoder(self.model, self.model_name, frozen=False)
        self.model.make_train_function(force=True)
        print(f"\nepoch {epoch + 1}: encoder unfrozen (trained from here on)", flush=True)


class ExperimentTensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback writing to ``<experiment>/logs``, able to follow the
    experiment when its staging folder moves into place (:meth:`move_to`)."""

    def __init__(self, folder, **kwargs):
        super().__init__(os.path.join(folder, X.LOGS), **kwargs)

    def move_to(self, folder):
        self._close_writers()  # flushed and closed before their folder moves; reopened lazily
        self._writers = {}
        self.log_dir = self._log_write_dir = os.path.join(folder, X.LOGS)
        self._train_dir = os.path.join(self._log_write_dir, "train")
        self._val_dir = os.path.join(self._log_write_dir, "validation")


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_time_s`` (wall clock of the epoch, validation included) to the
    epoch logs, so ``history.csv`` and TensorBoard record it. Must run before the
    loggers."""

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and hasattr(self, "_t0"):
            logs["epoch_time_s"] = round(time.perf_counter() - self._t0, 2)


class LearningRateLogger(keras.callbacks.Callback):
    """Adds ``learning_rate`` to the epoch logs: the rate of the epoch's FIRST step
    (with a schedule it changes every step), so ``history.csv`` and TensorBoard
    record it. Must run before the loggers."""

    def _current(self):
        opt = self.model.optimizer
        opt = getattr(opt, "inner_optimizer", opt)  # LossScaleOptimizer under mixed_float16
        lr = opt.learning_rate
        return float(keras.ops.convert_to_numpy(lr))

    def on_epoch_begin(self, epoch, logs=None):
        self._lr = self._current()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = getattr(self, "_lr", None) or self._current()


class ValidationPanels(keras.callbacks.Callback):
    """Every ``every`` epochs, writes a panel of ``n`` validation images to TensorBoard
    (``logs/validation_panels``): input | ground truth | prediction, one row per image,
    classes in the experiment's palette. TensorBoard backend only (it uses
    ``tf.summary``); a no-op elsewhere.
    """

    def __init__(self, val_ds, folder, palette, every=5, n=4, ignore_index=None):
        super().__init__()
        self.val_ds, self.every, self.n = val_ds, int(every), int(n)
        self.logdir = os.path.join(folder, X.LOGS, "validation_panels")
        self.palette = np.asarray(palette, dtype="uint8")
        self.ignore_index = ignore_index
        self._batch = None
        self._writer = None

    def _first_batch(self):
        if self._batch is None:
            x, y = next(iter(self.val_ds.unbatch().batch(self.n).take(1)))
            self._batch = (np.asarray(x), np.asarray(y))
        return self._batch

    def panel(self, x, y, prob):
        """The panel as one ``uint8`` image ``(rows * h, 3 * w, 3)``."""
        pal = self.palette
        pred = (prob[..., 0] > 0.5).astype("int64") if prob.shape[-1] == 1 else prob.argmax(-1)
        rows = []
        for img, lbl, pr in zip(x, y.reshape(y.shape[:3]), pred):
            img = img.astype("float32")
            lo, hi = img.min(), img.max()
            img = ((img - lo) / max(hi - lo, 1e-6) * 255).astype("uint8")
            if img.shape[-1] == 1:
                img = np.repeat(img, 3, axis=-1)
            lbl = lbl.astype("int64")
            gt = pal[np.clip(lbl, 0, len(pal) - 1)]
            if self.ignore_index is not None:
                gt[lbl == self.ignore_index] = 0
            rows.append(np.concatenate([img[..., :3], gt, pal[np.clip(pr, 0, len(pal) - 1)]], axis=1))
        return np.concatenate(rows, axis=0)

    def on_epoch_end(self, epoch, logs=None):
        if self.val_ds is None or (epoch + 1) % self.every or keras.backend.backend() != "tensorflow":
            return
        import tensorflow as tf

        x, y = self._first_batch()
        prob = np.asarray(keras.ops.convert_to_numpy(self.model(x, training=False)), dtype="float32")
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.logdir)
        with self._writer.as_default():
            tf.summary.image("input | ground truth | prediction", self.panel(x, y, prob)[None], step=epoch)
        self._writer.flush()

    def move_to(self, folder):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.logdir = os.path.join(folder, X.LOGS, "validation_panels")
