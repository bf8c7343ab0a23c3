"""Training labels for a user's heads, made by the LLM from the user's own history (HYDRA).

HYDRA has no human relevance labels; it asks the black-box LLM which history records help:

* **Reranker labels.** Take a history record as a query (its own answer is the gold), retrieve
  similar records from the rest of the history, and for each retrieved record call the LLM with a
  prompt holding just that one record. The record is a positive if the answer is right
  (classification / rating), or, for generation, if its (ROUGE-1 + ROUGE-L) / 2 against the gold
  beats the mean over that query's records.
* **Adapter labels.** Ask the LLM for N candidates with the reranked prompt (the prompt of the
  reranker just fitted). Classification: each candidate is labelled by correctness. Generation:
  the candidates are negatives and the user's gold answer is the positive. Each candidate carries
  the LLM's own preference for it (:mod:`hydrahead.runtime.candidates`).

Every prompt built here holds one query record plus either one retrieved record (reranker) or the
top ``m`` reranked records (adapter), exactly as at ask time; nothing else leaves the device.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .candidates import llm_preference
from .llm.client import LLMClient
from .records import Hit, Record
from .store import HistoryStore
from .tasks import Task

# Scores (query vector, item vectors) -> reranker scores; lets the adapter's prompts use the
# same reranking as ask() does.
RerankFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class PairSet:
    """Labelled (query, document) embedding pairs for one head, grouped by query."""

    queries: list[np.ndarray] = field(default_factory=list)  # one (dim,) vector per group
    docs: list[np.ndarray] = field(default_factory=list)  # one (n_i, dim) matrix per group
    labels: list[np.ndarray] = field(default_factory=list)  # one (n_i,) 0/1 vector per group
    # One (n_i,) vector per group, or None: the adapter's feature 0 (the LLM's preference).
    anchors: list[np.ndarray | None] = field(default_factory=list)

    def add(
        self,
        query: np.ndarray,
        docs: np.ndarray,
        labels: Sequence[int],
        anchor: np.ndarray | None = None,
    ) -> None:
        """Append one query's labelled documents (and, for the adapter, their anchors)."""
        if len(docs):
            self.queries.append(np.asarray(query, dtype=np.float32))
            self.docs.append(np.asarray(docs, dtype=np.float32))
            self.labels.append(np.asarray(labels, dtype=np.int64))
            self.anchors.append(None if anchor is None else np.asarray(anchor, np.float32))

    @property
    def n_pairs(self) -> int:
        """Number of labelled pairs."""
        return int(sum(len(y) for y in self.labels))

    @property
    def n_positive(self) -> int:
        """Number of positive pairs."""
        return int(sum(int(y.sum()) for y in self.labels))


@dataclass
class LabelSet:
    """What one labelling run produced."""

    reranker: PairSet
    adapter: PairSet
    queries_used: int
    llm_calls: int
    llm_calls_cached: int
    simulated: bool


def query_seed(text: str, seed: int = 0) -> int:
    """A stable per-query seed, so a repeated request is the same request (and a cache hit)."""
    return (zlib.crc32(text.encode("utf-8")) + seed) % (2**31)


@dataclass
class _Counter:
    calls: int = 0
    cached: int = 0
    simulated: bool = False

    def complete(self, llm: LLMClient, prompt: str, **kwargs: object) -> list[str]:
        c = llm.complete(prompt, **kwargs)  # type: ignore[arg-type]
        self.calls += 1
        self.cached += int(c.cached)
        self.simulated = self.simulated or c.simulated
        return c.texts


