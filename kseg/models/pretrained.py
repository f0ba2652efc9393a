"""Pretrained (ImageNet) weights: the rules shared by every model that loads them.

**Input channels.** This module owns the first-convolution adaptation used when a
network trained on 3-channel RGB images is started on images with another number
of channels (:func:`adapt_input_kernel`):

* ``C = 1`` (grey): the RGB kernels are summed, so a grey image ``g`` gives the
  response the RGB image ``(g, g, g)`` gave;
* ``C = 2`` or ``C > 3`` (RGBA, multi-band satellite, multi-modal medical):
  channel ``c`` gets the RGB kernel ``c mod 3``, and all are scaled by ``3 / C``
  so that the summed response to a constant image keeps its magnitude;
* ``C = 3``: unchanged.

**Sources.** :func:`read_source` reads the ``keras.applications`` weights a kseg
network starts from: ``"imagenet"`` (``keras.applications`` downloads its file once
into ``~/.keras/models/``; a failed download is an :class:`EncoderWeightsError`
saying what to do instead) or a local file in any format
``keras.applications.<Net>(weights=path)`` accepts. A file in the layout of the
published files (the legacy Keras ``.h5``: a ``layer_names`` attribute and one
group per layer with ``weight_names``, e.g.
``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``) is read by layer name
with ``h5py``; Keras 3's ``.weights.h5`` and ``.keras`` files, which store weights
by layer order, are loaded into the ``keras.applications`` network first and read
from its layers.

**Checked mappings.** kseg's own dilated backbones (:mod:`kseg.models.resnet`,
:func:`kseg.models.vgg.dilated_vgg16`) do not use ``keras.applications``' layer
names, so their weights are assigned by explicit tables from the source layer
names (``conv1_conv``, ``conv{s}_block{b}_{0,1,2,3}_{conv,bn}``,
``block{s}_conv{i}``) to kseg's (:func:`resnet_table`, :func:`vgg16_table`), and
:func:`load_table` checks that every source tensor is assigned exactly once,
that nothing is left over and that every weight of the target backbone received a
value; a mismatch is a one-line :class:`EncoderConfigError` naming the layers.
Three exact conversions happen on the way:

* a conv bias followed by BN (the ``keras.applications`` ResNets) is folded into
  the BN moving mean, ``mean' = mean - bias``: kseg's convolutions before BN have
  no bias, and ``BN(conv(x) + b)`` with ``mean`` equals ``BN(conv(x))`` with
  ``mean - b`` in inference; in training the batch mean absorbs any bias;
* the BN epsilon of the source (``1.001e-5`` in the converted Caffe ResNets) is
  copied onto the target BN layers, so inference outputs match;
* the ResNet and VGG16 weights of ``keras.applications`` were trained on BGR
  images ("caffe" preprocessing), kseg feeds RGB (``--image_init sub_mean``
  subtracts the ImageNet mean in RGB order): the first kernel's input channels
  are reversed, so an RGB image gives the response its BGR version gave; the
  channel adaptation then applies to the RGB kernel.

Only ``numpy``, ``h5py`` (a Keras dependency) and ``keras`` are used.
"""

import os
import re
import urllib.error

import numpy as np

from kseg.errors import EncoderConfigError, EncoderWeightsError, InputShapeError, ModelConfigError
from kseg.models.resnet import RESNET_BLOCKS

# keras.applications' ResNet v1 (converted from the Caffe models of He et al.):
# every BatchNormalization layer uses this epsilon.
KERAS_RESNET_BN_EPSILON = 1.001e-5
RESNET_APPLICATIONS = {"resnet50": "ResNet50", "resnet101": "ResNet101"}
# Networks whose ImageNet weights expect BGR input ("caffe" mode of
# keras.applications.imagenet_utils.preprocess_input: vgg16, vgg19 and resnet's
# preprocess_input; ResNetV2, DenseNet and the rest take RGB).
BGR_APPLICATIONS = frozenset({"ResNet50", "ResNet101", "ResNet152", "VGG16", "VGG19"})

_CONV_WEIGHTS = ("kernel", "bias")
_BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")


