"""Statistics of a quality comparison: paired per-question wins and losses, and the relative gain
of a system over a baseline with a bootstrap confidence interval that resamples users.

The gain is the one every quality table shows ("vs best prompt baseline"): the system's mean
metric over all questions minus the baseline's, divided by the baseline's absolute mean
(``(s - b) / |b|``; for a metric where lower is better, ``(b - s) / |b|``). The interval resamples
**users** with replacement, each drawn user bringing all of their questions for both systems (a
paired bootstrap: a user's questions are not independent of each other, the users are), and
takes the 2.5th and 97.5th percentiles of the resampled gains. The baseline stays the one given:
it is not chosen again in each resample. numpy only; every draw comes from ``seed``, and the
draws depend only on the seed and the number of users, so every system compared against one
baseline with one seed sees the same resamples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hydrahead.runtime.errors import InvalidInputError

PerUser = Sequence[Sequence[float]]  # one sequence of per-question values per user
TIE = 1e-9  # per-question scores closer than this are a tie


def paired_wins_losses(system: Sequence[float], baseline: Sequence[float], *,
                       tie: float = TIE) -> tuple[int, int]:
    """How many questions ``system`` scored higher than ``baseline`` on, and lower (same order;
    higher is better)."""
    a, b = np.asarray(system, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise InvalidInputError(f"paired scores differ in length: {a.shape} vs {b.shape}")
    return int(np.sum(a > b + tie)), int(np.sum(a < b - tie))


def relative_gain(system_mean: float, baseline_mean: float, *,
                  lower_is_better: bool = False) -> float:
    """``(s - b) / |b|`` (``(b - s) / |b|`` when lower is better); NaN when ``b`` is 0."""
    if baseline_mean == 0:
        return float("nan")
    diff = baseline_mean - system_mean if lower_is_better else system_mean - baseline_mean
    return diff / abs(baseline_mean)


def bootstrap_gain(system: PerUser, baseline: PerUser, *, n: int = 2000, seed: int = 0,
                   lower_is_better: bool = False, level: float = 0.95
                   ) -> tuple[float, float, float]:
    """The relative gain of ``system`` over ``baseline`` and its bootstrap interval over users.

    Args:
        system: Per user, the system's per-question values of the metric.
        baseline: The same users and questions, the baseline's values (paired with ``system``).
        n: Resamples.
        seed: Seed of the draws.
        lower_is_better: The metric is an error (e.g. MAE): the gain is ``(b - s) / |b|``.
        level: Coverage of the interval (0.95: the 2.5th to 97.5th percentiles).

    Returns:
        ``(gain, lo, hi)``: the gain on the data as given (means over all questions) and the
        interval's ends. A resample whose baseline mean is 0 has no gain and is left out; NaNs
        where the baseline's mean is 0 on the data (or in every resample).

    Raises:
        InvalidInputError: No users, no questions, or the two sides differ in shape.
    """
    sums_s, sums_b, counts = _per_user_sums(system, baseline)
    gain = relative_gain(float(sums_s.sum() / counts.sum()), float(sums_b.sum() / counts.sum()),
                         lower_is_better=lower_is_better)
    weights = resample_weights(len(counts), n=n, seed=seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        total = weights @ counts
        mean_s, mean_b = (weights @ sums_s) / total, (weights @ sums_b) / total
        diff = mean_b - mean_s if lower_is_better else mean_s - mean_b
        gains = diff / np.abs(mean_b)
    gains = gains[np.isfinite(gains)]
    if not np.isfinite(gain) or gains.size == 0:
        return gain, float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(gains, [tail, 100 - tail])
    return gain, float(lo), float(hi)


def resample_weights(n_users: int, *, n: int, seed: int) -> np.ndarray:
    """``(n, n_users)``: how many times each user is drawn in each resample (rows sum to
    ``n_users``)."""
    if n_users < 1 or n < 1:
        raise InvalidInputError(f"cannot resample {n_users} users {n} times")
    draws = np.random.default_rng(seed).integers(0, n_users, size=(n, n_users))
    flat = draws + (np.arange(n) * n_users)[:, None]
    return np.bincount(flat.ravel(), minlength=n * n_users).reshape(n, n_users).astype(float)


def _per_user_sums(system: PerUser, baseline: PerUser
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(system) != len(baseline) or not len(system):
        raise InvalidInputError(f"paired bootstrap needs the same users on both sides "
                                f"({len(system)} vs {len(baseline)})")
    sums_s, sums_b, counts = [], [], []
    for u, (user_s, user_b) in enumerate(zip(system, baseline)):
        s, b = np.asarray(user_s, dtype=float), np.asarray(user_b, dtype=float)
        if s.shape != b.shape or s.ndim != 1:
            raise InvalidInputError(f"user {u}: {s.shape} system values vs {b.shape} baseline "
                                    "values (they must be paired, one per question)")
        sums_s.append(s.sum())
        sums_b.append(b.sum())
        counts.append(s.size)
    if not sum(counts):
        raise InvalidInputError("paired bootstrap: no questions")
    return np.array(sums_s), np.array(sums_b), np.array(counts, dtype=float)
