"""Bad input gets hydrahead's own errors, and nothing stored before is lost.

Each case below was reproduced as a raw Python exception (or a silent conversion, or a crash)
before it was fixed; the property-based tests at the end throw arbitrary input at the store API,
the importers and user ids and check the same two promises in general.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fake_encoder import HashingEncoder, sample_items
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hydrahead.runtime import hnsw_file
from hydrahead.runtime.errors import (
    HydraheadError,
    InvalidInputError,
    InvalidUserIdError,
    NotFoundError,
    StoreError,
)
from hydrahead.runtime.heads import Head
from hydrahead.runtime.hnsw_index import INDEX_FILE, STAMP_FILE, file_sha256
from hydrahead.runtime.importing import import_file
from hydrahead.runtime.paths import user_dir, validate_user_id
from hydrahead.runtime.records import Record
from hydrahead.runtime.store import DB_FILE, HistoryStore

TESTING = Path(__file__).resolve().parents[1] / "testing"  # the shared helpers, for subprocesses

ENC = HashingEncoder(16)


@pytest.fixture
def store(tmp_path: Path):
    with HistoryStore.at(tmp_path / "s", encoder=ENC) as opened:
        opened.add(sample_items(10))
        yield opened


def intact(store: HistoryStore) -> None:
    assert [r.id for r in store.list()] == [i["id"] for i in sample_items(10)]
    assert store.search(sample_items(10)[3]["text"], k=1)[0].record.id == sample_items(10)[3]["id"]


# ---------------------------------------------------------------------------- user ids


@pytest.mark.parametrize("user_id", [
    "€" * 100,            # 100 characters, 300 UTF-8 bytes: too long for a file name
    "a\ud800b",           # a lone surrogate cannot name a file
])
def test_user_ids_that_cannot_name_a_directory(user_id: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidUserIdError):
        validate_user_id(user_id)
    with pytest.raises(InvalidUserIdError):
        HistoryStore.for_user(user_id, encoder=ENC, root=tmp_path)
    assert not (tmp_path / "users").exists() or not any((tmp_path / "users").iterdir())


def test_the_longest_valid_user_id_works(tmp_path: Path) -> None:
    user_id = "é" * 127  # 254 bytes
    with HistoryStore.for_user(user_id, encoder=ENC, root=tmp_path) as store:
        store.add(sample_items(2))
    assert (tmp_path / "users" / user_id / DB_FILE).exists()


# ---------------------------------------------------------------------------- store API


def test_unencodable_record_ids(store: HistoryStore) -> None:
    bad = "x\udc80"
    with pytest.raises(InvalidInputError):
        store.get(bad)
    with pytest.raises(InvalidInputError):
        store.delete([bad])
    with pytest.raises(InvalidInputError):
        store.get_many(["r0", bad])
    assert bad not in store
    with pytest.raises(InvalidInputError):
        store.add([{"id": bad, "text": "t"}])
    intact(store)


def test_huge_numbers(store: HistoryStore) -> None:
    with pytest.raises(InvalidInputError):
        store.add([{"id": "big", "text": "t", "timestamp": 10**400}])
    with pytest.raises(InvalidInputError):
        Record("big", "t", timestamp=10**400)
    with pytest.raises(InvalidInputError):
        store.list(offset=10**20)
    with pytest.raises(InvalidInputError):
        store.list(limit=10**20)
    with pytest.raises(InvalidInputError):
        store.search("t", k=10**20)
    intact(store)


def test_record_dict_with_mixed_keys_and_no_id(store: HistoryStore) -> None:
    with pytest.raises(InvalidInputError, match="no 'id'"):
        store.add([{1: "a", "text": "t"}])
    intact(store)


# ---------------------------------------------------------------------------- importing


def rows_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


IMPORTS = {
    "latin-1 bytes": ("h.jsonl", '{"id": "a", "text": "caf\xe9", "tag": "doc"}\n'.encode("latin-1")),
    "utf-16 jsonl": ("h.jsonl", '{"id": "a", "text": "t", "tag": "doc"}\n'.encode("utf-16")),
    "utf-16 lamp": ("q.json", json.dumps([{"id": "1", "input": "x", "profile": []}]).encode("utf-16")),
    "deep nesting": ("h.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n"),
    "deep nesting lamp": ("q.json", b"[" * 100_000 + b"]" * 100_000),
    "400-digit date": ("h.jsonl", b'{"id": "a", "text": "t", "tag": "doc", "date": 1' + b"0" * 400 + b"}\n"),
    "5000-digit integer": ("h.jsonl", b'{"id": "a", "text": "t", "tag": "doc", "n": ' + b"7" * 5000 + b"}\n"),
    "dict id": ("h.jsonl", b'{"id": {"a": 1}, "text": "t", "tag": "doc"}\n'),
    "list text": ("h.jsonl", b'{"id": "a", "text": ["t"], "tag": "doc"}\n'),
    "bool id": ("h.jsonl", b'{"id": true, "text": "t", "tag": "doc"}\n'),
}


@pytest.mark.parametrize("case", list(IMPORTS))
def test_bad_import_files(case: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    import_file("u", rows_file(tmp_path, "good.jsonl", _good_rows()), task="GIT_area",
                root=root, encoder=ENC)
    name, data = IMPORTS[case]
    with pytest.raises(InvalidInputError):
        import_file("u", rows_file(tmp_path, name, data), task="GIT_area", root=root, encoder=ENC)
    with HistoryStore.for_user("u", encoder=ENC, root=root) as store:
        assert [r.id for r in store.list()] == ["kept-record-1", "kept-record-2"]


def _good_rows() -> bytes:
    return b"".join(json.dumps({"id": f"kept-record-{i}", "text": f"good {i}", "tag": "doc"}).encode() + b"\n"
                    for i in (1, 2))


def test_numeric_ids_are_still_accepted(tmp_path: Path) -> None:
    path = rows_file(tmp_path, "h.jsonl", b'{"id": 7, "text": "seven", "tag": "doc"}\n')
    assert import_file("u", path, task="GIT_area", root=tmp_path, encoder=ENC) == 1


# ---------------------------------------------------------------------------- the index file


def built(tmp_path: Path) -> Path:
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
    directory = built(tmp_path)
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
    directory = built(tmp_path)
    data = bytearray((directory / INDEX_FILE).read_bytes())
    TAMPERS[case](data)
    (directory / INDEX_FILE).write_bytes(bytes(data))
    restamp(directory)
    script = textwrap.dedent(f"""
        import logging, sys
        sys.path.insert(0, {str(TESTING)!r})
        logging.basicConfig(level=logging.WARNING)
        from fake_encoder import HashingEncoder
        from hydrahead.runtime.store import HistoryStore
        with HistoryStore.at({str(directory)!r}, encoder=HashingEncoder(16)) as store:
            print(len(store.search("a commit", k=10)))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]  # no SIGSEGV, no raw exception
    assert result.stdout.strip() == "10"
    assert "rebuilding the search index" in result.stderr


