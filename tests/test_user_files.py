"""The layout of a user's directory is named in one module, and deletion walks all of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hydrahead.runtime import erasure, user_files
from hydrahead.runtime.user_files import UserFiles


def test_erasure_handles_exactly_the_files_that_hold_private_text() -> None:
    assert set(erasure.ERASERS) == set(user_files.PRIVATE_TEXT_FILES)


def test_every_path_lies_in_the_user_directory(tmp_path: Path) -> None:
    files = UserFiles(tmp_path, "GIT_area")
    paths = [files.db, files.index, files.stamp, files.lock, files.config, files.cache,
             files.outbox, files.heads, files.labels, files.feedback, files.choices,
             files.head("adapter")]
    task_dir = tmp_path / user_files.HEADS_DIR / "GIT_area"
    assert len(set(paths)) == len(paths)
    assert all(p.parent in (tmp_path, tmp_path / user_files.HEADS_DIR, task_dir) for p in paths)
    assert files.head("reranker") == task_dir / "reranker.npz"
    with pytest.raises(ValueError, match="without a task"):
        UserFiles(tmp_path).labels


@pytest.mark.parametrize("name, key", [
    ("GIT_area", "GIT_area"), ("LaMP-2", "LaMP-2"), ("my notes/tags", "my_notes_tags"),
    ("..", "_.."), ("x" * 100, "x" * 64)])
def test_task_keys_are_safe_directory_names(name: str, key: str) -> None:
    assert user_files.task_key(name) == key
