"""The data contract: stem pairing, palette labels, nearest resizing, letterbox, the pipeline."""

import os

import numpy as np
import pytest
from PIL import Image

from kseg.data.dataset import load_dataset_info, scan_pairs
from kseg.data.io import pair_by_stem, read_image, read_label, voc_palette, write_image, write_label
from kseg.data.preprocess import letterbox_params, resize_image, resize_label, restore_size
from kseg.errors import DataError


def _touch_pair(folder, stem, size=(8, 6), img_ext=".jpg", value=1):
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    os.makedirs(os.path.join(folder, "lab"), exist_ok=True)
    w, h = size
    write_image(os.path.join(folder, "img", stem + img_ext), np.full((h, w, 3), 100, np.uint8))
    write_label(os.path.join(folder, "lab", stem + ".png"), np.full((h, w), value, np.uint8))


def test_pairing_is_by_stem_not_sort_order(tmp_path):
    # sorted order of images and labels differ ("b.jpg" vs "a.png" ...) but stems match
    for stem in ("b", "a", "c 1"):
        _touch_pair(str(tmp_path), stem)
    os.rename(tmp_path / "img" / "a.jpg", tmp_path / "img" / "a.jpeg")
    pairs = pair_by_stem(str(tmp_path / "img"), str(tmp_path / "lab"))
    stems = [(os.path.splitext(os.path.basename(i))[0], os.path.splitext(os.path.basename(l))[0]) for i, l in pairs]
    assert stems == [("a", "a"), ("b", "b"), ("c 1", "c 1")]


def test_unmatched_files_are_listed(tmp_path):
    _touch_pair(str(tmp_path), "x")
    _touch_pair(str(tmp_path), "y")
    os.remove(tmp_path / "lab" / "y.png")
    write_label(str(tmp_path / "lab" / "z.png"), np.zeros((6, 8), np.uint8))
    with pytest.raises(DataError) as e:
        pair_by_stem(str(tmp_path / "img"), str(tmp_path / "lab"))
    msg = str(e.value)
    assert "y.jpg" in msg and "z.png" in msg and "\n" not in msg


def test_palette_label_reads_indices_not_colours(tmp_path):
    mask = np.array([[0, 1, 2], [3, 255, 1]], np.uint8)
    p = str(tmp_path / "m.png")
    write_label(p, mask)
    with Image.open(p) as im:
        assert im.mode == "P"
    np.testing.assert_array_equal(read_label(p), mask)
    # a palette whose colours are NOT the identity must still give indices
    im = Image.fromarray(mask, mode="P")
    im.putpalette([200, 10, 10] * 256)
    im.save(p)
    np.testing.assert_array_equal(read_label(p), mask)


def test_rgb_colour_mask_is_rejected_with_advice(tmp_path):
    p = str(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([np.eye(4, dtype=np.uint8) * 200] * 2 + [np.zeros((4, 4), np.uint8)])).save(p)
    with pytest.raises(DataError, match="convert_colors"):
        read_label(p)


def test_sixteen_bit_labels(tmp_path):
    p = str(tmp_path / "m16.png")
    mask = np.array([[0, 300], [1000, 2]], np.uint16)
    write_label(p, mask)
    np.testing.assert_array_equal(read_label(p), mask)


def test_unreadable_image_names_the_file(tmp_path):
    p = tmp_path / "bad.jpg"
    p.write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.jpg"):
        read_image(str(p))


def test_label_resize_is_nearest_neighbour():
    lab = np.zeros((10, 10), np.uint8)
    lab[:, 5:] = 3
    lab[0, 0] = 255
    for size in ((7, 13), (23, 4), (10, 10)):
        for op in (1, 2):
            out = resize_label(lab, size, op)
            assert out.shape == size
            assert set(np.unique(out)) <= {0, 3, 255}  # never an interpolated value


def test_letterbox_geometry_by_hand():
    # a 100x50 (h x w) image into 64x64: scale 0.64 -> 64x32, centred with 16 px each side
    assert letterbox_params(100, 50, 64, 64) == (64, 32, 0, 16)
    img = np.full((100, 50, 3), 200, np.uint8)
    out = resize_image(img, (64, 64), resize_op=2)
    assert out.shape == (64, 64, 3)
    assert (out[:, :16] == 0).all() and (out[:, 48:] == 0).all() and (out[:, 16:48] == 200).all()
    lab = resize_label(np.ones((100, 50), np.uint8), (64, 64), resize_op=2)
    assert (lab[:, :16] == 255).all() and (lab[:, 16:48] == 1).all()


