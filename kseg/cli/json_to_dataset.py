"""Convert a folder of labelme JSON annotations into a kseg dataset.

    kseg json_to_dataset --input_dir path/to/data_annotated \
        --labels path/to/labels.txt --output data/labelme_demo --split 0.8 0.1 0.1 --seed 0
    python scripts/json_to_dataset.py path/to/data_annotated     # -> data/data_annotated

Writes data/<name>/{train,val,test}_{image,label}/ (palette PNG labels, one class-id
map for every file), classes.txt and dataset.json. labelme draws the masks, so every
shape type converts exactly as labelme converts it. Needs `pip install labelme`.
"""

import os


from kseg.cli.common import make_parser, run_main
from kseg.config import IGNORE_INDEX as DEFAULT_IGNORE_INDEX
from kseg.data.layout import parse_split
from kseg.data.labelme import convert_labelme_folder
from kseg.errors import DataError


def build_parser():
    p = make_parser(__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", default=None,
                   help="folder of labelme .json files, as older command lines gave it "
                        "(json_to_dataset.py <folder>); same as --input_dir")
    p.add_argument("--input_dir", default=None, help="folder of labelme .json files (images next to them or embedded)")
    p.add_argument(
        "--labels",
        default=None,
        help="labels.txt, one class per line (__ignore__ first, then _background_ = 0, ...); "
        "default: _background_ + the labels found, sorted",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--output", help="dataset folder to create, e.g. data/labelme_demo "
                                      "(default: <data_dir>/<name of the input folder>)")
    out.add_argument("--dataset_name", help="same as --output <data_dir>/<dataset_name>")
    p.add_argument("--data_dir", default="data", help="parent folder for --dataset_name (default: data)")
    p.add_argument(
        "--split",
        nargs="+",
        default=["0.8", "0.1", "0.1"],
        help="train [val [test]] fractions (default 0.8 0.1 0.1; '0.8' = 80%% train, 20%% test)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random split (default 0)")
    p.add_argument("--add_unknown", action="store_true", help="append labels missing from --labels instead of failing")
    p.add_argument("--viz", action="store_true", help="also write colour overlays to <split>_viz/")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset's split folders")
    p.add_argument("--ignore_index", type=int, default=DEFAULT_IGNORE_INDEX, help="value of __ignore__ pixels (255)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.folder and args.input_dir and os.path.abspath(args.folder) != os.path.abspath(args.input_dir):
        parser.error(f"two input folders: {args.folder} and --input_dir {args.input_dir}; give one")
    args.input_dir = args.input_dir or args.folder
    if not args.input_dir:
        parser.error("the following arguments are required: --input_dir (or the folder as the first argument)")
    name = args.dataset_name or os.path.basename(os.path.normpath(os.path.abspath(args.input_dir)))
    output = args.output or os.path.join(args.data_dir, name)
    if args.labels is not None and not os.path.isfile(args.labels):
        raise DataError(f"labels file {args.labels} does not exist; check --labels")
    split = parse_split(args.split)
    summary = convert_labelme_folder(
        args.input_dir,
        output,
        labels=args.labels,
        split=split,
        seed=args.seed,
        add_unknown=args.add_unknown,
        visualize=args.viz,
        overwrite=args.overwrite,
        ignore_index=args.ignore_index,
        log=None if args.quiet else (lambda m: print(f"  {m}")),
    )
    counts = ", ".join(f"{s} {len(v)}" for s, v in summary["splits"].items() if v)
    print(f"wrote {output}: {len(summary['classes'])} classes ({', '.join(summary['classes'][:6])}"
          f"{' ...' if len(summary['classes']) > 6 else ''}); images: {counts}")
    if args.labels is None:
        print("note: no --labels given; class ids follow the sorted label names. Keep a labels.txt to fix them.")
    print(f"check it with: python scripts/check_dataset.py {output}")
    return 0


if __name__ == "__main__":
    run_main(main)
