"""Side by side: kseg's training step, its own alternatives, and PyTorch peers of the same network.

What ``kseg benchmark --peers`` / ``--variants`` / ``--profile`` run (docs/performance.md has
the figures and the commands that produced them).

* **kseg variants** (:data:`VARIANTS`): the same kseg model trained as ``kseg train`` compiles
  it (:func:`kseg.benchmark.run_model_config`), with TensorFlow as today (``default``), with
  XLA (``xla``), in mixed precision (``mixed``: ``mixed_bfloat16`` on a CPU with bfloat16), and
  on the JAX backend (``jax``, ``KERAS_BACKEND=jax``: XLA always).
* **PyTorch peers** (:data:`PEERS`): a maintained PyTorch implementation of the same network
  (segmentation_models_pytorch (SMP) for DeepLabV3+, the VGG16 U-Net and FPN; an ENet written
  here from the paper, :func:`build_torch_enet`), trained with the same optimiser family (Adam),
  loss (cross-entropy), batch, input size and number of threads, in each CPU setting of
  :data:`PEER_SETTINGS` (float32 and bfloat16 autocast, channels-last); the faster setting is
  the peer's figure. Where SMP's defaults differ from kseg's network and SMP's options cannot
  close the gap, the peer is SMP's model with the differing modules swapped for kseg's layout
  (written down per peer in ``differences``), so the two are the same network; a peer that
  cannot be made the same (SMP's PSPNet) is marked ``different networks`` and only its
  parameter count is compared.
* Timing is :func:`kseg.benchmark.time_training`'s: one random in-memory batch, ``warmup``
  untimed steps, the median of ``steps`` timed steps, images/s = batch / median step.
* Every configuration runs in its own subprocess (memory and threads do not mix). A
  side-by-side run goes round-robin over the configurations for ``rounds`` rounds (the order
  reversed every other round), so a shared machine's load hits all of them alike; the
  reported images/s is the median over rounds and every ratio is the median over rounds of
  that round's ratio (:func:`summarize`).
* ``--profile`` (:func:`profile_training`): a few training steps of one kseg model under
  TensorFlow's profiler; the trace (``.xplane.pb``) is read back and every TensorFlow op's
  own time (its duration less that of ops nested in it) is summed per op type
  (:func:`op_times`).

torch is an optional benchmark dependency (``pip install kseg[bench]``), never a runtime one:
this module imports it only inside the functions that build or time a peer. The torch side
runs in ``--torch_python`` (default: this interpreter).
"""

import collections
import dataclasses
import glob
import json
import os
import re
import statistics
import sys
import tempfile
import time

from kseg.benchmark import _random_batch, configure_threads, load_avg, run_in_subprocess

