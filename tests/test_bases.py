"""The bundle's shared bases: untrained, the reranker ranks by cosine and the adapter picks the
LLM's greedy answer (then its most voted), whatever the other named features say."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hydrahead.runtime import adapter_features, reranker_features
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.encoder import Encoder
from hydrahead.runtime.featurizer import Featurizer, load_featurizer

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


def _bases(bundle_dir: Path) -> tuple[Bundle, dict[str, Featurizer]]:
    bundle = Bundle.open(bundle_dir)
    return bundle, {r: load_featurizer(bundle, r) for r in ("reranker", "adapter")}


def test_the_manifest_describes_untrained_bases_and_their_features(bundle_dir: Path) -> None:
    bundle, bases = _bases(bundle_dir)
    for role, names in (("reranker", reranker_features.FEATURE_NAMES),
                        ("adapter", adapter_features.FEATURE_NAMES)):
        spec = bundle.model(role)
        assert spec["kind"] == "pair-base-onnx" and spec["trained"] is False
        assert spec["parity"]["fp32"]["max_hidden_error"] < 1e-4  # the export's gate ran
        assert bases[role].hidden == spec["hidden"]
        assert bases[role].feature_names == names == tuple(spec["named_features"])


def test_untrained_reranker_ranks_by_cosine_alone(bundle_dir: Path) -> None:
    bundle, bases = _bases(bundle_dir)
    base = bases["reranker"]
    vecs = Encoder(bundle).encode(TEXTS)
    rng = np.random.default_rng(0)
    for i, q in enumerate(vecs):
        docs = np.delete(vecs, i, axis=0)
        cosine = docs @ q
        X = rng.uniform(0, 1, (len(docs), len(base.feature_names))).astype(np.float32)
        X[:, 0] = cosine  # the other features are noise the base head must ignore
        scores = base.head.scores(base.hidden_of("", q, [""] * len(docs), docs, X))
        assert np.array_equal(
            np.argsort(-scores, kind="stable"), np.argsort(-cosine, kind="stable")
        )


def test_untrained_adapter_picks_greedy_then_votes(bundle_dir: Path) -> None:
    bundle, bases = _bases(bundle_dir)
    base = bases["adapter"]
    vecs = Encoder(bundle).encode(TEXTS)
    rng = np.random.default_rng(1)
    for trial in range(50):
        X = rng.uniform(0, 1, (7, len(base.feature_names))).astype(np.float32)
        X[:, adapter_features.GREEDY] = 0.0
        greedy = int(rng.integers(7))
        X[greedy, adapter_features.GREEDY] = 1.0
        X[:, adapter_features.VOTE] = rng.permutation(8)[:7] / 8  # distinct votes
        X[greedy, adapter_features.VOTE] = 0.0  # the greedy answer wins even unvoted
        scores = base.head.scores(base.hidden_of("", vecs[0], [""] * 7, vecs[1:], X))
        order = np.argsort(-scores, kind="stable")
        assert order[0] == greedy
        rest = [i for i in order[1:]]
        assert rest == sorted(rest, key=lambda i: -X[i, adapter_features.VOTE])
