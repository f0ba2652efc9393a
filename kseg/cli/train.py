"""Train a segmentation model: python scripts/train.py --model_name unet --loss dice"""

from kseg.cli import common as cli


def build_parser():
    p = cli.make_parser(__doc__)
    cli.add_model_args(p)
    cli.add_data_args(p)
    cli.add_train_args(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from kseg.training import train

    train(args)
    return 0


if __name__ == "__main__":
    cli.run_main(main)
