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

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from .label_file import drop_records
from .llm.cache import ResponseCache
from .llm.outbox import Outbox
from .user_files import (CACHE_FILE, FEEDBACK_FILE, LABELS_FILE, OUTBOX_FILE, PRIVATE_TEXT_FILES,
                         UserFiles)

__all__ = ["ERASERS", "erase_from_user_files"]

logger = logging.getLogger(__name__)


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

    Erasure never depends on a file being readable: a file whose eraser fails (damaged,
    malformed, of the wrong kind) is removed instead, with a warning naming it, since it may
    hold a deleted record's text. (Labels, feedback and the cache are rebuilt by the next fit
    and by new requests; a removed outbox starts again empty.)

    Args:
        directory: A store (user) directory.
        erased: ``(id, text)`` of each deleted record.

    Raises:
        OSError: a file that could not be erased could not be removed either.
    """
    if not erased:
        return
    records = dict(erased)
    files = UserFiles(directory)
    task_dirs = list(files.task_dirs())
    for name in PRIVATE_TEXT_FILES:
        where = task_dirs if name in (LABELS_FILE, FEEDBACK_FILE) else [directory]
        for folder in where:
            path = folder / name
            try:
                ERASERS[name](path, records)
            except Exception as exc:  # noqa: BLE001 - any failure: the file goes instead
                _remove(path, exc)


def _remove(path: Path, why: Exception) -> None:
    """Remove a file (or whatever stands at its path) that could not be erased."""
    logger.warning("%s could not be erased (%s: %s); it is removed instead, as it may hold "
                   "the text of a deleted record", path, type(why).__name__, str(why)[:200])
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    for sidecar in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        sidecar.unlink(missing_ok=True)
