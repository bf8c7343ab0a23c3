"""A user's durable, searchable history: SQLite is the truth, an HNSW index is its cache.

One store is one directory (``<data root>/users/<user id>/`` or any directory you name)::

    history.sqlite3   SQLite in WAL mode, PRAGMA user_version = STORE_FORMAT_VERSION.
                      items(label INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, text,
                            fields JSON, timestamp REAL, embedding BLOB float32)
                      item_fields(key, value, label): index of non-null field values,
                            kept by triggers, for dict filters.
                      meta(key, value): store_id, encoder_fingerprint, dim, generation.
    index.hnsw        hnswlib cosine index over the embeddings, labelled by items.label.
    index.stamp.json  checksum of index.hnsw and the SQLite state it was built from.
    store.lock        held (flock) while a HistoryStore has the directory open.

Design decisions:

- **Labels.** ``label`` is an AUTOINCREMENT alias of SQLite's rowid, so it survives VACUUM and
  is never reused after a delete; it is the HNSW label. Listing order is label order, which is
  insertion order (an upsert keeps the record's place).
- **Generation.** Triggers bump ``meta.generation`` on every insert, update and delete, even by
  a foreign connection, so the index stamp can tell whether it still describes SQLite.
- **Index saving.** The index is saved (atomically, then its stamp) on :meth:`close`, by
  :meth:`save_index`, after a rebuild, and after an ``add``/``delete`` call once
  ``autosave_every`` records changed since the last save. A crash in between only costs a
  rebuild on the next open: a missing, stale or corrupt index is rebuilt from SQLite with a
  logged warning. Correctness never depends on the index file.
- **Adding.** :meth:`add` validates the whole call first (all-or-nothing for bad input), then
  embeds and writes batch by batch, one transaction per batch. Adding an id that is already
  stored raises :class:`InvalidInputError` unless ``upsert=True`` (or :meth:`upsert` is used),
  which replaces text, fields, timestamp and vector in place.
- **Input limits.** Texts over :data:`~hydrahead.runtime.records.MAX_TEXT_BYTES` (1,000,000
  UTF-8 bytes) are rejected, see :mod:`hydrahead.runtime.records`.
- **Encoder changes.** The store remembers its encoder's fingerprint and dimension. Opening it
  with another encoder raises :class:`EncoderMismatchError` unless ``on_encoder_change="reembed"``,
  which re-embeds every record in one transaction (all or nothing) and rebuilds the index.
- **Search.** HNSW finds candidates; their scores are recomputed exactly from the stored
  vectors. ``k`` at least the number of (matching) records, or a dict filter matching at most
  :data:`EXACT_SEARCH_MAX` records (found through ``item_fields``), is answered by an exact
  scan. A callable filter is first tried on the ``2k + 8`` nearest records, then inside the
  graph search (hnswlib's ``filter``), then by an exact scan if the graph yields fewer than k.
- **One writer.** A store directory can be open in one HistoryStore at a time (an exclusive
  ``flock`` on POSIX); a second open raises :class:`StoreError`. Within a process, a store
  object may be shared between threads (calls are serialised).
- **Memory.** Nothing is loaded into Python on open beyond the index; records are read from
  SQLite by label when a search returns them.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import sqlite3
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import numpy as np

from .errors import (
    EncoderMismatchError,
    InvalidInputError,
    InvalidUserIdError,
    NotFoundError,
    StoreError,
    StoreVersionError,
)
from .hnsw_index import IndexParams, UnusableIndexError, VectorIndex, remove_temp_files
from .paths import make_private_dir, user_dir, validate_user_id
from .records import RESERVED_KEYS, Hit, Record, check_text, checked_scalar

try:  # POSIX only; elsewhere the one-writer rule is not enforced
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

STORE_FORMAT_VERSION = 1
"""Written to ``PRAGMA user_version``; stores with a higher version are refused untouched."""

DB_FILE = "history.sqlite3"
LOCK_FILE = "store.lock"
DEFAULT_BATCH_SIZE = 256
"""Records embedded and written per transaction by :meth:`HistoryStore.add`."""
EXACT_SEARCH_MAX = 1000
"""A dict filter matching at most this many records is answered by an exact scan."""

_IN_CHUNK = 500  # ids or labels per "IN (...)" query (older SQLite allows 999 parameters)
_SCAN_CHUNK = 4096  # rows per chunk when streaming the table

Filter = Mapping[str, Any] | Callable[[Record], bool]

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    """CREATE TABLE items (
        label INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        text TEXT NOT NULL,
        fields TEXT NOT NULL,
        timestamp REAL,
        embedding BLOB NOT NULL
    )""",
    # item_fields indexes the non-null field values of every item, for dict filters. Triggers
    # keep it in step with items.fields, whoever writes.
    """CREATE TABLE item_fields (
        key TEXT NOT NULL,
        value NOT NULL,
        label INTEGER NOT NULL,
        PRIMARY KEY (key, value, label)
    ) WITHOUT ROWID""",
    "CREATE INDEX item_fields_by_label ON item_fields (label)",
    """CREATE TRIGGER items_insert AFTER INSERT ON items BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'generation';
        INSERT INTO item_fields (key, value, label)
            SELECT key, atom, new.label FROM json_each(new.fields) WHERE type != 'null';
    END""",
    """CREATE TRIGGER items_update AFTER UPDATE ON items BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'generation';
    END""",
    """CREATE TRIGGER items_update_fields AFTER UPDATE OF fields ON items BEGIN
        DELETE FROM item_fields WHERE label = old.label;
        INSERT INTO item_fields (key, value, label)
            SELECT key, atom, new.label FROM json_each(new.fields) WHERE type != 'null';
    END""",
    """CREATE TRIGGER items_delete AFTER DELETE ON items BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'generation';
        DELETE FROM item_fields WHERE label = old.label;
    END""",
)


class TextEncoder(Protocol):
    """What the store needs from an encoder (``hydrahead.runtime.encoder.Encoder`` is one)."""

    @property
    def dim(self) -> int: ...  # noqa: D102

    @property
    def fingerprint(self) -> str: ...  # noqa: D102

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...  # noqa: D102


class HistoryStore:
    """The history of one user: records with embeddings, searchable by cosine similarity.

    Example::

        with HistoryStore("alice", encoder=Encoder(bundle_dir)) as store:
            store.add([{"id": "1", "text": "fixed the docs", "tag": "doc"}])
            hits = store.search("documentation", k=5, filter={"tag": "doc"})

    Args:
        user: A user id (``str``, checked by ``validate_user_id``; the store lives in
            ``<root>/users/<user>/``) or a directory (``os.PathLike``, e.g. ``Path``; see also
            :meth:`at`). An existing directory keeps its permissions; a new one is made 0700.
        encoder: Embeds texts; its ``fingerprint`` and ``dim`` are recorded in the store.
        root: Data root for user ids (default: ``$HYDRAHEAD_HOME``, else the platform's).
        M: HNSW graph degree.
        ef_construction: HNSW candidate list size while inserting.
        ef: HNSW candidate list size while searching.
        on_encoder_change: ``"error"`` (default) raises :class:`EncoderMismatchError` when the
            store was embedded by another encoder; ``"reembed"`` re-embeds all records instead.
        autosave_every: Save the index after an add/delete call once this many records changed
            since the last save (None: only on close/save_index).

    Raises:
        InvalidUserIdError: if ``user`` is not a valid user id or path.
        StoreVersionError: if the store was written by a newer hydrahead.
        EncoderMismatchError: if the store was embedded by another encoder (see above).
        StoreError: if the store is open elsewhere or its database is unreadable.
    """

    def __init__(
        self,
        user: str | os.PathLike[str],
        *,
        encoder: TextEncoder,
        root: str | os.PathLike[str] | None = None,
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 64,
        on_encoder_change: Literal["error", "reembed"] = "error",
        autosave_every: int | None = 1000,
    ) -> None:
        self._closed = True  # until fully open
        self._conn: sqlite3.Connection | None = None
        self._lock_file: IO[bytes] | None = None
        self._mutex = threading.RLock()

        for name, value, least in (("M", M, 2), ("ef_construction", ef_construction, 1),
                                   ("ef", ef, 1)):
            _check_int(value, name, least)
        if autosave_every is not None:
            _check_int(autosave_every, "autosave_every", 1)
        if on_encoder_change not in ("error", "reembed"):
            raise InvalidInputError(
                f"on_encoder_change must be 'error' or 'reembed', got {on_encoder_change!r}"
            )
        dim, fingerprint = getattr(encoder, "dim", None), getattr(encoder, "fingerprint", None)
        if (
            isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1
            or not isinstance(fingerprint, str) or not fingerprint
            or not callable(getattr(encoder, "encode", None))
        ):
            raise InvalidInputError(
                "encoder must have an int .dim, a non-empty str .fingerprint and .encode(texts)"
            )

        if isinstance(user, os.PathLike):
            if root is not None:
                raise InvalidInputError("root applies to user ids only, not to a directory")
            directory = Path(user).expanduser()
            if not directory.exists():
                make_private_dir(directory)
            elif not directory.is_dir():
                raise StoreError(f"{directory} exists and is not a directory")
            self._user_id: str | None = None
        elif isinstance(user, str):
            try:
                self._user_id = validate_user_id(user)
            except InvalidUserIdError as exc:
                if "/" in user or os.sep in user:
                    raise InvalidUserIdError(
                        f"{exc}; to open a store by directory, use HistoryStore.at(path)"
                    ) from None
                raise
            directory = user_dir(self._user_id, root)
        else:
            raise InvalidUserIdError(
                f"user must be a user id (str) or a directory (Path), got {type(user).__name__}"
            )

        self._dir = directory
        self._encoder = encoder
        self._dim = int(dim)
        self._fingerprint = fingerprint
        self._params = IndexParams(dim=self._dim, M=M, ef_construction=ef_construction, ef=ef)
        self._autosave_every = autosave_every
        self._dirty = 0
        try:
            self._open(on_encoder_change)
        except BaseException:
            self._release()
            raise
        self._closed = False

    @classmethod
    def open(cls, user: str | os.PathLike[str], **kwargs: Any) -> HistoryStore:
        """Same as ``HistoryStore(user, **kwargs)``."""
        return cls(user, **kwargs)

    @classmethod
    def at(cls, directory: str | os.PathLike[str], **kwargs: Any) -> HistoryStore:
        """Open (or create) the store in ``directory`` instead of a user's data directory.

        Takes the same keyword arguments as the constructor, except ``root``.
        """
        return cls(Path(directory), **kwargs)

    # ------------------------------------------------------------------ properties

    @property
    def directory(self) -> Path:
        """The store's directory."""
        return self._dir

    @property
    def user_id(self) -> str | None:
        """The user id, or None for a store opened by directory."""
        return self._user_id

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self._dim

    @property
    def encoder_fingerprint(self) -> str:
        """Fingerprint of the encoder the stored embeddings come from."""
        return self._fingerprint

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def generation(self) -> int:
        """A counter that changes with every insert, update and delete, by any process."""
        with self._mutex:
            self._check_open()
            return int(self._state()["generation"])

    # ------------------------------------------------------------------ writing

    def add(
        self,
        items: Record | Mapping[str, Any] | Iterable[Record | Mapping[str, Any]],
        *,
        vectors: np.ndarray | None = None,
        upsert: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[str]:
        """Embed and store records.

        Every item is checked before anything is written: if one is invalid, nothing is stored.
        Records are then embedded and written ``batch_size`` at a time, one transaction per
        batch; if the encoder fails part way, the batches before it stay stored.

        Args:
            items: Records, dicts (``Record.from_dict`` form, e.g. LaMP profile items) or one
                of either.
            vectors: Optional (n, dim) embeddings of the items, in order, instead of encoding
                the texts (e.g. to import an export). They must come from the store's encoder.
            upsert: Replace the text, fields, timestamp and vector of ids already stored.
            batch_size: Records per encoder call and transaction.

        Returns:
            The ids, in the order given.

        Raises:
            InvalidInputError: on an invalid item, an id given twice, an id already stored
                (without ``upsert``), or vectors of the wrong shape or not finite.
        """
        with self._mutex:
            self._check_open()
            _check_int(batch_size, "batch_size", 1)
            records = _as_records(items)
            embeddings = None if vectors is None else self._checked_vectors(vectors, len(records))
            existing = self._labels_of([r.id for r in records])
            if existing and not upsert:
                shown = ", ".join(repr(i) for i in list(existing)[:5])
                raise InvalidInputError(
                    f"{len(existing)} id(s) are already stored ({shown}); pass upsert=True "
                    "(or call upsert()) to replace them, or delete them first"
                )
            for start in range(0, len(records), batch_size):
                batch = records[start : start + batch_size]
                if embeddings is None:
                    batch_vectors = self._embed([r.text for r in batch])
                else:
                    batch_vectors = embeddings[start : start + batch_size]
                labels, is_new = self._write_batch(batch, batch_vectors, existing)
                self._update_index(labels, batch_vectors, is_new)
                self._dirty += len(batch)
            self._maybe_autosave()
            return [r.id for r in records]

    def upsert(
        self,
        items: Record | Mapping[str, Any] | Iterable[Record | Mapping[str, Any]],
        **kwargs: Any,
    ) -> list[str]:
        """Add records, replacing those whose id is already stored: ``add(..., upsert=True)``."""
        return self.add(items, upsert=True, **kwargs)

    def delete(self, ids: str | Iterable[str]) -> int:
        """Delete records by id, all or none.

        Returns:
            The number of records deleted (repeated ids count once).

        Raises:
            NotFoundError: if any id is unknown; then nothing is deleted.
        """
        with self._mutex:
            self._check_open()
            unique = list(dict.fromkeys(_as_ids(ids)))
            labels = self._labels_of(unique)
            _raise_if_missing(unique, labels)
            with self._transaction() as conn:
                conn.executemany(
                    "DELETE FROM items WHERE label = ?", [(labels[i],) for i in unique]
                )
            self._count -= len(unique)
            try:
                self._index.delete(labels[i] for i in unique)
            except Exception as exc:  # SQLite is already right; make the index match it again
                self._index = self._rebuild_index(f"updating the in-memory index failed ({exc})")
            self._dirty += len(unique)
            self._maybe_autosave()
            return len(unique)

    # ------------------------------------------------------------------ reading

    def get(self, id: str) -> Record:
        """Return the record with this id.

        Raises:
            NotFoundError: if there is none.
        """
        if not isinstance(id, str):
            raise InvalidInputError(f"id must be a string, got {type(id).__name__}")
        return self.get_many([id])[0]

    def get_many(self, ids: Iterable[str]) -> list[Record]:
        """Return the records with these ids, in the order given.

        Raises:
            NotFoundError: if any id is unknown.
        """
        with self._mutex:
            self._check_open()
            wanted = _as_ids(ids)
            rows = self._rows_by("id", wanted, "id, text, fields, timestamp")
            _raise_if_missing(wanted, rows)
            return [_record(*rows[i]) for i in wanted]

    def vectors(self, ids: Iterable[str]) -> np.ndarray:
        """Return the stored embeddings of these ids as an (n, dim) float32 array.

        Raises:
            NotFoundError: if any id is unknown.
        """
        with self._mutex:
            self._check_open()
            wanted = _as_ids(ids)
            rows = self._rows_by("id", wanted, "id, embedding")
            _raise_if_missing(wanted, rows)
            return self._decode([rows[i][1] for i in wanted]).reshape(len(wanted), self._dim)

    def list(self, limit: int | None = None, offset: int = 0) -> list[Record]:
        """Return records in insertion order, skipping ``offset`` and at most ``limit``."""
        if limit is not None:
            _check_int(limit, "limit", 0)
        _check_int(offset, "offset", 0)
        with self._mutex:
            self._check_open()
            rows = self._conn.execute(  # type: ignore[union-attr]
                "SELECT id, text, fields, timestamp FROM items ORDER BY label LIMIT ? OFFSET ?",
                (-1 if limit is None else limit, offset),
            ).fetchall()
            return [_record(*row) for row in rows]

    def iter(self, batch_size: int = 1000) -> Iterator[Record]:
        """Yield every record in insertion order, reading ``batch_size`` rows at a time."""
        for record, _ in self._iter_rows(with_vectors=False, batch_size=batch_size):
            yield record

    def __iter__(self) -> Iterator[Record]:
        return self.iter()

    def count(self) -> int:
        """Number of records."""
        with self._mutex:
            self._check_open()
            return self._count

    def __len__(self) -> int:
        return self.count()

    def __contains__(self, id: object) -> bool:
        if not isinstance(id, str):
            return False
        with self._mutex:
            self._check_open()
            return bool(self._labels_of([id]))

    # ------------------------------------------------------------------ search

    def search(
        self, query: str | np.ndarray, k: int = 10, filter: Filter | None = None
    ) -> list[Hit]:
        """Return the ``k`` records most similar to ``query``, most similar first.

        Args:
            query: A text (embedded with the store's encoder) or a (dim,) vector.
            k: Number of hits; if fewer records match, all of them are returned.
            filter: Optional. A dict of field equalities, ``{"tag": "doc"}`` keeps records
                with ``record.fields.get("tag") == "doc"`` (None also matches a missing field;
                numbers and bools compare like in Python). Or a callable ``(Record) -> bool``.

        Returns:
            Hits with the cosine similarity as ``score`` (computed exactly from the stored
            vectors) and the stored vector. Equal scores keep insertion order; when more
            records tie for the k-th place than fit, which of them the HNSW graph returns may
            differ after the index is rebuilt.

        Raises:
            InvalidInputError: on an empty query, a vector of the wrong shape, a bad k or filter.
        """
        _check_int(k, "k", 1)
        with self._mutex:
            self._check_open()
            if isinstance(query, str):
                q = self._embed([check_text(query, "query text")])[0]
            else:
                q = self._checked_vectors(query, 1, what="query vector")[0]
            if filter is None or (isinstance(filter, Mapping) and not filter):
                labels = self._search_all(q, k)
            elif isinstance(filter, Mapping):
                labels = self._search_matching(q, k, filter)
            elif callable(filter):
                labels = self._search_predicate(q, k, filter)
            else:
                raise InvalidInputError(
                    f"filter must be a dict or a callable, got {type(filter).__name__}"
                )
            return self._hits(labels, q, k)

    def _search_all(self, q: np.ndarray, k: int) -> list[int]:
        if self._count == 0:
            return []
        if k < self._count:
            found = self._index.search(q, k)
            if found is not None:
                return [int(label) for label in found[0]]
        return self._exact_top(q, k, self._vector_chunks())

    def _search_matching(self, q: np.ndarray, k: int, filter: Mapping[str, Any]) -> list[int]:
        labels = self._labels_matching(filter)
        if len(labels) > max(k, EXACT_SEARCH_MAX):
            allowed = set(labels)
            found = self._index.search(q, k, allowed.__contains__)
            if found is not None:
                return [int(label) for label in found[0]]
        return self._exact_top(q, k, self._vector_chunks(labels))

    def _search_predicate(
        self, q: np.ndarray, k: int, predicate: Callable[[Record], bool]
    ) -> list[int]:
        if self._count == 0:
            return []
        if k < self._count:
            # Most filters pass most records (e.g. "not this id"): test the predicate on a few
            # more than k unfiltered neighbours first, and search the graph with the filter
            # only if fewer than k of them pass.
            found = self._index.search(q, min(self._count, 2 * k + 8))
            if found is not None:
                labels = [int(label) for label in found[0]]
                rows = self._rows_by("label", labels, "label, id, text, fields, timestamp")
                passing = [
                    label for label in labels
                    if label in rows and predicate(_record(*rows[label][1:]))
                ]
                if len(passing) >= k:
                    return passing[:k]  # the nearest k that pass: hnswlib returns nearest first
            verdicts: dict[int, bool] = {}
            errors: list[BaseException] = []

            def allowed(label: int) -> bool:  # called by hnswlib for each candidate label
                if errors:
                    return False
                if label not in verdicts:
                    try:
                        record = self._record_at(label)
                        verdicts[label] = record is not None and bool(predicate(record))
                    except BaseException as exc:  # re-raised below, not inside hnswlib
                        errors.append(exc)
                        return False
                return verdicts[label]

            found = self._index.search(q, k, allowed)
            if errors:
                raise errors[0]
            if found is not None:
                return [int(label) for label in found[0]]
        # Fewer than k matches reachable in the graph: score every matching record exactly.
        return self._exact_top(q, k, self._vector_chunks(predicate=predicate))

    def _exact_top(
        self, q: np.ndarray, k: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]]
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

    def _hits(self, labels: list[int], q: np.ndarray, k: int) -> list[Hit]:
        """Hits for ``labels``, scored exactly (float64) and sorted by score, then label."""
        rows = self._rows_by("label", labels, "label, id, text, fields, timestamp, embedding")
        present = [label for label in labels if label in rows]  # a foreign delete may race
        if not present:
            return []
        vectors = self._decode([rows[label][5] for label in present])
        v64 = vectors.astype(np.float64)
        q64 = q.astype(np.float64)
        scores = (v64 @ q64) / (np.linalg.norm(v64, axis=1) * np.linalg.norm(q64))
        order = sorted(range(len(present)), key=lambda i: (-scores[i], present[i]))[:k]
        return [
            Hit(_record(*rows[present[i]][1:5]), float(scores[i]), vectors[i]) for i in order
        ]

    # ------------------------------------------------------------------ export, lifecycle

    def export_jsonl(
        self, path: str | os.PathLike[str], *, include_embeddings: bool = False
    ) -> int:
        """Write every record as one JSON object per line (``Record.to_dict`` form).

        The file is written atomically and owner-only (0600). With ``include_embeddings`` each
        object also has an ``"embedding"`` list of floats (exact float32 values).

        Returns:
            The number of records written.
        """
        target = Path(path).expanduser()
        with self._mutex:
            self._check_open()
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            written = 0
            try:
                with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
                    for record, vector in self._iter_rows(with_vectors=include_embeddings):
                        data = record.to_dict()
                        if vector is not None:
                            data["embedding"] = vector.tolist()
                        fh.write(json.dumps(data, ensure_ascii=False) + "\n")
                        written += 1
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o600)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return written

    def save_index(self) -> None:
        """Save the HNSW index and its stamp now (SQLite itself is always durable)."""
        with self._mutex:
            self._check_open()
            try:
                self._index.save(self._dir, self._state())
            except OSError as exc:
                raise StoreError(f"could not save the index of {self._dir}: {exc}") from exc
            self._dirty = 0

    def close(self) -> None:
        """Save the index if records changed, close the database and release the store.

        Calling it again does nothing; any other method then raises :class:`StoreError`.
        """
        with self._mutex:
            if self._closed:
                return
            try:
                if self._dirty:
                    self._save_index_quietly()
            finally:
                self._closed = True
                self._release()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._count} records"
        return f"HistoryStore({str(self._dir)!r}, {state})"

    # ------------------------------------------------------------------ opening

    def _open(self, on_encoder_change: str) -> None:
        db = self._dir / DB_FILE
        if db.exists():
            _refuse_newer_format(db, self._dir)  # before anything could write to it
        self._lock_file = _lock_directory(self._dir)
        remove_temp_files(self._dir)
        if not db.exists():
            os.close(os.open(db, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(db, 0o600)
        try:
            self._conn = sqlite3.connect(
                db, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._init_schema()
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
            self._count = self._conn.execute("SELECT count(*) FROM items").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{db} is not a readable hydrahead store ({exc}); move it away to start afresh"
            ) from exc
        self._store_id = str(meta["store_id"])
        self._restrict_file_modes()
        if meta["encoder_fingerprint"] == self._fingerprint and meta["dim"] == self._dim:
            self._index = self._load_index()
        elif self._count == 0:
            logger.info("empty store %s now uses encoder %s", self._dir, self._fingerprint[:12])
            self._set_encoder_meta()
            self._index = self._rebuild_index(None)
        elif on_encoder_change == "reembed":
            self._reembed_all(str(meta["encoder_fingerprint"]))
            self._index = self._rebuild_index("the records were re-embedded with a new encoder")
        else:
            raise EncoderMismatchError(
                f"the store at {self._dir} holds {self._count} embeddings from encoder "
                f"{str(meta['encoder_fingerprint'])[:12]} (dim {meta['dim']}), but it was opened "
                f"with encoder {self._fingerprint[:12]} (dim {self._dim}). Open it with the "
                "original encoder, or pass on_encoder_change='reembed' to re-embed every "
                "record with the new one (this takes as long as adding them all again)."
            )

    def _init_schema(self) -> None:
        with self._transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > STORE_FORMAT_VERSION:
                raise StoreVersionError(_newer_format_message(self._dir, version))
            if version == STORE_FORMAT_VERSION:
                return
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise StoreError(
                    f"{self._dir / DB_FILE} is a SQLite database but not a hydrahead store"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("store_id", uuid.uuid4().hex),
                    ("encoder_fingerprint", self._fingerprint),
                    ("dim", self._dim),
                    ("generation", 0),
                    ("created", time.time()),
                ],
            )
            conn.execute(f"PRAGMA user_version = {STORE_FORMAT_VERSION}")

    def _set_encoder_meta(self) -> None:
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE meta SET value = ? WHERE key = ?",
                [(self._fingerprint, "encoder_fingerprint"), (self._dim, "dim")],
            )

    def _reembed_all(self, old_fingerprint: str) -> None:
        """Re-embed every record with the current encoder, in one transaction."""
        logger.warning(
            "re-embedding %d records of %s: encoder %s -> %s",
            self._count, self._dir, old_fingerprint[:12], self._fingerprint[:12],
        )
        with self._transaction() as conn:
            last = 0
            while True:
                rows = conn.execute(
                    "SELECT label, text FROM items WHERE label > ? ORDER BY label LIMIT ?",
                    (last, DEFAULT_BATCH_SIZE),
                ).fetchall()
                if not rows:
                    break
                vectors = self._embed([text for _, text in rows])
                conn.executemany(
                    "UPDATE items SET embedding = ? WHERE label = ?",
                    [(_blob(v), label) for v, (label, _) in zip(vectors, rows)],
                )
                last = rows[-1][0]
            conn.executemany(
                "UPDATE meta SET value = ? WHERE key = ?",
                [(self._fingerprint, "encoder_fingerprint"), (self._dim, "dim")],
            )

    # ------------------------------------------------------------------ index upkeep

    def _state(self) -> dict[str, Any]:
        """The SQLite state an index must have been saved at to be reused."""
        generation = self._conn.execute(  # type: ignore[union-attr]
            "SELECT value FROM meta WHERE key = 'generation'"
        ).fetchone()[0]
        return {
            "store_id": self._store_id,
            "generation": int(generation),
            "count": int(self._count),
            "encoder": self._fingerprint,
        }

    def _load_index(self) -> VectorIndex:
        try:
            return VectorIndex.load(self._dir, self._params, self._state())
        except UnusableIndexError as exc:
            return self._rebuild_index(str(exc))

    def _rebuild_index(self, reason: str | None) -> VectorIndex:
        """Build the index from SQLite and save it; log a warning with ``reason`` if given."""
        if reason is not None and self._count:
            logger.warning(
                "rebuilding the search index of %s from its %d records: %s",
                self._dir, self._count, reason,
            )
        index = VectorIndex.build(self._params, self._vector_chunks(), self._count)
        self._index = index
        self._save_index_quietly()
        return index

    def _update_index(self, labels: np.ndarray, vectors: np.ndarray, is_new: np.ndarray) -> None:
        try:
            self._index.upsert(labels, vectors, is_new)
        except Exception as exc:  # SQLite is already right; make the index match it again
            self._index = self._rebuild_index(f"updating the in-memory index failed ({exc})")

    def _save_index_quietly(self) -> None:
        """Save the index; a failure is only logged (the next open rebuilds it)."""
        try:
            self._index.save(self._dir, self._state())
            self._dirty = 0
        except (OSError, RuntimeError) as exc:
            logger.warning("could not save the search index of %s: %s", self._dir, exc)

    def _maybe_autosave(self) -> None:
        if self._autosave_every is not None and self._dirty >= self._autosave_every:
            self._save_index_quietly()

    # ------------------------------------------------------------------ SQLite helpers

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to {self._dir / DB_FILE}: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot write to {self._dir / DB_FILE}: {exc}") from exc
            raise
        self._restrict_file_modes()

    def _write_batch(
        self, records: Sequence[Record], vectors: np.ndarray, existing: dict[str, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Insert or update one batch in one transaction; return its labels and is-new flags."""
        labels = np.empty(len(records), dtype=np.int64)
        is_new = np.empty(len(records), dtype=bool)
        with self._transaction() as conn:
            for i, (record, vector) in enumerate(zip(records, vectors)):
                values = (
                    record.text,
                    json.dumps(record.fields, ensure_ascii=False, allow_nan=False),
                    record.timestamp,
                    _blob(vector),
                )
                label = existing.get(record.id)
                if label is None:
                    cursor = conn.execute(
                        "INSERT INTO items (id, text, fields, timestamp, embedding) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (record.id, *values),
                    )
                    label = cursor.lastrowid
                else:
                    conn.execute(
                        "UPDATE items SET text = ?, fields = ?, timestamp = ?, embedding = ? "
                        "WHERE label = ?",
                        (*values, label),
                    )
                labels[i], is_new[i] = label, record.id not in existing
        self._count += int(is_new.sum())
        return labels, is_new

    def _labels_of(self, ids: Sequence[str]) -> dict[str, int]:
        return {id_: row[1] for id_, row in self._rows_by("id", ids, "id, label").items()}

    def _rows_by(self, key: str, values: Sequence[Any], columns: str) -> dict[Any, tuple]:
        """Rows whose ``key`` column is in ``values``, keyed by it (``columns`` starts with it)."""
        conn = self._conn
        assert conn is not None
        unique = list(dict.fromkeys(values))
        rows: dict[Any, tuple] = {}
        for start in range(0, len(unique), _IN_CHUNK):
            chunk = unique[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                f"SELECT {columns} FROM items WHERE {key} IN ({marks})", chunk
            ):
                rows[row[0]] = row
        return rows

    def _record_at(self, label: int) -> Record | None:
        row = self._conn.execute(  # type: ignore[union-attr]
            "SELECT id, text, fields, timestamp FROM items WHERE label = ?", (label,)
        ).fetchone()
        return None if row is None else _record(*row)

    def _labels_matching(self, filter: Mapping[str, Any]) -> list[int]:
        """Labels of records whose fields equal ``filter``, like ``fields.get(key) == value``.

        Uses the item_fields index, where JSON true/false are 1/0: numbers and bools compare
        numerically, as in Python, and strings only equal strings. None matches a missing
        field or a null (item_fields holds no nulls).
        """
        present, absent, params, absent_params = [], [], [], []
        for key, value in filter.items():
            if not isinstance(key, str) or key in RESERVED_KEYS:
                raise InvalidInputError(f"filter keys must be field names, got {key!r}")
            value = checked_scalar(value, f"filter value for {key!r}")
            if value is None:
                absent.append("SELECT label FROM item_fields WHERE key = ?")
                absent_params.append(key)
            else:
                present.append("SELECT label FROM item_fields WHERE key = ? AND value = ?")
                params += [key, int(value) if isinstance(value, bool) else value]
        sql = " INTERSECT ".join(present) or "SELECT label FROM items"
        if absent:
            sql += " EXCEPT " + " EXCEPT ".join(absent)
        conn = self._conn
        assert conn is not None
        return [row[0] for row in conn.execute(f"{sql} ORDER BY label", params + absent_params)]

    def _vector_chunks(
        self,
        labels: Sequence[int] | None = None,
        predicate: Callable[[Record], bool] | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(labels, vectors)`` chunks: all records, given labels, or those passing
        ``predicate``."""
        if labels is not None:
            for start in range(0, len(labels), _IN_CHUNK):
                rows = self._rows_by("label", labels[start : start + _IN_CHUNK], "label, embedding")
                chunk = sorted(rows.values())
                yield self._label_array(chunk), self._decode([blob for _, blob in chunk])
            return
        for records, vectors, chunk_labels in self._scan(with_records=predicate is not None):
            if predicate is not None:
                keep = [i for i, record in enumerate(records) if predicate(record)]
                chunk_labels, vectors = chunk_labels[keep], vectors[keep]
            yield chunk_labels, vectors

    def _scan(
        self, with_records: bool, batch_size: int = _SCAN_CHUNK
    ) -> Iterator[tuple[list[Record], np.ndarray, np.ndarray]]:
        """Yield ``(records, vectors, labels)`` for all rows, in label order, chunk by chunk."""
        columns = "label, embedding, id, text, fields, timestamp" if with_records else (
            "label, embedding"
        )
        last = 0
        while True:
            rows = self._conn.execute(  # type: ignore[union-attr]
                f"SELECT {columns} FROM items WHERE label > ? ORDER BY label LIMIT ?",
                (last, batch_size),
            ).fetchall()
            if not rows:
                return
            records = [_record(*row[2:]) for row in rows] if with_records else []
            yield records, self._decode([row[1] for row in rows]), self._label_array(rows)
            last = rows[-1][0]

    def _iter_rows(
        self, with_vectors: bool, batch_size: int = 1000
    ) -> Iterator[tuple[Record, np.ndarray | None]]:
        """Yield ``(record, vector or None)`` in label order, taking the lock per chunk."""
        _check_int(batch_size, "batch_size", 1)
        columns = "label, id, text, fields, timestamp" + (", embedding" if with_vectors else "")
        last = 0
        while True:
            with self._mutex:
                self._check_open()
                rows = self._conn.execute(  # type: ignore[union-attr]
                    f"SELECT {columns} FROM items WHERE label > ? ORDER BY label LIMIT ?",
                    (last, batch_size),
                ).fetchall()
                vectors = self._decode([row[5] for row in rows]) if with_vectors and rows else None
            if not rows:
                return
            for i, row in enumerate(rows):
                yield _record(*row[1:5]), None if vectors is None else vectors[i]
            last = rows[-1][0]

    @staticmethod
    def _label_array(rows: Sequence[tuple]) -> np.ndarray:
        return np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))

    def _decode(self, blobs: Sequence[bytes]) -> np.ndarray:
        """Stored embedding blobs -> (n, dim) float32 array (a copy, safe to modify)."""
        size = 4 * self._dim
        if any(len(blob) != size for blob in blobs):
            raise StoreError(
                f"{self._dir / DB_FILE} holds an embedding that is not {self._dim} float32 "
                "values; the database was modified outside hydrahead"
            )
        joined = b"".join(blobs)
        return np.frombuffer(joined, dtype="<f4").astype(np.float32).reshape(len(blobs), self._dim)

    # ------------------------------------------------------------------ checks

    def _embed(self, texts: list[str]) -> np.ndarray:
        vectors = np.asarray(self._encoder.encode(texts), dtype=np.float32)
        if vectors.shape != (len(texts), self._dim):
            raise StoreError(
                f"the encoder returned an array of shape {vectors.shape} for {len(texts)} "
                f"texts; expected ({len(texts)}, {self._dim})"
            )
        norms = np.linalg.norm(vectors, axis=1)
        if not (np.isfinite(vectors).all() and (norms > 0).all()):
            raise StoreError("the encoder returned a zero or non-finite embedding")
        return vectors

    def _checked_vectors(self, vectors: object, n: int, what: str = "vectors") -> np.ndarray:
        try:
            array = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{what} must be an array of numbers ({exc})") from None
        if what == "query vector" and array.ndim == 1:
            array = array[None, :]
        if array.shape != (n, self._dim):
            raise InvalidInputError(
                f"{what} must have shape ({n}, {self._dim}), got {array.shape}"
                if what == "vectors"
                else f"{what} must have shape ({self._dim},), got {np.shape(vectors)}"
            )
        if not np.isfinite(array).all():
            raise InvalidInputError(f"{what} must be finite (no NaN or inf)")
        if n and not (np.linalg.norm(array, axis=1) > 0).all():
            raise InvalidInputError(f"{what} must not be zero (cosine similarity is undefined)")
        return np.ascontiguousarray(array)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the store at {self._dir} is closed; open it again to use it")

    def _restrict_file_modes(self) -> None:
        """Make the database and its WAL/SHM files owner-only, whatever the umask."""
        for suffix in ("", "-wal", "-shm"):
            try:
                os.chmod(self._dir / (DB_FILE + suffix), 0o600)
            except FileNotFoundError:
                pass

    def _release(self) -> None:
        """Close the database and drop the directory lock (no index save)."""
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file drops the flock
            self._lock_file = None


