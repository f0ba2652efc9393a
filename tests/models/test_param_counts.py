"""Golden parameter counts of every registered model with its default arguments
(n_classes=2), so an architecture cannot drift silently.

Several are also checked against independent figures elsewhere: unet 31.0M (the
paper's U-Net with BN), enet 0.37M (paper), segnet 29.5M (paper), hrnet W18
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
    "enet": 370_865,
    "fcn8": 134_271_430,
    "hrnet": 9_670_718,
    "icnet": 6_726_338,
    "mobilenet_fcn8": 3_233_606,
    "mobilenet_unet": 8_336_226,
    "pspnet": 46_765_250,
    "r2attunet": 36_706_374,
    "r2unet": 35_660_930,
    "scseunet": 32_801_739,
    "segnet": 29_488_194,
    "seunet": 31_270_714,
    "unet": 31_049_474,
    "unet++": 9_053_154,
    "unet_xception_resnetblock": 38_427_434,
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
