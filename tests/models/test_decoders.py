"""Structure and parameter counts of the decoders over any encoder:
fpn, linknet, pan, manet, upernet, deeplabv3 (tests/models/test_decoder_matrix.py builds
them over every encoder; the registry-wide tests cover training, saving, JAX, sizes).

Parameter counts: the DECODER + HEAD of each model over ResNet-50's taps (channels 64,
256, 512, 1024, 2048 at strides 2-32), compared with a count written out by hand from the
reference implementation's layer list (segmentation_models.pytorch (SMP) for fpn, linknet,
pan, manet, deeplabv3; the authors' CSAILVision code for upernet). Two conventions differ
and are written out in each sum: PyTorch counts 2 parameters per BatchNorm channel (weight,
bias) where Keras also counts the moving mean and variance (4), and SMP's PAN puts a bias
in front of every BatchNorm where kseg does not. The decoders are built over stand-in
inputs (no encoder), and one test checks that this equals "model minus encoder".
"""

import keras
import numpy as np
import pytest

from kseg.errors import ModelConfigError
from kseg.models import _decoders as D
from kseg.models import get_model
from kseg.models import layers as L
from kseg.models.backbones import build_encoder
from kseg.models.deeplabv3 import deeplabv3_decoder
from kseg.models.fpn import fpn_decoder
from kseg.models.freeze import encoder_layers, freeze_encoder
from kseg.models.linknet import linknet_decoder
from kseg.models.manet import manet_decoder
from kseg.models.pan import feature_pyramid_attention, pan_decoder
from kseg.models.upernet import upernet_decoder

RESNET50 = {2: 64, 4: 256, 8: 512, 16: 1024, 32: 2048}


