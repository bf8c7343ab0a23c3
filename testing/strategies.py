"""Hypothesis strategies for hostile input, shared by the property-based tests."""

from __future__ import annotations

from hypothesis import strategies as st


def texts(max_size: int) -> st.SearchStrategy[str]:
    """Any text, with lone surrogates, NULs and multi-byte characters drawn often."""
    odd = st.sampled_from(["a", "\ud800", "\udc80", "é", "€", "\x00", " ", "/", "."])
    # (st.text never draws lone surrogates, whatever its alphabet: join characters instead)
    return st.one_of(st.text(max_size=max_size),
                     st.lists(odd | st.characters(exclude_categories=()), max_size=max_size)
                     .map("".join))
