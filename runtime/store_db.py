"""The SQLite half of a history store: schema, records, and the rows a delete must still erase.

``history.sqlite3`` (WAL mode, ``PRAGMA user_version`` = :data:`STORE_FORMAT_VERSION`)::

    items(label INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, text, fields JSON,
          timestamp REAL, embedding BLOB float32)
    item_fields(key, value, label)   index of non-null field values, kept by triggers
    meta(key, value)                 store_id, encoder_fingerprint, dim, generation, created
    pending_erasure(id, text)        records deleted from items whose text must still be
                                     erased from the user's other files (see erasure.py)
    changes(seq, id, op, at, text, fields)   every add/update/delete, kept by triggers: the record's
                                     history (a deleted record's texts are blanked)

``label`` is an AUTOINCREMENT alias of the rowid: it survives VACUUM, is never reused, and is
the HNSW label. Triggers bump ``meta.generation`` on every insert, update and delete, whoever
writes, so an index stamp can tell whether it still describes the table.

Deleting is meant to erase: the connection runs with ``secure_delete`` (freed pages are
overwritten with zeros) and :meth:`RecordDB.checkpoint` truncates the WAL, which otherwise keeps
old page images until the next checkpoint.

A :class:`RecordDB` is not thread-safe by itself; :class:`~hydrahead.runtime.store.HistoryStore`
serialises calls.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError, StoreError, StoreVersionError
from .record_filter import compile_filter
from .records import Record
from .user_files import DB_FILE, INDEX_FILE, STAMP_FILE

STORE_FORMAT_VERSION = 1
"""Written to ``PRAGMA user_version``; stores with a higher version are refused untouched."""

IN_CHUNK = 500  # ids or labels per "IN (...)" query (older SQLite allows 999 parameters)
SCAN_CHUNK = 4096  # rows per chunk when streaming the table

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
# Added after format 1 shipped; created where missing (older hydrahead ignores them).
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"  # Unix time, millisecond precision
_ADDED_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS pending_erasure (id TEXT PRIMARY KEY, text TEXT)",
    """CREATE TABLE IF NOT EXISTS changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL,
        op TEXT NOT NULL,
        at REAL NOT NULL,
        text TEXT,
        fields TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS changes_by_id ON changes (id)",
    # Each change keeps the record's fields after it too (the "_2" triggers; the first ones,
    # which kept the text only, are dropped where an older hydrahead made them).
    "DROP TRIGGER IF EXISTS changes_add",
    "DROP TRIGGER IF EXISTS changes_update",
    "DROP TRIGGER IF EXISTS changes_delete",
    f"""CREATE TRIGGER IF NOT EXISTS changes_add_2 AFTER INSERT ON items BEGIN
        INSERT INTO changes (id, op, at, text, fields)
            VALUES (new.id, 'add', {_NOW}, new.text, new.fields);
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS changes_update_2
        AFTER UPDATE OF text, fields, timestamp ON items BEGIN
        INSERT INTO changes (id, op, at, text, fields)
            VALUES (new.id, 'update', {_NOW}, new.text, new.fields);
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS changes_delete_2 AFTER DELETE ON items BEGIN
        UPDATE changes SET text = NULL, fields = NULL WHERE id = old.id;
        INSERT INTO changes (id, op, at, text, fields)
            VALUES (old.id, 'delete', {_NOW}, NULL, NULL);
    END""",
)


