"""SegFormer (kseg.models.segformer): parameter counts of B0-B5 against a hand count of the
official layers, the spatial reduction of the attention, sizes, freezing, and the attention
computed by hand and by an independent numpy transcription of the official forward pass.

The registry-wide tests (tests/models/test_models.py, test_conventions.py, test_size_rule.py,
tests/test_export_models.py) cover the training step, the .keras round trip, JAX, ONNX and the
size-rule messages; test_conventions.py covers the MapAttention layer's config and .keras
round trip and mixed precision.
"""

import importlib

import keras
import numpy as np
import pytest

from conftest import run_command
from kseg.errors import EncoderConfigError, EncoderWeightsError, InputShapeError, UnknownNameError
from kseg.models import get_model, model_spec
from kseg.models import layers as L
from kseg.models import segformer_weights as SW
from kseg.models.freeze import encoder_layers, frozen_layers

S = importlib.import_module("kseg.models.segformer")  # the module (kseg.models.segformer is the builder)

# ------------------------------------------------------------------ parameter counts
#
# Hand count of the official PyTorch modules (NVlabs/SegFormer mmseg/models/backbones/
# mix_transformer.py, mit_b0..mit_b5; decode_heads/segformer_head.py), trainable parameters
# (PyTorch's count; BN running statistics are buffers), 150 classes (ADE20K):
#
#   stage s, width C, input channels C_in, patch kernel k (7, then 3), reduction R (8, 4, 2, 1):
#     patch embedding  k*k*C_in*C + C (conv) + 2C (LayerNorm)                    = k^2*C_in*C + 3C
#     one block        2C (norm1) + C^2+C (q) + 2C^2+2C (kv) + C^2+C (proj)
#                      + [R > 1] R^2*C^2+C (sr conv) + 2C (sr norm)
#                      + 2C (norm2) + 4C^2+4C (fc1) + 9*4C+4C (depthwise 3x3) + 4C^2+C (fc2)
#                                                        = 12C^2 + 53C + [R > 1] (R^2*C^2 + 3C)
#     stage norm       2C
#   decoder, width E (256 for B0/B1, 768 for B2-B5), classes n:
#     sum over stages (C_s*E + E) (linear_c1..c4) + 4E*E (linear_fuse conv, no bias: BN follows)
#     + 2E (BN weight, bias) + E*n + n (linear_pred)
#   (the official head also builds an unused conv_seg 128 -> n, 19,350 parameters: not counted)
#
# B0 (C = 32, 64, 160, 256; 2-2-2-2 blocks; E = 256):
#   stage 1: 49*3*32 + 96 = 4,800;      block 12*32^2 + 53*32 + 64*32^2 + 96 = 79,616;   x2, + 64
#            = 164,096
#   stage 2: 9*32*64 + 192 = 18,624;    block 12*64^2 + 53*64 + 16*64^2 + 192 = 118,272; x2, + 128
#            = 255,296
#   stage 3: 9*64*160 + 480 = 92,640;   block 12*160^2 + 53*160 + 4*160^2 + 480 = 418,560; x2, + 320
#            = 930,080
#   stage 4: 9*160*256 + 768 = 369,408; block 12*256^2 + 53*256 = 800,000;             x2, + 512
#            = 1,969,920
#   encoder 3,319,392; decoder (32+64+160+256)*256 + 4*256 + 4*256^2 + 2*256 = 394,752;
#   classifier 256*150 + 150 = 38,550; total 3,752,694 (paper Table 1: 3.8M)
# B1-B5 (C = 64, 128, 320, 512): patch embeddings 9,600 / 74,112 / 369,600 / 1,476,096;
#   blocks 314,880 / 465,920 / 1,656,320 / 3,172,864; stage norms 128 / 256 / 640 / 1,024;
#   decoder (E = 256) 525,824, (E = 768) (64+128+320+512)*768 + 4*768 + 4*768^2 + 2*768 = 3,150,336;
#   classifier 256*150 + 150 = 38,550 or 768*150 + 150 = 115,350.
#   B1 (2-2-2-2):  encoder 13,151,424 + 525,824 + 38,550    = 13,715,798 (paper 13.7M)
#   B2 (3-4-6-3):  encoder 24,196,288 + 3,150,336 + 115,350 = 27,461,974 (paper 27.5M)
#   B3 (3-4-18-3): encoder 44,072,128 + ...                 = 47,337,814 (paper 47.3M)
#   B4 (3-8-27-3): encoder 60,842,688 + ...                 = 64,108,374 (paper 64.1M)
#   B5 (3-6-40-3): encoder 81,443,008 + ...                 = 84,708,694 (paper 84.7M)
OFFICIAL_150 = {
    "b0": 3_752_694,
    "b1": 13_715_798,
    "b2": 27_461_974,
    "b3": 47_337_814,
    "b4": 64_108_374,
    "b5": 84_708_694,
}
PAPER_TABLE_1 = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}  # millions

