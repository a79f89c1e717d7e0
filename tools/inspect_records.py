"""Looks at segmentation records: per-class counts, sizes, sampled examples, label warnings.

  python tools/inspect_records.py 'records/voc/train_aug-*' 'records/voc/val-*' \\
      --output_dir runs/inspect_voc --crop_size 513x513

Writes <output_dir>/index.html (open it from disk) and summary.json, and prints
the warnings. Each glob is one split; images found in two splits are reported.
"""

from deeplabv3_tf.apps.cli import run_reporting_errors, start_tensorflow

start_tensorflow()  # first: TensorFlow's C++ start-up notices stay hidden

from absl import app, flags, logging  # noqa: E402

from deeplabv3_tf.pages.records_page import inspect_records  # noqa: E402
from deeplabv3_tf.evaluation.inference import parse_size  # noqa: E402

flags.DEFINE_string("output_dir", None, "Where index.html and its pictures go.", required=True)
flags.DEFINE_string("crop_size", None, "Training crop HEIGHTxWIDTH to compare image sizes with.")
flags.DEFINE_integer("num_classes", None, "Class count (default: the manifest's, or inferred "
                     "from the largest label value).")
flags.DEFINE_integer("ignore_label", None, "Ignore label (default: the manifest's, or 255).")
flags.DEFINE_integer("samples", 24, "Examples per split on the contact sheet.")
flags.DEFINE_integer("seed", 0, "Seed of the example sampling.")
flags.DEFINE_integer("max_examples", 0, "Read at most this many examples per split (0: all).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
FLAGS = flags.FLAGS


def main(argv):
    logging.set_verbosity(logging.WARNING)
    patterns = argv[1:]
    if not patterns:
        raise app.UsageError("Give one shard glob per split, e.g. 'records/voc/train-*'.")

    def run():
        crop = parse_size(FLAGS.crop_size, "--crop_size") if FLAGS.crop_size else None
        inspect_records(patterns, FLAGS.output_dir, crop_size=crop,
                        num_classes=FLAGS.num_classes, ignore_label=FLAGS.ignore_label,
                        samples=FLAGS.samples, seed=FLAGS.seed,
                        max_examples=FLAGS.max_examples, progress=FLAGS.progress)

    return run_reporting_errors(run)


if __name__ == "__main__":
    app.run(main)
