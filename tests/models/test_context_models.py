"""Structure tests of the context models: pspnet, icnet, deeplab_v2, hrnet.

Also their blocks (kseg/models/_context_blocks.py: adaptive pooling, pyramid
pooling, CFF, ASPP-v2) and backbones (kseg/models/resnet.py). The generic checks
(training step, save/load, JAX forward of every registered model) are in
tests/models/test_models.py; here: adaptive pooling against hand values and a
numpy reference, graph structure (what feeds what, dilation rates, strides,
widths), parameter counts computed by hand, and argument errors.
"""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import layers

from kseg.errors import InputShapeError, KsegError, UnknownNameError
from kseg.models import deeplab_v2, get_model, hrnet, icnet, pspnet
from kseg.models._context_blocks import AdaptiveAveragePooling2D, ModelConfigError
from kseg.models.layers import ResizeLike

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_PSP = {"width_multiplier": 0.0625}
TINY_HR = {"width": 4, "stage_modules": (1, 1, 1), "num_blocks": 1}


# ------------------------------------------------------------------ helpers


def np_adaptive_avg_pool(x, bins):
    """Reference: PyTorch adaptive_avg_pool2d bin edges, x (B, H, W, C)."""
    b, h, w, c = x.shape
    out = np.zeros((b, bins, bins, c))
    for i in range(bins):
        h0, h1 = (i * h) // bins, -(-((i + 1) * h) // bins)
        for j in range(bins):
            w0, w1 = (j * w) // bins, -(-((j + 1) * w) // bins)
            out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


def ancestors(tensor):
    """Names of every layer the tensor depends on (walking the functional graph)."""
    seen, stack = set(), [tensor]
    while stack:
        t = stack.pop()
        op, node_index, _ = t._keras_history
        if (op.name, node_index) in seen:
            continue
        seen.add((op.name, node_index))
        stack.extend(op._inbound_nodes[node_index].input_tensors)
    return {name for name, _ in seen}


def producer(tensor):
    return tensor._keras_history[0]


def inputs_of(layer, node=0):
    return layer._inbound_nodes[node].input_tensors


def forward(model, h, w, seed=0):
    x = np.random.RandomState(seed).rand(1, h, w, 3).astype("float32")
    out = model(x, training=False)
    if isinstance(out, (list, tuple)):
        return [keras.ops.convert_to_numpy(o) for o in out]
    return keras.ops.convert_to_numpy(out)


def spatial(layer_or_tensor):
    shape = getattr(layer_or_tensor, "output", layer_or_tensor).shape
    return tuple(shape[1:3])


def conv_params(k, cin, cout, bias=True):
    return k * k * cin * cout + (cout if bias else 0)


# ------------------------------------------------------------------ adaptive pooling


def test_adaptive_pool_hand_values_7x5_into_3():
    # x[h, w] = 10 h + w; H = 7 into 3 bins: rows [0,3) [2,5) [4,7) -> means 1, 3, 5;
    # W = 5 into 3 bins: cols [0,2) [1,4) [3,5) -> means 0.5, 2, 3.5.
    x = (10 * np.arange(7)[:, None] + np.arange(5)[None, :]).astype("float32")
    x = x[None, :, :, None]
    y = keras.ops.convert_to_numpy(AdaptiveAveragePooling2D(3)(x))[0, :, :, 0]
    expected = 10 * np.array([1.0, 3.0, 5.0])[:, None] + np.array([0.5, 2.0, 3.5])[None, :]
    np.testing.assert_allclose(y, expected, rtol=1e-6)


@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_adaptive_pool_matches_numpy_reference(bins):
    x = np.random.RandomState(bins).randn(2, 7, 5, 3).astype("float32")
    y = keras.ops.convert_to_numpy(AdaptiveAveragePooling2D(bins)(x))
    assert y.shape == (2, bins, bins, 3)
    np.testing.assert_allclose(y, np_adaptive_avg_pool(x, bins), rtol=1e-5, atol=1e-6)


