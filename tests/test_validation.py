"""Per-user validation: a fitted head answers only where it beats the base head on the user's
held-out recent records; records leave the prompt where they hurt this LLM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from testing.fault_server import FaultServer, Reply
from testing.synthetic_users import make_user

from hydrahead.offline.simulator import SimulatedLLM
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.errors import HeadError
from hydrahead.runtime.heads import Head
from hydrahead.runtime.importing import import_records
from hydrahead.runtime.labeling import Labeler
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.runtime.pairs import PairSet
from hydrahead.runtime.personalizer import Personalizer
from hydrahead.runtime.tasks.base import EXAMPLES_HEADER
from hydrahead.runtime.validation import (
    MAX_SIGN_P,
    MIN_NET_WINS,
    MIN_VALIDATION_GROUPS,
    Choices,
    PromptCheck,
    RoleCheck,
    check_answers,
    check_prompt,
    check_role,
    holdout,
    order_metric,
    pick_metric,
    sign_test,
)


def _pairs(n_records: int, n_questions: int = 0, n_feedback: int = 0) -> PairSet:
    pairs = PairSet()
    rows = ([None] * n_questions + [f"r{i}" for i in range(n_records)]
            + [None] * n_feedback)
    for qid in rows:
        pairs.add(np.zeros(4), np.zeros((2, 4)), [1.0, 0.0], query_id=qid)
    return pairs


def test_holdout_takes_every_other_of_the_newest_records_only() -> None:
    pairs = _pairs(10, n_questions=2, n_feedback=3)
    train, held = holdout(pairs, 12)  # 2 questions + 10 records are labels; 3 feedback follow
    assert held == [2, 4, 6]  # records r0, r2, r4: the newest, every other one
    assert sorted(train + held) == list(range(15))
    assert {0, 1, 12, 13, 14} <= set(train)  # questions and feedback always train
    small = _pairs(2 * MIN_VALIDATION_GROUPS)
    assert holdout(small, len(small)) == (list(range(len(small))), [])  # too few to tell


def test_metrics() -> None:
    targets = [np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0])]
    assert pick_metric([np.array([3, 1, 2]), np.array([0, 1])], targets) == 1.0
    assert pick_metric([np.array([1, 3, 2]), np.array([1, 0])], targets) == 0.0
    graded = [np.array([0.9, 0.5, 0.1])]
    assert order_metric([np.array([3.0, 2.0, 1.0])], graded) == 1.0
    assert order_metric([np.array([1.0, 2.0, 3.0])], graded) == 0.0
    assert order_metric([np.array([1.0, 1.0, 1.0])], graded) == 0.5
    assert order_metric([np.array([1.0, 2.0])], [np.array([0.5, 0.5])]) == 0.5  # nothing differs


def _head(bias: float) -> Head:
    """A head whose score is sigmoid(bias * h[0]): it prefers items with a large first feature
    when bias > 0."""
    W1 = np.zeros((2, 2), np.float32)
    W1[0, 0] = 1.0
    W2 = np.zeros((2, 2), np.float32)
    W2[0, 1] = bias
    return Head(W1, np.zeros(2, np.float32), W2, np.zeros(2, np.float32))


def test_check_role_uses_a_head_only_where_it_wins() -> None:
    # The base head scores every item the same and picks the first; the good head picks the
    # last (largest first feature), the bad one the first.
    hidden = [np.array([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]], np.float32)] * 4
    right_last = [np.array([0.0, 0.0, 1.0])] * 4
    good, bad, base = _head(2.0), _head(-2.0), _head(0.0)
    assert check_role(base, good, hidden, right_last, listwise=True).used
    assert not check_role(base, bad, hidden, right_last, listwise=True).used  # a tie with base
    assert not check_role(base, base, hidden, right_last, listwise=True).used  # a tie
    assert check_role(base, good, hidden, right_last, listwise=False).used
    assert not check_role(base, bad, hidden, right_last, listwise=False).used
    assert not check_role(base, good, [], [], listwise=True).used  # nothing to check on
    # Group by group: the good head must win MIN_NET_WINS more groups than it loses, and a
    # sign test must find that unlikely by chance.
    right_first = [np.array([1.0, 0.0, 0.0])]  # the base's pick is right, the good head's not
    for wins, losses, used in ((1, 0, False), (2, 0, False), (3, 1, False), (4, 0, True),
                               (5, 1, False), (6, 1, True), (1, 1, False)):
        verdict = check_role(base, good, hidden[:1] * (wins + losses),
                             right_last[:1] * wins + right_first * losses, listwise=True)
        assert (verdict.wins, verdict.losses, verdict.used) == (wins, losses, used)
        assert used == (wins - losses >= MIN_NET_WINS and sign_test(wins, losses) <= MAX_SIGN_P)
    # Where both pick the same, the group's loss decides it: the bad head is surer of the
    # wrong pick than the base, and loses every group.
    assert check_role(base, bad, hidden, right_last, listwise=True).losses == 4
    assert check_role(base, good, hidden, [np.array([0.0, 1.0, 1.0])] * 4,
                      listwise=True).wins == 4  # both right: the good head is surer


def test_sign_test() -> None:
    assert sign_test(0, 0) == 1.0
    assert sign_test(4, 0) == 1 / 16
    assert sign_test(5, 1) == pytest.approx(7 / 64)
    assert sign_test(0, 3) == 1.0


def test_check_answers_and_prompt() -> None:
    # End to end, on the LLM's own answers: more queries answered better than worse.
    assert check_answers([0.5, 0.5], [0.6, 0.5]).used
    assert check_answers([0.5] * 5, [0.6, 0.6, 0.7, 0.4, 0.5]).used  # 3 won, 1 lost
    assert not check_answers([0.5] * 4, [0.9, 0.9, 0.4, 0.4]).used  # a higher mean, 2-2
    assert not check_answers([0.5] * 3, [0.6, 0.4, 0.5]).used
    assert check_answers([0.5, 0.5], [0.6, 0.7]).wins == 2
    assert not check_answers([0.5, 0.5], [0.5, 0.5]).used
    assert not check_answers([], []).used
    assert check_prompt([(0.9, 0.2)] * 2).records is None  # too little evidence
    assert check_prompt([(0.9, 0.2)] * 3).records == 0  # records hurt
    assert check_prompt([(0.2, 0.9)] * 3).records is None
    assert check_prompt([(0.5, 0.5)] * 5).records is None  # a tie keeps them


def test_choices_file_round_trip_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "choices.json"
    assert Choices.load(path).used("adapter")  # none saved: fitted heads answer
    choices = Choices({"adapter": RoleCheck(False, "no", 3, 0.5, 0.4)}, PromptCheck(0, 4, 1, 0))
    choices.save(path)
    loaded = Choices.load(path)
    assert loaded == choices and not loaded.used("adapter") and loaded.used("reranker")
    for bad in ("[1, 2]", "{", json.dumps({"format": "hydrahead-choices", "version": 1,
                                           "roles": {"adapter": {"used": "x"}}, "prompt": {}}),
                json.dumps({"format": "hydrahead-choices", "version": 1, "roles": {},
                            "prompt": {"records": 3}})):
        path.write_text(bad)
        with pytest.raises(HeadError, match="choices.json"):
            Choices.load(path)


def _simulator_reply(simulator: SimulatedLLM, *, records_hurt: bool):
    def reply(req) -> Reply:
        body = req.json()
        out = simulator.complete(body)
        if records_hurt and EXAMPLES_HEADER in body["messages"][0]["content"]:
            for choice in out["choices"]:  # shown the user's records, this LLM goes astray
                choice["message"]["content"] = "sequencer"
        return Reply(200, out)
    return reply


@pytest.mark.parametrize("records_hurt", [True, False])
def test_records_leave_the_prompt_only_where_they_hurt(tmp_path: Path, bundle_dir,
                                                       records_hurt: bool) -> None:
    user = make_user(0)
    with FaultServer(default=_simulator_reply(SimulatedLLM(), records_hurt=records_hurt)) as \
            server, Personalizer.open("u", bundle=Bundle.open(bundle_dir), task="GIT_area",
                                      root=tmp_path, llm=LLMConfig.from_env(base_url=server.url)
                                      ) as p:
        import_records(p.store, p.task, user["history"])
        s = p.fit(budget=100, progress=False)
        assert s.choices.prompt.n >= 3
        sent = server.hits
        a = p.ask(user["queries"][0]["query"])
        asked = server.captured[sent].json()["messages"][0]["content"]
        if records_hurt:
            assert s.choices.prompt.records == 0
            assert s.choices.prompt.without > s.choices.prompt.with_records
            assert a.items == [] and EXAMPLES_HEADER not in asked
        else:
            assert s.choices.prompt.records is None
            assert len(a.items) == p.settings.m and EXAMPLES_HEADER in asked
    with Personalizer.open("u", bundle=Bundle.open(bundle_dir), task="GIT_area",
                           root=tmp_path) as p:  # the choice is the user's, on disk
        assert p.heads.choices.prompt.records == (0 if records_hurt else None)
        with p.heads.using(fitted=()):
            assert p.heads.prompt_records(4) == 4  # base only: the settings' m


def test_compare_rerankers_asks_end_to_end_and_shares_identical_prompts(
        tmp_path: Path, bundle_dir) -> None:
    user = make_user(1)
    with FaultServer(default=_simulator_reply(SimulatedLLM(), records_hurt=False)) as server, \
            Personalizer.open("v", bundle=Bundle.open(bundle_dir), task="GIT_area",
                              root=tmp_path, llm=LLMConfig.from_env(base_url=server.url)) as p:
        import_records(p.store, p.task, user["history"])
        labeler = Labeler(p.store, p.task, p.llm, settings=p.settings, budget=60,
                          progress=False)
        ids = [q.id for q in labeler._adapter_queries[:4]]

        def nearest(query, qvec, records, vecs, cosines):
            return np.asarray(cosines, np.float64)

        def farthest(query, qvec, records, vecs, cosines):
            return -np.asarray(cosines, np.float64)

        quality = labeler.compare_rerankers({"near": nearest, "same": nearest,
                                             "far": farthest}, ids)
        assert len(quality["near"]) == len(quality["far"]) == 4
        assert quality["near"] == quality["same"]
        assert np.mean(quality["near"]) > np.mean(quality["far"])  # near examples help here
        per_prompt = 1 + int(p.settings.greedy)
        assert server.hits == 4 * 2 * per_prompt  # "same" shared "near"'s requests


def test_an_unreadable_choices_file_never_locks_the_user_out(tmp_path: Path, bundle_dir,
                                                             caplog) -> None:
    user = make_user(2)
    with FaultServer(default=_simulator_reply(SimulatedLLM(), records_hurt=False)) as server:
        config = LLMConfig.from_env(base_url=server.url)
        with Personalizer.open("w", bundle=Bundle.open(bundle_dir), task="GIT_area",
                               root=tmp_path, llm=config) as p:
            import_records(p.store, p.task, user["history"])
            p.fit(budget=60, progress=False)
        choices = tmp_path / "users" / "w" / "heads" / "GIT_area" / "choices.json"
        choices.write_text('{"format": "hydrahead-choices", "version": 1, "roles": [')
        with Personalizer.open("w", bundle=Bundle.open(bundle_dir), task="GIT_area",
                               root=tmp_path, llm=config) as p:
            assert "choices.json" in caplog.text and "base heads" in caplog.text
            assert all(p.heads[r] is p.heads.base[r] for r in p.heads)
            assert p.ask(user["queries"][0]["query"]).answer is not None
            p.fit(budget=60, progress=False)  # the next fit writes it again
        assert Choices.load(choices).roles


def test_fit_says_which_heads_it_fitted_refitted_reverted_or_kept(tmp_path: Path,
                                                                    bundle_dir) -> None:
    """The persona world with a stubborn LLM (tests/test_adapter_learns.py): the adapter learns
    and passes its check; a refit replaces it; a fit with nothing to learn puts the shared base
    head back, and says so (it used to say "kept" while an older head stayed)."""
    from hydrahead.evaluation.persona_world import make_user as persona_user
    from hydrahead.offline.server import OfflineLLMServer
    from hydrahead.offline.simulator import SimulatorParams
    from hydrahead.runtime.personalizer import OUTCOMES, fit_outcome

    assert [fit_outcome(b, a) for b, a in ((False, True), (True, True), (True, False),
                                           (False, False))] == list(OUTCOMES)
    stubborn = SimulatedLLM(SimulatorParams(example_weight=0.5))
    with OfflineLLMServer(simulator=stubborn) as server, Personalizer.open(
            "u", bundle=Bundle.open(bundle_dir), task="GIT_area", root=tmp_path,
            llm=LLMConfig.from_env(base_url=server.url)) as p:
        # persona 5: a user whose adapter passes its check (most of this world's users' do not
        # pass it by MIN_NET_WINS groups at budget 120; this test is about what fit() reports)
        import_records(p.store, p.task, persona_user(5, questions=6, drift=0.6)["history"])
        seen, own = [], set()
        for budget in (120, 120, 0, 0):  # a fit, a refit, then twice nothing to learn
            summary = p.fit(budget=budget)
            answering = {r for r in p.heads
                         if summary.reports[r] is not None and summary.choices.used(r)}
            assert summary.outcomes == {r: fit_outcome(r in own, r in answering)
                                        for r in p.heads}
            assert all((p.heads[r] is p.heads.base[r]) == (r not in answering) for r in p.heads)
            seen += summary.outcomes.values()
            own = answering
        assert set(seen) == set(OUTCOMES)
