"""SegFormer ImageNet weights: the official MiT-B0..B5 checkpoints as a kseg weights file.

The authors' ImageNet-1K classifiers ``mit_b0.pth`` .. ``mit_b5.pth`` (linked from the
README of NVlabs/SegFormer, "ImageNet-1K pretrained weights") hold, besides their
classification ``head``, exactly the encoder of :func:`kseg.models.segformer.segformer`
(``mmseg/models/backbones/mix_transformer.py``). This module

* reads a checkpoint with the torch-free reader of :mod:`kseg.models.hrnet_weights`
  (:func:`~kseg.models.hrnet_weights.read_state_dict`: both PyTorch formats or an
  ``.npz``);
* maps every tensor (:func:`convert_state_dict`) through :func:`official_layout`, kseg's
  own table of the official modules: Linear ``weight`` (out, in) -> ``Dense`` ``kernel``
  (in, out); Conv2d ``weight`` OIHW -> HWIO; the depthwise 3x3 (C, 1, 3, 3) ->
  ``DepthwiseConv2D`` (3, 3, C, 1); LayerNorm ``weight``/``bias`` -> ``gamma``/``beta``;
  the ImageNet ``head.*`` is dropped by name. An unknown or missing key, or a wrong
  shape, is a one-line :class:`EncoderWeightsError` naming the key;
* writes the result as ``.npz`` keyed ``<layer>/<weight>`` (layer names less the model
  prefix) with a ``__meta__`` entry (:func:`kseg.models.hrnet_weights.write_weights`);
* loads it into a built model (:func:`load_into`), every MiT weight checked and assigned.

``kseg convert_weights segformer mit_b0.pth --variant b0`` is the command.
"""

import os

import numpy as np

from kseg.errors import EncoderConfigError, EncoderWeightsError
from kseg.models import hrnet_weights as H

# The official MiT configurations (mix_transformer.py mit_b0 .. mit_b5; the paper's Table 6),
# owned here because the checkpoint table needs them; kseg.models.segformer builds from them.
#: per variant: widths per stage, blocks per stage, and the decoder width C of Table 1
VARIANTS = {
    "b0": {"widths": (32, 64, 160, 256), "depths": (2, 2, 2, 2), "decoder": 256},
    "b1": {"widths": (64, 128, 320, 512), "depths": (2, 2, 2, 2), "decoder": 256},
    "b2": {"widths": (64, 128, 320, 512), "depths": (3, 4, 6, 3), "decoder": 768},
    "b3": {"widths": (64, 128, 320, 512), "depths": (3, 4, 18, 3), "decoder": 768},
    "b4": {"widths": (64, 128, 320, 512), "depths": (3, 8, 27, 3), "decoder": 768},
    "b5": {"widths": (64, 128, 320, 512), "depths": (3, 6, 40, 3), "decoder": 768},
}
HEADS = (1, 2, 5, 8)  # attention heads per stage, every variant
REDUCTION = (8, 4, 2, 1)  # sequence-reduction ratio R per stage
MLP_RATIO = 4  # Mix-FFN expansion
PATCH = ((7, 4), (3, 2), (3, 2), (3, 2))  # overlapping patch embedding: (kernel, stride) per stage

OFFICIAL_SOURCE = "NVlabs/SegFormer (README, 'ImageNet-1K pretrained weights')"
#: modules of the official ImageNet classifier that the segmentation model does not use
HEAD_PREFIXES = ("head.",)
#: how a PyTorch tensor becomes the Keras weight (by kind)
_TO_KERAS = {
    "linear": lambda w: w.T,
    "conv": lambda w: w.transpose(2, 3, 1, 0),
    "depthwise": lambda w: w.transpose(2, 3, 0, 1),
    "vector": lambda w: w,
}


def official_name(variant):
    return f"mit_{variant}.pth"


