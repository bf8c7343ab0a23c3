"""What a user's retrieval choice costs ask(): BM25 or fused lists against dense retrieval alone.

A user whose fit chose ``bm25`` or ``fused`` (:mod:`hydrahead.runtime.retrieval`) has the k
records that reach the reranker found by HNSW *and* BM25 over every record. Measured here, on
histories of 1k and 5k records (ten words each from a 400-word vocabulary: every query shares
words with many records, BM25's worst case), query by query, interleaved in random order:
``AskPipeline.retrieve`` with ``dense`` (the reference: what an unfitted user does) and with
``fused``; plus the one-off build of the BM25 index (after any change to the history, on the
next ask). Target: fused adds <= 10 ms p50 to retrieval at 5k records.

Run: ``python -m pytest bench/test_retrieval_bench.py --benchmark-only -s``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest
from testing.fake_encoder import sample_items

from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.importing import import_records
from hydrahead.runtime.personalizer import Personalizer
from hydrahead.runtime.validation import Choices, RetrievalCheck

N_QUERIES = 100


@pytest.mark.parametrize("n_records", [1000, 5000])
def test_fused_retrieval_against_dense(benchmark, bundle_dir: Path, tmp_path: Path,
                                       n_records: int) -> None:
    with Personalizer.open("bench", bundle=Bundle.open(bundle_dir), task="GIT_area",
                           root=tmp_path) as p:
        import_records(p.store, p.task, sample_items(n_records))
        queries = [item["text"] for item in sample_items(N_QUERIES, seed=1, prefix="q")]
        vectors = p.encoder.encode(queries)
        choices = {name: Choices(retrieval=RetrievalCheck(name)) for name in ("dense", "fused")}
        p.heads.choices = choices["fused"]
        t0 = time.perf_counter()
        p.pipeline.retrieve(queries[0], vectors[0])  # builds the BM25 index
        build_s = time.perf_counter() - t0
        seconds: dict[str, list[float]] = {"dense": [], "fused": []}
        order = random.Random(0)

        def run_all() -> None:
            for query, vector in zip(queries, vectors):
                names = list(seconds)
                order.shuffle(names)
                for name in names:
                    p.heads.choices = choices[name]
                    start = time.perf_counter()
                    hits = p.pipeline.retrieve(query, vector)
                    seconds[name].append(time.perf_counter() - start)
                    assert len(hits) == p.settings.k

        benchmark.pedantic(run_all, rounds=1, iterations=1)
        p50 = {name: float(np.median(s)) * 1e3 for name, s in seconds.items()}
        benchmark.extra_info.update(
            records=n_records, queries=N_QUERIES, k=p.settings.k,
            dense_p50_ms=round(p50["dense"], 3), fused_p50_ms=round(p50["fused"], 3),
            added_p50_ms=round(p50["fused"] - p50["dense"], 3),
            bm25_build_s=round(build_s, 3))
        print(f"\n{n_records} records: dense {p50['dense']:.2f} ms, fused {p50['fused']:.2f} ms "
              f"p50 (+{p50['fused'] - p50['dense']:.2f} ms); BM25 index built in "
              f"{build_s:.2f} s")
