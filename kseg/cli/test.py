"""Predict a folder of images with a trained experiment, at original resolution, and evaluate.

python scripts/test.py --weights_path weights/unet_shapes --mIOU
python scripts/test.py --weights_path weights/unet_dubai --mode slide --test_dir big_tiles/ --time

Writes <output>/masks/<stem>.png (palette PNGs of class indices, at each image's size),
<output>/overlays/<stem>.png (image blended with the mask, legend of class names) and,
with --mIOU, report.json + confusion_matrix.png; with --time, timing.json.
"""

import os
import time


from kseg.cli import common as cli
from kseg.errors import DataError


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
    p.add_argument("--backend", choices=("keras", "onnx", "tflite", "savedmodel"), default="keras",
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


def timing_summary(per_image, n_warmup=1):
    """Median / p90 per stage (milliseconds) and throughput from per-image stage seconds."""
    import numpy as np

    stages = ("preprocess", "model", "postprocess", "total")
    out = {"images": len(per_image), "warmup_images": n_warmup, "unit": "ms"}
    for s in stages:
        v = np.array([t[s] for t in per_image], np.float64) * 1000.0
        out[s] = {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)), "mean": float(v.mean())}
    total = sum(t["total"] for t in per_image)
    model = sum(t["model"] for t in per_image)
    out["images_per_second"] = len(per_image) / total if total > 0 else None
    out["model_images_per_second"] = len(per_image) / model if model > 0 else None
    return out


def format_timing(t):
    lines = [f"timing over {t['images']} image(s) (after {t['warmup_images']} warm-up), per image:",
             f"{'stage':<12} {'median ms':>10} {'p90 ms':>10}"]
    for s in ("preprocess", "model", "postprocess", "total"):
        lines.append(f"{s:<12} {t[s]['median']:>10.1f} {t[s]['p90']:>10.1f}")
    ips, mips = t["images_per_second"], t["model_images_per_second"]
    lines.append(f"throughput: {ips:.2f} images/s end to end (without writing outputs); "
                 f"model alone {mips:.2f} images/s" if ips and mips else "throughput: -")
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    from kseg.data.io import IMAGE_EXTENSIONS, list_files, pair_by_stem, read_image
    from kseg.experiment import write_json
    from kseg.predict import Predictor, StageTimer

    weights = args.weights_path or latest_experiment()
    if args.weights_path is None:
        print(f"using the most recent experiment: {weights}")
    pred = Predictor.from_experiment(weights, backend=args.backend, model_file=args.model_file,
                                     mode=args.mode, tile=args.tile, stride=args.stride,
                                     flip=args.flip, batch_size=args.batch_size)
    from kseg.evaluation import Evaluator, save_prediction  # after the cheap checks: imports keras

    cfg = pred.config
    test_dir = _default_dir(cfg, args.test_dir, "test_image", "--test_dir")
    out_dir = args.output or os.path.join(pred.folder, "predictions")
    if args.mIOU:
        label_dir = _default_dir(cfg, args.label_dir, "test_label", "--label_dir")
        items = pair_by_stem(test_dir, label_dir)
    else:
        items = [(p, None) for p in list_files(test_dir, IMAGE_EXTENSIONS)]
        if not items:
            raise DataError(f"no images found in {test_dir}")
    n = max(int(cfg["n_classes"]), 2)
    names = list(cfg.get("class_names") or [f"class_{i}" for i in range(n)])
    names += [f"class_{i}" for i in range(len(names), n)]
    names = names[:n]
    palette = cfg.get("palette")
    if palette is None:
        from kseg.data.io import voc_palette

        palette = voc_palette(n).tolist()
    ev = Evaluator(cfg["n_classes"], cfg.get("ignore_index", 255), names)

    timer = StageTimer() if args.time else None
    per_image = []
    if timer is not None:  # warm-up: compile / load kernels, not measured
        pred.predict(read_image(items[0][0]))
        pred.timer = timer
    # slide mode batches windows; resize / whole batch images (one at a time when timing)
    bs = 1 if (args.mode == "slide" or args.time) else args.batch_size
    t0 = time.perf_counter()
    for i in range(0, len(items), bs):
        chunk = items[i : i + bs]
        if timer is not None:
            timer.reset()
            with timer("preprocess"):
                images = [read_image(p) for p, _ in chunk]
        else:
            images = [read_image(p) for p, _ in chunk]
        masks = pred.predict_batch(images)
        if timer is not None:
            t = timer.snapshot()
            t["total"] = sum(t.values())
            per_image.append(t)
        for (img_path, lab_path), image, mask in zip(chunk, images, masks):
            stem = os.path.splitext(os.path.basename(img_path))[0]
            save_prediction(out_dir, stem, image, mask, palette, names, overlays=args.overlay)
            if lab_path:
                ev.update_file(lab_path, mask, pred_name=img_path)
    dt = time.perf_counter() - t0
    print(f"predicted {len(items)} images ({args.mode} mode{', flip' if args.flip else ''}) in {dt:.1f} s "
          f"({len(items) / max(dt, 1e-9):.2f} images/s with reading and writing); "
          f"masks at original size in {os.path.join(out_dir, 'masks')}")
    timing = None
    if timer is not None:
        timing = timing_summary(per_image)
        print(format_timing(timing))
        write_json(os.path.join(out_dir, "timing.json"), timing)
    if args.mIOU:
        extra = {"experiment": os.path.abspath(pred.folder), "test_dir": os.path.abspath(test_dir),
                 "mode": args.mode, "flip": args.flip}
        if args.mode == "slide":
            extra.update(tile=list(pred.tile), stride=list(pred.stride))
        if timing is not None:
            extra["timing"] = timing
        rep = ev.write(out_dir, extra=extra)
        print(ev.text())
        miou = "-" if rep["mean_iou"] is None else f"{rep['mean_iou']:.4f}"
        print(f"mean IoU: {miou}  (report: {os.path.join(out_dir, 'report.json')}, "
              f"confusion matrix: {os.path.join(out_dir, 'confusion_matrix.png')})")
    return 0


if __name__ == "__main__":
    cli.run_main(main)