# the official configurations, written out again here (not read from the module under test)
OFFICIAL_CONFIGS = {
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2), 256),
    "b1": ((64, 128, 320, 512), (2, 2, 2, 2), 256),
    "b2": ((64, 128, 320, 512), (3, 4, 6, 3), 768),
    "b3": ((64, 128, 320, 512), (3, 4, 18, 3), 768),
    "b4": ((64, 128, 320, 512), (3, 8, 27, 3), 768),
    "b5": ((64, 128, 320, 512), (3, 6, 40, 3), 768),
}


def _hand_count(variant, n_classes=150, in_channels=3):
    """The per-stage formula above, evaluated."""
    widths, depths, e = OFFICIAL_CONFIGS[variant]
    total, c_in = 0, in_channels
    for k, r, c, d in zip((7, 3, 3, 3), (8, 4, 2, 1), widths, depths):
        block = 12 * c * c + 53 * c + ((r * r * c * c + 3 * c) if r > 1 else 0)
        total += k * k * c_in * c + 3 * c + d * block + 2 * c
        c_in = c
    total += sum(c * e + e for c in widths) + 4 * e * e + 2 * e + e * n_classes + n_classes
    return total


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_the_hand_formula_gives_the_written_counts_and_the_papers_figures():
    for variant, count in OFFICIAL_150.items():
        assert _hand_count(variant) == count, variant
        assert round(count / 1e6, 1) == PAPER_TABLE_1[variant], variant


@pytest.mark.parametrize("variant", sorted(OFFICIAL_150))
def test_parameter_count_matches_the_official_layers(variant):
    """Every variant built at 64x64 and 150 classes; B1-B5 inside a StatelessScope that
    never initialises them (the weights are declared with their shapes, not allocated: B5
    has 84.7M), which is enough to count them."""
    keras.backend.clear_session()
    try:
        if variant == "b0":
            model = S.segformer(n_classes=150, input_shape=(64, 64, 3))
            # Keras also counts the fusion BN's moving mean and variance (2E, not trainable)
            assert model.count_params() == OFFICIAL_150["b0"] + 2 * 256
        else:
            with keras.StatelessScope(initialize_variables=False):
                model = S.segformer(n_classes=150, input_shape=(64, 64, 3), variant=variant)
        assert _trainable(model) == OFFICIAL_150[variant]
        widths, depths, _ = OFFICIAL_CONFIGS[variant]
        for s, (c, d) in enumerate(zip(widths, depths), start=1):  # blocks per stage, by name; widths
            names = {lay.name for lay in model.layers if lay.name.startswith(f"segformer_mit_stage{s}_block")}
            assert {n.split("_")[3] for n in names} == {f"block{b}" for b in range(1, d + 1)}, (variant, s)
            assert model.get_layer(f"segformer_mit_stage{s}_norm").output.shape[-1] == c
    finally:
        keras.backend.clear_session()  # also forgets the never-initialised variables


# ------------------------------------------------------------------ shapes


@pytest.fixture(scope="module")
def b0():
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    return S.segformer(n_classes=3, input_shape=(None, None, 3))


def _layer_shapes(model, names, x):
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    return [tuple(o.shape) for o in probe(x)]


