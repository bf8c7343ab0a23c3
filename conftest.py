"""What tests/ and bench/ share: the helpers in testing/ on sys.path, offline model hubs, and the
real test bundle.

``bundle_dir`` builds a real int8 model bundle once per machine (cached under
``.hydrahead-cache/test-bundle`` or ``$HYDRAHEAD_TEST_BUNDLE``) and hands its path to every test
or benchmark that needs the real encoder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTING = Path(__file__).resolve().parent / "testing"
sys.path.insert(0, str(TESTING))

# Nothing may be fetched from a model hub, in tests, benchmarks or anywhere else.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    """Path of a real, verified model bundle (built once, then reused)."""
    from bundle_fixture import get_test_bundle

    return get_test_bundle()
