"""The bundle's shared reranker/adapter bases: untrained, the base head ranks by feature 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.encoder import Encoder
from hydrahead.runtime.pair_base import PairBase

TEXTS = [
    "Fix the flaky test in the rebase test script",
    "Document the new --orphan option in the manual page",
    "gitk: make the diff pane remember its font size",
    "completion: offer branch names after git switch -c",
    "config: parse include directives relative to the file",
    "Speed up the pack bitmap lookup for large repositories",
    "Translate the remaining strings of the German po file",
    "Teach git-p4 to handle symlinks on Windows",
]


@pytest.mark.parametrize("role", ["reranker", "adapter"])
def test_untrained_base_head_ranks_by_cosine(bundle_dir: Path, role: str) -> None:
    bundle = Bundle.open(bundle_dir)
    spec = bundle.model(role)
    assert spec["kind"] == "pair-base" and spec["trained"] is False
    base = PairBase.load(bundle.file(role, "weights"))
    assert base.hidden == spec["hidden"]

    vecs = Encoder(bundle).encode(TEXTS)
    for i, q in enumerate(vecs):
        docs = np.delete(vecs, i, axis=0)
        scores = base.head.scores(base.hidden_of(q, docs))
        cosine = docs @ q
        assert np.array_equal(
            np.argsort(-scores, kind="stable"), np.argsort(-cosine, kind="stable")
        )


def test_adapter_anchor_replaces_the_cosine(bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    base = PairBase.load(bundle.file("adapter", "weights"))
    vecs = Encoder(bundle).encode(TEXTS)
    anchor = np.array([0.1, 0.9, 0.3, 0.5, 0.2, 0.7, 0.4], dtype=np.float32)
    H = base.hidden_of(vecs[0], vecs[1:], anchor)
    assert np.allclose(H[:, 0], base.cos_scale * anchor)
    order = np.argsort(-base.head.scores(H), kind="stable")
    assert list(order) == list(np.argsort(-anchor, kind="stable"))
