"""kseg.compat.direct_dilated_convolutions: dilated convolutions as one TensorFlow op.

The reference is Keras' own TensorFlow path (``tf.nn.convolution`` /
``tf.nn.depthwise_conv2d``, which run a dilated convolution through SpaceToBatchND and
BatchToSpaceND): the same model must give the same outputs and gradients both ways, and
the graph traced inside the block must hold the dilated op itself.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from kseg import compat

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a TensorFlow-backend patch")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((13, 11, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", dilation_rate=3)(inp)  # dilated: redirected
    x = keras.layers.DepthwiseConv2D(3, padding="same", dilation_rate=(2, 4))(x)  # depthwise: Keras' path
    x = keras.layers.Conv2D(4, 3, padding="valid", dilation_rate=2)(x)  # valid padding, dilated
    x = keras.layers.Conv2D(5, 3, strides=2, padding="same")(x)  # strided, no dilation: Keras' path
    return keras.Model(inp, keras.layers.SeparableConv2D(2, 3, padding="same")(x))


def _step(model, x):
    import tensorflow as tf

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            y = model(x, training=True)
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, model.trainable_variables)

    graph = step.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph
    types = [op.type for op in graph.get_operations()]
    y, grads = step(x)
    return np.asarray(y), [np.asarray(g) for g in grads], types, graph


def test_dilated_convolutions_give_keras_outputs_and_gradients_with_one_op():
    model = _model()
    x = np.random.default_rng(0).standard_normal((2, 13, 11, 3)).astype(np.float32)
    y0, g0, types0, _ = _step(model, x)
    assert "SpaceToBatchND" in types0  # Keras' own path (the detour the patch removes)
    with compat.direct_dilated_convolutions():
        y1, g1, types1, graph = _step(model, x)
    # the dilated Conv2D layers are one op each; the dilated depthwise one keeps SpaceToBatch
    # (TensorFlow's DepthwiseConv2dNative gradient ignores dilations)
    s2b = [op.name for op in graph.get_operations() if op.type == "SpaceToBatchND"]
    assert s2b and all("depthwise" in n for n in s2b), s2b
    dilations = sorted(tuple(op.get_attr("dilations")) for op in graph.get_operations() if op.type == "Conv2D")
    assert (1, 3, 3, 1) in dilations and (1, 2, 2, 1) in dilations
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
    # the block leaves Keras as it found it
    from keras.src.backend.tensorflow import nn as tfnn

    assert tfnn.conv.__module__ == "keras.src.backend.tensorflow.nn"


def test_where_the_probe_refuses_keras_path_is_kept(monkeypatch):
    monkeypatch.setattr(compat, "_dilated_ops_run_here", lambda: False)
    with compat.direct_dilated_convolutions():
        _, _, types, _ = _step(_model(), np.zeros((1, 13, 11, 3), np.float32))
    assert "SpaceToBatchND" in types


_NO_ONEDNN = r"""
import numpy as np, keras
from kseg import compat
print("PROBE", compat._dilated_ops_run_here())
inp = keras.Input((16, 16, 3))
m = keras.Model(inp, keras.layers.Conv2D(2, 3, padding="same", dilation_rate=2)(inp))
m.compile("adam", "mse")
with compat.direct_dilated_convolutions():
    m.train_on_batch(np.zeros((1, 16, 16, 3), np.float32), np.zeros((1, 16, 16, 2), np.float32))
print("TRAINED")
"""


def test_without_onednn_the_probe_refuses_and_training_still_runs():
    """TensorFlow's own CPU kernels (``TF_ENABLE_ONEDNN_OPTS=0``) refuse the gradients of a
    dilated ``Conv2D``; the probe must see that and leave Keras' path in place."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO,
               CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", _NO_ONEDNN], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0 and "TRAINED" in proc.stdout, proc.stderr[-2000:]
    assert "PROBE False" in proc.stdout
