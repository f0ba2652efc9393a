"""Facts every layer of kseg shares, written once.

This module is the bottom of the house: it imports nothing from kseg except
:mod:`kseg.errors`, so anything may import it. It also holds the typed
configurations: :class:`TrainConfig` (every training option and its default) and
:class:`ExperimentConfig` (what an experiment's ``config.json`` holds).

* :data:`IGNORE_INDEX` -- the label value excluded from losses, metrics and
  class statistics unless a dataset says otherwise.
* The sigmoid rule: a model with ONE output channel is a binary model with a
  sigmoid; its labels still take two values (0 and 1). :func:`label_values`
  gives the number of label values (and the size of the confusion matrix,
  class-weight lists, palettes and class-name lists) for a number of output
  channels; :func:`is_binary_sigmoid` says whether the one-channel rule applies.
"""

import dataclasses
import json

from kseg.errors import ConfigError

#: Label value excluded from losses, metrics and class statistics (the VOC
#: "void"/boundary convention); a dataset's ``dataset.json`` may name another.
IGNORE_INDEX = 255

#: Largest label value kseg accepts: labels are stored as 8- or 16-bit PNGs.
MAX_LABEL_VALUE = 65535

#: Most classes a model or dataset may have: one label value per class (0 .. MAX_LABEL_VALUE).
MAX_CLASSES = MAX_LABEL_VALUE + 1

#: Network input size used when neither the flags nor the dataset name one.
DEFAULT_INPUT_SIZE = 256

#: Training epochs used when neither the flags nor the dataset name a budget.
DEFAULT_EPOCHS = 50


def is_binary_sigmoid(n_classes):
    """True when ``n_classes`` output channels mean "one sigmoid channel, 2 label values"."""
    return int(n_classes) == 1


def label_values(n_classes):
    """Number of distinct label values (classes) a model with ``n_classes`` outputs predicts.

    One sigmoid channel predicts 2 values (background 0, foreground 1); a
    softmax over ``K >= 2`` channels predicts ``K``. Use it for the confusion
    matrix, the length of class weights, class names and palettes.
    """
    return 2 if is_binary_sigmoid(n_classes) else int(n_classes)


# ------------------------------------------------------------------------------------------
# Training configuration
# ------------------------------------------------------------------------------------------
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adadelta")
IMAGE_INITS = ("divide", "sub_and_divide", "sub_mean")
RESIZE_OPS = (1, 2)
JIT_CHOICES = ("auto", "on", "off")
SCHEDULES = ("constant", "poly", "cosine", "step", "multistep", "exponential")
WEIGHT_DECAY_MODES = ("auto", "coupled", "decoupled")

_TRUE = ("1", "true", "yes", "y", "on")
_FALSE = ("0", "false", "no", "n", "off")


# Value checks shared by TrainConfig (Python API) and the command line (argparse types).
# Each returns the converted value or raises ConfigError with a one-line message.
def _as_number(v, name, kind, minimum, strict, what):
    """``v`` as ``kind`` (int or float) that is ``> minimum`` (strict) or ``>= minimum``."""
    try:
        if isinstance(v, bool):
            raise ValueError
        x = kind(v)
        if kind is int and isinstance(v, float) and v != x:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name}: expected {what}, got {v!r}") from None
    if not (x > minimum if strict else x >= minimum) or x != x or x == float("inf"):
        raise ConfigError(f"{name}: expected {what}, got {v!r}")
    return x


def as_positive_int(v, name="value"):
    return _as_number(v, name, int, 0, True, "a positive integer")


def as_non_negative_int(v, name="value"):
    return _as_number(v, name, int, 0, False, "a whole number >= 0")


def as_positive_float(v, name="value"):
    return _as_number(v, name, float, 0.0, True, "a positive number")


def as_non_negative_float(v, name="value"):
    return _as_number(v, name, float, 0.0, False, "a number >= 0")


def as_n_classes(v, name="n_classes"):
    """A number of classes: a positive integer of at most :data:`MAX_CLASSES` (labels are 16-bit)."""
    n = as_positive_int(v, name)
    if n > MAX_CLASSES:
        raise ConfigError(f"{name}: expected a number of classes from 1 to {MAX_CLASSES} (label values are "
                          f"at most {MAX_LABEL_VALUE}, 16-bit), got {v!r}")
    return n


