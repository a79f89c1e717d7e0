"""Segments a large image collection on Apache Beam with RunInference over an export.

  python tools/batch_predict.py --saved_model exports/voc/1 --input 'photos/*.jpg' \\
      --output_dir out
  python tools/batch_predict.py --saved_model gs://b/exports/voc/1 --input 'gs://b/frames/*' \\
      --output_dir gs://b/segmented --runner DataflowRunner --beam_pipeline_options \\
      project=p,region=europe-west4,temp_location=gs://b/tmp,requirements_file=requirements.txt

Writes <stem>_mask.png and <stem>_labels.png per image (the files tools/predict.py
writes for the same export), predictions.jsonl (size, classes and their pixel counts)
and rejects.jsonl (images unreadable or over the export's pixel budget: the job goes on).
Needs `pip install -r requirements-beam.txt`.
"""

from deeplabv3_tf.apps.cli import run_reporting_errors, start_tensorflow

start_tensorflow()  # first: TensorFlow's C++ start-up notices stay hidden

from absl import app, flags, logging  # noqa: E402

from deeplabv3_tf.data.tfrecord_builders.beam_shards import RUNNERS, BeamEngine  # noqa: E402
from deeplabv3_tf.serving.batch_predict import batch_predict  # noqa: E402

flags.DEFINE_string("saved_model", None, "SavedModel version directory (tools/export.py's).",
                    required=True)
flags.DEFINE_multi_string("input", None, "Glob pattern or directory of images (repeatable; "
                          "local paths or gs://).", required=True)
flags.DEFINE_string("output_dir", None, "Where the PNGs and the JSON-lines files go.",
                    required=True)
flags.DEFINE_enum("runner", "DirectRunner", list(RUNNERS), "Beam runner.")
flags.DEFINE_list("beam_pipeline_options", [],
                  "Beam pipeline options, comma-separated name=value (as tfds build).")
flags.DEFINE_integer("batch_size", 8, "Most images in one request to the model.")
flags.DEFINE_integer("num_workers", 0, "DirectRunner worker processes (0: all cores).")
FLAGS = flags.FLAGS


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}: images are given by --input.")
    engine = BeamEngine(FLAGS.runner, tuple(
        "--" + option.lstrip("-") for option in FLAGS.beam_pipeline_options))
    return run_reporting_errors(lambda: batch_predict(
        FLAGS.saved_model, FLAGS.input, FLAGS.output_dir, engine, FLAGS.batch_size,
        FLAGS.num_workers or None), extra=(ImportError,))


if __name__ == "__main__":
    app.run(main)
