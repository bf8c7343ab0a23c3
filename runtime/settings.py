"""The pipeline's settings, one object with one name per knob.

:class:`Settings` is what :class:`~hydrahead.runtime.personalizer.Personalizer` answers with
and fits under, what :class:`~hydrahead.runtime.labeling.Labeler` labels with, and what the
quality evaluation and server-side label building pass on, so that a knob has the same name
(``k``, ``m``, ``n``, ...) and the same default wherever it is set.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInputError


@dataclass(frozen=True)
class Settings:
    """How a user's pipeline retrieves, prompts, samples and fits.

    Attributes:
        k: History records retrieved per query (what the reranker and the adapter read).
        m: Records kept in the prompt (the reranker's top ``m`` of the ``k``).
        n: Candidates sampled from the LLM per prompt.
        temperature: Sampling temperature of the candidates.
        max_tokens: Output bound per candidate.
        seed: Seed of fitting and of the LLM requests (each query's seed derives from it).
        greedy: Also ask the LLM for its temperature-0 answer, which the unfitted adapter picks
            (one more request per prompt; without it the unfitted adapter picks the most voted
            candidate).
        head_rank: Fit low-rank heads (first layer ``U @ V`` of this rank): smaller on disk,
            slightly less expressive. ``None`` fits full heads.
    """

    k: int = 20
    m: int = 4
    n: int = 8
    temperature: float = 1.0
    max_tokens: int = 64
    seed: int = 0
    greedy: bool = True
    head_rank: int | None = None

    def __post_init__(self) -> None:
        for name in ("k", "m", "n", "max_tokens", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInputError(f"{name} must be an integer, got {value!r}")
        if not (self.k >= 1 and 1 <= self.m <= self.k and self.n >= 1):
            raise InvalidInputError(
                f"need k >= m >= 1 and n >= 1, got k={self.k}, m={self.m}, n={self.n}")
        if self.max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if (isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float))
                or not math.isfinite(self.temperature) or self.temperature < 0):
            raise InvalidInputError(
                f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not isinstance(self.greedy, bool):
            raise InvalidInputError(f"greedy must be True or False, got {self.greedy!r}")
        if self.head_rank is not None and (
                isinstance(self.head_rank, bool) or not isinstance(self.head_rank, int)
                or self.head_rank < 1):
            raise InvalidInputError(f"head_rank must be None or >= 1, got {self.head_rank!r}")

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (checked like a new one).

        Raises:
            InvalidInputError: a name that is not a setting, or a value out of range.
        """
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise InvalidInputError(
                f"unknown setting(s) {', '.join(unknown)}; the settings are "
                f"{', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for reports and JSON)."""
        return dataclasses.asdict(self)
