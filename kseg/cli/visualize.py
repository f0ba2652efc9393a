"""Draw image | coloured label | overlay panels for a dataset split, to check a conversion.

python scripts/visualize.py --dataset_dir data/shapes --split train --n 16 --output vis/

Class names and colours come from the dataset's dataset.json / classes.txt when present
(else the VOC colour map); ignored pixels are drawn light grey-beige.
"""

import os

from kseg.cli import common as cli


def build_parser():
    p = cli.make_parser(__doc__)
    p.add_argument("--dataset_dir", required=True, help="dataset folder (data/<name>)")
    p.add_argument("--split", default="train", help="split to draw: train, val or test")
    p.add_argument("--n", type=int, default=16, help="number of pairs to draw, spread over the split (0: all)")
    p.add_argument("--output", required=True, help="folder for the <stem>.png panels")
    p.add_argument("--max_side", type=int, default=800,
                   help="shrink images whose longer side exceeds this before drawing (0: never)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the label colours in the overlay")
    return p


def pick(items, n):
    """``n`` items spread evenly over ``items`` (all when n <= 0 or n >= len)."""
    if n <= 0 or n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.prefer_backend("numpy")
    from kseg.data.dataset import load_dataset_info
    from kseg.data.io import read_image, read_label, write_image
    from kseg.errors import DataError
    from kseg.evaluation import dataset_panel

    info = load_dataset_info(args.dataset_dir)
    pairs = info.pairs(args.split)
    chosen = pick(pairs, args.n)
    for img_path, lab_path in chosen:
        image, label = read_image(img_path), read_label(lab_path)
        try:
            panel = dataset_panel(image, label, info.palette, info.classes, info.ignore_index,
                                  alpha=args.alpha, max_side=args.max_side or None)
        except DataError as e:
            raise DataError(f"{img_path} / {lab_path}: {e}") from None
        stem = os.path.splitext(os.path.basename(img_path))[0]
        write_image(os.path.join(args.output, stem + ".png"), panel)
    print(f"drew {len(chosen)} of {len(pairs)} {args.split} pairs (image | label | overlay) into {args.output}")
    return 0


if __name__ == "__main__":
    cli.run_main(main)
