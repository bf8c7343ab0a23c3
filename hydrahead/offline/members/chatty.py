"""``chatty``: the default's mechanism, with answers written the way chat models write them
(hedges, quotes, odd casing, explanations), so that they need parsing. A SIMULATOR.
"""

from __future__ import annotations

import random

from ..simulator import ParsedPrompt, _all_numbers, _sample, parse_prompt
from .base import Member

# (template, weight). {label}: the answer; {other}: the runner-up option; {top}: a rating
# scale's top value. Every label template but the hedge parses back to {label}.
LABEL_TEMPLATES: tuple[tuple[str, float], ...] = (
    ("{label}", 2.0),
    ('I think the answer is "{label}".', 2.0),
    ("ANSWER: {LABEL}", 1.0),
    ("**{label}**\n\nThe query reads most like this one.", 1.0),
    ("It's {lower}, I believe.", 1.0),
    ("'{label}' - I'm fairly confident.", 1.0),
    ("Probably {label}, though {other} is possible too.", 1.0),  # the longer label parses
)
RATING_TEMPLATES: tuple[tuple[str, float], ...] = (
    ("{label}", 2.0),
    ("I'd rate it {label} out of {top}.", 2.0),
    ("Rating: {label} stars", 1.0),
    ("{label}/{top} - going by the wording.", 1.0),
    ("Out of {top} stars, I'd say {label}.", 1.0),  # the first number is {top}
)
TEXT_TEMPLATES: tuple[tuple[str, float], ...] = (
    ("{text}", 2.0),
    ('"{text}"', 1.0),
    ("Title: {text}", 1.0),
    ("Sure! Here is one:\n{text}", 1.0),
    ("{text}\n\n(One line, as asked.)", 1.0),
)


class ChattyLLM(Member):
    """``chatty``: the default simulator's answers, written chattily. A SIMULATOR.

    Contract:
        * Reads and scores exactly as the default (prior + similarity-weighted votes;
          extractive generation styled like the examples) and samples the same way; then
          writes each sampled answer into a template drawn (by weight) with the same request
          random generator, and cuts it to ``max_tokens`` words.
        * Classification: the label plain, in quotes after "I think the answer is", upper-
          cased after "ANSWER:", in bold with an explanation, lower-cased in a hedge, or as
          "Probably <label>, though <runner-up> is possible too" (the runner-up is the
          second-best option). A task's parser (exact, case-insensitive, then the longest
          label found as a whole word) recovers the label from all but the last template,
          and from that one when the runner-up is not the longer label.
        * Ratings: "4", "I'd rate it 4 out of 5.", "Rating: 4 stars", "4/5 - ..." (the first
          number is the rating) or "Out of 5 stars, I'd say 4." (it is not).
        * Generation: the text plain, in quotes, after "Title: ", after "Sure! Here is
          one:" or followed by a remark on its own line; nothing recovers the text from
          those, as with real chat models.
    """

    name = "chatty"
    summary = "the default's answers wrapped in hedges, quotes, odd casing and explanations"

    def candidates(self, prompt: str, *, n: int = 1, temperature: float = 1.0,
                   max_tokens: int | None = None, rng: random.Random | None = None) -> list[str]:
        rng = rng or random.Random(0)
        parsed = parse_prompt(prompt)
        if parsed.options:
            scores = self.option_scores(parsed)
            labels = _sample(list(scores), list(scores.values()), n, temperature, rng)
            ranked = sorted(scores, key=lambda o: -scores[o])
            return [_keep_lines(say_label(label, ranked, parsed, rng), max_tokens)
                    for label in labels]
        pool = self.generation_pool(parsed, max_tokens)
        texts = _sample([t for t, _ in pool], [s for _, s in pool], n, temperature, rng)
        return [_keep_lines(_fill(_draw(TEXT_TEMPLATES, rng), text=t), max_tokens)
                for t in texts]


def say_label(label: str, ranked: list[str], parsed: ParsedPrompt, rng: random.Random) -> str:
    """``label`` written in one of the templates (drawn with ``rng``)."""
    other = next((o for o in ranked if o != label), label)
    if _all_numbers(parsed.options):
        top = max(parsed.options, key=float)
        return _fill(_draw(RATING_TEMPLATES, rng), label=label, top=top)
    return _fill(_draw(LABEL_TEMPLATES, rng), label=label, other=other)


def _draw(templates: tuple[tuple[str, float], ...], rng: random.Random) -> str:
    return rng.choices([t for t, _ in templates], weights=[w for _, w in templates], k=1)[0]


def _fill(template: str, **values: str) -> str:
    label = values.get("label", "")
    return template.format(LABEL=label.upper(), lower=label.lower(), **values)


def _keep_lines(text: str, max_tokens: int | None) -> str:
    """``text`` cut to ``max_tokens`` words, its line breaks kept."""
    if not max_tokens:
        return text
    out, left = [], max_tokens
    for line in text.split("\n"):
        words = line.split()
        out.append(" ".join(words[:left]))
        left -= min(left, len(words))
    return "\n".join(out).rstrip()
