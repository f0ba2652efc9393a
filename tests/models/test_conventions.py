"""Conventions every model of the zoo follows, checked over ``list_models()``.

* options: a bad value (``n_classes=0``, a negative width, a dropout of 1.5, an
  unknown activation or option) is a one-line :class:`kseg.errors.KsegError`
  raised before anything is built, whether the builder is called directly or
  through ``get_model``;
* size rule: declared once in ``@register_model`` and checked on direct builder
  calls too (:class:`InputShapeError` naming every bad dimension);
* namespace: every builder is importable from ``kseg.models`` by its function
  name and is the function, not the same-named submodule;
* custom layers: ONE parametrised tester over every ``keras.layers.Layer``
  subclass defined in ``kseg/models/layers.py`` (config round trip, ``.keras``
  save/load, ``mixed_bfloat16``); a layer missing from ``LAYER_SAMPLES`` fails;
* source: one import alias convention, Keras 3 only, no bare ``ValueError``.

Everything here fails before any large model is built, so the file runs in
seconds.
"""

import inspect
import os
import re
import sys
import types

import keras
import numpy as np
import pytest

import kseg.models
from kseg.errors import InputShapeError, KsegError, ModelConfigError, UnknownNameError
from kseg.models import check_input_size, get_model, list_models, model_spec
from kseg.models import layers as L

MODELS = list_models()
MODELS_DIR = os.path.dirname(kseg.models.__file__)

# Options that set a width, depth or count: negative (and zero) values must be refused.
WIDTH_OPTIONS = {
    "alpha", "base_filters", "decoder_filters", "depth", "fc_filters", "filters",
    "low_level_filters", "num_blocks", "ratio", "stage_modules", "start_filters", "t",
    "width", "width_divisor", "width_multiplier",
}


def _call(name, **options):
    """Call the builder of ``name`` directly at its test size with its test options."""
    spec = model_spec(name)
    kwargs = {"n_classes": 2, "input_shape": (*spec.test_size, 3), **spec.test_kwargs, **options}
    return spec.builder(**kwargs)


def _assert_one_line(error):
    msg = str(error.value)
    assert msg and "\n" not in msg, msg
    return msg


def _negated(value):
    if isinstance(value, (tuple, list)):
        return tuple(-v for v in value)
    return -value


# ------------------------------------------------------------------ option values


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("n_classes", [0, -3, 2.5, True, "2"])
def test_bad_n_classes_is_a_one_line_kseg_error(name, n_classes):
    with pytest.raises(KsegError) as error:
        _call(name, n_classes=n_classes)
    assert isinstance(error.value, ModelConfigError)
    msg = _assert_one_line(error)
    assert name in msg and "n_classes" in msg and repr(n_classes) in msg


@pytest.mark.parametrize("name", MODELS)
def test_negative_width_options_are_kseg_errors(name):
    params = inspect.signature(model_spec(name).builder).parameters
    options = sorted(WIDTH_OPTIONS & set(params))
    if not options:
        pytest.skip(f"{name} has no width option")
    for option in options:
        default = params[option].default
        bad_values = [_negated(default)]
        if isinstance(default, int):
            bad_values.append(0)
        for bad in bad_values:
            with pytest.raises(KsegError) as error:
                _call(name, **{option: bad})
            msg = _assert_one_line(error)
            assert option in msg, msg


@pytest.mark.parametrize("name", MODELS)
def test_bad_activation_and_dropout_are_kseg_errors(name):
    with pytest.raises(ModelConfigError) as error:
        _call(name, activation="relu")
    msg = _assert_one_line(error)
    assert "'relu'" in msg and "softmax" in msg
    params = inspect.signature(model_spec(name).builder).parameters
    for option in [p for p in params if "dropout" in p]:
        with pytest.raises(ModelConfigError) as error:
            _call(name, **{option: 1.5})
        assert option in _assert_one_line(error)


@pytest.mark.parametrize("name", MODELS)
def test_unknown_option_and_bad_input_shape(name):
    with pytest.raises(UnknownNameError) as error:
        _call(name, bogus_option=1)
    msg = _assert_one_line(error)
    assert "bogus_option" in msg and name in msg
    with pytest.raises(InputShapeError) as error:
        _call(name, input_shape=(32, 32))
    _assert_one_line(error)


