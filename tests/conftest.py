"""Shared pytest fixtures.

``bundle_dir`` builds a real int8 model bundle once per machine (cached under
``.hydrahead-cache/test-bundle`` or ``$HYDRAHEAD_TEST_BUNDLE``) and hands its path to every test
that needs the real encoder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing may be fetched from a model hub, in tests or anywhere else.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    """Path of a real, verified model bundle (built once, then reused)."""
    from bundle_fixture import get_test_bundle

    return get_test_bundle()


@pytest.fixture()
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hydrahead data root, also exported as $HYDRAHEAD_HOME."""
    home = tmp_path / "hydrahead-home"
    monkeypatch.setenv("HYDRAHEAD_HOME", str(home))
    return home
