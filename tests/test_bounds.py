"""Bounds and types of what a user hands kseg: the number of classes, dataset.json fields,
--model_option values and --table names. Each mistake is a one-line KsegError (exit
status 2 through a command), raised before anything is built or read."""

import json
import os

import pytest

from conftest import run_command
from kseg.config import MAX_CLASSES, MAX_LABEL_VALUE, ExperimentConfig, TrainConfig, as_n_classes
from kseg.errors import ConfigError, DataError, KsegError, ModelConfigError, UnknownNameError


def _one_line(error):
    msg = str(error.value)
    assert msg and "\n" not in msg, msg
    return msg


def _error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------ 1. n_classes is bounded


def test_max_classes_is_one_per_16_bit_label_value():
    assert MAX_CLASSES == MAX_LABEL_VALUE + 1 == 65536
    assert as_n_classes(MAX_CLASSES) == MAX_CLASSES
    assert as_n_classes("3") == 3


@pytest.mark.parametrize("bad", [MAX_CLASSES + 1, 100_000_000, 0, -1, 2.5, True, "x"])
def test_train_config_bounds_n_classes(bad):
    with pytest.raises(ConfigError) as error:
        TrainConfig(n_classes=bad)
    msg = _one_line(error)
    assert "--n_classes" in msg and repr(bad) in msg


def test_train_config_takes_the_largest_class_count():
    assert TrainConfig(n_classes=MAX_CLASSES).n_classes == MAX_CLASSES
    assert TrainConfig(n_classes=1).n_classes == 1


def test_experiment_config_bounds_n_classes():
    with pytest.raises(ConfigError) as error:
        ExperimentConfig.from_dict({"model_name": "unet", "n_classes": 100_000_000, "input_height": 32,
                                    "input_width": 32})
    msg = _one_line(error)
    assert "n_classes" in msg and str(MAX_CLASSES) in msg
    # no class-name list of 1e8 entries is made on the way to the error
    assert ExperimentConfig("unet", MAX_CLASSES, 32, 32).n_values == MAX_CLASSES


def test_train_command_refuses_a_huge_class_count(capsys):
    code, _, err = run_command("train", ["--n_classes", "100000000"], capsys)
    assert code == 2
    line = _error_line(err)
    assert "--n_classes" in line and str(MAX_CLASSES) in line


def test_n_classes_argument_type():
    import argparse

    from kseg.cli import common as cli

    assert cli.n_classes("4") == 4
    with pytest.raises(argparse.ArgumentTypeError, match=str(MAX_CLASSES)):
        cli.n_classes(str(MAX_CLASSES + 1))


def test_get_model_bounds_n_classes_before_building():
    from kseg.models import get_model

    with pytest.raises(ModelConfigError) as error:
        get_model("unet", n_classes=100_000_000, input_height=32, input_width=32)
    msg = _one_line(error)
    assert "unet" in msg and "n_classes" in msg and "100000000" in msg and str(MAX_CLASSES) in msg


# ------------------------------------------------------------------ 2. dataset.json types


def _dataset(tmp_path, meta, name="ds"):
    root = tmp_path / name
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps(meta))
    return str(root)


BAD_FIELDS = [
    ("input_size", 48, "[height, width]"),
    ("input_size", [48], "[height, width]"),
    ("input_size", [48, 0], "[height, width]"),
    ("classes", "a,b", "list of class names"),
    ("classes", ["a", 3], "list of class names"),
    ("classes", [{"title": "a"}], "list of class names"),
    ("ignore_index", "x", "an integer"),
    ("ignore_index", 70000, "an integer"),
    ("ignore_index", True, "an integer"),
    ("palette", [[1, 2]], "[r, g, b]"),
    ("palette", [[1, 2, 300]], "[r, g, b]"),
    ("palette", "#ff0000", "[r, g, b]"),
    ("epochs", "ten", "a positive integer"),
    ("epochs", 0, "a positive integer"),
    ("augment", "no", "true or false"),
    ("train", [1], "an object"),
    ("name", 5, "text"),
    ("version", "1", "an integer"),
    ("ignore_colors", "#000000", "a list of colours"),
]


@pytest.mark.parametrize("field,value,expected", BAD_FIELDS)
def test_dataset_json_field_of_the_wrong_type(tmp_path, field, value, expected):
    from kseg.data.layout import read_class_files

    root = _dataset(tmp_path, {"classes": ["bg", "fg"], field: value})
    with pytest.raises(DataError) as error:
        read_class_files(root)
    msg = _one_line(error)
    assert os.path.join(root, "dataset.json") in msg and f'"{field}"' in msg and expected in msg, msg