def test_adaptive_pool_with_dynamic_spatial_size():
    """Inside a model with (None, None, C) input, traced once with unknown H and W."""
    inp = keras.Input((None, None, 2))
    model = keras.Model(inp, AdaptiveAveragePooling2D(6)(inp))
    assert model.output.shape == (None, 6, 6, 2)
    call = model
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # test only: trace with truly unknown sizes

        call = tf.function(model, input_signature=[tf.TensorSpec((None, None, None, 2))])
    for h, w in [(7, 5), (13, 8), (4, 3)]:  # 4x3 < 6 bins: bins overlap, none is empty
        x = np.random.RandomState(h).rand(1, h, w, 2).astype("float32")
        y = keras.ops.convert_to_numpy(call(x))
        np.testing.assert_allclose(y, np_adaptive_avg_pool(x, 6), rtol=1e-5, atol=1e-6)


def test_adaptive_pool_on_jax():
    code = (
        "import numpy as np, keras\n"
        "from kseg.models._context_blocks import AdaptiveAveragePooling2D\n"
        "x = (10 * np.arange(7)[:, None] + np.arange(5)[None, :]).astype('float32')\n"
        "y = np.asarray(AdaptiveAveragePooling2D(3)(x[None, :, :, None]))[0, :, :, 0]\n"
        "print(keras.backend.backend(), ' '.join(f'{v:.2f}' for v in y.ravel()))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": REPO}
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    expected = [10 * a + b for a in (1, 3, 5) for b in (0.5, 2, 3.5)]
    assert r.stdout.split()[0] == "jax"
    np.testing.assert_allclose([float(v) for v in r.stdout.split()[1:]], expected)


def test_adaptive_pool_config_round_trip():
    layer = AdaptiveAveragePooling2D(3, name="p")
    again = AdaptiveAveragePooling2D.from_config(layer.get_config())
    assert again.bins == 3 and again.name == "p"
    with pytest.raises(ValueError, match="bins must be a positive integer; received 0"):
        AdaptiveAveragePooling2D(0)


# ------------------------------------------------------------------ pspnet


@pytest.fixture(scope="module")
def tiny_psp():
    return pspnet(n_classes=3, input_shape=(64, 64, 3), activation=None, **TINY_PSP)


def test_pspnet_pyramid_pooling_is_wired_into_the_output(tiny_psp):
    m = tiny_psp
    anc = ancestors(m.output)
    for b in (1, 2, 3, 6):
        assert {f"pspnet_ppm_pool{b}", f"pspnet_ppm_pool{b}_conv", f"pspnet_ppm_up{b}"} <= anc
        assert m.get_layer(f"pspnet_ppm_pool{b}").output.shape == (None, b, b, 128)
        assert m.get_layer(f"pspnet_ppm_pool{b}_conv").filters == 128 // 4  # C / 4
    concat = m.get_layer("pspnet_ppm_concat")
    assert "pspnet_ppm_concat" in anc
    srcs = [producer(t).name for t in inputs_of(concat)]
    assert srcs == ["pspnet_backbone_stage4_block3_out"] + [
        f"pspnet_ppm_up{b}" for b in (1, 2, 3, 6)
    ]
    assert concat.output.shape == (None, 8, 8, 128 + 4 * 32)


def test_pspnet_output_depends_on_the_pooled_branch(tiny_psp):
    m = tiny_psp
    before = forward(m, 64, 64)
    conv = m.get_layer("pspnet_ppm_pool6_conv")
    kernel = conv.get_weights()
    try:
        conv.set_weights([np.zeros_like(w) for w in kernel])
        after = forward(m, 64, 64)
    finally:
        conv.set_weights(kernel)
    assert before.shape == (1, 64, 64, 3)
    assert np.abs(before - after).max() > 1e-4


