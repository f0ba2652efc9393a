"""Model cost from layer shapes: multiply-accumulates (MACs) of conv and dense layers.

FLOPs are reported as ``2 * MACs``. Only the layers that dominate cost are
counted (Conv2D, DepthwiseConv2D, SeparableConv2D, Conv2DTranspose, Dense);
normalisation, activations, pooling and resizing are ignored. A layer called
several times (shared weights, e.g. R2U-Net's recurrent convs) is counted once
per call.
"""

import math

import keras

from kseg.errors import InputShapeError


def _prod(shape):
    return int(math.prod(int(d) for d in shape))


def _layer_macs(layer, in_shape, out_shape):
    cls = type(layer).__name__
    if isinstance(layer, keras.layers.Conv2DTranspose):
        kh, kw = layer.kernel_size
        return _prod(in_shape[1:3]) * kh * kw * in_shape[-1] * layer.filters
    if isinstance(layer, keras.layers.SeparableConv2D):
        kh, kw = layer.kernel_size
        out_pos = _prod(out_shape[1:3])
        dm = layer.depth_multiplier
        return out_pos * (kh * kw * in_shape[-1] * dm + in_shape[-1] * dm * layer.filters)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return _prod(out_shape[1:3]) * kh * kw * in_shape[-1] * layer.depth_multiplier
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        groups = getattr(layer, "groups", 1) or 1
        return _prod(out_shape[1:3]) * kh * kw * (in_shape[-1] // groups) * layer.filters
    if isinstance(layer, keras.layers.Dense):
        return _prod(out_shape[1:-1] or (1,)) * in_shape[-1] * layer.units
    del cls
    return 0


def _concrete_copy(submodel, in_shape):
    """A copy of a nested functional model whose input has the concrete ``in_shape``
    of one of its calls (its own graph may be built size-free)."""
    cfg = submodel.get_config()
    for lay in cfg.get("layers", []):
        if lay.get("class_name") == "InputLayer":
            lay["config"]["batch_shape"] = [None, *in_shape[1:]]
            lay["config"].pop("batch_input_shape", None)
    return submodel.__class__.from_config(cfg)


def _iter_calls(model):
    """Yield (layer, input_shape, output_shape) for every call of every layer, recursing
    into nested functional models (once per call of the nested model)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and hasattr(layer, "layers") and layer.layers:
            for node in getattr(layer, "_inbound_nodes", []):
                ins = keras.tree.flatten(node.input_tensors)
                if not ins:
                    continue
                in_shape = tuple(ins[0].shape)
                own = tuple(layer.inputs[0].shape)
                sub = layer if own[1:] == in_shape[1:] else _concrete_copy(layer, in_shape)
                yield from _iter_calls(sub)
            continue
        for node in getattr(layer, "_inbound_nodes", []):
            ins = keras.tree.flatten(node.input_tensors)
            outs = keras.tree.flatten(node.output_tensors)
            if not ins or not outs:
                continue
            yield layer, tuple(ins[0].shape), tuple(outs[0].shape)


def count_macs(model):
    """Multiply-accumulates of one forward pass of ``model`` for batch size 1.

    The model must have been built with a fixed input height and width.
    """
    total = 0
    for layer, in_shape, out_shape in _iter_calls(model):
        if any(d is None for d in in_shape[1:]) or any(d is None for d in out_shape[1:]):
            raise InputShapeError(
                f"count_macs needs a model built with a fixed input size ({layer.name} has {in_shape}); "
                "build it with input_height and input_width"
            )
        total += _layer_macs(layer, in_shape, out_shape)
    return total
