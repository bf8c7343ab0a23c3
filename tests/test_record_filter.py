"""mem0-style dict filters ($eq $ne $in $nin $gt $gte $lt $lte, $and $or $not) on a real
SQLite store: every filter hypothesis draws keeps exactly the records a plain-Python reading of
the same filter keeps, and malformed filters are refused with InvalidInputError."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testing.fake_encoder import HashingEncoder

from hydrahead.runtime.errors import InvalidInputError
from hydrahead.runtime.record_filter import MAX_DEPTH
from hydrahead.runtime.store import HistoryStore

VALUES = [None, 0, 1, 2, 2.5, True, False, "a", "b", "1"]
RECORDS = [{"id": f"r{i}", "text": f"note {i}",
            **({"n": VALUES[i % len(VALUES)]} if i % 7 else {}),
            **({"tag": VALUES[(3 * i) % len(VALUES)]} if i % 5 else {})}
           for i in range(40)]


def _same(a: object, b: object) -> bool:
    """Equality as the store defines it: Python's, but strings only equal strings."""
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return a == b


def _order(field: object, op: str, arg: Any) -> bool:
    if field is None:
        return False
    if isinstance(arg, str) != isinstance(field, str):
        return False
    return {"$gt": field > arg, "$gte": field >= arg, "$lt": field < arg,
            "$lte": field <= arg}[op]


def reference(record: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    """The filter read in plain Python (the semantics record_filter documents)."""
    for key, cond in spec.items():
        if key == "$and":
            ok = all(reference(record, c) for c in cond)
        elif key == "$or":
            ok = any(reference(record, c) for c in cond)
        elif key == "$not":
            ok = not reference(record, cond)
        else:
            field = record.get(key)
            ops = cond if isinstance(cond, dict) else {"$eq": cond}
            ok = all({"$eq": lambda a: _same(field, a), "$ne": lambda a: not _same(field, a),
                      "$in": lambda a: any(_same(field, v) for v in a),
                      "$nin": lambda a: not any(_same(field, v) for v in a)}.get(
                op, lambda a, op=op: _order(field, op, a))(arg) for op, arg in ops.items())
        if not ok:
            return False
    return True


scalars = st.sampled_from(VALUES)
ordered = st.sampled_from([0, 1, 2, 2.5, "a", "b"])
conditions = st.one_of(
    scalars,
    st.dictionaries(st.sampled_from(["$eq", "$ne"]), scalars, min_size=1),
    st.dictionaries(st.sampled_from(["$in", "$nin"]), st.lists(scalars, max_size=3), min_size=1),
    st.dictionaries(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), ordered, min_size=1),
)
fields = st.dictionaries(st.sampled_from(["n", "tag", "absent"]), conditions, min_size=1,
                         max_size=2)
filters = st.recursive(fields, lambda inner: st.one_of(
    st.builds(lambda fs: {"$and": fs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda fs: {"$or": fs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda f: {"$not": f}, inner)), max_leaves=6)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    with HistoryStore.at(tmp_path_factory.mktemp("filters"), encoder=HashingEncoder()) as s:
        s.add(RECORDS)
        yield s


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=filters)
def test_every_filter_keeps_what_python_keeps(store: HistoryStore, spec: dict) -> None:
    found = {h.record.id for h in store.search("note", k=len(RECORDS), filter=spec)}
    assert found == {r["id"] for r in RECORDS if reference(r, spec)}


def test_the_operators_mem0_has(store: HistoryStore) -> None:
    def ids(spec: dict) -> set[str]:
        return {h.record.id for h in store.search("note", k=len(RECORDS), filter=spec)}

    twos = {r["id"] for r in RECORDS if r.get("n") == 2}
    assert ids({"n": {"$in": [2]}}) == ids({"n": 2}) == twos and twos
    assert ids({"n": {"$gt": 1, "$lte": 2}}) == twos
    assert ids({"n": {"$gte": "a"}}) == {r["id"] for r in RECORDS if r.get("n") in ("a", "b")}
    assert ids({"$not": {"n": {"$ne": None}}}) == ids({"n": None})
    everyone = {r["id"] for r in RECORDS}
    assert ids({"$or": [{"n": 2}, {"n": {"$ne": 2}}]}) == everyone
    assert ids({"n": {"$nin": []}}) == everyone and ids({"n": {"$in": []}}) == set()


@pytest.mark.parametrize(("spec", "message"), [
    ({"n": {"$regex": "a"}}, "unknown filter operator"),
    ({"$or": []}, "non-empty list"),
    ({"$and": {"n": 1}}, "non-empty list"),
    ({"n": {"$in": "abc"}}, "takes a list"),
    ({"n": {"$gt": None}}, "number or a string"),
    ({"n": {}}, "empty dict"),
    ({"id": "r1"}, "field names"),
    ({"$nope": 1}, "field names"),
    ({"n": {"$eq": [1]}}, "filter value"),
    ({"n": {"$gt": float("nan")}}, "finite"),
])
def test_malformed_filters_are_refused(store: HistoryStore, spec: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        store.search("note", k=3, filter=spec)


def test_deep_and_wide_filters_are_bounded(store: HistoryStore) -> None:
    deep: dict = {"n": 1}
    for _ in range(MAX_DEPTH + 1):
        deep = {"$not": deep}
    with pytest.raises(InvalidInputError, match="deep"):
        store.search("note", k=3, filter=deep)
    with pytest.raises(InvalidInputError, match="values at most"):
        store.search("note", k=3, filter={"n": {"$in": list(range(5000))}})
