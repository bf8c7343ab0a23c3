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
    """BM25 over a fixed list of texts: rank-bm25's ``BM25Okapi`` (its idf, k1, b and document
    lengths), scored from postings built once, so that a query costs numpy work over the
    documents that share its words, not a Python loop over every document per word (what
    ``BM25Okapi.get_scores`` does: ~50 ms a query at 5k records; bench/test_retrieval_bench.py).

    Args:
        texts: The documents, in the order :meth:`top` answers with positions into.
    """

    def __init__(self, texts: Sequence[str]) -> None:
        from rank_bm25 import BM25Okapi

        self.size = len(texts)
        self._postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if not texts:
            return
        # rank-bm25 divides by the mean document length: an all-empty corpus needs one token
        bm25 = BM25Okapi([words(t) or ["\x00"] for t in texts])
        lengths = np.asarray(bm25.doc_len, dtype=np.float64)
        norm = bm25.k1 * (1.0 - bm25.b + bm25.b * lengths / bm25.avgdl)
        ids: dict[str, list[int]] = {}
        counts: dict[str, list[int]] = {}
        for i, freqs in enumerate(bm25.doc_freqs):
            for word, count in freqs.items():
                ids.setdefault(word, []).append(i)
                counts.setdefault(word, []).append(count)
        for word, docs in ids.items():
            at = np.asarray(docs, dtype=np.int64)
            tf = np.asarray(counts[word], dtype=np.float64)
            weight = float(bm25.idf.get(word) or 0.0) * tf * (bm25.k1 + 1) / (tf + norm[at])
            self._postings[word] = (at, weight)

    def scores(self, query: str) -> np.ndarray:
        """The BM25 score of every document for ``query`` (0 where no word is shared); equal to
        ``BM25Okapi.get_scores``."""
        out = np.zeros(self.size)
        for word in words(query):  # a repeated word counts again, as in rank-bm25
            if word in self._postings:
                at, weight = self._postings[word]
                out[at] += weight
        return out

    def top(self, query: str, k: int, allowed: np.ndarray | None = None) -> list[int]:
        """Positions of the (at most) ``k`` best documents that share a word with ``query``,
        best first (ties in position order); ``allowed`` (a boolean mask) limits them."""
        shared = np.zeros(self.size, dtype=bool)
        for word in set(words(query)):  # idf can be 0 for a word most documents hold
            if word in self._postings:
                shared[self._postings[word][0]] = True
        if allowed is not None:
            shared &= allowed
        candidates = np.flatnonzero(shared)
        s = self.scores(query)
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