def test_attention_reduces_the_keys_and_values_by_r(b0):
    """64x64: stages of 16, 8, 4, 2 positions a side; keys/values of 16/8, 8/4, 4/2, 2/1 = 2.
    65x47 (odd): ceil divisions 17x12, 9x6, 5x3, 3x2; the stride-R reduction floors (official
    Conv2d without padding): 2x1, 2x1, 2x1, and stage 4 is not reduced."""
    stages = [f"segformer_mit_stage{s}_norm" for s in range(1, 5)]
    queries = [f"segformer_mit_stage{s}_block1_attn_q" for s in range(1, 5)]
    kv = [f"segformer_mit_stage{s}_block1_attn_kv" for s in range(1, 5)]
    for (h, w), sides, keys in (
        ((64, 64), [(16, 16), (8, 8), (4, 4), (2, 2)], [(2, 2)] * 4),
        ((65, 47), [(17, 12), (9, 6), (5, 3), (3, 2)], [(2, 1), (2, 1), (2, 1), (3, 2)]),
    ):
        x = np.zeros((1, h, w, 3), "float32")
        shapes = _layer_shapes(b0, stages + queries + kv, x)
        widths = (32, 64, 160, 256)
        assert shapes[:4] == [(1, *hw, c) for hw, c in zip(sides, widths)]
        assert shapes[4:8] == [(1, *hw, c) for hw, c in zip(sides, widths)]
        assert shapes[8:] == [(1, *hw, 2 * c) for hw, c in zip(keys, widths)]
    assert [b0.get_layer(f"segformer_mit_stage{s}_block1_attn_sr").kernel_size for s in (1, 2, 3)] == [
        (8, 8), (4, 4), (2, 2)]
    with pytest.raises(ValueError):
        b0.get_layer("segformer_mit_stage4_block1_attn_sr")  # R = 1: no reduction
    assert [b0.get_layer(f"segformer_mit_stage{s}_block1_attn_core").heads for s in range(1, 5)] == [1, 2, 5, 8]


def test_output_at_the_input_size_and_the_size_rule(b0):
    for h, w in ((29, 29), (37, 50), (64, 96)):
        out = b0(np.random.default_rng(0).random((1, h, w, 3), dtype=np.float32), training=False)
        assert tuple(out.shape) == (1, h, w, 3)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(out).sum(-1), 1.0, atol=1e-5)
    # the decoder works at 1/4 before the final resize
    assert tuple(b0.get_layer("segformer_logits").output.shape) == (None, None, None, 3)
    spec = model_spec("segformer")
    assert (spec.divisor, spec.min_size) == (1, 29)
    with pytest.raises(InputShapeError, match="height 28 must be at least 29"):
        get_model("segformer", n_classes=2, input_height=28, input_width=64)


def test_stochastic_depth_rises_linearly_and_can_be_off(b0):
    # official: torch.linspace(0, 0.1, 8) over B0's 8 blocks; the first block has none
    rates = []
    for s in range(1, 5):
        for b in (1, 2):
            try:
                rates.append(b0.get_layer(f"segformer_mit_stage{s}_block{b}_attn_droppath").rate)
            except ValueError:
                rates.append(0.0)
    np.testing.assert_allclose(rates, np.linspace(0, 0.1, 8))
    assert b0.get_layer("segformer_mit_stage4_block2_mlp_droppath").noise_shape == (None, 1, 1, 1)
    off = S.segformer(n_classes=2, input_shape=(64, 64, 3), drop_path_rate=0.0, dropout=0.0)
    assert not [lay.name for lay in off.layers if "drop" in lay.name]


def test_bad_options_are_one_line_errors():
    with pytest.raises(UnknownNameError) as error:
        S.segformer(n_classes=2, variant="b6")
    msg = str(error.value)
    assert "\n" not in msg and "variant 'b6'" in msg and "b0, b1, b2, b3, b4, b5" in msg
    with pytest.raises(Exception, match="drop_path_rate must be a number in"):
        S.segformer(n_classes=2, drop_path_rate=1.0)


def test_other_input_channels_change_only_the_first_kernel():
    model = get_model("segformer", n_classes=2, input_height=32, input_width=32, channels=5)
    assert tuple(model.get_layer("segformer_mit_stage1_patch_conv").kernel.shape) == (7, 7, 5, 32)
    assert _trainable(model) - 3_715_170 + 2 * 256 == (5 - 3) * 49 * 32


# ------------------------------------------------------------------ freezing


def test_freezing_freezes_exactly_the_mix_transformer():
    model = get_model("segformer", n_classes=2, freeze_encoder=True)
    frozen = set(frozen_layers(model))
    assert frozen == {lay.name for lay in encoder_layers(model)}
    weighted = {lay.name for lay in model.layers if lay.weights}
    assert frozen & weighted == {n for n in weighted if n.startswith("segformer_mit_")}
    assert all(n.startswith("segformer_mit_") for n in frozen)
    # what stays trainable is the decoder: (32+64+160+256)*256 + 4*256 + 4*256^2 + 2*256 = 394,752,
    # and the classifier 256*2 + 2
    assert _trainable(model) == 394_752 + 514