@pytest.mark.parametrize("field,value,expected", BAD_FIELDS)
def test_the_dataset_reader_of_training_gives_the_same_error(tmp_path, field, value, expected):
    from kseg.data.dataset import load_dataset_info

    root = _dataset(tmp_path, {"classes": ["bg", "fg"], field: value})
    with pytest.raises(DataError) as error:
        load_dataset_info(root)
    assert f'"{field}"' in _one_line(error)


def test_the_doctor_records_bad_fields_and_reads_the_rest(tmp_path):
    from kseg.data.layout import read_class_files

    root = _dataset(tmp_path, {"classes": ["bg", "fg"], "input_size": 48, "palette": [[1, 2]], "ignore_index": 7})
    files = read_class_files(root, strict=False)
    assert files.classes == ["bg", "fg"] and files.ignore_index == 7
    assert files.palette is None and "input_size" not in files.meta
    assert len(files.problems) == 2
    assert any('"input_size"' in p for p in files.problems) and any('"palette"' in p for p in files.problems)


def test_null_and_unknown_fields_are_no_problem(tmp_path):
    from kseg.data.layout import read_class_files

    root = _dataset(tmp_path, {"classes": ["bg", "fg"], "palette": None, "input_size": None, "notes": {"x": 1}})
    files = read_class_files(root)
    assert files.classes == ["bg", "fg"] and files.palette is None and files.problems == []


def test_what_kseg_writes_passes_the_type_checks(tmp_path):
    from kseg.data.layout import check_meta_fields, class_files_payload, read_class_files, write_class_files
    from kseg.data.sample import sample_metadata

    extras = [
        sample_metadata(3),
        {"source": "labelme"},
        {"source": "colour-coded masks", "ignore_colors": ["#000000"]},
        {"source": "coco", "category_ids": "coco", "coco_category_to_class": {"1": 1}},
    ]
    for i, extra in enumerate(extras):
        _, meta = class_files_payload(["bg", "cat"], extra=extra)
        assert check_meta_fields(meta, "dataset.json") == []
        folder = tmp_path / f"w{i}"
        write_class_files(str(folder), ["bg", "cat"], extra=extra)
        files = read_class_files(str(folder))
        assert files.classes == ["bg", "cat"] and files.problems == []


def test_a_class_list_longer_than_16_bit_labels_allow(tmp_path):
    from kseg.data.layout import read_class_files

    (tmp_path / "classes.txt").write_text("\n".join(f"c{i}" for i in range(MAX_CLASSES + 1)))
    with pytest.raises(DataError) as error:
        read_class_files(str(tmp_path))
    assert str(MAX_CLASSES) in _one_line(error)


# ------------------------------------------------------------------ 3. --model_option types


@pytest.fixture
def probe_model():
    """A registered builder that returns the options it received (built nothing)."""
    from kseg.models import registry

    @registry.register_model("_probe_options", divisor=lambda o: 2 ** o["depth"])
    def _probe_options(n_classes=2, input_shape=(None, None, 3), *, activation="softmax", base_filters=64,
                       depth=2, dropout=0.1, use_bn=True, rates=(6, 12, 18), scales=(0.5, 1.0), encoder=None,
                       backbone="resnet50"):
        return dict(base_filters=base_filters, depth=depth, dropout=dropout, use_bn=use_bn, rates=rates,
                    scales=scales, encoder=encoder, backbone=backbone, activation=activation)

    yield "_probe_options"
    registry._REGISTRY.pop("_probe_options", None)


def test_option_text_becomes_the_builder_types(probe_model):
    from kseg.models import get_model
    from kseg.models.registry import parse_model_options

    text = {"base_filters": "32", "dropout": "0.25", "use_bn": "no", "rates": "6,12", "scales": "[0.25, 2]",
            "encoder": "resnet50", "backbone": "vgg16"}
    typed = {"base_filters": 32, "dropout": 0.25, "use_bn": False, "rates": (6, 12), "scales": (0.25, 2.0),
             "encoder": "resnet50", "backbone": "vgg16"}
    assert parse_model_options(probe_model, text) == typed
    built = get_model(probe_model, n_classes=2, input_height=32, input_width=32, **text)
    assert {k: built[k] for k in typed} == typed
    for k in ("base_filters", "dropout", "use_bn"):
        assert type(built[k]) is type(typed[k])
    # values of the right type pass unchanged (an int for a float option becomes a float)
    assert parse_model_options(probe_model, {"dropout": 0, "rates": [1, 2], "use_bn": 1}) == {
        "dropout": 0.0, "rates": (1, 2), "use_bn": True}


