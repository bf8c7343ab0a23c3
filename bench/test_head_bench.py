"""Speed of fast mode's numpy core: fitting a head, and scoring one request.

Targets: fitting a head on 1,000 labelled pairs takes <= 0.3 s; scoring the 20 retrieved items
of a request (reranker) or the 8 candidates of an answer (adapter) adds next to nothing to
ask(). Each figure is recorded in ``extra_info`` together with a reference measured in the same
process, so the ratio means the same on a fast and on a slow machine:

- fit: the forward pass of the same 1,000 pairs through the head (one epoch is ~25x that);
- per-request scoring: plain cosine scoring ``D @ q`` of the same items (dense retrieval).

Run with ``pytest bench/test_head_bench.py --benchmark-only``.
"""

from __future__ import annotations

import timeit

import numpy as np
import pytest

from hydrahead.runtime.fitting import DEFAULT_EPOCHS, fit_head
from hydrahead.runtime.pair_base import PairBase

DIM = 384
FIT_TARGET_SECONDS = 0.3


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def reference_seconds(fn, repeat: int = 7, number: int = 200) -> float:
    """Median seconds of one call of ``fn``."""
    return float(np.median(timeit.repeat(fn, repeat=repeat, number=number)) / number)


@pytest.fixture(scope="module")
def base() -> PairBase:
    return PairBase.untrained(dim=DIM, seed=0)


@pytest.fixture(scope="module")
def pairs(base: PairBase) -> tuple[np.ndarray, np.ndarray]:
    """1,000 labelled pairs (50 queries x 20 items) with a preference cosine cannot see."""
    rng = np.random.default_rng(0)
    topics, style = unit(rng.standard_normal((20, DIM))), unit(rng.standard_normal(DIM))
    H, y = [], []
    for _ in range(50):
        q = unit(topics[rng.integers(20)] + rng.standard_normal(DIM) / np.sqrt(DIM))
        sign = rng.choice([-1.0, 1.0], size=(20, 1))
        D = unit(topics[rng.integers(20, size=20)] + 0.2 * sign * style
                 + rng.standard_normal((20, DIM)) / np.sqrt(DIM))
        H.append(base.hidden_of(q, D))
        y.append((sign[:, 0] > 0).astype(np.float64))
    return np.concatenate(H), np.concatenate(y)


def _sizes(base: PairBase) -> dict[str, int]:
    return {
        "hidden": base.hidden,
        "head_bytes_full": base.head.nbytes,
        "head_bytes_rank8": base.head.factorize(8).nbytes,
        "head_bytes_rank16": base.head.factorize(16).nbytes,
    }


@pytest.mark.parametrize("early_stopping", [True, False], ids=["default", "all-epochs"])
def test_fit_head_1000_pairs(benchmark, base: PairBase, pairs, early_stopping: bool) -> None:
    H, y = pairs
    options = {} if early_stopping else {"patience": DEFAULT_EPOCHS}  # worst case: never stops
    forward = reference_seconds(lambda: base.head.scores(H), number=50)
    head, report = benchmark.pedantic(
        fit_head, args=(H, y), kwargs={"init": base.head, **options}, rounds=7, warmup_rounds=1
    )
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(
        {
            "pairs": len(y),
            "seconds_median": seconds,
            "target_seconds": FIT_TARGET_SECONDS,
            "meets_target": seconds <= FIT_TARGET_SECONDS,
            "epochs_run": report.epochs,
            "reference": "forward pass (scores) of the same 1000 pairs",
            "reference_seconds": forward,
            "ratio_to_reference": seconds / forward,
            **_sizes(base),
        }
    )
    assert np.isfinite(report.train_loss)


@pytest.mark.parametrize("n, role", [(20, "reranker"), (8, "adapter")])
def test_score_one_request(benchmark, base: PairBase, n: int, role: str) -> None:
    rng = np.random.default_rng(n)
    q, D = unit(rng.standard_normal(DIM)), unit(rng.standard_normal((n, DIM)))
    head = base.head.copy()

    def score() -> np.ndarray:
        return head.scores(base.hidden_of(q, D))

    cosine = reference_seconds(lambda: D @ q)
    scores = benchmark(score)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(
        {
            "role": role,
            "items": n,
            "seconds_median": seconds,
            "reference": "cosine scoring D @ q of the same items",
            "reference_seconds": cosine,
            "ratio_to_reference": seconds / cosine,
            **_sizes(base),
        }
    )
    assert scores.shape == (n,)
