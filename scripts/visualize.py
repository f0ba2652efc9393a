"""Draw image | coloured label | overlay panels for a dataset split, to check a conversion.

A shim kept for the historical command line; the command is kseg.cli.visualize
(also ``kseg visualize ...`` and ``python -m kseg visualize ...``).
"""

from kseg.cli.common import run_main
from kseg.cli.visualize import build_parser, main  # noqa: F401 (importable by old callers)

if __name__ == "__main__":
    run_main(main)
