"""What deleting a history record removes beyond the store's own files.

A user's directory holds copies of history text outside SQLite and the index:

* ``heads/<task>/labels.npz`` and ``heads/<task>/feedback.npz`` of every task of the user: the
  labels the heads were fitted on and the user's feedback, with the texts of their query and item records. Every label group that holds
  a deleted record is dropped.
* ``llm_cache.sqlite``: answers to prompts that held the record. Each entry lists the records its
  prompt held (the ``sources`` the client was given); entries listing a deleted record are
  dropped (and SQLite overwrites the freed pages).
* ``outbox.jsonl``: the ledger of what left the device. It keeps every entry (the fact that a
  request was sent, when, where and how many bytes) but the deleted record's text is replaced by
  :data:`~hydrahead.runtime.llm.outbox.ERASED` wherever it appears; where a request listed the
  record but its text cannot be found verbatim (e.g. cut short in the prompt), the request's
  whole message text is replaced.

:class:`~hydrahead.runtime.store.HistoryStore` calls :func:`erase_from_user_files` after every
delete (and, for a delete a crash interrupted, when it is next opened).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .label_file import drop_records
from .llm.cache import ResponseCache
from .llm.outbox import Outbox
from .user_files import (CACHE_FILE, FEEDBACK_FILE, LABELS_FILE, OUTBOX_FILE, PRIVATE_TEXT_FILES,
                         UserFiles)

__all__ = ["ERASERS", "erase_from_user_files"]


def _drop_label_groups(path: Path, erased: dict[str, str]) -> None:
    drop_records(path, list(erased))


def _drop_cache_entries(path: Path, erased: dict[str, str]) -> None:
    if path.exists():
        with ResponseCache(path) as responses:
            responses.drop_sources(list(erased))


def _blank_outbox_texts(path: Path, erased: dict[str, str]) -> None:
    if path.exists():
        Outbox(path).erase(erased)


ERASERS: dict[str, Callable[[Path, dict[str, str]], None]] = {
    LABELS_FILE: _drop_label_groups,
    FEEDBACK_FILE: _drop_label_groups,
    CACHE_FILE: _drop_cache_entries,
    OUTBOX_FILE: _blank_outbox_texts,
}
"""How each file of :data:`~hydrahead.runtime.user_files.PRIVATE_TEXT_FILES` forgets records
(file name -> ``eraser(path, {id: text})``)."""


def erase_from_user_files(directory: Path, erased: Sequence[tuple[str, str]]) -> None:
    """Remove deleted records from every file of ``directory`` that holds history text.

    Args:
        directory: A store (user) directory.
        erased: ``(id, text)`` of each deleted record.
    """
    if not erased:
        return
    records = dict(erased)
    files = UserFiles(directory)
    task_dirs = list(files.task_dirs())
    for name in PRIVATE_TEXT_FILES:
        where = task_dirs if name in (LABELS_FILE, FEEDBACK_FILE) else [directory]
        for folder in where:
            ERASERS[name](folder / name, records)
