"""What the adapter knows about each LLM candidate: named, history-aware features.

In HYDRA the adapter reads the whole prompt (the reranked history and the query) followed by a
candidate. hydrahead's fast mode gives its adapter the same knowledge as a few named numbers per
candidate, computed on the device from the LLM's answers *and* from the user's history, including
the wider top-``k`` retrieved records that never leave the device (``k`` > ``m``)::

    candidates = distinct(greedy answer, N samples)       the LLM's T=0 answer comes first
    x(c) = [feature_1(c), ..., feature_F(c)]              ADAPTER_FEATURES, in this order

The shared adapter base passes ``x`` through as the first ``F`` hidden features (see
:mod:`hydrahead.runtime.pair_base`); its base head reads only ``llm_greedy`` (and ``llm_vote``
to order the rest), so an unfitted adapter answers exactly what the LLM answers at temperature 0
to the same prompt: the unfitted pipeline *is* dense RAG. A user's head learns departures from
it, from labels made on that user's own history.

"Agreement" of two answers is task-dependent: equality of the parsed answers (classification),
``1 - |a - b| / range`` (ratings), or the unigram-overlap F1 of their words (generation: the
ROUGE-1 formula on lower-cased words, without stemming; cheap enough for every ask).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .tasks import Task

NEIGHBOUR_TEMPERATURE = 0.05
RECENT = 5

ADAPTER_FEATURES: dict[str, str] = {
    "llm_greedy": "1 if the candidate is the LLM's temperature-0 answer to the same prompt, else 0",
    "llm_vote": "share of the LLM's N samples that gave this answer",
    "sample_consensus": "mean agreement of the candidate with the N samples (for generation the "
                        "minimum-Bayes-risk consensus; for labels it equals llm_vote)",
    "history_agreement": "agreement of the candidate with the answers of the top-k retrieved "
                         "records, each weighted by softmax(cosine / 0.05): what this user "
                         "answered to the most similar items, including those not in the prompt",
    "prompt_agreement": "mean agreement of the candidate with the answers of the m records in "
                        "the prompt",
    "recent_agreement": "mean agreement of the candidate with the answers of the most recent "
                        f"{RECENT} of the top-k records (by timestamp): what this user answered "
                        "lately to similar items, when conventions drift",
    "user_habit": "labels: the share of the user's whole history with this answer (add-one "
                  "smoothed); generation: the weighted share of the top-k records whose answer "
                  "has the same 'prefix: ' form (same prefix, or both none)",
    "length_fit": "generation: 1 - |words(c) - typical words| / typical words, clipped to "
                  "[-1, 1], where typical is the weighted median length of the top-k records' "
                  "answers; 0 for other tasks",
    "query_similarity": "cosine of the candidate's and the query's embeddings",
}
"""The adapter's named features, in the order of the feature vector, with what each measures."""

FEATURE_NAMES: tuple[str, ...] = tuple(ADAPTER_FEATURES)
GREEDY, VOTE = 0, 1  # indices the base head reads
_PREFIX = re.compile(r"^([A-Za-z0-9_./*+\-]{1,32}):\s+(?=\S)")
_WORD = re.compile(r"\w+")


@dataclass
class CandidateContext:
    """Everything the adapter may read for one query, besides the candidates themselves.

    Attributes:
        query_vec: The query's embedding.
        neighbour_answers: Answers of the top-k retrieved records, best first (None: no answer).
        neighbour_scores: Their cosine similarities to the query.
        neighbour_times: Their timestamps (None: unknown).
        prompt_answers: Answers of the m records in the prompt.
        greedy: The LLM's temperature-0 answer (None when it was not asked for).
        samples: The LLM's N sampled answers, as returned.
        answer_counts: How often the user gave each answer over the whole history (labels).
    """

    query_vec: np.ndarray
    neighbour_answers: list[str | None] = field(default_factory=list)
    neighbour_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    neighbour_times: list[float | None] = field(default_factory=list)
    prompt_answers: list[str | None] = field(default_factory=list)
    greedy: str | None = None
    samples: list[str] = field(default_factory=list)
    answer_counts: Mapping[str, int] = field(default_factory=dict)


def distinct_candidates(greedy: str | None, samples: Sequence[str]) -> list[str]:
    """The distinct non-empty candidate texts: the greedy answer first, then samples in order."""
    texts = ([greedy] if greedy is not None else []) + list(samples)
    return list(dict.fromkeys(t for t in texts if t.strip()))


