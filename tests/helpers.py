"""Helpers shared by the tests."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deeplabv3_tf.model.config import ModelConfig
from deeplabv3_tf.core.precision import bfloat16_unsupported_reason, compute_dtype

# The repository root: the working directory of the tools the tests run.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool(*args, env=None) -> subprocess.CompletedProcess:
    """A command-line tool (tools/*.py and its flags) as users run it: from the
    repository, without the test session's TF_CPP_MIN_LOG_LEVEL."""
    env = {k: v for k, v in (env or os.environ).items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def tiny_config(**overrides) -> ModelConfig:
    """One bottleneck per stage, narrow: builds and runs in a second on CPU."""
    values = dict(num_classes=5, depth=14, base_width=8, multi_grid=(1,),
                  aspp_filters=16)
    values.update(overrides)
    return ModelConfig(**values)


def tiny_mobilenet_config(**overrides) -> ModelConfig:
    """MobileNetV3-Large at a quarter of its width (every stage, SE and hard-swish kept)."""
    values = dict(num_classes=5, backbone="mobilenet_v3_large", width_multiplier=0.25,
                  aspp_filters=16, normalization="imagenet")
    values.update(overrides)
    return ModelConfig(**values)


# Float32 round-off of a network's logits, relative to the largest |logit|, when the
# same function runs in another graph, batch or kernel (`assert_close`); folding
# BatchNorm into the convs reorders products through every layer: ten times that
# (tests/model/test_fold.py holds the folded graph to it).
LOGIT_REL = 1e-5
FOLDED_LOGIT_REL = 1e-4


def probability_bound(logit_bound: float) -> float:
    """How far softmax probabilities may move when the logits move by at most
    `logit_bound`: the softmax's Jacobian has row sums 2 p_i (1 - p_i) <= 1/2,
    and averages of probabilities (windows, flips, scales; bilinear resizing
    too: convex combinations) do not grow an error."""
    return 0.5 * logit_bound


def assert_close(actual, expected, rel: float = 1e-5, err_msg: str = ""):
    """Two computations of the same function agree to round-off.

    Different graphs, kernels and CPUs (AVX-512 with or without AMX, another
    blocking or summation order) round differently; the round-off of a sum
    grows with the magnitude of what is summed, not with each output value.
    So the tolerance is `rel` times the largest |expected|, for every value:
    a value near zero may differ by as much as a large one.

    Args:
      actual, expected: Arrays of the same shape.
      rel: Tolerance relative to max |expected| (float32 round-off of a deep
        network is ~1e-6 of it; bfloat16 and float16 need ~1e-2).
    """
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    assert scale > 0, "expected is all zeros: the comparison would say nothing"
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * scale, err_msg=err_msg)


def assert_within_sum_bound(actual, expected, magnitude, terms: int, err_msg: str = ""):
    """Two float32 computations of the same sums of products agree within the
    round-off bound of a sum, whatever order either adds in.

    A float32 sum of n products differs from the exact one by at most
    gamma_n * sum|terms|, gamma_n = n u / (1 - n u), u = 2**-24 (Higham,
    "Accuracy and Stability of Numerical Algorithms", 3.1): so two such
    computations, by any kernels, blockings or thread counts, differ by at
    most 2 gamma_n * sum|terms| per value.

    Args:
      actual, expected: Arrays of the same shape.
      magnitude: sum|terms| of each value (e.g. the same linear op applied to
        the absolute values of its operands), broadcastable to the arrays.
      terms: The number n of products summed into one value (at most).
    """
    u = 2.0 ** -24
    bound = 2 * terms * u / (1 - terms * u) * np.asarray(magnitude, np.float64)
    assert_within_bound(actual, expected, bound, f"{err_msg} ({terms}-term sums)")


def assert_within_bound(actual, expected, bound, err_msg: str = ""):
    """|actual - expected| <= bound, value by value (`bound` broadcastable to the
    arrays, in float64): for bounds a test derives from its computation."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    bound = np.broadcast_to(np.asarray(bound, np.float64), actual.shape)
    difference = np.abs(actual - expected)
    excess = difference - bound
    assert np.all(excess <= 0), (
        f"{err_msg}: {np.sum(excess > 0)} of {excess.size} values beyond the round-off "
        f"bound; largest difference {difference.max():.3g} where the bound there is "
        f"{bound.flat[np.argmax(excess)]:.3g}")


def skip_without_kernels(precision: str) -> None:
    """Skips the calling test where this CPU has no kernels for `precision`
    (bfloat16 below oneDNN's AVX-512, e.g. with ONEDNN_MAX_CPU_ISA=AVX2), with
    the reason naming what is missing. Every other precision runs everywhere."""
    if compute_dtype(precision) == "bfloat16":
        reason = bfloat16_unsupported_reason()
        if reason:
            pytest.skip(f"no bfloat16 kernels: {reason}")


def encode(image, format: str = "PNG", **kwargs) -> bytes:
    """An image array (uint8 [H, W, 3], [H, W] or [H, W, 4]) encoded by Pillow."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=format, **kwargs)
    return buffer.getvalue()
