"""Colour-coded label masks <-> class-index masks, and label value remapping.

    # a whole dataset from images + colour masks (several folder pairs allowed)
    python scripts/convert_colors.py dataset --images DIR [DIR ...] --masks DIR [DIR ...] \
        --table classes.json --output data/<name> --split 0.8 0.1 0.1
    # one folder of colour masks -> index PNGs
    python scripts/convert_colors.py to-index --input masks/ --output labels/ --table camvid
    # index PNGs -> colour PNGs (for looking at them)
    python scripts/convert_colors.py to-color --input labels/ --output colour/ [--table t.json]
    # fix binary 0/255 masks (255 is the ignore value) -> 0/1
    python scripts/convert_colors.py remap --input labels/ --output labels01/ --binary_255_to_1
    # print a table
    python scripts/convert_colors.py table --table voc

--table is a named palette (voc, camvid, camvid11, dubai, binary) or a JSON/CSV/TXT file; see
README.md (Dataset tools). Colours not in the table become the ignore value (255) and are
reported with their pixel counts.
"""

import json
import sys


from kseg.cli.common import make_parser, run_main
from kseg.config import IGNORE_INDEX
from kseg.data.color_tables import NAMED_TABLES, color_hex, load_class_table
from kseg.data.colors import (
    convert_color_dataset,
    convert_color_folder,
    format_unknown,
    index_folder_to_colors,
    parse_value_map,
    remap_folder,
)
from kseg.files import atomic_path
from kseg.data.layout import parse_split
from kseg.data.stats import BINARY_FOREGROUND


#: Help of --table: every name load_class_table accepts (one list, kseg.data.color_tables.NAMED_TABLES).
TABLE_HELP = f"class->colour table: a named palette ({', '.join(NAMED_TABLES)}) or a .json/.csv/.txt file"


def build_parser():
    p = make_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, table_required=True):
        sp.add_argument("--table", required=table_required, help=TABLE_HELP)
        sp.add_argument("--ignore_index", type=int, default=None,
                        help=f"value for ignored/unknown colours ({IGNORE_INDEX})")
        sp.add_argument("--overwrite", action="store_true", help="replace existing output")

    d = sub.add_parser("dataset", help="build data/<name>/{train,val,test}_{image,label} from images + colour masks")
    d.add_argument("--images", nargs="+", required=True, help="image folder(s)")
    d.add_argument("--masks", nargs="+", required=True, help="colour mask folder(s), one per image folder")
    d.add_argument("--output", required=True, help="dataset folder to create, e.g. data/dubai")
    d.add_argument("--split", nargs="+", default=["0.8", "0.1", "0.1"], help="train [val [test]] fractions")
    d.add_argument("--seed", type=int, default=0, help="seed of the split")
    d.add_argument("--tolerance", type=float, default=0, help="map colours within this RGB distance (JPEG masks)")
    d.add_argument("--report", help="write the unknown-colour report as JSON here")
    common(d)

    t = sub.add_parser("to-index", help="colour masks -> index PNG masks")
    t.add_argument("--input", required=True)
    t.add_argument("--output", required=True)
    t.add_argument("--tolerance", type=float, default=0)
    t.add_argument("--report", help="write the unknown-colour report as JSON here")
    common(t)

    c = sub.add_parser("to-color", help="index masks -> colour PNGs")
    c.add_argument("--input", required=True)
    c.add_argument("--output", required=True)
    common(c, table_required=False)

    r = sub.add_parser("remap", help="rewrite label values (e.g. 255 -> 1 for binary masks)")
    r.add_argument("--input", required=True)
    r.add_argument("--output", required=True)
    r.add_argument("--map", nargs="+", default=[], help="OLD:NEW pairs, e.g. --map 255:1 3:0")
    r.add_argument("--binary_255_to_1", action="store_true", help="shorthand for --map 255:1")
    r.add_argument("--overwrite", action="store_true", help="replace existing output")

    s = sub.add_parser("table", help="print a class table")
    s.add_argument("--table", required=True, help=TABLE_HELP)
    s.add_argument("--ignore_index", type=int, default=None)
    return p


def _write_report(path, summary):
    if path:
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=2)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "remap":
        mapping = parse_value_map(args.map)
        if args.binary_255_to_1:
            mapping[BINARY_FOREGROUND] = 1
        out = remap_folder(args.input, args.output, mapping, overwrite=args.overwrite)
        changed = ", ".join(f"{k}->{mapping[k]}: {n} px" for k, n in out["changed_pixels"].items())
        print(f"wrote {out['files']} label(s) to {args.output} ({changed})")
        return 0
    table = load_class_table(args.table, args.ignore_index) if args.table else None
    if args.command == "table":
        for i, (n, cols) in enumerate(zip(table.names, table.colors)):
            print(f"{i:>3}  {', '.join(color_hex(c) for c in cols) or '-':<20} {n}")
        if table.ignore_colors:
            print(f"{table.ignore_index:>3}  {', '.join(color_hex(c) for c in table.ignore_colors):<20} (ignore)")
        return 0
    if args.command == "to-color":
        out = index_folder_to_colors(args.input, args.output, table, overwrite=args.overwrite)
        print(f"wrote {out['files']} colour image(s) to {args.output}")
        return 0
    if args.command == "to-index":
        out = convert_color_folder(args.input, args.output, table, args.tolerance, overwrite=args.overwrite)
        print(f"wrote {out['files']} index mask(s) to {args.output} ({table.n_classes} classes)")
    else:
        out = convert_color_dataset(
            args.images, args.masks, args.output, table, split=parse_split(args.split), seed=args.seed,
            tolerance=args.tolerance, overwrite=args.overwrite,
        )
        counts = ", ".join(f"{s} {n}" for s, n in out["splits"].items() if n)
        print(f"wrote {args.output}: {table.n_classes} classes ({', '.join(table.names)}); images: {counts}")
    msg = format_unknown(out["unknown"])
    if msg:
        print(f"warning: {msg}", file=sys.stderr)
    _write_report(args.report, out["unknown"])
    return 0


if __name__ == "__main__":
    run_main(main)
