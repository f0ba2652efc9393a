"""Predict a folder of images with a trained experiment, at original resolution, and evaluate.

kseg test --weights_path weights/unet_shapes --mIOU
kseg test --weights_path weights/unet_dubai --mode slide --test_dir big_tiles/ --time
kseg test --weights_path weights/unet_shapes --runtime keras     # no ONNX copy, the Keras model itself

Writes <output>/masks/<stem>.png (palette PNGs of class indices, at each image's size),
<output>/overlays/<stem>.png (image blended with the mask, legend of class names) and,
with --mIOU, report.json + confusion_matrix.png; with --time, timing.json.

--runtime auto (the default; $KSEG_RUNTIME changes it): on a machine without a GPU and
with the export extra installed (pip install kseg[export]), the .keras model is
converted to ONNX once, checked against Keras with the export's parity tolerance,
cached in <experiment>/cache/ and run by onnxruntime when that measured faster;
otherwise Keras runs it (a failed conversion or parity check says why in one warning
line). The line "runtime: ..." names what ran the model.

Older command lines work as written: --test_images / --val_images (= --test_dir),
--val_annotations (= --label_dir), --output_path (= --output), --classes
(= --n_classes), --mIOU True, and --model_name / --image_init / --resize_op /
--input_height / --input_width. With an experiment these are checked against its
config.json (a different value is an error); a model file outside any experiment
(weights/unet.xx.hdf5) is described by them instead (defaults: 224x224, divide,
resize; images from data/test/, masks to data/output/).
"""

import os

from kseg import config as C
from kseg.cli import common as cli
from kseg.errors import ConfigError, DataError
from kseg.runtime import RUNTIME_CHOICES, RUNTIMES

#: The defaults of the older project's test.py, used for a model file outside any experiment.
LEGACY_DEFAULTS = {"input_height": 224, "input_width": 224, "image_init": "divide", "resize_op": 1,
                   "test_dir": os.path.join("data", "test"), "output": os.path.join("data", "output"),
                   "val_images": os.path.join("data", "val_image"), "label_dir": os.path.join("data", "val_label")}

#: Options that describe the model; with an experiment they must agree with its config.json.
DESCRIBING = ("model_name", "n_classes", "image_init", "resize_op", "input_height", "input_width")


def build_parser():
    doc = __doc__.split("\n\n")
    p = cli.make_parser(doc[0], epilog="\n\n".join(doc[1:]))
    p.add_argument("--weights_path", default=None,
                   help="experiment folder (weights/<exp>), a .keras file beside its config.json, or a model "
                        "file outside any experiment (then say what it is with --model_name, --classes, ...) "
                        "(default: the most recent experiment in weights/)")
    p.add_argument("--test_dir", "--test_images", dest="test_dir", default=None,
                   help="images to predict (default: the dataset's test_image)")
    p.add_argument("--val_images", default=None, help="images to score with --mIOU (older spelling)")
    p.add_argument("--label_dir", "--val_annotations", dest="label_dir", default=None,
                   help="labels for --mIOU (default: the dataset's test_label)")
    p.add_argument("--output", "--output_path", dest="output", default=None,
                   help="output folder (default: <experiment>/predictions)")
    p.add_argument("--mIOU", action=cli.BoolFlag, default=False,
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
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, default=None,
                   help="how the .keras model runs (--backend keras): auto = onnxruntime on a cached, "
                        "parity-checked ONNX copy when there is no GPU, the export extra is installed and it "
                        "measured faster, else Keras; keras; onnx = the ONNX copy or an error "
                        "(default: $KSEG_RUNTIME, else auto)")
    g = p.add_argument_group("what the model is (checked against config.json; needed for a bare model file)")
    g.add_argument("--model_name", default=None)
    g.add_argument("--n_classes", "--classes", dest="n_classes", type=cli.positive_int, default=None)
    g.add_argument("--image_init", choices=C.IMAGE_INITS, default=None)
    g.add_argument("--resize_op", type=int, choices=C.RESIZE_OPS, default=None)
    g.add_argument("--input_height", type=cli.positive_int, default=None)
    g.add_argument("--input_width", type=cli.positive_int, default=None)
    return p


def latest_experiment(root="weights"):
    from kseg.experiment import latest_experiment as _latest

    return _latest(root)


