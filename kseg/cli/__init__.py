"""kseg's commands: one module per command, each with ``build_parser()`` and ``main(argv)``.

Three ways to run a command, all the same code:

    kseg train --model_name unet --loss dice          # console script (pip install -e .)
    python -m kseg train --model_name unet --loss dice
    python scripts/train.py --model_name unet --loss dice   # the historical shims

This package imports nothing heavy: a command module imports TensorFlow only when
it runs, so argument errors are reported at once.
"""

import importlib
import sys

#: subcommand -> (module under kseg.cli, one-line summary). Aliases map to the same module.
COMMANDS = {
    "train": ("train", "train a model on a dataset folder"),
    "test": ("test", "predict a folder at original resolution (and score it with --mIOU)"),
    "evaluate": ("evaluate", "score a folder of predicted masks against ground truth"),
    "visualize": ("visualize", "image | label | prediction panels"),
    "export": ("export", "export an experiment to ONNX, SavedModel or TFLite (with parity check)"),
    "serve": ("serve", "the web demo"),
    "json_to_dataset": ("json_to_dataset", "labelme JSON annotations -> a kseg dataset"),
    "coco_to_masks": ("coco_to_masks", "COCO instance annotations -> a kseg dataset"),
    "convert_colors": ("convert_colors", "colour-coded masks -> index masks (and back)"),
    "convert_weights": ("convert_weights", "official pretrained checkpoints (HRNet ImageNet) -> a kseg weights file"),
    "augment": ("augment", "mask-safe offline augmentation of a dataset folder"),
    "doctor": ("doctor", "check a dataset folder (pairs, label values, class statistics)"),
    "benchmark": ("benchmark", "speed, FLOPs and memory of models on this machine"),
    "models": ("models", "the model table (parameters, MACs, sizes)"),
    "reproduce": ("reproduce", "the README's results tables, from scratch"),
}
ALIASES = {"check_dataset": "doctor", "model_table": "models", "convert": "json_to_dataset",
           "augmentation": "augment"}


def command_module(name):
    """Import and return ``kseg.cli.<module>`` for a command name or alias."""
    name = ALIASES.get(name, name)
    return importlib.import_module(f"kseg.cli.{COMMANDS[name][0]}")


def _usage():
    width = max(map(len, COMMANDS))
    lines = ["usage: kseg <command> [options]   (kseg <command> --help for its options)", "", "commands:"]
    lines += [f"  {n:<{width}}  {summary}" for n, (_, summary) in COMMANDS.items()]
    lines += ["", "aliases: " + ", ".join(f"{a} = {t}" for a, t in ALIASES.items())]
    return "\n".join(lines)


def main(argv=None):
    """The ``kseg`` console script: ``kseg <command> [options]``."""
    from kseg.cli.common import run_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from kseg import __version__

        print(f"kseg {__version__}")
        return 0
    name = argv.pop(0)
    if name not in COMMANDS and name not in ALIASES:
        print(f"error: unknown command {name!r}; valid commands are: {', '.join(COMMANDS)} "
              "(see kseg --help)", file=sys.stderr)
        return 2
    module = command_module(name)
    run_main(module.main, argv, prog=f"kseg {name}")
