"""Exports a training run (or a SavedModel export's run) as a LiteRT .tflite file.

  python tools/export_litert.py --model_dir runs/voc_r101_os16 --output_dir exports/litert \\
      --quantization int8 --input_size 513x513
  python tools/export_litert.py --model_dir exports/deeplabv3/1 --output_dir exports/litert \\
      --quantization none,float16,dynamic_int8,int8

  python tools/export_litert.py --model_dir runs/tv_deeplabv3_mobilenet_v3_large \
      --output_dir exports/litert --quantization int8 \
      --calibration_records 'records/voc/train_aug-*' --check_records 'records/voc/val-*'

Writes <experiment>_<quantization>_<H>x<W>.tflite and a .json beside it (input size, layout,
outputs, class names, colours), checks each file against the float model on the run's val
images (or --check_records) and prints pixel agreement and mIoU. int8 calibrates on the run's
training images, or --calibration_records for a run that names none (an imported one).
"""

from deeplabv3_tf.apps.cli import (
    LITERT_NOTICES, filtered_stderr, run_reporting_errors, start_tensorflow, without_notices)

start_tensorflow()  # first: TensorFlow's C++ start-up notices stay hidden

import json  # noqa: E402
import os  # noqa: E402

from absl import app, flags, logging  # noqa: E402

from deeplabv3_tf.runs import load_experiment  # noqa: E402
from deeplabv3_tf.serving.export import CONFIG_FILE  # noqa: E402
from deeplabv3_tf.evaluation.inference import parse_size  # noqa: E402
from deeplabv3_tf.serving.litert import QUANTIZATIONS, LiteRTOptions, export_litert  # noqa: E402

flags.DEFINE_string("model_dir", None, "Training run, or a SavedModel version directory.",
                    required=True)
flags.DEFINE_string("output_dir", None, "Where the .tflite and .json files go.", required=True)
flags.DEFINE_list("quantization", ["none"], f"One or more of {', '.join(QUANTIZATIONS)}.")
flags.DEFINE_string("input_size", "513x513", "The model's fixed input HEIGHTxWIDTH.")
flags.DEFINE_integer("output_stride", None, "Inference output stride (default: the training one).")
flags.DEFINE_bool("with_probabilities", False, "Also output per-class probabilities.")
flags.DEFINE_integer("calibration_images", 64, "Training images the int8 model is calibrated on.")
flags.DEFINE_integer("check_images", 16, "Val images each file is checked on (0: none).")
flags.DEFINE_string("calibration_records", None,
                    "Records int8 calibrates on (default: the run's training records).")
flags.DEFINE_string("check_records", None,
                    "Records the files are checked on (default: the run's val records).")
FLAGS = flags.FLAGS


def main(argv):
    logging.set_verbosity(logging.WARNING)
    del argv

    def run():
        size = parse_size(FLAGS.input_size, "--input_size")
        for quantization in FLAGS.quantization:
            options = LiteRTOptions(
                quantization=quantization, input_size=size, output_stride=FLAGS.output_stride,
                with_probabilities=FLAGS.with_probabilities,
                calibration_images=FLAGS.calibration_images)
            name = _experiment_name(FLAGS.model_dir)
            path = os.path.join(FLAGS.output_dir,
                                f"{name}_{quantization}_{size[0]}x{size[1]}.tflite")
            with filtered_stderr(without_notices(LITERT_NOTICES)):
                export_litert(FLAGS.model_dir, path, options, check_images=FLAGS.check_images,
                              calibration_records=FLAGS.calibration_records,
                              check_records=FLAGS.check_records)

    return run_reporting_errors(run)


def _experiment_name(path: str) -> str:
    config = os.path.join(path, CONFIG_FILE)
    if os.path.exists(config):  # a SavedModel export
        with open(config) as f:
            return json.load(f)["experiment"]["name"]
    return load_experiment(path).name


if __name__ == "__main__":
    app.run(main)
