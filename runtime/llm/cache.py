"""A disk cache of LLM answers, so a repeated deterministic request costs nothing.

One SQLite file (owner-only, 0600). The key is the sha256 of the canonical JSON of the
request body as the client builds it (model, messages, n, temperature, max_tokens, seed):
what the LLM sees, and not where it is served (the same model behind another port or host
answers from the same entries). The body never contains the API key. The value is the list of
texts that came back, the model that answered, whether it was the offline simulator, and when
it was stored. Beside each entry, the ids of the history records its prompt held (the
``sources`` the client was told), so that deleting a record drops the answers that came from it
(:meth:`ResponseCache.drop_sources`); SQLite runs with ``secure_delete``, so dropped entries are
overwritten, not just unlinked. Format 1 caches kept no sources: opening one drops its entries.

What gets cached is the client's decision (see :class:`~hydrahead.runtime.llm.client.LLMClient`):
only requests whose answer is meant to be reproducible.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Mapping

from ..errors import LLMError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS responses (
        key       TEXT PRIMARY KEY,
        texts     TEXT NOT NULL,
        model     TEXT NOT NULL,
        simulated INTEGER NOT NULL,
        created   REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS sources (
        record_id TEXT NOT NULL,
        key       TEXT NOT NULL,
        PRIMARY KEY (record_id, key)
    ) WITHOUT ROWID""",
)
_IN_CHUNK = 500


@dataclass(frozen=True)
class CachedResponse:
    """One cached answer.

    Attributes:
        texts: The completion texts, in the order they were returned.
        model: The model name the server reported.
        simulated: Whether the answer came from hydrahead's offline simulator.
        created: Unix time when it was stored.
    """

    texts: list[str]
    model: str
    simulated: bool
    created: float


class ResponseCache:
    """SQLite-backed cache of completion texts, safe to share between threads of one process.

    Args:
        path: The SQLite file; created owner-only (0600) with its parent directory if needed.

    Raises:
        LLMError: if the file is not a hydrahead response cache or was written by a newer
            hydrahead.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Create the file ourselves so that it is owner-only from its first byte (SQLite gives
        # its journal files the same mode as the database).
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        self._conn = sqlite3.connect(self.path, check_same_thread=False)
        try:
            self._conn.execute("PRAGMA secure_delete = ON")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > FORMAT_VERSION:
                raise LLMError(
                    f"response cache {self.path} was written by a newer hydrahead (format "
                    f"{version}, this one reads {FORMAT_VERSION}); upgrade or use another path"
                )
            with self._conn:
                for statement in _SCHEMA:
                    self._conn.execute(statement)
                if 0 < version < FORMAT_VERSION:  # entries without sources cannot be erased
                    dropped = self._conn.execute("DELETE FROM responses").rowcount
                    log.info("response cache %s: dropped %d entries of format %d (they do not "
                             "say which history records their prompts held)",
                             self.path, dropped, version)
                self._conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise LLMError(
                f"response cache {self.path} cannot be used ({exc}); delete the file or pass "
                "another cache path"
            ) from exc
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def rebuilt_if_damaged(cls, path: str | os.PathLike[str]) -> ResponseCache:
        """Open the cache at ``path``; one that is not a SQLite database (or a damaged one) is
        removed, with a warning naming it, and started again empty: it is only a cache.

        Raises:
            LLMError: the cache was written by a newer hydrahead (it is left as it is).
        """
        try:
            return cls(path)
        except LLMError as exc:
            if not isinstance(exc.__cause__, sqlite3.DatabaseError):
                raise
            log.warning("%s; it is removed and started again empty", exc)
            for name in (str(path), f"{path}-wal", f"{path}-shm", f"{path}-journal"):
                Path(name).unlink(missing_ok=True)
            return cls(path)

    @staticmethod
    def key(body: Mapping[str, Any]) -> str:
        """The cache key of a request: sha256 hex of the canonical JSON of its body."""
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def get(self, key: str) -> CachedResponse | None:
        """Return the cached answer for ``key``, or ``None``.

        A row that is not what :meth:`put` writes (texts not a JSON list of strings, a model
        that is not text) is a miss, and is dropped with a warning: the request is sent again.

        Raises:
            LLMError: if the cache file cannot be read.
        """
        with self._lock, self._errors():
            row = self._conn.execute(
                "SELECT texts, model, simulated, created FROM responses WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        try:
            texts = json.loads(row[0]) if isinstance(row[0], str) else None
        except (ValueError, RecursionError):
            texts = None
        if (not isinstance(texts, list) or not all(isinstance(t, str) for t in texts)
                or not isinstance(row[1], str) or not isinstance(row[3], (int, float))):
            log.warning("response cache %s: a malformed row (key %s...) is dropped; the "
                        "request is sent again", self.path, key[:12])
            with self._lock, self._errors(), self._conn:
                self._conn.execute("DELETE FROM responses WHERE key = ?", (key,))
                self._conn.execute("DELETE FROM sources WHERE key = ?", (key,))
            return None
        return CachedResponse(texts, row[1], bool(row[2]), float(row[3]))

    def put(self, key: str, texts: list[str], *, model: str, simulated: bool,
            sources: Iterable[str] = ()) -> None:
        """Store (or replace) the answer for ``key``.

        Args:
            key: :meth:`key` of the request.
            texts: The answer's texts.
            model: The model that answered.
            simulated: Whether the offline simulator answered.
            sources: Ids of the history records the prompt held (see :meth:`drop_sources`).

        Raises:
            LLMError: if the cache file cannot be written.
        """
        with self._lock, self._errors(), self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses (key, texts, model, simulated, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, json.dumps(list(texts), ensure_ascii=False), model, int(simulated),
                 time.time()),
            )
            self._conn.execute("DELETE FROM sources WHERE key = ?", (key,))
            self._conn.executemany("INSERT OR IGNORE INTO sources (record_id, key) VALUES (?, ?)",
                                   [(record_id, key) for record_id in sources])

    def drop_sources(self, record_ids: Sequence[str]) -> int:
        """Drop every answer whose prompt held one of ``record_ids``; return how many."""
        dropped = 0
        with self._lock, self._errors(), self._conn:
            for start in range(0, len(record_ids), _IN_CHUNK):
                chunk = list(record_ids[start : start + _IN_CHUNK])
                marks = ",".join("?" * len(chunk))
                keys = [row[0] for row in self._conn.execute(
                    f"SELECT DISTINCT key FROM sources WHERE record_id IN ({marks})", chunk)]
                self._conn.executemany("DELETE FROM sources WHERE key = ?", [(k,) for k in keys])
                dropped += sum(self._conn.execute("DELETE FROM responses WHERE key = ?",
                                                  (k,)).rowcount for k in keys)
        return dropped

    def clear(self) -> int:
        """Delete every entry; return how many there were."""
        with self._lock, self._errors(), self._conn:
            self._conn.execute("DELETE FROM sources")
            return self._conn.execute("DELETE FROM responses").rowcount

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise LLMError(f"response cache {self.path} cannot be used ({exc})") from exc

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"
