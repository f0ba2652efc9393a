"""kseg.bench_peers: kseg's training step next to its own variants and PyTorch peers.

Nothing here asserts a speed. The arithmetic (medians, per-round ratios, the table, the op-time
breakdown of a profiler trace) is checked against values worked out by hand; the driver runs once,
on a tiny model, in its own subprocess. The torch parts run only where torch is installed
(``pip install kseg[bench]``; CI has no torch) and always in a subprocess: torch and TensorFlow in
one process can crash.
"""

import importlib.util
import json

import pytest

from kseg import bench_peers as P

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
needs_smp = pytest.mark.skipif(importlib.util.find_spec("segmentation_models_pytorch") is None,
                               reason="segmentation-models-pytorch is not installed")


# --------------------------------------------------------------------------------------
# medians and ratios


def test_summarize_takes_medians_and_per_round_ratios():
    per_round = {"default": [10.0, 8.0, 12.0], "mixed": [20.0, 8.0, 18.0],
                 "torch_fp32": [5.0, 4.0, None], "torch_bf16": [4.0, 2.0, 3.0]}
    rows = {r["name"]: r for r in P.summarize(per_round, "default", ["torch_fp32", "torch_bf16"])}
    # medians: 10, 18, (5, 4) -> 4.5, 3; the peer's figure is its faster setting, torch_fp32
    assert [rows[k]["images_per_s"] for k in per_round] == [10.0, 18.0, 4.5, 3.0]
    assert [k for k in rows if rows[k]["peer_best"]] == ["torch_fp32"]
    # vs default, per round: mixed 2, 1, 1.5 -> 1.5; torch_fp32 0.5, 0.5 (round 3 failed) -> 0.5;
    # torch_bf16 0.4, 0.25, 0.25 -> 0.25
    assert [rows[k]["vs_default"] for k in per_round] == [1.0, 1.5, 0.5, 0.25]
    # vs torch_fp32, rounds 1 and 2 only: default 2, 2; mixed 4, 2 -> 3; torch_bf16 0.8, 0.5 -> 0.65
    assert [rows[k]["vs_peer"] for k in per_round] == [2.0, 3.0, 1.0, pytest.approx(0.65)]


def test_different_networks_get_no_peer_ratio():
    rows = P.summarize({"default": [2.0], "torch_fp32": [4.0]}, "default", ["torch_fp32"], same_network=False)
    assert [r["vs_peer"] for r in rows] == [None, None]
    assert [r["vs_default"] for r in rows] == [1.0, 2.0]


def test_format_table():
    rows = [
        {"model": "enet", "variant": "default", "runs_as": "tensorflow float32", "images_per_s": 10.0,
         "vs_default": 1.0, "vs_peer": 1.25, "params": 371515, "forward_gflop": 0.739},
        {"model": "enet", "variant": "torch_fp32", "images_per_s": 8.0, "vs_default": 0.8, "vs_peer": 1.0,
         "peer_best": True, "params": 371515, "forward_gflop": 0.739},
        {"model": "pspnet", "variant": "torch_fp32", "images_per_s": None, "vs_default": None, "vs_peer": None,
         "different": True, "note": "error: boom"},
    ]
    lines = P.format_table(rows, epoch_images=367).splitlines()
    assert lines[0] == ("| model | variant | runs as | img/s | vs kseg default | vs peer best | "
                        "s per 367-image epoch | params | GFLOP fwd | note |")
    assert lines[1] == "|---|---|---|---:|---:|---:|---:|---:|---:|---|"
    # 367 images at 10 img/s: 36.7 s
    assert lines[2] == "| enet | default | tensorflow float32 | 10.00 | 1.00x | 1.25x | 37 | 371,515 | 0.74 |  |"
    assert lines[3] == "| enet | torch_fp32 (peer best) | - | 8.00 | 0.80x | 1.00x | 46 | 371,515 | 0.74 |  |"
    assert lines[4] == "| pspnet | torch_fp32 | - | - | - | different networks | - | - | - | error: boom |"
    assert "epoch" not in P.format_table(rows)


