"""Which of a user's records reach the reranker: dense, BM25, or both fused.

Dense retrieval (the encoder's cosine, through the HNSW index) finds records that *mean* the
same as the query; BM25 finds records that share its *words*, which is what counts where the
answer hangs on an identifier, a file name or a ticket code the encoder blurs. Which one serves
a user better depends on their history, so each user's fit chooses
(:func:`~hydrahead.runtime.validation.check_retrieval`), from evidence that costs no LLM call:
for each of the user's newest records, the records older than it that each retrieval puts first
are scored by how well *their* answers match *its* answer (the task's own metric).

* ``dense``: the ``k`` nearest by cosine (the default, and what an unfitted user gets);
* ``bm25``: the ``k`` best by BM25 (rank-bm25's Okapi over lower-cased words of each record as
  the prompt shows it), then, where fewer than ``k`` share a word with the query, the nearest;
* ``fused``: reciprocal rank fusion of the two lists (``1 / (RRF_K + rank)`` summed; ties in
  dense order).

Whatever the retrieval, the reranker's features still see each record's cosine to the query.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

RETRIEVALS = ("dense", "bm25", "fused")
"""The retrievals a user's fit chooses from; ``dense`` unless another one wins the check."""
RRF_K = 60
"""The rank offset of reciprocal rank fusion (Cormack et al., 2009)."""

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` (what BM25 counts)."""
    return _WORD.findall(text.lower())


class KeywordIndex:
    """BM25 over a fixed list of texts (rank-bm25's ``BM25Okapi``).

    Args:
        texts: The documents, in the order :meth:`top` answers with positions into.
    """

    def __init__(self, texts: Sequence[str]) -> None:
        from rank_bm25 import BM25Okapi

        self.size = len(texts)
        # rank-bm25 divides by the mean document length: an all-empty corpus needs one token
        self._bm25 = BM25Okapi([words(t) or ["\x00"] for t in texts]) if texts else None

    def scores(self, query: str) -> np.ndarray:
        """The BM25 score of every document for ``query`` (0 where no word is shared)."""
        if self._bm25 is None:
            return np.zeros(0)
        terms = words(query)
        if not terms:
            return np.zeros(self.size)
        return np.asarray(self._bm25.get_scores(terms), dtype=np.float64)

    def top(self, query: str, k: int, allowed: np.ndarray | None = None) -> list[int]:
        """Positions of the (at most) ``k`` best documents that share a word with ``query``,
        best first (ties in position order); ``allowed`` (a boolean mask) limits them."""
        s = self.scores(query)
        shared = s > 0
        # BM25's idf can be 0 or negative for a word in most documents: they still share it
        terms = set(words(query))
        if self._bm25 is not None and terms:
            shared |= np.array([bool(terms & doc.keys()) for doc in self._bm25.doc_freqs])
        if allowed is not None:
            shared &= allowed
        candidates = np.flatnonzero(shared)
        order = candidates[np.argsort(-s[candidates], kind="stable")]
        return [int(i) for i in order[:k]]


def combine(method: str, dense: Sequence[int], keyword: Sequence[int], k: int) -> list[int]:
    """The ``k`` records ``method`` retrieves, from the two ranked lists of record keys.

    Args:
        method: One of :data:`RETRIEVALS`.
        dense: Keys of the nearest records by cosine, nearest first (at least ``k`` of them
            where the history has that many).
        keyword: Keys of the records sharing a word with the query, best BM25 first.
        k: How many to retrieve.
    """
    if method == "dense":
        return list(dense[:k])
    if method == "bm25":
        chosen = list(keyword[:k])
        taken = set(chosen)
        return chosen + [key for key in dense if key not in taken][: k - len(chosen)]
    if method == "fused":
        score: dict[int, float] = {}
        for ranked in (dense, keyword):
            for rank, key in enumerate(ranked[:k]):
                score[key] = score.get(key, 0.0) + 1.0 / (RRF_K + rank + 1)
        position = {key: i for i, key in enumerate(list(dense) + list(keyword))}
        return sorted(score, key=lambda key: (-score[key], position[key]))[:k]
    raise ValueError(f"unknown retrieval {method!r}: one of {RETRIEVALS}")
