"""Encoder freezing: which layers are each model's encoder, and freezing or unfreezing them.

The encoder is the part of a model that an ImageNet (or other pretrained) backbone
fills: training it frozen for a few epochs lets a randomly initialised decoder settle
before the pretrained features are changed. :data:`ENCODERS` says, per registered
model, where its encoder is; models without one (the plain U-Net family) are absent,
and asking to freeze them is a one-line :class:`kseg.errors.ModelConfigError`.

Two ways of naming an encoder, both read from the built model, so they follow the
options it was built with (``unet`` and ``unet++`` have an encoder only with ``encoder=...``,
``deeplab_v2`` a VGG16 or a ResNet-101):

* ``APPLICATION`` -- a ``keras.applications`` encoder of
  :mod:`kseg.models.backbones` (or kseg's VGG16 with the same layer names): the
  layers on the paths from the input to the encoder's skip taps present in the model
  (:data:`kseg.models.backbones.ENCODERS`). An encoder layer whose output the
  model does not use (the end of Xception that ``unet_xception_resnetblock`` skips)
  is not part of the model and so not frozen.
* a regular expression -- kseg's own backbones, by layer-name prefix after the
  model's name (``{name}_enc1_conv1_conv``, ``{name}_backbone_stage3_...``): segnet's
  VGG16 encoder, DeepLabV2's dilated VGG16 / ResNet-101, PSPNet's and ICNet's dilated
  ResNet (PSPNet built with ``encoder=...``: that ``keras.applications`` encoder, found as
  above; ICNet: the shared stem-to-stage-2 sub-model and stages 2-4 of the low
  branch, not the full-resolution branch), ENet's initial block and stages 1-3 (the
  paper trains that encoder on its own first), HRNet's stem, stages and transitions
  (everything before the head), SegFormer's Mix Transformer (everything before the all-MLP
  decoder).

A frozen layer has ``trainable = False``; Keras 3 then also runs a
``BatchNormalization`` layer in inference mode (its moving statistics normalise and
are not updated), which is what a frozen pretrained encoder needs.

Training (``kseg train --freeze_encoder N``) builds the optimizer over every weight
before freezing, so that unfreezing after ``N`` epochs only retraces the train step:
the optimizer, its step count and the learning-rate schedule continue. Checkpoints
are written with the encoder unfrozen (:func:`saved_unfrozen`) so that the optimizer
state in the file matches the weights Keras rebuilds it for; a resumed run freezes
the encoder again when it resumes before epoch ``N``.
"""

import contextlib
import re

import keras

from kseg.errors import ModelConfigError
from kseg.models.backbones import ENCODERS as BACKBONE_ENCODERS

#: The encoder of ``keras.applications`` (and kseg's VGG16) backbones, found by their tap names.
APPLICATION = "keras.applications encoder"

#: Model registry name -> where its encoder is (:data:`APPLICATION` or a regular expression
#: of layer names after ``{model.name}_``).
ENCODERS = {
    "deeplab_v2": r"(vgg16|resnet101)_",
    "deeplabv3": APPLICATION,
    "deeplabv3plus": APPLICATION,
    "enet": r"(initial|b[123]_)",
    "fcn8": APPLICATION,
    "fpn": APPLICATION,
    "hrnet": r"(stem|stage\d|transition\d)",
    "icnet": r"(shared$|stage[234]_)",
    "linknet": APPLICATION,
    "manet": APPLICATION,
    "mobilenet_fcn8": APPLICATION,
    "mobilenet_unet": APPLICATION,
    "pan": APPLICATION,
    "pspnet": r"backbone_",
    "segformer": r"mit_",
    "segnet": r"enc\d",
    "unet": APPLICATION,  # with encoder=...; the paper's U-Net has none
    "unet++": APPLICATION,  # with encoder=...; the paper's UNet++ has none
    "unet_xception_resnetblock": APPLICATION,
    "upernet": APPLICATION,
    "vggunet": APPLICATION,
}

