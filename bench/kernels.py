"""Where one DeepLabv3 call spends its time in oneDNN, kernel by kernel.

  python bench/kernels.py [--precision bfloat16|float32] [--output_stride 16]
      [--size 513] [--graph folded|trained|frozen|export] [--train] [--serial]
      [--top 15]

Runs the call in a child process with `ONEDNN_VERBOSE=1`, warms it up, and reads
oneDNN's own timing of every primitive of one timed call (the lines between two
markers the child writes around it). Prints:
  - the wall time and the share of it inside oneDNN;
  - time by primitive kind and implementation: `brg_conv_fwd:avx512_core_amx`
    means AMX, `:avx512_core_bf16` AVX512_BF16, `:avx512_core` plain AVX-512;
  - the slowest shapes, each with its GFLOP/s (every tap counted) and that as a
    share of this process's matmul peak in the same dtype, so a kernel running
    far below the peak stands out;
  - weight reorders (a conv filter or matmul weight copied into a kernel's
    layout on every call), in number and milliseconds.

Graphs: `folded` the BN-folded inference graph (what the export serves),
`trained` the trained graph, `frozen` the folded graph with its weights as
constants (`frozen_graph` below), `export` the exported
SavedModel's serving_default. `--train` times a training step instead (R101
OS16, 321x321, batch 2; mixed_bfloat16 for --precision bfloat16).
With `--serial` (inter-op parallelism 1) independent ops do not run side by
side, so the kernel times add up to the wall time less what runs outside oneDNN;
without it they overlap (the ASPP branches, the gradients).
"""

from __future__ import annotations

import argparse
import atexit
import collections
import ctypes
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import describe_cpu, matmul_peak_gflops, r101_training_step, random_weights_run  # noqa: E402

START, END = "@@kernels-start@@", "@@kernels-end@@"
# A reorder from TensorFlow's HWIO filter layout ("cdba" in oneDNN's OIHW terms) is a
# conv filter copied into a kernel's own layout.
WEIGHT_SOURCE = "src:bf16::blocked:cdba:", "src:f32::blocked:cdba:"


def parse_shape_flops(kind: str, shape: str) -> float | None:
    """FLOPs (2 x MACs, every tap) of a convolution or matmul from its verbose shape.

    Convolutions: "g2mb1_ic2048oc256_ih33oh33kh3sh1dh5ph6_iw33ow33kw3sw1dw5pw6" (the
    same count for forward, backward data and backward weights). Matmuls:
    "882x1024:1024x256" or with batch dimensions "2x882x1024:2x1024x256".
    """
    if kind == "convolution":
        fields = dict((k, int(v)) for k, v in re.findall(r"([a-z]+)(\d+)", shape))
        try:
            return 2.0 * (fields.get("mb", 1) * fields["ic"] * fields["oc"] / fields.get("g", 1)
                          * fields["oh"] * fields.get("ow", 1) * fields["kh"]
                          * fields.get("kw", 1))
        except KeyError:
            return None
    if kind in ("matmul", "gemm_api"):
        try:
            a, b = (tuple(int(v) for v in part.split("x")) for part in shape.split(":")[:2])
        except ValueError:
            return None
        batch = math.prod(a[:-2]) if len(a) > 2 else 1
        return 2.0 * batch * a[-2] * a[-1] * b[-1]
    return None


def summarise(lines: list[str], wall: float, peaks: dict[str, float], top: int) -> None:
    by_impl, by_shape, flops = collections.Counter(), collections.Counter(), {}
    calls = collections.Counter()
    count, reorders, reorder_ms = 0, 0, 0.0
    for kind, impl, prop, shape, ms, line in executions(lines):
        dtype = "bfloat16" if "bf16" in line else "float32"
        by_impl[(kind, impl, prop)] += ms
        by_shape[(kind, impl, prop, shape, dtype)] += ms
        calls[(kind, impl, prop, shape, dtype)] += 1
        flops.setdefault((kind, shape), parse_shape_flops(kind, shape))
        count += 1
        if kind == "reorder" and is_weight_reorder(line):
            reorders += 1
            reorder_ms += ms
    total = sum(by_impl.values())
    print(f"wall {wall * 1000:.0f} ms; oneDNN {total:.0f} ms in {count} primitive calls "
          f"({total / max(wall * 1000, 1e-9):.0%} of wall)")
    print(f"weight reorders: {reorders} calls, {reorder_ms:.1f} ms")
    print("by kind and implementation:")
    for (kind, impl, prop), ms in by_impl.most_common(top):
        print(f"  {ms:8.1f} ms {ms / max(total, 1e-9):6.1%}  {kind:<13} {impl:<44} {prop}")
    print("slowest shapes (GFLOP/s every tap counted, and as % of the matmul peak):")
    for key, ms in by_shape.most_common(top):
        kind, impl, prop, shape, dtype = key
        f = flops.get((kind, shape))
        rate = ""
        if f and ms > 0:
            gflops = calls[key] * f / (ms / 1000) / 1e9
            rate = f"{gflops:6.0f} GFLOP/s {100 * gflops / peaks[dtype]:4.0f}%"
        print(f"  {ms:8.1f} ms x{calls[key]:<3} {rate:<22} {kind[:5]:<5} {prop[:16]:<16} "
              f"{impl[:32]:<32} {shape[:80]}")


