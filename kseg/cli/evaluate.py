"""Evaluate two folders of index masks (pairing by file stem) without a model.

python scripts/evaluate.py --pred_dir other_tool/masks --gt_dir data/shapes/test_label --n_classes 4

Prints the report (pixel accuracy, mean class accuracy, mIoU, fwIoU, per-class
IoU/dice/precision/recall) and writes report.json + confusion_matrix.png to --output.
Both folders hold single-channel PNGs of class indices (palette PNGs are read as indices).
"""

import os

from kseg.cli import common as cli
from kseg.config import IGNORE_INDEX, label_values


def build_parser():
    p = cli.make_parser(__doc__)
    p.add_argument("--pred_dir", required=True, help="predicted masks (class-index PNGs)")
    p.add_argument("--gt_dir", required=True, help="ground-truth masks (class-index PNGs)")
    p.add_argument("--n_classes", type=cli.n_classes, required=True,
                   help="number of classes (1 = binary: a 2x2 matrix)")
    p.add_argument("--ignore_index", type=int, default=IGNORE_INDEX,
                   help="ground-truth value left out of every score (-1: none)")
    p.add_argument("--class_names", default=None,
                   help="comma-separated names, or a classes.txt / dataset.json file or a dataset folder")
    p.add_argument("--output", default=None,
                   help="folder for report.json and confusion_matrix.png (default: <pred_dir>_eval)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.prefer_backend("numpy")
    from kseg.errors import KsegError
    from kseg.evaluation import evaluate_folders, parse_class_names

    names = parse_class_names(args.class_names)
    k = label_values(args.n_classes)
    if names is not None and len(names) != k:
        raise KsegError(f"--class_names gives {len(names)} names but --n_classes {args.n_classes} needs {k}")
    ev = evaluate_folders(args.pred_dir, args.gt_dir, args.n_classes, args.ignore_index, names)
    out_dir = args.output or os.path.normpath(args.pred_dir) + "_eval"
    rep = ev.write(out_dir, extra={"pred_dir": os.path.abspath(args.pred_dir),
                                   "gt_dir": os.path.abspath(args.gt_dir)})
    print(f"evaluated {ev.n_images} mask pairs")
    print(ev.text())
    miou = "-" if rep["mean_iou"] is None else f"{rep['mean_iou']:.4f}"
    print(f"mean IoU: {miou}  (report: {os.path.join(out_dir, 'report.json')}, "
          f"confusion matrix: {os.path.join(out_dir, 'confusion_matrix.png')})")
    return 0


if __name__ == "__main__":
    cli.run_main(main)
