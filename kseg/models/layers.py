"""Shared building blocks for the model zoo.

Everything here uses only ``keras`` and ``keras.ops`` so the models run on the
TensorFlow, JAX and PyTorch backends. Custom layers are registered as
serializable (package ``kseg``) and implement ``get_config`` so a saved
``.keras`` file loads back without ``custom_objects``.

Functional helpers take a tensor and a ``name`` prefix and return a tensor; every
layer they create gets a deterministic name derived from that prefix.

Every custom layer of the zoo is defined in this module (ResizeLike,
AdaptiveAveragePooling2D, MaxPoolingWithArgmax2D, MaxUnpooling2D, PadChannels,
MapAttention, PositionAttention) so that one test (tests/models/test_conventions.py) checks all of them: config
round trip, ``.keras`` save/load and mixed precision. A new layer must be added
to that test's sample arguments, or the test fails.

Import convention of kseg/models: ``from keras import layers`` for Keras'
layers and ``from kseg.models import layers as L`` for this module.
"""

import keras
import numpy as np
from keras import layers, ops

from kseg.errors import ModelConfigError
from kseg.models import _checks as C

BN_MOMENTUM = 0.9  # Keras momentum: decay of the moving average (= PyTorch momentum 0.1)
BN_EPSILON = 1e-3


def scaled(channels, width_multiplier):
    """``channels * width_multiplier`` rounded, at least 1 (widths of scaled-down models)."""
    return max(1, int(round(channels * width_multiplier)))


def bn(x, name, momentum=BN_MOMENTUM, epsilon=BN_EPSILON):
    """BatchNormalization with kseg's default (Keras-sense) momentum."""
    return layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name=name)(x)