def marked_call(run, warmup: int) -> None:
    """Calls `run` `warmup` times, then once between two markers on stdout, the
    second with the wall time.

    oneDNN writes its verbose lines through C's stdio: flushing it before each
    marker keeps them on the right side (`marked_lines` reads them back)."""
    for _ in range(warmup):
        run()
    libc = ctypes.CDLL(None)
    libc.fflush(None)
    os.write(1, f"\n{START}\n".encode())
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    libc.fflush(None)
    os.write(1, f"\n{END} {wall}\n".encode())


def marked_lines(stdout: str) -> tuple[list[str], float] | None:
    """The lines between `marked_call`'s markers and its wall time in seconds; None
    when the markers are missing (the child failed)."""
    lines = stdout.splitlines()
    try:
        first = lines.index(START)
        last = next(i for i, line in enumerate(lines) if line.startswith(END))
    except (ValueError, StopIteration):
        return None
    return lines[first + 1:last], float(lines[last].split()[1])


def executions(lines: list[str]):
    """(kind, implementation, propagation, shape, milliseconds, line) of every oneDNN
    primitive execution among verbose `lines` (TensorFlow's and torch's oneDNN alike)."""
    for line in lines:
        fields = line.split(",")
        if len(fields) < 8 or fields[0] != "onednn_verbose" or "exec" not in fields:
            continue
        try:
            ms = float(fields[-1])
        except ValueError:
            continue
        i = fields.index("exec")
        yield fields[i + 2], fields[i + 3], fields[i + 4], fields[-2], ms, line


def is_weight_reorder(line: str) -> bool:
    return any(f in line for f in WEIGHT_SOURCE)


def frozen_graph(model, shape):
    """`model(x, training=False)` for x [1, *shape] as a concrete function whose
    weights are graph constants (oneDNN keeps the filters it reordered)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)

    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, *shape], tf.float32))
    frozen = convert_variables_to_constants_v2(function)
    return lambda x: frozen(x)[0]


def child(args) -> None:
    import numpy as np
    import tensorflow as tf

    if args.serial:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if args.train:
        precision = "mixed_bfloat16" if args.precision == "bfloat16" else "float32"
        step, _, batch = r101_training_step([f"train.precision={precision!r}"])

        def run():
            return float(step(batch)[0])
    else:
        from deeplabv3_tf.model.config import ModelConfig
        from deeplabv3_tf.model import build_deeplabv3
        from deeplabv3_tf.model.fold import fold_batch_norm

        config = ModelConfig(output_stride=args.output_stride)
        image = tf.random.uniform((1, args.size, args.size, 3), 0, 255, seed=0)
        if args.graph == "export":
            from deeplabv3_tf.configs.experiment import override
            from deeplabv3_tf.configs.recipes import voc_r101_os16
            from deeplabv3_tf.serving.export import ExportOptions, export_saved_model

            tmp = tempfile.mkdtemp()  # an R101 run and its export: removed when the child ends
            atexit.register(shutil.rmtree, tmp, ignore_errors=True)
            experiment = override(voc_r101_os16(), [f"model.output_stride={args.output_stride}"])
            run_dir = random_weights_run(experiment, os.path.join(tmp, "run"))
            exported = tf.saved_model.load(export_saved_model(
                run_dir, os.path.join(tmp, "export"), ExportOptions(precision=args.precision),
                log=lambda _: None))
            pixels = tf.cast(image, tf.uint8)
            signature = exported.signatures["serving_default"]

            def run():
                return signature(images=pixels)
        else:
            model = build_deeplabv3(config)
            if args.graph == "trained":
                graph = model
            else:
                graph = fold_batch_norm(model, config, args.precision)
            function = tf.function(lambda x: graph(x, training=False))
            if args.graph == "frozen":
                function = frozen_graph(graph, image.shape[1:])

            def run():
                return function(image)
    marked_call(lambda: np.asarray(run()), warmup=3)
    libc = ctypes.CDLL(None)
    peaks = {"float32": matmul_peak_gflops(tf.float32, runs=3),
             "bfloat16": matmul_peak_gflops(tf.bfloat16, runs=3)}
    libc.fflush(None)
    os.write(1, f"\n@@peaks@@ {peaks['float32']} {peaks['bfloat16']}\n".encode())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--output_stride", type=int, default=16, choices=(8, 16))
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--graph", default="folded",
                        choices=("folded", "trained", "frozen", "export"))
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--serial", action="store_true")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    print(describe_cpu())
    what = ("training step R101 OS16 321x321 batch 2" if args.train else
            f"forward R101 OS{args.output_stride} {args.size}x{args.size} batch 1, "
            f"{args.graph} graph")
    print(f"{what}, {args.precision}{', serial' if args.serial else ''}")
    env = dict(os.environ, ONEDNN_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], env=env,
                         capture_output=True, text=True)
    marked = marked_lines(out.stdout)
    peak_line = next((line for line in out.stdout.splitlines()
                      if line.startswith("@@peaks@@")), None)
    if marked is None or peak_line is None:
        print(out.stdout[-2000:], out.stderr[-3000:])
        raise SystemExit("the measuring child failed")
    f32, bf16 = (float(v) for v in peak_line.split()[1:])
    print(f"matmul peak in the same process: float32 {f32:.0f}, bfloat16 {bf16:.0f} GFLOP/s")
    summarise(*marked, {"float32": f32, "bfloat16": bf16}, args.top)


if __name__ == "__main__":
    main()
