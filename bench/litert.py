"""LiteRT latency and file size of R101 at 513x513, beside the TensorFlow graph it exports.

  python bench/litert.py                       # ~10 min on 2 cores
  python bench/litert.py --size 257 --runs 5

R101 OS16 (21 classes, random weights: speed does not depend on their values;
int8 calibrated on 4 random images) converted in every quantisation, run by
LiteRT's interpreter (XNNPACK) with 1 and 2 threads, one 513x513 image a call;
beside it the folded inference graph that the SavedModel export serves
(float32 and bfloat16), timed in the same process. Ratios are to that float32
graph. Every figure names the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (describe_cpu, litert_seconds, median_seconds,  # noqa: E402
                          random_calibration, runnable)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quantizations", default="none,float16,dynamic_int8,int8")
    args = parser.parse_args()

    from deeplabv3_tf.configs.recipes import voc_r101_os16
    from deeplabv3_tf.serving.litert import LiteRTOptions, convert
    from deeplabv3_tf.model import build_deeplabv3
    from deeplabv3_tf.model.fold import fold_batch_norm

    print(f"{describe_cpu()}; TensorFlow {tf.__version__}")
    size = (args.size, args.size)
    config = voc_r101_os16().model
    model = build_deeplabv3(config)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (1, *size, 3), dtype=np.uint8)
    rows = []
    for precision in runnable(("float32", "bfloat16")):
        folded = fold_batch_norm(model, config, precision)
        predict = tf.function(lambda x, m=folded: tf.argmax(m(tf.cast(x, tf.float32)), -1))
        seconds = median_seconds(lambda: predict(pixels).numpy(), args.runs)
        rows.append((f"TensorFlow graph {precision}", "", seconds, None))
    float_graph = fold_batch_norm(model, config, "float32")

    calibration = random_calibration(rng, size)
    for quantization in args.quantizations.split(","):
        content = convert(float_graph, LiteRTOptions(quantization=quantization, input_size=size),
                          calibration if quantization == "int8" else None)
        for threads in (1, 2):
            rows.append((f"LiteRT {quantization}", threads,
                         litert_seconds(content, pixels, args.runs, threads), len(content)))
        print(f"converted {quantization}", flush=True)
    reference = rows[0][2]
    print(f"\nR101 OS16, {size[0]}x{size[1]}, batch 1, median of {args.runs} calls")
    print(f"{'model':<28} {'threads':>7} {'ms':>8} {'x float32 graph':>16} {'MB':>7}")
    for name, threads, seconds, size_bytes in rows:
        print(f"{name:<28} {threads!s:>7} {1000 * seconds:>8.0f} {reference / seconds:>16.2f} "
              f"{'' if size_bytes is None else f'{size_bytes / 1e6:.1f}':>7}")


if __name__ == "__main__":
    main()
