"""What a history store keeps in memory between searches: decoded records and filter matches.

A search's last step reads its hits' rows (text, fields, embedding) from SQLite; the same
records come back again and again (a user's queries are alike), so decoded rows are kept in a
bounded LRU, as are the labels a dict filter matched (sorted, for fast membership tests) and,
for filters matching few records, their vectors (so an exact scan reads no SQLite). All of it
is dropped on every write by the store, and whenever SQLite's ``data_version`` says another
connection committed.
"""

from __future__ import annotations

import json

from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from .records import Record

MAX_RECORDS = 4096
MAX_FILTERS = 64
MAX_FILTER_VECTOR_BYTES = 32 << 20  # the matched vectors kept, over all filters


class Matches:
    """The records a dict filter matched: labels in label order, the same as a sorted uint64
    array, and (once an exact scan read them) their vectors."""

    def __init__(self, labels: list[int]) -> None:
        self.labels = labels
        self.sorted = np.asarray(labels, dtype=np.uint64)
        self.vector_labels: np.ndarray | None = None
        self.vectors: np.ndarray | None = None

    def contains(self, candidates: np.ndarray) -> np.ndarray:
        """Which of ``candidates`` (uint64 labels) match: a binary search each."""
        if not len(self.sorted):
            return np.zeros(len(candidates), dtype=bool)
        at = np.minimum(np.searchsorted(self.sorted, candidates), len(self.sorted) - 1)
        return self.sorted[at] == candidates


class ReadCache:
    """Decoded rows by label and dict-filter matches, each a bounded LRU."""

    def __init__(self, max_records: int = MAX_RECORDS, max_filters: int = MAX_FILTERS) -> None:
        self.max_records, self.max_filters = max_records, max_filters
        self._rows: OrderedDict[int, tuple[Record, np.ndarray]] = OrderedDict()
        self._filters: OrderedDict[Hashable, Matches] = OrderedDict()
        self._version: int | None = None

    def sync(self, data_version: int) -> None:
        """Drop everything if another connection committed since the last call."""
        if data_version != self._version:
            self.clear()
            self._version = data_version

    def clear(self) -> None:
        self._rows.clear()
        self._filters.clear()

    def row(self, label: int) -> tuple[Record, np.ndarray] | None:
        """The cached record and its (read-only) vector; give callers :func:`copy_of` it."""
        hit = self._rows.get(label)
        if hit is not None:
            self._rows.move_to_end(label)
        return hit

    def put_row(self, label: int, record: Record, vector: np.ndarray) -> None:
        vector.setflags(write=False)
        self._rows[label] = (record, vector)
        self._rows.move_to_end(label)
        while len(self._rows) > self.max_records:
            self._rows.popitem(last=False)

    def matches(self, filter: Mapping[str, Any]) -> Matches | None:
        key = _key(filter)
        found = self._filters.get(key) if key is not None else None
        if found is not None:
            self._filters.move_to_end(key)
        return found

    def put_matches(self, filter: Mapping[str, Any], labels: list[int]) -> Matches:
        matches = Matches(labels)
        key = _key(filter)
        if key is not None:
            self._filters[key] = matches
            self._filters.move_to_end(key)
            while len(self._filters) > self.max_filters:
                self._filters.popitem(last=False)
        return matches

    def keep_vectors(self, matches: Matches, labels: np.ndarray, vectors: np.ndarray) -> None:
        """Keep a filter's matched labels and vectors (row for row) while the total stays
        within its bound."""
        held = sum(m.vectors.nbytes for m in self._filters.values() if m.vectors is not None)
        if held + vectors.nbytes <= MAX_FILTER_VECTOR_BYTES:
            matches.vector_labels, matches.vectors = labels, vectors


def _key(filter: Mapping[str, Any]) -> Hashable | None:
    """The filter as canonical JSON (``1`` and ``true`` and ``1.0`` stay apart: they match
    alike, but a cache miss costs only a query); ``None`` for what JSON cannot write (refused
    by the filter check later)."""
    try:
        return json.dumps(filter, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None


def copy_of(record: Record) -> Record:
    """A record whose fields dict is the caller's to change (the cached one stays as it was)."""
    if not record.fields:
        return Record._trusted(record.id, record.text, {}, record.timestamp)
    return Record._trusted(record.id, record.text, record.fields.copy(), record.timestamp)
