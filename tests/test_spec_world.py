"""The persona world as a task given only by a spec file, under another label set: the shipped
bases train on it (bench/train_shipped.sh) so that they learn what carries across label sets."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from hydrahead.cli import cli
from hydrahead.evaluation.persona_world import SPEC_LABELS, make_user, write_spec_world
from hydrahead.runtime.importing import lamp_users
from hydrahead.runtime.tasks import get_task


def test_the_spec_world_is_the_world_under_other_labels(tmp_path: Path) -> None:
    root = write_spec_world(tmp_path / "w", train_users=2, dev_users=1, seed=1)
    task = get_task(str(root / "task.json"))
    assert task.labels == tuple(sorted(set(SPEC_LABELS.values())))
    users = lamp_users(root, task, "train")
    assert len(users) == 2
    user_id, history, questions = users[0]
    original = make_user(100_003)
    assert user_id == original["user_id"]
    assert [r["label"] for r in history] == [SPEC_LABELS[r["tag"]] for r in original["history"]]
    assert [task.query_text(q.input) for q in questions] == [q["text"] for q in
                                                              original["questions"]]
    assert [q.gold for q in questions] == [SPEC_LABELS[q["gold"]] for q in original["questions"]]
    assert all(task.check_answer(q.gold) is None for q in questions)
    again = write_spec_world(tmp_path / "again", train_users=2, dev_users=1, seed=1)
    assert (again / "train_questions.json").read_bytes() == (
        root / "train_questions.json").read_bytes()


def test_bench_world_writes_the_spec_task(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", "world", "--out", str(tmp_path / "w"),
                                      "--spec-task", "--train-users", "1", "--dev-users", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "w" / "task.json").read_text())["name"] == "persona-changes"
