"""COCO instances on the 20 PASCAL VOC classes (the paper's COCO pretraining set, §4.1).

From an instances JSON (e.g. annotations/instances_train2017.json) and its
image directory: every instance of a COCO category that is also a VOC class
paints its class; pixels claimed by instances of two different classes become
IGNORE_LABEL, and so do crowd regions of VOC classes; everything else is
background. Images whose VOC-class pixels number 1000 or fewer are left out
(counted as filtered in the manifest): about 60K images remain on train2017.
Polygons and (compressed or uncompressed) RLE are decoded by pycocotools.
"""

from __future__ import annotations

import collections
import functools
import os

import numpy as np
from pycocotools import mask as mask_utils

from deeplabv3_tf.data.dataset import COCO_VOC, IGNORE_LABEL, VOC_CLASSES
from deeplabv3_tf.data.images import InvalidExampleError
from deeplabv3_tf.core.files import read_json
from deeplabv3_tf.data.tfrecord_builders.segmentation import encode_segmentation
from deeplabv3_tf.data.tfrecord_builders.shards import (
    Filtered, SplitSpec, Task, write_split)

# COCO category name -> VOC class id.
COCO_TO_VOC = {
    "airplane": 1, "bicycle": 2, "bird": 3, "boat": 4, "bottle": 5, "bus": 6,
    "car": 7, "cat": 8, "chair": 9, "cow": 10, "dining table": 11, "dog": 12,
    "horse": 13, "motorcycle": 14, "person": 15, "potted plant": 16,
    "sheep": 17, "couch": 18, "train": 19, "tv": 20,
}
MIN_FOREGROUND_PIXELS = 1000


def _decode(segmentation, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, list):  # Polygons.
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation.get("counts"), list):  # Uncompressed RLE.
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def coco_voc_label(annotations: tuple, height: int, width: int, source: str,
                   min_foreground: int = MIN_FOREGROUND_PIXELS) -> np.ndarray:
    """The VOC-class label map of one COCO image.

    Args:
      annotations: ((voc_class, iscrowd, segmentation), ...) of the image's
        VOC-category instances.
      height, width: Image size from the JSON.
      source: JSON path and image id, for error messages.
      min_foreground: Images with this many VOC-class pixels or fewer are
        filtered out.

    Returns:
      int32 [H, W] in {0..20, IGNORE_LABEL}.
    """
    owner = np.zeros((height, width), np.int32)
    conflict = np.zeros((height, width), bool)
    crowd = np.zeros((height, width), bool)
    for voc_class, iscrowd, segmentation in annotations:
        try:
            mask = _decode(segmentation, height, width)
        except Exception as e:  # pycocotools raises bare Exceptions.
            raise InvalidExampleError(f"{source}: bad segmentation ({e})") from None
        if iscrowd:
            crowd |= mask
            continue
        conflict |= mask & (owner != 0) & (owner != voc_class)
        owner[mask & (owner == 0)] = voc_class
    label = owner
    label[conflict | crowd] = IGNORE_LABEL
    foreground = int(np.count_nonzero((label > 0) & (label != IGNORE_LABEL)))
    if foreground <= min_foreground:
        raise Filtered(f"{source}: {foreground} VOC-class pixels")
    return label


def coco_tasks(annotations_path: str, images_dir: str) -> list[Task]:
    """One task per image that has at least one VOC-class annotation, by image id."""
    data = read_json(annotations_path, "COCO annotations")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{annotations_path}: no {key!r} list; is it an instances file?")
    category_to_voc = {c["id"]: COCO_TO_VOC[c["name"]] for c in data["categories"]
                       if c["name"] in COCO_TO_VOC}
    per_image = collections.defaultdict(list)
    for ann in data["annotations"]:
        voc_class = category_to_voc.get(ann["category_id"])
        if voc_class is not None:
            per_image[ann["image_id"]].append(
                (voc_class, int(ann.get("iscrowd", 0)), ann["segmentation"]))
    tasks = []
    for image in sorted(data["images"], key=lambda im: im["id"]):
        anns = per_image.get(image["id"])
        if not anns:
            continue
        path = os.path.join(images_dir, image["file_name"])
        example_id = os.path.splitext(image["file_name"])[0]
        source = f"{annotations_path} (image id {image['id']})"
        tasks.append(Task(example_id, (path, source), functools.partial(
            coco_voc_label, tuple(anns), image["height"], image["width"], source)))
    return tasks


def build_coco(annotations_path: str, images_dir: str, output_dir: str,
               split: str = "train", **write_options) -> dict:
    """Writes COCO images with VOC-class labels as one split.

    Args:
      annotations_path: instances_<set>.json.
      images_dir: Directory of that set's images.
      output_dir: Where shards and manifests go.
      split: Split name of the records.
      **write_options: Passed to `write_split`.

    Returns:
      {split: manifest}.
    """
    tasks = coco_tasks(annotations_path, images_dir)
    spec = SplitSpec(
        num_classes=len(VOC_CLASSES), ignore_label=IGNORE_LABEL, dataset=COCO_VOC,
        origin=annotations_path,
        source={"format": "coco", "annotations": os.path.abspath(annotations_path),
                "images_dir": os.path.abspath(images_dir),
                "min_foreground_pixels": MIN_FOREGROUND_PIXELS})
    return {split: write_split(
        output_dir, split, tasks,
        functools.partial(encode_segmentation, num_classes=len(VOC_CLASSES)),
        spec, **write_options)}