def candidate_features(
    task: Task, context: CandidateContext, candidates: Sequence[str], candidate_vecs: np.ndarray
) -> np.ndarray:
    """The (len(candidates), F) float32 feature matrix, columns as in :data:`ADAPTER_FEATURES`.

    Args:
        task: Parses and compares answers.
        context: The query's context (history and LLM answers).
        candidates: The candidate texts (:func:`distinct_candidates`).
        candidate_vecs: Their embeddings, (len(candidates), dim).
    """
    agree = _Agreement(task)
    answers = [agree.prepare(c) for c in candidates]
    samples = [agree.prepare(s) for s in context.samples if s.strip()]
    greedy = agree.prepare(context.greedy) if context.greedy else None
    neighbours = [agree.prepare(a) for a in context.neighbour_answers]
    prompt = [agree.prepare(a) for a in context.prompt_answers]
    weights = _neighbour_weights(context.neighbour_scores, neighbours)
    recent = _most_recent(neighbours, context.neighbour_times)
    generation = task.kind == "generation"
    if generation:
        habit = _prefix_shares(context.neighbour_answers, weights)
        typical = _typical_length(context.neighbour_answers, weights)
    else:
        total = sum(context.answer_counts.values())
        n_labels = max(len(task.labels), 1)
    X = np.zeros((len(candidates), len(FEATURE_NAMES)), dtype=np.float64)
    for i, (text, a) in enumerate(zip(candidates, answers)):
        X[i, 0] = float(greedy is not None and agree.same(a, greedy))
        X[i, 1] = _share(samples, lambda s: agree.same(a, s))
        X[i, 2] = _mean([agree(a, s) for s in samples])
        X[i, 3] = float(sum(w * agree(a, n) for w, n in zip(weights, neighbours) if n is not None))
        X[i, 4] = _mean([agree(a, p) for p in prompt if p is not None])
        X[i, 5] = _mean([agree(a, r) for r in recent])
        if generation:
            X[i, 6] = habit.get(_prefix_of(text), 0.0)
            if typical > 0:
                words = len(_PREFIX.sub("", text.strip()).split())
                X[i, 7] = float(np.clip(1.0 - abs(words - typical) / typical, -1.0, 1.0))
        else:
            key = task.parse(text)
            count = context.answer_counts.get(str(key), 0) if key is not None else 0
            X[i, 6] = (count + 1.0) / (total + n_labels)
    if len(candidates):
        q = np.asarray(context.query_vec, dtype=np.float64)
        C = np.asarray(candidate_vecs, dtype=np.float64)
        X[:, 8] = (C @ q) / np.maximum(np.linalg.norm(C, axis=1) * np.linalg.norm(q), 1e-12)
    return X.astype(np.float32)


def answer_counts(task: Task, answers: Sequence[str | None]) -> Counter[str]:
    """How often each parsed answer occurs (what ``user_habit`` reads for labels)."""
    if task.kind == "generation":
        return Counter()
    parsed = (task.parse(a) for a in answers if a is not None)
    return Counter(str(p) for p in parsed if p is not None)


def word_counts(text: str) -> Counter[str]:
    """Lower-cased word counts of ``text`` (what overlap F1 compares)."""
    return Counter(_WORD.findall(text.lower()))


def overlap_f1(a: Counter[str], b: Counter[str]) -> float:
    """Unigram-overlap F1 of two word counts: ROUGE-1's formula, without stemming."""
    overlap = sum((a & b).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(a.values()), overlap / sum(b.values())
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------- internals
class _Agreement:
    """Agreement of two answers in [0, 1] (see the module docstring)."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.kind = task.kind
        if self.kind == "regression":
            values = [float(x) for x in task.labels]
            self.span = (max(values) - min(values)) or 1.0

    def prepare(self, text: str | None) -> Any:
        """What comparisons read: the parsed answer, or the word counts for generation."""
        if text is None:
            return None
        if self.kind == "generation":
            return word_counts(text)
        return self.task.parse(text)

    def same(self, a: Any, b: Any) -> bool:
        return a is not None and b is not None and a == b

    def __call__(self, a: Any, b: Any) -> float:
        if a is None or b is None:
            return 0.0
        if self.kind == "generation":
            return overlap_f1(a, b)
        if self.kind == "regression":
            return max(0.0, 1.0 - abs(float(a) - float(b)) / self.span)
        return float(a == b)


def _neighbour_weights(scores: np.ndarray, answers: Sequence[Any]) -> np.ndarray:
    """softmax(cosine / T) over the neighbours that carry an answer (0 for the others)."""
    s = np.asarray(scores, dtype=np.float64)
    has = np.array([a is not None for a in answers], dtype=bool)
    if s.size == 0 or not has.any():
        return np.zeros(s.size)
    z = np.where(has, (s - s[has].max()) / NEIGHBOUR_TEMPERATURE, -np.inf)
    w = np.exp(z)
    return w / w.sum()


def _most_recent(answers: Sequence[Any], times: Sequence[float | None]) -> list[Any]:
    """The answers of the RECENT newest neighbours that have an answer and a timestamp."""
    dated = [(t, i) for i, (a, t) in enumerate(zip(answers, times)) if a is not None
             and t is not None]
    return [answers[i] for _, i in sorted(dated, reverse=True)[:RECENT]]


def _share(items: Sequence[Any], predicate: Any) -> float:
    return sum(1 for x in items if predicate(x)) / len(items) if items else 0.0


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def _prefix_of(text: str) -> str:
    m = _PREFIX.match(text.strip())
    return m.group(1).lower() if m else ""


def _prefix_shares(answers: Sequence[str | None], weights: np.ndarray) -> dict[str, float]:
    shares: dict[str, float] = {}
    for a, w in zip(answers, weights):
        if a is not None:
            key = _prefix_of(a)
            shares[key] = shares.get(key, 0.0) + float(w)
    return shares


def _typical_length(answers: Sequence[str | None], weights: np.ndarray) -> float:
    """Weighted median word count of the answers (prefix excluded); 0 without answers."""
    pairs = sorted(
        (len(_PREFIX.sub("", a.strip()).split()), float(w))
        for a, w in zip(answers, weights) if a is not None and w > 0
    )
    half, acc = sum(w for _, w in pairs) / 2, 0.0
    for length, w in pairs:
        acc += w
        if acc >= half:
            return float(length)
    return 0.0
