"""Batch prediction on Beam (RunInference) against tools/predict.py, in one run.

  python bench/batch_predict.py                # ~3 min on 2 cores
  python bench/batch_predict.py --images 60 --recipe tiny_voc

Exports a recipe's model with random weights (speed does not depend on their
values; default DeepLabv3-MobileNetV3-Large), generates VOC-sized JPEGs (375-500
pixels a side) and segments them twice: with `predict_files` (what
tools/predict.py runs: one image at a time, in this process) and with
`batch_predict` (DirectRunner, multi_processing, --workers processes, batches of
--batch_size). Prints images per second, start-up included, and whether the
label PNGs are identical. Every figure names the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import describe_cpu, random_weights_run  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="voc_mobilenetv3_os16")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=4)
    args = parser.parse_args()

    from deeplabv3_tf.configs.recipes import get_recipe
    from deeplabv3_tf.data.synthetic import write_voc_dataset
    from deeplabv3_tf.data.tfrecord_builders.beam_shards import BeamEngine
    from deeplabv3_tf.serving.batch_predict import batch_predict
    from deeplabv3_tf.serving.export import export_saved_model
    from deeplabv3_tf.serving.predict import predict_files

    print(f"{describe_cpu()}; TensorFlow {tf.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        run = random_weights_run(get_recipe(args.recipe), os.path.join(tmp, "run"))
        export = export_saved_model(run, os.path.join(tmp, "export"), log=lambda _: None)
        info = write_voc_dataset(os.path.join(tmp, "voc"), num_train=args.images, num_val=1,
                                 with_sbd=False, size_range=(375, 500))
        images = os.path.join(info["voc_dir"], "JPEGImages")
        start = time.perf_counter()
        local = predict_files(export, [images], os.path.join(tmp, "local"), log=lambda _: None)
        local_seconds = time.perf_counter() - start
        engine = BeamEngine("DirectRunner", (f"--direct_num_workers={args.workers}",))
        start = time.perf_counter()
        summary = batch_predict(export, [images], os.path.join(tmp, "beam"), engine,
                                args.batch_size, log=lambda _: None)
        beam_seconds = time.perf_counter() - start
        same = all(np.array_equal(
            np.asarray(Image.open(r["outputs"]["labels"])),
            np.asarray(Image.open(os.path.join(tmp, "beam", os.path.basename(
                r["outputs"]["labels"]))))) for r in local)
    count = summary["images"]
    print(f"\n{args.recipe} (random weights), {count} VOC-sized JPEGs (375-500 px a side)")
    print(f"tools/predict.py (one image a call)          {count / local_seconds:6.2f} images/s")
    print(f"batch_predict (DirectRunner, {args.workers} workers, batch {args.batch_size}) "
          f"{count / beam_seconds:6.2f} images/s ({local_seconds / beam_seconds:.2f}x)")
    print(f"label PNGs identical: {same}")


if __name__ == "__main__":
    main()
