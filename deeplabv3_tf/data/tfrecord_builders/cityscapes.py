"""Cityscapes fine annotations: gtFine `*_labelIds.png` -> the 19 train ids.

Layout read:
  leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
Label ids map to train ids as in cityscapesScripts' labels.py
(`classes.CITYSCAPES`); every other id becomes IGNORE_LABEL.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import tensorflow as tf

from deeplabv3_tf.data.dataset import CITYSCAPES, CITYSCAPES_CLASSES, IGNORE_LABEL
from deeplabv3_tf.data.images import read_index_mask
from deeplabv3_tf.data.tfrecord_builders.segmentation import encode_segmentation
from deeplabv3_tf.data.tfrecord_builders.shards import SplitSpec, Task, write_split

# labelId -> trainId (cityscapesScripts helpers/labels.py).
LABEL_ID_TO_TRAIN_ID = {label_id: train_id
                        for train_id, label_id in enumerate(CITYSCAPES.label_ids)}
_LUT = np.full(256, IGNORE_LABEL, np.int32)
for _label_id, _train_id in LABEL_ID_TO_TRAIN_ID.items():
    _LUT[_label_id] = _train_id

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def read_cityscapes_label(path: str) -> np.ndarray:
    """Reads a labelIds PNG and returns train ids (int32, 255 = ignore)."""
    label_ids = read_index_mask(path)
    return _LUT[np.clip(label_ids, 0, 255)]


def cityscapes_tasks(root: str, split: str) -> list[Task]:
    pattern = os.path.join(root, "gtFine", split, "*", f"*{LABEL_SUFFIX}")
    tasks = []
    for label_path in sorted(tf.io.gfile.glob(pattern)):
        stem = os.path.basename(label_path)[: -len(LABEL_SUFFIX)]
        city = os.path.basename(os.path.dirname(label_path))
        image = os.path.join(root, "leftImg8bit", split, city, stem + IMAGE_SUFFIX)
        tasks.append(Task(stem, (image, label_path),
                          functools.partial(read_cityscapes_label, label_path)))
    return tasks


def build_cityscapes(root: str, output_dir: str, splits=("train", "val"),
                     **write_options) -> dict:
    """Writes Cityscapes fine-annotation splits as TFRecords.

    Args:
      root: Directory holding leftImg8bit/ and gtFine/.
      output_dir: Where shards and manifests go.
      splits: Split directories to convert.
      **write_options: Passed to `write_split`.

    Returns:
      {split: manifest}.
    """
    for sub in ("leftImg8bit", "gtFine"):
        if not tf.io.gfile.isdir(os.path.join(root, sub)):
            raise FileNotFoundError(f"No Cityscapes under {root}: {sub}/ is missing.")
    manifests = {}
    for split in splits:
        tasks = cityscapes_tasks(root, split)
        spec = SplitSpec(
            num_classes=len(CITYSCAPES_CLASSES), ignore_label=IGNORE_LABEL,
            dataset=CITYSCAPES,
            origin=os.path.join(root, "gtFine", split, "*", f"*{LABEL_SUFFIX}"),
            source={"format": "cityscapes", "root": os.path.abspath(root)})
        manifests[split] = write_split(
            output_dir, split, tasks,
            functools.partial(encode_segmentation, num_classes=len(CITYSCAPES_CLASSES)),
            spec, **write_options)
    return manifests
