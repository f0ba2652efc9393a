"""Measure models on this machine: parameters, FLOPs, training and inference speed, memory,
input-pipeline speed, and the machine's own convolution rate, in one run.

    python scripts/benchmark.py --model_name unet --input_height 224 --input_width 224 --batch_size 4
    python scripts/benchmark.py --model_name all --input_height 224 --input_width 224 --no-baseline
    python scripts/benchmark.py --model_name unet,enet --inference     # Keras vs --runtime auto, batch 1
    python scripts/benchmark.py --peers enet,deeplabv3plus --steps 5    # next to PyTorch and kseg's variants

Prints one JSON line per measured configuration (``{"model": ...}``) and a Markdown
table. With ``--model_name unet`` (default) a straightforward Keras 3 U-Net of the same
architecture is measured side by side (``--baseline``). Each configuration runs in its
own subprocess; see kseg/benchmark.py for what every figure means.
"""

import datetime
import json
import os
import sys


from kseg.cli import common as cli
from kseg.errors import BenchmarkError

from kseg.cli.common import REPO
DEFAULT_PIPELINE_DATA = os.path.join(os.path.dirname(REPO), "shared", "datasets", "dubai-aerial")


def build_parser():
    p = cli.make_parser(__doc__.split("\n\n")[0])
    p.add_argument("--model_name", default="unet",
                   help="a registered model, a comma-separated list, or 'all'")
    p.add_argument("--model_option", type=cli.key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="extra builder argument for the kseg models (and the baseline's base_filters/depth)")
    p.add_argument("--input_height", type=cli.positive_int, default=224)
    p.add_argument("--input_width", type=cli.positive_int, default=None, help="default: as --input_height")
    p.add_argument("--batch_size", type=cli.positive_int, default=4, help="training batch size")
    p.add_argument("--n_classes", type=cli.n_classes, default=2)
    p.add_argument("--steps", type=cli.positive_int, default=10, help="timed training steps (median taken)")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    p.add_argument("--infer_runs", type=cli.positive_int, default=20, help="timed batch-1 predictions")
    p.add_argument("--no_inference", action="store_true", help="skip the inference measurements")
    p.add_argument("--inference", action="store_true",
                   help="only compare batch-1 CPU inference through Keras and through the automatic runtime "
                        "(kseg test --runtime auto), interleaved in one process per model, for --infer_runs "
                        "rounds; prints speed-up ratios (training is not measured)")
    p.add_argument("--baseline", default="auto", choices=("auto", "on", "off"),
                   help="also measure a straightforward Keras 3 U-Net (auto: when unet is measured)")
    p.add_argument("--jit_compile", default="auto", choices=("auto", "on", "off"),
                   help="XLA for the kseg models' train step (as scripts/train.py)")
    p.add_argument("--precision", default="auto", choices=("auto", "float32", "mixed", "both"),
                   help="kseg models as scripts/train.py trains them by default (auto: mixed precision on "
                        "GPUs with tensor cores and CPUs with AMX, else float32), in float32, in mixed "
                        "precision (mixed_bfloat16 on a CPU with native bfloat16, mixed_float16 on GPU), "
                        "or both float32 and mixed; the baseline is always float32 (Keras' default)")
    p.add_argument("--steps_per_execution", type=cli.positive_int, default=1)
    p.add_argument("--intra_threads", type=int, default=0, help="TensorFlow intra-op threads (0 = default)")
    p.add_argument("--inter_threads", type=int, default=0, help="TensorFlow inter-op threads (0 = default)")
    p.add_argument("--conv_peak", action=cli.argparse.BooleanOptionalAction, default=True,
                   help="measure the machine's 3x3 conv GFLOP/s")
    p.add_argument("--interleave_rounds", type=int, default=8,
                   help="with the baseline: also alternate baseline and kseg unet steps in one process for "
                        "this many rounds (robust to a noisy machine; 0 = skip)")
    p.add_argument("--conv_seconds", type=cli.positive_float, default=1.0,
                   help="minimum seconds per timed conv-peak repeat")
    p.add_argument("--conv_repeats", type=cli.positive_int, default=5)
    p.add_argument("--pipeline_data", default=DEFAULT_PIPELINE_DATA,
                   help="dataset folder for the input-pipeline measurement (kseg layout, or "
                        "Tile*/images + Tile*/masks colour masks); skipped when absent; '' to skip")
    p.add_argument("--pipeline_size", type=cli.positive_int, default=512, help="pipeline output size (square)")
    p.add_argument("--pipeline_images", type=int, default=64, help="images used (0 = all)")
    p.add_argument("--pipeline_batch_size", type=cli.positive_int, default=8)
    p.add_argument("--pipeline_epochs", type=cli.positive_int, default=3)
    p.add_argument("--rss_epochs", type=int, default=0,
                   help="also train on --pipeline_data for this many epochs and report RSS after each")
    p.add_argument("--rss_images", type=int, default=32, help="images for the --rss_epochs run")
    p.add_argument("--timeout", type=cli.positive_int, default=3600, help="seconds per configuration")
    p.add_argument("--json_out", default=None, help="also append the JSON lines to this file")
    p.add_argument("--workdir", default=None,
                   help="folder for converted pipeline labels (default: a temp folder)")
    from kseg import bench_peers

    bench_peers.add_arguments(p)  # --peers, --variants, --profile: kseg next to PyTorch and its own variants
    return p


