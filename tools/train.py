"""Trains a named experiment (recipe), resuming from model_dir if it holds a checkpoint.

The number of classes and the dataset's names, colours and label ids come from the
training records' manifest unless --set gives them.

  python tools/train.py --experiment voc_r101_os16 --model_dir runs/voc_r101_os16 \\
      --init resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5
  python tools/train.py --experiment tiny_voc --set train.steps=100 --set data.crop_size=(65,65)

Recipes: `--helpfull` lists them (`deeplabv3_tf/configs/recipes.py`; README, "Recipes").
"""

from deeplabv3_tf.apps.cli import run_reporting_errors, start_tensorflow

start_tensorflow()  # first: TensorFlow's C++ start-up notices stay hidden

import json  # noqa: E402

import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from deeplabv3_tf.configs.recipes import RECIPES, get_recipe  # noqa: E402
from deeplabv3_tf.configs.experiment import FLAG_FIELDS, STRATEGIES, resolve_experiment  # noqa: E402
from deeplabv3_tf.core.precision import TRAINING_PRECISIONS  # noqa: E402
from deeplabv3_tf.training.trainer import train  # noqa: E402

flags.DEFINE_enum("experiment", "voc_r101_os16", sorted(RECIPES), "Recipe to train.")
flags.DEFINE_string("model_dir", None, "Run directory (default: runs/<experiment>).")
flags.DEFINE_string("train_records", None, "Glob of training shards (data.train_records).")
flags.DEFINE_string("val_records", None, "Glob of validation shards (data.val_records).")
flags.DEFINE_string("init", None, "ImageNet .h5 or a run directory to start from (train.init).")
flags.DEFINE_integer("steps", None, "Training steps (train.steps).")
flags.DEFINE_integer("batch_size", None, "Global batch size (train.batch_size).")
flags.DEFINE_float("learning_rate", None, "Base learning rate (train.learning_rate).")
flags.DEFINE_integer("output_stride", None, "Training output stride (model.output_stride).")
flags.DEFINE_enum("precision", None, list(TRAINING_PRECISIONS),
                  "Dtype policy (train.precision); mixed_bfloat16 is refused where the CPU "
                  "has no bfloat16 kernels.")
flags.DEFINE_enum("strategy", None, list(STRATEGIES),
                  "Distribution strategy (train.strategy).")
flags.DEFINE_bool("jit_compile", None, "XLA-compile training steps (train.jit_compile).")
flags.DEFINE_float("top_k_percent_pixels", None,
                   "Hard-pixel mining: the loss keeps this share (0, 1] of each image's hardest "
                   "valid pixels (train.top_k_percent_pixels; default 1.0, off).")
flags.DEFINE_integer("hard_example_mining_step", None,
                     "Steps over which that share falls from 1 to --top_k_percent_pixels "
                     "(train.hard_example_mining_step; 0: at once).")
flags.DEFINE_multi_string("set", [], "Any field: section.field=value, e.g. data.crop_size=(321,321).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool("deterministic_ops", False,
                  "tf.config.experimental.enable_op_determinism(): bitwise-reproducible runs.")
FLAGS = flags.FLAGS


def _assignments() -> list[str]:
    """The one-field flags given (`--steps 100`), as `--set` assignments."""
    return [f"{field}={getattr(FLAGS, name)!r}" for name, field in FLAG_FIELDS.items()
            if getattr(FLAGS, name) is not None]


def main(argv):
    logging.set_verbosity(logging.WARNING)
    del argv
    if FLAGS.deterministic_ops:
        tf.config.experimental.enable_op_determinism()
    assignments = _assignments()

    def run():
        # Classes, names and colours come from the training records unless --set.
        experiment = resolve_experiment(get_recipe(FLAGS.experiment), assignments + FLAGS.set)
        result = train(experiment, FLAGS.model_dir or f"runs/{experiment.name}",
                       progress=FLAGS.progress)
        print(json.dumps(result.summary()))

    # A NaN loss is reported in one line too: its message names the step and checkpoint.
    return run_reporting_errors(run, extra=(FloatingPointError,))


if __name__ == "__main__":
    app.run(main)
