"""Tests of importing a history from files (hydrahead.runtime.importing).

A bad file gets InvalidInputError (never a raw exception or a silent conversion) and leaves
every record stored before it untouched; the property-based test throws arbitrary files at the
importers and checks the same two promises in general.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from testing.fake_encoder import HashingEncoder
from testing.strategies import texts

from hydrahead.runtime.errors import HydraheadError, InvalidInputError
from hydrahead.runtime.importing import import_file
from hydrahead.runtime.store import HistoryStore

ENC = HashingEncoder(16)


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