def adapt_input_kernel(kernel, channels):
    """Adapt a first-convolution kernel trained on RGB to ``channels`` input channels.

    Args:
        kernel: array ``(kh, kw, 3, filters)`` (Keras layout).
        channels: the new number of input channels, ``>= 1``.

    Returns:
        A float array ``(kh, kw, channels, filters)`` of the kernel's dtype.

    Raises:
        InputShapeError: ``kernel`` does not have 3 input channels, or ``channels < 1``.

    Example:
        >>> k = np.ones((3, 3, 3, 8), "float32")
        >>> adapt_input_kernel(k, 1)[0, 0, 0, 0], adapt_input_kernel(k, 6)[0, 0, 5, 0]
        (3.0, 0.5)
    """
    kernel = np.asarray(kernel)
    if kernel.ndim != 4 or kernel.shape[2] != 3:
        raise InputShapeError(
            f"only a kernel with 3 input channels (kh, kw, 3, filters) can be adapted, got "
            f"shape {kernel.shape}"
        )
    channels = int(channels)
    if channels < 1:
        raise InputShapeError(f"input channels must be at least 1, got {channels}")
    if channels == 3:
        return kernel.copy()
    if channels == 1:
        return kernel.sum(axis=2, keepdims=True).astype(kernel.dtype)
    picked = kernel[:, :, [c % 3 for c in range(channels)], :]
    return (picked * (3.0 / channels)).astype(kernel.dtype)


def rgb_input_kernel(kernel, application, channels):
    """The first kernel of ``application``'s ImageNet weights for kseg's RGB input
    with ``channels`` channels: BGR-trained kernels (:data:`BGR_APPLICATIONS`) get
    their input channels reversed, then :func:`adapt_input_kernel` applies."""
    kernel = np.asarray(kernel)
    if application in BGR_APPLICATIONS:
        kernel = kernel[:, :, ::-1, :]
    return adapt_input_kernel(kernel, channels)


# ------------------------------------------------------------------ sources


def check_weights_value(what, weights):
    """``weights`` as ``None``, ``"imagenet"`` or a path string; anything else is a
    one-line :class:`EncoderConfigError` naming ``what`` (``"pspnet"``,
    ``"encoder resnet50"``) and the value."""
    if weights is None or (isinstance(weights, str) and weights == "imagenet"):
        return weights
    if isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights):
        return os.fspath(weights)
    raise EncoderConfigError(
        f"{what}: encoder weights {weights!r} are neither None, 'imagenet' nor an "
        "existing weights file; pass encoder_weights=None, 'imagenet' or a file path"
    )


def load_application(application, weights, input_tensor=None, what=None, **kwargs):
    """``keras.applications.<application>(include_top=False, weights=weights, ...)``
    with kseg's errors.

    Args:
        application: the ``keras.applications`` function name (``"ResNet50"``).
        weights: ``None``, ``"imagenet"`` or a weights file.
        input_tensor: the input to build on; default a new ``(None, None, 3)`` input.
        what: who asks, for messages (default the application name).
        **kwargs: passed to the application (``alpha=0.5``).

    Raises:
        EncoderWeightsError: the ImageNet weights could not be downloaded, or the
            weights file could not be read.
        EncoderConfigError: the weights do not fit the network (a file of another
            network, options without ImageNet weights such as MobileNet's
            ``alpha=0.3``).
    """
    import keras

    what = what or application
    if input_tensor is None:
        input_tensor = keras.Input((None, None, 3))
    fn = getattr(keras.applications, application)
    try:
        return fn(include_top=False, weights=weights, input_tensor=input_tensor, **kwargs)
    except Exception as e:  # keras raises a bare Exception for URL failures
        if weights == "imagenet" and is_download_error(e):
            raise EncoderWeightsError(download_message(what, e)) from None
        if weights not in (None, "imagenet") and isinstance(e, OSError):
            reason = " ".join(str(e).split())
            raise EncoderWeightsError(
                f"{what} could not read weights file {weights} ({reason}); pass a "
                f"keras.applications.{application} weights file or encoder_weights=None"
            ) from None
        if weights is not None and isinstance(e, ValueError):
            reason = " ".join(str(e).split())
            options = f" with options {kwargs}" if kwargs else ""
            raise EncoderConfigError(
                f"{what} cannot load weights {weights!r}{options} ({reason}); pass "
                f"keras.applications.{application} weights (include_top=False) or "
                "encoder_weights=None"
            ) from None
        raise


def is_download_error(e):
    text = str(e)
    return (
        isinstance(e, (OSError, urllib.error.URLError))
        or "URL fetch failure" in text
        or "corrupted file" in text
    )


def download_message(what, e):
    reason = " ".join(str(e).split()) or type(e).__name__
    url = re.search(r"https?://\S+?\.h5", reason)
    where = (
        f"download {url.group(0)} and place it in ~/.keras/models/"
        if url
        else "place the weights file in ~/.keras/models/"
    )
    return (
        f"could not download or read the ImageNet weights of {what} ({reason}); "
        f"pass encoder_weights=None (random initialisation) or {where}"
    )


