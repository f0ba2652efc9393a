"""Reproduce the README's results tables on real data, from scratch.

A shim kept for the historical command line; the command is kseg.cli.reproduce
(also ``kseg reproduce ...`` and ``python -m kseg reproduce ...``).
"""

from kseg.cli.common import run_main
from kseg.cli.reproduce import build_parser, main  # noqa: F401 (importable by old callers)

if __name__ == "__main__":
    run_main(main)
