"""Precisions, and whether this machine's TensorFlow kernels can run them.

Training runs under a Keras dtype policy (`TRAINING_PRECISIONS`); the
inference graph (`model.fold`) and the export compute in float32 or bfloat16
(`INFERENCE_PRECISIONS`). float32 and float16 run on every CPU. bfloat16 does
not: TensorFlow's x86 CPU kernels are oneDNN's, and oneDNN has bfloat16
convolutions and matmuls only from AVX-512 (its `avx512_core` ISA, which
emulates the bfloat16 instructions where AVX512_BF16 is missing) or AVX-NE-CONVERT
up. Below that, e.g. on an AVX2-only CPU or with oneDNN capped by
`ONEDNN_MAX_CPU_ISA=AVX2`, a bfloat16 Conv2D fails with ABORTED ("could not
create a primitive descriptor") and a bfloat16 MatMul kills the process
(SIGSEGV): nothing a `try` in the same process can catch. So
`bfloat16_unsupported_reason` runs the ops in a child process, once per
process, and `check_precision` refuses a bfloat16 precision at the start of
a run with one line saying what is missing.

Whether bfloat16 pays where it runs is another question (bench/README.md, "Does bfloat16 pay?"):
with AMX it is several times float32's speed, with AVX512_BF16 alone about
twice on the AMD EPYC, and slower than float32 on an Intel Xeon without AMX.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

TRAINING_PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
INFERENCE_PRECISIONS = ("float32", "bfloat16")

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below every ISA with bfloat16 kernels.
CAPS_WITHOUT_BFLOAT16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI")
# CPU flags (/proc/cpuinfo) of oneDNN's avx512_core ISA, the first with bfloat16.
AVX512_CORE_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq")

# What the child process runs: the bfloat16 ops a bfloat16 graph and its
# training step need (conv forward and both gradients, matmul), tiny.
_PROBE = """
import tensorflow as tf
x = tf.ones((1, 6, 6, 8), tf.bfloat16)
kernel = tf.ones((3, 3, 8, 8), tf.bfloat16)
with tf.GradientTape() as tape:
    tape.watch([x, kernel])
    y = tf.nn.conv2d(x, kernel, 1, "SAME")
grads = tape.gradient(y, [x, kernel])
z = tf.matmul(tf.reshape(y, (36, 8)), tf.ones((8, 8), tf.bfloat16))
assert z.dtype == tf.bfloat16 and all(g is not None for g in grads)
print("bfloat16 ok")
"""


def compute_dtype(precision: str) -> str:
    """"mixed_bfloat16" -> "bfloat16", "float32" -> "float32"."""
    return precision.rsplit("_", 1)[-1]


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The first CPU's feature flags (Linux), or None where they cannot be read."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def explain_missing_bfloat16(flags: frozenset[str] | None, isa_cap: str | None,
                             failure: str) -> str:
    """Why bfloat16 kernels are missing, in words a user can act on.

    Args:
      flags: The CPU's feature flags (`cpu_flags`), None if unknown.
      isa_cap: The value of ONEDNN_MAX_CPU_ISA, if set.
      failure: What the probe reported (its last line of error output).
    """
    cap = (isa_cap or "").strip().upper()
    if cap in CAPS_WITHOUT_BFLOAT16:
        return (f"ONEDNN_MAX_CPU_ISA={isa_cap} caps oneDNN below AVX-512 (avx512_core), "
                "the first of its instruction sets with bfloat16 kernels")
    if flags is not None and not set(AVX512_CORE_FLAGS) <= flags \
            and "avx_ne_convert" not in flags:
        missing = "/".join(f.removeprefix("avx512") for f in AVX512_CORE_FLAGS if f not in flags)
        return (f"this CPU lacks AVX-512 (avx512{missing}) and AVX-NE-CONVERT, which "
                "TensorFlow's oneDNN kernels need for bfloat16")
    return f"a bfloat16 convolution and matmul failed here ({failure})"


@functools.cache
def bfloat16_unsupported_reason() -> str | None:
    """None where bfloat16 convolutions, their gradients and matmuls run here;
    else why not (one clause). GPUs run them: no probe there. On CPU the ops
    run once in a child process (a few seconds: it imports TensorFlow), which
    inherits this process's environment (ONEDNN_MAX_CPU_ISA,
    TF_ENABLE_ONEDNN_OPTS); the answer is kept for the process's life."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return None
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    try:
        child = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                               text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return explain_missing_bfloat16(cpu_flags(), os.environ.get("ONEDNN_MAX_CPU_ISA"),
                                        "the probe did not finish in 10 minutes")
    if child.returncode == 0 and "bfloat16 ok" in child.stdout:
        return None
    errors = [line.strip() for line in child.stderr.splitlines() if line.strip()]
    failure = errors[-1][:200] if errors else f"the probe process ended with code {child.returncode}"
    return explain_missing_bfloat16(cpu_flags(), os.environ.get("ONEDNN_MAX_CPU_ISA"), failure)


class UnsupportedPrecisionError(ValueError):
    """A precision whose kernels this machine does not have."""


def check_precision(precision: str) -> None:
    """Refuses, before any work, a precision this machine cannot compute in.

    Args:
      precision: One of TRAINING_PRECISIONS or INFERENCE_PRECISIONS.

    Raises:
      UnsupportedPrecisionError: bfloat16 where its kernels are missing; the
        message names what is missing and what to use instead.
    """
    if compute_dtype(precision) != "bfloat16":
        return
    reason = bfloat16_unsupported_reason()
    if reason:
        raise UnsupportedPrecisionError(
            f"precision {precision!r} needs bfloat16 kernels, which TensorFlow cannot run "
            f"here: {reason}. Use float32.")
