"""Check a kseg dataset folder and report what would break or skew training.

A shim kept for the historical command line; the command is kseg.cli.doctor
(also ``kseg doctor ...`` and ``python -m kseg doctor ...``).
"""

from kseg.cli.common import run_main
from kseg.cli.doctor import build_parser, main  # noqa: F401 (importable by old callers)

if __name__ == "__main__":
    run_main(main)
