"""Deletion is total and forgetting is safe.

* After ``delete`` and ``close``, no file under the data root holds a deleted record's text or
  its vector: not SQLite (its freed pages and its WAL), not the HNSW index, not the stored
  labels, not the response cache; the outbox keeps the fact that a request was sent, with the
  deleted text replaced by a marker.
* ``forget`` refuses while the user is open elsewhere, and a store whose directory was removed
  under it fails its next operation clearly and recreates nothing.

Files are scanned as bytes (and, for .npz archives, member by member, since they are
compressed); strings are looked for in UTF-8 and in numpy's UTF-32 form.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from testing import REPO_ROOT
from testing.fake_encoder import HashingEncoder, sample_items
from testing.file_scan import files_holding, text_needles
from testing.synthetic_users import make_user

from hydrahead.runtime import hnsw_file
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.errors import StoreError
from hydrahead.runtime.importing import import_records
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.offline.server import OfflineLLMServer
from hydrahead.runtime.llm.outbox import ERASED, Outbox
from hydrahead.runtime.personalizer import Personalizer
from hydrahead.runtime.store import DB_FILE, HistoryStore
from hydrahead.runtime.users import forget_user


MARK = "HHDEL{:04d}"


def index_vectors(directory: Path) -> np.ndarray:
    """Every vector slot of the saved HNSW index (live or deleted), as hnswlib wrote them."""
    return hnsw_file.read(directory / "index.hnsw").vectors()


def assert_vector_gone(directory: Path, vector: np.ndarray) -> None:
    unit = vector / np.linalg.norm(vector)
    slots = index_vectors(directory)
    assert slots.shape[0] > 0
    assert float(np.max(slots @ unit)) < 0.99  # no slot holds it (hnswlib stores it normalised)


# ---------------------------------------------------------------------------- the store alone


def test_store_delete_leaves_no_text_or_vector_in_its_files(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    items = sample_items(200)
    for i, item in enumerate(items):
        item["text"] = f"{item['text']} {MARK.format(i)}"
    gone = items[17]
    with HistoryStore.at(directory, encoder=HashingEncoder(64)) as store:
        store.add(items)
        store.save_index()
        vector = store.vectors([gone["id"]])[0]
        store.delete([gone["id"]])
        assert gone["id"] not in store
    needles = {**text_needles(MARK.format(17)), "vector": vector.astype("<f4").tobytes()}
    assert files_holding(directory, needles) == []
    assert_vector_gone(directory, vector)
    # The others are all still there, text and vector.
    with HistoryStore.at(directory, encoder=HashingEncoder(64)) as store:
        assert len(store) == 199
        assert store.search(store.vectors([items[18]["id"]])[0], k=1)[0].record.id == items[18]["id"]
    assert files_holding(directory, text_needles(MARK.format(18)))


# ---------------------------------------------------------------------------- a whole user


def test_personalizer_delete_is_total_across_the_user_directory(
    tmp_path: Path, bundle_dir: Path
) -> None:
    user = make_user(7)
    history = [dict(h, text=f"{h['text']} {MARK.format(i)}") for i, h in enumerate(user["history"])]
    with OfflineLLMServer() as server:
        with Personalizer.open(
            "dora", bundle=Bundle.open(bundle_dir), task="GIT_area",
            llm=LLMConfig.from_env(base_url=server.url), root=tmp_path, m=3, k=10,
        ) as p:
            import_records(p.store, p.task, history)
            p.fit(budget=40, progress=False)
            shown = set()
            for q in user["queries"][:4]:
                shown |= {it.record.id for it in p.ask(q["query"]).items}
                p.feedback(q["query"], "doc")  # kept in heads/feedback.npz, with record texts
            sent = [r["request"] for r in p.llm.outbox.records()]
            # Two records that left the device; one deleted through the personalizer, one
            # straight through its store: both must be gone from every file. The first was in
            # an ask's prompt, so the feedback on that ask holds its text too.
            left = [i for i in range(len(history)) if any(MARK.format(i) in s for s in sent)]
            first = next(i for i in left if history[i]["id"] in shown)
            second = next(i for i in reversed(left) if i != first)
            vectors = p.store.vectors([history[first]["id"], history[second]["id"]])
            n_outbox = len(sent)
            n_cached = len(p.llm.cache)
            p.delete([history[first]["id"]])
            p.store.delete([history[second]["id"]])
            # The answers to prompts that held them are gone from the response cache.
            assert len(p.llm.cache) < n_cached
            gone = {history[first]["id"], history[second]["id"]}
            cache_db = sqlite3.connect(tmp_path / "users" / "dora" / "llm_cache.sqlite")
            try:
                listed = {row[0] for row in cache_db.execute("SELECT record_id FROM sources")}
            finally:
                cache_db.close()
            assert listed and not listed & gone
    root = tmp_path
    for index, vector in ((first, vectors[0]), (second, vectors[1])):
        needles = {**text_needles(MARK.format(index)), "vector": vector.astype("<f4").tobytes()}
        assert files_holding(root, needles) == [], history[index]["id"]
        assert_vector_gone(root / "users" / "dora", vector)
    # The ledger still shows every request that was sent, with the deleted text marked.
    ledger = list(Outbox(root / "users" / "dora" / "outbox.jsonl").records())
    assert len(ledger) == n_outbox
    erased = [r for r in ledger if r.get("erased_records")]
    assert erased and all(ERASED in r["request"] for r in erased)
    assert all(r["bytes_sent"] > 0 for r in erased)
    # Other records' text is still in the ledger (only the deleted text was replaced).
    kept = [i for i in left if i not in (first, second)]
    assert kept and any(MARK.format(kept[0]) in r["request"] for r in ledger)


def test_an_interrupted_erasure_is_finished_on_the_next_open(tmp_path: Path) -> None:
    """A crash after SQLite committed the delete but before the other files were cleaned."""
    directory = tmp_path / "store"
    items = sample_items(20)
    items[3]["text"] += " " + MARK.format(3)
    outbox = Outbox(directory / "outbox.jsonl")
    with HistoryStore.at(directory, encoder=HashingEncoder(32)) as store:
        store.add(items)
    outbox.append({"request": json.dumps({"messages": [
        {"role": "user", "content": f"Example: {items[3]['text']}"}]}), "sources": [items[3]["id"]],
        "bytes_sent": 10})
    script = textwrap.dedent(f"""
        import os
        from testing.fake_encoder import HashingEncoder
        from hydrahead.runtime import erasure
        from hydrahead.runtime.store import HistoryStore
        def crash(*args, **kwargs):
            os._exit(3)
        erasure.erase_from_user_files = crash
        store = HistoryStore.at({str(directory)!r}, encoder=HashingEncoder(32))
        store.delete([{items[3]['id']!r}])
    """)
    result = subprocess.run([sys.executable, "-c", script], timeout=60, cwd=REPO_ROOT)
    assert result.returncode == 3
    assert MARK.format(3).encode() in (directory / "outbox.jsonl").read_bytes()
    with HistoryStore.at(directory, encoder=HashingEncoder(32)) as store:
        assert items[3]["id"] not in store and len(store) == 19
    assert files_holding(directory, text_needles(MARK.format(3))) == []


# ---------------------------------------------------------------------------- forget


HOLD = textwrap.dedent("""
    import sys
    from testing.fake_encoder import HashingEncoder
    from hydrahead.runtime.store import HistoryStore
    store = HistoryStore.for_user("u", encoder=HashingEncoder(16), root={root!r})
    print("open", flush=True)
    sys.stdin.readline()
    try:
        store.add([{{"id": "late", "text": "written after forget"}}])
        print("added", flush=True)
    except Exception as exc:
        print(type(exc).__name__, exc, flush=True)
    store.close()
