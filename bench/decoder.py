"""DeepLabv3 against DeepLabv3+: parameters, GMACs and latency at 513x513, in one run.

  python bench/decoder.py                      # ~15 min on 2 cores
  python bench/decoder.py --size 257 --runs 2 --models mobilenet_os16

For R101 at output strides 16 and 8 and MobileNetV3-Large at 16 (the recipes'
models, 21 classes, random weights: speed does not depend on their values),
each without the decoder, with it and with its separable convs
(`model.decoder_separable`): trainable parameters and analytic GMACs of the
inference graph (`model.cost.count_macs`, every tap; no auxiliary head), the
latency of the exported SavedModel's serving_default signature (uint8 pixels in,
classes out; BatchNorm folded, float32; batch 1) and of the LiteRT float32 file
converted from the same graph (XNNPACK, 2 threads). Median of --runs
calls after one untimed call. Every figure names the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (describe_cpu, litert_seconds, median_seconds,  # noqa: E402
                          random_weights_run)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def experiments():
    """{key: (DeepLabv3, DeepLabv3+, DeepLabv3+ separable) experiments}."""
    from deeplabv3_tf.configs.recipes import (
        voc_mobilenetv3_os16, voc_mobilenetv3_plus_os16, voc_r101_os16, voc_r101_plus_os16)

    def variants(plain, plus, **changes):
        plain, plus = (dataclasses.replace(e, model=dataclasses.replace(e.model, **changes))
                       for e in (plain, plus))
        separable = dataclasses.replace(plus, model=dataclasses.replace(
            plus.model, decoder_separable=True))
        return plain, plus, separable

    return {"r101_os16": variants(voc_r101_os16(), voc_r101_plus_os16()),
            "r101_os8": variants(voc_r101_os16(), voc_r101_plus_os16(), output_stride=8),
            "mobilenet_os16": variants(voc_mobilenetv3_os16(), voc_mobilenetv3_plus_os16())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", default="r101_os16,r101_os8,mobilenet_os16")
    parser.add_argument("--no_litert", action="store_true", help="Leave LiteRT out.")
    args = parser.parse_args()

    from deeplabv3_tf.model import build_deeplabv3
    from deeplabv3_tf.model.cost import count_macs, count_params
    from deeplabv3_tf.model.fold import fold_batch_norm
    from deeplabv3_tf.runs import load_trained_model
    from deeplabv3_tf.serving.export import export_saved_model
    from deeplabv3_tf.serving.litert import LiteRTOptions, convert

    print(f"{describe_cpu()}; TensorFlow {tf.__version__}")
    size = (args.size, args.size)
    pixels = np.random.default_rng(0).integers(0, 255, (1, *size, 3), dtype=np.uint8)
    print(f"{args.size}x{args.size}, batch 1, float32, median of {args.runs} calls")
    print(f"{'model':<38}{'params':>13}{'GMACs':>9}{'SavedModel ms':>15}{'LiteRT ms':>11}")
    available = experiments()
    for key in args.models.split(","):
        for experiment in available[key]:
            config = experiment.model
            inference = build_deeplabv3(config, input_shape=(*size, 3), include_aux=False)
            params, gmacs = count_params(inference), count_macs(inference) / 1e9
            with tempfile.TemporaryDirectory() as tmp:
                run_dir = random_weights_run(experiment, os.path.join(tmp, "run"))
                version = export_saved_model(run_dir, os.path.join(tmp, "export"),
                                             log=lambda _: None)
                signature = tf.saved_model.load(version).signatures["serving_default"]
                served = median_seconds(lambda: signature(images=pixels), args.runs)
                lite = float("nan")
                if not args.no_litert:
                    model, _, _ = load_trained_model(run_dir)
                    content = convert(fold_batch_norm(model, config, "float32"),
                                      LiteRTOptions(quantization="none", input_size=size))
                    lite = litert_seconds(content, pixels, args.runs, 2)
            name = (f"{config.architecture_name} {config.backbone_name} "
                    f"OS{config.output_stride}" + (" sep." if config.decoder_separable else ""))
            print(f"{name:<38}{params:>13,}{gmacs:>9.2f}{1000 * served:>15.0f}"
                  f"{1000 * lite:>11.0f}", flush=True)


if __name__ == "__main__":
    main()
