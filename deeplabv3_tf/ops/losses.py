"""Losses as sums, with the normaliser each one is divided by counted apart.

The normaliser (non-ignored pixels, or examples) depends on the labels only:
the training step sums it over all replicas (the whole global batch) before
the forward pass and divides each replica's loss sum by it, so the loss and
its gradient are the same for any number of replicas, and the backward pass
starts from the normalised loss (no division of every gradient afterwards).
"""

from __future__ import annotations

import tensorflow as tf

from deeplabv3_tf.data.dataset import IGNORE_LABEL


def segmentation_loss_sum(labels, logits, ignore_label: int = IGNORE_LABEL, class_weights=None):
    """Softmax cross-entropy summed over non-ignored pixels.

    Args:
      labels: int32 [B, H, W] class ids or `ignore_label`.
      logits: float [B, H, W, C] at the label's resolution (never downsample labels).
      ignore_label: Label value excluded from the loss.
      class_weights: Optional float [C] per-class weights of the pixel losses.

    Returns:
      The sum of the (weighted) cross-entropies, float32 [].
    """
    labels = tf.cast(labels, tf.int32)
    valid = _valid(labels, ignore_label)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=safe_labels, logits=tf.cast(logits, tf.float32))
    weights = tf.cast(valid, tf.float32)
    if class_weights is not None:
        weights *= tf.gather(tf.constant(class_weights, tf.float32), safe_labels)
    return tf.reduce_sum(cross_entropy * weights)


def valid_pixel_count(labels, ignore_label: int = IGNORE_LABEL):
    """The segmentation loss's normaliser: pixels of `labels` that are not `ignore_label`,
    float32 [] (class weights do not enter it)."""
    return tf.reduce_sum(tf.cast(_valid(labels, ignore_label), tf.float32))


def _valid(labels, ignore_label):
    """bool: the pixels of `labels` that count (not `ignore_label`)."""
    return tf.not_equal(tf.cast(labels, tf.int32), ignore_label)


def multilabel_loss_sum(targets, logits):
    """Sigmoid cross-entropy summed over classes and examples, float32 [].

    Args:
      targets: float [B, C] multi-hot or confidence targets in [0, 1].
      logits: float [B, C].
    """
    loss = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(targets, tf.float32), logits=tf.cast(logits, tf.float32))
    return tf.reduce_sum(loss)


def example_count(targets):
    """The multi-label loss's normaliser: the examples of `targets` [B, C], float32 []."""
    return tf.cast(tf.shape(targets)[0], tf.float32)