def conv_bn_act(
    x,
    filters,
    kernel_size=3,
    name="conv",
    strides=1,
    dilation_rate=1,
    activation="relu",
    use_bn=True,
    padding="same",
    kernel_initializer="he_normal",
):
    """Conv2D -> BatchNorm -> activation, layers named ``{name}_conv|_bn|_act``."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        use_bias=not use_bn,
        kernel_initializer=kernel_initializer,
        name=f"{name}_conv",
    )(x)
    if use_bn:
        x = bn(x, f"{name}_bn")
    if activation is not None:
        x = layers.Activation(activation, name=f"{name}_act")(x)
    return x


def separable_conv_bn_act(x, filters, kernel_size=3, name="sepconv", dilation_rate=1, activation="relu"):
    """DeepLab's "atrous separable convolution": a (dilated) depthwise conv -> BN -> activation,
    then a 1x1 pointwise conv -> BN -> activation (Chen et al. 2018, Sec. 3.1; the authors'
    code puts BN and ReLU between the two convs). Layers ``{name}_depthwise``,
    ``{name}_depthwise_bn|_act``, ``{name}_pointwise``, ``{name}_bn|_act``."""
    x = layers.DepthwiseConv2D(kernel_size, padding="same", dilation_rate=dilation_rate, use_bias=False,
                               depthwise_initializer="he_normal", name=f"{name}_depthwise")(x)
    x = bn(x, f"{name}_depthwise_bn")
    x = layers.Activation(activation, name=f"{name}_depthwise_act")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal", name=f"{name}_pointwise")(x)
    x = bn(x, f"{name}_bn")
    return layers.Activation(activation, name=f"{name}_act")(x)


def double_conv(x, filters, name, use_bn=True, activation="relu"):
    """Two 3x3 conv-BN-act layers: the UNet level block."""
    x = conv_bn_act(x, filters, 3, name=f"{name}_conv1", use_bn=use_bn, activation=activation)
    return conv_bn_act(x, filters, 3, name=f"{name}_conv2", use_bn=use_bn, activation=activation)


def resolve_activation(activation, n_classes):
    """Map the ``activation`` argument of a builder to a Keras activation name.

    ``"softmax"`` (the default of every builder) becomes ``"sigmoid"`` when
    ``n_classes == 1`` (a softmax over one channel is constantly 1). ``None`` or
    ``"linear"`` returns logits.
    """
    C.activation("output layer", activation)
    if activation in (None, "linear", "none"):
        return None
    if activation == "softmax" and n_classes == 1:
        return "sigmoid"
    return activation


def classifier(x, n_classes, name, activation="softmax", kernel_size=1):
    """The class-score layer: a linear conv (no BN, no ReLU) then the output activation.

    The activation runs in float32 so mixed-precision models output float32
    probabilities.
    """
    x = layers.Conv2D(n_classes, kernel_size, padding="same", name=f"{name}_logits")(x)
    act = resolve_activation(activation, n_classes)
    if act is not None:
        x = layers.Activation(act, dtype="float32", name=f"{name}_{act}")(x)
    else:
        x = layers.Activation("linear", dtype="float32", name=f"{name}_linear")(x)
    return x


@keras.saving.register_keras_serializable(package="kseg")
def exact_gelu(x):
    """GELU with the Gaussian CDF written through erf: ``x * (1 + erf(x / sqrt(2))) / 2``.

    The same function as ``keras.activations.gelu(x, approximate=False)``, whose
    TensorFlow form uses ``erfc``, an op ONNX lacks; ``erf`` exports. Use it as
    ``layers.Activation(exact_gelu)`` (serialised by name, ``kseg>exact_gelu``).
    """
    return 0.5 * x * (1.0 + ops.erf(x * float(np.sqrt(0.5))))


def output_activation(x, n_classes, name, activation="softmax"):
    """Apply the output activation (float32) to logits ``x``."""
    act = resolve_activation(activation, n_classes) or "linear"
    return layers.Activation(act, dtype="float32", name=f"{name}_{act}")(x)


# --------------------------------------------------------------------------------------
# Resizing


@keras.saving.register_keras_serializable(package="kseg")
class ResizeLike(layers.Layer):
    """Resize the first input to the spatial size of the second (bilinear by default).

    Works with dynamic (``None``) spatial sizes, unlike ``UpSampling2D`` with a
    fixed factor when the factor is not an integer.
    """

    def __init__(self, interpolation="bilinear", **kwargs):
        super().__init__(**kwargs)
        self.interpolation = interpolation

    def call(self, inputs):
        x, ref = inputs
        shape = ops.shape(ref)
        return ops.image.resize(
            x, (shape[1], shape[2]), interpolation=self.interpolation, antialias=False
        )

    def compute_output_shape(self, input_shapes):
        x, ref = input_shapes
        return (x[0], ref[1], ref[2], x[3])

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation}


@keras.saving.register_keras_serializable(package="kseg")
class BilinearInitializer(keras.initializers.Initializer):
    """Initialise a ``Conv2DTranspose`` kernel as bilinear upsampling (FCN, Long et al.).

    The kernel ``(k, k, out, in)`` maps channel i to channel i with a separable
    triangle filter and is zero across channels; with ``in != out`` the identity
    runs over ``min(in, out)`` channels.
    """

    def __call__(self, shape, dtype=None):
        kh, kw, c_out, c_in = shape
        filt = np.outer(_bilinear_1d(kh), _bilinear_1d(kw))
        w = np.zeros((kh, kw, c_out, c_in), dtype="float32")
        for i in range(min(c_out, c_in)):
            w[:, :, i, i] = filt
        return ops.convert_to_tensor(w, dtype=dtype or "float32")

    def get_config(self):
        return {}


def _bilinear_1d(k):
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    og = np.arange(k)
    return 1 - np.abs(og - center) / factor


# --------------------------------------------------------------------------------------
# Max pooling with indices and max unpooling (SegNet, ENet)


@keras.saving.register_keras_serializable(package="kseg")
class MaxPoolingWithArgmax2D(layers.Layer):
    """2x2, stride-2 max pooling that also returns where each maximum came from.

    Returns ``(pooled, indices)``; ``indices`` (int32, same shape as ``pooled``)
    holds the position 0..3 of the maximum inside its 2x2 window (row-major), the
    information SegNet's and ENet's decoders need to put values back. Input
    height and width must be even. Built on ``keras.ops`` only (reshape, argmax).
    """

    def call(self, x):
        s = ops.shape(x)
        b, h, w, c = s[0], s[1], s[2], s[3]
        t = ops.reshape(x, (b, h // 2, 2, w // 2, 2, c))
        t = ops.transpose(t, (0, 1, 3, 5, 2, 4))  # b, h2, w2, c, 2, 2
        t = ops.reshape(t, (b, h // 2, w // 2, c, 4))
        idx = ops.argmax(t, axis=-1)
        pooled = ops.max(t, axis=-1)
        return pooled, ops.cast(idx, "int32")

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        out = (b, None if h is None else h // 2, None if w is None else w // 2, c)
        return out, out

    def compute_output_spec(self, x):
        shape = self.compute_output_shape(x.shape)[0]
        return (
            keras.KerasTensor(shape, dtype=x.dtype),
            keras.KerasTensor(shape, dtype="int32"),
        )


@keras.saving.register_keras_serializable(package="kseg")
class MaxUnpooling2D(layers.Layer):
    """Inverse of :class:`MaxPoolingWithArgmax2D`: each value goes back to the
    position its index names inside a 2x2 window; the other three are zero.

    Inputs ``[values, indices]``; output has twice the height and width.
    """

    def call(self, inputs):
        x, idx = inputs
        s = ops.shape(x)
        b, h, w, c = s[0], s[1], s[2], s[3]
        onehot = ops.one_hot(idx, 4, dtype=x.dtype)  # b, h, w, c, 4
        t = onehot * ops.expand_dims(x, -1)
        t = ops.reshape(t, (b, h, w, c, 2, 2))
        t = ops.transpose(t, (0, 1, 4, 2, 5, 3))  # b, h, 2, w, 2, c
        return ops.reshape(t, (b, h * 2, w * 2, c))

    def compute_output_shape(self, input_shapes):
        b, h, w, c = input_shapes[0]
        return (b, None if h is None else h * 2, None if w is None else w * 2, c)


@keras.saving.register_keras_serializable(package="kseg")
class PadChannels(layers.Layer):
    """Append ``extra`` all-zero channels (ENet's downsampling main branch)."""

    def __init__(self, extra, **kwargs):
        super().__init__(**kwargs)
        self.extra = int(extra)

    def call(self, x):
        return ops.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.extra)))

    def compute_output_shape(self, s):
        return (*s[:-1], s[-1] + self.extra)

    def get_config(self):
        return {**super().get_config(), "extra": self.extra}


