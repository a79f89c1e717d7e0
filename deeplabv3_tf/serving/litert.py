"""On-device export: a training run as a LiteRT (.tflite) model, float or quantised.

The converted graph is the inference graph (`runs.load_trained_model`:
BatchNorm in inference mode, dropout off), with every BatchNorm folded into its
conv (`model.fold`) and every variable frozen into a constant, at one fixed
input size:

  input   image uint8 [1, H, W, 3]: RGB pixels 0..255, the image resized to
          H x W (bilinear; `LiteRTModel` does it); no normalisation: the model
          holds its own.
  output  class_ids uint8 [1, H, W] (argmax; uint8 holds up to 256 classes and
          is the smallest type a mask fits), and with `with_probabilities`
          probabilities [1, H, W, C] (float32; uint8 in the int8 model).

Quantisation:
  none          float32 weights and activations.
  float16       float16 weights, float32 compute (half the file).
  dynamic_int8  int8 weights, activations quantised on the fly (a quarter).
  int8          every tensor integer, calibrated on images of the run's
                training records (not the val records it is judged on): an
                integer-only accelerator runs it. The input is quantised with
                scale 1 and zero point 0, so raw uint8 pixels go in with no
                float op; the output class ids are uint8.

A JSON file beside the .tflite holds what a device app needs: input size,
layout and dtype, the outputs' meaning, class names, colours, label ids.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf

from deeplabv3_tf.core.files import write_atomically, write_json_atomically
from deeplabv3_tf.data.pipeline import make_dataset
from deeplabv3_tf.model.fold import fold_batch_norm
from deeplabv3_tf.ops.metrics import confusion_matrix, iou_from_confusion
from deeplabv3_tf.runs import load_trained_model
from deeplabv3_tf.serving.export import CONFIG_FILE

QUANTIZATIONS = ("none", "float16", "dynamic_int8", "int8")
INPUT_NAME = "image"


@dataclasses.dataclass(frozen=True)
class LiteRTOptions:
    """What `export_litert` converts.

    Attributes:
      quantization: One of QUANTIZATIONS.
      input_size: The model's fixed (height, width).
      output_stride: Inference output stride (None: the training one).
      with_probabilities: Also output per-class probabilities.
      calibration_images: Training images the int8 model is calibrated on.
    """

    quantization: str = "none"
    input_size: tuple[int, int] = (513, 513)
    output_stride: int | None = None
    with_probabilities: bool = False
    calibration_images: int = 64

    def __post_init__(self):
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization={self.quantization!r} is not one of {QUANTIZATIONS}.")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ValueError(f"input_size={self.input_size} must be (height, width) > 0.")
        if self.calibration_images < 1:
            raise ValueError(f"calibration_images={self.calibration_images} must be >= 1.")


def _frozen_function(model, options: LiteRTOptions):
    """The inference function with its variables as constants.

    Float models take uint8 and cast inside; the int8 model takes the float
    pixels and the converter replaces that input by a uint8 one (scale 1).
    """
    height, width = options.input_size
    dtype = tf.float32 if options.quantization == "int8" else tf.uint8

    def serve(image):
        logits = tf.cast(model(tf.cast(image, tf.float32), training=False), tf.float32)
        outputs = {"class_ids": tf.cast(tf.argmax(logits, axis=-1, output_type=tf.int32),
                                        tf.uint8)}
        if options.with_probabilities:
            outputs["probabilities"] = tf.nn.softmax(logits, axis=-1)
        return outputs

    function = tf.function(serve, input_signature=[
        tf.TensorSpec([1, height, width, 3], dtype, name=INPUT_NAME)])
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)

    # Keras 3 variables reach the converter as resource variables it keeps
    # (VAR_HANDLE / READ_VARIABLE ops that calibration cannot run): freeze them.
    return convert_variables_to_constants_v2(function.get_concrete_function())


def convert(model, options: LiteRTOptions,
            calibration: Callable[[], Iterable[np.ndarray]] | None = None) -> bytes:
    """Converts an inference model (float RGB [0, 255] -> logits) to a .tflite flatbuffer.

    Args:
      model: The inference graph (BatchNorm folded or in inference mode).
      options: What to convert.
      calibration: For int8: yields float32 [1, H, W, 3] images in [0, 255].
    """
    # A frozen function owns no variables: an empty module is its trackable object.
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [_frozen_function(model, options)], trackable_obj=tf.Module())
    quantization = options.quantization
    if quantization != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        if calibration is None:
            raise ValueError("int8 quantisation needs calibration images.")

        def representative():
            for k, image in enumerate(calibration()):
                image = np.array(image, np.float32)
                if k == 0:
                    # The input's range is calibrated to exactly [0, 255], so that
                    # its quantisation is scale 1, zero point 0: raw pixels.
                    image.reshape(-1)[:2] = (0.0, 255.0)
                yield [image]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    with warnings.catch_warnings():
        # The int8 input's statistics come from calibration (scale 1, zero point 0).
        warnings.filterwarnings("ignore", "Statistics for quantized inputs were expected")
        return converter.convert()


def interpreter(content: bytes, num_threads: int | None = None):
    """A LiteRT interpreter (XNNPACK) for a .tflite flatbuffer, tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=content, num_threads=num_threads)
    runner.allocate_tensors()
    return runner


