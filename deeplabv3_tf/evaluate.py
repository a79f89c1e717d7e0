"""Evaluation of a segmentation model over records: confusion matrix, IoU, accuracy."""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from deeplabv3_tf.classes import IGNORE_LABEL
from deeplabv3_tf.inference import predict_labels
from deeplabv3_tf.metrics import confusion_matrix, iou_from_confusion
from deeplabv3_tf.progress import ProgressBar


def evaluate_model(model: keras.Model, dataset: tf.data.Dataset, num_classes: int,
                   scales: Sequence[float] = (1.0,), flip: bool = False,
                   ignore_label: int = IGNORE_LABEL, progress: bool = False,
                   total: int | None = None,
                   on_batch: Callable[[dict, np.ndarray], None] | None = None) -> dict:
    """Runs the model over an evaluation dataset and scores it.

    Args:
      model: Segmentation model (float RGB [0, 255] -> logits).
      dataset: From `make_dataset(..., training=False)`: whole images, any sizes.
      num_classes: Number of classes.
      scales, flip: Inference scales and left-right flip (multi-scale + flip
        when more than one scale or flip).
      ignore_label: Label excluded from the scores.
      progress: Show a progress bar (needs `total` for an ETA).
      total: Number of batches, for the progress bar.
      on_batch: Called with each batch and its int32 predictions [B, H, W].

    Returns:
      {"miou", "iou" [C], "pixel_accuracy", "pixels", "confusion" int64 [C, C],
       "images"}.
    """
    spec = dataset.element_spec

    @tf.function(input_signature=[spec["image"], spec["label"]])
    def step(images, labels):
        predictions = predict_labels(model, images, scales, flip)
        return predictions, confusion_matrix(labels, predictions, num_classes, ignore_label)

    matrix = np.zeros((num_classes, num_classes), np.int64)
    images = 0
    bar = ProgressBar(total or 0, desc="[eval]", unit="img", enabled=progress)
    for batch in dataset:
        predictions, batch_matrix = step(batch["image"], batch["label"])
        matrix += batch_matrix.numpy()
        images += int(batch["image"].shape[0])
        if on_batch is not None:
            on_batch(batch, predictions.numpy())
        bar.update(int(batch["image"].shape[0]))
    bar.close()
    result = iou_from_confusion(matrix)
    result.update(confusion=matrix, images=images)
    return result
