"""Writing files and folders so that a reader never sees half of one.

* :func:`atomic_path` -- write a file under a temporary name, rename it into place.
* :class:`StagedDir` -- build a folder in a hidden staging folder, rename it into place.

The bottom of the house with :mod:`kseg.config` and :mod:`kseg.errors`: it imports
nothing else from kseg.
"""

import contextlib
import os
import re
import shutil
import tempfile

from kseg.errors import DataError

#: Prefix of the hidden staging folders (left only by a killed process; safe to delete).
STAGING_PREFIX = ".kseg-staging-"


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def non_empty_dir(path):
    return os.path.isdir(path) and any(not f.startswith(".") for f in os.listdir(path))


def replace_dir(src, dst):
    """Move folder ``src`` onto ``dst``; an existing ``dst`` is removed after the move."""
    if os.path.lexists(dst):
        trash = tempfile.mkdtemp(prefix=STAGING_PREFIX + "old-", dir=os.path.dirname(dst))
        os.replace(dst, os.path.join(trash, "old"))
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


class StagedDir:
    """A folder written in a hidden staging folder and renamed into place on success.

    ``with StagedDir(final) as tmp: ...write into tmp...`` leaves ``final``
    untouched when the block raises; on success the staged folder replaces
    ``final`` (the old one is removed only after the new one is complete).
    Refuses an existing non-empty ``final`` unless ``overwrite``.
    """

    def __init__(self, final, overwrite=False):
        self.final = os.path.abspath(final)
        if not overwrite and non_empty_dir(self.final):
            raise DataError(
                f"output folder {self.final} already exists and is not empty; choose another output "
                "or pass --overwrite to replace it"
            )
        parent = os.path.dirname(self.final)
        os.makedirs(parent, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent)

    def __enter__(self):
        return self.path

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return False
        replace_dir(self.path, self.final)
        return False


#: What :func:`atomic_path` names its temporary files: ``.<stem>.<8 random chars>.tmp<ext>``.
_PARTIAL_WRITE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[^.]+)?$")


def is_partial_write(name):
    """True for the name of a temporary file :func:`atomic_path` left behind (a killed write)."""
    return bool(_PARTIAL_WRITE.match(name))


def missing_dirs(path):
    """The folders ``os.makedirs(path)`` would create, deepest first."""
    out = []
    path = os.path.abspath(path)
    while path and not os.path.isdir(path):
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return out