def test_pspnet_output_stride_dilation_and_depth(tiny_psp):
    m = tiny_psp
    # output stride 8: stage 2 strides, stages 3 and 4 dilate by 2 and 4
    assert spatial(m.get_layer("pspnet_backbone_stage2_block4_out")) == (8, 8)
    assert spatial(m.get_layer("pspnet_backbone_stage4_block3_out")) == (8, 8)
    assert m.get_layer("pspnet_backbone_stage3_block1_conv_conv").dilation_rate == (2, 2)
    assert m.get_layer("pspnet_backbone_stage4_block1_conv_conv").dilation_rate == (4, 4)
    adds = [l.name for l in m.layers if re.search(r"_stage\d_block\d+_add$", l.name)]
    counts = [sum(f"stage{s}_" in n for n in adds) for s in (1, 2, 3, 4)]
    assert counts == [3, 4, 6, 3]  # ResNet-50
    # deep stem: three 3x3 convs (64, 64, 128 scaled by 1/16), the first with stride 2
    stem = [m.get_layer(f"pspnet_backbone_stem_conv{i}_conv") for i in (1, 2, 3)]
    assert [c.kernel_size for c in stem] == [(3, 3)] * 3
    assert [c.filters for c in stem] == [4, 4, 8] and stem[0].strides == (2, 2)

    os16 = pspnet(3, (64, 64, 3), output_stride=16, deep_stem=False, **TINY_PSP)
    assert spatial(os16.get_layer("pspnet_backbone_stage3_block6_out")) == (4, 4)
    assert os16.get_layer("pspnet_backbone_stage3_block1_conv_conv").dilation_rate == (1, 1)
    assert os16.get_layer("pspnet_backbone_stage4_block1_conv_conv").dilation_rate == (2, 2)
    stem = os16.get_layer("pspnet_backbone_stem_conv1_conv")
    assert stem.kernel_size == (7, 7) and stem.strides == (2, 2)
    assert "pspnet_backbone_stem_conv2_conv" not in [l.name for l in os16.layers]


def test_pspnet_resnet101_has_23_blocks_in_stage3():
    m = pspnet(2, (32, 32, 3), backbone="resnet101", width_multiplier=1 / 32)
    adds = [l.name for l in m.layers if re.search(r"_stage3_block\d+_add$", l.name)]
    assert len(adds) == 23


def test_pspnet_aux_head_from_stage3_at_input_resolution():
    m = pspnet(3, (None, None, 3), aux_head=True, **TINY_PSP)
    main, aux = m.outputs
    assert "pspnet_backbone_stage4_block3_out" in ancestors(main)
    aux_anc = ancestors(aux)
    assert "pspnet_backbone_stage3_block6_out" in aux_anc
    assert not any("stage4" in n or "ppm" in n for n in aux_anc)
    p_main, p_aux = forward(m, 64, 96)  # dynamic, non-square
    assert p_main.shape == p_aux.shape == (1, 64, 96, 3)
    np.testing.assert_allclose(p_main.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p_aux.sum(-1), 1.0, atol=1e-5)


def test_pspnet_errors():
    with pytest.raises(InputShapeError, match=r"height 60 .*multiple of 8"):
        get_model("pspnet", n_classes=2, input_height=60, input_width=64)
    with pytest.raises(InputShapeError, match=r"width 72 .*multiple of 16"):
        pspnet(2, (64, 72, 3), output_stride=16)
    with pytest.raises(ModelConfigError, match="output_stride must be 8 or 16; received 32"):
        pspnet(2, output_stride=32)
    with pytest.raises(UnknownNameError, match="resnet101, resnet50"):
        pspnet(2, backbone="resnet34")
    with pytest.raises(KsegError, match="n_classes must be a positive integer; received 0"):
        pspnet(0)
    with pytest.raises(KsegError, match="width_multiplier must be a positive number"):
        pspnet(2, width_multiplier=0)


# ------------------------------------------------------------------ icnet


@pytest.fixture(scope="module")
def tiny_icnet():
    return icnet(3, (64, 64, 3), cascade_outputs=True, width_multiplier=0.125)


def test_icnet_cascade_outputs_at_input_resolution(tiny_icnet):
    outs = forward(tiny_icnet, 64, 64)
    assert len(outs) == 3
    for p in outs:
        assert p.shape == (1, 64, 64, 3)
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    final = icnet(3, (None, None, 3), width_multiplier=0.125)
    assert len(final.outputs) == 1
    assert forward(final, 64, 96).shape == (1, 64, 96, 3)


