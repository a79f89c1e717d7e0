"""What is alive at the peak of a training step's memory, by the op that made it.

  python bench/step_memory.py [--precision float32] [--size 321] [--batch_size 2]
                              [--set train.xxx=...] [--top 15]

Runs the R101 OS16 training step of bench/speed.py under TensorFlow's BFC
allocator (TF_CPU_ALLOCATOR_USE_BFC=true, set here before TensorFlow starts),
profiles one step with `tf.profiler.experimental` and replays the allocator's
`MemoryAllocation` / `MemoryDeallocation` events: at the moment the most bytes
are allocated, it groups the tensors the step itself allocated by kind (forward
activations by op type, gradient-tape ops, optimizer ops, other step ops) and
lists the largest producing ops. Tensors held from before the step (weights,
momenta, the batch) are counted apart, from the allocator's statistics.
"""

import argparse
import collections
import glob
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true"

import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import peak_rss_mib, r101_training_step  # noqa: E402

MIB = 2**20


def allocation_events(logdir: str) -> list[tuple[int, str, dict]]:
    """(time in ps, event name, stats) of the allocator's events in a profile, in time order."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise RuntimeError(f"The profiler wrote no trace under {logdir}.")
    space = xplane_pb2.XSpace()
    with open(paths[0], "rb") as f:
        space.ParseFromString(f.read())
    events = []
    for plane in space.planes:
        names, stat_names = plane.event_metadata, plane.stat_metadata
        for line in plane.lines:
            for event in line.events:
                name = names[event.metadata_id].name
                if name not in ("MemoryAllocation", "MemoryDeallocation"):
                    continue
                stats = {}
                for stat in event.stats:
                    value = stat.WhichOneof("value")
                    stats[stat_names[stat.metadata_id].name] = (
                        stat_names[stat.ref_value].name if value == "ref_value"
                        else getattr(stat, value))
                events.append((line.timestamp_ns * 1000 + event.offset_ps, name, stats))
    events.sort(key=lambda e: e[0])
    return events


def live_at_peak(events) -> tuple[int, dict]:
    """(bytes allocated at the peak, {address: stats} of the step's tensors alive then)."""
    live, peak, at_peak = {}, -1, {}
    for _, name, stats in events:
        if name == "MemoryAllocation":
            live[stats["addr"]] = stats
        else:
            live.pop(stats["addr"], None)
        if stats["bytes_allocated"] > peak:
            peak, at_peak = stats["bytes_allocated"], dict(live)
    return peak, at_peak


def kind(op: str) -> str:
    """A coarse kind of the op that allocated a tensor, from its name."""
    if op.startswith("gradient_tape/"):
        return "backward: " + op.rsplit("/", 1)[-1].split("_")[0]
    if "/" in op and op.split("/")[0].startswith(("deeplabv3", "classifier")):
        return "forward: " + op.rsplit("/", 1)[-1]
    if op.startswith("sgd/") or "/sgd/" in op:
        return "optimizer: " + op.rsplit("/", 1)[-1].split("_")[0]
    return "other: " + op.rsplit("/", 1)[-1].split("_")[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="float32",
                        choices=["float32", "mixed_bfloat16", "mixed_float16"])
    parser.add_argument("--size", type=int, default=321)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="experiment overrides")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()

    step, _, batch = r101_training_step([f"train.precision={args.precision!r}", *args.set],
                                        args.size, args.batch_size)
    for _ in range(2):
        float(step(batch)[0])
    tf.config.experimental.reset_memory_stats("CPU:0")
    held = tf.config.experimental.get_memory_info("CPU:0")["current"]
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        float(step(batch)[0])
        tf.profiler.experimental.stop()
        events = allocation_events(logdir)
    stats = tf.config.experimental.get_memory_info("CPU:0")
    if not events:
        raise RuntimeError("The profile holds no allocator events.")
    peak, live = live_at_peak(events)

    by_kind, counts, by_op = collections.Counter(), collections.Counter(), collections.Counter()
    for tensor in live.values():
        size = tensor.get("allocation_bytes", 0)
        op = str(tensor.get("tf_op", "?"))
        by_kind[kind(op)] += size
        counts[kind(op)] += 1
        by_op[op] += size
    print(f"R101 OS16 training step, {args.size}x{args.size}, batch {args.batch_size}, "
          f"{args.precision}; BFC allocator on the CPU")
    print(f"held between steps {held / MIB:.0f} MiB; peak within the step "
          f"{stats['peak'] / MIB:.0f} MiB (profiled step: {peak / MIB:.0f}); "
          f"of it allocated by the step and alive at the peak: "
          f"{sum(by_kind.values()) / MIB:.0f} MiB; peak RSS {peak_rss_mib():.0f} MiB")
    print(f"\n{'alive at the peak, by kind':<48}{'MiB':>8}{'tensors':>9}")
    for name, size in by_kind.most_common(args.top):
        print(f"{name:<48}{size / MIB:>8.1f}{counts[name]:>9}")
    print(f"\n{'largest producing ops':<90}{'MiB':>8}")
    for name, size in by_op.most_common(args.top):
        print(f"{name[:88]:<90}{size / MIB:>8.1f}")


if __name__ == "__main__":
    main()
