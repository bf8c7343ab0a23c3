"""Users under a data root: listing, the tasks each user's history serves, forgetting.

Each user directory holds ``user.json`` with the user's tasks: for each, its name (which names
the task's heads directory, ``heads/<task>/``) and how to open it again (a task name, or a task
spec file's absolute path), so that ``fit`` and ``ask`` need not be told again. One history can
serve several tasks; each has its own heads, labels and feedback. A task is added to a user only
when asked (``new_task=True``, ``--new-task``): opening a user with another task is refused
rather than answered with the first task's heads.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from .dir_lock import lock_directory
from .errors import NotFoundError, StoreError, TaskError
from .paths import atomic_write_bytes, data_root, user_dir, validate_user_id
from .tasks import Task, get_task
from .user_files import HEADS_DIR, HEADS_FILES, USER_CONFIG, task_key


def list_users(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Ids of the users that have a directory under the data root."""
    users = data_root(root) / "users"
    return sorted(d.name for d in users.iterdir() if d.is_dir()) if users.is_dir() else []


@dataclass(frozen=True)
class UserTask:
    """One task of a user.

    Attributes:
        name: The task's name (its heads directory is ``heads/<task_key(name)>/``).
        spec: What opens it again with ``get_task``: a task name, or a spec file's absolute path.
    """

    name: str
    spec: str


def task_spec_reference(task: str | Task) -> str:
    """What to record for ``task``: a task spec file by its absolute path (so that commands run
    from another directory find it), any other task by name."""
    if isinstance(task, Task):
        return task.name
    return str(Path(task).resolve()) if Path(task).is_file() else task


def read_tasks(directory: str | os.PathLike[str]) -> list[UserTask]:
    """The tasks recorded in a user directory (none when there is no ``user.json``); reads the
    one-task ``{"task": ...}`` of earlier versions too.

    Raises:
        TaskError: ``user.json`` is unreadable or malformed (the message names the file and the
            way out; the history itself is in SQLite and untouched).
    """
    path = Path(directory) / USER_CONFIG
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError, RecursionError) as exc:
        raise TaskError(_malformed(path, f"it cannot be read ({type(exc).__name__})")) from None
    if isinstance(data, dict) and "tasks" not in data and isinstance(data.get("task"), str):
        return [UserTask(_name_of(data["task"]), data["task"])]  # the one-task layout
    tasks = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(tasks, list) or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) and t["name"]
            and isinstance(t.get("spec"), str) and t["spec"] for t in tasks):
        raise TaskError(_malformed(path, 'it is not {"tasks": [{"name": ..., "spec": ...}]}'))
    return [UserTask(t["name"], t["spec"]) for t in tasks]


def _malformed(path: Path, why: str) -> str:
    return (f"{path} is malformed: {why}. Delete it and name the task again (--task, "
            "task=...); the user's records are kept in SQLite")


def _name_of(spec: str) -> str:
    try:
        return get_task(spec).name
    except TaskError:  # a spec file that moved: its file name stands in
        return Path(spec).stem if spec.lower().endswith(".json") else spec


def bind_task(directory: str | os.PathLike[str], task: Task, spec: str | None = None, *,
              new_task: bool = False) -> list[UserTask]:
    """Record that the user at ``directory`` has ``task`` (nothing to do when it does).

    A user without tasks gets it. A user with other tasks gets it only with ``new_task``:
    otherwise opening them with another task would answer with heads fitted for the first.
    Heads files of the one-task layout (directly in ``heads/``) move into their task's
    directory first.

    Args:
        directory: The user's directory.
        task: The task.
        spec: How to open it again (default: its name; see :func:`task_spec_reference`).
        new_task: Add the task to a user who has others.

    Returns:
        The user's tasks after this.

    Raises:
        TaskError: the user has other tasks and ``new_task`` is off (the message lists them),
            or ``user.json`` is malformed.
    """
    directory = Path(directory)
    tasks = read_tasks(directory)
    if tasks:
        _move_one_task_heads(directory, tasks[0].name)
    if any(t.name == task.name for t in tasks):
        return tasks
    if tasks and not new_task:
        raise TaskError(
            f"user {directory.name!r} has the task(s) {[t.name for t in tasks]}, not "
            f"{task.name!r}. Each task keeps its own heads, labels and feedback: to serve "
            f"{task.name!r} from this history too, add it with new_task=True (CLI: --new-task)")
    _move_one_task_heads(directory, task.name)  # heads of a user.json that was lost
    tasks = [*tasks, UserTask(task.name, spec or task.name)]
    atomic_write_bytes(directory / USER_CONFIG,
                       json.dumps({"tasks": [asdict(t) for t in tasks]}).encode("utf-8"))
    return tasks


def _move_one_task_heads(directory: Path, name: str) -> None:
    heads = directory / HEADS_DIR
    if not heads.is_dir():
        return
    old = [p for p in heads.iterdir() if p.is_file()
           and (p.name in HEADS_FILES or p.suffix == ".npz")]
    if old:
        target = heads / task_key(name)
        target.mkdir(mode=0o700, exist_ok=True)
        for path in old:
            os.replace(path, target / path.name)


def remember_task(user_id: str, task: str | Task, root: str | os.PathLike[str] | None = None,
                  *, new_task: bool = False) -> None:
    """Record ``task`` for ``user_id`` (see :func:`bind_task`)."""
    task_obj = get_task(task)
    bind_task(user_dir(user_id, root), task_obj, task_spec_reference(task), new_task=new_task)


def resolve_task(user_id: str, task: str | None, root: str | os.PathLike[str] | None = None) -> str:
    """Return ``task`` if given, else the user's one recorded task.

    Raises:
        TaskError: no task given and the user has none, or several (the message lists them).
    """
    if task:
        return task
    tasks = read_tasks(user_path(user_id, root))
    if len(tasks) == 1:
        return tasks[0].spec
    if tasks:
        raise TaskError(f"user {user_id!r} has several tasks ({', '.join(t.name for t in tasks)})"
                        "; say which with --task")
    raise TaskError(
        f"no task recorded for user {user_id!r}; pass --task (e.g. --task GIT_area) or "
        "import the history with `hydrahead user import USER FILE --task TASK`"
    )


def forget_user(user_id: str, root: str | os.PathLike[str] | None = None) -> bool:
    """Delete everything stored for ``user_id``. Returns whether there was anything.

    Takes the store's lock first, so a user cannot be forgotten while a store (or a
    personalizer) has them open, in this process or another.

    Raises:
        StoreError: the user is open elsewhere (nothing was removed), or the directory could
            not be removed completely.
    """
    path = user_path(user_id, root)
    if not path.exists():
        return False
    remove_store_directory(path)
    return True


def remove_store_directory(path: Path) -> None:
    """Remove a store directory and everything in it, holding its lock while doing so.

    Raises:
        StoreError: the store is open (nothing was removed), or removing failed part way.
    """
    lock = lock_directory(path)
    try:
        shutil.rmtree(path)
    except OSError as exc:
        raise StoreError(f"could not remove all of {path}: {exc}") from exc
    finally:
        lock.close()


def user_path(user_id: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The directory of ``user_id`` (not created)."""
    return data_root(root) / "users" / validate_user_id(user_id)


def existing_user_path(user_id: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The directory of a user that exists (for commands that only read).

    Raises:
        NotFoundError: there is no such user under the data root (nothing is created).
    """
    path = user_path(user_id, root)
    if not path.is_dir():
        raise NotFoundError(
            f"no user {user_id!r} under {data_root(root)}; import a history first with "
            "`hydrahead user import`")
    return path
