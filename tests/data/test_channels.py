"""Any number of input channels in the data path: the one decoder (kseg.data.io) reads grey, RGB,
RGBA and multi-band images, 8- and 16-bit PNG and TIFF, to exactly the arrays that were written;
a channel count the model does not take is one line naming the file and the fix, from the scan
and the doctor alike; the normaliser is (x - mean) / std by hand, or image_init on the pixel
type's range; dataset.json and the flags carry input_channels / mean / std.

The references are the numpy arrays this file wrote and numbers computed here by hand.
Runtime: a few seconds (tiny files; one small tf.data pipeline).
"""

import io
import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from kseg.config import ConfigError, TrainConfig
from kseg.data.io import decode_image, display_image, read_image, to_channels
from kseg.data.preprocess import network_input, normalize
from kseg.errors import DataError

tifffile = pytest.importorskip("tifffile")

H, W = 6, 10  # not square: a transposed array would show


def _rng(seed=0):
    return np.random.default_rng(seed)


def _bands(seed=0, c=4):
    return _rng(seed).integers(0, 65536, (H, W, c)).astype(np.uint16)


def _tif(path, arr, **kw):
    kw.setdefault("photometric", "minisblack")
    tifffile.imwrite(path, arr, **kw)
    return str(path)


def _png(path, arr, mode=None):
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(path)
    return str(path)


# ------------------------------------------------------------------------------ decoding
def test_multi_band_16_bit_tiffs_decode_to_the_written_bands(tmp_path):
    x = _bands()
    files = {
        "contig": _tif(tmp_path / "contig.tif", x, planarconfig="contig"),
        "planar": _tif(tmp_path / "planar.tif", np.moveaxis(x, 2, 0), planarconfig="separate"),
        "deflate": _tif(tmp_path / "deflate.tif", x, planarconfig="contig", compression="zlib"),
        "bigendian": _tif(tmp_path / "big.tif", x, planarconfig="contig", byteorder=">"),
    }
    pages = tmp_path / "pages.tif"  # one grey page per band, as some tools write bands
    with tifffile.TiffWriter(pages) as w:
        for i in range(4):
            w.write(x[:, :, i], photometric="minisblack")
    files["pages"] = str(pages)
    for name, path in files.items():
        d = decode_image(path)
        assert d.pixels.dtype == np.uint16 and not d.alpha, name
        np.testing.assert_array_equal(d.pixels, x, err_msg=name)
        np.testing.assert_array_equal(read_image(path, 4), x, err_msg=name)
    seven = _tif(tmp_path / "seven.tif", _bands(1, 7)[..., :7].astype(np.uint8), planarconfig="contig")
    np.testing.assert_array_equal(read_image(seven, 7), _bands(1, 7).astype(np.uint8))