class RecordDB:
    """The SQLite database of one store directory (opened by :meth:`open`)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, dim: int) -> None:
        self._conn = conn
        self.path = path
        self.dim = dim
        self.meta: dict[str, Any] = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.count: int = conn.execute("SELECT count(*) FROM items").fetchone()[0]

    @classmethod
    def open(cls, directory: Path, *, fingerprint: str, dim: int) -> RecordDB:
        """Open (creating it owner-only if needed) the database of ``directory``.

        A new database records ``fingerprint`` and ``dim`` as its encoder's.

        Raises:
            StoreVersionError: the database has a newer format.
            StoreError: it is not a readable hydrahead store.
        """
        path = directory / DB_FILE
        if not path.exists():
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA secure_delete = ON")
            _init_schema(conn, path, fingerprint, dim)
            db = cls(conn, path, dim)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(
                f"{path} is not a readable hydrahead store ({exc}); move it away to start afresh"
            ) from exc
        except BaseException:
            conn.close()
            raise
        db.restrict_file_modes()
        return db

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------------ transactions, state

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on any error); SQLite errors become
        :class:`StoreError`."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to {self.path}: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot write to {self.path}: {exc}") from exc
            raise
        self.restrict_file_modes()

    def data_version(self) -> int:
        """SQLite's ``data_version``: changes when another connection commits."""
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def generation(self) -> int:
        """The write counter the triggers keep (changed by every insert, update and delete)."""
        return int(self._conn.execute(
            "SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    def set_encoder(self, fingerprint: str, dim: int) -> None:
        """Record a new encoder (for an empty store, or inside :meth:`reembed`)."""
        with self.transaction() as conn:
            _set_encoder(conn, fingerprint, dim)
        self.meta.update(encoder_fingerprint=fingerprint, dim=dim)

    def reembed(self, embed: Callable[[list[str]], np.ndarray], fingerprint: str, dim: int,
                batch_size: int) -> None:
        """Replace every embedding by ``embed(texts)``, in one transaction (all or nothing)."""
        with self.transaction() as conn:
            last = 0
            while True:
                rows = conn.execute(
                    "SELECT label, text FROM items WHERE label > ? ORDER BY label LIMIT ?",
                    (last, batch_size),
                ).fetchall()
                if not rows:
                    break
                vectors = embed([text for _, text in rows])
                conn.executemany(
                    "UPDATE items SET embedding = ? WHERE label = ?",
                    [(blob(v), label) for v, (label, _) in zip(vectors, rows)],
                )
                last = rows[-1][0]
            _set_encoder(conn, fingerprint, dim)
        self.meta.update(encoder_fingerprint=fingerprint, dim=dim)

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (old page images go with it)."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot checkpoint {self.path}: {exc}") from exc

    def restrict_file_modes(self) -> None:
        """Make the database and its WAL/SHM files owner-only, whatever the umask."""
        for suffix in ("", "-wal", "-shm"):
            try:
                os.chmod(self.path.with_name(DB_FILE + suffix), 0o600)
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------------ writing

    def write_batch(
        self, records: Sequence[Record], vectors: np.ndarray, existing: Mapping[str, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Insert or update one batch in one transaction; return its labels and is-new flags."""
        labels = np.empty(len(records), dtype=np.int64)
        is_new = np.empty(len(records), dtype=bool)
        with self.transaction() as conn:
            for i, (record, vector) in enumerate(zip(records, vectors)):
                values = (
                    record.text,
                    json.dumps(record.fields, ensure_ascii=False, allow_nan=False),
                    record.timestamp,
                    blob(vector),
                )
                label = existing.get(record.id)
                if label is None:
                    cursor = conn.execute(
                        "INSERT INTO items (id, text, fields, timestamp, embedding) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (record.id, *values),
                    )
                    label = cursor.lastrowid
                    assert label is not None  # an INSERT into a rowid table sets it
                else:
                    conn.execute(
                        "UPDATE items SET text = ?, fields = ?, timestamp = ?, embedding = ? "
                        "WHERE label = ?",
                        (*values, label),
                    )
                labels[i], is_new[i] = label, record.id not in existing
        self.count += int(is_new.sum())
        return labels, is_new

    def delete(self, labels: Sequence[int]) -> None:
        """Delete rows by label and queue their text for erasure, in one transaction."""
        with self.transaction() as conn:
            for start in range(0, len(labels), IN_CHUNK):
                chunk = list(labels[start : start + IN_CHUNK])
                marks = ",".join("?" * len(chunk))
                conn.execute(
                    "INSERT OR REPLACE INTO pending_erasure (id, text) "
                    f"SELECT id, text FROM items WHERE label IN ({marks})", chunk)
                conn.execute(f"DELETE FROM items WHERE label IN ({marks})", chunk)
        self.count -= len(labels)

    def changes(self, record_id: str | None, limit: int | None
                ) -> list[tuple[int, str, str, float, str | None, str | None]]:
        """``(seq, id, op, at, text, fields)`` of the recorded changes, oldest first (the last
        ``limit``), of one record or all; ``fields`` is the fields' JSON (None for a delete,
        for a deleted record's entries, and for entries older than the fields column)."""
        where, params = ("WHERE id = ?", [record_id]) if record_id is not None else ("", [])
        rows = self._conn.execute(
            f"SELECT seq, id, op, at, text, fields FROM changes {where} "
            "ORDER BY seq DESC LIMIT ?",
            [*params, -1 if limit is None else limit]).fetchall()
        return rows[::-1]

    def pending_erasures(self) -> list[tuple[str, str]]:
        """``(id, text)`` of deleted records not yet erased from the user's other files."""
        return self._conn.execute("SELECT id, text FROM pending_erasure").fetchall()

    def erased(self, ids: Sequence[str]) -> None:
        """Forget erasures that are done (their rows are zeroed by ``secure_delete``)."""
        with self.transaction() as conn:
            conn.executemany("DELETE FROM pending_erasure WHERE id = ?", [(i,) for i in ids])

    # ------------------------------------------------------------------ reading

    def labels_of(self, ids: Sequence[str]) -> dict[str, int]:
        return {id_: row[1] for id_, row in self.rows_by("id", ids, "id, label").items()}

    def rows_by(self, key: str, values: Sequence[Any], columns: str) -> dict[Any, tuple]:
        """Rows whose ``key`` column is in ``values``, keyed by it (``columns`` starts with it)."""
        unique = list(dict.fromkeys(values))
        rows: dict[Any, tuple] = {}
        for start in range(0, len(unique), IN_CHUNK):
            chunk = unique[start : start + IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in self._conn.execute(
                f"SELECT {columns} FROM items WHERE {key} IN ({marks})", chunk
            ):
                rows[row[0]] = row
        return rows

    def record_at(self, label: int) -> Record | None:
        row = self._conn.execute(
            "SELECT id, text, fields, timestamp FROM items WHERE label = ?", (label,)
        ).fetchone()
        return None if row is None else record_of(*row)

    def page(self, limit: int | None, offset: int) -> list[Record]:
        rows = self._conn.execute(
            "SELECT id, text, fields, timestamp FROM items ORDER BY label LIMIT ? OFFSET ?",
            (-1 if limit is None else limit, offset),
        ).fetchall()
        return [record_of(*row) for row in rows]

    def rows_after(self, last: int, limit: int, columns: str) -> list[tuple]:
        """Up to ``limit`` rows with a label above ``last``, in label order."""
        return self._conn.execute(
            f"SELECT {columns} FROM items WHERE label > ? ORDER BY label LIMIT ?", (last, limit)
        ).fetchall()

    def labels_matching(self, filter: Mapping[str, Any]) -> list[int]:
        """Labels of records whose fields match ``filter``, in label order: field equalities
        (``fields.get(key) == value``) and mem0's operators (:mod:`~hydrahead.runtime.record_filter`).

        Uses the item_fields index, where JSON true/false are 1/0: numbers and bools compare
        numerically, as in Python, and strings only equal strings. None matches a missing
        field or a null (item_fields holds no nulls).
        """
        condition, params = compile_filter(filter)
        return [row[0] for row in self._conn.execute(
            f"SELECT label FROM items WHERE {condition} ORDER BY label", params)]

    def vector_chunks(
        self,
        labels: Sequence[int] | None = None,
        predicate: Callable[[Record], bool] | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(labels, vectors)`` chunks: all records, given labels, or those passing
        ``predicate``."""
        if labels is not None:
            for start in range(0, len(labels), IN_CHUNK):
                by_label = self.rows_by("label", labels[start : start + IN_CHUNK],
                                        "label, embedding")
                chunk = sorted(by_label.values())
                yield label_array(chunk), self.decode([b for _, b in chunk])
            return
        columns = "label, embedding, id, text, fields, timestamp" if predicate else (
            "label, embedding")
        last = 0
        while rows := self.rows_after(last, SCAN_CHUNK, columns):
            chunk_labels, vectors = label_array(rows), self.decode([row[1] for row in rows])
            if predicate is not None:
                keep = [i for i, row in enumerate(rows) if predicate(record_of(*row[2:]))]
                chunk_labels, vectors = chunk_labels[keep], vectors[keep]
            yield chunk_labels, vectors
            last = rows[-1][0]

    def decode(self, blobs: Sequence[bytes]) -> np.ndarray:
        """Stored embedding blobs -> (n, dim) float32 array (a copy, safe to modify)."""
        size = 4 * self.dim
        if any(len(b) != size for b in blobs):
            raise StoreError(
                f"{self.path} holds an embedding that is not {self.dim} float32 values; the "
                "database was modified outside hydrahead"
            )
        joined = b"".join(blobs)
        return np.frombuffer(joined, dtype="<f4").astype(np.float32).reshape(len(blobs), self.dim)


# ---------------------------------------------------------------------- helpers


def record_of(id: str, text: str, fields: str, timestamp: float | None) -> Record:
    """A record from its stored columns (checked when it was written)."""
    return Record._trusted(id, text, json.loads(fields), timestamp)


def blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def label_array(rows: Sequence[tuple]) -> np.ndarray:
    return np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))


def refuse_newer_format(directory: Path) -> None:
    """Raise StoreVersionError if the database of ``directory`` has a newer format, reading it
    read-only (so that nothing is written to a store this version does not understand)."""
    path = directory / DB_FILE
    uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"{path} is not a readable SQLite database ({exc}); move it away to start afresh"
        ) from exc
    if version > STORE_FORMAT_VERSION:
        raise StoreVersionError(_newer_format_message(directory, version))


def refuse_lost_database(directory: Path) -> None:
    """Refuse a directory whose database is missing or empty while its index shows records.

    Starting afresh there would overwrite the index, the only evidence of what was lost.
    """
    db = directory / DB_FILE
    if db.exists() and db.stat().st_size > 0:
        return
    index, stamp = directory / INDEX_FILE, directory / STAMP_FILE
    if not (index.exists() or stamp.exists()):
        return
    try:
        saved = json.loads(stamp.read_bytes())["state"]
        count = int(saved["count"])
    except (OSError, ValueError, TypeError, KeyError):
        count = None
    if count == 0:
        return  # the index was saved empty: nothing was lost
    state = "missing" if not db.exists() else "empty (0 bytes)"
    held = f"{count} records" if count is not None else "records"
    raise StoreError(
        f"the store at {directory} lost its database: {DB_FILE} is {state}, but its search "
        f"index ({INDEX_FILE}, saved with {held}) shows it held data. Nothing was changed. "
        f"Restore {DB_FILE} from a backup; or, to start this store afresh, delete {INDEX_FILE} "
        f"and {STAMP_FILE} (or forget the user)."
    )


def _init_schema(conn: sqlite3.Connection, path: Path, fingerprint: str, dim: int) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > STORE_FORMAT_VERSION:
            raise StoreVersionError(_newer_format_message(path.parent, version))
        if version < STORE_FORMAT_VERSION:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise StoreError(f"{path} is a SQLite database but not a hydrahead store")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("store_id", uuid.uuid4().hex), ("encoder_fingerprint", fingerprint),
                 ("dim", dim), ("generation", 0), ("created", time.time())],
            )
            conn.execute(f"PRAGMA user_version = {STORE_FORMAT_VERSION}")
        for statement in _ADDED_SCHEMA:
            if statement.startswith("DROP TRIGGER IF EXISTS changes_add"):
                _add_column(conn, "changes", "fields", "TEXT")  # before the triggers use it
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _add_column(conn: sqlite3.Connection, table: str, column: str, kind: str) -> None:
    """Add ``column`` to ``table`` where an older hydrahead made the table without it."""
    if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _set_encoder(conn: sqlite3.Connection, fingerprint: str, dim: int) -> None:
    conn.executemany("UPDATE meta SET value = ? WHERE key = ?",
                     [(fingerprint, "encoder_fingerprint"), (dim, "dim")])


def _newer_format_message(directory: Path, version: int) -> str:
    return (
        f"the store at {directory} has format version {version}, but this hydrahead reads "
        f"version {STORE_FORMAT_VERSION} at most; upgrade hydrahead to open it "
        "(the store was left untouched)"
    )
