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

The request checks (the pixel budget, malformed requests) are `requests.py`;
the options an export is made with, `options.py`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from deeplabv3_tf.data.dataset import IGNORE_LABEL, DatasetInfo
from deeplabv3_tf.data import schema
from deeplabv3_tf.evaluation.inference import predict_labels, predict_probabilities, upsampled_labels
from deeplabv3_tf.serving.options import IMAGE_SIGNATURES, ExportOptions
from deeplabv3_tf.serving.requests import RequestChecks


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
        self.checks = RequestChecks(options)
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

    def _dense(self, images, scales, flip):
        with tf.control_dependencies(self.checks.dense_checks(images, scales)):
            images = tf.identity(images)

        def empty():
            shape = tf.shape(images)
            outputs = {"semantic": tf.zeros(shape[:3], tf.int32)}
            if self.options.with_probabilities:
                outputs["probabilities"] = tf.zeros(
                    tf.concat([shape[:3], [self.num_classes]], 0), tf.float32)
            return outputs

        shrink_to = self.checks.dense_budgets(scales)[0] if self.options.server_batching else 0
        return tf.cond(tf.equal(tf.shape(images)[0], 0), empty, lambda: self._predict(
            self.checks.rgb(images), scales, flip, shrink_to_pixels=shrink_to))

    # Encoded signatures ---------------------------------------------------

    def _segment_one(self, data):
        """Decodes one checked image and segments it: (mask int32 [H, W], PNG bytes)."""
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        image.set_shape([None, None, 3])
        mask = self._predict(tf.cast(image, tf.float32)[None], (1.0,), False)["semantic"][0]
        return mask, tf.io.encode_png(tf.cast(mask, tf.uint8)[..., None])

    def _encoded(self, images, noun):
        height, width, messages = self.checks.header_problems(images, noun)
        answerable = tf.equal(messages, "")
        with tf.control_dependencies(self.checks.encoded_checks(images, height, width, messages)):
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
