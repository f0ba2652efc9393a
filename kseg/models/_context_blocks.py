"""Context modules shared by PSPNet, ICNet, DeepLabV2, DeepLabV3(+) and UPerNet.

* :class:`~kseg.models.layers.AdaptiveAveragePooling2D` (defined in
  :mod:`kseg.models.layers` with the other custom layers, re-exported here) --
  average pooling to a fixed ``b x b`` grid of bins for any (also dynamic) input
  size, with PyTorch ``adaptive_avg_pool2d`` bin edges.
* :func:`pyramid_pooling` -- the pyramid pooling module of PSPNet (concatenating) and
  ICNet (summing).
* :func:`cascade_feature_fusion` -- ICNet's CFF unit.
* :func:`aspp_v2` -- DeepLabV2's atrous spatial pyramid pooling: parallel branches of
  class scores that are summed.
* :func:`aspp` -- DeepLabV3's atrous spatial pyramid pooling with image pooling (DeepLabV3,
  DeepLabV3+).

Only ``keras`` and ``keras.ops`` are used, so everything runs on every Keras backend.
"""

from keras import layers

from kseg.errors import ModelConfigError  # noqa: F401 (re-exported; defined in kseg.errors)
from kseg.models import _checks as C
from kseg.models import layers as L
from kseg.models.layers import AdaptiveAveragePooling2D  # noqa: F401 (re-exported; defined there)


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
    C.one_of(name, "pyramid pooling mode", mode, ("concat", "sum"))
    channels = x.shape[-1]
    if filters is None:
        filters = channels // len(bins)
    branches = [x]
    for b in bins:
        y = L.AdaptiveAveragePooling2D(b, name=f"{name}_pool{b}")(x)
        if mode == "concat":
            y = L.conv_bn_act(y, filters, 1, name=f"{name}_pool{b}")
        y = L.ResizeLike(name=f"{name}_up{b}")([y, x])
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
    up = L.ResizeLike(name=f"{name}_up")([coarse, fine])
    c = layers.Conv2D(
        filters, 3, padding="same", dilation_rate=2, use_bias=False, name=f"{name}_coarse_conv"
    )(up)
    c = L.bn(c, f"{name}_coarse_bn")
    f = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_fine_conv")(fine)
    f = L.bn(f, f"{name}_fine_bn")
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


#: DeepLabV3's and DeepLabV3+'s ASPP rates at output stride 16
PAPER_RATES = (6, 12, 18)


def atrous_rates_at(atrous_rates, output_stride):
    """The ASPP rates used at ``output_stride``: the papers' (6, 12, 18) become (12, 24, 36)
    at output stride 8, as DeepLabV3 (Sec. 4.2) and DeepLabV3+ do; other rates are used as
    given."""
    rates = tuple(atrous_rates)
    if output_stride == 8 and rates == PAPER_RATES:
        return tuple(2 * r for r in rates)
    return rates


def aspp(x, filters, atrous_rates, dropout, name, separable=False):
    """Atrous Spatial Pyramid Pooling (DeepLabV3, Chen et al. 2017).

    Parallel branches on ``x``: a 1x1 conv, one 3x3 conv per rate in
    ``atrous_rates``, and image pooling (global average -> 1x1 conv -> resized
    back to ``x``'s size, so any input size works); each has ``filters`` channels
    and BN + ReLU. They are concatenated, projected by a 1x1 conv-BN-ReLU and
    passed through dropout. Layers are named ``{name}_*``.

    ``separable=True`` (DeepLabV3+'s Xception setting, Chen et al. 2018) makes each 3x3
    branch an atrous separable convolution
    (:func:`kseg.models.layers.separable_conv_bn_act`: dilated depthwise 3x3, BN, ReLU,
    pointwise 1x1, BN, ReLU); the 1x1, pooling and projection branches stay as they are.
    """
    branches = [L.conv_bn_act(x, filters, 1, name=f"{name}_1x1")]
    for rate in atrous_rates:
        if separable:
            branches.append(L.separable_conv_bn_act(x, filters, 3, dilation_rate=rate, name=f"{name}_rate{rate}"))
        else:
            branches.append(
                L.conv_bn_act(x, filters, 3, dilation_rate=rate, name=f"{name}_rate{rate}")
            )
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool_gap")(x)
    pooled = L.conv_bn_act(pooled, filters, 1, name=f"{name}_pool")
    branches.append(L.ResizeLike(name=f"{name}_pool_resize")([pooled, x]))
    y = layers.Concatenate(name=f"{name}_concat")(branches)
    y = L.conv_bn_act(y, filters, 1, name=f"{name}_project")
    if dropout:
        y = layers.Dropout(dropout, name=f"{name}_dropout")(y)
    return y
