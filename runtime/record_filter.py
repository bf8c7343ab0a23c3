"""Dict filters over record fields, as mem0 writes them, compiled to SQL over ``item_fields``.

A filter is a dict. Each key is a field name, whose value is either a value the field must
equal, or a dict of operators; or one of ``$and``, ``$or`` (a list of filters) and ``$not`` (a
filter). The keys of one dict all hold (an implicit ``$and``)::

    {"tag": "doc"}                                     # tag == "doc"
    {"tag": {"$in": ["doc", "tests"]}, "year": {"$gte": 2020, "$lt": 2024}}
    {"$or": [{"tag": "doc"}, {"stars": {"$gt": 3}}]}
    {"$not": {"tag": {"$ne": None}}}                   # records without a tag

Operators: ``$eq``, ``$ne``, ``$in``, ``$nin`` (values: JSON scalars; ``None`` stands for a
missing field, as ``fields.get(key)`` reads it), and ``$gt``, ``$gte``, ``$lt``, ``$lte`` (a
number, compared with fields holding numbers, or a string, compared with fields holding
strings; a missing field never compares). Numbers and booleans compare as Python does
(``True == 1``); strings only equal strings. :func:`compile_filter` turns a filter into a SQL
condition on ``items.label``, checked first (unknown operators, wrong shapes and values are an
:class:`~hydrahead.runtime.errors.InvalidInputError`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidInputError
from .records import RESERVED_KEYS, checked_scalar

COMPARISONS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
OPERATORS = ("$eq", "$ne", "$in", "$nin", *COMPARISONS)
LOGICAL = ("$and", "$or", "$not")
MAX_DEPTH = 32  # nesting of $and/$or/$not: a filter is written by a person, not generated
MAX_TERMS = 1000  # field conditions and $in values in one filter (SQLite's host parameters)

_HAS = "label IN (SELECT label FROM item_fields WHERE key = ?"


class _Compiler:
    def __init__(self) -> None:
        self.params: list[object] = []
        self.terms = 0

    def filter(self, spec: object, depth: int) -> str:
        if not isinstance(spec, Mapping):
            raise InvalidInputError(f"a filter must be a dict, got {type(spec).__name__}")
        if depth > MAX_DEPTH:
            raise InvalidInputError(f"a filter may nest $and/$or/$not {MAX_DEPTH} deep at most")
        parts = [self.logical(key, value, depth) if key in LOGICAL else self.field(key, value)
                 for key, value in spec.items()]
        return "(" + " AND ".join(parts) + ")" if parts else "1"

    def logical(self, key: str, value: object, depth: int) -> str:
        if key == "$not":
            return f"NOT {self.filter(value, depth + 1)}"
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or not value:
            raise InvalidInputError(f"{key} takes a non-empty list of filters, got {value!r:.80}")
        joiner = " AND " if key == "$and" else " OR "
        return "(" + joiner.join(self.filter(v, depth + 1) for v in value) + ")"

    def field(self, key: object, value: object) -> str:
        if not isinstance(key, str) or key.startswith("$") or key in RESERVED_KEYS:
            raise InvalidInputError(
                f"filter keys must be field names or one of {list(LOGICAL)}, got {key!r}")
        if not isinstance(value, Mapping):
            return self.equal(key, value)
        if not value:
            raise InvalidInputError(f"filter for {key!r}: an empty dict of operators")
        return "(" + " AND ".join(self.operator(key, op, arg) for op, arg in value.items()) + ")"

    def operator(self, key: str, op: object, arg: object) -> str:
        if op == "$eq":
            return self.equal(key, arg)
        if op == "$ne":
            return f"NOT {self.equal(key, arg)}"
        if op in ("$in", "$nin"):
            if not isinstance(arg, Sequence) or isinstance(arg, (str, bytes)):
                raise InvalidInputError(f"{op} for {key!r} takes a list, got {arg!r:.80}")
            one_of = "(" + " OR ".join([self.equal(key, v) for v in arg] or ["0"]) + ")"
            return one_of if op == "$in" else f"NOT {one_of}"
        if op in COMPARISONS:
            value = self.scalar(key, arg)
            if isinstance(value, str):
                kind = "typeof(value) = 'text'"
            elif isinstance(value, (int, float)):  # bools are ints here
                kind = "typeof(value) IN ('integer', 'real')"
            else:
                raise InvalidInputError(f"{op} for {key!r} takes a number or a string, got "
                                        f"{arg!r:.80}")
            self.params += [key, int(value) if isinstance(value, bool) else value]
            return f"{_HAS} AND {kind} AND value {COMPARISONS[str(op)]} ?)"
        raise InvalidInputError(f"unknown filter operator {op!r} for {key!r}; known: "
                                f"{list(OPERATORS)}")

    def equal(self, key: str, arg: object) -> str:
        value = self.scalar(key, arg)
        if value is None:  # a missing field (item_fields holds no nulls)
            self.params.append(key)
            return f"NOT {_HAS})"
        self.params += [key, int(value) if isinstance(value, bool) else value]
        return f"{_HAS} AND value = ?)"

    def scalar(self, key: str, arg: object) -> Any:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise InvalidInputError(f"a filter may hold {MAX_TERMS} values at most")
        return checked_scalar(arg, f"filter value for {key!r}")


def compile_filter(spec: Mapping[str, Any]) -> tuple[str, list[object]]:
    """A SQL condition on ``items.label`` (over the ``item_fields`` index) and its parameters.

    Raises:
        InvalidInputError: the filter is not a dict, names a reserved key or an unknown
            operator, or holds a value the store cannot keep (the message says which).
    """
    compiler = _Compiler()
    return compiler.filter(spec, 0), compiler.params
