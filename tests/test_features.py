"""The named features the adapter and the reranker read, on small hand-checked cases."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from hydrahead.runtime.adapter_features import (
    FEATURE_NAMES,
    CandidateContext,
    answer_counts,
    candidate_features,
    distinct_candidates,
    overlap_f1,
    word_counts,
)
from hydrahead.runtime.records import Record
from hydrahead.runtime.reranker_features import reranker_features
from hydrahead.runtime.tasks import get_task

AREA = get_task("GIT_area")
SUBJECT = get_task("GIT_subject")
Q = np.array([1.0, 0.0, 0.0], dtype=np.float32)


def col(X: np.ndarray, name: str) -> np.ndarray:
    return X[:, FEATURE_NAMES.index(name)]


def test_distinct_candidates_put_the_greedy_answer_first() -> None:
    assert distinct_candidates("doc", ["tests", "doc", " ", "tests"]) == ["doc", "tests"]
    assert distinct_candidates(None, ["b", "a", "b"]) == ["b", "a"]


def test_label_features() -> None:
    context = CandidateContext(
        query_vec=Q,
        neighbour_answers=["doc", "tests", "doc", None],
        neighbour_scores=np.array([0.9, 0.9, 0.5, 0.95]),
        neighbour_times=[1.0, 2.0, 3.0, 4.0],
        prompt_answers=["doc", "tests"],
        greedy="tests",
        samples=["doc", "doc", "tests", "gitk"],
        answer_counts=Counter({"doc": 6, "tests": 2}),
    )
    cands = ["tests", "doc", "gitk"]
    vecs = np.array([[1, 0, 0], [0, 1, 0], [0.6, 0.8, 0]], dtype=np.float32)
    X = candidate_features(AREA, context, cands, vecs)
    assert X.shape == (3, len(FEATURE_NAMES)) and X.dtype == np.float32
    np.testing.assert_array_equal(col(X, "llm_greedy"), [1, 0, 0])
    np.testing.assert_allclose(col(X, "llm_vote"), [0.25, 0.5, 0.25])
    np.testing.assert_allclose(col(X, "sample_consensus"), col(X, "llm_vote"))
    # neighbours 0 and 1 tie at 0.9; neighbour 2 is far (weight e^-8); 3 has no answer
    w = np.exp(np.array([0.0, 0.0, -8.0]))
    w /= w.sum()
    np.testing.assert_allclose(col(X, "history_agreement"), [w[1], w[0] + w[2], 0], rtol=1e-5)
    np.testing.assert_allclose(col(X, "prompt_agreement"), [0.5, 0.5, 0])
    np.testing.assert_allclose(col(X, "recent_agreement"), [1 / 3, 2 / 3, 0], rtol=1e-6)
    n_labels = len(AREA.labels)
    np.testing.assert_allclose(col(X, "user_habit"),
                               [3 / (8 + n_labels), 7 / (8 + n_labels), 1 / (8 + n_labels)])
    np.testing.assert_array_equal(col(X, "length_fit"), [0, 0, 0])
    np.testing.assert_allclose(col(X, "query_similarity"), [1.0, 0.0, 0.6], atol=1e-6)


def test_generation_features() -> None:
    context = CandidateContext(
        query_vec=Q,
        neighbour_answers=["refs: teach the backend to pack", "refs: drop the old cache",
                           "Fix a typo"],
        neighbour_scores=np.array([0.8, 0.8, 0.8]),
        neighbour_times=[None, None, None],
        prompt_answers=["refs: teach the backend to pack"],
        greedy="refs: teach the backend",
        samples=["refs: teach the backend", "Teach the backend to pack refs"],
    )
    cands = ["refs: teach the backend", "Teach the backend to pack refs"]
    X = candidate_features(SUBJECT, context, cands, np.eye(3, dtype=np.float32)[:2])
    np.testing.assert_allclose(col(X, "user_habit"), [2 / 3, 1 / 3], rtol=1e-5)  # prefix habit
    # typical length: weighted median of 5, 4 and 3 words (prefix excluded) = 4
    np.testing.assert_allclose(col(X, "length_fit"), [1 - 1 / 4, 1 - 2 / 4], rtol=1e-6)
    assert col(X, "prompt_agreement")[0] == pytest.approx(
        overlap_f1(word_counts(cands[0]), word_counts("refs: teach the backend to pack")))
    assert col(X, "recent_agreement").tolist() == [0, 0]  # no timestamps: nothing is recent
    assert col(X, "sample_consensus")[0] > col(X, "llm_vote")[0]  # partial overlap counts


def test_overlap_f1_and_answer_counts() -> None:
    assert overlap_f1(word_counts("a b c"), word_counts("a b d e")) == pytest.approx(
        2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))
    assert overlap_f1(word_counts("x"), word_counts("y")) == 0.0
    assert answer_counts(AREA, ["doc", "Doc", "nonsense", None]) == Counter({"doc": 2})
    assert answer_counts(SUBJECT, ["anything"]) == Counter()


def _record(i: int, text: str, tag: str, ts: float | None) -> Record:
    return Record(id=f"r{i}", text=text, fields={"tag": tag}, timestamp=ts)


def test_reranker_features() -> None:
    records = [
        _record(0, "teach gitk the t7001 flag", "gitk", 30.0),
        _record(1, "gitk window fix", "gitk", 10.0),
        _record(2, "document the config", "doc", 20.0),
    ]
    X = reranker_features(AREA, "gitk t7001 window", records, np.array([0.7, 0.6, 0.1]))
    np.testing.assert_allclose(X[:, 0], [0.7, 0.6, 0.1], rtol=1e-6)
    idf = {w: np.log(4 / (df + 0.5)) for w, df in {"gitk": 2, "t7001": 1, "window": 1}.items()}
    total = sum(idf.values())
    np.testing.assert_allclose(X[:, 1], [(idf["gitk"] + idf["t7001"]) / total,
                                         (idf["gitk"] + idf["window"]) / total, 0.0], rtol=1e-5)
    np.testing.assert_allclose(X[:, 2], [0.5, 0.5, 0.0])  # answer consensus
    np.testing.assert_allclose(X[:, 3], [1.0, 0.0, 0.5])  # recency rank
    undated = [_record(0, "a", "doc", None), _record(1, "b", "doc", 5.0)]
    assert reranker_features(AREA, "a", undated, np.ones(2))[:, 3].tolist() == [0.5, 0.5]
    assert reranker_features(AREA, "a", [], np.zeros(0)).shape == (0, 4)