def test_grey_rgb_and_rgba_png_and_tiff_decode_exactly(tmp_path):
    rng = _rng(2)
    grey8 = rng.integers(0, 256, (H, W)).astype(np.uint8)
    grey16 = rng.integers(0, 65536, (H, W)).astype(np.uint16)
    rgba = rng.integers(0, 256, (H, W, 4)).astype(np.uint8)
    rgb16 = rng.integers(0, 65536, (H, W, 3)).astype(np.uint16)
    cases = [  # (path, written array (H, W, C), alpha)
        (_png(tmp_path / "g8.png", grey8), grey8[..., None], False),
        (_png(tmp_path / "g16.png", grey16), grey16[..., None], False),
        (_tif(tmp_path / "g16.tif", grey16), grey16[..., None], False),
        (_png(tmp_path / "rgba.png", rgba, "RGBA"), rgba, True),
        (_tif(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"]), rgba, True),
        (_tif(tmp_path / "rgb16.tif", rgb16, photometric="rgb"), rgb16, False),
    ]
    ok, buf = cv2.imencode(".png", rgb16[..., ::-1])  # OpenCV writes BGR: a 16-bit colour PNG
    (tmp_path / "rgb16.png").write_bytes(buf.tobytes())
    cases.append((str(tmp_path / "rgb16.png"), rgb16, False))
    for path, want, alpha in cases:
        d = decode_image(path)
        assert d.pixels.dtype == want.dtype and d.alpha == alpha, path
        np.testing.assert_array_equal(d.pixels, want, err_msg=path)
        np.testing.assert_array_equal(read_image(path, want.shape[2]), want, err_msg=path)

    # what a 3-channel model gets: grey repeated (16-bit as v // 257, kseg's RGB picture), alpha dropped
    np.testing.assert_array_equal(read_image(cases[0][0]), np.dstack([grey8] * 3))
    np.testing.assert_array_equal(read_image(cases[1][0]), np.dstack([(grey16 // 257).astype(np.uint8)] * 3))
    np.testing.assert_array_equal(read_image(cases[3][0]), rgba[..., :3])
    np.testing.assert_array_equal(read_image(cases[4][0], 3), rgba[..., :3])
    # and a 1-channel model: grey + alpha loses its alpha
    la = np.dstack([grey8, np.full_like(grey8, 9)])
    np.testing.assert_array_equal(read_image(_png(tmp_path / "la.png", la, "LA"), 1), grey8[..., None])


def test_float_and_signed_tiffs_are_refused_naming_the_file(tmp_path):
    for name, arr, words in (("f.tif", np.zeros((H, W, 4), np.float32), "floating-point"),
                             ("i.tif", np.zeros((H, W, 4), np.int16), "int16")):
        path = _tif(tmp_path / name, arr, planarconfig="contig")
        with pytest.raises(DataError) as e:
            read_image(path, 4)
        assert path in str(e.value) and words in str(e.value) and "save it as 8- or 16-bit" in str(e.value)


def test_a_channel_count_the_model_does_not_take_is_one_line_naming_the_file_and_the_fix(tmp_path):
    four = _tif(tmp_path / "four.tif", _bands(), planarconfig="contig")
    grey = _png(tmp_path / "grey.png", np.zeros((H, W), np.uint8))
    rgb = _png(tmp_path / "rgb.png", np.zeros((H, W, 3), np.uint8))
    for path, channels, has, fix in ((four, 3, "4 bands (multi-band)", "--input_channels 4"),
                                     (grey, 4, "1 channel (grey)", "--input_channels 1"),
                                     (rgb, 1, "3 channels (RGB)", "--input_channels 3")):
        with pytest.raises(DataError) as e:
            read_image(path, channels)
        msg = str(e.value)
        assert "\n" not in msg and path in msg and has in msg and fix in msg, msg
        assert f"the model takes {channels}" in msg and "dataset.json" in msg


def _dataset(root, n=3, seed=0, meta=None):
    """``root/{train,val}_{image,label}`` of 4-band uint16 TIFFs; returns the training arrays."""
    arrays = []
    for split in ("train", "val"):
        os.makedirs(os.path.join(root, f"{split}_image"))
        os.makedirs(os.path.join(root, f"{split}_label"))
        for i in range(n):
            x = _bands(seed + i + (10 if split == "val" else 0))
            _tif(os.path.join(root, f"{split}_image", f"{i}.tif"), x, planarconfig="contig")
            _png(os.path.join(root, f"{split}_label", f"{i}.png"), (x[..., 3] > 30000).astype(np.uint8))
            if split == "train":
                arrays.append(x)
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump({"classes": ["a", "b"], **(meta or {})}, f)
    return arrays


def test_the_scan_and_the_doctor_refuse_the_same_image_with_the_same_message(tmp_path):
    from kseg.data.dataset import check_training_data, load_dataset_info, scan_pairs
    from kseg.data.doctor import check_dataset

    root = str(tmp_path / "ds")
    _dataset(root)
    info = load_dataset_info(root)
    pairs = info.pairs("train")
    with pytest.raises(DataError) as e:
        scan_pairs(pairs, 2)  # a model of 3 channels (the default)
    msg = str(e.value)
    assert pairs[0][0] in msg and "--input_channels 4" in msg
    report = check_dataset(root)
    issue = next(i for i in report.errors if i.code == "channels")
    assert issue.message.startswith(msg) and len(issue.files) == 6  # 3 train + 3 val
    with pytest.raises(DataError, match="4 bands"):
        check_training_data(root, info, 2, 255, channels=3)
    assert check_training_data(root, info, 2, 255, channels=4).train_scan.class_pixels.sum() == 3 * H * W


def test_the_doctor_prints_the_per_channel_mean_and_std_of_the_training_images(tmp_path):
    from kseg.data.doctor import check_dataset

    root = str(tmp_path / "ds")
    train = np.stack(_dataset(root, meta={"input_channels": 4})).astype(np.float64)
    report = check_dataset(root)
    assert report.ok and report.input_channels == 4 and report.input_channels_source == "from dataset.json"
    np.testing.assert_allclose(report.channel_mean, train.mean(axis=(0, 1, 2)), atol=1e-3)
    np.testing.assert_allclose(report.channel_std, train.std(axis=(0, 1, 2)), atol=1e-3)
    note = next(i for i in report.issues if i.code == "channel_stats")
    assert '"mean": [' in note.message and "dataset.json" in note.message
    assert report.image_types["train"] == {"4 channels, 16-bit": 3}
    assert "input channels: 4 (from dataset.json)" in report.format_text()


def test_channel_stats_merge_equals_the_statistics_of_all_pixels():
    from kseg.data.stats import ChannelStats

    a, b = _bands(0).astype(np.float64), _bands(1)[:3].astype(np.float64)  # two sizes
    one, other, both = ChannelStats(), ChannelStats(), ChannelStats()
    one.add(a)
    other.add(b)
    both.merge(one)
    both.merge(other)
    flat = np.concatenate([a.reshape(-1, 4), b.reshape(-1, 4)])
    np.testing.assert_allclose(both.mean(), flat.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(both.std(), flat.std(axis=0), rtol=1e-9)
    assert both.images == 2 and not both.add(np.zeros((2, 2, 3)))  # another channel count is not mixed in


# ------------------------------------------------------------------------------ normalisation
def test_mean_std_normalisation_is_x_minus_mean_over_std_by_hand():
    x = _bands()
    mean, std = [1000.0, 2000.5, 300.0, 40000.0], [10.0, 20.0, 0.5, 1234.5]
    got = normalize(x, "divide", mean, std)
    want = (x.astype(np.float64) - np.array(mean)) / np.array(std)
    assert got.dtype == np.float32 and got.shape == (H, W, 4)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # network_input: normalised first, then resized; at the image's size nothing moves
    np.testing.assert_allclose(network_input(x, (H, W), "divide", 1, mean, std), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(DataError, match="one mean and one std per input channel"):
        normalize(x, "divide", mean[:3], std[:3])


def test_image_init_scales_by_the_pixel_types_range():
    x16 = np.array([[[0, 65535, 32768]]], np.uint16)
    np.testing.assert_allclose(normalize(x16, "divide"), [[[0.0, 1.0, 32768 / 65535]]], rtol=1e-6)
    np.testing.assert_allclose(normalize(x16, "sub_and_divide"), [[[-1.0, 1.0, 32768 / 32767.5 - 1]]], atol=1e-6)
    np.testing.assert_allclose(normalize(x16, "sub_mean"),
                               [[[0 - 123.675, 255 - 116.28, 32768 * 255 / 65535 - 103.53]]], rtol=1e-5)
    x8 = np.array([[[0, 255, 51]]], np.uint8)
    np.testing.assert_allclose(normalize(x8, "divide"), [[[0.0, 1.0, 0.2]]], rtol=1e-6)
    with pytest.raises(ConfigError, match="sub_mean"):
        normalize(np.zeros((2, 2, 4), np.uint8), "sub_mean")


def test_the_training_pipeline_feeds_the_hand_normalised_bands(tmp_path):
    from kseg.data.pipeline import make_dataset

    root = str(tmp_path / "ds")
    arrays = _dataset(root, n=2)
    pairs = [(os.path.join(root, "train_image", f"{i}.tif"), os.path.join(root, "train_label", f"{i}.png"))
             for i in range(2)]
    mean, std = [30000.0, 31000.0, 32000.0, 33000.0], [18000.0, 19000.0, 20000.0, 21000.0]
    # crops=1 at the native size: the whole image, no resampling
    ds = make_dataset(pairs, (H, W), 1, training=False, crops=1, channels=4, mean=mean, std=std)
    got = [x.numpy()[0] for x, _ in ds]
    for x, want in zip(got, arrays):
        assert x.shape == (H, W, 4)
        np.testing.assert_allclose(x, (want - np.array(mean)) / np.array(std), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="one mean and one std per input channel"):
        make_dataset(pairs, (H, W), 1, channels=3, mean=mean, std=std)


def test_display_image_is_8_bit_rgb():
    x = np.array([[[100, 7, 9, 1], [300, 8, 10, 2]]], np.uint16)  # stretched from 7 to 300 over the first 3
    want = np.round((np.array([[[100, 7, 9], [300, 8, 10]]]) - 7) * 255 / 293).astype(np.uint8)
    np.testing.assert_array_equal(display_image(x), want)
    grey = np.array([[[5], [250]]], np.uint8)
    np.testing.assert_array_equal(display_image(grey), np.repeat(grey, 3, axis=2))
    rgba = _rng().integers(0, 256, (2, 3, 4)).astype(np.uint8)
    np.testing.assert_array_equal(display_image(rgba), rgba[..., :3])
    assert to_channels(decode_image(_encoded_rgba(rgba)), 3).shape == (2, 3, 3)


def _encoded_rgba(rgba):
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------ dataset.json and flags
def test_dataset_json_fields_are_type_checked(tmp_path):
    from kseg.data.dataset import load_dataset_info

    for meta, words in (({"input_channels": 0}, '"input_channels" must be a positive integer'),
                        ({"mean": "100"}, '"mean" must be a list of numbers'),
                        ({"std": [1, 0]}, '"std" must be a list of positive numbers'),
                        ({"mean": [1, 2], "std": [1]}, "--mean has 2 values but --std 1")):
        root = tmp_path / f"ds{len(list(tmp_path.iterdir()))}"
        root.mkdir()
        (root / "dataset.json").write_text(json.dumps({"classes": ["a", "b"], **meta}))
        with pytest.raises(DataError) as e:
            load_dataset_info(str(root))
        assert words in str(e.value) and str(root / "dataset.json") in str(e.value), str(e.value)


def test_the_dataset_suggests_channels_and_normalisation_and_the_flags_win(tmp_path):
    from kseg.data.dataset import resolve_dataset

    root = tmp_path / "data" / "ds"
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"classes": ["a", "b"], "input_channels": 2,
                                                   "mean": [10, 20], "std": [1, 2]}))
    base = TrainConfig(data_dir=str(tmp_path / "data"), dataset_name="ds")
    cfg = resolve_dataset(base, set())[0]
    assert (cfg.input_channels, cfg.mean, cfg.std) == (2, [10.0, 20.0], [1.0, 2.0])
    # another channel count given: the dataset's per-channel values no longer apply
    cfg = resolve_dataset(base.replace(input_channels=3), {"input_channels"})[0]
    assert (cfg.input_channels, cfg.mean, cfg.std) == (3, None, None)
    # a given mean/std replaces the dataset's pair
    cfg = resolve_dataset(base.replace(mean=[0, 0], std=[5, 5]), {"mean", "std"})[0]
    assert (cfg.input_channels, cfg.mean, cfg.std) == (2, [0.0, 0.0], [5.0, 5.0])
    # no input_channels anywhere: 3, and a 2-value mean in dataset.json is a clear error
    (root / "dataset.json").write_text(json.dumps({"classes": ["a", "b"], "mean": [10, 20], "std": [1, 2]}))
    with pytest.raises(ConfigError, match="gives no input_channels"):
        resolve_dataset(base, set())


def test_the_train_flags_carry_channels_mean_and_std():
    from kseg.cli.train import build_parser, resolve_options

    args = build_parser().parse_args(["--input_channels", "4", "--mean", "1,2,3,4.5", "--std", "5,6,7,8"])
    cfg, explicit = resolve_options(args)
    assert (cfg.input_channels, cfg.mean, cfg.std) == (4, [1.0, 2.0, 3.0, 4.5], [5.0, 6.0, 7.0, 8.0])
    assert {"input_channels", "mean", "std"} <= explicit
    with pytest.raises(ConfigError, match="--mean and --std go together"):
        TrainConfig(mean=[1.0])
    with pytest.raises(ConfigError, match="sub_mean"):
        TrainConfig(input_channels=4, image_init="sub_mean")


def test_the_demo_decodes_uploads_with_the_training_reader():
    pytest.importorskip("flask")
    from kseg.serve.app import UploadError, decode_image as decode_upload

    x = _bands()
    buf = io.BytesIO()
    tifffile.imwrite(buf, x, photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(decode_upload(buf.getvalue(), channels=4), x)
    with pytest.raises(UploadError) as e:
        decode_upload(buf.getvalue(), channels=3, name="the upload 'x.tif'")
    assert e.value.status == 400 and "'x.tif' has 4 bands" in str(e.value) and "--input_channels 4" in str(e.value)
