"""Model-specific structure tests of the UNet variants.

attunet, r2unet, r2attunet (kseg/models/attunet.py, r2unet.py), unet++
(nested_unet.py), seunet, scseunet (se_unet.py) and their blocks
(kseg/models/_unet_blocks.py). The generic checks (output shape, training step,
save/load, JAX) are in tests/models/test_models.py; here numbers are compared
with numpy re-implementations written in this file or with hand counts.
"""

import re

import keras
import numpy as np
import pytest
from keras import layers

from kseg.errors import InputShapeError, KsegError, UnknownNameError
from kseg.models import (
    attunet,
    get_model,
    r2attunet,
    r2unet,
    scseunet,
    seunet,
    unet_plus_plus,
)
from kseg.models import _unet_blocks as B

NAMES = ["attunet", "r2unet", "r2attunet", "unet++", "seunet", "scseunet"]
BN_EPS = 1e-3  # kseg.models.layers.BN_EPSILON; fresh BN in inference = x / sqrt(1 + eps)


# ------------------------------------------------------------------ numpy references


def np_conv_same(x, k):
    """3x3 (any odd size) 'same' cross-correlation, x (H, W, Cin), k (kh, kw, Cin, Cout)."""
    kh, kw = k.shape[:2]
    p = np.pad(x, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    h, w = x.shape[:2]
    out = np.zeros((h, w, k.shape[3]))
    for di in range(kh):
        for dj in range(kw):
            out += p[di : di + h, dj : dj + w, :] @ k[di, dj]
    return out


def np_relu(x):
    return np.maximum(x, 0.0)


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_upsample2_bilinear(a):
    """2x bilinear upsampling with half-pixel centres and edge clamping, a (H, W, C)."""

    def axis_weights(n):
        src = (np.arange(2 * n) + 0.5) / 2 - 0.5
        lo = np.floor(src).astype(int)
        frac = src - lo
        return np.clip(lo, 0, n - 1), np.clip(lo + 1, 0, n - 1), frac

    lo, hi, f = axis_weights(a.shape[0])
    a = a[lo] * (1 - f)[:, None, None] + a[hi] * f[:, None, None]
    lo, hi, f = axis_weights(a.shape[1])
    return a[:, lo] * (1 - f)[None, :, None] + a[:, hi] * f[None, :, None]


def layer_names(model, pattern):
    return [l.name for l in model.layers if re.search(pattern, l.name)]


# ------------------------------------------------------------------ every model


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_size_names_the_constraint(name):
    with pytest.raises(InputShapeError, match=r"multiple of 16"):
        get_model(name, n_classes=2, input_height=40, input_width=32)
    with pytest.raises(InputShapeError, match=r"width 8 .*at least 16"):
        get_model(name, n_classes=2, input_height=32, input_width=8)


@pytest.mark.parametrize(
    "builder", [attunet, r2unet, r2attunet, unet_plus_plus, seunet, scseunet]
)
def test_builder_validates_its_arguments(builder):
    with pytest.raises(InputShapeError, match="height 20"):
        builder(n_classes=2, input_shape=(20, 32, 3), base_filters=4)
    with pytest.raises(KsegError, match=r"base_filters must be a positive integer; received 0"):
        builder(n_classes=2, input_shape=(32, 32, 3), base_filters=0)
    with pytest.raises(KsegError, match=r"n_classes must be a positive integer; received 0"):
        builder(n_classes=0, input_shape=(32, 32, 3), base_filters=4)


@pytest.mark.parametrize("name", NAMES)
def test_binary_output_is_sigmoid_on_linear_logits(name):
    binary = get_model(name, n_classes=1, base_filters=4)
    assert binary.layers[-1].name.endswith("_sigmoid")
    assert binary.layers[-2].name.endswith("_logits")
    assert isinstance(binary.layers[-2], layers.Conv2D)
    assert binary.layers[-2].activation is keras.activations.linear
    assert binary.output_shape == (None, None, None, 1)


@pytest.mark.parametrize("name", ["attunet", "unet++"])
def test_activation_none_gives_logits(name):
    logits = get_model(name, n_classes=3, base_filters=4, activation=None)
    assert logits.layers[-1].name.endswith("_linear")
    assert logits.output_shape == (None, None, None, 3)


def test_dynamic_size_forward_non_square():
    model = attunet(n_classes=2, input_shape=(None, None, 3), base_filters=4)
    y = model(np.random.RandomState(0).rand(1, 32, 48, 3).astype("float32"), training=False)
    y = keras.ops.convert_to_numpy(y)
    assert y.shape == (1, 32, 48, 2)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)


