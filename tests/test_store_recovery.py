"""The HNSW index is a cache: whatever happens to it, reopening rebuilds it from SQLite.

Each test builds a store, records search results, damages the index (or crashes before it is
saved), reopens, and checks that the index was rebuilt (with a logged warning saying why) and
that searches return exactly what they returned before. An index file rewritten to crash its
reader, with a stamp that matches it, is rebuilt too, not loaded. SQLite is not a cache: a store
whose database is lost is refused, never opened silently empty.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from testing import REPO_ROOT
from testing.fake_encoder import HashingEncoder, sample_items
from hydrahead.runtime import hnsw_file, hnsw_index
from hydrahead.runtime.errors import StoreError
from hydrahead.runtime.hnsw_index import INDEX_FILE, STAMP_FILE, VectorIndex, file_sha256
from hydrahead.runtime.store import DB_FILE, HistoryStore


N_ITEMS = 300
# Random query vectors, so that no two records tie: the hashing encoder's integer word counts
# give text queries many equal scores, and a rebuilt graph may pick a different subset of the
# records that tie for the k-th place.
QUERIES = list(np.random.default_rng(123).normal(size=(8, 64)).astype(np.float32))


def search_all(store: HistoryStore) -> list[list[tuple[str, float]]]:
    return [[(h.record.id, h.score) for h in store.search(q, k=10)] for q in QUERIES]


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, list]:
    """A closed store with saved index, and its search results."""
    directory = tmp_path / "store"
    with HistoryStore.at(directory, encoder=HashingEncoder(64)) as store:
        store.add(sample_items(N_ITEMS))
        results = search_all(store)
    assert (directory / INDEX_FILE).exists() and (directory / STAMP_FILE).exists()
    return directory, results


def reopen_expecting_rebuild(
    directory: Path, caplog: pytest.LogCaptureFixture, reason: str, **kwargs
) -> list:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hydrahead.runtime.store"):
        with HistoryStore.at(directory, encoder=HashingEncoder(64), **kwargs) as store:
            results = search_all(store)
    warnings = [r.getMessage() for r in caplog.records if "rebuilding the search index" in
                r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert reason in warnings[0]
    return results


def reopen_without_rebuild(directory: Path, caplog: pytest.LogCaptureFixture) -> list:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hydrahead.runtime.store"):
        with HistoryStore.at(directory, encoder=HashingEncoder(64)) as store:
            results = search_all(store)
    assert "rebuilding" not in caplog.text
    return results


def test_intact_index_is_reused(built, caplog) -> None:
    directory, before = built
    assert reopen_without_rebuild(directory, caplog) == before


def test_missing_index_file_is_rebuilt(built, caplog) -> None:
    directory, before = built
    (directory / INDEX_FILE).unlink()
    assert reopen_expecting_rebuild(directory, caplog, "missing") == before
    # The rebuilt index was saved: the next open uses it.
    assert reopen_without_rebuild(directory, caplog) == before


def test_missing_or_garbled_stamp_is_rebuilt(built, caplog) -> None:
    directory, before = built
    (directory / STAMP_FILE).unlink()
    assert reopen_expecting_rebuild(directory, caplog, "stamp is missing") == before
    (directory / STAMP_FILE).write_text("{not json")
    assert reopen_expecting_rebuild(directory, caplog, "stamp is unreadable") == before


def test_truncated_index_is_rebuilt(built, caplog) -> None:
    directory, before = built
    path = directory / INDEX_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert reopen_expecting_rebuild(directory, caplog, "checksum") == before


def test_corrupted_index_bytes_are_rebuilt(built, caplog) -> None:
    directory, before = built
    path = directory / INDEX_FILE
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # same size, different content
    path.write_bytes(bytes(data))
    assert reopen_expecting_rebuild(directory, caplog, "checksum") == before


def test_garbage_index_with_a_matching_stamp_is_rebuilt(built, caplog) -> None:
    directory, before = built
    path = directory / INDEX_FILE
    path.write_bytes(b"\x00" * 100)  # garbage, but with a matching stamp: never reaches hnswlib
    stamp = json.loads((directory / STAMP_FILE).read_text())
    stamp["file"] = {"sha256": hnsw_index.file_sha256(path), "bytes": 100}
    (directory / STAMP_FILE).write_text(json.dumps(stamp))
    assert reopen_expecting_rebuild(directory, caplog, "malformed") == before


def test_rows_written_by_another_connection_make_the_index_stale(built, caplog) -> None:
    directory, before = built
    text = "w1 w2 w3 w4 newcomer"
    vector = HashingEncoder(64).encode_one(text)
    conn = sqlite3.connect(directory / DB_FILE)
    with conn:
        conn.execute(
            "INSERT INTO items (id, text, fields, timestamp, embedding) VALUES (?, ?, ?, ?, ?)",
            ("outsider", text, '{"tag": "outside"}', None, vector.astype("<f4").tobytes()),
        )
    conn.close()
    after = reopen_expecting_rebuild(directory, caplog, "stale")
    for hits_after, hits_before in zip(after, before):  # the rest ranks as before
        others = [hit for hit in hits_after if hit[0] != "outsider"]
        assert others == hits_before[: len(others)]
    with HistoryStore.at(directory, encoder=HashingEncoder(64)) as store:
        assert store.search(text, k=1)[0].record.id == "outsider"  # the new row is searchable
        assert [h.record.id for h in store.search(text, filter={"tag": "outside"})] == [
            "outsider"
        ]


def test_crash_before_the_index_is_saved(built, caplog, tmp_path: Path) -> None:
    """A real crash: a child process adds records and dies without closing the store."""
    directory, _ = built
    script = textwrap.dedent(
        f"""
        import os
        from testing.fake_encoder import HashingEncoder, sample_items
        from hydrahead.runtime.store import HistoryStore
        store = HistoryStore.at({str(directory)!r}, encoder=HashingEncoder(64), autosave_every=40)
        store.add(sample_items(50, seed=3, prefix="first"))   # autosaved (50 >= 40)
        store.delete(["r0", "r1"])                           # saved (a delete always saves)
        store.add(sample_items(30, seed=4, prefix="second"))  # not saved
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, cwd=REPO_ROOT)
    with caplog.at_level(logging.WARNING, logger="hydrahead.runtime.store"):
        with HistoryStore.at(directory, encoder=HashingEncoder(64)) as store:
            assert "stale" in caplog.text
            assert len(store) == N_ITEMS + 80 - 2
            crashed = search_all(store)
            for record in store.get_many(["first7", "second29", "r2"]):
                assert store.search(record.text, k=1)[0].record.id == record.id
            assert "r0" not in store
    # The same records added in one clean run give the same results.
    with HistoryStore.at(tmp_path / "clean", encoder=HashingEncoder(64)) as clean:
        clean.add(sample_items(N_ITEMS))
        clean.add(sample_items(50, seed=3, prefix="first"))
        clean.delete(["r0", "r1"])
        clean.add(sample_items(30, seed=4, prefix="second"))
        assert search_all(clean) == crashed


