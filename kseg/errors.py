"""Exceptions with messages meant for users.

Every error a user can cause (a bad flag, a missing file, a label value out of
range) is raised as a :class:`KsegError` subclass whose message is one line that
names the file or value and says how to fix it. The scripts catch ``KsegError``,
print the message and exit with status 2 instead of showing a traceback.
"""


class KsegError(Exception):
    """Base class for errors caused by user input."""


class UnknownNameError(KsegError, ValueError):
    """An unknown model, loss, metric or option name."""


class InputShapeError(KsegError, ValueError):
    """An input size a model cannot take."""


class DataError(KsegError):
    """A problem with dataset files (missing pairs, unreadable files, bad labels)."""


class ExperimentError(KsegError):
    """A folder that does not hold a usable experiment."""


def unknown_name(kind, name, valid):
    """Build an :class:`UnknownNameError` listing the valid names."""
    return UnknownNameError(
        f"unknown {kind} {name!r}; valid {kind}s are: {', '.join(sorted(valid))}"
    )
