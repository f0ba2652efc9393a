"""Shared command-line pieces: every command composes its parser from these.

Commands call :func:`run_main`, which turns a :class:`kseg.errors.KsegError`
into a one-line ``error: ...`` message on stderr and exit status 2.
"""

import argparse
import json
import os
import sys

from kseg.errors import KsegError  # noqa: E402

#: The source checkout kseg runs from (the maintainers' tools -- reproduce, benchmark --
#: read and write results/ and README.md there).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adadelta")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2 (argparse's own convention)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


#: Program name shown in usage and error lines; ``kseg <command>`` when run through the
#: console script, else argparse's default (the script's file name).
_PROG = None


def prefer_backend(name, force=False):
    """Choose the Keras backend for this command, if Keras is not imported yet.

    Commands that run no model (evaluate, visualize) prefer the light ``numpy``
    backend; export needs ``tensorflow`` (``force`` overrides an inherited
    ``KERAS_BACKEND``). Called at the start of ``main``, never at import, so
    importing a command module changes nothing for its caller.
    """
    if "keras" in sys.modules:
        return
    if force:
        os.environ["KERAS_BACKEND"] = name
    else:
        os.environ.setdefault("KERAS_BACKEND", name)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option; the epilog (examples) printed as written."""


def make_parser(description, epilog=None):
    """The parser of a command: one-line errors, exit status 2, defaults in ``--help``."""
    return _Parser(description=description, epilog=epilog, prog=_PROG, formatter_class=_Formatter)


def positive_int(v):
    try:
        i = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}") from None
    if i <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}")
    return i


def non_negative_int(v):
    try:
        i = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {v!r}") from None
    if i < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {v!r}")
    return i


def positive_float(v):
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v!r}") from None
    if not f > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v!r}")
    return f


def key_value(v):
    """``key=value`` with value parsed as JSON when possible (``base_filters=32``)."""
    if "=" not in v:
        raise argparse.ArgumentTypeError(f"expected key=value, got {v!r}")
    k, val = v.split("=", 1)
    try:
        val = json.loads(val)
    except ValueError:
        pass
    return k.strip(), val


def add_data_args(p, dataset_default="shapes"):
    g = p.add_argument_group("data")
    g.add_argument("--dataset_name", default=dataset_default,
                   help="dataset folder under --data_dir (the built-in 'shapes' is generated when missing)")
    g.add_argument("--data_dir", default="data", help="folder holding the datasets")
    g.add_argument("--n_classes", type=positive_int, default=None,
                   help="number of classes (default: from the dataset's dataset.json / classes.txt)")
    g.add_argument("--input_height", type=positive_int, default=None,
                   help="network input height (default: the dataset's suggested size, else 256)")
    g.add_argument("--input_width", type=positive_int, default=None,
                   help="network input width (default: as --input_height)")
    g.add_argument("--resize_op", type=int, choices=(1, 2), default=1,
                   help="1 = resize, 2 = letterbox (aspect kept, padded; undone at prediction)")
    g.add_argument("--image_init", choices=("divide", "sub_and_divide", "sub_mean"), default="divide",
                   help="input normalisation: x/255, x/127.5-1, or ImageNet mean subtraction")
    g.add_argument("--ignore_index", type=int, default=None,
                   help="label value excluded from losses and metrics (default: dataset's, else 255)")
    return g


def add_model_args(p):
    g = p.add_argument_group("model")
    g.add_argument("--model_name", default="unet", help="a registered model (see scripts/model_table.py)")
    g.add_argument("--model_option", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="extra builder argument, repeatable (e.g. base_filters=32, encoder=resnet50)")
    return g


def add_train_args(p):
    g = p.add_argument_group("training")
    g.add_argument("--exp_name", default=None,
                   help="experiment name (default: <model>_<dataset>, numbered if it exists)")
    g.add_argument("--train_save_path", default="weights", help="folder holding experiments")
    g.add_argument("--loss", default="ce", help="loss name or a sum: 'ce+dice', 'c_focal+0.5*dice'")
    g.add_argument("--class_weights", default=None,
                   help="'auto' (median frequency from the training labels) or comma-separated numbers")
    g.add_argument("--validate", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate on the val split (or test split when there is no val) every epoch")
    g.add_argument("--epochs", type=positive_int, default=None,
                   help="number of epochs (default: the dataset's suggestion, else 50)")
    g.add_argument("--train_batch_size", type=positive_int, default=8)
    g.add_argument("--val_batch_size", type=positive_int, default=8)
    g.add_argument("--optimizer_name", choices=OPTIMIZERS, default="adam")
    g.add_argument("--learning_rate", type=positive_float, default=1e-3)
    g.add_argument("--resume", action="store_true",
                   help="continue the experiment --exp_name (weights, optimizer state, epoch count)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing experiment folder")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="online augmentation: random scale 0.75-1.25, h-flip, crop/pad "
                        "(default: on, unless the dataset's dataset.json says \"augment\": false)")
    g.add_argument("--cache", action="store_true", help="cache decoded images in memory")
    g.add_argument("--train_crops", type=non_negative_int, default=0, metavar="N",
                   help="0: resize every image to the input size (default). N > 0: keep images at their "
                        "native resolution and train on N random input-size crops per image per epoch "
                        "(validation: one centre crop); for large images predicted with test.py --mode slide")
    g.add_argument("--jit_compile", default="auto", choices=("auto", "on", "off"),
                   help="XLA compilation of the train step")
    g.add_argument("--mixed_precision", action=argparse.BooleanOptionalAction, default=None,
                   help="16-bit compute with float32 weights: mixed_float16 on a GPU, mixed_bfloat16 on a "
                        "CPU with native bfloat16; loss, BatchNorm statistics and output stay float32 "
                        "(default: auto = on for GPUs with tensor cores and CPUs with AMX, else off)")
    g.add_argument("--multi_gpus", action="store_true",
                   help="data-parallel training on all visible GPUs (tf.distribute.MirroredStrategy)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                   help="Keras progress: 1 = bar (default on a terminal), 2 = a line per epoch")
    return g


def run_main(main, argv=None, prog=None):
    """Run ``main(argv)``; user errors become a one-line message and exit status 2."""
    global _PROG
    _PROG = prog
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines
    try:
        rc = main(argv)
    except KsegError as e:
        msg = str(e).replace("\n", " ")
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc or 0)
