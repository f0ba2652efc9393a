"""Training: a :class:`~kseg.config.TrainConfig` in, an experiment folder out.

:func:`train` runs five named steps, each a function of this module:

1. :func:`prepare` -- resolve the experiment folder (new, numbered, overwrite or
   resume), the dataset (classes, sizes, ignore value) and check names and options;
   nothing heavy runs and nothing is written.
2. :func:`make_data` -- scan the label files, class weights, ``tf.data`` pipelines.
3. :func:`build_model` (before the data is read, so a bad model option fails at
   once) and :func:`make_model` -- compile it, or load ``last.keras`` to resume.
4. :func:`make_callbacks` -- checkpoints, history, TensorBoard, epoch timer.
5. :func:`fit` -- ``model.fit`` and the summary line.

The command ``kseg train`` (:mod:`kseg.cli.train`) builds the config from its flags;
in Python, ``kseg.train(TrainConfig(model_name="unet", loss="dice"))``.
"""

import csv
import dataclasses
import datetime
import os
import sys
import time

import keras

from kseg import __version__
from kseg import experiment as X
from kseg.callbacks import (
    EncoderUnfreeze,
    EpochTimer,
    ExperimentCheckpoint,
    ExperimentTensorBoard,
    LearningRateLogger,
    ValidationPanels,
)
from kseg.config import (
    DEFAULT_EPOCHS,
    DEFAULT_INPUT_SIZE,
    ExperimentConfig,
    TrainConfig,
    label_values,
)
from kseg.data.dataset import check_training_data, resolve_dataset
from kseg.files import atomic_path, check_child_name
from kseg.data.palette import palette_for
from kseg.data.preprocess import check_image_init, check_resize_op
from kseg.data.stats import class_weights as compute_class_weights
from kseg.data.stats import parse_class_weights
from kseg.distribute import (
    backup_folder,
    cleanup_write_folder,
    distribute_dataset,
    fit_context,
    prepare_model_for,
    select_distribution,
    write_folder,
)
from kseg.errors import ConfigError, DataError, ExperimentError
from kseg.hardware import limit_malloc_arenas, precision_policy, resolve_jit_compile
from kseg.losses import get_loss
from kseg.optim import compile_model, make_optimizer, make_schedule
from kseg.metrics import ClassIoU
from kseg.models import get_model, model_spec
from kseg.models.freeze import encoder_layers, freeze_encoder
from kseg.models.registry import check_input_size, parse_model_options

#: Options that say how long or how loudly to run, not what to train: a resumed run
#: may change them freely. Every other option is part of the recipe and is restored.
RUN_CONTROL = ("epochs", "iterations", "resume", "overwrite", "allow_recipe_change", "verbose", "exp_name",
               "train_save_path", "data_dir", "cache", "early_stopping")

#: Recipe options whose change on resume (``--allow_recipe_change``) needs a new optimizer or loss.
RECOMPILE_ON_CHANGE = ("optimizer_name", "learning_rate", "momentum", "nesterov", "schedule", "power",
                       "min_learning_rate", "step_epochs", "milestones", "gamma", "warmup_epochs", "warmup_steps",
                       "warmup_factor", "weight_decay", "weight_decay_mode", "clipnorm", "ema", "loss",
                       "class_weights")

#: Epochs between two panels of validation images in TensorBoard.
PANEL_EVERY = 5

#: Model files whose weights ``--resume PATH`` can start a new run from.
WEIGHT_FILE_EXTENSIONS = (".keras", ".h5", ".hdf5")


def as_train_config(config=None, **overrides):
    """A :class:`TrainConfig` from a config, a dict or an ``argparse.Namespace``, plus keyword overrides."""
    if config is None:
        d = {}
    elif isinstance(config, TrainConfig):
        d = config.to_dict()
    elif isinstance(config, dict):
        d = dict(config)
    else:  # argparse.Namespace
        d = dict(vars(config))
    d.update(overrides)
    return TrainConfig.from_dict(d)


def explicit_options(config):
    """The option names whose values differ from :class:`TrainConfig`'s defaults."""
    default = TrainConfig()
    return {f.name for f in TrainConfig.fields() if getattr(config, f.name) != getattr(default, f.name)}


