"""Exports a training run as a SavedModel that TensorFlow Serving loads as is.

  python tools/export.py --model_dir runs/voc_r101_os16 --export_dir exports/deeplabv3 \\
      [--output_stride 8] [--scales 0.5,0.75,1,1.25,1.5,1.75] [--noflip] \\
      [--with_probabilities] [--max_side 1024] [--max_pixels 4194304] [--server_batching] \\
      [--precision bfloat16] [--window 769x769 [--window_stride 513x513] [--window_batch 2]]
      [--version 3]

Writes EXPORT_DIR/<version>/ (next free integer by default).
"""

from deeplabv3_tf.apps.cli import run_reporting_errors, start_tensorflow

start_tensorflow()  # first: TensorFlow's C++ start-up notices stay hidden

from absl import app, flags, logging  # noqa: E402

from deeplabv3_tf.serving.export import export_saved_model  # noqa: E402
from deeplabv3_tf.evaluation.inference import Windows  # noqa: E402
from deeplabv3_tf.core.precision import INFERENCE_PRECISIONS  # noqa: E402
from deeplabv3_tf.serving.options import DEFAULT_SCALES, ExportOptions  # noqa: E402

flags.DEFINE_string("model_dir", None, "Training run directory.", required=True)
flags.DEFINE_string("export_dir", None, "Model base path for TF Serving.", required=True)
flags.DEFINE_integer("version", None, "Version number (default: next free integer).")
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: the latest).")
flags.DEFINE_integer("output_stride", None, "Inference output stride (default: the training one).")
flags.DEFINE_list("scales", [str(s) for s in DEFAULT_SCALES], "Scales of multiscale_flip.")
flags.DEFINE_bool("flip", True, "Left-right flip in multiscale_flip.")
flags.DEFINE_bool("with_probabilities", False, "Also output per-class probabilities.")
flags.DEFINE_integer("max_side", 0, "Resize larger images to this longest side in the graph (0: never).")
flags.DEFINE_integer("max_pixels", None,
                     "Pixels one image may have (GIF: x frames); larger ones are refused "
                     "before decoding (0: no limit; default 2048x2048, 4096x4096 with --window).")
flags.DEFINE_integer("max_request_pixels", None,
                     "Pixels one request may hold, B x H x W (default: --max_pixels; 0: no limit).")
flags.DEFINE_bool("server_batching", False,
                  "For TF Serving's --enable_batching: no request is refused because of "
                  "another merged with it (docs/serving.md).")
flags.DEFINE_bool("fold_batch_norm", True, "Fold BatchNorm into the convs (same function, fewer ops).")
flags.DEFINE_enum("precision", "float32", list(INFERENCE_PRECISIONS),
                  "Compute precision of the exported convs. bfloat16 pays with AMX (and on "
                  "the AMD EPYC's AVX512_BF16), not on an Intel Xeon without AMX; refused "
                  "where the CPU has no bfloat16 kernels.")
flags.DEFINE_string("palette", None,
                    "JSON file of class colours (and optionally names and label ids) to "
                    "export instead of the run's: {\"colors\": [[r, g, b], ...], \"names\": "
                    "[...], \"label_ids\": [...]}.")
flags.DEFINE_string("window", None, "Segment by sliding windows of HEIGHTxWIDTH in every "
                    "signature (default: whole images).")
flags.DEFINE_string("window_stride", None, "Window stride HEIGHTxWIDTH (default: 2/3 of the window).")
flags.DEFINE_integer("window_batch", 1, "Windows per network call.")
FLAGS = flags.FLAGS


def main(argv):
    logging.set_verbosity(logging.WARNING)
    del argv

    def run():
        window = FLAGS.window and Windows.parse(FLAGS.window, FLAGS.window_stride,
                                                FLAGS.window_batch)
        options = ExportOptions(
            output_stride=FLAGS.output_stride, scales=tuple(float(s) for s in FLAGS.scales),
            flip=FLAGS.flip, with_probabilities=FLAGS.with_probabilities,
            max_side=FLAGS.max_side, max_pixels=FLAGS.max_pixels,
            max_request_pixels=FLAGS.max_request_pixels,
            server_batching=FLAGS.server_batching, fold_batch_norm=FLAGS.fold_batch_norm,
            precision=FLAGS.precision, window=window or None)
        print(export_saved_model(FLAGS.model_dir, FLAGS.export_dir, options,
                                 version=FLAGS.version, checkpoint=FLAGS.checkpoint,
                                 palette_file=FLAGS.palette))

    return run_reporting_errors(run)


if __name__ == "__main__":
    app.run(main)
