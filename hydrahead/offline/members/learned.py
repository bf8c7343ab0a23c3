"""``learned``: a member whose reading of examples is learned from data, not written as rules.
A SIMULATOR, not a language model.

Its weights (``hydrahead/offline/learned_weights.npz``, a few KB) are made by
``python -m hydrahead.offline.train_learned`` (:mod:`hydrahead.offline.train_learned`) from
text that is in no benchmark: Python's own help texts (``pydoc_data.topics``) and the
docstrings of the standard library's modules. This module holds what the member computes from
a prompt (the features) and how the weights turn them into scores; the training script builds
episodes whose features are computed by the same functions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hydrahead.runtime.errors import HydraheadError
from hydrahead.runtime.npz_file import read_npz, write_npz

from ..simulator import (GenerationCandidate, ParsedPrompt, _style, best_first,
                         generation_candidates, tokens, world_prior)
from .base import Member, first_sentence, votes

WEIGHTS_FILE = Path(__file__).resolve().parent.parent / "learned_weights.npz"
"""The committed weights (``hydrahead/offline/learned_weights.npz``)."""
WEIGHTS_FORMAT = "hydrahead-offline-learned"
WEIGHTS_VERSION = 1

OPTION_FEATURES = ("prior", "max_sim", "sum_sim", "share", "last", "first", "shown",
                   "name_overlap")
"""What the learned member reads about each option (see :func:`option_features`)."""
TEXT_FEATURES = ("bonus", "prefix", "density", "length_gap", "rank", "answer_overlap",
                 "compression", "repeated")
"""What it reads about each generation candidate (see :func:`text_features`)."""


@dataclass(frozen=True)
class LearnedWeights:
    """The learned member's parameters.

    Attributes:
        hidden_w: ``(H, len(OPTION_FEATURES))``: the option scorer's hidden layer.
        hidden_b: ``(H,)``: its bias.
        out_w: ``(H,)``: the option scorer's output layer (an option's logit is
            ``out_w . tanh(hidden_w @ f + hidden_b)``).
        text_w: ``(len(TEXT_FEATURES),)``: a generation candidate's logit is ``text_w . g``.
        meta: What they were trained on, and how well they did.
    """

    hidden_w: np.ndarray
    hidden_b: np.ndarray
    out_w: np.ndarray
    text_w: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def option_logits(self, features: np.ndarray) -> np.ndarray:
        """The logit of each option, from ``(L, len(OPTION_FEATURES))`` features."""
        return np.tanh(features @ self.hidden_w.T + self.hidden_b) @ self.out_w

    def text_logits(self, features: np.ndarray) -> np.ndarray:
        """The logit of each candidate, from ``(C, len(TEXT_FEATURES))`` features."""
        return features @ self.text_w

    def save(self, path: str | Path) -> None:
        """Write the weights as a versioned ``.npz`` (:mod:`hydrahead.runtime.npz_file`)."""
        write_npz(path, {"hidden_w": self.hidden_w, "hidden_b": self.hidden_b,
                         "out_w": self.out_w, "text_w": self.text_w},
                  format=WEIGHTS_FORMAT, version=WEIGHTS_VERSION,
                  meta={**self.meta, "option_features": list(OPTION_FEATURES),
                        "text_features": list(TEXT_FEATURES)}, mode=0o644)

    @classmethod
    def load(cls, path: str | Path = WEIGHTS_FILE) -> LearnedWeights:
        """Read weights written by :meth:`save`.

        Raises:
            HydraheadError: The file is missing, damaged, or made for other features.
        """
        hint = "rebuild it with `python -m hydrahead.offline.train_learned`"
        npz = read_npz(path, format=WEIGHTS_FORMAT, versions=WEIGHTS_VERSION,
                       error=HydraheadError, hint=hint, what="learned simulator weights")
        a, meta = npz.arrays, npz.meta
        shapes_ok = (
            {"hidden_w", "hidden_b", "out_w", "text_w"} <= set(a)
            and a["hidden_w"].ndim == 2 and a["hidden_w"].shape[1] == len(OPTION_FEATURES)
            and a["hidden_b"].shape == a["out_w"].shape == (a["hidden_w"].shape[0],)
            and a["text_w"].shape == (len(TEXT_FEATURES),)
            and meta.get("option_features") == list(OPTION_FEATURES)
            and meta.get("text_features") == list(TEXT_FEATURES))
        if not shapes_ok:
            raise HydraheadError(f"{path} holds weights for other features; {hint}")
        hidden_w, hidden_b, out_w, text_w = (np.asarray(a[k], dtype=np.float64)
                                             for k in ("hidden_w", "hidden_b", "out_w", "text_w"))
        return cls(hidden_w, hidden_b, out_w, text_w, meta=meta)


_committed: LearnedWeights | None = None


def committed_weights() -> LearnedWeights:
    """The weights committed with hydrahead (read once)."""
    global _committed
    if _committed is None:
        _committed = LearnedWeights.load(WEIGHTS_FILE)
    return _committed


# ------------------------------------------------------------------------------- features
def option_features(parsed: ParsedPrompt) -> np.ndarray:
    """``(len(options), len(OPTION_FEATURES))``: for each option, in order,

    * ``prior``: the default's world prior (key words, rating sentiment, LaMP-1 references);
    * ``max_sim`` / ``sum_sim``: the largest / summed similarity to the query of the examples
      that carry it (see :func:`~hydrahead.offline.members.base.votes`);
    * ``share``: the share of the examples that carry it;
    * ``last``: ``(i + 1) / m`` for the last example ``i`` that carries it (0 if none);
    * ``first``: 1 if the first example carries it;
    * ``shown``: 1 if some example carries it;
    * ``name_overlap``: the share of the option's own words found in the query.
    """
    world = world_prior(parsed)
    options = parsed.options
    index = {o: i for i, o in enumerate(options)}
    feats = np.zeros((len(options), len(OPTION_FEATURES)))
    feats[:, 0] = [world.prior[o] for o in options]
    found = votes(parsed, world)
    m = len(found)
    for vote in found:
        if vote.label is None:
            continue
        row = feats[index[vote.label]]
        row[1] = max(row[1], vote.similarity)
        row[2] += vote.similarity
        row[3] += 1.0 / m
        row[4] = (vote.position + 1) / m
        row[5] = max(row[5], float(vote.position == 0))
        row[6] = 1.0
    query_words = set(tokens(parsed.query))
    for i, o in enumerate(options):
        words = set(tokens(o))
        feats[i, 7] = len(words & query_words) / len(words) if words else 0.0
    return feats


def text_features(parsed: ParsedPrompt, found: list[GenerationCandidate]) -> np.ndarray:
    """``(len(found), len(TEXT_FEATURES))``: for each candidate, in order, the default's own
    terms (``bonus``, ``prefix`` score, key-word ``density``, ``length_gap`` = relative distance
    from the target length, ``rank`` of its variant over the number of variants), its
    ``answer_overlap`` (the share of its words found in the examples' answers), its
    ``compression`` (its words over the query's first sentence's, at most 1) and ``repeated``
    (the share of its words that the query uses more than once)."""
    answer_words: set[str] = set()
    for ex in parsed.examples:
        answer_words.update(tokens(ex.answer or ""))
    query = parsed.query if parsed.query.strip() else parsed.instruction
    sentence = max(len(first_sentence(query).split()), 1)
    counts = Counter(tokens(query))
    ranks = max((c.rank for c in found), default=0) + 1
    feats = np.zeros((len(found), len(TEXT_FEATURES)))
    for i, c in enumerate(found):
        words = tokens(c.text)
        overlap = (sum(w in answer_words for w in words) / len(words)) if words else 0.0
        repeated = (sum(counts[w] > 1 for w in words) / len(words)) if words else 0.0
        feats[i] = (c.bonus, c.prefix_score, c.density, abs(c.words - c.target) / c.target,
                    c.rank / ranks, overlap, min(1.0, c.words / sentence), repeated)
    return feats


# ---------------------------------------------------------------------------------- member
class LearnedLLM(Member):
    """``learned``: scores options and generation candidates with weights learned from data.
    A SIMULATOR.

    Contract:
        * Reads the features of :func:`option_features` (world prior, the examples' labels with
          their similarity to the query, count, first and last position, the option's words in
          the query) and of :func:`text_features`; nothing else.
        * Classification / ratings: ``score(l)`` is the logit of a one-hidden-layer network
          (8 tanh units) applied to option ``l``'s features; the weights are fitted by
          :mod:`hydrahead.offline.train_learned` to answer synthetic episodes built from
          Python's help texts (``pydoc_data.topics``: examples = paragraphs labelled with their
          topic, query = another paragraph, options = topic names): how much it trusts
          similarity, count, position or the prior is what those episodes taught it.
        * Generation: the default's extractive candidates (styled like the examples, as the
          default's) scored by a linear function of their features, fitted to pick the
          candidate closest to the summary line of standard-library docstrings, given the
          docstring's body as the query and other docstrings of its module as examples.
        * Sampling: the default's, from the logits.
        * Its weights are the committed ``hydrahead/offline/learned_weights.npz`` unless
          others are given; ``python -m hydrahead.offline.train_learned`` rebuilds them (the
          help texts and docstrings are those of the Python that runs it).

    Args:
        weights: Weights to use (default: the committed ones).
    """

    name = "learned"
    summary = "learned from data: a tiny network trained on Python's help texts and docstrings"

    def __init__(self, weights: LearnedWeights | None = None) -> None:
        super().__init__()
        self.weights = weights or committed_weights()

    def option_scores(self, parsed: ParsedPrompt) -> dict[str, float]:
        logits = self.weights.option_logits(option_features(parsed))
        return {o: float(s) for o, s in zip(parsed.options, logits)}

    def generation_pool(self, parsed: ParsedPrompt,
                        max_tokens: int | None = None) -> list[tuple[str, float]]:
        found = generation_candidates(parsed, _style(parsed, self.params), max_tokens)
        if not found:
            return best_first(())
        logits = self.weights.text_logits(text_features(parsed, found))
        return best_first((c.text, float(s)) for c, s in zip(found, logits))
