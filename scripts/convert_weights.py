"""Convert the official HRNet ImageNet checkpoints into a kseg weights file.

The command is kseg.cli.convert_weights (also ``kseg convert_weights ...`` and
``python -m kseg convert_weights ...``).
"""

from kseg.cli.common import run_main
from kseg.cli.convert_weights import build_parser, main  # noqa: F401 (importable by old callers)

if __name__ == "__main__":
    run_main(main)