def test_get_model_raises_the_same_errors():
    with pytest.raises(ModelConfigError, match=r"unet: base_filters must be a positive integer .*; received -4"):
        get_model("unet", n_classes=2, base_filters=-4)
    with pytest.raises(ModelConfigError, match="n_classes"):
        get_model("segnet", n_classes=0)


# ------------------------------------------------------------------ size rule


@pytest.mark.parametrize("name", MODELS)
def test_registered_size_rule_is_checked_on_direct_calls(name):
    spec = model_spec(name)
    if spec.divisor == 1 and spec.min_size == 1:
        pytest.skip(f"{name} takes any size")
    h, w = spec.test_size
    if spec.divisor > 1:
        bad = h + 1  # above the minimum, not a multiple
        with pytest.raises(InputShapeError) as error:
            _call(name, input_shape=(bad, w, 3))
        msg = _assert_one_line(error)
        assert f"height {bad} must be a multiple of {spec.divisor}" in msg, msg
        assert f"width {w}" not in msg, msg  # the good width is not blamed
        # nearest valid sizes below and above, the good width kept
        assert f"(nearest valid size {h}x{w} or {h + spec.divisor}x{w})" in msg, msg
    if spec.min_size > 1:
        small = spec.min_size - 1
        with pytest.raises(InputShapeError) as error:
            _call(name, input_shape=(small, small, 3))
        msg = _assert_one_line(error)
        # every bad dimension is named, with the nearest valid size
        assert f"height {small} and width {small} must each be" in msg, msg
        assert f"at least {spec.min_size}" in msg, msg
        smallest = max(spec.min_size, spec.divisor)
        assert msg.endswith(f"(nearest valid size {smallest}x{smallest})"), msg


def test_check_input_size_names_every_bad_dimension():
    with pytest.raises(InputShapeError) as error:
        check_input_size("m", 50, 20, divisor=16, min_size=32)
    msg = _assert_one_line(error)
    # 50 lies between the valid 48 and 64; 20 is below the smallest valid size, 32
    assert msg == ("m: input 50x20 is not allowed: height 50 and width 20 must each be a multiple of 16 "
                   "and at least 32 (nearest valid size 48x32 or 64x32)")
    check_input_size("m", None, 64, divisor=16, min_size=32)  # None: checked at run time
    with pytest.raises(InputShapeError) as error:
        check_input_size("m", None, 66, divisor=8)
    assert str(error.value) == ("m: input width 66 is not allowed: width 66 must be a multiple of 8 "
                                "(nearest valid width 64 or 72)")
    with pytest.raises(InputShapeError) as error:
        check_input_size("m", 20, 40, min_size=32)  # no divisor: only the minimum
    assert str(error.value) == ("m: input 20x40 is not allowed: height 20 must be at least 32 "
                                "(nearest valid size 32x40)")
    with pytest.raises(InputShapeError, match="height must be a positive integer; received 0"):
        check_input_size("m", 0, 32)


def test_option_dependent_size_rules():
    assert model_spec("unet").size_rule(depth=3) == (8, 8)
    assert model_spec("unet").size_rule(encoder="resnet50") == (1, 32)
    assert model_spec("pspnet").size_rule(output_stride=16) == (16, 32)
    unet = model_spec("unet").builder
    assert unet(n_classes=2, input_shape=(40, 40, 3), depth=3, base_filters=2).output_shape == (
        None, 40, 40, 2)
    with pytest.raises(InputShapeError, match="multiple of 16"):
        unet(n_classes=2, input_shape=(40, 40, 3), base_filters=2)


def test_builders_are_wrapped_keeping_their_signature():
    for name in MODELS:
        builder = model_spec(name).builder
        assert builder.kseg_name == name
        assert inspect.signature(builder) == inspect.signature(builder.__wrapped__)
        assert builder.__doc__ == builder.__wrapped__.__doc__
        assert builder.__kwdefaults__ == builder.__wrapped__.__kwdefaults__
        assert {"n_classes", "input_shape"} <= set(inspect.signature(builder).parameters)


