"""Prints parameters, analytic GMACs and CPU latency of DeepLabv3-R101 at 513x513.

  python bench/model_cost.py [--runs 5] [--size 513] [--depth 101]

Latency: batch 1, float32, steady state (one untimed call traces the graph),
median of --runs calls of a tf.function on this machine's CPU.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from deeplabv3_tf.model.config import ModelConfig  # noqa: E402
from deeplabv3_tf.model import build_deeplabv3  # noqa: E402
from deeplabv3_tf.model.cost import count_macs, count_params  # noqa: E402


def median_latency_ms(model, size, runs):
    predict = tf.function(lambda x: model(x, training=False))
    images = tf.random.uniform((1, size, size, 3), 0, 255)
    predict(images).numpy()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        predict(images).numpy()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--depth", type=int, default=101)
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores visible, "
          f"input {args.size}x{args.size}, batch 1, float32")
    print(f"{'model':<34}{'params':>14}{'GMACs':>10}{'latency ms':>12}")
    for output_stride in (16, 8):
        for stride_in_1x1 in (False, True):
            config = ModelConfig(depth=args.depth, output_stride=output_stride,
                                 stride_in_1x1=stride_in_1x1)
            model = build_deeplabv3(config, input_shape=(args.size, args.size, 3))
            name = (f"R{args.depth} OS{output_stride} stride in "
                    f"{'1x1' if stride_in_1x1 else '3x3'}")
            print(f"{name:<34}{count_params(model):>14,}"
                  f"{count_macs(model) / 1e9:>10.2f}"
                  f"{median_latency_ms(model, args.size, args.runs):>12.0f}", flush=True)


if __name__ == "__main__":
    main()
