"""Losses as (sum, normaliser) pairs, so that replicas can share one normaliser.

The training step divides each replica's sum by the normaliser summed over
all replicas (the whole global batch), so the loss and its gradient are the
same for any number of replicas.
"""

from __future__ import annotations

import tensorflow as tf

from deeplabv3_tf.classes import IGNORE_LABEL


def segmentation_loss_terms(labels, logits, ignore_label: int = IGNORE_LABEL,
                            class_weights=None):
    """Softmax cross-entropy summed over non-ignored pixels, and their count.

    Args:
      labels: int32 [B, H, W] class ids or `ignore_label`.
      logits: float [B, H, W, C] at the label's resolution (never downsample labels).
      ignore_label: Label value excluded from the loss.
      class_weights: Optional float [C] per-class weights of the pixel losses.

    Returns:
      (sum of weighted cross-entropy float32 [], number of non-ignored pixels float32 []).
    """
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, ignore_label)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=safe_labels, logits=tf.cast(logits, tf.float32))
    weights = tf.cast(valid, tf.float32)
    if class_weights is not None:
        weights *= tf.gather(tf.constant(class_weights, tf.float32), safe_labels)
    return tf.reduce_sum(cross_entropy * weights), tf.reduce_sum(tf.cast(valid, tf.float32))


def multilabel_loss_terms(targets, logits):
    """Sigmoid cross-entropy summed over classes and examples, and the example count.

    Args:
      targets: float [B, C] multi-hot or confidence targets in [0, 1].
      logits: float [B, C].

    Returns:
      (sum float32 [], number of examples float32 []).
    """
    loss = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(targets, tf.float32), logits=tf.cast(logits, tf.float32))
    return tf.reduce_sum(loss), tf.cast(tf.shape(logits)[0], tf.float32)
