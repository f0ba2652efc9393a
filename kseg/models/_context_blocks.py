"""Context modules shared by PSPNet, ICNet and DeepLabV2.

* :class:`AdaptiveAveragePooling2D` -- average pooling to a fixed ``b x b`` grid of
  bins for any (also dynamic) input size, with PyTorch ``adaptive_avg_pool2d`` bin
  edges.
* :func:`pyramid_pooling` -- the pyramid pooling module of PSPNet (concatenating) and
  ICNet (summing).
* :func:`cascade_feature_fusion` -- ICNet's CFF unit.
* :func:`aspp_v2` -- DeepLabV2's atrous spatial pyramid pooling: parallel branches of
  class scores that are summed.
* :func:`check_args` / :func:`check_positive` -- argument validation shared by the
  pspnet, icnet, deeplab_v2 and hrnet builders.

Only ``keras`` and ``keras.ops`` are used, so everything runs on every Keras backend.
"""

import keras
from keras import layers, ops

from kseg.errors import ModelConfigError  # noqa: F401 (defined in kseg.errors)
from kseg.errors import InputShapeError, KsegError
from kseg.models.layers import ResizeLike, bn, check_channels_last, conv_bn_act
from kseg.models.registry import check_input_size




def check_positive(model, option, value, integer=True, hint=""):
    """Raise :class:`ModelConfigError` unless ``value`` is a positive int (or number)."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        kind = "integer" if integer else "number"
        raise ModelConfigError(
            f"{model}: {option} must be a positive {kind}{hint}; received {value!r}"
        )


def check_args(model, n_classes, input_shape, divisor, min_size):
    """Validate what every builder of this family takes: channels-last data, a
    positive ``n_classes`` and an ``(H, W, C)`` input shape whose H and W are
    ``None`` or multiples of ``divisor`` and at least ``min_size``."""
    check_channels_last()
    check_positive(model, "n_classes", n_classes)
    if input_shape is None or len(input_shape) != 3:
        raise InputShapeError(
            f"{model}: input_shape must be (height, width, channels); received {input_shape!r}"
        )
    check_input_size(model, input_shape[0], input_shape[1], divisor, min_size)


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
        bins = int(bins)
        if bins < 1:
            raise ValueError(f"bins must be a positive integer; received {bins}")
        self.bins = bins

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


def pyramid_pooling(x, bins=(1, 2, 3, 6), filters=None, name="ppm", mode="concat"):
    """Pyramid pooling module (PSPNet, Zhao et al. 2017; ICNet, Zhao et al. 2018).

    ``mode="concat"`` (PSPNet): each bin size ``b`` gets adaptive average pooling to
    ``b x b``, a 1x1 conv to ``filters`` channels (default ``C / len(bins)``) with BN
    and ReLU, and bilinear upsampling back to the input size; the input and all
    branches are concatenated (``C + len(bins) * filters`` channels).

    ``mode="sum"`` (ICNet's released model): the pooled maps are upsampled without a
    conv and added to the input (``C`` channels); ``filters`` is unused.

    Layers are named ``{name}_pool{b}``, ``{name}_pool{b}_conv``, ``{name}_up{b}`` and
    ``{name}_concat`` / ``{name}_sum``.
    """
    if mode not in ("concat", "sum"):
        raise ValueError(f"mode must be 'concat' or 'sum'; received {mode!r}")
    channels = x.shape[-1]
    if filters is None:
        filters = channels // len(bins)
    branches = [x]
    for b in bins:
        y = AdaptiveAveragePooling2D(b, name=f"{name}_pool{b}")(x)
        if mode == "concat":
            y = conv_bn_act(y, filters, 1, name=f"{name}_pool{b}")
        y = ResizeLike(name=f"{name}_up{b}")([y, x])
        branches.append(y)
    if mode == "concat":
        return layers.Concatenate(name=f"{name}_concat")(branches)
    return layers.Add(name=f"{name}_sum")(branches)


def cascade_feature_fusion(coarse, fine, filters, n_classes, name, aux_activation=None):
    """ICNet's cascade feature fusion (CFF) unit.

    The coarse map is upsampled (bilinear) to the fine map's size and goes through
    a 3x3 conv with dilation 2 and BN; the fine map through a 1x1 conv and BN; the
    two are added and passed through ReLU. An auxiliary 1x1 classifier on the
    upsampled coarse map gives the class scores used for cascade label guidance.

    Returns:
        ``(fused, aux_logits)``: the fused ``filters``-channel map at the fine
        resolution and the auxiliary linear class scores at the same resolution.
    """
    up = ResizeLike(name=f"{name}_up")([coarse, fine])
    c = layers.Conv2D(
        filters, 3, padding="same", dilation_rate=2, use_bias=False, name=f"{name}_coarse_conv"
    )(up)
    c = bn(c, f"{name}_coarse_bn")
    f = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_fine_conv")(fine)
    f = bn(f, f"{name}_fine_bn")
    fused = layers.Add(name=f"{name}_add")([c, f])
    fused = layers.Activation("relu", name=f"{name}_relu")(fused)
    aux = layers.Conv2D(n_classes, 1, name=f"{name}_aux_logits")(up)
    return fused, aux


def aspp_v2(x, n_classes, rates=(6, 12, 18, 24), name="aspp", hidden=None, dropout=0.5):
    """DeepLabV2's atrous spatial pyramid pooling: parallel class scores, summed.

    Each rate ``r`` gives a branch that ends in linear class scores; the branches
    are added by one ``Add`` layer (``{name}_sum``) and the sum is returned, linear.

    * ``hidden=None`` (DeepLabV2-ResNet): the branch is one 3x3 conv with dilation
      ``r`` straight to ``n_classes`` (``{name}_r{r}_logits``).
    * ``hidden=1024`` (DeepLabV2-VGG16, "ASPP-L"): the branch is fc6 (3x3, dilation
      ``r``, ``hidden`` channels, ReLU, dropout), fc7 (1x1, ``hidden``, ReLU, dropout)
      and fc8 (1x1 to ``n_classes``).
    """
    branches = []
    for r in rates:
        p = f"{name}_r{r}"
        if hidden is None:
            y = layers.Conv2D(
                n_classes, 3, padding="same", dilation_rate=r, name=f"{p}_logits"
            )(x)
        else:
            y = layers.Conv2D(
                hidden, 3, padding="same", dilation_rate=r, activation="relu",
                kernel_initializer="he_normal", name=f"{p}_fc6",
            )(x)
            y = layers.Dropout(dropout, name=f"{p}_fc6_dropout")(y)
            y = layers.Conv2D(
                hidden, 1, activation="relu", kernel_initializer="he_normal", name=f"{p}_fc7"
            )(y)
            y = layers.Dropout(dropout, name=f"{p}_fc7_dropout")(y)
            y = layers.Conv2D(n_classes, 1, name=f"{p}_logits")(y)
        branches.append(y)
    return layers.Add(name=f"{name}_sum")(branches)
