"""How a history store answers a search: which records to score, then exact cosine scores.

HNSW finds candidates and every hit is then scored exactly from the vector SQLite holds, so an
approximate index never changes a score, only (rarely) which records are found:

* no filter: the graph's ``k`` nearest, or an exact scan when ``k`` reaches the record count;
* a dict filter: its matching labels come from the ``item_fields`` index (kept in the read
  cache until the next write). Few matches are scanned exactly; many are found by an
  unfiltered graph search for ``OVERSAMPLE * k / selectivity`` neighbours, of which the matching
  ones are kept (plain numpy, no Python call per graph node); if that yields fewer than ``k``,
  the graph is searched with the filter, and then the matches scanned exactly;
* a callable filter: tried on the ``2k + 8`` nearest records first (most filters pass most
  records), then inside the graph search (hnswlib's ``filter``), then by an exact scan if the
  graph yields fewer than ``k``.

Each strategy returns labels; :func:`hits` turns them into scored, sorted :class:`Hit` objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .hnsw_index import VectorIndex
from .records import Hit, Record
from .store_cache import ReadCache, copy_of
from .store_db import RecordDB, record_of

EXACT_SEARCH_MAX = 1000
"""A dict filter matching at most this many records may be answered by an exact scan."""
OVERSAMPLE = 1.25
"""How many more neighbours than the matches should hold an oversampled search fetches."""
EXACT_COST = 1.0
"""Cost of scoring one record exactly (an SQLite read) against one graph neighbour fetched."""


def search_all(db: RecordDB, index: VectorIndex, q: np.ndarray, k: int) -> list[int]:
    """Labels of the ``k`` records nearest to ``q``."""
    if db.count == 0:
        return []
    if k < db.count:
        found = index.search(q, k)
        if found is not None:
            return [int(label) for label in found[0]]
    return exact_top(q, k, db.vector_chunks())


def search_matching(db: RecordDB, index: VectorIndex, q: np.ndarray, k: int,
                    filter: Mapping[str, Any], cache: ReadCache) -> list[int]:
    """Labels of the ``k`` records nearest to ``q`` among those whose fields match ``filter``."""
    matches = cache.matches(filter)
    if matches is None:
        matches = cache.put_matches(filter, db.labels_matching(filter))
    m = len(matches.labels)
    if not m:
        return []
    fetch = int(np.ceil(OVERSAMPLE * k * db.count / m))
    if m <= k or (m * EXACT_COST <= fetch and m <= EXACT_SEARCH_MAX):
        if matches.vectors is None or matches.vector_labels is None:
            chunks = list(db.vector_chunks(matches.labels))
            labels = np.concatenate([chunk_labels for chunk_labels, _ in chunks])
            vectors = np.concatenate([chunk_vectors for _, chunk_vectors in chunks])
            cache.keep_vectors(matches, labels, vectors)
        else:
            labels, vectors = matches.vector_labels, matches.vectors
        return exact_top(q, k, [(labels, vectors)])
    if fetch < db.count:
        found = index.search(q, fetch)
        if found is not None:
            hits = found[0][matches.contains(found[0])]
            if len(hits) >= k:
                return [int(label) for label in hits[:k]]
    allowed = set(matches.labels)
    found = index.search(q, k, allowed.__contains__)
    if found is not None:
        return [int(label) for label in found[0]]
    return exact_top(q, k, db.vector_chunks(matches.labels))


def search_predicate(db: RecordDB, index: VectorIndex, q: np.ndarray, k: int,
                     predicate: Callable[[Record], bool]) -> list[int]:
    """Labels of the ``k`` records nearest to ``q`` among those ``predicate`` accepts."""
    if db.count == 0:
        return []
    if k < db.count:
        found = index.search(q, min(db.count, 2 * k + 8))
        if found is not None:
            labels = [int(label) for label in found[0]]
            rows = db.rows_by("label", labels, "label, id, text, fields, timestamp")
            passing = [label for label in labels
                       if label in rows and predicate(record_of(*rows[label][1:]))]
            if len(passing) >= k:
                return passing[:k]  # the nearest k that pass: hnswlib returns nearest first
        verdicts: dict[int, bool] = {}
        errors: list[BaseException] = []

        def allowed(label: int) -> bool:  # called by hnswlib for each candidate label
            if errors:
                return False
            if label not in verdicts:
                try:
                    record = db.record_at(label)
                    verdicts[label] = record is not None and bool(predicate(record))
                except BaseException as exc:  # re-raised below, not inside hnswlib
                    errors.append(exc)
                    return False
            return verdicts[label]

        found = index.search(q, k, allowed)
        if errors:
            raise errors[0]
        if found is not None:
            return [int(label) for label in found[0]]
    # Fewer than k matches reachable in the graph: score every matching record exactly.
    return exact_top(q, k, db.vector_chunks(predicate=predicate))


def exact_top(q: np.ndarray, k: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]]
              ) -> list[int]:
    """Labels of the k best cosine scores over ``(labels, vectors)`` chunks."""
    best_labels = np.empty(0, dtype=np.int64)
    best_scores = np.empty(0, dtype=np.float32)
    for labels, vectors in chunks:
        scores = (vectors @ q) / np.linalg.norm(vectors, axis=1)
        best_labels = np.concatenate([best_labels, labels])
        best_scores = np.concatenate([best_scores, scores])
        if len(best_labels) > k:
            keep = np.argpartition(-best_scores, k - 1)[:k]
            best_labels, best_scores = best_labels[keep], best_scores[keep]
    return [int(label) for label in best_labels]


def hits(db: RecordDB, labels: list[int], q: np.ndarray, k: int, cache: ReadCache
         ) -> list[Hit]:
    """Hits for ``labels``, scored exactly (float64) and sorted by score, then label."""
    found = {label: cache.row(label) for label in labels}
    missing = [label for label, row in found.items() if row is None]
    if missing:
        rows = db.rows_by("label", missing, "label, id, text, fields, timestamp, embedding")
        decoded: Iterable[np.ndarray] = db.decode([row[5] for row in rows.values()]) if rows else []
        for (label, row), vector in zip(rows.items(), decoded):
            cache.put_row(label, record_of(*row[1:5]), vector)
            found[label] = cache.row(label)
    present = [label for label in labels if found.get(label) is not None]  # a foreign delete
    if not present:
        return []
    vectors = np.stack([found[label][1] for label in present])  # type: ignore[index]
    v64 = vectors.astype(np.float64)
    q64 = q.astype(np.float64)
    scores = (v64 @ q64) / (np.sqrt(np.einsum("ij,ij->i", v64, v64)) * np.sqrt(q64 @ q64))
    order = sorted(range(len(present)), key=lambda i: (-scores[i], present[i]))[:k]
    return [Hit(copy_of(found[present[i]][0]), float(scores[i]), vectors[i])  # type: ignore[index]
            for i in order]
