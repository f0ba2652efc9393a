"""HRNetV2: high-resolution network for semantic segmentation (Wang et al., TPAMI 2020)."""

import keras
from keras import layers

from kseg.models import _checks as C
from kseg.models import layers as L
from kseg.models.registry import register_model
from kseg.models.resnet import bottleneck, residual_conv_bn

STAGE1_FILTERS = 64  # stage-1 bottleneck width (256 output channels), for every HRNet width


def basic_block(x, filters, name):
    """Two 3x3 conv-BN layers with a residual connection and ReLU (He et al. 2016);
    the second BN starts with gamma = 0 (zero-init residual)."""
    y = L.conv_bn_act(x, filters, 3, name=f"{name}_conv1")
    y = residual_conv_bn(y, filters, 3, f"{name}_conv2")
    y = layers.Add(name=f"{name}_add")([y, x])
    return layers.Activation("relu", name=f"{name}_out")(y)


def transition(branches, widths, name):
    """Adapt the branches of a stage to the next stage and start one new branch.

    Existing branch ``i`` gets a 3x3 conv-BN-ReLU to ``widths[i]`` channels when its
    channel count differs (only after stage 1) and is passed through otherwise; the
    new, lowest-resolution branch is a 3x3 stride-2 conv-BN-ReLU of the current
    lowest-resolution branch.
    """
    out = []
    for i, w in enumerate(widths[: len(branches)]):
        x = branches[i]
        if x.shape[-1] != w:
            x = L.conv_bn_act(x, w, 3, name=f"{name}_branch{i + 1}")
        out.append(x)
    n = len(branches)
    out.append(L.conv_bn_act(branches[-1], widths[n], 3, strides=2, name=f"{name}_branch{n + 1}"))
    return out


def fuse(branches, name):
    """Multi-resolution fusion: every output branch sums all input branches.

    For output ``i`` and input ``j``: ``j == i`` is the identity; a lower
    resolution ``j > i`` gets a 1x1 conv to ``C_i`` channels, BN and bilinear
    upsampling to branch ``i``'s size; a higher resolution ``j < i`` gets ``i - j``
    3x3 stride-2 convs with BN (ReLU between them; the intermediate convs keep
    ``C_j`` channels, the last one outputs ``C_i``). The sum goes through ReLU.
    Layers are named ``{name}_{j}to{i}_...`` (branches numbered from 1).
    """
    out = []
    for i, target in enumerate(branches):
        width = target.shape[-1]
        terms = []
        for j, x in enumerate(branches):
            p = f"{name}_{j + 1}to{i + 1}"
            if j > i:
                x = L.conv_bn_act(x, width, 1, activation=None, name=p)
                x = L.ResizeLike(name=f"{p}_up")([x, target])
            elif j < i:
                for k in range(i - j):
                    last = k == i - j - 1
                    x = L.conv_bn_act(
                        x,
                        width if last else x.shape[-1],
                        3,
                        strides=2,
                        activation=None if last else "relu",
                        name=f"{p}_down{k + 1}",
                    )
            terms.append(x)
        y = layers.Add(name=f"{name}_{i + 1}_sum")(terms)
        out.append(layers.Activation("relu", name=f"{name}_{i + 1}_relu")(y))
    return out


def hr_module(branches, n_blocks, name):
    """An HRNet module: ``n_blocks`` basic blocks per branch, then :func:`fuse`."""
    out = []
    for i, x in enumerate(branches):
        for b in range(1, n_blocks + 1):
            x = basic_block(x, x.shape[-1], f"{name}_branch{i + 1}_block{b}")
        out.append(x)
    return fuse(out, f"{name}_fuse")


