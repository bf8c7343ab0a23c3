"""Training labels for a user's heads, made by the LLM from the user's own history (HYDRA).

HYDRA has no human relevance labels; it asks the black-box LLM which history records help.
hydrahead makes them the way the device will use the heads: **predicting a record from the
records before it**. Each labelling query is one of the user's most recent records (its own
answer is the gold); its history is every record strictly older (timestamp, then insertion
order), searched exactly like ``ask()`` searches: the top ``k`` by the user's retrieval (by
cosine unless the history says BM25 or both fused serve this user better:
:meth:`Labeler.retrieval_quality`, :mod:`hydrahead.runtime.retrieval`).

* **Reranker labels** judge single records taken across the whole top-``k`` depth that ``ask()``
  reranks (``items_per_query`` of them, one from each equal slice of the ranking):

  - ``"graded"`` (default): one request with ``n`` samples per record, with only that record in
    the prompt, plus one with no record at all. The label is how much the record moves the
    quality of the samples: ``delta = quality(with) - quality(without)``, where quality is the
    share of correct samples (labels, ratings) or their mean (ROUGE-1 + ROUGE-L) / 2 against the
    gold (generation). Targets are ``0.5 + 0.5 * delta / max|delta|`` over the user's pairs: a
    record that helps most gets 1, one that misleads most gets 0, one that changes nothing 0.5.
  - ``"binary"`` (HYDRA's rule): one temperature-0 answer per record; 1 if it is right
    (generation: if its ROUGE beats the mean over the query's records), else 0.

* **Adapter labels** ask for the reranked prompt (the reranker just fitted picks ``m`` of the
  top ``k``) exactly as ``ask()`` does: the greedy answer (temperature 0) and ``n`` samples. Each
  distinct candidate gets the features of :mod:`hydrahead.runtime.adapter_features` (computed
  from the same history the query had) and a target: 1/0 for a right/wrong label, or for
  generation its ROUGE against the gold divided by the best candidate's.

Every prompt built here holds one query record plus zero or one retrieved record (reranker) or
the top ``m`` reranked records (adapter); nothing else leaves the device.
"""

from __future__ import annotations

import functools
import sys
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from .adapter_features import (
    CandidateContext,
    answer_counts,
    candidate_features,
    distinct_candidates,
)
from .errors import InvalidInputError, LLMBudgetError
from .llm.client import LLMClient, RequestBudget
from .pairs import PairSet
from .records import Record, check_int
from .reranker_features import reranker_features
from .retrieval import RETRIEVALS, KeywordIndex, combine
from .settings import Settings
from .tasks import Task
from .validation import RetrievalCheck, check_retrieval

if TYPE_CHECKING:  # an annotation only
    from .store import HistoryStore

# Scores (query text, query vector, records, their vectors, their cosines) -> reranker scores;
# lets the adapter's prompts use the same reranking as ask() does.
RerankFn = Callable[[str, np.ndarray, Sequence[Record], np.ndarray, np.ndarray], np.ndarray]
EmbedFn = Callable[[Sequence[str]], np.ndarray]
RERANKER_RULES = ("graded", "binary")
RETRIEVAL_CHECK_RECORDS = 30
"""The user's newest records on which the retrievals are compared (no LLM call is made)."""


@dataclass
class LabelSet:
    """What one labelling run produced, and what it cost.

    Attributes:
        llm_calls: Logical LLM calls (``complete``), cached ones included.
        llm_calls_cached: Of those, the ones the response cache answered.
        requests_sent: HTTP requests actually sent (retries and extra calls included).
        prompt_tokens: Prompt tokens the server reported for them.
        completion_tokens: Completion tokens likewise.
    """

    reranker: PairSet
    adapter: PairSet
    queries_used: int
    llm_calls: int
    llm_calls_cached: int
    simulated: bool
    requests_sent: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def query_seed(text: str, seed: int = 0) -> int:
    """A stable per-query seed, so a repeated request is the same request (and a cache hit)."""
    return (zlib.crc32(text.encode("utf-8")) + seed) % (2**31)


@dataclass
class _Counter:
    """Totals over a labeller's LLM calls (thread-safe: calls run concurrently)."""

    calls: int = 0
    cached: int = 0
    simulated: bool = False
    sent: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def complete(self, llm: LLMClient, prompt: str, **kwargs: object) -> list[str]:
        c = llm.complete(prompt, **kwargs)  # type: ignore[arg-type]
        with self._lock:
            self.calls += 1
            self.cached += int(c.cached)
            self.simulated = self.simulated or c.simulated
            self.sent += c.requests_sent
            self.prompt_tokens += c.prompt_tokens
            self.completion_tokens += c.completion_tokens
        return c.texts



