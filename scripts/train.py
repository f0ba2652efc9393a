"""Train a segmentation model: python scripts/train.py --model_name unet --loss dice"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kseg import cli  # noqa: E402


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
