"""The tests' comparison helpers hold what they promise."""

import numpy as np
import pytest

from tests.helpers import assert_within_sum_bound, probability_bound


def test_sum_bound_holds_for_any_summation_order_and_fails_beyond_it():
    rng = np.random.default_rng(0)
    n = 4096
    a, b = (rng.normal(size=(8, n)).astype(np.float32) for _ in range(2))
    products = a * b  # each rounded once, as a kernel's products are
    sequential = np.zeros(8, np.float32)
    for k in range(n):  # left to right, one rounding per addition
        sequential = sequential + products[:, k]
    pairwise = products.sum(axis=1, dtype=np.float32)  # NumPy's pairwise blocks
    exact = (a.astype(np.float64) * b.astype(np.float64)).sum(axis=1)
    magnitude = np.abs(a.astype(np.float64) * b).sum(axis=1)
    for one, other in ((sequential, pairwise), (sequential, exact), (pairwise, exact)):
        assert_within_sum_bound(one, other, magnitude, n)
    bound = 2 * n * 2.0 ** -24 / (1 - n * 2.0 ** -24) * magnitude
    with pytest.raises(AssertionError, match="beyond the round-off bound"):
        assert_within_sum_bound(exact + 1.01 * bound, exact, magnitude, n)


def test_probability_bound_holds_for_the_softmax():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 5, (1000, 7))
    delta = rng.uniform(-1e-3, 1e-3, logits.shape)

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    moved = np.abs(softmax(logits + delta) - softmax(logits)).max()
    assert moved <= probability_bound(1e-3)
    # Not loose by much: two classes at even odds move by nearly half the logits' move.
    even = np.array([[0.0, 0.0]])
    assert np.abs(softmax(even + [[1e-3, -1e-3]]) - softmax(even)).max() > 0.49 * 1e-3
