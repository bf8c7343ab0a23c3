"""Tasks defined by a small JSON file instead of code.

A task spec looks like this (``labels`` only for classification / regression)::

    {
      "name": "GIT_area",
      "kind": "classification",
      "instruction": "Which area tag does this commit relate to? Answer with the tag only.",
      "labels": ["tests", "doc", "gitweb"],
      "text_fields": ["text"],
      "example_template": "{text}",
      "answer_field": "tag",
      "query_marker": "commit:",
      "description": "optional, one line"
    }

``query_marker`` may also be a list (``query_markers``). ``text_fields`` defaults to
``["text"]`` and ``example_template`` to the text fields' placeholders joined by a blank line.
The specs shipped with hydrahead live in ``hydrahead/runtime/data/tasks/*.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import TaskError
from .base import Task

MAX_LABELS = 1000
"""Labels a task spec may have: each prompt lists them all, and each answer is parsed against
them."""
MAX_LABEL_CHARS = 200

SPEC_KEYS = {"name", "kind", "instruction", "labels", "text_fields", "example_template",
             "answer_field", "query_marker", "query_markers", "description"}


@dataclass(frozen=True)
class TaskSpec:
    """A task as written in a JSON spec file (see the module docstring)."""

    name: str
    kind: str
    instruction: str
    labels: tuple[str, ...] = ()
    text_fields: tuple[str, ...] = ("text",)
    example_template: str = ""
    answer_field: str | None = None
    query_markers: tuple[str, ...] = ()
    description: str = ""

    @classmethod
    def from_dict(cls, data: Any, source: str = "task spec") -> TaskSpec:
        """Check and read a spec dict.

        Raises:
            TaskError: Saying which key is missing, unknown or of the wrong type.
        """
        if not isinstance(data, dict):
            raise TaskError(f"{source}: a task spec must be a JSON object, got "
                            f"{type(data).__name__}")
        unknown = sorted(set(data) - SPEC_KEYS)
        if unknown:
            raise TaskError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(SPEC_KEYS)}")
        missing = [k for k in ("name", "kind", "instruction") if not data.get(k)]
        if missing:
            raise TaskError(f"{source}: missing required key(s) {missing}")
        for key in ("name", "kind", "instruction", "example_template", "description"):
            if key in data and not isinstance(data[key], str):
                raise TaskError(f"{source}: {key!r} must be a string")
        if data.get("answer_field") is not None and not isinstance(data["answer_field"], str):
            raise TaskError(f"{source}: 'answer_field' must be a string or null")
        text_fields = _str_tuple(data.get("text_fields", ["text"]), "text_fields", source)
        markers = data.get("query_markers", data.get("query_marker", []))
        if isinstance(markers, str):
            markers = [markers]
        template = data.get("example_template") or "\n\n".join(f"{{{f}}}" for f in text_fields)
        labels = _str_tuple(data.get("labels", []), "labels", source)
        if len(labels) > MAX_LABELS:
            raise TaskError(f"{source}: {len(labels)} labels; a task may have {MAX_LABELS} at "
                            "most (every prompt lists them all)")
        if any(not label.strip() or len(label) > MAX_LABEL_CHARS for label in labels):
            raise TaskError(f"{source}: every label must be non-blank text of at most "
                            f"{MAX_LABEL_CHARS} characters")
        return cls(name=data["name"], kind=data["kind"], instruction=data["instruction"],
                   labels=labels,
                   text_fields=text_fields, example_template=template,
                   answer_field=data.get("answer_field"),
                   query_markers=_str_tuple(markers, "query_marker(s)", source),
                   description=data.get("description", ""))

    @classmethod
    def load(cls, path: str | Path) -> TaskSpec:
        """Read a spec from a JSON file.

        Raises:
            TaskError: The file is missing, not JSON, or not a valid spec.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TaskError(f"task spec file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TaskError(f"task spec {path} is not readable JSON: {exc}") from None
        return cls.from_dict(data, source=str(path))

    def to_task(self) -> Task:
        """The :class:`Task` this spec defines.

        Raises:
            TaskError: The spec is inconsistent (e.g. a classification task without labels).
        """
        return Task(name=self.name, kind=self.kind, instruction=self.instruction,
                    labels=self.labels, text_fields=self.text_fields,
                    answer_field=self.answer_field, example_template=self.example_template,
                    query_markers=self.query_markers, description=self.description)


def builtin_spec_names() -> list[str]:
    """Names of the specs shipped in ``hydrahead/runtime/data/tasks``."""
    folder = resources.files("hydrahead.runtime") / "data" / "tasks"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_builtin_spec(name: str) -> TaskSpec:
    """A spec shipped with hydrahead, by name (e.g. ``"GIT_area"``)."""
    resource = resources.files("hydrahead.runtime") / "data" / "tasks" / f"{name}.json"
    try:
        data = json.loads(resource.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaskError(f"no built-in task spec named {name!r}") from None
    return TaskSpec.from_dict(data, source=f"built-in spec {name}.json")


def _str_tuple(value: Any, key: str, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise TaskError(f"{source}: {key!r} must be a list of strings")
    return tuple(value)
