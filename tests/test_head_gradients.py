"""The hand-written backward pass of the head, checked against finite differences.

For both losses (pointwise cross-entropy and the listwise ListNet loss) and both forms of the
first layer (full and low-rank), the analytic gradient of every parameter must match central
differences of the loss to 1e-6 relative.
"""

from __future__ import annotations

import numpy as np
import pytest

from hydrahead.runtime import fitting
from hydrahead.runtime.heads import Head


def _head(rank: int | None, hidden: int = 6, seed: int = 0) -> Head:
    rng = np.random.default_rng(seed)
    b1, W2, b2 = rng.normal(size=hidden), rng.normal(size=(hidden, 2)), rng.normal(size=2)
    if rank is None:
        return Head(rng.normal(size=(hidden, hidden)) / 2, b1, W2, b2)
    return Head.low_rank(rng.normal(size=(hidden, rank)), rng.normal(size=(rank, hidden)) / 2,
                         b1, W2, b2)


def _objective(kind: str, n: int = 24, hidden: int = 6):
    rng = np.random.default_rng(1)
    H = rng.normal(size=(n, hidden))
    if kind == "pointwise":
        y = rng.uniform(size=n).round(1)  # soft labels too
        w = rng.uniform(0.5, 2.0, size=n)
        return fitting._Pointwise(H, y, w, True, 0.0, rng)
    groups = np.repeat(np.arange(6), 4)
    y = rng.uniform(size=n).round(1)
    return fitting._Listwise(H, y, groups, 0.0, rng)


@pytest.mark.parametrize("kind", ["pointwise", "listwise"])
@pytest.mark.parametrize("rank", [None, 3])
def test_gradient_matches_finite_differences(kind: str, rank: int | None) -> None:
    objective = _objective(kind)
    head = _head(rank)
    names = list(head.params)
    theta, views = fitting._flat(head.params, names)
    grad, grad_views = fitting._flat({k: np.zeros_like(v) for k, v in head.params.items()}, names)
    (batch,) = list(objective.batches(10_000, np.random.default_rng(2)))  # everything at once
    fitting._gradient(views, grad_views, batch)

    numeric = np.zeros_like(theta)
    eps = 1e-6
    for i in range(theta.size):
        keep = theta[i]
        theta[i] = keep + eps
        up = objective.train_loss(views)
        theta[i] = keep - eps
        down = objective.train_loss(views)
        theta[i] = keep
        numeric[i] = (up - down) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    assert np.abs(grad).max() > 1e-3  # a real gradient, not all zeros


def test_listwise_gradient_sums_to_zero_per_group() -> None:
    """Adding a constant to every margin of a group changes no softmax: no gradient there."""
    objective = _objective("listwise")
    (batch,) = list(objective.batches(10_000, np.random.default_rng(3)))
    d = np.random.default_rng(4).normal(size=batch.H.shape[0])
    r = batch.dloss(d)
    sizes = [idx.size for idx in objective.train]
    sums = np.add.reduceat(r, np.cumsum([0, *sizes[:-1]]))
    np.testing.assert_allclose(sums, 0.0, atol=1e-12)