# ---------------------------------------------------------------------------- never silently empty


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_store_that_lost_its_database_is_refused(tmp_path: Path, damage: str) -> None:
    directory = built(tmp_path)
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


# ---------------------------------------------------------------------------- smaller ones


def test_data_root_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        user_dir("u", tmp_path / "root")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "root").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "root" / "users").stat().st_mode) == 0o700


def test_complex_head_parameters_are_refused() -> None:
    h = 4
    with pytest.raises(InvalidInputError, match="real"):
        Head(np.ones((h, h), complex), np.zeros(h), np.zeros((h, 2)), np.zeros(2))
    with pytest.raises(InvalidInputError, match="real"):
        Head.from_arrays({"head.W1": np.ones((h, h), complex), "head.b1": np.zeros(h),
                          "head.W2": np.zeros((h, 2)), "head.b2": np.zeros(2)})


def test_heads_path_that_is_a_file(tmp_path: Path, bundle_dir: Path) -> None:
    from hydrahead.runtime.personalizer import Personalizer

    user = tmp_path / "users" / "u"
    user.mkdir(parents=True)
    (user / "heads").write_text("not a directory")
    with pytest.raises(StoreError, match="heads"):
        Personalizer.open("u", bundle=bundle_dir, task="GIT_area", root=tmp_path)
    # and the store it opened was closed again: a second open fails the same way, not "in use"
    with pytest.raises(StoreError, match="heads"):
        Personalizer.open("u", bundle=bundle_dir, task="GIT_area", root=tmp_path)


