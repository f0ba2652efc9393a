"""Shared command-line pieces: every command composes its parser from these.

Commands call :func:`run_main`, which turns a :class:`kseg.errors.KsegError`
into a one-line ``error: ...`` message on stderr and exit status 2.
"""

import argparse
import json
import os
import sys

from kseg import config
from kseg.errors import KsegError  # noqa: E402

#: The source checkout kseg runs from (the maintainers' tools -- reproduce, benchmark --
#: read and write results/ and README.md there).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))



class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2 (argparse's own convention)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


#: Program name shown in usage and error lines; ``kseg <command>`` when run through the
#: console script, else argparse's default (the script's file name).
_PROG = None


def prefer_backend(name, force=False):
    """Choose the Keras backend for this command, if Keras is not imported yet.

    Commands that run no model (evaluate, visualize) prefer the light ``numpy``
    backend; export needs ``tensorflow`` (``force`` overrides an inherited
    ``KERAS_BACKEND``). Called at the start of ``main``, never at import, so
    importing a command module changes nothing for its caller.
    """
    if "keras" in sys.modules:
        return
    if force:
        os.environ["KERAS_BACKEND"] = name
    else:
        os.environ.setdefault("KERAS_BACKEND", name)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option; the epilog (examples) printed as written."""


def make_parser(description, epilog=None):
    """The parser of a command: one-line errors, exit status 2, defaults in ``--help``."""
    return _Parser(description=description, epilog=epilog, prog=_PROG, formatter_class=_Formatter)


def _argtype(check):
    """An argparse type from one of :mod:`kseg.config`'s value checks (one owner of each rule)."""
    def convert(v):
        try:
            return check(v, "value")
        except KsegError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None
    convert.__name__ = check.__name__.replace("as_", "")
    return convert


positive_int = _argtype(config.as_positive_int)
non_negative_int = _argtype(config.as_non_negative_int)
positive_float = _argtype(config.as_positive_float)
#: ``--n_classes``: 1 .. config.MAX_CLASSES (labels are at most 16-bit)
n_classes = _argtype(config.as_n_classes)


def key_value(v):
    """``key=value`` with value parsed as JSON when possible (``base_filters=32``)."""
    if "=" not in v:
        raise argparse.ArgumentTypeError(f"expected key=value, got {v!r}")
    k, val = v.split("=", 1)
    if not k.strip():
        raise argparse.ArgumentTypeError(f"expected key=value with a key, got {v!r}")
    try:
        val = json.loads(val)
    except ValueError:
        pass
    return k.strip(), val


class BoolFlag(argparse.Action):
    """``--name`` (true), ``--no-name`` (false) and ``--name true|false|1|0|yes|no`` (the
    spelling of older command lines, e.g. ``--validate True``)."""

    def __init__(self, option_strings, dest, default=None, help=None, **kw):
        names = list(option_strings)
        names += [o.replace("--", "--no-", 1) for o in option_strings if o.startswith("--")]
        super().__init__(names, dest, nargs="?", default=default, help=help, metavar="BOOL")

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string.startswith("--no-"):
            if values is not None:
                parser.error(f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
            return
        try:
            setattr(namespace, self.dest, True if values is None else config.as_bool(values))
        except KsegError:
            parser.error(f"argument {option_string}: expected true or false, got {values!r}")


class KeyValues(argparse.Action):
    """Repeatable ``--name KEY=VALUE`` collected into a dict."""

    def __call__(self, parser, namespace, values, option_string=None):
        d = dict(getattr(namespace, self.dest, None) or {})
        k, v = values
        d[k] = v
        setattr(namespace, self.dest, d)


_GROUP_TITLES = {"model": "model", "data": "data", "training": "training", "optimizer": "optimizer and schedule",
                 "speed": "speed and hardware"}


def add_config_args(p, cls=None, aliases=None):
    """Add one flag per field of a config dataclass (default :class:`kseg.config.TrainConfig`).

    Defaults stay in the dataclass: a flag that is not given leaves its name out of the
    parsed namespace (``argparse.SUPPRESS``), so :func:`config_from_args` knows which
    options the user set. ``aliases`` maps a field to extra spellings
    (``{"n_classes": ["--classes"]}``).
    """
    cls = cls or config.TrainConfig
    aliases = aliases or {}
    groups = {}
    default = cls()
    for f in cls.fields():
        meta = f.metadata
        gname = meta.get("group", "training")
        if gname not in groups:
            groups[gname] = p.add_argument_group(_GROUP_TITLES.get(gname, gname))
        g = groups[gname]
        d = getattr(default, f.name)
        shown = "auto" if d is None else (",".join(f"{k}={v}" for k, v in d.items()) or "none"
                                          if isinstance(d, dict) else d)
        help_ = f"{meta.get('help', '')} (default: {shown})".replace("%", "%%")
        names = [f"--{f.name}"] + list(aliases.get(f.name, ()))
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=help_)
        flag = meta.get("flag", "value")
        if flag == "bool":
            g.add_argument(*names, action=BoolFlag, **kw)
        elif flag == "kv":
            g.add_argument(*names, type=key_value, action=KeyValues, metavar=meta.get("metavar") or "KEY=VALUE",
                           **kw)
        elif flag == "resume":
            g.add_argument(*names, nargs="?", const=True, metavar="PATH", **kw)
        else:
            check = meta.get("check")
            choices = meta.get("choices")
            typ = _argtype(check) if check else (type(choices[0]) if choices else
                                                  (type(d) if d is not None else str))
            if f.name == "ignore_index" or f.name == "seed":
                typ = int
            g.add_argument(*names, type=typ, choices=choices, metavar=meta.get("metavar"), **kw)
    return p


def config_from_args(args, cls=None):
    """``(config, explicit)``: the config dataclass from parsed flags, and the names the user gave."""
    cls = cls or config.TrainConfig
    given = {k: v for k, v in vars(args).items() if k in {f.name for f in cls.fields()}}
    return cls.from_dict(given), set(given)


def start_engine(verbose=None):
    """Import Keras/TensorFlow quietly (see :func:`kseg.hardware.start_engine`); ``--verbose 3``
    of a command (or ``KSEG_ENGINE_LOG=1``) shows the engine's start-up log."""
    from kseg.hardware import start_engine as _start

    return _start(show_log=True if verbose is not None and verbose >= 3 else None)


def run_main(main, argv=None, prog=None):
    """Run ``main(argv)``; user errors become a one-line message and exit status 2."""
    global _PROG
    _PROG = prog
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines
    try:
        rc = main(argv)
    except KsegError as e:
        msg = str(e).replace("\n", " ")
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # output piped into head & co.: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    sys.exit(rc or 0)
