"""Resident memory of a process serving the exported SavedModel.

  python bench/serving_memory.py                       # both sections, ~15 min on 2 cores
  python bench/serving_memory.py --sections budget --sides 1024,2048,2896
  python bench/serving_memory.py --sections requests --requests 1000

budget:   R101 exported at output stride 16 and at 8 (float32, BatchNorm folded,
          random weights: memory does not depend on their values) answering one
          `encoded_image` request of one side x side JPEG, and `multiscale_flip`
          (OS16, 6 scales + flip) one image: the process's peak resident memory
          (VmHWM) and how much the request added to it; what --max_pixels'
          default is chosen from. Then the same at output stride 8 exported with
          769x769 sliding windows (--windowed_sides): what the windowed
          default budget is chosen from.
requests: the tiny and the R101 (OS16) exports answering N `encoded_image`
          requests of random sizes (64 to 700 pixels a side): resident memory
          after 1, 10, 100, ... requests (it must level off).

Each measurement runs in a fresh process that loads the SavedModel as a server
does, so that nothing else is counted. Every figure names the CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import describe_cpu, peak_rss_mib, rss_mib, run_child  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def jpeg(height: int, width: int, seed: int) -> bytes:
    """A JPEG with some structure (smooth colour fields), as photos compress."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(height // 32, 2), max(width // 32, 2), 3), np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def child_budget(path: str, side: int, signature_name: str = "encoded_image") -> dict:
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures[signature_name]
    if signature_name == "encoded_image":
        call = lambda data: signature(images=tf.constant([data]))  # noqa: E731
        warm, data = jpeg(64, 48, 0), jpeg(side, side, 1)
    else:
        from PIL import Image

        call = lambda data: signature(images=tf.constant(data[None]))  # noqa: E731
        warm = np.zeros((48, 64, 3), np.uint8)
        data = np.asarray(Image.open(io.BytesIO(jpeg(side, side, 1))))
    call(warm)  # warm-up, as TF Serving does
    before = rss_mib()
    start = time.perf_counter()
    out = call(data)
    seconds = time.perf_counter() - start
    assert out["semantic"].shape == (1, side, side)
    peak = peak_rss_mib()
    return {"loaded": before, "peak": peak, "added": peak - before, "seconds": seconds}


def child_requests(path: str, requests: int) -> dict:
    signature = tf.saved_model.load(path).signatures["encoded_image"]
    rng = np.random.default_rng(0)
    marks = {1, 10, 100} | set(range(200, requests + 1, 200)) | {requests}
    seen = {0: rss_mib()}
    start = time.perf_counter()
    for k in range(1, requests + 1):
        height, width = (int(v) for v in rng.integers(64, 701, 2))
        out = signature(images=tf.constant([jpeg(height, width, k)]))
        assert out["semantic"].shape == (1, height, width)
        if k in marks:
            seen[k] = rss_mib()
    return {"rss": seen, "peak": peak_rss_mib(), "seconds": time.perf_counter() - start}


def _run_dir(tmp: str, name: str, recipe: str) -> str:
    from deeplabv3_tf.configs.recipes import get_recipe
    from deeplabv3_tf.configs.experiment import override
    from deeplabv3_tf.runs import save_experiment
    from deeplabv3_tf.model import build_deeplabv3

    run_dir = os.path.join(tmp, name)
    experiment = override(get_recipe(recipe), ["train.init=''"])
    save_experiment(experiment, run_dir)
    tf.train.Checkpoint(model=build_deeplabv3(experiment.model)).save(
        os.path.join(run_dir, "ckpt"))
    return run_dir


def _export(run_dir: str, export_dir: str, output_stride: int | None = None,
            window: int = 0) -> str:
    from deeplabv3_tf.serving.export import ExportOptions, export_saved_model
    from deeplabv3_tf.evaluation.inference import Windows

    # No budget: the measurement itself decides where it should be.
    return export_saved_model(run_dir, export_dir, ExportOptions(
        output_stride=output_stride, max_pixels=0,
        window=Windows((window, window)) if window else None), log=lambda _: None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="budget,requests")
    parser.add_argument("--sides", default="1024,2048")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--multiscale_side", type=int, default=2048,
                        help="Also measure multiscale_flip (OS16) at this side (0: no).")
    parser.add_argument("--windowed_sides", default="2048,4096",
                        help="Sides answered by the OS8 export with 769x769 windows ('' for none).")
    parser.add_argument("--child_budget", nargs=3)
    parser.add_argument("--child_requests", nargs=2)
    args = parser.parse_args()
    if args.child_budget:
        path, side, name = args.child_budget
        print(json.dumps(child_budget(path, int(side), name)))
        return
    if args.child_requests:
        print(json.dumps(child_requests(args.child_requests[0], int(args.child_requests[1]))))
        return

    sections = args.sections.split(",")
    print(f"{describe_cpu()}; TensorFlow {tf.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        r101 = _run_dir(tmp, "r101", "voc_r101_os16")
        if "budget" in sections:
            print("\nR101 export answering one side x side image (encoded_image: a JPEG; "
                  "multiscale_flip: its pixels as uint8) (resident memory, MiB)")
            print(f"{'signature':<16}{'stride':>6} {'side':>6} {'pixels':>10} {'loaded':>8} "
                  f"{'peak':>8} {'added':>8} {'bytes/pixel':>12} {'seconds':>8}", flush=True)
            sides = [side for side in args.sides.split(",") if side]
            cases = [(stride, side, "encoded_image", 0) for stride in (16, 8) for side in sides]
            if args.multiscale_side:
                cases.append((16, args.multiscale_side, "multiscale_flip", 0))
            cases += [(8, side, "encoded_image", 769)
                      for side in args.windowed_sides.split(",") if side]
            paths = {}
            for stride, side, name, window in cases:
                if (stride, window) not in paths:
                    paths[stride, window] = _export(
                        r101, os.path.join(tmp, f"r101_os{stride}_w{window}"), stride, window)
                side = int(side)
                r = run_child([sys.executable, __file__, "--child_budget", paths[stride, window],
                               str(side), name], f"{name} OS{stride} {side}")
                if r is None:
                    continue
                if window:
                    name = f"{name} {window}w"
                print(f"{name:<16}{stride:>6} {side:>6} {side * side:>10} {r['loaded']:>8.0f} "
                      f"{r['peak']:>8.0f} {r['added']:>8.0f} "
                      f"{r['added'] * 2**20 / side**2:>12.0f} {r['seconds']:>8.1f}", flush=True)
        if "requests" in sections:
            tiny = _run_dir(tmp, "tiny", "tiny_voc")
            for name, run_dir in (("tiny_voc", tiny), ("R101 OS16", r101)):
                path = _export(run_dir, os.path.join(tmp, f"{name[:4]}_requests"))
                r = run_child([sys.executable, __file__, "--child_requests", path,
                               str(args.requests)], name)
                if r is None:
                    continue
                marks = ", ".join(f"{k}: {v:.0f}" for k, v in r["rss"].items())
                print(f"\n{name}: {args.requests} encoded_image requests of random sizes "
                      f"(64-700 a side) in {r['seconds']:.0f} s; resident MiB after n "
                      f"requests: {marks}; peak {r['peak']:.0f}", flush=True)


if __name__ == "__main__":
    main()
