"""Four members that differ in how they read the in-context examples: not at all
(``prior-only``), the one nearest to the query (``nearest``), by count (``majority``) and by
position (``positional``).

Each is a SIMULATOR, not a language model, with the default's request reading, sampling and
response shape (:mod:`hydrahead.offline.members.base`). ``a`` is the default's prior weight
(2.0) and ``prior(l)`` the default's world prior (:func:`~hydrahead.offline.simulator.
world_prior`: key words, rating sentiment, or LaMP-1's spelled-out references).
"""

from __future__ import annotations

from dataclasses import replace

from ..simulator import ParsedPrompt, world_prior
from .base import Member, cut_words, example_similarities, votes

COPY_BONUS = 6.0
"""``nearest``: the score added to the nearest example's label."""
COPY_GENERATION = 4.0
"""``nearest``: how fast the copied answer overtakes the extractive ones as similarity grows."""
COPY_THRESHOLD = 0.3
"""``nearest``: the similarity above which the greedy generation is the copied answer."""
VOTE_WEIGHT = 3.0
"""``majority``: the score of one example's vote."""
LAST_WEIGHT = 6.0
"""``positional``: the weight of the last example's label."""
POSITION_DECAY = 0.3
"""``positional``: each example further from the end weighs this much of the next one."""


class PriorOnlyLLM(Member):
    """``prior-only``: ignores the examples; answers from its world prior alone. A SIMULATOR.

    Contract:
        * Reads the instruction, the ``Options:`` line and the query; the examples are dropped
          before anything is computed, so a prompt answers exactly as the same prompt without
          its examples (same scores, same candidates, same samples).
        * Classification / ratings: ``score(l) = a * prior(l)`` (key words, rating sentiment,
          LaMP-1's reference similarity); with a flat prior every option ties (the argmax is
          the first option).
        * Generation: the default's extractive variants of the query in the neutral style
          (8 words, capitalised, no prefix, no period).
        * Sampling: the default's (argmax at temperature 0; with replacement otherwise).
    """

    name = "prior-only"
    summary = "ignores the examples: world prior only (records cannot help or hurt)"

    def option_scores(self, parsed: ParsedPrompt) -> dict[str, float]:
        return super().option_scores(replace(parsed, examples=()))

    def generation_pool(self, parsed: ParsedPrompt,
                        max_tokens: int | None = None) -> list[tuple[str, float]]:
        return self.neutral_pool(parsed, max_tokens)


class NearestLLM(Member):
    """``nearest``: copies the answer of the example most similar to the query. A SIMULATOR.

    Contract:
        * Reads each example's similarity to the query (the default's cosine of bags of words)
          and its answer; the nearest example ``e*`` is the most similar one with a label (the
          first on ties) and counts only if its similarity is above 0.
        * Classification / ratings: ``score(l) = a * prior(l) + 6 * [l == label(e*)]``: the
          nearest example's label wins whatever the others say. In a LaMP-1 prompt (examples
          without answers) an example points to the reference it is most similar to, and
          ``e*`` is the example most similar to its reference. No ``e*``: the prior alone.
        * Generation: the default's extractive variants styled like ``e*`` alone (its length,
          prefix, casing, period), plus ``e*``'s answer copied verbatim, scored ``top + 4 *
          (sim(e*) - 0.3)`` where ``top`` is the best extractive score: above a similarity of
          0.3 the greedy answer is the copy. No ``e*``: the neutral style.
        * Sampling: the default's.
    """

    name = "nearest"
    summary = "copies the answer (label) of the example most similar to the query"

    def option_scores(self, parsed: ParsedPrompt) -> dict[str, float]:
        world = world_prior(parsed)
        scores = {o: self.params.prior_weight * world.prior[o] for o in parsed.options}
        labelled = [v for v in votes(parsed, world) if v.label is not None and v.similarity > 0]
        if labelled:
            best = max(labelled, key=lambda v: (v.similarity, -v.position))
            scores[best.label] += COPY_BONUS  # type: ignore[index]
        return scores

    def generation_pool(self, parsed: ParsedPrompt,
                        max_tokens: int | None = None) -> list[tuple[str, float]]:
        sims = example_similarities(parsed)
        usable = [i for i, ex in enumerate(parsed.examples)
                  if sims[i] > 0 and (ex.answer or ex.text).strip()]
        if not usable:
            return self.neutral_pool(parsed, max_tokens)
        best = max(usable, key=lambda i: (sims[i], -i))
        pool = self.weighted_pool(parsed, [float(i == best) for i in range(len(sims))],
                                  max_tokens)
        answer = parsed.examples[best].answer
        if answer:
            copy = cut_words(answer, max_tokens)
            score = pool[0][1] + COPY_GENERATION * (sims[best] - COPY_THRESHOLD)
            pool = sorted([*(kv for kv in pool if kv[0] != copy), (copy, score)],
                          key=lambda kv: -kv[1])
        return pool


