"""Shared fixtures: small generated datasets and experiments (no network, no real data)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Prediction runs the Keras model in the tests (no ONNX conversion per experiment; subprocesses
# inherit this); tests/test_runtime_auto.py tests the automatic runtime (kseg.runtime.auto_runner).
os.environ.setdefault("KSEG_RUNTIME", "keras")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kseg.hardware import limit_malloc_arenas, release_free_memory  # noqa: E402

# as kseg train does: two malloc arenas, before TensorFlow starts its threads (the suite's
# resident memory otherwise creeps up module after module)
limit_malloc_arenas()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATASETS = os.path.join(os.path.dirname(REPO), "shared", "datasets")


#: Test modules that each reach 2.5-3 GB (the zoo's largest models at their default sizes,
#: ONNX conversions, multi-process training): under ``pytest -n 2 --dist loadgroup`` they
#: share one xdist group, so they run one after another on one worker and never two at
#: once (two of them side by side took the suite's memory to 10.3 GB); every other module
#: is a group of its own (its module fixtures run once, on one worker).
HEAVY_MODULES = (
    "tests/models/test_models.py", "tests/models/test_param_counts.py", "tests/models/test_encoder_zoo.py",
    "tests/test_export_models.py", "tests/test_export.py", "tests/test_distributed.py", "tests/test_benchmark.py",
)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group("heavy" if module in HEAVY_MODULES else module))


@pytest.fixture(autouse=True, scope="module")
def _free_keras_state():
    """After each test module: drop Keras' global state (graphs, traced functions, layer
    name counters) so that models built by earlier modules do not pile up in memory, and
    return the freed heap pages to the system."""
    yield
    import gc
    import sys

    if "keras" in sys.modules:
        import keras

        keras.backend.clear_session()
    gc.collect()
    release_free_memory()


def shared_dataset(name):
    """Path of a real dataset in ../shared/datasets, or skip the test when absent."""
    path = os.path.join(SHARED_DATASETS, name)
    if not os.path.isdir(path):
        pytest.skip(f"real dataset {name} not available ({path} is absent)")
    return path


def command(name):
    """The command module ``kseg.cli.<name>`` (``train``, ``test``, ``export``, ... or an alias)."""
    from kseg.cli import command_module

    return command_module(name)


def run_command(name, argv, capsys):
    """Run ``kseg <name> argv`` in-process as the console script does.

    Returns ``(exit status, stdout, stderr)``; user errors are one ``error: ...`` line and status 2.
    """
    from kseg.cli.common import run_main

    with pytest.raises(SystemExit) as e:
        run_main(command(name).main, list(argv), prog=f"kseg {name}")
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A small copy of the built-in shapes dataset: 16 train, 4 val, 4 test images."""
    from kseg.data.sample import generate_sample_dataset

    root = str(tmp_path_factory.mktemp("data") / "tiny")
    generate_sample_dataset(root, splits={"train": 16, "val": 4, "test": 4}, seed=1)
    return root


def write_experiment(folder, model, *, n_classes, size, model_name="unet", model_kwargs=None,
                     dataset="", image_init="divide", resize_op=1):
    """Save ``model`` as ``best.keras`` with the ``config.json`` kseg train would write for it."""
    from kseg.config import ExperimentConfig, TrainConfig, label_values
    from kseg.data.io import voc_palette
    from kseg.experiment import write_config

    os.makedirs(folder, exist_ok=True)
    model.save(os.path.join(folder, "best.keras"))
    k = label_values(n_classes)
    train = TrainConfig(model_name=model_name, model_option=model_kwargs or {}, n_classes=n_classes,
                        input_height=size[0], input_width=size[1], image_init=image_init, resize_op=resize_op)
    write_config(folder, ExperimentConfig(
        model_name=model_name, model_kwargs=model_kwargs or {}, n_classes=n_classes, input_height=size[0],
        input_width=size[1], image_init=image_init, resize_op=resize_op, ignore_index=255,
        class_names=[f"c{i}" for i in range(k)], palette=voc_palette(k).tolist(), dataset=dataset,
        loss="ce", train=train.to_dict()))
    return folder


@pytest.fixture(scope="session")
def tiny_experiment(tmp_path_factory, tiny_dataset):
    """An (untrained) experiment folder: a 4-class UNet with base_filters=4, any input
    size, trained size 32x32, whose config points at ``tiny_dataset``."""
    import keras

    from kseg.models import get_model

    keras.utils.set_random_seed(0)
    model = get_model("unet", n_classes=4, base_filters=4)
    folder = str(tmp_path_factory.mktemp("weights") / "tiny_unet")
    return write_experiment(folder, model, n_classes=4, size=(32, 32),
                            model_kwargs={"base_filters": 4}, dataset=tiny_dataset)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