@pytest.mark.parametrize("hw", [(100, 50), (37, 91), (64, 64), (5, 300)])
def test_letterbox_round_trip_restores_exact_size(hw):
    h, w = hw
    rng = np.random.default_rng(0)
    prob = rng.random((h, w, 3)).astype(np.float32)
    lb = resize_image(prob, (32, 32), resize_op=2)
    back = restore_size(lb, (h, w), resize_op=2)
    assert back.shape == (h, w, 3)
    # a constant map survives the round trip exactly (padding was cropped away)
    const = np.full((h, w, 2), 0.25, np.float32)
    back = restore_size(resize_image(const, (32, 32), resize_op=2), (h, w), resize_op=2)
    np.testing.assert_allclose(back, 0.25, atol=1e-6)


def test_scan_rejects_values_above_n_classes(tmp_path):
    _touch_pair(str(tmp_path), "a", value=1)
    _touch_pair(str(tmp_path), "b", value=5)
    pairs = pair_by_stem(str(tmp_path / "img"), str(tmp_path / "lab"))
    with pytest.raises(DataError, match=r"b\.png contains value 5 but n_classes is 3"):
        scan_pairs(pairs, 3)
    scan = scan_pairs(pairs, 6)
    assert scan.class_pixels[1] == 48 and scan.class_pixels[5] == 48


def test_scan_counts_and_ignores_255(tmp_path):
    _touch_pair(str(tmp_path), "a", value=255)
    _touch_pair(str(tmp_path), "b", value=1)
    pairs = pair_by_stem(str(tmp_path / "img"), str(tmp_path / "lab"))
    scan = scan_pairs(pairs, 2)
    assert scan.ignored_pixels == 48 and list(scan.class_pixels) == [0, 48]


def test_scan_size_mismatch(tmp_path):
    _touch_pair(str(tmp_path), "a")
    write_label(str(tmp_path / "lab" / "a.png"), np.zeros((7, 8), np.uint8))
    pairs = pair_by_stem(str(tmp_path / "img"), str(tmp_path / "lab"))
    with pytest.raises(DataError, match="size mismatch"):
        scan_pairs(pairs, 2)


def test_pipeline_shapes_values_and_augmentation(tiny_dataset):
    from kseg.data.pipeline import make_dataset

    info = load_dataset_info(tiny_dataset)
    pairs = info.pairs("train")
    label_values = set()
    for p in pairs:
        label_values |= set(np.unique(read_label(p[1])).tolist())
    for training in (False, True):
        ds = make_dataset(pairs, (48, 40), 4, training=training, seed=0)
        n = 0
        for x, y in ds:
            x, y = x.numpy(), y.numpy()
            assert x.shape[1:] == (48, 40, 3) and y.shape[1:] == (48, 40)
            assert 0.0 <= x.min() and x.max() <= 1.0
            # nearest resizing and padding keep labels in the original set (+ ignore)
            assert set(np.unique(y).tolist()) <= label_values | {255}
            n += len(x)
        assert n == len(pairs)


def test_pipeline_letterbox_pads_labels_with_ignore(tiny_dataset):
    from kseg.data.pipeline import make_dataset

    pairs = load_dataset_info(tiny_dataset).pairs("train")[:2]
    ds = make_dataset(pairs, (32, 64), 2, resize_op=2)
    x, y = next(iter(ds))
    y = y.numpy()
    # square images letterboxed into 32x64: 16 columns of padding on each side
    assert (y[:, :, :16] == 255).all() and (y[:, :, 48:] == 255).all()
    assert (y[:, :, 16:48] != 255).any()


def test_pipeline_augmentation_moves_image_and_label_together(tmp_path):
    """Paint class k with grey level 60*k: after augmentation every labelled pixel
    must still sit on its own grey level (up to interpolation at borders)."""
    from kseg.data.pipeline import make_dataset

    os.makedirs(tmp_path / "img")
    os.makedirs(tmp_path / "lab")
    lab = np.zeros((40, 40), np.uint8)
    lab[5:20, 5:30] = 1
    lab[25:38, 10:35] = 2
    img = np.repeat((lab * 60 + 30)[..., None], 3, axis=2).astype(np.uint8)
    write_image(str(tmp_path / "img" / "a.png"), img)
    write_label(str(tmp_path / "lab" / "a.png"), lab)
    pairs = pair_by_stem(str(tmp_path / "img"), str(tmp_path / "lab"))
    ds = make_dataset(pairs * 8, (40, 40), 8, training=True, seed=3, image_init="divide")
    x, y = next(iter(ds))
    x, y = (x.numpy()[..., 0] * 255).round(), y.numpy()
    import cv2

    for k in (0, 1, 2):
        # away from class borders (1 px band, where bilinear blends), values must match exactly
        # (pixels on the crop edge count as borders too: their neighbour was cropped away)
        m = np.stack([cv2.erode((yy == k).astype(np.uint8), np.ones((3, 3), np.uint8),
                                borderType=cv2.BORDER_CONSTANT, borderValue=0) for yy in y]) > 0
        assert m.sum() > 100
        close = np.abs(x[m] - (k * 60 + 30)) <= 1
        assert close.mean() > 0.995, (k, close.mean())


