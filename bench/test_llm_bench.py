"""Wall time against a slow LLM server: concurrent extra calls and concurrent labelling.

The server is the offline SIMULATOR behind a loopback HTTP server that waits ``LATENCY``
seconds before each answer (a real endpoint takes 300-800 ms a request). Answers are the
simulator's, so only the timings mean anything here.

* **n candidates from a server that ignores n** (Ollama, many proxies): ``complete(n=8)`` needs
  eight requests. Timed: the client as shipped (extra calls concurrent) and with
  ``max_concurrency=1`` (one after another, as before), against one single request, interleaved
  in the same run.
* **fit(budget=100)**: the labelling requests of a whole fit, concurrent (the shipped default,
  ``max_concurrency=8``) and one at a time, each round on a fresh user (no cache). Target:
  <= 10 s wall at 300 ms a request.
* **ask() end to end**: ``ask()`` as shipped (its greedy and sampling requests at once), against
  ONE prompt-baseline request (the ask's own prompt, ``n=1``, temperature 0: what an app sends
  without hydrahead) and against ``ask()`` with its two requests one after the other (as before
  issue 17), interleaved query by query; no response cache, the outbox on. Target: <= 1.1x the
  one request. And the one-request mode (``ask(greedy=False)``: the samples only), timed in the
  same rounds, with its prompt tokens against the one request's. Target: <= 1.05x its prompt
  tokens.

Run: ``python -m pytest bench/test_llm_bench.py --benchmark-only -s``.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

import pytest
from testing.fault_server import FaultServer, Reply
from testing.synthetic_users import make_user

from hydrahead.runtime import ask_pipeline
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.importing import import_records
from hydrahead.runtime.llm import LLMClient, LLMConfig
from hydrahead.offline.simulator import SimulatedLLM
from hydrahead.runtime.personalizer import Personalizer

LATENCY = 0.3
N = 8


def slow_simulator(max_choices: int | None = None):
    simulator = SimulatedLLM()

    def answer(req) -> Reply:
        body = simulator.complete(req.json())
        if max_choices is not None:
            body["choices"] = body["choices"][:max_choices]
        return Reply(200, body, delay=LATENCY)

    return answer


def test_n_candidates_from_a_server_that_ignores_n(benchmark) -> None:
    seeds = itertools.count()
    with FaultServer(default=slow_simulator(max_choices=1)) as server:
        concurrent = LLMClient(LLMConfig(server.url, "m"))
        serial = LLMClient(LLMConfig(server.url, "m", max_concurrency=1))
        single, one_by_one = [], []

        def timed(client: LLMClient, n: int) -> float:
            start = time.perf_counter()
            out = client.complete("Which area? Fix the docs.", n=n, seed=next(seeds))
            assert len(out.texts) == n
            return time.perf_counter() - start

        def references() -> None:  # run before every timed round, timed here
            single.append(timed(concurrent, 1))
            one_by_one.append(timed(serial, N))

        benchmark.pedantic(lambda: concurrent.complete("Which area? Fix the docs.", n=N,
                                                       seed=next(seeds)),
                           setup=references, rounds=5, warmup_rounds=1)
        concurrent.close()
        serial.close()
    shipped_s = benchmark.stats.stats.median
    ref_single, ref_serial = median(single), median(one_by_one)
    info = {
        "latency_s": LATENCY, "n": N,
        "concurrent_s": round(shipped_s, 3),
        "one_by_one_s": round(ref_serial, 3),
        "one_request_s": round(ref_single, 3),
        "concurrent_vs_one_request": round(shipped_s / ref_single, 2),
        "one_by_one_vs_one_request": round(ref_serial / ref_single, 2),
    }
    benchmark.extra_info.update(info)
    print(json.dumps({"bench": "n_from_server_ignoring_n", **info}))


@pytest.mark.parametrize("concurrency", [8, 1], ids=["concurrent", "one-at-a-time"])
def test_fit_budget_100_against_a_slow_server(benchmark, bundle_dir: Path, tmp_path_factory,
                                              concurrency: int) -> None:
    bundle = Bundle.open(bundle_dir)
    history = make_user(3)["history"]
    users = itertools.count()
    with FaultServer(default=slow_simulator()) as server:
        def fit_fresh_user() -> None:
            root = tmp_path_factory.mktemp("fit")
            with Personalizer.open(f"u{next(users)}", bundle=bundle, task="GIT_area",
                                   llm=LLMConfig(server.url, "m", max_concurrency=concurrency),
                                   root=root) as p:
                import_records(p.store, p.task, history)
                summary = p.fit(budget=100, progress=False)
                assert summary.labels.requests_sent == 100

        benchmark.pedantic(fit_fresh_user, rounds=2 if concurrency > 1 else 1, warmup_rounds=0)
    info = {"latency_s": LATENCY, "budget": 100, "concurrency": concurrency,
            "history_records": len(history), "wall_s": round(benchmark.stats.stats.median, 2),
            "target_s": 10.0}
    benchmark.extra_info.update(info)
    print(json.dumps({"bench": "fit_budget_100", **info}))


def _one_after_the_other(llm, prompt, requests):
    """ask()'s requests as they were sent before issue 17: each waits for the one before."""
    return [llm.complete(prompt, **r) for r in requests]