def _default_dir(cfg, arg, sub, flag):
    if arg:
        return arg
    dataset = cfg.dataset
    if not dataset:
        raise DataError(f"the experiment's config.json names no dataset; pass {flag}")
    return os.path.join(dataset, sub)


def _folders(args, defaults, config):
    """``(test_dir, label_dir)`` from the flags, the legacy defaults or the experiment's
    dataset; their files are listed (and paired) here, before any model is loaded."""
    from kseg.predict import folder_items

    if args.mIOU and args.val_images:
        if args.test_dir and os.path.abspath(args.test_dir) != os.path.abspath(args.val_images):
            print(f"note: --mIOU scores --val_images {args.val_images}; --test_images {args.test_dir} is not used")
        args.test_dir = args.val_images
    test_dir = args.test_dir or defaults.get("test_dir") or _default_dir(config, None, "test_image", "--test_dir")
    label_dir = None
    if args.mIOU:
        label_dir = args.label_dir or defaults.get("label_dir") or _default_dir(config, None, "test_label",
                                                                                "--label_dir")
    folder_items(test_dir, label_dir)
    return test_dir, label_dir


def _is_bare_model_file(path):
    from kseg.experiment import is_experiment

    return bool(path) and os.path.isfile(path) and not is_experiment(os.path.dirname(os.path.abspath(path)))


def check_against_experiment(args, config):
    """A one-line error when a describing flag differs from what the experiment recorded."""
    diffs = [f"--{'classes' if k == 'n_classes' else k} {getattr(args, k)} (experiment: {config[k]})"
             for k in DESCRIBING if getattr(args, k) is not None and getattr(args, k) != config[k]]
    if diffs:
        raise ConfigError(f"these options differ from the experiment's config.json: {'; '.join(diffs)}; drop "
                          "them (the experiment says how its model was trained)")


def _bare_model_predictor(args, **kw):
    from kseg.experiment import load_weights_file, weights_config
    from kseg.predict import Predictor
    from kseg.runtime import keras_runner

    missing = [f"--{n}" for n in ("model_name", "n_classes") if getattr(args, n) is None]
    if missing:
        raise ConfigError(f"{args.weights_path} is a model file outside any kseg experiment; say what it is with "
                          f"{' and '.join(missing).replace('--n_classes', '--classes')}")
    if args.backend != "keras":
        raise ConfigError("--backend needs an experiment folder (exported files live there)")
    if args.runtime == "onnx":
        raise ConfigError("--runtime onnx needs an experiment folder (the ONNX copy is cached there); "
                          "use --runtime keras for a model file outside any experiment")
    from kseg.models import model_spec

    model_spec(args.model_name)  # an unknown name lists the valid ones
    cfg = weights_config(args.weights_path, model_name=args.model_name, n_classes=args.n_classes,
                         **{k: getattr(args, k) if getattr(args, k) is not None else LEGACY_DEFAULTS[k]
                            for k in ("input_height", "input_width", "image_init", "resize_op")})
    run = keras_runner(model=load_weights_file(args.weights_path, cfg))
    run.runtime_note = "a model file outside any experiment" if args.runtime != "keras" else "--runtime keras"
    pred = Predictor(run, cfg, **kw)
    pred.folder = os.path.dirname(os.path.abspath(args.weights_path))
    return pred


def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.start_engine()
    from kseg.experiment import resolve_weights
    from kseg.predict import Predictor, format_timing, predict_folder

    opts = dict(mode=args.mode, tile=args.tile, stride=args.stride, flip=args.flip, batch_size=args.batch_size)
    bare = _is_bare_model_file(args.weights_path)
    if bare:
        pred = _bare_model_predictor(args, **opts)
        defaults = LEGACY_DEFAULTS
    else:
        weights = args.weights_path or latest_experiment()
        if args.weights_path is None:
            print(f"using the most recent experiment: {weights}")
        # the flags and the folders are checked before the model is loaded (and, with
        # --runtime auto, converted): a bad flag or folder fails at once
        config = resolve_weights(weights)[2]
        check_against_experiment(args, config)
        defaults = {}
        test_dir, label_dir = _folders(args, defaults, config)
        pred = Predictor.from_experiment(weights, backend=args.backend, model_file=args.model_file,
                                         runtime=args.runtime, **opts)
    if bare:
        test_dir, label_dir = _folders(args, defaults, pred.config)
    print(pred.runtime_line())
    out_dir = args.output or defaults.get("output") or os.path.join(pred.folder, "predictions")
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
