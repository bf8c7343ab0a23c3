"""The labeller: temporal hold-out queries, graded or binary reranker labels across the top-k
depth, adapter labels with features, and the budget, against the offline simulator over HTTP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hydrahead.evaluation.persona_world import make_user
from hydrahead.runtime.adapter_features import FEATURE_NAMES
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.errors import InvalidInputError
from hydrahead.runtime.importing import import_records
from hydrahead.runtime.labeling import Labeler, _spread
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.offline.server import OfflineLLMServer
from hydrahead.runtime.personalizer import Personalizer


@pytest.fixture()
def user_p(tmp_path: Path, bundle_dir: Path):
    user = make_user(3)
    with OfflineLLMServer() as server, Personalizer.open(
        "lab", bundle=Bundle.open(bundle_dir), task="GIT_area",
        llm=LLMConfig.from_env(base_url=server.url), root=tmp_path,
    ) as p:
        import_records(p.store, p.task, user["history"])
        yield user, p, server


def _answers_by_vector(p: Personalizer) -> dict[bytes, str]:
    records = p.store.list()
    vectors = p.store.vectors([r.id for r in records])
    return {v.tobytes(): p.task.answer_of(r) for r, v in zip(records, vectors)}


def test_graded_labels_prefer_records_that_answer_like_the_query(user_p) -> None:
    user, p, server = user_p
    labeler = Labeler(p.store, p.task, p.llm, budget=100, adapter_share=0.0, progress=False)
    pairs = labeler.reranker_labels()
    assert labeler.summary(pairs, pairs).llm_calls == len(server.captured) <= 100
    assert pairs.n_pairs == 4 * 20  # 100 calls = 20 queries x (4 records + 1 baseline)
    answer = _answers_by_vector(p)
    same, other = [], []
    for q, docs, y in zip(pairs.queries, pairs.docs, pairs.labels):
        gold = answer[q.tobytes()]
        assert ((y >= 0) & (y <= 1)).all()
        for d, label in zip(docs, y):
            (same if answer[d.tobytes()] == gold else other).append(label)
    assert np.mean(same) > 0.5 > np.mean(other), (np.mean(same), np.mean(other))  # helps / misleads
    assert np.mean(same) - np.mean(other) > 0.1


def test_binary_rule_is_hydras(user_p) -> None:
    _, p, server = user_p
    labeler = Labeler(p.store, p.task, p.llm, budget=40, adapter_share=0.0,
                      reranker_rule="binary", progress=False)
    pairs = labeler.reranker_labels()
    assert pairs.n_pairs == 40  # no baseline request: every call labels a record
    assert set(np.concatenate(pairs.labels).tolist()) <= {0.0, 1.0}
    assert {(c.json()["n"], c.json()["temperature"]) for c in server.captured} == {(1, 0.0)}


def test_adapter_labels_carry_the_ask_time_features(user_p) -> None:
    _, p, server = user_p
    labeler = Labeler(p.store, p.task, p.llm, budget=20, adapter_share=1.0, progress=False)
    pairs = labeler.adapter_labels(p.rerank_scores, p.encoder.encode)
    assert len(server.captured) == 20 and len(pairs.labels) == 10  # greedy + samples each
    for docs, y, X in zip(pairs.docs, pairs.labels, pairs.features):
        assert X.shape == (len(docs), len(FEATURE_NAMES)) and len(y) == len(docs)
        assert X[0, FEATURE_NAMES.index("llm_greedy")] == 1.0  # the greedy answer comes first
        assert set(y.tolist()) <= {0.0, 1.0}


def test_items_are_spread_over_the_retrieval_depth() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        picked = _spread(20, 4, rng)
        assert [i // 5 for i in picked] == [0, 1, 2, 3]  # one from each quarter of the top 20
    assert _spread(3, 4, rng) == [0, 1, 2]


@pytest.mark.parametrize("options", [
    {"reranker_rule": "soft"}, {"adapter_share": 1.5}, {"budget": -1}, {"items_per_query": 0}])
def test_bad_options_are_refused(user_p, options) -> None:
    _, p, _ = user_p
    with pytest.raises(InvalidInputError):
        Labeler(p.store, p.task, p.llm, **options)


def _pairs_signature(pairs) -> list:
    return [(q.tobytes(), np.asarray(y).round(6).tolist()) for q, y in zip(pairs.queries,
                                                                            pairs.labels)]


def test_concurrent_labelling_gives_the_same_labels_as_serial(user_p) -> None:
    _, p, server = user_p
    made = []
    for concurrency in (1, 8):
        p.llm.cache.clear()
        labeler = Labeler(p.store, p.task, p.llm, budget=60, progress=False,
                          concurrency=concurrency)
        reranker = labeler.reranker_labels()
        adapter = labeler.adapter_labels(p.rerank_scores, p.encoder.encode)
        made.append((_pairs_signature(reranker), _pairs_signature(adapter),
                     labeler.summary(reranker, adapter).requests_sent))
    assert made[0] == made[1] and made[0][2] == 60


def test_the_budget_caps_requests_sent_to_a_server_that_ignores_n(
    tmp_path: Path, bundle_dir: Path
) -> None:
    from testing.fault_server import FaultServer, Reply

    from hydrahead.offline.simulator import SimulatedLLM

    simulator = SimulatedLLM()

    def one_choice(req) -> Reply:  # like Ollama: n is ignored
        body = simulator.complete(req.json())
        body["choices"] = body["choices"][:1]
        return Reply(200, body)

    with FaultServer(default=one_choice) as server, Personalizer.open(
        "lab", bundle=Bundle.open(bundle_dir), task="GIT_area",
        llm=LLMConfig.from_env(base_url=server.url), root=tmp_path,
    ) as p:
        import_records(p.store, p.task, make_user(3)["history"])
        summary = p.fit(budget=50, progress=False)
        assert server.hits == summary.labels.requests_sent <= 50
        assert summary.labels.adapter.n_pairs > 0  # the adapter's share was kept for it