class Source:
    """Weights read for one network: ``tensors`` is ``{layer name: [arrays]}`` in
    each layer's weight order (Conv2D: kernel, bias; BatchNormalization: gamma,
    beta, moving mean, moving variance), ``application`` the ``keras.applications``
    network they belong to, ``origin`` words for messages ("weights file x.h5")."""

    def __init__(self, tensors, application, origin, model):
        self.tensors, self.application, self.origin, self.model = (
            tensors, application, origin, model)


def read_source(model, application, weights, table=None):
    """Read ``application``'s weights for ``model`` (a builder name, for messages)
    before anything is built, so a bad value or a file of another network fails fast.

    Args:
        model: the builder's name (``"pspnet"``).
        application: ``"ResNet50"``, ``"ResNet101"`` or ``"VGG16"``.
        weights: ``"imagenet"`` or a path (see the module docstring for formats).
        table: the mapping the weights will go through (:func:`resnet_table`,
            :func:`vgg16_table`): its source layer names are checked at once.

    Returns:
        A :class:`Source`.

    Raises:
        EncoderConfigError: ``weights`` is no valid value, or the file does not fit.
        EncoderWeightsError: the ImageNet weights could not be downloaded or the file read.
    """
    weights = check_weights_value(model, weights)
    if weights is None:
        raise EncoderConfigError(f"{model}: no encoder weights to read (encoder_weights=None)")
    tensors = None if weights == "imagenet" else read_h5_layers(weights, model)
    if tensors is None:
        net = load_application(application, weights, what=f"{model} ({application})")
        tensors = {
            layer.name: [np.asarray(v) for v in layer.get_weights()]
            for layer in net.layers
            if layer.weights
        }
    origin = "the ImageNet weights" if weights == "imagenet" else f"weights file {weights}"
    source = Source(tensors, application, origin, model)
    if table is not None:
        _check_names(source, table)
    return source