class Labeler:
    """Makes HYDRA's training labels for one user, spending at most ``budget`` LLM calls.

    Each query record costs ``items_per_query`` calls for the reranker's labels and one for the
    adapter's. Label the reranker first, fit it, then label the adapter with the fitted reranker
    (the adapter learns on the prompts it will see). Every request is seeded by its query, so a
    refit with the same history repeats the same requests and the response cache answers them.

    Args:
        store: The user's history store (records and their embeddings).
        task: Task that renders prompts and judges answers.
        llm: Client of the remote LLM.
        budget: Maximum number of LLM calls.
        items_per_query: Retrieved records judged one by one per query record.
        m: Records in the adapter's prompt.
        n_candidates: Candidates asked for per adapter prompt.
        temperature: Sampling temperature of the adapter's candidates.
        max_tokens: Output bound per candidate.
        seed: Seed of query selection and of the LLM requests.
        progress: Show progress bars.
    """

    def __init__(
        self,
        store: HistoryStore,
        task: Task,
        llm: LLMClient,
        *,
        budget: int = 200,
        items_per_query: int = 4,
        m: int = 4,
        n_candidates: int = 8,
        temperature: float = 1.0,
        max_tokens: int = 64,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.store, self.task, self.llm = store, task, llm
        self.items_per_query, self.m, self.n_candidates = items_per_query, m, n_candidates
        self.temperature, self.max_tokens, self.seed = temperature, max_tokens, seed
        self.progress = progress
        self.queries = self._choose_queries(budget // (items_per_query + 1))
        self._counter = _Counter()
        self._retrieved: dict[str, tuple[np.ndarray, list[Hit]]] = {}

    def _choose_queries(self, n: int) -> list[Record]:
        # Only records with a gold answer can be queries (LaMP-1/LaMP-7 items carry none).
        records = sorted(
            (r for r in self.store.iter() if self.task.answer_of(r) is not None),
            key=lambda r: (r.timestamp or 0.0, r.id),
        )
        n = min(n, len(records)) if self.store.count() > 1 else 0
        if n == 0:
            return []
        rng = np.random.default_rng(self.seed)
        return [records[i] for i in sorted(rng.choice(len(records), n, replace=False))]

    def _retrieve(self, record: Record) -> tuple[np.ndarray, list[Hit]]:
        """The query record's vector and its retrieved records (searched once, for both heads)."""
        if record.id not in self._retrieved:
            qvec = self.store.vectors([record.id])[0]
            hits = self.store.search(qvec, k=self.items_per_query, filter=_not(record.id))
            self._retrieved[record.id] = (qvec, hits)
        return self._retrieved[record.id]

    def reranker_labels(self) -> PairSet:
        """One call per retrieved record, with only that record in the prompt."""
        pairs = PairSet()
        for record in tqdm(
            self.queries, desc="reranker labels", unit="query", disable=not self.progress
        ):
            qtext, gold = self.task.query_of(record), self.task.answer_of(record)
            qvec, hits = self._retrieve(record)
            outputs = [
                (
                    self._counter.complete(
                        self.llm,
                        self.task.render_prompt(qtext, [hit.record]),
                        n=1,
                        temperature=0.0,
                        max_tokens=self.max_tokens,
                        seed=query_seed(qtext, self.seed),
                    )
                    or [""]
                )[0]
                for hit in hits
            ]
            if hits:
                pairs.add(
                    qvec,
                    np.stack([h.vector for h in hits]),
                    label_by_answer(self.task, outputs, gold),
                )
        return pairs

    def adapter_labels(
        self, rerank: RerankFn, embed: Callable[[Sequence[str]], np.ndarray]
    ) -> PairSet:
        """One call per query with the reranked prompt; candidates judged against the gold."""
        found: list[tuple[np.ndarray, list[str], list[int], np.ndarray]] = []
        for record in tqdm(
            self.queries, desc="adapter labels", unit="query", disable=not self.progress
        ):
            qtext, gold = self.task.query_of(record), self.task.answer_of(record)
            qvec, hits = self._retrieve(record)
            if not hits:
                continue
            top = np.argsort(-rerank(qvec, np.stack([h.vector for h in hits])), kind="stable")
            prompt = self.task.render_prompt(qtext, [hits[i].record for i in top[: self.m]])
            texts = self._counter.complete(
                self.llm,
                prompt,
                n=self.n_candidates,
                temperature=self.temperature,
                max_tokens=self.max_tokens,
                seed=query_seed(qtext, self.seed),
            )
            cands, ys, prefs = _judge_candidates(self.task, texts, gold)
            if cands:
                found.append((qvec, cands, ys, prefs))
        pairs = PairSet()
        flat = [t for _, cands, _, _ in found for t in cands]
        emb = embed(flat) if flat else np.zeros((0, 0), np.float32)  # one batched pass
        start = 0
        for qvec, cands, ys, prefs in found:
            pairs.add(qvec, emb[start : start + len(cands)], ys, prefs)
            start += len(cands)
        return pairs

    def summary(self, reranker: PairSet, adapter: PairSet) -> LabelSet:
        """The labels with this labeler's call counts."""
        c = self._counter
        return LabelSet(reranker, adapter, len(self.queries), c.calls, c.cached, c.simulated)


def _not(record_id: str) -> Callable[[Record], bool]:
    return lambda r: r.id != record_id


def label_by_answer(task: Task, outputs: Sequence[str], gold: str) -> list[int]:
    """1 for each output that agrees with ``gold``, else 0.

    Classification / rating: the parsed output is right. Generation: its (ROUGE-1 + ROUGE-L) / 2
    against ``gold`` beats the mean over ``outputs``. Used for the reranker's labels (the LLM's
    one-record answers against the gold) and for feedback (the prompt records' own answers
    against the user's answer).
    """
    if task.kind == "generation":
        scores = np.array([task.rouge(o, gold) for o in outputs])
        return [int(s > scores.mean()) for s in scores]
    return [int(task.is_correct(task.parse(o), gold)) for o in outputs]


def _judge_candidates(
    task: Task, texts: Sequence[str], gold: str
) -> tuple[list[str], list[int], np.ndarray]:
    """Adapter labels and anchors: correctness (classification / rating), or, for generation,
    the user's gold answer as the one positive against the LLM's candidates."""
    if task.kind == "generation":
        cands, prefs = llm_preference(texts, use_order=False)
        negatives = [(c, p) for c, p in zip(cands, prefs) if c.strip() != gold.strip()]
        gold_pref = np.float32(1.0 / max(len(texts), 1))  # as if sampled once, like the others
        return (
            [gold, *(c for c, _ in negatives)],
            [1] + [0] * len(negatives),
            np.array([gold_pref, *(p for _, p in negatives)], dtype=np.float32),
        )
    cands, prefs = llm_preference(texts)
    return cands, [int(task.is_correct(task.parse(c), gold)) for c in cands], prefs