@dataclasses.dataclass
class Plan:
    """What :func:`prepare` resolved; the later steps add to it."""

    config: TrainConfig
    folder: str
    resume: bool
    init_weights: str
    root: str
    info: object
    n_classes: int
    ignore_index: int
    input_size: tuple
    class_names: list
    epochs: int
    # filled in by make_data / make_model
    train_pairs: list = None
    val_pairs: list = None
    val_split: str = None
    class_weights: list = None
    train_ds: object = None
    val_ds: object = None
    steps_per_epoch: int = None
    validation_steps: int = None
    global_batch: int = None
    dist: object = None
    recipe_changes: tuple = ()
    write_dir: str = None
    initial_epoch: int = 0
    best: float = None
    jit: bool = False
    policy: str = "float32"
    stage: object = None  # the ExperimentStage of a new run until its first checkpoint


def _experiment_dir(cfg):
    """``(folder, explicit)``: where the experiment goes and whether its name was given."""
    base = cfg.train_save_path
    if cfg.exp_name:
        return os.path.join(base, cfg.exp_name), True
    name = f"{cfg.model_name}_{cfg.dataset_name}"
    folder = os.path.join(base, name)
    if cfg.resume is True:
        return folder, False
    i = 2
    while os.path.exists(folder) and not cfg.overwrite:
        folder = os.path.join(base, f"{name}_{i}")
        i += 1
    return folder, False


def _resume_target(path):
    """For ``--resume PATH``: ``(experiment folder, None)`` to continue an experiment, or
    ``(None, model file)`` to start a new run from a model file's weights."""
    if os.path.isdir(path):
        if X.is_experiment(path):
            return path, None
        raise ExperimentError(f"--resume {path}: the folder holds no experiment (no {X.CONFIG}); pass the "
                              "folder kseg train wrote (weights/<exp_name>) or a model file")
    if not os.path.isfile(path):
        raise ExperimentError(f"--resume {path} does not exist; pass an experiment folder or a model file")
    folder = os.path.dirname(os.path.abspath(path))
    if X.is_experiment(folder) and os.path.basename(path) in (X.BEST, X.LAST):
        return folder, None
    if not path.lower().endswith(WEIGHT_FILE_EXTENSIONS):
        raise ExperimentError(f"--resume {path}: not a model file (expected {', '.join(WEIGHT_FILE_EXTENSIONS)})")
    return None, path


def _restore_recipe(cfg, folder, explicit):
    """The saved recipe of ``folder`` with this run's run-control options.

    A recipe option given explicitly with another value than the experiment's is
    refused (one line listing every difference): resuming continues the same run.
    """
    saved = X.read_config(folder).train_config()
    if "model_option" in explicit:  # compare typed values: use_bn=no is the recorded false,
        # and a tuple option given now is the list config.json recorded
        cfg = cfg.replace(model_option=parse_model_options(cfg.model_name, cfg.model_option))
        saved = saved.replace(model_option=parse_model_options(saved.model_name, saved.model_option))
    changed = [k for k in sorted(explicit) if k not in RUN_CONTROL and getattr(cfg, k) != getattr(saved, k)]
    diffs = [f"--{k} {getattr(cfg, k)!r} (experiment: {getattr(saved, k)!r})" for k in changed]
    if diffs and not cfg.allow_recipe_change:
        raise ConfigError(f"--resume continues {folder} with its own recipe; these options differ from it: "
                          f"{'; '.join(diffs)}. Drop them, add --allow_recipe_change to apply them (recorded in "
                          "the experiment), or start a new experiment (--exp_name/--overwrite)")
    keep = {k: getattr(cfg, k) for k in RUN_CONTROL + tuple(changed)
            if k in explicit and k not in ("resume", "exp_name", "train_save_path", "overwrite")}
    if "epochs" in keep and saved.iterations and "iterations" not in keep:
        keep["iterations"] = None  # a new budget in epochs replaces the one in steps
    return changed, saved.replace(**keep, resume=True, overwrite=False, exp_name=os.path.basename(os.path.normpath(folder)),
                         train_save_path=os.path.dirname(os.path.normpath(folder)) or ".")


