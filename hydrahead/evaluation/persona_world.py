"""A synthetic persona world in the LaMP file format, for benchmarks and tests without real data.

Every user is a git contributor who tags commits with GIT_area's area tags. One trait makes
prompt-based methods stumble and is learnable from the user's own history: **a convention that
changed**. For one topic (the one the user works on most, lately) the user used to file commits
under the obvious tag and, for their most recent ``drift`` share of it, files them under a
second-choice tag instead (e.g. completion work as ``tests``; the texts mention both). New
commits follow the new convention. Retrieval by similarity mixes old and new records, mostly
old ones, so the LLM copies the old tag; the world's prior (zero-shot) says the old tag too. A
user's heads, fitted on the user's most recent records, can learn that recent records are the
ones to trust.

``write_world(directory)`` writes ``GIT_area/{train,dev}_questions.json`` and ``_outputs.json``
(LaMP's layout; profiles carry ``id``, ``text``, ``tag``, ``date``); ``make_user(seed)`` gives
one user as a dict. ``write_spec_world(directory)`` writes the same kind of users as a task
given only by a spec file, under another label set (``task.json`` beside the LaMP files).
Everything is a deterministic function of the seeds.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

TASK = "GIT_area"
INSTRUCTION = ("Which area tag does this commit relate to? Just answer with the tag and nothing "
               "else. commit: ")
TOPICS: dict[str, list[str]] = {
    "tests": ["the test suite", "test_expect_success", "a flaky test script", "the prove harness",
              "t7001 test cases", "test helper functions", "the test library"],
    "doc": ["the documentation", "the manual page", "asciidoc markup", "the user guide",
            "typos in the docs", "the how-to document", "the glossary"],
    "gitk": ["gitk", "the history viewer", "the Tk commit graph", "gitk's diff pane",
             "the gitk window", "gitk's preferences dialog", "gitk highlighting"],
    "completion": ["bash completion", "zsh completion", "tab completion of options",
                   "completion of branch names", "the completion script", "__gitcomp",
                   "completion of subcommands"],
    "config": ["the config file", "git config", "configuration variables", "core settings",
               "config parsing", "include directives in config", "the config API"],
}
# A user's own convention: topic -> (the tag they use instead, words that hint at it).
SECOND_CHOICE: dict[str, tuple[str, str]] = {
    "tests": ("Makefile", "and the Makefile build rules"),
    "doc": ("i18n", "and its translation strings"),
    "gitk": ("git-gui", "and the git-gui dialog"),
    "completion": ("tests", "and the tests for it"),
    "config": ("doc", "and the documentation for it"),
}
VERBS = ["fix", "teach", "update", "clean up", "rework", "simplify", "extend", "document"]
REASONS = ["so that users stop tripping over it", "because the old behaviour was confusing",
           "to prepare for the next series", "as reported on the mailing list",
           "which was broken since the last release", "to match what other commands do"]


def sentence(rng: random.Random, topic: str, hint: str = "") -> str:
    """One commit message about ``topic`` (with ``hint`` words appended to its first clause)."""
    a, b = rng.sample(TOPICS[topic], 2)
    hint = f" {hint}" if hint else ""
    return (f"{rng.choice(VERBS).capitalize()} {a} and {b}{hint} {rng.choice(REASONS)}. "
            f"This touches {rng.choice(TOPICS[topic])} only.")


def make_user(seed: int, *, own_per_topic: int = 6, focus: int = 3, drift: float = 0.4,
              questions: int = 3) -> dict[str, Any]:
    """One synthetic user: ``history`` (profile items, oldest first) and ``questions``.

    Args:
        seed: Makes the user (their changed topic, the texts).
        own_per_topic: Records per topic (the changed topic has ``focus`` times as many).
        drift: The most recent share of the changed topic's records that use the new tag.
        questions: Held-out commits to tag, newer than the whole history (each with ``gold``);
            two of every three are on the changed topic (the user works on it lately).
    """
    rng = random.Random(seed)
    topics = list(TOPICS)
    odd = topics[seed % len(topics)]
    new_tag, hint = SECOND_CHOICE[odd]
    user = f"persona{seed:05d}"
    old: list[dict[str, Any]] = []
    for topic in topics:
        n = own_per_topic * (focus if topic == odd else 1)
        old += [{"text": sentence(rng, topic, hint if topic == odd else ""), "tag": topic}
                for _ in range(n)]
    rng.shuffle(old)
    changed = [i for i, item in enumerate(old) if item["tag"] == odd]
    n_new = round(drift * len(changed))
    recent = [old.pop(i) for i in reversed(changed[len(changed) - n_new:])][::-1]
    for item in recent:  # the newest records: the changed topic under its new tag
        item["tag"] = new_tag
    history = old + recent
    for day, item in enumerate(history, 1):
        item["id"] = _id(user, item["text"], day)
        item["date"] = f"{2020 + day // 336}-{1 + day // 28 % 12:02d}-{1 + day % 28:02d}T12:00:00Z"
    asked = []
    for j in range(questions):
        topic = odd if j % 3 < 2 else topics[(seed + j) % len(topics)]
        if j % 3 == 2 and topic == odd:
            topic = topics[(seed + j + 1) % len(topics)]
        text = sentence(rng, topic, hint if topic == odd else "")
        asked.append({"id": _id(user, text, 10_000 + j), "text": text,
                      "gold": new_tag if topic == odd else topic, "topic": topic})
    return {"user_id": user, "changed_topic": odd, "new_tag": new_tag,
            "history": history, "questions": asked}


def write_world(directory: str | Path, *, train_users: int = 12, dev_users: int = 12,
                seed: int = 0) -> Path:
    """Write the world's train and dev users in LaMP's layout under ``directory/GIT_area``.

    Returns:
        The directory holding the task folder (pass it as ``--data``).
    """
    root = Path(directory)
    folder = root / TASK
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": range(train_users), "dev": range(train_users, train_users + dev_users)}
    for split, users in splits.items():
        questions, golds = [], []
        for index in users:
            user = make_user(seed * 100_003 + index)
            for q in user["questions"]:
                questions.append({"id": q["id"], "input": INSTRUCTION + q["text"],
                                  "user_id": user["user_id"], "profile": user["history"]})
                golds.append({"id": q["id"], "output": q["gold"]})
        _write(folder / f"{split}_questions.json", questions)
        _write(folder / f"{split}_outputs.json", {"task": TASK, "golds": golds})
    return root


SPEC_LABELS: dict[str, str] = {
    "tests": "qa", "doc": "manual", "gitk": "viewer", "completion": "shell", "config": "settings",
    "Makefile": "build", "i18n": "l10n", "git-gui": "gui",
}
"""The spec-file variant's label for each of the world's tags: the same users' habits under
another project's label set."""
SPEC_MARKER = "change:"