def as_fraction(v, name="value"):
    """A number in [0, 1)."""
    f = as_non_negative_float(v, name)
    if f >= 1:
        raise ConfigError(f"{name}: expected a number in [0, 1), got {v!r}")
    return f


def as_int_list(v, name="value"):
    """A list of positive integers from a list or ``"30,60,90"``."""
    if v is None or v == "":
        return []
    items = v.split(",") if isinstance(v, str) else v
    try:
        return [as_positive_int(str(i).strip() if isinstance(i, str) else i, name) for i in items]
    except ConfigError:
        raise ConfigError(f"{name}: expected positive integers like 30,60,90, got {v!r}") from None


def as_float_list(v, name="value", positive=False):
    """A list of finite numbers from a list or ``"0.5,0.25,1e3"`` (``positive``: each > 0)."""
    items = v.split(",") if isinstance(v, str) else v
    what = "positive numbers" if positive else "numbers"
    try:
        if isinstance(items, (int, float)) and not isinstance(items, bool):
            items = [items]
        out = [float(str(i).strip()) if isinstance(i, str) else float(i) for i in items
               if not isinstance(i, bool)]
        if len(out) != len(items) or not out:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {what} like 0.5,0.25,0.75, got {v!r}") from None
    if any(x != x or x in (float("inf"), float("-inf")) or (positive and x <= 0) for x in out):
        raise ConfigError(f"{name}: expected finite {what}, got {v!r}")
    return out


def check_normalisation(input_channels, mean, std, image_init, where=""):
    """The per-channel ``mean`` / ``std`` and ``image_init`` agree with ``input_channels`` (None: not known yet)."""
    if (mean is None) != (std is None):
        raise ConfigError(f"{where}--mean and --std go together: give both (std 1 for mean subtraction only)")
    if mean is not None and len(mean) != len(std):
        raise ConfigError(f"{where}--mean has {len(mean)} values but --std {len(std)}; give one per input channel")
    if input_channels is not None and mean is not None and len(mean) != input_channels:
        raise ConfigError(f"{where}--mean/--std have {len(mean)} values but --input_channels is {input_channels}; "
                          "give one mean and one std per input channel")
    if input_channels not in (None, 3) and mean is None and image_init == "sub_mean":
        raise ConfigError(f"{where}--image_init sub_mean subtracts the ImageNet RGB mean, so it needs 3 channels "
                          f"(--input_channels is {input_channels}); give --mean and --std instead")


def as_freeze_epochs(v, name="value"):
    """``--freeze_encoder``: epochs with the encoder frozen, ``-1`` (or ``all``) for the whole run, 0 = off."""
    if (isinstance(v, str) and v.strip().lower() in ("all", "-1")) or (type(v) is int and v == -1):
        return -1
    if isinstance(v, str) and v.strip().lower() in ("off", "none"):
        return 0
    try:
        return as_non_negative_int(v, name)
    except ConfigError:
        raise ConfigError(f"{name}: expected a number of epochs >= 0, or -1 / all for the whole run, "
                          f"got {v!r}") from None


