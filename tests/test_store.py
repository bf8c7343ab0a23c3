"""Tests of the history store (hydrahead.runtime.store) and its records, on real SQLite + HNSW.

The encoder is the deterministic HashingEncoder, except in the one integration test that uses
the real int8 ONNX bundle (fixture ``bundle_dir``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testing.fake_encoder import HashingEncoder, sample_items
from testing.strategies import texts
from hydrahead.runtime import store_search
from hydrahead.runtime.errors import (
    EncoderMismatchError,
    HydraheadError,
    InvalidInputError,
    InvalidUserIdError,
    NotFoundError,
    StoreError,
    StoreVersionError,
)
from hydrahead.runtime.records import MAX_TEXT_BYTES, Hit, Record
from hydrahead.runtime.store import DB_FILE, STORE_FORMAT_VERSION, HistoryStore


@pytest.fixture
def encoder() -> HashingEncoder:
    return HashingEncoder(dim=64)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(store_dir: Path, encoder: HashingEncoder):
    with HistoryStore.at(store_dir, encoder=encoder) as opened:
        yield opened


def snapshot(store: HistoryStore) -> list[tuple[dict, list[float]]]:
    """Everything a user could read back: records in order with their vectors."""
    records = store.list()
    vectors = store.vectors([r.id for r in records]) if records else np.zeros((0, store.dim))
    return [(r.to_dict(), v.tolist()) for r, v in zip(records, vectors)]


def brute_force_scores(store: HistoryStore, query: np.ndarray, ids: list[str]) -> np.ndarray:
    """Cosine similarities of ``query`` to the stored vectors of ``ids``, best first."""
    vectors = store.vectors(ids).astype(np.float64)
    q = query.astype(np.float64) / np.linalg.norm(query)
    return np.sort(vectors @ q / np.linalg.norm(vectors, axis=1))[::-1]


# ---------------------------------------------------------------------- records


def test_record_from_lamp_item_parses_date_and_keeps_fields() -> None:
    item = {"id": "557f", "text": "Add a test suite", "tag": "tests",
            "date": "2015-07-09T11:33:21+05:30"}
    record = Record.from_dict(item)
    assert record.fields == {"tag": "tests", "date": "2015-07-09T11:33:21+05:30"}
    assert record.timestamp == 1436421801.0  # 2015-07-09 06:03:21 UTC
    assert Record.from_dict(record.to_dict()) == record


@pytest.mark.parametrize(
    ("item", "timestamp"),
    [
        ({"id": "a", "text": "t", "date": "2020-01-02"}, 1577923200.0),  # naive date = UTC
        ({"id": "a", "text": "t", "date": "2020-01-02T00:00:00Z"}, 1577923200.0),
        ({"id": "a", "text": "t", "date": "last tuesday"}, None),  # not ISO: stays a field only
        ({"id": "a", "text": "t", "timestamp": 12.5, "date": "2020-01-02"}, 12.5),
        ({"id": "a", "text": "t", "timestamp": "2020-01-02"}, 1577923200.0),
        ({"id": "a", "text": "t"}, None),
    ],
)
def test_record_timestamp_sources(item: dict, timestamp: float | None) -> None:
    assert Record.from_dict(item).timestamp == timestamp


@pytest.mark.parametrize(
    "item",
    [
        {"id": "a"},
        {"text": "t"},
        {"id": 1, "text": "t"},
        {"id": "a", "text": b"bytes"},
        {"id": "a", "text": "t", "timestamp": "yesterday"},
        {"id": "a", "text": "t", "timestamp": True},
        {"id": "a", "text": "t", "timestamp": float("nan")},
        {"id": "a", "text": "t", "embedding": [0.1, 0.2]},
        {"id": "a", "text": "t", "tags": ["x"]},
        {"id": "a", "text": "t", "score": float("inf")},
        {"id": "a", "text": "t", "big": 2**64},
        {"id": "a", "text": "bad \ud800 surrogate"},
        "not a dict",
    ],
)
def test_record_rejects_invalid_dicts(item: object) -> None:
    with pytest.raises(InvalidInputError):
        Record.from_dict(item)  # type: ignore[arg-type]


def test_record_is_hashable_and_fields_are_copied() -> None:
    fields = {"tag": "doc"}
    record = Record("a", "text", fields)
    fields["tag"] = "changed"
    assert record.fields == {"tag": "doc"}
    assert {record: 1}[Record("a", "text", {"tag": "doc"})] == 1
    assert Record("a", "t", {"n": np.int64(3), "x": np.float32(0.5)}).fields == {"n": 3, "x": 0.5}


# ---------------------------------------------------------------------- add / get / list


def test_add_get_roundtrip_and_batching(store: HistoryStore, encoder: HashingEncoder) -> None:
    items = sample_items(10)
    assert store.add(items, batch_size=3) == [item["id"] for item in items]
    assert encoder.calls == 4  # 3 + 3 + 3 + 1
    assert len(store) == store.count() == 10
    for item in items:
        assert store.get(item["id"]) == Record.from_dict(item)
    np.testing.assert_array_equal(
        store.vectors(["r3", "r1"]), encoder.encode([items[3]["text"], items[1]["text"]])
    )
    assert store.vectors(["r1"]).dtype == np.float32
    assert "r3" in store and "nope" not in store and 3 not in store


def test_add_accepts_records_single_items_and_precomputed_vectors(
    store: HistoryStore, encoder: HashingEncoder
) -> None:
    store.add(Record("one", "a single record", {"label": 1}))
    store.add({"id": "two", "text": "a single dict"})
    vectors = np.random.default_rng(0).normal(size=(2, 64)).astype(np.float32)
    calls = encoder.calls
    store.add([Record("v1", "first"), Record("v2", "second")], vectors=vectors)
    assert encoder.calls == calls  # vectors given: the encoder is not used
    np.testing.assert_array_equal(store.vectors(["v1", "v2"]), vectors)  # kept as given
    assert [r.id for r in store.list()] == ["one", "two", "v1", "v2"]


def test_list_iter_and_get_many_keep_insertion_order(store: HistoryStore) -> None:
    store.add(sample_items(20))
    ids = [f"r{i}" for i in range(20)]
    assert [r.id for r in store.list()] == ids
    assert [r.id for r in store.list(limit=5, offset=3)] == ids[3:8]
    assert store.list(limit=0) == []
    assert [r.id for r in store.iter(batch_size=7)] == ids
    assert [r.id for r in store] == ids
    assert [r.id for r in store.get_many(["r5", "r1", "r5"])] == ["r5", "r1", "r5"]
    store.upsert({"id": "r2", "text": "replaced text"})  # an upsert keeps the record's place
    store.delete(["r0"])
    assert [r.id for r in store.list()] == ids[1:]
    with pytest.raises(InvalidInputError):
        store.list(limit=-1)


def test_unknown_ids_raise_not_found(store: HistoryStore) -> None:
    store.add(sample_items(3))
    with pytest.raises(NotFoundError, match="'missing'"):
        store.get("missing")
    with pytest.raises(NotFoundError):
        store.get_many(["r0", "missing"])
    with pytest.raises(NotFoundError):
        store.vectors(["r0", "missing"])
    with pytest.raises(InvalidInputError):
        store.get(5)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- bad input


def _invalid_batches() -> dict[str, list]:
    good = sample_items(3, prefix="new")
    return {
        "empty text": good + [{"id": "x", "text": ""}],
        "whitespace text": good + [{"id": "x", "text": " \n\t "}],
        "non-string text": good + [{"id": "x", "text": 42}],
        "non-string id": good + [{"id": 7, "text": "fine"}],
        "blank id": good + [{"id": "  ", "text": "fine"}],
        "list field": good + [{"id": "x", "text": "fine", "tags": ["a", "b"]}],
        "dict field": good + [{"id": "x", "text": "fine", "meta": {"a": 1}}],
        "nan field": good + [{"id": "x", "text": "fine", "score": float("nan")}],
        "embedding key": good + [{"id": "x", "text": "fine", "embedding": [1.0]}],
        "lone surrogate": good + [{"id": "x", "text": "bad \ud800"}],
        "bad timestamp": good + [{"id": "x", "text": "fine", "timestamp": "soon"}],
        "text over 1 MB": good + [{"id": "x", "text": "a" * (MAX_TEXT_BYTES + 1)}],
        "multi-byte text over 1 MB": good + [{"id": "x", "text": "é" * (MAX_TEXT_BYTES // 2 + 1)}],
        "duplicate id in batch": good + [{"id": "new0", "text": "again"}],
        "id already stored": good + [{"id": "r1", "text": "exists"}],
        "not an item": good + [["id", "text"]],
        "string instead of items": "just text",
    }


@pytest.mark.parametrize("case", list(_invalid_batches()))
def test_invalid_add_raises_and_changes_nothing(store: HistoryStore, case: str) -> None:
    store.add(sample_items(5))
    before = snapshot(store)
    with pytest.raises(InvalidInputError):
        store.add(_invalid_batches()[case], batch_size=1)  # every batch its own transaction
    assert snapshot(store) == before
    assert len(store) == 5
    assert store.search(store.get("r2").text, k=1)[0].record.id == "r2"


def test_text_limit_is_in_utf8_bytes(store: HistoryStore) -> None:
    at_limit = "é" * (MAX_TEXT_BYTES // 2)  # exactly 1,000,000 bytes
    store.add({"id": "big", "text": at_limit})
    assert store.get("big").text == at_limit
    with pytest.raises(InvalidInputError, match="1,000,000"):
        store.add({"id": "bigger", "text": at_limit + "é"})


@pytest.mark.parametrize(
    "vectors",
    [
        np.ones((2, 64), dtype=np.float32),  # wrong count
        np.ones((3, 32), dtype=np.float32),  # wrong dim
        np.full((3, 64), np.nan, dtype=np.float32),
        np.zeros((3, 64), dtype=np.float32),
        "not numbers",
    ],
)
def test_invalid_vectors_raise_and_change_nothing(store: HistoryStore, vectors: object) -> None:
    store.add(sample_items(4))
    before = snapshot(store)
    with pytest.raises(InvalidInputError):
        store.add(sample_items(3, prefix="new"), vectors=vectors)  # type: ignore[arg-type]
    assert snapshot(store) == before


def test_encoder_failure_midway_keeps_earlier_batches(
    store: HistoryStore, encoder: HashingEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add(sample_items(2, seed=9, prefix="old"))
    real_encode = encoder.encode

    def failing_encode(texts):
        if encoder.calls >= 2:
            raise RuntimeError("encoder crashed")
        return real_encode(texts)

    monkeypatch.setattr(encoder, "encode", failing_encode)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        store.add(sample_items(6), batch_size=3)
    # The first batch was committed as a whole, the second not at all; the index agrees.
    assert [r.id for r in store.list()] == ["old0", "old1", "r0", "r1", "r2"]
    monkeypatch.setattr(encoder, "encode", real_encode)
    assert store.search(store.get("r1").text, k=1)[0].record.id == "r1"


# ---------------------------------------------------------------------- upsert / delete


def test_add_existing_id_needs_upsert_and_upsert_replaces(store: HistoryStore) -> None:
    store.add(sample_items(30))
    old_text = store.get("r7").text
    with pytest.raises(InvalidInputError, match="upsert=True"):
        store.add({"id": "r7", "text": "zebra giraffe"})
    assert store.get("r7").text == old_text

    store.upsert([{"id": "r7", "text": "zebra giraffe", "tag": "new"}, {"id": "r99", "text": "x"}])
    assert len(store) == 31
    assert store.get("r7") == Record("r7", "zebra giraffe", {"tag": "new"})
    hits = store.search("zebra giraffe", k=3)
    assert hits[0].record.id == "r7" and hits[0].score == pytest.approx(1.0)
    assert all(h.record.id != "r7" for h in store.search(old_text, k=3))
    store.add({"id": "r8", "text": "lion"}, upsert=True)
    assert store.search("lion", k=1)[0].record.id == "r8"


def test_delete_is_all_or_nothing(store: HistoryStore) -> None:
    store.add(sample_items(10))
    before = snapshot(store)
    with pytest.raises(NotFoundError, match="'ghost'"):
        store.delete(["r1", "ghost", "r2"])
    assert snapshot(store) == before

    text = store.get("r4").text
    assert store.delete(["r4", "r5", "r4"]) == 2
    assert len(store) == 8 and "r4" not in store
    assert all(h.record.id not in {"r4", "r5"} for h in store.search(text, k=10))
    assert store.delete("r6") == 1  # a single id is one id, not its characters
    store.add({"id": "r4", "text": text})  # a deleted id can be added again
    assert store.search(text, k=1)[0].record.id == "r4"


def test_many_deletes_and_adds_keep_index_exact(store: HistoryStore) -> None:
    items = sample_items(400)
    store.add(items)
    for round_ in range(3):
        victims = [f"r{i}" for i in range(round_, 400, 3)]
        victims = [v for v in victims if v in store]
        store.delete(victims)
        store.add(sample_items(len(victims), seed=round_ + 1, prefix=f"n{round_}_"))
    ids = [r.id for r in store.list()]
    rng = np.random.default_rng(5)
    for query in rng.normal(size=(10, 64)).astype(np.float32):
        hits = store.search(query, k=10)
        np.testing.assert_allclose(
            [h.score for h in hits], brute_force_scores(store, query, ids)[:10], rtol=1e-5
        )


# ---------------------------------------------------------------------- search


def test_search_is_sorted_exact_and_returns_vectors(
    store: HistoryStore, encoder: HashingEncoder
) -> None:
    store.add(sample_items(300))
    ids = [r.id for r in store.list()]
    for i in (0, 17, 123):
        text = store.get(f"r{i}").text
        hits = store.search(text, k=10)
        assert all(isinstance(h, Hit) for h in hits)
        assert hits[0].record.id == f"r{i}" and hits[0].score == pytest.approx(1.0)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        query = encoder.encode_one(text)
        np.testing.assert_allclose(scores, brute_force_scores(store, query, ids)[:10], rtol=1e-5)
        np.testing.assert_array_equal(hits[3].vector, store.vectors([hits[3].record.id])[0])
    by_vector = store.search(encoder.encode_one(store.get("r17").text), k=10)
    assert [h.record.id for h in by_vector] == [h.record.id for h in store.search(
        store.get("r17").text, k=10)]
    assert store.search(np.ones((1, 64)), k=2)  # a (1, dim) query is fine too


def test_search_k_larger_than_count_returns_all(store: HistoryStore) -> None:
    assert store.search("anything", k=5) == []
    store.add(sample_items(7))
    hits = store.search("w1 w2 w3", k=50)
    assert sorted(h.record.id for h in hits) == sorted(f"r{i}" for i in range(7))
    assert len(store.search("w1", k=50, filter={"tag": "doc"})) == 3
    assert len(store.search("w1", k=50, filter=lambda r: r.fields["tag"] == "doc")) == 3


@pytest.mark.parametrize("exact_limit", [1000, 5])  # 5: dict filters go through hnswlib's filter
def test_dict_and_callable_filters_agree_with_brute_force(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch, exact_limit: int
) -> None:
    monkeypatch.setattr(store_search, "EXACT_SEARCH_MAX", exact_limit)
    store.add(sample_items(300))
    doc_ids = [r.id for r in store.list() if r.fields["tag"] == "doc"]
    rng = np.random.default_rng(1)
    for query in rng.normal(size=(5, 64)).astype(np.float32):
        by_dict = store.search(query, k=8, filter={"tag": "doc"})
        by_callable = store.search(query, k=8, filter=lambda r: r.fields["tag"] == "doc")
        assert [h.record.id for h in by_dict] == [h.record.id for h in by_callable]
        assert all(h.record.fields["tag"] == "doc" for h in by_dict)
        np.testing.assert_allclose(
            [h.score for h in by_dict], brute_force_scores(store, query, doc_ids)[:8], rtol=1e-5
        )


def test_dict_filter_compares_like_python(store: HistoryStore) -> None:
    store.add([
        {"id": "int", "text": "a", "n": 1, "tag": "x"},
        {"id": "float", "text": "b", "n": 1.0},
        {"id": "true", "text": "c", "n": True},
        {"id": "string", "text": "d", "n": "1"},
        {"id": "null", "text": "e", "n": None},
        {"id": "missing", "text": "f", "tag": "x"},
        {"id": "other", "text": "g", "n": 2, "tag": "y"},
    ])

    def ids_for(filter: dict) -> set[str]:
        return {h.record.id for h in store.search("a b c", k=10, filter=filter)}

    assert ids_for({"n": 1}) == {"int", "float", "true"}
    assert ids_for({"n": True}) == {"int", "float", "true"}
    assert ids_for({"n": "1"}) == {"string"}
    assert ids_for({"n": None}) == {"null", "missing"}
    assert ids_for({"n": 1, "tag": "x"}) == {"int"}
    assert ids_for({"tag": "nope"}) == set()
    assert ids_for({"weird \"key'": 1}) == set()
    assert len(ids_for({})) == 7


def test_callable_filters_loose_and_selective(store: HistoryStore) -> None:
    store.add(sample_items(600))
    ids = [r.id for r in store.list()]
    selected = set(ids[::20])  # 5%: few pass among the nearest, so hnswlib's filter is used
    rng = np.random.default_rng(2)
    for query in rng.normal(size=(5, 64)).astype(np.float32):
        everything = store.search(query, k=11)
        excluded = everything[0].record.id  # a loose filter: all but the nearest record
        loose = store.search(query, k=10, filter=lambda r, x=excluded: r.id != x)
        assert [h.record.id for h in loose] == [h.record.id for h in everything[1:]]

        hits = store.search(query, k=10, filter=lambda r: r.id in selected)
        assert {h.record.id for h in hits} <= selected
        np.testing.assert_allclose(
            [h.score for h in hits], brute_force_scores(store, query, sorted(selected))[:10],
            rtol=1e-5,
        )


def test_callable_filter_with_few_matches_and_errors(store: HistoryStore) -> None:
    store.add(sample_items(200))
    wanted = {"r3", "r77", "r150"}
    hits = store.search("w5 w6", k=10, filter=lambda r: r.id in wanted)
    assert {h.record.id for h in hits} == wanted  # fewer matches than k: all of them

    def broken(record: Record) -> bool:
        raise ZeroDivisionError("user bug")

    with pytest.raises(ZeroDivisionError, match="user bug"):
        store.search("w5", k=5, filter=broken)
    assert len(store.search("w5", k=5)) == 5  # the store still works


@pytest.mark.parametrize(
    ("query", "kwargs"),
    [
        ("", {}),
        ("   ", {}),
        (np.ones(32, dtype=np.float32), {}),
        (np.zeros(64, dtype=np.float32), {}),
        (np.full(64, np.nan), {}),
        ("ok", {"k": 0}),
        ("ok", {"k": "3"}),
        ("ok", {"filter": "tag=doc"}),
        ("ok", {"filter": {"tag": ["doc"]}}),
        ("ok", {"filter": {"id": "r1"}}),
    ],
)
def test_invalid_search_raises(store: HistoryStore, query: object, kwargs: dict) -> None:
    store.add(sample_items(3))
    with pytest.raises(InvalidInputError):
        store.search(query, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- export, lifecycle


def test_export_jsonl_roundtrip(store: HistoryStore, tmp_path: Path) -> None:
    store.add(sample_items(25) + [{"id": "ü", "text": "naïve café ☕", "score": 0.25}])
    out = tmp_path / "export.jsonl"
    assert store.export_jsonl(out) == 26
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 26
    exported = [Record.from_dict(json.loads(line)) for line in lines]
    assert exported == store.list()
    assert "embedding" not in json.loads(lines[0])

    with_vectors = tmp_path / "with_vectors.jsonl"
    store.export_jsonl(with_vectors, include_embeddings=True)
    rows = [json.loads(line) for line in with_vectors.read_text(encoding="utf-8").splitlines()]
    vectors = np.array([row.pop("embedding") for row in rows], dtype=np.float32)
    np.testing.assert_array_equal(vectors, store.vectors([row["id"] for row in rows]))

    # An export imports into a fresh store as the same records and vectors.
    with HistoryStore.at(tmp_path / "copy", encoder=HashingEncoder(64)) as copy:
        copy.add([Record.from_dict(row) for row in rows], vectors=vectors)
        assert snapshot(copy) == snapshot(store)


def test_closed_store_refuses_everything(store_dir: Path, encoder: HashingEncoder) -> None:
    store = HistoryStore.at(store_dir, encoder=encoder)
    store.add(sample_items(3))
    store.close()
    store.close()  # idempotent
    assert store.closed
    for call in (
        lambda: store.add(sample_items(1, prefix="z")),
        lambda: store.get("r0"),
        lambda: store.get_many(["r0"]),
        lambda: store.list(),
        lambda: list(store.iter()),
        lambda: store.search("w1"),
        lambda: store.vectors(["r0"]),
        lambda: store.delete(["r0"]),
        lambda: store.count(),
        lambda: len(store),
        lambda: store.export_jsonl(store_dir / "x.jsonl"),
        lambda: store.save_index(),
    ):
        with pytest.raises(StoreError, match="closed"):
            call()


def test_one_open_store_per_directory(store_dir: Path, encoder: HashingEncoder) -> None:
    with HistoryStore.at(store_dir, encoder=encoder):
        with pytest.raises(StoreError, match="already open"):
            HistoryStore.at(store_dir, encoder=encoder)
    with HistoryStore.at(store_dir, encoder=encoder) as again:
        assert len(again) == 0


def test_reopen_gives_identical_search_results(store_dir: Path) -> None:
    queries = ["w1 w2 w3", "w100 w200", "w7"]
    with HistoryStore.at(store_dir, encoder=HashingEncoder(64)) as store:
        store.add(sample_items(500))
        store.delete(["r3", "r4"])
        before = [[(h.record, h.score, h.vector.tolist()) for h in store.search(q, k=10)]
                  for q in queries]
    with HistoryStore.at(store_dir, encoder=HashingEncoder(64)) as store:  # a "new process"
        after = [[(h.record, h.score, h.vector.tolist()) for h in store.search(q, k=10)]
                 for q in queries]
        assert len(store) == 498
    assert after == before


# ---------------------------------------------------------------------- user ids, files


@pytest.mark.parametrize("user_id", ["../x", "a/b", "", "\x00", "a" * 200, ".hidden", "a\\b", 5])
def test_invalid_user_ids_are_refused(tmp_path: Path, user_id: object) -> None:
    with pytest.raises(InvalidUserIdError):
        HistoryStore.for_user(user_id, encoder=HashingEncoder(), root=tmp_path / "root")  # type: ignore
    assert not (tmp_path / "x").exists() and not (tmp_path / "root" / "x").exists()


def test_user_store_location_root_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with HistoryStore.for_user("alice", encoder=HashingEncoder(), root=tmp_path / "root") as store:
        store.add(sample_items(2))
        assert store.user_id == "alice"
        assert store.directory == tmp_path / "root" / "users" / "alice"
    monkeypatch.setenv("HYDRAHEAD_HOME", str(tmp_path / "home"))
    with HistoryStore.for_user("bob", encoder=HashingEncoder()) as store:
        assert store.directory == tmp_path / "home" / "users" / "bob"
    with HistoryStore.at(tmp_path / "dir", encoder=HashingEncoder()) as store:
        assert store.user_id is None
    with pytest.raises(InvalidInputError, match="for_user"):  # a str is neither, by itself
        HistoryStore("alice", encoder=HashingEncoder())  # type: ignore[arg-type]


def test_files_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        with HistoryStore.for_user("carol", encoder=HashingEncoder(), root=tmp_path) as store:
            store.add(sample_items(5))
            users = tmp_path / "users"
            assert stat.S_IMODE(users.stat().st_mode) == 0o700
            assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
            open_files = {p.name for p in store.directory.iterdir()}
            assert {DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm"} <= open_files
            for path in store.directory.iterdir():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
        saved = {p.name for p in store.directory.iterdir()}
        assert {DB_FILE, "index.hnsw", "index.stamp.json"} <= saved
        for path in store.directory.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
        with HistoryStore.at(tmp_path / "new" / "dir", encoder=HashingEncoder()):
            assert stat.S_IMODE((tmp_path / "new" / "dir").stat().st_mode) == 0o700
    finally:
        os.umask(old_umask)


# ---------------------------------------------------------------------- versions, encoders


def test_newer_format_version_is_refused_untouched(store_dir: Path) -> None:
    with HistoryStore.at(store_dir, encoder=HashingEncoder()) as store:
        store.add(sample_items(3))
    db = store_dir / DB_FILE
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {STORE_FORMAT_VERSION + 1}")
    conn.close()
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    mtime = db.stat().st_mtime_ns
    with pytest.raises(StoreVersionError, match="upgrade hydrahead"):
        HistoryStore.at(store_dir, encoder=HashingEncoder())
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    assert db.stat().st_mtime_ns == mtime
    # The failed open released the directory: the user can downgrade the file and go on.
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {STORE_FORMAT_VERSION}")
    conn.close()
    with HistoryStore.at(store_dir, encoder=HashingEncoder()) as store:
        assert len(store) == 3


def test_unreadable_or_foreign_database_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / DB_FILE).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a readable"):
        HistoryStore.at(garbage, encoder=HashingEncoder())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    conn = sqlite3.connect(foreign / DB_FILE)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()
    with pytest.raises(StoreError, match="not a hydrahead store"):
        HistoryStore.at(foreign, encoder=HashingEncoder())


def test_other_encoder_is_refused_with_instructions(store_dir: Path) -> None:
    with HistoryStore.at(store_dir, encoder=HashingEncoder(64)) as store:
        store.add(sample_items(5))
        before = snapshot(store)
    with pytest.raises(EncoderMismatchError, match="on_encoder_change='reembed'"):
        HistoryStore.at(store_dir, encoder=HashingEncoder(64, salt="v2"))
    with HistoryStore.at(store_dir, encoder=HashingEncoder(64)) as store:
        assert snapshot(store) == before


@pytest.mark.parametrize("new_dim", [64, 32])
def test_reembed_on_encoder_change(store_dir: Path, new_dim: int) -> None:
    with HistoryStore.at(store_dir, encoder=HashingEncoder(64)) as store:
        store.add(sample_items(40))
        records = store.list()
    new_encoder = HashingEncoder(new_dim, salt="v2")
    with HistoryStore.at(store_dir, encoder=new_encoder, on_encoder_change="reembed") as store:
        assert store.list() == records
        assert store.dim == new_dim and store.encoder_fingerprint == new_encoder.fingerprint
        np.testing.assert_array_equal(
            store.vectors([r.id for r in records]), new_encoder.encode([r.text for r in records])
        )
        assert store.search(records[9].text, k=1)[0].record.id == records[9].id
    with HistoryStore.at(store_dir, encoder=HashingEncoder(new_dim, salt="v2")) as store:
        assert store.search(records[9].text, k=1)[0].record.id == records[9].id


def test_empty_store_adopts_a_new_encoder(store_dir: Path) -> None:
    HistoryStore.at(store_dir, encoder=HashingEncoder(64)).close()
    with HistoryStore.at(store_dir, encoder=HashingEncoder(16, salt="other")) as store:
        store.add(sample_items(3))
        assert store.dim == 16


@pytest.mark.parametrize(
    "kwargs",
    [{"M": 1}, {"ef": 0}, {"ef_construction": "200"}, {"on_encoder_change": "ignore"},
     {"autosave_every": 0}, {"encoder": object()}],
)
def test_invalid_options_are_refused(store_dir: Path, kwargs: dict) -> None:
    options = {"encoder": HashingEncoder(), **kwargs}
    with pytest.raises(InvalidInputError):
        HistoryStore.at(store_dir, **options)


# ---------------------------------------------------------------------- real encoder


def test_real_bundle_encoder_search_and_reopen(bundle_dir: Path, tmp_path: Path) -> None:
    from hydrahead.runtime.encoder import Encoder

    encoder = Encoder(bundle_dir)
    items = [
        {"id": "docs", "text": "Documentation: fix typos in the user manual", "tag": "doc"},
        {"id": "test", "text": "Add unit tests for the merge strategy", "tag": "tests"},
        {"id": "perf", "text": "Speed up packing of large repositories", "tag": "perf"},
        {"id": "gui", "text": "Make the commit dialog window resizable", "tag": "git-gui"},
    ]
    queries = ["correct spelling mistakes in the docs", "new test cases for merging"]
    with HistoryStore.at(tmp_path / "real", encoder=encoder) as store:
        store.add(items)
        assert store.dim == encoder.dim
        first = [store.search(q, k=4) for q in queries]
        assert [hits[0].record.id for hits in first] == ["docs", "test"]
        assert store.search(queries[0], k=2, filter={"tag": "tests"})[0].record.id == "test"
    with HistoryStore.at(tmp_path / "real", encoder=Encoder(bundle_dir)) as store:
        again = [store.search(q, k=4) for q in queries]
    assert [[(h.record.id, h.score) for h in hits] for hits in again] == [
        [(h.record.id, h.score) for h in hits] for hits in first
    ]


# ---------------------------------------------------------------------- update, history, clear


def test_update_history_and_clear(store: HistoryStore, encoder: HashingEncoder) -> None:
    store.add([{"id": "n1", "text": "lunch with Bob", "topic": "social"}])
    calls = encoder.calls
    updated = store.update("n1", fields={"topic": "work", "room": "B2"})
    assert encoder.calls == calls  # same text: the stored vector is kept, nothing re-embedded
    assert store.get("n1") == updated and updated.fields == {"topic": "work", "room": "B2"}
    store.update("n1", text="lunch with Bob about the budget", fields={"room": None})
    assert store.get("n1").fields == {"topic": "work"}
    assert store.search("budget", k=1)[0].record.id == "n1"
    with pytest.raises(NotFoundError):
        store.update("nope", text="x")
    with pytest.raises(InvalidInputError):
        store.update("n1", text="   ")
    history = store.history("n1")
    assert [c.op for c in history] == ["add", "update", "update"]
    assert history[0].text == "lunch with Bob" and history[-1].text.endswith("budget")
    assert history[0].at <= history[1].at <= history[2].at
    # a change of fields alone shows: the fields after each change
    assert [c.fields for c in history] == [{"topic": "social"}, {"topic": "work", "room": "B2"},
                                           {"topic": "work"}]
    store.delete(["n1"])
    after = store.history("n1")
    assert [c.op for c in after] == ["add", "update", "update", "delete"]
    # deletion blanks the texts and fields of its history
    assert all(c.text is None and c.fields is None for c in after)
    store.add(sample_items(3))
    assert store.clear() == 3 and len(store) == 0
    assert [c.op for c in store.history(limit=3)] == ["delete"] * 3


def test_history_of_a_store_made_before_fields_were_kept(store_dir: Path,
                                                          encoder: HashingEncoder) -> None:
    with HistoryStore.at(store_dir, encoder=encoder) as store:
        store.add([{"id": "n1", "text": "old", "topic": "a"}])
    conn = sqlite3.connect(store_dir / DB_FILE)  # as an older hydrahead left it
    with conn:
        for name in ("add", "update", "delete"):
            conn.execute(f"DROP TRIGGER changes_{name}_2")
        conn.execute("ALTER TABLE changes DROP COLUMN fields")
        conn.execute("""CREATE TRIGGER changes_update AFTER UPDATE OF text, fields, timestamp
            ON items BEGIN INSERT INTO changes (id, op, at, text)
            VALUES (new.id, 'update', 0, new.text); END""")
    conn.close()
    with HistoryStore.at(store_dir, encoder=encoder) as store:
        store.update("n1", fields={"topic": "b"})
        history = store.history("n1")
    assert [(c.op, c.text, c.fields) for c in history] == [
        ("add", "old", None), ("update", "old", {"topic": "b"})]  # one entry per change


def test_search_threshold(store: HistoryStore) -> None:
    store.add(sample_items(50))
    q = store.vectors(["r7"])[0]
    hits = store.search(q, k=50)
    cut = hits[5].score
    kept = store.search(q, k=50, threshold=cut)
    assert [(h.record.id, h.score) for h in kept] == [
        (h.record.id, h.score) for h in hits if h.score >= cut]
    assert len(kept) >= 6
    assert [h.record.id for h in store.search(q, k=50, threshold=0.999)] == ["r7"]
    with pytest.raises(InvalidInputError):
        store.search(q, threshold=1.5)


# ---------------------------------------------------------------------- the read cache


def test_the_read_cache_never_serves_stale_records(store: HistoryStore, store_dir: Path) -> None:
    store.add(sample_items(300))
    q = store.vectors(["r5"])[0]
    first = store.search(q, k=3, filter={"tag": "doc"})
    # A caller changing a hit changes nothing stored or cached.
    first[0].record.fields["tag"] = "changed by the caller"
    assert store.search(q, k=3, filter={"tag": "doc"})[0].record.fields["tag"] == "doc"
    # Our own writes: the filter's matches and the rows are read again.
    store.add([{"id": "new-doc", "text": store.get("r5").text, "tag": "doc"}])
    assert "new-doc" in {h.record.id for h in store.search(q, k=3, filter={"tag": "doc"})}
    store.delete(["new-doc"])
    assert "new-doc" not in {h.record.id for h in store.search(q, k=3, filter={"tag": "doc"})}
    # Another connection's commit (SQLite's data_version changes): read again too.
    top = store.search(q, k=1)[0].record.id
    conn = sqlite3.connect(store_dir / DB_FILE)
    try:
        with conn:
            conn.execute("UPDATE items SET text = 'edited elsewhere' WHERE id = ?", (top,))
    finally:
        conn.close()
    assert store.search(q, k=1)[0].record.text == "edited elsewhere"


@pytest.mark.parametrize("share", [0.004, 0.03, 0.1, 0.5])
def test_dict_filters_find_the_exact_top_k_at_any_selectivity(
    store: HistoryStore, share: float
) -> None:
    rng = np.random.default_rng(4)
    items = sample_items(3000)
    for item in items:
        item["flag"] = bool(rng.random() < share)
    store.add(items)
    flagged = [i["id"] for i in items if i["flag"]]
    flagged_vectors = store.vectors(flagged)
    recalls = []
    for q in rng.normal(size=(20, store.dim)).astype(np.float32):
        hits = store.search(q, k=10, filter={"flag": True})
        assert len(hits) == min(10, len(flagged))
        assert {h.record.id for h in hits} <= set(flagged)
        cos = flagged_vectors @ q / (np.linalg.norm(flagged_vectors, axis=1) * np.linalg.norm(q))
        truth = {flagged[i] for i in np.argsort(-cos)[:10]}
        recalls.append(len(truth & {h.record.id for h in hits}) / len(truth))
    assert np.mean(recalls) >= 0.95, recalls  # approximate (HNSW) where it must be


# ---------------------------------------------------------------------- hostile input

ENC = HashingEncoder(16)


@pytest.fixture
def store_of_ten(tmp_path: Path):
    with HistoryStore.at(tmp_path / "s", encoder=ENC) as opened:
        opened.add(sample_items(10))
        yield opened


def intact(store: HistoryStore) -> None:
    assert [r.id for r in store.list()] == [i["id"] for i in sample_items(10)]
    assert store.search(sample_items(10)[3]["text"], k=1)[0].record.id == sample_items(10)[3]["id"]


def test_unencodable_record_ids(store_of_ten: HistoryStore) -> None:
    bad = "x\udc80"
    with pytest.raises(InvalidInputError):
        store_of_ten.get(bad)
    with pytest.raises(InvalidInputError):
        store_of_ten.delete([bad])
    with pytest.raises(InvalidInputError):
        store_of_ten.get_many(["r0", bad])
    assert bad not in store_of_ten
    with pytest.raises(InvalidInputError):
        store_of_ten.add([{"id": bad, "text": "t"}])
    intact(store_of_ten)


def test_huge_numbers(store_of_ten: HistoryStore) -> None:
    with pytest.raises(InvalidInputError):
        store_of_ten.add([{"id": "big", "text": "t", "timestamp": 10**400}])
    with pytest.raises(InvalidInputError):
        Record("big", "t", timestamp=10**400)
    with pytest.raises(InvalidInputError):
        store_of_ten.list(offset=10**20)
    with pytest.raises(InvalidInputError):
        store_of_ten.list(limit=10**20)
    with pytest.raises(InvalidInputError):
        store_of_ten.search("t", k=10**20)
    intact(store_of_ten)


def test_record_dict_with_mixed_keys_and_no_id(store_of_ten: HistoryStore) -> None:
    with pytest.raises(InvalidInputError, match="no 'id'"):
        store_of_ten.add([{1: "a", "text": "t"}])
    intact(store_of_ten)


ids = st.one_of(texts(12), st.integers(), st.none(), st.binary(max_size=4),
                st.lists(st.text(max_size=3), max_size=2))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts(8),
                    st.binary(max_size=3))
records = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(["id", "text", "timestamp", "tag", "date"]),
                              st.text(max_size=6), st.integers()),
                    st.one_of(scalars, ids), max_size=5),
    st.fixed_dictionaries({"id": ids, "text": st.one_of(texts(30), scalars)},
                          optional={"timestamp": scalars, "tag": scalars, "date": scalars}),
    scalars,
)
numbers = st.one_of(st.integers(), st.floats(), st.none(), st.text(max_size=3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("add"), st.lists(records, max_size=4), st.booleans()),
    st.tuples(st.just("delete"), st.lists(ids, max_size=3)),
    st.tuples(st.just("get"), ids),
    st.tuples(st.just("contains"), ids),
    st.tuples(st.just("list"), numbers, numbers),
    st.tuples(st.just("search"), st.one_of(texts(10), scalars), numbers,
              st.one_of(st.none(), st.dictionaries(st.text(max_size=4), scalars, max_size=2))),
), max_size=12))
def test_store_api_raises_only_its_own_errors_and_loses_nothing(ops, tmp_path_factory) -> None:
    directory = tmp_path_factory.mktemp("prop")
    with HistoryStore.at(directory / "s", encoder=ENC) as store:
        store.add(sample_items(5))
        model = {r.id: r for r in store.list()}
        for op in ops:
            try:
                if op[0] == "add":
                    added = store.add(op[1], upsert=op[2])
                    for record_id in added:
                        model[record_id] = store.get(record_id)
                elif op[0] == "delete":
                    store.delete(op[1])
                    for record_id in op[1]:
                        model.pop(record_id, None)
                elif op[0] == "get":
                    assert store.get(op[1]) == model[op[1]]
                elif op[0] == "contains":
                    assert (op[1] in store) == (isinstance(op[1], str) and op[1] in model)
                elif op[0] == "list":
                    store.list(limit=op[1], offset=op[2])
                else:
                    store.search(op[1], k=op[2], filter=op[3])
            except NotFoundError:
                assert op[0] in ("get", "delete")
            except HydraheadError:
                pass
            assert {r.id: r for r in store.list()} == model
    with HistoryStore.at(directory / "s", encoder=ENC) as store:
        assert {r.id: r for r in store.list()} == model
