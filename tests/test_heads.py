"""Per-user heads: forward pass, files, fitting, and learning a user's idiosyncratic taste."""

from __future__ import annotations

import io
import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from hydrahead.runtime.errors import HeadError, InvalidInputError
from hydrahead.runtime.fitting import fit_head
from hydrahead.runtime.heads import Head
from hydrahead.runtime.pair_base import PairBase

DIM = 384
FINGERPRINT = "abc123" + "0" * 58
OTHER_FINGERPRINT = "def456" + "1" * 58


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def base() -> PairBase:
    return PairBase.untrained(dim=DIM, hidden=64, seed=0)


def labelled_pairs(
    base: PairBase, n: int, seed: int, noise: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs labelled by the sign of one direction of the item embedding.

    Items vary along that direction and a few others, plus isotropic noise, like sentence
    embeddings that mostly live near a low-dimensional subspace. ``noise`` flips labels.
    """
    rng = np.random.default_rng(seed)
    basis = unit(np.random.default_rng(123).standard_normal((9, DIM)))  # same for every call
    coords = rng.standard_normal((n, 9))
    D = unit(coords @ basis + 0.3 * rng.standard_normal((n, DIM)) / np.sqrt(DIM))
    y = (coords[:, 0] > 0).astype(np.float64)
    flip = rng.random(n) < noise
    y[flip] = 1.0 - y[flip]
    queries = unit(rng.standard_normal((n // 20 + 1, 9)) @ basis)  # a new query every 20 items
    H = np.concatenate([base.hidden_of(queries[i // 20], D[i : i + 20]) for i in range(0, n, 20)])
    return H, y


def all_params_equal(a: Head, b: Head) -> bool:
    return a.params.keys() == b.params.keys() and all(
        np.array_equal(a.params[k], b.params[k]) for k in a.params
    )


# ---------------------------------------------------------------------- forward pass
def test_forward_shapes_and_softmax(base: PairBase) -> None:
    H, _ = labelled_pairs(base, 7, seed=1)
    head = base.head
    logits, scores = head.logits(H), head.scores(H)
    assert logits.shape == (7, 2) and scores.shape == (7,)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(scores, e[:, 1] / e.sum(axis=1), rtol=1e-12)
    assert head.scores(np.zeros((0, 64), np.float32)).shape == (0,)
    with pytest.raises(InvalidInputError):
        head.scores(np.zeros((3, 65)))


def test_scores_are_stable_with_huge_logits() -> None:
    h = 4
    W2 = np.zeros((h, 2))
    W2[:, 1] = [1e30, -1e30, 1e20, 0.0]
    head = Head(np.eye(h), np.zeros(h), W2, np.zeros(2))
    H = np.array([[5, 0, 0, 0], [0, 5, 0, 0], [0, 0, -5, 0], [0, 0, 0, 1], [1e-30, 0, 0, 0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = head.scores(H)
    assert np.all(np.isfinite(s)) and np.all((s >= 0) & (s <= 1))
    assert s[0] == 1.0 and s[1] == 0.0 and s[2] == 0.0 and s[3] == 0.5
    assert 0.5 < s[4] < 1.0


def test_sizes_and_low_rank_form(base: PairBase) -> None:
    full = base.head
    assert full.num_params == 64 * 64 + 64 + 64 * 2 + 2 == 4290
    assert full.nbytes == 4 * 4290 and full.rank is None
    low = PairBase.untrained(seed=0, head_rank=8).head
    assert low.rank == 8 and low.num_params == 2 * 64 * 8 + 64 + 128 + 2
    assert low.nbytes == 4 * low.num_params < full.nbytes / 3
    exact = full.factorize(64)  # full rank: same function
    H, _ = labelled_pairs(base, 50, seed=2)
    np.testing.assert_allclose(exact.scores(H), full.scores(H), atol=1e-5)
    assert full.factorize(4).rank == 4
    with pytest.raises(InvalidInputError):
        full.factorize(0)


def test_heads_are_immutable_and_copies_independent(base: PairBase) -> None:
    with pytest.raises(ValueError):
        base.head.params["W1"][0, 0] = 1.0
    twin = base.head.copy()
    assert all_params_equal(twin, base.head)
    assert twin.params["W1"] is not base.head.params["W1"]


def test_constructor_rejects_bad_shapes_and_values() -> None:
    h = 3
    ok = dict(W1=np.eye(h), b1=np.zeros(h), W2=np.zeros((h, 2)), b2=np.zeros(2))
    with pytest.raises(InvalidInputError):
        Head(**{**ok, "W1": np.eye(h + 1)})
    with pytest.raises(InvalidInputError):
        Head(**{**ok, "W2": np.zeros((h, 3))})
    with pytest.raises(InvalidInputError):
        Head(**{**ok, "b1": np.array([0.0, np.nan, 0.0])})
    with pytest.raises(InvalidInputError):
        Head.from_params({"W1": np.eye(h), "b1": np.zeros(h)})
    with pytest.raises(InvalidInputError):
        Head.low_rank(np.ones((h, 2)), np.ones((3, h)), np.zeros(h), np.zeros((h, 2)), np.zeros(2))


# ---------------------------------------------------------------------- files
@pytest.mark.parametrize("head_rank", [None, 8])
def test_save_load_round_trip_is_bit_exact(
    tmp_path: Path, base: PairBase, head_rank: int | None
) -> None:
    H, y = labelled_pairs(base, 100, seed=3)
    init = PairBase.untrained(seed=0, head_rank=head_rank).head
    head, _ = fit_head(H, y, init=init, epochs=3)
    path = tmp_path / "reranker.npz"
    head.save(path, base_fingerprint=FINGERPRINT, role="reranker")
    assert (os.stat(path).st_mode & 0o777) == 0o600
    loaded = Head.load(path, base_fingerprint=FINGERPRINT, role="reranker", hidden=64)
    assert all_params_equal(loaded, head) and loaded.rank == head_rank
    assert np.array_equal(loaded.scores(H), head.scores(H))


def test_head_of_another_bundle_or_role_is_refused(tmp_path: Path, base: PairBase) -> None:
    path = tmp_path / "adapter.npz"
    base.head.save(path, base_fingerprint=FINGERPRINT, role="adapter")
    with pytest.raises(HeadError) as err:
        Head.load(path, base_fingerprint=OTHER_FINGERPRINT, role="adapter")
    message = str(err.value)
    assert "abc123" in message and "def456" in message and "hydrahead fit" in message
    with pytest.raises(HeadError, match="adapter head, not the reranker"):
        Head.load(path, base_fingerprint=FINGERPRINT, role="reranker")
    with pytest.raises(HeadError, match="width 64"):
        Head.load(path, base_fingerprint=FINGERPRINT, role="adapter", hidden=128)
    with pytest.raises(InvalidInputError):
        Head.load(path, base_fingerprint=FINGERPRINT, role="writer")


def test_failed_save_keeps_the_stored_head(tmp_path: Path, base: PairBase) -> None:
    path = tmp_path / "reranker.npz"
    base.head.save(path, base_fingerprint=FINGERPRINT, role="reranker")
    before = path.read_bytes()
    with pytest.raises(InvalidInputError):
        base.head.save(path, base_fingerprint=FINGERPRINT, role="nonsense")
    with pytest.raises(InvalidInputError):
        base.head.save(path, base_fingerprint="", role="reranker")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reranker.npz"]  # no temp files left


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_corrupt_or_malformed_files_raise_head_error(tmp_path: Path, base: PairBase) -> None:
    good = tmp_path / "good.npz"
    base.head.save(good, base_fingerprint=FINGERPRINT, role="reranker")
    data = good.read_bytes()
    with np.load(good, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}

    def load(name: str, content: bytes) -> Head:
        path = tmp_path / name
        path.write_bytes(content)
        return Head.load(path, base_fingerprint=FINGERPRINT, role="reranker")

    with pytest.raises(HeadError, match="does not exist"):
        Head.load(tmp_path / "absent.npz", base_fingerprint=FINGERPRINT, role="reranker")
    with pytest.raises(HeadError, match="corrupt"):
        load("truncated.npz", data[: len(data) // 2])
    with pytest.raises(HeadError, match="corrupt"):
        load("garbage.npz", b"\x00" * 100)
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    with pytest.raises(HeadError):
        load("flipped.npz", bytes(flipped))
    no_b2 = {k: v for k, v in arrays.items() if k != "param.b2"}
    with pytest.raises(HeadError, match="parameters"):
        load("missing.npz", _npz_bytes(**no_b2))
    with pytest.raises(HeadError, match="shape"):
        load("shape.npz", _npz_bytes(**{**arrays, "param.W1": np.zeros((64, 63), np.float32)}))
    nan_w = arrays["param.W2"].copy()
    nan_w[0, 0] = np.nan
    with pytest.raises(HeadError, match="NaN"):
        load("nan.npz", _npz_bytes(**{**arrays, "param.W2": nan_w}))
    with pytest.raises(HeadError, match="newer"):
        load("newer.npz", _npz_bytes(**{**arrays, "format_version": np.array(3)}))
    with pytest.raises(HeadError, match="not a hydrahead head"):
        load("other.npz", _npz_bytes(**{**arrays, "format": np.array("something-else")}))
    with pytest.raises(HeadError, match="role"):
        load("norole.npz", _npz_bytes(**{k: v for k, v in arrays.items() if k != "role"}))


# ---------------------------------------------------------------------- fitting
def test_fit_is_deterministic_per_seed(base: PairBase) -> None:
    H, y = labelled_pairs(base, 300, seed=4, noise=0.1)
    a, ra = fit_head(H, y, init=base.head, seed=11)
    b, rb = fit_head(H, y, init=base.head, seed=11)
    c, _ = fit_head(H, y, init=base.head, seed=12)
    assert all_params_equal(a, b)
    assert ra.epochs == rb.epochs and ra.best_val_loss == rb.best_val_loss
    assert not all_params_equal(a, c)


def test_fit_learns_and_reports(base: PairBase) -> None:
    H, y = labelled_pairs(base, 500, seed=5)
    head, report = fit_head(H, y, init=base.head)
    assert report.n_train + report.n_val == 500 and report.n_val == 100
    assert 1 <= report.best_epoch <= report.epochs and report.seconds > 0
    assert report.best_val_loss is not None and report.best_val_loss < 0.3
    H_test, y_test = labelled_pairs(base, 300, seed=6)
    accuracy = ((head.scores(H_test) > 0.5) == (y_test == 1)).mean()
    assert accuracy > 0.75  # a linear read-out of these random features reaches about 0.85
    assert ((base.head.scores(H_test) > 0.5) == (y_test == 1)).mean() < 0.65


def test_early_stopping_restores_the_best_epoch(base: PairBase) -> None:
    # Little data, noisy labels and a large step: the held-out loss improves, then rises.
    H, y = labelled_pairs(base, 60, seed=7, noise=0.3)
    head, report = fit_head(H, y, init=base.head, lr=3e-2, epochs=200, patience=4, seed=1)
    assert 1 <= report.best_epoch < report.epochs == report.best_epoch + 4
    # Training for exactly best_epoch epochs (same seed, same shuffles) gives the same head.
    again, report_again = fit_head(
        H, y, init=base.head, lr=3e-2, epochs=report.best_epoch, patience=1000, seed=1
    )
    assert report_again.best_epoch == report.best_epoch
    assert all_params_equal(head, again)
    assert report_again.best_val_loss == report.best_val_loss


def test_fit_never_returns_worse_than_the_start_on_held_out_pairs(base: PairBase) -> None:
    # Labels that carry no signal: the initial head (epoch 0) may well stay the best one.
    rng = np.random.default_rng(8)
    H, _ = labelled_pairs(base, 80, seed=8)
    y = (rng.random(80) < 0.5).astype(float)
    head, report = fit_head(H, y, init=base.head, lr=3e-2, epochs=50, patience=3, seed=2)
    if report.best_epoch == 0:
        assert all_params_equal(head, base.head)
    assert report.best_val_loss is not None


def test_l2_pull_keeps_the_head_near_the_prior(base: PairBase) -> None:
    H, y = labelled_pairs(base, 300, seed=9)
    prior = base.head

    def max_shift(head: Head) -> float:
        return max(float(np.abs(head.params[k] - prior.params[k]).max()) for k in prior.params)

    free, _ = fit_head(H, y, init=prior, prior=prior, l2_to_prior=0.0, val_fraction=0.0, epochs=20)
    held, _ = fit_head(H, y, init=prior, prior=prior, l2_to_prior=1e5, val_fraction=0.0, epochs=20)
    assert max_shift(free) > 0.1
    assert max_shift(held) < 0.01
    # From a head that is far from the prior, a huge pull brings it back.
    rng = np.random.default_rng(10)
    far = Head.from_params({k: v + rng.normal(0, 0.05, v.shape) for k, v in prior.params.items()})
    pulled, _ = fit_head(H, y, init=far, prior=prior, l2_to_prior=1e5, val_fraction=0.0, epochs=40)
    assert max_shift(far) > 0.15 and max_shift(pulled) < 0.02  # Adam moves <= lr per step


def test_low_rank_head_fits(base: PairBase) -> None:
    low = PairBase.untrained(seed=0, head_rank=8).head
    H, y = labelled_pairs(base, 400, seed=11)
    head, report = fit_head(H, y, init=low)
    assert head.rank == 8 and head.nbytes == low.nbytes
    H_test, y_test = labelled_pairs(base, 300, seed=12)
    assert ((head.scores(H_test) > 0.5) == (y_test == 1)).mean() > 0.75
    with pytest.raises(InvalidInputError, match="same form"):
        fit_head(H, y, init=low, prior=base.head)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_few_sample_incremental_update_stays_small_and_finite(base: PairBase, n: int) -> None:
    H, y = labelled_pairs(base, 400, seed=13)
    current, _ = fit_head(H, y, init=base.head)
    H_new, y_new = labelled_pairs(base, 200, seed=14, noise=0.0)
    positives, negatives = np.flatnonzero(y_new == 1), np.flatnonzero(y_new == 0)
    idx = np.concatenate([positives[: (n + 1) // 2], negatives[: n // 2]])
    H_few, y_few = H_new[idx], y_new[idx]
    # The user says the opposite of what the head believes: the update moves toward it a bit.
    y_feedback = 1.0 - y_few
    updated, report = fit_head(
        H_few, y_feedback, init=current, prior=base.head, epochs=5, lr=1e-3, seed=3
    )
    assert report.n_val == 0 and report.n_train == n and report.best_val_loss is None
    for k, v in updated.params.items():
        assert np.all(np.isfinite(v))
        assert float(np.abs(v - current.params[k]).max()) <= 5 * 1e-3 * 1.01  # <= epochs * lr
    before, after = current.scores(H_few), updated.scores(H_few)
    assert np.all(np.isfinite(after))

    def loss(s: np.ndarray) -> float:
        return float(-np.mean(np.log(np.where(y_feedback == 1, s, 1.0 - s))))

    assert loss(after) < loss(before)
    if n == 1:
        assert after[0] < before[0]  # the one item the user disagreed with
    # The rest of the user's ranking is not wrecked by one small update.
    H_test, y_test = labelled_pairs(base, 300, seed=15)
    assert ((updated.scores(H_test) > 0.5) == (y_test == 1)).mean() > 0.75


def test_class_balancing_weighs_the_rare_class(base: PairBase) -> None:
    H, y = labelled_pairs(base, 600, seed=16, noise=0.25)
    keep = np.concatenate([np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:40]])
    H, y = H[keep], y[keep]
    balanced, _ = fit_head(H, y, init=base.head, val_fraction=0.0, epochs=20)
    plain, _ = fit_head(H, y, init=base.head, val_fraction=0.0, epochs=20, balance_classes=False)
    assert balanced.scores(H[y == 1]).mean() > plain.scores(H[y == 1]).mean() + 0.1
    weighted, _ = fit_head(
        H, y, init=base.head, val_fraction=0.0, epochs=20, balance_classes=False,
        sample_weight=np.where(y == 1, (y == 0).sum() / (y == 1).sum(), 1.0),
    )
    np.testing.assert_allclose(weighted.scores(H), balanced.scores(H), atol=1e-5)


def test_validation_split_is_stratified_or_skipped(base: PairBase) -> None:
    H, y = labelled_pairs(base, 9, seed=17)
    _, report = fit_head(H, y, init=base.head, epochs=2)
    assert report.n_val == 0 and report.n_train == 9
    H, y = labelled_pairs(base, 200, seed=18)
    _, report = fit_head(H, y, init=base.head, epochs=2, val_fraction=0.25)
    assert report.n_val == 50
    _, report = fit_head(H, y, init=base.head, epochs=2, val_fraction=0.0)
    assert report.n_val == 0


def test_bad_fit_inputs_raise(base: PairBase) -> None:
    H, y = labelled_pairs(base, 20, seed=19)
    with pytest.raises(InvalidInputError, match="shape"):
        fit_head(H, y[:-1], init=base.head)
    with pytest.raises(InvalidInputError, match="shape"):
        fit_head(H[:, :10], y, init=base.head)
    with pytest.raises(InvalidInputError, match=r"in \[0, 1\]"):
        fit_head(H, np.where(y == 1, 2.0, 0.0), init=base.head)
    with pytest.raises(InvalidInputError, match=r"in \[0, 1\]"):
        fit_head(H, np.full(20, -0.5), init=base.head)
    with pytest.raises(InvalidInputError, match=r"in \[0, 1\]"):
        fit_head(H, np.full(20, np.nan), init=base.head)
    with pytest.raises(InvalidInputError, match="numbers"):
        fit_head(H, np.array(["1"] * 20), init=base.head)
    bad = H.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        fit_head(bad, y, init=base.head)
    with pytest.raises(InvalidInputError, match="no pairs"):
        fit_head(H[:0], y[:0], init=base.head)
    with pytest.raises(InvalidInputError, match="sample_weight"):
        fit_head(H, y, init=base.head, sample_weight=-np.ones(20))
    with pytest.raises(InvalidInputError, match="lr"):
        fit_head(H, y, init=base.head, lr=0.0)
    with pytest.raises(InvalidInputError, match="epochs"):
        fit_head(H, y, init=base.head, epochs=0)
    with pytest.raises(InvalidInputError, match="init"):
        fit_head(H, y, init=None)  # type: ignore[arg-type]
    fit_head(H, y.astype(bool), init=base.head, epochs=1)  # bool labels are fine


# ---------------------------------------------------------------------- the point of it all
class SyntheticWorld:
    """Sentence-like embeddings: topic + a few "style" axes + noise, L2-normalised.

    Queries are about a topic and say nothing about style. A user finds an item helpful when
    its sign on the user's style axis matches the user's taste, whatever the query: cosine
    similarity cannot see this, a head fitted on the user's own history can.
    """

    def __init__(self, rng: np.random.Generator, n_topics: int = 20, n_axes: int = 6,
                 style: float = 0.2, noise: float = 1.0) -> None:
        self.rng = rng
        self.topics = unit(rng.standard_normal((n_topics, DIM)))
        self.axes = unit(rng.standard_normal((n_axes, DIM)))
        self.style, self.noise = style, noise

    def items(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        topic = self.rng.integers(len(self.topics), size=n)
        signs = self.rng.choice([-1.0, 1.0], size=(n, len(self.axes)))
        e = self.topics[topic] + self.style * signs @ self.axes
        return unit(e + self.noise * self.rng.standard_normal((n, DIM)) / np.sqrt(DIM)), signs

    def query(self) -> np.ndarray:
        topic = self.topics[self.rng.integers(len(self.topics))]
        return unit(topic + self.noise * self.rng.standard_normal(DIM) / np.sqrt(DIM))


def ndcg_at_4(scores: np.ndarray, relevant: np.ndarray) -> float:
    discount = 1.0 / np.log2(np.arange(2, 6))
    dcg = (relevant[np.argsort(-scores, kind="stable")[:4]] * discount).sum()
    ideal = (np.sort(relevant)[::-1][:4] * discount).sum()
    return float(dcg / ideal) if ideal > 0 else 0.0


def test_fitted_heads_learn_idiosyncratic_users_that_cosine_cannot_see() -> None:
    rng = np.random.default_rng(2024)
    world = SyntheticWorld(rng)
    base = PairBase.untrained(dim=DIM, hidden=64, seed=0)
    k = 20  # the reranker reorders the top-20 retrieved history items
    gains = []
    for axis, taste in zip(range(6), itertools.cycle([1.0, -1.0])):
        history, signs = world.items(120)
        helpful = (signs[:, axis] == taste).astype(np.float64)
        train, test = np.arange(80), np.arange(80, 120)  # held-out items and queries

        H_parts, y_parts = [], []
        for _ in range(30):
            q = world.query()
            top = train[np.argsort(-(history[train] @ q))[:k]]
            H_parts.append(base.hidden_of(q, history[top]))
            y_parts.append(helpful[top])
        head, report = fit_head(np.concatenate(H_parts), np.concatenate(y_parts),
                                init=base.head, prior=base.head, seed=0)
        assert report.n_train == 480 and report.n_val == 120

        base_ndcg, head_ndcg = [], []
        for _ in range(30):
            q = world.query()
            cos = history[test] @ q
            top = test[np.argsort(-cos)[:k]]
            H = base.hidden_of(q, history[top])
            base_scores = base.head.scores(H)
            # The base head alone is dense retrieval, exactly.
            assert np.array_equal(np.argsort(-base_scores, kind="stable"),
                                  np.argsort(-H[:, 0], kind="stable"))
            base_ndcg.append(ndcg_at_4(base_scores, helpful[top]))
            head_ndcg.append(ndcg_at_4(head.scores(H), helpful[top]))
        gains.append(np.mean(head_ndcg) - np.mean(base_ndcg))
    # Over 30 world seeds (checked when this test was written): mean gain 0.28, never below
    # 0.17, and at least 5 of the 6 users gain in every seed.
    assert np.mean(gains) >= 0.15, f"NDCG@4 gains per user: {np.round(gains, 3)}"
    assert np.sum(np.array(gains) > 0.0) >= 5, f"NDCG@4 gains per user: {np.round(gains, 3)}"


def test_complex_head_parameters_are_refused() -> None:
    h = 4
    with pytest.raises(InvalidInputError, match="real"):
        Head(np.ones((h, h), complex), np.zeros(h), np.zeros((h, 2)), np.zeros(2))
    with pytest.raises(InvalidInputError, match="real"):
        Head.from_arrays({"head.W1": np.ones((h, h), complex), "head.b1": np.zeros(h),
                          "head.W2": np.zeros((h, 2)), "head.b2": np.zeros(2)})
