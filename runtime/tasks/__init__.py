"""hydrahead.runtime.tasks: the tasks hydrahead personalises (LaMP 1-7, git-lamp, your own).

``get_task(name_or_path)`` returns a :class:`Task`: a LaMP task by name (``LaMP-1`` .. ``LaMP-7``,
``LaMP-2N``; ``LaMP-2M`` is an alias of ``LaMP-2``), a spec shipped in
``hydrahead/runtime/data/tasks`` (``GIT_area``, ``GIT_subject``), or a task spec JSON file of
your own (see :mod:`hydrahead.runtime.tasks.generic`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TaskError
from .base import Task
from .generic import TaskSpec, builtin_spec_names, load_builtin_spec
from .lamp import LAMP_ALIASES, LAMP_TASKS, LampQuestion, load_lamp_questions

__all__ = ["LampQuestion", "Task", "TaskError", "TaskSpec", "get_task", "list_tasks",
           "load_lamp_questions"]


def list_tasks() -> list[str]:
    """Names ``get_task`` knows (LaMP tasks, then the shipped specs)."""
    return [*LAMP_TASKS, *builtin_spec_names()]


def get_task(name_or_path: str | Path | Task) -> Task:
    """A task by name, or from a task spec JSON file.

    Names are matched exactly first, then case-insensitively. A path (an existing file, or a
    name ending in ``.json``) is read as a task spec.

    Raises:
        TaskError: Unknown name (the message lists the known ones), or an invalid spec file.
    """
    if isinstance(name_or_path, Task):
        return name_or_path
    if isinstance(name_or_path, Path) or str(name_or_path).lower().endswith(".json"):
        return TaskSpec.load(name_or_path).to_task()
    name = str(name_or_path).strip()
    known = list_tasks()
    lookup = {n.lower(): n for n in [*known, *LAMP_ALIASES]}
    canonical = lookup.get(name.lower())
    if canonical is None:
        if Path(name).is_file():
            return TaskSpec.load(name).to_task()
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(known)} "
                        f"(or give the path of a task spec .json file)")
    canonical = LAMP_ALIASES.get(canonical, canonical)
    if canonical in LAMP_TASKS:
        return LAMP_TASKS[canonical]
    return load_builtin_spec(canonical).to_task()
