"""Single-scale and multi-scale + flip inference (paper §4.1, "Inference strategy").

Multi-scale: the image is resized to each scale, the logits of each pass (and
of its left-right flip) are bilinearly resized back to the input resolution,
turned into softmax probabilities, and averaged, as research/deeplab's
`predict_labels_multi_scale` does.
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf


def scaled_size(size, scale: float):
    """round(size * scale), at least 1, as int32 [2]."""
    scaled = tf.round(tf.cast(size, tf.float32) * scale)
    return tf.maximum(tf.cast(scaled, tf.int32), 1)


def predict_probabilities(model: keras.Model, images, scales: Sequence[float] = (1.0,),
                          flip: bool = False):
    """Averaged softmax probabilities at the input resolution.

    Args:
      model: Maps float RGB [B, H, W, 3] in [0, 255] to logits [B, H, W, C].
      images: float32 [B, H, W, 3] in [0, 255].
      scales: Input scales (1.0 alone is single-scale inference).
      flip: Also run every scale on the left-right flipped image.

    Returns:
      float32 [B, H, W, C], each pixel summing to 1.
    """
    images = tf.cast(images, tf.float32)
    size = tf.shape(images)[1:3]
    total = None
    count = 0
    for scale in scales:
        scaled = images if scale == 1.0 else tf.image.resize(
            images, scaled_size(size, scale), method="bilinear")
        variants = [(scaled, False)] + ([(scaled[:, :, ::-1], True)] if flip else [])
        for inputs, flipped in variants:
            logits = tf.cast(model(inputs, training=False), tf.float32)
            if flipped:
                logits = logits[:, :, ::-1]
            if scale != 1.0:
                logits = tf.image.resize(logits, size, method="bilinear")
            probabilities = tf.nn.softmax(logits, axis=-1)
            total = probabilities if total is None else total + probabilities
            count += 1
    return total / count


def predict_labels(model: keras.Model, images, scales: Sequence[float] = (1.0,),
                   flip: bool = False):
    """Class ids int32 [B, H, W] from `predict_probabilities`."""
    if len(scales) == 1 and scales[0] == 1.0 and not flip:
        logits = model(tf.cast(images, tf.float32), training=False)
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.argmax(predict_probabilities(model, images, scales, flip), axis=-1,
                     output_type=tf.int32)
