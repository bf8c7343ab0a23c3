"""What the reranker knows about each retrieved record: named features, computed on the device.

HYDRA's reranker is a cross-encoder that reads the query and a record together. hydrahead's fast
mode gives its reranker a few named numbers per retrieved record instead, computed from the top
``k`` records that retrieval returned (a local corpus of ``k`` items)::

    x(record) = [cos, lexical, answer_consensus, recency]      RERANKER_FEATURES, in this order

The shared reranker base passes them through as its first hidden features; its untrained base
head reads only ``cos``, so an unfitted reranker keeps the dense top ``m`` (plain RAG). A user's
head learns from graded labels which of the others matter for this user.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from .adapter_features import overlap_f1, word_counts
from .records import Record
from .tasks import Task

RERANKER_FEATURES: dict[str, str] = {
    "cos": "cosine of the query's and the record's embeddings (dense retrieval's score)",
    "lexical": "share of the query's word weight that the record's text contains, each word "
               "weighted by its idf over the k retrieved records (exact terms: file names, "
               "options, test numbers, that embeddings blur)",
    "answer_consensus": "agreement of the record's answer with the answers of the other "
                        "retrieved records (same label; for generation the unigram-overlap F1 "
                        "of the answers), averaged: 1 = the record answers like its neighbours",
    "recency": "the record's rank by time among the k retrieved records, from 0 (oldest) to 1 "
               "(newest); 0.5 for all when timestamps are missing",
}
"""The reranker's named features, in the order of the feature vector."""

FEATURE_NAMES: tuple[str, ...] = tuple(RERANKER_FEATURES)
_WORD = re.compile(r"\w+")


def reranker_features(
    task: Task, query: str, records: Sequence[Record], cosines: np.ndarray
) -> np.ndarray:
    """The (len(records), F) float32 feature matrix, columns as in :data:`RERANKER_FEATURES`.

    Args:
        task: Renders a record as an example and reads its answer.
        query: The query text.
        records: The retrieved records, in retrieval order.
        cosines: Their cosine similarity to the query.
    """
    n = len(records)
    X = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float64)
    if n == 0:
        return X.astype(np.float32)
    X[:, 0] = np.asarray(cosines, dtype=np.float64)
    words = [_words(task.example_text(r)) for r in records]
    query_words = _words(query)
    # Document frequencies of the query's words only (the only ones idf is needed for).
    idf = {w: math.log((n + 1) / (sum(w in ws for ws in words) + 0.5)) for w in query_words}
    total = sum(idf.values())
    if total > 0:
        X[:, 1] = [sum(idf[w] for w in query_words & ws) / total for ws in words]
    X[:, 2] = _consensus(task, [task.answer_of(r) for r in records])
    stamps = [r.timestamp for r in records]
    if n > 1 and all(t is not None for t in stamps):
        ranks = np.argsort(np.argsort(np.array(stamps, dtype=np.float64), kind="stable"))
        X[:, 3] = ranks / (n - 1)
    else:
        X[:, 3] = 0.5
    return X.astype(np.float32)


@functools.lru_cache(maxsize=8192)
def _words(text: str) -> frozenset[str]:
    """The lower-cased words of a record's example text (cached: records come back often)."""
    return frozenset(_WORD.findall(text.lower()))


def _consensus(task: Task, answers: Sequence[str | None]) -> np.ndarray:
    """Mean agreement of each answer with the other answers (0 for a record without one)."""
    n = len(answers)
    out = np.zeros(n)
    if n < 2:
        return out
    if task.kind == "generation":
        bags = [word_counts(a) if a else Counter() for a in answers]
        for i in range(n):
            if bags[i]:
                out[i] = np.mean([overlap_f1(bags[i], bags[j]) for j in range(n) if j != i])
        return out
    parsed = [task.parse(a) if a is not None else None for a in answers]
    counts = Counter(p for p in parsed if p is not None)
    for i, p in enumerate(parsed):
        if p is not None:
            out[i] = (counts[p] - 1) / (n - 1)
    return out