def test_ask_end_to_end_against_one_request(benchmark, bundle_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    user = make_user(3)
    queries = itertools.cycle([q["query"] for q in user["queries"]])
    seeds = itertools.count()
    timings: dict[str, list[float]] = {"one_request": [], "one_after_the_other": [],
                                       "one_request_mode": []}
    tokens: dict[str, int] = {}
    with FaultServer(default=slow_simulator()) as server, Personalizer.open(
            "u", bundle=Bundle.open(bundle_dir), task="GIT_area", root=tmp_path,
            llm=LLMConfig(server.url, "m"), cache=False) as p:
        import_records(p.store, p.task, user["history"])
        concurrent = ask_pipeline._complete_at_once

        def timed(name: str, fn: Callable[[], object]) -> None:
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)

        def references() -> tuple[tuple[str], dict]:  # before every timed round: next query
            query = next(queries)
            prompt = p.prepare(query).prompt

            def one_request() -> None:
                baseline = p.llm.complete(prompt, n=1, temperature=0.0, seed=next(seeds))
                tokens["one_request_prompt"] = baseline.prompt_tokens

            timed("one_request", one_request)

            def one_request_mode() -> None:
                answer = p.ask(query, greedy=False)
                assert answer.llm_requests == 1
                tokens["one_request_mode_prompt"] = answer.prompt_tokens

            timed("one_request_mode", one_request_mode)
            monkeypatch.setattr(ask_pipeline, "_complete_at_once", _one_after_the_other)
            try:
                timed("one_after_the_other", lambda: p.ask(query))
            finally:
                monkeypatch.setattr(ask_pipeline, "_complete_at_once", concurrent)
            return (query,), {}

        def ask(query: str) -> None:
            answer = p.ask(query)
            assert answer.llm_requests == 2
            tokens["ask_prompt"] = answer.prompt_tokens

        benchmark.pedantic(ask, setup=references, rounds=9, warmup_rounds=1)
    shipped = benchmark.stats.stats.median
    one, serial = median(timings["one_request"]), median(timings["one_after_the_other"])
    info = {
        "latency_s": LATENCY, "n": p.settings.n,
        "ask_s": round(shipped, 3), "one_request_s": round(one, 3),
        "ask_one_after_the_other_s": round(serial, 3),
        "ask_vs_one_request": round(shipped / one, 2),
        "one_after_the_other_vs_one_request": round(serial / one, 2),
        "target": 1.1,
        "prompt_tokens_ask": tokens["ask_prompt"],
        "prompt_tokens_one_request": tokens["one_request_prompt"],
        "one_request_mode_s": round(median(timings["one_request_mode"]), 3),
        "prompt_tokens_one_request_mode": tokens["one_request_mode_prompt"],
        "one_request_mode_prompt_tokens_vs_one_request": round(
            tokens["one_request_mode_prompt"] / tokens["one_request_prompt"], 3),
        "prompt_tokens_target": 1.05,
    }
    benchmark.extra_info.update(info)
    print(json.dumps({"bench": "ask_end_to_end", **info}))
