"""What deleting a history record removes beyond the store's own files.

A user's directory holds copies of history text outside SQLite and the index:

* ``heads/labels.npz`` and ``heads/feedback.npz``: the labels the heads were fitted on and the
  user's feedback, with the texts of their query and item records. Every label group that holds
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

from collections.abc import Sequence
from pathlib import Path

from .label_file import drop_records
from .llm.cache import ResponseCache
from .llm.outbox import OUTBOX_FILENAME, Outbox

__all__ = ["CACHE_FILE", "FEEDBACK_FILE", "HEADS_DIR", "LABELS_FILE", "erase_from_user_files"]

CACHE_FILE = "llm_cache.sqlite"
"""The user's response cache, in the user's directory."""
HEADS_DIR = "heads"
"""The user's heads and their labels, in the user's directory."""
LABELS_FILE = Path(HEADS_DIR) / "labels.npz"
FEEDBACK_FILE = Path(HEADS_DIR) / "feedback.npz"
"""The user's feedback (labelled pairs), used by every fit."""
"""The labels the user's heads were fitted on, relative to the user's directory."""


def erase_from_user_files(directory: Path, erased: Sequence[tuple[str, str]]) -> None:
    """Remove deleted records from the labels, response cache and outbox of ``directory``.

    Args:
        directory: A store (user) directory.
        erased: ``(id, text)`` of each deleted record.
    """
    if not erased:
        return
    ids = [record_id for record_id, _ in erased]
    drop_records(directory / LABELS_FILE, ids)
    drop_records(directory / FEEDBACK_FILE, ids)
    cache = directory / CACHE_FILE
    if cache.exists():
        with ResponseCache(cache) as responses:
            responses.drop_sources(ids)
    outbox = directory / OUTBOX_FILENAME
    if outbox.exists():
        Outbox(outbox).erase(dict(erased))