@pytest.mark.parametrize("option,value,expected", [
    ("base_filters", "abc", "an integer"),
    ("base_filters", 2.5, "an integer"),
    ("base_filters", True, "an integer"),
    ("dropout", "abc", "a number"),
    ("dropout", "nan", "a number"),
    ("use_bn", "maybe", "true or false"),
    ("use_bn", 2, "true or false"),
    ("rates", "6,x", "integers separated by commas"),
    ("rates", 6, "integers separated by commas"),
    ("backbone", 5, "a name"),
])
def test_option_of_the_wrong_type_is_one_line(probe_model, option, value, expected):
    from kseg.models import get_model
    from kseg.models.registry import model_spec, parse_model_options

    for call in (lambda: parse_model_options(probe_model, {option: value}),
                 lambda: get_model(probe_model, n_classes=2, input_height=32, input_width=32, **{option: value}),
                 lambda: model_spec(probe_model).size_rule(**{option: value})):
        with pytest.raises(ModelConfigError) as error:
            call()
        msg = _one_line(error)
        assert probe_model in msg and option in msg and repr(value) in msg and expected in msg, msg


def test_size_rule_reads_the_typed_option(probe_model):
    from kseg.models.registry import model_spec

    assert model_spec(probe_model).size_rule(depth="3") == (8, 8)


def test_parse_model_options_names_unknown_options(probe_model):
    from kseg.models.registry import parse_model_options

    with pytest.raises(UnknownNameError, match="bogus"):
        parse_model_options(probe_model, {"bogus": 1})
    with pytest.raises(UnknownNameError, match="--n_classes"):
        parse_model_options(probe_model, {"n_classes": 3})


def test_every_registered_model_parses_its_defaults_as_text():
    """Each option's default, written as on a command line, parses back to the default."""
    import inspect

    from kseg.models import list_models, model_spec
    from kseg.models.registry import parse_model_options

    for name in list_models():
        params = inspect.signature(model_spec(name).builder).parameters
        for k, p in params.items():
            if k in ("n_classes", "input_shape", "activation") or p.default is p.empty or p.default is None:
                continue
            d = p.default
            text = ",".join(map(str, d)) if isinstance(d, (tuple, list)) else str(d)
            got = parse_model_options(name, {k: text})[k]
            assert got == (tuple(d) if isinstance(d, list) else d), (name, k, text, got)


def test_train_command_refuses_a_bad_model_option_before_reading_data(tmp_path, tiny_dataset, capsys):
    argv = ["--model_name", "unet", "--model_option", "base_filters=abc", "--data_dir",
            os.path.dirname(tiny_dataset), "--dataset_name", os.path.basename(tiny_dataset),
            "--train_save_path", str(tmp_path / "weights"), "--verbose", "0"]
    code, _, err = run_command("train", argv, capsys)
    assert code == 2
    line = _error_line(err)
    assert "base_filters" in line and "'abc'" in line and "integer" in line
    assert not os.path.exists(tmp_path / "weights")


# ------------------------------------------------------------------ 5. every named colour table


def _table_names():
    from kseg.data.color_tables import NAMED_TABLES

    return NAMED_TABLES


@pytest.mark.parametrize("name", _table_names())
def test_every_listed_table_name_is_accepted_by_the_command(tmp_path, monkeypatch, capsys, name):
    # a folder of the same name where the command runs (e.g. the output "dubai") does not hide it
    monkeypatch.chdir(tmp_path)
    os.mkdir(tmp_path / name)
    code, out, err = run_command("convert_colors", ["table", "--table", name], capsys)
    assert code == 0, err
    assert out.strip()


def test_the_table_error_and_help_list_exactly_the_accepted_names(capsys):
    from kseg.cli.convert_colors import build_parser
    from kseg.data.color_tables import NAMED_TABLES, load_class_table

    with pytest.raises(KsegError) as error:
        load_class_table("no-such-table")
    msg = _one_line(error)
    for name in NAMED_TABLES:
        assert name in msg
        assert load_class_table(name).n_classes >= 2
        assert load_class_table(name.upper()).n_classes == load_class_table(name).n_classes
    helps = build_parser().format_help()
    assert "dataset" in helps
    sub = [a for a in build_parser()._actions if a.dest == "command"][0]
    for parser in sub.choices.values():
        for action in parser._actions:
            if action.dest == "table":
                for name in NAMED_TABLES:
                    assert name in action.help, (parser.prog, action.help)


def test_a_table_file_still_wins_over_nothing(tmp_path):
    from kseg.data.color_tables import load_class_table

    p = tmp_path / "dubai.json"
    p.write_text(json.dumps({"classes": ["a", "b"], "palette": [[0, 0, 0], [255, 255, 255]]}))
    assert load_class_table(str(p)).names == ["a", "b"]
