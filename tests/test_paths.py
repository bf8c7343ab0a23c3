"""Tests of user ids and the data root (hydrahead.runtime.paths).

A user id names a directory, so an id that cannot name one on this file system (or on another
one a data root may be copied to) is refused with InvalidUserIdError before anything is created.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from testing.fake_encoder import HashingEncoder, sample_items
from testing.strategies import texts

from hydrahead.runtime.errors import InvalidUserIdError
from hydrahead.runtime.paths import user_dir, validate_user_id
from hydrahead.runtime.store import DB_FILE, HistoryStore

ENC = HashingEncoder(16)


@pytest.mark.parametrize("user_id", [
    "€" * 100,            # 100 characters, 300 UTF-8 bytes: too long for a file name
    "a\ud800b",           # a lone surrogate cannot name a file
])
def test_user_ids_that_cannot_name_a_directory(user_id: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidUserIdError):
        validate_user_id(user_id)
    with pytest.raises(InvalidUserIdError):
        HistoryStore.for_user(user_id, encoder=ENC, root=tmp_path)
    assert not (tmp_path / "users").exists() or not any((tmp_path / "users").iterdir())


def test_the_longest_valid_user_id_works(tmp_path: Path) -> None:
    user_id = "é" * 127  # 254 bytes
    with HistoryStore.for_user(user_id, encoder=ENC, root=tmp_path) as store:
        store.add(sample_items(2))
    assert (tmp_path / "users" / user_id / DB_FILE).exists()


@settings(max_examples=120, deadline=None)
@given(user_id=st.one_of(texts(140), st.text(st.sampled_from("€é"), min_size=80, max_size=130),
                         st.binary(max_size=8), st.integers()))
def test_user_ids_are_either_valid_directories_or_refused(user_id, tmp_path_factory) -> None:
    root = tmp_path_factory.mktemp("ids")
    try:
        path = user_dir(user_id, root)
    except InvalidUserIdError:
        return
    assert path.is_dir() and path.parent == root / "users"


@pytest.mark.parametrize("user_id", ["CON", "aux.txt", "nul", "COM1", "lpt3.log", "a:b", "why?",
                                     "star*", 'quo"te', "pipe|", "<x>", "dot."])
def test_user_ids_other_file_systems_refuse(user_id: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidUserIdError):
        HistoryStore.for_user(user_id, encoder=ENC, root=tmp_path)


def test_user_ids_that_differ_only_by_case_do_not_share_a_directory(tmp_path: Path) -> None:
    with HistoryStore.for_user("alice", encoder=ENC, root=tmp_path) as store:
        store.add(sample_items(2))
    with pytest.raises(InvalidUserIdError, match="only by case"):
        HistoryStore.for_user("Alice", encoder=ENC, root=tmp_path)
    with HistoryStore.for_user("alice", encoder=ENC, root=tmp_path) as store:
        assert len(store) == 2


def test_data_root_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        user_dir("u", tmp_path / "root")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "root").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "root" / "users").stat().st_mode) == 0o700
