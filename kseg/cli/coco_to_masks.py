"""Convert COCO instance annotations into a kseg semantic-segmentation dataset.

    python scripts/coco_to_masks.py --annotations instances_train2017.json --images train2017/ \
        --output data/coco --subset train [--category_ids contiguous|coco]
    python scripts/coco_to_masks.py --annotations instances_val2017.json --images val2017/ \
        --output data/coco --subset val
    # one JSON, random split:
    python scripts/coco_to_masks.py --annotations annotations.json --output data/x --split 0.8 0.1 0.1

Class ids: contiguous (default, 1..N in COCO-id order; COCO's 80 classes -> 1..80) or
coco (keep the COCO ids 1..90); 0 = background. Overlapping objects are resolved
deterministically (--overlap area: smaller objects on top; order: later annotation
wins; ignore: contested pixels -> 255). Crowd regions: --crowd class|ignore|skip.
Needs `pip install pycocotools`.
"""

import sys


from kseg.cli.common import make_parser, run_main
from kseg.data.coco import CATEGORY_MODES, CROWD_MODES, OVERLAP_MODES, convert_coco
from kseg.config import IGNORE_INDEX
from kseg.data.layout import parse_split


def build_parser():
    p = make_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--annotations", required=True, help="COCO instances JSON")
    p.add_argument("--images", default=None, help="folder the file_name entries are relative to (default: the JSON's folder)")
    p.add_argument("--output", required=True, help="dataset folder, e.g. data/coco")
    p.add_argument("--category_ids", choices=CATEGORY_MODES, default="contiguous",
                   help="contiguous: 1..N (default); coco: keep the COCO category ids")
    p.add_argument("--overlap", choices=OVERLAP_MODES, default="area", help="how overlapping objects are resolved")
    p.add_argument("--crowd", choices=CROWD_MODES, default="class", help="what iscrowd regions become")
    p.add_argument("--subset", choices=("train", "val", "test"), default=None,
                   help="put all images into this split (keeps the dataset's other splits)")
    p.add_argument("--split", nargs="+", default=["0.8", "0.1", "0.1"],
                   help="train [val [test]] fractions when --subset is not given")
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    p.add_argument("--skip_missing", action="store_true", help="skip images whose file is missing")
    p.add_argument("--ignore_index", type=int, default=IGNORE_INDEX)
    p.add_argument("--overwrite", action="store_true", help="replace existing split folders / class list")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = convert_coco(
        args.annotations, args.output, image_dir=args.images, category_ids=args.category_ids,
        overlap=args.overlap, crowd=args.crowd, subset=args.subset,
        split=None if args.subset else parse_split(args.split), seed=args.seed, overwrite=args.overwrite,
        ignore_index=args.ignore_index, skip_missing=args.skip_missing,
    )
    counts = ", ".join(f"{s} {n}" for s, n in out["splits"].items() if n)
    print(f"wrote {args.output}: {len(out['classes'])} classes (incl. _background_); images: {counts}")
    if out["skipped"]:
        print(f"warning: skipped {len(out['skipped'])} missing image(s), e.g. {out['skipped'][0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