def prepare(config, explicit=None):
    """Step 1: resolve folder, dataset, classes and sizes; check every name and option.

    Returns a :class:`Plan`. Writes nothing (the built-in sample dataset is generated
    when it is asked for and missing).
    """
    cfg = config
    explicit = explicit_options(cfg) if explicit is None else set(explicit)
    if cfg.exp_name is not None:
        check_child_name(cfg.exp_name, "--exp_name")
    init_weights, changes = None, ()
    if isinstance(cfg.resume, str):
        folder, init_weights = _resume_target(cfg.resume)
        if folder:
            changes, cfg = _restore_recipe(cfg, folder, explicit)
        else:
            cfg = cfg.replace(resume=False)
    elif cfg.resume:
        folder, _ = _experiment_dir(cfg)
        if not X.is_experiment(folder):
            raise ExperimentError(
                f"--resume: {folder} holds no experiment to continue (needs {X.CONFIG}, {X.LAST}, "
                f"{X.STATE}); check --exp_name/--train_save_path or train without --resume"
            )
        changes, cfg = _restore_recipe(cfg, folder, explicit)
    folder, explicit_name = _experiment_dir(cfg)
    if cfg.resume:
        if not (os.path.isfile(os.path.join(folder, X.LAST)) and os.path.isfile(os.path.join(folder, X.STATE))):
            raise ExperimentError(
                f"--resume: {folder} holds no experiment to continue (needs {X.CONFIG}, {X.LAST}, "
                f"{X.STATE}); check --exp_name/--train_save_path or train without --resume"
            )
    elif (explicit_name and os.path.exists(folder)
          and [f for f in os.listdir(folder) if f != ".backup"] and not cfg.overwrite):
        raise ExperimentError(
            f"experiment folder {folder} already exists; pass --resume to continue it, "
            "--overwrite to replace it, or another --exp_name"
        )
    check_image_init(cfg.image_init)
    check_resize_op(cfg.resize_op)
    spec = model_spec(cfg.model_name)  # unknown model -> error listing names
    # options typed as the builder's defaults (base_filters=abc fails here, before any data)
    cfg = cfg.replace(model_option=parse_model_options(cfg.model_name, cfg.model_option))
    cfg, root, info, n_classes, ignore_index = resolve_dataset(cfg, explicit)
    h = cfg.input_height or (info.input_size[0] if info.input_size else DEFAULT_INPUT_SIZE)
    w = cfg.input_width or (cfg.input_height or (info.input_size[1] if info.input_size else DEFAULT_INPUT_SIZE))
    try:  # the size rule of the model with these options (a U-Net of depth=3 takes multiples of 8)
        rule = spec.size_rule(**cfg.model_option)
    except TypeError:  # an unknown option: build_model names it
        rule = (spec.divisor, spec.min_size)
    check_input_size(cfg.model_name, h, w, *rule)
    class_names = list(info.classes) if info.classes and len(info.classes) == n_classes else None
    # building the loss validates its name and options before any data is read
    cw = parse_class_weights(cfg.class_weights, n_classes)
    get_loss(cfg.loss, n_classes=n_classes, ignore_index=ignore_index,
             **({"class_weights": [1.0] * label_values(n_classes)} if isinstance(cw, str) else
                ({"class_weights": cw} if cw else {})))
    epochs = cfg.epochs or DEFAULT_EPOCHS
    return Plan(config=cfg, folder=folder, resume=bool(cfg.resume), init_weights=init_weights, root=root,
                info=info, n_classes=n_classes, ignore_index=ignore_index, input_size=(h, w),
                class_names=class_names, epochs=epochs, class_weights=cw, recipe_changes=tuple(changes))


