"""Tests of kseg/export/ and scripts/export.py: ONNX / SavedModel / TFLite export, parity check and its
inputs (the predictor's own preprocessing), atomic writes, the runtime runners (kseg/runtime.py) used by
scripts/test.py --backend, the Keras patches of kseg/compat.py, and the latency benchmark.

Every exported output is compared with the Keras model's own output (computed here), the parity
numbers with hand-computed values. The end-to-end test runs scripts/test.py with --backend onnx and
--backend keras in subprocesses and compares the mean IoU of the two reports.

Runtime: about 1 minute on a lightly loaded 2-core CPU (measured 63 s: conversions of tiny models
and three subprocesses); up to 2-3x more when the machine is shared.
"""

import glob
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import layers

from kseg import export
from kseg.errors import KsegError
from kseg.export import ExportError
from kseg.models.layers import MaxPoolingWithArgmax2D, MaxUnpooling2D, ResizeLike

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="export traces models with TensorFlow (KERAS_BACKEND=tensorflow)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}


def _load_script(name):
    from kseg.cli import command_module

    return command_module(name)


@pytest.fixture
def exp(tmp_path, tiny_experiment):
    """A private copy of the tiny experiment (4-class UNet, base_filters=4, size-free, trained size 32)."""
    return shutil.copytree(tiny_experiment, str(tmp_path / "exp"))


def _keras_model(folder):
    return keras.saving.load_model(os.path.join(folder, "best.keras"), compile=False)