# ------------------------------------------------------------------ attention gates


@pytest.mark.parametrize("builder", [attunet, r2attunet])
def test_one_single_channel_attention_gate_per_skip(builder):
    base = 4
    model = builder(n_classes=2, input_shape=(32, 32, 3), base_filters=base)
    psi = [l for l in model.layers if l.name.endswith("_psi")]
    assert sorted(l.name for l in psi) == [f"{model.name}_dec{i}_att_psi" for i in range(1, 5)]
    for layer in psi:
        assert layer.filters == 1 and layer.kernel_size == (1, 1)
    for level in range(1, 5):
        skip_channels = base * 2 ** (level - 1)
        theta = model.get_layer(f"{model.name}_dec{level}_att_theta_x")
        phi = model.get_layer(f"{model.name}_dec{level}_att_phi_g")
        assert theta.filters == phi.filters == skip_channels // 2  # F_int = F / 2
        assert theta.strides == (2, 2) and theta.kernel_size == (2, 2)
        # the gated skip (not the raw one) is what the decoder concatenates
        concat = model.get_layer(f"{model.name}_dec{level}_concat")
        first_input = concat.input[0]
        mult = model.get_layer(f"{model.name}_dec{level}_att_multiply")
        assert first_input is mult.output


def test_attention_gate_matches_numpy():
    rng = np.random.RandomState(0)
    x_in = keras.Input((4, 6, 2))
    g_in = keras.Input((2, 3, 3))
    gate = keras.Model([x_in, g_in], B.attention_gate(x_in, g_in, "ag"))
    f_int = 1  # 2 skip channels // 2
    w_theta = rng.randn(2, 2, 2, f_int)
    w_phi, b_phi = rng.randn(1, 1, 3, f_int), rng.randn(f_int)
    w_psi, b_psi = rng.randn(1, 1, f_int, 1), rng.randn(1)
    gate.get_layer("ag_theta_x").set_weights([w_theta])
    gate.get_layer("ag_phi_g").set_weights([w_phi, b_phi])
    gate.get_layer("ag_psi").set_weights([w_psi, b_psi])
    x = rng.randn(4, 6, 2)
    g = rng.randn(2, 3, 3)

    theta = np.zeros((2, 3, f_int))
    for i in range(2):
        for j in range(3):
            patch = x[2 * i : 2 * i + 2, 2 * j : 2 * j + 2, :]  # (2, 2, Cin)
            theta[i, j] = np.einsum("abc,abco->o", patch, w_theta)
    phi = g @ w_phi[0, 0] + b_phi
    alpha = np_sigmoid(np_relu(theta + phi) @ w_psi[0, 0] + b_psi)  # (2, 3, 1)
    expected = x * np_upsample2_bilinear(alpha)

    got = gate([x[None].astype("float32"), g[None].astype("float32")])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got)[0], expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ recurrent units


def rrcnn_model(c_in, filters, t):
    inp = keras.Input((6, 6, c_in))
    return keras.Model(inp, B.rrcnn_unit(inp, filters, "u", t=t))


@pytest.mark.parametrize("c_in,c,t", [(3, 4, 2), (3, 4, 3), (5, 8, 1)])
def test_rrcnn_parameter_count_is_one_conv_per_recurrent_layer(c_in, c, t):
    model = rrcnn_model(c_in, c, t)
    conv1x1 = c_in * c + c
    rcl_conv = 3 * 3 * c * c  # ONE 3x3 conv, no bias (BN follows)
    bn_per_step = 4 * c  # gamma, beta, moving mean, moving variance
    rcl = rcl_conv + (t + 1) * bn_per_step
    assert model.count_params() == conv1x1 + 2 * rcl
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == conv1x1 + 2 * (rcl_conv + (t + 1) * 2 * c)
    convs3 = [l for l in model.layers if isinstance(l, layers.Conv2D) and l.kernel_size == (3, 3)]
    assert [l.name for l in convs3] == ["u_rcl1_conv", "u_rcl2_conv"]
    assert len(layer_names(model, r"^u_rcl1_bn\d$")) == t + 1