def test_rounds_alternate_their_order():
    jobs = [P.Job("m", n, "kseg", {}) for n in "abc"]
    seen = []
    raw = P.run_rounds(jobs, rounds=3, runner=lambda j: seen.append(j.name) or {"train_images_per_s": 1.0})
    assert "".join(seen) == "abccbaabc"
    assert {k: len(v) for k, v in raw.items()} == {("m", "a"): 3, ("m", "b"): 3, ("m", "c"): 3}


def test_side_by_side_rows_from_fake_runs():
    peer = P.PEERS["enet"]
    jobs = [P.kseg_job("enet", "enet", {}, "default", (32, 32), 2, 2, 1, 0),
            P.kseg_job("enet", "enet", {}, "jax", (32, 32), 2, 2, 1, 0),
            P.peer_job("enet", "enet", "torch_fp32", (32, 32), 2, 2, 1, 0)]
    assert jobs[1].env == {"KERAS_BACKEND": "jax"} and jobs[1].cfg["inference"] is False
    speed = {"default": 4.0, "jax": 6.0, "torch_fp32": 2.0}

    def runner(j):
        if j.kind == "torch":
            return {"train_images_per_s": speed[j.name], "params_keras_equivalent": 7, "forward_gflop": 0.5}
        return {"train_images_per_s": speed[j.name], "params": 7, "forward_gflop": 0.5}

    rows, _ = P.side_by_side([("enet", jobs, peer)], rounds=2, runner=runner)
    got = {r["variant"]: (r["images_per_s"], r["vs_default"], r["vs_peer"], r["params"]) for r in rows}
    assert got == {"default": (4.0, 1.0, 2.0, 7), "jax": (6.0, 1.5, 3.0, 7), "torch_fp32": (2.0, 0.5, 1.0, 7)}
    assert [r["runs_as"] for r in rows] == ["tensorflow ?", "jax ?", "torch float32 channels-last"]


def test_peers_are_found_by_model_and_options():
    assert P.find_peer("enet").key == "enet"
    assert P.find_peer("deeplabv3plus").key == "deeplabv3plus"  # resnet50 is the default encoder
    assert P.find_peer("deeplabv3plus", {"backbone": "mobilenetv2"}) is None
    assert P.find_peer("deeplabv3plus", {"encoder": "mobilenetv2", "separable": True}) is None
    assert P.find_peer("deeplabv3plus", {"separable": True}).key == "deeplabv3plus_separable"
    assert P.find_peer("deeplabv3plus", {"backbone": "resnet50", "separable": True}).key == "deeplabv3plus_separable"
    assert P.find_peer("unet", {"encoder": "vgg16"}).key == "unet_vgg16"
    assert P.find_peer("unet") is None  # the paper's U-Net: no SMP counterpart
    assert P.find_peer("fpn") is None  # kseg's default has the smoothing convs SMP lacks
    assert P.find_peer("fpn", {"smoothing": False}).key == "fpn"
    assert not P.PEERS["pspnet"].same_network


# --------------------------------------------------------------------------------------
# the profile: own time per op type from a profiler trace


def _xspace():
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    ms = 10**9  # picoseconds
    xs = xplane_pb2.XSpace()
    plane = xs.planes.add(name="/host:CPU")
    for i, name in enumerate(["model/conv:_MklNativeConv2D", "adam/Sub:Sub", "ExecutorState::Process",
                              "call:PartitionedCall"], start=1):
        plane.event_metadata[i].id = i
        plane.event_metadata[i].name = name
    line = plane.lines.add(name="tf_Compute")
    for md, start, end in [(3, 0, 100), (4, 10, 60), (1, 12, 30), (2, 35, 45), (1, 70, 90)]:
        line.events.add(metadata_id=md, offset_ps=start * ms, duration_ps=(end - start) * ms)
    other = plane.lines.add(name="tf_Compute2")
    other.events.add(metadata_id=1, offset_ps=0, duration_ps=5 * ms)
    return xs


