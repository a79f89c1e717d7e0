"""What the bench scripts share: timing, the matmul peak, peak memory."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
import typing

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def median_seconds(fn, runs: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `runs` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


class Pair(typing.NamedTuple):
    """Two calls timed in turn: the median seconds of each, and the median over the
    rounds of second / first (each round's two calls are neighbours in time, so the
    machine's drift cancels in their ratio, not in the ratio of the medians)."""

    first: float
    second: float
    ratio: float


def median_pair(first, second, runs) -> Pair:
    """`first()` and `second()` called in turn `runs` times each (after one untimed
    call of each), the order swapped every round (so that neither always runs after
    the other); results are fetched (np.asarray of every tensor returned)."""
    for call in (first, second):
        call()
    times = ([], [])
    for round_ in range(runs):
        order = (0, 1) if round_ % 2 == 0 else (1, 0)
        for index in order:
            start = time.perf_counter()
            tf.nest.map_structure(np.asarray, (first, second)[index]())
            times[index].append(time.perf_counter() - start)
    ratios = np.array(times[1]) / np.array(times[0])
    return Pair(float(np.median(times[0])), float(np.median(times[1])),
                float(np.median(ratios)))


def _matmul_call(dtype: tf.DType, size: int = 4096):
    """A call of one size x size `tf.matmul` in `dtype` (2 * size**3 FLOPs)."""
    a = tf.random.uniform((size, size), dtype=tf.float32)
    b = tf.random.uniform((size, size), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    matmul = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
    return lambda: matmul().numpy()


def matmul_peak_gflops(dtype: tf.DType, size: int = 4096, runs: int = 5) -> float:
    """GFLOP/s of a size x size `tf.matmul` (2 * size**3 FLOPs) in this process."""
    return 2 * size**3 / median_seconds(_matmul_call(dtype, size), runs, warmup=2) / 1e9


def median_with_peak(fn, dtype: tf.DType, runs: int, size: int = 4096) -> tuple[float, float]:
    """(median seconds of `fn()`, the matmul GFLOP/s in `dtype` it is compared with).

    Each call of `fn` has a call of the matmul beside it (`median_pair`), so that
    a time is compared with the machine's speed while it was taken (its speed here
    drifts within minutes). The GFLOP/s returned is the one that puts `fn` at the
    median over those pairs of its speed relative to the matmul's: FLOPs / seconds
    / peak is that median ratio, which the drift does not move.
    """
    pair = median_pair(fn, _matmul_call(dtype, size), runs)
    # pair.ratio = matmul seconds / fn seconds, so fn's share of the peak is
    # (fn FLOPs / matmul FLOPs) * ratio = (fn FLOPs / seconds) / peak with:
    return pair.first, 2 * size**3 / (pair.ratio * pair.first) / 1e9


def _proc_status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status ("VmHWM", "VmRSS"), MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """Maximum resident set size of this process so far, MiB.

    VmHWM from /proc: unlike getrusage's ru_maxrss, which Linux carries over
    from the parent at fork and keeps across exec, it is this program's own.
    """
    peak = _proc_status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Resets VmHWM to the current resident size (Linux: /proc/self/clear_refs "5"),
    so that `peak_rss_mib` then measures what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_mib() -> float:
    """Resident set size of this process now, MiB (VmRSS)."""
    return _proc_status_mib("VmRSS")


def cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it: every figure names its CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), "unknown CPU")
    except OSError:
        return "unknown CPU"


# /proc/cpuinfo flags that decide which kernels run: AMX tiles with bfloat16 (Intel
# Sapphire Rapids and later), AVX-512 bfloat16 dot products, AVX-512 float16.
CPU_FEATURES = ("amx_tile", "amx_bf16", "avx512_bf16", "avx512_fp16")

# A bfloat16 conv and matmul, run with oneDNN's verbose log on: its lines name the
# implementation (e.g. brg_conv_fwd:avx512_core_amx on AMX, :avx512_core_bf16 without).
_KERNEL_PROBE = """
import tensorflow as tf
x = tf.cast(tf.random.uniform((1, 33, 33, 64)), tf.bfloat16)
k = tf.cast(tf.random.uniform((3, 3, 64, 64)), tf.bfloat16)
tf.nn.conv2d(x, k, 1, "SAME").numpy()
m = tf.cast(tf.random.uniform((256, 256)), tf.bfloat16)
tf.matmul(m, m).numpy()
"""


