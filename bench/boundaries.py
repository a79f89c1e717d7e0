"""DeepLabv3 against DeepLabv3+ on the generated scenes: whole-image and trimap mIoU.

  python bench/boundaries.py                   # ~3 min on 2 cores
  python bench/boundaries.py --steps 1200 --workdir /tmp/boundaries

Runs the main job (generated VOC-format data, records, training, evaluation)
twice on the same data with the same seed and steps: once with tiny_voc
(DeepLabv3), once with tiny_voc_plus (the same encoder plus the decoder), each
from random initialisation. Prints, for every evaluation setting, the whole-image
mIoU and the mIoU inside bands of 3, 5 and 10 pixels around label boundaries
(`ops.metrics.boundary_band`), and the training time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import describe_cpu  # noqa: E402

import tensorflow as tf  # noqa: E402

RECIPES = ("tiny_voc", "tiny_voc_plus")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/bench_boundaries")
    parser.add_argument("--steps", type=int, default=None, help="Training steps (the recipe's).")
    args = parser.parse_args()

    from deeplabv3_tf.apps.main_job import MainJobConfig, run_main_job

    print(f"{describe_cpu()}; TensorFlow {tf.__version__}")
    results, seconds = {}, {}
    for recipe in RECIPES:
        workdir = os.path.join(args.workdir, recipe)
        summary = run_main_job(MainJobConfig(workdir=workdir, experiment=recipe,
                                             steps=args.steps), log=lambda _: None)
        with open(os.path.join(summary["artefacts"]["evaluation"], "results.json")) as f:
            results[recipe] = json.load(f)
        seconds[recipe] = summary["seconds"]["training"]
        print(f"{recipe}: trained in {seconds[recipe]:.0f} s", flush=True)
    bands = list(next(iter(results[RECIPES[0]].values()))["trimap"])
    print("\nval mIoU (%), whole image and within w pixels of a label boundary")
    print(f"{'setting':<14}{'model':<16}{'whole':>8}" + "".join(f"{w + ' px':>9}" for w in bands))
    for setting in results[RECIPES[0]]:
        for recipe in RECIPES:
            result = results[recipe][setting]
            cells = [result["miou"]] + [result["trimap"][w]["miou"] for w in bands]
            print(f"{setting:<14}{recipe:<16}" + "".join(
                f"{'n/a' if v is None else f'{100 * v:.2f}':>{8 if i == 0 else 9}}"
                for i, v in enumerate(cells)))


if __name__ == "__main__":
    main()
