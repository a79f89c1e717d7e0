"""Encoding of one segmentation example, shared by every segmentation builder.

A builder describes each example as a `Task` whose sources are
(image path, label path) and whose payload is a picklable function (usually a
`functools.partial`) returning the label map as int32 [H, W] with class ids and
IGNORE_LABEL; the function raises `InvalidExampleError` for a bad mask and
`Filtered` for an example left out by design.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from deeplabv3_tf.data.dataset import IGNORE_LABEL
from deeplabv3_tf.data.images import (
    check_label, encode_label_png, read_image, read_index_mask)
from deeplabv3_tf.data.schema import segmentation_example
from deeplabv3_tf.data.tfrecord_builders.shards import Encoded, Task

MAX_CLASSES = IGNORE_LABEL  # Labels are stored as 8-bit PNGs with 255 = ignore.


def encode_segmentation(task: Task, num_classes: int) -> Encoded:
    """Reads, validates and serialises one (image, label) pair.

    Returns:
      The tf.Example and its per-class pixel counts (ignored pixels excluded).

    Raises:
      InvalidExampleError: unreadable image or mask, sizes that differ, or
        label values outside {0..num_classes-1, IGNORE_LABEL}.
    """
    image_path, label_path = task.sources[:2]
    image = read_image(image_path)
    label = task.payload()
    check_label(label, label_path, num_classes, (image.height, image.width), image_path)
    valid = label[label != IGNORE_LABEL]
    counts = np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]
    return Encoded(
        segmentation_example(image.data, image.format, image.height, image.width,
                             encode_label_png(label), task.example_id),
        counts.astype(np.int64))


def read_index_mask_with_ignore(path: str, num_classes: int, ignore_label: int) -> np.ndarray:
    """Reads an index mask whose void value is `ignore_label`; maps void to IGNORE_LABEL.

    The values are checked before the remapping, so that a stray 255 in a
    dataset whose void value is, say, 0 is reported rather than silently
    ignored.
    """
    label = read_index_mask(path)
    check_label(label, path, num_classes, ignore_label=ignore_label)
    if ignore_label != IGNORE_LABEL:
        label = np.where(label == ignore_label, IGNORE_LABEL, label).astype(np.int32)
    return label


def read_split_list(path: str) -> list[str]:
    """Reads ids from a split list (one per line; blank lines and extensions ignored).

    Raises:
      FileNotFoundError: naming the list.
    """
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"Split list not found: {path}")
    with tf.io.gfile.GFile(path) as f:
        return [os.path.splitext(line.split()[0])[0] for line in f if line.strip()]


def check_num_classes(num_classes: int) -> None:
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(
            f"num_classes={num_classes}: labels are stored as 8-bit PNGs with "
            f"{IGNORE_LABEL} for void, so 1..{MAX_CLASSES} classes are supported.")

