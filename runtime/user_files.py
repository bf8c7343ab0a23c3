"""The layout of a user's directory: every file hydrahead keeps for one user, named once.

A user's directory (``<data root>/users/<id>/``, or any directory a store was opened at)
holds::

    history.sqlite3      records, embeddings and change history: the source of truth
    index.hnsw           the HNSW search index (a cache, rebuilt from SQLite)
    index.stamp.json     what the index was saved from (decides whether it is rebuilt)
    store.lock           held while a process has the store open
    user.json            the user's tasks (one history can serve several)
    llm_cache.sqlite     LLM responses, each with the ids of the records its prompt held
    outbox.jsonl         every request body exactly as sent (the local ledger)
    heads/<task>/        one directory per task of the user (:func:`task_key` names it):
        <role>.npz       the user's fitted heads for that task (reranker, adapter)
        labels.npz       the labels of the task's last fit
        feedback.npz     the user's feedback pairs for the task
        choices.json     what the last fit decided (which heads answer, records per prompt)

Every module that reads or writes one of these takes its name from here.
:data:`PRIVATE_TEXT_FILES` names the files *beside* the store's own (SQLite and the index)
that hold copies of history text: deleting a record erases it from each of them
(:mod:`hydrahead.runtime.erasure`, which a test keeps in step with this list).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
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
"""The user's settings: their tasks."""
CACHE_FILE = "llm_cache.sqlite"
"""The user's LLM response cache."""
OUTBOX_FILE = "outbox.jsonl"
"""The ledger of every request sent on the user's behalf."""
OUTBOX_TOTALS_FILE = "outbox.totals.json"
"""Counts (per day and model: requests, bytes, tokens; no text) of the outbox entries dropped to
keep the outbox within its size bound."""
HEADS_DIR = "heads"
"""The user's heads, their labels and feedback: one directory per task inside."""
LABELS_FILE = "labels.npz"
"""The labels a task's heads were fitted on (in the task's heads directory)."""
FEEDBACK_FILE = "feedback.npz"
"""The user's feedback for a task (labelled pairs), used by every fit (in the task's heads
directory)."""
CHOICES_FILE = "choices.json"
"""What a task's last fit decided on held-out recent records (numbers only, no history text)."""
HEADS_FILES = (LABELS_FILE, FEEDBACK_FILE, CHOICES_FILE)
"""The files of a task's heads directory besides the heads themselves."""

PRIVATE_TEXT_FILES = (LABELS_FILE, FEEDBACK_FILE, CACHE_FILE, OUTBOX_FILE)
"""Files that hold history text besides SQLite and the index, which deletion erases: the
labels and feedback of every task's heads directory, the cache and the outbox."""


def head_file(role: str) -> str:
    """The file of the user's head for ``role``, relative to its task's heads directory."""
    return f"{role}.npz"


def task_key(task_name: str) -> str:
    """The name of a task's heads directory: the task's name with anything but letters,
    digits, ``_``, ``-`` and ``.`` replaced by ``_`` (at most 64 characters, never ``.``/``..``)."""
    key = re.sub(r"[^A-Za-z0-9_.-]", "_", task_name)[:64]
    return key if key.strip(".") else "_" + key


@dataclass(frozen=True)
class UserFiles:
    """The paths of one user's files.

    Args:
        directory: The user's directory.
        task: The name of the task whose heads, labels, feedback and choices
            :attr:`heads` and the paths under it are (``None``: no task; those paths then
            raise).
    """

    directory: Path
    task: str | None = None

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
    def heads_root(self) -> Path:
        """The directory of every task's heads directory."""
        return self.directory / HEADS_DIR

    @property
    def heads(self) -> Path:
        """This task's heads directory."""
        if self.task is None:
            raise ValueError("UserFiles was made without a task: it names no heads directory")
        return self.heads_root / task_key(self.task)

    def task_dirs(self) -> Iterator[Path]:
        """Every task's heads directory there is, and ``heads/`` itself while it still holds
        files of the one-task layout (before a user is opened again)."""
        root = self.heads_root
        if root.is_dir():
            yield root
            yield from sorted(p for p in root.iterdir() if p.is_dir())

    @property
    def labels(self) -> Path:
        return self.heads / LABELS_FILE

    @property
    def feedback(self) -> Path:
        return self.heads / FEEDBACK_FILE

    @property
    def choices(self) -> Path:
        return self.heads / CHOICES_FILE

    def head(self, role: str) -> Path:
        """The file of the user's head for ``role`` (this task's)."""
        return self.heads / head_file(role)
