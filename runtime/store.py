"""A user's durable, searchable history: SQLite is the truth, an HNSW index is its cache.

One store is one directory (``<data root>/users/<user id>/``, or any directory you name)::

    history.sqlite3   records and their embeddings (store_db.py has the schema)
    index.hnsw        hnswlib cosine index over the embeddings, labelled by row label
    index.stamp.json  checksum of index.hnsw and the SQLite state it was built from
    store.lock        held (flock) while a HistoryStore has the directory open

:class:`HistoryStore` is a small facade over parts that can be read one at a time:
:mod:`.store_db` (the SQLite schema and records), :mod:`.hnsw_index` and :mod:`.hnsw_file` (the
index file and its stamp), :mod:`.store_search` (the search strategies), :mod:`.dir_lock` (one
holder per directory) and :mod:`.erasure` (what a delete removes beyond SQLite and the index).

Design decisions:

- **Opening.** :meth:`HistoryStore.for_user` opens a user's store under the data root;
  :meth:`HistoryStore.at` opens any directory. A directory whose database is missing or empty
  while its index shows it held records is refused (:class:`StoreError`, saying how to
  recover), never silently started afresh.
- **Index saving.** The index is saved (atomically, then its stamp) on :meth:`close`, by
  :meth:`save_index`, after a rebuild, after every ``delete``, and after an ``add`` once
  ``autosave_every`` records changed since the last save. A crash in between only costs a
  rebuild on the next open: a missing, stale, corrupt or malformed index is rebuilt from SQLite
  with a logged warning. Correctness never depends on the index file.
- **Adding.** :meth:`add` validates the whole call first (all-or-nothing for bad input), then
  embeds and writes batch by batch, one transaction per batch. Adding an id that is already
  stored raises :class:`InvalidInputError` unless ``upsert=True`` (or :meth:`upsert` is used),
  which replaces text, fields, timestamp and vector in place.
- **Deleting erases.** :meth:`delete` removes the rows (SQLite overwrites freed pages and the
  WAL is truncated), zeroes the vectors in the index and saves it, then erases the records from
  the other files of the directory (stored labels, response cache, outbox; see
  :mod:`.erasure`). That last step is queued in SQLite in the delete's own transaction, so a
  crash part way is finished when the store is next opened.
- **Encoder changes.** The store remembers its encoder's fingerprint and dimension. Opening it
  with another encoder raises :class:`EncoderMismatchError` unless ``on_encoder_change="reembed"``,
  which re-embeds every record in one transaction (all or nothing) and rebuilds the index.
- **One holder.** A store directory can be open in one HistoryStore at a time; a second open
  raises :class:`StoreError`. Within a process, a store object may be shared between threads
  (calls are serialised). If the directory is removed while the store is open, every later call
  raises :class:`StoreError` and :meth:`close` writes nothing.
- **Memory.** Nothing is loaded into Python on open beyond the index; records are read from
  SQLite by label when a search returns them.
"""

from __future__ import annotations

import builtins
import json
import logging
import numbers
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from . import erasure, store_search
from .dir_lock import lock_directory
from .errors import (
    EncoderMismatchError,
    InvalidInputError,
    NotFoundError,
    StoreError,
)
from .hnsw_index import IndexParams, UnusableIndexError, VectorIndex, remove_temp_files
from .paths import make_private_dir, user_dir
from .records import Change, Hit, Record, as_ids, as_records, check_int, check_text
from .store_cache import ReadCache
from .store_db import (
    STORE_FORMAT_VERSION,
    RecordDB,
    record_of,
    refuse_lost_database,
    refuse_newer_format,
)
from .user_files import DB_FILE, LOCK_FILE
from .vectors import TextEncoder, checked_vectors, embed_checked