def _h5_strings(attrs, name):
    """A (possibly chunked: ``name0``, ``name1``, ...) string-list attribute."""
    if name in attrs:
        values = list(attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in attrs:
            values.extend(attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _h5_text(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_h5_layers(path, model, only=None):
    """``{layer name: [arrays in the layer's weight order]}`` of a Keras HDF5 weights file.

    THE reader of weight files by layer name (every pretrained start of kseg's own
    networks goes through it). Reads the legacy ``.h5`` layout (root attribute
    ``layer_names``, possibly chunked, one group per layer with ``weight_names``:
    keras.applications' published files, Keras 2's ``save_weights``; a whole-model
    file's ``model_weights`` group too) and Keras 3's ``.weights.h5``
    (``layers/<key>/vars/<i>``, when the ``vars`` group names its layer).

    Args:
        path: the file.
        model: the builder's name, for messages.
        only: read just these layer names (others are listed with no arrays), so a
            528 MB file with a classifier is not loaded whole when it is not needed.

    Returns:
        The table, or ``None`` when ``path`` is not an HDF5 file with layer names
        (a ``.keras`` zip, a ``.weights.h5`` that stores weights by order only):
        such files are loaded by Keras itself (:func:`load_application`).

    Raises:
        EncoderWeightsError: an HDF5 file whose layer groups cannot be read.
    """
    import h5py  # a dependency of keras

    try:
        f = h5py.File(path, "r")
    except OSError:
        return None
    wanted = None if only is None else set(only)
    tensors = {}
    try:
        with f:
            root = f
            if not _h5_strings(f.attrs, "layer_names") and "model_weights" in f:
                root = f["model_weights"]  # a whole-model file saved by Keras 2
            names = _h5_strings(root.attrs, "layer_names")
            if names:  # legacy .h5
                for name in names:
                    group = root[name]
                    weight_names = _h5_strings(group.attrs, "weight_names")
                    if wanted is not None and name not in wanted:
                        tensors[name] = []
                    elif weight_names:
                        tensors[name] = [np.asarray(group[w]) for w in weight_names]
            elif "layers" in root:  # Keras 3 .weights.h5
                for group in root["layers"].values():
                    v = group.get("vars")
                    if v is None or "name" not in v.attrs:
                        continue
                    name = _h5_text(v.attrs["name"])
                    if wanted is not None and name not in wanted:
                        tensors[name] = []
                    else:
                        tensors[name] = [np.asarray(v[str(i)]) for i in range(len(v))]
    except (KeyError, OSError, ValueError) as e:
        reason = " ".join(str(e).split())
        raise EncoderWeightsError(
            f"{model}: could not read weights file {path} ({reason}); pass an intact "
            "keras.applications weights file or encoder_weights=None"
        ) from None
    return {k: v for k, v in tensors.items() if v or wanted is not None} or None


# ------------------------------------------------------------------ mapping tables


def resnet_table(prefix, blocks):
    """The mapping from ``keras.applications`` ResNet layers to kseg's dilated ResNet.

    Args:
        prefix: kseg's layer-name prefix (``"pspnet_backbone"``): targets are
            ``{prefix}_stem_conv1_{conv,bn}`` and
            ``{prefix}_stage{i}_block{b}_{proj,reduce,conv,expand}_{conv,bn}``
            (:mod:`kseg.models.resnet`).
        blocks: bottlenecks per stage, ``(3, 4, 6, 3)`` (ResNet-50) or
            ``(3, 4, 23, 3)`` (ResNet-101); a shorter tuple maps the first stages.

    Returns:
        A list of ``(source conv, source bn, target conv, target bn)``, the input
        convolution first. keras' stage ``conv{s}`` is kseg's ``stage{s-1}``, and its
        branch convs ``_0`` (projection shortcut, first block only), ``_1``, ``_2``,
        ``_3`` are kseg's ``proj``, ``reduce``, ``conv``, ``expand``.
    """
    table = [("conv1_conv", "conv1_bn", f"{prefix}_stem_conv1_conv", f"{prefix}_stem_conv1_bn")]
    parts = (("0", "proj"), ("1", "reduce"), ("2", "conv"), ("3", "expand"))
    for stage, n_blocks in enumerate(blocks, start=1):
        for b in range(1, n_blocks + 1):
            src, dst = f"conv{stage + 1}_block{b}", f"{prefix}_stage{stage}_block{b}"
            for i, part in parts[(0 if b == 1 else 1):]:
                table.append(
                    (f"{src}_{i}_conv", f"{src}_{i}_bn", f"{dst}_{part}_conv", f"{dst}_{part}_bn")
                )
    return table


def vgg16_table(prefix):
    """The mapping from ``keras.applications.VGG16``'s ``block{s}_conv{i}`` to
    :func:`kseg.models.vgg.dilated_vgg16`'s ``{prefix}_conv{s}_{i}`` (no BN: the
    second and fourth entries are ``None``), the input convolution first."""
    stages = (2, 2, 3, 3, 3)
    return [
        (f"block{s}_conv{i}", None, f"{prefix}_conv{s}_{i}", None)
        for s, n in enumerate(stages, start=1)
        for i in range(1, n + 1)
    ]


# ------------------------------------------------------------------ assignment


def leaf_layers(model):
    """``{name: layer}`` of every layer of ``model``, nested models opened up
    (ICNet runs a shared sub-model twice)."""
    import keras

    out = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.update(leaf_layers(layer))
        else:
            out[layer.name] = layer
    return out


def _names(items, limit=4):
    items = sorted(items)
    shown = ", ".join(items[:limit])
    return shown + (f" ... ({len(items)} in all)" if len(items) > limit else "")


def load_table(model, source, table, owned, bn_epsilon=None):
    """Assign ``source``'s tensors to ``model``'s layers by ``table``, checked.

    Args:
        model: the kseg ``keras.Model``.
        source: a :class:`Source`.
        table: ``[(source conv, source bn | None, target conv, target bn | None)]``
            (:func:`resnet_table`, :func:`vgg16_table`); the first entry is the
            input convolution, whose kernel goes through :func:`rgb_input_kernel`
            for the model's number of input channels.
        owned: layer-name prefixes of the backbone: every weight of every layer
            whose name starts with one of them must receive a value.
        bn_epsilon: epsilon to give the target BN layers (the source's).

    Raises:
        EncoderConfigError: a source layer the table needs is missing, a source
            layer is left over, a layer has other weights or shapes (a file of
            another network or width).
        RuntimeError: the table assigns a tensor twice or leaves a backbone
            weight without a value (a kseg bug, never the user's).
    """
    _check_names(source, table)
    layers = leaf_layers(model)
    assigned = set()
    for k, (src_conv, src_bn, dst_conv, dst_bn) in enumerate(table):
        conv = _unpack(source, src_conv, _CONV_WEIGHTS)
        target = layers[dst_conv]
        kernel = conv["kernel"]
        if k == 0:
            channels = target.kernel.shape[2]
            if kernel.ndim == 4 and kernel.shape[2] == 3:
                kernel = rgb_input_kernel(kernel, source.application, channels)
        if dst_bn is None:
            _assign(source, src_conv, target, {"kernel": kernel, "bias": conv["bias"]})
        else:
            bn = _unpack(source, src_bn, _BN_WEIGHTS)
            bn["moving_mean"] = bn["moving_mean"] - conv["bias"]
            _assign(source, src_conv, target, {"kernel": kernel})
            _assign(source, src_bn, layers[dst_bn], bn)
            if bn_epsilon is not None:
                layers[dst_bn].epsilon = float(bn_epsilon)
            assigned.add(dst_bn)
        assigned.add(dst_conv)
    unset = [
        name for name, layer in layers.items()
        if name.startswith(tuple(owned)) and layer.weights and name not in assigned
    ]
    if unset:
        raise RuntimeError(f"the mapping leaves backbone layers without weights: {_names(unset)}")


def _check_names(source, table):
    """Every source layer of ``table`` is in ``source`` and used once; nothing is left over."""
    wanted = [name for entry in table for name in entry[:2] if name is not None]
    twice = sorted({n for n in wanted if wanted.count(n) > 1})
    if twice:
        raise RuntimeError(f"the mapping assigns source layers {twice} more than once")
    missing = [n for n in wanted if n not in source.tensors]
    left = [n for n in source.tensors if n not in set(wanted)]
    if missing or left:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if left:
            parts.append(f"left over {_names(left)}")
        raise EncoderConfigError(
            f"{source.model}: {source.origin} does not match keras.applications."
            f"{source.application} (include_top=False): {'; '.join(parts)}; pass that "
            "network's weights or encoder_weights=None"
        )


def _unpack(source, name, kinds):
    arrays = source.tensors[name]
    if len(arrays) != len(kinds):
        raise EncoderConfigError(
            f"{source.model}: layer {name} of {source.origin} has {len(arrays)} tensors, "
            f"keras.applications.{source.application}'s has {len(kinds)} ({', '.join(kinds)}); "
            "pass that network's weights or encoder_weights=None"
        )
    return dict(zip(kinds, (np.asarray(a, np.float32) for a in arrays)))


def _assign(source, src_name, layer, values):
    """Give every variable of ``layer`` its value from ``values`` (by variable name)."""
    for v in layer.weights:
        value = values[v.name]
        if tuple(value.shape) != tuple(v.shape):
            raise EncoderConfigError(
                f"{source.model}: {v.name} of layer {src_name} in {source.origin} has shape "
                f"{tuple(value.shape)}, the model's layer {layer.name} needs {tuple(v.shape)}; "
                "pass keras.applications."
                f"{source.application} weights (and width_multiplier=1.0) or encoder_weights=None"
            )
        v.assign(value)


# ------------------------------------------------------------------ the kseg backbones


def check_start(model, weights, width_multiplier=1.0, deep_stem=False):
    """Options a pretrained start cannot take, as one-line :class:`ModelConfigError`
    (checked before anything is read or built)."""
    if weights is None:
        return
    if deep_stem:
        raise ModelConfigError(
            f"{model}: encoder_weights={weights!r} needs the 7x7 ResNet stem the ImageNet "
            "weights were trained with (no weights of the deep stem are shipped); pass "
            "deep_stem=False"
        )
    if width_multiplier != 1:
        raise ModelConfigError(
            f"{model}: encoder_weights={weights!r} needs the paper's widths; pass "
            f"width_multiplier=1.0 (received {width_multiplier!r}) or encoder_weights=None"
        )


def load_resnet(model, source, prefix, blocks, owned=None):
    """Load ``keras.applications`` ResNet weights (``source``) into the dilated ResNet
    of ``model`` whose layers are named ``{prefix}_stem_*``, ``{prefix}_stage*``
    (:func:`kseg.models.resnet.dilated_resnet`), with :func:`load_table`'s checks.
    ``owned`` defaults to those two prefixes."""
    owned = owned or (f"{prefix}_stem_", f"{prefix}_stage")
    load_table(model, source, resnet_table(prefix, blocks), owned, KERAS_RESNET_BN_EPSILON)


def read_resnet(model, backbone, weights, prefix):
    """:func:`read_source` for a dilated ResNet (``"resnet50"``/``"resnet101"``) whose
    layers will be named ``{prefix}_...``, the names checked at once."""
    return read_source(
        model, RESNET_APPLICATIONS[backbone], weights, resnet_table(prefix, RESNET_BLOCKS[backbone])
    )


def load_dilated_vgg16(model, source, prefix):
    """Load ``keras.applications.VGG16`` weights (``source``) into
    :func:`kseg.models.vgg.dilated_vgg16`'s layers ``{prefix}_conv{s}_{i}``."""
    load_table(model, source, vgg16_table(prefix), (f"{prefix}_conv",))
