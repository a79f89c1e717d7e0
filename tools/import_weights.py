"""Imports published weights of another framework as a run of this package.

  python tools/import_weights.py torchvision --arch deeplabv3_resnet101 \\
      --checkpoint deeplabv3_resnet101_coco-586e9e4e.pth --output_dir runs/tv_deeplabv3_r101
  python tools/import_weights.py torchvision --arch resnet101 \\
      --checkpoint resnet101-cd907fc2.pth --output_dir runs/tv_resnet101

Architectures: deeplabv3_resnet50, deeplabv3_resnet101 (a DeepLabv3 run that
tools/export.py and tools/evaluate.py read), resnet50, resnet101 (a classifier
run whose backbone `--set train.init=DIR` loads). Needs torch:
pip install -r requirements-torch.txt.
"""

from deeplabv3_tf.apps.cli import run_reporting_errors, start_tensorflow

start_tensorflow()  # first: TensorFlow's C++ start-up notices stay hidden

from absl import app, flags, logging  # noqa: E402

from deeplabv3_tf.model.weights.torchvision import ARCHITECTURES  # noqa: E402
from deeplabv3_tf.apps.import_weights import import_torchvision  # noqa: E402

FRAMEWORKS = ("torchvision",)

flags.DEFINE_enum("arch", None, sorted(ARCHITECTURES), "Architecture of the checkpoint.",
                  required=True)
flags.DEFINE_string("checkpoint", None, "The downloaded .pth file.", required=True)
flags.DEFINE_string("output_dir", None, "Run directory to write.", required=True)
flags.DEFINE_integer("output_stride", None,
                     "Output stride to build at (default: 8 for DeepLabv3, as torchvision; "
                     "32 for ResNets).")
flags.DEFINE_bool("overwrite", False, "Replace a non-empty --output_dir.")
FLAGS = flags.FLAGS


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) != 2 or argv[1] not in FRAMEWORKS:
        raise app.UsageError(f"Give the source framework: one of {FRAMEWORKS}.")
    return run_reporting_errors(lambda: import_torchvision(
        FLAGS.arch, FLAGS.checkpoint, FLAGS.output_dir, output_stride=FLAGS.output_stride,
        overwrite=FLAGS.overwrite), extra=(ImportError,))


if __name__ == "__main__":
    app.run(main)
