"""HRNetV2: high-resolution network for semantic segmentation (Wang et al., TPAMI 2020)."""

import keras
from keras import layers

from kseg.models import _checks as C
from kseg.models import hrnet_weights as W
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


def strided_conv_bn_act(x, filters, name, activation="relu", symmetric_padding=False):
    """A 3x3 stride-2 conv-BN(-activation) (:func:`kseg.models.layers.conv_bn_act`).

    ``symmetric_padding=True`` pads one pixel on every side (``{name}_pad``) and
    convolves without padding, as PyTorch's ``padding=1`` does; the default "same"
    padding of TensorFlow pads only the bottom and right of an even-sized input, so
    the output samples sit one input pixel further down and right. Both give
    ``ceil(size / 2)`` outputs and the same weights.
    """
    if symmetric_padding:
        x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        return L.conv_bn_act(x, filters, 3, strides=2, padding="valid", activation=activation, name=name)
    return L.conv_bn_act(x, filters, 3, strides=2, activation=activation, name=name)


def transition(branches, widths, name, symmetric_padding=False):
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
    out.append(strided_conv_bn_act(branches[-1], widths[n], f"{name}_branch{n + 1}",
                                   symmetric_padding=symmetric_padding))
    return out


def fuse(branches, name, symmetric_padding=False):
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
                    x = strided_conv_bn_act(
                        x,
                        width if last else x.shape[-1],
                        f"{p}_down{k + 1}",
                        activation=None if last else "relu",
                        symmetric_padding=symmetric_padding,
                    )
            terms.append(x)
        y = layers.Add(name=f"{name}_{i + 1}_sum")(terms)
        out.append(layers.Activation("relu", name=f"{name}_{i + 1}_relu")(y))
    return out


