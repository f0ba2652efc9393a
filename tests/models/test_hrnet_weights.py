"""The HRNet ImageNet converter (kseg/models/hrnet_weights.py, ``kseg convert_weights``)
and ``hrnet(encoder_weights=...)``.

No torch and no download: a synthetic W18 checkpoint is generated from this file's own
table of the official network (written from HRNet-Image-Classification
``lib/models/cls_hrnet.py``: module names, channel rules, classification head; it does
not look at kseg's model or converter), checked against the parameter counts the
official README publishes, and written by this file's own writers in both PyTorch
formats (the zip archive of torch >= 1.6 and the older single stream of the official
files: hand-emitted pickle opcodes with persistent ids, storages shared between
tensors, channels-last strides) and as ``.npz``.
"""

import json
import os
import pickle
import re
import struct
import zipfile

import keras
import numpy as np
import pytest

from conftest import run_command
from kseg.errors import EncoderConfigError, EncoderWeightsError
from kseg.models import hrnet
from kseg.models import hrnet_weights as W

# ------------------------------------------------------------------ the official network, independently


def official_shapes(width):
    """``{state-dict key: shape}`` of the official HRNet-W{width} ImageNet classifier,
    in module order (``()`` for ``num_batches_tracked``)."""
    sd = {}

    def conv(p, o, i, k, bias=False):
        sd[f"{p}.weight"] = (o, i, k, k)
        if bias:
            sd[f"{p}.bias"] = (o,)

    def bn(p, c):
        for t in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{p}.{t}"] = (c,)
        sd[f"{p}.num_batches_tracked"] = ()

    def bottleneck(p, inplanes, planes, downsample):
        conv(f"{p}.conv1", planes, inplanes, 1), bn(f"{p}.bn1", planes)
        conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
        conv(f"{p}.conv3", planes * 4, planes, 1), bn(f"{p}.bn3", planes * 4)
        if downsample:
            conv(f"{p}.downsample.0", planes * 4, inplanes, 1), bn(f"{p}.downsample.1", planes * 4)

    def make_layer(p, inplanes, planes, blocks):  # _make_layer(Bottleneck, ...)
        for b in range(blocks):
            bottleneck(f"{p}.{b}", inplanes if b == 0 else planes * 4, planes,
                       downsample=b == 0 and inplanes != planes * 4)

    conv("conv1", 64, 3, 3), bn("bn1", 64)
    conv("conv2", 64, 64, 3), bn("bn2", 64)
    make_layer("layer1", 64, 64, 4)
    pre = [256]
    for s, modules in ((2, 1), (3, 4), (4, 3)):
        cur = [width << b for b in range(s)]
        for i, c in enumerate(cur):  # _make_transition_layer
            t = f"transition{s - 1}.{i}"
            if i < len(pre):
                if c != pre[i]:
                    conv(f"{t}.0", c, pre[i], 3), bn(f"{t}.1", c)
            else:
                for j in range(i + 1 - len(pre)):
                    out = c if j == i - len(pre) else pre[-1]
                    conv(f"{t}.{j}.0", out, pre[-1], 3), bn(f"{t}.{j}.1", out)
        for m in range(modules):  # HighResolutionModule: BASIC blocks [4]*s, fuse SUM
            for b, c in enumerate(cur):
                for k in range(4):
                    q = f"stage{s}.{m}.branches.{b}.{k}"
                    conv(f"{q}.conv1", c, c, 3), bn(f"{q}.bn1", c)
                    conv(f"{q}.conv2", c, c, 3), bn(f"{q}.bn2", c)
            for i in range(s):
                for j in range(s):
                    q = f"stage{s}.{m}.fuse_layers.{i}.{j}"
                    if j > i:
                        conv(f"{q}.0", cur[i], cur[j], 1), bn(f"{q}.1", cur[i])
                    elif j < i:
                        for k in range(i - j):
                            out = cur[i] if k == i - j - 1 else cur[j]
                            conv(f"{q}.{k}.0", out, cur[j], 3), bn(f"{q}.{k}.1", out)
        pre = cur
    head = [32, 64, 128, 256]  # _make_head: incre (1 bottleneck each), downsamp, final, classifier
    for i, c in enumerate(pre):
        make_layer(f"incre_modules.{i}", c, head[i], 1)
    for i in range(3):
        conv(f"downsamp_modules.{i}.0", head[i + 1] * 4, head[i] * 4, 3, bias=True)
        bn(f"downsamp_modules.{i}.1", head[i + 1] * 4)
    conv("final_layer.0", 2048, 1024, 1, bias=True), bn("final_layer.1", 2048)
    sd["classifier.weight"], sd["classifier.bias"] = (1000, 2048), (1000,)
    return sd


