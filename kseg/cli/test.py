"""Predict a folder of images with a trained experiment, at original resolution, and evaluate.

python scripts/test.py --weights_path weights/unet_shapes --mIOU
python scripts/test.py --weights_path weights/unet_dubai --mode slide --test_dir big_tiles/ --time

Writes <output>/masks/<stem>.png (palette PNGs of class indices, at each image's size),
<output>/overlays/<stem>.png (image blended with the mask, legend of class names) and,
with --mIOU, report.json + confusion_matrix.png; with --time, timing.json.
"""

import os

from kseg.cli import common as cli
from kseg.errors import DataError
from kseg.runtime import RUNTIMES


def build_parser():
    p = cli.make_parser(__doc__)
    p.add_argument("--weights_path", default=None,
                   help="experiment folder (weights/<exp>) or a .keras file beside its config.json "
                        "(default: the most recent experiment in weights/)")
    p.add_argument("--test_dir", default=None, help="images to predict (default: the dataset's test_image)")
    p.add_argument("--label_dir", default=None, help="labels for --mIOU (default: the dataset's test_label)")
    p.add_argument("--output", default=None, help="output folder (default: <experiment>/predictions)")
    p.add_argument("--mIOU", action="store_true",
                   help="evaluate against --label_dir: report table, report.json, confusion_matrix.png")
    p.add_argument("--mode", choices=("resize", "slide", "whole"), default="resize",
                   help="resize to the network size (letterbox with resize_op 2), sliding window at full "
                        "resolution, or the whole image at once")
    p.add_argument("--tile", type=cli.positive_int, nargs=2, default=None, metavar=("H", "W"),
                   help="sliding-window size (default: the training input size)")
    p.add_argument("--stride", type=cli.positive_int, nargs=2, default=None, metavar=("H", "W"),
                   help="sliding-window step (default: 2/3 of the tile)")
    p.add_argument("--flip", action="store_true", help="horizontal-flip test-time augmentation")
    p.add_argument("--batch_size", type=cli.positive_int, default=4,
                   help="images (resize, whole) or windows (slide) per forward pass")
    p.add_argument("--overlay", action=cli.argparse.BooleanOptionalAction, default=True,
                   help="write colour overlays next to the masks")
    p.add_argument("--time", action="store_true",
                   help="measure per-image latency of preprocessing, model and postprocessing "
                        "(one image at a time, after a warm-up) and write timing.json")
    p.add_argument("--backend", choices=RUNTIMES, default="keras",
                   help="runtime: the Keras model or an exported file in the experiment folder")
    p.add_argument("--model_file", default=None, help="exported model file for --backend (default: in the experiment)")
    return p


def latest_experiment(root="weights"):
    from kseg.experiment import latest_experiment as _latest

    return _latest(root)


def _default_dir(cfg, arg, sub, flag):
    if arg:
        return arg
    dataset = cfg.get("dataset") or ""
    if not dataset:
        raise DataError(f"the experiment's config.json names no dataset; pass {flag}")
    return os.path.join(dataset, sub)


def main(argv=None):
    args = build_parser().parse_args(argv)
    from kseg.predict import Predictor, format_timing, predict_folder

    weights = args.weights_path or latest_experiment()
    if args.weights_path is None:
        print(f"using the most recent experiment: {weights}")
    pred = Predictor.from_experiment(weights, backend=args.backend, model_file=args.model_file,
                                     mode=args.mode, tile=args.tile, stride=args.stride,
                                     flip=args.flip, batch_size=args.batch_size)
    test_dir = _default_dir(pred.config, args.test_dir, "test_image", "--test_dir")
    out_dir = args.output or os.path.join(pred.folder, "predictions")
    label_dir = _default_dir(pred.config, args.label_dir, "test_label", "--label_dir") if args.mIOU else None
    res = predict_folder(pred, test_dir, out_dir, label_dir=label_dir, overlays=args.overlay, timing=args.time,
                         batch_size=args.batch_size)
    n, dt = res["images"], res["seconds"]
    print(f"predicted {n} images ({args.mode} mode{', flip' if args.flip else ''}) in {dt:.1f} s "
          f"({n / max(dt, 1e-9):.2f} images/s with reading and writing); "
          f"masks at original size in {res['masks_dir']}")
    if res["timing"] is not None:
        print(format_timing(res["timing"]))
    if args.mIOU:
        print(res["report_text"])
        rep = res["report"]
        miou = "-" if rep["mean_iou"] is None else f"{rep['mean_iou']:.4f}"
        print(f"mean IoU: {miou}  (report: {os.path.join(out_dir, 'report.json')}, "
              f"confusion matrix: {os.path.join(out_dir, 'confusion_matrix.png')})")
    return 0


if __name__ == "__main__":
    cli.run_main(main)
