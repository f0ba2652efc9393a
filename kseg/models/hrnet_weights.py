"""HRNet ImageNet weights: the official PyTorch checkpoints as a kseg weights file.

The official ImageNet classifiers HRNet-W18-C, W32-C and W48-C
(``hrnetv2_w{18,32,48}_imagenet_pretrained.pth``, linked from the README of
HRNet/HRNet-Image-Classification, network ``lib/models/cls_hrnet.py``) have, below
their classification head, the same layers as kseg's :func:`kseg.models.hrnet.hrnet`
at the paper's structure (stage modules 1/4/3, four blocks per branch). This module

* reads a checkpoint (:func:`read_state_dict`): with torch when it is installed,
  otherwise with a restricted unpickler and numpy -- both PyTorch formats (the zip
  archive of torch >= 1.6 and the older single-stream format of the official
  files), or an ``.npz`` state dict;
* maps every tensor (:func:`convert_state_dict`) through :func:`official_layout`,
  kseg's own table of the official modules: every key is either mapped exactly once
  (conv ``weight`` OIHW -> Keras ``kernel`` HWIO; BN ``weight``, ``bias``,
  ``running_mean``, ``running_var`` -> ``gamma``, ``beta``, ``moving_mean``,
  ``moving_variance``) or dropped by an explicit rule (the classification head,
  :data:`HEAD_PREFIXES`, and BN ``num_batches_tracked``); an unknown key, a missing
  key or a wrong shape is a one-line :class:`EncoderWeightsError` naming the key;
* writes the result atomically as ``.npz`` (:func:`write_weights`), keyed
  ``<layer>/<weight>`` with kseg's layer names less the model-name prefix, plus a
  ``__meta__`` entry (format, model, width, BN epsilon, source file and its SHA-256);
* loads it into a built model (:func:`load_into`), checking that every backbone
  weight is assigned with its shape, and copying PyTorch's BN epsilon (1e-5).

Only numpy (and torch, when present) is used here; Keras only inside
:func:`load_into`. ``kseg convert_weights hrnet CHECKPOINT`` is the command.
"""

import collections
import hashlib
import io
import json
import os
import pickle
import struct
import tarfile
import zipfile

import numpy as np

from kseg.errors import EncoderConfigError, EncoderWeightsError
from kseg.files import atomic_path

FORMAT = "kseg-weights/1"
#: the paper's structure, the only one with published weights
STAGE_MODULES = (1, 4, 3)
NUM_BLOCKS = 4
STEM_FILTERS = 64
STAGE1_OUT = 256
TORCH_BN_EPSILON = 1e-5  # nn.BatchNorm2d's default, used by the official code
#: modules of the official ImageNet classifier that a segmentation model does not use
HEAD_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")
#: kseg hrnet layers (less the model-name prefix) that are not part of the backbone
HEAD_LAYERS = ("head_conv", "head_bn", "logits")
#: torch BN tensor -> Keras BatchNormalization weight, in Keras' order
BN_WEIGHTS = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
              ("running_var", "moving_variance"))
OFFICIAL_SOURCE = "HRNet/HRNet-Image-Classification (README, 'ImageNet pretrained models')"


def official_name(width):
    return f"hrnetv2_w{width}_imagenet_pretrained.pth"


