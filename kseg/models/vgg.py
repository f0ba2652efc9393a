"""VGG16 (Simonyan & Zisserman, ICLR 2015): the one VGG16 body of the zoo.

:func:`vgg16_body` runs the VGG16 topology -- five stages of 2, 2, 3, 3, 3 3x3
convolutions with 64, 128, 256, 512, 512 filters, each stage ending in a pooling
step -- with pluggable convolution and pooling steps. Every VGG16 in kseg is
built with it:

* :func:`vgg16_encoder` -- the plain network with the layer names and layers of
  ``keras.applications.VGG16`` (conv + bias + ReLU, 2x2 max pooling), so that
  its ImageNet weights load by layer name; it is the ``"vgg16"`` encoder of
  :mod:`kseg.models.backbones` (``vggunet``, ``fcn8``, ``unet(encoder="vgg16")``);
* :func:`dilated_vgg16` -- DeepLabV2's output-stride-8 VGG16 (``deeplab_v2``);
* ``segnet``'s encoder (conv-BN-ReLU, max pooling with indices).

No models are registered here.
"""

import keras
from keras import layers

from kseg.models import layers as L

# (filters, convolutions) of the five VGG16 stages
VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def vgg16_body(x, conv, pool):
    """Apply the VGG16 topology to ``x`` with pluggable steps.

    Args:
        x: input tensor ``(B, H, W, C)``.
        conv: ``conv(x, filters, stage, index) -> tensor``, called for every
            convolution (``stage`` 1..5, ``index`` 1..3, ``filters`` the paper's
            width, which ``conv`` may scale).
        pool: ``pool(x, stage) -> tensor``, called at the end of every stage.

    Returns:
        The output of the last pooling step.
    """
    for stage, (filters, n_convs) in enumerate(VGG16_STAGES, start=1):
        for index in range(1, n_convs + 1):
            x = conv(x, filters, stage, index)
        x = pool(x, stage)
    return x


def vgg16_encoder(input_tensor):
    """VGG16 without its classifier, layer for layer as ``keras.applications.VGG16``.

    Layers ``block{s}_conv{i}`` (3x3, bias, ReLU, Glorot-uniform) and
    ``block{s}_pool`` (2x2 max pooling, stride 2, "valid" padding), so weights
    saved by ``keras.applications.VGG16(include_top=False)`` load by layer name.

    Returns:
        A ``keras.Model`` named ``vgg16`` from the source inputs of
        ``input_tensor`` to the ``block5_pool`` output; its layers are part of
        the caller's graph.
    """

    def conv(x, filters, stage, index):
        return layers.Conv2D(
            filters, 3, padding="same", activation="relu", name=f"block{stage}_conv{index}"
        )(x)

    def pool(x, stage):
        return layers.MaxPooling2D(2, strides=2, name=f"block{stage}_pool")(x)

    x = vgg16_body(input_tensor, conv, pool)
    sources = keras.utils.get_source_inputs(input_tensor)
    return keras.Model(sources[0] if len(sources) == 1 else sources, x, name="vgg16")


def dilated_vgg16(x, name, width_multiplier=1.0):
    """DeepLab's dilated VGG16 (output stride 8) applied to ``x``.

    The 13 VGG16 conv layers (3x3, bias, ReLU, no BN, He-normal initialisation)
    named ``{name}_conv{s}_{i}``;
    each stage ends in a 3x3 max pool with "same" padding, stride 2 after stages
    1-3 and stride 1 after stages 4 and 5 (pool4/pool5), and the stage-5 convs use
    dilation 2 to keep the receptive field the strides would have given.

    Returns:
        The pool5 output: stride 8, 512 channels (times ``width_multiplier``).
    """

    def conv(x, filters, stage, index):
        return layers.Conv2D(
            L.scaled(filters, width_multiplier),
            3,
            padding="same",
            dilation_rate=2 if stage == 5 else 1,
            activation="relu",
            kernel_initializer="he_normal",
            name=f"{name}_conv{stage}_{index}",
        )(x)

    def pool(x, stage):
        return layers.MaxPooling2D(
            3, strides=2 if stage <= 3 else 1, padding="same", name=f"{name}_pool{stage}"
        )(x)

    return vgg16_body(x, conv, pool)
