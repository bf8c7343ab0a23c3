"""One settings object: checked once, with one name per knob everywhere."""

from __future__ import annotations

import dataclasses

import pytest

from hydrahead.runtime.errors import InvalidInputError
from hydrahead.runtime.settings import Settings


def test_defaults_are_the_documented_pipeline() -> None:
    s = Settings()
    assert (s.k, s.m, s.n, s.temperature, s.max_tokens, s.seed, s.greedy, s.head_rank) == (
        20, 4, 8, 1.0, 64, 0, True, None)
    assert s.as_dict()["m"] == 4


@pytest.mark.parametrize("bad", [
    {"k": 3, "m": 4}, {"m": 0}, {"n": 0}, {"k": 2.5}, {"m": True}, {"max_tokens": 0},
    {"temperature": -0.1}, {"temperature": float("nan")}, {"temperature": "hot"},
    {"greedy": 1}, {"head_rank": 0}, {"head_rank": 2.0}, {"seed": "0"},
])
def test_out_of_range_settings_are_refused(bad: dict) -> None:
    with pytest.raises(InvalidInputError):
        Settings(**bad)


def test_replace_checks_names_and_values_and_keeps_the_original() -> None:
    s = Settings()
    t = s.replace(m=2, temperature=0.5)
    assert (t.m, t.temperature, s.m) == (2, 0.5, 4)
    with pytest.raises(InvalidInputError, match="n_candidates"):
        s.replace(n_candidates=3)
    with pytest.raises(InvalidInputError):
        s.replace(m=30)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.m = 3  # type: ignore[misc]
