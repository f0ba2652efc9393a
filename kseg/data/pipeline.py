"""The tf.data input pipeline for training and validation.

Decoding runs in parallel (``AUTOTUNE``), the file list is reshuffled every
epoch, batches are prefetched, and the whole dataset is never held in memory
(unless ``cache=True``). Every image and label is decoded by THE readers of
:mod:`kseg.data.io` (:func:`~kseg.data.io.read_image`,
:func:`~kseg.data.io.read_label`) through ``tf.numpy_function``: the same
function the training scan and the dataset doctor decode with, so a file the
scan accepts is one this pipeline reads, to the same pixels (``tf.io`` decoders
would differ: no multi-band TIFF, palette labels expanded to colours, 16-bit
labels rescaled, other failures on corrupt files). Images are fitted to the
model's ``channels`` and normalised in the same call by THE normaliser,
:func:`kseg.data.preprocess.normalize` (the predictor's and the export's), so
8- and 16-bit files of one dataset need no common pixel type in TensorFlow.
Pillow and tifffile decode without the Python lock, so the parallel map decodes
on several cores.
"""

import numpy as np
import tensorflow as tf

from kseg.config import IGNORE_INDEX, check_normalisation
from kseg.data.io import read_image, read_label
from kseg.data.preprocess import check_image_init, check_resize_op, normalize

AUTOTUNE = tf.data.AUTOTUNE


def _path(path):
    return path.decode("utf-8") if isinstance(path, bytes) else str(path)


def _py_read_image(path, channels, image_init, mean, std):
    """THE reader and THE normaliser (numpy), for ``tf.numpy_function``."""
    return normalize(read_image(_path(path), channels), image_init, mean, std)


def _py_read_label(path):
    return read_label(_path(path)).astype(np.int32)


def _decode_image(path, channels=3, image_init="divide", mean=None, std=None):
    """An image file as the normalised ``float32 (H, W, channels)`` network input, by
    :func:`kseg.data.io.read_image` and :func:`kseg.data.preprocess.normalize`."""
    img = tf.numpy_function(lambda p: _py_read_image(p, channels, image_init, mean, std), [path], tf.float32,
                            stateful=False)
    img.set_shape([None, None, channels])
    return img


def _decode_label(path):
    """A label file as ``int32 (H, W)`` class indices, by :func:`kseg.data.io.read_label`."""
    lab = tf.numpy_function(_py_read_label, [path], tf.int32, stateful=False)
    lab.set_shape([None, None])
    return lab


def _letterbox_hw(h, w, out_h, out_w):
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    scale = tf.minimum(out_h / hf, out_w / wf)
    nh = tf.clip_by_value(tf.cast(tf.round(hf * scale), tf.int32), 1, out_h)
    nw = tf.clip_by_value(tf.cast(tf.round(wf * scale), tf.int32), 1, out_w)
    return nh, nw


def tf_resize_pair(image, label, size, resize_op, ignore_index):
    """Resize (1) or letterbox (2) an image (float) and its label (int) to ``size``."""
    out_h, out_w = size
    lab = label[..., None]
    if resize_op == 1:
        image = tf.image.resize(image, (out_h, out_w), method="bilinear")
        lab = tf.image.resize(lab, (out_h, out_w), method="nearest")
        return image, lab[..., 0]
    shape = tf.shape(image)
    nh, nw = _letterbox_hw(shape[0], shape[1], out_h, out_w)
    image = tf.image.resize(image, (nh, nw), method="bilinear")
    lab = tf.image.resize(lab, (nh, nw), method="nearest")
    top, left = (out_h - nh) // 2, (out_w - nw) // 2
    pads = [[top, out_h - nh - top], [left, out_w - nw - left]]
    image = tf.pad(image, pads + [[0, 0]], constant_values=0.0)
    lab = tf.pad(lab[..., 0], pads, constant_values=ignore_index)
    return image, lab


def tf_augment(image, label, size, ignore_index, scale_range=(0.75, 1.25), flip=True):
    """Online, mask-safe augmentation on an (already resized) pair.

    Random scale in ``scale_range`` keeping the aspect ratio (bilinear image,
    nearest label), random horizontal flip, then random crop / pad back to
    ``size`` (image padded with 0, label with ``ignore_index``).
    """
    out_h, out_w = size
    channels = image.shape[-1]
    s = tf.random.uniform([], scale_range[0], scale_range[1])
    shape = tf.shape(image)
    nh = tf.maximum(1, tf.cast(tf.round(tf.cast(shape[0], tf.float32) * s), tf.int32))
    nw = tf.maximum(1, tf.cast(tf.round(tf.cast(shape[1], tf.float32) * s), tf.int32))
    image = tf.image.resize(image, (nh, nw), method="bilinear")
    label = tf.image.resize(label[..., None], (nh, nw), method="nearest")[..., 0]
    if flip:
        do = tf.random.uniform([]) < 0.5
        image = tf.cond(do, lambda: image[:, ::-1], lambda: image)
        label = tf.cond(do, lambda: label[:, ::-1], lambda: label)
    # pad to at least the output size (random placement), then random crop
    ph, pw = tf.maximum(out_h - nh, 0), tf.maximum(out_w - nw, 0)
    top = tf.random.uniform([], 0, ph + 1, dtype=tf.int32)
    left = tf.random.uniform([], 0, pw + 1, dtype=tf.int32)
    pads = [[top, ph - top], [left, pw - left]]
    image = tf.pad(image, pads + [[0, 0]], constant_values=0.0)
    label = tf.pad(label, pads, constant_values=ignore_index)
    h2, w2 = nh + ph, nw + pw
    y0 = tf.random.uniform([], 0, h2 - out_h + 1, dtype=tf.int32)
    x0 = tf.random.uniform([], 0, w2 - out_w + 1, dtype=tf.int32)
    image = image[y0 : y0 + out_h, x0 : x0 + out_w]
    label = label[y0 : y0 + out_h, x0 : x0 + out_w]
    image.set_shape([out_h, out_w, channels])
    label.set_shape([out_h, out_w])
    return image, label