def default_weights_path(width):
    """Where ``hrnet(encoder_weights="imagenet", width=C)`` looks:
    ``$KERAS_HOME/models/kseg_hrnetv2_w{C}_imagenet.npz`` (``KERAS_HOME`` defaults to
    ``~/.keras``, Keras' own cache of ``keras.applications`` weights)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", f"kseg_hrnetv2_w{int(width)}_imagenet.npz")


def convert_command(width):
    return f"kseg convert_weights hrnet {official_name(width)} --width {width}"


# ------------------------------------------------------------------------------------------
# The official network, module by module
# ------------------------------------------------------------------------------------------
def official_layout(width):
    """Every conv and BN module of the official HRNet backbone of width ``C``, in order.

    Returns a list of ``(torch_prefix, kind, kseg_layer, shape)``: ``kind`` is
    ``"conv"`` (``shape`` OIHW, no bias) or ``"bn"`` (``shape`` ``(channels,)``);
    ``kseg_layer`` is the kseg hrnet layer name without the model-name prefix.

    The official modules (``cls_hrnet.py`` / ``seg_hrnet.py``): ``conv1``/``bn1``,
    ``conv2``/``bn2`` (stem); ``layer1.{b}`` (bottlenecks ``conv1..3``/``bn1..3``,
    ``layer1.0.downsample.{0,1}``); ``transition{t}.{i}.{0,1}`` (a branch whose width
    changes, 3x3 stride 1) and ``transition{t}.{n}.0.{0,1}`` (the new branch, 3x3
    stride 2); ``stage{s}.{m}.branches.{b}.{k}`` (basic blocks ``conv1,2``/``bn1,2``);
    ``stage{s}.{m}.fuse_layers.{i}.{j}.{0,1}`` (``j > i``: 1x1 conv, BN) and
    ``...fuse_layers.{i}.{j}.{k}.{0,1}`` (``j < i``: ``i - j`` stride-2 3x3 convs).
    """
    out = []

    def conv_bn(conv, bn, layer, o, i, k):
        out.append((conv, "conv", f"{layer}_conv", (o, i, k, k)))
        out.append((bn, "bn", f"{layer}_bn", (o,)))

    conv_bn("conv1", "bn1", "stem_conv1", STEM_FILTERS, 3, 3)
    conv_bn("conv2", "bn2", "stem_conv2", STEM_FILTERS, STEM_FILTERS, 3)
    mid = STAGE1_OUT // 4
    c_in = STEM_FILTERS
    for b in range(NUM_BLOCKS):
        p, n = f"layer1.{b}", f"stage1_block{b + 1}"
        if c_in != STAGE1_OUT:
            conv_bn(f"{p}.downsample.0", f"{p}.downsample.1", f"{n}_proj", STAGE1_OUT, c_in, 1)
        conv_bn(f"{p}.conv1", f"{p}.bn1", f"{n}_reduce", mid, c_in, 1)
        conv_bn(f"{p}.conv2", f"{p}.bn2", f"{n}_conv", mid, mid, 3)
        conv_bn(f"{p}.conv3", f"{p}.bn3", f"{n}_expand", STAGE1_OUT, mid, 1)
        c_in = STAGE1_OUT

    prev = [STAGE1_OUT]
    for stage, n_modules in zip((2, 3, 4), STAGE_MODULES):
        widths = [width * 2**i for i in range(stage)]
        t = f"transition{stage - 1}"
        for i, (c_old, c_new) in enumerate(zip(prev, widths)):
            if c_old != c_new:
                conv_bn(f"{t}.{i}.0", f"{t}.{i}.1", f"{t}_branch{i + 1}", c_new, c_old, 3)
        n = len(prev)
        conv_bn(f"{t}.{n}.0.0", f"{t}.{n}.0.1", f"{t}_branch{n + 1}", widths[n], prev[-1], 3)
        for m in range(n_modules):
            p, name = f"stage{stage}.{m}", f"stage{stage}_module{m + 1}"
            for b, c in enumerate(widths):
                for k in range(NUM_BLOCKS):
                    bp, bn = f"{p}.branches.{b}.{k}", f"{name}_branch{b + 1}_block{k + 1}"
                    conv_bn(f"{bp}.conv1", f"{bp}.bn1", f"{bn}_conv1", c, c, 3)
                    conv_bn(f"{bp}.conv2", f"{bp}.bn2", f"{bn}_conv2", c, c, 3)
            for i, c_i in enumerate(widths):
                for j, c_j in enumerate(widths):
                    fp, fn = f"{p}.fuse_layers.{i}.{j}", f"{name}_fuse_{j + 1}to{i + 1}"
                    if j > i:
                        conv_bn(f"{fp}.0", f"{fp}.1", fn, c_i, c_j, 1)
                    for k in range(i - j):  # j < i: stride-2 3x3 convs, the last one to C_i
                        c_out = c_i if k == i - j - 1 else c_j
                        conv_bn(f"{fp}.{k}.0", f"{fp}.{k}.1", f"{fn}_down{k + 1}", c_out, c_j, 3)
        prev = widths
    return out


def expected_tensors(width):
    """``{torch key: (kseg layer, keras weight name, torch shape)}`` of the backbone."""
    table = {}
    for prefix, kind, layer, shape in official_layout(width):
        if kind == "conv":
            table[f"{prefix}.weight"] = (layer, "kernel", shape)
        else:
            for t, k in BN_WEIGHTS:
                table[f"{prefix}.{t}"] = (layer, k, shape)
    return table


# ------------------------------------------------------------------------------------------
# Reading PyTorch checkpoints without torch
# ------------------------------------------------------------------------------------------
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


class _Unreadable(Exception):
    """The file is not a checkpoint this reader understands (message: why)."""


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.code = _STORAGE_DTYPES[name]

    def dtype(self, little_endian=True):
        code = "u2" if self.code == "bf16" else self.code
        return np.dtype(("<" if little_endian else ">") + code)


class _Storage:
    """A flat storage; ``data`` (numpy, 1-D) is filled once the bytes are read."""

    def __init__(self, kind, numel, data=None, base=None, offset=0):
        self.kind, self.numel, self.data, self.base, self.offset = kind, int(numel), data, base, offset

    def array(self):
        if self.base is not None:  # a view of another storage (legacy format)
            return self.base.array()[self.offset:self.offset + self.numel]
        if self.data is None:
            raise _Unreadable("a tensor's storage has no data in the file")
        data = self.data
        if self.kind.code == "bf16":  # bfloat16: the high half of a float32
            data = (data.astype("<u4") << 16).view("<f4")
        return data.astype(data.dtype.newbyteorder("="), copy=False)


class _Tensor:
    """A tensor whose storage may not be read yet (materialised by :func:`_materialize`)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def array(self):
        data = self.storage.array()
        if len(self.size) != len(self.stride):
            raise _Unreadable("a tensor has a size and a stride of different lengths")
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, data.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset < 0 or min(self.stride, default=0) < 0 or last >= len(data):
            raise _Unreadable("a tensor reaches past the end of its storage (truncated or corrupt file)")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], self.size, [s * data.itemsize for s in self.stride], writeable=False
        )
        return np.array(view, order="C")


