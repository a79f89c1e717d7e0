"""DeepLabv3 on MobileNetV3-Large beside R101: size, cost and latency at 513x513.

  python bench/mobile.py                          # ~15 min on 2 cores
  python bench/mobile.py --models mobilenetv3 --litert none,int8 --runs 3

For each model (the recipes' graphs, OS16, 21 classes, random weights: speed does
not depend on their values): trainable parameters, GMACs at 513x513 (every tap),
the exported SavedModel's `serving_default` (uint8 pixels in, mask out, BatchNorm
folded) in float32 and bfloat16, and the LiteRT export (tools/export_litert.py's
conversion; int8 calibrated on 4 random images) run by LiteRT's interpreter
(XNNPACK) with 1 and 2 threads. One image a call, median of --runs calls after an
untimed one. Every figure names the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (describe_cpu, litert_seconds, median_seconds,  # noqa: E402
                          random_calibration, random_weights_run, runnable)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

MODELS = ("r101", "mobilenetv3")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--litert", default="none,int8",
                        help="LiteRT quantisations to time ('' for none).")
    args = parser.parse_args()

    from deeplabv3_tf.configs.recipes import voc_mobilenetv3_os16, voc_r101_os16
    from deeplabv3_tf.serving.export import ExportOptions, export_saved_model
    from deeplabv3_tf.serving.litert import LiteRTOptions, convert
    from deeplabv3_tf.model import build_deeplabv3
    from deeplabv3_tf.model.cost import count_macs, count_params
    from deeplabv3_tf.runs import load_trained_model
    from deeplabv3_tf.model.fold import fold_batch_norm

    recipes = {"r101": ("R101", voc_r101_os16), "mobilenetv3": ("MobileNetV3-Large",
                                                                  voc_mobilenetv3_os16)}
    size = (args.size, args.size)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (1, *size, 3), dtype=np.uint8)
    print(f"{describe_cpu()}; TensorFlow {tf.__version__}")
    rows = []
    for key in args.models.split(","):
        name, recipe = recipes[key]
        experiment = recipe()
        config = experiment.model
        inference = build_deeplabv3(config, input_shape=(*size, 3), include_aux=False)
        params, gmacs = count_params(inference), count_macs(inference) / 1e9
        rows.append((name, "parameters / GMACs", "", f"{params:,} / {gmacs:.2f}", ""))
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = random_weights_run(experiment, os.path.join(tmp, "run"))
            for precision in runnable(("float32", "bfloat16")):
                version = export_saved_model(run_dir, os.path.join(tmp, precision),
                                             ExportOptions(precision=precision),
                                             log=lambda _: None)
                signature = tf.saved_model.load(version).signatures["serving_default"]
                seconds = median_seconds(lambda: signature(images=pixels), args.runs)
                rows.append((name, f"SavedModel {precision}", 2, f"{1000 * seconds:.0f}", ""))
                print(f"{name} SavedModel {precision}: {1000 * seconds:.0f} ms", flush=True)
            model, _, _ = load_trained_model(run_dir)
            folded = fold_batch_norm(model, config, "float32")

            calibration = random_calibration(rng, size)
            for quantization in [q for q in args.litert.split(",") if q]:
                content = convert(folded, LiteRTOptions(quantization=quantization,
                                                        input_size=size),
                                  calibration if quantization == "int8" else None)
                for threads in (1, 2):
                    seconds = litert_seconds(content, pixels, args.runs, threads)
                    rows.append((name, f"LiteRT {quantization}", threads,
                                 f"{1000 * seconds:.0f}", f"{len(content) / 1e6:.1f}"))
                print(f"{name} LiteRT {quantization} converted", flush=True)
    print(f"\nDeepLabv3 OS16, {size[0]}x{size[1]}, batch 1, median of {args.runs} calls")
    print(f"{'model':<20} {'what':<22} {'threads':>7} {'ms (or size)':>22} {'MB':>6}")
    for name, what, threads, value, megabytes in rows:
        print(f"{name:<20} {what:<22} {threads!s:>7} {value:>22} {megabytes:>6}")


if __name__ == "__main__":
    main()
