"""PASCAL VOC 2012 and its SBD-augmented "train_aug" split.

Layouts read:
  VOCdevkit/VOC2012/JPEGImages/<id>.jpg
  VOCdevkit/VOC2012/SegmentationClass/<id>.png   palette PNG: index = class
                                                 (0..20), 255 = void
  VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
  benchmark_RELEASE/dataset/cls/<id>.mat         struct GTcls, field
                                                 Segmentation (uint8 0..20)
  benchmark_RELEASE/dataset/{img/<id>.jpg, train.txt, val.txt}

train_aug = (SBD train | SBD val | VOC train) - VOC val: 10,582 images on the
real data. Where an id has a VOC SegmentationClass mask, that mask is used
(it has the void bands SBD lacks).
"""

from __future__ import annotations

import functools
import io
import os

import numpy as np
import tensorflow as tf
import scipy.io

from deeplabv3_tf.data.dataset import IGNORE_LABEL, PASCAL_VOC, VOC_CLASSES
from deeplabv3_tf.data.images import InvalidExampleError, read_bytes, read_index_mask
from deeplabv3_tf.data.tfrecord_builders.segmentation import (
    encode_segmentation, read_split_list)
from deeplabv3_tf.data.tfrecord_builders.shards import SplitSpec, Task, write_split

VOC_SPLITS = ("train", "val", "trainval")
NUM_VOC_CLASSES = len(VOC_CLASSES)


def find_voc_root(path: str) -> str:
    """Accepts VOCdevkit/VOC2012, VOCdevkit, or a directory holding VOCdevkit."""
    for candidate in (path, os.path.join(path, "VOC2012"),
                      os.path.join(path, "VOCdevkit", "VOC2012")):
        if tf.io.gfile.isdir(os.path.join(candidate, "ImageSets", "Segmentation")):
            return candidate
    raise FileNotFoundError(
        f"No PASCAL VOC 2012 under {path}: expected ImageSets/Segmentation in it, "
        "in VOC2012/ or in VOCdevkit/VOC2012/.")


def find_sbd_root(path: str) -> str:
    """Accepts benchmark_RELEASE/dataset or benchmark_RELEASE."""
    for candidate in (path, os.path.join(path, "dataset")):
        if tf.io.gfile.isdir(os.path.join(candidate, "cls")):
            return candidate
    raise FileNotFoundError(
        f"No SBD under {path}: expected cls/ in it or in dataset/.")


def read_sbd_mat(path: str) -> np.ndarray:
    """Reads GTcls.Segmentation (class ids 0..20) from an SBD .mat file."""
    data = read_bytes(path)
    try:
        mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
        return np.asarray(mat["GTcls"].Segmentation).astype(np.int32)
    except (KeyError, AttributeError, ValueError, TypeError, OSError) as e:
        raise InvalidExampleError(
            f"{path}: not an SBD class file with GTcls.Segmentation ({e})") from None


def voc_tasks(voc_root: str, ids: list[str]) -> list[Task]:
    tasks = []
    for example_id in ids:
        image = os.path.join(voc_root, "JPEGImages", f"{example_id}.jpg")
        mask = os.path.join(voc_root, "SegmentationClass", f"{example_id}.png")
        tasks.append(Task(example_id, (image, mask), functools.partial(read_index_mask, mask)))
    return tasks


def _spec(source: dict, origin: str) -> SplitSpec:
    return SplitSpec(num_classes=NUM_VOC_CLASSES, source=source,
                     ignore_label=IGNORE_LABEL, dataset=PASCAL_VOC, origin=origin)


def build_voc(voc_dir: str, output_dir: str, splits=VOC_SPLITS, **write_options) -> dict:
    """Writes VOC 2012 segmentation splits as TFRecords.

    Args:
      voc_dir: VOCdevkit/VOC2012 (or VOCdevkit, or its parent).
      output_dir: Where shards and manifests go.
      splits: Names of lists in ImageSets/Segmentation.
      **write_options: Passed to `write_split` (num_shards, num_workers,
        skip_invalid, progress, log).

    Returns:
      {split: manifest}.
    """
    root = find_voc_root(voc_dir)
    manifests = {}
    for split in splits:
        list_path = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
        tasks = voc_tasks(root, read_split_list(list_path))
        manifests[split] = write_split(
            output_dir, split, tasks,
            functools.partial(encode_segmentation, num_classes=NUM_VOC_CLASSES),
            _spec({"format": "voc", "voc_dir": os.path.abspath(root)}, list_path),
            **write_options)
    return manifests


def train_aug_ids(voc_root: str, sbd_root: str) -> list[str]:
    """(SBD train | SBD val | VOC train) - VOC val, sorted."""
    lists = os.path.join(voc_root, "ImageSets", "Segmentation")
    voc_train = set(read_split_list(os.path.join(lists, "train.txt")))
    voc_val = set(read_split_list(os.path.join(lists, "val.txt")))
    sbd = set(read_split_list(os.path.join(sbd_root, "train.txt")))
    sbd |= set(read_split_list(os.path.join(sbd_root, "val.txt")))
    return sorted((sbd | voc_train) - voc_val)


def train_aug_tasks(voc_root: str, sbd_root: str) -> list[Task]:
    tasks = []
    for example_id in train_aug_ids(voc_root, sbd_root):
        image = os.path.join(voc_root, "JPEGImages", f"{example_id}.jpg")
        if not tf.io.gfile.exists(image):
            image = os.path.join(sbd_root, "img", f"{example_id}.jpg")
        voc_mask = os.path.join(voc_root, "SegmentationClass", f"{example_id}.png")
        if tf.io.gfile.exists(voc_mask):
            tasks.append(Task(example_id, (image, voc_mask),
                              functools.partial(read_index_mask, voc_mask)))
        else:
            mat = os.path.join(sbd_root, "cls", f"{example_id}.mat")
            tasks.append(Task(example_id, (image, mat), functools.partial(read_sbd_mat, mat)))
    return tasks


def build_voc_aug(voc_dir: str, sbd_dir: str, output_dir: str,
                  splits=("train_aug", "val"), **write_options) -> dict:
    """Writes the SBD-augmented `train_aug` split (and VOC `val`) as TFRecords.

    Args:
      voc_dir: VOCdevkit/VOC2012 (or VOCdevkit, or its parent).
      sbd_dir: benchmark_RELEASE (or benchmark_RELEASE/dataset).
      output_dir: Where shards and manifests go.
      splits: "train_aug" and/or any VOC split list name.
      **write_options: Passed to `write_split`.

    Returns:
      {split: manifest}.
    """
    voc_root, sbd_root = find_voc_root(voc_dir), find_sbd_root(sbd_dir)
    manifests = {}
    for split in splits:
        if split == "train_aug":
            tasks = train_aug_tasks(voc_root, sbd_root)
            origin = f"(SBD train | SBD val | VOC train) - VOC val from {voc_root} and {sbd_root}"
            source = {"format": "voc_aug", "voc_dir": os.path.abspath(voc_root),
                      "sbd_dir": os.path.abspath(sbd_root)}
        else:
            origin = os.path.join(voc_root, "ImageSets", "Segmentation", f"{split}.txt")
            tasks = voc_tasks(voc_root, read_split_list(origin))
            source = {"format": "voc", "voc_dir": os.path.abspath(voc_root)}
        manifests[split] = write_split(
            output_dir, split, tasks,
            functools.partial(encode_segmentation, num_classes=NUM_VOC_CLASSES),
            _spec(source, origin), **write_options)
    return manifests
