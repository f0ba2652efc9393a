"""Export a trained experiment to ONNX / SavedModel / TFLite, check it against Keras, benchmark runtimes.

A shim kept for the historical command line; the command is kseg.cli.export
(also ``kseg export ...`` and ``python -m kseg export ...``).
"""

from kseg.cli.common import run_main
from kseg.cli.export import build_parser, main  # noqa: F401 (importable by old callers)

if __name__ == "__main__":
    run_main(main)