@dataclass(frozen=True)
class Question:
    """A labelling query with a known answer that is not one of the user's records.

    Server-side training labels a LaMP user's own questions this way, besides the user's
    records (:mod:`hydrahead.train.labels`).

    Attributes:
        text: The query as ``ask()`` would get it.
        gold: Its answer.
        vector: Its embedding (the store's encoder).
        history: Ids of the records it may see (its profile); ``None``: all of them.
    """

    text: str
    gold: str
    vector: np.ndarray
    history: frozenset[str] | None = None


@dataclass
class _Query:
    """One labelling query: a history record (or a question) and the history before it,
    searched."""

    id: str | None  # the record's id; None for a question
    text: str
    gold: str
    vector: np.ndarray
    hits: list[int]  # indices into the labeler's records, best first
    scores: np.ndarray
    counts: Counter[str]  # answers of the records before it (labels)


@dataclass(frozen=True)
class _Request:
    """One labelling request: ``query`` with the records at ``examples`` in the prompt."""

    prompt: str
    query: _Query
    examples: Sequence[int]
    n: int
    temperature: float


class Labeler:
    """Makes HYDRA's training labels for one user, sending at most ``budget`` HTTP requests.

    The requests of each phase are planned first and then sent concurrently (``concurrency``
    at a time); labels are computed from the answers in plan order, so they do not depend on
    timing. The budget counts requests actually sent (retries and the extra calls a server that
    ignores ``n`` needs included; cache hits are free) and is a hard cap: a request it cannot
    pay for is not sent, and the queries from there on are left out.

    ``adapter_share`` of the budget goes to adapter labels (``1 + greedy`` calls per query), the
    rest to reranker labels (``items_per_query`` calls per query, plus one for the graded
    rule's no-record baseline). Label the reranker first, fit it, then label the adapter with
    the fitted reranker (the adapter learns on the prompts it will see). Every request is seeded
    by its query, so a refit with the same history repeats the same requests and the response
    cache answers them.

    Args:
        store: The user's history store (records and their embeddings).
        task: Task that renders prompts and judges answers.
        llm: Client of the remote LLM.
        settings: The pipeline's settings, as ``ask()`` uses them: ``k`` records retrieved per
            query, ``m`` in the adapter's prompt, ``n`` samples per prompt at ``temperature``,
            ``max_tokens``, the greedy answer too (``greedy``), and ``seed`` (item selection
            and the LLM requests).
        budget: Most HTTP requests to send.
        items_per_query: Records judged one by one per reranker query.
        reranker_rule: ``"graded"`` or ``"binary"`` (see the module docstring).
        adapter_share: Share of the budget spent on adapter labels.
        progress: Show progress bars on ``sys.stderr`` (off by default: a library stays
            quiet; never where there is no stderr, as in pythonw or a windowed app).
        questions: Labelling queries besides the user's records, used first.
        concurrency: Requests in flight at once (default: the client's ``max_concurrency``).
        retrieval: What feeds the labelling queries' top ``k``: ``"auto"`` (default) chooses
            from the user's history as :func:`~hydrahead.runtime.validation.check_retrieval`
            decides (no LLM call; the choice is :attr:`retrieval`), or one of
            :data:`~hydrahead.runtime.retrieval.RETRIEVALS`.
    """

    def __init__(
        self,
        store: HistoryStore,
        task: Task,
        llm: LLMClient,
        *,
        settings: Settings | None = None,
        budget: int = 200,
        items_per_query: int = 4,
        reranker_rule: str = "graded",
        adapter_share: float = 0.5,
        progress: bool = False,
        questions: Sequence[Question] = (),
        concurrency: int | None = None,
        retrieval: str = "auto",
    ) -> None:
        if retrieval != "auto" and retrieval not in RETRIEVALS:
            raise InvalidInputError(
                f"retrieval must be 'auto' or one of {RETRIEVALS}, got {retrieval!r}")
        if reranker_rule not in RERANKER_RULES:
            raise InvalidInputError(
                f"reranker_rule must be one of {RERANKER_RULES}, got {reranker_rule!r}")
        if not 0.0 <= adapter_share <= 1.0:
            raise InvalidInputError(f"adapter_share must be in [0, 1], got {adapter_share!r}")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise InvalidInputError(f"budget must be an integer >= 0, got {budget!r}")
        if items_per_query < 1:
            raise InvalidInputError(f"items_per_query must be >= 1, got {items_per_query!r}")
        self.store, self.task, self.llm = store, task, llm
        self.settings = settings = settings or Settings()
        self.items_per_query, self.reranker_rule = items_per_query, reranker_rule
        self.progress = progress
        adapter_cost = 1 + int(settings.greedy)
        reranker_cost = items_per_query + int(reranker_rule == "graded")
        n_adapter = int(budget * adapter_share) // adapter_cost
        n_reranker = (budget - n_adapter * adapter_cost) // reranker_cost
        self.budget = budget
        self._reranker_budget = budget - n_adapter * adapter_cost
        if concurrency is None:
            concurrency = llm.config.max_concurrency if llm is not None else 1
        self.concurrency = check_int(concurrency, "concurrency", 1)
        self._load_history()
        self.retrieval = (check_retrieval(self.retrieval_quality()) if retrieval == "auto"
                          else RetrievalCheck(retrieval))
        asked = self._questions(questions)
        self._reranker_queries = (asked + self._latest(n_reranker))[:n_reranker]
        self._adapter_queries = (asked + self._latest(n_adapter))[:n_adapter]
        self._counter = _Counter()
        # Output quality of the samples per labelling query (keyed by _key): with no record in
        # the prompt (the graded reranker labels' baseline) and with the reranked m records (the
        # adapter labels' prompt). Where a query has both, they say whether records help.
        self._quality_without: dict[str, float] = {}
        self._quality_with: dict[str, float] = {}

    # ------------------------------------------------------------------ history
    def _load_history(self) -> None:
        """Every record with its vector, oldest first (timestamp, then insertion order)."""
        listed = list(self.store.iter())
        order = sorted(
            range(len(listed)),
            key=lambda i: (listed[i].timestamp if listed[i].timestamp is not None
                           else float("-inf"), i),
        )
        self.records = [listed[i] for i in order]
        self.vectors = (self.store.vectors([r.id for r in self.records]) if self.records
                        else np.zeros((0, self.store.dim), np.float32))
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self._unit = self.vectors / np.where(norms == 0, 1.0, norms)
        self.answers = [self.task.answer_of(r) for r in self.records]

    @functools.cached_property
    def _keywords(self) -> KeywordIndex:
        """BM25 over the records (built on first use: a dense-only labelling needs none)."""
        return KeywordIndex([self.task.example_text(r) for r in self.records])

    def _retrieve(self, method: str, text: str, unit: np.ndarray, seen: np.ndarray,
                  by_cosine: bool = True) -> tuple[list[int], np.ndarray]:
        """The top ``k`` of the records ``seen`` (a boolean mask) for a query, as ``method``
        retrieves them (:func:`~hydrahead.runtime.retrieval.combine`), and their cosines:
        most similar first, as ``ask()`` hands them to the reranker, or in the retrieval's
        own order (``by_cosine=False``)."""
        cosines = np.where(seen, self._unit @ unit, -np.inf)
        k = min(self.settings.k, int(seen.sum()))
        dense = [int(j) for j in np.argsort(-cosines, kind="stable")[:k]]
        keyword = self._keywords.top(text, k, seen) if method != "dense" else []
        hits = combine(method, dense, keyword, k)
        if by_cosine:
            hits = sorted(hits, key=lambda j: -cosines[j])
        return hits, cosines[hits]

    def retrieval_quality(self, newest: int = RETRIEVAL_CHECK_RECORDS
                          ) -> dict[str, list[float]]:
        """Per retrieval, for each of the ``newest`` records that have an answer and an older
        record: how well the answers of the ``m`` older records it puts first match that
        record's answer (the task's metric, averaged over the ``m``). No LLM call: the user's
        own answers judge which retrieval finds the records that speak to a query."""
        out: dict[str, list[float]] = {name: [] for name in RETRIEVALS}
        answered = np.array([a is not None for a in self.answers], dtype=bool)
        checked = 0
        for i in range(len(self.records) - 1, 0, -1):
            if checked >= newest:
                break
            gold = self.answers[i]
            if gold is None:
                continue
            checked += 1
            seen = answered & (np.arange(len(self.records)) < i)
            if not seen.any():
                continue
            text = self.task.query_of(self.records[i])
            for name in RETRIEVALS:
                hits, _ = self._retrieve(name, text, self._unit[i], seen, by_cosine=False)
                top = hits[: self.settings.m]
                out[name].append(float(np.mean(output_scores(
                    self.task, [str(self.answers[j]) for j in top], str(gold)))))
        return out

    def _latest(self, n: int) -> list[_Query]:
        """The ``n`` most recent records that have an answer and at least one older record."""
        queries: list[_Query] = []
        before = answer_counts(self.task, self.answers)  # answers of records [0, i), below
        for i in range(len(self.records) - 1, 0, -1):
            if len(queries) >= n:
                break
            before -= answer_counts(self.task, [self.answers[i]])
            if self.answers[i] is None:
                continue
            record = self.records[i]
            text = self.task.query_of(record)
            hits, scores = self._retrieve(self.retrieval.method, text, self._unit[i],
                                          np.arange(len(self.records)) < i)
            queries.append(_Query(record.id, text, str(self.answers[i]), self.vectors[i],
                                  hits, scores, Counter(before)))
        return queries

    def _questions(self, questions: Sequence[Question]) -> list[_Query]:
        """Each question searched among the records it may see, like a record query."""
        out = []
        for question in questions:
            seen = np.array([question.history is None or r.id in question.history
                             for r in self.records], dtype=bool)
            if not seen.any():
                continue
            vector = np.asarray(question.vector, dtype=np.float32)
            unit = vector / max(float(np.linalg.norm(vector)), 1e-12)
            hits, scores = self._retrieve(self.retrieval.method, question.text, unit, seen)
            counts = answer_counts(self.task, [a for a, s in zip(self.answers, seen) if s])
            out.append(_Query(None, question.text, question.gold, vector, hits, scores,
                              counts))
        return out

    # ------------------------------------------------------------------ requests
    def _ask_all(self, requests: Sequence[_Request], budget: RequestBudget, desc: str
                 ) -> list[list[str] | None]:
        """Send ``requests`` (at most ``concurrency`` at once); their texts, in order.

        A request the budget cannot pay for, and every request after it, gives None: the
        labels come from the longest prefix of requests that were all answered, so that
        which ones were cut does not depend on which finished first.
        """
        def one(request: _Request) -> list[str] | None:
            q = request.query
            sources = ([q.id] if q.id is not None else []) + [
                self.records[j].id for j in request.examples]
            try:
                return self._counter.complete(
                    self.llm, request.prompt, n=request.n, temperature=request.temperature,
                    max_tokens=self.settings.max_tokens, seed=query_seed(q.text, self.settings.seed),
                    sources=sources, budget=budget)
            except LLMBudgetError:
                return None

        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="hydrahead-label") as pool:
            results = list(tqdm(pool.map(one, requests), total=len(requests), desc=desc,
                                unit="request", disable=not self.progress or sys.stderr is None))
        cut = next((i for i, r in enumerate(results) if r is None), len(results))
        return results[:cut] + [None] * (len(results) - cut)

    def _quality(self, outputs: Sequence[str], gold: str) -> float:
        """Share of right outputs (labels, ratings), or their mean ROUGE (generation)."""
        return float(np.mean(output_scores(self.task, outputs, gold))) if outputs else 0.0

    # ------------------------------------------------------------------ reranker
    def reranker_labels(self) -> PairSet:
        """Labels for single records across the top-k depth (see the module docstring)."""
        rng = np.random.default_rng(self.settings.seed)
        sample = (self.settings.n, self.settings.temperature)  # (n, temperature)
        planned: list[tuple[_Query, list[int], list[int]]] = []  # query, picked, request indices
        requests: list[_Request] = []
        for q in self._reranker_queries:
            picked = _spread(len(q.hits), self.items_per_query, rng)
            if not picked:
                continue
            first = len(requests)
            if self.reranker_rule == "graded":  # the no-record baseline comes first
                requests.append(_Request(self.task.render_prompt(q.text), q, (), *sample))
            for j in picked:
                prompt = self.task.render_prompt(q.text, [self.records[q.hits[j]]])
                requests.append(_Request(prompt, q, (q.hits[j],), *(
                    (1, 0.0) if self.reranker_rule == "binary" else sample)))
            planned.append((q, picked, list(range(first, len(requests)))))
        results = self._ask_all(requests, RequestBudget(self._reranker_budget),
                                "reranker labels")
        found: list[tuple[_Query, list[int], list[float]]] = []
        for q, picked, indices in planned:
            outs = [o for o in (results[i] for i in indices) if o is not None]
            if len(outs) < len(indices):
                continue  # the budget ran out before this query was answered
            if self.reranker_rule == "binary":
                answers = [(o or [""])[0] for o in outs]
                found.append((q, picked, [float(y) for y in label_by_answer(self.task, answers,
                                                                            q.gold)]))
                continue
            without = self._quality(outs[0], q.gold)
            self._quality_without[_key(q)] = without
            found.append((q, picked, [self._quality(o, q.gold) - without for o in outs[1:]]))
        if self.reranker_rule == "graded":
            top = max((abs(d) for _, _, ds in found for d in ds), default=0.0)
            found = [(q, p, [0.5 + 0.5 * d / top if top else 0.5 for d in ds])
                     for q, p, ds in found]
        pairs = PairSet()
        for q, picked, targets in found:
            X = reranker_features(self.task, q.text, [self.records[j] for j in q.hits], q.scores)
            items = [self.records[q.hits[j]] for j in picked]
            pairs.add(q.vector, self.vectors[[q.hits[j] for j in picked]], targets, X[picked],
                      query_text=q.text, query_id=q.id,
                      item_texts=[self.task.example_text(r) for r in items],
                      item_ids=[r.id for r in items])
        return pairs

    # ------------------------------------------------------------------ adapter
    def adapter_labels(self, rerank: RerankFn, embed: EmbedFn) -> PairSet:
        """Labels for the LLM's candidates on reranked prompts, with their features."""
        planned = []
        requests: list[_Request] = []
        for q in self._adapter_queries:
            top, asked = self._ask_requests(q, rerank)
            requests += asked
            planned.append((q, top))
        # Whatever the reranker labels did not spend (it may have overspent its plan on a server
        # that ignores n, or spent nothing when the cache answered).
        results = iter(self._ask_all(
            requests, RequestBudget(max(0, self.budget - self._counter.sent)), "adapter labels"))
        found = []
        for q, top in planned:
            greedy_texts = next(results) if self.settings.greedy else [None]
            samples = next(results)
            if greedy_texts is None or samples is None:
                continue  # the budget ran out before this query was answered
            greedy = (greedy_texts or [None])[0]
            self._quality_with[_key(q)] = self._quality(samples, q.gold)
            candidates = distinct_candidates(greedy, samples)
            targets = self._candidate_targets(candidates, q.gold)
            if not candidates or targets is None:
                continue
            context = CandidateContext(
                query_vec=q.vector,
                neighbour_answers=[self.answers[j] for j in q.hits],
                neighbour_scores=q.scores,
                neighbour_times=[self.records[j].timestamp for j in q.hits],
                prompt_answers=[self.answers[q.hits[j]] for j in top],
                greedy=greedy, samples=samples, answer_counts=q.counts)
            found.append((q, candidates, targets, context))
        pairs = PairSet()
        flat = [c for _, cands, _, _ in found for c in cands]
        emb = embed(flat) if flat else np.zeros((0, self.store.dim), np.float32)  # one pass
        start = 0
        for q, cands, targets, context in found:
            vecs = emb[start : start + len(cands)]
            start += len(cands)
            pairs.add(q.vector, vecs, targets,
                      candidate_features(self.task, context, cands, vecs),
                      query_text=q.text, query_id=q.id, item_texts=cands)
        return pairs

    def _ask_requests(self, q: _Query, rerank: RerankFn) -> tuple[np.ndarray, list[_Request]]:
        """What ``ask()`` would send for ``q`` with this reranker: the top ``m`` (positions in
        ``q.hits``) and the requests (the greedy answer if asked for, then ``n`` samples)."""
        scores = rerank(q.text, q.vector, [self.records[j] for j in q.hits],
                        self.vectors[q.hits], q.scores)
        top = np.argsort(-scores, kind="stable")[: self.settings.m]
        prompt = self.task.render_prompt(q.text, [self.records[q.hits[j]] for j in top])
        shown = [q.hits[j] for j in top]
        requests = [_Request(prompt, q, shown, n=1, temperature=0.0)] if self.settings.greedy \
            else []
        requests.append(_Request(prompt, q, shown, n=self.settings.n,
                                 temperature=self.settings.temperature))
        return top, requests

    def compare_rerankers(self, rerankers: Mapping[str, RerankFn],
                          query_ids: Sequence[str]) -> dict[str, list[float]]:
        """End to end, on the labelling queries of these record ids: the quality of what the
        LLM answers (the greedy answer and the samples) to the prompt each reranker builds, as
        ``ask()`` would send it. One list per reranker, in ``query_ids`` order; a query the
        budget could not pay for is left out of every list.

        Rerankers that build the same prompt share its requests, and the requests are the
        adapter labels' own (same prompt, same seed): the prompt of the reranker the adapter is
        then labelled with comes from the response cache.
        """
        by_id = {q.id: q for q in self._reranker_queries + self._adapter_queries}
        queries = [by_id[i] for i in query_ids if i in by_id]
        requests: list[_Request] = []
        plan: list[tuple[_Query, dict[str, slice]]] = []
        for q in queries:
            spans: dict[str, slice] = {}
            by_prompt: dict[str, slice] = {}
            for name, rerank in rerankers.items():
                asked = self._ask_requests(q, rerank)[1]
                if asked[0].prompt not in by_prompt:
                    by_prompt[asked[0].prompt] = slice(len(requests), len(requests) + len(asked))
                    requests += asked
                spans[name] = by_prompt[asked[0].prompt]
            plan.append((q, spans))
        results = self._ask_all(requests, RequestBudget(max(0, self.budget - self._counter.sent)),
                                "reranker check")
        out: dict[str, list[float]] = {name: [] for name in rerankers}
        for q, spans in plan:
            answers = {name: results[span] for name, span in spans.items()}
            if any(a is None for texts in answers.values() for a in texts):
                continue
            for name, texts in answers.items():
                out[name].append(self._quality([t for a in texts for t in (a or [])], q.gold))
        return out

    def _candidate_targets(self, candidates: Sequence[str], gold: str) -> list[float] | None:
        scores = output_scores(self.task, candidates, gold)
        if self.task.kind != "generation":
            return scores
        best = max(scores, default=0.0)
        return [s / best for s in scores] if best > 0 else None

    def prompt_quality(self) -> list[tuple[float, float]]:
        """``(without records, with the reranked m records)``: the mean quality of the LLM's
        samples for each labelling query that was asked both ways, most recent first.

        Both come from requests the labels needed anyway (the graded rule's no-record baseline
        and the adapter's prompt), so this evidence costs no extra request. Empty with the
        binary rule, or before both phases ran.
        """
        return [(self._quality_without[k], self._quality_with[k])
                for k in (_key(q) for q in self._adapter_queries)
                if k in self._quality_without and k in self._quality_with]

    # ------------------------------------------------------------------ summary
    @property
    def queries_used(self) -> int:
        """Distinct history records (and questions) used as labelling queries."""
        asked = self._reranker_queries + self._adapter_queries
        return len({q.id for q in asked if q.id is not None}) + len(
            {q.text for q in asked if q.id is None})

    def summary(self, reranker: PairSet, adapter: PairSet) -> LabelSet:
        """The labels with this labeler's call counts."""
        c = self._counter
        return LabelSet(reranker, adapter, self.queries_used, c.calls, c.cached, c.simulated,
                        c.sent, c.prompt_tokens, c.completion_tokens)


