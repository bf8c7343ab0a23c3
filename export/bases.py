"""The shared reranker and adapter bases of fast mode, as shipped in the bundle.

Until ``hydrahead.train`` produces trained bases, the bundle carries untrained ones
(:meth:`PairBase.untrained`): random pair features plus named passthrough features, with a base
head that scores by them alone. The reranker's one named feature is the cosine of query and
item, so its base head alone is dense retrieval. The adapter's are the history-aware candidate
features of :mod:`hydrahead.runtime.adapter_features`; its base head reads the LLM's greedy
answer (then its votes), so the base adapter alone answers what the LLM answers at temperature
0 to the dense top-m prompt: the unfitted pipeline is dense RAG by construction. A user's head
fits on top. Both bases read named features that the device computes
(:mod:`hydrahead.runtime.reranker_features`, :mod:`hydrahead.runtime.adapter_features`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hydrahead.runtime import adapter_features, reranker_features
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.pair_base import OUTPUT_GAIN, PairBase

BASE_ROLES = {"reranker": 0, "adapter": 1}  # role -> seed of its random features
HIDDEN = 64
# The untrained base heads' gains per named feature. Reranker: cosine alone (dense retrieval).
# Adapter: the greedy answer outweighs everything, the votes order the rest.
GAINS = {
    "reranker": {name: 0.0 for name in reranker_features.FEATURE_NAMES} | {"cos": OUTPUT_GAIN},
    "adapter": {name: 0.0 for name in adapter_features.FEATURE_NAMES}
    | {"llm_greedy": 4.0, "llm_vote": 0.5},
}
NAMED_FEATURES = {
    "reranker": reranker_features.RERANKER_FEATURES,
    "adapter": adapter_features.ADAPTER_FEATURES,
}
BASE_HEAD = {
    "reranker": "scores by cos alone (dense retrieval)",
    "adapter": "scores by llm_greedy, then llm_vote: the LLM's own temperature-0 answer",
}
# Untrained, the non-linear pair features are switched off (zero weights): random ones only
# added noise to a user's fit (git-lamp GIT_subject dev, simulator: listwise adapter fits
# reached ROUGE 0.299 with them and 0.306-0.311 without). A trained base fills them.
RANDOM_FEATURE_GAIN = 0.0


def untrained_base(role: str, dim: int, hidden: int = HIDDEN) -> PairBase:
    """The untrained shared base of ``role`` ("reranker" or "adapter")."""
    return PairBase.untrained(dim=dim, hidden=hidden, seed=BASE_ROLES[role],
                              features=GAINS[role], gain=RANDOM_FEATURE_GAIN)


def add_untrained_bases(bundle_root: str | Path, *, hidden: int = HIDDEN) -> Bundle:
    """Add untrained ``reranker`` and ``adapter`` pair bases to the bundle at ``bundle_root``."""
    bundle = Bundle.open(bundle_root)
    dim = int(bundle.model("encoder")["embedding_dim"])
    with tempfile.TemporaryDirectory() as tmp:
        for role in BASE_ROLES:
            path = Path(tmp) / f"{role}.npz"
            untrained_base(role, dim, hidden).save(path)
            spec = {
                "kind": "pair-base",
                "files": {"weights": path.name},
                "hidden": hidden,
                "input_dim": dim,
                "features": "[named features] + tanh(W [q, d, q*d, |q-d|] + b), W = 0 untrained",
                "named_features": NAMED_FEATURES[role],
                "base_head": BASE_HEAD[role],
                "trained": False,
            }
            bundle = Bundle.add_model(bundle_root, role, spec, {"weights": path})
    return bundle
