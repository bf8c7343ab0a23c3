"""Loading a user's history from files: JSONL records or a LaMP questions file.

A LaMP questions file holds many users' questions, each with the author's profile; importing
one user takes the union of that user's profiles (deduplicated by item id). Importing is
idempotent: records whose id is already stored are replaced, not duplicated. A JSONL file is
read twice, one line at a time: once to check every record (nothing is written if one is bad),
then to add them ``IMPORT_BATCH`` at a time, so memory does not grow with the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import InvalidInputError
from .records import Record, as_records
from .store import HistoryStore
from .tasks import Task, get_task
from .tasks.lamp import LampQuestion, load_lamp_questions
from .users import bind_task, task_spec_reference


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("file:line", object)`` for each line, reading one line at a time.

    Raises:
        InvalidInputError: naming the line that is not UTF-8 or not a JSON object.
    """
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise InvalidInputError(f"no such file: {path}") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInputError(f"{where}: not UTF-8 text (save the file as UTF-8)"
                                        ) from None
            if line.strip():
                yield where, _json_object(line, where)


def _json_object(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{where}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise InvalidInputError(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise InvalidInputError(f"{where}: unreadable JSON ({exc})") from None
    if not isinstance(row, dict):
        raise InvalidInputError(f"{where}: expected a JSON object per line")
    return row


def lamp_profile(questions: Iterable[LampQuestion], user_id: str) -> list[dict[str, Any]]:
    """The union of ``user_id``'s profiles in a LaMP questions list, in first-seen order."""
    items: dict[str, dict[str, Any]] = {}
    for q in questions:
        if q.user_id == user_id:
            for item in q.profile:
                items.setdefault(str(item.get("id")), item)
    if not items:
        raise InvalidInputError(f"no questions of LaMP user {user_id!r} in this file")
    return list(items.values())


def lamp_users(data: str | os.PathLike[str], task: Task, split: str
               ) -> list[tuple[str, list[dict[str, Any]], list[LampQuestion]]]:
    """Each user of a LaMP-format split: history rows and questions, in file order.

    ``data`` is the folder holding ``{split}_questions.json`` (and ``{split}_outputs.json``
    where golds exist), or its parent with a ``<task>/`` folder inside. A user's history is the
    union of their questions' profiles **minus the items that are themselves questions**
    (LaMP-style time splits put a user's earlier questions, answers included, into the later
    questions' profiles; keeping them would leak gold answers).
    """
    folder = Path(data) / task.name if (Path(data) / task.name).is_dir() else Path(data)
    questions = load_lamp_questions(folder / f"{split}_questions.json",
                                    folder / f"{split}_outputs.json")
    by_user: dict[str, list[LampQuestion]] = {}
    for q in questions:
        by_user.setdefault(q.user_id, []).append(q)
    users = []
    for user_id, own in by_user.items():
        asked = {q.id for q in own}
        rows = [r for r in lamp_profile(questions, user_id) if str(r.get("id")) not in asked]
        users.append((user_id, rows, own))
    return users


IMPORT_BATCH = 256
"""Records embedded and written at a time while importing (bounds memory, drives progress)."""


def import_records(store: HistoryStore, task: Task, rows: Iterable[dict[str, Any]], *,
                   progress: bool = False) -> int:
    """Turn task-shaped rows (e.g. LaMP profile items) into records and upsert them.

    Every row is checked before anything is written (all or nothing for bad input); then the
    records are added ``IMPORT_BATCH`` at a time, with a progress bar if ``progress``.
    """
    records = _checked_records(task, rows)
    return _add_in_batches(store, records, len(records), progress)


def _checked_records(task: Task, rows: Iterable[dict[str, Any]]) -> list[Record]:
    """Every row as a record, checked, with repeated ids refused (before anything is written)."""
    return as_records([task.record_from_profile(row) for row in rows])


def _add_in_batches(store: HistoryStore, records: Iterable[Record], total: int,
                    progress: bool) -> int:
    n = 0
    with tqdm(total=total, desc="importing", unit="record", disable=not progress) as bar:
        for batch in _batches(records, IMPORT_BATCH):
            store.add(batch, upsert=True)
            bar.update(len(batch))
            n += len(batch)
    return n


def _batches(items: Iterable[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _jsonl_records(path: Path, task: Task) -> Iterator[Record]:
    for where, row in iter_jsonl(path):
        try:
            yield task.record_from_profile(row)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{where}: {exc}") from None


def _check_jsonl(path: Path, task: Task, labels: str) -> int:
    """Read the whole file once, checking every record, its answer against the task's labels
    (``labels`` policy) and that ids are unique; the count."""
    seen: set[str] = set()
    foreign = []
    for record in _jsonl_records(path, task):
        if record.id in seen:
            raise InvalidInputError(f"{path}: record id {record.id!r} appears twice")
        seen.add(record.id)
        if labels == "refuse" and task.foreign_records([record]):
            foreign.append(record)
    task.check_records(foreign, labels)
    return len(seen)


def import_file(
    user_id: str,
    path: str | os.PathLike[str],
    *,
    task: str | Task,
    lamp_user: str | None = None,
    root: str | os.PathLike[str] | None = None,
    bundle: str | os.PathLike[str] | None = None,
    encoder: Any = None,
    progress: bool = False,
    labels: str = "refuse",
    new_task: bool = False,
) -> int:
    """Import a JSONL file of records or a LaMP questions file into ``user_id``'s store.

    Args:
        user_id: The hydrahead user to import into.
        path: ``*.jsonl`` (one record per line, task-shaped fields) or a LaMP
            ``*_questions.json`` file.
        task: Task name or spec path; recorded for the user (later ``fit``/``ask`` need not
            name it). A user who has other tasks gets it only with ``new_task``.
        lamp_user: The LaMP ``user_id`` whose profile to import (default: ``user_id``).
        root: Data root.
        bundle: Bundle directory (needed unless ``encoder`` is given).
        encoder: An already loaded encoder.
        progress: Show a progress bar.
        labels: Records whose answer is outside the task's labels are refused (``"refuse"``:
            nothing is written) or kept as context (``"context"``; see
            :meth:`~hydrahead.runtime.tasks.Task.check_records`).
        new_task: Add ``task`` to a user who already has other tasks.

    Returns:
        Number of records imported.

    Raises:
        InvalidInputError: a bad record (named), or answers outside the labels (listed).
        TaskError: the user has other tasks and ``new_task`` is off.
    """
    task_obj = task if isinstance(task, Task) else get_task(task)
    p = Path(path)
    if p.suffix == ".jsonl":  # streamed twice: checked whole, then added batch by batch
        total = _check_jsonl(p, task_obj, labels)
        records: Iterable[Record] = _jsonl_records(p, task_obj)
    else:
        records = _checked_records(task_obj, lamp_profile(load_lamp_questions(p),
                                                          lamp_user or user_id))
        task_obj.check_records(records, labels)
        total = len(records)
    if encoder is None:
        from .encoder import Encoder

        if bundle is None:
            raise InvalidInputError("import_file needs a bundle directory or an encoder")
        encoder = Encoder(bundle)
    with HistoryStore.for_user(user_id, encoder=encoder, root=root) as store:
        bind_task(store.directory, task_obj, task_spec_reference(task), new_task=new_task)
        n = _add_in_batches(store, records, total, progress)
    return n