def test_icnet_branches_share_weights_and_resolutions(tiny_icnet):
    m = tiny_icnet
    shared = m.get_layer("icnet_shared")
    assert isinstance(shared, keras.Model) and len(shared._inbound_nodes) == 2
    # medium: the 1/2 image -> 1/16 map; low: the 1/4 image -> 1/32 map
    fed = [producer(inputs_of(shared, i)[0]).name for i in (0, 1)]
    assert fed == ["icnet_input_half", "icnet_input_quarter"]
    assert spatial(m.get_layer("icnet_input_half")) == (32, 32)
    assert spatial(m.get_layer("icnet_input_quarter")) == (16, 16)
    assert spatial(m.get_layer("icnet_stage4_block3_out")) == (2, 2)  # 1/32
    assert m.get_layer("icnet_stage3_block1_conv_conv").dilation_rate == (2, 2)
    assert m.get_layer("icnet_stage4_block1_conv_conv").dilation_rate == (4, 4)
    # high: three stride-2 3x3 convs to 1/8
    for i in (1, 2, 3):
        conv = m.get_layer(f"icnet_high_conv{i}_conv")
        assert conv.strides == (2, 2) and conv.kernel_size == (3, 3)
    assert spatial(m.get_layer("icnet_high_conv3_act")) == (8, 8)


def test_icnet_pyramid_pooling_and_cff_units(tiny_icnet):
    m = tiny_icnet
    anc = ancestors(m.outputs[0])
    total = m.get_layer("icnet_ppm_sum")
    assert len(inputs_of(total)) == 5  # the 1/32 map + 4 upsampled pooled maps
    for b in (1, 2, 3, 6):
        assert f"icnet_ppm_pool{b}" in anc
    for cff, coarse, fine, size in [
        ("icnet_cff16", "icnet_ppm_reduce_act", "icnet_shared", 4),
        ("icnet_cff8", "icnet_cff16_relu", "icnet_high_conv3_act", 8),
    ]:
        assert f"{cff}_add" in anc
        up = m.get_layer(f"{cff}_up")
        assert [producer(t).name for t in inputs_of(up)] == [coarse, fine]
        dil = m.get_layer(f"{cff}_coarse_conv")
        assert dil.kernel_size == (3, 3) and dil.dilation_rate == (2, 2)
        assert m.get_layer(f"{cff}_fine_conv").kernel_size == (1, 1)
        assert spatial(m.get_layer(f"{cff}_relu")) == (size, size)
        aux = m.get_layer(f"{cff}_aux_logits")
        assert aux.filters == 3 and producer(aux.input).name == f"{cff}_up"
    # final classifier at 1/4 after a x2 upsampling of the 1/8 fusion
    assert spatial(m.get_layer("icnet_logits")) == (16, 16)
    assert producer(m.get_layer("icnet_logits").input).name == "icnet_up4"


def test_icnet_errors():
    with pytest.raises(InputShapeError, match=r"height 48 .*multiple of 32"):
        get_model("icnet", n_classes=2, input_height=48, input_width=64)
    with pytest.raises(KsegError, match="each pyramid bin must be a positive integer"):
        icnet(2, bins=(1, 0))


# ------------------------------------------------------------------ deeplab_v2


def _check_aspp_sum_is_linear_to_output(m, n_classes):
    """output activation <- ResizeLike <- Add(4 branch logits), nothing else between."""
    act = producer(m.output)
    assert act.name == "deeplab_v2_softmax"
    resize = producer(act.input)
    assert isinstance(resize, ResizeLike)
    add = producer(inputs_of(resize)[0])
    assert isinstance(add, layers.Add) and add.name == "deeplab_v2_aspp_sum"
    branch = [producer(t) for t in inputs_of(add)]
    assert len(branch) == 4
    for conv in branch:
        assert isinstance(conv, layers.Conv2D) and conv.filters == n_classes
        assert conv.activation is keras.activations.linear
    return branch


