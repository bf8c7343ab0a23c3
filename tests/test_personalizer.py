"""The Personalizer end to end: real bundle, real store, real HTTP to the offline simulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from testing.fault_server import FaultServer, Reply, chat_reply
from testing.synthetic_users import is_helpful, make_user

from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.encoder import Encoder
from hydrahead.runtime.errors import (
    HeadError,
    InvalidInputError,
    LLMError,
    StoreError,
    TaskError,
)
from hydrahead.runtime.adapter_features import candidate_features
from hydrahead.runtime.featurizer import base_fingerprint
from hydrahead.runtime.heads import Head
from hydrahead.runtime.importing import import_records
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.offline.server import OfflineLLMServer
from hydrahead.runtime.personalizer import Personalizer

FAST_RETRY = {"max_retries": 1, "backoff_base": 0.01, "backoff_max": 0.02, "read_timeout": 0.5}


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return Bundle.open(bundle_dir)


@pytest.fixture(scope="module")
def encoder(bundle: Bundle) -> Encoder:
    return Encoder(bundle)


@pytest.fixture()
def server() -> Iterator[OfflineLLMServer]:
    with OfflineLLMServer() as s:
        yield s


@pytest.fixture()
def user() -> dict:
    return make_user(0)


def _open(tmp_path: Path, bundle: Bundle, encoder: Encoder, url: str, **kw) -> Personalizer:
    config = LLMConfig.from_env(base_url=url, **kw.pop("llm_options", {}))
    return Personalizer.open(
        "alice", bundle=bundle, encoder=encoder, task="GIT_area", llm=config, root=tmp_path, **kw
    )


def test_cold_start_answers_with_base_heads_and_no_examples(tmp_path, bundle, encoder, server):
    with _open(tmp_path, bundle, encoder, server.url) as p:
        a = p.ask("Fix the flaky test in the rebase test script")
    assert a.items == []
    assert "Examples from this user's history" not in a.prompt
    assert a.answer in p.task.labels
    assert a.simulated
    assert len(a.candidates) >= 1 and all(0.0 <= c.score <= 1.0 for c in a.candidates)
    assert [c.score for c in a.candidates] == sorted((c.score for c in a.candidates), reverse=True)
    assert not (tmp_path / "users" / "alice" / "heads" / "GIT_area" / "reranker.npz").exists()


def test_ask_sends_exactly_the_reranked_items(tmp_path, bundle, encoder, server, user):
    with _open(tmp_path, bundle, encoder, server.url, k=10, m=3) as p:
        import_records(p.store, p.task, user["history"])
        a = p.ask(user["queries"][0]["query"])
    assert len(a.items) == 3
    assert [it.rerank_score for it in a.items] == sorted(
        (it.rerank_score for it in a.items), reverse=True
    )
    # the greedy and the sampling requests go out at once: find the samples' by n
    body = next(c.json() for c in server.captured if c.json()["n"] != 1)
    assert body["messages"] == [{"role": "user", "content": a.prompt}]
    assert body["n"] == 8
    sent = body["messages"][0]["content"]
    history_texts = {h["id"]: h["text"] for h in user["history"]}
    included = {i for i, t in history_texts.items() if t.split(". ")[0] in sent}
    assert included == {it.record.id for it in a.items}
    assert a.timings_ms["llm"] >= 0 and a.local_ms > 0


def test_fit_saves_stamped_heads_and_a_refit_costs_no_requests(
    tmp_path, bundle, encoder, server, user
):
    with _open(tmp_path, bundle, encoder, server.url) as p:
        import_records(p.store, p.task, user["history"])
        s = p.fit(budget=40, progress=False)
        assert s.labels.llm_calls == 40 and s.labels.llm_calls_cached == 0
        assert s.labels.simulated
        # half the budget to the adapter (greedy + samples: 10 queries), half to the reranker
        # (4 judged records + one no-record baseline per query: 4 queries)
        assert s.labels.reranker.n_pairs == 4 * 4
        assert s.head_bytes["reranker"] == p.heads["reranker"].nbytes > 0
        sent = len(server.captured)
        assert sent == 40
        heads = {r: p.heads[r].params for r in ("reranker", "adapter")}

        s2 = p.fit(budget=40, progress=False)
        assert s2.labels.llm_calls_cached == 40
        assert len(server.captured) == sent  # the server saw nothing new
        for role, params in heads.items():  # same labels, same seed -> same heads
            for name, value in params.items():
                np.testing.assert_array_equal(p.heads[role].params[name], value)

    head_dir = tmp_path / "users" / "alice" / "heads" / "GIT_area"
    fitted = [f"{role}.npz" for role in ("adapter", "reranker") if s.reports[role] is not None]
    assert fitted  # something was learned
    assert sorted(f.name for f in head_dir.iterdir()) == sorted(
        ["choices.json", "labels.npz", *fitted])
    Head.load(head_dir / "reranker.npz", base_fingerprint=base_fingerprint(bundle, "reranker"),
              role="reranker")
    with _open(tmp_path, bundle, encoder, server.url) as p:  # reopened: the fitted heads load
        for role, params in heads.items():
            for name, value in params.items():
                np.testing.assert_array_equal(p.heads[role].params[name], value)


def test_fitted_reranker_prefers_the_users_helpful_history(tmp_path, bundle, encoder, server):
    """Synthetic users whose helpful history cosine cannot see: the fitted head must find it.

    (Whether it then answers is the held-out check's decision, tested in test_validation.py;
    here the user's own fitted head ranks.)"""
    gains = []
    for seed in (0, 1):
        u = make_user(seed)
        with _open(tmp_path / f"u{seed}", bundle, encoder, server.url) as p:
            import_records(p.store, p.task, u["history"])

            def precision() -> float:
                head = p.heads.own("reranker")
                return float(
                    np.mean(
                        [
                            np.mean([is_helpful(it.record.id)
                                     for it in p.pipeline.rerank(q["query"], head=head)])
                            for q in u["queries"]
                        ]
                    )
                )

            before = precision()
            p.fit(budget=150, progress=False)
            after = precision()
        gains.append(after - before)
        assert after > before, (seed, before, after)
    assert np.mean(gains) >= 0.15, gains


def test_feedback_moves_the_adapter_toward_the_users_answer(
    tmp_path, bundle, encoder, server, user
):
    with _open(tmp_path, bundle, encoder, server.url) as p:
        import_records(p.store, p.task, user["history"])
        query = user["queries"][0]["query"]
        a = p.ask(query)
        labels = [p.task.answer_of(it.record) for it in a.items]
        wanted = next(lab for lab in labels if lab != a.answer)  # not what the LLM said
        vec = encoder.encode([wanted])

        def score() -> float:
            X = candidate_features(p.task, a.context, [wanted], vec)
            return float(p.adapter_scores(query, a.context.query_vec, [wanted], vec, X)[0])

        before = score()
        reranker_before = p.heads["reranker"].params["W2"].copy()
        p.feedback(query, wanted)
        assert score() > before
        assert not np.array_equal(p.heads["reranker"].params["W2"], reranker_before)
        with pytest.raises(InvalidInputError):
            p.feedback(query, "   ")
        with pytest.raises(InvalidInputError):
            p.feedback("  ", "tests")


def test_feedback_on_any_query_is_kept_and_every_fit_learns_from_it(
    tmp_path, bundle, encoder, server, user
):
    """Feedback for queries never asked (no LLM call) is stored with the user, survives
    reopening, and is in the data of the next fit: a head refitted with feedback that
    contradicts the LLM's labels differs from one refitted without it."""
    with _open(tmp_path, bundle, encoder, server.url) as p:
        import_records(p.store, p.task, user["history"])
        p.fit(budget=30, progress=False)
        sent = len(server.captured)
        for q in user["queries"][:8]:
            p.feedback(q["query"], "sequencer")  # a tag this user never uses
        assert len(server.captured) == sent  # nothing was sent
        kept = p.stored_feedback()
        assert len(kept["reranker"]) == 8 and len(kept["adapter"]) == 8
    with _open(tmp_path, bundle, encoder, server.url) as p:
        assert len(p.stored_feedback()["adapter"]) == 8  # it is the user's, on disk
        with_feedback = p.refit_from_labels()["adapter"]
        adapter_with = p.heads.own("adapter").params["W2"].copy()
        (tmp_path / "users" / "alice" / "heads" / "GIT_area" / "feedback.npz").unlink()
        p.refit_from_labels()
        assert with_feedback is not None
        assert not np.allclose(p.heads.own("adapter").params["W2"], adapter_with)


def test_bad_input_and_errors_keep_the_store_intact(tmp_path, bundle, encoder, server, user):
    with _open(tmp_path, bundle, encoder, server.url) as p:
        import_records(p.store, p.task, user["history"])
        n = p.store.count()
        with pytest.raises(InvalidInputError):
            p.ask("   ")
        with pytest.raises(InvalidInputError):
            p.add([{"id": "x", "text": ""}])
        assert p.store.count() == n
    with pytest.raises(TaskError, match="GIT_area"):
        Personalizer.open(
            "alice", bundle=bundle, encoder=encoder, task="no-such-task", root=tmp_path
        )
    with pytest.raises(InvalidInputError):
        Personalizer.open(
            "alice", bundle=bundle, encoder=encoder, task="GIT_area", root=tmp_path, k=2, m=5
        )
    with _open(tmp_path, bundle, encoder, server.url) as p:
        assert p.store.count() == n


@pytest.mark.parametrize(
    "behaviour, expect",
    [
        ("garbage", "answer"),
        ("empty", "error"),
        ("fewer", "answer"),
        ("500", "error"),
        ("hang", "error"),
    ],
)
def test_llm_failures_end_in_an_answer_or_a_clear_error(
    tmp_path, bundle, encoder, user, behaviour, expect
):
    replies = {
        "garbage": chat_reply(["%%% not a tag at all", "tests"]),
        "empty": chat_reply([]),
        "fewer": chat_reply(["doc"]),
        "500": Reply(500, body={"error": {"message": "boom"}}),
        "hang": Reply(200, body=b"{}", delay=2.0),
    }
    with FaultServer(default=replies[behaviour]) as fault:
        with _open(
            tmp_path, bundle, encoder, fault.url, llm_options=dict(FAST_RETRY, max_extra_calls=1)
        ) as p:
            import_records(p.store, p.task, user["history"])
            n = p.store.count()
            if expect == "answer":
                a = p.ask(user["queries"][0]["query"])
                assert a.answer in p.task.labels
            else:
                with pytest.raises(LLMError):
                    p.ask(user["queries"][0]["query"])
            assert p.store.count() == n
            assert fault.hits <= 4  # bounded retries


def test_heads_of_another_base_are_not_used(tmp_path, bundle, encoder, server, caplog):
    with _open(tmp_path, bundle, encoder, server.url) as p:
        p.heads["reranker"].save(
            p.heads.directory / "reranker.npz", base_fingerprint="0" * 64, role="reranker"
        )
    with _open(tmp_path, bundle, encoder, server.url) as p:  # no labels stored: base heads
        assert p.heads.stale == ["reranker"]
        assert "hydrahead fit" in caplog.text


def test_forget_removes_everything(tmp_path, bundle, encoder, server, user):
    p = _open(tmp_path, bundle, encoder, server.url)
    import_records(p.store, p.task, user["history"][:5])
    p.ask(user["queries"][0]["query"])
    user_dir = tmp_path / "users" / "alice"
    assert (user_dir / "outbox.jsonl").exists()
    p.forget()
    assert not user_dir.exists()


def test_low_rank_heads_are_smaller_and_keep_their_rank(tmp_path, bundle, encoder, server, user):
    with _open(tmp_path, bundle, encoder, server.url, head_rank=8) as p:
        import_records(p.store, p.task, user["history"])
        full_bytes = p.heads.featurizers["reranker"].head.nbytes
        s = p.fit(budget=40, progress=False)
        assert p.heads["reranker"].rank == 8
        assert s.head_bytes["reranker"] < full_bytes / 2
    with _open(tmp_path, bundle, encoder, server.url, head_rank=8) as p:
        assert p.heads["reranker"].rank == 8
    with pytest.raises(HeadError, match="rank"):
        _open(tmp_path, bundle, encoder, server.url)


@pytest.mark.parametrize("greedy, expected", [(True, "refs"), (False, "doc")])
def test_cold_start_adapter_answers_what_the_llm_answers(
    tmp_path, bundle, encoder, user, greedy, expected
):
    """Unfitted, the adapter picks the LLM's temperature-0 answer even when the samples vote
    otherwise, so the base pipeline is dense RAG; without it, the most voted sample."""
    samples = chat_reply(["doc", "tests", "doc", "gitk", "refs", "doc", "tests", "doc"])
    # the two requests go out at once: each is answered by what it asks for, not by arrival
    with FaultServer(default=lambda req: chat_reply(["refs"]) if req.json()["n"] == 1
                     else samples) as fault:
        with _open(
            tmp_path, bundle, encoder, fault.url, greedy=greedy,
            llm_options=dict(FAST_RETRY, max_extra_calls=0)
        ) as p:
            import_records(p.store, p.task, user["history"])
            a = p.ask(user["queries"][0]["query"])
        sent = [r.json() for r in fault.captured]
    assert sorted((b["n"], b["temperature"]) for b in sent) == ([(1, 0.0)] if greedy else []) + [(8, 1.0)]
    assert len({b["messages"][0]["content"] for b in sent}) == 1  # one prompt, asked twice
    assert a.answer == expected == a.candidates[0].text
    assert a.candidates[0].features["llm_greedy"] == float(greedy)
    assert a.candidates[0].features["llm_vote"] == (1 / 8 if greedy else 4 / 8)
    assert a.llm_requests == len(sent)


def test_records_without_an_answer_are_context(tmp_path, bundle, encoder, server, user):
    """Notes without a tag sit in the history beside tagged commits: fit and ask work, the
    notes can be retrieved and shown, and they are never labelling queries."""
    history = [dict(h) for h in user["history"]]
    for h in history[::3]:
        del h["tag"]  # a third of the history carries no answer
    with _open(tmp_path, bundle, encoder, server.url) as p:
        import_records(p.store, p.task, history)
        p.fit(budget=40, progress=False)
        answers = [p.ask(q["query"]) for q in user["queries"][:5]]
        p.feedback(user["queries"][0]["query"], "doc")
    untagged = {h["id"] for h in history if "tag" not in h}
    shown = {it.record.id for a in answers for it in a.items}
    assert all(a.answer is not None for a in answers)
    assert shown & untagged  # retrieved as context
    for a in answers:
        for it in a.items:
            if it.record.id in untagged:
                assert it.record.text.strip() in a.prompt


def test_heads_path_that_is_a_file(tmp_path: Path, bundle_dir: Path) -> None:
    user = tmp_path / "users" / "u"
    user.mkdir(parents=True)
    (user / "heads").write_text("not a directory")
    with pytest.raises(StoreError, match="heads"):
        Personalizer.open("u", bundle=bundle_dir, task="GIT_area", root=tmp_path)
    # and the store it opened was closed again: a second open fails the same way, not "in use"
    with pytest.raises(StoreError, match="heads"):
        Personalizer.open("u", bundle=bundle_dir, task="GIT_area", root=tmp_path)