def test_r2unet_parameter_count_independent_of_t():
    a = r2unet(n_classes=2, input_shape=(32, 32, 3), base_filters=4, t=1)
    b = r2unet(n_classes=2, input_shape=(32, 32, 3), base_filters=4, t=3)
    # only the per-step BNs differ: 18 recurrent layers, 2 extra steps, 4 weights/channel
    widths = [4, 8, 16, 32, 64, 32, 16, 8, 4]  # enc1-4, bottleneck, dec4-1
    assert b.count_params() - a.count_params() == sum(2 * 2 * 4 * w for w in widths)
    assert len(layer_names(a, r"_rcl\d_conv$")) == len(layer_names(b, r"_rcl\d_conv$")) == 18


def rcl_model(t, c=2):
    inp = keras.Input((5, 5, c))
    return keras.Model(inp, B.recurrent_conv(inp, c, "r", t=t))


def np_rcl(x, kernel, t):
    """h0 = f(conv(x)), h_s = f(conv(x + h_{s-1})), f = fresh BN (inference) + ReLU."""
    f = lambda z: np_relu(z / np.sqrt(1.0 + BN_EPS))  # noqa: E731
    h = f(np_conv_same(x, kernel))
    for _ in range(t):
        h = f(np_conv_same(x + h, kernel))
    return h


def test_recurrent_state_is_fed_back():
    rng = np.random.RandomState(1)
    kernel = rng.randn(3, 3, 2, 2) * 0.4
    x = rng.randn(5, 5, 2)
    outputs = {}
    for t in (2, 3):
        model = rcl_model(t)
        model.get_layer("r_conv").set_weights([kernel])  # the same weights for every t
        y = keras.ops.convert_to_numpy(model(x[None].astype("float32"), training=False))[0]
        np.testing.assert_allclose(y, np_rcl(x, kernel, t), rtol=1e-4, atol=1e-5)
        outputs[t] = y
    # changing t with the weights kept changes the output: the state is used
    assert np.abs(outputs[2] - outputs[3]).max() > 1e-2
    # and it is not the feed-forward-only result f(conv(x)) that ignores the state
    assert np.abs(outputs[2] - np_rcl(x, kernel, 0)).max() > 1e-2


