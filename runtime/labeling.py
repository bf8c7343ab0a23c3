"""Training labels for a user's heads, made by the LLM from the user's own history (HYDRA).

HYDRA has no human relevance labels; it asks the black-box LLM which history records help:

* **Reranker labels.** Take a history record as a query (its own answer is the gold), retrieve
  similar records from the rest of the history, and for each retrieved record call the LLM with a
  prompt holding just that one record. The record is a positive if the answer is right
  (classification / rating), or, for generation, if its (ROUGE-1 + ROUGE-L) / 2 against the gold
  beats the mean over that query's records.
* **Adapter labels.** Ask the LLM for N candidates with the reranked prompt. Classification: each
  candidate is labelled by correctness. Generation: the candidates are negatives and the user's
  gold answer is the positive.

Every prompt built here holds one query record plus either one retrieved record (reranker) or the
top ``m`` reranked records (adapter), exactly as at ask time; nothing else leaves the device.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .llm.client import LLMClient
from .records import Record
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

    def add(self, query: np.ndarray, docs: np.ndarray, labels: Sequence[int]) -> None:
        """Append one query's labelled documents."""
        if len(docs):
            self.queries.append(np.asarray(query, dtype=np.float32))
            self.docs.append(np.asarray(docs, dtype=np.float32))
            self.labels.append(np.asarray(labels, dtype=np.int64))

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


def make_labels(
    store: HistoryStore,
    task: Task,
    llm: LLMClient,
    embed: Callable[[Sequence[str]], np.ndarray],
    rerank: RerankFn,
    *,
    budget: int = 200,
    items_per_query: int = 4,
    m: int = 4,
    n_candidates: int = 8,
    temperature: float = 1.0,
    max_tokens: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> LabelSet:
    """Label reranker and adapter pairs by asking the LLM, spending at most ``budget`` calls.

    Args:
        store: The user's history store (records and their embeddings).
        task: Task that renders prompts and judges answers.
        llm: Client of the remote LLM (its cache makes a repeated fit free).
        embed: Embeds candidate texts (the bundle encoder).
        rerank: Scores retrieved items for the adapter's prompt, as ``ask()`` would.
        budget: Maximum number of LLM calls (each query costs ``items_per_query + 1``).
        items_per_query: Retrieved records judged one by one per query record.
        m: Records in the adapter's prompt.
        n_candidates: Candidates asked for per adapter prompt.
        temperature: Sampling temperature of the adapter's candidates.
        max_tokens: Output bound per candidate.
        seed: Seed of query selection and of the LLM requests.
        progress: Show a progress bar.

    Returns:
        The labelled pairs for both heads and call counts.
    """
    # Only records with a gold answer can be queries (LaMP-1/LaMP-7 items carry none).
    records = sorted((r for r in store.iter() if task.answer_of(r) is not None),
                     key=lambda r: (r.timestamp or 0.0, r.id))
    per_query = items_per_query + 1
    n_queries = min(len(records) if store.count() > 1 else 0, budget // per_query)
    reranker, adapter = PairSet(), PairSet()
    calls = cached = 0
    simulated = False
    if n_queries == 0:
        return LabelSet(reranker, adapter, 0, 0, 0, False)

    rng = np.random.default_rng(seed)
    chosen = [records[i] for i in sorted(rng.choice(len(records), n_queries, replace=False))]
    bar = tqdm(total=n_queries * per_query, desc="labelling with the LLM", unit="call",
               disable=not progress)
    adapter_cands: list[tuple[np.ndarray, list[str], list[int]]] = []
    try:
        for query_record in chosen:
            qtext = task.query_of(query_record)
            gold = task.answer_of(query_record)
            qvec = store.vectors([query_record.id])[0]
            hits = store.search(qvec, k=items_per_query, filter=_not(query_record.id))
            if not hits:
                continue
            # Reranker: one call per retrieved record, with only that record in the prompt.
            outputs: list[str] = []
            for hit in hits:
                c = llm.complete(task.render_prompt(qtext, [hit.record]), n=1, temperature=0.0,
                                 max_tokens=max_tokens, seed=query_seed(qtext, seed))
                calls, cached, simulated = calls + 1, cached + int(c.cached), simulated or c.simulated
                outputs.append(c.texts[0] if c.texts else "")
                bar.update(1)
            reranker.add(qvec, np.stack([h.vector for h in hits]),
                         _judge_items(task, outputs, gold))

            # Adapter: the reranked prompt, N sampled candidates.
            vecs = np.stack([h.vector for h in hits])
            top = np.argsort(-rerank(qvec, vecs), kind="stable")[:m]
            c = llm.complete(task.render_prompt(qtext, [hits[i].record for i in top]),
                             n=n_candidates, temperature=temperature, max_tokens=max_tokens,
                             seed=query_seed(qtext, seed))
            calls, cached, simulated = calls + 1, cached + int(c.cached), simulated or c.simulated
            bar.update(1)
            texts, ys = _judge_candidates(task, c.texts, gold)
            if texts:
                adapter_cands.append((qvec, texts, ys))
    finally:
        bar.close()

    # Embed all candidate texts in one batched pass.
    flat = [t for _, texts, _ in adapter_cands for t in texts]
    if flat:
        emb = embed(flat)
        start = 0
        for qvec, texts, ys in adapter_cands:
            adapter.add(qvec, emb[start:start + len(texts)], ys)
            start += len(texts)
    return LabelSet(reranker, adapter, len(chosen), calls, cached, simulated)


def _not(record_id: str) -> Callable[[Record], bool]:
    return lambda r: r.id != record_id


def _judge_items(task: Task, outputs: Sequence[str], gold: str) -> list[int]:
    """Reranker labels of one query's retrieved records, from the one-record answers."""
    if task.kind == "generation":
        scores = np.array([task.rouge(o, gold) for o in outputs])
        return [int(s > scores.mean()) for s in scores]
    return [int(task.is_correct(task.parse(o), gold)) for o in outputs]


def _judge_candidates(task: Task, candidates: Sequence[str], gold: str) -> tuple[list[str], list[int]]:
    """Adapter labels: correctness (classification / rating) or gold-vs-candidates (generation)."""
    if task.kind == "generation":
        negatives = [c for c in dict.fromkeys(candidates) if c.strip() and c.strip() != gold.strip()]
        return [gold, *negatives], [1] + [0] * len(negatives)
    unique = [c for c in dict.fromkeys(candidates) if c.strip()]
    return unique, [int(task.is_correct(task.parse(c), gold)) for c in unique]
