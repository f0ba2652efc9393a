"""Print the cost table of every registered model (parameters, MACs, FLOPs, size constraint).

A shim kept for the historical command line; the command is kseg.cli.models
(also ``kseg models ...`` and ``python -m kseg models ...``).
"""

from kseg.cli.common import run_main
from kseg.cli.models import build_parser, main  # noqa: F401 (importable by old callers)

if __name__ == "__main__":
    run_main(main)
