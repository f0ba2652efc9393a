"""Measure models on this machine: parameters, FLOPs, training and inference speed, memory,

A shim kept for the historical command line; the command is kseg.cli.benchmark
(also ``kseg benchmark ...`` and ``python -m kseg benchmark ...``).
"""

from kseg.cli.common import run_main
from kseg.cli.benchmark import build_parser, main  # noqa: F401 (importable by old callers)

if __name__ == "__main__":
    run_main(main)