# --------------------------------------------------------------------------------------
# what is compared


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of running a kseg model: backend, ``--jit_compile``, ``--mixed_precision``
    (``None`` = auto, as ``kseg train``)."""

    name: str
    backend: str
    jit_compile: str
    mixed_precision: object
    doc: str
    direct_dilation: bool = True  # kseg.compat.direct_dilated_convolutions, as kseg train


VARIANTS = {v.name: v for v in (
    Variant("default", "tensorflow", "auto", None, "as kseg train: TensorFlow, XLA auto, precision auto"),
    Variant("xla", "tensorflow", "on", None, "TensorFlow with XLA (--jit_compile on)"),
    Variant("float32", "tensorflow", "auto", False, "TensorFlow in float32 (--no-mixed_precision)"),
    Variant("mixed", "tensorflow", "auto", True, "TensorFlow, mixed precision (--mixed_precision)"),
    Variant("xla_mixed", "tensorflow", "on", True, "TensorFlow, XLA and mixed precision"),
    Variant("jax", "jax", "auto", None, "the JAX backend (XLA), precision auto"),
    Variant("jax_mixed", "jax", "auto", True, "the JAX backend, mixed precision"),
    Variant("keras_dilation", "tensorflow", "auto", None, "as default, but dilated convolutions through Keras' "
            "own TensorFlow path (SpaceToBatch)", direct_dilation=False),
)}
DEFAULT_VARIANTS = ("default", "float32", "mixed", "xla", "jax")

#: torch CPU settings of a peer: ``name -> (precision, channels_last)``
PEER_SETTINGS = {
    "torch_fp32": ("float32", True),
    "torch_bf16": ("bfloat16", True),
    "torch_fp32_nchw": ("float32", False),
    "torch_bf16_nchw": ("bfloat16", False),
}
DEFAULT_PEER_SETTINGS = ("torch_fp32", "torch_bf16")


@dataclasses.dataclass(frozen=True)
class Peer:
    """A PyTorch peer of a kseg model with options ``kseg_kwargs`` (a tuple of pairs).

    ``builder`` names the function of this module that builds it; ``same_network`` says
    whether the two are the same network (else only parameter counts are compared);
    ``differences`` what still differs.
    """

    key: str
    model: str
    kseg_kwargs: tuple
    builder: str
    same_network: bool
    source: str
    differences: str

    @property
    def kwargs(self):
        return dict(self.kseg_kwargs)


PEERS = {p.key: p for p in (
    Peer("enet", "enet", (), "build_torch_enet", True,
         "a plain PyTorch ENet written for the benchmark from the paper (kseg.bench_peers.build_torch_enet)",
         "3x3/2 convs padded symmetrically (TF 'same' pads bottom/right): same cost"),
    Peer("deeplabv3plus", "deeplabv3plus", (("encoder", "resnet50"), ("separable", False)), "build_smp_deeplabv3plus",
         True,
         "SMP DeepLabV3Plus(encoder resnet50, output stride 16, atrous rates 6/12/18, standard ASPP convs, "
         "ASPP dropout 0.1) with its decoder matched to kseg's",
         "ResNet-50 from torchvision (stride on the 3x3 conv, v1.5; no conv biases) vs keras.applications "
         "(stride on the first 1x1, v1; 26,560 conv biases): torch does 1.2% more FLOPs; SMP's extra "
         "separable 3x3 after the ASPP is removed and its one separable 3x3 decoder conv replaced by kseg's "
         "two 3x3 conv-BN-ReLU; bilinear resizes use align_corners=True in SMP"),
    Peer("deeplabv3plus_separable", "deeplabv3plus", (("encoder", "resnet50"), ("separable", True)),
         "build_smp_deeplabv3plus_separable", True,
         "SMP DeepLabV3Plus(encoder resnet50, output stride 16, atrous rates 6/12/18, separable ASPP convs, "
         "ASPP dropout 0.1) with its decoder matched to kseg's separable form (the paper's Xception setting)",
         "ResNet-50 as for deeplabv3plus (26,560 conv biases in keras.applications'); SMP's separable convs get "
         "BN-ReLU between the depthwise and the pointwise conv (the paper's code, kseg), its extra separable 3x3 "
         "after the ASPP is removed and its one separable decoder conv replaced by kseg's two; bilinear "
         "resizes use align_corners=True in SMP. SMP as shipped has 26,816 parameters fewer than the matched "
         "decoder (tests/models/test_deeplab_encoders.py)"),
    Peer("unet_vgg16", "unet", (("encoder", "vgg16"),), "build_smp_unet_vgg16", True,
         "SMP Unet(encoder vgg16, decoder_channels 256/128/64/32/16, bilinear upsampling) matched to kseg's",
         "decoder widths are the same (256, 128, 64, 32, 16); SMP adds a centre block for VGG encoders "
         "(two 3x3 conv-BN-ReLU 512->512, 4.7M parameters), has a 3x3 head and drops the stride-1 VGG "
         "feature (its last block has no skip), kseg has no centre block, a 1x1 head and concatenates "
         "block1_conv2 in its last block: all three changed to kseg's layout"),
    Peer("fpn", "fpn", (("encoder", "resnet50"), ("smoothing", False)), "build_smp_fpn", True,
         "SMP FPN(encoder resnet50) as shipped (kseg fpn smoothing=False is SMP's layout)",
         "ResNet-50 v1.5 (torchvision) vs v1 (keras.applications, 26,560 conv biases): torch does 4% more "
         "FLOPs"),
    Peer("pspnet", "pspnet", (), "build_smp_pspnet", False,
         "SMP PSPNet(encoder resnet50) as shipped",
         "different networks: kseg's is the paper's (dilated ResNet-50 at output stride 8, deep stem, "
         "PPM with 512-wide branches on 2048 channels, 3x3 head conv); SMP's cuts ResNet-50 after stage 3 "
         "(encoder_depth 3, no dilation) and pools 1024 channels"),
)}


def find_peer(model, options=None):
    """The :data:`PEERS` entry for kseg ``model`` built with ``options`` (``None`` when none).

    A peer matches when the model is its model and every option the peer fixes is given with
    that value or, when not given, is the builder's default.
    """
    import inspect

    from kseg.models import model_spec

    options = dict(options or {})
    if model == "deeplabv3plus" and "backbone" in options:  # the old name of its encoder option
        from kseg.models.deeplabv3plus import resolve_encoder

        options["encoder"] = resolve_encoder(options.get("encoder", "resnet50"), options.pop("backbone"))
    defaults = {k: p.default for k, p in inspect.signature(model_spec(model).builder).parameters.items()}
    for peer in PEERS.values():
        if peer.model != model:
            continue
        if all(options.get(k, defaults.get(k)) == v for k, v in peer.kseg_kwargs):
            return peer
    return None


# --------------------------------------------------------------------------------------
# the torch side (imports torch inside the functions)


def build_torch_enet(n_classes=2, in_channels=3):
    """A plain PyTorch ENet, written for the benchmark from the paper.

    A. Paszke, A. Chaurasia, S. Kim, E. Culurciello, "ENet: A Deep Neural Network
    Architecture for Real-Time Semantic Segmentation", arXiv:1606.02147, Table 1 and Sec. 3:
    initial block (3x3/2 conv, 13 maps, concatenated with a 2x2 max pool of the input; BN,
    PReLU), bottlenecks (1x1 projection to a quarter of the width -- 2x2/2 when downsampling --,
    a 3x3 / dilated 3x3 / 5x1+1x5 conv, 1x1 expansion, each followed by BN and (but the last)
    PReLU; spatial dropout 0.01 in stage 1 and 0.1 after; main branch max pooling with indices
    and zero channels when downsampling; PReLU after the sum), the decoder's upsampling
    bottlenecks (main: 1x1 conv and max unpooling with the encoder's indices; extension: 1x1,
    3x3/2 transposed conv, 1x1) with ReLU and no dropout, and a 2x2/2 transposed conv to the
    class scores. Convolutions followed by BN have no bias; BN eps 1e-3 and momentum 0.1
    (Keras' 0.9), as kseg's. Returns an ``nn.Module`` mapping ``(B, C, H, W)`` to logits.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    def bn(c):
        return nn.BatchNorm2d(c, eps=1e-3, momentum=0.1)

    def act(kind, c):
        return nn.PReLU(c) if kind == "prelu" else nn.ReLU()

    class Initial(nn.Module):
        def __init__(self, cin, filters=16):
            super().__init__()
            self.conv = nn.Conv2d(cin, max(filters - cin, 1), 3, stride=2, padding=1, bias=False)
            self.pool = nn.MaxPool2d(2)
            out = max(filters - cin, 1) + cin
            self.bn, self.act = bn(out), act("prelu", out)

        def forward(self, x):
            return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], 1)))

    class Bottleneck(nn.Module):
        def __init__(self, cin, cout, kind="regular", dilation=1, dropout=0.1, activation="prelu",
                     downsample=False):
            super().__init__()
            mid = cout // 4
            k = 2 if downsample else 1
            self.proj = nn.Sequential(nn.Conv2d(cin, mid, k, stride=k, bias=False), bn(mid), act(activation, mid))
            if kind == "asymmetric":
                convs = [nn.Conv2d(mid, mid, (5, 1), padding=(2, 0), bias=False),
                         nn.Conv2d(mid, mid, (1, 5), padding=(0, 2), bias=False)]
            else:
                convs = [nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation, bias=False)]
            self.conv = nn.Sequential(*convs, bn(mid), act(activation, mid))
            self.expand = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), bn(cout))
            self.drop = nn.Dropout2d(dropout) if dropout else nn.Identity()
            self.pool = nn.MaxPool2d(2, return_indices=True) if downsample else None
            self.extra = cout - cin
            self.out = act(activation, cout)

        def forward(self, x):
            e = self.drop(self.expand(self.conv(self.proj(x))))
            m, idx = (x, None) if self.pool is None else self.pool(x)
            if self.extra:
                m = F.pad(m, (0, 0, 0, 0, 0, self.extra))
            y = self.out(m + e)
            return y if self.pool is None else (y, idx)

    class Upsampling(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            mid = cout // 4
            self.main = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), bn(cout))
            self.unpool = nn.MaxUnpool2d(2)
            self.ext = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), bn(mid), nn.ReLU(),
                nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1, bias=False), bn(mid),
                nn.ReLU(), nn.Conv2d(mid, cout, 1, bias=False), bn(cout))
            self.out = nn.ReLU()

        def forward(self, x, idx):
            return self.out(self.unpool(self.main(x), idx) + self.ext(x))

    # Table 1, stages 2 and 3 (bottleneck2.1 ... 2.8; stage 3 repeats it without 2.0)
    stage23 = [("regular", 1), ("dilated", 2), ("asymmetric", 1), ("dilated", 4),
               ("regular", 1), ("dilated", 8), ("asymmetric", 1), ("dilated", 16)]

    class ENet(nn.Module):
        def __init__(self):
            super().__init__()
            self.initial = Initial(in_channels)
            c0 = max(16 - in_channels, 1) + in_channels
            self.b1_0 = Bottleneck(c0, 64, dropout=0.01, downsample=True)
            self.b1 = nn.Sequential(*[Bottleneck(64, 64, dropout=0.01) for _ in range(4)])
            self.b2_0 = Bottleneck(64, 128, downsample=True)
            self.b23 = nn.Sequential(*[Bottleneck(128, 128, kind, d) for _ in range(2) for kind, d in stage23])
            self.b4_0 = Upsampling(128, 64)
            self.b4 = nn.Sequential(*[Bottleneck(64, 64, dropout=0, activation="relu") for _ in range(2)])
            self.b5_0 = Upsampling(64, 16)
            self.b5_1 = Bottleneck(16, 16, dropout=0, activation="relu")
            self.fullconv = nn.ConvTranspose2d(16, n_classes, 2, stride=2)

        def forward(self, x):
            x = self.initial(x)
            x, i1 = self.b1_0(x)
            x, i2 = self.b2_0(self.b1(x))
            x = self.b4(self.b4_0(self.b23(x), i2))
            x = self.b5_1(self.b5_0(x, i1))
            return self.fullconv(x)

    return ENet()