def tensor_types(content: bytes) -> dict[str, int]:
    """How many tensors of each dtype the file has ({"int8": 67, ...})."""
    counts: dict[str, int] = {}
    for tensor in interpreter(content).get_tensor_details():
        name = np.dtype(tensor["dtype"]).name
        counts[name] = counts.get(name, 0) + 1
    return counts


def resized_pixels(image: np.ndarray, size) -> np.ndarray:
    """An image [H, W, 3] (0..255) resized to `size` (bilinear), as the model's
    input: uint8 [1, h, w, 3]."""
    resized = tf.image.resize(np.asarray(image, np.float32)[None], size).numpy()
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


def restored_ids(ids: np.ndarray, size) -> np.ndarray:
    """Class ids [h, w] resized back to the image's `size` (nearest): [H, W]."""
    return tf.image.resize(ids[None, :, :, None], size, method="nearest").numpy()[0, :, :, 0]


class LiteRTModel:
    """Runs a .tflite export on images of any size.

    The image is resized to the model's input size (bilinear, as the network
    was trained on resized images) and the class ids back to the image's size
    (nearest neighbour).
    """

    def __init__(self, content: bytes, num_threads: int | None = None):
        self.runner = interpreter(content, num_threads)
        [self.input] = self.runner.get_input_details()
        # The frozen graph's outputs are unnamed ("Identity", ...): class ids
        # are the 3-D one, probabilities the 4-D one.
        self.outputs = {("class_ids" if len(d["shape"]) == 3 else "probabilities"): d
                        for d in self.runner.get_output_details()}
        self.input_size = tuple(int(v) for v in self.input["shape"][1:3])

    def _output(self, key: str) -> np.ndarray:
        detail = self.outputs[key]
        value = self.runner.get_tensor(detail["index"])
        scale, zero = detail["quantization"]
        if scale and key == "probabilities":
            value = (value.astype(np.float32) - zero) * scale
        return value[0]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] -> class ids uint8 [H, W]."""
        self.runner.set_tensor(self.input["index"], resized_pixels(image, self.input_size))
        self.runner.invoke()
        return restored_ids(self._output("class_ids"), image.shape[:2])


def metadata(experiment, options: LiteRTOptions, dataset, output_stride: int) -> dict:
    """What a device app needs beside the .tflite file."""
    height, width = options.input_size
    outputs = {"class_ids": {"dtype": "uint8", "shape": [1, height, width],
                             "meaning": "class id of each pixel (argmax)"}}
    if options.with_probabilities:
        outputs["probabilities"] = {
            "dtype": "uint8 (scale and zero point in the tensor's quantisation)"
            if options.quantization == "int8" else "float32",
            "shape": [1, height, width, dataset.num_classes],
            "meaning": "softmax probability of each class"}
    return {
        "format": "litert", "quantization": options.quantization,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [1, height, width, 3],
                  "layout": "NHWC, RGB, 0..255, no normalisation (the model has its own)",
                  "resize": f"resize any image to {height}x{width} (bilinear) and the class "
                            "ids back to its size (nearest)"},
        "outputs": outputs,
        "dataset": dataset.to_dict(),
        "experiment": experiment.name,
        "output_stride": output_stride,
    }


def _calibration_images(records: str, size, count: int):
    """Training images resized to `size`, float32 [1, H, W, 3] (the first `count`)."""
    def images():
        for batch in make_dataset(records, training=False).take(count):
            yield tf.image.resize(batch["image"], size).numpy()

    return images


def agreement(content: bytes, model, records: str, size, count: int,
              num_classes: int) -> dict:
    """The .tflite against the float model it came from, on `count` images of `records`.

    Both see the image resized to `size`; masks are compared at the image's
    size (pixel agreement) and scored against its labels (mIoU).
    """
    runner = LiteRTModel(content)
    reference = tf.function(lambda x: tf.argmax(model(x, training=False), axis=-1,
                                                output_type=tf.int32))
    same = total = images = 0
    matrices = {k: np.zeros((num_classes, num_classes), np.int64) for k in ("litert", "float")}
    for batch in make_dataset(records, training=False).take(count):
        image, label = batch["image"].numpy()[0], batch["label"][0]
        got = runner(image).astype(np.int64)
        expected = reference(tf.constant(resized_pixels(image, size), tf.float32)).numpy()[0]
        expected = restored_ids(expected, image.shape[:2]).astype(np.int64)
        same += int(np.sum(got == expected))
        total += got.size
        images += 1
        for key, prediction in (("litert", got), ("float", expected)):
            matrices[key] += confusion_matrix(label, prediction, num_classes).numpy()
    return {"images": images, "agreement": same / max(total, 1),
            "miou": iou_from_confusion(matrices["litert"])["miou"],
            "float_miou": iou_from_confusion(matrices["float"])["miou"]}


def _source(path: str, checkpoint: str | None):
    """(run directory, checkpoint) of a training run, or of the run a SavedModel
    export was made from (its export_config.json names the checkpoint)."""
    config_path = os.path.join(path, CONFIG_FILE)
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"{path} is a SavedModel without {CONFIG_FILE}: export "
                                    "from its training run instead.")
        with open(config_path) as f:
            prefix = json.load(f)["checkpoint"]
        if not os.path.exists(prefix + ".index"):
            raise FileNotFoundError(f"{path} was exported from {prefix}, which is not there "
                                    "any more: export from the training run.")
        return os.path.dirname(prefix), checkpoint or prefix
    return path, checkpoint


def export_litert(run_dir: str, output_path: str, options: LiteRTOptions = LiteRTOptions(),
                  check_images: int = 16, checkpoint: str | None = None,
                  calibration_records: str | None = None, check_records: str | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Writes a run as `output_path` (.tflite) and `output_path` .json, and checks it.

    Args:
      run_dir: Training run, or a SavedModel version directory exported from one
        (the run's checkpoint it names is converted: the SavedModel's own graph
        has dynamic sizes and request checks a fixed-size device model has not).
      output_path: The .tflite file (its directory is made).
      options: What to convert.
      check_images: Val images the file is checked on against the float model
        (0: no check, or no val records).
      checkpoint: A checkpoint prefix (default: the latest).
      calibration_records: Glob of the records int8 calibrates on (default: the
        run's training records; an imported run has none).
      check_records: Glob of the records the check uses (default: the run's val
        records).

    Returns:
      The metadata written, with "file", "bytes" and "check" (agreement, mIoU).
    """
    if not output_path.endswith(".tflite"):
        raise ValueError(f"{output_path}: a LiteRT file ends in .tflite.")
    run_dir, checkpoint = _source(run_dir, checkpoint)
    model, experiment, prefix = load_trained_model(run_dir, options.output_stride, checkpoint)
    output_stride = options.output_stride or experiment.model.output_stride
    model = fold_batch_norm(model, dataclasses.replace(experiment.model,
                                                       output_stride=output_stride), "float32")
    calibration = None
    calibration_records = calibration_records or experiment.data.train_records
    check_records = check_records or experiment.data.val_records
    if options.quantization == "int8":
        if not calibration_records:
            raise ValueError(f"{run_dir}: int8 calibrates on training images and the run names "
                             "no training records (an imported run): give some "
                             "(--calibration_records 'records/voc/train_aug-*').")
        calibration = _calibration_images(calibration_records, options.input_size,
                                          options.calibration_images)
    content = convert(model, options, calibration)
    info = metadata(experiment, options, experiment.data.info, output_stride)
    info.update(checkpoint=prefix, bytes=len(content), file=output_path)
    directory = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(directory, exist_ok=True)
    if check_images and check_records:
        info["check"] = agreement(content, model, check_records,
                                  options.input_size, check_images, experiment.model.num_classes)
    # Written under temporary names, then renamed: no half-written file is left.
    write_atomically(output_path, content)
    write_json_atomically(output_path[: -len(".tflite")] + ".json", info)
    check = info.get("check")
    log(f"{output_path}: {options.quantization}, {len(content) / 1e6:.2f} MB, input "
        f"{options.input_size[0]}x{options.input_size[1]}" + (
            f"; on {check['images']} val images: {100 * check['agreement']:.2f}% of pixels as "
            f"the float model, mIoU {100 * check['miou']:.2f} (float {100 * check['float_miou']:.2f})"
            if check else ""))
    return info
