"""Fixtures of the test suite (the shared ones, ``bundle_dir`` among them, are in the root
``conftest.py``; the shared helpers in ``testing/``)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture()
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hydrahead data root, also exported as $HYDRAHEAD_HOME."""
    home = tmp_path / "hydrahead-home"
    monkeypatch.setenv("HYDRAHEAD_HOME", str(home))
    return home