HEAD = ("incre_modules", "downsamp_modules", "final_layer", "classifier")


def is_head(key):
    return key.split(".")[0] in HEAD


@pytest.mark.parametrize("width, millions", [(18, 21.3), (32, 41.2), (48, 77.5)])
def test_the_table_has_the_official_parameter_counts(width, millions):
    """HRNet-W18-C / W32-C / W48-C: 21.3M / 41.2M / 77.5M parameters (official README)."""
    params = sum(int(np.prod(s)) for k, s in official_shapes(width).items()
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert round(params / 1e6, 1) == millions


# ------------------------------------------------------------------ writers of PyTorch's formats

_STORAGE = {np.dtype("float32"): "FloatStorage", np.dtype("float16"): "HalfStorage",
            np.dtype("int64"): "LongStorage", np.dtype("uint16"): "BFloat16Storage"}


class _Pickle:
    """Emits pickle protocol-2 opcodes by hand (globals of modules that are not installed)."""

    def __init__(self):
        self.b = bytearray(b"\x80\x02")

    def op(self, code):
        self.b += code

    def glob(self, module, name):
        self.b += b"c" + f"{module}\n{name}\n".encode()

    def text(self, s):
        e = s.encode()
        self.b += b"X" + struct.pack("<I", len(e)) + e

    def int(self, n):
        self.b += b"J" + struct.pack("<i", n)

    def ints(self, values):
        self.op(b"(")
        for v in values:
            self.int(v)
        self.op(b"t")


def _plan_storages(state, tricky):
    """``{key: (storage key, offset, stride, storage dtype)}`` and ``{storage key: flat array}``.

    ``tricky``: the 1-D tensors of one module share one storage (at offsets), 4-D
    tensors are stored channels-last (non-contiguous strides). Float32 tensors whose
    key contains ``bf16`` are stored as bfloat16."""
    plan, storages, groups = {}, {}, {}
    for key, a in state.items():
        a = np.asarray(a)
        sdt = np.dtype("uint16") if "bf16" in key else a.dtype
        if tricky and a.ndim == 1:
            groups.setdefault((key.rsplit(".", 1)[0], sdt), []).append(key)
            continue
        sk = str(1000 + len(storages))
        if tricky and a.ndim == 4:
            o, i, h, w = a.shape
            storages[sk] = np.ascontiguousarray(a.transpose(0, 2, 3, 1)).ravel()
            plan[key] = (sk, 0, (h * w * i, 1, w * i, i), sdt)
        else:
            storages[sk] = a.ravel()
            plan[key] = (sk, 0, tuple(int(np.prod(a.shape[d + 1:])) for d in range(a.ndim)), sdt)
    for (_, sdt), keys in groups.items():
        sk = str(1000 + len(storages))
        storages[sk] = np.concatenate([np.asarray(state[k]).ravel() for k in keys])
        offset = 0
        for k in keys:
            plan[k] = (sk, offset, (1,), sdt)
            offset += len(state[k])
    return plan, storages


def _flat(obj, prefix=""):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}"))
        return out
    return {prefix: obj}


def _bytes_of(storages, plan):
    """Each storage as little-endian data of its storage type (bfloat16: the high halves)."""
    dtypes = {sk: dt for sk, _, _, dt in plan.values()}
    out = {}
    for sk, flat in storages.items():
        if dtypes[sk] == np.dtype("uint16"):
            out[sk] = (flat.astype("<f4").view("<u4") >> 16).astype("<u2")
        else:
            out[sk] = flat.astype(flat.dtype.newbyteorder("<"))
    return out


