"""History store speed: adding (with and without the encoder) and searching at 10k and 100k.

* **add, encoder**: ``HistoryStore.add`` of 10k texts through the real int8 bundle encoder when
  the test bundle can be had (``testing.bundle_fixture.get_test_bundle``), else through the
  HashingEncoder (``extra_info["encoder"]`` says which). Texts are real commit messages from
  git-lamp when present, else synthetic. Reports items/s and the share of the time spent inside
  the encoder (target: adding is dominated by embedding).
* **add, precomputed vectors**: the store alone (SQLite + HNSW), ``add(items, vectors=...)``,
  against plain ``hnswlib.add_items`` of the same vectors with the same parameters.
* **search**: p50 latency of ``search(vector, k=10)`` at 10k and 100k records (M=16,
  ef_construction=200, ef=64), with recall@10 against exact numpy search (asserted >= 0.98) and
  the exact search's own p50 as the in-process reference. Vectors are 384-d Gaussian clusters,
  normalised: embedding 100k texts takes too long here, and random i.i.d. vectors would be an
  unrealistically hard case for HNSW. Also reported: raw ``knn_query`` p50 (the store's overhead
  over hnswlib), dict-filter p50 at 10% and 0.5% selectivity, and the time to reopen the store
  (index load with its sha256 check).

Run: ``python -m pytest bench/test_store_bench.py --benchmark-only``.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from pathlib import Path

import hnswlib
import numpy as np
import pytest
from testing.fake_encoder import HashingEncoder, sample_items
from hydrahead.runtime.store import HistoryStore

DIM = 384
N_ADD = 10_000
N_QUERIES = 300
K = 10
GIT_LAMP = Path(os.environ.get(
    "HYDRAHEAD_GIT_LAMP", Path(__file__).resolve().parents[2] / "shared" / "data" / "git-lamp"
))


class TimedEncoder:
    """Wraps an encoder and adds up the seconds spent in ``encode``."""

    def __init__(self, encoder) -> None:
        self.inner, self.dim, self.fingerprint = encoder, encoder.dim, encoder.fingerprint
        self.seconds = 0.0

    def encode(self, texts):
        start = time.perf_counter()
        try:
            return self.inner.encode(texts)
        finally:
            self.seconds += time.perf_counter() - start


class VectorsOnly:
    """An encoder stand-in for stores that are only given precomputed vectors."""

    dim, fingerprint = DIM, "benchmark-clustered-vectors"

    def encode(self, texts):
        raise AssertionError("the benchmark passes vectors")


def _encoder() -> tuple[object, str]:
    try:
        from testing.bundle_fixture import get_test_bundle
        from hydrahead.runtime.encoder import Encoder

        return Encoder(get_test_bundle()), "real int8 bundle encoder"
    except Exception as exc:  # no bundle can be built here: say so in the results
        return HashingEncoder(DIM), f"HashingEncoder({DIM}) fallback, no bundle: {exc!r}"[:300]


def _texts(n: int) -> tuple[list[str], str]:
    texts: list[str] = []
    for path in sorted(GIT_LAMP.glob("*/*_questions.json")) if GIT_LAMP.is_dir() else []:
        for question in json.loads(path.read_text(encoding="utf-8")):
            texts.extend(item["text"] for item in question["profile"])
    texts = list(dict.fromkeys(texts))
    if len(texts) >= 1000:
        return list(itertools.islice(itertools.cycle(texts), n)), (
            f"git-lamp commit messages ({len(texts)} distinct, cycled)"
        )
    return [item["text"] for item in sample_items(n)], "synthetic 10-word texts"


def clustered_vectors(n: int, seed: int, n_clusters: int | None = None) -> np.ndarray:
    """Normalised 384-d points around random centres (about 100 points per cluster)."""
    rng = np.random.default_rng(seed)
    centres_rng = np.random.default_rng(1234)  # the same clusters for data and queries
    n_clusters = n_clusters or max(10, n // 100)
    centres = centres_rng.normal(size=(n_clusters, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(0, n_clusters, n)] + rng.normal(size=(n, DIM)) / np.sqrt(DIM)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def _items(n: int) -> list[dict]:
    return [{"id": f"i{i}", "text": f"item {i}", "tag": f"t{i % 10}", "rare": i % 200 == 0}
            for i in range(n)]


def _p50_ms(fn, args_list) -> float:
    times = []
    for args in args_list:
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


# ---------------------------------------------------------------------- adding


def test_add_10k_through_encoder(benchmark, tmp_path: Path) -> None:
    encoder, encoder_name = _encoder()
    texts, source = _texts(N_ADD)
    items = [{"id": f"t{i}", "text": text} for i, text in enumerate(texts)]
    timed = TimedEncoder(encoder)
    stores = []

    def setup():
        timed.seconds = 0.0
        store = HistoryStore.at(tmp_path / uuid.uuid4().hex, encoder=timed)
        stores.append(store)
        return (store,), {}

    real = "real" in encoder_name
    benchmark.pedantic(lambda store: store.add(items), setup=setup, rounds=1 if real else 3)
    seconds = benchmark.stats.stats.mean
    benchmark.extra_info.update({
        "encoder": encoder_name,
        "texts": source,
        "items": N_ADD,
        "items_per_s": round(N_ADD / seconds, 1),
        "embedding_seconds": round(timed.seconds, 3),
        "embedding_share_of_add": round(timed.seconds / seconds, 3),
        "store_seconds_besides_embedding": round(seconds - timed.seconds, 3),
    })
    start = time.perf_counter()
    for store in stores:
        store.close()
    benchmark.extra_info["close_seconds_per_store"] = round(
        (time.perf_counter() - start) / len(stores), 3
    )


def test_add_10k_precomputed_vectors(benchmark, tmp_path: Path) -> None:
    vectors = clustered_vectors(N_ADD, seed=1)
    items = _items(N_ADD)

    def setup():
        return (HistoryStore.at(tmp_path / uuid.uuid4().hex, encoder=VectorsOnly()),), {}

    def add(store: HistoryStore) -> None:
        store.add(items, vectors=vectors)
        store.close()

    benchmark.pedantic(add, setup=setup, rounds=3)
    store_seconds = benchmark.stats.stats.median

    hnsw_times = []
    for _ in range(3):
        index = hnswlib.Index(space="cosine", dim=DIM)
        index.init_index(max_elements=N_ADD, M=16, ef_construction=200)
        start = time.perf_counter()
        index.add_items(vectors, np.arange(N_ADD))
        hnsw_times.append(time.perf_counter() - start)
    hnsw_seconds = float(np.median(hnsw_times))
    benchmark.extra_info.update({
        "items": N_ADD,
        "store_items_per_s": round(N_ADD / store_seconds, 1),
        "store_seconds_incl_close": round(store_seconds, 3),
        "reference_hnswlib_add_items_seconds": round(hnsw_seconds, 3),
        "ratio_store_to_hnswlib": round(store_seconds / hnsw_seconds, 3),
    })


# ---------------------------------------------------------------------- searching


@pytest.fixture(scope="module")
def built_stores():
    """Stores built by ``_built``, shared by the search benchmarks and closed at the end."""
    cache: dict = {}
    yield cache
    for built in cache.values():
        built["store"].close()


def _built(cache: dict, tmp_root: Path, n: int) -> dict:
    if n not in cache:
        vectors = clustered_vectors(n, seed=2)
        directory = tmp_root / f"store{n}"
        start = time.perf_counter()
        with HistoryStore.at(directory, encoder=VectorsOnly()) as store:
            store.add(_items(n), vectors=vectors, batch_size=2048)
        build_seconds = time.perf_counter() - start
        start = time.perf_counter()
        store = HistoryStore.at(directory, encoder=VectorsOnly())
        cache[n] = {
            "store": store,
            "vectors": vectors,
            "build_seconds": build_seconds,
            "reopen_seconds": time.perf_counter() - start,
            "index_mb": (directory / "index.hnsw").stat().st_size / 1e6,
        }
    return cache[n]


@pytest.mark.parametrize("n", [10_000, 100_000], ids=["10k", "100k"])
def test_search_p50_and_recall(benchmark, built_stores, tmp_path_factory, n: int) -> None:
    built = _built(built_stores, tmp_path_factory.mktemp("search"), n)
    store: HistoryStore = built["store"]
    data = built["vectors"]
    queries = clustered_vectors(N_QUERIES, seed=3, n_clusters=max(10, n // 100))

    # Exact reference, in the same process: brute-force cosine over all vectors, top 10.
    def exact(q: np.ndarray) -> np.ndarray:
        scores = data @ q
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top])]

    exact_ids = [{f"i{i}" for i in exact(q)} for q in queries]
    hits = [store.search(q, k=K) for q in queries]
    recall = float(np.mean([
        len({h.record.id for h in found} & truth) / K for found, truth in zip(hits, exact_ids)
    ]))

    cycle = itertools.cycle(queries)
    benchmark.pedantic(lambda: store.search(next(cycle), k=K), rounds=N_QUERIES,
                       warmup_rounds=20)
    p50_ms = benchmark.stats.stats.median * 1e3

    raw_index = store._index._index  # the hnswlib index inside, for the overhead figure
    exact_p50 = _p50_ms(exact, [(q,) for q in queries[:100]])
    raw_p50 = _p50_ms(lambda q: raw_index.knn_query(q, k=K, num_threads=1), [(q,) for q in queries])
    filtered_10 = _p50_ms(lambda q: store.search(q, k=K, filter={"tag": "t3"}),
                          [(q,) for q in queries[:100]])
    # Recall of the 10%-filter search against the exact top 10 among the matching records.
    matching = [i for i in range(n) if i % 10 == 3]
    filtered_recall = float(np.mean([
        len({h.record.id for h in store.search(q, k=K, filter={"tag": "t3"})}
            & {f"i{matching[j]}" for j in np.argsort(-(data[matching] @ q))[:K]}) / K
        for q in queries[:100]]))
    filtered_05 = _p50_ms(lambda q: store.search(q, k=K, filter={"rare": True}),
                          [(q,) for q in queries[:100]])
    benchmark.extra_info.update({
        "records": n,
        "vectors": "384-d gaussian clusters (~100 per cluster), normalised; not embedded text",
        "p50_ms": round(p50_ms, 4),
        "recall_at_10": round(recall, 4),
        "exact_numpy_p50_ms": round(exact_p50, 3),
        "speedup_vs_exact": round(exact_p50 / p50_ms, 1),
        "raw_hnswlib_knn_p50_ms": round(raw_p50, 4),
        "store_overhead_ms": round(p50_ms - raw_p50, 4),
        "dict_filter_10pct_p50_ms": round(filtered_10, 3),
        "dict_filter_10pct_recall_at_10": round(filtered_recall, 4),
        "dict_filter_0.5pct_p50_ms": round(filtered_05, 3),
        "build_seconds": round(built["build_seconds"], 1),
        "reopen_seconds": round(built["reopen_seconds"], 3),
        "index_mb": round(built["index_mb"], 1),
    })
    assert recall >= 0.98, f"recall@10 {recall:.4f} < 0.98"


# ---------------------------------------------------------------------- deleting


@pytest.mark.parametrize("n", [10_000, 100_000], ids=["10k", "100k"])
def test_delete_one_record(benchmark, built_stores, tmp_path_factory, n: int) -> None:
    """``delete([id])``: the row (secure_delete, WAL truncated), the vector zeroed in the index,
    the index saved, the user's other files erased. Reference, interleaved in the same process:
    ``save_index()`` alone (the index write every delete includes)."""
    built = _built(built_stores, tmp_path_factory.mktemp("search"), n)
    store: HistoryStore = built["store"]
    victims = iter(f"i{i}" for i in range(0, n, max(1, n // 50)))
    save_seconds: list[float] = []

    def delete_one() -> None:
        start = time.perf_counter()
        store.save_index()
        save_seconds.append(time.perf_counter() - start)
        store.delete([next(victims)])

    benchmark.pedantic(delete_one, rounds=10, warmup_rounds=1)
    # The timed call is delete + save_index; take the save back out for the delete's own figure.
    total_p50 = benchmark.stats.stats.median
    save_p50 = float(np.median(save_seconds))
    benchmark.extra_info.update({
        "records": n,
        "delete_p50_ms": round((total_p50 - save_p50) * 1e3, 1),
        "save_index_p50_ms": round(save_p50 * 1e3, 1),
        "index_mb": round(built["index_mb"], 1),
    })
