"""Evaluates a training run: mIoU, per-class IoU and pixel accuracy, CSVs, charts, report.html.

  python tools/evaluate.py --model_dir runs/voc_r101_os16            # the experiment's protocol
  python tools/evaluate.py --model_dir runs/voc_r101_os16 --output_stride 8 \\
      --scales 0.5,0.75,1.0,1.25,1.5,1.75 --flip                    # one setting
  python tools/evaluate.py --model_dir runs/cityscapes_r101_os16 --output_stride 8 \
      --window 769x769 --window_stride 513x513 --window_batch 2     # by sliding windows
"""

from deeplabv3_tf.apps.cli import run_reporting_errors, start_tensorflow

start_tensorflow()  # first: TensorFlow's C++ start-up notices stay hidden

from absl import app, flags, logging  # noqa: E402

from deeplabv3_tf.evaluation.evaluate import evaluate_run  # noqa: E402
from deeplabv3_tf.evaluation.inference import Windows  # noqa: E402

flags.DEFINE_string("model_dir", None, "Training run directory.", required=True)
flags.DEFINE_string("records", None, "Glob of evaluation shards (default: the run's val records).")
flags.DEFINE_string("output_dir", None, "Reports directory (default: <model_dir>/eval).")
flags.DEFINE_integer("output_stride", None, "Inference output stride (8, 16, 32).")
flags.DEFINE_list("scales", None, "Inference scales, e.g. 0.5,0.75,1.0,1.25,1.5,1.75.")
flags.DEFINE_bool("flip", None, "Add left-right flipped inputs.")
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: the latest).")
flags.DEFINE_string("window", None,
                    "Sliding window HEIGHTxWIDTH for every setting run, or 'whole' for "
                    "whole images only (default: the experiment's protocol).")
flags.DEFINE_string("window_stride", None, "Window stride HEIGHTxWIDTH (default: 2/3 of the window).")
flags.DEFINE_integer("window_batch", 1, "Windows per network call.")
flags.DEFINE_integer("report_examples", 6, "Worst and best images per setting on report.html.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
FLAGS = flags.FLAGS


def main(argv):
    logging.set_verbosity(logging.WARNING)
    del argv
    scales = [float(s) for s in FLAGS.scales] if FLAGS.scales else None

    def run():
        windows = None
        if FLAGS.window == "whole":
            windows = False
        elif FLAGS.window:
            windows = Windows.parse(FLAGS.window, FLAGS.window_stride, FLAGS.window_batch)
        return evaluate_run(
            FLAGS.model_dir, FLAGS.output_dir or f"{FLAGS.model_dir}/eval",
            records=FLAGS.records, output_stride=FLAGS.output_stride, scales=scales,
            flip=FLAGS.flip, checkpoint=FLAGS.checkpoint, windows=windows,
            examples=FLAGS.report_examples, progress=FLAGS.progress)

    return run_reporting_errors(run)


if __name__ == "__main__":
    app.run(main)