""")


def test_forget_refuses_while_the_user_is_open_elsewhere(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with HistoryStore.for_user("u", encoder=HashingEncoder(16), root=root) as store:
        store.add(sample_items(5))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD.format(root=str(root))], cwd=REPO_ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match="open"):
            forget_user("u", root)
        assert (root / "users" / "u" / DB_FILE).exists()
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "added"
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert forget_user("u", root) is True
    assert not (root / "users" / "u").exists()


def test_a_store_whose_directory_was_removed_fails_clearly_and_recreates_nothing(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "users" / "u"
    store = HistoryStore.at(directory, encoder=HashingEncoder(16))
    store.add(sample_items(5))
    shutil.rmtree(directory)
    with pytest.raises(StoreError, match="removed"):
        store.add(sample_items(2, prefix="new"))
    with pytest.raises(StoreError, match="removed"):
        store.search("anything")
    store.close()
    assert not directory.exists()


def test_a_personalizer_whose_user_was_removed_recreates_nothing(
    tmp_path: Path, bundle_dir: Path
) -> None:
    with OfflineLLMServer() as server:
        p = Personalizer.open("eve", bundle=Bundle.open(bundle_dir), task="GIT_area",
                              llm=LLMConfig.from_env(base_url=server.url), root=tmp_path)
        import_records(p.store, p.task, make_user(3)["history"][:20])
        p.ask("fix the test suite")
        shutil.rmtree(tmp_path / "users" / "eve")
        with pytest.raises(StoreError, match="removed"):
            p.ask("fix the docs")
        with pytest.raises(StoreError, match="removed"):
            p.add([{"id": "x", "text": "more", "tag": "doc"}])
        p.close()
    assert not (tmp_path / "users" / "eve").exists()


def test_erasing_from_the_outbox_touches_only_requests_that_held_the_record(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.jsonl")

    def entry(content: str, sources: list[str] | None) -> dict:
        rec = {"request": json.dumps({"messages": [{"role": "user", "content": content}]}),
               "bytes_sent": len(content)}
        if sources is not None:
            rec["sources"] = sources
        return rec

    outbox.append(entry("Example: fix the docs\nQuery: add tests", ["r1"]))
    outbox.append(entry("Example: fix the docs again, says r2", ["r2"]))  # shares r1's words
    outbox.append(entry("Example: fix the docs (an entry from before sources)", None))
    outbox.append(entry("Example: fix...\nQuery: cut short in the prompt", ["r1"]))
    assert outbox.erase({"r1": "fix the docs"}) == 3
    a, b, c, d = [json.loads(r["request"])["messages"][0]["content"] for r in outbox.records()]
    assert a == f"Example: {ERASED}\nQuery: add tests"
    assert b == "Example: fix the docs again, says r2"  # not r1's request: kept word for word
    assert c == f"Example: {ERASED} (an entry from before sources)"
    assert d == ERASED  # listed r1 but holds no verbatim copy: the whole message goes
    assert [r.get("erased_records", 0) for r in outbox.records()] == [1, 0, 1, 1]
