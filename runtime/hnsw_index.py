"""The HNSW index of a history store: a cache of the vectors in SQLite, never the source of truth.

The index lives in two files next to the SQLite database:

- ``index.hnsw``: hnswlib's own file, written to a temp file in the same directory, fsynced and
  renamed over the old one, so it is always either the old or the new index.
- ``index.stamp.json``: written the same way right after it; it holds the sha256 and size of
  ``index.hnsw``, the index parameters, and the state of SQLite the index was built from (store
  id, write generation, row count, encoder fingerprint).

:meth:`VectorIndex.load` refuses (raises :class:`UnusableIndexError` with the reason) an index whose
file or stamp is missing, whose checksum does not match (truncated or corrupt), whose stamp names
another SQLite state (stale: the store was written after the index was saved) or other
parameters, whose structure is not what hnswlib expects (checked by :mod:`.hnsw_file` before
hnswlib sees it, since hnswlib trusts its file), or that hnswlib cannot read. The store then
rebuilds it from SQLite.

Labels are the SQLite row labels. A deleted label's vector is first overwritten with zeros and
then marked deleted, so the next save no longer holds it; its slot is reused for a new label
(hnswlib's ``replace_deleted``), and the index grows geometrically when full.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from . import hnsw_file
from .errors import StoreError
from .paths import atomic_write_bytes
from .user_files import INDEX_FILE, STAMP_FILE

STAMP_FORMAT = 1
MIN_CAPACITY = 1024
"""Slots allocated for a new or rebuilt index at least; it doubles when full."""


class UnusableIndexError(StoreError):
    """The saved index cannot be used (missing, stale, corrupt); the message says why."""


@dataclass(frozen=True)
class IndexParams:
    """hnswlib parameters (space is always cosine).

    Attributes:
        dim: Vector dimension.
        M: Graph degree (memory and recall grow with it).
        ef_construction: Candidate list size while inserting.
        ef: Candidate list size while searching (at least k is used).
    """

    dim: int
    M: int = 16
    ef_construction: int = 200
    ef: int = 64

    def build_params(self) -> dict[str, int]:
        """The parameters baked into a saved index (``ef`` is not: it is set after loading)."""
        params = asdict(self)
        del params["ef"]
        return params


class VectorIndex:
    """An hnswlib cosine index over labelled vectors, with atomic, checksummed save and load."""

    def __init__(self, index: hnswlib.Index, params: IndexParams, live: int) -> None:
        self._index = index
        self._params = params
        self._live = live
        index.set_ef(params.ef)

    @classmethod
    def empty(cls, params: IndexParams, capacity: int = MIN_CAPACITY) -> VectorIndex:
        """Return an index with no vectors and room for ``capacity`` of them."""
        index = hnswlib.Index(space="cosine", dim=params.dim)
        index.init_index(
            max_elements=max(capacity, MIN_CAPACITY),
            M=params.M,
            ef_construction=params.ef_construction,
            allow_replace_deleted=True,
        )
        return cls(index, params, live=0)

    @classmethod
    def build(
        cls, params: IndexParams, chunks: Iterable[tuple[np.ndarray, np.ndarray]], count: int
    ) -> VectorIndex:
        """Build an index from ``(labels, vectors)`` chunks holding ``count`` vectors in all."""
        built = cls.empty(params, capacity=count + count // 4)
        for labels, vectors in chunks:
            built.upsert(labels, vectors, np.ones(len(labels), dtype=bool))
        return built

    @classmethod
    def load(cls, directory: Path, params: IndexParams, state: Mapping[str, Any]) -> VectorIndex:
        """Load the saved index of ``directory`` if it matches ``params`` and ``state``.

        Raises:
            UnusableIndexError: with the reason, if the index must be rebuilt instead.
        """
        index_path, stamp_path = directory / INDEX_FILE, directory / STAMP_FILE
        if not index_path.exists():
            raise UnusableIndexError("the index file is missing")
        try:
            stamp = json.loads(stamp_path.read_bytes())
        except FileNotFoundError:
            raise UnusableIndexError("the index stamp is missing") from None
        except (OSError, ValueError) as exc:
            raise UnusableIndexError(f"the index stamp is unreadable ({exc})") from None
        if not isinstance(stamp, dict) or stamp.get("format") != STAMP_FORMAT:
            raise UnusableIndexError("the index stamp has an unknown format")
        if stamp.get("params") != params.build_params():
            raise UnusableIndexError(
                f"the index was built with {stamp.get('params')}, not {params.build_params()}"
            )
        if stamp.get("state") != dict(state):
            raise UnusableIndexError(
                f"the index is stale: it was saved at store state {stamp.get('state')} but the "
                f"store is at {dict(state)}"
            )
        expected = stamp.get("file")
        size = index_path.stat().st_size
        if (not isinstance(expected, dict) or size != expected.get("bytes")
                or file_sha256(index_path) != expected.get("sha256")):
            raise UnusableIndexError(
                "the index file does not match its checksum (truncated or corrupt)"
            )
        try:
            hnsw_file.read(index_path, dim=params.dim, M=params.M,
                           ef_construction=params.ef_construction, min_capacity=MIN_CAPACITY)
        except hnsw_file.IndexFileError as exc:
            raise UnusableIndexError(f"the index file is malformed ({exc})") from None
        index = hnswlib.Index(space="cosine", dim=params.dim)
        try:
            index.load_index(str(index_path), allow_replace_deleted=True)
        except Exception as exc:  # hnswlib raises RuntimeError, but be safe with a damaged file
            raise UnusableIndexError(f"hnswlib could not load the index ({exc})") from None
        if index.element_count < state["count"]:
            raise UnusableIndexError(
                f"the index holds {index.element_count} vectors, fewer than the "
                f"{state['count']} records"
            )
        return cls(index, params, live=int(state["count"]))

    @property
    def capacity(self) -> int:
        """Number of slots allocated (live, deleted-but-reusable and free)."""
        return self._index.get_max_elements()

    def upsert(self, labels: np.ndarray, vectors: np.ndarray, is_new: np.ndarray) -> None:
        """Add vectors under new labels and replace the vectors of known labels.

        Args:
            labels: (n,) integer labels.
            vectors: (n, dim) float32 vectors.
            is_new: (n,) bool, True where the label is not in the index yet.
        """
        labels = np.asarray(labels, dtype=np.uint64)
        is_new = np.asarray(is_new, dtype=bool)
        known = ~is_new
        if known.any():
            # hnswlib updates the vector (and the graph around it) of an existing label.
            self._index.add_items(vectors[known], labels[known], replace_deleted=False)
        n_new = int(is_new.sum())
        if n_new:
            deleted_slots = self._index.element_count - self._live
            needed = self._index.element_count + max(0, n_new - deleted_slots)
            if needed > self.capacity:
                self._index.resize_index(max(needed, 2 * self.capacity))
            self._index.add_items(vectors[is_new], labels[is_new], replace_deleted=True)
            self._live += n_new

    def delete(self, labels: Iterable[int]) -> None:
        """Overwrite the labels' vectors with zeros and mark them deleted.

        Their slots are reused by later additions; until then they hold zeros, so no saved
        index keeps a deleted vector.
        """
        zeros = np.zeros((1, self._params.dim), dtype=np.float32)
        for label in labels:
            self._index.add_items(zeros, [int(label)], replace_deleted=False)
            self._index.mark_deleted(int(label))
            self._live -= 1

    def search(
        self, vector: np.ndarray, k: int, allowed: Callable[[int], bool] | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Return ``(labels, cosine distances)`` of the ``k`` approximate nearest neighbours.

        Args:
            vector: (dim,) float32 query.
            k: Number of neighbours (at most the number of vectors not deleted).
            allowed: Optional predicate on labels; other labels are skipped.

        Returns:
            The labels and distances, nearest first, or None if the graph search found fewer
            than ``k`` (allowed) vectors; the caller then falls back to an exact scan.
        """
        if k <= 0:
            return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.float32)
        try:
            labels, distances = self._index.knn_query(vector, k=k, num_threads=1, filter=allowed)
        except RuntimeError:
            return None
        return labels[0], distances[0]

    def save(self, directory: Path, state: Mapping[str, Any]) -> None:
        """Save the index and then its stamp, each atomically and owner-only (0600)."""
        index_path = directory / INDEX_FILE
        tmp = directory / f".{INDEX_FILE}.{uuid.uuid4().hex}.tmp"
        try:
            self._index.save_index(str(tmp))
            os.chmod(tmp, 0o600)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            size, digest = tmp.stat().st_size, file_sha256(tmp)
            os.replace(tmp, index_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        stamp = {
            "format": STAMP_FORMAT,
            "params": self._params.build_params(),
            "state": dict(state),
            "file": {"sha256": digest, "bytes": size},
        }
        # atomic_write_bytes fsyncs the directory, which also makes the rename above durable.
        atomic_write_bytes(directory / STAMP_FILE, json.dumps(stamp, indent=1).encode())


def remove_temp_files(directory: Path) -> None:
    """Delete temp files a save interrupted by a crash left behind (call with the store locked)."""
    for name in (INDEX_FILE, STAMP_FILE):
        for leftover in directory.glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    """Return the sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