def test_deeplab_v2_vgg_aspp_rates_and_sum():
    m = deeplab_v2(5, (64, 64, 3), width_multiplier=0.0625)
    branch = _check_aspp_sum_is_linear_to_output(m, 5)
    assert [c.name for c in branch] == [f"deeplab_v2_aspp_r{r}_logits" for r in (6, 12, 18, 24)]
    for r in (6, 12, 18, 24):
        fc6 = m.get_layer(f"deeplab_v2_aspp_r{r}_fc6")
        assert fc6.dilation_rate == (r, r) and fc6.kernel_size == (3, 3)
        assert m.get_layer(f"deeplab_v2_aspp_r{r}_fc7").kernel_size == (1, 1)
        assert f"deeplab_v2_aspp_r{r}_fc6" in ancestors(m.output)
    # dilated VGG16: pool4/pool5 keep stride 1, conv5 dilates by 2 -> output stride 8
    strides = [m.get_layer(f"deeplab_v2_vgg16_pool{i}").strides for i in range(1, 6)]
    assert strides == [(2, 2)] * 3 + [(1, 1)] * 2
    for i in (1, 2, 3):
        assert m.get_layer(f"deeplab_v2_vgg16_conv5_{i}").dilation_rate == (2, 2)
    assert m.get_layer("deeplab_v2_vgg16_conv4_3").dilation_rate == (1, 1)
    assert spatial(m.get_layer("deeplab_v2_vgg16_pool5")) == (8, 8)
    assert forward(m, 64, 64).shape == (1, 64, 64, 5)


def test_deeplab_v2_resnet101_branches():
    m = deeplab_v2(4, (None, None, 3), backbone="resnet101", width_multiplier=1 / 32)
    branch = _check_aspp_sum_is_linear_to_output(m, 4)
    for conv, r in zip(branch, (6, 12, 18, 24)):
        assert conv.kernel_size == (3, 3) and conv.dilation_rate == (r, r)
        assert producer(conv.input).name == "deeplab_v2_resnet101_stage4_block3_out"
    adds = [l.name for l in m.layers if re.search(r"_stage3_block\d+_add$", l.name)]
    assert len(adds) == 23
    assert m.get_layer("deeplab_v2_resnet101_stem_conv1_conv").kernel_size == (7, 7)
    p = forward(m, 32, 48)
    assert p.shape == (1, 32, 48, 4)


def test_deeplab_v2_vgg16_default_parameter_count():
    """Hand count: 13 VGG16 convs + 4 ASPP-L branches (fc6 3x3x512x1024, fc7, fc8)."""
    vgg = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
    vgg += [(256, 512)] + [(512, 512)] * 5
    n = 19
    expected = sum(conv_params(3, a, b) for a, b in vgg)
    branch = conv_params(3, 512, 1024) + conv_params(1, 1024, 1024) + conv_params(1, 1024, n)
    expected += 4 * branch
    assert expected == 37_869_452
    assert get_model("deeplab_v2", n_classes=n).count_params() == expected


def test_deeplab_v2_errors():
    with pytest.raises(UnknownNameError, match="resnet101, vgg16"):
        deeplab_v2(2, backbone="resnet50")
    with pytest.raises(InputShapeError, match=r"width 36 .*multiple of 8"):
        get_model("deeplab_v2", n_classes=2, input_height=64, input_width=36)


# ------------------------------------------------------------------ hrnet


@pytest.fixture(scope="module")
def tiny_hrnet():
    return hrnet(3, (64, 64, 3), **TINY_HR)


def test_hrnet_head_concatenates_all_four_resolutions(tiny_hrnet):
    m = tiny_hrnet
    concat = m.get_layer("hrnet_head_concat")
    ins = inputs_of(concat)
    assert len(ins) == 4
    assert all(tuple(t.shape[1:3]) == (16, 16) for t in ins)  # all at 1/4
    # the sources before upsampling: 1/4, 1/8, 1/16, 1/32 with C, 2C, 4C, 8C channels
    sources = [ins[0]] + [inputs_of(producer(t))[0] for t in ins[1:]]
    assert [tuple(t.shape[1:]) for t in sources] == [
        (16, 16, 4), (8, 8, 8), (4, 4, 16), (2, 2, 32)
    ]
    assert [producer(t).name for t in sources] == [
        f"hrnet_stage4_module1_fuse_{i}_relu" for i in (1, 2, 3, 4)
    ]
    assert concat.output.shape[-1] == 15 * 4
    assert m.get_layer("hrnet_head_conv").filters == 15 * 4
    assert m.get_layer("hrnet_logits").input.shape[-1] == 15 * 4
    assert forward(m, 64, 64).shape == (1, 64, 64, 3)


