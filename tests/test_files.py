"""kseg.files: what the atomic writer publishes has the modes the umask gives new files and
folders (not mkstemp's 0600 / mkdtemp's 0700), and names that must stay one folder deep."""

import os
import stat
import subprocess
import sys
import threading

import pytest

from kseg import files
from kseg.errors import ConfigError, KsegError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UMASKS = [0o022, 0o077, 0o002]


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _tree_modes(root):
    """{relative path: mode} of ``root`` and everything in it."""
    out = {".": _mode(root)}
    for folder, dirs, names in os.walk(root):
        for n in dirs + names:
            p = os.path.join(folder, n)
            out[os.path.relpath(p, root)] = _mode(p)
    return out


# ------------------------------------------------------------------ reading the umask


@pytest.mark.parametrize("mask", UMASKS)
def test_current_umask_reads_without_changing_it(umask, mask):
    umask(mask)
    assert files.current_umask() == mask
    assert files.current_umask() == mask  # unchanged by reading


@pytest.mark.parametrize("mask", UMASKS)
def test_current_umask_without_proc(umask, monkeypatch, mask):
    umask(mask)
    monkeypatch.setattr(files, "_proc_umask", lambda: None)
    assert files.current_umask() == mask
    assert os.umask(mask) == mask  # restored after the read


def test_current_umask_from_threads(umask, monkeypatch):
    umask(0o027)
    monkeypatch.setattr(files, "_proc_umask", lambda: None)
    seen = []
    threads = [threading.Thread(target=lambda: seen.extend(files.current_umask() for _ in range(200)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(seen) == {0o027}
    assert files.current_umask() == 0o027


# ------------------------------------------------------------------ the writers


@pytest.mark.parametrize("mask", UMASKS)
def test_atomic_path_file_gets_the_umask_mode(tmp_path, umask, mask):
    umask(mask)
    target = tmp_path / "sub" / "config.json"
    with files.atomic_path(str(target)) as tmp:
        assert _mode(tmp) == 0o600  # private while it is written
        with open(tmp, "w") as f:
            f.write("{}")
    assert _mode(target) == 0o666 & ~mask
    assert _mode(tmp_path / "sub") == 0o777 & ~mask
    assert os.listdir(tmp_path / "sub") == ["config.json"]


def test_atomic_path_replacing_a_private_file(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "best.keras"
    target.write_text("old")
    os.chmod(target, 0o600)
    with files.atomic_path(str(target)) as tmp:
        with open(tmp, "w") as f:
            f.write("new")
    assert target.read_text() == "new" and _mode(target) == 0o644


@pytest.mark.parametrize("mask", UMASKS)
def test_staged_dir_gets_the_umask_mode(tmp_path, umask, mask):
    umask(mask)
    final = tmp_path / "out"
    with files.StagedDir(str(final)) as stage:
        os.makedirs(os.path.join(stage, "a"))
        with open(os.path.join(stage, "a", "x.png"), "wb") as f:
            f.write(b"x")
    modes = _tree_modes(str(final))
    assert modes == {".": 0o777 & ~mask, "a": 0o777 & ~mask, os.path.join("a", "x.png"): 0o666 & ~mask}


def test_staged_dir_replacing_an_old_folder(tmp_path, umask):
    umask(0o022)
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with files.StagedDir(str(final), overwrite=True) as stage:
        with open(os.path.join(stage, "new.txt"), "w") as f:
            f.write("new")
    assert os.listdir(final) == ["new.txt"] and _mode(final) == 0o755
    assert not [n for n in os.listdir(tmp_path) if n.startswith(files.STAGING_PREFIX)]


def test_replace_dir_publishes_a_mkdtemp_folder(tmp_path, umask):
    import tempfile

    umask(0o022)
    src = tempfile.mkdtemp(dir=tmp_path)
    assert _mode(src) == 0o700
    files.replace_dir(src, str(tmp_path / "experiment"))
    assert _mode(tmp_path / "experiment") == 0o755


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_a_converted_dataset_gets_the_umask_modes(tmp_path, umask, mask):
    import numpy as np

    from kseg.data.io import write_label
    from kseg.data.writer import DatasetWriter

    umask(mask)
    root = tmp_path / "data" / "conv"
    with DatasetWriter(str(root)) as w:
        write_label(w.label_path("train", "a"), np.zeros((4, 4), np.uint8))
        w.write_image_bytes("train", "a", b"\x89PNG", ".png")
        w.set_classes(["bg", "fg"])
    modes = _tree_modes(str(root))
    for rel, mode in modes.items():
        is_dir = os.path.isdir(os.path.join(root, rel))
        assert mode == (0o777 if is_dir else 0o666) & ~mask, (rel, oct(mode))
    assert {"classes.txt", "dataset.json", os.path.join("train_label", "a.png")} <= set(modes)


@pytest.mark.parametrize("mask", ["022", "077"])
def test_modes_in_a_fresh_process(tmp_path, mask):
    """The same in a process started with the umask (no state of this test process)."""
    code = (
        "import os, sys, stat\n"
        "from kseg.files import atomic_path, StagedDir\n"
        "d = sys.argv[1]\n"
        "with atomic_path(os.path.join(d, 'f.json')) as t:\n"
        "    open(t, 'w').write('{}')\n"
        "with StagedDir(os.path.join(d, 'folder')) as s:\n"
        "    pass\n"
        "print(oct(stat.S_IMODE(os.stat(os.path.join(d, 'f.json')).st_mode)),"
        " oct(stat.S_IMODE(os.stat(os.path.join(d, 'folder')).st_mode)))\n"
    )
    m = int(mask, 8)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(["sh", "-c", f'umask {mask} && exec "$0" -c "$1" "$2"', sys.executable, code,
                          str(tmp_path)], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == [oct(0o666 & ~m), oct(0o777 & ~m)]


# ------------------------------------------------------------------ child names


@pytest.mark.parametrize("name", ["run1", "unet_shapes", "unet_shapes.v2", "..x", "a..b", ".hidden", "exp 2"])
def test_check_child_name_accepts_plain_names(name):
    assert files.check_child_name(name, "--exp_name") == name


@pytest.mark.parametrize("name", ["../x", "..", ".", "", "   ", "/tmp/x", "a/b", "a\\b", "x/", "x\0y", None, 5])
def test_check_child_name_refuses_paths(name):
    with pytest.raises(ConfigError) as error:
        files.check_child_name(name, "--exp_name")
    assert isinstance(error.value, KsegError)
    msg = str(error.value)
    assert "\n" not in msg and msg.startswith("--exp_name ") and repr(name) in msg


def test_check_child_name_keeps_the_child_inside(tmp_path):
    base = str(tmp_path / "weights")
    for name in ("run1", "..x"):
        path = os.path.abspath(os.path.join(base, files.check_child_name(name)))
        assert os.path.dirname(path) == os.path.abspath(base)