# ------------------------------------------------------------------ the attention, by hand


def _run_attention(heads, q, kv):
    layer = L.MapAttention(heads)
    return keras.ops.convert_to_numpy(layer([keras.ops.convert_to_tensor(q), keras.ops.convert_to_tensor(kv)]))


def test_attention_by_hand():
    """One query, two keys, one head, d = 2: q = (sqrt(2) ln 3, 0), k1 = (1, 0), k2 = (0, 0)
    give scores q.k / sqrt(2) = ln 3 and 0, weights 3/4 and 1/4; values (4, 0) and (0, 8)
    give (3, 2)."""
    q = np.array([np.sqrt(2) * np.log(3), 0], "float32").reshape(1, 1, 1, 2)
    keys = np.array([[1, 0], [0, 0]], "float32")
    values = np.array([[4, 0], [0, 8]], "float32")
    kv = np.concatenate([keys, values], axis=-1).reshape(1, 1, 2, 4)  # keys first, then values
    np.testing.assert_allclose(_run_attention(1, q, kv).reshape(2), [3.0, 2.0], rtol=1e-5)
    # two heads of d = 1 (scale 1), head j on channel j of q, keys and values; q = (ln 3, 0):
    # head 1: scores ln 3 * 1, ln 3 * 0 -> weights 3/4, 1/4 on values 4, 0 -> 3;
    # head 2: q = 0 -> equal weights on values 0, 8 -> 4
    q2 = np.array([np.log(3), 0], "float32").reshape(1, 1, 1, 2)
    np.testing.assert_allclose(_run_attention(2, q2, kv).reshape(2), [3.0, 4.0], rtol=1e-5)
    # a single key position: every query gets its value
    one = np.array([[[[1.0, 2.0, 5.0, -7.0]]]], "float32")
    out = _run_attention(2, np.random.default_rng(0).standard_normal((1, 3, 2, 2)).astype("float32"), one)
    np.testing.assert_allclose(out, np.broadcast_to([5.0, -7.0], (1, 3, 2, 2)), rtol=1e-6)