def _emit_state(p, obj, plan, record, parameters):
    """Pickle a (nested) state dict of tensors into ``p`` as torch does: each tensor is
    ``_rebuild_tensor_v2(storage record, offset, shape, stride, ...)``; ``record(key,
    dtype)`` writes the format's persistent storage id; with ``parameters`` a key
    containing "param" is saved as an ``nn.Parameter``."""

    def emit(o, prefix=""):
        if isinstance(o, dict):
            p.glob("collections", "OrderedDict"), p.op(b")"), p.op(b"R"), p.op(b"(")
            for k, v in o.items():
                p.text(k)
                emit(v, f"{prefix}{k}")
            p.op(b"u")
            return
        sk, offset, stride, dtype = plan[prefix]
        a = np.asarray(o)
        param = parameters and "param" in prefix  # an nn.Parameter (saved with keep_vars=True)
        if param:
            p.glob("torch._utils", "_rebuild_parameter"), p.op(b"(")
        p.glob("torch._utils", "_rebuild_tensor_v2"), p.op(b"(")
        record(sk, dtype)
        p.op(b"Q")
        p.int(offset), p.ints(a.shape), p.ints(stride if a.ndim else ())
        p.op(b"\x89"), p.glob("collections", "OrderedDict"), p.op(b")"), p.op(b"R")
        p.op(b"t"), p.op(b"R")
        if param:
            p.op(b"\x88"), p.glob("collections", "OrderedDict"), p.op(b")"), p.op(b"R"), p.op(b"t"), p.op(b"R")

    emit(obj)


def write_torch_zip(path, obj, tricky=True):
    """What ``torch.save`` writes (torch >= 1.6): ``archive/data.pkl``, ``archive/data/<key>``."""
    flat = _flat(obj)
    plan, storages = _plan_storages(flat, tricky)
    p = _Pickle()
    numel = {sk: len(a) for sk, a in _bytes_of(storages, plan).items()}

    def record(sk, dtype):  # the zip format's storage record: (storage, type, key, location, numel)
        p.op(b"("), p.text("storage"), p.glob("torch", _STORAGE[dtype]), p.text(sk), p.text("cpu")
        p.int(numel[sk]), p.op(b"t")

    _emit_state(p, obj, plan, record, parameters=True)
    p.op(b".")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", bytes(p.b))
        z.writestr("archive/byteorder", "little")
        for sk, data in _bytes_of(storages, plan).items():
            z.writestr(f"archive/data/{sk}", data.tobytes())
        z.writestr("archive/version", "3\n")


