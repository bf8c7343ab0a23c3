"""Bounded inputs (issue 18, items 9 and 10): ask() and feedback() refuse queries over the size
add() and search() already refuse, before anything is embedded or sent; a task spec holds at
most MAX_LABELS labels, and answers are parsed against a large label set as they are against a
small one (one compiled pattern per label set)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testing.synthetic_users import make_user

from hydrahead.offline.server import OfflineLLMServer
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.errors import InvalidInputError, TaskError
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.runtime.personalizer import Personalizer
from hydrahead.runtime.records import MAX_TEXT_BYTES
from hydrahead.runtime.tasks import get_task
from hydrahead.runtime.tasks.generic import MAX_LABELS


def test_oversized_queries_are_refused_before_anything_is_sent(tmp_path: Path,
                                                               bundle_dir: Path) -> None:
    huge = "fix " * (MAX_TEXT_BYTES // 4 + 1)
    with OfflineLLMServer() as server, Personalizer.open(
            "u", bundle=Bundle.open(bundle_dir), task="GIT_area", root=tmp_path,
            llm=LLMConfig.from_env(base_url=server.url)) as p:
        p.add(make_user(1)["history"][:20])
        with pytest.raises(InvalidInputError, match="the query is .* UTF-8 bytes"):
            p.ask(huge)
        with pytest.raises(InvalidInputError, match="the feedback query is"):
            p.feedback(huge, "doc")
        with pytest.raises(InvalidInputError, match="feedback answer"):
            p.feedback("Fix the docs", "   ")
        assert server.captured == []
        assert not (tmp_path / "users" / "u" / "heads" / "GIT_area" / "feedback.npz").exists()
        assert p.ask("Fix the docs").llm_requests == 2  # the same personalizer still answers


def _spec(tmp_path: Path, labels: list[str]) -> Path:
    path = tmp_path / "many.json"
    path.write_text(json.dumps({"name": "many", "kind": "classification",
                                "instruction": "Which label?", "labels": labels,
                                "answer_field": "tag"}))
    return path


def test_a_task_spec_has_a_bounded_label_set(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=f"{MAX_LABELS + 1} labels"):
        get_task(_spec(tmp_path, [f"label{i}" for i in range(MAX_LABELS + 1)]))
    with pytest.raises(TaskError, match="non-blank"):
        get_task(_spec(tmp_path, ["ok", " "]))


def test_answers_parse_against_a_large_label_set_as_against_a_small_one(tmp_path: Path) -> None:
    labels = [f"area-{i}" for i in range(MAX_LABELS - 2)] + ["git", "git-gui"]
    task = get_task(_spec(tmp_path, labels))
    assert task.parse("area-737") == "area-737"
    assert task.parse("I would say AREA-12, not area-1") == "area-12"  # longest, then earliest
    assert task.parse("the git-gui tool") == "git-gui" and task.parse("plain git") == "git"
    assert task.parse("none of them") is None