# ---------------------------------------------------------------------------- properties

def texts(max_size: int) -> st.SearchStrategy[str]:
    """Any text, with lone surrogates, NULs and multi-byte characters drawn often."""
    odd = st.sampled_from(["a", "\ud800", "\udc80", "é", "€", "\x00", " ", "/", "."])
    # (st.text never draws lone surrogates, whatever its alphabet: join characters instead)
    return st.one_of(st.text(max_size=max_size),
                     st.lists(odd | st.characters(exclude_categories=()), max_size=max_size)
                     .map("".join))


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


@settings(max_examples=120, deadline=None)
@given(user_id=st.one_of(texts(140), st.text(st.sampled_from("€é"), min_size=80, max_size=130),
                         st.binary(max_size=8), st.integers()))
def test_user_ids_are_either_valid_directories_or_refused(user_id, tmp_path_factory) -> None:
    root = tmp_path_factory.mktemp("ids")
    try:
        path = user_dir(user_id, root)
    except InvalidUserIdError:
        return
    assert path.is_dir() and path.parent == root / "users"


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), texts(10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
row = st.one_of(
    json_values,
    st.fixed_dictionaries({"id": json_values, "text": json_values, "tag": json_values},
                          optional={"date": json_values, "timestamp": json_values}),
)


@settings(max_examples=100, deadline=None)
@given(content=st.one_of(
    st.lists(row, max_size=4).map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode()),
    st.binary(max_size=64),
    st.lists(st.fixed_dictionaries({"id": json_values, "input": json_values,
                                     "profile": st.lists(row, max_size=3)}), max_size=2)
    .map(lambda qs: json.dumps(qs).encode()),
), suffix=st.sampled_from([".jsonl", ".json"]))
def test_importers_raise_only_their_own_errors_and_lose_nothing(
    content: bytes, suffix: str, tmp_path_factory
) -> None:
    tmp = tmp_path_factory.mktemp("imp")
    root = tmp / "root"
    import_file("u", rows_file(tmp, "good.jsonl", _good_rows()), task="GIT_area", root=root,
                encoder=ENC)
    try:
        import_file("u", rows_file(tmp, "in" + suffix, content), task="GIT_area", root=root,
                    encoder=ENC, lamp_user="u")
    except HydraheadError:
        pass
    with HistoryStore.for_user("u", encoder=ENC, root=root) as store:
        stored = {r.id: r.text for r in store.list()}
    assert stored["kept-record-1"] == "good 1" and stored["kept-record-2"] == "good 2"


@pytest.mark.parametrize("user_id", ["CON", "aux.txt", "nul", "COM1", "lpt3.log", "a:b", "why?",
                                     "star*", 'quo"te', "pipe|", "<x>", "dot."])
def test_user_ids_other_file_systems_refuse(user_id: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidUserIdError):
        HistoryStore.for_user(user_id, encoder=ENC, root=tmp_path)


def test_user_ids_that_differ_only_by_case_do_not_share_a_directory(tmp_path: Path) -> None:
    with HistoryStore.for_user("alice", encoder=ENC, root=tmp_path) as store:
        store.add(sample_items(2))
    with pytest.raises(InvalidUserIdError, match="only by case"):
        HistoryStore.for_user("Alice", encoder=ENC, root=tmp_path)
    with HistoryStore.for_user("alice", encoder=ENC, root=tmp_path) as store:
        assert len(store) == 2


def test_the_store_lock_without_fcntl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where fcntl is missing (Windows) the filelock library holds the lock."""
    from hydrahead.runtime import dir_lock
    from hydrahead.runtime.users import forget_user

    monkeypatch.setattr(dir_lock, "fcntl", None)
    with HistoryStore.for_user("w", encoder=ENC, root=tmp_path) as store:
        store.add(sample_items(2))
        with pytest.raises(StoreError, match="already open"):
            HistoryStore.for_user("w", encoder=ENC, root=tmp_path)
        with pytest.raises(StoreError, match="already open"):
            forget_user("w", tmp_path)
    with HistoryStore.for_user("w", encoder=ENC, root=tmp_path) as store:
        assert len(store) == 2
    assert forget_user("w", tmp_path)