# ------------------------------------------------------------------ namespace


def test_every_builder_is_importable_by_its_function_name():
    for name in MODELS:
        builder = model_spec(name).builder
        exported = getattr(kseg.models, builder.__name__)
        assert exported is builder, name
        assert isinstance(exported, types.FunctionType), name
        assert builder.__name__ in kseg.models.__all__
    from kseg.models import enet, segnet, unet  # noqa: F401 (names that are also modules)

    for fn in (enet, segnet, unet):
        assert isinstance(fn, types.FunctionType)
    assert isinstance(sys.modules["kseg.models.unet"], types.ModuleType)
    assert get_model("unet++", n_classes=2, base_filters=2).name == "unet_plus_plus"


def test_every_model_module_is_imported_by_the_package():
    """A module with an ``@register_model`` builder that ``kseg/models/__init__.py``
    forgot to import would silently be missing from the zoo."""
    for filename in sorted(os.listdir(MODELS_DIR)):
        if not filename.endswith(".py"):
            continue
        with open(os.path.join(MODELS_DIR, filename), encoding="utf-8") as f:
            if not re.search(r"^@register_model\(", f.read(), re.M):
                continue
        module = f"kseg.models.{filename[:-3]}"
        assert module in sys.modules, f"{module} registers models but is not imported"
        assert any(model_spec(n).builder.__module__ == module for n in MODELS), module


# ------------------------------------------------------------------ custom layers

# Sample constructor arguments and inputs of EVERY custom layer of kseg/models/layers.py.
# inputs: per model input, (shape without batch, dtype, exclusive upper bound of
# integer values or None).
LAYER_SAMPLES = {
    "AdaptiveAveragePooling2D": {"args": {"bins": 3}, "inputs": [((7, 5, 2), "float32", None)]},
    "MapAttention": {
        "args": {"heads": 2},
        "inputs": [((5, 3, 4), "float32", None), ((2, 2, 8), "float32", None)],
    },
    "MaxPoolingWithArgmax2D": {"args": {}, "inputs": [((8, 6, 3), "float32", None)]},
    "MaxUnpooling2D": {
        "args": {},
        "inputs": [((4, 3, 2), "float32", None), ((4, 3, 2), "int32", 4)],
    },
    "PadChannels": {"args": {"extra": 2}, "inputs": [((4, 4, 3), "float32", None)]},
    "PositionAttention": {
        "args": {},
        "inputs": [((3, 4, 2), "float32", None), ((3, 4, 2), "float32", None), ((3, 4, 5), "float32", None)],
    },
    "ResizeLike": {
        "args": {"interpolation": "bilinear"},
        "inputs": [((5, 7, 3), "float32", None), ((10, 14, 2), "float32", None)],
    },
}


def _custom_layers():
    return sorted(
        obj.__name__
        for obj in vars(L).values()
        if isinstance(obj, type)
        and issubclass(obj, keras.layers.Layer)
        and obj.__module__ == L.__name__
    )


def _sample_data(spec, seed=0):
    rng = np.random.default_rng(seed)
    data = []
    for shape, dtype, high in spec["inputs"]:
        if high is None:
            data.append(rng.standard_normal((2, *shape)).astype(dtype))
        else:
            data.append(rng.integers(0, high, (2, *shape)).astype(dtype))
    return data


def _tiny_model(cls, spec):
    inputs = [keras.Input(shape, dtype=dtype) for shape, dtype, _ in spec["inputs"]]
    layer = cls(**spec["args"], name="probe")
    out = layer(inputs if len(inputs) > 1 else inputs[0])
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], out), layer


def _run(model, data):
    out = model(data if len(data) > 1 else data[0])
    return [keras.ops.convert_to_numpy(o) for o in keras.tree.flatten(out)]


def test_layer_samples_have_no_stale_entries():
    assert set(LAYER_SAMPLES) <= set(_custom_layers())


