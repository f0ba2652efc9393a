"""Every exception kseg raises for a user's mistake, in one place.

Every error a user can cause (a bad flag, a missing file, a label value out of
range, a model option the model cannot take) is a :class:`KsegError` subclass
whose message is one line that names the file or value and says how to fix it.
The commands (:mod:`kseg.cli`) catch ``KsegError``, print the message and exit
with status 2 instead of showing a traceback; the demo answers a 4xx.

The subclasses also derive from the built-in exception a Python caller would
expect (``ValueError`` for bad values, ``OSError`` for unreadable weights), so
``except ValueError`` keeps working around the library calls.
"""


class KsegError(Exception):
    """Base class for errors caused by user input."""


class UnknownNameError(KsegError, ValueError):
    """An unknown model, loss, metric or option name."""


class InputShapeError(KsegError, ValueError):
    """An input size a model cannot take."""


class ConfigError(KsegError, ValueError):
    """A training or experiment option with a value kseg cannot use."""


class DataError(KsegError):
    """A problem with dataset files (missing pairs, unreadable files, bad labels)."""


class ExperimentError(KsegError):
    """A folder that does not hold a usable experiment."""


class ModelConfigError(KsegError, ValueError):
    """A model-builder option with a value the model cannot use (width, depth, stride, ...)."""


class EncoderConfigError(ModelConfigError):
    """An encoder option that cannot work (weights argument, output stride, widths)."""


class EncoderWeightsError(KsegError, OSError):
    """The ImageNet weights of an encoder could not be downloaded or read."""


class LossConfigError(KsegError, ValueError):
    """A loss asked for with options or inputs it cannot take."""


class MetricConfigError(KsegError, ValueError):
    """A metric asked for with arguments it cannot take."""


class ExportError(KsegError):
    """An export that cannot be done or that fails its parity check."""


class DistributeError(KsegError):
    """The requested distribution cannot be set up (no GPUs, bad TF_CONFIG, ...)."""


class UploadError(KsegError):
    """A bad upload to the demo; ``status`` is the HTTP status of the JSON error (400 or 413)."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


class BenchmarkError(KsegError):
    """A benchmark that cannot run as asked (a model that cannot take the size, a failed run)."""


class ReproduceError(KsegError):
    """A results table that cannot be prepared or run (missing source data, a failed command)."""


def unknown_name(kind, name, valid):
    """Build an :class:`UnknownNameError` listing the valid names."""
    return UnknownNameError(
        f"unknown {kind} {name!r}; valid {kind}s are: {', '.join(sorted(valid))}"
    )
