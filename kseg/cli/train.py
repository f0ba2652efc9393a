"""Train a segmentation model: kseg train --model_name unet --loss dice

Every option is a field of kseg.config.TrainConfig (its defaults are there).
Options come from, in increasing priority: a paper's recipe (--recipe NAME; --recipe
list lists them), a file (--config FILE: JSON or YAML options, a recipe, or an
experiment's config.json to repeat its run), and the flags given.

The spellings of older command lines are accepted: --validate True,
--multi_gpus False, --resume weights/unet.xx.hdf5 (a model file starts a new run
from its weights; an experiment folder or its last.keras continues that run).
"""

from kseg.cli import common as cli


def build_parser():
    doc = __doc__.split("\n\n")
    p = cli.make_parser(doc[0], epilog="\n\n".join(doc[1:]))
    g = p.add_argument_group("recipe")
    g.add_argument("--recipe", default=None, metavar="NAME",
                   help="start from a paper's recipe (kseg/recipes/<model>.yaml); 'list' lists them")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="JSON or YAML file of training options (or a recipe, or weights/<exp>/config.json)")
    cli.add_config_args(p)
    return p


def resolve_options(args):
    """``(TrainConfig, explicit names)`` from --recipe, --config and the flags, in that priority."""
    from kseg import recipes
    from kseg.config import TrainConfig

    opts, explicit = {}, set()
    if args.recipe:
        opts.update(recipes.recipe_options(recipes.load_recipe(args.recipe)))
        recipes.check_options(opts, f"recipe {args.recipe}")
    if args.config:
        file_opts = recipes.config_file_options(args.config)
        recipes.check_options(file_opts, args.config)
        opts.update(file_opts)
    explicit |= set(opts)
    flags = {k: v for k, v in vars(args).items() if k in {f.name for f in TrainConfig.fields()}}
    opts.update(flags)
    explicit |= set(flags)
    return TrainConfig.from_dict(opts), explicit


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.recipe == "list":
        from kseg.recipes import format_recipe_list

        print(format_recipe_list())
        return 0
    config, explicit = resolve_options(args)
    if not config.resume:  # data errors in seconds, before TensorFlow starts (resume: its recorded data)
        from kseg.data.dataset import check_training_data, resolve_dataset

        resolved, root, info, n_classes, ignore_index = resolve_dataset(config, explicit)
        check_training_data(root, info, n_classes, ignore_index, config.validate, channels=resolved.input_channels)
    cli.start_engine(config.verbose)
    from kseg.training import train

    train(config, explicit=explicit)
    return 0
