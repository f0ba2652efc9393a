"""The benchmark (kseg/benchmark.py, scripts/benchmark.py) and the training-speed switches.

Nothing here asserts a duration: speed is what scripts/benchmark.py reports.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kseg import benchmark as B

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------
# the baseline is the same architecture as kseg's unet (hand-counted)


def _unet_counts(base, depth, n_classes, size, conv_bias):
    """Parameters and MACs of a U-Net counted by hand from its definition."""
    params = macs = 0
    cin, widths = 3, []
    for level in range(depth + 1):  # encoder levels, then the bottleneck
        f, res = base * 2**level, size // 2**level
        for c in (cin, f):  # two 3x3 convs
            params += 9 * c * f + (f if conv_bias else 0) + 4 * f  # kernel, bias, BN (gamma beta mean var)
            macs += res * res * 9 * c * f
        widths.append(f)
        cin = f
    for level in reversed(range(depth)):
        f, res = base * 2**level, size // 2**level
        params += 4 * cin * f + f  # 2x2 transposed conv (bias in both implementations)
        macs += (res // 2) ** 2 * 4 * cin * f
        for c in (2 * f, f):  # concat doubles the channels
            params += 9 * c * f + (f if conv_bias else 0) + 4 * f
            macs += res * res * 9 * c * f
        cin = f
    params += base * n_classes + n_classes  # 1x1 head
    macs += size * size * base * n_classes
    return params, macs


def test_plain_unet_is_kseg_unet_with_conv_biases():
    from kseg.models import get_model

    base, depth, n, size = 4, 2, 3, 32
    plain = B.plain_unet(n, (size, size, 3), base_filters=base, depth=depth)
    kseg = get_model("unet", n_classes=n, input_height=size, input_width=size, base_filters=base, depth=depth)
    p_bias, macs = _unet_counts(base, depth, n, size, conv_bias=True)
    p_nobias, macs2 = _unet_counts(base, depth, n, size, conv_bias=False)
    assert macs == macs2
    assert plain.count_params() == p_bias
    assert kseg.count_params() == p_nobias
    assert B.redundant_bias_params(plain) == p_bias - p_nobias
    assert B.redundant_bias_params(kseg) == 0
    assert B.forward_gflop(plain) == pytest.approx(2 * macs / 1e9)
    assert B.forward_gflop(kseg) == pytest.approx(2 * macs / 1e9)


def test_paper_unet_cost_at_224():
    """The issue's figures: 31.0M parameters, 73.8 GFLOP per forward pass at 224x224."""
    p, macs = _unet_counts(64, 4, 2, 224, conv_bias=False)
    assert round(p / 1e6, 1) == 31.0
    assert round(2 * macs / 1e9, 1) == 73.8


# --------------------------------------------------------------------------------------
# measuring helpers


def test_time_training_returns_one_time_per_timed_execution():
    import keras

    from kseg.optim import compile_model

    keras.utils.set_random_seed(0)
    m = B.plain_unet(2, (32, 32, 3), base_filters=4, depth=1)
    compile_model(m, n_classes=2, steps_per_execution=2, metrics=False)
    batch = B._random_batch(2, 32, 32, 2)
    t = B.time_training(m, batch, steps=3, warmup=1, steps_per_execution=2)
    # warm-up: ceil(1/2) = 1 execution dropped; timed: ceil(3/2) = 2 executions
    assert len(t) == 2 and all(v > 0 for v in t)
    lat = B.time_inference(m, 32, 32, batch=1, runs=3, warmup=1)
    assert len(lat) == 3


def test_interleaved_comparison_reports_every_variant():
    r = B.interleaved_comparison({"input_height": 32, "input_width": 32, "batch_size": 2,
                                  "model_kwargs": {"base_filters": 4, "depth": 2}, "rounds": 2, "warmup": 1})
    v = r["variants"]
    assert set(v) == {"plain_unet float32", "unet float32"} and r["rounds"] == 2
    assert v["plain_unet float32"]["speedup_vs_plain"] == 1.0
    for x in v.values():
        assert x["train_images_per_s"] == pytest.approx(2 / x["train_step_s"], rel=0.01)


def test_memory_readings():
    peak, cur = B.peak_rss_mb(), B.current_rss_mb()
    assert peak > 0 and cur > 0 and peak >= cur - 1.0


