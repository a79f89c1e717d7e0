"""Atrous convolutions, native against by taps (`DEEPLABV3_ATROUS_CONV`), on this CPU.

  python bench/atrous.py [--runs 9] [--dtypes float32,bfloat16] [--whole] [--train]

For each of ASPP's convs (2048 -> 256, 3x3) at output stride 16 (33x33 at
513x513, rates 6/12/18) and 8 (65x65, rates 12/24/36), and the backbone's
dilated 3x3 convs (512 -> 512 at rates 2/4/8 at 33x33, 256 -> 256 at rate 2
at 65x65): the median ms of the native conv and of the taps, calls alternated so
that both see the machine in the same state, and the median over the rounds of
taps / native (`common.median_pair`). With --whole, also the BN-folded
R101 at 513x513, OS16 and OS8, traced once with each implementation (every
atrous conv of the graph), float32 and bfloat16. With --train, also the R101
OS16 training step (321x321, batch 2, float32 and mixed_bfloat16) built once
with each implementation in the same process, steps alternated: with taps, the
forward pass and input gradient of every atrous conv go by taps (the filter
gradient does either way). The first line names the CPU and whether its
bfloat16 kernels run on AMX.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (Pair, describe_cpu, median_pair, r101_training_step,  # noqa: E402
                    runnable)

import tensorflow as tf  # noqa: E402

# (name, size, in channels, out channels, rates)
SHAPES = [("ASPP OS16", 33, 2048, 256, (6, 12, 18)),
          ("ASPP OS8", 65, 2048, 256, (12, 24, 36)),
          ("conv5 OS16", 33, 512, 512, (2, 4, 8)),
          ("conv4 OS8", 65, 256, 256, (2,))]


def single_convs(dtypes, runs):
    from deeplabv3_tf.model.conv_kernels import atrous_conv

    print(f"{'conv':<12}{'dtype':<10}{'size':>6}{'C_in':>6}{'rate':>6}{'native ms':>11}"
          f"{'taps ms':>9}{'taps/native':>13}")
    for dtype in dtypes:
        for name, size, channels, filters, rates in SHAPES:
            x = tf.cast(tf.random.normal((1, size, size, channels), seed=0), dtype)
            kernel = tf.cast(tf.random.normal((3, 3, channels, filters), seed=1) * 0.02, dtype)
            for rate in rates:
                native, taps = (tf.function(lambda impl=impl, rate=rate: atrous_conv(
                    x, kernel, (rate, rate), impl)) for impl in ("native", "taps"))
                pair = median_pair(native, taps, runs)
                print(f"{name:<12}{dtype:<10}{size:>6}{channels:>6}{rate:>6}"
                      f"{pair.first * 1000:>11.1f}{pair.second * 1000:>9.1f}"
                      f"{pair.ratio:>13.2f}", flush=True)


@contextlib.contextmanager
def implementation(name: str):
    """DEEPLABV3_ATROUS_CONV set to `name` while graphs are traced (it is read then)."""
    from deeplabv3_tf.model.conv_kernels import ENVIRONMENT_VARIABLE

    previous = os.environ.get(ENVIRONMENT_VARIABLE)
    os.environ[ENVIRONMENT_VARIABLE] = name
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENVIRONMENT_VARIABLE, None)
        else:
            os.environ[ENVIRONMENT_VARIABLE] = previous


def print_pair(name: str, pair: Pair | None = None) -> None:
    """A row of milliseconds, native then taps, and the median of their ratio; the
    header without `pair`."""
    if pair is None:
        print(f"{name:<32}{'native ms':>11}{'taps ms':>9}{'taps/native':>13}")
        return
    print(f"{name:<32}{pair.first * 1000:>11.0f}{pair.second * 1000:>9.0f}"
          f"{pair.ratio:>13.2f}", flush=True)


def whole_graphs(dtypes, runs):
    from deeplabv3_tf.model.config import ModelConfig
    from deeplabv3_tf.model import build_deeplabv3
    from deeplabv3_tf.model.fold import fold_batch_norm

    image = tf.random.uniform((1, 513, 513, 3), 0, 255, seed=0)
    print_pair("R101 513x513, BN folded")
    for output_stride in (16, 8):
        config = ModelConfig(output_stride=output_stride)
        model = build_deeplabv3(config)
        for dtype in dtypes:
            graph = fold_batch_norm(model, config, dtype)
            calls = []
            for name in ("native", "taps"):
                with implementation(name):
                    function = tf.function(lambda x, graph=graph: graph(x, training=False))
                    function(image)
                calls.append(lambda function=function: function(image))
            print_pair(f"OS{output_stride} {dtype}", median_pair(*calls, max(1, runs // 3)))


def training_steps(dtypes, runs):
    import keras

    print_pair("R101 OS16 step, 321x321 x 2")
    for dtype in dtypes:
        policy = "mixed_bfloat16" if dtype == "bfloat16" else "float32"
        calls = []
        for name in ("native", "taps"):
            with implementation(name):
                step, _, batch = r101_training_step([f"train.precision={policy!r}"])
                step(batch)  # traced here, with this implementation
            calls.append(lambda step=step, batch=batch: step(batch)[0])
        print_pair(policy, median_pair(*calls, runs))
    keras.config.set_dtype_policy("float32")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--whole", action="store_true")
    parser.add_argument("--train", action="store_true")
    args = parser.parse_args()
    dtypes = runnable(args.dtypes.split(","))
    print(describe_cpu())
    single_convs(dtypes, args.runs)
    if args.whole:
        whole_graphs(dtypes, args.runs)
    if args.train:
        training_steps(dtypes, args.runs)


if __name__ == "__main__":
    main()