def _decoder_params(fn, n_classes, kernel=1, channels=RESNET50, **kwargs):
    """Parameters of decoder ``fn`` + its classifier over stand-ins with ``channels``."""
    inputs = keras.Input((64, 64, 3))
    taps = {s: keras.Input((64 // s, 64 // s, c)) for s, c in channels.items()}
    x = fn(taps, inputs, **kwargs)
    out = D.head(x, inputs, n_classes, None, "probe", kernel_size=kernel)
    return keras.Model([inputs, *taps.values()], out).count_params()


# ------------------------------------------------------------------ parameter counts (SMP, classes=1)


def test_fpn_decoder_parameters_match_smp_and_the_paper_layout():
    # SMP FPN(encoder "resnet50", classes=1): decoder_pyramid_channels 256, segmentation 128, GroupNorm
    laterals = (2048 * 256 + 256) + (1024 * 256 + 256) + (512 * 256 + 256) + (256 * 256 + 256)  # p5, p4-p2 1x1
    first_convs = 4 * (256 * 128 * 9 + 2 * 128)  # the first 3x3 conv + GN of each of the 4 branches
    more_convs = 3 * (128 * 128 * 9 + 2 * 128)  # P5's 2nd and 3rd, P4's 2nd (GN: 2 per channel in both)
    head = 128 * 1 + 1
    smp = laterals + first_convs + more_convs + head
    assert smp == 2_608_001
    assert _decoder_params(fpn_decoder, 1, smoothing=False) == smp
    # the paper's FPN adds a 3x3 smoothing conv (256 -> 256, bias) on each of the 4 levels
    assert _decoder_params(fpn_decoder, 1) == smp + 4 * (256 * 256 * 9 + 256)


def test_linknet_decoder_parameters_match_smp():
    # SMP Linknet(encoder "resnet50", classes=1): blocks (in -> out) 2048->1024, 1024->512,
    # 512->256, 256->64 (each + the skip), 64->32 (no skip); block(m, n), q = m // 4:
    #   1x1 m->q (no bias) + BN(q); ConvTranspose 4x4 q->q (bias) + BN(q); 1x1 q->n + BN(n)
    smp, bn_channels = 0, 0
    for m, n in [(2048, 1024), (1024, 512), (512, 256), (256, 64), (64, 32)]:
        q = m // 4
        smp += m * q + 2 * q + 16 * q * q + q + 2 * q + q * n + 2 * n
        bn_channels += q + q + n
    smp += 32 * 1 + 1  # 1x1 head
    assert smp == 7_669_745
    # Keras counts BN's moving mean and variance too: + 2 per BN channel
    assert _decoder_params(linknet_decoder, 1, transpose_kernel=4) == smp + 2 * bn_channels == 7_677_425
    # the paper's 3x3 transposed convs: 9 instead of 16 weights per q*q
    paper = 7_677_425 - 7 * sum((m // 4) ** 2 for m in (2048, 1024, 512, 256, 64))
    assert _decoder_params(linknet_decoder, 1) == paper == 5_238_513


def test_pan_decoder_parameters_match_smp():
    # SMP PAN(encoder "resnet50", classes=1, decoder_channels=32); every ConvBnRelu has a conv bias
    fpa = ((2048 * 32 + 32) + 2 * 32  # global branch 1x1 2048->32 + BN
           + (2048 * 32 + 32) + 2 * 32  # middle branch
           + (2048 * 49 + 1) + 2  # down1 7x7 2048->1 + BN
           + (25 + 1) + 2  # down2 5x5 1->1
           + 2 * ((9 + 1) + 2)  # down3 two 3x3 1->1
           + (25 + 1) + 2  # conv2 5x5
           + (49 + 1) + 2)  # conv1 7x7
    gau = sum((32 * 32 + 32) + 2 * 32  # 1x1 gate conv 32->32 + BN
              + (c * 9 * 32 + 32) + 2 * 32  # 3x3 low-level conv c->32 + BN
              for c in (1024, 512, 256))
    head = 32 * 9 * 1 + 1  # 3x3 classifier
    smp = fpa + gau + head
    assert smp == 751_784
    bn_channels = (32 + 32 + 1 + 1 + 2 + 1 + 1) + 3 * (32 + 32)  # = conv biases in front of a BN
    # kseg: no conv bias before BN (- bn_channels), BN moving statistics (+ 2 * bn_channels)
    assert _decoder_params(pan_decoder, 1, kernel=3) == smp - bn_channels + 2 * bn_channels == 752_046


def test_manet_decoder_parameters_match_smp():
    # SMP MAnet(encoder "resnet50", classes=1, decoder_channels (256, 128, 64, 32, 16), pab 64)
    pab = 2 * (2048 * 64 + 64) + 2 * (9 * 2048 * 2048 + 2048)  # top/center 1x1, bottom/out 3x3 (biases)
    smp, bn_channels = pab, 0
    for i, s, o in [(2048, 1024, 256), (256, 512, 128), (128, 256, 64), (64, 64, 32)]:  # MFAB(in, skip, out)
        r = max(1, s // 16)
        smp += (9 * i * i + 2 * i  # hl 3x3 in->in + BN
                + i * s + 2 * s  # hl 1x1 in->skip + BN
                + 2 * (s * r + r + r * s + s)  # two SE gates (1x1 convs with bias)
                + 9 * 2 * s * o + 2 * o  # conv1 3x3 2*skip->out + BN
                + 9 * o * o + 2 * o)  # conv2 3x3 + BN
        bn_channels += i + s + o + o
    smp += 9 * 32 * 16 + 2 * 16 + 9 * 16 * 16 + 2 * 16  # last block 32->16 without skip
    bn_channels += 16 + 16
    smp += 9 * 16 * 1 + 1  # 3x3 classifier
    assert smp == 123_931_961
    assert _decoder_params(manet_decoder, 1, kernel=3) == smp + 2 * bn_channels == 123_942_649


def test_upernet_decoder_parameters_match_the_authors_code():
    # CSAILVision/semantic-segmentation-pytorch UPerNet(num_class=150, fc_dim=2048, fpn_dim=512)
    ppm = 4 * (2048 * 512 + 2 * 512)  # 1x1 conv 2048->512 (no bias) + BN per bin
    ppm_last = 9 * (2048 + 4 * 512) * 512 + 2 * 512  # 3x3 conv -> fpn_dim + BN
    fpn_in = (256 + 512 + 1024) * 512 + 3 * 2 * 512  # 1x1 laterals + BN
    fpn_out = 3 * (9 * 512 * 512 + 2 * 512)  # 3x3 + BN on P2-P4
    conv_last = 9 * 2048 * 512 + 2 * 512 + 512 * 150 + 150  # 3x3 fusion + BN, 1x1 classifier
    csail = ppm + ppm_last + fpn_in + fpn_out + conv_last
    assert csail == 40_590_486
    bn_channels = 12 * 512
    assert _decoder_params(upernet_decoder, 150) == csail + 2 * bn_channels == 40_602_774


def test_deeplabv3_decoder_parameters_match_smp():
    # SMP DeepLabV3(encoder "resnet50", classes=1): ASPP 256 (1x1, three 3x3 rates, pooling,
    # 1x1 projection of 5*256), then a 3x3 conv-BN-ReLU, a 1x1 classifier; no conv biases
    smp = ((2048 * 256 + 2 * 256) + 3 * (9 * 2048 * 256 + 2 * 256) + (2048 * 256 + 2 * 256)
           + (5 * 256 * 256 + 2 * 256) + (9 * 256 * 256 + 2 * 256) + 256 * 1 + 1)
    assert smp == 16_125_697
    bn_channels = 7 * 256
    assert _decoder_params(deeplabv3_decoder, 1, head_conv=True) == smp + 2 * bn_channels
    # the paper's head: no 3x3 conv after the ASPP
    assert _decoder_params(deeplabv3_decoder, 1) == smp + 2 * bn_channels - (9 * 256 * 256 + 4 * 256)


def test_stand_in_count_is_model_minus_encoder():
    """The counts above are of decoders over stand-ins: the same as a real model's
    parameters minus its encoder's."""
    encoder, taps = build_encoder("mobilenetv2", input_shape=(64, 64, 3))
    channels = {s: int(t.shape[-1]) for s, t in taps.items()}
    model = get_model("fpn", n_classes=3, encoder="mobilenetv2", pyramid_filters=16, segmentation_filters=8)
    decoder = _decoder_params(fpn_decoder, 3, channels=channels, pyramid_filters=16, segmentation_filters=8)
    assert model.count_params() - encoder.count_params() == decoder


# ------------------------------------------------------------------ structure


@pytest.mark.parametrize("name", ["pan", "deeplabv3"])
def test_output_stride_16_dilates_the_encoder(name):
    """At output stride 16 the deepest feature stays at 1/16 (64 -> 4) and the result still
    has the input size."""
    kwargs = {"pan": {"filters": 4}, "deeplabv3": {"filters": 8}}[name]
    model = get_model(name, n_classes=2, input_height=64, input_width=64, encoder="mobilenetv2", **kwargs)
    assert model.get_layer("out_relu").output.shape[1:3] == (4, 4)
    assert model.get_layer("block_13_expand_relu").output.shape[1:3] == (4, 4)
    assert model.output_shape == (None, 64, 64, 2)
    plain = get_model(name, n_classes=2, input_height=64, input_width=64, encoder="mobilenetv2",
                      output_stride=32, **kwargs)
    assert plain.get_layer("out_relu").output.shape[1:3] == (2, 2)


def test_position_attention_matches_numpy():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, 2, c)).astype("float32") for c in (2, 2, 5))
    out = keras.ops.convert_to_numpy(L.PositionAttention()([q, k, v]))
    for b in range(2):
        qq, kk, vv = q[b].reshape(6, 2), k[b].reshape(6, 2), v[b].reshape(6, 5)
        e = qq @ kk.T
        w = np.exp(e - e.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)  # softmax over the keys of each query pixel
        np.testing.assert_allclose(out[b], (w @ vv).reshape(3, 2, 5), rtol=1e-5, atol=1e-5)


def test_feature_pyramid_attention_takes_a_one_pixel_map():
    x = keras.Input((1, 1, 8))
    y = feature_pyramid_attention(x, 4, "fpa")
    out = keras.Model(x, y)(np.ones((1, 1, 1, 8), "float32"))
    assert out.shape == (1, 1, 1, 4)


def test_freezing_freezes_exactly_the_encoder():
    model = get_model("upernet", n_classes=2, encoder="mobilenetv2", fpn_filters=8, ppm_filters=4)
    frozen = {layer.name for layer in freeze_encoder(model)}
    assert "block_16_project_BN" in frozen and "out_relu" in frozen
    assert not any(n.startswith("upernet_") for n in frozen)
    assert {layer.name for layer in encoder_layers(model)} == frozen
    assert model.get_layer("upernet_fuse_conv").trainable


def test_bad_options_are_one_line_errors():
    for name, options, words in [
        ("fpn", {"norm": "ln"}, "norm must be 'bn' or 'gn'"),
        ("fpn", {"encoder": "resnet5"}, "unknown encoder 'resnet5'"),
        ("pan", {"output_stride": 8}, "output_stride must be 16 or 32"),
        ("manet", {"decoder_filters": (8, 8)}, "decoder_filters must be 5 positive integers"),
        ("upernet", {"bins": (1, 0)}, "bins must be"),
        ("deeplabv3", {"output_stride": 4}, "output_stride must be one of 8, 16, 32"),
    ]:
        with pytest.raises(Exception) as error:
            get_model(name, n_classes=2, **options)
        msg = str(error.value)
        assert "\n" not in msg and msg.startswith(f"{name}: ") and words in msg, msg
    with pytest.raises(ModelConfigError, match="linknet: final_filters must be a positive integer"):
        get_model("linknet", n_classes=2, final_filters=0)
