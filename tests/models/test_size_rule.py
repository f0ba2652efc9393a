"""One size rule everywhere: a size a model cannot take is the SAME one-line ``InputShapeError``
whether the model was built for that size or built size-free and called with it.

Over ``list_models()`` at each model's test size and test options: the fixed build of a bad
size (not a multiple of the divisor; below the minimum) and the size-free model called on it
give the same message, naming every bad dimension and the nearest valid sizes; valid sizes
(square and not) come back at exactly the input size (no silent crop). Then the paths a call
can take: ``predict`` after Keras retraced for several sizes, a ``.keras`` round trip, a float32 copy
made from the config, a fixed-size model called with another size, and JAX (a subprocess).

Each model is built once size-free (module-scoped cache); bad fixed builds fail before
anything is built.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from kseg.errors import InputShapeError
from kseg.models import get_model, list_models, model_spec
from kseg.models._checks import input_size_message
from kseg.models.registry import SizeCheckedModel

MODELS = list_models()
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def size_free():
    """``name -> model`` built once, size-free, with the model's test options."""
    cache = {}

    def get(name):
        if name not in cache:
            spec = model_spec(name)
            keras.utils.set_random_seed(0)
            cache[name] = spec.builder(n_classes=2, input_shape=(None, None, 3), **spec.test_kwargs)
        return cache[name]

    return get


def _bad_sizes(spec):
    """Sizes the rule refuses, with the dimensions each one gets wrong."""
    h, w = spec.test_size
    sizes = []
    if spec.divisor > 1:
        sizes.append(((h + 1, w), ["height"]))
        sizes.append(((h + 1, w + spec.divisor + 1), ["height", "width"]))
    if spec.min_size > 1:
        small = spec.min_size - 1
        sizes.append(((small, w), ["height"]))
        sizes.append(((small, small), ["height", "width"]))
    return sizes


def _message(error):
    msg = str(error.value)
    assert msg and "\n" not in msg, msg
    return msg


def _call(model, h, w):
    x = np.zeros((1, h, w, 3), "float32")
    return keras.ops.convert_to_numpy(keras.tree.flatten(model(x, training=False))[0])