def _write_dubai_like(root):
    """A 'Tile 1/images' + 'Tile 1/masks' folder with a colour mask drawn by hand."""
    img_dir, mask_dir = os.path.join(root, "Tile 1", "images"), os.path.join(root, "Tile 1", "masks")
    os.makedirs(img_dir)
    os.makedirs(mask_dir)
    Image.fromarray(np.full((4, 6, 3), 128, np.uint8)).save(os.path.join(img_dir, "part_001.jpg"))
    mask = np.zeros((4, 6, 3), np.uint8)
    mask[:, :3] = (0x3C, 0x10, 0x98)  # Building -> 0
    mask[:, 3:] = (0xE2, 0xA9, 0x29)  # Water -> 4
    mask[0, 0] = (0, 0, 0)  # void -> ignore 255
    mask[3, 5] = (1, 2, 3)  # not in the table -> ignore 255
    Image.fromarray(mask).save(os.path.join(mask_dir, "part_001.png"))


def test_dataset_pairs_converts_colour_masks(tmp_path):
    from kseg.data.io import read_label

    src = tmp_path / "dubai"
    _write_dubai_like(str(src))
    pairs = B.dataset_pairs(str(src), workdir=str(tmp_path / "labels"))
    assert len(pairs) == 1
    assert pairs[0][0].endswith(os.path.join("Tile 1", "images", "part_001.jpg"))
    lab = read_label(pairs[0][1])
    want = np.zeros((4, 6), np.int64)
    want[:, 3:] = 4
    want[0, 0] = want[3, 5] = 255
    np.testing.assert_array_equal(lab, want)
    assert B.dataset_n_classes(str(src)) == 6


def test_pipeline_speed_counts_what_it_timed(tiny_dataset):
    pairs = B.dataset_pairs(tiny_dataset)
    assert len(pairs) == 16
    r = B.pipeline_speed(pairs, (32, 32), batch_size=4, epochs=2)
    assert r["images"] == 2 * 16  # two passes over 16 images, 4 per batch
    assert r["images_per_s"] == pytest.approx(r["images"] / r["seconds"], rel=0.02)
    assert r["decoder"] == "kseg.data.io (Pillow)"  # the one reader of training, scan and doctor


def test_rss_over_epochs_reports_every_epoch(tiny_dataset):
    pairs = B.dataset_pairs(tiny_dataset)[:8]
    r = B.rss_over_epochs({"model": "unet", "impl": "kseg", "pairs": [list(p) for p in pairs],
                           "input_height": 32, "input_width": 32, "batch_size": 4, "n_classes": 4,
                           "model_kwargs": {"base_filters": 4}, "epochs": 2})
    assert len(r["rss_mb_per_epoch"]) == 2 and min(r["rss_mb_per_epoch"]) > 0
    assert r["peak_rss_mb"] >= max(r["rss_mb_per_epoch"]) - 1.0


# --------------------------------------------------------------------------------------
# the switches of scripts/train.py


def test_jit_compile_resolution(monkeypatch):
    from kseg import hardware as T
    from kseg.errors import KsegError

    assert T.resolve_jit_compile("on") is True and T.resolve_jit_compile("off") is False
    assert T.resolve_jit_compile(True) is True
    monkeypatch.setattr(T, "gpu_available", lambda: False)
    assert T.resolve_jit_compile("auto") is False  # CPU: oneDNN graph kernels (measured faster)
    monkeypatch.setattr(T, "gpu_available", lambda: True)
    assert T.resolve_jit_compile("auto") is True  # GPU: XLA
    from kseg.distribute import Distribution

    assert T.resolve_jit_compile("auto", Distribution("mirrored", None, 2)) is False
    with pytest.raises(KsegError, match="'fast'"):
        T.resolve_jit_compile("fast")


def test_precision_policy(monkeypatch):
    from kseg import hardware as T

    assert T.precision_policy(False) == "float32"
    monkeypatch.setattr(T, "gpu_available", lambda: True)
    assert T.precision_policy(True) == "mixed_float16"
    monkeypatch.setattr(T, "gpu_available", lambda: False)
    monkeypatch.setattr(T, "cpu_supports_bfloat16", lambda: True)
    assert T.precision_policy(True) == "mixed_bfloat16"
    monkeypatch.setattr(T, "cpu_supports_bfloat16", lambda: False)
    assert T.precision_policy(True) == "float32"  # emulated bfloat16 would be slower


