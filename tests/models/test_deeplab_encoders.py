"""deeplabv3plus and pspnet over any encoder, DeepLabV3+'s output stride 8 and its separable form.

Parameter and MAC counts are written out by hand: the separable form's against the layer list
of segmentation_models.pytorch (SMP)'s ``DeepLabV3Plus`` (decoders/deeplabv3/decoder.py: ASPP
with separable 3x3 branches, an extra separable 3x3 conv-BN-ReLU after the projection, a 1x1
48-channel low-level conv, ONE separable 3x3 decoder conv, no conv biases; its separable conv
has no BN between the depthwise and the pointwise conv) plus the differences of kseg's layout
(the paper's code: BN-ReLU between the two, two separable decoder convs, no extra conv). PyTorch
counts 2 parameters per BatchNorm channel, Keras 4 (the moving mean and variance).
"""

import functools

import keras
import numpy as np
import pytest
from keras import layers

from kseg.errors import ModelConfigError, UnknownNameError
from kseg.models import _decoders as D
from kseg.models import get_model, model_spec
from kseg.models.backbones import ENCODERS
from kseg.models._context_blocks import atrous_rates_at
from kseg.models.deeplabv3plus import deeplabv3plus_decoder, resolve_encoder
from kseg.models.freeze import encoder_layers
from kseg.models.profile import count_macs

SMALL = {"filters": 16, "low_level_filters": 8}


@functools.lru_cache(maxsize=None)
def _deeplab(encoder, output_stride=16, separable=False):
    """A narrow deeplabv3plus over ``encoder``, any input size (built once)."""
    return get_model("deeplabv3plus", n_classes=3, encoder=encoder, output_stride=output_stride,
                     separable=separable, **SMALL)


def _sizes(model, names, h, w):
    """Spatial sizes of the named layers' outputs for an (h, w) input."""
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    return [tuple(t.shape[1:3]) for t in probe(np.zeros((1, h, w, 3), "float32"), training=False)]


def _one_line_error(kind, match, **kwargs):
    with pytest.raises(kind, match=match) as e:
        get_model(kwargs.pop("model"), n_classes=2, **kwargs)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ deeplabv3plus over any encoder


def test_atrous_rates_double_at_output_stride_8_only_for_the_default():
    assert atrous_rates_at((6, 12, 18), 16) == (6, 12, 18)
    assert atrous_rates_at((6, 12, 18), 8) == (12, 24, 36)  # the paper's rates at output stride 8
    assert atrous_rates_at((3, 6, 9), 8) == (3, 6, 9)
    assert atrous_rates_at([6, 12, 18], 32) == (6, 12, 18)


