"""kseg.data.layout: the one reader/writer of classes.txt / dataset.json, and the folder names."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from kseg.data.dataset import load_dataset_info
from kseg.data.doctor import check_dataset
from kseg.data.layout import (
    class_names_from_lines,
    find_split_dirs,
    read_class_file,
    read_class_files,
    split_dir,
    write_class_files,
)
from kseg.errors import DataError
from kseg.evaluation import parse_class_names


def _dataset(root):
    for kind in ("image", "label"):
        os.makedirs(split_dir(root, "train", kind))
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(os.path.join(root, "train_image", "a.png"))
    Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8)).save(os.path.join(root, "train_label", "a.png"))
    return root


def _three_readers(root):
    """The class list as training, the doctor and --class_names see it."""
    return [load_dataset_info(root).classes, check_dataset(root).class_names, parse_class_names(root)]


def test_the_former_readers_agree_on_a_labelme_classes_txt(tmp_path):
    root = _dataset(str(tmp_path / "ds"))
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("__ignore__\n_background_\nroad\n  sky \n\n")
    expected = ["_background_", "road", "sky"]  # __ignore__ is the ignore value, not a class
    for names in _three_readers(root):
        assert names == expected
    assert parse_class_names(os.path.join(root, "classes.txt")) == expected
    r = check_dataset(root)
    assert r.n_classes == 3 and "value_out_of_range" not in r.codes()


def test_the_former_readers_agree_on_dataset_json(tmp_path):
    root = _dataset(str(tmp_path / "ds"))
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump({"classes": ["__ignore__", "bg", {"name": "road"}, "sky"], "ignore_index": 255}, f)
    for names in _three_readers(root):
        assert names == ["bg", "road", "sky"]
    # a classes.txt saying the same thing with the __ignore__ line is no disagreement
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("__ignore__\nbg\nroad\nsky\n")
    assert read_class_files(root).problems == []
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("bg\nroad\n")
    files = read_class_files(root)
    assert files.classes == ["bg", "road", "sky"] and "list different classes" in files.problems[0]


def test_class_list_rule_errors():
    assert class_names_from_lines(["__ignore__", "a", "", " b "], "x") == ["a", "b"]
    with pytest.raises(DataError, match="x: __ignore__ must be the first line"):
        class_names_from_lines(["a", "__ignore__"], "x")
    with pytest.raises(DataError, match="_background_ must be the first class"):
        class_names_from_lines(["__ignore__", "a", "_background_"], "x")


def test_strict_and_lenient_reading(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\n")
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="dataset.json is not valid JSON"):
        read_class_files(str(tmp_path))
    with pytest.raises(DataError, match="not valid JSON"):
        load_dataset_info(str(tmp_path))
    files = read_class_files(str(tmp_path), strict=False)  # the doctor still sees classes.txt
    assert files.classes == ["a", "b"] and "not valid JSON" in files.problems[0]
    with pytest.raises(DataError, match="no 'classes' list"):
        (tmp_path / "m.json").write_text("{}")
        read_class_file(str(tmp_path / "m.json"))


def test_writer_round_trip_and_refusals(tmp_path):
    names = ["_background_", "road", "sky"]
    write_class_files(str(tmp_path), names, palette=[[1, 2, 3]], ignore_index=7, extra={"source": "t"})
    assert (tmp_path / "classes.txt").read_text() == "_background_\nroad\nsky\n"
    files = read_class_files(str(tmp_path))
    assert files.classes == names and files.ignore_index == 7 and files.meta["source"] == "t"
    assert files.palette[0] == [1, 2, 3] and files.palette[1] == [128, 0, 0]  # padded with VOC colours
    for bad, match in ((["__ignore__", "a"], "ignore value, not a class"), (["a", "_background_"], "only be class 0"),
                       (["a", " b"], "surrounding spaces"), (["a", ""], "non-empty"), (["a\nb"], "line break")):
        with pytest.raises(DataError, match=match):
            write_class_files(str(tmp_path / "no"), bad)


def test_split_folders(tmp_path):
    for name in ("test_image", "train_label", "train_image", "extra_image", "notes"):
        os.makedirs(tmp_path / name)
    dirs = find_split_dirs(str(tmp_path))
    assert list(dirs) == ["train", "test", "extra"]
    assert dirs["train"] == {"image": split_dir(str(tmp_path), "train", "image"),
                             "label": str(tmp_path / "train_label")}
    assert dirs["test"]["label"] is None
