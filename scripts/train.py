"""Train a segmentation model: python scripts/train.py --model_name unet --loss dice

A shim kept for the historical command line; the command is kseg.cli.train
(also ``kseg train ...`` and ``python -m kseg train ...``).
"""

from kseg.cli.common import run_main
from kseg.cli.train import build_parser, main  # noqa: F401 (importable by old callers)

if __name__ == "__main__":
    run_main(main)
