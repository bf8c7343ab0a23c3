"""The ask pipeline: from a query to the adapter's pick among the LLM's candidates.

::

    encode query -> retrieve top-k history (HNSW; BM25 or fused where the user's fit chose)
    -> reranker (shared base + user head) keeps m
    -> task prompt with those m records -> remote LLM: its greedy answer and N samples
    -> adapter (shared base + user head) scores each distinct candidate from its
       history-aware features (adapter_features) -> answer = argmax

:meth:`AskPipeline.prepare` is the device's work before the LLM call, :meth:`AskPipeline.choose`
the work after it, and :meth:`AskPipeline.ask` both with the LLM calls between. Only the
rendered prompt (the query and the m reranked records) leaves the device; the top-k records
beyond the prompt are read only by the adapter, locally.
"""

from __future__ import annotations

import concurrent.futures
import functools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import reranker_features
from .adapter_features import (
    FEATURE_NAMES,
    CandidateContext,
    answer_counts,
    candidate_features,
    distinct_candidates,
)
from .candidate_cache import CandidateCache
from .encoder import Encoder
from .errors import InvalidInputError, LLMResponseError
from .heads import Head
from .labeling import query_seed
from .llm.client import Completion, LLMClient
from .records import Hit, Record, check_text
from .retrieval import KeywordIndex, combine
from .settings import Settings
from .store import HistoryStore
from .tasks import Task
from .user_heads import UserHeads


@dataclass
class Candidate:
    """One distinct LLM candidate: its parsed answer, the adapter's score and its features."""

    text: str
    answer: Any
    score: float
    features: dict[str, float]


@dataclass
class RankedItem:
    """A retrieved history record with its retrieval (cosine) and reranker scores."""

    record: Record
    retrieval_score: float
    rerank_score: float


@dataclass
class Prepared:
    """The device's part of a request before the LLM call."""

    query: str
    query_vec: np.ndarray
    neighbours: list[Hit]  # the top-k retrieved records, best first (never sent)
    items: list[RankedItem]  # the m reranked records in the prompt
    prompt: str


@dataclass
class Answer:
    """What ``ask()`` returns."""

    answer: Any
    text: str
    prompt: str
    candidates: list[Candidate]
    items: list[RankedItem]
    simulated: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
    llm_requests: int = 0  # HTTP requests sent for this answer (0 when all came from cache)
    prompt_tokens: int = 0  # as the server reported them
    completion_tokens: int = 0
    context: CandidateContext | None = field(default=None, repr=False)  # what the adapter read

    @property
    def local_ms(self) -> float:
        """Time spent on the device (everything but the LLM call)."""
        return sum(v for k, v in self.timings_ms.items() if k != "llm")


