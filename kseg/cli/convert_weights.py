"""Convert published pretrained weights into a kseg weights file.

    kseg convert_weights hrnet hrnetv2_w18_imagenet_pretrained.pth [--width 18] [--output FILE.npz]
    kseg convert_weights segformer mit_b0.pth [--variant b0] [--output FILE.npz]

hrnet: the official HRNet-W18/W32/W48 ImageNet checkpoints (HRNet/HRNet-Image-Classification,
README 'ImageNet pretrained models'). Every tensor is mapped onto kseg's hrnet backbone or
dropped by name (the classification head: incre_modules, downsamp_modules, final_layer,
classifier; BN num_batches_tracked); an unknown key, a missing key or a wrong shape stops
the conversion and writes nothing. segformer: the official MiT-B0..B5 ImageNet-1K checkpoints
(NVlabs/SegFormer, README 'ImageNet-1K pretrained weights'), the same way (dropped: the
classification head). torch is used when installed, but is not needed.
"""

from kseg.cli import common as cli
from kseg.errors import EncoderConfigError

EPILOG = """examples:
  kseg convert_weights hrnet hrnetv2_w18_imagenet_pretrained.pth
      -> $KERAS_HOME/models/kseg_hrnetv2_w18_imagenet.npz (KERAS_HOME default ~/.keras),
         loaded by hrnet(width=18, encoder_weights="imagenet")
         or kseg train --model_name hrnet --model_option encoder_weights=imagenet
  kseg convert_weights hrnet hrnetv2_w48_imagenet_pretrained.pth --width 48 --output w48.npz
  kseg convert_weights segformer mit_b2.pth
      -> $KERAS_HOME/models/kseg_mit_b2_imagenet.npz, loaded by segformer(variant="b2", encoder_weights="imagenet")
"""


def build_parser():
    p = cli.make_parser(__doc__.split("\n\n")[0], epilog=EPILOG)
    p.add_argument("model", choices=["hrnet", "segformer"], help="the model family of the checkpoint")
    p.add_argument("checkpoint", help="the official checkpoint (.pth/.pt, either PyTorch format) or an .npz state dict")
    p.add_argument("--width", type=cli.positive_int, default=None,
                   help="HRNet width C (18, 32, 48); default: read from the checkpoint, checked against it")
    p.add_argument("--variant", default=None, choices=["b0", "b1", "b2", "b3", "b4", "b5"],
                   help="segformer: the MiT variant; default: read from the checkpoint, checked against it")
    p.add_argument("--output", default=None,
                   help="the .npz to write (default: where encoder_weights='imagenet' looks, "
                        "$KERAS_HOME/models/kseg_hrnetv2_w{C}_imagenet.npz)")
    p.add_argument("--no_torch", action="store_true",
                   help="read the checkpoint with kseg's own reader even when torch is installed")
    return p


def format_report(r):
    """The converter's report: where every key of the checkpoint went."""
    head = ", ".join(f"{k} {n}" for k, n in r["dropped_head"].items())
    weights = '"imagenet"' if r.get("default_location") else repr(r["output"])
    return "\n".join([
        f"converted {r['source']} (HRNet-W{r['width']}, {r['tensors']} tensors) -> {r['output']}",
        f"  mapped: {r['mapped']} tensors into {r['layers']} backbone layers",
        f"  dropped: classification head {sum(r['dropped_head'].values())} tensors ({head}); "
        f"BN num_batches_tracked {r['dropped_num_batches_tracked']}",
        "  unused: 0, missing: 0",
        f"  load with: hrnet(width={r['width']}, encoder_weights={weights}, symmetric_padding=True)",
    ])


def format_segformer_report(r):
    """The SegFormer converter's report: where every key of the checkpoint went."""
    weights = '"imagenet"' if r.get("default_location") else repr(r["output"])
    return "\n".join([
        f"converted {r['source']} (MiT-{r['variant'].upper()}, {r['tensors']} tensors) -> {r['output']}",
        f"  mapped: {r['mapped']} tensors into {r['layers']} encoder layers",
        f"  dropped: classification head {r['dropped_head']} tensors",
        "  unused: 0, missing: 0",
        f"  load with: segformer(variant={r['variant']!r}, encoder_weights={weights})",
    ])


def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.prefer_backend("numpy")  # the converter runs no model
    use_torch = False if args.no_torch else None
    if args.model == "segformer":
        if args.width is not None:
            raise EncoderConfigError("--width is an hrnet option; segformer takes --variant (or none: read from the checkpoint)")
        from kseg.models import segformer_weights

        report = segformer_weights.convert_checkpoint(args.checkpoint, output=args.output, variant=args.variant,
                                                      use_torch=use_torch)
        report["default_location"] = report["output"] == segformer_weights.default_weights_path(report["variant"])
        print(format_segformer_report(report))
        return 0
    if args.variant is not None:
        raise EncoderConfigError("--variant is a segformer option; hrnet takes --width (or none: read from the checkpoint)")
    from kseg.models import hrnet_weights

    report = hrnet_weights.convert_checkpoint(args.checkpoint, output=args.output, width=args.width,
                                              use_torch=use_torch)
    report["default_location"] = report["output"] == hrnet_weights.default_weights_path(report["width"])
    print(format_report(report))
    return 0


if __name__ == "__main__":
    cli.run_main(main)