@pytest.mark.parametrize("name", MODELS)
def test_fixed_and_size_free_builds_refuse_a_bad_size_in_the_same_words(name, size_free):
    spec = model_spec(name)
    bad = _bad_sizes(spec)
    if not bad:
        pytest.skip(f"{name} takes any size")
    model = size_free(name)
    assert isinstance(model, SizeCheckedModel) and model.size_rule == {
        "model": name, "divisor": spec.divisor, "min_size": spec.min_size}
    for (h, w), wrong in bad:
        with pytest.raises(InputShapeError) as fixed:
            spec.builder(n_classes=2, input_shape=(h, w, 3), **spec.test_kwargs)
        with pytest.raises(InputShapeError) as free:
            _call(model, h, w)
        msg = _message(fixed)
        assert _message(free) == msg
        assert msg.startswith(f"{name}: input {h}x{w} is not allowed: "), msg
        named = " and ".join(f"{d} {h if d == 'height' else w}" for d in wrong)
        assert f": {named} must" in msg, msg  # every bad dimension, and only those
        # the nearest valid sizes, worked out here from the rule
        smallest = -(-spec.min_size // spec.divisor) * spec.divisor

        def down(v):
            ok = v >= spec.min_size and v % spec.divisor == 0
            return v if ok else max(smallest, v // spec.divisor * spec.divisor)

        def up(v):
            ok = v >= spec.min_size and v % spec.divisor == 0
            return v if ok else max(smallest, -(-v // spec.divisor) * spec.divisor)

        below, above = f"{down(h)}x{down(w)}", f"{up(h)}x{up(w)}"
        near = below if below == above else f"{below} or {above}"
        assert msg.endswith(f"(nearest valid size {near})"), msg


@pytest.mark.parametrize("name", MODELS)
def test_valid_sizes_come_back_at_the_input_size(name, size_free):
    spec = model_spec(name)
    h, w = spec.test_size
    step = spec.divisor if spec.divisor > 1 else 3  # any size from the minimum: try odd ones
    model = size_free(name)
    for size in ((h, w), (h + step, w + 2 * step)):
        out = _call(model, *size)
        assert out.shape[1:3] == size, (name, size, out.shape)


def test_the_message_names_the_rule_and_both_neighbours():
    assert input_size_message("unet", 225, 230, 16, 16) == (
        "unet: input 225x230 is not allowed: height 225 and width 230 must each be a multiple of 16 and "
        "at least 16 (nearest valid size 224x224 or 240x240)")
    assert input_size_message("unet", 224, 240, 16, 16) is None


def test_predict_after_a_retrace_for_several_sizes_still_refuses(size_free):
    model = size_free("fcn8")  # FCN-8s used to crop 225x225 to 224x224 without a word
    for s in (32, 64, 96):  # the second size makes Keras retrace with unknown height/width
        assert model.predict(np.zeros((1, s, s, 3), "float32"), verbose=0).shape == (1, s, s, 2)
    with pytest.raises(InputShapeError) as error:
        model.predict(np.zeros((1, 65, 64, 3), "float32"), verbose=0)
    assert _message(error) == input_size_message("fcn8", 65, 64, 32, 32)
    with pytest.raises(InputShapeError):
        model.predict_on_batch(np.zeros((1, 65, 64, 3), "float32"))


def test_a_fixed_size_model_called_with_another_size(size_free):
    fixed = get_model("unet", n_classes=2, input_height=32, input_width=32, base_filters=4)
    assert _call(fixed, 32, 32).shape == (1, 32, 32, 2)
    with pytest.raises(InputShapeError) as error:
        _call(fixed, 33, 32)  # a size the rule refuses: the rule's words, as size-free
    assert _message(error) == input_size_message("unet", 33, 32, 16, 16)
    with pytest.raises(InputShapeError) as error:
        _call(fixed, 48, 32)  # allowed by the rule, not by this build
    assert _message(error).startswith("unet: this model was built for 32x32 inputs; received 48x32")


def test_the_rule_survives_saving_and_a_copy_from_the_config(size_free, tmp_path):
    model = size_free("unet")
    path = str(tmp_path / "unet.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    copy = type(model).from_config(model.get_config())  # how runtime.as_float32 copies a model
    for other in (loaded, copy):
        assert isinstance(other, SizeCheckedModel) and other.size_rule == model.size_rule
        assert [layer.name for layer in other.layers] == [layer.name for layer in model.layers]
        with pytest.raises(InputShapeError) as error:
            _call(other, 36, 32)
        assert _message(error) == input_size_message("unet", 36, 32, 16, 16)
    np.testing.assert_array_equal(_call(loaded, 32, 48), _call(model, 32, 48))


def test_the_wrapper_keeps_the_builders_graph():
    spec = model_spec("mobilenet_fcn8")
    model = spec.builder(n_classes=2, **spec.test_kwargs)
    raw = spec.builder.__wrapped__(n_classes=2, **spec.test_kwargs)  # the builder without the registry
    assert type(raw) is not SizeCheckedModel
    assert [layer.name for layer in model.layers] == [layer.name for layer in raw.layers]
    assert model.count_params() == raw.count_params()
    # layer outputs are those of the model's own graph: a sub-model from a tap works
    tap = keras.Model(model.input, model.get_layer("conv_pw_5_relu").output)
    assert tap(np.zeros((1, 64, 64, 3), "float32")).shape[1:3] == (8, 8)


JAX_SCRIPT = r"""
import json
import numpy as np
import keras
from kseg.errors import InputShapeError
from kseg.models.registry import SizeCheckedModel
assert keras.backend.backend() == "jax"
# the registry's wrapper class on a one-layer graph (a zoo model takes a minute to build on JAX)
inp = keras.Input((None, None, 3))
model = SizeCheckedModel(inp, keras.layers.Conv2D(2, 1)(inp), size_rule={"model": "m", "divisor": 4, "min_size": 8})
out = {"ok": list(model.predict(np.zeros((1, 12, 8, 3), "float32"), verbose=0).shape)}
for how, call in (("eager", lambda x: model(x)), ("predict", lambda x: model.predict(x, verbose=0)),
                  ("jit", lambda x: __import__("jax").jit(model)(x))):
    try:
        call(np.zeros((1, 10, 4, 3), "float32"))
        out[how] = None
    except InputShapeError as e:
        out[how] = str(e)
print("RESULT " + json.dumps(out))
"""


def test_jax_checks_in_python_with_the_same_words():
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, "-c", JAX_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and line, r.stderr[-2000:]
    out = json.loads(line[0][7:])
    want = input_size_message("m", 10, 4, 4, 8)  # both dimensions wrong
    assert "height 10 and width 4 must each be" in want
    assert out == {"ok": [1, 12, 8, 2], "eager": want, "predict": want, "jit": want}


def test_prediction_and_export_use_the_rule_of_the_models_options():
    from kseg.export.model import model_divisor
    from kseg.predict import Predictor

    def config(name, **options):
        return {"model_name": name, "model_kwargs": options, "n_classes": 2, "input_height": 64,
                "input_width": 64}

    # the default options' rule would be 16 / 8: these options change it
    for cfg, divisor, min_size in ((config("unet", depth=2), 4, 4), (config("unet", depth=5), 32, 32),
                                   (config("pspnet", output_stride=16), 16, 32),
                                   (config("unet", encoder="resnet50"), 1, 32), (config("unet"), 16, 16)):
        p = Predictor(lambda x: x, cfg, mode="whole")
        assert (p.divisor, p.min_size) == (divisor, min_size), cfg
        assert model_divisor(cfg) == divisor
    # whole-image prediction pads to the model's own multiple: 50x30 -> 52x32 for depth 2
    assert Predictor(lambda x: x, config("unet", depth=2), mode="whole")._whole_size(50, 30) == (52, 32)


def test_benchmark_checks_the_size_rule_of_the_models_options(capsys):
    from conftest import run_command

    # depth 3: multiples of 8 (the default depth 4 would say 16); refused before any measurement
    code, _, err = run_command("benchmark", ["--model_name", "unet", "--model_option", "depth=3",
                                             "--input_height", "36"], capsys)
    assert code == 2 and err.strip() == "error: " + input_size_message("unet", 36, 36, 8, 8), err
