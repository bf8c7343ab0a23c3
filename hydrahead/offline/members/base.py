"""What every member of the family of simulated LLMs shares: the base class and how a prompt's
examples are read as votes.

Every member is a :class:`~hydrahead.offline.simulator.SimulatedLLM` subclass: the same request
reading, sampling (with replacement, seeded by a digest of the request), token counting and
response shape; a member replaces only how it scores options (``option_scores``), how it makes
and scores generation candidates (``generation_pool``) or how it writes answers
(``candidates``). Each says it is a SIMULATOR the way the default does
(``x_hydrahead_simulator``) and names itself in ``system_fingerprint``
(``hydrahead-offline-simulator-v1+<name>``).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..simulator import (SIMULATOR_FINGERPRINT, ParsedPrompt, SimulatedLLM, WorldPrior,
                         _match_option, _style, bag, best_first, cosine,
                         generation_candidates, tokens)


class Member(SimulatedLLM):
    """A member of the family other than ``default``: a SimulatedLLM with its own mechanism.

    Subclasses set :attr:`name` and :attr:`summary` and say their contract in their docstring.
    The random generator of a request mixes the member's name into the request's digest, so
    two members do not share their sampling noise.
    """

    name = "member"
    summary = ""

    @property
    def fingerprint(self) -> str:  # type: ignore[override]
        """``hydrahead-offline-simulator-v1+<name>``."""
        return f"{SIMULATOR_FINGERPRINT}+{self.name}"

    def request_rng(self, digest: bytes) -> random.Random:
        return random.Random(hashlib.sha256(digest + self.name.encode("utf-8")).digest())

    # ------------------------------------------------------------------ shared generation
    def neutral_pool(self, parsed: ParsedPrompt,
                     max_tokens: int | None) -> list[tuple[str, float]]:
        """The default's generation candidates as if the prompt had no examples."""
        alone = replace(parsed, examples=())
        found = generation_candidates(alone, _style(alone, self.params), max_tokens)
        return best_first((c.text, c.default_score(self.params)) for c in found)

    def weighted_pool(self, parsed: ParsedPrompt, weights: Sequence[float],
                      max_tokens: int | None) -> list[tuple[str, float]]:
        """The default's generation candidates, the style voted by ``weights`` (one per
        example) instead of by similarity; all weights 0: the neutral style."""
        if not any(w > 0 for w in weights):
            return self.neutral_pool(parsed, max_tokens)
        style = _style(parsed, self.params, weights)
        found = generation_candidates(parsed, style, max_tokens)
        return best_first((c.text, c.default_score(self.params)) for c in found)


@dataclass(frozen=True)
class Vote:
    """What one example says about the options.

    Attributes:
        position: The example's index in the prompt (0 = shown first).
        label: The option it points to: its answer matched to an option, or, for an example
            without an answer in a prompt whose options the query spells out (LaMP-1), the
            option whose reference text it is most similar to. ``None``: neither.
        similarity: Cosine of the example's text to the query (to the reference it points to,
            for an example without an answer).
    """

    position: int
    label: str | None
    similarity: float


def votes(parsed: ParsedPrompt, world: WorldPrior) -> list[Vote]:
    """One :class:`Vote` per example of ``parsed``, in prompt order."""
    found = []
    for i, ex in enumerate(parsed.examples):
        ex_bag = bag(ex.text)
        if ex.answer is not None:
            found.append(Vote(i, _match_option(ex.answer, parsed.options),
                              cosine(world.query_bag, ex_bag)))
            continue
        label, best = None, 0.0
        for option, ref in world.references.items():
            sim = cosine(ref, ex_bag)
            if sim > best:
                label, best = option, sim
        found.append(Vote(i, label, best))
    return found


def example_similarities(parsed: ParsedPrompt) -> list[float]:
    """Cosine of each example's text to the query, in prompt order."""
    query_bag = bag(parsed.query)
    return [cosine(query_bag, bag(ex.text)) for ex in parsed.examples]


def key_words(text: str) -> list[str]:
    """The words of ``text`` that are key words (not stop words), in order, each once, with
    their punctuation stripped and their case kept."""
    seen, out = set(), []
    for raw in text.split():
        word = raw.strip(".,;:!?()[]{}\"'`")
        key = tokens(word)
        if word and key and key[0] not in seen:
            seen.add(key[0])
            out.append(word)
    return out


def cut_words(text: str, max_tokens: int | None) -> str:
    """``text`` cut to ``max_tokens`` words (whole when ``None``), spaces collapsed."""
    words = text.split()
    if max_tokens and max_tokens > 0:
        words = words[:max_tokens]
    return " ".join(words)


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (the whole text if it has no sentence end)."""
    parts = re.split(r"(?<=[.!?])\s+", " ".join(text.split()), maxsplit=1)
    return parts[0] if parts else ""


__all__ = ["Member", "Vote", "cut_words", "example_similarities",
           "first_sentence", "key_words", "votes"]