def _key(query: _Query) -> str:
    """What identifies a labelling query across the two phases."""
    return f"id:{query.id}" if query.id is not None else f"text:{query.text}"


def _spread(n: int, count: int, rng: np.random.Generator) -> list[int]:
    """``count`` positions out of ``range(n)``, one drawn from each of ``count`` equal slices."""
    if n <= count:
        return list(range(n))
    edges = np.linspace(0, n, count + 1)
    return sorted({int(rng.integers(int(a), max(int(a) + 1, int(b))))
                   for a, b in zip(edges[:-1], edges[1:])})


def label_by_answer(task: Task, outputs: Sequence[str], gold: str) -> list[int]:
    """1 for each output that agrees with ``gold``, else 0.

    Classification / rating: the parsed output is right. Generation: its (ROUGE-1 + ROUGE-L) / 2
    against ``gold`` beats the mean over ``outputs``. Used for HYDRA's binary reranker labels
    (the LLM's one-record answers against the gold) and for feedback (the prompt records' own
    answers against the user's answer).
    """
    scores = output_scores(task, outputs, gold)
    if task.kind == "generation":
        return [int(s > np.mean(scores)) for s in scores]
    return [int(s) for s in scores]


def output_scores(task: Task, outputs: Sequence[str], gold: str) -> list[float]:
    """Per output: 1.0 / 0.0 for a right / wrong answer (labels, ratings), or its
    (ROUGE-1 + ROUGE-L) / 2 against ``gold`` (generation)."""
    if task.kind == "generation":
        return [task.rouge(o, gold) for o in outputs]
    return [float(task.is_correct(task.parse(o), gold)) for o in outputs]
