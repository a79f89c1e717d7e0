"""Confusion matrices and the IoU figures derived from them; the trimap bands.

Trimap (the DeepLab papers' boundary measurement: DeepLabv3+ Fig. 5, after
Kohli et al. 2009): mIoU counted only over the pixels within `width` pixels
of a label boundary. Here a pixel is in the band of width w when the
(2w + 1) x (2w + 1) window centred on it (clipped to the image) holds more
than one label value, void included: the void bands PASCAL VOC draws along
object outlines are where the true boundary lies, so their neighbours on both
sides are boundary pixels. Void pixels themselves are never scored. Boundary
IoU (Cheng et al. 2021) is the same idea taken per object.
"""

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


TRIMAP_BANDS = (3, 5, 10)  # band widths in pixels, as the evaluation reports them


def boundary_band(labels, width: int):
    """The trimap band of width `width`: bool [B, H, W], True where the
    (2 * width + 1)-pixel square window around a pixel (clipped to the image)
    holds more than one label value.

    Args:
      labels: int [B, H, W] label values (void included, < 2^24).
      width: Band width in pixels, >= 1.
    """
    if width < 1:
        raise ValueError(f"trimap band width={width} must be >= 1.")
    values = tf.cast(labels, tf.float32)[..., None]
    size = 2 * width + 1
    # max_pool's "SAME" padding takes no part in the maximum: the window is clipped.
    highest = tf.nn.max_pool2d(values, size, 1, "SAME")
    lowest = -tf.nn.max_pool2d(-values, size, 1, "SAME")
    return tf.not_equal(highest, lowest)[..., 0]


def trimap_confusions(labels, predictions, num_classes: int, widths=TRIMAP_BANDS,
                      ignore_label: int = IGNORE_LABEL):
    """Confusion matrices of the pixels inside each trimap band.

    Args:
      labels: int [B, H, W] ground truth.
      predictions: int [B, H, W] predicted classes.
      widths: Band widths.

    Returns:
      int64 [len(widths), num_classes, num_classes].
    """
    labels = tf.cast(labels, tf.int64)
    ignored = tf.fill(tf.shape(labels), tf.constant(ignore_label, tf.int64))
    return tf.stack([
        confusion_matrix(tf.where(boundary_band(labels, w), labels, ignored), predictions,
                         num_classes, ignore_label) for w in widths])


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