def spec_task() -> dict[str, Any]:
    """The task spec (README, "Your own task") of the world's spec-file variant."""
    return {
        "name": "persona-changes", "kind": "classification",
        "description": "The persona world's commits under another project's label set",
        "instruction": "Which component label does the maintainer put on this change? Answer "
                       "with the label only.",
        "labels": sorted(set(SPEC_LABELS.values())), "text_fields": ["text"],
        "example_template": "{text}", "answer_field": "label", "query_marker": SPEC_MARKER,
    }


def write_spec_world(directory: str | Path, *, train_users: int = 12, dev_users: int = 12,
                     seed: int = 1) -> Path:
    """Write the world as a task given only by a spec file: ``directory/task.json`` (labels
    renamed by :data:`SPEC_LABELS`, answers in the field ``label``) and the LaMP files of its
    train and dev users in ``directory`` itself (other users than :func:`write_world`'s with
    the default seeds).

    Returns:
        The directory (pass it as ``--data``, and ``directory/task.json`` as ``--task``).
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    spec = spec_task()
    _write(root / "task.json", spec)
    splits = {"train": range(train_users), "dev": range(train_users, train_users + dev_users)}
    for split, users in splits.items():
        questions, golds = [], []
        for index in users:
            user = make_user(seed * 100_003 + index)
            profile = [{"id": r["id"], "text": r["text"], "label": SPEC_LABELS[r["tag"]],
                        "date": r["date"]} for r in user["history"]]
            for q in user["questions"]:
                questions.append({"id": q["id"], "user_id": user["user_id"], "profile": profile,
                                  "input": f"{spec['instruction']} {SPEC_MARKER} {q['text']}"})
                golds.append({"id": q["id"], "output": SPEC_LABELS[q["gold"]]})
        _write(root / f"{split}_questions.json", questions)
        _write(root / f"{split}_outputs.json", {"task": spec["name"], "golds": golds})
    return root


def _id(user: str, text: str, n: int) -> str:
    return hashlib.sha1(f"{user}:{n}:{text}".encode()).hexdigest()[:12]


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