# ---------------------------------------------------------------------- module helpers


def _record(id: str, text: str, fields: str, timestamp: float | None) -> Record:
    return Record._trusted(id, text, json.loads(fields), timestamp)


def _blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def _check_int(value: object, name: str, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InvalidInputError(f"{name} must be an integer >= {least}, got {value!r}")


def _as_records(items: object) -> list[Record]:
    """Turn ``add``'s argument into records, checking each and rejecting repeated ids."""
    if isinstance(items, (Record, Mapping)):
        items = [items]
    elif isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise InvalidInputError("items must be a Record, a dict, or a list of them")
    records: list[Record] = []
    first_seen: dict[str, int] = {}
    for i, item in enumerate(items):
        try:
            record = item if isinstance(item, Record) else Record.from_dict(item)
        except InvalidInputError as exc:
            raise InvalidInputError(f"item {i}: {exc}") from None
        if record.id in first_seen:
            raise InvalidInputError(
                f"item {i}: id {record.id!r} is also item {first_seen[record.id]}; "
                "ids must be unique within one call"
            )
        first_seen[record.id] = i
        records.append(record)
    return records


def _as_ids(ids: object) -> list[str]:
    if isinstance(ids, str):
        return [ids]
    if not isinstance(ids, Iterable):
        raise InvalidInputError(f"ids must be a string or a list of strings, got {ids!r}")
    result = list(ids)
    for id_ in result:
        if not isinstance(id_, str):
            raise InvalidInputError(f"ids must be strings, got {type(id_).__name__}: {id_!r}")
    return result


def _raise_if_missing(ids: Sequence[str], found: Mapping[str, Any]) -> None:
    missing = [i for i in dict.fromkeys(ids) if i not in found]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise NotFoundError(f"{len(missing)} id(s) not in the store: {shown}{more}")


def _lock_directory(directory: Path) -> IO[bytes]:
    path = directory / LOCK_FILE
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+b")
    os.chmod(path, 0o600)
    if fcntl is not None:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise StoreError(
                f"the store at {directory} is already open (in this or another process); "
                "close that HistoryStore first"
            ) from None
    return handle


def _refuse_newer_format(db: Path, directory: Path) -> None:
    """Raise StoreVersionError if ``db`` has a newer format, reading it read-only."""
    uri = "file:" + urllib.parse.quote(str(db.resolve())) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"{db} is not a readable SQLite database ({exc}); move it away to start afresh"
        ) from exc
    if version > STORE_FORMAT_VERSION:
        raise StoreVersionError(_newer_format_message(directory, version))


def _newer_format_message(directory: Path, version: int) -> str:
    return (
        f"the store at {directory} has format version {version}, but this hydrahead reads "
        f"version {STORE_FORMAT_VERSION} at most; upgrade hydrahead to open it "
        "(the store was left untouched)"
    )