# --------------------------------------------------------------------------------------
# Adaptive average pooling (PSPNet, ICNet)


@keras.saving.register_keras_serializable(package="kseg")
class AdaptiveAveragePooling2D(layers.Layer):
    """Average-pool a ``(B, H, W, C)`` map to ``(B, bins, bins, C)`` for any H, W.

    Bin ``i`` along an axis of length ``n`` covers ``[floor(i * n / bins),
    ceil((i + 1) * n / bins))`` -- the edges of PyTorch's ``adaptive_avg_pool2d`` --
    so bins may overlap by one pixel when ``n`` is not a multiple of ``bins``, and
    every bin holds at least one pixel even when ``n < bins``.

    The pooling is written as two small matrix products, ``P_h @ x @ P_w^T``, where
    row ``i`` of ``P_h`` (``bins x H``) holds ``1 / len(bin_i)`` over the pixels of
    bin ``i``. The matrices are built from the runtime shape, so the layer works with
    ``None`` spatial dimensions on every backend.

    Args:
        bins: number of bins along each spatial axis (an int).
    """

    def __init__(self, bins, **kwargs):
        super().__init__(**kwargs)
        self.bins = int(C.positive_int("AdaptiveAveragePooling2D", "bins", bins))

    def _pool_matrix(self, n, dtype):
        i = ops.arange(self.bins, dtype="int32")
        start = (i * n) // self.bins
        end = ((i + 1) * n + self.bins - 1) // self.bins
        pos = ops.arange(n, dtype="int32")
        inside = ops.logical_and(
            ops.greater_equal(pos[None, :], start[:, None]),
            ops.less(pos[None, :], end[:, None]),
        )
        inside = ops.cast(inside, "float32")
        weights = inside / ops.sum(inside, axis=1, keepdims=True)
        return ops.cast(weights, dtype)

    def call(self, x):
        shape = ops.shape(x)
        ph = self._pool_matrix(shape[1], x.dtype)
        pw = self._pool_matrix(shape[2], x.dtype)
        x = ops.einsum("ih,bhwc->biwc", ph, x)
        return ops.einsum("jw,biwc->bijc", pw, x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.bins, self.bins, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "bins": self.bins}


# --------------------------------------------------------------------------------------
# Multi-head attention over the positions of two feature maps (SegFormer)


