"""Evaluate two folders of index masks (pairing by file stem) without a model.

A shim kept for the historical command line; the command is kseg.cli.evaluate
(also ``kseg evaluate ...`` and ``python -m kseg evaluate ...``).
"""

from kseg.cli.common import run_main
from kseg.cli.evaluate import build_parser, main  # noqa: F401 (importable by old callers)

if __name__ == "__main__":
    run_main(main)