@pytest.mark.parametrize("layer_name", _custom_layers())
def test_custom_layer(layer_name, tmp_path):
    assert layer_name in LAYER_SAMPLES, (
        f"{layer_name} is a custom layer of kseg/models/layers.py without sample arguments; "
        "add it to LAYER_SAMPLES in tests/models/test_conventions.py"
    )
    cls = getattr(L, layer_name)
    spec = LAYER_SAMPLES[layer_name]

    # config round trip
    layer = cls(**spec["args"], name="probe")
    config = layer.get_config()
    assert cls.from_config(config).get_config() == config

    # .keras save/load of a tiny functional model: identical outputs, no custom_objects
    model, _ = _tiny_model(cls, spec)
    data = _sample_data(spec)
    before = _run(model, data)
    path = str(tmp_path / f"{layer_name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert type(loaded.get_layer("probe")) is cls
    after = _run(loaded, data)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)

    # mixed_bfloat16: computes in bfloat16 and matches float32 to bfloat16 precision
    previous = keras.mixed_precision.global_policy()
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        bf16_model, bf16_layer = _tiny_model(cls, spec)
        assert bf16_layer.compute_dtype == "bfloat16"
        low = _run(bf16_model, data)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert keras.mixed_precision.global_policy().name == previous.name
    for a, b in zip(before, low):
        assert a.shape == b.shape
        b = b.astype("float32")
        assert np.isfinite(b).all()
        np.testing.assert_allclose(b, a, rtol=3e-2, atol=3e-2)


_JAX_LAYERS = r"""
import json, sys
import numpy as np
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
import kseg.models.layers  # noqa: F401 (registers the custom layers for loading)
folder = sys.argv[1]
out = {}
for name in sys.argv[2:]:
    model = keras.saving.load_model(f"{folder}/{name}.keras", compile=False)
    data = np.load(f"{folder}/{name}.npz")
    inputs = [data[f"x{i}"] for i in range(len(data.files))]
    y = model(inputs if len(inputs) > 1 else inputs[0])
    np.savez(f"{folder}/{name}.jax.npz", *[keras.ops.convert_to_numpy(t) for t in keras.tree.flatten(y)])
    out[name] = "ok"
print("JSON" + json.dumps(out))
"""


def test_every_custom_layer_gives_the_same_outputs_on_jax(tmp_path):
    """Every custom layer (a tiny model of it, saved here on TensorFlow) loads and runs on JAX
    with the outputs TensorFlow gave: the per-layer backend check, cheap enough to cover all of
    them in every run (whole zoo models on JAX: tests/models/test_models.py, JAX_MODELS)."""
    pytest.importorskip("jax")
    import subprocess

    expected = {}
    for name in _custom_layers():
        model, _ = _tiny_model(getattr(L, name), LAYER_SAMPLES[name])
        data = _sample_data(LAYER_SAMPLES[name])
        expected[name] = _run(model, data)
        model.save(str(tmp_path / f"{name}.keras"))
        np.savez(tmp_path / f"{name}.npz", **{f"x{i}": d for i, d in enumerate(data)})
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.path.dirname(os.path.dirname(MODELS_DIR)))
    proc = subprocess.run([sys.executable, "-c", _JAX_LAYERS, str(tmp_path), *expected], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0 and "JSON" in proc.stdout, proc.stderr[-3000:]
    for name, want in expected.items():
        got = np.load(tmp_path / f"{name}.jax.npz")
        got = [got[f"arr_{i}"] for i in range(len(got.files))]
        assert len(got) == len(want), name
        for a, b in zip(want, got):
            assert a.shape == b.shape, name
            if a.dtype.kind in "iu":
                np.testing.assert_array_equal(a, b, err_msg=name)
            else:
                np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=name)


# ------------------------------------------------------------------ source conventions


def _sources():
    for filename in sorted(os.listdir(MODELS_DIR)):
        if filename.endswith(".py"):
            with open(os.path.join(MODELS_DIR, filename), encoding="utf-8") as f:
                yield filename, f.read()


# kseg/models imports no TensorFlow at all (Keras 3 only, every backend).
TF_IMPORTS_ALLOWED = set()


