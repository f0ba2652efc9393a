"""Optimisation of a kseg run: optimizers, weight decay, learning-rate schedules, compile.

Weight decay comes in the two forms the literature uses, and they are not the same
thing once the optimizer is adaptive:

* ``coupled`` (L2): ``weight_decay * w`` is added to the gradient before the
  optimizer sees it -- what Caffe/Torch SGD did in the FCN, SegNet, DeepLab, PSPNet,
  ICNet and HRNet papers (equivalent to a loss term ``weight_decay / 2 * ||w||^2``).
  With Adam the decay term is then rescaled per weight like any gradient.
* ``decoupled`` (Loshchilov & Hutter, AdamW): after the update,
  ``w <- w - learning_rate * weight_decay * w``, independent of the gradient's
  scale. This is Keras' own ``weight_decay`` argument of every optimizer.

Either way only kernels are decayed (weights with two or more dimensions); biases
and normalisation scales/offsets are not, as in the reference implementations.

Schedules are functions of the optimizer step (one step = one batch), built on
``keras.optimizers.schedules`` where Keras has the curve (poly = ``PolynomialDecay``,
cosine = ``CosineDecay``, step = ``ExponentialDecay(staircase=True)``, multistep =
``PiecewiseConstantDecay``, exponential = ``ExponentialDecay``); kseg adds only the
linear warm-up wrapper (:class:`LinearWarmup`). The schedule travels inside the
optimizer inside ``last.keras``, and the step counter with it, so a resumed run
continues the same curve at the same step.
"""

import keras
from keras import ops

from kseg.config import IGNORE_INDEX, OPTIMIZERS, SCHEDULES, WEIGHT_DECAY_MODES
from kseg.distribute import loss_for_distribution
from kseg.errors import ConfigError
from kseg.losses import get_loss
from kseg.metrics import get_metric


def _decays(variable):
    """Whether weight decay applies to ``variable``: kernels yes, biases and norm parameters no."""
    return len(variable.shape) >= 2


