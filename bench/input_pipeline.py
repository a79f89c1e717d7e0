"""Prints record-building and input-pipeline throughput on VOC-sized JPEGs.

  python bench/input_pipeline.py [--images 200] [--batches 30] [--batch_size 8]

Build: generated 375..500 px JPEG + palette-PNG pairs -> TFRecords with all
cores (images/s). Pipeline: decode + random scale 0.5-2 + pad + 513x513 crop +
flip, batched (training examples/s, and per core).
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from deeplabv3_tf.data import make_dataset  # noqa: E402
from deeplabv3_tf.data.tfrecord_builders import build_voc  # noqa: E402
from deeplabv3_tf.synthetic import write_voc_dataset  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as root:
        info = write_voc_dataset(root, num_train=args.images, num_val=1, with_sbd=False,
                                 size_range=(375, 500))
        small = write_voc_dataset(os.path.join(root, "small"), num_train=8, num_val=1,
                                  with_sbd=False, size_range=(375, 500))
        for workers in sorted({1, cores}):
            # Worker processes are spawned once per process: time that apart.
            start = time.perf_counter()
            build_voc(small["voc_dir"], os.path.join(root, f"small{workers}"),
                      splits=("train",), num_workers=workers, progress=False,
                      log=lambda _: None)
            startup = time.perf_counter() - start
            start = time.perf_counter()
            build_voc(info["voc_dir"], os.path.join(root, f"records{workers}"),
                      splits=("train",), num_workers=workers, progress=False,
                      log=lambda _: None)
            elapsed = time.perf_counter() - start
            print(f"build: {args.images} VOC-sized images, {workers} worker(s): "
                  f"{args.images / elapsed:.1f} images/s (first 8-image build, worker "
                  f"start-up included: {startup:.1f} s)")

        dataset = make_dataset(os.path.join(root, f"records{cores}", "train-*"),
                               training=True, batch_size=args.batch_size,
                               crop_size=(513, 513))
        iterator = iter(dataset)
        for _ in range(3):
            next(iterator)
        start = time.perf_counter()
        for _ in range(args.batches):
            next(iterator)
        elapsed = time.perf_counter() - start
        rate = args.batches * args.batch_size / elapsed
        print(f"pipeline: 513x513 training crops, batch {args.batch_size}: "
              f"{rate:.1f} examples/s on {cores} cores = {rate / cores:.1f} examples/s per core")


if __name__ == "__main__":
    main()
