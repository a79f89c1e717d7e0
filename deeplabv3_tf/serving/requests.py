"""What a request must satisfy before any image is decoded or any tensor of its
size is made, in graph ops (`RequestChecks`, used by `module.SegmentationModule`).

The pixel budget. TF Serving runs every model of a server in one process: one
request that decodes or segments too many pixels takes them all down. So each
request is checked before any image is decoded or any tensor of its size is
made: every image against `max_pixels` (encoded images by their headers,
`image_header.read_header`: GIF frames count, unknown formats are refused),
and the whole request against `max_request_pixels`: the dense input B x H x W,
or for encoded images the padded answer B x Hmax x Wmax. A request over either
answers INVALID_ARGUMENT naming its size and the budget, as does every
malformed request (empty strings, cut-off or unknown bytes, zero-size or
5-channel tensors); an empty batch answers empty outputs.

Under TF Serving's server-side batching the signature sees the merged batch of
several clients' requests, and an error fails all of them. Exported with
`server_batching`, nothing that depends on another request refuses: the
request-level check is off (the merged batch is bounded by the batching
configuration's max_batch_size instead), an encoded image over budget or of
an unknown format gets an empty mask and its own `error` text, and a dense
batch padded past the per-image budget is shrunk to fit it (as max_side does)
rather than refused.
"""

from __future__ import annotations

import tensorflow as tf

from deeplabv3_tf.data import schema
from deeplabv3_tf.serving.image_header import IS_EMPTY, OK, PROBLEMS, read_header
from deeplabv3_tf.serving.options import ExportOptions


def _string(value) -> tf.Tensor:
    return tf.strings.as_string(value)


def _join(*parts) -> tf.Tensor:
    return tf.strings.join([p if isinstance(p, tf.Tensor) else tf.constant(p) for p in parts])


def _refuse_unless(ok, message) -> tf.Operation:
    """INVALID_ARGUMENT with `message` (string scalar) where `ok` is false."""
    return tf.debugging.Assert(ok, [message], summarize=1)


class RequestChecks:
    """The checks of an export's requests, by its options (budgets, server batching)."""

    def __init__(self, options: ExportOptions):
        self.options = options

    def rgb(self, images):
        """uint8 [B, H, W, C] -> float32 [B, H, W, 3]: grey repeated, alpha dropped
        (as decode_image(channels=3) does with grey and RGBA PNGs)."""
        channels = tf.shape(images)[3]
        check = _refuse_unless(
            (channels >= 1) & (channels <= 4),
            _join("images have ", _string(channels), " channels: send 1 (grey), "
                  "2 (grey + alpha), 3 (RGB) or 4 (RGBA)"))
        with tf.control_dependencies([check]):
            index = tf.clip_by_value(channels - 1, 0, 3)
        rgb = tf.switch_case(index, [
            lambda: tf.tile(images[..., :1], [1, 1, 1, 3]),
            lambda: tf.tile(images[..., :1], [1, 1, 1, 3]),
            lambda: images[..., :3],
            lambda: images[..., :3]])
        return tf.cast(tf.ensure_shape(rgb, [None, None, None, 3]), tf.float32)

    def dense_budgets(self, scales) -> tuple[int, int, str]:
        """(pixels per image, per request, how they were derived) for dense images.

        The budget bounds what the network sees: a signature that also runs the
        image at scale s > 1 sees s^2 times the pixels (multiscale_flip at the
        default scales, up to 1.75: 5.2 GB added at 2048x2048 at output stride
        16, against 1.1 GB single-scale), so its budgets are divided by the
        largest scale squared.
        """
        largest = max(1.0, *scales)
        options = self.options
        if largest == 1.0:
            return options.max_pixels, options.request_pixels, ""
        factor = largest * largest
        note = f" (the budget of the export over {largest:g}^2, for its largest scale)"
        return int(options.max_pixels / factor), int(options.request_pixels / factor), note

    def dense_checks(self, images, scales) -> list:
        """Assertions on a dense request: at least one pixel, per-image and
        per-request budgets (for the signature's scales)."""
        shape = tf.cast(tf.shape(images, out_type=tf.int64), tf.int64)
        batch, height, width = shape[0], shape[1], shape[2]
        size = _join(_string(height), "x", _string(width))
        checks = [_refuse_unless(
            tf.equal(batch, 0) | (height * width > 0),
            _join("images are ", size, ": an image needs at least one pixel"))]
        per_image, per_request, note = self.dense_budgets(scales)
        if per_image and not self.options.server_batching:
            checks.append(_refuse_unless(
                tf.equal(batch, 0) | (height * width <= per_image),
                _join("images are ", size, " = ", _string(height * width),
                      f" pixels each, over the budget of {per_image} pixels per image{note}")))
        if per_request:
            checks.append(_refuse_unless(
                batch * height * width <= per_request,
                _join("the request holds ", _string(batch), " images of ", size, " = ",
                      _string(batch * height * width), " pixels, over the budget "
                      f"of {per_request} pixels per request{note}")))
        return checks

    def header_problems(self, images, noun: str):
        """Per-image headers and, where an image cannot be answered, why (string [B]).

        Args:
          images: string [B], encoded images.
          noun: What the request calls one item ("image", "example").
        """
        headers = tf.map_fn(
            lambda data: (lambda h: (h.height, h.width, h.frames, h.problem))(read_header(data)),
            images, parallel_iterations=1, fn_output_signature=(
                tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64),
                tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int32)))
        height, width, frames, problem = headers
        index = _string(tf.range(tf.size(images)))
        prefix = tf.strings.join([noun, " ", index, ": "])
        reason = tf.gather(tf.constant(PROBLEMS), problem)
        if noun == "example":
            reason = tf.where(tf.equal(problem, IS_EMPTY),
                              f"has no {schema.IMAGE_ENCODED}", reason)
        messages = tf.where(tf.equal(problem, OK), "", tf.strings.join([prefix, reason]))
        max_pixels = self.options.max_pixels
        if max_pixels:
            pixels = height * width * frames
            frames_text = tf.where(frames > 1, tf.strings.join([
                " x ", _string(frames), " frames"]), "")
            over = tf.strings.join([
                prefix, _string(height), "x", _string(width), frames_text, " = ",
                _string(pixels), f" pixels, over the budget of {max_pixels} pixels "
                "per image"])
            messages = tf.where(tf.equal(problem, OK) & (pixels > max_pixels), over, messages)
        return height, width, messages

    def encoded_checks(self, images, height, width, messages) -> list:
        """The checks of an encoded request: its images' problems (unless server
        batching: then each image answers its own `error`), and its padded answer's
        size against the request budget."""
        answerable = tf.equal(messages, "")
        checks = []
        if not self.options.server_batching:
            bad = tf.where(~answerable)[:, 0]
            first = tf.gather(messages, bad[:1])
            checks.append(_refuse_unless(tf.size(bad) == 0, tf.strings.reduce_join(first)))
        if self.options.request_pixels:
            # The answer is padded to the largest height and width in the request.
            batch = tf.cast(tf.size(images), tf.int64)
            h_max = tf.maximum(tf.reduce_max(height), 0)
            w_max = tf.maximum(tf.reduce_max(width), 0)
            padded = batch * h_max * w_max
            checks.append(_refuse_unless(
                padded <= self.options.request_pixels,
                _join("the ", _string(batch), " images of the request are answered as one ",
                      _string(batch), "x", _string(h_max), "x", _string(w_max), " array = ",
                      _string(padded), " pixels, over the budget of "
                      f"{self.options.request_pixels} pixels per request (send the images "
                      "in smaller requests)")))
        return checks
