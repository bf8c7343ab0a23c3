"""Users under a data root: listing, the task each user's history belongs to, forgetting.

Each user directory holds ``user.json`` with the task name (or task-spec path) that the history
was imported with, so ``fit`` and ``ask`` need not be told again.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .dir_lock import lock_directory
from .errors import NotFoundError, StoreError, TaskError
from .paths import atomic_write_bytes, data_root, user_dir, validate_user_id
from .user_files import USER_CONFIG


def list_users(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Ids of the users that have a directory under the data root."""
    users = data_root(root) / "users"
    return sorted(d.name for d in users.iterdir() if d.is_dir()) if users.is_dir() else []


def remember_task(user_id: str, task: str, root: str | os.PathLike[str] | None = None) -> None:
    """Record which task ``user_id``'s history belongs to."""
    path = user_dir(user_id, root) / USER_CONFIG
    atomic_write_bytes(path, json.dumps({"task": task}).encode("utf-8"))


def resolve_task(user_id: str, task: str | None, root: str | os.PathLike[str] | None = None) -> str:
    """Return ``task`` if given, else the task recorded for ``user_id``.

    Raises:
        TaskError: if neither is known.
    """
    if task:
        return task
    path = user_path(user_id, root) / USER_CONFIG
    try:
        return str(json.loads(path.read_text("utf-8"))["task"])
    except (OSError, ValueError, KeyError):
        raise TaskError(
            f"no task recorded for user {user_id!r}; pass --task (e.g. --task GIT_area) or "
            "import the history with `hydrahead user import USER FILE --task TASK`"
        ) from None


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