__all__ = ["DB_FILE", "LOCK_FILE", "STORE_FORMAT_VERSION", "Filter", "HistoryStore", "TextEncoder"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256
"""Records embedded and written per transaction by :meth:`HistoryStore.add`."""

Filter = Mapping[str, Any] | Callable[[Record], bool]


class _Unset:
    """The type of :data:`UNSET`: 'leave this as it is' where None is a value."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


class HistoryStore:
    """The history of one user: records with embeddings, searchable by cosine similarity.

    Example::

        with HistoryStore.for_user("alice", encoder=Encoder(bundle_dir)) as store:
            store.add([{"id": "1", "text": "fixed the docs", "tag": "doc"}])
            hits = store.search("documentation", k=5, filter={"tag": "doc"})

    Open a store with :meth:`for_user` (a user id under the data root) or :meth:`at` (a
    directory); the constructor takes a directory as a ``Path``.

    Args:
        directory: The store's directory. An existing one keeps its permissions; a new one is
            made 0700.
        encoder: Embeds texts; its ``fingerprint`` and ``dim`` are recorded in the store.
        M: HNSW graph degree.
        ef_construction: HNSW candidate list size while inserting.
        ef: HNSW candidate list size while searching.
        on_encoder_change: ``"error"`` (default) raises :class:`EncoderMismatchError` when the
            store was embedded by another encoder; ``"reembed"`` re-embeds all records instead.
        autosave_every: Save the index after an add call once this many records changed since
            the last save (None: only on close/save_index/delete).

    Raises:
        InvalidInputError: on a bad argument.
        StoreVersionError: if the store was written by a newer hydrahead.
        EncoderMismatchError: if the store was embedded by another encoder (see above).
        StoreError: if the store is open elsewhere, its database is unreadable, or its database
            is gone while its index shows it held records.
    """

    def __init__(
        self,
        directory: os.PathLike[str],
        *,
        encoder: TextEncoder,
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 64,
        on_encoder_change: Literal["error", "reembed"] = "error",
        autosave_every: int | None = 1000,
        user_id: str | None = None,
    ) -> None:
        self._closed = True  # until fully open
        self._db: RecordDB | None = None
        self._lock_file: IO[bytes] | None = None
        self._mutex = threading.RLock()
        if not isinstance(directory, os.PathLike):
            raise InvalidInputError(
                f"HistoryStore() takes a directory as a Path, got {type(directory).__name__}; "
                "use HistoryStore.for_user(user_id) or HistoryStore.at(path)"
            )
        for name, value, least in (("M", M, 2), ("ef_construction", ef_construction, 1),
                                   ("ef", ef, 1)):
            check_int(value, name, least, 10_000)
        if autosave_every is not None:
            check_int(autosave_every, "autosave_every", 1)
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
        path = Path(directory).expanduser()
        if not path.exists():
            make_private_dir(path)
        elif not path.is_dir():
            raise StoreError(f"{path} exists and is not a directory")
        self._dir = path
        self._user_id = user_id
        self._encoder = encoder
        self._dim = int(dim)
        self._fingerprint = fingerprint
        self._params = IndexParams(dim=self._dim, M=M, ef_construction=ef_construction, ef=ef)
        self._autosave_every = autosave_every
        self._dirty = 0
        self._identity: tuple[int, int] | None = None
        self._cache = ReadCache()
        try:
            self._open(on_encoder_change)
        except BaseException:
            self._release()
            raise
        self._closed = False

    @classmethod
    def for_user(cls, user_id: str, *, root: str | os.PathLike[str] | None = None,
                 **kwargs: Any) -> HistoryStore:
        """Open (or create) the store of ``user_id`` in ``<root>/users/<user_id>/``.

        Args:
            user_id: Checked by :func:`~hydrahead.runtime.paths.validate_user_id`.
            root: Data root (default: ``$HYDRAHEAD_HOME``, else the platform's).
            **kwargs: The constructor's keyword arguments.

        Raises:
            InvalidUserIdError: if ``user_id`` cannot name a directory.
        """
        return cls(user_dir(user_id, root), user_id=user_id, **kwargs)

    @classmethod
    def at(cls, directory: str | os.PathLike[str], **kwargs: Any) -> HistoryStore:
        """Open (or create) the store in ``directory`` (the constructor's keyword arguments)."""
        if not isinstance(directory, (str, os.PathLike)):
            raise InvalidInputError(f"directory must be a path, got {type(directory).__name__}")
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
            return self._open_db().generation()

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
            db = self._open_db()
            check_int(batch_size, "batch_size", 1)
            records = as_records(items)
            embeddings = None if vectors is None else self._checked_vectors(vectors, len(records))
            existing = db.labels_of([r.id for r in records])
            if existing and not upsert:
                shown = ", ".join(repr(i) for i in list(existing)[:5])
                raise InvalidInputError(
                    f"{len(existing)} id(s) are already stored ({shown}); pass upsert=True "
                    "(or call upsert()) to replace them, or delete them first"
                )
            self._cache.clear()
            for start in range(0, len(records), batch_size):
                batch = records[start : start + batch_size]
                if embeddings is None:
                    batch_vectors = self._embed([r.text for r in batch])
                else:
                    batch_vectors = embeddings[start : start + batch_size]
                labels, is_new = db.write_batch(batch, batch_vectors, existing)
                self._update_index(lambda: self._index.upsert(labels, batch_vectors, is_new))
                self._dirty += len(batch)
            if self._autosave_every is not None and self._dirty >= self._autosave_every:
                self._save_index_quietly()
            return [r.id for r in records]

    def upsert(
        self,
        items: Record | Mapping[str, Any] | Iterable[Record | Mapping[str, Any]],
        **kwargs: Any,
    ) -> list[str]:
        """Add records, replacing those whose id is already stored: ``add(..., upsert=True)``."""
        return self.add(items, upsert=True, **kwargs)

    def update(self, id: str, *, text: str | None = None,
               fields: Mapping[str, Any] | None = None,
               timestamp: float | None | _Unset = UNSET) -> Record:
        """Change one record: a new ``text`` (re-embedded), ``fields`` merged into its fields
        (a None value removes a field), a new ``timestamp``. Returns the updated record.

        Raises:
            NotFoundError: if there is no such record.
            InvalidInputError: if the result is not a valid record.
        """
        with self._mutex:
            old = self.get(id)
            merged = {**old.fields, **(dict(fields) if fields is not None else {})}
            record = Record(id=old.id, text=old.text if text is None else text,
                            fields={k: v for k, v in merged.items() if v is not None},
                            timestamp=old.timestamp if isinstance(timestamp, _Unset) else timestamp)
            # The same text keeps its stored vector: no encoder call.
            vectors = self.vectors([id]) if text is None else None
            self.add([record], vectors=vectors, upsert=True)
            return record

    def history(self, id: str | None = None, limit: int | None = None) -> list[Change]:
        """Recorded changes (add, update, delete), oldest first: of one record or of all.

        Each entry holds the record's text and fields after the change. A deleted record keeps
        the fact of its changes but none of its texts or fields. The history starts when a
        store was first opened by a hydrahead that keeps it.
        """
        if id is not None:
            (id,) = as_ids([id])
        if limit is not None:
            check_int(limit, "limit", 0)
        with self._mutex:
            return [Change(i, op, at, text, None if fields is None else json.loads(fields))
                    for _, i, op, at, text, fields in self._open_db().changes(id, limit)]

    def clear(self) -> int:
        """Delete every record (see :meth:`delete`); returns how many there were."""
        with self._mutex:
            ids = [r.id for r in self.iter()]
            return self.delete(ids) if ids else 0

    def delete(self, ids: str | Iterable[str]) -> int:
        """Delete records by id, all or none, and erase them from every file of the directory.

        After it returns, no file of the store directory holds a deleted record's text or
        vector: SQLite's freed pages are zeroed and its WAL truncated, the index is saved with
        the vectors zeroed, and the stored labels, response cache and outbox are cleaned (see
        :mod:`.erasure`). Delete many ids in one call: each call saves the index.

        Returns:
            The number of records deleted (repeated ids count once).

        Raises:
            NotFoundError: if any id is unknown; then nothing is deleted.
            StoreError: if erasing from the other files failed; the records are deleted from
                the store, and the erasure is retried when the store is next opened.
        """
        with self._mutex:
            db = self._open_db()
            unique = list(dict.fromkeys(as_ids(ids)))
            labels = db.labels_of(unique)
            _raise_if_missing(unique, labels)
            self._cache.clear()
            db.delete([labels[i] for i in unique])
            self._update_index(lambda: self._index.delete(labels[i] for i in unique))
            self._dirty += len(unique)
            self._save_index_quietly()
            self._finish_erasures()
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
            db = self._open_db()
            wanted = as_ids(ids)
            rows = db.rows_by("id", wanted, "id, text, fields, timestamp")
            _raise_if_missing(wanted, rows)
            return [record_of(*rows[i]) for i in wanted]

    def vectors(self, ids: Iterable[str]) -> np.ndarray:
        """Return the stored embeddings of these ids as an (n, dim) float32 array.

        Raises:
            NotFoundError: if any id is unknown.
        """
        with self._mutex:
            db = self._open_db()
            wanted = as_ids(ids)
            rows = db.rows_by("id", wanted, "id, embedding")
            _raise_if_missing(wanted, rows)
            return db.decode([rows[i][1] for i in wanted]).reshape(len(wanted), self._dim)

    def list(self, limit: int | None = None, offset: int = 0) -> list[Record]:
        """Return records in insertion order, skipping ``offset`` and at most ``limit``."""
        if limit is not None:
            check_int(limit, "limit", 0)
        check_int(offset, "offset", 0)
        with self._mutex:
            return self._open_db().page(limit, offset)

    def iter(self, batch_size: int = 1000) -> Iterator[Record]:
        """Yield every record in insertion order, reading ``batch_size`` rows at a time."""
        for record, _ in self._iter_rows(with_vectors=False, batch_size=batch_size):
            yield record

    def __iter__(self) -> Iterator[Record]:
        return self.iter()

    def count(self) -> int:
        """Number of records."""
        with self._mutex:
            return self._open_db().count

    def __len__(self) -> int:
        return self.count()

    def __contains__(self, id: object) -> bool:
        if not isinstance(id, str):
            return False
        try:
            (checked,) = as_ids([id])
        except InvalidInputError:
            return False  # an id that cannot be stored is not stored
        with self._mutex:
            return bool(self._open_db().labels_of([checked]))

    # ------------------------------------------------------------------ search

    def search(
        self, query: str | np.ndarray, k: int = 10, filter: Filter | None = None,
        threshold: float | None = None,
    ) -> builtins.list[Hit]:  # `list` alone would be the method above
        """Return the ``k`` records most similar to ``query``, most similar first.

        Args:
            query: A text (embedded with the store's encoder) or a (dim,) vector.
            k: Number of hits; if fewer records match, all of them are returned.
            filter: Optional. A dict as mem0 writes them (:mod:`~hydrahead.runtime.record_filter`):
                ``{"tag": "doc"}`` keeps records with ``record.fields.get("tag") == "doc"``
                (None also matches a missing field; numbers and bools compare like in Python);
                operators ``$eq``, ``$ne``, ``$in``, ``$nin``, ``$gt``, ``$gte``, ``$lt``,
                ``$lte`` per field and ``$and``, ``$or``, ``$not`` around filters, e.g.
                ``{"$or": [{"tag": {"$in": ["doc", "tests"]}}, {"stars": {"$gte": 4}}]}``.
                Or a callable ``(Record) -> bool``.
            threshold: Optional. Only hits whose score is at least this (cosine, -1 to 1).

        Returns:
            Hits with the cosine similarity as ``score`` (computed exactly from the stored
            vectors) and the stored vector. Equal scores keep insertion order; when more
            records tie for the k-th place than fit, which of them the HNSW graph returns may
            differ after the index is rebuilt.

        Raises:
            InvalidInputError: on an empty query, a vector of the wrong shape, a bad k or filter.
        """
        check_int(k, "k", 1, 1 << 31)
        if threshold is not None and (
                isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                or not -1.0 <= threshold <= 1.0):
            raise InvalidInputError(f"threshold must be a number from -1 to 1, got {threshold!r}")
        with self._mutex:
            db = self._open_db(quick=True)
            self._cache.sync(db.data_version())
            if isinstance(query, str):
                q = self._embed([check_text(query, "query text")])[0]
            else:
                q = self._checked_vectors(query, 1, what="query vector")[0]
            if filter is None or (isinstance(filter, Mapping) and not filter):
                labels = store_search.search_all(db, self._index, q, k)
            elif isinstance(filter, Mapping):
                labels = store_search.search_matching(db, self._index, q, k, filter,
                                                      self._cache)
            elif callable(filter):
                labels = store_search.search_predicate(db, self._index, q, k, filter)
            else:
                raise InvalidInputError(
                    f"filter must be a dict or a callable, got {type(filter).__name__}"
                )
            found = store_search.hits(db, labels, q, k, self._cache)
            return found if threshold is None else [h for h in found if h.score >= threshold]

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
            self._open_db()
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
            self._open_db()
            try:
                self._index.save(self._dir, self._state())
            except OSError as exc:
                raise StoreError(f"could not save the index of {self._dir}: {exc}") from exc
            self._dirty = 0

    def close(self) -> None:
        """Save the index if records changed, close the database and release the store.

        Calling it again does nothing; any other method then raises :class:`StoreError`. A
        store whose directory was removed writes nothing.
        """
        with self._mutex:
            if self._closed:
                return
            try:
                if self._dirty and self._present():
                    self._save_index_quietly()
            finally:
                self._closed = True
                self._release()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed or self._db is None else f"{self._db.count} records"
        return f"HistoryStore({str(self._dir)!r}, {state})"

    # ------------------------------------------------------------------ opening

    def _open(self, on_encoder_change: str) -> None:
        if (self._dir / DB_FILE).exists():
            refuse_newer_format(self._dir)  # before anything could write to it
        self._lock_file = lock_directory(self._dir)
        remove_temp_files(self._dir)
        refuse_lost_database(self._dir)
        db = self._db = RecordDB.open(self._dir, fingerprint=self._fingerprint, dim=self._dim)
        stat = (self._dir / DB_FILE).stat()
        self._identity = (stat.st_dev, stat.st_ino)
        old_fingerprint, old_dim = str(db.meta["encoder_fingerprint"]), db.meta["dim"]
        if old_fingerprint == self._fingerprint and old_dim == self._dim:
            self._index = self._load_index()
        elif db.count == 0:
            logger.info("empty store %s now uses encoder %s", self._dir, self._fingerprint[:12])
            db.set_encoder(self._fingerprint, self._dim)
            self._index = self._rebuild_index(None)
        elif on_encoder_change == "reembed":
            logger.warning("re-embedding %d records of %s: encoder %s -> %s", db.count,
                           self._dir, old_fingerprint[:12], self._fingerprint[:12])
            db.reembed(self._embed, self._fingerprint, self._dim, DEFAULT_BATCH_SIZE)
            self._index = self._rebuild_index("the records were re-embedded with a new encoder")
        else:
            raise EncoderMismatchError(
                f"the store at {self._dir} holds {db.count} embeddings from encoder "
                f"{old_fingerprint[:12]} (dim {old_dim}), but it was opened "
                f"with encoder {self._fingerprint[:12]} (dim {self._dim}). Open it with the "
                "original encoder, or pass on_encoder_change='reembed' to re-embed every "
                "record with the new one (this takes as long as adding them all again)."
            )
        self._finish_erasures(strict=False)

    # ------------------------------------------------------------------ index upkeep

    def _state(self) -> dict[str, Any]:
        """The SQLite state an index must have been saved at to be reused."""
        db = self._db
        assert db is not None
        return {"store_id": str(db.meta["store_id"]), "generation": db.generation(),
                "count": int(db.count), "encoder": self._fingerprint}

    def _load_index(self) -> VectorIndex:
        try:
            return VectorIndex.load(self._dir, self._params, self._state())
        except UnusableIndexError as exc:
            return self._rebuild_index(str(exc))

    def _rebuild_index(self, reason: str | None) -> VectorIndex:
        """Build the index from SQLite and save it; log a warning with ``reason`` if given."""
        db = self._db
        assert db is not None
        if reason is not None and db.count:
            logger.warning("rebuilding the search index of %s from its %d records: %s",
                           self._dir, db.count, reason)
        index = VectorIndex.build(self._params, db.vector_chunks(), db.count)
        self._index = index
        self._save_index_quietly()
        return index

    def _update_index(self, change: Callable[[], None]) -> None:
        try:
            change()
        except Exception as exc:  # SQLite is already right; make the index match it again
            self._index = self._rebuild_index(f"updating the in-memory index failed ({exc})")

    def _save_index_quietly(self) -> None:
        """Save the index; a failure is only logged (the next open rebuilds it)."""
        try:
            self._index.save(self._dir, self._state())
            self._dirty = 0
        except (OSError, RuntimeError) as exc:
            logger.warning("could not save the search index of %s: %s", self._dir, exc)

    def _finish_erasures(self, strict: bool = True) -> None:
        """Erase deleted records from the directory's other files, then forget the queue.

        ``strict``: raise StoreError if that fails (else log it; the next open retries).
        """
        db = self._db
        assert db is not None
        pending = db.pending_erasures()
        if not pending:
            return
        try:
            erasure.erase_from_user_files(self._dir, pending)
        except Exception as exc:  # noqa: BLE001 - never lock the user out (strict: clean error)
            if not strict:
                logger.warning("erasing %d deleted record(s) from the files of %s failed (%s); "
                               "retried at the next open", len(pending), self._dir, exc)
                return
            raise StoreError(
                f"{len(pending)} deleted record(s) are gone from the store, but erasing them "
                f"from the other files of {self._dir} failed ({exc}); it is retried when the "
                "store is next opened"
            ) from exc
        db.erased([record_id for record_id, _ in pending])
        db.checkpoint()

    # ------------------------------------------------------------------ helpers

    def _iter_rows(
        self, with_vectors: bool, batch_size: int = 1000
    ) -> Iterator[tuple[Record, np.ndarray | None]]:
        """Yield ``(record, vector or None)`` in label order, taking the lock per chunk."""
        check_int(batch_size, "batch_size", 1)
        columns = "label, id, text, fields, timestamp" + (", embedding" if with_vectors else "")
        last = 0
        while True:
            with self._mutex:
                db = self._open_db()
                rows = db.rows_after(last, batch_size, columns)
                vectors = db.decode([row[5] for row in rows]) if with_vectors and rows else None
            if not rows:
                return
            for i, row in enumerate(rows):
                yield record_of(*row[1:5]), None if vectors is None else vectors[i]
            last = rows[-1][0]

    def _embed(self, texts: builtins.list[str]) -> np.ndarray:
        return embed_checked(self._encoder, texts, self._dim)

    def _checked_vectors(self, vectors: object, n: int, what: str = "vectors") -> np.ndarray:
        return checked_vectors(vectors, n, self._dim, what)

    def _open_db(self, quick: bool = False) -> RecordDB:
        """The database, if the store is open and its files are still where they were."""
        if self._closed or self._db is None:
            raise StoreError(f"the store at {self._dir} is closed; open it again to use it")
        if not self._present(quick):
            raise StoreError(
                f"the store at {self._dir} was removed while it was open (e.g. by `hydrahead "
                "forget`); nothing was written. Close it; opening the user again starts an "
                "empty store."
            )
        return self._db

    def _present(self, quick: bool = False) -> bool:
        """True while the database file at our path is the one we opened.

        ``quick`` (for reads): only check that the lock file we hold is still linked, which
        it is not once the directory was removed (an ``fstat``, no path lookup).
        """
        if self._lock_file is not None and hasattr(self._lock_file, "fileno"):
            try:
                if os.fstat(self._lock_file.fileno()).st_nlink == 0:
                    return False
            except OSError:
                return False
            if quick:
                return True
        try:
            stat = (self._dir / DB_FILE).stat()
        except OSError:
            return False
        return (stat.st_dev, stat.st_ino) == self._identity

    def _release(self) -> None:
        """Close the database and drop the directory lock (no index save)."""
        if self._db is not None:
            try:
                self._db.close()
            finally:
                self._db = None
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file drops the flock
            self._lock_file = None


# ---------------------------------------------------------------------- module helpers


def _raise_if_missing(ids: Sequence[str], found: Mapping[str, Any]) -> None:
    missing = [i for i in dict.fromkeys(ids) if i not in found]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise NotFoundError(f"{len(missing)} id(s) not in the store: {shown}{more}")
