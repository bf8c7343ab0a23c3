"""A real model bundle for the tests, built once and cached across sessions and processes.

The bundle lives in ``$HYDRAHEAD_TEST_BUNDLE`` if set, else in
``<repo>/.hydrahead-cache/test-bundle`` (git-ignored). It is rebuilt only when it does not open
(missing, damaged, older format). An exclusive file lock keeps parallel test processes from
building it twice. It is built with ``keep_fp32=True`` so that benchmarks can also compare
against the fp32 ONNX model, and with UNTRAINED bases (``untrained=True``), so that an unfitted
pipeline is plain dense RAG whatever bases the package ships: the tests of heads and fitting
measure what they learn against that.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from hydrahead.runtime import adapter_features, reranker_features
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.errors import BundleError
from hydrahead.runtime.featurizer import OnnxFastBase, load_featurizer

ENV_TEST_BUNDLE = "HYDRAHEAD_TEST_BUNDLE"
REPO_ROOT = Path(__file__).resolve().parents[1]


def cached_bundle_path() -> Path:
    """Where the cached test bundle lives."""
    env = os.environ.get(ENV_TEST_BUNDLE)
    if env:
        return Path(env).expanduser().absolute()
    return REPO_ROOT / ".hydrahead-cache" / "test-bundle"


REQUIRED_MODELS = ("encoder", "reranker", "adapter")
EXPECTED = {  # the named features this version's bases must read
    "reranker": reranker_features.FEATURE_NAMES,
    "adapter": adapter_features.FEATURE_NAMES,
}


def _opens(path: Path) -> bool:
    """Whether ``path`` holds a valid bundle with every model the tests need, in the forms this
    version of hydrahead reads (an adapter base of another feature list is rebuilt)."""
    try:
        bundle = Bundle.open(path, verify=True)
        if not all(bundle.has_model(name) for name in REQUIRED_MODELS):
            return False
        bases = {role: load_featurizer(bundle, role) for role in EXPECTED}
    except BundleError:
        return False
    return all(bases[role].feature_names == names and bases[role].kind == OnnxFastBase.kind
               and not bundle.model(role).get("trained")
               for role, names in EXPECTED.items())


def get_test_bundle() -> Path:
    """Return the directory of a valid bundle, building it first if needed (takes ~20 s)."""
    path = cached_bundle_path()
    if _opens(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.parent / f".{path.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if not _opens(path):  # another process may have built it while we waited
            from hydrahead.export.bundle import build_bundle

            build_bundle(path, overwrite=True, keep_fp32=True, untrained=True)
    return path
