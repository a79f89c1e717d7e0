"""The main job: generated (or real) VOC data -> records -> training -> evaluation -> export
-> served predictions, with a summary of where everything is, the mIoU and the time taken.

  python tools/demo.py                          # generated data, tiny_voc, ~minutes on a CPU
  python tools/demo.py --voc_dir VOCdevkit/VOC2012 --sbd_dir benchmark_RELEASE \\
      --experiment voc_r101_os16 --init resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5
  python tools/demo.py --model_only             # build R101, print its summary and cost only
  python tools/demo.py --model_only --experiment voc_mobilenetv3_os16   # that recipe's model
"""

from deeplabv3_tf.apps.cli import start_tensorflow

start_tensorflow()  # first: TensorFlow's C++ start-up notices stay hidden

from absl import app, flags, logging  # noqa: E402

from deeplabv3_tf.apps.demo import run_model_demo  # noqa: E402
from deeplabv3_tf.apps.main_job import MainJobConfig, run_main_job  # noqa: E402

flags.DEFINE_string("workdir", "runs/demo", "Where the job writes everything.")
flags.DEFINE_string("voc_dir", None, "A real VOCdevkit/VOC2012 instead of generated data.")
flags.DEFINE_string("sbd_dir", None, "SBD benchmark_RELEASE: train on train_aug.")
flags.DEFINE_string("experiment", None, "Recipe (default: tiny_voc, or voc_r101_os16 with --voc_dir).")
flags.DEFINE_string("init", None, "Initial weights (ImageNet .h5 for the R101 recipes).")
flags.DEFINE_integer("steps", None, "Training steps (default: the recipe's).")
flags.DEFINE_integer("num_train", 240, "Generated training images.")
flags.DEFINE_integer("num_val", 48, "Generated validation images.")
flags.DEFINE_multi_string("train_flag", [], "Extra tools/train.py flag, e.g. --train_flag=--set=train.batch_size=4.")
flags.DEFINE_bool("model_only", False, "Only build the model (R101, or --experiment's) and "
                  "print its summary, size and cost.")
FLAGS = flags.FLAGS


def main(argv):
    logging.set_verbosity(logging.WARNING)
    del argv
    if FLAGS.model_only:
        run_model_demo(f"{FLAGS.workdir}/model", experiment=FLAGS.experiment)
        return
    experiment = FLAGS.experiment or ("voc_r101_os16" if FLAGS.voc_dir else "tiny_voc")
    run_main_job(MainJobConfig(
        workdir=FLAGS.workdir, voc_dir=FLAGS.voc_dir, sbd_dir=FLAGS.sbd_dir,
        experiment=experiment, init=FLAGS.init, steps=FLAGS.steps, num_train=FLAGS.num_train,
        num_val=FLAGS.num_val, train_flags=tuple(FLAGS.train_flag)))


if __name__ == "__main__":
    app.run(main)