def test_precision_policy_auto_is_on_only_with_16_bit_matrix_units(monkeypatch):
    from kseg import hardware as T

    monkeypatch.setattr(T, "gpu_available", lambda: True)
    monkeypatch.setattr(T, "gpu_has_tensor_cores", lambda: True)
    assert T.precision_policy(None) == "mixed_float16"
    monkeypatch.setattr(T, "gpu_has_tensor_cores", lambda: False)
    assert T.precision_policy(None) == "float32"  # e.g. a Pascal GPU: no tensor cores
    monkeypatch.setattr(T, "gpu_available", lambda: False)
    monkeypatch.setattr(T, "_cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    assert T.precision_policy(None) == "mixed_bfloat16"
    monkeypatch.setattr(T, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})  # bf16 dot products, no AMX
    monkeypatch.setattr(T, "cpu_bfloat16_speedup", lambda: 1.1)  # measured: not worth it
    assert T.precision_policy(None) == "float32"
    assert T.precision_policy(True) == "mixed_bfloat16"  # still available on request
    monkeypatch.setattr(T, "cpu_bfloat16_speedup", lambda: 2.5)  # measured: clearly faster
    assert T.precision_policy(None) == "mixed_bfloat16"
    monkeypatch.setattr(T, "_cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(T, "cpu_bfloat16_speedup", lambda: 9.9)  # never asked without the instructions
    assert T.precision_policy(None) == "float32" and T.precision_policy(True) == "float32"


def test_bfloat16_speedup_is_measured_once_per_process():
    from kseg import hardware as T

    first = T.cpu_bfloat16_speedup(repeats=3)
    assert first > 0 and T.cpu_bfloat16_speedup() == first


def test_mixed_bfloat16_training_keeps_loss_and_output_float32():
    import keras

    from kseg.models import get_model
    from kseg.optim import compile_model

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        m = get_model("unet", n_classes=3, input_height=32, input_width=32, base_filters=4)
        compile_model(m, n_classes=3)
        x, y = B._random_batch(2, 32, 32, 3)
        logs = m.train_on_batch(x, y, return_dict=True)
        assert m.layers[1].compute_dtype == "bfloat16"
        assert m.output.dtype == "float32"
        assert np.isfinite(logs["loss"])
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --------------------------------------------------------------------------------------
# scripts/benchmark.py end to end


def test_benchmark_script_end_to_end(tmp_path, tiny_dataset):
    out = tmp_path / "bench.jsonl"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "benchmark.py"), "--model_name", "unet",
         "--model_option", "base_filters=4", "--input_height", "32", "--batch_size", "2", "--steps", "2",
         "--warmup", "1", "--infer_runs", "2", "--conv_seconds", "0.02", "--conv_repeats", "1",
         "--pipeline_data", tiny_dataset, "--pipeline_images", "8", "--pipeline_size", "32",
         "--pipeline_epochs", "1", "--pipeline_batch_size", "4", "--interleave_rounds", "0",
         "--json_out", str(out)],
        capture_output=True, text=True, env=env, timeout=600, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert [json.loads(ln) for ln in out.read_text().splitlines()] == lines
    models = [ln for ln in lines if "impl" in ln]
    assert [(m["model"], m["impl"]) for m in models] == [("plain_unet", "plain"), ("unet", "kseg")]
    for m in models:
        missing = [k for k in B.JSON_KEYS if k not in m]
        assert not missing, missing
        assert m["train_images_per_s"] == pytest.approx(2 / m["train_step_s"], rel=0.01)
        assert m["fraction_of_conv_peak"] == pytest.approx(m["train_gflop_per_s"] / m["conv_peak_gflop_per_s"],
                                                           abs=0.002)
        assert m["pipeline_images_per_s"] > 0 and m["peak_rss_mb"] > 0
        # the baseline in Keras' default float32; kseg as scripts/train.py trains by default
        from kseg.hardware import precision_policy

        assert m["dtype_policy"] == ("float32" if m["impl"] == "plain" else precision_policy(None))
        assert m["jit_compile"] is False
    plain, kseg = models
    p_bias, macs = _unet_counts(4, 4, 2, 32, conv_bias=True)
    assert plain["params"] == p_bias and kseg["params"] == p_bias - plain["redundant_bias_params"]
    assert plain["forward_gflop"] == kseg["forward_gflop"] == round(2 * macs / 1e9, 3)
    cmp = [ln for ln in lines if ln.get("comparison")]
    assert len(cmp) == 1
    assert cmp[0]["speedup_train"] == pytest.approx(kseg["train_images_per_s"] / plain["train_images_per_s"],
                                                    rel=0.01)
    assert any("pipeline_over_fastest" in ln for ln in lines)
    assert "| plain_unet |" in r.stdout and "| unet |" in r.stdout


def test_benchmark_unknown_model_is_a_one_line_error(capsys):
    from conftest import run_command

    code, _, err = run_command("benchmark", ["--model_name", "unet_v9"], capsys)
    err = err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unet_v9" in err[0]
