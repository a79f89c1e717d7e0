"""Builds DeepLabv3, prints its summary, parameters and GMACs, and segments a generated image.

  python tools/demo.py [--output_dir runs/demo] [--depth 101] [--output_stride 16]
"""

from absl import app, flags

from deeplabv3_tf.config import ModelConfig
from deeplabv3_tf.demo import run_model_demo

flags.DEFINE_string("output_dir", "runs/demo", "Where the demo writes its files.")
flags.DEFINE_integer("depth", 101, "ResNet depth (14, 26, 50, 101, 152).")
flags.DEFINE_integer("output_stride", 16, "Output stride: 8, 16 or 32.")
flags.DEFINE_integer("image_size", 513, "Side of the generated square image.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    run_model_demo(
        FLAGS.output_dir,
        ModelConfig(depth=FLAGS.depth, output_stride=FLAGS.output_stride),
        image_size=(FLAGS.image_size, FLAGS.image_size))


if __name__ == "__main__":
    app.run(main)