def test_hrnet_fusion_between_all_branch_pairs(tiny_hrnet):
    m = tiny_hrnet
    names = {l.name for l in m.layers}
    for stage in (2, 3, 4):
        p = f"hrnet_stage{stage}_module1_fuse"
        for i in range(1, stage + 1):
            total = m.get_layer(f"{p}_{i}_sum")
            assert len(inputs_of(total)) == stage
            for j in range(1, stage + 1):
                q = f"{p}_{j}to{i}"
                if j > i:  # upsample: 1x1 conv + BN + bilinear resize
                    assert {f"{q}_conv", f"{q}_bn", f"{q}_up"} <= names
                    assert m.get_layer(f"{q}_conv").kernel_size == (1, 1)
                elif j < i:  # downsample: i - j strided 3x3 convs
                    downs = sorted(n for n in names if re.fullmatch(rf"{q}_down\d+_conv", n))
                    assert len(downs) == i - j
                    for d in downs:
                        assert m.get_layer(d).strides == (2, 2)
                        assert m.get_layer(d).kernel_size == (3, 3)
                    assert m.get_layer(downs[-1]).filters == 4 * 2 ** (i - 1)
                else:
                    assert not any(n.startswith(f"{q}_") for n in names)


def test_hrnet_default_widths_and_modules():
    m = hrnet(2, (64, 64, 3), num_blocks=1)  # W18, modules (1, 4, 3)
    names = [l.name for l in m.layers]
    modules = {}
    for n in names:
        found = re.match(r"hrnet_stage(\d)_module(\d+)_", n)
        if found:
            modules.setdefault(int(found[1]), set()).add(int(found[2]))
    assert {s: len(ids) for s, ids in modules.items()} == {2: 1, 3: 4, 4: 3}
    outs = [m.get_layer(f"hrnet_stage4_module3_fuse_{i}_relu").output for i in (1, 2, 3, 4)]
    assert [tuple(t.shape[1:]) for t in outs] == [
        (16, 16, 18), (8, 8, 36), (4, 4, 72), (2, 2, 144)
    ]
    assert m.get_layer("hrnet_head_concat").output.shape[-1] == 270
    stem = [m.get_layer(f"hrnet_stem_conv{i}_conv") for i in (1, 2)]
    assert all(c.filters == 64 and c.strides == (2, 2) for c in stem)
    assert m.get_layer("hrnet_stage1_block1_expand_conv").filters == 256


def test_hrnet_errors():
    with pytest.raises(InputShapeError, match=r"height 48 .*multiple of 32"):
        get_model("hrnet", n_classes=2, input_height=48, input_width=64)
    with pytest.raises(KsegError, match="width must be a positive integer"):
        hrnet(2, width=0)
    with pytest.raises(KsegError, match="stage_modules must be three module counts"):
        hrnet(2, stage_modules=(1, 4))
    with pytest.raises(UnknownNameError, match="option of model hrnet"):
        get_model("hrnet", n_classes=2, widht=18)


# ------------------------------------------------------------------ every model


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("pspnet", TINY_PSP),
        ("icnet", {"width_multiplier": 0.125}),
        ("deeplab_v2", {"width_multiplier": 0.0625}),
        ("hrnet", TINY_HR),
    ],
)
def test_binary_output_is_sigmoid_of_linear_scores(name, kwargs):
    m = get_model(name, n_classes=1, **kwargs)
    last = m.layers[-1]
    assert last.name == f"{name}_sigmoid" and m.output_shape == (None, None, None, 1)
    # no BN / ReLU on the class scores: output <- resize <- linear conv (or the ASPP sum)
    resize = producer(last.input)
    assert isinstance(resize, ResizeLike)
    scores = producer(inputs_of(resize)[0])
    assert isinstance(scores, (layers.Conv2D, layers.Add))
    if isinstance(scores, layers.Conv2D):
        assert scores.activation is keras.activations.linear and scores.filters == 1
