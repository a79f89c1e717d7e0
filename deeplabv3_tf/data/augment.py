"""Training augmentation of (image, label) pairs, as in the paper (§4.1).

Every random choice uses stateless ops keyed by an explicit seed [2] int32/64,
so an example's augmentation is a pure function of (seed, example index):
reproducible, and independent of how tf.data schedules work.

Images are float32 [H, W, 3] in [0, 255]; labels int32 [H, W]. Labels are only
ever resized with nearest neighbour and padded with the ignore label.
"""

from __future__ import annotations

import tensorflow as tf

from deeplabv3_tf.data.dataset import IGNORE_LABEL, IMAGENET_MEAN_RGB


def random_scale(image, label, seed, min_scale: float = 0.5, max_scale: float = 2.0):
    """Resizes both by one factor drawn uniformly from [min_scale, max_scale]."""
    if min_scale == max_scale == 1.0:
        return image, label
    scale = tf.random.stateless_uniform([], seed, min_scale, max_scale)
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    new_size = tf.maximum(tf.cast(tf.round(size * scale), tf.int32), 1)
    image = tf.image.resize(image, new_size, method="bilinear")
    label = tf.image.resize(label[..., None], new_size, method="nearest")[..., 0]
    return image, label


def pad_to_size(image, label, height: int, width: int,
                fill=IMAGENET_MEAN_RGB, ignore_label: int = IGNORE_LABEL):
    """Pads bottom/right up to at least (height, width): image with `fill`
    (the mean pixel, which normalises to ~0), label with the ignore label."""
    shape = tf.shape(image)
    pad_h = tf.maximum(height - shape[0], 0)
    pad_w = tf.maximum(width - shape[1], 0)
    paddings = [[0, pad_h], [0, pad_w]]
    fill = tf.constant(fill, tf.float32)
    image = tf.pad(image - fill, paddings + [[0, 0]]) + fill
    label = tf.pad(label - ignore_label, paddings) + ignore_label
    return image, label


def random_crop(image, label, seed, height: int, width: int):
    """The same random (height, width) window of both; inputs must be at least that big."""
    shape = tf.shape(image)
    seed_y, seed_x = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    offset_y = tf.random.stateless_uniform(
        [], seed_y, 0, shape[0] - height + 1, dtype=tf.int32)
    offset_x = tf.random.stateless_uniform(
        [], seed_x, 0, shape[1] - width + 1, dtype=tf.int32)
    image = image[offset_y:offset_y + height, offset_x:offset_x + width]
    label = label[offset_y:offset_y + height, offset_x:offset_x + width]
    image.set_shape([height, width, 3])
    label.set_shape([height, width])
    return image, label


def random_flip(image, label, seed):
    """Flips both left-right with probability 1/2."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
    label = tf.cond(flip, lambda: label[:, ::-1], lambda: label)
    return image, label


def augment_for_training(image, label, seed, crop_size=(513, 513),
                         min_scale: float = 0.5, max_scale: float = 2.0,
                         flip: bool = True, ignore_label: int = IGNORE_LABEL):
    """Random scale, pad to the crop, random crop, random left-right flip.

    Args:
      image: float32 [H, W, 3] in [0, 255].
      label: int32 [H, W].
      seed: int [2] stateless seed.
      crop_size: (height, width) of the output.
      min_scale, max_scale: Range of the random scale (paper: 0.5 to 2.0).
      flip: Random left-right flip.
      ignore_label: Label of padded pixels.

    Returns:
      image float32 [crop_h, crop_w, 3], label int32 [crop_h, crop_w].
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    image, label = random_scale(image, label, seeds[0], min_scale, max_scale)
    image, label = pad_to_size(image, label, *crop_size, ignore_label=ignore_label)
    image, label = random_crop(image, label, seeds[1], *crop_size)
    if flip:
        image, label = random_flip(image, label, seeds[2])
    return image, label