def test_crash_during_save_leaves_only_temp_files(
    built, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, _ = built
    real_save = VectorIndex.save

    def save_then_die(self, directory_, state):  # the index file is replaced, not the stamp
        self._index.save_index(str(directory_ / f".{INDEX_FILE}.crashed.tmp"))
        raise OSError("disk full")

    monkeypatch.setattr(VectorIndex, "save", save_then_die)
    with HistoryStore.at(directory, encoder=HashingEncoder(64)) as store:
        store.add(sample_items(5, seed=7, prefix="late"))
        expected = search_all(store)
    assert "could not save the search index" in caplog.text  # close() logs, does not fail
    monkeypatch.setattr(VectorIndex, "save", real_save)
    assert reopen_expecting_rebuild(directory, caplog, "stale") == expected
    assert not list(directory.glob("*.tmp")) and not list(directory.glob(".*.tmp"))
    with HistoryStore.at(directory, encoder=HashingEncoder(64)) as store:
        late = store.get("late3")
        assert store.search(late.text, k=1)[0].record.id == "late3"


def test_failed_in_memory_update_rebuilds_from_sqlite(
    built, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, _ = built
    real_upsert = VectorIndex.upsert
    calls = []

    def failing_once(self, labels, vectors, is_new):
        calls.append(len(labels))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return real_upsert(self, labels, vectors, is_new)

    monkeypatch.setattr(VectorIndex, "upsert", failing_once)
    with HistoryStore.at(directory, encoder=HashingEncoder(64)) as store:
        store.add(sample_items(4, seed=11, prefix="x"))
        assert "out of memory" in caplog.text
        for record in store.get_many(["x0", "x3"]):
            assert store.search(record.text, k=1)[0].record.id == record.id


def test_changed_index_parameters_rebuild(built, caplog) -> None:
    directory, before = built
    assert reopen_expecting_rebuild(directory, caplog, "built with", M=8) == before


def test_index_grows_past_its_capacity(tmp_path: Path) -> None:
    n = hnsw_index.MIN_CAPACITY * 2 + 100
    items = sample_items(n)
    with HistoryStore.at(tmp_path / "big", encoder=HashingEncoder(64)) as store:
        for start in range(0, n, 700):
            store.add(items[start : start + 700])
        assert store._index.capacity >= n
        rng = np.random.default_rng(0)
        for i in rng.choice(n, size=20, replace=False):
            assert store.search(items[i]["text"], k=1)[0].record.id == items[i]["id"]
        capacity = store._index.capacity
        store.delete([item["id"] for item in items[:500]])
        store.add(sample_items(500, seed=1, prefix="again"))
        assert store._index.capacity == capacity  # deleted slots were reused


def test_index_file_is_written_atomically(built, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing save keeps the old index and stamp intact."""
    directory, before = built
    old_index = (directory / INDEX_FILE).read_bytes()
    old_stamp = (directory / STAMP_FILE).read_bytes()

    def failing_replace(src, dst):
        raise OSError("rename failed")

    with HistoryStore.at(directory, encoder=HashingEncoder(64)) as store:
        monkeypatch.setattr(os, "replace", failing_replace)
        with pytest.raises(Exception, match="rename failed"):
            store.save_index()
        monkeypatch.undo()
    assert (directory / INDEX_FILE).read_bytes() == old_index
    assert (directory / STAMP_FILE).read_bytes() == old_stamp
    assert not list(directory.glob(".*.tmp"))


# ---------------------------------------------------------------------------- a hostile index file

ENC = HashingEncoder(16)


def store_of_60(tmp_path: Path) -> Path:
    directory = tmp_path / "s"
    with HistoryStore.at(directory, encoder=ENC) as store:
        store.add(sample_items(60))
    return directory


def restamp(directory: Path) -> None:
    """Make the stamp's checksum match a rewritten index, as a careful attacker would."""
    stamp = json.loads((directory / STAMP_FILE).read_text())
    path = directory / INDEX_FILE
    stamp["file"] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    (directory / STAMP_FILE).write_text(json.dumps(stamp))


def test_stamp_whose_file_entry_is_not_an_object_is_rebuilt(tmp_path: Path, caplog) -> None:
    directory = store_of_60(tmp_path)
    stamp = json.loads((directory / STAMP_FILE).read_text())
    stamp["file"] = ["not", "an", "object"]
    (directory / STAMP_FILE).write_text(json.dumps(stamp))
    with HistoryStore.at(directory, encoder=ENC) as store:
        assert len(store.search("anything", k=5)) == 5
    assert "rebuilding" in caplog.text


def _patch_header(field: str, value: int):
    def patch(data: bytearray) -> None:
        offset, fmt = hnsw_file.HEADER_FIELDS[field]
        struct.pack_into(fmt, data, offset, value)
    return patch


def _break_a_link(data: bytearray) -> None:
    header = hnsw_file.parse_header(bytes(data))
    at = header.header_size + header.size_data_per_element * 5  # element 5's level-0 list
    struct.pack_into("<H", data, at, 1)
    struct.pack_into("<I", data, at + 4, 2**31)


TAMPERS = {
    "huge element count": _patch_header("cur_element_count", 2**40),
    "count past capacity": _patch_header("cur_element_count", 5000),
    "other dimension": _patch_header("size_data_per_element", 8),
    "entry point out of range": _patch_header("enterpoint_node", 2**31),
    "huge max level": _patch_header("maxlevel", 2**30),
    "link to nowhere": _break_a_link,
    "truncated": lambda data: data.__delitem__(slice(len(data) - 40, None)),
    "grown": lambda data: data.extend(b"\x01" * 4096),
}


@pytest.mark.parametrize("case", list(TAMPERS))
def test_tampered_index_with_matching_stamp_is_rebuilt_not_crashed(
    case: str, tmp_path: Path
) -> None:
    directory = store_of_60(tmp_path)
    data = bytearray((directory / INDEX_FILE).read_bytes())
    TAMPERS[case](data)
    (directory / INDEX_FILE).write_bytes(bytes(data))
    restamp(directory)
    script = textwrap.dedent(f"""
        import logging
        logging.basicConfig(level=logging.WARNING)
        from testing.fake_encoder import HashingEncoder
        from hydrahead.runtime.store import HistoryStore
        with HistoryStore.at({str(directory)!r}, encoder=HashingEncoder(16)) as store:
            print(len(store.search("a commit", k=10)))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]  # no SIGSEGV, no raw exception
    assert result.stdout.strip() == "10"
    assert "rebuilding the search index" in result.stderr


# ---------------------------------------------------------------------------- never silently empty


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_store_that_lost_its_database_is_refused(tmp_path: Path, damage: str) -> None:
    directory = store_of_60(tmp_path)
    db = directory / DB_FILE
    if damage == "truncate":
        db.write_bytes(b"")
    else:
        db.unlink()
    index = (directory / INDEX_FILE).read_bytes()
    with pytest.raises(StoreError, match="60 records") as info:
        HistoryStore.at(directory, encoder=ENC)
    assert "restore" in str(info.value).lower() and INDEX_FILE in str(info.value)
    assert (directory / INDEX_FILE).read_bytes() == index  # the evidence is kept
    assert not db.exists() or db.stat().st_size == 0


def test_an_emptied_store_that_was_saved_empty_opens(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    with HistoryStore.at(directory, encoder=ENC) as store:
        store.add(sample_items(3))
        store.delete([i["id"] for i in sample_items(3)])
    (directory / DB_FILE).unlink()
    with HistoryStore.at(directory, encoder=ENC) as store:
        assert len(store) == 0
