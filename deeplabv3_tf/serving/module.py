"""The served functions: request checks, preprocessing, model and post-processing.

`SegmentationModule` holds what `export.export_saved_model` saves. Signatures:

  serving_default   images uint8 [B, H, W, C] (C = 1 grey, 2 grey + alpha,
                    3 RGB, 4 RGBA; alpha is dropped) -> semantic int32 [B, H, W]
                    (+ probabilities float32 [B, H, W, K] with with_probabilities)
  multiscale_flip   same, with the export's scales and left-right flip
  encoded_image     images string [B] (JPEG/PNG/GIF/BMP/WebP bytes, any sizes) ->
                    semantic int32 [B, Hmax, Wmax] (padded with the ignore label),
                    height, width int32 [B], semantic_png_bytes string [B]
                    (each mask as a PNG at its own size; TF Serving's REST API
                    base64-encodes outputs whose name ends in "_bytes");
                    with server_batching also error string [B]
  tf_example        examples string [B] (serialised tf.Example with
                    image/encoded) -> as encoded_image
  metadata          unused int32 [] -> dataset, class_names, palette (int32
                    [K, 3]), label_ids (int32 [K], the dataset's own id of each
                    class, e.g. Cityscapes label ids), num_classes,
                    ignore_label, output_stride, training_output_stride, scales,
                    flip, max_side, max_pixels, max_request_pixels,
                    server_batching, precision, window, window_stride
                    (TF Serving rejects signatures without inputs, hence `unused`)

Exported with a `window`, every image signature segments by sliding windows
(`inference.Windows`): the network's memory is then that of one batch of
windows, and the default budget is DEFAULT_WINDOWED_MAX_PIXELS.

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

import dataclasses

import numpy as np
import tensorflow as tf

from deeplabv3_tf.data.dataset import IGNORE_LABEL, DatasetInfo
from deeplabv3_tf.data import schema
from deeplabv3_tf.serving.image_header import IS_EMPTY, OK, PROBLEMS, read_header
from deeplabv3_tf.evaluation.inference import Windows, predict_labels, predict_probabilities, upsampled_labels
from deeplabv3_tf.core.precision import INFERENCE_PRECISIONS

DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
IMAGE_SIGNATURES = ("serving_default", "multiscale_flip", "encoded_image", "tf_example")
# 2048 x 2048: one image of this size adds 1.1 GB to a served R101 at output
# stride 16 (2.3 GB in all), 1.9 GB at stride 8 (3.1 GB in all), on CPU
# (README "Export and serving", bench/serving_memory.py).
DEFAULT_MAX_PIXELS = 2048 * 2048
# 4096 x 4096 for a windowed export: the network's memory is that of a batch
# of windows whatever the image; what grows with the image is its decoded and
# float copies and the answer (about 40 bytes a pixel) and one row of windows'
# accumulator (window height x width x classes x 4 bytes). Measured by
# bench/serving_memory.py (README "Large images").
DEFAULT_WINDOWED_MAX_PIXELS = 4096 * 4096


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """What the exported graph does beyond the trained model.

    Attributes:
      output_stride: Inference output stride (None: the training one).
      scales: Scales of the multiscale_flip signature.
      flip: Left-right flip in multiscale_flip.
      with_probabilities: Add `probabilities` to serving_default and
        multiscale_flip (off by default: 513x513x21 float32 is 22 MB per image,
        above gRPC's default 4 MB message limit).
      max_side: Resize images whose longest side exceeds this inside the graph
        (masks still come back at the original size); 0 = never.
      max_pixels: Pixels one image may have (GIF: x frames); larger images are
        refused with INVALID_ARGUMENT before they are decoded. 0 = no limit;
        None: DEFAULT_MAX_PIXELS, or DEFAULT_WINDOWED_MAX_PIXELS with `window`.
      max_request_pixels: Pixels one request may hold (dense: B x H x W;
        encoded: the padded answer B x Hmax x Wmax). None: `max_pixels`;
        0 = no limit.
      server_batching: For TF Serving's server-side batching: no check that
        depends on other requests of a merged batch refuses it (module doc).
      fold_batch_norm: Fold every BatchNorm into its conv (`model.fold`):
        the same function with fewer ops. In float32 on CPU grappler already
        fuses the (fused) BatchNorm into the conv, so speed is unchanged; the
        bfloat16 graph needs it (Keras' BatchNorm computes in float32).
      precision: "float32", or "bfloat16" where the CPU has bfloat16 kernels
        (`precision.check_precision`) and they pay: AMX (several times
        float32's speed), AVX512_BF16 on the AMD EPYC (about twice); not an
        Intel Xeon without AMX, where bfloat16 runs slower than float32.
        Masks agree with float32 on >= 99.5% of pixels. Probabilities stay
        float32 either way.
      window: Segment images by sliding windows (`inference.Windows`) in every
        image signature; images no larger than the window run whole.
    """

    output_stride: int | None = None
    scales: tuple[float, ...] = DEFAULT_SCALES
    flip: bool = True
    with_probabilities: bool = False
    max_side: int = 0
    max_pixels: int | None = None
    max_request_pixels: int | None = None
    server_batching: bool = False
    fold_batch_norm: bool = True
    precision: str = "float32"
    window: Windows | None = None

    def __post_init__(self):
        if isinstance(self.window, dict):  # from export_config.json
            object.__setattr__(self, "window", Windows(**self.window))
        if self.max_pixels is None:
            object.__setattr__(self, "max_pixels", DEFAULT_WINDOWED_MAX_PIXELS if self.window
                               else DEFAULT_MAX_PIXELS)
        if self.precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not one of "
                             f"{INFERENCE_PRECISIONS}.")
        if self.precision != "float32" and not self.fold_batch_norm:
            raise ValueError("precision='bfloat16' exports the folded graph; "
                             "leave fold_batch_norm on.")
        for name in ("max_side", "max_pixels", "max_request_pixels"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}={value}: give a positive number, or 0 for no limit.")

    @property
    def request_pixels(self) -> int:
        """The per-request budget in effect (0: none)."""
        if self.server_batching:
            return 0
        return self.max_pixels if self.max_request_pixels is None else self.max_request_pixels


def _string(value) -> tf.Tensor:
    return tf.strings.as_string(value)


def _join(*parts) -> tf.Tensor:
    return tf.strings.join([p if isinstance(p, tf.Tensor) else tf.constant(p) for p in parts])


def _refuse_unless(ok, message) -> tf.Operation:
    """INVALID_ARGUMENT with `message` (string scalar) where `ok` is false."""
    return tf.debugging.Assert(ok, [message], summarize=1)


class _Untracked:
    """Holds an object out of tf.Module's tracking (it tracks what it can see)."""

    def __init__(self, value):
        self.value = value


class SegmentationModule(tf.Module):
    """Preprocessing, model and post-processing, as tf.functions for serving.

    TF Serving (like any tf.compat.v1 loader) restores the variables that the
    object graph holds, while the served functions read the tf.Variable inside
    each Keras 3 variable. Saved through the Keras model, the object graph holds
    the Keras variables instead: the served graph then reads variables that
    nothing restored, and every request fails with FAILED_PRECONDITION "Could
    not find variable ..." (keras-team/keras#20095, tensorflow/tensorflow#72963),
    although tf.saved_model.load works. So the module tracks the inner
    tf.Variables themselves (`weights`) and keeps the model out of tracking.
    """

    def __init__(self, model, experiment, options: ExportOptions,
                 dataset: DatasetInfo | None = None):
        super().__init__(name="deeplabv3")
        self._network = _Untracked(model)
        self.weights = [w.value for w in model.weights]
        if not all(isinstance(w, tf.Variable) for w in self.weights):
            raise TypeError("Expected the model's variables to hold tf.Variables "
                            "(Keras with the TensorFlow backend).")
        self.options = options
        self.num_classes = experiment.model.num_classes
        dataset = dataset or experiment.data.info
        if dataset.num_classes != self.num_classes:
            raise ValueError(f"{dataset.num_classes} class names for the model's "
                             f"{self.num_classes} classes.")
        self.dataset = dataset
        self.class_names = list(dataset.class_names)
        self.palette = np.asarray(dataset.colors, np.int32)
        self.label_ids = np.asarray(dataset.own_ids, np.int32)
        self.training_output_stride = experiment.model.output_stride
        self.output_stride = options.output_stride or experiment.model.output_stride

        images_spec = tf.TensorSpec([None, None, None, None], tf.uint8, name="images")
        bytes_spec = tf.TensorSpec([None], tf.string, name="images")
        examples_spec = tf.TensorSpec([None], tf.string, name="examples")
        self.serving_default = tf.function(
            lambda images: self._dense(images, (1.0,), False), input_signature=[images_spec])
        self.multiscale_flip = tf.function(
            lambda images: self._dense(images, options.scales, options.flip),
            input_signature=[images_spec])
        self.encoded_image = tf.function(
            lambda images: self._encoded(images, "image"), input_signature=[bytes_spec])
        self.tf_example = tf.function(self._examples, input_signature=[examples_spec])
        self.metadata = tf.function(
            self._metadata, input_signature=[tf.TensorSpec([], tf.int32, name="unused")])

    @property
    def model(self):
        return self._network.value

    def signatures(self) -> dict:
        return {name: getattr(self, name) for name in IMAGE_SIGNATURES + ("metadata",)}

    # Prediction -----------------------------------------------------------

    def _target_size(self, size, shrink_to_pixels: int):
        """The size the network sees: `size` unless max_side (or a nonzero
        `shrink_to_pixels`) asks for less; int32 [2]."""
        options = self.options
        hw = tf.cast(size, tf.float32)
        factor = tf.constant(1.0)
        if options.max_side:
            factor = tf.minimum(factor, options.max_side / tf.reduce_max(hw))
        if shrink_to_pixels:
            factor = tf.minimum(factor, tf.sqrt(shrink_to_pixels / (hw[0] * hw[1])))
        # floor, so that a budget is never exceeded by rounding.
        target = tf.cast(tf.floor(hw * factor + 1e-3), tf.int32)
        return tf.where(factor < 1.0, tf.maximum(target, 1), size)

    def _predict(self, images, scales, flip, shrink_to_pixels: int = 0):
        """{"semantic": int32 [B, H, W] (+ "probabilities")} for float32 [B, H, W, 3].

        No float tensor of the full size beyond what the network itself makes:
        single-scale masks come from the logits (no softmax), and shrunk images'
        masks are upsampled block by block (`upsampled_labels`).
        """
        with_probabilities = self.options.with_probabilities
        windows = self.options.window
        size = tf.shape(images)[1:3]
        target = self._target_size(size, shrink_to_pixels)

        def whole():
            if not with_probabilities and tuple(scales) == (1.0,) and not flip:
                return {"semantic": predict_labels(self.model, images, windows=windows)}
            probabilities = predict_probabilities(self.model, images, scales, flip, windows)
            outputs = {"semantic": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}
            if with_probabilities:
                outputs["probabilities"] = probabilities
            return outputs

        def shrunk():
            small = tf.image.resize(images, target)
            probabilities = predict_probabilities(self.model, small, scales, flip, windows)
            outputs = {"semantic": upsampled_labels(probabilities, size)}
            if with_probabilities:
                outputs["probabilities"] = tf.image.resize(probabilities, size)
            return outputs

        if not self.options.max_side and not shrink_to_pixels:
            return whole()
        return tf.cond(tf.reduce_any(target < size), shrunk, whole)

    # Dense signatures -----------------------------------------------------

    def _rgb(self, images):
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

    def _dense_checks(self, images, scales) -> list:
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

    def _dense(self, images, scales, flip):
        with tf.control_dependencies(self._dense_checks(images, scales)):
            images = tf.identity(images)

        def empty():
            shape = tf.shape(images)
            outputs = {"semantic": tf.zeros(shape[:3], tf.int32)}
            if self.options.with_probabilities:
                outputs["probabilities"] = tf.zeros(
                    tf.concat([shape[:3], [self.num_classes]], 0), tf.float32)
            return outputs

        shrink_to = self.dense_budgets(scales)[0] if self.options.server_batching else 0
        return tf.cond(tf.equal(tf.shape(images)[0], 0), empty, lambda: self._predict(
            self._rgb(images), scales, flip, shrink_to_pixels=shrink_to))

    # Encoded signatures ---------------------------------------------------

    def _header_problems(self, images, noun: str):
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

    def _segment_one(self, data):
        """Decodes one checked image and segments it: (mask int32 [H, W], PNG bytes)."""
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        image.set_shape([None, None, 3])
        mask = self._predict(tf.cast(image, tf.float32)[None], (1.0,), False)["semantic"][0]
        return mask, tf.io.encode_png(tf.cast(mask, tf.uint8)[..., None])

    def _encoded(self, images, noun):
        height, width, messages = self._header_problems(images, noun)
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
        with tf.control_dependencies(checks):
            images = tf.identity(images)

        def one(item):
            data, ok = item
            mask, png = tf.cond(ok, lambda: self._segment_one(data),
                                lambda: (tf.zeros([0, 0], tf.int32), tf.constant(b"")))
            return tf.RaggedTensor.from_tensor(mask), png, tf.shape(mask)

        # One image at a time: the network's memory is that of the largest image,
        # whatever the batch. Masks of different sizes come back ragged and are
        # padded to the largest with the ignore label.
        masks, pngs, sizes = tf.map_fn(
            one, (images, answerable), parallel_iterations=1, fn_output_signature=(
                tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1),
                tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int32)))
        outputs = {"semantic": masks.to_tensor(default_value=IGNORE_LABEL),
                   "height": sizes[:, 0], "width": sizes[:, 1], "semantic_png_bytes": pngs}
        if self.options.server_batching:
            outputs["error"] = messages
        return outputs

    def _examples(self, examples):
        # A missing image/encoded reads as empty bytes, reported per example
        # (a string that is no tf.Example fails parsing with INVALID_ARGUMENT).
        parsed = tf.io.parse_example(examples, {
            schema.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string, default_value="")})
        return self._encoded(parsed[schema.IMAGE_ENCODED], "example")

    def _metadata(self, unused):
        del unused
        options = self.options
        return {
            "dataset": tf.constant(self.dataset.name),
            "class_names": tf.constant(self.class_names),
            "palette": tf.constant(self.palette),
            "label_ids": tf.constant(self.label_ids),
            "num_classes": tf.constant(self.num_classes),
            "ignore_label": tf.constant(IGNORE_LABEL),
            "output_stride": tf.constant(self.output_stride),
            "training_output_stride": tf.constant(self.training_output_stride),
            "scales": tf.constant(list(options.scales), tf.float32),
            "flip": tf.constant(options.flip),
            "max_side": tf.constant(options.max_side),
            "max_pixels": tf.constant(options.max_pixels, tf.int64),
            "max_request_pixels": tf.constant(options.request_pixels, tf.int64),
            "server_batching": tf.constant(options.server_batching),
            "precision": tf.constant(options.precision),
            # [0, 0]: whole images.
            "window": tf.constant(list(options.window.size) if options.window else [0, 0]),
            "window_stride": tf.constant(
                list(options.window.stride) if options.window else [0, 0]),
        }
