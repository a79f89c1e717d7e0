"""Prints images/s and peak memory of a DeepLabv3 training step on this machine's CPU.

  python bench/train_step.py [--depth 101] [--size 321] [--batch 2] [--steps 5]

Runs R101 at output stride 16, once without and once with --jit_compile, each in
its own process (so that peak RSS is that mode's own). Peak memory is the
process's maximum resident set size.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import peak_rss_mib, r101_training_step, run_child  # noqa: E402


def run_mode(args, jit):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    step, _, batch = r101_training_step(
        [f"model.depth={args.depth}", f"train.jit_compile={jit}"], args.size, args.batch)
    start = time.perf_counter()
    float(step(batch)[0])  # trace + compile
    compile_seconds = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        float(step(batch)[0])
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    peak_mb = peak_rss_mib()
    print(json.dumps({"jit_compile": jit, "images_per_second": args.batch / median,
                      "step_seconds": median, "first_step_seconds": compile_seconds,
                      "peak_rss_mb": peak_mb}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=101)
    parser.add_argument("--size", type=int, default=321)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--mode", choices=["plain", "jit"], default=None)
    args = parser.parse_args()
    if args.mode:
        run_mode(args, args.mode == "jit")
        return
    print(f"DeepLabv3-R{args.depth} OS16 training step, {args.size}x{args.size}, batch "
          f"{args.batch}, float32, CPU ({os.cpu_count()} cores), median of {args.steps} steps")
    for mode in ("plain", "jit"):
        r = run_child([sys.executable, __file__, f"--mode={mode}", f"--depth={args.depth}",
                       f"--size={args.size}", f"--batch={args.batch}",
                       f"--steps={args.steps}"], mode)
        if r is None:
            continue
        print(f"jit_compile={str(r['jit_compile']):<5}  {r['images_per_second']:.2f} images/s  "
              f"step {r['step_seconds']:.2f} s  first step {r['first_step_seconds']:.1f} s  "
              f"peak RSS {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
