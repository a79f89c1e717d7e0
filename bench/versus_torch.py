"""DeepLabv3-R101 here against torchvision's on the same machine, row by row.

  python bench/versus_torch.py [--runs 5] [--pairs 1] [--rows inference,training]

Each row is timed in its own process, this project's and torch's one after the
other, so both see the same machine. torch rows use torchvision's DeepLabV3-R101
where torchvision is installed, else the tests' torch-only replica of it
(tests/model/torch_replica.py: the same modules and computation), at the same
output stride and ASPP rates as this project's (OS16: dilation in the last
stage only, ASPP 6/12/18; OS8: the last two stages, 12/24/36), without the
auxiliary head. Each torch row keeps the faster of NCHW and channels_last;
bfloat16 is `torch.autocast("cpu", torch.bfloat16)`. This project's rows are
the BN-folded inference graph (what the export serves) in float32 and
bfloat16, and the training step in float32 and mixed_bfloat16 (SGD momentum
0.9, weight decay 1e-4, as `voc_r101_os16`). torch's threads: as many as the
cores, like TensorFlow's. Skipped, with a message, where torch is missing.

"ratio" is torch's time over this project's: > 1 means faster here. With
--pairs K, each row's two processes run K times, alternating (here, torch,
here, torch, ...): the row prints the median time of each side and the median,
lowest and highest of the K ratios, each ratio from one pair run back to back.
On a machine whose speed drifts, one pair's ratio moves by 10-20 %.

With --kernels, each side runs one call of each row with oneDNN's verbose log
on (torch's convolutions run in oneDNN too) and the rows print, per side, the
wall time of that call, the time inside oneDNN by primitive kind, and the rest
(ops outside oneDNN, framework overhead). This project runs one op at a time
(inter-op parallelism 1) so that its kernel times add up, as torch's eager ops
do; torch runs channels_last. "weight reorders" counts reorders from
TensorFlow's HWIO filter layout, so only this project's side shows them. A
verbose call is slower than an unlogged one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import describe_cpu, median_seconds, run_child  # noqa: E402
from kernels import executions, is_weight_reorder, marked_call, marked_lines  # noqa: E402

ROWS = {
    "inference": [(16, "float32"), (16, "bfloat16"), (8, "float32"), (8, "bfloat16")],
    "training": [(16, "float32"), (16, "bfloat16")],
}
SIZE, TRAIN_SIZE, TRAIN_BATCH = 513, 321, 2


def torch_model(output_stride: int):
    """DeepLabV3-R101 without the auxiliary head, at `output_stride`: (model, source)."""
    import torch  # noqa: F401

    dilation = (False, False, True) if output_stride == 16 else (False, True, True)
    rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
    try:
        from torchvision.models import resnet101
        from torchvision.models._utils import IntermediateLayerGetter
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

        backbone = IntermediateLayerGetter(
            resnet101(weights=None, replace_stride_with_dilation=list(dilation)),
            return_layers={"layer4": "out"})
        head = DeepLabHead(2048, 21, atrous_rates=rates)
        return DeepLabV3(backbone, head, None), "torchvision"
    except ImportError:
        sys.path.insert(0, os.path.dirname(HERE))
        from torch import nn

        from tests.model import torch_replica as replica

        class Replica(nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = replica.ResNet(101, replace_stride_with_dilation=dilation,
                                               with_fc=False)
                self.classifier = nn.Sequential(
                    replica.ASPP(2048, rates), *replica.conv_bn_relu(256, 256, 3),
                    nn.Conv2d(256, 21, 1))

            def forward(self, x):
                out = self.classifier(self.backbone(x)["out"])
                return {"out": replica.F.interpolate(out, size=x.shape[-2:], mode="bilinear",
                                                     align_corners=False)}

        return Replica(), "the tests' torch replica of torchvision"


def torch_child(kind: str, output_stride: int, precision: str, runs: int,
                kernels: bool = False) -> None:
    import contextlib

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    results = {}
    for layout in ("channels_last",) if kernels else ("nchw", "channels_last"):
        model, source = torch_model(output_stride)
        memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        autocast = (torch.autocast("cpu", torch.bfloat16) if precision == "bfloat16"
                    else contextlib.nullcontext())
        if kind == "inference":
            model.eval()
            x = (torch.rand(1, 3, SIZE, SIZE) * 255).to(memory_format=memory_format)

            def call():
                with torch.inference_mode(), autocast:
                    model(x)["out"].float().sum().item()
        else:
            model.train()
            x = (torch.rand(TRAIN_BATCH, 3, TRAIN_SIZE, TRAIN_SIZE) * 255).to(
                memory_format=memory_format)
            y = torch.randint(0, 21, (TRAIN_BATCH, TRAIN_SIZE, TRAIN_SIZE))
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9,
                                        weight_decay=1e-4)

            def call():
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    loss = torch.nn.functional.cross_entropy(model(x)["out"].float(), y,
                                                             ignore_index=255)
                loss.backward()
                optimizer.step()
                loss.item()
        if kernels:
            return marked_call(call, warmup=2)
        results[layout] = median_seconds(call, runs, warmup=2)
    best = min(results, key=results.get)
    print(json.dumps({"seconds": results[best], "layout": best, "all": results,
                      "source": source, "torch": torch.__version__}))


def project_child(kind: str, output_stride: int, precision: str, runs: int,
                  kernels: bool = False) -> None:
    import tensorflow as tf

    if kernels:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if kind == "inference":
        from deeplabv3_tf.model.config import ModelConfig
        from deeplabv3_tf.model import build_deeplabv3
        from deeplabv3_tf.model.fold import fold_batch_norm

        config = ModelConfig(output_stride=output_stride)
        graph = fold_batch_norm(build_deeplabv3(config), config, precision)
        image = tf.random.uniform((1, SIZE, SIZE, 3), 0, 255, seed=0)
        run = tf.function(lambda x: graph(x, training=False))

        def call():
            run(image).numpy()
    else:
        from common import r101_training_step

        policy = "mixed_bfloat16" if precision == "bfloat16" else "float32"
        step, _, batch = r101_training_step([f"train.precision={policy!r}"], TRAIN_SIZE,
                                            TRAIN_BATCH)

        def call():
            float(step(batch)[0])
    if kernels:
        return marked_call(call, warmup=2)
    print(json.dumps({"seconds": median_seconds(call, runs, warmup=2)}))


def kernel_times(stdout: str) -> dict | None:
    """Milliseconds of a `--kernels` child's marked call: wall, oneDNN, each primitive
    kind's share, weight reorders; None if the child failed."""
    marked = marked_lines(stdout)
    if marked is None:
        return None
    lines, wall = marked
    kinds = {"forward_training": "conv fwd", "forward_inference": "conv fwd",
             "backward_data": "conv bwd data", "backward_weights": "conv bwd weights"}
    times = {"wall": wall * 1000, "oneDNN": 0.0, "weight reorders": 0.0}
    for kind, _, prop, _, ms, line in executions(lines):
        if kind == "convolution":
            name = kinds.get(prop, "conv other")
        elif kind in ("matmul", "gemm_api", "inner_product"):
            name = "matmul"
        elif kind == "batch_normalization":
            name = "batch norm"
        elif kind == "reorder":
            name = "reorder"
            if is_weight_reorder(line):
                times["weight reorders"] += ms
        else:
            name = kind
        times[name] = times.get(name, 0.0) + ms
        times["oneDNN"] += ms
    return times


