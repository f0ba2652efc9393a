"""Reproduce the README's results tables on real data, from scratch.

    # 1. build the kseg dataset folders data/{horse,isbi,dubai} from ../shared/datasets
    python scripts/reproduce.py prepare all
    # 2. train + evaluate every run of a table (runs already finished are skipped)
    python scripts/reproduce.py run horse-models     # every registered model, weizmann-horse
    python scripts/reproduce.py run isbi-losses      # U-Net with every loss, ISBI 2012 membranes
    python scripts/reproduce.py run dubai            # two models, Dubai aerial, slide inference
    # 3. (re)write results/<table>.md (and the README's copy with --readme) from the logs
    python scripts/reproduce.py table horse-models --readme
    # 4. image | ground truth | prediction panels for the README
    python scripts/reproduce.py figure isbi-losses ce 24 27 --output docs/img/isbi_ce.png

Every run is one ``scripts/train.py`` command and one ``scripts/test.py --mIOU`` command
(printed before it runs); the experiment goes to ``weights/reproduce/<table>/<run>`` and
its small logs (``config.json``, ``history.csv``, ``report.json``) are copied to
``results/<table>/<run>/``. The recipes (sizes, epochs, batch, optimiser) are the
constants below and are written into ``results/<table>.md``. The splits are fixed by
file name and listed in ``results/splits/``.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time


from kseg.cli.common import make_parser, run_main
from kseg.errors import ReproduceError

from kseg.cli.common import REPO
DEFAULT_SOURCE = os.path.join(os.path.dirname(REPO), "shared", "datasets")
RESULTS = os.path.join(REPO, "results")

# every loss of kseg.losses, each alone (weighted_ce with median-frequency weights)
LOSSES = ("ce", "weighted_ce", "b_focal", "c_focal", "dice", "bce_dice", "ce_dice", "g_dice", "jaccard",
          "bce_jaccard", "ce_jaccard", "tversky", "f_tversky", "lovasz")

COMMON = ["--optimizer_name", "adam", "--learning_rate", "1e-3", "--seed", "0", "--verbose", "2"]

RECIPES = {
    "horse-models": {
        "dataset": "horse",
        "title": "Every model on weizmann-horse",
        "runs": "models",  # one run per registered model
        "loss": "ce",
        "train": ["--input_height", "96", "--input_width", "96", "--epochs", "10",
                  "--train_batch_size", "8", "--val_batch_size", "8"],
        "test": ["--mode", "resize"],
        "checkpoint": "best.keras",
        # off-recipe runs (model and table label; their flags in run_args): deeplab_v2 (VGG16
        # without BatchNorm) diverges from scratch at Adam 1e-3; the same recipe at 1e-4
        "extra_runs": {"deeplab_v2-lr1e-4": {"model": "deeplab_v2", "label": "Adam 1e-4, off-recipe"}},
        "run_args": {"deeplab_v2-lr1e-4": ["--learning_rate", "1e-4"]},
        "describe": "96x96 (images resized; predictions resized back and scored at each image's "
                    "original size), 10 epochs, batch 8, Adam 1e-3, cross-entropy, online augmentation "
                    "(scale 0.75-1.25, flip, crop), random initialisation (no pretrained encoders: no "
                    "downloads), every model at its default width, best epoch by validation mIoU",
    },
    "isbi-losses": {
        "dataset": "isbi",
        "title": "Every loss on ISBI 2012 membranes (U-Net)",
        "runs": "losses",
        "model": "unet",
        "train": ["--model_option", "base_filters=16", "--input_height", "256", "--input_width", "256",
                  "--train_crops", "4", "--epochs", "20", "--train_batch_size", "4", "--no-validate"],
        "test": ["--mode", "whole"],
        "checkpoint": "last.keras",
        "describe": "U-Net with base_filters=16 (1.9M parameters), random 256x256 crops at full "
                    "resolution (4 per image per epoch, after scale 0.75-1.25 and flip), 20 epochs, "
                    "batch 4, Adam 1e-3, no validation split (24 train / 6 test): the last epoch is "
                    "evaluated, on the whole 512x512 test images",
    },
    "dubai": {
        "dataset": "dubai",
        "title": "Two models on Dubai aerial imagery (6 classes)",
        "runs": ("unet", "deeplabv3plus"),
        # per-run flags, after the recipe's (argparse keeps the last): a half-width U-Net and
        # DeepLabV3+ on MobileNetV2 (the ResNet-50 default is ~4x slower per crop on this CPU)
        "run_args": {"unet": ["--model_option", "base_filters=32"],
                     "deeplabv3plus": ["--model_option", "backbone=mobilenetv2"]},
        "loss": "ce",
        "train": ["--input_height", "256", "--input_width", "256", "--train_crops", "4", "--epochs", "15",
                  "--train_batch_size", "8", "--val_batch_size", "8"],
        "test": ["--mode", "slide"],
        "checkpoint": "best.keras",
        "describe": "U-Net with base_filters=32 and DeepLabV3+ with a MobileNetV2 backbone (random "
                    "initialisation), random 256x256 crops at full resolution (4 per tile per epoch, after "
                    "scale 0.75-1.25 and flip), 15 epochs, batch 8, Adam 1e-3, cross-entropy, black pixels "
                    "ignored, best epoch by validation mIoU (centre crops); evaluated on the full tiles "
                    "(509x544 to 2149x1480) with sliding-window inference (256x256 windows, stride 170)",
    },
}




# --------------------------------------------------------------------------------------
# prepare: the kseg dataset folders
# --------------------------------------------------------------------------------------

def _horse_split(stem):
    """weizmann-horse: by the number in the file name: n % 10 in {0, 5} -> test,
    3 -> val, else train (70/10/20)."""
    n = int(re.sub(r"\D", "", stem))
    return "test" if n % 10 in (0, 5) else ("val" if n % 10 == 3 else "train")


def _isbi_split(stem):
    """isbi2012-membrane: images 0-23 train, 24-29 test (24/6; no val)."""
    return "train" if int(stem) < 24 else "test"


def _write_split_list(name, assignment):
    os.makedirs(os.path.join(RESULTS, "splits"), exist_ok=True)
    path = os.path.join(RESULTS, "splits", f"{name}.txt")
    with open(path, "w", encoding="utf-8") as f:
        for split in ("train", "val", "test"):
            for stem in sorted(assignment.get(split, [])):
                f.write(f"{split}\t{stem}\n")
    return path


def _binary_dataset(name, image_dir, mask_dir, out, split_fn, classes, to_index):
    import numpy as np
    from PIL import Image

    from kseg.data.io import write_label
    from kseg.data.layout import IMAGE_EXTENSIONS, write_class_files

    for d in (image_dir, mask_dir):
        if not os.path.isdir(d):
            raise ReproduceError(f"{d} not found; pass --source (the folder holding the shared datasets)")
    masks = {os.path.splitext(f)[0]: os.path.join(mask_dir, f) for f in os.listdir(mask_dir)
             if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS}  # weizmann-horse's masks are JPEGs
    pairs = [(os.path.join(image_dir, f), masks.get(os.path.splitext(f)[0])) for f in sorted(os.listdir(image_dir))
             if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    unmatched = [os.path.basename(ip) for ip, mp in pairs if mp is None]
    if unmatched or len(pairs) != len(masks):
        raise ReproduceError(f"{image_dir} and {mask_dir} do not pair by file stem ({len(pairs)} images, "
                             f"{len(masks)} masks; unmatched: {', '.join(unmatched[:5]) or 'masks'})")
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    assignment = {}
    for ip, mp in pairs:
        stem = os.path.splitext(os.path.basename(ip))[0]
        split = split_fn(stem)
        assignment.setdefault(split, []).append(stem)
        for kind in ("image", "label"):
            os.makedirs(os.path.join(tmp, f"{split}_{kind}"), exist_ok=True)
        ext = os.path.splitext(ip)[1].lower()
        shutil.copyfile(ip, os.path.join(tmp, f"{split}_image", stem + ext))
        mask = np.asarray(Image.open(mp).convert("L"))
        write_label(os.path.join(tmp, f"{split}_label", stem + ".png"), to_index(mask).astype(np.uint8))
    write_class_files(tmp, classes)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    lst = _write_split_list(name, assignment)
    print(f"{out}: " + ", ".join(f"{k} {len(v)}" for k, v in sorted(assignment.items())) + f" (split: {lst})")


def prepare(name, source, data_dir):
    out = os.path.join(data_dir, name)
    if name == "horse":
        src = os.path.join(source, "weizmann-horse")
        # JPEG-compressed binary masks: threshold at 128 (255 = horse)
        _binary_dataset(name, os.path.join(src, "gray"), os.path.join(src, "figure_ground"), out, _horse_split,
                        ["background", "horse"], lambda m: m >= 128)
    elif name == "isbi":
        src = os.path.join(source, "isbi2012-membrane", "train")
        # label 0 = membrane, 255 = cell interior; the membrane is the segmented class (1)
        _binary_dataset(name, os.path.join(src, "image"), os.path.join(src, "label"), out, _isbi_split,
                        ["cell", "membrane"], lambda m: m < 128)
    elif name == "dubai":
        from kseg.data.color_tables import named_table
        from kseg.data.colors import convert_color_dataset

        src = os.path.join(source, "dubai-aerial")
        if not os.path.isdir(src):
            raise ReproduceError(f"{src} not found; pass --source (the folder holding the shared datasets)")
        tiles = sorted(t for t in os.listdir(src) if os.path.isdir(os.path.join(src, t, "images")))
        summary = convert_color_dataset([os.path.join(src, t, "images") for t in tiles],
                                        [os.path.join(src, t, "masks") for t in tiles], out,
                                        named_table("dubai"), split=(0.8, 0.1, 0.1), seed=0, overwrite=True)
        assignment = {}
        for split in ("train", "val", "test"):
            d = os.path.join(out, f"{split}_image")
            if os.path.isdir(d):
                assignment[split] = [os.path.splitext(f)[0] for f in os.listdir(d)]
        lst = _write_split_list(name, assignment)
        print(f"{out}: " + ", ".join(f"{k} {len(v)}" for k, v in sorted(assignment.items()))
              + f" (split: {lst}); pixels of unknown colours: {(summary.get('unknown') or {}).get('pixels', 0)}")
    else:
        raise ReproduceError(f"unknown dataset {name!r}; choose horse, isbi, dubai or all")


# --------------------------------------------------------------------------------------
# run: train + evaluate
# --------------------------------------------------------------------------------------

def run_names(table):
    r = RECIPES[table]
    if r["runs"] == "models":
        from kseg.models import list_models

        names = list(list_models())
    elif r["runs"] == "losses":
        names = list(LOSSES)
    else:
        names = list(r["runs"])
    return names + list(r.get("extra_runs", {}))


def _extra(table, run):
    return RECIPES[table].get("extra_runs", {}).get(run, {})


def commands(table, run, data_dir, save_root):
    """The train.py and test.py commands of one run."""
    r = RECIPES[table]
    model = _extra(table, run).get("model", r.get("model", run))
    loss = r.get("loss", run)
    exp = os.path.join(save_root, table, run)
    train = [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--dataset_name", r["dataset"],
             "--data_dir", data_dir, "--model_name", model, "--loss", loss, "--train_save_path",
             os.path.join(save_root, table), "--exp_name", run, *COMMON, *r["train"],
             *r.get("run_args", {}).get(run, [])]
    if loss == "weighted_ce":
        train += ["--class_weights", "auto"]
    test = [sys.executable, os.path.join(REPO, "scripts", "test.py"), "--weights_path",
            os.path.join(exp, r["checkpoint"]), "--mIOU", "--output", os.path.join(exp, "test"), *r["test"]]
    return exp, train, test


def _epochs_of(cmd):
    return int(cmd[cmd.index("--epochs") + 1])


def _done_epochs(exp):
    try:
        with open(os.path.join(exp, "state.json")) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _show(cmd):
    return " ".join(os.path.relpath(c, REPO) if os.path.isabs(c) and c.startswith(REPO) else
                    ("python" if c == sys.executable else c) for c in cmd)


def _call(cmd, log):
    print("$ " + _show(cmd), flush=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ " + _show(cmd) + "\n")
        f.flush()
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if p.returncode != 0:
        raise ReproduceError(f"command failed (exit {p.returncode}); see {log}")


def run_one(table, run, data_dir, save_root, force=False):
    exp, train, test = commands(table, run, data_dir, save_root)
    dest = os.path.join(RESULTS, table, run)
    if os.path.isfile(os.path.join(dest, "report.json")) and not force:
        print(f"{table}/{run}: done (results/{table}/{run}/report.json); --force to redo")
        return
    os.makedirs(exp, exist_ok=True)
    log = os.path.join(exp, "reproduce.log")
    done = 0 if force else _done_epochs(exp)
    t0 = time.time()
    if done < _epochs_of(train):
        _call(train + (["--resume"] if done else ["--overwrite"]), log)
    _call(test, log)
    os.makedirs(dest, exist_ok=True)
    for name, src in (("config.json", os.path.join(exp, "config.json")),
                      ("history.csv", os.path.join(exp, "history.csv")),
                      ("report.json", os.path.join(exp, "test", "report.json"))):
        shutil.copyfile(src, os.path.join(dest, name))
    with open(os.path.join(dest, "commands.txt"), "w", encoding="utf-8") as f:
        f.write(_show(train) + "\n" + _show(test) + "\n")
    print(f"{table}/{run}: finished in {(time.time() - t0) / 60:.1f} min", flush=True)


# --------------------------------------------------------------------------------------
# table: results/<table>.md from the logs
# --------------------------------------------------------------------------------------

def _row(table, run):
    d = os.path.join(RESULTS, table, run)
    with open(os.path.join(d, "report.json")) as f:
        rep = json.load(f)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(d, "history.csv")) as f:
        hist = list(csv.DictReader(f))
    times = sorted(float(h["epoch_time_s"]) for h in hist if h.get("epoch_time_s"))
    per_class = rep["per_class"]
    opts = ", ".join(f"{k}={v}" for k, v in sorted((cfg.get("model_kwargs") or {}).items()))
    row = {"run": run, "label": _extra(table, run).get("label"), "model": cfg["model_name"], "options": opts,
           "loss": cfg["loss"], "params": cfg.get("params"),
           "pixel_accuracy": rep["pixel_accuracy"], "mean_iou": rep["mean_iou"],
           "per_class": {c["name"]: c["iou"] for c in per_class}, "epochs": len(hist),
           "epoch_s": times[len(times) // 2] if times else None,
           "dtype_policy": cfg.get("dtype_policy")}
    if rep["n_classes"] == 2:
        fg = per_class[1]
        row.update(fg_iou=fg["iou"], fg_dice=fg["dice"])
    return row


def _fmt(v, digits=3):
    return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def make_table(table):
    r = RECIPES[table]
    names = [n for n in run_names(table) if os.path.isfile(os.path.join(RESULTS, table, n, "report.json"))]
    missing = [n for n in run_names(table) if n not in names]
    rows = [_row(table, n) for n in names]
    lines = [f"Recipe: {r['describe']}. Dataset: `data/{r['dataset']}` "
             f"(`python scripts/reproduce.py prepare {r['dataset']}`; split in `results/splits/{r['dataset']}.txt`). "
             f"Regenerate: `python scripts/reproduce.py run {table}`.", ""]
    if not rows:
        lines.append("Not run yet.")
    elif table == "dubai":
        classes = list(rows[0]["per_class"])
        lines.append("| model | params | mIoU | pixel acc. | " + " | ".join(classes) + " | s/epoch |")
        lines.append("|---|---:|---:|---:|" + "---:|" * len(classes) + "---:|")
        for x in rows:
            name = f"`{x['model']}`" + (f" ({x['options']})" if x["options"] else "")
            lines.append(f"| {name} | {_params(x)} | {_fmt(x['mean_iou'])} | {_fmt(x['pixel_accuracy'])} | "
                         + " | ".join(_fmt(x["per_class"][c]) for c in classes) + f" | {_fmt(x['epoch_s'], 0)} |")
    else:
        key = "loss" if r["runs"] == "losses" else "model"
        lines.append(f"| {key} | pixel acc. | mIoU | {_fg_name(rows)} IoU | {_fg_name(rows)} dice | "
                     "params | s/epoch |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for x in sorted(rows, key=lambda x: -x["mean_iou"]):
            name = f"`{x[key]}`" + (f" ({x['label']})" if x["label"] else "")
            lines.append(f"| {name} | {_fmt(x['pixel_accuracy'])} | {_fmt(x['mean_iou'])} | "
                         f"{_fmt(x.get('fg_iou'))} | {_fmt(x.get('fg_dice'))} | {_params(x)} | "
                         f"{_fmt(x['epoch_s'], 0)} |")
    if missing and rows:
        lines += ["", "Not run yet: " + ", ".join(f"`{m}`" for m in missing) + "."]
    text = "\n".join(lines) + "\n"
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{table}.md"), "w", encoding="utf-8") as f:
        f.write(f"# {r['title']}\n\n" + text)
    return text


def _fg_name(rows):
    return list(rows[0]["per_class"])[1] if rows else "foreground"


def _params(x):
    return f"{x['params'] / 1e6:.2f}M" if x.get("params") else "n/a"


def update_readme(table, text, readme=os.path.join(REPO, "README.md")):
    start, end = f"<!-- results:{table}:start -->", f"<!-- results:{table}:end -->"
    with open(readme, encoding="utf-8") as f:
        s = f.read()
    if start not in s or end not in s:
        raise ReproduceError(f"README.md has no {start} ... {end} block; add one where the table goes")
    i, j = s.index(start) + len(start), s.index(end)
    with open(readme, "w", encoding="utf-8") as f:
        f.write(s[:i] + "\n" + text + s[j:])


def figure(table, run, stems, out, data_dir, save_root, width=256):
    """One PNG with a row per test image: the image, the ground truth and the prediction
    (each blended over the image with the experiment's palette), ``width`` px per panel."""
    import numpy as np
    from PIL import Image

    from kseg.data.io import read_image, read_label
    from kseg.data.palette import overlay

    r = RECIPES[table]
    exp = os.path.join(save_root, table, run)
    with open(os.path.join(exp, "config.json")) as f:
        cfg = json.load(f)
    palette = np.asarray(cfg["palette"], np.uint8)
    ds = os.path.join(data_dir, r["dataset"])
    names = {os.path.splitext(f)[0]: f for f in os.listdir(os.path.join(ds, "test_image"))}
    rows = []
    for stem in stems:
        if stem not in names:
            raise ReproduceError(f"{stem!r} is not a test image of {ds}; choose from {', '.join(sorted(names)[:8])} ...")
        img = read_image(os.path.join(ds, "test_image", names[stem]))
        gt = read_label(os.path.join(ds, "test_label", stem + ".png"))
        pred = read_label(os.path.join(exp, "test", "masks", stem + ".png"))
        panels = [img, overlay(img, gt, palette, ignore_index=255), overlay(img, pred, palette)]
        if cfg["n_classes"] == 2:  # binary: paint the foreground only, keep the image visible
            panels[1] = np.where((gt == 1)[..., None], panels[1], img)
            panels[2] = np.where((pred == 1)[..., None], panels[2], img)
        h = round(img.shape[0] * width / img.shape[1])
        rows.append(np.concatenate([np.asarray(Image.fromarray(p).resize((width, h), Image.BILINEAR))
                                    for p in panels], axis=1))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    # a 256-colour palette keeps README figures small (about a third of the RGB size)
    Image.fromarray(np.concatenate(rows, axis=0)).quantize(256).save(out, optimize=True)
    print(f"wrote {out} (image | ground truth | {run} prediction)")


# --------------------------------------------------------------------------------------

def build_parser():
    p = make_parser(__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("prepare", help="build data/<name> from the shared datasets")
    pr.add_argument("name", choices=("horse", "isbi", "dubai", "all"))
    pr.add_argument("--source", default=DEFAULT_SOURCE, help="folder holding the shared datasets")
    pr.add_argument("--data_dir", default=os.path.join(REPO, "data"))
    ru = sub.add_parser("run", help="train and evaluate the runs of a table")
    ru.add_argument("table", choices=tuple(RECIPES))
    ru.add_argument("--only", default=None, help="comma-separated run names (models or losses)")
    ru.add_argument("--data_dir", default=os.path.join(REPO, "data"))
    ru.add_argument("--save_root", default=os.path.join(REPO, "weights", "reproduce"))
    ru.add_argument("--force", action="store_true", help="redo runs that already have results")
    fi = sub.add_parser("figure", help="image | ground truth | prediction panels of test images")
    fi.add_argument("table", choices=tuple(RECIPES))
    fi.add_argument("run", help="a run of the table (model or loss name)")
    fi.add_argument("stems", nargs="+", help="test image names without extension")
    fi.add_argument("--output", required=True, help="PNG to write, e.g. docs/img/isbi_ce.png")
    fi.add_argument("--width", type=int, default=256, help="pixels per panel")
    fi.add_argument("--data_dir", default=os.path.join(REPO, "data"))
    fi.add_argument("--save_root", default=os.path.join(REPO, "weights", "reproduce"))
    ta = sub.add_parser("table", help="write results/<table>.md from the logs")
    ta.add_argument("table", choices=tuple(RECIPES))
    ta.add_argument("--readme", action="store_true", help="also replace the table's block in README.md")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "prepare":
        for name in (("horse", "isbi", "dubai") if args.name == "all" else (args.name,)):
            prepare(name, args.source, args.data_dir)
        return 0
    if args.command == "run":
        names = run_names(args.table)
        if args.only:
            want = [n.strip() for n in args.only.split(",") if n.strip()]
            bad = [n for n in want if n not in names]
            if bad:
                raise ReproduceError(f"--only: {', '.join(bad)} not in table {args.table} ({', '.join(names)})")
            names = want
        ds = os.path.join(args.data_dir, RECIPES[args.table]["dataset"])
        if not os.path.isdir(ds):
            raise ReproduceError(f"{ds} does not exist; run: python scripts/reproduce.py prepare "
                                 f"{RECIPES[args.table]['dataset']}")
        for n in names:
            run_one(args.table, n, args.data_dir, args.save_root, force=args.force)
        print(make_table(args.table))
        return 0
    if args.command == "figure":
        figure(args.table, args.run, args.stems, args.output, args.data_dir, args.save_root, args.width)
        return 0
    text = make_table(args.table)
    if args.readme:
        update_readme(args.table, text)
    print(text)
    return 0


if __name__ == "__main__":
    run_main(main)