def _tensorflow_imports(filename, text):
    """``(filename, enclosing function or None)`` of every tensorflow import of a source."""
    import ast

    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            names = ([a.name for a in child.names] if isinstance(child, ast.Import)
                     else [child.module or ""] if isinstance(child, ast.ImportFrom) else [])
            if any(n == "tensorflow" or n.startswith("tensorflow.") for n in names):
                found.append((filename, function))
            visit(child, inner)

    visit(ast.parse(text), None)
    return found


def test_one_import_alias_convention_and_keras_only():
    """``from keras import layers`` for Keras' layers, ``from kseg.models import layers
    as L`` for kseg's; Keras 3 only (no TensorFlow import but the one runtime size
    assertion, inside its function); no bare ValueError."""
    assert _tensorflow_imports("x.py", "import tensorflow\ndef f():\n    from tensorflow import nn\n") == [
        ("x.py", None), ("x.py", "f")]  # the detector sees module-level and function-level imports
    seen = set()
    for filename, text in _sources():
        for where in _tensorflow_imports(filename, text):
            assert where in TF_IMPORTS_ALLOWED, f"{filename}: tensorflow imported in {where[1] or 'the module'}"
            seen.add(where)
        assert not re.search(r"\bkl\.", text), f"{filename}: the `kl` alias is not used in kseg"
        assert "from keras import layers as" not in text, filename
        assert not re.search(r"from kseg\.models import layers as (?!L\b)", text), filename
        assert not re.search(r"raise ValueError\b", text), (
            f"{filename}: raise a kseg.errors class (see kseg/models/_checks.py)")
    assert seen == TF_IMPORTS_ALLOWED, "a stale entry in TF_IMPORTS_ALLOWED"


def test_only_the_registry_checks_input_sizes():
    for filename, text in _sources():
        if filename in ("_checks.py", "registry.py", "__init__.py"):
            continue
        assert "check_input_size(" not in text, filename


# ------------------------------------------------------------------ one VGG16 body, one FCN-8s head


def test_every_vgg16_is_built_on_the_one_body(monkeypatch):
    from kseg.models import vgg

    calls = []
    body = vgg.vgg16_body

    def counting_body(*args, **kwargs):
        calls.append(1)
        return body(*args, **kwargs)

    monkeypatch.setattr(vgg, "vgg16_body", counting_body)
    for name, options in (
        ("segnet", {"width_divisor": 16}),
        ("deeplab_v2", {"width_multiplier": 0.0625}),
        ("vggunet", {"decoder_filters": (4, 4, 4, 4, 4)}),
        ("fcn8", {"fc_filters": 8}),
    ):
        calls.clear()
        get_model(name, n_classes=2, input_height=32, input_width=32, **options)
        assert len(calls) == 1, name


def test_kseg_vgg16_matches_keras_applications_layer_for_layer():
    from kseg.models.backbones import _copy_weights, build_encoder

    ours, _ = build_encoder("vgg16", input_shape=(32, 32, 3))
    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))

    def layout(model):
        return [(type(layer).__name__, layer.name, [tuple(w.shape) for w in layer.weights])
                for layer in model.layers[1:]]

    assert layout(ours) == layout(reference)
    _copy_weights(reference, ours, "VGG16")  # the ImageNet path: weights copied by layer name
    x = np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32)
    # keras' VGG16 weights were trained on BGR images, kseg feeds RGB: its first kernel
    # is reversed, so kseg on an RGB image answers what keras answers on the BGR image
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours(x)), keras.ops.convert_to_numpy(reference(x[..., ::-1])),
        rtol=1e-5, atol=1e-5)


def test_both_fcn8_models_use_the_one_head(monkeypatch):
    from kseg.models import fcn

    calls = []
    head = fcn.fcn8_head

    def counting_head(*args, **kwargs):
        calls.append(kwargs.get("layer_names"))
        return head(*args, **kwargs)

    monkeypatch.setattr(fcn, "fcn8_head", counting_head)
    get_model("fcn8", n_classes=2, input_height=32, input_width=32, fc_filters=8)
    get_model("mobilenet_fcn8", n_classes=2, input_height=32, input_width=32, alpha=0.25)
    assert calls == [fcn.FCN8_CAFFE_NAMES, None]