class MajorityLLM(Member):
    """``majority``: answers the label most of its examples carry, however similar. A
    SIMULATOR.

    Contract:
        * Reads the examples' labels and counts them; similarity to the query plays no part.
        * Classification / ratings: ``score(l) = a * prior(l) + 3 * count(l)``; one more vote
          (3) outweighs any difference of prior (at most 2), so the most frequent label wins
          even when the nearest example or the prior disagrees; ties go to the prior. In a
          LaMP-1 prompt each example votes for the reference it is most similar to.
        * Generation: the default's extractive variants, the style (length, prefix, casing,
          period) voted by the examples with equal weight.
        * Sampling: the default's.
    """

    name = "majority"
    summary = "the most frequent label among its examples wins, similarity ignored"

    def option_scores(self, parsed: ParsedPrompt) -> dict[str, float]:
        world = world_prior(parsed)
        scores = {o: self.params.prior_weight * world.prior[o] for o in parsed.options}
        for vote in votes(parsed, world):
            if vote.label is not None:
                scores[vote.label] += VOTE_WEIGHT
        return scores

    def generation_pool(self, parsed: ParsedPrompt,
                        max_tokens: int | None = None) -> list[tuple[str, float]]:
        return self.weighted_pool(parsed, [1.0] * len(parsed.examples), max_tokens)


class PositionalLLM(Member):
    """``positional``: follows the example shown LAST (recency bias). A SIMULATOR.

    Contract:
        * Reads the examples' labels and their positions; similarity plays no part. hydrahead
          shows its best-ranked record first, so this member follows the lowest-ranked of the
          ``m`` records it is shown.
        * Classification / ratings: ``score(l) = a * prior(l) + sum_i 6 * 0.3**(m-1-i) *
          [label(ex_i) == l]`` (``i`` = 0 for the first example): the last example's label
          (6) outweighs all the earlier ones together (< 2.6) and any prior. Moving an example
          to the end changes the answer. In a LaMP-1 prompt an example points to the reference
          it is most similar to.
        * Generation: the default's extractive variants, the style voted with the same
          position weights (in effect the last example's length, prefix and casing).
        * Sampling: the default's.
    """

    name = "positional"
    summary = "follows the example shown last (recency bias), similarity ignored"

    def option_scores(self, parsed: ParsedPrompt) -> dict[str, float]:
        world = world_prior(parsed)
        scores = {o: self.params.prior_weight * world.prior[o] for o in parsed.options}
        weights = _position_weights(len(parsed.examples))
        for vote in votes(parsed, world):
            if vote.label is not None:
                scores[vote.label] += weights[vote.position]
        return scores

    def generation_pool(self, parsed: ParsedPrompt,
                        max_tokens: int | None = None) -> list[tuple[str, float]]:
        return self.weighted_pool(parsed, _position_weights(len(parsed.examples)), max_tokens)


def _position_weights(m: int) -> list[float]:
    return [LAST_WEIGHT * POSITION_DECAY ** (m - 1 - i) for i in range(m)]