# the attribute of a model that remembers which layers freeze_encoder froze
_FROZEN = "_kseg_frozen_encoder"


def _model_name(model, model_name):
    name = model_name or getattr(model, "kseg_name", None)
    if not name:
        raise ModelConfigError(
            f"{model.name}: not a kseg model (built without the registry); pass model_name= to name it"
        )
    return name


def _no_encoder(name):
    return ModelConfigError(
        f"{name}: the model has no pretrained encoder to freeze; --freeze_encoder works with "
        f"{', '.join(sorted(ENCODERS))} (unet and unet++ with encoder=...); drop --freeze_encoder"
    )


def _application_layers(model):
    taps = {n for spec in BACKBONE_ENCODERS.values() for n in spec.taps.values()}
    present = [layer for layer in model.layers if layer.name in taps]
    if not present:
        return []
    inputs = model.input
    sub = keras.Model(inputs, [layer.output for layer in present])  # the sub-graph: no new layers
    return [layer for layer in sub.layers if not isinstance(layer, keras.layers.InputLayer)]


def encoder_layers(model, model_name=None):
    """The layers of ``model`` that form its encoder (top-level layers, graph order).

    Args:
        model: a model built by a kseg builder (or loaded from a kseg file).
        model_name: its registry name; default the name the registry recorded
            (``model.kseg_name``).

    Raises:
        ModelConfigError: the model has no encoder (e.g. the plain ``unet``), or it
            cannot be told which model it is.
    """
    name = _model_name(model, model_name)
    where = ENCODERS.get(name)
    if where is None:
        raise _no_encoder(name)
    if where == APPLICATION:
        found = _application_layers(model)
    else:
        pattern = re.compile(re.escape(f"{model.name}_") + f"(?:{where})")
        found = [layer for layer in model.layers if pattern.match(layer.name)]
        if not found:  # built on a keras.applications encoder instead (pspnet's encoder=...)
            found = _application_layers(model)
    if not found:
        raise _no_encoder(name)
    return found


def freeze_encoder(model, model_name=None, frozen=True):
    """Freeze (``frozen=True``) or unfreeze the encoder of ``model``; returns its layers.

    A frozen layer is not trained, and a frozen ``BatchNormalization`` normalises
    with its moving statistics and does not update them (Keras 3 runs a layer with
    ``trainable = False`` in inference mode). Unfreezing makes the encoder's layers
    trainable again. A compiled model needs its train step retraced afterwards
    (``model.make_train_function(force=True)``, what ``kseg train`` does), and its
    optimizer must know the encoder's weights (``kseg train`` builds it over all of
    them before freezing).

    Raises:
        ModelConfigError: the model has no encoder (see :func:`encoder_layers`).

    Example:
        >>> from kseg.models import get_model
        >>> model = get_model("mobilenet_unet", alpha=0.25)
        >>> layers = freeze_encoder(model)
        >>> model.get_layer("conv1_bn").trainable
        False
    """
    layers = encoder_layers(model, model_name)
    for layer in layers:
        layer.trainable = not frozen
    setattr(model, _FROZEN, tuple(layer.name for layer in layers) if frozen else ())
    return layers


def frozen_layers(model):
    """Names of the layers :func:`freeze_encoder` froze and that are still frozen."""
    names = getattr(model, _FROZEN, ()) or ()
    return [n for n in names if not model.get_layer(n).trainable]


@contextlib.contextmanager
def saved_unfrozen(model):
    """Inside the block the layers :func:`freeze_encoder` froze are trainable again.

    For saving: Keras rebuilds a loaded model's optimizer over its TRAINABLE weights,
    and an optimizer state of another size does not load (Keras 3.15 refuses the file;
    older versions skip the state with a warning). ``kseg train`` builds the optimizer
    over every weight, so a checkpoint must be written with every weight trainable,
    or ``--resume`` would fail or restart the step count and moments.
    """
    names = frozen_layers(model)
    for n in names:
        model.get_layer(n).trainable = True
    try:
        yield model
    finally:
        for n in names:
            model.get_layer(n).trainable = False
