"""Confusion matrices and the IoU figures derived from them."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from deeplabv3_tf.data.dataset import IGNORE_LABEL


def confusion_matrix(labels, predictions, num_classes: int, ignore_label: int = IGNORE_LABEL):
    """Confusion matrix of one batch, ignored pixels excluded.

    Args:
      labels: int [...] ground truth.
      predictions: int [...] predicted classes, same shape.

    Returns:
      int64 [num_classes, num_classes]; rows are ground truth, columns predictions.
    """
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1])
    predictions = tf.reshape(tf.cast(predictions, tf.int64), [-1])
    valid = tf.not_equal(labels, ignore_label)
    indices = tf.boolean_mask(labels, valid) * num_classes + tf.boolean_mask(predictions, valid)
    counts = tf.math.bincount(indices, minlength=num_classes * num_classes,
                              maxlength=num_classes * num_classes, dtype=tf.int64)
    return tf.reshape(counts, [num_classes, num_classes])


def iou_from_confusion(matrix) -> dict:
    """mIoU, per-class IoU and pixel accuracy from a confusion matrix.

    Classes that appear neither in the ground truth nor in the predictions
    have no IoU (NaN) and are left out of the mean, as in research/deeplab's
    streaming mean IoU.

    Returns:
      {"miou": float, "iou": float [C] (NaN where undefined),
       "pixel_accuracy": float, "pixels": int}.
    """
    matrix = np.asarray(matrix, np.float64)
    true_positive = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
    total = matrix.sum()
    return {
        "miou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
        "iou": iou,
        "pixel_accuracy": float(true_positive.sum() / total) if total else float("nan"),
        "pixels": int(total),
    }


def per_image_iou(label: np.ndarray, prediction: np.ndarray, num_classes: int,
                  ignore_label: int = IGNORE_LABEL) -> float:
    """One image's IoU: the mean, over the classes present in its label or its
    prediction (ignored pixels excluded), of that class's IoU in this image.

    A class predicted where it is absent counts with IoU 0, as does a class
    missed entirely. NaN when every pixel is ignored.
    """
    valid = label != ignore_label
    if not valid.any():
        return float("nan")
    label, prediction = label[valid].astype(np.int64), prediction[valid].astype(np.int64)
    matrix = np.bincount(label * num_classes + prediction,
                         minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    intersection = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - intersection
    present = union > 0
    return float(np.mean(intersection[present] / union[present]))
