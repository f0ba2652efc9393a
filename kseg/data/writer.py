"""The dataset writer every converter uses (labelme, COCO, colour-coded masks).

It writes ``<root>/<split>_image|_label|_viz`` folders in a staging folder and
swaps them in when the conversion succeeded (:class:`kseg.files.StagedDir`), and
``classes.txt``/``dataset.json`` through the one writer of :mod:`kseg.data.layout`.
"""

import os
import shutil
import tempfile

from kseg.config import IGNORE_INDEX
from kseg.data.layout import (
    CLASSES_TXT,
    DATASET_JSON,
    KINDS,
    SPLITS,
    check_class_names,
    read_class_files,
    split_dir,
    write_class_files,
)
from kseg.errors import DataError
from kseg.files import STAGING_PREFIX, non_empty_dir, replace_dir, set_default_mode


class DatasetWriter:
    """Write a dataset folder so that a failure never leaves a partial dataset behind.

    Everything is written into a hidden staging folder; :meth:`commit` moves the
    finished ``<split>_<kind>`` folders and the class files into ``root``. If
    ``root`` did not exist, the whole staging folder is renamed to ``root`` in one
    step. Used as a context manager it commits on success and deletes the
    staging folder on error.

    Args:
        root: the dataset folder (``data/<name>``).
        splits: the splits this conversion owns. Their ``_image``, ``_label`` and
            ``_viz`` folders must not exist (non-empty) unless ``overwrite``; with
            ``overwrite`` they are all replaced (an owned split that ends up empty
            is removed, so no stale files from an earlier run remain).
        overwrite: allow replacing existing split folders and class files.
    """

    def __init__(self, root, splits=SPLITS, overwrite=False):
        self.root = os.path.abspath(root)
        self.splits = tuple(splits)
        self.overwrite = overwrite
        self.classes = None
        self.counts = {}
        self._committed = False
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise DataError(f"output {self.root} exists and is not a folder; choose another output")
        conflicts = [f"{s}_{k}" for s in self.splits for k in KINDS if non_empty_dir(split_dir(self.root, s, k))]
        if conflicts and not overwrite:
            raise DataError(
                f"output {self.root} already holds {', '.join(conflicts)}; choose another output "
                "or pass --overwrite to replace them"
            )
        self._fresh = not os.path.exists(self.root)
        parent = os.path.dirname(self.root)
        os.makedirs(parent, exist_ok=True)
        if self._fresh:
            self.stage = tempfile.mkdtemp(prefix=f".{os.path.basename(self.root)}{STAGING_PREFIX}", dir=parent)
        else:
            self.stage = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root)

    # -- paths -----------------------------------------------------------------------
    def folder(self, split, kind):
        """The staged folder for ``<split>_<kind>`` (created on first use)."""
        if split not in self.splits:
            raise ValueError(f"split {split!r} is not one of this writer's splits {self.splits}")
        d = split_dir(self.stage, split, kind)
        os.makedirs(d, exist_ok=True)
        return d

    def path(self, split, kind, filename):
        """A staged file path ``<split>_<kind>/<filename>``."""
        self.counts[(split, kind)] = self.counts.get((split, kind), 0) + 1
        return os.path.join(self.folder(split, kind), filename)

    # -- writing ---------------------------------------------------------------------
    def copy_image(self, split, src, stem=None):
        """Copy an image file byte for byte (no re-encoding) under ``stem`` + its extension."""
        ext = os.path.splitext(src)[1].lower()
        if ext == ".jpeg":
            ext = ".jpg"
        stem = stem or os.path.splitext(os.path.basename(src))[0]
        dst = self.path(split, "image", stem + ext)
        shutil.copyfile(src, dst)
        return dst

    def write_image_bytes(self, split, stem, data, ext):
        """Write already-encoded image bytes as ``<stem><ext>``."""
        dst = self.path(split, "image", stem + ext)
        with open(dst, "wb") as f:
            f.write(data)
        return dst

    def label_path(self, split, stem):
        """The staged label path ``<split>_label/<stem>.png``; write it with
        :func:`kseg.data.io.write_label` (a palette PNG of class indices)."""
        return self.path(split, "label", stem + ".png")

    def set_classes(self, names, palette=None, ignore_index=IGNORE_INDEX, extra=None):
        """Remember the class list written to ``classes.txt`` / ``dataset.json`` on commit."""
        check_class_names(names)
        self.classes = (list(names), palette, ignore_index, extra)

    # -- commit / abort --------------------------------------------------------------
    def _class_conflict(self):
        if self.classes is None or self._fresh or self.overwrite:
            return None
        existing = read_class_files(self.root).classes
        if existing is not None and existing != [str(n) for n in self.classes[0]]:
            return (
                f"{self.root} already has a class list ({len(existing)} classes) that differs "
                f"from this conversion's ({len(self.classes[0])}); use the same class list or pass --overwrite"
            )
        return None

    def commit(self):
        """Move the staged folders and class files into ``root``."""
        if self._committed:
            return
        try:
            conflict = self._class_conflict()
        except DataError:
            self.abort()
            raise
        if conflict:
            self.abort()
            raise DataError(conflict)
        if self.classes is not None:
            names, palette, ignore_index, extra = self.classes
            write_class_files(self.stage, names, palette, ignore_index, extra)
        if self._fresh:
            set_default_mode(self.stage)  # else mkdtemp's private 0700 stays on the dataset folder
            os.replace(self.stage, self.root)
        else:
            for s in self.splits:
                for k in KINDS:
                    staged, final = split_dir(self.stage, s, k), split_dir(self.root, s, k)
                    if os.path.isdir(staged):
                        replace_dir(staged, final)
                    elif self.overwrite and os.path.isdir(final):
                        shutil.rmtree(final)
            for f in (CLASSES_TXT, DATASET_JSON):
                staged = os.path.join(self.stage, f)
                if os.path.exists(staged):
                    os.replace(staged, os.path.join(self.root, f))
            shutil.rmtree(self.stage, ignore_errors=True)
        self._committed = True

    def abort(self):
        """Delete the staging folder; ``root`` is left as it was."""
        shutil.rmtree(self.stage, ignore_errors=True)
        self._committed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
            return False
        self.commit()
        return False