def _rebuild_tensor(storage, offset, size, stride, *_):
    if not isinstance(storage, _Storage):
        raise _Unreadable("a tensor without a storage")
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *_):
    return data


def _rebuild_from_type(func, _type, args, _state=None):
    """torch 2's wrapper for tensors with a subclass or attributes (e.g. a saved Parameter)."""
    return func(*args)


_TENSOR_TYPES = {("torch", "Tensor"), ("torch._tensor", "Tensor"), ("torch.nn.parameter", "Parameter")}


class _Unpickler(pickle.Unpickler):
    """Unpickles tensors and containers only: any other global is refused."""

    def __init__(self, file, load_storage=None):
        super().__init__(file, encoding="utf-8")
        self._load_storage = load_storage

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if (module, name) == ("torch._tensor", "_rebuild_from_type_v2"):
            return _rebuild_from_type
        if (module, name) in _TENSOR_TYPES:
            return name  # only passed to _rebuild_from_type, never called
        if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise _Unreadable(f"it holds a {module}.{name} object, not only tensors (install torch, or save "
                          "the model's state_dict())")

    def persistent_load(self, pid):
        if self._load_storage is None or not isinstance(pid, tuple) or not pid:
            raise _Unreadable("unexpected persistent id")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":
            raise _Unreadable("it holds a pickled model, not a state dict (save model.state_dict())")
        if kind != "storage" or not isinstance(pid[1], _StorageType):
            raise _Unreadable(f"unknown persistent id {kind!r}")
        return self._load_storage(pid[1:])


def _unpickle(file, load_storage=None):
    try:
        return _Unpickler(file, load_storage).load()
    except _Unreadable:
        raise
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... from a damaged stream
        raise _Unreadable(f"its pickle cannot be read ({type(e).__name__}: {' '.join(str(e).split())})") from None


def _read_torch_zip(path):
    """torch.save's zip format (torch >= 1.6): ``<archive>/data.pkl`` + ``<archive>/data/<key>``."""
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        pkl = sorted(n for n in names if n.endswith("data.pkl") and n.count("/") == 1)
        if len(pkl) != 1:
            raise _Unreadable("a zip archive without one <archive>/data.pkl (neither a PyTorch checkpoint "
                              "nor an .npz)")
        prefix = pkl[0][: -len("data.pkl")]
        little = True
        if prefix + "byteorder" in names:
            little = z.read(prefix + "byteorder").decode("ascii", "replace").strip() != "big"
        storages = {}

        def load_storage(args):
            if len(args) != 4:
                raise _Unreadable("a storage record of unexpected length")
            kind, key, _location, numel = args
            if key not in storages:
                member = f"{prefix}data/{key}"
                if member not in names:
                    raise _Unreadable(f"the storage {member} is missing")
                dtype = kind.dtype(little)
                raw = z.read(member)
                if len(raw) < int(numel) * dtype.itemsize:
                    raise _Unreadable(f"the storage {member} is truncated")
                storages[key] = _Storage(kind, numel, np.frombuffer(raw, dtype, count=int(numel)))
            return storages[key]

        with z.open(pkl[0]) as f:
            result = _unpickle(io.BytesIO(f.read()), load_storage)
    return _materialize(result)


