"""Convert a folder of labelme JSON annotations into a kseg dataset.

A shim kept for the historical command line; the command is kseg.cli.json_to_dataset
(also ``kseg json_to_dataset ...`` and ``python -m kseg json_to_dataset ...``).
"""

from kseg.cli.common import run_main
from kseg.cli.json_to_dataset import build_parser, main  # noqa: F401 (importable by old callers)

if __name__ == "__main__":
    run_main(main)