def make_data(plan):
    """Step 2: check every pair (decoded once; :func:`kseg.data.dataset.check_training_data`
    remembers a check the command ran before TensorFlow started), resolve class weights,
    build the ``tf.data`` pipelines."""
    from kseg.data.pipeline import make_dataset

    cfg, info, dist = plan.config, plan.info, plan.dist
    n_classes, ignore_index, (h, w) = plan.n_classes, plan.ignore_index, plan.input_size
    data = check_training_data(plan.root, info, n_classes, ignore_index, cfg.validate, channels=cfg.input_channels)
    scan, val_split, train_pairs, val_pairs = data.train_scan, data.val_split, data.train_pairs, data.val_pairs

    class_weights = plan.class_weights
    if isinstance(class_weights, str):  # "auto" / "enet": from the training labels' statistics
        class_weights = [float(v) for v in compute_class_weights(class_weights, scan.stats, n_classes)]
        how = "median frequency" if plan.class_weights == "auto" else "ENet, 1/ln(1.02 + p)"
        print(f"class weights ({how}):", ", ".join(f"{v:.3f}" for v in class_weights))

    norm = dict(channels=cfg.input_channels, mean=cfg.mean, std=cfg.std)  # resolved by prepare
    train_kw = dict(training=True, image_init=cfg.image_init, resize_op=cfg.resize_op, **norm,
                    ignore_index=ignore_index, augment=cfg.augment is not False,
                    cache=cfg.cache, seed=cfg.seed,
                    crops=cfg.train_crops)
    val_kw = dict(training=False, image_init=cfg.image_init, resize_op=cfg.resize_op, **norm,
                  ignore_index=ignore_index, cache=cfg.cache, crops=cfg.train_crops)
    per_image = max(1, cfg.train_crops)  # training samples per image and epoch
    global_batch = dist.global_batch_size(cfg.train_batch_size)
    val_global_batch = dist.global_batch_size(cfg.val_batch_size)
    steps_per_epoch = validation_steps = None
    if dist.kind == "multi_worker":
        # every worker reads its own share of the files; fixed-length epochs keep them in step
        train_ds, steps_per_epoch = distribute_dataset(
            dist, lambda i, n, b: make_dataset(train_pairs[i::n], (h, w), b, repeat=True, **train_kw),
            len(train_pairs) * per_image, cfg.train_batch_size)
        val_ds = None
        if val_pairs:
            val_ds, validation_steps = distribute_dataset(
                dist, lambda i, n, b: make_dataset(val_pairs[i::n], (h, w), b, drop_remainder=True,
                                                   repeat=True, **val_kw),
                len(val_pairs), cfg.val_batch_size)
    else:
        # one iterator for the whole run: the next epoch's first batches are decoded and
        # prefetched while the current epoch ends, instead of after it
        train_ds = make_dataset(train_pairs, (h, w), global_batch, repeat=True, **train_kw)
        steps_per_epoch = max(1, len(train_pairs) * per_image // global_batch)
        val_ds = make_dataset(val_pairs, (h, w), val_global_batch, **val_kw) if val_pairs else None
    if cfg.iterations:  # the budget in optimizer steps: whole epochs that cover it
        plan.epochs = -(-cfg.iterations // steps_per_epoch)
    plan.train_pairs, plan.val_pairs, plan.val_split = train_pairs, val_pairs, val_split
    plan.class_weights, plan.global_batch = class_weights, global_batch
    plan.train_ds, plan.val_ds = train_ds, val_ds
    plan.steps_per_epoch, plan.validation_steps = steps_per_epoch, validation_steps
    return plan


def _load_initial_weights(model, path):
    """Copy the weights of a model file into ``model`` (``--resume PATH`` outside an experiment)."""
    try:
        if path.lower().endswith(".keras"):
            import kseg.models  # noqa: F401 (registers kseg's layers for loading)

            src = keras.saving.load_model(path, compile=False)
            model.set_weights(src.get_weights())
        else:
            model.load_weights(path)
    except Exception as e:  # a file of another architecture, or not a model at all
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ExperimentError(f"--resume {path}: its weights do not fit {model.name} ({first}); pass a file "
                              "saved from the same model with the same options and classes") from None
    print(f"initialised the weights from {path}")


def total_steps(plan):
    """Optimizer steps of the whole run: ``--iterations``, else epochs x steps per epoch."""
    return plan.config.iterations or plan.epochs * plan.steps_per_epoch


def make_run_optimizer(plan):
    """The optimizer of the recipe, with its learning-rate schedule over the whole run."""
    cfg, spe = plan.config, plan.steps_per_epoch
    warmup = cfg.warmup_steps or int(round(cfg.warmup_epochs * spe))
    schedule = make_schedule(cfg.schedule, cfg.learning_rate, total_steps(plan), spe, power=cfg.power,
                             min_learning_rate=cfg.min_learning_rate, step_epochs=cfg.step_epochs,
                             milestones=cfg.milestones, gamma=cfg.gamma, warmup_steps=warmup,
                             warmup_factor=cfg.warmup_factor)
    return make_optimizer(cfg.optimizer_name, schedule, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay, weight_decay_mode=cfg.weight_decay_mode,
                          clipnorm=cfg.clipnorm, ema=cfg.ema, ema_overwrite_frequency=spe if cfg.ema else None)


def build_model(plan):
    """Build the model (not for a resume), before any data is read: a bad model option
    is reported at once."""
    if plan.resume:
        return None
    cfg, (h, w) = plan.config, plan.input_size
    spec = model_spec(cfg.model_name)
    with plan.dist.scope():
        model = get_model(cfg.model_name, n_classes=plan.n_classes, channels=cfg.input_channels,
                          input_height=None if spec.dynamic else h, input_width=None if spec.dynamic else w,
                          **cfg.model_option)
    if cfg.freeze_encoder:  # a model without an encoder fails here, before any data is read
        encoder_layers(model, cfg.model_name)
    if plan.init_weights:
        _load_initial_weights(model, plan.init_weights)
    return model


def make_model(plan, model=None):
    """Step 3: compile the model :func:`build_model` built, or load ``last.keras`` to resume."""
    cfg, dist, n_classes = plan.config, plan.dist, plan.n_classes
    loss_kwargs = {"ignore_index": plan.ignore_index}
    if plan.class_weights:
        loss_kwargs["class_weights"] = plan.class_weights
    plan.jit = resolve_jit_compile(cfg.jit_compile, dist)
    with dist.scope():
        if plan.resume:
            state = X.read_json(os.path.join(plan.folder, X.STATE))
            plan.initial_epoch, plan.best = int(state["epoch"]), state.get("best")
            model = X.load_model_file(os.path.join(plan.folder, X.LAST), config=X.read_config(plan.folder))
            print(f"resuming {plan.folder} from epoch {plan.initial_epoch}")
            if set(plan.recipe_changes) & set(RECOMPILE_ON_CHANGE):
                # --allow_recipe_change of the optimisation: a new optimizer (its moments start
                # afresh) that continues the step count, so the new schedule starts where the run is
                steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
                compile_model(model, n_classes=n_classes, loss=cfg.loss, loss_kwargs=loss_kwargs,
                              ignore_index=plan.ignore_index, optimizer=make_run_optimizer(plan),
                              jit_compile=plan.jit, steps_per_execution=cfg.steps_per_execution, dist=dist)
                model.optimizer.build(model.trainable_variables)
                model.optimizer.iterations.assign(steps)
                print(f"recompiled with the changed recipe ({', '.join(plan.recipe_changes)}) at step {steps}")
        else:
            model = model if model is not None else build_model(plan)
            compile_model(model, n_classes=n_classes, loss=cfg.loss, loss_kwargs=loss_kwargs,
                          ignore_index=plan.ignore_index, optimizer=make_run_optimizer(plan),
                          jit_compile=plan.jit, steps_per_execution=cfg.steps_per_execution, dist=dist,
                          extra_metrics=[ClassIoU(n_classes, plan.class_names, plan.ignore_index)])
        _apply_freeze(plan, model)
    prepare_model_for(model, dist)
    return model


def _apply_freeze(plan, model):
    """``--freeze_encoder N``: freeze the encoder when the run starts (or resumes) before epoch N.

    The optimizer is built over every weight first (a resumed model is saved and loaded
    with its encoder trainable, :func:`kseg.models.freeze.saved_unfrozen`), so that
    unfreezing (:class:`kseg.callbacks.EncoderUnfreeze`) keeps the optimizer, its step
    count and the learning-rate schedule; the frozen weights simply get no gradient.
    """
    n = plan.config.freeze_encoder
    if not n:
        return
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    if n < 0 or plan.initial_epoch < n:
        layers = freeze_encoder(model, plan.config.model_name)
        until = "for the whole run" if n < 0 else f"until epoch {n}"
        print(f"encoder frozen {until} ({len(layers)} layers, "
              f"{sum(layer.count_params() for layer in layers):,} parameters)")


def experiment_config(plan, model):
    """The :class:`ExperimentConfig` of this run: the resolved recipe and what it resolved to."""
    cfg, dist, (h, w) = plan.config, plan.dist, plan.input_size
    k = label_values(plan.n_classes)
    resolved = cfg.replace(n_classes=plan.n_classes, input_height=h, input_width=w,
                           epochs=None if cfg.iterations else plan.epochs, augment=cfg.augment is not False,
                           ignore_index=plan.ignore_index, resume=False, overwrite=False,
                           exp_name=os.path.basename(os.path.normpath(plan.folder)))
    return ExperimentConfig(
        model_name=cfg.model_name, model_kwargs=dict(cfg.model_option), n_classes=plan.n_classes,
        input_height=h, input_width=w, image_init=cfg.image_init, resize_op=cfg.resize_op,
        input_channels=cfg.input_channels, mean=cfg.mean, std=cfg.std,
        ignore_index=plan.ignore_index,
        class_names=plan.class_names or [f"class_{i}" for i in range(k)],
        palette=palette_for(k, plan.info.palette).tolist(), dataset=os.path.abspath(plan.root),
        loss=cfg.loss, class_weights=plan.class_weights, train=resolved.to_dict(),
        distribution={"kind": dist.kind, "replicas": dist.num_replicas, "workers": dist.num_workers,
                      "global_batch_size": plan.global_batch},
        jit_compile=bool(plan.jit), dtype_policy=keras.mixed_precision.global_policy().name,
        params=int(model.count_params()), kseg_version=__version__, keras_version=keras.__version__,
        backend=keras.backend.backend(), created=datetime.datetime.now().isoformat(timespec="seconds"),
    )


def make_callbacks(plan):
    """Step 4: checkpoints (best/last + state), epoch timer, history.csv, TensorBoard."""
    monitor = "val_mean_iou" if plan.val_ds is not None else "mean_iou"
    callbacks = []
    backup = backup_folder(plan.folder, plan.dist)
    if backup:  # fault tolerance: a restarted worker group continues from the last epoch
        callbacks.append(keras.callbacks.BackupAndRestore(backup, delete_checkpoint=True))
    callbacks += [EpochTimer(), LearningRateLogger()]
    n = plan.config.freeze_encoder
    if n > 0 and plan.initial_epoch < n < plan.epochs:
        callbacks.append(EncoderUnfreeze(plan.config.model_name, n))
    if plan.config.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=plan.config.early_stopping,
                                                       restore_best_weights=True, verbose=1))
    history = os.path.join(plan.write_dir, X.HISTORY)
    if plan.resume:
        _truncate_history(history, plan.initial_epoch)
    board = ExperimentTensorBoard(plan.write_dir, update_freq="epoch")
    movers = [board]
    if plan.val_ds is not None and plan.dist.is_chief and plan.dist.kind == "single":
        k = label_values(plan.n_classes)
        movers.append(ValidationPanels(plan.val_ds, plan.write_dir, palette_for(k, plan.info.palette),
                                       every=PANEL_EVERY, ignore_index=plan.ignore_index))
    callbacks += [
        # the history row is written before the checkpoint: a run killed in between redoes
        # that epoch on resume, and the row it left is dropped (_truncate_history)
        keras.callbacks.CSVLogger(history, append=plan.resume),
        ExperimentCheckpoint(plan.write_dir, monitor, plan.best, verbose=plan.dist.is_chief,
                             stage=plan.stage, movers=movers),
        *movers,
    ]
    return callbacks, monitor, backup


