"""Tests of the lock that keeps one process per store directory (hydrahead.runtime.dir_lock)."""

from __future__ import annotations

from pathlib import Path

import pytest
from testing.fake_encoder import HashingEncoder, sample_items

from hydrahead.runtime import dir_lock
from hydrahead.runtime.errors import StoreError
from hydrahead.runtime.store import HistoryStore
from hydrahead.runtime.users import forget_user

ENC = HashingEncoder(16)


def test_the_store_lock_without_fcntl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where fcntl is missing (Windows) the filelock library holds the lock."""
    monkeypatch.setattr(dir_lock, "fcntl", None)
    with HistoryStore.for_user("w", encoder=ENC, root=tmp_path) as store:
        store.add(sample_items(2))
        with pytest.raises(StoreError, match="already open"):
            HistoryStore.for_user("w", encoder=ENC, root=tmp_path)
        with pytest.raises(StoreError, match="already open"):
            forget_user("w", tmp_path)
    with HistoryStore.for_user("w", encoder=ENC, root=tmp_path) as store:
        assert len(store) == 2
    assert forget_user("w", tmp_path)