def _conv_bn_relu(cin, cout):
    from torch import nn

    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def build_smp_deeplabv3plus(n_classes=2, in_channels=3):
    """SMP's DeepLabV3Plus on ResNet-50 at output stride 16, its decoder matched to kseg's
    ``deeplabv3plus(backbone="resnet50")`` (see :data:`PEERS` ``differences``)."""
    import segmentation_models_pytorch as smp
    from torch import nn

    m = smp.DeepLabV3Plus("resnet50", encoder_weights=None, encoder_output_stride=16, in_channels=in_channels,
                          decoder_channels=256, decoder_atrous_rates=(6, 12, 18), decoder_aspp_separable=False,
                          decoder_aspp_dropout=0.1, classes=n_classes)
    m.decoder.aspp = nn.Sequential(m.decoder.aspp[0])  # kseg: the ASPP projection feeds the decoder directly
    m.decoder.block2 = nn.Sequential(*_conv_bn_relu(48 + 256, 256), *_conv_bn_relu(256, 256))
    return m


def _separable_conv_bn_relu(cin, cout, dilation=1):
    """kseg's ``separable_conv_bn_act`` in torch: depthwise 3x3 (dilated), BN, ReLU, pointwise 1x1, BN, ReLU."""
    from torch import nn

    return [nn.Conv2d(cin, cin, 3, padding=dilation, dilation=dilation, groups=cin, bias=False), nn.BatchNorm2d(cin),
            nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def build_smp_deeplabv3plus_separable(n_classes=2, in_channels=3):
    """SMP's DeepLabV3Plus on ResNet-50 at output stride 16 with separable ASPP convs, its
    decoder matched to kseg's ``deeplabv3plus(separable=True)`` (see :data:`PEERS` ``differences``)."""
    import segmentation_models_pytorch as smp
    from torch import nn

    rates = (6, 12, 18)
    m = smp.DeepLabV3Plus("resnet50", encoder_weights=None, encoder_output_stride=16, in_channels=in_channels,
                          decoder_channels=256, decoder_atrous_rates=rates, decoder_aspp_separable=True,
                          decoder_aspp_dropout=0.1, classes=n_classes)
    aspp = m.decoder.aspp[0]
    for i, rate in enumerate(rates, start=1):  # convs[0] is the 1x1 branch, convs[4] the pooling
        aspp.convs[i] = nn.Sequential(*_separable_conv_bn_relu(2048, 256, rate))
    m.decoder.aspp = nn.Sequential(aspp)  # kseg: the ASPP projection feeds the decoder directly
    m.decoder.block2 = nn.Sequential(*_separable_conv_bn_relu(48 + 256, 256), *_separable_conv_bn_relu(256, 256))
    return m


def build_smp_unet_vgg16(n_classes=2, in_channels=3):
    """SMP's Unet on VGG16 matched to kseg's ``unet(encoder="vgg16")``: no centre block, a 1x1
    head, bilinear upsampling, and the stride-1 VGG feature kept as the last block's skip."""
    import types

    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoderBlock
    from torch import nn

    m = smp.Unet("vgg16", encoder_weights=None, in_channels=in_channels, decoder_channels=(256, 128, 64, 32, 16),
                 decoder_interpolation="bilinear", classes=n_classes)
    m.decoder.center = nn.Identity()
    m.decoder.blocks[-1] = UnetDecoderBlock(32, 64, 16, use_norm="batchnorm", interpolation_mode="bilinear")
    m.segmentation_head[0] = nn.Conv2d(16, n_classes, 1)

    def forward(self, features):  # SMP drops the first feature; kseg concatenates it (block1_conv2, 64)
        sizes = [f.shape[2:] for f in features][::-1]
        features = features[::-1]
        x = self.center(features[0])
        for i, block in enumerate(self.blocks):
            x = block(x, sizes[i + 1][0], sizes[i + 1][1], skip_connection=features[i + 1])
        return x

    m.decoder.forward = types.MethodType(forward, m.decoder)
    return m


def build_smp_fpn(n_classes=2, in_channels=3):
    """SMP's FPN on ResNet-50 as shipped (kseg ``fpn(smoothing=False)`` has its layout)."""
    import segmentation_models_pytorch as smp

    return smp.FPN("resnet50", encoder_weights=None, in_channels=in_channels, classes=n_classes)


def build_smp_pspnet(n_classes=2, in_channels=3):
    """SMP's PSPNet on ResNet-50 as shipped (a different network from kseg's pspnet)."""
    import segmentation_models_pytorch as smp

    return smp.PSPNet("resnet50", encoder_weights=None, in_channels=in_channels, classes=n_classes)


def build_peer(key, n_classes=2, in_channels=3):
    """The torch model of peer ``key`` (a :data:`PEERS` key)."""
    return globals()[PEERS[key].builder](n_classes, in_channels)


def torch_param_counts(model):
    """``{"trainable", "bn_statistics", "keras_equivalent"}`` of a torch model: Keras'
    ``count_params`` also counts BatchNorm's moving mean and variance, which torch keeps as
    buffers (``num_batches_tracked`` has no Keras counterpart and is left out)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    return {"trainable": int(trainable), "bn_statistics": int(stats), "keras_equivalent": int(trainable + stats)}


def torch_forward_gflop(model, h, w, in_channels=3):
    """FLOPs (2 x MACs) of one forward pass of one image through the convolutions and linear
    layers, counted as :func:`kseg.models.profile.count_macs` counts Keras layers."""
    import torch
    from torch import nn

    macs = [0]

    def hook(mod, inp, out):
        x = inp[0]
        if isinstance(mod, nn.ConvTranspose2d):
            kh, kw = mod.kernel_size
            macs[0] += x.shape[2] * x.shape[3] * kh * kw * x.shape[1] * mod.out_channels // mod.groups
        elif isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            macs[0] += out.shape[2] * out.shape[3] * kh * kw * (x.shape[1] // mod.groups) * mod.out_channels
        elif isinstance(mod, nn.Linear):
            macs[0] += out.numel() // out.shape[-1] * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, h, w))
    finally:
        for hd in handles:
            hd.remove()
        model.train(was_training)
    return 2.0 * macs[0] / 1e9


def time_torch_training(model, batch, steps=10, warmup=2, precision="float32", channels_last=True,
                        learning_rate=1e-3):
    """Per-step training times (seconds) of a torch ``model``, as :func:`kseg.benchmark.time_training`
    times kseg's: ``batch = (x, y)`` (NHWC float images, integer labels) repeated from memory,
    ``warmup`` steps dropped. A step is zero_grad, forward (under ``torch.autocast("cpu",
    bfloat16)`` when ``precision="bfloat16"``), cross-entropy on float32 logits (ignore 255, as
    kseg's loss), backward and an Adam step."""
    import torch

    x, y = batch
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    yt = torch.from_numpy(y).long()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
    bf16 = precision == "bfloat16"
    times = []
    for i in range(int(warmup) + max(1, int(steps))):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(xt)
        loss = loss_fn(out.float(), yt)
        loss.backward()
        opt.step()
        float(loss.detach())
        if i >= int(warmup):
            times.append(time.perf_counter() - t0)
    return times


def run_peer_config(cfg):
    """Measure one peer in one setting (run in a subprocess); the torch counterpart of
    :func:`kseg.benchmark.run_model_config`.

    ``cfg``: ``peer`` (a :data:`PEERS` key), ``setting`` (a :data:`PEER_SETTINGS` key),
    ``input_height``, ``input_width``, ``batch_size``, ``n_classes``, ``steps``, ``warmup``,
    ``intra_threads`` (0 = the machine's logical CPUs, what TensorFlow uses by default).
    """
    import torch

    threads = int(cfg.get("intra_threads") or 0) or os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(int(cfg.get("seed", 0)))
    h, w = int(cfg["input_height"]), int(cfg["input_width"])
    b, n_classes = int(cfg.get("batch_size", 4)), int(cfg.get("n_classes", 2))
    setting = cfg.get("setting", "torch_fp32")
    precision, channels_last = PEER_SETTINGS[setting]
    model = build_peer(cfg["peer"], max(n_classes, 2) if n_classes == 1 else n_classes)
    res = {"peer": cfg["peer"], "setting": setting, "precision": precision, "channels_last": channels_last,
           "input_height": h, "input_width": w, "batch_size": b, "n_classes": n_classes,
           "torch": torch.__version__, "threads": threads, **{f"params_{k}": v
                                                                 for k, v in torch_param_counts(model).items()},
           "forward_gflop": round(torch_forward_gflop(model, h, w), 3)}
    if cfg.get("count_only"):
        return res
    times = time_torch_training(model, _random_batch(b, h, w, n_classes), steps=int(cfg.get("steps", 10)),
                                warmup=int(cfg.get("warmup", 2)), precision=precision,
                                channels_last=channels_last)
    step = statistics.median(times)
    res.update(train_step_s=round(step, 4), train_step_s_all=[round(t, 4) for t in times],
               train_images_per_s=round(b / step, 3), load_avg=load_avg())
    return res


# --------------------------------------------------------------------------------------
# profiling


def op_times(xspace, optimizer_scope=None):
    """Own time per TensorFlow op type from a profiler trace.

    ``xspace``: an ``XSpace`` proto, its serialised bytes, or the path of a ``.xplane.pb``.
    Every event named ``"op_name:OpType"`` on any line of any plane is a TensorFlow op; its
    own time is its duration less that of the op events nested inside it on the same line
    (a function-call op and the ops it ran). Returns ``{"by_type": {type: {"ps", "count"}},
    "optimizer_ps", "total_ps"}``; ``optimizer_ps`` sums ops whose name starts with
    ``optimizer_scope + "/"`` (the optimizer's update; also counted in ``by_type``).
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    if isinstance(xspace, (bytes, str)):
        data = xspace
        if isinstance(xspace, str):
            with open(xspace, "rb") as f:
                data = f.read()
        xspace = xplane_pb2.XSpace()
        xspace.ParseFromString(data)
    pattern = re.compile(r"^([^:#]+):([A-Za-z_][A-Za-z0-9_]*)$")
    own = collections.Counter()
    count = collections.Counter()
    by_name = collections.Counter()
    opt_ps = 0
    prefix = (optimizer_scope + "/") if optimizer_scope else None
    for plane in xspace.planes:
        for line in plane.lines:
            events = []
            for e in line.events:
                md = plane.event_metadata.get(e.metadata_id)
                m = pattern.match(md.name) if md is not None else None
                if m:
                    events.append((e.offset_ps, e.offset_ps + e.duration_ps, m.group(2), m.group(1)))
            events.sort(key=lambda t: (t[0], -t[1]))
            stack = []  # open ops: [end, type, is optimizer]
            for start, end, kind, name in events:
                while stack and stack[-1][0] <= start:
                    stack.pop()
                is_opt = bool(prefix) and name.startswith(prefix)
                if stack:  # nested: not the parent's own time
                    own[stack[-1][1]] -= end - start
                    by_name[stack[-1][3]] -= end - start
                    if stack[-1][2]:
                        opt_ps -= end - start
                own[kind] += end - start
                by_name[f"{name}:{kind}"] += end - start
                count[kind] += 1
                if is_opt:
                    opt_ps += end - start
                stack.append([end, kind, is_opt, f"{name}:{kind}"])
    return {"by_type": {k: {"ps": int(own[k]), "count": int(count[k])} for k in own},
            "by_name": {k: int(v) for k, v in by_name.items()},
            "optimizer_ps": int(opt_ps), "total_ps": int(sum(own.values()))}


#: op-type families for the summary: (family, test on the op type)
OP_FAMILIES = (
    ("conv backward (filter)", lambda t: "Conv" in t and "BackpropFilter" in t),
    ("conv backward (input)", lambda t: "Conv" in t and "BackpropInput" in t),
    ("conv forward", lambda t: "Conv" in t),
    ("matmul", lambda t: "MatMul" in t or "Einsum" in t),
    ("batch norm", lambda t: "BatchNorm" in t),
    ("resize", lambda t: "Resize" in t),
    ("pooling", lambda t: "Pool" in t or "ArgMax" in t),
    ("variables", lambda t: "Variable" in t or t in ("Identity", "NoOp", "Const")),
    ("layout / copies", lambda t: any(s in t for s in ("Transpose", "Reshape", "Concat", "Slice", "Pad", "Tile",
                                                       "Gather", "Scatter", "Pack", "Unpack", "Split",
                                                       "Broadcast", "Select", "Where", "Squeeze",
                                                       "ExpandDims", "Cast"))),
)


def op_family(op_type):
    """The :data:`OP_FAMILIES` family of a TensorFlow op type (``"elementwise / other"`` else)."""
    for name, test in OP_FAMILIES:
        if test(op_type):
            return name
    return "elementwise / other"


def summarize_ops(times, steps, top=15):
    """Milliseconds per step and shares from :func:`op_times`: ``{"by_type": [[type, ms, share,
    count per step]], "by_family": [[family, ms, share]], "optimizer_share", "op_ms_per_step"}``,
    sorted by time."""
    total = max(times["total_ps"], 1)
    ms = 1e-9 / max(int(steps), 1)
    by_type = sorted(times["by_type"].items(), key=lambda kv: -kv[1]["ps"])
    fam = collections.Counter()
    for t, v in by_type:
        fam[op_family(t)] += v["ps"]
    return {
        "op_ms_per_step": round(times["total_ps"] * ms, 1),
        "by_type": [[t, round(v["ps"] * ms, 2), round(v["ps"] / total, 4), round(v["count"] / max(int(steps), 1), 1)]
                    for t, v in by_type[:top]],
        "by_family": [[f, round(p * ms, 2), round(p / total, 4)] for f, p in fam.most_common()],
        "optimizer_share": round(times["optimizer_ps"] / total, 4),
        "top_ops": [[n, round(p * ms, 2), round(p / total, 4)]
                    for n, p in sorted(times.get("by_name", {}).items(), key=lambda kv: -kv[1])[:top]],
    }


def profile_training(cfg):
    """Op-level profile of kseg's training step of one model (TensorFlow backend).

    The model is built and compiled as :func:`kseg.benchmark.run_model_config` does; after
    ``warmup`` steps (``train_on_batch``), ``steps`` unprofiled steps are timed, then
    ``steps`` more run under ``tf.profiler.experimental`` and the trace is read with
    :func:`op_times`. ``cfg``: ``model``, ``model_kwargs``, ``input_height``, ``input_width``,
    ``batch_size``, ``n_classes``, ``steps``, ``warmup``, ``jit_compile``, ``mixed_precision``,
    ``top``, ``intra_threads``, ``inter_threads``.
    """
    from kseg.hardware import limit_malloc_arenas, precision_policy, resolve_jit_compile

    limit_malloc_arenas()
    configure_threads(cfg.get("intra_threads", 0), cfg.get("inter_threads", 0))
    import keras

    from kseg.models import get_model
    from kseg.optim import compile_model

    h, w = int(cfg["input_height"]), int(cfg["input_width"])
    b, n_classes = int(cfg.get("batch_size", 4)), int(cfg.get("n_classes", 2))
    steps, warmup = max(1, int(cfg.get("steps", 3))), int(cfg.get("warmup", 2))
    policy = precision_policy(cfg.get("mixed_precision"))
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    model = get_model(cfg["model"], n_classes=n_classes, input_height=h, input_width=w,
                      **dict(cfg.get("model_kwargs") or {}))
    jit = resolve_jit_compile(cfg.get("jit_compile", "auto"))
    compile_model(model, n_classes=n_classes, jit_compile=jit)
    x, y = _random_batch(b, h, w, n_classes)
    from kseg.benchmark import dilation_context

    with dilation_context(bool(cfg.get("direct_dilation", True))):
        times, plain, profiled = _profiled_steps(model, x, y, warmup, steps)
    out = {"model": cfg["model"], "model_kwargs": cfg.get("model_kwargs") or {}, "input_height": h,
           "input_width": w, "batch_size": b, "dtype_policy": policy, "jit_compile": bool(jit),
           "steps": steps, "params": int(model.count_params()),
           "step_s": round(statistics.median(plain), 4), "profiled_step_s": round(profiled, 4)}
    out.update(summarize_ops(times, steps, top=int(cfg.get("top", 15))))
    out["load_avg"] = load_avg()
    return out


def _profiled_steps(model, x, y, warmup, steps):
    """``warmup`` steps, ``steps`` timed steps, ``steps`` profiled steps: returns the op
    times (:func:`op_times`), the timed steps' durations and the profiled mean step."""
    import shutil

    import tensorflow as tf

    for _ in range(max(1, warmup)):
        model.train_on_batch(x, y)
    plain = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        plain.append(time.perf_counter() - t0)
    logdir = tempfile.mkdtemp(prefix="kseg-profile-")
    try:
        tf.profiler.experimental.start(logdir)
        t0 = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        profiled = (time.perf_counter() - t0) / steps
        tf.profiler.experimental.stop()
        files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        if not files:
            raise RuntimeError(f"the TensorFlow profiler wrote no trace under {logdir}")
        times = op_times(files[0], optimizer_scope=model.optimizer.name)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    return times, plain, profiled


def format_profile(r):
    """A Markdown report of one :func:`profile_training` result."""
    if "error" in r:
        return f"profile of {r.get('model')}: error: {r['error']}"
    lines = [f"### {r['model']} {r['input_height']}x{r['input_width']}, batch {r['batch_size']}, "
             f"{r['dtype_policy']}, XLA {'on' if r['jit_compile'] else 'off'}",
             "",
             f"step {r['step_s']:.3f} s unprofiled, {r['profiled_step_s']:.3f} s profiled; op time "
             f"{r['op_ms_per_step']:.0f} ms per step (sum over TensorFlow's threads); optimizer update "
             f"{100 * r['optimizer_share']:.1f}% of it",
             "", "| op family | ms/step | share |", "|---|---:|---:|"]
    lines += [f"| {f} | {ms:,.1f} | {100 * s:.1f}% |" for f, ms, s in r["by_family"]]
    lines += ["", "| op type | ms/step | share | calls/step |", "|---|---:|---:|---:|"]
    lines += [f"| `{t}` | {ms:,.1f} | {100 * s:.1f}% | {n:g} |" for t, ms, s, n in r["by_type"]]
    if r.get("top_ops"):
        lines += ["", "| op (name:type, summed over steps' calls) | ms/step | share |", "|---|---:|---:|"]
        lines += [f"| `{n}` | {ms:,.1f} | {100 * s:.1f}% |" for n, ms, s in r["top_ops"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# the side-by-side driver


def run_task(task, cfg, timeout=1800, python=None, env=None):
    """Run a task of this module (``peer``, ``profile``) in a fresh ``python`` process
    (default: this interpreter) through :func:`kseg.benchmark.run_in_subprocess`."""
    from kseg.benchmark import run_in_subprocess

    return run_in_subprocess(task, cfg, timeout=timeout, env=env, module="kseg.bench_peers", python=python)


@dataclasses.dataclass
class Job:
    """One configuration of a side-by-side run: a kseg variant or a peer setting of one model."""

    label: str  # the model's row group (a peer key, or the kseg model name)
    name: str  # the variant or peer-setting name
    kind: str  # "kseg" or "torch"
    cfg: dict
    env: dict = dataclasses.field(default_factory=dict)
    python: str = None


def kseg_job(label, model, kwargs, variant, size, batch_size, n_classes, steps, warmup, threads=None):
    """The :class:`Job` of kseg ``model`` in :data:`VARIANTS` ``variant``."""
    v = VARIANTS[variant]
    cfg = {"model": model, "impl": "kseg", "input_height": size[0], "input_width": size[1],
           "batch_size": batch_size, "n_classes": n_classes, "model_kwargs": dict(kwargs), "steps": steps,
           "warmup": warmup, "jit_compile": v.jit_compile, "mixed_precision": v.mixed_precision,
           "inference": False, "direct_dilation": v.direct_dilation, **(threads or {})}
    return Job(label, variant, "kseg", cfg, env={"KERAS_BACKEND": v.backend})


def peer_job(label, peer, setting, size, batch_size, n_classes, steps, warmup, threads=None, python=None):
    """The :class:`Job` of ``peer`` in :data:`PEER_SETTINGS` ``setting``."""
    cfg = {"peer": peer, "setting": setting, "input_height": size[0], "input_width": size[1],
           "batch_size": batch_size, "n_classes": n_classes, "steps": steps, "warmup": warmup, **(threads or {})}
    # libgomp's spin-waiting threads collapse under a shared machine's load (ENet at 64x64: 40 ms per
    # forward pass idle, 0.3-8 s at load 10 with the default policy, 0.05-0.1 s passive): torch's best
    # CPU setting there. A value already in the environment is kept.
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    return Job(label, setting, "torch", cfg, env=env, python=python)


def _run_job(job, timeout):
    if job.kind == "kseg":
        return run_in_subprocess("model", job.cfg, timeout=timeout, env=job.env)
    return run_task("peer", job.cfg, timeout=timeout, python=job.python, env=job.env)


def run_rounds(jobs, rounds=3, timeout=1800, runner=None, log=None):
    """Run every job once per round, round-robin, the order reversed every other round.

    ``runner(job)`` (default: each job in its own subprocess) returns a result dict.
    Returns ``{(label, name): [result of round 1, ...]}``; ``log(job, round, result)`` is
    called after every run.
    """
    runner = runner or (lambda j: _run_job(j, timeout))
    out = {(j.label, j.name): [] for j in jobs}
    for r in range(int(rounds)):
        for job in (jobs if r % 2 == 0 else jobs[::-1]):
            res = runner(job)
            out[(job.label, job.name)].append(res)
            if log:
                log(job, r, res)
    return out


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _round_ratio(a, b):
    """Median over rounds of ``a[i] / b[i]`` (rounds where either is missing are skipped)."""
    return _median([x / y for x, y in zip(a, b) if x is not None and y])


def summarize(per_round, default="default", peer_names=(), same_network=True):
    """Medians and ratios of one model's configurations.

    ``per_round``: ``{name: [images/s of round 1, ...]}`` (``None`` for a failed run) in the
    order to report. The peer's figure is the setting among ``peer_names`` with the highest
    median images/s. Every ratio is the median over rounds of that round's ratio. Returns
    rows ``{"name", "images_per_s", "vs_default", "vs_peer", "peer_best"}`` (``vs_peer`` is
    ``None`` when ``same_network`` is false: different networks are not compared).
    """
    med = {k: _median(v) for k, v in per_round.items()}
    peers = [p for p in peer_names if med.get(p) is not None]
    best = max(peers, key=lambda p: med[p]) if peers else None
    rows = []
    for name, values in per_round.items():
        rows.append({
            "name": name,
            "images_per_s": med[name],
            "vs_default": _round_ratio(values, per_round[default]) if default in per_round else None,
            "vs_peer": _round_ratio(values, per_round[best]) if best and same_network else None,
            "peer_best": name == best,
        })
    return rows


def _num(v, fmt):
    return "-" if v is None else format(v, fmt)


def format_table(rows, epoch_images=None):
    """A Markdown table of side-by-side rows (dicts with ``model``, ``variant``, ``runs_as``,
    ``images_per_s``, ``vs_default``, ``vs_peer``, ``peer_best``, ``params``,
    ``forward_gflop``, ``note``); with ``epoch_images`` a column of seconds per epoch of
    that many images."""
    head = ["model", "variant", "runs as", "img/s", "vs kseg default", "vs peer best"]
    if epoch_images:
        head.append(f"s per {epoch_images}-image epoch")
    head += ["params", "GFLOP fwd", "note"]
    out = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 4) + "---|"]
    for r in rows:
        ips = r.get("images_per_s")
        variant = r["variant"] + (" (peer best)" if r.get("peer_best") else "")
        cells = [r["model"], variant, r.get("runs_as") or "-", _num(ips, ".2f"),
                 _num(r.get("vs_default"), ".2f") + "x"
                 if r.get("vs_default") is not None else "-",
                 (_num(r.get("vs_peer"), ".2f") + "x") if r.get("vs_peer") is not None else
                 ("different networks" if r.get("different") else "-")]
        if epoch_images:
            cells.append(_num(epoch_images / ips if ips else None, ",.0f"))
        params = r.get("params")
        cells += [_num(params, ","), _num(r.get("forward_gflop"), ".2f"), r.get("note", "")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _first(results, key):
    for r in results:
        if r and "error" not in r and r.get(key) is not None:
            return r[key]
    return None


def _runs_as(job, results):
    """What a job ran as: ``"tensorflow mixed_bfloat16"``, ``"jax float32"`` (``+ XLA`` where on),
    ``"torch bfloat16 channels-last"``."""
    if job.kind == "torch":
        precision, channels_last = PEER_SETTINGS[job.name]
        return f"torch {precision} {'channels-last' if channels_last else 'NCHW'}"
    policy = _first(results, "dtype_policy")
    backend = job.env.get("KERAS_BACKEND", "tensorflow")
    xla = " + XLA" if _first(results, "jit_compile") and backend != "jax" else ""
    return f"{backend} {policy or '?'}{xla}"


def side_by_side(groups, rounds=3, timeout=1800, runner=None, log=None):
    """Run and summarize the side-by-side comparison.

    ``groups``: ``[(label, jobs, peer)]``: the jobs of one model (kseg variants first, the
    first being the reference "default") and its :class:`Peer` (or ``None``). All jobs of all
    groups go round-robin together (:func:`run_rounds`). Returns ``(rows, raw)``: one row per
    job (see :func:`format_table`) and the per-round results.
    """
    jobs = [j for _, js, _ in groups for j in js]
    raw = run_rounds(jobs, rounds=rounds, timeout=timeout, runner=runner, log=log)
    rows = []
    for label, js, peer in groups:
        per_round = {}
        for j in js:
            per_round[j.name] = [None if (not r or "error" in r) else r.get("train_images_per_s")
                                 for r in raw[(label, j.name)]]
        kseg_names = [j.name for j in js if j.kind == "kseg"]
        peer_names = [j.name for j in js if j.kind == "torch"]
        summary = summarize(per_round, default=kseg_names[0] if kseg_names else None, peer_names=peer_names,
                            same_network=bool(peer and peer.same_network))
        for j, s in zip(js, summary):
            results = raw[(label, j.name)]
            errors = [r["error"] for r in results if r and "error" in r]
            params = (_first(results, "params") if j.kind == "kseg"
                      else _first(results, "params_keras_equivalent"))
            rows.append({
                "model": label, "variant": j.name, "kind": j.kind, **{k: s[k] for k in (
                    "images_per_s", "vs_default", "vs_peer", "peer_best")},
                "images_per_s_rounds": per_round[j.name], "params": params,
                "forward_gflop": _first(results, "forward_gflop"),
                "dtype_policy": _first(results, "dtype_policy"), "jit_compile": _first(results, "jit_compile"),
                "runs_as": _runs_as(j, results),
                "different": bool(peer and not peer.same_network),
                "note": ("error: " + errors[0][:80]) if errors else "",
            })
    return rows, raw


# --------------------------------------------------------------------------------------
# the command line (kseg benchmark --peers / --variants / --profile)


def add_arguments(p):
    """The side-by-side flags of ``kseg benchmark``."""
    p.add_argument("--peers", nargs="?", const="auto", default=None, metavar="KEYS",
                   help="time kseg's training step next to its PyTorch peer (needs torch and "
                        "segmentation-models-pytorch: pip install kseg[bench]) and kseg's own --variants, "
                        "round-robin in separate subprocesses for --rounds rounds. Without a value: the peers "
                        "of --model_name; or a comma-separated list of peer keys (" + ", ".join(PEERS) + ")")
    p.add_argument("--variants", default=None, metavar="NAMES",
                   help="kseg variants for the side-by-side run (" + ", ".join(VARIANTS) + "; default "
                        + ",".join(DEFAULT_VARIANTS) + "); given without --peers, only these are compared")
    p.add_argument("--peer_settings", default=",".join(DEFAULT_PEER_SETTINGS), metavar="NAMES",
                   help="torch CPU settings of the peers (" + ", ".join(PEER_SETTINGS) + "); the fastest counts")
    p.add_argument("--rounds", type=int, default=3, help="side-by-side rounds (medians over rounds)")
    p.add_argument("--epoch_images", type=int, default=0,
                   help="side-by-side: also print seconds per epoch of this many images (CamVid: 367)")
    p.add_argument("--torch_python", default=None,
                   help="Python interpreter with torch for the peers (default: this one)")
    p.add_argument("--profile", action="store_true",
                   help="op-level profile of the training step of each --model_name (TensorFlow profiler): "
                        "time per op type and family")


def wanted(args):
    """Whether ``kseg benchmark`` was asked for a side-by-side run or a profile."""
    return bool(getattr(args, "peers", None) or getattr(args, "variants", None) or getattr(args, "profile", False))


def _names(text, valid, what):
    from kseg.errors import BenchmarkError

    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise BenchmarkError(f"--{what} {text!r}: expected a comma-separated list of {', '.join(valid)}")
    return names


def main_from_cli(args, models, width, opts, emit=None):
    """``kseg benchmark --peers/--variants/--profile``: runs, prints the table, returns the exit status."""
    from kseg.errors import BenchmarkError
    from kseg.models import model_spec
    from kseg.models.registry import check_input_size, parse_model_options

    emit = emit or (lambda obj: print(json.dumps(obj), flush=True))
    h, threads = args.input_height, {"intra_threads": args.intra_threads, "inter_threads": args.inter_threads}

    def checked(m, kwargs):  # typed options; a wrong option or size is one line here, not in a subprocess
        typed = parse_model_options(m, kwargs)
        check_input_size(m, h, width, *model_spec(m).size_rule(**typed))
        return typed

    if args.profile:
        status = 0
        for m in models:
            r = run_task("profile", {"model": m, "model_kwargs": checked(m, opts), "input_height": h, "input_width": width,
                                     "batch_size": args.batch_size, "n_classes": args.n_classes,
                                     "steps": args.steps, "warmup": args.warmup, "jit_compile": args.jit_compile,
                                     "mixed_precision": {"auto": None, "float32": False, "mixed": True}.get(
                                         args.precision), **threads}, timeout=args.timeout)
            emit(dict(r, kind="profile"))
            print(format_profile(r))
            status |= "error" in r
        return int(status)
    variants = _names(args.variants or ",".join(DEFAULT_VARIANTS), VARIANTS, "variants")
    settings = _names(args.peer_settings, PEER_SETTINGS, "peer_settings") if args.peers else []
    if args.peers and args.peers != "auto":
        targets = [(k, PEERS[k].model, PEERS[k].kwargs, PEERS[k])
                   for k in _names(args.peers, PEERS, "peers")]
    else:
        targets = []
        for m in models:
            peer = find_peer(m, checked(m, opts)) if args.peers else None
            if args.peers and peer is None:
                print(f"# {m}: no PyTorch peer for these options (peers: {', '.join(PEERS)}); kseg variants only",
                      file=sys.stderr, flush=True)
            targets.append((peer.key if peer else m, m, opts, peer))
    groups = []
    for label, m, kwargs, peer in targets:
        jobs = [kseg_job(label, m, checked(m, kwargs), v, (h, width), args.batch_size, args.n_classes, args.steps,
                         args.warmup, threads) for v in variants]
        if peer is not None:
            jobs += [peer_job(label, peer.key, s, (h, width), args.batch_size, args.n_classes, args.steps,
                              args.warmup, threads, python=args.torch_python) for s in settings]
        groups.append((label, jobs, peer))
    if args.rounds < 1:
        raise BenchmarkError(f"--rounds {args.rounds}: expected at least 1")

    def log(job, r, res):
        what = res.get("error") or f"{res.get('train_images_per_s')} img/s"
        print(f"# round {r + 1}: {job.label} {job.name}: {what} (load average {load_avg()})",
              file=sys.stderr, flush=True)

    rows, raw = side_by_side(groups, rounds=args.rounds, timeout=args.timeout, log=log)
    date = time.strftime("%Y-%m-%dT%H:%M:%S")
    for r in rows:
        emit(dict(r, kind_of_row="side_by_side", input_height=h, input_width=width, batch_size=args.batch_size,
                  rounds=args.rounds, steps=args.steps, warmup=args.warmup, date=date))
    for label, _, peer in groups:
        if peer is not None:
            emit({"peer": peer.key, "kseg_model": peer.model, "kseg_options": peer.kwargs,
                  "same_network": peer.same_network, "source": peer.source, "differences": peer.differences})
    print()
    print(f"side by side, {h}x{width}, batch {args.batch_size}, {args.steps} timed steps after {args.warmup}, "
          f"{args.rounds} rounds; {os.cpu_count()} logical CPUs")
    print()
    print(format_table(rows, epoch_images=args.epoch_images or None))
    return 1 if any(r["note"].startswith("error") for r in rows) else 0


def _main(argv):
    task, cfg = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    if task == "peer":
        out = run_peer_config(cfg)
    elif task == "profile":
        out = profile_training(cfg)
    else:
        raise SystemExit(f"unknown task {task!r}")
    print("KSEG_BENCH " + json.dumps(out), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _main(sys.argv[1:])
