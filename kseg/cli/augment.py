"""Offline, mask-safe augmentation of an image/mask folder with Augmentor.

    python scripts/augment.py --train_path data/x/train_image --mask_path data/x/train_label \
        --augtrain_path data/x_aug/train_image --augtrain_mask data/x_aug/train_label \
        --samples_per_image 5 --seed 0 --flip_left_right 0.5 --rotate 0.7 10 10 --zoom 0.5 1.1 1.3

Each operation flag takes a probability and optional parameters, and the operations run
in the order given (default: --flip_left_right 0.5 --rotate 0.7 10 10 --zoom 0.5 1.1 1.3
--random_brightness 0.3 0.8 1.2). Geometric operations move the mask with the image using
nearest-neighbour sampling, so masks keep exact class values; photometric ones change only
the image. Outputs are <stem>_augNN.<ext> + <stem>_augNN.png and a manifest JSON.
"""

import argparse


from kseg.cli.common import make_parser, run_main
from kseg.augment import OPERATIONS, augment_folder
from kseg.config import IGNORE_INDEX as DEFAULT_IGNORE_INDEX


class _AppendOperation(argparse.Action):
    """Collects operation flags into one list, in command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        ops = list(getattr(namespace, "operations", None) or [])
        ops.append((self.dest,) + tuple(values))
        namespace.operations = ops


def build_parser():
    p = make_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--train_path", help="folder of input images")
    p.add_argument("--mask_path", help="folder of input masks (class-index PNGs, paired by stem)")
    p.add_argument("--augtrain_path", help="output image folder (created if missing)")
    p.add_argument("--augtrain_mask", help="output mask folder (created if missing)")
    p.add_argument("--samples_per_image", type=int, default=5, help="augmented copies per image (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--mask_fill", type=int, default=DEFAULT_IGNORE_INDEX,
                   help="mask value for pixels from outside the image (default 255 = ignore)")
    p.add_argument("--copy_originals", action="store_true", help="also copy the original pairs to the outputs")
    p.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    p.add_argument("--manifest", default=None, help="manifest path (default <augtrain_path>/augment_manifest.json)")
    p.add_argument("--list_operations", action="store_true", help="list the operations and exit")
    p.add_argument("--quiet", action="store_true")
    g = p.add_argument_group("operations (PROB [PARAMS...], applied in the order given)")
    for name, (kind, pnames, defaults, _) in OPERATIONS.items():
        meta = ("PROB",) + tuple(n.upper() for n in pnames)
        dflt = " ".join(f"{n}={d}" for n, d in zip(pnames, defaults))
        g.add_argument(f"--{name}", dest=name, nargs="+", action=_AppendOperation, metavar=("PROB", "PARAM"),
                       help=f"{kind}: {' '.join(meta)}" + (f" (defaults {dflt})" if dflt else ""))
    p.set_defaults(operations=None)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_operations:
        for name, (kind, pnames, defaults, _) in OPERATIONS.items():
            params = " ".join(f"[{n}={d}]" for n, d in zip(pnames, defaults))
            print(f"--{name} PROB {params}   ({kind})")
        return 0
    missing = [f"--{a}" for a in ("train_path", "mask_path", "augtrain_path", "augtrain_mask") if not getattr(args, a)]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    manifest = augment_folder(
        args.train_path, args.mask_path, args.augtrain_path, args.augtrain_mask,
        samples_per_image=args.samples_per_image, seed=args.seed, operations=args.operations,
        mask_fill=args.mask_fill, copy_originals=args.copy_originals, overwrite=args.overwrite,
        manifest_path=args.manifest, log=None if args.quiet else (lambda m: print(f"  {m}")),
    )
    ops = ", ".join(o["name"] for o in manifest["operations"])
    print(f"wrote {len(manifest['items'])} image/mask pair(s) to {args.augtrain_path} and {args.augtrain_mask} "
          f"(operations: {ops})")
    return 0


if __name__ == "__main__":
    run_main(main)
