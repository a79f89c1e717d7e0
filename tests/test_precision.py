"""Precisions a CPU lacks kernels for are refused at start, in one line."""

import os
import platform

import pytest
import tensorflow as tf

from deeplabv3_tf.core.precision import (
    UnsupportedPrecisionError, bfloat16_unsupported_reason, check_precision, cpu_flags,
    explain_missing_bfloat16)
from tests.helpers import run_tool

AVX512 = frozenset({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"})


def test_missing_kernels_are_explained_by_what_is_missing():
    capped = explain_missing_bfloat16(AVX512 | {"avx512_bf16"}, "avx2", "Aborted")
    assert "ONEDNN_MAX_CPU_ISA=avx2" in capped and "avx512_core" in capped
    old = explain_missing_bfloat16(frozenset({"avx2", "avx512f"}), None, "Aborted")
    assert "lacks AVX-512 (avx512bw/vl/dq)" in old
    # A cap that keeps AVX-512, or a CPU with it: the probe's failure is what is known.
    other = explain_missing_bfloat16(AVX512, "AVX512_CORE", "Segmentation fault")
    assert "Segmentation fault" in other and "lacks" not in other
    assert "Segmentation fault" in explain_missing_bfloat16(None, None, "Segmentation fault")
    # AVX-NE-CONVERT gives oneDNN bfloat16 without AVX-512.
    assert "lacks" not in explain_missing_bfloat16(frozenset({"avx2", "avx_ne_convert"}), None,
                                                   "x")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\n")
    assert cpu_flags(str(path)) == {"fpu", "avx2", "avx512f"}
    assert cpu_flags(str(tmp_path / "absent")) is None


def test_float_precisions_are_never_probed(monkeypatch):
    def probe():
        raise AssertionError("probed")
    monkeypatch.setattr("deeplabv3_tf.core.precision.bfloat16_unsupported_reason", probe)
    for precision in ("float32", "mixed_float16"):
        check_precision(precision)
    with pytest.raises(AssertionError, match="probed"):
        check_precision("bfloat16")


@pytest.mark.numerics
def test_the_probe_says_what_a_bfloat16_conv_does_here():
    """The child process's answer is what a bfloat16 conv does in this one
    (the conv fails catchably where the kernels are missing; a matmul would
    kill the process). Which answer depends on the CPU, so none is asserted."""
    try:
        tf.nn.conv2d(tf.ones((1, 5, 5, 4), tf.bfloat16), tf.ones((3, 3, 4, 4), tf.bfloat16),
                     1, "SAME").numpy()
        works = True
    except tf.errors.AbortedError:
        works = False
    assert (bfloat16_unsupported_reason() is None) == works
    if not works:
        with pytest.raises(UnsupportedPrecisionError, match="Use float32"):
            check_precision("mixed_bfloat16")


@pytest.mark.parametrize("tool,precision", [
    (["tools/train.py", "--experiment=tiny_voc", "--train_records=absent-*",
      "--set=train.precision='mixed_bfloat16'", "--model_dir={out}"], "mixed_bfloat16"),
    (["tools/export.py", "--model_dir=absent", "--precision=bfloat16", "--export_dir={out}"],
     "bfloat16"),
], ids=["train", "export"])
def test_tools_refuse_bfloat16_at_once_where_the_kernels_are_missing(tool, precision, tmp_path):
    """With oneDNN capped at AVX2 (what an AVX2-only CPU gives)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"ONEDNN_MAX_CPU_ISA caps x86 instruction sets; this CPU is "
                    f"{platform.machine()}")
    out = tmp_path / "out"
    result = run_tool(*(arg.format(out=out) for arg in tool), env=dict(
        os.environ, ONEDNN_MAX_CPU_ISA="AVX2", TF_ENABLE_ONEDNN_OPTS="1"))
    assert result.returncode == 1, result.stderr
    # One line, before anything else is looked at (the records and the run do not exist).
    assert result.stderr.splitlines() == [
        f"error: precision '{precision}' needs bfloat16 kernels, which TensorFlow cannot run "
        "here: ONEDNN_MAX_CPU_ISA=AVX2 caps oneDNN below AVX-512 (avx512_core), the first of "
        "its instruction sets with bfloat16 kernels. Use float32."]
    assert not os.path.exists(out)