class _KsegOptimizer:
    """Mixed into each Keras optimizer: kernels-only weight decay, coupled or decoupled.

    ``l2`` > 0 is the coupled form (added to the gradient); Keras' ``weight_decay``
    is the decoupled form. At most one of them is non-zero.
    """

    def __init__(self, *args, l2=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.l2 = float(l2 or 0.0)

    def _use_weight_decay(self, variable):
        return _decays(variable) and super()._use_weight_decay(variable)

    def _backend_apply_gradients(self, grads, trainable_variables):
        if self.l2:
            l2 = self.l2
            grads = [g if g is None or not _decays(v) else g + ops.cast(l2, g.dtype) * ops.cast(v, g.dtype)
                     for g, v in zip(grads, trainable_variables)]
        return super()._backend_apply_gradients(grads, trainable_variables)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


def _kseg_class(base):
    cls = type(base.__name__, (_KsegOptimizer, base), {"__doc__": f"{base.__name__} with kseg's weight decay "
                                                                    "(see kseg.optim)."})
    cls.__module__ = __name__
    return keras.saving.register_keras_serializable(package="kseg")(cls)


SGD = _kseg_class(keras.optimizers.SGD)
Adam = _kseg_class(keras.optimizers.Adam)
AdamW = _kseg_class(keras.optimizers.AdamW)
RMSprop = _kseg_class(keras.optimizers.RMSprop)
Adadelta = _kseg_class(keras.optimizers.Adadelta)
_CLASSES = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adadelta": Adadelta}


def resolve_weight_decay_mode(mode, optimizer_name):
    """``auto`` = decoupled for AdamW (its definition), coupled (L2) for every other optimizer."""
    if mode not in WEIGHT_DECAY_MODES:
        raise ConfigError(f"--weight_decay_mode {mode!r}: expected one of {', '.join(WEIGHT_DECAY_MODES)}")
    if mode == "auto":
        return "decoupled" if optimizer_name == "adamw" else "coupled"
    return mode


def make_optimizer(name, learning_rate, *, momentum=0.9, nesterov=False, weight_decay=0.0,
                   weight_decay_mode="auto", clipnorm=None, ema=0.0, ema_overwrite_frequency=None):
    """A Keras optimizer by kseg name.

    Args:
        name: ``sgd``, ``adam``, ``adamw``, ``rmsprop`` or ``adadelta``.
        learning_rate: a float or a ``LearningRateSchedule`` (:func:`make_schedule`).
        momentum: SGD and RMSprop momentum; ``nesterov`` for SGD.
        weight_decay, weight_decay_mode: see the module docstring (``auto``: decoupled for
            AdamW, coupled for the others).
        clipnorm: clip each gradient to this L2 norm (``None``: no clipping).
        ema: keep an exponential moving average of the weights with this momentum
            (e.g. 0.999; 0 = off); the model's weights are replaced by the average every
            ``ema_overwrite_frequency`` steps (kseg uses once per epoch, before validation).
    """
    if name not in _CLASSES:
        raise ConfigError(f"unknown --optimizer_name {name!r}; valid: {', '.join(OPTIMIZERS)}")
    mode = resolve_weight_decay_mode(weight_decay_mode, name)
    kw = {"learning_rate": learning_rate}
    if name == "sgd":
        kw.update(momentum=momentum, nesterov=bool(nesterov))
    elif name == "rmsprop":
        kw.update(momentum=momentum)
    if weight_decay:
        if mode == "coupled":
            kw["l2"] = weight_decay
            if name == "adamw":
                kw["weight_decay"] = 0.0  # AdamW's own default (0.004) would add a decoupled decay too
        else:
            kw["weight_decay"] = weight_decay
    elif name == "adamw":
        kw["weight_decay"] = 0.0
    if clipnorm:
        kw["clipnorm"] = float(clipnorm)
    if ema:
        kw.update(use_ema=True, ema_momentum=float(ema), ema_overwrite_frequency=ema_overwrite_frequency)
    return _CLASSES[name](**kw)


# ------------------------------------------------------------------------------ schedules
@keras.saving.register_keras_serializable(package="kseg")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up in front of another schedule.

    For ``step < warmup_steps`` the rate rises linearly from ``factor * initial`` to
    ``initial`` (``initial`` = the wrapped schedule's value at its step 0); from
    ``warmup_steps`` on it is ``after(step - warmup_steps)``, i.e. the wrapped
    schedule starts when the warm-up ends.
    """

    def __init__(self, after, warmup_steps, factor=0.1, initial_learning_rate=None):
        self.after = after
        self.warmup_steps = int(warmup_steps)
        self.factor = float(factor)
        self.initial_learning_rate = (float(after(0)) if initial_learning_rate is None and callable(after)
                                      else float(initial_learning_rate if initial_learning_rate is not None
                                                 else after))

    def _after(self, step):
        return self.after(step) if callable(self.after) else ops.cast(self.after, "float32")

    def __call__(self, step):
        step = ops.cast(step, "float32")
        w = float(max(self.warmup_steps, 1))
        ramp = self.initial_learning_rate * (self.factor + (1.0 - self.factor) * step / w)
        after = self._after(ops.maximum(step - self.warmup_steps, 0.0))
        return ops.where(step < self.warmup_steps, ramp, ops.cast(after, "float32"))

    def get_config(self):
        after = (keras.optimizers.schedules.serialize(self.after)
                 if isinstance(self.after, keras.optimizers.schedules.LearningRateSchedule) else self.after)
        return {"after": after, "warmup_steps": self.warmup_steps, "factor": self.factor,
                "initial_learning_rate": self.initial_learning_rate}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["after"], dict):
            config["after"] = keras.optimizers.schedules.deserialize(config["after"])
        return cls(**config)


def make_schedule(name, learning_rate, total_steps, steps_per_epoch, *, power=0.9, min_learning_rate=0.0,
                  step_epochs=None, milestones=(), gamma=0.1, warmup_steps=0, warmup_factor=0.1):
    """The learning rate of a run as a function of the optimizer step.

    Args:
        name: ``constant``, ``poly`` (``(lr - min) * (1 - t/T)^power + min``), ``cosine``
            (half cosine from ``lr`` to ``min``), ``step`` (times ``gamma`` every
            ``step_epochs`` epochs), ``multistep`` (times ``gamma`` at each epoch in
            ``milestones``) or ``exponential`` (times ``gamma`` per epoch, smoothly).
        learning_rate: the base (peak) rate.
        total_steps: optimizer steps of the whole run; the decaying schedules reach
            ``min_learning_rate`` there (after ``warmup_steps`` of warm-up).
        steps_per_epoch: converts the epoch-based arguments to steps.
        warmup_steps: linear warm-up from ``warmup_factor * learning_rate`` (0 = none).

    Returns:
        A float (constant without warm-up) or a ``LearningRateSchedule``.
    """
    S = keras.optimizers.schedules
    if name not in SCHEDULES:
        raise ConfigError(f"--schedule {name!r}: expected one of {', '.join(SCHEDULES)}")
    lr = float(learning_rate)
    warmup_steps = int(warmup_steps or 0)
    decay_steps = max(1, int(total_steps) - warmup_steps)
    spe = max(1, int(steps_per_epoch))
    if name == "constant":
        sched = lr
    elif name == "poly":
        sched = S.PolynomialDecay(lr, decay_steps, end_learning_rate=float(min_learning_rate), power=float(power))
    elif name == "cosine":
        sched = S.CosineDecay(lr, decay_steps, alpha=float(min_learning_rate) / lr)
    elif name == "step":
        if not step_epochs:
            raise ConfigError("--schedule step needs --step_epochs N (decay by --gamma every N epochs)")
        sched = S.ExponentialDecay(lr, int(step_epochs) * spe, float(gamma), staircase=True)
    elif name == "multistep":
        ms = sorted(int(m) for m in (milestones or ()))
        if not ms:
            raise ConfigError("--schedule multistep needs --milestones E1,E2,... (epochs where the rate "
                              "is multiplied by --gamma)")
        # Keras keeps values[i] while step <= boundaries[i]: the new rate starts AT the milestone
        sched = S.PiecewiseConstantDecay([m * spe - warmup_steps - 1 for m in ms],
                                         [lr * float(gamma) ** i for i in range(len(ms) + 1)])
    else:  # exponential
        sched = S.ExponentialDecay(lr, spe, float(gamma))
    if warmup_steps:
        sched = LinearWarmup(sched, warmup_steps, warmup_factor, initial_learning_rate=lr)
    return sched


def compile_model(model, *, n_classes, loss="ce", loss_kwargs=None, ignore_index=IGNORE_INDEX,
                  optimizer_name="adam", learning_rate=1e-3, optimizer=None, jit_compile=False,
                  steps_per_execution=1, metrics=True, dist=None, extra_metrics=(), run_eagerly=False):
    """Compile ``model`` as ``kseg train`` does (the benchmark measures this).

    ``optimizer`` (from :func:`make_optimizer`) overrides ``optimizer_name`` /
    ``learning_rate``. The kseg loss is computed in float32 whatever the dtype
    policy; with ``mixed_float16`` Keras wraps the optimizer in a
    ``LossScaleOptimizer``. Under a multi-replica ``tf.distribute`` strategy
    (``dist``) the loss is divided by the number of replicas
    (:class:`kseg.distribute.ReplicaScaledLoss`) so the summed replica gradients are
    those of the global batch. ``run_eagerly`` skips graph tracing (a step or two in
    tests; much slower per step).
    """
    loss_obj = loss_for_distribution(get_loss(loss, n_classes=n_classes, **(loss_kwargs or {})), dist)
    ms = [get_metric("mean_iou", n_classes=n_classes, ignore_index=ignore_index)] if metrics else []
    model.compile(
        optimizer=optimizer if optimizer is not None else make_optimizer(optimizer_name, learning_rate),
        loss=loss_obj,
        metrics=(ms + list(extra_metrics)) or None,
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
        run_eagerly=run_eagerly,
    )
    return model
