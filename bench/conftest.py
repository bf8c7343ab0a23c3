"""Fixtures of the benchmarks (the shared ones, ``bundle_dir`` among them, are in the root
``conftest.py``; the shared helpers in ``testing/``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GIT_LAMP = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "git-lamp"


@pytest.fixture(scope="session")
def git_lamp() -> Path:
    """The git-lamp benchmark data (only on the team's machines; skipped elsewhere)."""
    root = Path(os.environ.get("HYDRAHEAD_GIT_LAMP", GIT_LAMP))
    if not root.is_dir():
        pytest.skip(f"git-lamp data not found at {root} (set HYDRAHEAD_GIT_LAMP)")
    return root