@keras.saving.register_keras_serializable(package="kseg")
class MapAttention(layers.Layer):
    """Multi-head scaled dot-product attention from the positions of one map to another's.

    Inputs ``[q, kv]``: queries ``q`` of shape ``(B, H, W, C)`` and keys and values
    ``kv`` of shape ``(B, h, w, 2C)`` (the first ``C`` channels are the keys, the
    last ``C`` the values; within each, head ``j`` owns channels ``j*d .. (j+1)*d``,
    ``d = C / heads``). Every one of the ``H*W`` query positions attends to all
    ``h*w`` key positions, head by head: ``softmax(q_j k_j^T / sqrt(d)) v_j``; the
    heads are concatenated back to ``(B, H, W, C)``. The layer has no weights: the
    projections are ordinary ``Dense`` layers around it (SegFormer's efficient
    self-attention: :mod:`kseg.models.segformer`). ``h, w`` may differ from ``H, W``
    (a spatially reduced key/value map); sizes may be ``None``.

    Args:
        heads: number of heads; must divide ``C``.
    """

    def __init__(self, heads, **kwargs):
        super().__init__(**kwargs)
        self.heads = int(C.positive_int("MapAttention", "heads", heads))

    def build(self, input_shapes):
        q, kv = input_shapes
        c = q[-1]
        if c is None or c % self.heads or kv[-1] != 2 * c:
            raise ModelConfigError(
                f"MapAttention: queries need a channel count divisible by heads={self.heads} and keys/values "
                f"twice as many channels; received {q[-1]} and {kv[-1]}")
        super().build(input_shapes)

    def call(self, inputs):
        q, kv = inputs
        c = q.shape[-1]
        d = c // self.heads
        # sizes from the static shape where known (a fixed-size model exports with constant shapes)
        qh, qw = (q.shape[i] if q.shape[i] is not None else ops.shape(q)[i] for i in (1, 2))
        kh, kw = (kv.shape[i] if kv.shape[i] is not None else ops.shape(kv)[i] for i in (1, 2))
        q = ops.reshape(q, (-1, qh * qw, self.heads, d))  # B, N, heads, d
        kv = ops.reshape(kv, (-1, kh * kw, 2, self.heads, d))  # B, M, keys/values, heads, d
        scores = ops.einsum("bnhd,bmhd->bhnm", q, kv[:, :, 0]) * ops.cast(d ** -0.5, q.dtype)
        # one key position (a small map): the weight is 1 (and Keras' softmax would warn)
        weights = ops.ones_like(scores) if scores.shape[-1] == 1 else ops.softmax(scores, axis=-1)
        out = ops.einsum("bhnm,bmhd->bnhd", weights, kv[:, :, 1])
        return ops.reshape(out, (-1, qh, qw, c))

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[0])

    def get_config(self):
        return {**super().get_config(), "heads": self.heads}


# --------------------------------------------------------------------------------------
# Position attention over the pixels of one map (MA-Net's position-wise attention block)


@keras.saving.register_keras_serializable(package="kseg")
class PositionAttention(layers.Layer):
    """Every pixel attends to every pixel of the same map: ``softmax(q k^T) v``.

    Inputs ``[q, k, v]`` of shapes ``(B, H, W, c)``, ``(B, H, W, c)``, ``(B, H, W, C)``
    (queries and keys may be narrower than the values). With ``N = H*W`` positions, the
    ``N x N`` energies ``q k^T`` are normalised by a softmax over the key positions of each
    query (no scaling), and the output ``(B, H, W, C)`` at each pixel is the weighted sum of
    the values. The layer has no weights: the projections are ordinary convolutions
    around it (:mod:`kseg.models.manet`). Sizes may be ``None``; memory grows as ``N**2``,
    so it belongs on the deepest, smallest feature map.
    """

    def call(self, inputs):
        q, k, v = inputs
        shape = ops.shape(v)
        b = shape[0]
        q = ops.reshape(q, (b, -1, q.shape[-1]))
        k = ops.reshape(k, (b, -1, k.shape[-1]))
        values = ops.reshape(v, (b, -1, v.shape[-1]))
        energy = ops.matmul(q, ops.transpose(k, (0, 2, 1)))  # B, N queries, N keys
        out = ops.matmul(ops.softmax(energy, axis=-1), values)
        return ops.reshape(out, (b, shape[1], shape[2], v.shape[-1]))

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[2])
