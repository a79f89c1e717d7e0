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


def _bilinear_taps(out_size, in_size):
    """Source indices and weights of a half-pixel-centre bilinear resize, as
    `tf.image.resize` computes them: in = (out + 0.5) * in_size / out_size - 0.5."""
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    position = (tf.cast(tf.range(out_size), tf.float32) + 0.5) * scale - 0.5
    floor = tf.floor(position)
    lower = tf.maximum(tf.cast(floor, tf.int32), 0)
    upper = tf.minimum(tf.cast(tf.math.ceil(position), tf.int32), in_size - 1)
    return lower, upper, position - floor


def upsampled_labels(probabilities, size, block_pixels: int = 1 << 18):
    """argmax of the bilinear resize of `probabilities` to `size`, by row blocks.

    The class map at the full size, without the full-size float tensor: a
    12000x12000 answer from 21 classes would hold 12 GB of float32 there. Each
    block of rows of each image is interpolated (vertically, then
    horizontally) and reduced to class ids before the next, so the float
    working set is about `block_pixels` x C x 4 bytes x 3.

    Args:
      probabilities: float32 [B, h, w, C].
      size: int32 [2], the output (H, W).
      block_pixels: Output pixels per block.

    Returns:
      int32 [B, H, W]; equal to argmax(tf.image.resize(probabilities, size))
      but where round-off decides a near tie.
    """
    probabilities = tf.convert_to_tensor(probabilities, tf.float32)
    shape = tf.shape(probabilities)
    height, width = shape[1], shape[2]
    out_h, out_w = size[0], size[1]
    y_lower, y_upper, y_weight = _bilinear_taps(out_h, height)
    x_lower, x_upper, x_weight = _bilinear_taps(out_w, width)
    x_weight = x_weight[None, :, None]
    rows = tf.maximum(1, block_pixels // tf.maximum(out_w, 1))
    blocks = (out_h + rows - 1) // rows

    def one_image(image):
        def block(k, labels):
            r0 = k * rows
            r1 = tf.minimum(r0 + rows, out_h)
            top = tf.gather(image, y_lower[r0:r1])
            bottom = tf.gather(image, y_upper[r0:r1])
            vertical = top + (bottom - top) * y_weight[r0:r1][:, None, None]
            left = tf.gather(vertical, x_lower, axis=1)
            right = tf.gather(vertical, x_upper, axis=1)
            resized = left + (right - left) * x_weight
            return k + 1, labels.write(k, tf.argmax(resized, axis=-1, output_type=tf.int32))

        labels = tf.TensorArray(tf.int32, size=blocks, infer_shape=False,
                                element_shape=tf.TensorShape([None, None]))
        _, labels = tf.while_loop(lambda k, _: k < blocks, block, (0, labels),
                                  parallel_iterations=1)
        return labels.concat()

    return tf.map_fn(one_image, probabilities, parallel_iterations=1,
                     fn_output_signature=tf.TensorSpec([None, None], tf.int32))
