"""Predict a folder of images with a trained experiment, at original resolution, and evaluate.

A shim kept for the historical command line; the command is kseg.cli.test
(also ``kseg test ...`` and ``python -m kseg test ...``).
"""

from kseg.cli.common import run_main
from kseg.cli.test import build_parser, main  # noqa: F401 (importable by old callers)

if __name__ == "__main__":
    run_main(main)
