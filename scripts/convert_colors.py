"""Colour-coded label masks <-> class-index masks, and label value remapping.

A shim kept for the historical command line; the command is kseg.cli.convert_colors
(also ``kseg convert_colors ...`` and ``python -m kseg convert_colors ...``).
"""

from kseg.cli.common import run_main
from kseg.cli.convert_colors import build_parser, main  # noqa: F401 (importable by old callers)

if __name__ == "__main__":
    run_main(main)
