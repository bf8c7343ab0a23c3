"""The layout of a user's directory: every file hydrahead keeps for one user, named once.

A user's directory (``<data root>/users/<id>/``, or any directory a store was opened at)
holds::

    history.sqlite3      records, embeddings and change history: the source of truth
    index.hnsw           the HNSW search index (a cache, rebuilt from SQLite)
    index.stamp.json     what the index was saved from (decides whether it is rebuilt)
    store.lock           held while a process has the store open
    user.json            the user's task
    llm_cache.sqlite     LLM responses, each with the ids of the records its prompt held
    outbox.jsonl         every request body exactly as sent (the local ledger)
    heads/<role>.npz     the user's fitted heads (reranker, adapter)
    heads/labels.npz     the labels of the last fit
    heads/feedback.npz   the user's feedback pairs
    heads/choices.json   what the last fit decided (which heads answer, records per prompt)

Every module that reads or writes one of these takes its name from here.
:data:`PRIVATE_TEXT_FILES` names the files *beside* the store's own (SQLite and the index)
that hold copies of history text: deleting a record erases it from each of them
(:mod:`hydrahead.runtime.erasure`, which a test keeps in step with this list).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DB_FILE = "history.sqlite3"
"""The store's SQLite database (records, embeddings, change history, erasure queue)."""
INDEX_FILE = "index.hnsw"
"""The store's HNSW index, a cache rebuilt from SQLite."""
STAMP_FILE = "index.stamp.json"
"""What the index was saved from: the database generation, size and checksum."""
LOCK_FILE = "store.lock"
"""Held (flock/filelock) while a process has the store open."""
USER_CONFIG = "user.json"
"""The user's settings: their task."""
CACHE_FILE = "llm_cache.sqlite"
"""The user's LLM response cache."""
OUTBOX_FILE = "outbox.jsonl"
"""The ledger of every request sent on the user's behalf."""
HEADS_DIR = "heads"
"""The user's heads, their labels and feedback."""
LABELS_FILE = f"{HEADS_DIR}/labels.npz"
"""The labels the user's heads were fitted on."""
FEEDBACK_FILE = f"{HEADS_DIR}/feedback.npz"
"""The user's feedback (labelled pairs), used by every fit."""
CHOICES_FILE = f"{HEADS_DIR}/choices.json"
"""What the last fit decided on held-out recent records (numbers only, no history text)."""

PRIVATE_TEXT_FILES = (LABELS_FILE, FEEDBACK_FILE, CACHE_FILE, OUTBOX_FILE)
"""Files beside SQLite and the index that hold history text, which deletion erases."""


def head_file(role: str) -> str:
    """The file of the user's head for ``role``, relative to the user's directory."""
    return f"{HEADS_DIR}/{role}.npz"


@dataclass(frozen=True)
class UserFiles:
    """The paths of one user's files.

    Args:
        directory: The user's directory.
    """

    directory: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))

    @property
    def db(self) -> Path:
        return self.directory / DB_FILE

    @property
    def index(self) -> Path:
        return self.directory / INDEX_FILE

    @property
    def stamp(self) -> Path:
        return self.directory / STAMP_FILE

    @property
    def lock(self) -> Path:
        return self.directory / LOCK_FILE

    @property
    def config(self) -> Path:
        return self.directory / USER_CONFIG

    @property
    def cache(self) -> Path:
        return self.directory / CACHE_FILE

    @property
    def outbox(self) -> Path:
        return self.directory / OUTBOX_FILE

    @property
    def heads(self) -> Path:
        return self.directory / HEADS_DIR

    @property
    def labels(self) -> Path:
        return self.directory / LABELS_FILE

    @property
    def feedback(self) -> Path:
        return self.directory / FEEDBACK_FILE

    @property
    def choices(self) -> Path:
        return self.directory / CHOICES_FILE

    def head(self, role: str) -> Path:
        """The file of the user's head for ``role``."""
        return self.directory / head_file(role)
