"""Benchmarks share the tests' helpers (the cached test bundle, the hashing encoder)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

GIT_LAMP = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "git-lamp"


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    """Path of a real, verified model bundle (built once, then reused)."""
    from bundle_fixture import get_test_bundle

    return get_test_bundle()


@pytest.fixture(scope="session")
def git_lamp() -> Path:
    """The git-lamp benchmark data (only on the team's machines; skipped elsewhere)."""
    root = Path(os.environ.get("HYDRAHEAD_GIT_LAMP", GIT_LAMP))
    if not root.is_dir():
        pytest.skip(f"git-lamp data not found at {root} (set HYDRAHEAD_GIT_LAMP)")
    return root