def _official_attention(x, w, heads, r, eps=1e-5):
    """The official ``Attention.forward`` (mix_transformer.py) in numpy on tokens, with PyTorch
    weight layouts (Linear ``weight`` is out x in; Conv2d ``weight`` is out x in x R x R)."""
    b, h, wd, c = x.shape
    d = c // heads
    tokens = x.reshape(b, h * wd, c)
    q = (tokens @ w["q_w"].T + w["q_b"]).reshape(b, -1, heads, d).transpose(0, 2, 1, 3)
    if r > 1:
        ho, wo = h // r, wd // r  # Conv2d(kernel R, stride R, no padding): floor
        red = np.zeros((b, c, ho, wo))
        nchw = x.transpose(0, 3, 1, 2)
        for i in range(ho):
            for j in range(wo):
                patch = nchw[:, :, i * r:(i + 1) * r, j * r:(j + 1) * r]  # b, c_in, r, r
                red[:, :, i, j] = np.einsum("bcuv,ocuv->bo", patch, w["sr_w"]) + w["sr_b"]
        src = red.reshape(b, c, -1).transpose(0, 2, 1)
        mu, var = src.mean(-1, keepdims=True), src.var(-1, keepdims=True)
        src = (src - mu) / np.sqrt(var + eps) * w["norm_w"] + w["norm_b"]
    else:
        src = tokens
    kv = (src @ w["kv_w"].T + w["kv_b"]).reshape(b, -1, 2, heads, d).transpose(2, 0, 3, 1, 4)
    k, v = kv[0], kv[1]
    attn = q @ k.transpose(0, 1, 3, 2) * d ** -0.5
    attn = np.exp(attn - attn.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(b, h * wd, c)
    return (out @ w["proj_w"].T + w["proj_b"]).reshape(b, h, wd, c)


@pytest.mark.parametrize("heads, r, size", [(2, 2, (7, 5)), (5, 1, (3, 4))])
def test_efficient_attention_matches_the_official_forward(heads, r, size):
    rng = np.random.default_rng(1)
    c = 10
    w = {
        "q_w": rng.standard_normal((c, c)), "q_b": rng.standard_normal(c),
        "kv_w": rng.standard_normal((2 * c, c)) / 3, "kv_b": rng.standard_normal(2 * c),
        "proj_w": rng.standard_normal((c, c)), "proj_b": rng.standard_normal(c),
        "sr_w": rng.standard_normal((c, c, r, r)) / r, "sr_b": rng.standard_normal(c),
        "norm_w": rng.standard_normal(c), "norm_b": rng.standard_normal(c),
    }
    inp = keras.Input((None, None, c))
    model = keras.Model(inp, S.efficient_attention(inp, heads, r, "a"))
    dense = {"q": "q", "kv": "kv", "proj": "proj"}
    for n, k in dense.items():  # torch Linear (out, in) -> Keras Dense (in, out)
        model.get_layer(f"a_{n}").set_weights([w[f"{k}_w"].T, w[f"{k}_b"]])
    if r > 1:  # torch Conv2d OIHW -> Keras HWIO; LayerNorm weight/bias -> gamma/beta
        model.get_layer("a_sr").set_weights([w["sr_w"].transpose(2, 3, 1, 0), w["sr_b"]])
        model.get_layer("a_sr_norm").set_weights([w["norm_w"], w["norm_b"]])
    x = rng.standard_normal((2, *size, c))
    got = keras.ops.convert_to_numpy(model(x.astype("float32")))
    np.testing.assert_allclose(got, _official_attention(x, w, heads, r), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ the ImageNet converter
#
# A synthetic MiT-B0 checkpoint with the official keys and shapes, from this file's own table
# (written from mix_transformer.py: OverlapPatchEmbed proj/norm, Block norm1/attn/norm2/mlp,
# Attention q/kv/proj and sr/norm for R > 1, Mlp fc1/dwconv.dwconv/fc2, the stage norms, and the
# ImageNet classifier's head), written by the PyTorch-format writers of the HRNet converter tests.


def official_mit_b0_shapes():
    """``{state-dict key: shape}`` of the official MiT-B0 ImageNet classifier."""
    sd = {}

    def linear(p, o, i):
        sd[f"{p}.weight"], sd[f"{p}.bias"] = (o, i), (o,)

    def conv(p, o, i, k, groups=1):
        sd[f"{p}.weight"], sd[f"{p}.bias"] = (o, i // groups, k, k), (o,)

    def norm(p, c):
        sd[f"{p}.weight"], sd[f"{p}.bias"] = (c,), (c,)

    dims, c_in = (32, 64, 160, 256), 3
    for s, (c, k, r) in enumerate(zip(dims, (7, 3, 3, 3), (8, 4, 2, 1)), start=1):
        conv(f"patch_embed{s}.proj", c, c_in, k), norm(f"patch_embed{s}.norm", c)
        for b in range(2):
            p = f"block{s}.{b}"
            norm(f"{p}.norm1", c)
            linear(f"{p}.attn.q", c, c), linear(f"{p}.attn.kv", 2 * c, c), linear(f"{p}.attn.proj", c, c)
            if r > 1:
                conv(f"{p}.attn.sr", c, c, r), norm(f"{p}.attn.norm", c)
            norm(f"{p}.norm2", c)
            linear(f"{p}.mlp.fc1", 4 * c, c), conv(f"{p}.mlp.dwconv.dwconv", 4 * c, 4 * c, 3, groups=4 * c)
            linear(f"{p}.mlp.fc2", c, 4 * c)
        norm(f"norm{s}", c)
        c_in = c
    linear("head", 1000, 256)
    return sd


@pytest.fixture(scope="module")
def mit_b0(tmp_path_factory):
    """``(state, {format: path})``: a random official MiT-B0 checkpoint in both PyTorch formats."""
    from test_hrnet_weights import write_torch_legacy, write_torch_zip

    rng = np.random.default_rng(0)
    state = {k: (0.2 * rng.standard_normal(s)).astype("float32") for k, s in official_mit_b0_shapes().items()}
    folder = tmp_path_factory.mktemp("mit")
    files = {"zip": str(folder / "mit_b0.pth"), "legacy": str(folder / "mit_b0_legacy.pth")}
    write_torch_zip(files["zip"], state)
    write_torch_legacy(files["legacy"], state)
    return state, files


def test_the_official_table_has_the_hand_counted_encoder():
    shapes = official_mit_b0_shapes()
    count = sum(int(np.prod(s)) for k, s in shapes.items() if not k.startswith("head."))
    assert count == 3_319_392  # the B0 encoder of the hand count above
    assert sum(k.startswith("head.") for k in shapes) == 2


def test_convert_and_load_the_official_encoder(mit_b0, tmp_path, capsys):
    state, files = mit_b0
    out = str(tmp_path / "b0.npz")
    code, text, err = run_command("convert_weights", ["segformer", files["zip"], "--output", out, "--no_torch"],
                                  capsys)
    assert code == 0, err
    n_head = 2
    assert f"MiT-B0, {len(state)} tensors" in text
    # every Linear, conv and LayerNorm is one kseg layer with two tensors
    assert f"mapped: {len(state) - n_head} tensors into {(len(state) - n_head) // 2} encoder layers" in text
    assert f"classification head {n_head} tensors" in text and "variant='b0'" in text

    keras.backend.clear_session()
    model = get_model("segformer", n_classes=2, encoder_weights=out)
    get = {lay.name: lay for lay in model.layers}
    np.testing.assert_array_equal(get["segformer_mit_stage1_block1_attn_q"].kernel, state["block1.0.attn.q.weight"].T)
    np.testing.assert_array_equal(get["segformer_mit_stage3_block2_mlp_dwconv"].kernel[:, :, 5, 0],
                                  state["block3.1.mlp.dwconv.dwconv.weight"][5, 0])
    np.testing.assert_array_equal(get["segformer_mit_stage2_block1_attn_sr"].kernel[1, 2, :, 7],
                                  state["block2.0.attn.sr.weight"][7, :, 1, 2])
    np.testing.assert_array_equal(get["segformer_mit_stage4_norm"].gamma, state["norm4.weight"])
    # end to end: stage 1, block 1's attention computes the official forward with the official tensors
    probe = keras.Model(model.input, [get["segformer_mit_stage1_block1_norm1"].output,
                                      get["segformer_mit_stage1_block1_attn_proj"].output])
    x = np.random.default_rng(1).random((1, 64, 48, 3), dtype=np.float32)
    normed, attended = (keras.ops.convert_to_numpy(t) for t in probe(x))
    # official names q.weight, kv.bias, sr.weight, norm.bias, ... -> q_w, kv_b, sr_w, norm_b, ...
    w = {k[len("block1.0.attn."):].replace(".weight", "_w").replace(".bias", "_b"): v.astype("float64")
         for k, v in state.items() if k.startswith("block1.0.attn.")}
    np.testing.assert_allclose(attended, _official_attention(normed.astype("float64"), w, 1, 8), rtol=2e-3,
                               atol=2e-4)
    # the decoder stays random; the legacy format gives the same file (variant read from it)
    again = SW.convert_checkpoint(files["legacy"], output=str(tmp_path / "again.npz"), use_torch=False)
    assert again["variant"] == "b0"
    with np.load(out) as a, np.load(again["output"]) as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            if k != "__meta__":
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_converter_and_loader_refuse_what_does_not_fit(mit_b0, tmp_path, capsys, monkeypatch):
    state, files = mit_b0
    code, _, err = run_command("convert_weights", ["segformer", files["zip"], "--variant", "b1", "--no_torch",
                                                   "--output", str(tmp_path / "x.npz")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "MiT-B1" in err and "pass --variant b0" in err
    extra = dict(state, **{"block1.0.attn.extra.weight": np.zeros(3, "float32")})
    with pytest.raises(EncoderWeightsError, match="'block1.0.attn.extra.weight' is neither a layer"):
        SW.convert_state_dict(extra, "b0")
    partial = {k: v for k, v in state.items() if k != "norm4.bias"}
    with pytest.raises(EncoderWeightsError, match="'norm4.bias' of the MiT-B0 encoder is missing"):
        SW.convert_state_dict(partial, "b0")
    out = str(tmp_path / "b0.npz")
    SW.convert_checkpoint(files["zip"], output=out, use_torch=False)
    with pytest.raises(EncoderConfigError, match="holds MiT-B0 weights, the model is variant='b1'"):
        S.segformer(n_classes=2, variant="b1", encoder_weights=out)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    with pytest.raises(EncoderWeightsError) as error:
        S.segformer(n_classes=2, encoder_weights="imagenet")
    assert "kseg convert_weights segformer mit_b0.pth --variant b0" in str(error.value)
    # four input channels: the RGB kernel is adapted, the rest loads unchanged
    keras.backend.clear_session()
    model = S.segformer(n_classes=2, input_shape=(None, None, 4), encoder_weights=out)
    assert tuple(model.get_layer("segformer_mit_stage1_patch_conv").kernel.shape) == (7, 7, 4, 32)