def test_op_times_counts_own_time_per_type():
    t = P.op_times(_xspace().SerializeToString(), optimizer_scope="adam")
    ms = 10**9
    # PartitionedCall 10-60 holds a conv (18) and a Sub (10): own time 22; convs 18 + 20 + 5;
    # ExecutorState::Process is not an op
    assert t["by_type"] == {"PartitionedCall": {"ps": 22 * ms, "count": 1},
                            "_MklNativeConv2D": {"ps": 43 * ms, "count": 3}, "Sub": {"ps": 10 * ms, "count": 1}}
    assert t["total_ps"] == 75 * ms and t["optimizer_ps"] == 10 * ms
    assert t["by_name"] == {"model/conv:_MklNativeConv2D": 43 * ms, "call:PartitionedCall": 22 * ms,
                            "adam/Sub:Sub": 10 * ms}
    s = P.summarize_ops(t, steps=2, top=2)
    assert s["op_ms_per_step"] == 37.5
    assert s["by_type"] == [["_MklNativeConv2D", 21.5, round(43 / 75, 4), 1.5], ["PartitionedCall", 11.0,
                                                                                 round(22 / 75, 4), 0.5]]
    assert s["by_family"][0] == ["conv forward", 21.5, round(43 / 75, 4)]
    assert s["optimizer_share"] == round(10 / 75, 4)
    assert [n for n, _, _ in s["top_ops"]] == ["model/conv:_MklNativeConv2D", "call:PartitionedCall"]
    assert "| conv forward | 21.5 | 57.3% |" in P.format_profile(
        dict(s, model="m", input_height=8, input_width=8, batch_size=1, dtype_policy="float32",
             jit_compile=False, step_s=0.1, profiled_step_s=0.2))


def test_op_families():
    assert P.op_family("_MklNativeConv2DBackpropFilter") == "conv backward (filter)"
    assert P.op_family("Conv2DBackpropInput") == "conv backward (input)"
    assert P.op_family("_FusedConv2D") == "conv forward"
    assert P.op_family("FusedBatchNormGradV3") == "batch norm"
    assert P.op_family("ResizeBilinearGrad") == "resize"
    assert P.op_family("Mul") == "elementwise / other"


# --------------------------------------------------------------------------------------
# the command end to end (one tiny kseg variant in a subprocess)


def test_cli_variants_side_by_side(capsys, tmp_path):
    from conftest import run_command

    out = tmp_path / "peers.jsonl"
    code, stdout, err = run_command("benchmark", [
        "--model_name", "unet", "--model_option", "base_filters=4", "--model_option", "depth=1",
        "--input_height", "32", "--batch_size", "2", "--steps", "1", "--warmup", "1",
        "--variants", "default", "--rounds", "1", "--json_out", str(out)], capsys)
    assert code == 0, err[-2000:]
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["kind_of_row"] == "side_by_side"
    r = rows[0]
    assert (r["model"], r["variant"], r["vs_default"], r["rounds"]) == ("unet", "default", 1.0, 1)
    assert r["images_per_s"] > 0 and r["params"] > 0 and r["jit_compile"] is False
    assert "| unet | default |" in stdout


def test_cli_unknown_variant_is_one_line(capsys):
    from conftest import run_command

    code, _, err = run_command("benchmark", ["--variants", "fast"], capsys)
    err = err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--variants" in err[0] and "jax" in err[0]


# --------------------------------------------------------------------------------------
# torch (only where installed)


