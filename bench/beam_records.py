"""Records built on Apache Beam (DirectRunner) against the local builder, in one run.

  python bench/beam_records.py                 # ~1 min on 2 cores
  python bench/beam_records.py --images 300 --repeats 2

Generates a VOC-sized dataset (JPEGs of 375-500 pixels a side, palette PNGs with
void bands), then builds its train split with the local builder (`--num_workers`
processes) and with the Beam builder (DirectRunner, multi_processing, the same
number of workers) into 4 shards, each --repeats times; prints images per second
(the fastest build of each, start-up included) and checks that the shards are
byte-identical. Every figure names the CPU.
"""

from __future__ import annotations

import argparse
import filecmp
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import describe_cpu  # noqa: E402

import tensorflow as tf  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    from deeplabv3_tf.data.synthetic import write_voc_dataset
    from deeplabv3_tf.data.tfrecord_builders.beam_shards import BeamEngine
    from deeplabv3_tf.data.tfrecord_builders.voc import build_voc

    print(f"{describe_cpu()}; TensorFlow {tf.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        info = write_voc_dataset(os.path.join(tmp, "voc"), num_train=args.images, num_val=2,
                                 with_sbd=False, size_range=(375, 500))
        engines = {"local": None,
                   "beam": BeamEngine("DirectRunner", (f"--direct_num_workers={args.workers}",))}
        rates = {}
        for name, engine in engines.items():
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                build_voc(info["voc_dir"], os.path.join(tmp, name), splits=("train",),
                          num_shards=4, num_workers=args.workers, engine=engine, progress=False,
                          log=lambda _: None)
                best = min(best, time.perf_counter() - start)
            rates[name] = args.images / best
            print(f"{name}: {best:.1f} s, {rates[name]:.1f} images/s", flush=True)
        shards = sorted(os.path.basename(p) for p in glob.glob(os.path.join(tmp, "local", "*.tfrecord")))
        same = all(filecmp.cmp(os.path.join(tmp, "local", s), os.path.join(tmp, "beam", s),
                               shallow=False) for s in shards)
    print(f"\n{args.images} VOC-sized images (375-500 px a side), 4 shards, {args.workers} workers")
    print(f"local builder     {rates['local']:7.1f} images/s")
    print(f"Beam DirectRunner {rates['beam']:7.1f} images/s ({rates['beam'] / rates['local']:.2f}x)")
    print(f"shards byte-identical: {same}")


if __name__ == "__main__":
    main()