def print_kernel_rows(name: str, spec: list[str]) -> None:
    env = dict(os.environ, ONEDNN_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="3")
    print(name)
    for side in ("project", "torch"):
        out = subprocess.run([sys.executable, __file__, "--kernels", "--child", side, *spec],
                             capture_output=True, text=True, env=env)
        times = kernel_times(out.stdout)
        label = "here" if side == "project" else "torch"
        if times is None:
            print(f"  {label}: failed: {out.stderr.strip().splitlines()[-3:]}")
            continue
        wall, inside = times.pop("wall"), times.pop("oneDNN")
        weights = times.pop("weight reorders")
        parts = ", ".join(f"{k} {v:.0f}" for k, v in times.items())
        parts += f" (weight reorders {weights:.0f})" if weights else ""
        print(f"  {label:<6} wall {wall:6.0f} ms; outside oneDNN {wall - inside:5.0f}; "
              f"oneDNN {inside:5.0f}: {parts}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=1,
                        help="times each row's two processes run, alternating")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--kernels", action="store_true",
                        help="one call per row and side, timed by oneDNN kernel kind")
    parser.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error(f"--pairs {args.pairs}: at least 1")
    if args.child:
        side, kind, output_stride, precision = args.child
        child = torch_child if side == "torch" else project_child
        return child(kind, int(output_stride), precision, args.runs, args.kernels)
    print(describe_cpu())
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch is not installed: no comparison (pip install -r requirements-torch.txt)")
        return
    print(f"R101 inference {SIZE}x{SIZE} batch 1; training step OS16 {TRAIN_SIZE}x{TRAIN_SIZE} "
          f"batch {TRAIN_BATCH}; " + ("one call each with oneDNN's verbose log, ms"
                                      if args.kernels else f"medians of {args.runs}"
                                      + (f"; {args.pairs} pairs of processes per row, "
                                         "alternated" if args.pairs > 1 else "")))
    if not args.kernels:
        print(f"{'row':<34}{'here ms':>9}{'torch ms':>10}{'ratio':>7}  torch layout")
    for kind in args.rows.split(","):
        if kind not in ROWS:
            raise SystemExit(f"unknown row kind {kind!r}; choose from {tuple(ROWS)}")
        for output_stride, precision in ROWS[kind]:
            if kind == "training" and precision == "bfloat16":
                name = "training OS16 mixed_bfloat16"
            else:
                name = f"{kind} OS{output_stride} {precision}"
            spec = [kind, str(output_stride), precision, "--runs", str(args.runs)]
            if args.kernels:
                print_kernel_rows(name, spec)
                continue
            pairs = []
            for _ in range(args.pairs):
                here = run_child([sys.executable, __file__, "--child", "project", *spec],
                                 f"{name} (here)")
                there = run_child([sys.executable, __file__, "--child", "torch", *spec],
                                  f"{name} (torch)")
                if here is not None and there is not None:
                    pairs.append((here, there))
            if pairs:
                print_pairs(name, pairs)


def print_pairs(name: str, pairs: list[tuple[dict, dict]]) -> None:
    """One row: each side's median time over the pairs, the median (and, for several
    pairs, the range) of their ratios, and torch's layout of the last pair."""
    here = statistics.median(p[0]["seconds"] for p in pairs)
    ratios = sorted(p[1]["seconds"] / p[0]["seconds"] for p in pairs)
    there = pairs[-1][1]
    spread = f" ({ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else ""
    print(f"{name:<34}{here * 1000:>9.0f}"
          f"{statistics.median(p[1]['seconds'] for p in pairs) * 1000:>10.0f}"
          f"{statistics.median(ratios):>7.2f}{spread}  {there['layout']} "
          f"(NCHW {there['all']['nchw'] * 1000:.0f}, channels_last "
          f"{there['all']['channels_last'] * 1000:.0f}; {there['source']}, "
          f"torch {there['torch']})", flush=True)


if __name__ == "__main__":
    main()