def _enet_counts(n_classes):
    """Trainable parameters and BatchNorm statistics of ENet (RGB), counted by hand from the
    paper's Table 1 (kernels without bias where BN follows, BN gamma/beta, one PReLU slope per
    channel in the encoder, ReLU in the decoder, a 2x2 transposed conv with bias at the end)."""
    tr = st = 0

    def bn(c):
        nonlocal tr, st
        tr, st = tr + 2 * c, st + 2 * c

    def bottleneck(cin, cout, kind="regular", down=False, prelu=True):
        nonlocal tr
        mid = cout // 4
        tr += (4 if down else 1) * cin * mid + (mid if prelu else 0)
        bn(mid)
        tr += (2 * 5 if kind == "asymmetric" else 9) * mid * mid + (mid if prelu else 0)
        bn(mid)
        tr += mid * cout + (cout if prelu else 0)
        bn(cout)

    def upsampling(cin, cout):
        nonlocal tr
        mid = cout // 4
        tr += cin * cout + cin * mid + 9 * mid * mid + mid * cout
        for c in (cout, mid, mid, cout):
            bn(c)

    tr += 9 * 3 * 13 + 16  # initial 3x3/2 conv (13 maps) and PReLU over the 16 concatenated maps
    bn(16)
    bottleneck(16, 64, down=True)
    for _ in range(4):
        bottleneck(64, 64)
    bottleneck(64, 128, down=True)
    for _ in range(2):
        for kind in ("regular", "dilated", "asymmetric", "dilated", "regular", "dilated", "asymmetric", "dilated"):
            bottleneck(128, 128, kind)
    upsampling(128, 64)
    for _ in range(2):
        bottleneck(64, 64, prelu=False)
    upsampling(64, 16)
    bottleneck(16, 16, prelu=False)
    tr += 4 * 16 * n_classes + n_classes
    return tr, st


@needs_torch
def test_torch_enet_is_kseg_enet():
    from kseg.benchmark import forward_gflop
    from kseg.models import get_model

    trainable, stats = _enet_counts(12)
    assert (trainable, stats) == (363_163, 8_352)
    r = P.run_task("peer", {"peer": "enet", "input_height": 64, "input_width": 64, "n_classes": 12,
                            "count_only": True}, timeout=300)
    assert "error" not in r, r
    assert (r["params_trainable"], r["params_bn_statistics"]) == (trainable, stats)
    kseg = get_model("enet", n_classes=12, input_height=64, input_width=64)
    assert kseg.count_params() == r["params_keras_equivalent"] == 371_515
    assert r["forward_gflop"] == round(forward_gflop(kseg), 3)  # two independent MAC counters agree


@needs_torch
def test_torch_training_step_runs():
    r = P.run_task("peer", {"peer": "enet", "setting": "torch_bf16", "input_height": 32, "input_width": 32,
                            "batch_size": 2, "n_classes": 3, "steps": 1, "warmup": 0}, timeout=300)
    assert "error" not in r, r
    assert r["train_images_per_s"] == pytest.approx(2 / r["train_step_s"], rel=0.01)
    assert r["precision"] == "bfloat16" and r["channels_last"] is True


@needs_smp
def test_smp_peers_are_kseg_networks():
    from kseg.models import get_model

    # keras.applications' ResNet-50 has a bias on each of its 53 convolutions, torchvision's none:
    # 64 + 3 * (64 + 64 + 256) + 256 + 4 * (128 + 128 + 512) + 512 + 6 * (256 + 256 + 1024) + 1024
    # + 3 * (512 + 512 + 2048) + 2048 output channels
    resnet_biases = 64 + 3 * 384 + 256 + 4 * 768 + 512 + 6 * 1536 + 1024 + 3 * 3072 + 2048
    assert resnet_biases == 26_560
    for key, extra in (("unet_vgg16", 0), ("deeplabv3plus", resnet_biases), ("deeplabv3plus_separable", resnet_biases)):
        peer = P.PEERS[key]
        r = P.run_task("peer", {"peer": key, "input_height": 64, "input_width": 64, "n_classes": 3,
                                "count_only": True}, timeout=300)
        assert "error" not in r, r
        kseg = get_model(peer.model, n_classes=3, input_height=64, input_width=64, **peer.kwargs)
        assert kseg.count_params() == r["params_keras_equivalent"] + extra, key