def _read_torch_legacy(f):
    """The single-stream format (torch < 1.6; the official HRNet files): pickles of the magic
    number, protocol and system info, the object, the storage keys, then each storage as
    an int64 element count and its bytes."""
    if _unpickle(f) != _LEGACY_PROTOCOL:
        raise _Unreadable("an unknown PyTorch protocol version")
    info = _unpickle(f)
    little = not isinstance(info, dict) or info.get("little_endian", True)
    storages = {}

    def load_storage(args):
        if len(args) != 5:
            raise _Unreadable("a storage record of unexpected length")
        kind, key, _location, numel, view = args
        if key not in storages:
            storages[key] = _Storage(kind, numel)
        if view is None:
            return storages[key]
        view_key, offset, size = view
        if view_key not in storages:
            storages[view_key] = _Storage(kind, size, base=storages[key], offset=int(offset))
        return storages[view_key]

    result = _unpickle(f, load_storage)
    keys = _unpickle(f)
    if not isinstance(keys, list):
        raise _Unreadable("no list of storage keys after the object")
    for key in keys:
        st = storages.get(key)
        if st is None:
            raise _Unreadable(f"the storage key {key!r} is not used by any tensor")
        dtype = st.kind.dtype(little)
        head = f.read(8)
        if len(head) != 8:
            raise _Unreadable("the storage data is truncated")
        (numel,) = struct.unpack("<q" if little else ">q", head)
        if numel != st.numel:
            raise _Unreadable(f"storage {key!r} holds {numel} elements, its tensors say {st.numel}")
        raw = f.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise _Unreadable("the storage data is truncated")
        st.data = np.frombuffer(raw, dtype)
    return _materialize(result)


def _materialize(obj):
    if isinstance(obj, _Tensor):
        return obj.array()
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _read_without_torch(path):
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if names and all(n.endswith(".npy") for n in names):
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        return _read_torch_zip(path)
    with open(path, "rb") as f:
        try:
            magic = _unpickle(f) if f.read(1) == b"\x80" and f.seek(0) == 0 else None
        except _Unreadable:
            magic = None
        if magic == _LEGACY_MAGIC:
            return _read_torch_legacy(f)
    if tarfile.is_tarfile(path):
        raise _Unreadable("it is in PyTorch's oldest (tar) format; install torch to read it")
    raise _Unreadable("it is neither a PyTorch checkpoint (.pth/.pt) nor an .npz state dict")


def _read_with_torch(path):
    import torch

    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except TypeError:  # torch < 1.13 has no weights_only
            obj = torch.load(path, map_location="cpu")
    except Exception as e:
        raise _Unreadable(f"torch.load failed ({type(e).__name__}: {' '.join(str(e).split())})") from None

    def to_numpy(v):
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu()
            return (v.float() if v.dtype == torch.bfloat16 else v).numpy()
        if isinstance(v, dict):
            return {k: to_numpy(x) for k, x in v.items()}
        return v

    return to_numpy(obj)


def _torch_available():
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    return True