def _rand(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _leftovers(folder):
    return [f for f in os.listdir(folder) if f.startswith(".")]


# ------------------------------------------------------------------ parity numbers by hand


def test_parity_check_numbers_by_hand():
    ref = np.array([[[[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]]], np.float32)  # 1 image, 1x2 pixels, 3 classes
    got = np.array([[[[0.6, 0.3, 0.1], [0.45, 0.25, 0.3]]]], np.float32)

    def model(x, training=False):
        return ref

    images = np.zeros((1, 1, 2, 3), np.float32)
    r = export.parity_check(model, lambda x: got, images, atol=0.3, max_mismatch=0.5)
    assert r["max_abs_diff"] == pytest.approx(0.25, abs=1e-6)
    assert r["mean_abs_diff"] == pytest.approx(0.5 / 6, abs=1e-6)
    assert r["argmax_mismatch_ratio"] == 0.5  # pixel 2: class 1 -> class 0
    assert r["n_images"] == 1 and r["sizes"] == [[1, 2]]
    assert r["passed"] is True
    strict = export.parity_check(model, lambda x: got, images)  # float32 defaults: 1e-3, 0.1 %
    assert (strict["atol"], strict["max_mismatch"]) == (1e-3, 1e-3) and strict["passed"] is False
    # a NaN from the runtime fails whatever the tolerance
    bad = got.copy()
    bad[0, 0, 0, 0] = np.nan
    assert export.parity_check(model, lambda x: bad, images, atol=10, max_mismatch=1)["passed"] is False
    # one sigmoid channel: "argmax" is p > 0.5
    r1 = export.parity_check(lambda x, training=False: np.array([[[[0.6], [0.2]]]], np.float32),
                             lambda x: np.array([[[[0.4], [0.25]]]], np.float32), images, atol=1, max_mismatch=1)
    assert r1["argmax_mismatch_ratio"] == 0.5 and r1["max_abs_diff"] == pytest.approx(0.2, abs=1e-6)
    assert export.TOLERANCES["int8"][0] > export.TOLERANCES["float16"][0] > export.TOLERANCES["float32"][0]


# ------------------------------------------------------------------ parity / calibration inputs


@pytest.mark.parametrize("image_init, resize_op", [("divide", 1), ("sub_and_divide", 2), ("sub_mean", 2),
                                                   ("sub_mean", 1)])
def test_parity_and_calibration_inputs_are_what_the_predictor_feeds(tmp_path, image_init, resize_op):
    """The export checks (and int8-calibrates) a model on exactly the inputs prediction gives it:
    normalised first, then resized / letterboxed with 0 padding in normalised space."""
    from kseg.data.io import write_image
    from kseg.predict import Predictor

    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    shapes = {"a.png": (37, 101), "b.png": (90, 45), "c.jpg": (32, 48)}
    for name, (h, w) in shapes.items():
        write_image(str(folder / name), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    config = {"model_name": "unet", "n_classes": 4, "input_height": 32, "input_width": 48,
              "image_init": image_init, "resize_op": resize_op}
    fed = []

    def run(batch):
        fed.append(np.array(batch, copy=True))
        return np.full(batch.shape[:3] + (4,), 0.25, np.float32)

    predictor = Predictor(run, config, mode="resize", batch_size=1)
    for name in sorted(shapes):
        predictor.predict_file(str(folder / name))
    fed = np.concatenate(fed)
    assert fed.shape == (3, 32, 48, 3) and fed.dtype == np.float32

    calib = export.calibration_images(str(folder), config, (32, 48))
    sample = export.sample_images(config, (32, 48), n=3, image_dirs=[str(folder)])
    assert calib.dtype == sample.dtype == np.float32
    np.testing.assert_array_equal(calib, fed)  # bit for bit
    np.testing.assert_array_equal(sample, fed)
    if resize_op == 2:  # a.png (37x101) letterboxed into 32x48: 18 rows of image, 7 rows of 0 above it
        assert np.all(calib[0, :7] == 0) and np.all(calib[0, -7:] == 0) and np.any(calib[0, 7:25] != 0)


# ------------------------------------------------------------------ Keras patches (kseg.compat)


def test_compat_patches_exist_only_inside_their_context():
    import tf2onnx.graph
    import tf2onnx.optimizer
    import tf2onnx.tf_loader
    import tf2onnx.tfonnx
    from keras import ops as public_ops
    from keras.src import ops as src_ops
    from keras.src.backend.tensorflow import numpy as tfnp

    from kseg import compat

    def state():
        return {"argmax": tfnp.argmax, "argmin": tfnp.argmin, "src_resize": src_ops.image.resize,
                "public_resize": public_ops.image.resize,
                "fold": tf2onnx.tfonnx.rewrite_constant_fold,
                "value_attr": tf2onnx.graph.Node.__dict__["get_value_attr"],
                "np_object": "object" in vars(np),
                "update_proto": tf2onnx.graph.Node.__dict__["update_proto"],
                "optimize_graph": tf2onnx.optimizer.optimize_graph,
                "freeze": tf2onnx.tf_loader.from_function}

    before = state()
    with compat.export_friendly_ops():
        inside = state()
        assert all(inside[k] is not before[k] for k in ("argmax", "argmin", "src_resize", "public_resize"))
        assert inside["fold"] is before["fold"]  # the other patch is not applied
        # the traced argmax is a plain tf.argmax (no signbit), also with keepdims
        x = np.array([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4]], np.float32)
        np.testing.assert_array_equal(np.asarray(tfnp.argmax(x, axis=-1)), [1, 0])
        assert tuple(tfnp.argmax(x, axis=1, keepdims=True).shape) == (2, 1)
    assert state() == before

    with compat.tf2onnx_numpy2():
        inside = state()
        assert inside["fold"] is not before["fold"] and inside["value_attr"] is not before["value_attr"]
        assert inside["np_object"] and np.object is object
        assert inside["argmax"] is before["argmax"]
    assert state() == before

    low_memory = ("update_proto", "optimize_graph", "freeze")
    with compat.tf2onnx_low_memory():
        inside = state()
        assert all(inside[k] is not before[k] for k in low_memory)
        assert all(inside[k] is before[k] for k in before if k not in low_memory)
    assert state() == before

    # restored also when the block raises, and when the contexts are nested
    with pytest.raises(RuntimeError, match="boom"):
        with compat.tf2onnx_numpy2(), compat.tf2onnx_low_memory(), compat.export_friendly_ops():
            assert tfnp.argmax is not before["argmax"] and "object" in vars(np)
            assert tf2onnx.optimizer.optimize_graph is not before["optimize_graph"]
            raise RuntimeError("boom")
    assert state() == before


# ------------------------------------------------------------------ ONNX


def test_onnx_export_names_shapes_and_outputs(exp):
    import onnx
    import onnxruntime as ort

    path, report = export.export_model(exp, "onnx", return_report=True)
    assert path == os.path.join(os.path.abspath(exp), "model.onnx") and os.path.isfile(path)
    assert report["passed"] and report["input_shape"] == [None, 32, 32, 3] and report["precision"] == "float32"
    assert (report["atol"], report["max_mismatch"]) == (1e-3, 1e-3) and report["tolerance_note"] == ""
    assert _leftovers(exp) == []
    proto = onnx.load(path)
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["probabilities"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [32, 32, 3]  # dynamic batch, fixed size
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["kseg_model"] == "unet" and meta["image_init"] == "divide" and meta["n_classes"] == "4"
    # outputs against the Keras model, batch 3 (not the 2 used by the parity check)
    x = _rand((3, 32, 32, 3))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = sess.run(["probabilities"], {"image": x})[0]
    ref = _keras_model(exp)(x, training=False).numpy()
    assert y.shape == (3, 32, 32, 4)
    np.testing.assert_allclose(y, ref, atol=1e-4)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    # the runner scripts/test.py uses finds the file in the experiment folder
    run = export.runtime_runner("onnx", exp, None, {})
    np.testing.assert_allclose(run(x), ref, atol=1e-4)


def test_onnx_dynamic_size_and_fixed_batch(exp, tmp_path):
    import onnx

    model = _keras_model(exp)
    dyn = export.export_model(exp, "onnx", output=str(tmp_path / "dyn.onnx"), dynamic_size=True)
    dims = onnx.load(dyn).graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in dims[:3]) and dims[3].dim_value == 3
    x = _rand((2, 48, 64, 3), 1)
    np.testing.assert_allclose(export.make_runner("onnx", dyn)(x), model(x, training=False).numpy(), atol=1e-4)

    fixed = export.export_model(exp, "onnx", output=str(tmp_path / "b1.onnx"), dynamic_batch=False)
    dims = onnx.load(fixed).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 32, 32, 3]
    x = _rand((3, 32, 32, 3), 2)  # the runner feeds a batch-1 model image by image
    run = export.make_runner("onnx", fixed)
    np.testing.assert_allclose(run(x), model(x, training=False).numpy(), atol=1e-4)
    with pytest.raises(ExportError, match="exported for 32x32 inputs but got 48x64.*--dynamic_size"):
        run(_rand((1, 48, 64, 3)))


def _custom_layer_model(size):
    """Conv 15 -> transposed conv 30 -> ResizeLike to a 29 skip (bilinear and nearest), back to the
    input size (nearest), max pooling with argmax and unpooling, softmax."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 3))
    a = layers.Conv2D(4, 3, strides=2, padding="valid", name="down")(inp)  # 15x15 at 32
    a = layers.Conv2DTranspose(4, 3, strides=2, padding="same", name="up")(a)  # 30x30
    b = layers.Conv2D(4, 4, padding="valid", name="valid4")(inp)  # 29x29
    r = ResizeLike(name="align")([a, b])  # 30 -> 29 bilinear
    n = ResizeLike(interpolation="nearest", name="align_nn")([a, b])  # 30 -> 29 nearest
    c = layers.Concatenate(name="cat")([r, n, b])
    c = ResizeLike(interpolation="nearest", name="back_nn")([c, inp])  # 29 -> 32 nearest
    p, idx = MaxPoolingWithArgmax2D(name="pool")(c)
    u = MaxUnpooling2D(name="unpool")([p, idx])
    out = layers.Activation("softmax", name="prob")(layers.Conv2D(3, 1, name="logits")(u))
    return keras.Model(inp, out)


def test_custom_layers_export_to_onnx_and_tflite(tmp_path):
    """MaxPoolingWithArgmax2D / MaxUnpooling2D (SegNet, ENet) and ResizeLike with non-integer ratios
    (30 -> 29: tf2onnx's float scale 29/30 gives 30 * 0.96666664 = 28.99999 -> 28 rows) in bilinear
    and nearest modes, at a fixed size (ONNX, TFLite) and size-free (ONNX, where the resize sizes
    are tensors)."""
    cfg = {"model_name": "custom", "n_classes": 3, "input_height": 32, "input_width": 32}
    model = _custom_layer_model(32)
    x = _rand((2, 32, 32, 3), 3)
    ref = model(x, training=False).numpy()
    for fmt in ("onnx", "tflite"):
        path, report = export.export_keras_model(model, fmt, str(tmp_path / f"m.{fmt}"), cfg)
        assert report["passed"], export.format_parity(report)
        np.testing.assert_allclose(export.make_runner(fmt, path)(x), ref, atol=1e-4, err_msg=fmt)
        # argmax unpooling gets the documented wider bounds, and the report says why
        assert (report["atol"], report["max_mismatch"]) == export.ARGMAX_UNPOOL_TOLERANCE
        assert "max-unpooling" in report["tolerance_note"]

    free = _custom_layer_model(None)
    free.set_weights(model.get_weights())
    path, report = export.export_keras_model(free, "onnx", str(tmp_path / "free.onnx"), cfg, dynamic_size=True,
                                             divisor=2)
    assert report["passed"] and report["sizes"] == [[32, 32], [34, 36]]
    run = export.make_runner("onnx", path)
    np.testing.assert_allclose(run(x), ref, atol=1e-4)
    x2 = _rand((1, 40, 48, 3), 4)
    np.testing.assert_allclose(run(x2), free(x2, training=False).numpy(), atol=1e-4)


def test_onnx_resize_handler_matches_tensorflow_at_every_ratio(tmp_path):
    """The ONNX translation of TF nearest/bilinear resizing, with tensor (dynamic) sizes, against
    tf.image.resize for every in -> out size pair 2..33: nearest must pick the same pixels."""
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    specs = [tf.TensorSpec((1, None, None, 1), tf.float32, name="x"), tf.TensorSpec((2,), tf.int32, name="size")]

    @tf.function(input_signature=specs)
    def fn(x, size):
        return {"nearest": tf.image.resize(x, size, method="nearest"),
                "bilinear": tf.image.resize(x, size, method="bilinear")}

    handlers = {op: (export.onnx_resize_handler, []) for op in ("ResizeBilinear", "ResizeNearestNeighbor")}
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=specs, opset=17, custom_op_handlers=handlers)
    assert not any(n.op_type == "Resize" and any(a.s == b"tf_half_pixel_for_nn" for a in n.attribute)
                   for n in proto.graph.node)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    bad = []
    for n_in in range(2, 34):
        x = np.arange(n_in * n_in, dtype=np.float32).reshape(1, n_in, n_in, 1)
        for n_out in range(2, 34):
            size = np.array([n_out, n_out], np.int32)
            near, bil = sess.run(["nearest", "bilinear"], {"x": x, "size": size})
            ref = fn(tf.constant(x), tf.constant(size))
            if not np.array_equal(near, ref["nearest"].numpy()):
                bad.append((n_in, n_out))
            np.testing.assert_allclose(bil, ref["bilinear"].numpy(), atol=1e-3 * n_in * n_in)
    assert bad == []


# ------------------------------------------------------------------ SavedModel and TFLite


def test_savedmodel_and_tflite_exports(exp):
    import tensorflow as tf

    model = _keras_model(exp)
    x = _rand((3, 32, 32, 3), 4)
    ref = model(x, training=False).numpy()

    sm = export.export_model(exp, "savedmodel")
    assert sm == os.path.join(os.path.abspath(exp), "saved_model") and os.path.isdir(sm)
    fn = tf.saved_model.load(sm).signatures["serving_default"]
    assert list(fn.structured_input_signature[1]) == ["image"]
    out = fn(image=tf.constant(x))
    assert list(out) == ["probabilities"]
    np.testing.assert_allclose(out["probabilities"].numpy(), ref, atol=1e-5)

    tfl = export.export_model(exp, "tflite")
    assert tfl == os.path.join(os.path.abspath(exp), "model.tflite")
    interp = tf.lite.Interpreter(model_path=tfl)
    assert interp.get_signature_list() == {"serving_default": {"inputs": ["image"], "outputs": ["probabilities"]}}
    assert list(interp.get_input_details()[0]["shape_signature"]) == [-1, 32, 32, 3]
    run = export.runtime_runner("tflite", exp, None, {})  # resizes the batch axis to 3
    np.testing.assert_allclose(run(x), ref, atol=1e-4)
    np.testing.assert_allclose(export.runtime_runner("savedmodel", exp, None, {})(x), ref, atol=1e-5)

    # a second export replaces the first in place, nothing else is left behind
    assert export.export_model(exp, "savedmodel") == sm and os.path.isdir(sm)
    assert _leftovers(exp) == []


def test_tflite_fp16_and_int8(exp, tiny_dataset):
    import tensorflow as tf

    model = _keras_model(exp)
    x = _rand((2, 32, 32, 3), 5)
    ref = model(x, training=False).numpy()

    fp16, r16 = export.export_model(exp, "tflite", output=os.path.join(exp, "fp16.tflite"), fp16=True,
                                    return_report=True)
    assert r16["precision"] == "float16" and r16["atol"] == export.TOLERANCES["float16"][0] and r16["passed"]
    kinds = {d["dtype"] for d in tf.lite.Interpreter(model_path=fp16).get_tensor_details()}
    assert np.float16 in kinds  # the weights are stored as float16 (dequantised at run time)
    assert np.abs(export.make_runner("tflite", fp16)(x) - ref).max() < 2e-2

    calib = os.path.join(tiny_dataset, "train_image")
    q, r8 = export.export_model(exp, "tflite", output=os.path.join(exp, "int8.tflite"), int8=True,
                                calibration_dir=calib, return_report=True, atol=1.0, max_mismatch=1.0)
    # the report states the (looser) int8 precision and the tolerance that was applied
    assert r8["precision"] == "int8" and (r8["atol"], r8["max_mismatch"]) == (1.0, 1.0)
    assert "int8" in export.format_parity(r8) and "tolerance 1" in export.format_parity(r8)
    detail = tf.lite.Interpreter(model_path=q).get_input_details()[0]
    if not r8["note"]:  # full integer: int8 input with a scale and zero point
        assert detail["dtype"] == np.int8 and detail["quantization"][0] > 0 and r8["io_dtype"] == "int8"
    y = export.make_runner("tflite", q)(x)  # quantises the input, dequantises the output
    assert y.shape == ref.shape and np.isfinite(y).all()
    assert np.abs(y - ref).max() < 0.5


# ------------------------------------------------------------------ failures and atomicity


def test_failed_parity_leaves_no_file(exp, monkeypatch, capsys):
    good = export.export_model(exp, "onnx")
    before = open(good, "rb").read()

    def broken_runner(fmt, path, threads=None):
        def run(x):
            return np.full(x.shape[:3] + (4,), 0.25, np.float32)  # uniform: not the model

        return run

    monkeypatch.setattr(export.core, "make_runner", broken_runner)  # the runner of the parity check
    with pytest.raises(ExportError, match=r"^parity \(float32.*FAILED; .*model.onnx was not written"):
        export.export_model(exp, "onnx")
    assert open(good, "rb").read() == before  # the previous export is untouched
    new = os.path.join(exp, "new.tflite")
    with pytest.raises(ExportError):
        export.export_model(exp, "tflite", output=new)
    assert not os.path.exists(new) and _leftovers(exp) == []

    script = _load_script("export")
    capsys.readouterr()  # what the library calls above printed (a dependency's first-use warnings)
    with pytest.raises(SystemExit) as e:
        export_cli = script.cli.run_main
        export_cli(script.main, ["--weights_path", exp, "--format", "savedmodel"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: parity") and "\n" not in err
    assert not os.path.exists(os.path.join(exp, "saved_model")) and _leftovers(exp) == []


def test_option_errors(exp, tmp_path):
    with pytest.raises(ExportError, match="--int8 is available for --format tflite only"):
        export.export_model(exp, "onnx", int8=True, calibration_dir=exp)
    with pytest.raises(ExportError, match="--int8 needs --calibration_dir"):
        export.export_model(exp, "tflite", int8=True)
    with pytest.raises(ExportError, match="--calibration_dir .* does not exist"):
        export.export_model(exp, "tflite", int8=True, calibration_dir=str(tmp_path / "nope"))
    with pytest.raises(ExportError, match="unknown export format 'pb'"):
        export.export_model(exp, "pb")
    with pytest.raises(ExportError, match="--opset 9 is not supported"):
        export.export_model(exp, "onnx", opset=9)
    with pytest.raises(ExportError, match="--fp16 is available for --format tflite"):
        export.export_model(exp, "savedmodel", fp16=True)
    with pytest.raises(KsegError, match="does not exist"):
        export.export_model(str(tmp_path / "missing"), "onnx")
    # a model built for a fixed size cannot be exported size-free
    fixed = keras.Sequential([keras.Input((32, 32, 3)), layers.Conv2D(2, 1, activation="softmax")])
    with pytest.raises(ExportError, match="fixed 32x32 inputs, so --dynamic_size is not possible"):
        export.export_keras_model(fixed, "onnx", str(tmp_path / "f.onnx"), {"input_height": 32, "input_width": 32},
                                  dynamic_size=True)
    # the runners say what to do when the exported file is missing
    with pytest.raises(ExportError, match=r"has no model\.tflite; export it first: python scripts/export.py"):
        export.runtime_runner("tflite", exp, None, {})
    with pytest.raises(ExportError, match="--model_file .* does not exist"):
        export.runtime_runner("onnx", exp, str(tmp_path / "x.onnx"), {})


def test_fp16_onnx_needs_onnxconverter_common(exp):
    try:
        import onnxconverter_common  # noqa: F401
    except ImportError:
        with pytest.raises(ExportError, match="pip install onnxconverter-common"):
            export.export_model(exp, "onnx", fp16=True)
        assert not os.path.exists(os.path.join(exp, "model.onnx"))
    else:
        path, report = export.export_model(exp, "onnx", fp16=True, return_report=True)
        assert report["precision"] == "float16" and report["passed"]


def test_mixed_precision_model_exports_as_float32(tmp_path):
    from kseg.models import get_model

    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = get_model("unet", n_classes=2, base_filters=4)
    finally:
        keras.config.set_dtype_policy("float32")
    assert mixed.layers[1].compute_dtype == "bfloat16"
    f32 = export.as_float32(mixed)
    assert all(layer.compute_dtype == "float32" for layer in f32.layers)
    for a, b in zip(mixed.weights, f32.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    path, report = export.export_keras_model(mixed, "onnx", str(tmp_path / "m.onnx"),
                                             {"input_height": 32, "input_width": 32, "n_classes": 2})
    assert report["passed"]
    x = _rand((1, 32, 32, 3), 6)
    # close to the bfloat16 model (bf16 keeps ~3 significant digits), equal to its float32 twin
    np.testing.assert_allclose(export.make_runner("onnx", path)(x), f32(x).numpy(), atol=1e-4)
    assert np.abs(export.make_runner("onnx", path)(x) - mixed(x).numpy().astype(np.float32)).max() < 0.1


# ------------------------------------------------------------------ benchmark


def test_benchmark_runtimes_table(tmp_path):
    from kseg.models import get_model

    model = get_model("unet", n_classes=2, input_height=32, input_width=32, base_filters=4)
    rows = export.benchmark_runtimes(model=model, config={"n_classes": 2}, size=(32, 32), batch_sizes=(1, 2),
                                     runs=3, warmup=1, workdir=str(tmp_path))
    assert [(r["backend"], r["batch"]) for r in rows] == [
        ("keras", 1), ("onnx", 1), ("tflite", 1), ("keras", 2), ("onnx", 2), ("tflite", 2)]
    for r in rows:
        assert 0 < r["median_ms"] <= r["p90_ms"] * 1.0000001
        assert r["images_per_s"] == pytest.approx(1000 * r["batch"] / r["median_ms"])
    assert rows[0]["max_abs_diff"] is None and 0 <= rows[1]["max_abs_diff"] < 1e-3
    table = export.format_benchmark(rows, title="unet")
    assert "| runtime | batch | median ms | p90 ms | images/s |" in table and table.count("\n| ") == 7
    assert os.listdir(tmp_path) == []  # the temporary exports are removed


# ------------------------------------------------------------------ end to end


def _test_py(exp, backend, out):
    cmd = [sys.executable, os.path.join(REPO, "scripts", "test.py"), "--weights_path", exp, "--backend", backend,
           "--mIOU", "--output", out, "--no-overlay"]
    p = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


def test_end_to_end_onnx_matches_keras_miou(exp, tmp_path, capsys):
    script = _load_script("export")
    assert script.main(["--weights_path", exp, "--format", "onnx"]) == 0
    assert os.path.isfile(os.path.join(exp, "model.onnx"))
    out = capsys.readouterr().out
    assert "input 'image' float32 ['batch', 32, 32, 3] -> output 'probabilities' float32 ['batch', 32, 32, 4]" in out
    assert "parity (float32, 4 images at 32x32)" in out and ": ok" in out
    assert f"python scripts/test.py --weights_path {exp} --backend onnx --mIOU" in out
    keras_report = _test_py(exp, "keras", str(tmp_path / "pred_keras"))
    onnx_report = _test_py(exp, "onnx", str(tmp_path / "pred_onnx"))
    assert round(onnx_report["mean_iou"], 3) == round(keras_report["mean_iou"], 3)
    masks_k = sorted(glob.glob(str(tmp_path / "pred_keras" / "masks" / "*.png")))
    assert len(masks_k) == 4


def test_export_script_output_and_errors(tmp_path):
    p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "export.py"), "--weights_path",
                        str(tmp_path / "missing"), "--format", "onnx"], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: --weights_path") and "does not exist" in errors[0]
    assert "Traceback" not in p.stderr