def tf_center_crop(image, label, size, ignore_index):
    """Centre crop (and centre pad, label with ``ignore_index``) a pair to ``size``."""
    out_h, out_w = size
    channels = image.shape[-1]
    shape = tf.shape(image)
    ph, pw = tf.maximum(out_h - shape[0], 0), tf.maximum(out_w - shape[1], 0)
    pads = [[ph // 2, ph - ph // 2], [pw // 2, pw - pw // 2]]
    image = tf.pad(image, pads + [[0, 0]], constant_values=0.0)
    label = tf.pad(label, pads, constant_values=ignore_index)
    shape = tf.shape(image)
    y0, x0 = (shape[0] - out_h) // 2, (shape[1] - out_w) // 2
    image = image[y0 : y0 + out_h, x0 : x0 + out_w]
    label = label[y0 : y0 + out_h, x0 : x0 + out_w]
    image.set_shape([out_h, out_w, channels])
    label.set_shape([out_h, out_w])
    return image, label


def make_dataset(
    pairs,
    input_size,
    batch_size,
    *,
    training=False,
    image_init="divide",
    resize_op=1,
    ignore_index=IGNORE_INDEX,
    augment=True,
    cache=False,
    seed=None,
    drop_remainder=None,
    repeat=False,
    crops=0,
    channels=3,
    mean=None,
    std=None,
):
    """Build a batched ``tf.data.Dataset`` of ``(image float32 (B,H,W,C), label int32 (B,H,W))``.

    Args:
        pairs: list of ``(image_path, label_path)``.
        input_size: ``(height, width)`` of the network input.
        batch_size: batch size.
        training: shuffle every epoch and (with ``augment``) augment.
        image_init: ``divide`` | ``sub_and_divide`` | ``sub_mean`` (on the pixel type's range).
        resize_op: 1 resize, 2 letterbox.
        ignore_index: label value for padding and ignored pixels.
        cache: keep decoded, resized pairs in memory after the first epoch.
        seed: shuffle/augmentation seed.
        drop_remainder: drop the last partial batch (default: when training).
        repeat: repeat forever.
        crops: 0 resizes every image to ``input_size``. ``N > 0`` keeps images at their
            native resolution and takes input-size crops instead (for large images
            predicted with ``--mode slide``): when training, ``N`` random crops per image
            per pass (after the random scale and flip when ``augment``); otherwise one
            centre crop. ``resize_op`` is not used then.
        channels: the model's input channels ``C`` (:func:`kseg.data.io.read_image`).
        mean, std: per-channel normalisation instead of ``image_init``
            (:func:`kseg.data.preprocess.normalize`).
    """
    check_image_init(image_init)
    channels = int(channels)
    check_normalisation(channels, mean, std, image_init)
    mean = None if mean is None else np.asarray(mean, np.float32)
    std = None if std is None else np.asarray(std, np.float32)
    resize_op = check_resize_op(resize_op)
    size = (int(input_size[0]), int(input_size[1]))
    images = [p[0] for p in pairs]
    labels = [p[1] for p in pairs]
    crops = int(crops or 0)
    if crops < 0:
        raise ValueError(f"crops must be >= 0, got {crops}")
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    n = len(pairs)
    if training and crops > 1 and not cache:
        ds, n = ds.repeat(crops), n * crops
    if training and not cache:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)

    def load(ip, lp):
        img = _decode_image(ip, channels, image_init, mean, std)
        lab = _decode_label(lp)
        if crops:
            if not training:
                return tf_center_crop(img, lab, size, ignore_index)
            return img, lab  # cropped below, at native resolution
        return tf_resize_pair(img, lab, size, resize_op, ignore_index)

    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=seed is not None)
    if cache:
        ds = ds.cache()
        if training and crops > 1:
            ds, n = ds.repeat(crops), n * crops
        if training:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if training and (augment or crops):
        aug = dict(scale_range=(0.75, 1.25), flip=True) if augment else dict(scale_range=(1.0, 1.0), flip=False)
        ds = ds.map(
            lambda i, l: tf_augment(i, l, size, ignore_index, **aug),
            num_parallel_calls=AUTOTUNE,
            deterministic=seed is not None,
        )
    if repeat:
        ds = ds.repeat()
    if drop_remainder is None:
        drop_remainder = training and n >= batch_size
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(AUTOTUNE)
