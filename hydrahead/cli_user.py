"""``hydrahead user ...`` and ``hydrahead tasks``: a user's history, and the tasks it can be for.

Commands that only read a user (``user search``, and ``outbox``/``ask``/``fit``/``forget`` in
:mod:`hydrahead.cli`) refuse an unknown user instead of creating one; only ``user import`` creates
users. Every command that prints data takes ``--json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hydrahead.cli_common import Context, Group, echo_err, pass_ctx, show_progress


def existing_user(obj: Context, user_id: str) -> Path:
    """The directory of a user that exists; raises NotFoundError (creating nothing) if none."""
    from hydrahead.runtime.users import existing_user_path

    return existing_user_path(user_id, obj.root)


def short(text: str, n: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


@click.group(cls=Group)
def user() -> None:
    """Manage a user's history."""


@user.command("import")
@click.argument("user_id")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--task", required=True, help="Task name (e.g. LaMP-2, GIT_area) or a task JSON file."
)
@click.option(
    "--lamp-user", help="For a LaMP questions file: whose profile to import (default: USER_ID)."
)
@click.option("--labels", type=click.Choice(["refuse", "context"]), default="refuse",
              show_default=True,
              help="Records whose answer is outside the task's labels: refuse the import "
                   "(listing them), or keep them as context (examples without an answer, never "
                   "fitted on).")
@click.option("--new-task", is_flag=True,
              help="Add --task to a user who already has other tasks.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def user_import(obj: Context, user_id: str, file: str, task: str, lamp_user: str | None,
                labels: str, new_task: bool, as_json: bool) -> None:
    """Import history records from JSONL or a LaMP questions file (creates the user)."""
    from hydrahead.runtime.importing import import_file

    n = import_file(user_id, file, task=task, lamp_user=lamp_user, root=obj.root,
                    bundle=obj.bundle_dir, progress=show_progress(as_json), labels=labels,
                    new_task=new_task)
    if as_json:
        click.echo(json.dumps({"user": user_id, "imported": n}))
    else:
        click.echo(f"imported {n} records for {user_id}")


@user.command("list")
@click.option("--json", "as_json", is_flag=True,
              help='Print them as JSON: [{"user": ID, "tasks": [NAME, ...]}, ...].')
@pass_ctx
def user_list(obj: Context, as_json: bool) -> None:
    """List the users under the data root, with their tasks."""
    from hydrahead.runtime.errors import TaskError
    from hydrahead.runtime.users import list_users, read_tasks, user_path

    rows = []
    for name in list_users(obj.root):
        try:
            tasks = [t.name for t in read_tasks(user_path(name, obj.root))]
        except TaskError as exc:  # one malformed user.json does not hide the other users
            echo_err(f"{name}: {exc}")
            tasks = []
        rows.append({"user": name, "tasks": tasks})
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        click.echo(f"{row['user']}  {', '.join(row['tasks']) or '(no task)'}")


@user.command("search")
@click.argument("user_id")
@click.argument("query")
@click.option("-k", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True,
              help='Print the hits as JSON: "score" (cosine), "id", "text", "timestamp" and the '
                   'record\'s own "fields".')
@pass_ctx
def user_search(obj: Context, user_id: str, query: str, k: int, as_json: bool) -> None:
    """Search a user's history (nothing leaves the device)."""
    from hydrahead.runtime.bundle import Bundle
    from hydrahead.runtime.encoder import Encoder
    from hydrahead.runtime.store import HistoryStore

    existing_user(obj, user_id)
    with HistoryStore.for_user(
        user_id, encoder=Encoder(Bundle.open(obj.bundle_dir)), root=obj.root
    ) as store:
        hits = store.search(query, k=k)
    if as_json:  # the record's own fields apart: a field named "score" keeps its value
        click.echo(json.dumps([{"score": h.score, "id": h.record.id, "text": h.record.text,
                                "timestamp": h.record.timestamp, "fields": h.record.fields}
                               for h in hits], ensure_ascii=False))
        return
    for hit in hits:
        click.echo(f"{hit.score:.3f}  {hit.record.id}  {short(hit.record.text)}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the tasks as JSON.")
def tasks(as_json: bool) -> None:
    """The tasks hydrahead knows, and the fields each one's history records need."""
    from hydrahead.runtime.tasks import get_task, list_tasks

    rows: list[dict[str, Any]] = []
    for name in list_tasks():
        task = get_task(name)
        rows.append({"name": task.name, "kind": task.kind,
                     "record_fields": ["id", *task.text_fields],
                     "answer_field": task.answer_field, "labels": list(task.labels)})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        needs = ", ".join(row["record_fields"])
        answer = f"; answer in {row['answer_field']!r}" if row["answer_field"] else ""
        labels = f"; labels: {', '.join(row['labels'])}" if row["labels"] else ""
        click.echo(f"{row['name']:12} {row['kind']:14} needs {needs}{answer}{labels}")
    click.echo("A task spec JSON file works too: --task path/to/spec.json")
