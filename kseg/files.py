"""Writing files and folders so that a reader never sees half of one.

* :func:`atomic_path` -- write a file under a temporary name, rename it into place.
* :class:`StagedDir` -- build a folder in a hidden staging folder, rename it into place.
* :func:`current_umask`, :func:`set_default_mode` -- the temporary names are made private
  (``mkstemp``: 0600, ``mkdtemp``: 0700); what is renamed into place gets the mode an
  ordinary ``open``/``mkdir`` would give it (``0666``/``0777`` less the umask).
* :func:`check_child_name` -- a name (``--exp_name``) that must stay one folder below its parent.

The bottom of the house with :mod:`kseg.config` and :mod:`kseg.errors`: it imports
nothing else from kseg.
"""

import contextlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import time

from kseg.errors import ConfigError, DataError

#: Prefix of the hidden staging folders (left only by a killed process; safe to delete).
STAGING_PREFIX = ".kseg-staging-"


_UMASK_LOCK = threading.Lock()


def _proc_umask():
    """The umask from ``/proc/self/status`` (Linux 4.7+), or None where it cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_umask():
    """The process umask, read without changing it where the system allows.

    Linux reports it in ``/proc/self/status``; elsewhere it is read with ``os.umask``
    (set, then restored at once, under a lock so that two kseg threads never see the
    temporary value; a file another thread creates in that instant gets at most the
    mode ``0o077`` allows, never a wider one).
    """
    mask = _proc_umask()
    if mask is not None:
        return mask
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def set_default_mode(path, umask=None):
    """Give ``path`` the mode a plain ``open`` (``0o666``) or ``mkdir`` (``0o777``) would give
    it under the umask (``0o644`` / ``0o755`` for the usual ``022``), which the private
    temporary files of ``mkstemp`` (0600) and folders of ``mkdtemp`` (0700) lack.
    A link or a missing path is left alone."""
    if os.path.islink(path) or not os.path.exists(path):
        return
    umask = current_umask() if umask is None else umask
    base = 0o777 if stat.S_ISDIR(os.stat(path).st_mode) else 0o666
    os.chmod(path, base & ~umask)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The file renamed into place has the mode the umask gives new files (``0o644``
    under ``022``), not ``mkstemp``'s private ``0o600``.
    """
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        set_default_mode(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def non_empty_dir(path):
    return os.path.isdir(path) and any(not f.startswith(".") for f in os.listdir(path))


def replace_dir(src, dst):
    """Move folder ``src`` onto ``dst``; an existing ``dst`` is removed after the move.

    ``src`` (a staging folder, made private by ``mkdtemp``) first gets the mode the umask
    gives new folders (:func:`set_default_mode`), so the published folder is as readable
    as one made with ``mkdir``.
    """
    set_default_mode(src)
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


def check_child_name(name, what="name"):
    """``name`` if it names one entry directly inside a folder (an experiment under
    ``--train_save_path``), else a one-line :class:`ConfigError`.

    Refused: a non-text or empty name, ``.`` and ``..``, a name with a path separator
    (``/`` or ``\\``, so also an absolute path and ``../x``), a drive (``C:x``) or a NUL.
    """
    problem = None
    if not isinstance(name, str):
        problem = "is not a name"
    elif not name.strip():
        problem = "is empty"
    elif name in (".", ".."):
        problem = "names the folder itself or its parent"
    elif "/" in name or "\\" in name or (os.altsep and os.altsep in name) or os.path.isabs(name):
        problem = "contains a path separator"
    elif os.path.splitdrive(name)[0]:
        problem = "names a drive"
    elif "\0" in name:
        problem = "contains a NUL character"
    if problem:
        raise ConfigError(f"{what} {name!r} {problem}; give a plain name for a folder directly inside its parent")
    return name


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


#: The owner file of a staging folder: which process (pid, host) writes it.
STAGE_OWNER = ".kseg-owner.json"
#: Seconds after which a staging folder without an owner is taken for a killed writer's.
STALE_TRASH_S = 600


def write_stage_owner(folder):
    """Record this process as the writer of staging folder ``folder``."""
    with open(os.path.join(folder, STAGE_OWNER), "w", encoding="utf-8") as fh:
        json.dump({"pid": os.getpid(), "host": socket.gethostname()}, fh)


def _alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # someone else's process, or not a pid we can judge: keep its folder
    return True


def sweep_stale_stages(parent):
    """Remove what killed writers left in ``parent``: staging folders whose process is gone
    (their owner file names it, on this host), and staging or replaced folders without
    an owner that are older than :data:`STALE_TRASH_S`."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(STAGING_PREFIX)]
    except OSError:
        return
    host = socket.gethostname()
    for name in names:
        path = os.path.join(parent, name)
        owner = os.path.join(path, STAGE_OWNER)
        try:
            if os.path.isfile(owner):
                with open(owner, encoding="utf-8") as fh:
                    who = json.load(fh)
                stale = who.get("host") == host and not _alive(who.get("pid"))
            else:  # a replaced folder (replace_dir) or a stage killed before its owner file
                stale = time.time() - os.path.getmtime(path) > STALE_TRASH_S
        except (OSError, ValueError, AttributeError):
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)


def remove_leftovers(folder, match, dirs=False):
    """Delete the entries of ``folder`` (not below it) whose name ``match(name)`` accepts --
    what a killed writer left; files only unless ``dirs``. Returns the names removed."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    gone = []
    for name in names:
        path = os.path.join(folder, name)
        if not match(name) or (os.path.isdir(path) and not dirs):
            continue
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            gone.append(name)
        except OSError:
            pass
    return gone
