"""JFT-style multi-label classification records, for backbone pretraining.

Manifest formats (image paths relative to the manifest's directory or absolute):

  CSV with a header:  image,labels[,confidences][,names]
                      labels and the optional lists are separated by ';' or spaces:
                      img/001.jpg,3;17;17,0.9;0.6;0.7,cat;dog;dog
  JSON lines:         {"image": "img/001.jpg", "labels": [3, 17],
                       "confidences": [0.9, 0.6], "names": ["cat", "dog"]}

Labels are sorted and de-duplicated; a repeated label keeps its highest
confidence and its first name.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os

import numpy as np
import tensorflow as tf

from deeplabv3_tf.data.dataset import DatasetInfo
from deeplabv3_tf.data.images import read_image
from deeplabv3_tf.data.schema import classification_example
from deeplabv3_tf.data.tfrecord_builders.shards import Encoded, SplitSpec, Task, write_split


def _split_list(value: str) -> list[str]:
    return [v for v in value.replace(";", " ").split() if v]


def normalize_labels(labels, confidences=None, names=None):
    """Sorted unique labels; a repeated label keeps its max confidence and first name."""
    best = {}
    for i, label in enumerate(labels):
        confidence = confidences[i] if confidences is not None else None
        name = names[i] if names is not None else None
        if label not in best:
            best[label] = (confidence, name)
        elif confidence is not None and confidence > best[label][0]:
            best[label] = (confidence, best[label][1])
    ordered = sorted(best)
    return (ordered,
            [best[k][0] for k in ordered] if confidences is not None else None,
            [best[k][1] for k in ordered] if names is not None else None)


def _read_text(path: str) -> str:
    with tf.io.gfile.GFile(path) as f:
        return f.read()


def _rows(path: str):
    """Yields (line number, image, labels, confidences, names) from a manifest."""
    with io.StringIO(_read_text(path), newline="") as f:
        if path.endswith((".jsonl", ".json")):
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not valid JSON ({e})") from None
                yield (number, row.get("image"), row.get("labels"),
                       row.get("confidences"), row.get("names"))
        else:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "image" not in reader.fieldnames \
                    or "labels" not in reader.fieldnames:
                raise ValueError(f"{path}: the CSV header must name 'image' and 'labels' columns.")
            for number, row in enumerate(reader, start=2):
                confidences = row.get("confidences")
                names = row.get("names")
                yield (number, row["image"], _split_list(row["labels"] or ""),
                       _split_list(confidences) if confidences else None,
                       _split_list(names) if names else None)


def read_classification_manifest(path: str, num_classes: int | None = None):
    """Parses and validates a manifest.

    Returns:
      (tasks, num_classes): payloads hold (labels, confidences, names).

    Raises:
      FileNotFoundError / ValueError: naming the manifest line and problem.
    """
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"Classification manifest not found: {path}")
    base = os.path.dirname(os.path.abspath(path))
    rows, max_label = [], -1
    for number, image, labels, confidences, names in _rows(path):
        where = f"{path}:{number}"
        if not image:
            raise ValueError(f"{where}: no image path.")
        try:
            labels = [int(v) for v in labels or []]
            confidences = [float(v) for v in confidences] if confidences else None
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: labels must be integers and confidences numbers ({e}).") from None
        if not labels:
            raise ValueError(f"{where}: no labels.")
        if min(labels) < 0:
            raise ValueError(f"{where}: negative label {min(labels)}.")
        for name, values in (("confidences", confidences), ("names", names)):
            if values is not None and len(values) != len(labels):
                raise ValueError(f"{where}: {len(values)} {name} for {len(labels)} labels.")
        labels, confidences, names = normalize_labels(labels, confidences, names)
        max_label = max(max_label, labels[-1])
        image_path = image if os.path.isabs(image) else os.path.join(base, image)
        example_id = os.path.splitext(os.path.relpath(image_path, base))[0]
        rows.append((where, Task(example_id, (image_path,),
                                 (tuple(labels), confidences and tuple(confidences),
                                  names and tuple(names)))))
    if num_classes is None:
        num_classes = max_label + 1
    for where, task in rows:
        if task.payload[0][-1] >= num_classes:
            raise ValueError(f"{where}: label {task.payload[0][-1]} >= num_classes ({num_classes}).")
    return [task for _, task in rows], num_classes


def encode_classification(task: Task, num_classes: int) -> Encoded:
    """Reads the image and serialises one classification example."""
    labels, confidences, names = task.payload
    image = read_image(task.sources[0])
    counts = np.zeros(num_classes, np.int64)
    counts[list(labels)] = 1
    return Encoded(classification_example(
        image.data, image.format, task.example_id, list(labels),
        list(confidences) if confidences else None,
        list(names) if names else None), counts)


def build_classification(manifest_path: str, output_dir: str, split: str = "train",
                         num_classes: int | None = None,
                         class_names: list[str] | None = None, **write_options) -> dict:
    """Writes a multi-label classification split as TFRecords.

    Args:
      manifest_path: CSV or JSON-lines manifest (see module docstring).
      output_dir: Where shards and manifests go.
      split: Split name.
      num_classes: Number of classes; the largest label + 1 by default.
      class_names: Optional names, index = class id.
      **write_options: Passed to `write_split`.

    Returns:
      {split: manifest}; the per-class statistic is the number of images.
    """
    tasks, num_classes = read_classification_manifest(manifest_path, num_classes)
    spec = SplitSpec(
        num_classes=num_classes, stats_name="class_image_counts", ignore_label=None,
        dataset=DatasetInfo("classification", tuple(class_names)) if class_names else None,
        origin=manifest_path,
        source={"format": "classification", "manifest": os.path.abspath(manifest_path)})
    return {split: write_split(
        output_dir, split, tasks,
        functools.partial(encode_classification, num_classes=num_classes),
        spec, **write_options)}