def _truncate_history(path, epochs_done):
    """Keep the rows of ``history.csv`` for the epochs a resumed run does not redo."""
    if not os.path.isfile(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or "epoch" not in rows[0]:
        return
    i = rows[0].index("epoch")
    keep = [rows[0]] + [r for r in rows[1:] if len(r) > i and r[i].isdigit() and int(r[i]) < epochs_done]
    if len(keep) != len(rows):
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(keep)


def fit(plan, model, callbacks, monitor, backup):
    """Step 5: ``model.fit`` from the first or resumed epoch; returns the experiment folder."""
    cfg, dist, (h, w) = plan.config, plan.dist, plan.input_size
    verbose = cfg.verbose if cfg.verbose is not None else (1 if sys.stdout.isatty() else 2)
    verbose = min(verbose, 2)  # 3: the engine's start-up log too (kseg.cli.common.start_engine)
    if not dist.is_chief:
        verbose = 0
    where = f"; {dist.describe()}, global batch {plan.global_batch}" if dist.kind != "single" else ""
    print(
        f"training {cfg.model_name} ({model.count_params():,} parameters) on {cfg.dataset_name}: "
        f"{len(plan.train_pairs)} train / {len(plan.val_pairs)} {plan.val_split or 'no validation'} images, "
        f"input {h}x{w}, {plan.n_classes} classes, loss {cfg.loss}, epochs {plan.initial_epoch}->{plan.epochs}"
        f"{where}; saving to {plan.folder}",
        flush=True,
    )
    if plan.initial_epoch >= plan.epochs:
        print(f"nothing to do: the experiment already ran {plan.initial_epoch} epochs (raise --epochs)")
        cleanup_write_folder(plan.write_dir, plan.folder, dist)
        return plan.folder
    t0 = time.time()
    try:
        with fit_context(dist):
            model.fit(plan.train_ds, validation_data=plan.val_ds, epochs=plan.epochs, initial_epoch=plan.initial_epoch,
                      steps_per_epoch=plan.steps_per_epoch, validation_steps=plan.validation_steps,
                      callbacks=callbacks, verbose=verbose, shuffle=False)
    except Exception as e:  # decoding errors inside tf.data surface here
        if type(e).__name__ in ("InvalidArgumentError", "UnknownError", "NotFoundError"):
            lines = str(e).strip().splitlines()
            # the reader's own message (a file broken after the scan) names the file
            ours = [ln.split("DataError: ", 1)[1] for ln in lines if "DataError: " in ln]
            if ours:
                raise DataError(ours[0].strip()[:400]) from None
            first = lines[0][:300] if lines else type(e).__name__
            raise DataError(
                f"reading the data failed during training ({first}); run kseg doctor on "
                f"{plan.root} to find the bad file"
            ) from None
        raise
    finally:
        cleanup_write_folder(plan.write_dir, plan.folder, dist)
    if backup:
        _remove_empty_dirs(os.path.dirname(backup), plan.folder)
    elapsed = time.time() - t0
    if dist.is_chief:
        record_run(plan, model)
    summary = _summarise(plan.folder, monitor) if dist.is_chief else "(see the chief)"
    print(f"done in {elapsed / 60:.1f} min; best {monitor} = {summary}; experiment: {plan.folder}")
    return plan.folder


def record_run(plan, model):
    """Write what actually ran into ``config.json`` (``run``): epochs done, early stop, resumes."""
    exp = X.read_config(plan.folder)
    state = X.read_json(os.path.join(plan.folder, X.STATE))
    run = dict(exp.run)
    run["epochs_done"] = int(state["epoch"])
    run["stopped_early"] = run["epochs_done"] < plan.epochs
    if plan.resume:
        run.setdefault("resumes", []).append({
            "from_epoch": plan.initial_epoch, "to_epoch": run["epochs_done"],
            "changed": sorted(plan.recipe_changes),
            "at": datetime.datetime.now().isoformat(timespec="seconds")})
        exp.train = plan.config.replace(resume=False, allow_recipe_change=False).to_dict()
    exp.run = run
    X.write_config(plan.folder, exp)


def _set_precision(cfg):
    policy = precision_policy(cfg.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    how = "auto" if cfg.mixed_precision is None else ("--mixed_precision" if cfg.mixed_precision else "off")
    if cfg.mixed_precision and policy == "float32":
        print("mixed precision: no GPU and no native bfloat16 on this CPU; training in float32",
              file=sys.stderr)
    elif policy != "float32":
        print(f"mixed precision ({how}): {policy}, loss and output activation in float32 "
              f"(--no-mixed_precision trains in float32)")
    return policy


def train(config=None, *, explicit=None, **overrides):
    """Train a model; returns the experiment folder (``weights/<exp_name>``).

    Args:
        config: a :class:`~kseg.config.TrainConfig` (or a dict / ``argparse.Namespace``
            of its fields); ``None`` = all defaults (U-Net on the built-in sample).
        explicit: names of the options the user set (the command line passes the flags
            it was given); default: every option that differs from its default. With
            ``resume``, an explicit recipe option that differs from the experiment's is
            refused.
        **overrides: fields of :class:`~kseg.config.TrainConfig` to change.

    The Keras dtype policy chosen for the run is global state; it is restored when
    training ends or fails, so a caller's later models are unaffected.

    Distribution (see :mod:`kseg.distribute`): ``multi_gpus`` mirrors the model over
    all local GPUs (``train_batch_size`` is per replica); a ``TF_CONFIG`` naming
    several workers trains on all of them, the chief writing the experiment folder.

    Example:
        >>> import kseg
        >>> folder = kseg.train(kseg.TrainConfig(model_name="unet", loss="dice", epochs=2))
    """
    cfg = as_train_config(config, **overrides)
    if explicit is not None:
        explicit = set(explicit) | set(overrides)
    previous = keras.mixed_precision.global_policy()
    try:
        limit_malloc_arenas()  # before TensorFlow's threads exist: flat memory across epochs
        # the strategy must exist before any TensorFlow work (multi-worker, logical devices)
        dist = select_distribution(multi_gpus=cfg.multi_gpus)
        plan = prepare(cfg, explicit)
        plan.dist = dist
        keras.utils.set_random_seed(plan.config.seed)
        plan.policy = _set_precision(plan.config)
        model = build_model(plan)
        make_data(plan)
        open_write_folder(plan)
        try:
            model = make_model(plan, model)
            if not plan.resume:
                X.write_config(plan.write_dir, experiment_config(plan, model))
            callbacks, monitor, backup = make_callbacks(plan)
            return fit(plan, model, callbacks, monitor, backup)
        finally:
            if plan.stage is not None:
                plan.stage.discard()  # a run that ended before its first checkpoint leaves nothing
    finally:
        keras.mixed_precision.set_global_policy(previous)


def open_write_folder(plan):
    """Where this process writes: a new run's staging folder (moved into place at the first
    checkpoint), the experiment itself when resuming, a worker's scratch folder otherwise."""
    dist = plan.dist
    if dist.is_chief and not plan.resume and dist.kind != "multi_worker":
        # multi-worker runs keep BackupAndRestore's files in the folder itself: written in place
        plan.stage = X.ExperimentStage(plan.folder)
        plan.write_dir = plan.stage.path
        return
    plan.write_dir = write_folder(plan.folder, dist)
    os.makedirs(plan.write_dir, exist_ok=True)
    if plan.resume:
        X.sweep_stale_stages(os.path.dirname(os.path.abspath(plan.folder)))
        gone = X.remove_partial_writes(plan.folder)
        if gone:
            print(f"removed what a killed write left in {plan.folder}: {', '.join(sorted(gone))}")


def _remove_empty_dirs(path, stop):
    """Remove ``path`` and its parents up to ``stop`` (exclusive) while they are empty."""
    path, stop = os.path.abspath(path), os.path.abspath(stop)
    while path.startswith(stop) and path != stop:
        try:
            os.rmdir(path)
        except OSError:
            return
        path = os.path.dirname(path)
    if path == stop:
        try:
            os.rmdir(path)  # a worker's copy of the folder with nothing in it
        except OSError:
            pass


def _summarise(folder, monitor):
    try:
        with open(os.path.join(folder, X.HISTORY)) as f:
            vals = [float(r[monitor]) for r in csv.DictReader(f) if r.get(monitor)]
        return f"{max(vals):.4f}" if vals else "n/a"
    except (OSError, ValueError, KeyError):
        return "n/a"