def as_bool(v, name="value"):
    """``True``/``False`` from a bool or the spellings ``true/false``, ``1/0``, ``yes/no``, ``on/off``."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true or false, got {v!r}")


def _field(default, help, *, group="training", check=None, choices=None, flag="value", metavar=None, **kw):
    """A TrainConfig field with what the command line needs to expose it.

    ``flag``: ``"value"`` (``--name VALUE``), ``"bool"`` (``--name`` / ``--no-name`` /
    ``--name true|false``), ``"kv"`` (repeatable ``--name KEY=VALUE`` into a dict).
    """
    meta = {"help": help, "group": group, "check": check, "choices": choices, "flag": flag, "metavar": metavar}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def _opt(check):
    """A check that lets ``None`` (= "decide from the dataset / hardware") through."""
    return lambda v, name: None if v is None else check(v, name)


@dataclasses.dataclass
class TrainConfig:
    """Every training option, with its default, in one place.

    Build it in Python (``TrainConfig(model_name="unet", loss="dice")``) or from the
    command line (:func:`kseg.cli.common.add_config_args` turns each field into a
    flag of the same name); :func:`kseg.train` runs it. ``None`` means "take it from
    the dataset's ``dataset.json`` or the hardware" (classes, input size, epochs,
    augmentation, precision). Values are checked when the object is created.
    """

    # model
    model_name: str = _field("unet", "a registered model (kseg models lists them)", group="model")
    model_option: dict = _field({}, "extra builder argument, repeatable (e.g. base_filters=32, encoder=resnet50)",
                                group="model", flag="kv", metavar="KEY=VALUE")
    freeze_encoder: int = _field(0, "train the first N epochs with the model's pretrained encoder frozen (its "
                                    "BatchNorm in inference mode), then all of it; -1 or all: frozen for the whole "
                                    "run; 0: off", group="model", check=as_freeze_epochs, metavar="N")
    # data
    dataset_name: str = _field("shapes", "dataset folder under --data_dir (the built-in 'shapes' is generated "
                                         "when missing)", group="data")
    data_dir: str = _field("data", "folder holding the datasets", group="data")
    n_classes: int = _field(None, "number of classes (default: from the dataset's dataset.json / classes.txt)",
                            group="data", check=_opt(as_n_classes))
    input_height: int = _field(None, "network input height (default: the dataset's suggested size, else 256)",
                               group="data", check=_opt(as_positive_int))
    input_width: int = _field(None, "network input width (default: as --input_height)", group="data",
                              check=_opt(as_positive_int))
    resize_op: int = _field(1, "1 = resize, 2 = letterbox (aspect kept, padded; undone at prediction)",
                            group="data", choices=RESIZE_OPS)
    image_init: str = _field("divide", "input normalisation: x/255, x/127.5-1, or ImageNet mean subtraction "
                                       "(16-bit images: x/65535, x/32767.5-1; unused with --mean/--std)",
                             group="data", choices=IMAGE_INITS)
    input_channels: int = _field(None, "channels of the network input: 1 grey, 3 RGB, 4 RGBA or bands, any N "
                                       "for multi-band TIFFs (default: the dataset's dataset.json "
                                       "input_channels, else 3; grey images are repeated and alpha dropped "
                                       "for 3)", group="data", check=_opt(as_positive_int), metavar="N")
    mean: list = _field(None, "per-channel mean, one per input channel, in the images' own units (0-255, "
                              "16-bit: 0-65535); the input is (x - mean) / std instead of --image_init "
                              "(default: dataset.json's mean; kseg doctor prints it)", group="data",
                        check=_opt(as_float_list), metavar="M1,M2,...")
    std: list = _field(None, "per-channel standard deviation, with --mean (default: dataset.json's std)",
                       group="data", check=_opt(lambda v, name: as_float_list(v, name, positive=True)),
                       metavar="S1,S2,...")
    ignore_index: int = _field(None, "label value excluded from losses and metrics (default: dataset's, else "
                                     f"{IGNORE_INDEX})", group="data")
    # experiment
    exp_name: str = _field(None, "experiment name (default: <model>_<dataset>, numbered if it exists)")
    train_save_path: str = _field("weights", "folder holding experiments")
    resume: object = _field(False, "continue the experiment --exp_name (weights, optimizer state, epoch count); "
                                   "or --resume PATH: an experiment folder or a model file in one continues "
                                   "that experiment, another model file (.keras/.h5/.hdf5) initialises a new "
                                   "run with its weights", flag="resume")
    overwrite: bool = _field(False, "replace an existing experiment folder", flag="bool")
    allow_recipe_change: bool = _field(False, "with --resume: apply the recipe options given on the command line "
                                              "even where they differ from the experiment's (recorded in its "
                                              "config.json); without it such a difference is refused", flag="bool")
    # optimisation
    loss: str = _field("ce", "loss name or a sum: 'ce+dice', 'c_focal+0.5*dice'")
    class_weights: str = _field(None, "'auto' (median-frequency balancing as SegNet defines it), 'enet' "
                                      "(ENet's 1/ln(1.02 + p)) or comma-separated numbers, one per class")
    epochs: int = _field(None, "number of epochs (default: the dataset's suggestion, else "
                               f"{DEFAULT_EPOCHS})", check=_opt(as_positive_int))
    train_batch_size: int = _field(8, "training batch size (per replica)", check=as_positive_int)
    val_batch_size: int = _field(8, "validation batch size (per replica)", check=as_positive_int)
    iterations: int = _field(None, "budget in optimizer steps instead of --epochs (the papers' unit); epochs = "
                                   "ceil(iterations / steps per epoch)", check=_opt(as_positive_int))
    optimizer_name: str = _field("adam", "optimizer", choices=OPTIMIZERS, group="optimizer")
    learning_rate: float = _field(1e-3, "base (peak) learning rate", check=as_positive_float, group="optimizer")
    momentum: float = _field(0.9, "momentum of sgd and rmsprop", check=as_fraction, group="optimizer")
    nesterov: bool = _field(False, "Nesterov momentum (sgd)", flag="bool", group="optimizer")
    schedule: str = _field("constant", "learning-rate schedule, per step: constant, poly (power), cosine, step "
                                       "(--step_epochs, --gamma), multistep (--milestones, --gamma), exponential "
                                       "(--gamma per epoch)", choices=SCHEDULES, group="optimizer")
    power: float = _field(0.9, "exponent of the poly schedule", check=as_positive_float, group="optimizer")
    min_learning_rate: float = _field(0.0, "learning rate that poly and cosine reach at the end",
                                      check=as_non_negative_float, group="optimizer")
    step_epochs: int = _field(None, "step schedule: multiply by --gamma every N epochs",
                              check=_opt(as_positive_int), group="optimizer", metavar="N")
    milestones: list = _field([], "multistep schedule: epochs at which the rate is multiplied by --gamma "
                                  "(e.g. 30,60)", check=as_int_list, group="optimizer", metavar="E1,E2")
    gamma: float = _field(0.1, "decay factor of step/multistep; per-epoch factor of exponential",
                          check=as_positive_float, group="optimizer")
    warmup_epochs: float = _field(0.0, "linear warm-up length in epochs (or --warmup_steps)",
                                  check=as_non_negative_float, group="optimizer")
    warmup_steps: int = _field(0, "linear warm-up length in optimizer steps (or --warmup_epochs)",
                               check=as_non_negative_int, group="optimizer")
    warmup_factor: float = _field(0.1, "warm-up starts at this fraction of the learning rate",
                                  check=as_positive_float, group="optimizer")
    weight_decay: float = _field(0.0, "weight decay of the kernels (biases and normalisation are not decayed)",
                                 check=as_non_negative_float, group="optimizer")
    weight_decay_mode: str = _field("auto", "coupled = L2 added to the gradient (the papers' SGD); decoupled = "
                                            "AdamW-style; auto = decoupled for adamw, coupled otherwise",
                                    choices=WEIGHT_DECAY_MODES, group="optimizer")
    clipnorm: float = _field(None, "clip each gradient to this L2 norm", check=_opt(as_positive_float),
                             group="optimizer")
    ema: float = _field(0.0, "exponential moving average of the weights with this momentum (e.g. 0.999; "
                             "0 = off); validation and checkpoints use the average", check=as_fraction,
                        group="optimizer")
    early_stopping: int = _field(0, "stop when the validation mean IoU has not improved for N epochs "
                                    "(0 = off); best.keras keeps the best weights",
                                 check=as_non_negative_int, metavar="N")
    validate: bool = _field(True, "evaluate on the val split (or test split when there is no val) every epoch",
                            flag="bool")
    augment: bool = _field(None, "online augmentation: random scale 0.75-1.25, h-flip, crop/pad (default: on, "
                                 "unless the dataset's dataset.json suggests \"augment\": false)", flag="bool")
    train_crops: int = _field(0, "0: resize every image to the input size (default). N > 0: keep images at their "
                                 "native resolution and train on N random input-size crops per image per epoch "
                                 "(validation: one centre crop); for large images predicted with test.py "
                                 "--mode slide", check=as_non_negative_int, metavar="N")
    seed: int = _field(0, "random seed (weights, shuffling, augmentation)")
    # speed and hardware
    cache: bool = _field(False, "cache decoded images in memory", flag="bool", group="speed")
    jit_compile: str = _field("auto", "XLA compilation of the train step", choices=JIT_CHOICES, group="speed")
    mixed_precision: bool = _field(None, "16-bit compute with float32 weights: mixed_float16 on a GPU, "
                                         "mixed_bfloat16 on a CPU with native bfloat16; loss, BatchNorm "
                                         "statistics and output stay float32 (default: auto = on for GPUs with "
                                         "tensor cores and CPUs with AMX, else off)", flag="bool", group="speed")
    steps_per_execution: int = _field(1, "training steps per call into the compiled function (larger helps "
                                         "tiny models)", check=as_positive_int, group="speed")
    multi_gpus: bool = _field(False, "data-parallel training on all visible GPUs (tf.distribute.MirroredStrategy)",
                              flag="bool", group="speed")
    verbose: int = _field(None, "Keras progress: 1 = bar (default on a terminal), 2 = a line per epoch, 0 = none; "
                                "3 = a line per epoch and TensorFlow's own start-up log",
                          choices=(0, 1, 2, 3), group="speed")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            meta = f.metadata
            name = f"--{f.name}"
            value = getattr(self, f.name)
            if meta.get("flag") == "bool" and value is not None:
                value = as_bool(value, name)
            if meta.get("check"):
                value = meta["check"](value, name)
            if meta.get("choices") is not None and value is not None and value not in meta["choices"]:
                raise ConfigError(f"{name} {value!r}: expected one of {', '.join(map(str, meta['choices']))}")
            setattr(self, f.name, value)
        if self.warmup_epochs and self.warmup_steps:
            raise ConfigError("--warmup_epochs and --warmup_steps both given; use one")
        if self.epochs is not None and self.iterations is not None:
            raise ConfigError("--epochs and --iterations both given; the budget is one of them")
        check_normalisation(self.input_channels, self.mean, self.std, self.image_init)
        if self.early_stopping and not self.validate:
            raise ConfigError("--early_stopping watches the validation mean IoU; it needs --validate")
        if not isinstance(self.model_option, dict):
            try:
                self.model_option = dict(self.model_option or {})
            except (TypeError, ValueError):
                raise ConfigError(f"--model_option {self.model_option!r}: expected KEY=VALUE pairs") from None
        if self.resume not in (True, False) and not isinstance(self.resume, str):
            raise ConfigError(f"--resume {self.resume!r}: expected true/false or a path")
        if isinstance(self.resume, str) and self.resume.strip().lower() in _TRUE + _FALSE:
            self.resume = as_bool(self.resume)
        for name in ("model_name", "dataset_name", "data_dir", "train_save_path", "loss"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"--{name}: expected a non-empty name, got {getattr(self, name)!r}")

    @classmethod
    def fields(cls):
        """The dataclass fields (name, default, command-line metadata) in declaration order."""
        return dataclasses.fields(cls)

    @classmethod
    def from_dict(cls, d):
        """A config from a dict (e.g. the ``train`` section of ``config.json``); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return cls(**d)

    def to_dict(self):
        return dataclasses.asdict(self)

    def replace(self, **changes):
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass
class ExperimentConfig:
    """What an experiment's ``config.json`` holds: everything needed to use the result
    (predict, evaluate, export, serve, resume) without remembering a flag.

    ``train`` is the resolved :class:`TrainConfig` the run used (as a dict): ``kseg
    train --config weights/<exp>/config.json`` repeats the run. ``run`` records what
    actually ran (``epochs_done``, ``stopped_early``, ``resumes`` with any recipe
    changes allowed on resume). The other fields are what the run resolved from the
    dataset and the machine.
    """

    model_name: str
    n_classes: int
    input_height: int
    input_width: int
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    image_init: str = "divide"
    resize_op: int = 1
    #: channels of the network input (3 for experiments written before kseg read other counts)
    input_channels: int = 3
    #: per-channel mean and std of the normalisation (None: ``image_init``), see kseg.data.preprocess
    mean: list = None
    std: list = None
    ignore_index: int = IGNORE_INDEX
    class_names: list = dataclasses.field(default_factory=list)
    palette: list = dataclasses.field(default_factory=list)
    dataset: str = ""
    loss: str = "ce"
    class_weights: list = None
    train: dict = dataclasses.field(default_factory=dict)
    run: dict = dataclasses.field(default_factory=dict)
    distribution: dict = dataclasses.field(default_factory=dict)
    jit_compile: bool = False
    dtype_policy: str = "float32"
    params: int = 0
    kseg_version: str = ""
    keras_version: str = ""
    backend: str = ""
    created: str = ""

    def __post_init__(self):
        self.n_classes = as_n_classes(self.n_classes, "config.json n_classes")
        for name in ("input_height", "input_width"):
            setattr(self, name, as_positive_int(getattr(self, name), f"config.json {name}"))
        if self.image_init not in IMAGE_INITS:
            raise ConfigError(f"config.json image_init {self.image_init!r}: expected one of {', '.join(IMAGE_INITS)}")
        if self.resize_op not in RESIZE_OPS:
            raise ConfigError(f"config.json resize_op {self.resize_op!r}: expected 1 or 2")
        self.input_channels = as_positive_int(self.input_channels, "config.json input_channels")
        for name in ("mean", "std"):
            if getattr(self, name) is not None:
                setattr(self, name, as_float_list(getattr(self, name), f"config.json {name}", positive=name == "std"))
        check_normalisation(self.input_channels, self.mean, self.std, self.image_init, "config.json: ")
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(f"config.json model_kwargs {self.model_kwargs!r}: expected an object")
        if not self.class_names:
            self.class_names = [f"class_{i}" for i in range(label_values(self.n_classes))]

    @property
    def input_size(self):
        return (self.input_height, self.input_width)

    @property
    def channels(self):
        """The model's input channels (``input_channels``)."""
        return self.input_channels

    @property
    def n_values(self):
        """Label values the model predicts (:func:`label_values` of ``n_classes``)."""
        return label_values(self.n_classes)

    def names(self):
        """One class name per label value (``class_<i>`` where the config has none)."""
        names = [str(x) for x in self.class_names][: self.n_values]
        return names + [f"class_{i}" for i in range(len(names), self.n_values)]

    # read access by key (``config["n_classes"]``), as for the JSON object it is written as
    def __getitem__(self, key):
        if key in self.__dataclass_fields__:
            return getattr(self, key)
        if key == "args":  # the name of ``train`` before kseg 0.2
            return self.train
        raise KeyError(key)

    def __contains__(self, key):
        return key in self.__dataclass_fields__ or key == "args"

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    @classmethod
    def coerce(cls, config, **defaults):
        """An ExperimentConfig from an ExperimentConfig or a dict of its fields (e.g. read from
        JSON); ``defaults`` fill fields the dict lacks (e.g. ``n_classes`` from a model)."""
        if isinstance(config, cls):
            return config
        return cls.from_dict({**defaults, **dict(config or {})}, source="the experiment config")

    @classmethod
    def from_dict(cls, d, source="config.json"):
        if not isinstance(d, dict):
            raise ConfigError(f"{source} does not hold a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in ("model_name", "n_classes", "input_height", "input_width") if n not in d]
        if missing:
            raise ConfigError(f"{source} lacks {', '.join(missing)}; it was not written by kseg train")
        kw = {k: v for k, v in d.items() if k in names}
        if "train" not in d and isinstance(d.get("args"), dict):  # written before TrainConfig existed
            kw["train"] = d["args"]
        try:
            return cls(**kw)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, path):
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path} does not exist") from None
        except ValueError as e:
            raise ConfigError(f"{path} is not valid JSON ({e})") from None
        return cls.from_dict(d, source=path)

    def train_config(self):
        """The :class:`TrainConfig` the experiment was trained with."""
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig.from_dict({k: v for k, v in self.train.items() if k in known})
