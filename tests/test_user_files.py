"""The layout of a user's directory is named in one module, and deletion walks all of it."""

from __future__ import annotations

from pathlib import Path

from hydrahead.runtime import erasure, user_files
from hydrahead.runtime.user_files import UserFiles


def test_erasure_handles_exactly_the_files_that_hold_private_text() -> None:
    assert set(erasure.ERASERS) == set(user_files.PRIVATE_TEXT_FILES)


def test_every_path_lies_in_the_user_directory(tmp_path: Path) -> None:
    files = UserFiles(tmp_path)
    paths = [files.db, files.index, files.stamp, files.lock, files.config, files.cache,
             files.outbox, files.heads, files.labels, files.feedback, files.choices,
             files.head("adapter")]
    assert len(set(paths)) == len(paths)
    assert all(p.parent in (tmp_path, tmp_path / user_files.HEADS_DIR) for p in paths)
    assert files.head("reranker") == tmp_path / "heads" / "reranker.npz"
