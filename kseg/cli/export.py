"""Export a trained experiment to ONNX / SavedModel / TFLite, check it against Keras, benchmark runtimes.

python scripts/export.py --weights_path weights/unet_shapes --format onnx
python scripts/export.py --weights_path weights/unet_shapes --format tflite --int8 \
    --calibration_dir data/shapes/train_image
python scripts/export.py --weights_path weights/unet_shapes --benchmark
python scripts/export.py --model_name segnet --input_height 256 --input_width 256 --benchmark

Exported models take one float32 NHWC input "image" (normalised as config.json's image_init says,
at the training size) and return "probabilities" (B, H, W, n_classes). Files go next to the
experiment's config.json (model.onnx, saved_model/, model.tflite) unless --output is given, and are
written only after the parity check against the Keras model passes.
"""


from kseg.cli import common as cli
from kseg.errors import ExperimentError
from kseg.runtime import FORMATS


def non_negative_float(v):
    try:
        f = float(v)
    except ValueError:
        raise cli.argparse.ArgumentTypeError(f"expected a number >= 0, got {v!r}") from None
    if not f >= 0:
        raise cli.argparse.ArgumentTypeError(f"expected a number >= 0, got {v!r}")
    return f


def build_parser():
    p = cli.make_parser(__doc__.split("\n\n")[0])
    p.add_argument("--weights_path", default=None,
                   help="experiment folder (weights/<exp>) or a .keras file beside its config.json "
                        "(default: the most recent experiment in weights/)")
    p.add_argument("--format", nargs="+", choices=FORMATS, default=None,
                   help="export format(s) (default: onnx, unless only --benchmark is asked for)")
    p.add_argument("--output", default=None,
                   help="output file (onnx, tflite) or folder (savedmodel); default: in the experiment folder")
    p.add_argument("--opset", type=cli.positive_int, default=17, help="ONNX opset (13-18)")
    p.add_argument("--dynamic_batch", action=cli.argparse.BooleanOptionalAction, default=True,
                   help="dynamic batch axis (--no-dynamic_batch: batch 1)")
    p.add_argument("--dynamic_size", action="store_true",
                   help="dynamic height/width (models trained size-free only)")
    p.add_argument("--fp16", action="store_true",
                   help="float16 weights (TFLite; ONNX needs onnxconverter-common)")
    p.add_argument("--int8", action="store_true",
                   help="TFLite full-integer post-training quantisation (needs --calibration_dir)")
    p.add_argument("--calibration_dir", default=None,
                   help="images for int8 calibration, preprocessed like training (e.g. <dataset>/train_image)")
    p.add_argument("--calibration_limit", type=cli.positive_int, default=100,
                   help="at most this many calibration images")
    p.add_argument("--atol", type=non_negative_float, default=None,
                   help="parity: largest allowed |p_keras - p_exported| (default 1e-3 float32, 2e-2 fp16, 0.35 int8)")
    p.add_argument("--max_mismatch", type=non_negative_float, default=None,
                   help="parity: largest allowed share of pixels whose argmax differs "
                        "(default 0.001 float32, 0.01 fp16, 0.15 int8)")
    g = p.add_argument_group("benchmark")
    g.add_argument("--benchmark", action="store_true",
                   help="print a latency table: Keras vs onnxruntime vs TFLite (exports to a temp folder)")
    g.add_argument("--model_name", default=None,
                   help="benchmark an untrained registry model (default arguments) instead of --weights_path")
    g.add_argument("--model_option", type=cli.key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="extra builder argument for --model_name, repeatable")
    g.add_argument("--n_classes", type=cli.n_classes, default=2, help="classes of the --model_name model")
    g.add_argument("--input_height", type=cli.positive_int, default=None,
                   help="benchmark input height (default: the experiment's, else 256)")
    g.add_argument("--input_width", type=cli.positive_int, default=None,
                   help="benchmark input width (default: as --input_height)")
    g.add_argument("--batch_sizes", type=cli.positive_int, nargs="+", default=[1, 8])
    g.add_argument("--backends", nargs="+", choices=("keras",) + FORMATS, default=["keras", "onnx", "tflite"])
    g.add_argument("--runs", type=cli.positive_int, default=20, help="timed runs per measurement")
    g.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    g.add_argument("--threads", type=cli.positive_int, default=None,
                   help="onnxruntime/TFLite threads (default: runtime's choice / all cores)")
    return p


def latest_experiment(root="weights"):
    from kseg.experiment import latest_experiment as _latest

    return _latest(root)


def run_benchmark(args, weights):
    from kseg.export import benchmark_runtimes, format_benchmark

    common = dict(batch_sizes=args.batch_sizes, backends=args.backends, runs=args.runs,
                  warmup=max(0, args.warmup), opset=args.opset, threads=args.threads, atol=args.atol,
                  max_mismatch=args.max_mismatch)
    if args.model_name:
        from kseg.models import get_model

        h = args.input_height or 256
        w = args.input_width or h
        model = get_model(args.model_name, n_classes=args.n_classes, input_height=h, input_width=w,
                          **dict(args.model_option))
        cfg = {"model_name": args.model_name, "n_classes": args.n_classes, "input_height": h, "input_width": w}
        rows = benchmark_runtimes(model=model, config=cfg, size=(h, w), **common)
        title = f"{args.model_name} ({model.count_params():,} parameters), {h}x{w}"
    else:
        size = None
        if args.input_height:
            size = (args.input_height, args.input_width or args.input_height)
        rows = benchmark_runtimes(weights, size=size, **common)
        h, w = rows[0]["size"]
        title = f"{weights}, {h}x{w}"
    print(format_benchmark(rows, title=title + f"; median / p90 of {args.runs} runs after {args.warmup} warm-up"))


def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.prefer_backend("tensorflow", force=True)
    cli.start_engine()
    from kseg.export import INPUT_NAME, OUTPUT_NAME, export_model, format_parity

    formats = args.format or ([] if args.benchmark else ["onnx"])
    if len(formats) > 1 and args.output:
        raise ExperimentError("--output names one file; export one --format at a time with it")
    weights = None
    if formats or not args.model_name:
        weights = args.weights_path or latest_experiment()
        if args.weights_path is None:
            print(f"using the most recent experiment: {weights}")
    for fmt in formats:
        path, report = export_model(
            weights, fmt, output=args.output, opset=args.opset, dynamic_batch=args.dynamic_batch,
            dynamic_size=args.dynamic_size, fp16=args.fp16, int8=args.int8,
            calibration_dir=args.calibration_dir, atol=args.atol, max_mismatch=args.max_mismatch,
            calibration_limit=args.calibration_limit, return_report=True,
        )
        shape = ["batch" if d is None and i == 0 else "any" if d is None else d
                 for i, d in enumerate(report["input_shape"])]
        out_shape = shape[:3] + [report["n_classes"]]
        io = report["io_dtype"]
        print(f"wrote {path} ({fmt}, {report['precision']}): input {INPUT_NAME!r} {io} {shape} "
              f"-> output {OUTPUT_NAME!r} {io} {out_shape}")
        if io != "float32":
            print("note: int8 input/output: quantise with the scale and zero point stored in the file "
                  "(kseg's runner does it for you)")
        print(format_parity(report))
        for key in ("tolerance_note", "note"):
            if report.get(key):
                print(f"note: {report[key]}")
        extra = f" --model_file {path}" if args.output else ""
        print(f"evaluate it with: python scripts/test.py --weights_path {weights} --backend {fmt}{extra} --mIOU")
    if args.benchmark:
        run_benchmark(args, weights)
    return 0


if __name__ == "__main__":
    cli.run_main(main)
