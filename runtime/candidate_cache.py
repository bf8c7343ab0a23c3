"""Embeddings of LLM candidate texts, kept in a small in-memory LRU cache.

Candidates repeat (a classification task's answers are its labels; a user's answers recur), so
``ask()``, ``feedback()`` and refits from stored labels encode only texts not seen recently.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from .encoder import Encoder

CANDIDATE_CACHE = 1024
"""Candidate texts whose embeddings are kept (least recently used first out)."""


class CandidateCache:
    """Embeddings of candidate texts, from a bounded cache where they were seen before.

    Args:
        encoder: Encodes texts the cache does not hold.
        size: Texts kept; it lives in memory only.
    """

    def __init__(self, encoder: Encoder, size: int = CANDIDATE_CACHE) -> None:
        self.encoder, self.size = encoder, size
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._vectors)

    def clear(self) -> None:
        """Forget every cached embedding."""
        self._vectors.clear()

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 embeddings, encoding only the texts not cached."""
        texts = list(texts)
        new = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if new:
            for text, vector in zip(new, self.encoder.encode(new)):
                self._vectors[text] = vector
        out = np.empty((len(texts), self.encoder.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self._vectors[text]
            self._vectors.move_to_end(text)
        while len(self._vectors) > self.size:
            self._vectors.popitem(last=False)
        return out