def _models(arg):
    from kseg.models import list_models, model_spec

    if arg == "all":
        return list_models()
    names = [n.strip() for n in arg.split(",") if n.strip()]
    for n in names:
        model_spec(n)  # unknown name -> KsegError listing the valid ones
    return names


def _fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(rows):
    """A Markdown table of the per-model results."""
    head = ["model", "params (M)", "GFLOP fwd", "train img/s", "train GFLOP/s", "% conv peak",
            "latency b1 ms (p50/p90)", "infer img/s b8", "peak RSS MB", "XLA", "dtype"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            out.append(f"| {r.get('model')} | error: {r['error'][:80]} |" + " |" * (len(head) - 2))
            continue
        frac = r.get("fraction_of_conv_peak")
        lat = (f"{_fmt(r.get('infer_latency_ms_median'), 1)} / {_fmt(r.get('infer_latency_ms_p90'), 1)}"
               if r.get("infer_latency_ms_median") is not None else "-")
        out.append("| " + " | ".join([
            r["model"], _fmt(r["params"] / 1e6, 2), _fmt(r["forward_gflop"], 2),
            _fmt(r["train_images_per_s"], 2), _fmt(r["train_gflop_per_s"], 0),
            _fmt(100 * frac, 0) if frac is not None else "-", lat, _fmt(r.get("infer_images_per_s_b8"), 2),
            _fmt(r["peak_rss_mb"], 0), "on" if r["jit_compile"] else "off", r["dtype_policy"],
        ]) + " |")
    return "\n".join(out)


def _emit(obj, json_out):
    line = json.dumps(obj)
    print(line, flush=True)
    if json_out:
        with open(json_out, "a") as f:
            f.write(line + "\n")


def _inference(args, models, width, opts):
    """``--inference``: Keras vs the automatic runtime per model (kseg.benchmark.inference_runtimes)."""
    from kseg.benchmark import format_inference, load_avg, run_in_subprocess

    rows = []
    for m in models:
        print(f"# {m}: Keras vs --runtime auto at batch 1, {args.input_height}x{width} (load average "
              f"{load_avg()})", file=sys.stderr, flush=True)
        res = run_in_subprocess("inference_runtimes", {
            "model": m, "input_height": args.input_height, "input_width": width, "n_classes": args.n_classes,
            "model_kwargs": opts, "rounds": args.infer_runs, "warmup": max(1, args.warmup),
            "intra_threads": args.intra_threads, "inter_threads": args.inter_threads, "workdir": args.workdir,
        }, timeout=args.timeout)
        res.setdefault("model", m)
        res["date"] = datetime.datetime.now().isoformat(timespec="seconds")
        rows.append(res)
        _emit(res, args.json_out)
    print(format_inference(rows))
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    from kseg.benchmark import dataset_n_classes, dataset_pairs, load_avg, machine_info, run_in_subprocess

    width = args.input_width or args.input_height
    models = _models(args.model_name)
    opts = dict(args.model_option)
    from kseg import bench_peers

    if bench_peers.wanted(args):  # checks its models' options and sizes itself (--peers KEYS: not --model_name's)
        return bench_peers.main_from_cli(args, models, width, opts, emit=lambda o: _emit(o, args.json_out))
    from kseg.models import model_spec
    from kseg.models.registry import check_input_size, parse_model_options

    for m in models:
        typed = parse_model_options(m, opts)  # a wrong option or type is one line here, not in a subprocess
        # the size rule of the model WITH these options (pspnet output_stride=16 takes multiples of 16)
        check_input_size(m, args.input_height, width, *model_spec(m).size_rule(**typed))
    if len(models) == 1:
        opts = typed  # typed values for the plain Keras baseline too
    if args.inference:
        return _inference(args, models, width, opts)
    baseline = args.baseline == "on" or (args.baseline == "auto" and "unet" in models)
    date = datetime.datetime.now().isoformat(timespec="seconds")
    machine = machine_info()
    threads = {"intra_threads": args.intra_threads, "inter_threads": args.inter_threads}
    print(f"# kseg benchmark {date} on {machine.get('cpu')} ({machine.get('logical_cpus')} logical CPUs), "
          f"TF {machine.get('tensorflow')}, Keras {machine.get('keras')}; load average {load_avg()}",
          file=sys.stderr, flush=True)

    conv = None
    conv_opts = {"min_seconds": args.conv_seconds, "repeats": args.conv_repeats}
    if args.conv_peak:
        conv = run_in_subprocess("conv_peak", dict(threads, **conv_opts), timeout=args.timeout)
        if "error" in conv:
            print(f"warning: conv peak measurement failed: {conv['error']}", file=sys.stderr)
            conv = None
        else:
            print(f"# conv peak {conv['gflop_per_s']} GFLOP/s (per shape {conv['per_shape']})",
                  file=sys.stderr, flush=True)
    peak = conv["gflop_per_s"] if conv else None
    peaks = {"float32": peak}
    if conv and args.precision != "float32":
        from kseg.hardware import precision_policy

        policy = precision_policy(True)
        if policy != "float32":
            dt = policy.split("_", 1)[1]
            c16 = run_in_subprocess("conv_peak", dict(threads, dtype=dt, **conv_opts), timeout=args.timeout)
            if "error" not in c16:
                peaks[policy] = c16["gflop_per_s"]
                print(f"# conv peak {dt} {c16['gflop_per_s']} GFLOP/s (per shape {c16['per_shape']})",
                      file=sys.stderr, flush=True)

    def peak_for(policy):
        return peaks.get(policy or "float32")

    pipe = None
    if args.pipeline_data and os.path.isdir(args.pipeline_data):
        pairs = dataset_pairs(args.pipeline_data, limit=args.pipeline_images or None, workdir=args.workdir)
        pipe = run_in_subprocess("pipeline", {
            "pairs": pairs, "size": [args.pipeline_size, args.pipeline_size],
            "batch_size": args.pipeline_batch_size, "epochs": args.pipeline_epochs, **threads,
        }, timeout=args.timeout)
        pipe.update({"dataset": os.path.abspath(args.pipeline_data), "size": args.pipeline_size})
        print(f"# input pipeline: {json.dumps(pipe)}", file=sys.stderr, flush=True)
    elif args.pipeline_data:
        print(f"# input pipeline: skipped ({args.pipeline_data} not found)", file=sys.stderr, flush=True)

    configs = []
    if baseline:
        configs.append(("unet", "plain", False))
    mixed_runs = {"auto": [None], "float32": [False], "mixed": [True], "both": [False, True]}[args.precision]
    configs += [(m, "kseg", mp) for m in models for mp in mixed_runs]
    rows = []
    for name, impl, mixed in configs:
        cfg = {
            "model": name, "impl": impl, "input_height": args.input_height, "input_width": width,
            "batch_size": args.batch_size, "n_classes": args.n_classes, "model_kwargs": opts,
            "steps": args.steps, "warmup": args.warmup, "jit_compile": args.jit_compile,
            "mixed_precision": mixed,
            "steps_per_execution": args.steps_per_execution if impl == "kseg" else 1,
            "inference": not args.no_inference, "infer_runs": args.infer_runs, **threads,
        }
        res = run_in_subprocess("model", cfg, timeout=args.timeout)
        res.setdefault("model", name if impl == "kseg" else "plain_unet")
        res.setdefault("impl", impl)
        if "error" not in res:
            pk = peak_for(res.get("dtype_policy"))
            res["conv_peak_gflop_per_s"] = pk
            res["fraction_of_conv_peak"] = (round(res["train_gflop_per_s"] / pk, 3)
                                            if pk and res.get("train_gflop_per_s") else None)
        res["pipeline_images_per_s"] = pipe.get("images_per_s") if pipe else None
        res["machine"] = machine
        res["date"] = date
        rows.append(res)
        _emit(res, args.json_out)

    base = [r for r in rows if r.get("impl") == "plain" and "error" not in r]
    for a in [r for r in rows if r.get("model") == "unet" and r.get("impl") == "kseg" and "error" not in r]:
        if not base:
            break
        b = base[0]
        if a["forward_gflop"] != b["forward_gflop"] or a["params"] != b["params"] - b["redundant_bias_params"]:
            raise BenchmarkError(
                f"the baseline is not the same architecture: params {b['params']:,} (with "
                f"{b['redundant_bias_params']:,} conv biases before BN) vs kseg {a['params']:,}, "
                f"forward GFLOP {b['forward_gflop']} vs {a['forward_gflop']}"
            )
        cmp = {"comparison": "kseg unet vs plain Keras 3 U-Net",
               "speedup_train": round(a["train_images_per_s"] / b["train_images_per_s"], 3),
               "rss_ratio": round(a["peak_rss_mb"] / b["peak_rss_mb"], 3),
               "kseg_dtype": a["dtype_policy"], "baseline_dtype": b["dtype_policy"],
               "kseg_jit": a["jit_compile"], "baseline_jit": b["jit_compile"], "date": date}
        _emit(cmp, args.json_out)
    if base and args.interleave_rounds > 0:
        r = run_in_subprocess("interleaved", {
            "input_height": args.input_height, "input_width": width, "batch_size": args.batch_size,
            "n_classes": args.n_classes, "model_kwargs": opts, "rounds": args.interleave_rounds,
            "warmup": max(1, args.warmup), "mixed": args.precision != "float32", **threads,
        }, timeout=args.timeout)
        _emit({"comparison": "interleaved steps, one process", **r, "date": date}, args.json_out)
    if pipe and rows:
        fastest = max((r["train_images_per_s"] for r in rows if "error" not in r), default=None)
        if fastest:
            _emit({"pipeline": pipe, "fastest_model_train_images_per_s": fastest,
                   "pipeline_over_fastest": round(pipe["images_per_s"] / fastest, 2), "date": date},
                  args.json_out)

    if args.rss_epochs > 0:
        if not (args.pipeline_data and os.path.isdir(args.pipeline_data)):
            print("# RSS over epochs: skipped (no --pipeline_data)", file=sys.stderr)
        else:
            pairs = dataset_pairs(args.pipeline_data, limit=args.rss_images or None, workdir=args.workdir)
            for name, impl, mixed in configs:
                r = run_in_subprocess("rss_epochs", {
                    "model": name, "impl": impl, "mixed_precision": mixed, "pairs": pairs,
                    "input_height": args.input_height,
                    "input_width": width, "batch_size": args.batch_size,
                    "n_classes": dataset_n_classes(args.pipeline_data),
                    "model_kwargs": opts, "epochs": args.rss_epochs, **threads,
                }, timeout=args.timeout)
                r.update({"rss_epochs": args.rss_epochs, "date": date})
                _emit(r, args.json_out)

    print()
    print(f"kseg benchmark, {date}, {machine.get('cpu')} ({machine.get('logical_cpus')} logical CPUs), "
          f"TensorFlow {machine.get('tensorflow')}, Keras {machine.get('keras')}; input "
          f"{args.input_height}x{width}, training batch {args.batch_size}; conv peak "
          f"{_fmt(peak, 0)} GFLOP/s; input pipeline {pipe['images_per_s'] if pipe else '-'} images/s "
          f"at {args.pipeline_size}x{args.pipeline_size}")
    print()
    print(table(rows))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    cli.run_main(main)
