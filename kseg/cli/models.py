"""Print the cost table of every registered model (parameters, MACs, FLOPs, size constraint).

python scripts/model_table.py [--size 224] [--n_classes 2] [--write_readme] [--json out.json]
"""

import json
import os
import re
import sys


from kseg.cli import common as cli

START, END = "<!-- model-table:start -->", "<!-- model-table:end -->"


def build_parser():
    p = cli.make_parser(__doc__)
    p.add_argument("--size", type=cli.positive_int, default=224, help="input height and width")
    p.add_argument("--n_classes", type=cli.positive_int, default=2)
    p.add_argument("--models", nargs="*", default=None, help="subset of models (default: all)")
    p.add_argument("--write_readme", action="store_true", help="replace the table in README.md")
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    return p


def model_row(name, size, n_classes):
    import keras

    from kseg.models import get_model, model_spec
    from kseg.models.profile import count_macs

    spec = model_spec(name)
    divisor, min_size = spec.size_rule()  # the table builds every model with its default options
    s = max(min_size, -(-size // divisor) * divisor)
    keras.backend.clear_session()
    m = get_model(name, n_classes=n_classes, input_height=s, input_width=s)
    macs = count_macs(m)
    return {
        "model": name,
        "params": int(m.count_params()),
        "input": s,
        "gmacs": macs / 1e9,
        "gflops": 2 * macs / 1e9,
        "constraint": (f"any H, W >= {min_size}" if divisor == 1 else
                       f"H, W multiples of {divisor}" + (f", >= {min_size}" if min_size > divisor else "")),
        "any_size": spec.dynamic,
        "builder": spec.builder.__name__,
    }


def markdown(rows, n_classes):
    out = [
        "| model | builder | parameters | input | GMACs | GFLOPs | input size constraint | any size at run time |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        out.append(
            f"| `{r['model']}` | `{r['builder']}` | {r['params'] / 1e6:.2f}M | {r['input']} | {r['gmacs']:.2f} | "
            f"{r['gflops']:.2f} | {r['constraint']} | {'yes' if r['any_size'] else 'no (fixed at build)'} |"
        )
    out.append("")
    out.append(f"Computed by `python scripts/model_table.py` ({n_classes} classes, default arguments; MACs of "
               "conv/dense layers from layer shapes, FLOPs = 2 x MACs).")
    return "\n".join(out)


def main(argv=None):
    args = build_parser().parse_args(argv)
    from kseg.models import list_models, model_spec

    names = args.models or list_models()
    for n in names:
        model_spec(n)
    rows = []
    for n in names:
        r = model_row(n, args.size, args.n_classes)
        rows.append(r)
        print(f"{n:28s} {r['params']:>12,d} params  {r['gflops']:8.2f} GFLOPs at {r['input']}x{r['input']}", flush=True)
    table = markdown(rows, args.n_classes)
    print()
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    if args.write_readme:
        # kseg/cli/models.py -> the repository root, where README.md is
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "README.md")
        text = open(path, encoding="utf-8").read()
        if START not in text or END not in text:
            print(f"README.md has no {START} ... {END} markers; table not written", file=sys.stderr)
            return 1
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), START + "\n" + table + "\n" + END, text, flags=re.S)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print("README.md table updated")
    return 0


if __name__ == "__main__":
    cli.run_main(main)
