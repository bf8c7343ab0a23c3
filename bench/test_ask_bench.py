"""ask() local time on a classification task, against encoding the query alone.

GIT_area's candidates are its area tags: the same few texts come back from the LLM query after
query, so the personalizer keeps their embeddings (``Personalizer.candidate_vectors``) and
``ask()`` encodes little more than the query. Timed, query by query and interleaved:

* **local**: ``prepare`` (embed the query, HNSW top-k, reranker, prompt) + ``choose`` (the
  candidates' embeddings, adapter, pick), k=20, m=4, N=8, fast-mode untrained bases;
* **local, no candidate cache**: the same with the cache emptied before each query;
* **query alone**: ``encoder.encode_one(query)``, the reference. Target: local <= 1.1x it.

History: 1,000 git-lamp GIT_area commits (the dev questions' authors first); queries: 60 GIT_area
dev questions; candidates from the offline SIMULATOR (in-process, computed before timing).
Run: ``python -m pytest bench/test_ask_bench.py --benchmark-only -s``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from statistics import median

import numpy as np

N_QUERIES = 60
N_HISTORY = 1000


def test_ask_local_on_git_area(benchmark, bundle_dir: Path, git_lamp: Path,
                               tmp_path_factory) -> None:
    from hydrahead.offline.simulator import SimulatedLLM
    from hydrahead.runtime.bundle import Bundle
    from hydrahead.runtime.encoder import Encoder
    from hydrahead.runtime.personalizer import Personalizer
    from hydrahead.runtime.store import HistoryStore
    from hydrahead.runtime.tasks import get_task
    from hydrahead.runtime.tasks.lamp import load_lamp_questions

    task = get_task("GIT_area")
    dev = load_lamp_questions(git_lamp / "GIT_area" / "dev_questions.json")[:N_QUERIES]
    items: dict[str, dict] = {}
    for q in dev:
        for item in q.profile:
            items.setdefault(item["id"], item)
    records = [task.record_from_profile(it) for it in list(items.values())[:N_HISTORY]]
    encoder = Encoder(bundle_dir, threads=2)
    store = HistoryStore.at(tmp_path_factory.mktemp("ask"), encoder=encoder)
    store.add(records)
    p = Personalizer(store, bundle=Bundle.open(bundle_dir), encoder=encoder, llm=None, task=task)
    queries = [task.query_text(q.input) for q in dev]
    sim = SimulatedLLM()
    candidates = []
    for q in queries:
        body = {"model": "bench", "messages": [{"role": "user", "content": p.prepare(q).prompt}],
                "n": 8, "temperature": 1.0, "max_tokens": 32, "seed": 0}
        greedy = dict(body, n=1, temperature=0.0)
        candidates.append(([c["message"]["content"] for c in sim.complete(body)["choices"]],
                           sim.complete(greedy)["choices"][0]["message"]["content"]))

    def local(i: int) -> None:
        prepared = p.prepare(queries[i])
        texts, greedy = candidates[i]
        p.choose(prepared, texts, greedy=greedy, simulated=True)

    timings: dict[str, list[float]] = {"local": [], "no_cache": [], "query_alone": []}

    def timed(name: str, fn, *args) -> None:
        start = time.perf_counter()
        fn(*args)
        timings[name].append(time.perf_counter() - start)

    for i in range(len(queries)):  # warm: the index, SQLite pages, the candidate cache
        local(i)
        encoder.encode_one(queries[i])
    order = np.random.default_rng(0)
    counter = iter(range(10**6))

    def one_round() -> None:
        i = next(counter) % len(queries)
        systems = [("local", local, i), ("query_alone", encoder.encode_one, queries[i]),
                   ("no_cache", lambda j: (p.candidates.clear(), local(j)), i)]
        for name, fn, arg in [systems[j] for j in order.permutation(3)]:
            timed(name, fn, arg)

    benchmark.pedantic(one_round, rounds=3 * len(queries), warmup_rounds=0)
    p50 = {name: median(ts) * 1e3 for name, ts in timings.items()}
    info = {
        "task": "GIT_area", "history": len(records), "queries": len(queries),
        "local_p50_ms": round(p50["local"], 2),
        "local_no_candidate_cache_p50_ms": round(p50["no_cache"], 2),
        "query_alone_p50_ms": round(p50["query_alone"], 2),
        "local_vs_query_alone": round(p50["local"] / p50["query_alone"], 2),
        "no_cache_vs_query_alone": round(p50["no_cache"] / p50["query_alone"], 2),
        "target": 1.1,
        "distinct_candidates": len({t for texts, g in candidates for t in [*texts, g]}),
    }
    benchmark.extra_info.update(info)
    print(json.dumps({"bench": "ask_local_git_area", **info}))
