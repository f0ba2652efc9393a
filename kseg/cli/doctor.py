"""Check a kseg dataset folder and report what would break or skew training.

    python scripts/check_dataset.py data/<name> [--n_classes N] [--json]

Reports pairing problems, unreadable files, images whose channels the model cannot take
(--input_channels; their per-channel mean/std for dataset.json), image/label size mismatches, the label
values found (0/255 binary masks, RGB masks, values >= n_classes), per-class pixel and
image frequencies, the class weights training's --class_weights auto (median frequency)
and enet would use, and duplicate images across splits.
Exit status: 0 = no errors (warnings allowed), 1 = errors found, 2 = bad arguments.
"""

import json
import os


from kseg.cli.common import make_parser, positive_int, run_main
from kseg.cli.common import n_classes as n_classes_arg
from kseg.config import IGNORE_INDEX
from kseg.data.doctor import check_dataset
from kseg.files import atomic_path


def build_parser():
    p = make_parser(__doc__.split("\n\n")[0])
    p.add_argument("dataset", nargs="?", help="dataset folder, e.g. data/labelme_demo")
    p.add_argument("--dataset_name", help="alternative to the positional path: <data_dir>/<dataset_name>")
    p.add_argument("--data_dir", default="data", help="parent folder for --dataset_name (default: data)")
    p.add_argument("--n_classes", type=n_classes_arg, default=None, help="number of classes (default: from classes.txt)")
    p.add_argument("--ignore_index", type=int, default=None,
                   help=f"ignore value (default: dataset.json or {IGNORE_INDEX})")
    p.add_argument("--weights_split", default="train",
                   help="split used for the class weights and the per-channel mean/std (default train)")
    p.add_argument("--input_channels", type=positive_int, default=None, metavar="N",
                   help="the model's input channels, checked for every image (default: dataset.json, else 3)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    p.add_argument("--output", help="also write the JSON report to this file")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.dataset and not args.dataset_name:
        parser.error("give the dataset folder (or --dataset_name)")
    root = args.dataset or os.path.join(args.data_dir, args.dataset_name)
    report = check_dataset(root, n_classes=args.n_classes, ignore_index=args.ignore_index,
                           weights_split=args.weights_split, input_channels=args.input_channels)
    payload = report.to_dict()
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(report.format_text())
    if args.output:
        with atomic_path(args.output) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(payload, f, indent=2)
    return 0 if report.ok else 1


if __name__ == "__main__":
    run_main(main)