def _state_dict(obj, path):
    """The ``{name: array}`` state dict inside a loaded checkpoint."""
    for _ in range(2):  # {"state_dict": ...} or {"model": ...}, possibly nested once
        if isinstance(obj, dict):
            for k in ("state_dict", "model", "model_state_dict"):
                if isinstance(obj.get(k), dict):
                    obj = obj[k]
                    break
    if not isinstance(obj, dict) or not obj:
        raise EncoderWeightsError(f"{path} holds no state dict ({type(obj).__name__}); convert a checkpoint "
                                  "saved from model.state_dict()")
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            raise EncoderWeightsError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; convert a "
                                      "checkpoint saved from model.state_dict()")
    if all(k.startswith("module.") for k in obj):  # saved from nn.DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def read_state_dict(path, use_torch=None):
    """Read a checkpoint's state dict as ``{key: numpy array}``.

    Args:
        path: a PyTorch checkpoint (``torch.save`` zip or legacy format, possibly
            ``{"state_dict": ...}`` / ``{"model": ...}``, ``module.`` prefixes
            stripped) or an ``.npz`` of the state dict.
        use_torch: ``None`` (torch when it is installed), ``True`` or ``False``
            (the restricted unpickler: only tensors, storages and ordered dicts are
            accepted, nothing is executed).

    Raises:
        EncoderWeightsError: a missing, unreadable or foreign file (one line).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EncoderWeightsError(f"checkpoint {path} not found; download {OFFICIAL_SOURCE} and pass its path")
    if use_torch is None:
        use_torch = _torch_available()
    try:
        if use_torch and not path.endswith(".npz"):
            obj = _read_with_torch(path)
        else:
            obj = _read_without_torch(path)
    except _Unreadable as e:
        raise EncoderWeightsError(f"{path} cannot be read: {e}") from None
    except OSError as e:
        raise EncoderWeightsError(f"{path} cannot be read: {e.strerror or e}") from None
    return _state_dict(obj, path)


# ------------------------------------------------------------------------------------------
# Converting
# ------------------------------------------------------------------------------------------
def detect_width(state):
    """The width ``C`` of an official HRNet state dict (``transition1.0.0.weight`` is C x 256 x 3 x 3), or None."""
    w = state.get("transition1.0.0.weight")
    if w is not None and w.ndim == 4 and w.shape[1:] == (STAGE1_OUT, 3, 3):
        return int(w.shape[0])
    return None


def _more(keys):
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def convert_state_dict(state, width=None, source="checkpoint"):
    """Map an official HRNet state dict onto kseg's layer names.

    Args:
        state: ``{torch key: array}`` (:func:`read_state_dict`).
        width: ``C``; ``None`` reads it from ``transition1.0.0.weight``.
        source: the file name used in error messages.

    Returns:
        ``(weights, report)``: ``weights`` maps ``"<kseg layer>/<weight>"`` to float32
        arrays in Keras layout; ``report`` counts what happened to every key
        (``tensors == mapped + sum(dropped_head.values()) + dropped_num_batches_tracked``).

    Raises:
        EncoderWeightsError: an unknown key, a missing key, a wrong shape or a
            non-finite value (one line naming the first such key).
    """
    found = detect_width(state)
    if width is None:
        if found is None:
            raise EncoderWeightsError(f"{source}: no transition1.0.0.weight of shape (C, 256, 3, 3) to read "
                                      "the HRNet width from; is it an official HRNet checkpoint? pass --width")
        width = found
    width = int(width)
    hint = (f"; the checkpoint looks like HRNet-W{found}: pass --width {found}" if found not in (None, width)
            else f"; is it the official HRNet-W{width} ImageNet checkpoint ({official_name(width)})?")
    table = expected_tensors(width)
    batches = {f"{p}.num_batches_tracked" for p, kind, _, _ in official_layout(width) if kind == "bn"}
    head = {p: sorted(k for k in state if k.startswith(p)) for p in HEAD_PREFIXES}
    dropped = {k for keys in head.values() for k in keys}
    unknown = sorted(k for k in state if k not in table and k not in batches and k not in dropped)
    if unknown:
        raise EncoderWeightsError(
            f"{source}: key {unknown[0]!r}{_more(unknown)} is neither a layer of the HRNet-W{width} backbone nor "
            f"of the dropped classification head ({', '.join(p[:-1] for p in HEAD_PREFIXES)}){hint}"
        )
    missing = [k for k in table if k not in state]
    if missing:
        raise EncoderWeightsError(f"{source}: key {missing[0]!r}{_more(missing)} of the HRNet-W{width} backbone "
                                  f"is missing{hint}")
    weights = {}
    for key, (layer, name, shape) in table.items():
        value = np.asarray(state[key])
        if value.shape != shape:
            raise EncoderWeightsError(f"{source}: key {key!r} has shape {value.shape}, HRNet-W{width} expects "
                                      f"{shape}{hint}")
        if value.dtype.kind != "f" or not np.isfinite(value).all():
            raise EncoderWeightsError(f"{source}: key {key!r} holds {'non-finite values' if value.dtype.kind == 'f' else value.dtype}, "
                                      "not finite floats; the checkpoint is damaged")
        value = value.astype("float32")
        weights[f"{layer}/{name}"] = value.transpose(2, 3, 1, 0) if name == "kernel" else value
    report = {
        "width": width,
        "tensors": len(state),
        "mapped": len(table),
        "layers": len({layer for layer, _, _ in table.values()}),
        "dropped_head": {p[:-1]: len(keys) for p, keys in head.items()},
        "dropped_num_batches_tracked": sum(k in state for k in batches),
    }
    assert report["mapped"] + len(dropped) + report["dropped_num_batches_tracked"] == len(state)
    return weights, report


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_weights(path, weights, meta):
    """Write ``weights`` (``{"layer/weight": array}``) and ``meta`` to ``path`` (.npz), atomically."""
    path = os.fspath(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, __meta__=np.array(json.dumps(meta, sort_keys=True)), **weights)


def convert_checkpoint(checkpoint, output=None, width=None, use_torch=None):
    """Convert an official HRNet ImageNet checkpoint into a kseg weights file.

    Args:
        checkpoint: the official ``hrnetv2_w{C}_imagenet_pretrained.pth`` (or an ``.npz``).
        output: the ``.npz`` to write; default :func:`default_weights_path` (what
            ``encoder_weights="imagenet"`` loads).
        width: ``C`` (18, 32, 48, ...); ``None`` reads it from the checkpoint.
        use_torch: see :func:`read_state_dict`.

    Returns:
        The report of :func:`convert_state_dict` plus ``output`` and ``source``.

    Raises:
        EncoderWeightsError: unreadable checkpoint, unknown/missing key, wrong shape.
        EncoderConfigError: an output name that is not ``.npz``.

    Example:
        >>> convert_checkpoint("hrnetv2_w18_imagenet_pretrained.pth", width=18)  # doctest: +SKIP
    """
    checkpoint = os.fspath(checkpoint)
    if width is not None and (isinstance(width, bool) or int(width) != width or width < 1):
        raise EncoderConfigError(f"HRNet width must be a positive integer (18, 32 or 48), got {width!r}")
    state = read_state_dict(checkpoint, use_torch=use_torch)
    weights, report = convert_state_dict(state, width, source=checkpoint)
    output = os.path.expanduser(os.fspath(output)) if output else default_weights_path(report["width"])
    if not output.endswith(".npz"):
        raise EncoderConfigError(f"output {output} must be an .npz file name; e.g. --output "
                                 f"kseg_hrnetv2_w{report['width']}_imagenet.npz")
    meta = {
        "format": FORMAT,
        "model": "hrnet",
        "width": report["width"],
        "stage_modules": list(STAGE_MODULES),
        "num_blocks": NUM_BLOCKS,
        "bn_epsilon": TORCH_BN_EPSILON,
        "source": os.path.basename(checkpoint),
        "source_sha256": _sha256(checkpoint),
        "report": report,
    }
    write_weights(output, weights, meta)
    return {**report, "output": output, "source": checkpoint}


# ------------------------------------------------------------------------------------------
# Loading into kseg's hrnet
# ------------------------------------------------------------------------------------------
def resolve_weights(encoder_weights, width):
    """The weights file that ``hrnet(encoder_weights=...)`` loads (``None`` for none).

    Raises:
        EncoderConfigError: a value that is neither None, "imagenet" nor a path.
        EncoderWeightsError: the file is missing (with the command that makes it).
    """
    if encoder_weights is None:
        return None
    if encoder_weights == "imagenet":
        path = default_weights_path(width)
        if not os.path.isfile(path):
            raise EncoderWeightsError(
                f"hrnet: no converted HRNet-W{width} ImageNet weights at {path}; download "
                f"{official_name(width)} from {OFFICIAL_SOURCE} and run: {convert_command(width)}"
            )
        return path
    if not isinstance(encoder_weights, (str, os.PathLike)):
        raise EncoderConfigError(f"hrnet: encoder_weights must be None, 'imagenet' or a weights file, got "
                                 f"{encoder_weights!r}")
    path = os.path.expanduser(os.fspath(encoder_weights))
    if not os.path.isfile(path):
        raise EncoderWeightsError(f"hrnet: encoder_weights file {path} not found; pass None, 'imagenet' or "
                                  f"a file written by {convert_command(width)} --output FILE.npz")
    return path


def read_meta(path, model="hrnet", title="HRNet"):
    """The ``__meta__`` of a kseg weights file, checked to be one for ``model`` (``hrnet``,
    ``segformer``: every converted-weights file of kseg has this format); ``title`` names it
    in the error."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["__meta__"])) if "__meta__" in f.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise EncoderWeightsError(f"{path} is not a kseg weights file ({' '.join(str(e).split())}); make "
                                  f"one with kseg convert_weights {model} CHECKPOINT") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("model") != model:
        raise EncoderWeightsError(f"{path} is not a kseg {title} weights file (no {FORMAT} {model} metadata); "
                                  f"make one with kseg convert_weights {model} CHECKPOINT")
    return meta


