"""The shared reranker and adapter bases of fast mode, as shipped in the bundle.

Until ``hydrahead.train`` produces trained bases, the bundle carries untrained ones
(:meth:`PairBase.untrained`): random pair features plus one passthrough feature 0, with a base
head that ranks exactly by it. For the reranker feature 0 is the cosine of query and item, so the
base head alone is dense retrieval; for the adapter it is the LLM's own preference for the
candidate, so the base head alone picks the LLM's favourite. A user's head fits on top.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.pair_base import PairBase

BASE_ROLES = {"reranker": 0, "adapter": 1}  # role -> seed of its random features
HIDDEN = 64
FEATURE_0 = {
    "reranker": "cos(q, d): the base head alone ranks like dense retrieval",
    "adapter": "the LLM's own preference for the candidate (vote share among the N samples, "
               "ties by sample order): the base head alone picks the LLM's favourite",
}


def add_untrained_bases(bundle_root: str | Path, *, hidden: int = HIDDEN) -> Bundle:
    """Add untrained ``reranker`` and ``adapter`` pair bases to the bundle at ``bundle_root``."""
    bundle = Bundle.open(bundle_root)
    dim = int(bundle.model("encoder")["embedding_dim"])
    with tempfile.TemporaryDirectory() as tmp:
        for role, seed in BASE_ROLES.items():
            path = Path(tmp) / f"{role}.npz"
            PairBase.untrained(dim=dim, hidden=hidden, seed=seed).save(path)
            spec = {
                "kind": "pair-base",
                "files": {"weights": path.name},
                "hidden": hidden,
                "input_dim": dim,
                "features": "[c * feature_0] + tanh(W [q, d, q*d, |q-d|] + b)",
                "feature_0": FEATURE_0[role],
                "trained": False,
            }
            bundle = Bundle.add_model(bundle_root, role, spec, {"weights": path})
    return bundle