def cpu_features() -> list[str]:
    """Which of `CPU_FEATURES` this CPU reports."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        flags = []
    return [feature for feature in CPU_FEATURES if feature in flags]


def bfloat16_kernels() -> dict[str, str]:
    """{"convolution": implementation, "matmul": implementation} that oneDNN picks for
    bfloat16 here (from ONEDNN_VERBOSE in a child process); empty where it logs none."""
    import sys

    env = dict(os.environ, ONEDNN_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", _KERNEL_PROBE], capture_output=True, text=True,
                         env=env)
    found = {}
    for line in (out.stdout + out.stderr).splitlines():
        fields = line.split(",")
        if len(fields) > 6 and fields[:4] == ["onednn_verbose", "v1", "primitive", "exec"]:
            kind, implementation = fields[5], fields[6]
            if kind in ("convolution", "matmul") and "bf16" in line:
                found.setdefault(kind, implementation)
    return found


def runnable(precisions) -> tuple[str, ...]:
    """The `precisions` whose kernels this CPU has, in order; says once which
    bfloat16 rows are left out and why (`deeplabv3_tf.core.precision`)."""
    from deeplabv3_tf.core.precision import bfloat16_unsupported_reason, compute_dtype

    wanted = [p for p in precisions if compute_dtype(p) == "bfloat16"]
    reason = bfloat16_unsupported_reason() if wanted else None
    if reason:
        print(f"left out ({', '.join(wanted)}): {reason}")
        return tuple(p for p in precisions if p not in wanted)
    return tuple(precisions)


def describe_cpu() -> str:
    """The CPU's name, the kernel-deciding features it has, and whether bfloat16
    convolutions and matmuls run on AMX: the first line of every speed figure."""
    features = cpu_features()
    kernels = bfloat16_kernels()
    on_amx = bool(kernels) and all("amx" in k for k in kernels.values())
    shown = ", ".join(f"{kind} {impl}" for kind, impl in kernels.items()) or "not logged"
    return (f"CPU: {cpu_name()}, {os.cpu_count()} cores; features: "
            f"{' '.join(features) or 'none of ' + ' '.join(CPU_FEATURES)}; bfloat16 kernels: "
            f"{shown} ({'on AMX' if on_amx else 'not on AMX'})")


def r101_training_step(assignments: list[str], size: int = 321, batch_size: int = 2):
    """(step, experiment, batch): voc_r101_os16 with `--set` assignments, one device, a
    random batch of `batch_size` size x size images, ready for `step(batch)`. Sets the
    global dtype policy to the experiment's `train.precision`, as training does."""
    from deeplabv3_tf.training.distribute import set_precision
    from deeplabv3_tf.configs.experiment import override
    from deeplabv3_tf.configs.recipes import voc_r101_os16
    from deeplabv3_tf.training.optimizer import make_optimizer
    from deeplabv3_tf.runs import build_model
    from deeplabv3_tf.training.train_step import make_train_step

    experiment = override(voc_r101_os16(), [f"train.batch_size={batch_size}", "train.init=''",
                                            *assignments])
    set_precision(experiment.train.precision)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = build_model(experiment)
        optimizer = make_optimizer(experiment.train)
        optimizer.build(model.trainable_variables)
    step = make_train_step(model, optimizer, strategy, experiment)
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(0, 255, (batch_size, size, size, 3)).astype("float32"),
             "label": rng.integers(0, 21, (batch_size, size, size)).astype("int32")}
    batch = next(iter(strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch))))
    return step, experiment, batch


def run_child(command: list[str], name: str, env: dict | None = None) -> dict | None:
    """Runs a measuring child process (with `env` added to the environment); returns the
    last JSON line it printed, or None (after printing `name: failed: <last stderr lines>`)."""
    out = subprocess.run(command, capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        print(f"{name}: failed: {out.stderr.strip().splitlines()[-3:]}")
        return None
    return json.loads(lines[-1])


def random_weights_run(experiment, run_dir: str) -> str:
    """A run directory (experiment.json + a checkpoint) of `experiment`'s model with
    its initial random weights: what the export needs to be timed (speed does not
    depend on the weights' values)."""
    import dataclasses

    from deeplabv3_tf.runs import save_experiment
    from deeplabv3_tf.model import build_deeplabv3

    experiment = dataclasses.replace(experiment, train=dataclasses.replace(
        experiment.train, init=""))
    save_experiment(experiment, run_dir)
    tf.train.Checkpoint(model=build_deeplabv3(experiment.model)).save(
        os.path.join(run_dir, "ckpt"))
    return run_dir


def litert_seconds(content: bytes, pixels: np.ndarray, runs: int, threads: int) -> float:
    """Median seconds of one LiteRT interpreter call on `pixels` (the model's input)
    with `threads` threads."""
    from deeplabv3_tf.serving.litert import interpreter

    runner = interpreter(content, num_threads=threads)
    [inp] = runner.get_input_details()

    def call():
        runner.set_tensor(inp["index"], pixels)
        runner.invoke()

    return median_seconds(call, runs)


def random_calibration(rng: np.random.Generator, size, count: int = 4):
    """A calibration generator of `count` random float32 [1, H, W, 3] images in [0, 255]."""
    def images():
        for _ in range(count):
            yield rng.uniform(0, 255, (1, *size, 3)).astype(np.float32)
    return images