def check_weights_file(path, width, stage_modules, num_blocks):
    """Refuse (before building) a model the file cannot fill; returns the file's metadata."""
    meta = read_meta(path)
    if meta.get("width") != width:
        raise EncoderConfigError(f"hrnet: {path} holds HRNet-W{meta.get('width')} weights, the model has "
                                 f"width={width}; pass width={meta.get('width')} or convert the W{width} checkpoint")
    if tuple(stage_modules) != STAGE_MODULES or num_blocks != NUM_BLOCKS:
        raise EncoderConfigError(f"hrnet: pretrained weights need the paper's structure stage_modules=(1, 4, 3), "
                                 f"num_blocks=4 (got {tuple(stage_modules)}, {num_blocks}); pass those or "
                                 "encoder_weights=None")
    return meta


def load_into(model, path, prefix):
    """Assign every backbone weight of ``model`` (layers ``{prefix}_...``) from the file at ``path``.

    Every backbone layer (all layers with weights except :data:`HEAD_LAYERS`) must be
    in the file with the same shapes, and every file entry must be used; the check is
    complete before any weight is assigned. BN layers get the file's epsilon. A model
    with ``C != 3`` input channels gets the RGB stem kernel adapted by
    :func:`kseg.models.pretrained.adapt_input_kernel` (the official models take RGB).

    Returns:
        The number of layers assigned.
    """
    import keras

    from kseg.models.pretrained import adapt_input_kernel

    meta = read_meta(path)
    with np.load(path, allow_pickle=False) as f:
        stored = {k: f[k] for k in f.files if k != "__meta__"}
    by_layer = {}
    for key, value in stored.items():
        layer, _, weight = key.rpartition("/")
        by_layer.setdefault(f"{prefix}_{layer}", {})[weight] = value
    head = {f"{prefix}_{h}" for h in HEAD_LAYERS}
    targets = [lay for lay in model.layers if lay.weights and lay.name not in head]
    missing = sorted({lay.name for lay in targets} - set(by_layer))
    unused = sorted(set(by_layer) - {lay.name for lay in targets})
    if missing or unused:
        what = f"has no weights for layer {missing[0]!r}{_more(missing)}" if missing else \
            f"has weights for {unused[0]!r}{_more(unused)}, which the model lacks"
        raise EncoderWeightsError(f"{path} {what}; convert the checkpoint again with this kseg version")
    plan = []
    for lay in targets:
        have = by_layer[lay.name]
        names = [v.name.split("/")[-1] for v in lay.weights]
        if sorted(names) != sorted(have):
            raise EncoderWeightsError(f"{path}: layer {lay.name} has weights {names}, the file {sorted(have)}")
        values = [have[n] for n in names]
        if lay.name == f"{prefix}_stem_conv1_conv" and values[0].shape[2] == 3 != lay.weights[0].shape[2]:
            values = [adapt_input_kernel(values[0], lay.weights[0].shape[2])]
        for v, n, x in zip(lay.weights, names, values):
            if tuple(v.shape) != x.shape:
                raise EncoderWeightsError(f"{path}: {lay.name}/{n} has shape {x.shape}, the model "
                                          f"{tuple(v.shape)}; convert the checkpoint for this width")
        plan.append((lay, values))
    for lay, values in plan:
        lay.set_weights(values)
        if isinstance(lay, keras.layers.BatchNormalization):
            lay.epsilon = float(meta.get("bn_epsilon", TORCH_BN_EPSILON))
    return len(plan)
