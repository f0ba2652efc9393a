"""Serve the web demo of a trained experiment: upload an image, see its mask and overlay.

A shim kept for the historical command line; the command is kseg.cli.serve
(also ``kseg serve ...`` and ``python -m kseg serve ...``).
"""

from kseg.cli.common import run_main
from kseg.cli.serve import build_parser, main  # noqa: F401 (importable by old callers)

if __name__ == "__main__":
    run_main(main)
