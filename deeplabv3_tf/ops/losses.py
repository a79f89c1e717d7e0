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


def pixel_losses(labels, logits, ignore_label: int = IGNORE_LABEL, class_weights=None):
    """Per-pixel softmax cross-entropy, 0 on ignored pixels.

    Args:
      labels: int32 [B, H, W] class ids or `ignore_label`.
      logits: float [B, H, W, C] at the label's resolution (never downsample labels).
      ignore_label: Label value excluded from the loss.
      class_weights: Optional float [C] per-class weights of the pixel losses.

    Returns:
      float32 [B, H, W] (weighted) cross-entropies.
    """
    labels = tf.cast(labels, tf.int32)
    valid = _valid(labels, ignore_label)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=safe_labels, logits=tf.cast(logits, tf.float32))
    weights = tf.cast(valid, tf.float32)
    if class_weights is not None:
        weights *= tf.gather(tf.constant(class_weights, tf.float32), safe_labels)
    return cross_entropy * weights


def segmentation_loss_sum(labels, logits, ignore_label: int = IGNORE_LABEL, class_weights=None,
                          hard_fraction=None):
    """Softmax cross-entropy summed over non-ignored pixels, or over the hardest of them.

    Args:
      labels, logits, ignore_label, class_weights: As `pixel_losses`.
      hard_fraction: None (or 1) for every valid pixel; a float32 scalar in
        (0, 1] for the hardest `hard_pixel_counts` pixels of each image
        (research/deeplab's top_k_percent_pixels, `mining_fraction`).

    Returns:
      The sum of the (weighted) cross-entropies, float32 [].
    """
    losses = pixel_losses(labels, logits, ignore_label, class_weights)
    if hard_fraction is None:
        return tf.reduce_sum(losses)
    batch = tf.shape(losses)[0]
    # Ignored pixels sort last (every loss is >= 0); the hardest come first.
    flat = tf.where(_valid(labels, ignore_label), losses, -tf.ones_like(losses))
    ranked = tf.sort(tf.reshape(flat, [batch, -1]), axis=-1, direction="DESCENDING")
    counts = hard_pixel_counts(labels, hard_fraction, ignore_label)
    taken = tf.range(tf.shape(ranked)[1])[None, :] < counts[:, None]
    return tf.reduce_sum(tf.where(taken, ranked, tf.zeros_like(ranked)))


def mining_fraction(step, top_k_percent_pixels: float, hard_example_mining_step: int):
    """The share of each image's valid pixels the loss keeps at `step`, float32 [].

    research/deeplab's schedule: from 1 (every pixel) at step 0 linearly down to
    `top_k_percent_pixels` at `hard_example_mining_step`, then constant; with
    `hard_example_mining_step` 0, `top_k_percent_pixels` from the start.
    """
    target = tf.constant(top_k_percent_pixels, tf.float32)
    if hard_example_mining_step == 0:
        return target
    ratio = tf.minimum(1.0, tf.cast(step, tf.float32) / float(hard_example_mining_step))
    return ratio * target + (1.0 - ratio)


def hard_pixel_counts(labels, fraction, ignore_label: int = IGNORE_LABEL):
    """How many pixels of each image the hard-pixel loss keeps: int32 [B],
    floor(fraction x its valid pixels), at least 1 where it has any."""
    valid = tf.reduce_sum(tf.cast(_valid(labels, ignore_label), tf.int32), axis=[1, 2])
    kept = tf.cast(tf.floor(tf.cast(fraction, tf.float32) * tf.cast(valid, tf.float32)), tf.int32)
    return tf.minimum(valid, tf.maximum(kept, tf.minimum(valid, 1)))


def valid_pixel_count(labels, ignore_label: int = IGNORE_LABEL, hard_fraction=None):
    """The segmentation loss's normaliser: pixels of `labels` that are not
    `ignore_label` (or, with `hard_fraction`, the hardest of them that the loss
    keeps), float32 [] (class weights do not enter it)."""
    if hard_fraction is not None:
        return tf.cast(tf.reduce_sum(hard_pixel_counts(labels, hard_fraction, ignore_label)),
                       tf.float32)
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
