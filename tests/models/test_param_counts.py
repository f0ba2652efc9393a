"""Golden parameter counts of every registered model with its default arguments
(n_classes=2), so an architecture cannot drift silently.

Several are also checked against independent figures elsewhere: unet 31.0M (the
paper's U-Net with BN), enet 0.37M (paper), segnet 29.5M (paper; hand count of the
authors' Caffe model beside its entry), hrnet W18
9.6M (paper), icnet 6.7M, and hand counts in the family test files. A change
here must be deliberate: update the number and say why in the commit.
"""

import keras
import pytest

from kseg.models import get_model, list_models

GOLDEN = {
    "attunet": 32_094_918,
    "deeplab_v2": 37_799_752,
    "deeplabv3plus": 40_431_170,
    # ENet: paper 0.37M (arXiv:1606.02147, its parameter comparison with SegNet). Dropping the decoder's spatial
    # dropout (as the authors' decoder.lua) changed no parameter count.
    # Decoders over keras' ResNet50 (23,587,712 parameters) + the decoder counted by hand from SMP's /
    # the authors' layer lists in tests/models/test_decoders.py (at n_classes=2).
    "deeplabv3": 39_126_402,  # + 15,538,690 (paper head: no 3x3 after the ASPP)
    "enet": 370_865,
    "fcn8": 134_271_430,
    "fpn": 28_556_162,  # + 4,968,450 (with the paper's 3x3 smoothing convs)
    "hrnet": 9_670_718,
    "icnet": 6_726_338,
    "linknet": 28_826_258,  # + 5,238,546 (3x3 transposed convs)
    "manet": 147_530_506,  # + 123,942,794
    "mobilenet_fcn8": 3_233_606,
    "mobilenet_unet": 8_336_226,
    "pan": 24_340_047,  # + 752,335
    "pspnet": 46_765_250,
    "r2attunet": 36_706_374,
    "r2unet": 35_660_930,
    "scseunet": 32_801_739,
    # SegNet: the authors' Caffe model (SegNet-Tutorial segnet_train.prototxt, 11 classes)
    # has 29,449,355 parameters (paper: 29.5M), by hand from its layer list:
    #   encoder conv kernels 3*3*(3*64 + 64*64 + 64*128 + 128*128 + 128*256 + 2*256*256
    #     + 256*512 + 5*512*512) = 14,710,464 over 4,224 output channels;
    #   decoder conv5_3_D..conv1_2_D kernels 3*3*(5*512*512 + 512*256 + 2*256*256 + 256*128
    #     + 128*128 + 128*64 + 64*64) = 14,708,736 over 3,712 output channels;
    #   each of those 7,936 channels has a conv bias and a BN scale and shift (3 * 7,936);
    #   classifier conv1_1_D 3x3 64 -> 11 with bias: 6,336 + 11;
    #   14,710,464 + 14,708,736 + 23,808 + 6,347 = 29,449,355.
    # kseg (n_classes=2): no conv bias before BN, Keras' BN counts 4 values per channel
    # (gamma, beta, moving mean, moving variance), a 1x1 classifier:
    #   14,710,464 + 14,708,736 + 4 * 7,936 + (64*2 + 2) = 29,451,074.
    # (Before the decoder fix: one 64 -> 64 conv-BN more, + 36,864 + 256 = 29,488,194.)
    "segnet": 29_451_074,
    # SegFormer-B0: paper 3.8M at 150 classes; the hand count of the official layers is in
    # tests/models/test_segformer.py (3,752,694 at 150 classes); at 2 classes
    # 3,752,694 - 148 * 257 (classifier) + 2 * 256 (the fusion BN's moving statistics) = 3,715,170.
    "segformer": 3_715_170,
    "seunet": 31_270_714,
    "unet": 31_049_474,
    "unet++": 9_053_154,
    "unet_xception_resnetblock": 38_427_434,
    "upernet": 64_114_562,  # + 40,526,850 (fpn_dim 512)
    "vggunet": 31_978_946,
}


def test_every_model_has_a_golden_count():
    assert sorted(GOLDEN) == list_models()


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_parameter_count(name):
    keras.backend.clear_session()
    model = get_model(name, n_classes=2)
    assert model.count_params() == GOLDEN[name]


def test_unet_cost_matches_the_reference_figures():
    """31.0M parameters and 73.8 GFLOP per forward pass at 224x224 (2 x MACs)."""
    from kseg.models.profile import count_macs

    model = get_model("unet", n_classes=2, input_height=224, input_width=224)
    assert round(model.count_params() / 1e6, 1) == 31.0
    assert round(2 * count_macs(model) / 1e9, 1) == 73.8


def test_count_macs_by_hand():
    inp = keras.Input((8, 10, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inp)            # 8*10*9*3*4 = 8640
    x = keras.layers.Conv2D(5, 1, strides=2)(x)                    # 4*5*1*4*5 = 400
    x = keras.layers.Conv2DTranspose(2, 2, strides=2)(x)           # 4*5*4*5*2 = 800
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)         # 8*10*9*2 = 1440
    x = keras.layers.Dense(3)(x)                                   # 8*10*2*3 = 480
    from kseg.models.profile import count_macs

    assert count_macs(keras.Model(inp, x)) == 8640 + 400 + 800 + 1440 + 480
