"""Segments images: colour masks and overlays, from a training run or an exported SavedModel.

  python tools/predict.py --source runs/voc_r101_os16 --output_dir out photo.jpg photos/
  python tools/predict.py --source exports/deeplabv3/1 --output_dir out photos/
  python tools/predict.py --source runs/aerial --window 769x769 --window_batch 2 tiles/
  python tools/predict.py --source runs/cityscapes_r101_os16 --label_ids \
      --output_dir results leftImg8bit/test/*/        # zip results/label_ids for the server

An image over --max_pixels or unreadable is reported in one line and skipped;
the others are still written, and the exit status is then 1.
"""

import sys

from deeplabv3_tf.apps.cli import run_reporting_errors, start_tensorflow

start_tensorflow()  # first: TensorFlow's C++ start-up notices stay hidden

from absl import app, flags, logging  # noqa: E402

from deeplabv3_tf.serving.predict import predict_files  # noqa: E402
from deeplabv3_tf.evaluation.inference import Windows  # noqa: E402

flags.DEFINE_string("source", None, "Run directory or SavedModel version directory.", required=True)
flags.DEFINE_string("output_dir", "predictions", "Where masks and overlays go.")
flags.DEFINE_integer("output_stride", None, "Inference output stride (run source only).")
flags.DEFINE_list("scales", ["1.0"], "Inference scales (run source only).")
flags.DEFINE_bool("flip", False, "Add left-right flipped inputs (run source only).")
flags.DEFINE_string("window", None, "Sliding window HEIGHTxWIDTH (run source only; "
                    "default: whole images).")
flags.DEFINE_string("window_stride", None, "Window stride HEIGHTxWIDTH (default: 2/3 of the window).")
flags.DEFINE_integer("window_batch", 1, "Windows per network call.")
flags.DEFINE_bool("label_ids", False,
                  "Also write label_ids/<image name>.png with the dataset's own ids (Cityscapes: "
                  "label ids, for cityscapesScripts and the test server).")
flags.DEFINE_integer("max_pixels", None,
                     "Skip images with more pixels (GIF: x frames), read from their headers "
                     "(0: no limit; default 2048x2048, 4096x4096 with --window).")
FLAGS = flags.FLAGS


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) < 2:
        raise app.UsageError("Give image files or directories.")
    results = []

    def run():
        windows = FLAGS.window and Windows.parse(FLAGS.window, FLAGS.window_stride,
                                                 FLAGS.window_batch)
        results.extend(predict_files(
            FLAGS.source, argv[1:], FLAGS.output_dir, FLAGS.output_stride,
            tuple(float(s) for s in FLAGS.scales), FLAGS.flip, FLAGS.max_pixels,
            windows or None, FLAGS.label_ids))

    status = run_reporting_errors(run)
    skipped = sum("skipped" in r for r in results)
    if skipped:
        print(f"{skipped} of {len(results)} images skipped", file=sys.stderr)
    return status or int(skipped > 0)


if __name__ == "__main__":
    app.run(main)