def default_weights_path(variant):
    """Where ``segformer(variant=v, encoder_weights="imagenet")`` looks:
    ``$KERAS_HOME/models/kseg_mit_{v}_imagenet.npz`` (``KERAS_HOME`` defaults to ``~/.keras``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", f"kseg_mit_{variant}_imagenet.npz")


def convert_command(variant):
    return f"kseg convert_weights segformer {official_name(variant)} --variant {variant}"


def _check_variant(variant):
    if variant not in VARIANTS:
        raise EncoderConfigError(f"segformer: unknown variant {variant!r}; valid values are: "
                                 f"{', '.join(sorted(VARIANTS))}")
    return variant


def official_layout(variant):
    """Every tensor of the official MiT encoder of ``variant``, in module order.

    Returns ``[(torch key, kind, kseg layer, keras weight, torch shape)]``; ``kind`` is
    ``"linear"``, ``"conv"``, ``"depthwise"`` or ``"vector"`` (biases, LayerNorm);
    ``kseg layer`` is the layer name without the model-name prefix.

    The official modules: ``patch_embed{s}.proj`` (Conv2d) and ``.norm``;
    ``block{s}.{b}.norm1``, ``.attn.q``, ``.attn.kv``, ``.attn.proj``, for R > 1
    ``.attn.sr`` (Conv2d R x R) and ``.attn.norm``, ``.norm2``, ``.mlp.fc1``,
    ``.mlp.dwconv.dwconv`` (depthwise 3x3), ``.mlp.fc2``; ``norm{s}``.
    """
    cfg = VARIANTS[_check_variant(variant)]
    out = []

    def add(key, kind, layer, shape):
        if kind == "vector":  # a LayerNorm
            out.append((f"{key}.weight", "vector", layer, "gamma", shape))
            out.append((f"{key}.bias", "vector", layer, "beta", shape))
        else:  # a Linear or conv, always with a bias
            out.append((f"{key}.weight", kind, layer, "kernel", shape))
            out.append((f"{key}.bias", "vector", layer, "bias", (shape[0],)))

    c_in = 3
    for s, (c, depth) in enumerate(zip(cfg["widths"], cfg["depths"]), start=1):
        k, r, n = PATCH[s - 1][0], REDUCTION[s - 1], f"mit_stage{s}"
        add(f"patch_embed{s}.proj", "conv", f"{n}_patch_conv", (c, c_in, k, k))
        add(f"patch_embed{s}.norm", "vector", f"{n}_patch_norm", (c,))
        for b in range(depth):
            p, m = f"block{s}.{b}", f"{n}_block{b + 1}"
            add(f"{p}.norm1", "vector", f"{m}_norm1", (c,))
            add(f"{p}.attn.q", "linear", f"{m}_attn_q", (c, c))
            add(f"{p}.attn.kv", "linear", f"{m}_attn_kv", (2 * c, c))
            add(f"{p}.attn.proj", "linear", f"{m}_attn_proj", (c, c))
            if r > 1:
                add(f"{p}.attn.sr", "conv", f"{m}_attn_sr", (c, c, r, r))
                add(f"{p}.attn.norm", "vector", f"{m}_attn_sr_norm", (c,))
            add(f"{p}.norm2", "vector", f"{m}_norm2", (c,))
            add(f"{p}.mlp.fc1", "linear", f"{m}_mlp_fc1", (MLP_RATIO * c, c))
            add(f"{p}.mlp.dwconv.dwconv", "depthwise", f"{m}_mlp_dwconv", (MLP_RATIO * c, 1, 3, 3))
            add(f"{p}.mlp.fc2", "linear", f"{m}_mlp_fc2", (c, MLP_RATIO * c))
        add(f"norm{s}", "vector", f"{n}_norm", (c,))
        c_in = c
    return out


def detect_variant(state):
    """The variant of an official MiT state dict, from its widths and block counts (or None)."""
    w = state.get("patch_embed1.proj.weight")
    if w is None or np.ndim(w) != 4:
        return None
    depths = tuple(len({k.split(".")[1] for k in state if k.startswith(f"block{s}.")}) for s in range(1, 5))
    for name, cfg in VARIANTS.items():
        if cfg["widths"][0] == w.shape[0] and cfg["depths"] == depths:
            return name
    return None


def _more(keys):
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def convert_state_dict(state, variant=None, source="checkpoint"):
    """Map an official MiT state dict onto kseg's layer names.

    Args:
        state: ``{torch key: array}`` (:func:`kseg.models.hrnet_weights.read_state_dict`).
        variant: ``"b0"`` .. ``"b5"``; ``None`` reads it from the widths and block counts.
        source: the file name used in error messages.

    Returns:
        ``(weights, report)``: ``weights`` maps ``"<kseg layer>/<weight>"`` to float32
        arrays in Keras layout; ``report`` counts the keys (``tensors == mapped +
        dropped_head``).

    Raises:
        EncoderWeightsError: an unknown key, a missing key, a wrong shape or a
            non-finite value (one line naming the first such key).
    """
    found = detect_variant(state)
    if variant is None:
        if found is None:
            raise EncoderWeightsError(f"{source}: not an official MiT-B0..B5 checkpoint (no patch_embed1.proj.weight "
                                      "or an unknown width/depth); pass --variant")
        variant = found
    _check_variant(variant)
    hint = (f"; the checkpoint looks like MiT-{found.upper()}: pass --variant {found}" if found not in (None, variant)
            else f"; is it the official MiT-{variant.upper()} ImageNet checkpoint ({official_name(variant)})?")
    table = {key: (kind, layer, weight, shape) for key, kind, layer, weight, shape in official_layout(variant)}
    head = sorted(k for k in state if k.startswith(HEAD_PREFIXES))
    unknown = sorted(k for k in state if k not in table and k not in head)
    if unknown:
        raise EncoderWeightsError(f"{source}: key {unknown[0]!r}{_more(unknown)} is neither a layer of the "
                                  f"MiT-{variant.upper()} encoder nor of the dropped classification head{hint}")
    missing = [k for k in table if k not in state]
    if missing:
        raise EncoderWeightsError(f"{source}: key {missing[0]!r}{_more(missing)} of the MiT-{variant.upper()} "
                                  f"encoder is missing{hint}")
    weights = {}
    for key, (kind, layer, weight, shape) in table.items():
        value = np.asarray(state[key])
        if value.shape != shape:
            raise EncoderWeightsError(f"{source}: key {key!r} has shape {value.shape}, MiT-{variant.upper()} "
                                      f"expects {shape}{hint}")
        if value.dtype.kind != "f" or not np.isfinite(value).all():
            raise EncoderWeightsError(f"{source}: key {key!r} does not hold finite floats; the checkpoint is damaged")
        weights[f"{layer}/{weight}"] = np.ascontiguousarray(_TO_KERAS[kind](value.astype("float32")))
    report = {"variant": variant, "tensors": len(state), "mapped": len(table),
              "layers": len({layer for _, layer, _, _ in table.values()}), "dropped_head": len(head)}
    return weights, report


def convert_checkpoint(checkpoint, output=None, variant=None, use_torch=None):
    """Convert an official MiT ImageNet checkpoint into a kseg weights file.

    Args:
        checkpoint: ``mit_b0.pth`` .. ``mit_b5.pth`` (or an ``.npz`` state dict).
        output: the ``.npz`` to write; default :func:`default_weights_path` (what
            ``encoder_weights="imagenet"`` loads).
        variant: ``"b0"`` .. ``"b5"``; ``None`` reads it from the checkpoint.
        use_torch: see :func:`kseg.models.hrnet_weights.read_state_dict`.

    Returns:
        The report of :func:`convert_state_dict` plus ``output`` and ``source``.
    """
    checkpoint = os.fspath(checkpoint)
    if variant is not None:
        _check_variant(variant)
    if not os.path.isfile(checkpoint):
        raise EncoderWeightsError(f"checkpoint {checkpoint} not found; download {OFFICIAL_SOURCE} and pass its path")
    state = H.read_state_dict(checkpoint, use_torch=use_torch)
    weights, report = convert_state_dict(state, variant, source=checkpoint)
    output = os.path.expanduser(os.fspath(output)) if output else default_weights_path(report["variant"])
    if not output.endswith(".npz"):
        raise EncoderConfigError(f"output {output} must be an .npz file name; e.g. --output "
                                 f"kseg_mit_{report['variant']}_imagenet.npz")
    meta = {"format": H.FORMAT, "model": "segformer", "variant": report["variant"],
            "source": os.path.basename(checkpoint), "source_sha256": H._sha256(checkpoint), "report": report}
    H.write_weights(output, weights, meta)
    return {**report, "output": output, "source": checkpoint}


# ------------------------------------------------------------------------------------------
# Loading into kseg's segformer
# ------------------------------------------------------------------------------------------
def resolve_weights(encoder_weights, variant):
    """The weights file that ``segformer(encoder_weights=...)`` loads (``None`` for none),
    checked to hold MiT weights of ``variant`` (before anything is built)."""
    if encoder_weights is None:
        return None
    if encoder_weights == "imagenet":
        path = default_weights_path(variant)
        if not os.path.isfile(path):
            raise EncoderWeightsError(f"segformer: no converted MiT-{variant.upper()} ImageNet weights at {path}; "
                                      f"download {official_name(variant)} from {OFFICIAL_SOURCE} and run: "
                                      f"{convert_command(variant)}")
    elif isinstance(encoder_weights, (str, os.PathLike)):
        path = os.path.expanduser(os.fspath(encoder_weights))
        if not os.path.isfile(path):
            raise EncoderWeightsError(f"segformer: encoder_weights file {path} not found; pass None, 'imagenet' or "
                                      f"a file written by {convert_command(variant)} --output FILE.npz")
    else:
        raise EncoderConfigError(f"segformer: encoder_weights must be None, 'imagenet' or a weights file; "
                                 f"received {encoder_weights!r}")
    meta = read_meta(path)
    if meta.get("variant") != variant:
        raise EncoderConfigError(f"segformer: {path} holds MiT-{str(meta.get('variant')).upper()} weights, the model "
                                 f"is variant={variant!r}; pass variant={meta.get('variant')!r} or convert "
                                 f"{official_name(variant)}")
    return path


def read_meta(path):
    """The ``__meta__`` of a kseg weights file, checked to be a SegFormer (MiT) file
    (:func:`kseg.models.hrnet_weights.read_meta`, the one reader of kseg's weights files)."""
    return H.read_meta(path, model="segformer", title="SegFormer")


def load_into(model, path, prefix):
    """Assign every MiT weight of ``model`` (layers ``{prefix}_mit_...``) from ``path``.

    Every encoder layer with weights must be in the file with the same shapes and every
    file entry must be used; all is checked before anything is assigned. With ``C != 3``
    input channels the first patch-embedding kernel is adapted
    (:func:`kseg.models.pretrained.adapt_input_kernel`; the official model takes RGB).

    Returns:
        The number of layers assigned.
    """
    from kseg.models.pretrained import adapt_input_kernel

    read_meta(path)
    with np.load(path, allow_pickle=False) as f:
        stored = {k: f[k] for k in f.files if k != "__meta__"}
    by_layer = {}
    for key, value in stored.items():
        layer, _, weight = key.rpartition("/")
        by_layer.setdefault(f"{prefix}_{layer}", {})[weight] = value
    targets = [lay for lay in model.layers if lay.weights and lay.name.startswith(f"{prefix}_mit_")]
    names = {lay.name for lay in targets}
    missing, unused = sorted(names - set(by_layer)), sorted(set(by_layer) - names)
    if missing or unused:
        what = (f"has no weights for layer {missing[0]!r}{_more(missing)}" if missing else
                f"has weights for {unused[0]!r}{_more(unused)}, which the model lacks")
        raise EncoderWeightsError(f"{path} {what}; convert the checkpoint again with this kseg version")
    first = f"{prefix}_mit_stage1_patch_conv"
    plan = []
    for lay in targets:
        have = by_layer[lay.name]
        wanted = [v.name.split("/")[-1] for v in lay.weights]
        if sorted(wanted) != sorted(have):
            raise EncoderWeightsError(f"{path}: layer {lay.name} has weights {wanted}, the file {sorted(have)}")
        values = [have[n] for n in wanted]
        if lay.name == first and values[0].shape[2] == 3 != lay.weights[0].shape[2]:
            values[0] = adapt_input_kernel(values[0], lay.weights[0].shape[2])
        for v, n, x in zip(lay.weights, wanted, values):
            if tuple(v.shape) != x.shape:
                raise EncoderWeightsError(f"{path}: {lay.name}/{n} has shape {x.shape}, the model {tuple(v.shape)}")
        plan.append((lay, values))
    for lay, values in plan:
        lay.set_weights(values)
    return len(plan)
