"""Offline, mask-safe augmentation (the old project's name for scripts/augment.py).

A shim kept for the historical command line; the command is kseg.cli.augment
(also ``kseg augment ...`` and ``python -m kseg augment ...``).
"""

from kseg.cli.common import run_main
from kseg.cli.augment import build_parser, main  # noqa: F401 (importable by old callers)

if __name__ == "__main__":
    run_main(main)