def write_torch_legacy(path, obj, tricky=True):
    """What ``torch.save`` wrote before 1.6 (the official HRNet files): magic number,
    protocol, system info, the object (storages as persistent ids), the storage keys,
    then each storage as an int64 element count followed by its bytes."""
    flat = _flat(obj)
    plan, storages = _plan_storages(flat, tricky)
    data = _bytes_of(storages, plan)
    p = _Pickle()

    def record(sk, dtype):  # the legacy record: (storage, type, root key, location, numel, view metadata)
        p.op(b"("), p.text("storage"), p.glob("torch.cuda", _STORAGE[dtype]), p.text(sk), p.text("cuda:0")
        p.int(len(data[sk])), p.op(b"N"), p.op(b"t")

    _emit_state(p, obj, plan, record, parameters=False)
    p.op(b".")
    keys = sorted(data)
    with open(path, "wb") as f:
        f.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
        f.write(pickle.dumps(1001, protocol=2))
        f.write(pickle.dumps({"protocol_version": 1001, "little_endian": True,
                              "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
        f.write(bytes(p.b))
        f.write(pickle.dumps(keys, protocol=2))
        for k in keys:
            f.write(struct.pack("<q", len(data[k])) + data[k].tobytes())


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def official():
    """A random W18 state dict with the official keys and shapes."""
    rng = np.random.default_rng(18)
    state = {}
    for k, shape in official_shapes(18).items():
        if k.endswith("num_batches_tracked"):
            state[k] = np.array(rng.integers(1, 10**6), np.int64)
        elif k.endswith("running_var"):
            state[k] = rng.uniform(0.5, 1.5, shape).astype("float32")
        else:
            state[k] = (0.1 * rng.standard_normal(shape)).astype("float32")
    state["bn1.running_var"] = rng.uniform(1e-4, 1e-3, 64).astype("float32")  # epsilon matters here
    return state


@pytest.fixture(scope="module")
def files(official, tmp_path_factory):
    d = tmp_path_factory.mktemp("hrnet_ckpt")
    paths = {"zip": str(d / "hrnetv2_w18_imagenet_pretrained.pth"), "legacy": str(d / "legacy_w18.pth"),
             "npz": str(d / "state_w18.npz")}
    write_torch_zip(paths["zip"], official)
    write_torch_legacy(paths["legacy"], official)
    np.savez(paths["npz"], **official)
    return paths


@pytest.fixture(scope="module")
def keras_home(tmp_path_factory):
    return str(tmp_path_factory.mktemp("keras_home"))


@pytest.fixture(scope="module")
def converted(files, keras_home):
    """The zip checkpoint converted to the default location (what 'imagenet' loads)."""
    old = os.environ.get("KERAS_HOME")
    os.environ["KERAS_HOME"] = keras_home
    try:
        report = W.convert_checkpoint(files["zip"], width=18, use_torch=False)
    finally:
        os.environ.pop("KERAS_HOME") if old is None else os.environ.__setitem__("KERAS_HOME", old)
    assert report["output"] == os.path.join(keras_home, "models", "kseg_hrnetv2_w18_imagenet.npz")
    return report["output"]


@pytest.fixture(scope="module")
def model(converted, keras_home):
    """Full HRNetV2-W18 at 64x64 with the converted weights, padded like PyTorch."""
    keras.utils.set_random_seed(0)
    old = os.environ.get("KERAS_HOME")
    os.environ["KERAS_HOME"] = keras_home
    try:
        return hrnet(2, (64, 64, 3), encoder_weights="imagenet", symmetric_padding=True)
    finally:
        os.environ.pop("KERAS_HOME") if old is None else os.environ.__setitem__("KERAS_HOME", old)


def stored(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# ------------------------------------------------------------------ reading and converting


def test_reader_rebuilds_dtypes_strides_and_shared_storages(tmp_path):
    """Both PyTorch formats without torch: float16, bfloat16, a 0-d int64, channels-last
    strides, tensors sharing a storage, a nested {"state_dict"} with "module." prefixes."""
    conv = np.arange(2 * 3 * 3 * 3, dtype="float32").reshape(2, 3, 3, 3)
    inner = {"module.a.weight": conv, "module.a.bias": np.array([1.5, -2.0], "float32"),
             "module.a.scale": np.array([0.25, 8.0], "float32"),
             "module.h.x": np.array([0.5, 3.0, -1.0], "float16"),
             "module.n": np.array(7, np.int64), "module.param.w": np.array([[1.0, 2.0]], "float32"),
             "module.bf16.x": np.array([1.5, -2.0, 0.15625, 3.0], "float32")}
    for writer in (write_torch_zip, write_torch_legacy):
        path = str(tmp_path / f"{writer.__name__}.pth")
        writer(path, {"epoch": {"x": np.array(3, np.int64)}, "state_dict": inner})
        sd = W.read_state_dict(path, use_torch=False)
        assert sorted(sd) == ["a.bias", "a.scale", "a.weight", "bf16.x", "h.x", "n", "param.w"], writer
        np.testing.assert_array_equal(sd["param.w"], [[1.0, 2.0]])
        np.testing.assert_array_equal(sd["a.weight"], conv)
        assert sd["a.weight"].flags.c_contiguous
        np.testing.assert_array_equal(sd["a.bias"], [1.5, -2.0])
        np.testing.assert_array_equal(sd["a.scale"], [0.25, 8.0])
        assert sd["h.x"].dtype == np.float16 and sd["h.x"].tolist() == [0.5, 3.0, -1.0]
        assert sd["n"].shape == () and sd["n"].dtype == np.int64 and int(sd["n"]) == 7
        assert sd["bf16.x"].dtype == np.float32 and sd["bf16.x"].tolist() == [1.5, -2.0, 0.15625, 3.0]


@pytest.mark.parametrize("fmt", ["zip", "legacy", "npz"])
def test_cli_converts_every_format_accounting_for_every_key(fmt, files, official, converted, tmp_path, capsys):
    out = str(tmp_path / "w18.npz")
    code, text, err = run_command("convert_weights", ["hrnet", files[fmt], "--output", out, "--no_torch"], capsys)
    assert code == 0, err
    head = {p: sum(k.startswith(p + ".") for k in official) for p in HEAD}
    # by hand: 4 incre bottlenecks with a projection (4 convs + 4 BNs of 5 tensors = 24 each),
    # 3 downsampling conv (weight, bias) + BN = 7 each, final conv + BN = 7, classifier 2
    assert head == {"incre_modules": 96, "downsamp_modules": 21, "final_layer": 7, "classifier": 2}
    n_batches = sum(k.endswith("num_batches_tracked") and not is_head(k) for k in official)
    mapped = len(official) - sum(head.values()) - n_batches
    layers = sum(k.endswith(".weight") and not is_head(k) for k in official)  # one per conv and per BN
    assert f"HRNet-W18, {len(official)} tensors" in text
    assert f"mapped: {mapped} tensors into {layers} backbone layers" in text
    assert (f"classification head 126 tensors (incre_modules 96, downsamp_modules 21, final_layer 7, "
            f"classifier 2); BN num_batches_tracked {n_batches}") in text
    assert "unused: 0, missing: 0" in text and f"encoder_weights={out!r}" in text
    got, ref = stored(out), stored(converted)
    assert sorted(got) == sorted(ref) and len(got) == mapped + 1  # + __meta__
    for k in ref:
        if k != "__meta__":
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    meta = json.loads(str(got["__meta__"]))
    assert (meta["width"], meta["bn_epsilon"], meta["source"]) == (18, 1e-5, os.path.basename(files[fmt]))
    assert len(meta["source_sha256"]) == 64


def test_default_output_is_what_imagenet_loads(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    code, text, err = run_command("convert_weights", ["hrnet", files["npz"]], capsys)  # width read from the file
    assert code == 0, err
    assert os.path.isfile(tmp_path / "models" / "kseg_hrnetv2_w18_imagenet.npz")
    assert 'hrnet(width=18, encoder_weights="imagenet", symmetric_padding=True)' in text


def _modified(official, tmp_path, drop=(), add=None, replace=None):
    sd = {k: v for k, v in official.items() if k not in drop}
    sd.update(add or {})
    sd.update(replace or {})
    path = str(tmp_path / "bad" / "ckpt.npz")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **sd)
    return path


@pytest.mark.parametrize("case, pattern", [
    ({"add": {"stage2.0.branches.0.0.conv3.weight": np.zeros((18, 18, 1, 1), "float32")}},
     r"key 'stage2\.0\.branches\.0\.0\.conv3\.weight' is neither a layer of the HRNet-W18 backbone"),
    ({"add": {"last_layer.0.weight": np.zeros((1, 1, 1, 1), "float32")}},
     r"key 'last_layer\.0\.weight' is neither"),
    ({"drop": ("stage4.2.fuse_layers.3.0.2.1.running_var",)},
     r"key 'stage4\.2\.fuse_layers\.3\.0\.2\.1\.running_var' of the HRNet-W18 backbone is missing"),
    ({"replace": {"transition2.2.0.0.weight": np.zeros((72, 36, 1, 1), "float32")}},
     r"key 'transition2\.2\.0\.0\.weight' has shape \(72, 36, 1, 1\), HRNet-W18 expects \(72, 36, 3, 3\)"),
    ({"replace": {"bn2.weight": np.full(64, np.nan, "float32")}}, r"key 'bn2\.weight' holds non-finite"),
])
def test_bad_checkpoints_are_one_line_errors_and_write_nothing(case, pattern, official, tmp_path, capsys):
    ckpt = _modified(official, tmp_path, **case)
    out = tmp_path / "out"
    out.mkdir()
    code, text, err = run_command("convert_weights", ["hrnet", ckpt, "--output", str(out / "w.npz")], capsys)
    assert code == 2 and text == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and re.search(pattern, err), err
    assert os.listdir(out) == []


def test_wrong_width_names_the_checkpoints_width(files, tmp_path, capsys):
    code, _, err = run_command("convert_weights", ["hrnet", files["npz"], "--width", "32",
                                                   "--output", str(tmp_path / "w.npz")], capsys)
    assert code == 2 and "looks like HRNet-W18: pass --width 18" in err and err.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_unreadable_files_are_one_line_errors(files, tmp_path, capsys):
    text_file = tmp_path / "notes.pth"
    text_file.write_text("not a checkpoint\n")
    legacy = open(files["legacy"], "rb").read()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(legacy[: len(legacy) - 1000])
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"  # a zip checkpoint whose pickle would run a shell command
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(f"touch {marker}"))
                   + f"touch {marker}".encode() + b"\x85R.")
    cases = [(text_file, "neither a PyTorch checkpoint"), (truncated, "truncated"),
             (evil, "os.system"), (tmp_path / "absent.pth", "not found")]
    for path, words in cases:
        code, _, err = run_command("convert_weights", ["hrnet", str(path), "--no_torch",
                                                       "--output", str(tmp_path / "w.npz")], capsys)
        assert code == 2 and words in err and str(path) in err and err.count("\n") == 1, err
    assert not marker.exists() and not (tmp_path / "w.npz").exists()


# ------------------------------------------------------------------ loading into hrnet


def test_weights_land_in_the_right_layers(model, official):
    def kernel(layer):
        return model.get_layer(f"hrnet_{layer}").get_weights()[0]

    def torch_conv(key):
        return official[key].transpose(2, 3, 1, 0)  # OIHW -> HWIO

    pairs = {
        "stem_conv1_conv": "conv1.weight",
        "stage1_block1_proj_conv": "layer1.0.downsample.0.weight",
        "stage1_block4_expand_conv": "layer1.3.conv3.weight",
        "transition1_branch1_conv": "transition1.0.0.weight",
        "transition1_branch2_conv": "transition1.1.0.0.weight",
        "transition3_branch4_conv": "transition3.3.0.0.weight",
        "stage3_module4_branch3_block2_conv2_conv": "stage3.3.branches.2.1.conv2.weight",
        "stage4_module3_fuse_4to1_conv": "stage4.2.fuse_layers.0.3.0.weight",
        "stage4_module3_fuse_1to4_down2_conv": "stage4.2.fuse_layers.3.0.1.0.weight",
        "stage4_module3_fuse_1to4_down3_conv": "stage4.2.fuse_layers.3.0.2.0.weight",
    }
    for layer, key in pairs.items():
        np.testing.assert_array_equal(kernel(layer), torch_conv(key), err_msg=layer)
    for layer, prefix in {"stage3_module2_branch2_block4_conv2_bn": "stage3.1.branches.1.3.bn2",
                          "transition2_branch3_bn": "transition2.2.0.1",
                          "stage4_module1_fuse_2to4_down2_bn": "stage4.0.fuse_layers.3.1.1.1",
                          "stem_conv2_bn": "bn2"}.items():
        got = model.get_layer(f"hrnet_{layer}").get_weights()  # gamma, beta, moving mean, variance
        for g, t in zip(got, ("weight", "bias", "running_mean", "running_var")):
            np.testing.assert_array_equal(g, official[f"{prefix}.{t}"], err_msg=f"{layer} {t}")


def test_every_backbone_weight_is_loaded_and_bn_uses_pytorch_epsilon(model, converted):
    ref = stored(converted)
    head = {"hrnet_head_conv", "hrnet_head_bn", "hrnet_logits"}
    n = 0
    for layer in model.layers:
        if not layer.weights or layer.name in head:
            continue
        for v in layer.weights:
            key = f"{layer.name[len('hrnet_'):]}/{v.name}"
            np.testing.assert_array_equal(np.asarray(v), ref[key], err_msg=key)
            n += 1
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.epsilon == 1e-5, layer.name
    assert n == len(ref) - 1
    assert model.get_layer("hrnet_head_bn").epsilon == 1e-3  # the head stays kseg's


def _torch_stem(x, state, pad):
    """conv1 (stride 2, padding ``pad`` = (top, bottom, left, right)) + bn1 (eps 1e-5) + ReLU in numpy."""
    w = state["conv1.weight"].astype("float64")
    xp = np.pad(x.astype("float64"), ((pad[0], pad[1]), (pad[2], pad[3]), (0, 0)))
    ho, wo = (xp.shape[0] - 3) // 2 + 1, (xp.shape[1] - 3) // 2 + 1
    y = np.zeros((ho, wo, w.shape[0]))
    for dy in range(3):
        for dx in range(3):
            y += xp[dy:dy + 2 * ho:2, dx:dx + 2 * wo:2, :] @ w[:, :, dy, dx].T
    y = (y - state["bn1.running_mean"]) / np.sqrt(state["bn1.running_var"] + 1e-5)
    return np.maximum(y * state["bn1.weight"] + state["bn1.bias"], 0)


def test_stem_computes_what_pytorch_computes(model, official, converted):
    """With symmetric_padding the stem equals PyTorch's conv(padding=1) + BN(eps 1e-5) + ReLU;
    the default "same" padding equals padding (0, 1) on each axis, i.e. shifted by a pixel.
    A grey model (1 channel) computes on g what the RGB network computes on (g, g, g)."""
    x = np.random.default_rng(1).standard_normal((1, 64, 64, 3)).astype("float32")
    stem = keras.Model(model.input, model.get_layer("hrnet_stem_conv1_act").output)
    got = np.asarray(stem(x))[0]
    want = _torch_stem(x[0], official, (1, 1, 1, 1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    grey = hrnet(2, (64, 64, 1), encoder_weights=converted)  # default padding
    assert grey.get_layer("hrnet_stem_conv1_bn").epsilon == 1e-5
    g = x[..., :1]
    got_grey = np.asarray(keras.Model(grey.input, grey.get_layer("hrnet_stem_conv1_act").output)(g))[0]
    rgb = np.repeat(g[0], 3, axis=-1)
    np.testing.assert_allclose(got_grey, _torch_stem(rgb, official, (0, 1, 0, 1)), rtol=1e-4, atol=1e-4)
    assert np.abs(got_grey - _torch_stem(rgb, official, (1, 1, 1, 1))).max() > 0.1  # the shift is real


def test_load_checks_the_file_against_the_model_before_assigning(model, converted, tmp_path):
    ref = stored(converted)
    before = model.get_layer("hrnet_stem_conv1_conv").get_weights()[0].copy()
    missing = {k: v for k, v in ref.items() if not k.startswith("stage4_module3_fuse_1to4_down3_bn/")}
    missing["stem_conv1_conv/kernel"] = np.zeros_like(ref["stem_conv1_conv/kernel"])
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(EncoderWeightsError, match="no weights for layer 'hrnet_stage4_module3_fuse_1to4_down3_bn'"):
        W.load_into(model, str(tmp_path / "missing.npz"), "hrnet")
    extra = {**missing, "stage4_module3_fuse_1to4_down3_bn/gamma": ref["stage4_module3_fuse_1to4_down3_bn/gamma"],
             "stage5_x_conv/kernel": np.zeros((1, 1, 1, 1), "float32")}
    np.savez(tmp_path / "extra.npz", **extra)
    with pytest.raises(EncoderWeightsError, match="has weights for 'hrnet_stage5_x_conv', which the model lacks"):
        W.load_into(model, str(tmp_path / "extra.npz"), "hrnet")
    shape = {**ref, "transition1_branch2_conv/kernel": np.zeros((3, 3, 256, 35), "float32"),
             "stem_conv1_conv/kernel": np.zeros_like(ref["stem_conv1_conv/kernel"])}
    np.savez(tmp_path / "shape.npz", **shape)
    with pytest.raises(EncoderWeightsError, match=r"transition1_branch2_conv/kernel has shape \(3, 3, 256, 35\)"):
        W.load_into(model, str(tmp_path / "shape.npz"), "hrnet")
    np.testing.assert_array_equal(model.get_layer("hrnet_stem_conv1_conv").get_weights()[0], before)


def test_encoder_weights_errors_come_before_building(converted, files, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(EncoderWeightsError) as e:
        hrnet(2, width=32, encoder_weights="imagenet")
    msg = str(e.value)
    assert "\n" not in msg and os.path.join(str(tmp_path), "models", "kseg_hrnetv2_w32_imagenet.npz") in msg
    assert "hrnetv2_w32_imagenet_pretrained.pth" in msg
    assert "kseg convert_weights hrnet hrnetv2_w32_imagenet_pretrained.pth --width 32" in msg
    with pytest.raises(EncoderConfigError, match=r"holds HRNet-W18 weights, the model has width=32; pass width=18"):
        hrnet(2, width=32, encoder_weights=converted)
    with pytest.raises(EncoderConfigError, match=r"stage_modules=\(1, 4, 3\), num_blocks=4"):
        hrnet(2, encoder_weights=converted, num_blocks=1)
    with pytest.raises(EncoderWeightsError, match="not a kseg HRNet weights file"):
        hrnet(2, encoder_weights=files["npz"])  # a state dict, not a converted file
    with pytest.raises(EncoderWeightsError, match="absent.npz not found"):
        hrnet(2, encoder_weights=str(tmp_path / "absent.npz"))
    with pytest.raises(EncoderConfigError, match="None, 'imagenet' or a weights file"):
        hrnet(2, encoder_weights=3)