def test_rrcnn_unit_is_residual():
    rng = np.random.RandomState(2)
    model = rrcnn_model(3, 2, t=1)
    w1, b1 = rng.randn(1, 1, 3, 2), rng.randn(2)
    k1, k2 = rng.randn(3, 3, 2, 2) * 0.4, rng.randn(3, 3, 2, 2) * 0.4
    model.get_layer("u_conv1x1").set_weights([w1, b1])
    model.get_layer("u_rcl1_conv").set_weights([k1])
    model.get_layer("u_rcl2_conv").set_weights([k2])
    x = rng.randn(6, 6, 3)
    x1 = x @ w1[0, 0] + b1
    expected = x1 + np_rcl(np_rcl(x1, k1, 1), k2, 1)
    got = keras.ops.convert_to_numpy(model(x[None].astype("float32"), training=False))[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_r2unet_blocks_are_recurrent_residual_units():
    model = r2unet(n_classes=2, input_shape=(32, 32, 3), base_filters=4)
    blocks = [f"enc{i}" for i in range(1, 5)] + ["bottleneck"] + [f"dec{i}" for i in range(1, 5)]
    for block in blocks:
        assert isinstance(model.get_layer(f"r2unet_{block}_residual"), layers.Add)
    assert not layer_names(model, r"_att_")  # no attention gates in plain R2U-Net


# ------------------------------------------------------------------ UNet++


def test_unet_plus_plus_node_grid():
    base = 4
    model = unet_plus_plus(n_classes=2, input_shape=(32, 32, 3), base_filters=base)
    nodes = set()
    for name in layer_names(model, r"_x\d\d_conv1_conv$"):
        i, j = map(int, re.search(r"_x(\d)(\d)_conv1_conv$", name).groups())
        nodes.add((i, j))
        assert model.get_layer(name).filters == base * 2**i
    assert nodes == {(i, j) for i in range(5) for j in range(5 - i)}
    assert len(nodes) == 15
    # X(i, j) concatenates X(i, 0..j-1) and the upsampled X(i+1, j-1)
    for i, j in nodes:
        if j > 0:
            concat = model.get_layer(f"unet_plus_plus_x{i}{j}_concat")
            assert len(concat.input) == j + 1
    assert len(model.outputs) == 1
    head = model.get_layer("unet_plus_plus_head4_logits")
    assert head.input is model.get_layer("unet_plus_plus_x04_conv2_act").output


def test_unet_plus_plus_deep_supervision_outputs_and_round_trip(tmp_path):
    model = unet_plus_plus(
        n_classes=3, input_shape=(32, 32, 3), base_filters=4, deep_supervision=True
    )
    assert len(model.outputs) == 4
    for j in range(1, 5):
        head = model.get_layer(f"unet_plus_plus_head{j}_logits")
        assert head.input is model.get_layer(f"unet_plus_plus_x0{j}_conv2_act").output
    x = np.random.RandomState(3).rand(2, 32, 32, 3).astype("float32")
    ys = [keras.ops.convert_to_numpy(y) for y in model(x, training=False)]
    assert [y.shape for y in ys] == [(2, 32, 32, 3)] * 4
    for y in ys:
        np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    for a in range(4):  # four different heads, not one output repeated
        for b in range(a + 1, 4):
            assert np.abs(ys[a] - ys[b]).max() > 1e-4
    path = tmp_path / "upp.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(ys, loaded(x, training=False)):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), atol=1e-6)


def test_unet_plus_plus_paper_parameter_count():
    # the authors' Keras UNet++ (Nest_Net, 1 input channel, 1 class, no BN):
    # "Total params: 9,041,601"
    model = unet_plus_plus(n_classes=1, input_shape=(None, None, 1), use_bn=False)
    assert model.count_params() == 9_041_601


# ------------------------------------------------------------------ SE / scSE


def se_weights(rng, c, hidden):
    return rng.randn(c, hidden), rng.randn(hidden), rng.randn(hidden, c), rng.randn(c)


def np_se(x, w1, b1, w2, b2):
    z = x.mean(axis=(0, 1))
    return x * np_sigmoid(np_relu(z @ w1 + b1) @ w2 + b2)


def test_se_block_matches_numpy():
    rng = np.random.RandomState(4)
    c, ratio = 4, 2
    inp = keras.Input((3, 3, c))
    model = keras.Model(inp, B.squeeze_excite(inp, "se", ratio))
    w1, b1, w2, b2 = se_weights(rng, c, c // ratio)
    model.get_layer("se_fc1").set_weights([w1, b1])
    model.get_layer("se_fc2").set_weights([w2, b2])
    # constant input: every pixel holds the same channel vector
    x = np.broadcast_to(np.array([1.0, -2.0, 0.5, 3.0]), (3, 3, c))
    got = keras.ops.convert_to_numpy(model(x[None].astype("float32")))[0]
    # by hand for the constant case: z is the channel vector itself
    z = np.array([1.0, -2.0, 0.5, 3.0])
    s = np_sigmoid(np_relu(z @ w1 + b1) @ w2 + b2)
    np.testing.assert_allclose(got, x * s, rtol=1e-5, atol=1e-6)
    x = rng.randn(3, 3, c)
    got = keras.ops.convert_to_numpy(model(x[None].astype("float32")))[0]
    np.testing.assert_allclose(got, np_se(x, w1, b1, w2, b2), rtol=1e-5, atol=1e-6)


def test_se_hidden_units_guarded():
    inp = keras.Input((4, 4, 8))
    model = keras.Model(inp, B.squeeze_excite(inp, "se", ratio=16))
    assert model.get_layer("se_fc1").units == 1
    assert model.get_layer("se_fc2").units == 8


@pytest.mark.parametrize("combine", ["add", "max"])
def test_scse_block_matches_numpy(combine):
    rng = np.random.RandomState(5)
    c = 4
    inp = keras.Input((3, 5, c))
    model = keras.Model(inp, B.scse(inp, "b", ratio=2, combine=combine))
    w1, b1, w2, b2 = se_weights(rng, c, 2)
    model.get_layer("b_cse_fc1").set_weights([w1, b1])
    model.get_layer("b_cse_fc2").set_weights([w2, b2])
    ws, bs = rng.randn(1, 1, c, 1), rng.randn(1)
    model.get_layer("b_sse_conv").set_weights([ws, bs])
    x = rng.randn(3, 5, c)
    cse = np_se(x, w1, b1, w2, b2)
    sse = x * np_sigmoid(x @ ws[0, 0] + bs)  # (3, 5, 1) map on every channel
    expected = cse + sse if combine == "add" else np.maximum(cse, sse)
    got = keras.ops.convert_to_numpy(model(x[None].astype("float32")))[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_scse_unknown_combine():
    with pytest.raises(UnknownNameError, match="'mean'"):
        scseunet(n_classes=2, input_shape=(32, 32, 3), base_filters=4, combine="mean")


def test_se_unets_recalibrate_every_block():
    se = seunet(n_classes=2, input_shape=(32, 32, 3), base_filters=4)
    sc = scseunet(n_classes=2, input_shape=(32, 32, 3), base_filters=4)
    blocks = [f"enc{i}" for i in range(1, 5)] + ["bottleneck"] + [f"dec{i}" for i in range(1, 5)]
    assert sorted(layer_names(se, r"_se_scale$")) == sorted(f"seunet_{b}_se_scale" for b in blocks)
    sse = [l for l in sc.layers if l.name.endswith("_sse_conv")]
    assert sorted(l.name for l in sse) == sorted(f"scseunet_{b}_scse_sse_conv" for b in blocks)
    for layer in sse:
        assert layer.filters == 1 and layer.kernel_size == (1, 1)
    assert isinstance(sc.get_layer("scseunet_enc1_scse_combine"), layers.Add)
    # default reduction ratios: 16 (Hu) for seunet, 2 (Roy) for scseunet
    assert se.get_layer("seunet_bottleneck_se_fc1").units == 64 // 16
    assert sc.get_layer("scseunet_bottleneck_scse_cse_fc1").units == 64 // 2


# ------------------------------------------------------------------ parameter budgets


def test_added_parameters_over_plain_unet():
    """attunet / seunet / scseunet = the plain U-Net plus exactly their gates/blocks."""
    from kseg.models import unet

    base, shape = 16, (32, 32, 3)
    plain = unet(n_classes=2, input_shape=shape, base_filters=base).count_params()
    blocks = [base * 2**i for i in range(5)] + [base * 2**i for i in range(3, -1, -1)]
    skips = [base * 2**i for i in range(4)]
    # gate on a skip of F channels with a 2F-channel gating signal, F_int = F/2:
    # W_x 2x2 no bias + W_g 1x1 with bias + psi 1x1 to one channel with bias
    gates = sum(4 * f * (f // 2) + (2 * f * (f // 2) + f // 2) + (f // 2 + 1) for f in skips)
    assert attunet(n_classes=2, input_shape=shape, base_filters=base).count_params() == plain + gates

    def se(c, r):
        hidden = max(1, c // r)
        return c * hidden + hidden + hidden * c + c

    se_total = sum(se(c, 16) for c in blocks)
    assert seunet(n_classes=2, input_shape=shape, base_filters=base).count_params() == plain + se_total
    scse_total = sum(se(c, 2) + c + 1 for c in blocks)  # + sSE 1x1 conv to one channel
    model = scseunet(n_classes=2, input_shape=shape, base_filters=base)
    assert model.count_params() == plain + scse_total