@pytest.mark.parametrize("encoder,output_stride,separable", [
    ("mobilenetv2", 16, True),
    ("efficientnetb0", 8, False),
])
def test_deeplabv3plus_over_other_encoders(encoder, output_stride, separable):
    model = _deeplab(encoder, output_stride, separable)
    taps = ENCODERS[encoder].taps
    # the ASPP sits on the deepest feature, the decoder reduces the stride-4 one
    assert model.get_layer("deeplabv3plus_aspp_pool_gap").input is model.get_layer(taps[32]).output
    assert model.get_layer("deeplabv3plus_low_level_conv").input is model.get_layer(taps[4]).output
    h, w = 64, 96
    assert _sizes(model, [taps[32], taps[4], "deeplabv3plus_decoder_conv2_act"], h, w) == [
        (h // output_stride, w // output_stride), (16, 24), (16, 24)]
    out = keras.ops.convert_to_numpy(model(np.random.default_rng(0).random((1, h, w, 3), "float32")))
    assert out.shape == (1, h, w, 3)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    # the ASPP rates: 6, 12, 18 at output stride 16, doubled at 8
    rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
    kind = "depthwise" if separable else "conv"
    for r in rates:
        assert model.get_layer(f"deeplabv3plus_aspp_rate{r}_{kind}").dilation_rate == (r, r)


def test_output_stride_8_keeps_rates_that_are_not_the_default():
    model = get_model("deeplabv3plus", n_classes=2, input_height=64, input_width=64, encoder="mobilenetv2",
                      output_stride=8, atrous_rates=(2, 4, 6), **SMALL)
    assert [model.get_layer(f"deeplabv3plus_aspp_rate{r}_conv").dilation_rate for r in (2, 4, 6)] == [
        (2, 2), (4, 4), (6, 6)]
    assert model.get_layer("out_relu").output.shape[1:3] == (8, 8)


def test_encoder_without_dilation_plan():
    _one_line_error(ModelConfigError, "encoder vgg16 takes output_stride=32, not 16", model="deeplabv3plus",
                    encoder="vgg16")
    model = get_model("deeplabv3plus", n_classes=2, input_height=64, input_width=64, encoder="vgg16",
                      output_stride=32, **SMALL)
    assert model.get_layer("deeplabv3plus_aspp_pool_gap").input is model.get_layer("block5_pool").output
    assert model.output_shape == (None, 64, 64, 2)
    _one_line_error(ModelConfigError, "output_stride must be one of 8, 16, 32", model="deeplabv3plus",
                    output_stride=4)


def test_backbone_is_an_alias_of_encoder():
    assert resolve_encoder("resnet50", None) == "resnet50"
    assert resolve_encoder("resnet50", "xception") == "xception"  # encoder left at its default
    assert resolve_encoder("xception", "xception") == "xception"
    assert model_spec("deeplabv3plus").size_rule(backbone="mobilenetv2") == (1, 32)
    _one_line_error(ModelConfigError, "backbone='mobilenetv2' and encoder='xception' name different encoders",
                    model="deeplabv3plus", encoder="xception", backbone="mobilenetv2")
    _one_line_error(UnknownNameError, "unknown backbone 'resnet18'.*mobilenetv2", model="deeplabv3plus",
                    backbone="resnet18")
    old = get_model("deeplabv3plus", n_classes=3, backbone="mobilenetv2", separable=True, **SMALL)
    new = _deeplab("mobilenetv2", 16, True)
    assert [x.name for x in old.layers] == [x.name for x in new.layers]
    assert old.count_params() == new.count_params()


# ------------------------------------------------------------------ the separable form


def _chain(model, prefix, rate, filters):
    """Check the layers of one atrous separable conv: depthwise -> BN -> ReLU -> pointwise -> BN -> ReLU."""
    dw = model.get_layer(f"{prefix}_depthwise")
    assert isinstance(dw, layers.DepthwiseConv2D) and not dw.use_bias
    assert dw.kernel_size == (3, 3) and dw.dilation_rate == (rate, rate) and dw.depth_multiplier == 1
    order = ["_depthwise", "_depthwise_bn", "_depthwise_act", "_pointwise", "_bn", "_act"]
    chain = [model.get_layer(prefix + s) for s in order]
    for before, after in zip(chain, chain[1:]):
        assert after.input is before.output, after.name
    pw = chain[3]
    assert isinstance(pw, layers.Conv2D) and pw.kernel_size == (1, 1) and pw.filters == filters and not pw.use_bias
    assert isinstance(chain[1], layers.BatchNormalization) and isinstance(chain[4], layers.BatchNormalization)


def test_separable_layout():
    model = _deeplab("mobilenetv2", 16, True)
    f = SMALL["filters"]
    names = {x.name for x in model.layers}
    for r in (6, 12, 18):
        _chain(model, f"deeplabv3plus_aspp_rate{r}", r, f)
        assert f"deeplabv3plus_aspp_rate{r}_conv" not in names
    for i in (1, 2):
        _chain(model, f"deeplabv3plus_decoder_conv{i}", 1, f)
    # the 1x1, image pooling, projection and low-level convs stay standard
    for n in ("aspp_1x1", "aspp_pool", "aspp_project", "low_level"):
        conv = model.get_layer(f"deeplabv3plus_{n}_conv")
        assert type(conv) is layers.Conv2D and conv.kernel_size == (1, 1)
    assert model.get_layer("deeplabv3plus_decoder_conv1_depthwise").input.shape[-1] == f + SMALL["low_level_filters"]


#: ResNet-50's taps used by DeepLabV3+ (channels).
RESNET50 = {4: 256, 32: 2048}


def _decoder(n_classes=1, size=None, **kwargs):
    """DeepLabV3+'s ASPP + decoder + classifier over stand-in ResNet-50 taps (no encoder);
    ``size``: the input size (taps at 1/4 and 1/16 of it), else any size."""
    inputs = keras.Input((size, size, 3))
    taps = {s: keras.Input((size and size // {4: 4, 32: 16}[s], size and size // {4: 4, 32: 16}[s], c))
            for s, c in RESNET50.items()}
    x = deeplabv3plus_decoder(taps, inputs, **kwargs)
    return keras.Model([inputs, *taps.values()], D.head(x, inputs, n_classes, None, "probe"))


def test_separable_parameters_match_smp_by_hand():
    # SMP DeepLabV3Plus(encoder "resnet50", classes=1), PyTorch's count (BN: 2 per channel)
    smp = ((2048 * 256 + 2 * 256)  # ASPP 1x1 conv-BN-ReLU
           + 3 * (9 * 2048 + 2048 * 256 + 2 * 256)  # three separable 3x3 branches: depthwise, pointwise, BN
           + (2048 * 256 + 2 * 256)  # image pooling
           + (5 * 256 * 256 + 2 * 256)  # projection
           + (9 * 256 + 256 * 256 + 2 * 256)  # the separable 3x3 conv-BN-ReLU after the ASPP
           + (256 * 48 + 2 * 48)  # low-level 1x1
           + (9 * 304 + 304 * 256 + 2 * 256)  # one separable 3x3 on 256 + 48 channels
           + 256 * 1 + 1)  # 1x1 classifier with bias
    assert smp == 3_169_553
    bn_channels = 256 + 3 * 256 + 256 + 256 + 256 + 48 + 256
    smp_keras = smp + 2 * bn_channels  # + moving mean and variance
    # kseg (the paper's code): BN between depthwise and pointwise in the three ASPP branches and the
    # first decoder conv, a second separable decoder conv (256 -> 256) instead of SMP's conv after the ASPP
    depthwise_bns = 3 * 4 * 2048 + 4 * 304
    second_decoder_conv = 9 * 256 + 4 * 256 + 256 * 256 + 4 * 256
    smp_after_aspp = 9 * 256 + 256 * 256 + 4 * 256
    assert depthwise_bns + second_decoder_conv - smp_after_aspp == 26_816
    kseg = smp_keras + depthwise_bns + second_decoder_conv - smp_after_aspp
    assert _decoder(separable=True).count_params() == kseg == 3_200_561
    # the standard form (the paper's ResNet-101 setting), Keras' count
    standard = ((2048 * 256 + 4 * 256) + 3 * (9 * 2048 * 256 + 4 * 256) + (2048 * 256 + 4 * 256)
                + (5 * 256 * 256 + 4 * 256) + (256 * 48 + 4 * 48) + (9 * 304 * 256 + 4 * 256)
                + (9 * 256 * 256 + 4 * 256) + 256 + 1)
    assert _decoder().count_params() == standard == 16_843_201


def test_separable_model_parameters_match_smp_as_shipped():
    """Whole model, 12 classes: SMP's DeepLabV3Plus("resnet50", classes=12) as shipped has 26,737,724
    parameters in Keras' count (measured with SMP, docs/performance.md); keras.applications' ResNet-50
    adds a bias to each of its 53 convolutions (26,560) and kseg's layout 26,816 (above)."""
    model = get_model("deeplabv3plus", n_classes=12, separable=True)
    assert model.count_params() == 26_737_724 + 26_560 + 26_816
    # = keras' ResNet50 without its 1000-class top (25,636,712 - 2048 * 1000 - 1000) + the head
    resnet50 = 25_636_712 - (2048 * 1000 + 1000)
    assert model.count_params() == resnet50 + 3_200_561 - 257 + 256 * 12 + 12


def test_separable_macs_by_hand():
    """MACs of the heads at 224x224 (ASPP at 14x14, decoder at 56x56, 2 classes; the pooling
    branch's conv runs on 1x1)."""
    aspp = 14 * 14 * (2048 * 256 + 5 * 256 * 256) + 2048 * 256
    decoder = 56 * 56 * (256 * 48 + 256 * 2)  # low-level 1x1, classifier
    standard = aspp + 14 * 14 * 3 * 9 * 2048 * 256 + decoder + 56 * 56 * (9 * 304 * 256 + 9 * 256 * 256)
    separable = (aspp + 14 * 14 * 3 * (9 * 2048 + 2048 * 256) + decoder
                 + 56 * 56 * (9 * 304 + 304 * 256 + 9 * 256 + 256 * 256))
    assert count_macs(_decoder(2, 224)) == standard
    assert count_macs(_decoder(2, 224, separable=True)) == separable
    # whole model with ResNet-50: 26.16 GFLOP standard, 14.09 separable (the encoder's 5.96 GMAC is shared)
    assert round(2 * (standard - separable) / 1e9, 2) == 12.07


# ------------------------------------------------------------------ pspnet over any encoder


def test_pspnet_with_encoder_and_aux_head():
    model = get_model("pspnet", n_classes=3, encoder="mobilenetv2", aux_head=True)
    assert model_spec("pspnet").size_rule(encoder="mobilenetv2") == (1, 32)
    assert model_spec("pspnet").size_rule() == (8, 32)  # the paper's ResNet: multiples of the output stride
    # PPM on the deepest feature (1280 channels: bins of 1280 / 4), aux head on the stride-16 tap
    assert model.get_layer("pspnet_ppm_pool1").input is model.get_layer("out_relu").output
    assert model.get_layer("pspnet_ppm_pool6_conv").filters == 320
    assert model.get_layer("pspnet_head_conv").filters == 512
    assert model.get_layer("pspnet_aux_conv").input is model.get_layer("block_13_expand_relu").output
    assert model.get_layer("pspnet_aux_conv").filters == 256
    # output stride 8 at 64x96 (not a multiple of 32: any size works with an encoder)
    assert _sizes(model, ["out_relu", "block_13_expand_relu"], 64, 96) == [(8, 12), (8, 12)]
    main, aux = model(np.random.default_rng(0).random((2, 64, 96, 3), "float32"), training=False)
    assert main.shape == aux.shape == (2, 64, 96, 3)
    # --freeze_encoder finds the keras.applications encoder
    frozen = {x.name for x in encoder_layers(model, "pspnet")}
    assert "Conv1" in frozen and "out_relu" in frozen and not any(n.startswith("pspnet_") for n in frozen)


def test_pspnet_encoder_errors():
    for option, value in (("deep_stem", False), ("width_multiplier", 0.5), ("backbone", "resnet101")):
        _one_line_error(ModelConfigError, f"{option}=.* applies to the paper's dilated ResNet only", model="pspnet",
                        encoder="mobilenetv2", **{option: value})
    _one_line_error(ModelConfigError, "encoder vgg16 takes output_stride=32, not 8", model="pspnet", encoder="vgg16")
    _one_line_error(ModelConfigError, "output_stride must be 8 or 16", model="pspnet", output_stride=32)
    _one_line_error(UnknownNameError, "unknown encoder 'vgg17'", model="pspnet", encoder="vgg17")
    model = get_model("pspnet", n_classes=2, input_height=64, input_width=64, encoder="vgg16", output_stride=32)
    assert model.get_layer("pspnet_ppm_pool1").input is model.get_layer("block5_pool").output
    assert model.output_shape == (None, 64, 64, 2)


def test_deeplabv3_doubles_the_paper_rates_at_output_stride_8():
    from kseg.models import deeplabv3

    model = deeplabv3(2, (64, 64, 3), encoder="mobilenetv2", output_stride=8, filters=4)
    assert [model.get_layer(f"deeplabv3_aspp_rate{r}_conv").dilation_rate for r in (12, 24, 36)] == \
        [(12, 12), (24, 24), (36, 36)]
