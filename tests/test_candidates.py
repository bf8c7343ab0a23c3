"""The LLM's preference among its candidates (the adapter's feature 0)."""

from __future__ import annotations

import numpy as np

from hydrahead.runtime.candidates import llm_preference


def test_vote_share_dominates_and_order_breaks_ties() -> None:
    cands, pref = llm_preference(["b", "a", "b", "c", "a", "b", "", "  "])
    assert cands == ["b", "a", "c"]
    assert pref.dtype == np.float32
    assert list(np.argsort(-pref)) == [0, 1, 2]
    # a (2 votes) is above c (1 vote) whatever their order; the tie-break is under one vote
    c2, p2 = llm_preference(["c", "a", "a"])
    assert p2[c2.index("a")] > p2[c2.index("c")]
    c3, p3 = llm_preference(["x", "y", "z"])
    assert p3[0] > p3[1] > p3[2]


def test_without_order_distinct_candidates_tie() -> None:
    cands, pref = llm_preference(["x", "y", "x", "z"], use_order=False)
    assert cands == ["x", "y", "z"]
    np.testing.assert_allclose(pref, [0.5, 0.25, 0.25])


def test_nothing_usable() -> None:
    cands, pref = llm_preference(["", " "])
    assert cands == [] and pref.shape == (0,)
