"""One round trip per ask: the greedy and the sampling requests go out at once (issue 17, item 3).

Against a loopback server that waits 0.3 s before each answer: the second request arrives before
the first is answered; the answer is the one the requests sent one after the other give; and an
ask whose request fails raises the project's LLMError only once the other request has finished,
leaving no thread of its own behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from testing.fault_server import Captured, FaultServer, Reply
from testing.synthetic_users import make_user

from hydrahead.offline.simulator import SimulatedLLM
from hydrahead.runtime import ask_pipeline
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.errors import InvalidInputError, LLMError
from hydrahead.runtime.importing import import_records
from hydrahead.runtime.llm.client import Completion, LLMClient
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.runtime.personalizer import Personalizer

DELAY = 0.3  # seconds the server waits before each answer
FAILS = "this request fails"  # a query holding it fails the request named by the test


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return Bundle.open(bundle_dir)


@pytest.fixture(scope="module")
def history() -> list[dict[str, Any]]:
    return make_user(4)["history"][:40]


class SlowSimulator:
    """The offline simulator, answering after DELAY s; records when each answer was ready.

    A request of a query holding FAILS whose ``n`` is ``fail_n`` gets an HTTP 400 at once
    (not retried).
    """

    def __init__(self, fail_n: int | None = None) -> None:
        self.simulator = SimulatedLLM()
        self.fail_n = fail_n
        self.answered: list[tuple[int, float]] = []  # (n, time.monotonic()) per answer
        self._lock = threading.Lock()

    def __call__(self, request: Captured) -> Reply:
        body = request.json()
        if body["n"] == self.fail_n and FAILS in body["messages"][0]["content"]:
            return Reply(400, {"error": {"message": "refused", "type": "invalid_request_error"}})
        time.sleep(DELAY)
        with self._lock:
            self.answered.append((body["n"], time.monotonic()))
        return Reply(200, self.simulator.complete(body))


def _open(root: Path, bundle: Bundle, url: str, **settings: Any) -> Personalizer:
    return Personalizer.open("u", bundle=bundle, task="GIT_area", root=root,
                             llm=LLMConfig(url, "m", max_retries=0), **settings)


def _own_threads() -> list[str]:
    """This process's threads but the loopback server's (its handler threads come and go)."""
    return sorted(t.name for t in threading.enumerate()
                  if t.name != "fault-server" and "process_request_thread" not in t.name)


def test_the_two_requests_overlap(tmp_path: Path, bundle: Bundle, history: list) -> None:
    with FaultServer(default=SlowSimulator()) as server, \
            _open(tmp_path, bundle, server.url) as p:
        import_records(p.store, p.task, history)
        answer = p.ask("Fix the zsh completion of branch names")
    first, second = sorted(server.captured, key=lambda c: c.arrived)
    # The second request arrived before the first could be answered (DELAY after it arrived).
    assert second.arrived < first.arrived + DELAY
    bodies = [c.json() for c in server.captured]
    assert sorted((b["n"], b["temperature"]) for b in bodies) == [(1, 0.0), (8, 1.0)]
    assert len({(b["messages"][0]["content"], b["seed"]) for b in bodies}) == 1
    assert answer.llm_requests == 2 and answer.prompt_tokens > 0


def _sequential(llm: LLMClient, prompt: str, requests: Sequence[Mapping[str, Any]]
                ) -> list[Completion]:
    """How ask() sent its requests before: one after the other."""
    return [llm.complete(prompt, **r) for r in requests]


def _answers(root: Path, bundle: Bundle, history: list, queries: list[str]) -> list[tuple]:
    simulator = SimulatedLLM()
    with FaultServer(default=lambda req: Reply(200, simulator.complete(req.json()))) as server, \
            _open(root, bundle, server.url, k=10, m=3) as p:
        import_records(p.store, p.task, history)
        out = []
        for query in queries:
            a = p.ask(query)
            out.append((a.answer, a.text, a.prompt, a.simulated, a.llm_requests, a.prompt_tokens,
                        a.completion_tokens, sorted(a.timings_ms),
                        [(c.text, c.score, c.features) for c in a.candidates],
                        [(it.record.id, it.rerank_score) for it in a.items]))
        sent = sorted(c.body for c in server.captured)
    return out + [sent]


def test_answers_are_those_of_the_requests_sent_one_after_the_other(
        tmp_path: Path, bundle: Bundle, history: list, monkeypatch: pytest.MonkeyPatch) -> None:
    queries = [q["query"] for q in make_user(4)["queries"][:4]]
    concurrent = _answers(tmp_path / "concurrent", bundle, history, queries)
    monkeypatch.setattr(ask_pipeline, "_complete_at_once", _sequential)
    assert _answers(tmp_path / "sequential", bundle, history, queries) == concurrent


@pytest.mark.parametrize("fail_n", [1, 8], ids=["greedy-fails", "samples-fail"])
def test_a_failed_request_raises_once_the_other_is_done_and_leaves_no_thread(
        tmp_path: Path, bundle: Bundle, history: list, fail_n: int) -> None:
    before = _own_threads()
    behaviour = SlowSimulator(fail_n=fail_n)
    with FaultServer(default=behaviour) as server:
        p = _open(tmp_path, bundle, server.url)
        try:
            import_records(p.store, p.task, history)
            with pytest.raises(LLMError, match="400"):
                p.ask(f"Fix the docs; {FAILS}")
            raised = time.monotonic()
            # The other request had been answered before ask() raised: nothing still runs.
            (other,) = behaviour.answered
            assert other[0] == 9 - fail_n and other[1] <= raised
            assert len(server.captured) == 2
            # Beyond the threads from before, only the client's idle pool thread is left.
            extra = list(_own_threads())
            for name in before:
                extra.remove(name)
            assert all(name.startswith("hydrahead-llm") for name in extra) and len(extra) <= 1
            assert p.ask("Fix the docs").llm_requests == 2  # the client still works
        finally:
            p.close()
    assert _own_threads() == before


def test_with_greedy_off_one_request_goes_out_from_the_calling_thread(
        tmp_path: Path, bundle: Bundle, history: list) -> None:
    with FaultServer(default=SlowSimulator()) as server, \
            _open(tmp_path, bundle, server.url, greedy=False) as p:
        import_records(p.store, p.task, history)
        answer = p.ask("Fix the zsh completion of branch names")
        assert not [t for t in threading.enumerate() if t.name.startswith("hydrahead-llm")]
    assert [c.json()["n"] for c in server.captured] == [8]
    assert answer.llm_requests == 1


def test_the_one_request_mode_sends_the_prompt_once_and_picks_the_samples_consensus(
        tmp_path: Path, bundle: Bundle, history: list) -> None:
    """``ask(greedy=False)`` per call (CLI ``ask --one-request``): the N samples only; unfitted,
    the answer is the most voted candidate (self-consistency), not the greedy answer."""
    simulator = SimulatedLLM()
    with FaultServer(default=lambda req: Reply(200, simulator.complete(req.json()))) as server, \
            Personalizer.open("u", bundle=bundle, task="GIT_area", root=tmp_path, cache=False,
                              llm=LLMConfig(server.url, "m", max_retries=0)) as p:
        import_records(p.store, p.task, history)
        query = "Fix the zsh completion of branch names"
        two = p.ask(query)
        one = p.ask(query, greedy=False)
        with pytest.raises(InvalidInputError, match="greedy"):
            p.ask(query, greedy="yes")  # type: ignore[arg-type]
    bodies = [c.json() for c in server.captured]
    assert [b["n"] for b in bodies[2:]] == [8] and one.llm_requests == 1
    assert one.prompt == two.prompt and one.prompt_tokens * 2 == two.prompt_tokens
    votes = {c.answer: c.features["llm_vote"] for c in one.candidates if c.answer}
    assert one.answer == max(votes, key=votes.get)
    assert all(c.features["llm_greedy"] == 0.0 for c in one.candidates)