def test_voc_palette_first_colours():
    pal = voc_palette(4)
    assert pal.tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]


def test_sample_dataset_is_deterministic(tmp_path):
    from kseg.data.sample import generate_sample_dataset

    a = generate_sample_dataset(str(tmp_path / "a"), splits={"train": 3}, seed=5)
    b = generate_sample_dataset(str(tmp_path / "b"), splits={"train": 3}, seed=5)
    for f in sorted(os.listdir(os.path.join(a, "train_image"))):
        np.testing.assert_array_equal(read_image(os.path.join(a, "train_image", f)),
                                      read_image(os.path.join(b, "train_image", f)))
    labs = [read_label(os.path.join(a, "train_label", f)) for f in os.listdir(os.path.join(a, "train_label"))]
    assert set(np.unique(np.concatenate([l.ravel() for l in labs]))) <= {0, 1, 2, 3}
    assert load_dataset_info(a).classes == ["background", "circle", "square", "triangle"]


def test_pipeline_native_resolution_crops(tmp_path):
    """--train_crops: crops come from the full-size image (no resize), N per image per
    pass, and image and label stay aligned; evaluation takes the centre crop."""
    from kseg.data.pipeline import make_dataset

    os.makedirs(tmp_path / "img")
    os.makedirs(tmp_path / "lab")
    h, w = 60, 90
    # image grey level encodes the column (x), label the row band (y // 20)
    img = np.repeat(np.tile(np.arange(w, dtype=np.uint8) * 2, (h, 1))[..., None], 3, axis=2)
    lab = (np.arange(h)[:, None] // 20 * np.ones((1, w), int)).astype(np.uint8)
    write_image(str(tmp_path / "img" / "a.png"), img)
    write_label(str(tmp_path / "lab" / "a.png"), lab)
    pairs = pair_by_stem(str(tmp_path / "img"), str(tmp_path / "lab"))

    ds = make_dataset(pairs, (20, 30), 1, training=True, augment=False, crops=5, seed=0)
    batches = [(x.numpy()[0, ..., 0] * 255).round() for x, _ in ds]
    assert len(batches) == 5  # 5 crops of the one image per pass
    for x in batches:
        # native resolution: neighbouring columns differ by exactly 2 grey levels
        assert (np.diff(x, axis=1) == 2).all() and (np.diff(x, axis=0) == 0).all()
    assert len({x[0, 0] for x in batches}) > 1  # random positions

    x, y = next(iter(make_dataset(pairs, (20, 30), 1, crops=1)))
    x, y = (x.numpy()[0, ..., 0] * 255).round(), y.numpy()[0]
    assert x[0, 0] == 2 * 30 and (y == 1).all()  # centre crop: columns 30..59, rows 20..39


@pytest.mark.parametrize("image_init,resize_op", [("divide", 1), ("sub_and_divide", 1), ("sub_mean", 2)])
def test_training_pipeline_feeds_what_prediction_feeds(tmp_path, image_init, resize_op):
    """The tf.data pipeline (validation mode) and kseg.data.preprocess.network_input -- used by
    prediction and export -- give the same network input for the same file: same order
    (normalise, then resize/letterbox), same padding; only the two bilinear kernels differ."""
    from kseg.data.pipeline import make_dataset
    from kseg.data.preprocess import network_input

    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (40, 56, 3)).astype("uint8")
    write_image(str(tmp_path / "a.png"), img)
    write_label(str(tmp_path / "a_label.png"), np.zeros((40, 56), "uint8"))
    ds = make_dataset([(str(tmp_path / "a.png"), str(tmp_path / "a_label.png"))], (32, 32), 1, training=False,
                      image_init=image_init, resize_op=resize_op)
    x_train = next(iter(ds))[0].numpy()[0]
    x_pred = network_input(img, (32, 32), image_init, resize_op)
    scale = {"divide": 1.0, "sub_and_divide": 2.0, "sub_mean": 255.0}[image_init]
    assert x_train.shape == x_pred.shape == (32, 32, 3)
    assert np.abs(x_train - x_pred).max() <= 0.03 * scale
    assert np.abs(x_train - x_pred).mean() <= 0.003 * scale
    if resize_op == 2:  # letterbox rows: zero in normalised space in both
        assert np.all(x_train[:4] == 0) and np.all(x_pred[:4] == 0)
