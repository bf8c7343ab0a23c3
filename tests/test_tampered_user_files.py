"""A tampered file in a user's directory never locks the user out, and deletion stays total
(issue 18, items 7 and 8): for each case, on a fitted user's copy, the user opens (with a
warning, or a project error naming the file), a record held by every file is deleted and its
text is then in no file of the directory, the next open works, and an ask answers."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from testing.file_scan import files_holding, text_needles
from testing.synthetic_users import make_user

from hydrahead.offline.server import OfflineLLMServer
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.errors import HydraheadError
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.runtime.personalizer import Personalizer

TASK_DIR = Path("heads") / "GIT_area"


@pytest.fixture(scope="module")
def server():
    with OfflineLLMServer() as s:
        yield s


def _open(root: Path, bundle_dir: Path, url: str) -> Personalizer:
    return Personalizer.open("t", bundle=Bundle.open(bundle_dir), task="GIT_area", root=root,
                             llm=LLMConfig.from_env(base_url=url))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path, server) -> Path:
    """A fitted user with feedback, cache and outbox: the template every case copies."""
    root = tmp_path_factory.mktemp("template")
    user = make_user(3)
    with _open(root, bundle_dir, server.url) as p:
        p.add(user["history"])
        p.fit(budget=40)
        p.ask(user["queries"][0]["query"])
        p.feedback(user["queries"][0]["query"], "doc")
    return root


def _rewrite_npz(path: Path, change: Callable[[dict], None]) -> None:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _drop(key: str) -> Callable[[Path], None]:
    return lambda path: _rewrite_npz(path, lambda a: a.pop(key))


def _set(key: str, value: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def change(arrays: dict) -> None:
        arrays[key] = value(arrays[key])
    return lambda path: _rewrite_npz(path, change)


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage" * 100)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "x").write_text("x")


def _cache_texts(value: str) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE responses SET texts = ?", (value,))
        conn.close()
    return change


def _deep_outbox_line(path: Path) -> None:
    with open(path, "a") as fh:
        fh.write("[" * 200_000 + "]" * 200_000 + "\n")


CASES = {
    "labels: missing label column": (TASK_DIR / "labels.npz", _drop("reranker.label")),
    "labels: item_group out of range": (TASK_DIR / "labels.npz",
                                        _set("reranker.item_group", lambda v: v + 10_000)),
    "labels: features not 2-d": (TASK_DIR / "labels.npz",
                                 _set("adapter.features", lambda v: v.ravel())),
    "labels: NaN labels": (TASK_DIR / "labels.npz",
                           _set("adapter.label", lambda v: np.full_like(v, np.nan))),
    "labels: garbage": (TASK_DIR / "labels.npz", _garbage),
    "labels: truncated": (TASK_DIR / "labels.npz", _truncate),
    "labels: a directory": (TASK_DIR / "labels.npz", _directory),
    "feedback: missing column": (TASK_DIR / "feedback.npz", _drop("reranker.item_id")),
    "feedback: garbage": (TASK_DIR / "feedback.npz", _garbage),
    "cache: texts a string": (Path("llm_cache.sqlite"), _cache_texts('"tests"')),
    "cache: texts a dict": (Path("llm_cache.sqlite"), _cache_texts('{"a": 1}')),
    "cache: texts not JSON": (Path("llm_cache.sqlite"), _cache_texts("[not json")),
    "cache: texts a list of ints": (Path("llm_cache.sqlite"), _cache_texts("[1, 2]")),
    "cache: garbage": (Path("llm_cache.sqlite"), _garbage),
    "outbox: a line nested 200,000 deep": (Path("outbox.jsonl"), _deep_outbox_line),
    "choices: garbage": (TASK_DIR / "choices.json", _garbage),
    "outbox: a directory": (Path("outbox.jsonl"), _directory),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_tampered_file_never_locks_the_user_out_and_delete_stays_total(
        case: str, fitted: Path, tmp_path: Path, bundle_dir: Path, server) -> None:
    relative, tamper = CASES[case]
    root = Path(shutil.copytree(fitted, tmp_path / "root"))
    user_dir = root / "users" / "t"
    tamper(user_dir / relative)
    labels_ids = _record_ids_in(fitted / "users" / "t" / TASK_DIR / "labels.npz")
    with _open(root, bundle_dir, server.url) as p:
        victim = next(r for r in labels_ids if p.store.count() and _exists(p, r))
        text = p.get(victim).text
        p.delete([victim])  # never a raw exception: the broken file is dropped if need be
    assert files_holding(user_dir, text_needles(text)) == []
    with _open(root, bundle_dir, server.url) as p:  # the next open works
        answer = p.ask(make_user(3)["queries"][1]["query"])
        assert answer.answer in p.task.labels
        assert all(isinstance(c.text, str) and len(c.text) > 1 for c in answer.candidates)
        p.fit(budget=40)  # and a fit goes on (rebuilding what was dropped)


def _exists(p: Personalizer, record_id: str) -> bool:
    try:
        p.get(record_id)
    except HydraheadError:
        return False
    return True


def _record_ids_in(path: Path) -> list[str]:
    with np.load(path, allow_pickle=False) as npz:
        return sorted({str(i) for k in npz.files if k.endswith(("query_id", "item_id"))
                       for i in npz[k] if str(i)})


def test_an_outbox_that_is_not_a_file_refuses_to_send_cleanly(
        fitted: Path, tmp_path: Path, bundle_dir: Path, server) -> None:
    from hydrahead.runtime.errors import LLMError

    root = Path(shutil.copytree(fitted, tmp_path / "root"))
    _directory(root / "users" / "t" / "outbox.jsonl")
    sent = len(server.captured)
    with _open(root, bundle_dir, server.url) as p, pytest.raises(LLMError, match="not a regular"):
        p.ask("Fix the docs of git-p4 once more")
    assert len(server.captured) == sent  # nothing left unrecorded


def test_a_malformed_cache_row_is_a_miss_and_the_request_is_sent_again(
        fitted: Path, tmp_path: Path, bundle_dir: Path, server) -> None:
    root = Path(shutil.copytree(fitted, tmp_path / "root"))
    query = make_user(3)["queries"][0]["query"]
    _cache_texts('"tests"')(root / "users" / "t" / "llm_cache.sqlite")
    sent = len(server.captured)
    with _open(root, bundle_dir, server.url) as p:
        answer = p.ask(query)
    assert len(server.captured) == sent + 2  # both requests went out again
    assert [c.text for c in answer.candidates] != ["t", "e", "s"]
    assert answer.answer in p.task.labels
    with sqlite3.connect(root / "users" / "t" / "llm_cache.sqlite") as conn:
        rows = [json.loads(t) for (t,) in conn.execute("SELECT texts FROM responses")]
    conn.close()
    # the two rows of this ask were dropped and written again; the other bad rows wait for
    # their own requests
    assert sum(isinstance(r, list) for r in rows) == 2 and rows.count("tests") == len(rows) - 2
