"""The LLM's own preference among its N candidates: the adapter's starting point.

A black-box LLM asked for N samples says what it prefers in two ways: how often an answer comes
back (self-consistency: the vote share) and, for samplers that draw without replacement, in what
order. :func:`llm_preference` turns both into one number per distinct candidate. The adapter's
shared base passes it through as feature 0, so the untrained base head picks the LLM's favourite
and a user's head learns when this user wants something else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def llm_preference(texts: Sequence[str], *, use_order: bool = True) -> tuple[list[str], np.ndarray]:
    """Distinct non-empty candidates (first-seen order) and the LLM's preference for each.

    The preference is the candidate's vote share among the ``len(texts)`` samples; with
    ``use_order``, ties are broken toward earlier samples by less than one vote, so a candidate
    seen more often always ranks above one seen less often.

    Args:
        texts: The LLM's candidate texts, in the order returned.
        use_order: Break ties by first position. Generation turns this off: its candidates are
            nearly always distinct, and fitting labels the user's own (never sampled) answer as
            the positive, which must not look different to the adapter for that reason alone.

    Returns:
        ``(candidates, preference)`` with preference in (0, 1.5) as float32.
    """
    kept = [t for t in texts if t.strip()]
    if not kept:
        return [], np.zeros(0, dtype=np.float32)
    counts = Counter(kept)
    unique = list(dict.fromkeys(kept))
    n = len(texts)
    share = np.array([counts[u] / n for u in unique], dtype=np.float64)
    if use_order:
        share += (0.5 / n) * (1.0 - np.arange(len(unique)) / len(unique))
    return unique, share.astype(np.float32)