@register_model(
    "hrnet",
    divisor=32,
    min_size=32,
    test_size=(64, 64),
    test_kwargs={"width": 4, "stage_modules": (1, 1, 1), "num_blocks": 1},
)
def hrnet(
    n_classes=2,
    input_shape=(None, None, 3),
    *,
    activation="softmax",
    width=18,
    stage_modules=(1, 4, 3),
    num_blocks=4,
    name="hrnet",
):
    """HRNetV2: four parallel resolutions with repeated fusion and a concatenating head.

    Reference:
        J. Wang, K. Sun, T. Cheng, B. Jiang, C. Deng, Y. Zhao, D. Liu, Y. Mu, M. Tan,
        X. Wang, W. Liu, B. Xiao, "Deep High-Resolution Representation Learning for
        Visual Recognition", TPAMI 2020, https://arxiv.org/abs/1908.07919

    Stem: two 3x3 stride-2 conv-BN-ReLU layers with 64 filters (stride 4). Stage 1:
    four bottlenecks (64, output 256). Stages 2, 3, 4 have 2, 3, 4 parallel branches
    at strides 4, 8, 16, 32 with ``C, 2C, 4C, 8C`` channels (``C = width``) and are
    made of 1, 4 and 3 modules; a module is four basic blocks per branch followed
    by a multi-resolution fusion in which every branch receives every other
    (upsampling: 1x1 conv, BN, bilinear resize; downsampling: strided 3x3 convs).
    A transition before each stage starts a new branch with a 3x3 stride-2 conv.
    The HRNetV2 head upsamples all four branches to stride 4, concatenates them
    (``15C`` channels), applies a 1x1 conv-BN-ReLU with ``15C`` channels and a
    linear 1x1 classifier; the class scores are bilinearly resized to the input.

    Differences from the paper:
        * BN uses Keras momentum 0.9 (PyTorch 0.1) and epsilon 1e-3; no
          ImageNet pretraining; the last BN of every residual block starts with
          gamma = 0 (zero-init residual, for training from scratch).
        * Strided convs use TensorFlow "same" padding (asymmetric for even sizes).
        * ``num_blocks`` and ``stage_modules`` can be lowered, and ``width`` takes
          any positive value (the paper's are 18, 32 and 48), for small models.

    Args:
        n_classes: number of classes (1 = binary with a sigmoid output).
        input_shape: ``(height, width, channels)``; height and width may be ``None``
            and must otherwise be multiples of 32.
        activation: ``"softmax"`` (default), ``"sigmoid"`` or ``None`` for logits.
        width: ``C``, the channels of the stride-4 branch: 18 (HRNetV2-W18,
            default), 32 (W32) or 48 (W48).
        stage_modules: number of modules in stages 2, 3 and 4.
        num_blocks: bottlenecks in stage 1 and basic blocks per branch per module.
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Example:
        >>> model = hrnet(n_classes=19, input_shape=(512, 1024, 3))  # HRNetV2-W18
        >>> w32 = hrnet(n_classes=19, width=32)
    """
    C.positive_int("hrnet", "width", width, " (paper: 18, 32 or 48)")
    C.positive_int("hrnet", "num_blocks", num_blocks, " (paper: 4)")
    C.positive_ints(
        "hrnet", "stage_modules", stage_modules, 3, " (paper: (1, 4, 3))",
        what="three module counts for stages 2-4 (positive integers)",
    )
    widths = [width * 2**i for i in range(4)]

    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    x = L.conv_bn_act(inputs, 64, 3, strides=2, name=f"{name}_stem_conv1")
    x = L.conv_bn_act(x, 64, 3, strides=2, name=f"{name}_stem_conv2")
    for b in range(1, num_blocks + 1):
        x = bottleneck(x, STAGE1_FILTERS, f"{name}_stage1_block{b}")

    branches = [x]
    for stage, n_modules in zip((2, 3, 4), stage_modules):
        branches = transition(branches, widths[:stage], f"{name}_transition{stage - 1}")
        for m in range(1, n_modules + 1):
            branches = hr_module(branches, num_blocks, f"{name}_stage{stage}_module{m}")

    ups = [branches[0]] + [
        L.ResizeLike(name=f"{name}_head_up{i + 1}")([b, branches[0]])
        for i, b in enumerate(branches[1:], start=1)
    ]
    x = layers.Concatenate(name=f"{name}_head_concat")(ups)
    x = L.conv_bn_act(x, sum(widths), 1, name=f"{name}_head")
    x = layers.Conv2D(n_classes, 1, name=f"{name}_logits")(x)
    x = L.ResizeLike(name=f"{name}_upsample")([x, inputs])
    outputs = L.output_activation(x, n_classes, name, activation)
    return keras.Model(inputs, outputs, name=name)
