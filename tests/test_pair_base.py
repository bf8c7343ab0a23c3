"""PairBase: pair features, the cosine-ranking base head, and the .npz file format."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hydrahead.runtime.errors import BundleError, InvalidInputError
from hydrahead.runtime.heads import Head
from hydrahead.runtime.featurizer import Featurizer, NumpyFastBase
from hydrahead.runtime.pair_base import PairBase

DIM = 384


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def base() -> PairBase:
    return PairBase.untrained(dim=DIM, hidden=64, seed=0)


def test_hidden_of_shape_dtype_and_cosine_feature(base: PairBase) -> None:
    rng = np.random.default_rng(1)
    q, D = unit(rng.standard_normal(DIM)), unit(rng.standard_normal((20, DIM)))
    H = base.hidden_of(q, D)
    assert H.shape == (20, 64) and H.dtype == np.float32
    assert base.hidden == 64 and base.width == 63 and base.dim == DIM
    np.testing.assert_allclose(H[:, 0], base.feature_scale[0] * (D @ q), rtol=1e-5, atol=1e-6)
    # Not normalised inputs: feature 0 is still the cosine.
    np.testing.assert_allclose(base.hidden_of(3 * q, 2 * D)[:, 0], H[:, 0], rtol=1e-5, atol=1e-6)
    assert base.hidden_of(q, np.zeros((0, DIM), np.float32)).shape == (0, 64)


def test_hidden_of_equals_the_documented_formula(base: PairBase) -> None:
    rng = np.random.default_rng(2)
    q, D = unit(rng.standard_normal(DIM)), unit(rng.standard_normal((5, DIM)))
    X = np.concatenate([np.broadcast_to(q, D.shape), D, q * D, np.abs(q - D)], axis=1)
    expected = np.tanh(X.astype(np.float64) @ base.W + base.b)
    np.testing.assert_allclose(base.hidden_of(q, D)[:, 1:], expected, atol=1e-5)


def test_random_features_are_not_saturated_and_vary_with_the_item(base: PairBase) -> None:
    rng = np.random.default_rng(3)
    q, D = unit(rng.standard_normal(DIM)), unit(rng.standard_normal((500, DIM)))
    F = base.hidden_of(q, D)[:, 1:]
    assert (np.abs(F) > 0.95).mean() < 0.01
    assert F.std(axis=0).min() > 0.05  # every feature depends on the item


def test_a_numpy_base_is_a_featurizer(base: PairBase) -> None:
    featurizer = NumpyFastBase(base, "fingerprint")
    assert isinstance(featurizer, Featurizer) and featurizer.hidden == base.hidden


def test_untrained_is_deterministic_per_seed() -> None:
    a, b, c = PairBase.untrained(seed=7), PairBase.untrained(seed=7), PairBase.untrained(seed=8)
    assert np.array_equal(a.W, b.W) and np.array_equal(a.head.W1, b.head.W1)
    assert not np.array_equal(a.W, c.W)


@pytest.mark.parametrize("head_rank", [None, 8])
def test_base_head_ranking_is_exactly_cosine_ranking(head_rank: int | None) -> None:
    base = PairBase.untrained(seed=4, head_rank=head_rank)
    rng = np.random.default_rng(5)
    topics = unit(rng.standard_normal((10, DIM)))
    for trial in range(300):
        q = unit(topics[trial % 10] + 0.8 * rng.standard_normal(DIM) / np.sqrt(DIM))
        # Items near the query's topic and elsewhere: cosines from about -0.2 to 0.9.
        mix = topics[rng.integers(10, size=30)] + rng.uniform(0.3, 2.0, (30, 1)) * unit(
            rng.standard_normal((30, DIM))
        )
        D = unit(mix)
        H = base.hidden_of(q, D)
        cos = H[:, 0]
        scores = base.head.scores(H)
        if np.min(np.diff(np.sort(cos))) == 0.0:
            continue  # exact ties in float32 cosine: any order is right
        assert np.array_equal(np.argsort(-scores, kind="stable"), np.argsort(-cos, kind="stable"))
        assert np.all(np.diff(scores[np.argsort(cos)]) > 0.0)  # strictly increasing, no ties


def test_base_head_score_is_increasing_over_the_whole_cosine_range(base: PairBase) -> None:
    cos = np.linspace(-1.0, 1.0, 20001)
    rng = np.random.default_rng(6)
    H = np.tanh(rng.standard_normal((cos.size, base.hidden))).astype(np.float32)
    H[:, 0] = base.feature_scale[0] * cos  # random other features must not matter
    s = base.head.scores(H)
    assert np.all(np.diff(s) > 0.0)
    assert s[0] < 0.1 and s[-1] > 0.9  # a useful range, not a flat line
    H2 = np.tanh(rng.standard_normal(H.shape)).astype(np.float32)
    H2[:, 0] = H[:, 0]
    assert np.array_equal(base.head.scores(H2), s)


def test_bad_inputs_raise(base: PairBase) -> None:
    q = unit(np.ones(DIM))
    with pytest.raises(InvalidInputError):
        base.hidden_of(q[:10], np.ones((2, DIM)))
    with pytest.raises(InvalidInputError):
        base.hidden_of(q, np.ones((2, DIM + 1)))
    with pytest.raises(InvalidInputError):
        base.hidden_of(q, np.ones(DIM))
    bad = np.ones((2, DIM), np.float32)
    bad[1, 3] = np.nan
    with pytest.raises(InvalidInputError):
        base.hidden_of(q, bad)
    with pytest.raises(InvalidInputError):
        base.hidden_of(q, np.zeros((1, DIM)))
    with pytest.raises(InvalidInputError):
        PairBase(base.W, base.b[:-1], ("cos",), [2.0], base.head)
    with pytest.raises(InvalidInputError):
        PairBase(base.W, base.b, ("cos",), [2.0], PairBase.untrained(hidden=32).head)
    with pytest.raises(InvalidInputError):
        PairBase(base.W, base.b, ("cos", "cos"), [2.0, 1.0], base.head)


@pytest.mark.parametrize("head_rank", [None, 4])
def test_save_load_round_trip_is_bit_exact(tmp_path: Path, head_rank: int | None) -> None:
    base = PairBase.untrained(seed=9, head_rank=head_rank)
    path = tmp_path / "reranker.npz"
    base.save(path)
    with np.load(path, allow_pickle=False) as npz:  # arrays only
        assert {"format", "format_version", "W", "b", "feature_names", "feature_scale",
                "head.b1"} <= set(npz.files)
    loaded = PairBase.load(path)
    assert np.array_equal(loaded.W, base.W) and np.array_equal(loaded.b, base.b)
    assert loaded.feature_names == base.feature_names == ("cos",)
    assert np.array_equal(loaded.feature_scale, base.feature_scale)
    assert loaded.head.rank == head_rank
    for k, v in base.head.params.items():
        assert np.array_equal(loaded.head.params[k], v)
    rng = np.random.default_rng(10)
    q, D = unit(rng.standard_normal(DIM)), unit(rng.standard_normal((20, DIM)))
    assert np.array_equal(loaded.hidden_of(q, D), base.hidden_of(q, D))
    H = loaded.hidden_of(q, D)
    assert np.array_equal(loaded.head.scores(H), base.head.scores(base.hidden_of(q, D)))


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_damaged_files_raise_bundle_error(tmp_path: Path, base: PairBase) -> None:
    good = tmp_path / "good.npz"
    base.save(good)
    data = good.read_bytes()

    with pytest.raises(BundleError, match="does not exist"):
        PairBase.load(tmp_path / "absent.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="corrupt"):
        PairBase.load(truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(BundleError):
        PairBase.load(garbage)

    with np.load(good, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    missing = tmp_path / "missing.npz"
    missing.write_bytes(_npz_bytes(**{k: v for k, v in arrays.items() if k != "W"}))
    with pytest.raises(BundleError, match="lacks"):
        PairBase.load(missing)
    newer = tmp_path / "newer.npz"
    newer.write_bytes(_npz_bytes(**{**arrays, "format_version": np.array(99)}))
    with pytest.raises(BundleError, match="newer"):
        PairBase.load(newer)
    wrong_shape = tmp_path / "shape.npz"
    wrong_shape.write_bytes(_npz_bytes(**{**arrays, "b": arrays["b"][:-3]}))
    with pytest.raises(BundleError, match="inconsistent"):
        PairBase.load(wrong_shape)
    head_mismatch = tmp_path / "head.npz"
    head_mismatch.write_bytes(_npz_bytes(**{**arrays, "head.b2": np.zeros(3, np.float32)}))
    with pytest.raises(BundleError, match="inconsistent"):
        PairBase.load(head_mismatch)

    # A flipped byte in the weights fails the zip CRC check.
    flipped = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo("W.npy")
    flipped[info.header_offset + 200] ^= 0xFF
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    with pytest.raises(BundleError, match="corrupt"):
        PairBase.load(tmp_path / "flipped.npz")


def test_base_head_is_a_head(base: PairBase) -> None:
    assert isinstance(base.head, Head) and base.head.hidden == base.hidden


def test_a_version_1_cosine_base_still_loads(tmp_path: Path, base: PairBase) -> None:
    v1 = tmp_path / "v1.npz"
    v1.write_bytes(_npz_bytes(
        format=np.array("hydrahead-pair-base"), format_version=np.array(1), W=base.W, b=base.b,
        cos_scale=np.array(2.0, np.float32),
        **{f"head.{k}": v for k, v in base.head.params.items()}))
    loaded = PairBase.load(v1)
    assert loaded.feature_names == ("cos",) and loaded.feature_scale[0] == 2.0
    rng = np.random.default_rng(11)
    q, D = unit(rng.standard_normal(DIM)), unit(rng.standard_normal((6, DIM)))
    assert np.array_equal(loaded.hidden_of(q, D), base.hidden_of(q, D))


GAINS = {"greedy": 4.0, "vote": 0.5, "other": 0.0}


@pytest.mark.parametrize("head_rank", [None, 3, 8])
def test_named_features_pass_through_and_the_base_head_reads_its_gains(
        head_rank: int | None) -> None:
    base = PairBase.untrained(dim=DIM, hidden=16, seed=12, features=GAINS, gain=0.0,
                              head_rank=head_rank)
    assert base.feature_names == tuple(GAINS) and base.n_features == 3 and base.hidden == 16
    rng = np.random.default_rng(13)
    q, D = unit(rng.standard_normal(DIM)), unit(rng.standard_normal((40, DIM)))
    X = rng.uniform(0, 1, (40, 3)).astype(np.float32)
    H = base.hidden_of(q, D, X)
    np.testing.assert_array_equal(H[:, :3], X)
    assert not H[:, 3:].any()  # gain 0: the non-linear features are off
    margin = np.log(base.head.scores(H)) - np.log1p(-base.head.scores(H))
    expected = 4.0 * np.tanh(X[:, 0]) + 0.5 * np.tanh(X[:, 1])  # "other" has gain 0
    np.testing.assert_allclose(margin, expected, atol=1e-4)
    with pytest.raises(InvalidInputError, match="pass them"):
        base.hidden_of(q, D)
    with pytest.raises(InvalidInputError, match="features"):
        base.hidden_of(q, D, X[:, :2])
    with pytest.raises(InvalidInputError, match="head_rank"):
        PairBase.untrained(hidden=16, features=GAINS, head_rank=2)
