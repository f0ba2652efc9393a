"""One decoder: the training scan, the dataset doctor and the tf.data pipeline decode every
file with kseg.data.io, so they accept and refuse the same files, with the same message."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from conftest import run_command
from kseg.data.dataset import scan_pairs
from kseg.data.doctor import check_dataset
from kseg.data.io import IMAGE_EXTENSIONS, LABEL_EXTENSIONS, pair_by_stem, read_image, read_label
from kseg.errors import DataError

H, W = 10, 14  # not square: a transposed array would show


def _rgb(seed=0, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth_rgb(h=48, w=64):
    """A photo-like image: its JPEG has a scan long enough to cut in the middle."""
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([(x * 4) % 256, (y * 5) % 256, (x + y) * 2 % 256]).astype(np.uint8)


def _encoded(arr, fmt, **kw):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _label(h=H, w=W):
    lab = np.zeros((h, w), np.uint8)
    lab[: h // 2] = 1
    lab[:, : w // 3] = 2
    return lab


def _dataset(root, bad_kind, bad_name, data):
    """``root/train_{image,label}``: a good pair ``a`` and the pair ``x`` whose ``bad_kind`` file is ``data``."""
    ti, tl = os.path.join(root, "train_image"), os.path.join(root, "train_label")
    os.makedirs(ti)
    os.makedirs(tl)
    img, lab = _smooth_rgb(), _label(48, 64)
    Image.fromarray(img).save(os.path.join(ti, "a.png"))
    Image.fromarray(lab).save(os.path.join(tl, "a.png"))
    with open(os.path.join(ti if bad_kind == "image" else tl, bad_name), "wb") as f:
        f.write(data)
    if bad_kind == "image":
        Image.fromarray(lab).save(os.path.join(tl, "x.png"))
    else:
        Image.fromarray(img).save(os.path.join(ti, "x.png"))
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("background\nroad\nsky\n")
    return pair_by_stem(ti, tl)


def _bad_files():
    jpeg = _encoded(_rgb(3, 48, 64), "JPEG", quality=90)  # cut in half: in the middle of the scan
    png_img = _encoded(_smooth_rgb(), "PNG")
    png_lab = _encoded(_label(48, 64), "PNG")
    noise = np.random.default_rng(1).integers(0, 256, 600, dtype=np.uint8).tobytes()
    float_img = _encoded(np.zeros((48, 64), np.float32), "TIFF")
    return [
        # (kind, file name, bytes, words of the message)
        ("image", "x.jpg", jpeg[: len(jpeg) // 2], ["truncated"]),
        ("image", "x.png", b"", ["empty (0 bytes)"]),
        ("image", "x.png", noise, ["not a readable"]),
        ("image", "x.png", png_img[: len(png_img) // 2], ["truncated"]),
        ("image", "x.tif", float_img, ["floating-point"]),
        ("label", "x.png", b"", ["empty (0 bytes)"]),
        ("label", "x.png", noise, ["not a readable"]),
        ("label", "x.png", png_lab[: len(png_lab) // 2], ["truncated"]),
        ("label", "x.png", _encoded(_smooth_rgb(), "JPEG"), ["lossless"]),
        ("label", "x.tif", float_img, ["floating-point"]),
    ]


BAD = _bad_files()


@pytest.mark.parametrize("kind, name, data, words", BAD, ids=[f"{b[0]}-{b[1]}-{'-'.join(b[3])}" for b in BAD])
def test_scan_and_doctor_refuse_an_undecodable_file_with_one_message(tmp_path, kind, name, data, words):
    root = str(tmp_path / "ds")
    pairs = _dataset(root, kind, name, data)
    bad = os.path.join(root, f"train_{kind}", name)
    with pytest.raises(DataError) as e:
        scan_pairs(pairs, 3)
    msg = str(e.value)
    assert bad in msg and "\n" not in msg, msg
    assert all(w in msg for w in words), msg
    assert "replace" in msg or "save it" in msg, msg  # says the fix
    # the doctor reports the same file bad with the same message
    report = check_dataset(root)
    issue = next(i for i in report.errors if i.code == f"unreadable_{kind}")
    assert issue.message == msg and issue.files == [bad]


def test_a_multi_band_tiff_is_refused_with_a_clear_message(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((48, 64, 5), np.uint8), photometric="minisblack", planarconfig="contig")
    root = str(tmp_path / "ds")
    pairs = _dataset(root, "image", "x.tif", buf.getvalue())
    bad = os.path.join(root, "train_image", "x.tif")
    with pytest.raises(DataError, match="multi-band") as e:
        scan_pairs(pairs, 3)
    assert bad in str(e.value)


def test_the_first_bad_pair_in_order_is_named_whatever_the_threads(tmp_path):
    ti, tl = tmp_path / "img", tmp_path / "lab"
    ti.mkdir()
    tl.mkdir()
    for i in range(12):
        Image.fromarray(_rgb(i)).save(ti / f"{i:02d}.png")
        Image.fromarray(_label()).save(tl / f"{i:02d}.png")
    (ti / "09.png").write_bytes(b"")
    (ti / "04.png").write_bytes(b"garbage")
    pairs = pair_by_stem(str(ti), str(tl))
    for workers in (1, 3, 8):
        with pytest.raises(DataError, match="04.png"):
            scan_pairs(pairs, 3, workers=workers)
    (ti / "04.png").write_bytes(_encoded(_rgb(4), "PNG"))
    (ti / "09.png").write_bytes(_encoded(_rgb(9), "PNG"))
    one, many = scan_pairs(pairs, 3, workers=1), scan_pairs(pairs, 3, workers=4)
    assert one.class_pixels.tolist() == many.class_pixels.tolist() and one.class_pixels.sum() == 12 * H * W


def _write(path, arr, mode=None, palette=None):
    im = Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)
    if palette is not None:
        im.putpalette(palette)
    im.save(path)
    return path


def _accepted_pairs(folder):
    """Every accepted extension and pixel kind, as (image, label) pairs of H x W."""
    os.makedirs(folder)
    p = lambda name: os.path.join(folder, name)  # noqa: E731
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (H, W), dtype=np.uint8)
    colours = rng.integers(0, 256, 768, dtype=np.uint8).tolist()
    lab = _write(p("lab.png"), _label())
    img = _write(p("img.png"), _rgb(1))
    pairs = [(_write(p(f"img{i}{ext}"), _rgb(i)), lab) for i, ext in enumerate(IMAGE_EXTENSIONS)]
    pairs += [
        (_write(p("grey.png"), grey), lab),
        (_write(p("grey.bmp"), grey), lab),
        (_write(p("rgba.png"), rng.integers(0, 256, (H, W, 4), dtype=np.uint8)), lab),
        (_write(p("rgba.tif"), rng.integers(0, 256, (H, W, 4), dtype=np.uint8)), lab),
        (_write(p("palette.png"), grey, "P", colours), lab),
        (_write(p("grey16.png"), rng.integers(0, 65536, (H, W), dtype=np.uint16)), lab),
        (_write(p("grey16.tif"), rng.integers(0, 65536, (H, W), dtype=np.uint16)), lab),
    ]
    values16 = _label().astype(np.uint16)
    values16[values16 == 1] = 1000
    pairs += [(img, _write(p(f"lab{i}{ext}"), _label())) for i, ext in enumerate(LABEL_EXTENSIONS)]
    pairs += [
        (img, _write(p("lab_grey.bmp"), _label())),
        (img, _write(p("lab_palette.png"), _label(), "P", colours)),
        (img, _write(p("lab_palette.bmp"), _label(), "P", colours)),
        (img, _write(p("lab16.png"), values16)),
        (img, _write(p("lab16.tif"), values16)),
        (img, _write(p("lab_bits.png"), _label() == 1)),
        (img, _write(p("lab_equal_rgb.png"), np.repeat(_label()[..., None], 3, axis=2))),
    ]
    return pairs


def test_what_the_scan_accepts_training_reads_to_the_same_pixels(tmp_path):
    """Every extension of the folder contract, grey/palette/RGBA/16-bit images, grey .bmp,
    palette and 16-bit labels: the scan accepts them, and the tf.data pipeline yields exactly
    the pixels of kseg.data.io's readers (the scan's)."""
    from kseg.data.pipeline import make_dataset

    pairs = _accepted_pairs(str(tmp_path / "f"))
    scan = scan_pairs(pairs, 1001)
    assert scan.class_pixels[1000] > 0 and scan.class_pixels[1] > 0
    # crops=1 at the native size: a centre crop of the whole image, no resampling
    ds = make_dataset(pairs, (H, W), 1, training=False, crops=1, seed=0, image_init="divide")
    got = [(x.numpy()[0], y.numpy()[0]) for x, y in ds]
    assert len(got) == len(pairs)
    for (ip, lp), (x, y) in zip(pairs, got):
        np.testing.assert_array_equal(np.round(x * 255).astype(np.uint8), read_image(ip), err_msg=ip)
        np.testing.assert_array_equal(y, read_label(lp), err_msg=lp)
    assert read_label(pairs[-3][1]).max() == 1000  # 16-bit values kept, not rescaled


def test_a_file_broken_after_the_scan_fails_training_naming_it(tmp_path):
    import tensorflow as tf

    from kseg.data.pipeline import make_dataset

    img = _write(str(tmp_path / "a.png"), _rgb(0))
    lab = _write(str(tmp_path / "a_label.png"), _label())
    (tmp_path / "b.jpg").write_bytes(_encoded(_smooth_rgb(H, W), "JPEG")[:200])
    ds = make_dataset([(img, lab), (str(tmp_path / "b.jpg"), lab)], (H, W), 2)
    with pytest.raises(tf.errors.OpError) as e:
        next(iter(ds))
    assert "cannot decode image" in str(e.value) and "b.jpg" in str(e.value)


def test_train_refuses_a_corrupt_jpeg_before_writing_anything(tmp_path, tiny_dataset, capsys):
    import shutil

    ds = str(tmp_path / "d" / "ds")
    shutil.copytree(tiny_dataset, ds)
    png = os.path.join(ds, "train_image", "train_0003.png")
    bad = os.path.join(ds, "train_image", "train_0003.jpg")
    jpeg = _encoded(read_image(png), "JPEG", quality=90)
    os.remove(png)
    with open(bad, "wb") as f:
        f.write(jpeg[: len(jpeg) // 2])
    weights = tmp_path / "weights"
    code, _, err = run_command("train", [
        "--model_name", "unet", "--model_option", "base_filters=4", "--input_height", "32", "--input_width", "32",
        "--epochs", "1", "--verbose", "0", "--data_dir", os.path.dirname(ds), "--dataset_name", "ds",
        "--train_save_path", str(weights), "--exp_name", "corrupt"], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "train_0003.jpg" in err and "truncated" in err, err
    assert not (weights / "corrupt").exists()
