"""What tests/ and bench/ share: offline model hubs and the real test bundle. Being at the
repository root, this file also makes pytest put the root on ``sys.path``, so that both suites
import their shared helpers as ``testing.<module>``.

``bundle_dir`` builds a real int8 model bundle once per machine (cached under
``.hydrahead-cache/test-bundle`` or ``$HYDRAHEAD_TEST_BUNDLE``) and hands its path to every test
or benchmark that needs the real encoder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing may be fetched from a model hub, in tests, benchmarks or anywhere else.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    """Path of a real, verified model bundle (built once, then reused)."""
    from testing.bundle_fixture import get_test_bundle

    return get_test_bundle()