class AskPipeline:
    """One user's retrieve -> rerank -> prompt -> LLM -> adapter pipeline.

    Args:
        store: The user's history store.
        encoder: The bundle's encoder (shared with ``store``).
        task: The task that renders prompts and parses answers.
        settings: ``k``, ``m``, ``n``, ``temperature``, ``max_tokens``, ``seed``, ``greedy``.
        heads: The user's heads (read at every call, so a refit takes effect at once).
        candidates: The embedding cache of candidate texts.
    """

    def __init__(self, store: HistoryStore, encoder: Encoder, task: Task, settings: Settings,
                 heads: UserHeads, candidates: CandidateCache) -> None:
        self.store, self.encoder, self.task, self.settings = store, encoder, task, settings
        self.heads, self.candidates = heads, candidates
        self._answer_counts: tuple[int, Counter[str]] | None = None  # (store generation, counts)
        # (store generation, ids, id -> position, BM25), for users who retrieve by BM25 too
        self._keywords: tuple[int, list[str], dict[str, int], KeywordIndex] | None = None

    # ------------------------------------------------------------------ the two heads' scores
    def rerank_scores(self, query: str, query_vec: np.ndarray, records: Sequence[Record],
                      item_vecs: np.ndarray, cosines: np.ndarray, *,
                      head: Head | None = None) -> np.ndarray:
        """Reranker scores (shared base + the user's head) of retrieved records for a query.

        Args:
            query: The query text.
            query_vec: Its embedding.
            records: The retrieved records (the local corpus of the reranker's features).
            item_vecs: Their embeddings.
            cosines: Their cosine similarity to the query.
            head: Score with this reranker head instead of the one the user's pipeline reads.
        """
        X = reranker_features.reranker_features(self.task, query, records, cosines)
        texts = [self.task.example_text(r) for r in records]
        H = self.heads.featurizers["reranker"].hidden_of(query, query_vec, texts, item_vecs, X)
        return (head or self.heads["reranker"]).scores(H)

    def adapter_scores(self, query: str, query_vec: np.ndarray, texts: Sequence[str],
                       cand_vecs: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Adapter scores (shared base + the user's head) of candidates for a query.

        Args:
            query: The query text.
            query_vec: Its embedding.
            texts: The candidate texts.
            cand_vecs: Their embeddings.
            features: Their named features (:func:`~hydrahead.runtime.adapter_features.
                candidate_features`), one row per candidate.
        """
        H = self.heads.featurizers["adapter"].hidden_of(query, query_vec, texts, cand_vecs,
                                                         features)
        return self.heads["adapter"].scores(H)

    # ------------------------------------------------------------------ before the LLM
    def rerank(self, query: str, query_vec: np.ndarray | None = None, *,
               head: Head | None = None) -> list[RankedItem]:
        """Retrieve ``k`` records and return the top ``m`` by the reranker, best first (none
        where the user's last fit found that records hurt: :meth:`UserHeads.prompt_records`);
        ``head`` ranks with that reranker head instead of the one the pipeline reads."""
        qvec = self.encoder.encode_one(query) if query_vec is None else query_vec
        return self._rerank(query, qvec, self.retrieve(query, qvec), head)

    def retrieve(self, query: str, query_vec: np.ndarray) -> list[Hit]:
        """The ``k`` records that reach the reranker, by the user's retrieval
        (:meth:`UserHeads.retrieval`: dense unless their fit chose BM25 or both fused), each
        with its cosine to the query, most similar first."""
        k = self.settings.k
        dense = self.store.search(query_vec, k=k)
        method = self.heads.retrieval()
        if method == "dense":
            return dense
        ids, position, index = self._keyword_index()
        have = {position[h.record.id]: h for h in dense if h.record.id in position}
        chosen = combine(method, list(have), index.top(query, k), k)
        extra = [ids[i] for i in chosen if i not in have]
        if extra:
            vectors = self.store.vectors(extra).astype(np.float64)
            q = query_vec.astype(np.float64)
            cosines = vectors @ q / np.maximum(
                np.linalg.norm(vectors, axis=1) * np.linalg.norm(q), 1e-12)
            for record, vector, cosine in zip(self.store.get_many(extra), vectors, cosines):
                have[position[record.id]] = Hit(record, float(cosine),
                                                vector.astype(np.float32))
        hits = [have[i] for i in chosen if i in have]
        return sorted(hits, key=lambda h: -h.score)

    def _keyword_index(self) -> tuple[list[str], dict[str, int], KeywordIndex]:
        """BM25 over the user's records as prompts show them, with the records' ids and each
        id's position in it; rebuilt after any change to the history."""
        generation = self.store.generation
        if self._keywords is None or self._keywords[0] != generation:
            records = list(self.store.iter())
            ids = [r.id for r in records]
            index = KeywordIndex([self.task.example_text(r) for r in records])
            self._keywords = (generation, ids, {rid: i for i, rid in enumerate(ids)}, index)
        return self._keywords[1:]

    def _rerank(self, query: str, qvec: np.ndarray, hits: Sequence[Hit],
                head: Head | None = None) -> list[RankedItem]:
        m = self.heads.prompt_records(self.settings.m)  # 0 where records hurt this user's LLM
        if not hits or m == 0:
            return []
        scores = self.rerank_scores(
            query, qvec, [h.record for h in hits], np.stack([h.vector for h in hits]),
            np.array([h.score for h in hits]), head=head)
        order = np.argsort(-scores, kind="stable")[:m]
        return [RankedItem(hits[i].record, float(hits[i].score), float(scores[i])) for i in order]

    def prepare(self, query: str) -> Prepared:
        """The device's work before the LLM call: embed, retrieve, rerank, render the prompt.

        Raises:
            InvalidInputError: for an empty or non-string query, or one over
                :data:`~hydrahead.runtime.records.MAX_TEXT_BYTES` (as ``add`` and ``search``).
        """
        check_text(query, "the query")
        qvec = self.encoder.encode_one(query)
        hits = self.retrieve(query, qvec)
        items = self._rerank(query, qvec, hits)
        prompt = self.task.render_prompt(query, [it.record for it in items])
        return Prepared(query, qvec, hits, items, prompt)

    # ------------------------------------------------------------------ after the LLM
    def choose(self, prepared: Prepared, texts: Sequence[str], *, greedy: str | None = None,
               simulated: bool = False) -> Answer:
        """The device's work after the LLM call: score the candidates with the adapter, pick one.

        Args:
            prepared: What :meth:`prepare` returned for the query.
            texts: The LLM's sampled candidate texts (``n`` of them, as returned).
            greedy: The LLM's temperature-0 answer to the same prompt, if it was asked for.
            simulated: Whether they came from the offline simulator (carried into the answer).
        """
        context = self.context(prepared, greedy, texts)
        candidates = self._score_candidates(prepared.query, context,
                                            distinct_candidates(greedy, texts))
        if not candidates:
            raise LLMResponseError("the LLM returned no candidate text to choose from")
        best = _pick(candidates)
        return Answer(answer=best.answer, text=best.text, prompt=prepared.prompt,
                      candidates=candidates, items=prepared.items, simulated=simulated,
                      context=context)

    def ask(self, query: str, client: Callable[[], LLMClient], *,
            greedy: bool | None = None) -> Answer:
        """:meth:`prepare`, the LLM call(s), :meth:`choose`.

        Two requests go out at once with the same prompt: the greedy answer (``n=1``,
        temperature 0; skipped when ``greedy`` is off) and ``n`` samples at ``temperature``
        (:func:`_complete_at_once`), so the answer costs one round trip. Without the greedy
        request (the one-request mode) the prompt is sent once, and the unfitted adapter picks
        the samples' consensus (self-consistency).

        Args:
            query: The query.
            client: Returns the LLM client; called after :meth:`prepare`, so that a bad query
                is refused before any LLM is set up.
            greedy: Ask for the greedy answer too; ``None``: as the settings say.

        Raises:
            InvalidInputError: for an empty or non-string query.
            LLMError: when a request gets no usable answer (the greedy request's error first,
                as when the two went one after the other); raised once both have finished.
        """
        s = self.settings
        with_greedy = s.greedy if greedy is None else greedy
        if not isinstance(with_greedy, bool):
            raise InvalidInputError(f"greedy must be True, False or None, got {greedy!r}")
        t0 = time.perf_counter()
        prepared = self.prepare(query)
        t1 = time.perf_counter()
        llm = client()
        common = {"max_tokens": s.max_tokens, "seed": query_seed(query, s.seed),
                  "sources": [it.record.id for it in prepared.items]}
        requests = [{"n": s.n, "temperature": s.temperature, **common}]
        if with_greedy:
            requests.insert(0, {"n": 1, "temperature": 0.0, **common})
        calls = _complete_at_once(llm, prepared.prompt, requests)
        t2 = time.perf_counter()
        greedy_text = calls[0].texts[0] if with_greedy and calls[0].texts else None
        answer = self.choose(prepared, calls[-1].texts, greedy=greedy_text,
                             simulated=any(c.simulated for c in calls))
        t3 = time.perf_counter()
        answer.timings_ms = {"prepare": (t1 - t0) * 1e3, "llm": (t2 - t1) * 1e3,
                             "choose": (t3 - t2) * 1e3}
        answer.llm_requests = sum(c.requests_sent for c in calls)
        answer.prompt_tokens = sum(c.prompt_tokens for c in calls)
        answer.completion_tokens = sum(c.completion_tokens for c in calls)
        return answer

    def context(self, prepared: Prepared, greedy: str | None,
                samples: Sequence[str]) -> CandidateContext:
        """What the adapter reads about a query besides the candidates themselves."""
        return CandidateContext(
            query_vec=prepared.query_vec,
            neighbour_answers=[self.task.answer_of(h.record) for h in prepared.neighbours],
            neighbour_scores=np.array([h.score for h in prepared.neighbours], dtype=np.float32),
            neighbour_times=[h.record.timestamp for h in prepared.neighbours],
            prompt_answers=[self.task.answer_of(it.record) for it in prepared.items],
            greedy=greedy,
            samples=list(samples),
            answer_counts=self._user_answer_counts(),
        )

    def _score_candidates(self, query: str, context: CandidateContext,
                          texts: Sequence[str]) -> list[Candidate]:
        if not texts:
            return []
        vecs = self.candidates.vectors(texts)
        X = candidate_features(self.task, context, texts, vecs)
        scores = self.adapter_scores(query, context.query_vec, texts, vecs, X)
        cands = [
            Candidate(t, self.task.parse(t), float(s), dict(zip(FEATURE_NAMES, map(float, x))))
            for t, s, x in zip(texts, scores, X)
        ]
        return sorted(cands, key=lambda c: -c.score)  # stable: ties keep the LLM's order

    def _user_answer_counts(self) -> Counter[str]:
        """How often the user gave each answer, over the whole history (cached per change)."""
        if self.task.kind == "generation":
            return Counter()
        generation = self.store.generation
        if self._answer_counts is None or self._answer_counts[0] != generation:
            answers = [self.task.answer_of(r) for r in self.store.iter()]
            self._answer_counts = (generation, answer_counts(self.task, answers))
        return self._answer_counts[1]


def _complete_at_once(llm: LLMClient, prompt: str, requests: Sequence[dict[str, Any]]
                      ) -> list[Completion]:
    """``llm.complete(prompt, **r)`` for each of ``requests``, all at once; in their order.

    The last request (the samples) is sent from this thread, the others (the greedy answer,
    ``n=1``: it makes no extra calls, so it never waits on the pool it runs on) from the
    client's thread pool (:meth:`LLMClient.submit`). It returns or raises only once every
    request has finished, so that no request is still running behind the caller; the first
    request's error in their order is raised, whichever failed first in time.
    """
    *others, last = requests
    futures = [llm.submit(functools.partial(llm.complete, prompt, **r)) for r in others]
    error: Exception | None = None
    try:
        final = llm.complete(prompt, **last)
    except Exception as exc:  # raised below, after the others' errors
        error = exc
    finally:
        concurrent.futures.wait(futures)  # also on KeyboardInterrupt: nothing left running
    for future in futures:
        failed = future.exception()
        if failed is not None:
            raise failed
    if error is not None:
        raise error
    return [f.result() for f in futures] + [final]


def _pick(candidates: Sequence[Candidate]) -> Candidate:
    """The adapter's choice: the best-scored candidate whose text parses to an answer."""
    parsed = [c for c in candidates if c.answer is not None]
    return max(parsed or candidates, key=lambda c: c.score)
