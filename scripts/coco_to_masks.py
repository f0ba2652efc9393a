"""Convert COCO instance annotations into a kseg semantic-segmentation dataset.

A shim kept for the historical command line; the command is kseg.cli.coco_to_masks
(also ``kseg coco_to_masks ...`` and ``python -m kseg coco_to_masks ...``).
"""

from kseg.cli.common import run_main
from kseg.cli.coco_to_masks import build_parser, main  # noqa: F401 (importable by old callers)

if __name__ == "__main__":
    run_main(main)
