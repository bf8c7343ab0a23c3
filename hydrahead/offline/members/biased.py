"""Two members with a bias a real LLM can have: imitating whatever examples it is shown
(``style-mimic``: records can hurt) and a strong prior toward a few labels (``skewed-prior``).

Each is a SIMULATOR, not a language model, with the default's request reading, sampling and
response shape (:mod:`hydrahead.offline.members.base`).
"""

from __future__ import annotations

import math

from ..simulator import (_PREFIX, ParsedPrompt, _all_numbers, _style, best_first,
                         generation_candidates, world_prior)
from .base import Member, cut_words, first_sentence, key_words, votes

SHOWN_BONUS = 5.0
"""``style-mimic``: the score added to every label an example shows."""
MIMIC_SHARE = 0.6
"""``style-mimic``: the share of an example's answer (its first words) that a mimic keeps."""
MIMIC_LEAD = 1.0
"""``style-mimic``: how far above the best extractive answer a mimic scores."""
FAVOURED_BONUS = 3.0
"""``skewed-prior``: the score added to each favoured label."""
FAVOURED_COUNT = 3
"""``skewed-prior``: how many labels it favours (fewer for prompts with fewer options)."""
STOCK_VERBS = ("Fix", "Update", "Improve")
"""``skewed-prior``: the openings its generation favours, most favoured first."""
STOCK_LEAD = 0.8
"""``skewed-prior``: how far above the best extractive answer the favoured opening scores."""


class StyleMimicLLM(Member):
    """``style-mimic``: imitates the examples it is shown, related or not. A SIMULATOR.

    Records in the prompt can hurt this one: what they say is copied whatever its relevance.

    Contract:
        * Reads the examples' labels (which ones are shown, not how often nor how similar) and
          the wording of their answers.
        * Classification / ratings: ``score(l) = a * prior(l) + 5 * [some example shows l]``:
          any shown label beats every label not shown; among the shown ones the prior
          decides (then option order). In a LaMP-1 prompt an example "shows" the reference it
          is most similar to. Without examples: the prior alone.
        * Generation: for each example (in order, every one alike) a *mimic*: the first 60%
          of the words of its answer (its text, if it has none), then key words of the query
          to make up the answer's length; and the example's answer verbatim. Mimics score
          ``top + 1 - 0.01 * i`` and verbatim copies ``top + 0.5 - 0.01 * i`` above the
          default's extractive candidates (``top``: the best of those, which stay in the pool
          with the default's style and scores). Without examples: the default's neutral
          extractive answers.
        * Sampling: the default's.
    """

    name = "style-mimic"
    summary = "copies the labels and answer wording of the examples shown, related or not"

    def option_scores(self, parsed: ParsedPrompt) -> dict[str, float]:
        world = world_prior(parsed)
        scores = {o: self.params.prior_weight * world.prior[o] for o in parsed.options}
        for label in {v.label for v in votes(parsed, world) if v.label is not None}:
            scores[label] += SHOWN_BONUS
        return scores

    def generation_pool(self, parsed: ParsedPrompt,
                        max_tokens: int | None = None) -> list[tuple[str, float]]:
        if not parsed.examples:
            return self.neutral_pool(parsed, max_tokens)
        found = generation_candidates(parsed, _style(parsed, self.params), max_tokens)
        pool = [(c.text, c.default_score(self.params)) for c in found]
        top = max((s for _, s in pool), default=0.0)
        fill = key_words(first_sentence(parsed.query)) or key_words(parsed.query)
        for i, ex in enumerate(parsed.examples):
            words = (ex.answer or ex.text).split()
            if not words:
                continue
            keep = max(1, math.ceil(len(words) * MIMIC_SHARE))
            kept = words[:keep]
            lowered = {w.lower() for w in kept}
            extra = [w for w in fill if w.lower() not in lowered][:max(1, len(words) - keep)]
            pool.append((cut_words(" ".join(kept + extra), max_tokens),
                         top + MIMIC_LEAD - 0.01 * i))
            pool.append((cut_words(" ".join(words), max_tokens),
                         top + MIMIC_LEAD / 2 - 0.01 * i))
        return best_first(pool)


class SkewedPriorLLM(Member):
    """``skewed-prior``: the default's reading of examples over a strong prior toward a few
    labels. A SIMULATOR.

    Contract:
        * Reads what the default reads (prior, similarity-weighted example votes).
        * Classification: the default's ``score(l)`` plus 3 for each *favoured* label: the
          first ``min(3, len(options) - 1)`` options in the order the ``Options:`` line gives
          them (for GIT_area: tests, doc, git-gui; for LaMP-1: ``[1]``). Ratings: the
          favoured values are the top two of the scale (4 and 5 on 1-5: leniency). Only
          several close examples of another label overcome the bonus.
        * Generation: the default's candidates (styled and scored as the default's) plus
          stock answers: the best of them with its first word (after any ``prefix: ``)
          replaced by Fix, Update or Improve, scored ``top + 0.8 - 0.1 * j`` for the ``j``-th
          verb (``top``: the best default score): its greedy answer opens with "Fix"
          whatever the query.
        * Sampling: the default's.
    """

    name = "skewed-prior"
    summary = "a strong prior toward a few labels (the first options; high ratings; 'Fix ...')"

    def option_scores(self, parsed: ParsedPrompt) -> dict[str, float]:
        scores = super().option_scores(parsed)
        for label in favoured_labels(parsed.options):
            scores[label] += FAVOURED_BONUS
        return scores

    def generation_pool(self, parsed: ParsedPrompt,
                        max_tokens: int | None = None) -> list[tuple[str, float]]:
        found = generation_candidates(parsed, _style(parsed, self.params), max_tokens)
        pool = [(c.text, c.default_score(self.params)) for c in found]
        if not pool:
            return best_first(pool)
        top_text, top = max(pool, key=lambda kv: kv[1])
        m = _PREFIX.match(top_text)
        prefix, body = (top_text[:m.end()], top_text[m.end():]) if m else ("", top_text)
        words = body.split()
        rest = words[1:] if len(words) > 1 else words
        for j, verb in enumerate(STOCK_VERBS):
            text = cut_words(prefix + " ".join([verb, *rest]), max_tokens)
            pool.append((text, top + STOCK_LEAD - 0.1 * j))
        return best_first(pool)


def favoured_labels(options: tuple[str, ...]) -> tuple[str, ...]:
    """The labels ``skewed-prior`` favours among ``options`` (see its contract)."""
    count = min(FAVOURED_COUNT, max(len(options) - 1, 0))
    if count and _all_numbers(options):
        return tuple(sorted(options, key=float, reverse=True)[:min(2, count)])
    return options[:count]


__all__ = ["SkewedPriorLLM", "StyleMimicLLM", "favoured_labels"]
