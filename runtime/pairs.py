"""Labelled (query, item) pairs: the training data of a head, grouped by query.

A plain data type with no behaviour beyond appending: the labeller
(:mod:`hydrahead.runtime.labeling`) and feedback make them, the label file
(:mod:`hydrahead.runtime.label_file`) stores them, fitting and training read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class PairSet:
    """Labelled (query, item) pairs for one head, grouped by query.

    Besides vectors, named features and targets, each group keeps what identifies it again
    later: the query's text and record id (``None`` for a query that is not a history record)
    and each item's text and record id (``None`` for an LLM candidate). A stored label set is
    refitted from these when the shared base changes (:mod:`hydrahead.runtime.label_file`),
    and a featurizer that reads texts (a cross-encoder) reads them.
    """

    queries: list[np.ndarray] = field(default_factory=list)  # one (dim,) vector per group
    docs: list[np.ndarray] = field(default_factory=list)  # one (n_i, dim) matrix per group
    labels: list[np.ndarray] = field(default_factory=list)  # one (n_i,) vector in [0, 1]
    # One (n_i, F) matrix per group: the named features the base passes through.
    features: list[np.ndarray | None] = field(default_factory=list)
    query_texts: list[str] = field(default_factory=list)
    query_ids: list[str | None] = field(default_factory=list)
    item_texts: list[list[str]] = field(default_factory=list)
    item_ids: list[list[str | None]] = field(default_factory=list)

    def add(
        self,
        query: np.ndarray,
        docs: np.ndarray,
        labels: Sequence[float] | np.ndarray,
        features: np.ndarray | None = None,
        *,
        query_text: str = "",
        query_id: str | None = None,
        item_texts: Sequence[str] | None = None,
        item_ids: Sequence[str | None] | None = None,
    ) -> None:
        """Append one query's labelled items, their named features, texts and ids."""
        if len(docs):
            n = len(docs)
            self.queries.append(np.asarray(query, dtype=np.float32))
            self.docs.append(np.asarray(docs, dtype=np.float32))
            self.labels.append(np.asarray(labels, dtype=np.float64))
            self.features.append(None if features is None else np.asarray(features, np.float32))
            self.query_texts.append(query_text)
            self.query_ids.append(query_id)
            self.item_texts.append(list(item_texts) if item_texts is not None else [""] * n)
            self.item_ids.append(list(item_ids) if item_ids is not None else [None] * n)

    def extend(self, other: PairSet) -> None:
        """Append every group of ``other``."""
        for name in ("queries", "docs", "labels", "features", "query_texts", "query_ids",
                     "item_texts", "item_ids"):
            getattr(self, name).extend(getattr(other, name))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_pairs(self) -> int:
        """Number of labelled pairs."""
        return int(sum(len(y) for y in self.labels))

    @property
    def n_positive(self) -> int:
        """Number of pairs whose target is above 0.5."""
        return int(sum(int((y > 0.5).sum()) for y in self.labels))

    @property
    def n_negative(self) -> int:
        """Number of pairs whose target is below 0.5."""
        return int(sum(int((y < 0.5).sum()) for y in self.labels))