def hr_module(branches, n_blocks, name, symmetric_padding=False):
    """An HRNet module: ``n_blocks`` basic blocks per branch, then :func:`fuse`."""
    out = []
    for i, x in enumerate(branches):
        for b in range(1, n_blocks + 1):
            x = basic_block(x, x.shape[-1], f"{name}_branch{i + 1}_block{b}")
        out.append(x)
    return fuse(out, f"{name}_fuse", symmetric_padding)


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
    encoder_weights=None,
    symmetric_padding=False,
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

    The backbone corresponds layer for layer (same convs, BNs, order and shapes)
    to the official network (HRNet/HRNet-Image-Classification ``cls_hrnet.py``,
    HRNet-Semantic-Segmentation ``seg_hrnet.py``) at the default ``stage_modules``
    and ``num_blocks``, so the official ImageNet checkpoints load into it after
    conversion (``encoder_weights``, :mod:`kseg.models.hrnet_weights`).

    Differences from the paper:
        * BN uses Keras momentum 0.9 (PyTorch 0.1) and epsilon 1e-3 (PyTorch
          1e-5); the last BN of every residual block starts with gamma = 0
          (zero-init residual, for training from scratch). With
          ``encoder_weights`` the backbone BNs take the checkpoint's values and
          epsilon 1e-5; the head stays random.
        * Strided 3x3 convs use TensorFlow "same" padding by default: for the even
          sizes HRNet always sees, it pads only the bottom and right, where PyTorch
          pads one pixel on each side, so every stride-2 output sits one input pixel
          further down-right (features shift by up to half a pixel per stride-2
          step; ImageNet weights still work but the outputs are not the official
          ones). ``symmetric_padding=True`` pads like PyTorch (a ``ZeroPadding2D``
          before each stride-2 conv; same weights and sizes) and is recommended with
          ``encoder_weights``.
        * The fusion upsamples bilinearly (as the official segmentation code; its
          ImageNet classifier used nearest-neighbour upsampling there). The head's
          first 1x1 conv has no bias (the official one has a bias followed by BN).
        * ``num_blocks`` and ``stage_modules`` can be lowered, and ``width`` takes
          any positive value (the paper's are 18, 32 and 48), for small models;
          pretrained weights need the paper's structure.

    Args:
        n_classes: number of classes (1 = binary with a sigmoid output).
        input_shape: ``(height, width, channels)``; height and width may be ``None``
            and must otherwise be multiples of 32.
        activation: ``"softmax"`` (default), ``"sigmoid"`` or ``None`` for logits.
        width: ``C``, the channels of the stride-4 branch: 18 (HRNetV2-W18,
            default), 32 (W32) or 48 (W48).
        stage_modules: number of modules in stages 2, 3 and 4.
        num_blocks: bottlenecks in stage 1 and basic blocks per branch per module.
        encoder_weights: ``None`` (random), ``"imagenet"`` (the converted official
            ImageNet checkpoint of this width at
            ``$KERAS_HOME/models/kseg_hrnetv2_w{width}_imagenet.npz``, ``KERAS_HOME``
            defaulting to ``~/.keras``; made by ``kseg convert_weights hrnet
            hrnetv2_w{width}_imagenet_pretrained.pth``) or the path of such a file.
            Needs the default ``stage_modules``/``num_blocks``; every backbone
            weight is loaded and checked, the head stays random. With ``C != 3``
            input channels the RGB stem kernel is adapted
            (:func:`kseg.models.pretrained.adapt_input_kernel`). Inputs should be
            normalised like ImageNet's for the best start.
        symmetric_padding: pad stride-2 convs one pixel on every side, as PyTorch
            does (see "Differences from the paper").
        name: model name and layer-name prefix.

    Returns:
        A ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, n_classes)``.

    Raises:
        EncoderWeightsError: ``encoder_weights`` names a missing or unreadable file
            (the message gives the convert command).
        EncoderConfigError: a weights file of another width, or weights with a
            non-default ``stage_modules``/``num_blocks``.

    Example:
        >>> model = hrnet(n_classes=19, input_shape=(512, 1024, 3))  # HRNetV2-W18
        >>> w32 = hrnet(n_classes=19, width=32)
        >>> # after: kseg convert_weights hrnet hrnetv2_w48_imagenet_pretrained.pth
        >>> w48 = hrnet(19, width=48, encoder_weights="imagenet", symmetric_padding=True)  # doctest: +SKIP
    """
    C.positive_int("hrnet", "width", width, " (paper: 18, 32 or 48)")
    C.positive_int("hrnet", "num_blocks", num_blocks, " (paper: 4)")
    C.positive_ints(
        "hrnet", "stage_modules", stage_modules, 3, " (paper: (1, 4, 3))",
        what="three module counts for stages 2-4 (positive integers)",
    )
    widths = [width * 2**i for i in range(4)]

    C.flag("hrnet", "symmetric_padding", symmetric_padding)
    weights_file = W.resolve_weights(encoder_weights, width)
    if weights_file is not None:  # refuse before building what the file cannot fill
        W.check_weights_file(weights_file, width, stage_modules, num_blocks)
    pad = bool(symmetric_padding)

    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    x = strided_conv_bn_act(inputs, 64, f"{name}_stem_conv1", symmetric_padding=pad)
    x = strided_conv_bn_act(x, 64, f"{name}_stem_conv2", symmetric_padding=pad)
    for b in range(1, num_blocks + 1):
        x = bottleneck(x, STAGE1_FILTERS, f"{name}_stage1_block{b}")

    branches = [x]
    for stage, n_modules in zip((2, 3, 4), stage_modules):
        branches = transition(branches, widths[:stage], f"{name}_transition{stage - 1}", pad)
        for m in range(1, n_modules + 1):
            branches = hr_module(branches, num_blocks, f"{name}_stage{stage}_module{m}", pad)

    ups = [branches[0]] + [
        L.ResizeLike(name=f"{name}_head_up{i + 1}")([b, branches[0]])
        for i, b in enumerate(branches[1:], start=1)
    ]
    x = layers.Concatenate(name=f"{name}_head_concat")(ups)
    x = L.conv_bn_act(x, sum(widths), 1, name=f"{name}_head")
    x = layers.Conv2D(n_classes, 1, name=f"{name}_logits")(x)
    x = L.ResizeLike(name=f"{name}_upsample")([x, inputs])
    outputs = L.output_activation(x, n_classes, name, activation)
    model = keras.Model(inputs, outputs, name=name)
    if weights_file is not None:
        W.load_into(model, weights_file, name)
    return model
