"""Single-scale, multi-scale + flip and sliding-window inference.

Multi-scale (paper §4.1, "Inference strategy"): the image is resized to each
scale, the logits of each pass (and of its left-right flip) are bilinearly
resized back to the input resolution, turned into softmax probabilities, and
averaged, as research/deeplab's `predict_labels_multi_scale` does.

Sliding windows (`Windows`): the image (at each scale) is cut into windows of
a fixed size, `stride` apart, the last window of each row and column moved
back to end at the image's edge (mmsegmentation's `slide` grid); windows never
extend past the image, and an image no larger than the window runs whole, so a
window covering the image is exactly whole-image inference. Each window's
softmax probabilities (averaged with its left-right flip's) are added up and
divided by how many windows cover each pixel.

Windows are combined as probabilities, not logits (mmsegmentation adds
logits): the scales and flips above are already averaged as probabilities, so
windows, flips and scales are one average of the same quantity; and each
window's logits carry an offset of its own (the image-pooling branch sees only
that window), which a probability average bounds to one vote per window
where a logit average lets the most confident window decide.

Memory. The network sees one batch of windows at a time. Single-scale labels
are produced by rows of windows: once a row of windows is done, the rows of
pixels no later window covers are final, reduced to class ids and released,
so the float accumulator holds window height x image width x classes (for a
9000x9000 image, 769-pixel windows and 21 classes, 0.58 GB against 6.8 GB for
the whole image; the next row's copy of it exists for a moment too, beside a
window's logits and probabilities). Multi-scale windowed inference holds each scale's full
probability map (as whole-image multi-scale does) since scales are resized
back to the input size before they are averaged.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import keras
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Windows:
    """Sliding-window inference settings.

    Attributes:
      size: Window (height, width) in pixels of the image the network sees
        (at each scale of multi-scale inference).
      stride: Offsets between windows (height, width); None: two thirds of the
        window, rounded up (769 -> 513, mmsegmentation's Cityscapes setting),
        a third of each window overlapping the next.
      batch: Windows run through the network in one call (in a row of windows).
    """

    size: tuple[int, int]
    stride: tuple[int, int] | None = None
    batch: int = 1

    def __post_init__(self):
        size = tuple(int(v) for v in self.size)
        stride = self.default_stride(size) if self.stride is None else tuple(
            int(v) for v in self.stride)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "stride", stride)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"window size {self.size} must be two positive sizes (height, width).")
        if len(stride) != 2 or min(stride) < 1:
            raise ValueError(f"window stride {self.stride} must be two positive steps.")
        if stride[0] > size[0] or stride[1] > size[1]:
            raise ValueError(f"window stride {stride} is larger than the window {size}: "
                             "pixels between windows would have no prediction.")
        if self.batch < 1:
            raise ValueError(f"window batch {self.batch} must be >= 1.")

    @staticmethod
    def default_stride(size) -> tuple[int, int]:
        return tuple(math.ceil(2 * v / 3) for v in size)

    def to_dict(self) -> dict:
        return {"size": list(self.size), "stride": list(self.stride), "batch": self.batch}

    @classmethod
    def parse(cls, size: str, stride: str | None = None, batch: int = 1) -> "Windows":
        """From flag text: "769x769" (or "769"), stride likewise."""
        return cls(parse_size(size, "--window"), parse_size(stride, "--window_stride") if stride else None,
                   batch)


def parse_size(text: str, flag: str) -> tuple[int, int]:
    """(height, width) from flag text "HEIGHTxWIDTH" or "SIZE"; an error names `flag`."""
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"{flag}={text!r}: give HEIGHTxWIDTH (e.g. 769x769) or one size.")
    return values


def scaled_size(size, scale: float):
    """round(size * scale), at least 1, as int32 [2]."""
    scaled = tf.round(tf.cast(size, tf.float32) * scale)
    return tf.maximum(tf.cast(scaled, tf.int32), 1)


def _window_probabilities(model: keras.Model, windows, flip: bool):
    """Softmax probabilities float32 [N, h, w, C] of windows [N, h, w, 3] (with
    the mean of each window's left-right flip when `flip`)."""
    probabilities = tf.nn.softmax(tf.cast(model(windows, training=False), tf.float32), axis=-1)
    if flip:
        flipped = tf.cast(model(windows[:, :, ::-1], training=False), tf.float32)
        probabilities = (probabilities + tf.nn.softmax(flipped, axis=-1)[:, :, ::-1]) / 2
    return probabilities


def window_starts(length, window: int, stride: int):
    """Window offsets along one axis: 0, stride, 2 stride, ..., the last moved
    back to end at `length` (none past the edge; no two equal).

    Returns:
      (int32 [n] offsets, int32 [] window length, at most `length`).
    """
    length = tf.cast(length, tf.int32)
    size = tf.minimum(window, length)
    count = (tf.maximum(length - size, 0) + stride - 1) // stride + 1
    return tf.minimum(tf.range(count) * stride, length - size), size


def _coverage(starts, size, length):
    """How many windows cover each position: float32 [length]."""
    positions = tf.range(length)[None, :]
    inside = (positions >= starts[:, None]) & (positions < starts[:, None] + size)
    return tf.reduce_sum(tf.cast(inside, tf.float32), axis=0)


def _slide(model: keras.Model, image, windows: Windows, flip: bool, labels: bool):
    """One image [H, W, 3] by sliding windows: int32 [H, W] class ids when
    `labels`, else float32 [H, W, C] probabilities.

    Rows of windows run in order; the accumulator [window h, W, C] holds the
    rows the current row of windows covers, and rows that no later window
    covers leave it (reduced to ids when `labels`) before the next row runs.
    Windows' probabilities are added into it where they lie (a 2-D scatter),
    without a transposed or padded copy.
    """
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    ys, window_h = window_starts(height, windows.size[0], windows.stride[0])
    xs, window_w = window_starts(width, windows.size[1], windows.stride[1])
    row_cover = _coverage(ys, window_h, height)
    column_cover = _coverage(xs, window_w, width)
    num_rows, num_columns = tf.size(ys), tf.size(xs)
    chunks = (num_columns + windows.batch - 1) // windows.batch
    columns = tf.range(window_w)
    window_rows = tf.range(window_h)
    num_classes = model.output_shape[-1]

    def run_row(i, accumulator, finished):
        y = ys[i]
        band = image[y:y + window_h]  # [h, W, 3]

        def run_chunk(j, accumulator):
            x = xs[j * windows.batch:(j + 1) * windows.batch]
            index = x[:, None] + columns[None, :]  # [k, w]
            crops = tf.transpose(tf.gather(band, index, axis=1), [1, 0, 2, 3])  # [k, h, w, 3]
            probabilities = _window_probabilities(model, crops, flip)  # [k, h, w, C]
            shape = [tf.size(x), window_h, window_w]
            where = tf.stack([tf.broadcast_to(window_rows[None, :, None], shape),
                              tf.broadcast_to(index[:, None, :], shape)], axis=-1)
            return j + 1, tf.tensor_scatter_nd_add(accumulator, where, probabilities)

        _, accumulator = tf.while_loop(lambda j, _: j < chunks, run_chunk, (0, accumulator),
                                       parallel_iterations=1)
        end = tf.where(i + 1 < num_rows, ys[tf.minimum(i + 1, num_rows - 1)], height)
        done = end - y
        rows = accumulator[:done]  # [done, W, C]
        if labels:
            # Each pixel's sum over windows has the argmax of its mean.
            result = tf.argmax(rows, axis=-1, output_type=tf.int32)
        else:
            result = rows / (row_cover[y:end, None, None] * column_cover[None, :, None])
        accumulator = tf.concat([accumulator[done:], tf.zeros([done, width, num_classes])], 0)
        return i + 1, accumulator, finished.write(i, result)

    element = [None, None] if labels else [None, None, num_classes]
    finished = tf.TensorArray(tf.int32 if labels else tf.float32, size=num_rows,
                              infer_shape=False, element_shape=tf.TensorShape(element))
    accumulator = tf.zeros([window_h, width, num_classes])
    _, _, finished = tf.while_loop(lambda i, *_: i < num_rows, run_row,
                                   (0, accumulator, finished), parallel_iterations=1)
    return finished.concat()


def _each_image(function, images, labels: bool, num_classes: int):
    """`function` [H, W, 3] -> [H, W] or [H, W, C], over a batch, one image at a time.

    A loop over slices of the batch, not tf.map_fn: map_fn would first copy
    the images into a TensorArray (a 9000x9000 image is 0.97 GB of float32).
    """
    count = tf.shape(images)[0]
    element = tf.TensorShape([None, None] if labels else [None, None, num_classes])
    results = tf.TensorArray(tf.int32 if labels else tf.float32, size=count,
                             element_shape=element)
    _, results = tf.while_loop(
        lambda i, _: i < count, lambda i, results: (i + 1, results.write(i, function(images[i]))),
        (0, results), parallel_iterations=1)
    return results.stack()


def _fits(images, windows: Windows):
    size = tf.shape(images)[1:3]
    return (size[0] <= windows.size[0]) & (size[1] <= windows.size[1])


def _scale_probabilities(model: keras.Model, scaled, size, resize: bool, flip: bool,
                         windows: Windows | None):
    """One scale's probabilities at `size` (the mean of the image's and its
    flip's when `flip`): float32 [B, H, W, C].

    Whole image: each pass's logits are resized to `size`, then turned into
    probabilities (research/deeplab's order). By windows: probabilities at the
    scaled size, combined over windows, then resized.
    """
    def whole():
        total = None
        for flipped in ((False, True) if flip else (False,)):
            logits = tf.cast(model(scaled[:, :, ::-1] if flipped else scaled, training=False),
                             tf.float32)
            if flipped:
                logits = logits[:, :, ::-1]
            if resize:
                logits = tf.image.resize(logits, size, method="bilinear")
            probabilities = tf.nn.softmax(logits, axis=-1)
            total = probabilities if total is None else total + probabilities
        return total / 2 if flip else total

    if windows is None:
        return whole()

    def slide():
        probabilities = _each_image(
            lambda image: _slide(model, image, windows, flip, labels=False), scaled, False,
            model.output_shape[-1])
        if resize:
            probabilities = tf.image.resize(probabilities, size, method="bilinear")
        return probabilities

    return tf.cond(_fits(scaled, windows), whole, slide)


def predict_probabilities(model: keras.Model, images, scales: Sequence[float] = (1.0,),
                          flip: bool = False, windows: Windows | None = None):
    """Averaged softmax probabilities at the input resolution.

    Args:
      model: Maps float RGB [B, H, W, 3] in [0, 255] to logits [B, H, W, C].
      images: float32 [B, H, W, 3] in [0, 255].
      scales: Input scales (1.0 alone is single-scale inference).
      flip: Also run every scale on the left-right flipped image.
      windows: Run each scale by sliding windows (None: the whole image). A
        scale at which the image fits in one window runs whole.

    Returns:
      float32 [B, H, W, C], each pixel summing to 1.
    """
    images = tf.cast(images, tf.float32)
    size = tf.shape(images)[1:3]
    total = None
    for scale in scales:
        scaled = images if scale == 1.0 else tf.image.resize(
            images, scaled_size(size, scale), method="bilinear")
        probabilities = _scale_probabilities(model, scaled, size, scale != 1.0, flip, windows)
        total = probabilities if total is None else total + probabilities
    return total / len(scales) if len(scales) > 1 else total


def predict_labels(model: keras.Model, images, scales: Sequence[float] = (1.0,),
                   flip: bool = False, windows: Windows | None = None):
    """Class ids int32 [B, H, W] from `predict_probabilities`.

    Single-scale windowed inference never holds the full probability map: its
    labels leave the accumulator row by row (module docstring).
    """
    images = tf.cast(images, tf.float32)
    single = len(scales) == 1 and scales[0] == 1.0

    def whole():
        if single and not flip:
            logits = model(images, training=False)
            return tf.argmax(logits, axis=-1, output_type=tf.int32)
        return tf.argmax(predict_probabilities(model, images, scales, flip), axis=-1,
                         output_type=tf.int32)

    if windows is None:
        return whole()
    if not single:
        return tf.argmax(predict_probabilities(model, images, scales, flip, windows),
                         axis=-1, output_type=tf.int32)
    return tf.cond(_fits(images, windows), whole, lambda: _each_image(
        lambda image: _slide(model, image, windows, flip, labels=True), images, True,
        model.output_shape[-1]))


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
