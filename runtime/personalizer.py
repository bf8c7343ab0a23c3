"""The Personalizer: one user's HYDRA pipeline on the device.

``ask(query)`` runs, in order::

    encode query -> retrieve top-k history (HNSW) -> reranker (shared base + user head) keeps m
    -> task prompt with those m records -> remote LLM, N candidates
    -> adapter (shared base + user head) scores each candidate -> answer = argmax

Only the rendered prompt (the query and the m reranked records) leaves the device. The heads
are fitted on the device from labels the LLM itself gives on the user's own history
(:mod:`hydrahead.runtime.labeling`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle
from .candidates import llm_preference
from .encoder import Encoder
from .errors import HeadError, InvalidInputError, LLMResponseError
from .heads import FitReport, Head, fit_head
from .labeling import Labeler, LabelSet, PairSet, label_by_answer, query_seed
from .llm.cache import ResponseCache
from .llm.client import LLMClient
from .llm.config import LLMConfig
from .llm.outbox import Outbox
from .pair_base import PairBase
from .paths import make_private_dir
from .records import Hit, Record
from .store import HistoryStore
from .tasks import Task, get_task

ROLES = ("reranker", "adapter")


@dataclass
class Candidate:
    """One distinct LLM candidate: its parsed answer, the adapter's score, the LLM's preference."""

    text: str
    answer: Any
    score: float
    llm_preference: float


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
    items: list[RankedItem]
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

    @property
    def local_ms(self) -> float:
        """Time spent on the device (everything but the LLM call)."""
        return sum(v for k, v in self.timings_ms.items() if k != "llm")


@dataclass
class FitSummary:
    """What ``fit()`` did."""

    labels: LabelSet
    reports: dict[str, FitReport | None]
    head_bytes: dict[str, int]
    seconds: float


class Personalizer:
    """A user's personalized view of a black-box LLM.

    Args:
        store: The user's history store.
        bundle: The model bundle (encoder plus reranker/adapter bases).
        encoder: The bundle's encoder (shared with ``store``).
        llm: Client of the remote LLM; ``None`` allows everything but ``fit``/``ask``.
        task: The task that renders prompts and parses answers.
        k: Records retrieved per query.
        m: Records kept in the prompt.
        n: Candidates asked from the LLM.
        temperature: Sampling temperature of the candidates.
        max_tokens: Output bound per candidate.
        seed: Seed of fitting and of LLM requests.
        head_rank: Fit low-rank heads (first layer ``U @ V`` of this rank) instead of full ones:
            smaller on disk, slightly less expressive. ``None`` (default) fits full heads.
    """

    def __init__(
        self,
        store: HistoryStore,
        *,
        bundle: Bundle,
        encoder: Encoder,
        llm: LLMClient | None,
        task: Task,
        k: int = 20,
        m: int = 4,
        n: int = 8,
        temperature: float = 1.0,
        max_tokens: int = 64,
        seed: int = 0,
        head_rank: int | None = None,
    ) -> None:
        if not (k >= 1 and 1 <= m <= k and n >= 1):
            raise InvalidInputError(f"need k >= m >= 1 and n >= 1, got k={k}, m={m}, n={n}")
        self.store, self.bundle, self.encoder, self.llm, self.task = (
            store,
            bundle,
            encoder,
            llm,
            task,
        )
        self.k, self.m, self.n = k, m, n
        self.temperature, self.max_tokens, self.seed = temperature, max_tokens, seed
        self.bases = {role: PairBase.load(bundle.file(role, "weights")) for role in ROLES}
        # Where a user's head starts (cold start) and what fitting pulls it toward: the shared
        # base head, factorized when low-rank heads are asked for.
        self.base_heads = {
            role: base.head if head_rank is None else base.head.factorize(head_rank)
            for role, base in self.bases.items()
        }
        self.heads_dir = make_private_dir(Path(store.directory) / "heads")
        self.heads = {role: self._load_head(role) for role in ROLES}
        self._recent: OrderedDict[str, Answer] = OrderedDict()
        self._owns_cache = False  # set when this personalizer made its LLM client

    # ------------------------------------------------------------------ opening / closing
    @classmethod
    def open(
        cls,
        user: str | os.PathLike[str],
        *,
        bundle: Bundle | str | os.PathLike[str],
        task: Task | str,
        llm: LLMClient | LLMConfig | None = None,
        root: str | os.PathLike[str] | None = None,
        encoder: Encoder | None = None,
        outbox: bool = True,
        cache: bool = True,
        **options: Any,
    ) -> Personalizer:
        """Open (or create) a user's personalizer.

        Args:
            user: A user id (a directory under the data root) or a path to a user directory.
            bundle: The model bundle or its directory.
            task: A task or its name (``get_task``).
            llm: A client, a config (the client then writes the user's outbox ledger and response
                cache in the user's directory), or ``None`` to read ``LLMConfig.from_env()``
                lazily when the LLM is first needed.
            root: Data root (default ``$HYDRAHEAD_HOME`` or the platform's user data dir).
            encoder: An already loaded encoder of ``bundle`` (saves a load).
            outbox: Keep the local ledger of every request (``outbox.jsonl``).
            cache: Keep the local response cache (``llm_cache.sqlite``).
            **options: Passed on to :class:`Personalizer` (k, m, n, temperature, ...).
        """
        bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        task = task if isinstance(task, Task) else get_task(task)
        encoder = encoder or Encoder(bundle)
        store = HistoryStore(user, encoder=encoder, root=root)  # a str is a user id, a Path a dir
        directory = store.directory
        try:
            client = (
                llm
                if isinstance(llm, LLMClient) or llm is None
                else _client_for(llm, directory, outbox=outbox, cache=cache)
            )
            p = cls(store, bundle=bundle, encoder=encoder, llm=client, task=task, **options)
            p._owns_cache = not isinstance(llm, LLMClient)
            return p
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        """Close the store and the LLM client."""
        self.store.close()
        if self.llm is not None:
            self.llm.close()
            if self._owns_cache and self.llm.cache is not None:
                self.llm.cache.close()

    def __enter__(self) -> Personalizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ history (like mem0)
    def add(self, items: Iterable[Record | dict[str, Any]]) -> list[str]:
        """Add history records (see :meth:`HistoryStore.add`)."""
        return self.store.add(items)

    def delete(self, ids: Sequence[str]) -> None:
        """Delete history records by id."""
        self.store.delete(ids)

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """Search the user's history."""
        return self.store.search(query, k=k)

    def list(self, limit: int | None = None, offset: int = 0) -> list[Record]:
        """List history records in insertion order."""
        return self.store.list(limit=limit, offset=offset)

    # ------------------------------------------------------------------ scoring
    def rerank_scores(self, query_vec: np.ndarray, item_vecs: np.ndarray) -> np.ndarray:
        """Reranker scores (shared base + this user's head) of items for a query."""
        return self.heads["reranker"].scores(self.bases["reranker"].hidden_of(query_vec, item_vecs))

    def adapter_scores(
        self, query_vec: np.ndarray, cand_vecs: np.ndarray, preference: np.ndarray
    ) -> np.ndarray:
        """Adapter scores (shared base + this user's head) of candidates for a query.

        Args:
            query_vec: The query's embedding.
            cand_vecs: The candidates' embeddings.
            preference: The LLM's own preference for each candidate (:func:`llm_preference`).
        """
        H = self.bases["adapter"].hidden_of(query_vec, cand_vecs, preference)
        return self.heads["adapter"].scores(H)

    def rerank(self, query: str, query_vec: np.ndarray | None = None) -> list[RankedItem]:
        """Retrieve ``k`` records and return the top ``m`` by the reranker, best first."""
        qvec = self.encoder.encode_one(query) if query_vec is None else query_vec
        hits = self.store.search(qvec, k=self.k)
        if not hits:
            return []
        scores = self.rerank_scores(qvec, np.stack([h.vector for h in hits]))
        order = np.argsort(-scores, kind="stable")[: self.m]
        return [RankedItem(hits[i].record, float(hits[i].score), float(scores[i])) for i in order]

    # ------------------------------------------------------------------ ask
    def prepare(self, query: str) -> Prepared:
        """The device's work before the LLM call: embed, retrieve, rerank, render the prompt.

        Raises:
            InvalidInputError: for an empty or non-string query.
        """
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("the query must be a non-empty string")
        qvec = self.encoder.encode_one(query)
        items = self.rerank(query, qvec)
        return Prepared(
            query, qvec, items, self.task.render_prompt(query, [it.record for it in items])
        )

    def choose(
        self, prepared: Prepared, texts: Sequence[str], *, simulated: bool = False
    ) -> Answer:
        """The device's work after the LLM call: score the candidates with the adapter, pick one.

        Args:
            prepared: What :meth:`prepare` returned for the query.
            texts: The LLM's candidate texts.
            simulated: Whether they came from the offline simulator (carried into the answer).
        """
        candidates = self._score_candidates(prepared.query_vec, texts)
        if not candidates:
            raise LLMResponseError("the LLM returned no candidate text to choose from")
        best = _pick(candidates)
        answer = Answer(
            answer=best.answer,
            text=best.text,
            prompt=prepared.prompt,
            candidates=candidates,
            items=prepared.items,
            simulated=simulated,
        )
        self._remember(prepared.query, answer)
        return answer

    def ask(self, query: str) -> Answer:
        """Answer ``query`` for this user: :meth:`prepare`, one LLM call, :meth:`choose`.

        Returns:
            The chosen answer, the exact prompt that left the device, the candidates with their
            adapter scores, the reranked records, and timings (``local_ms`` excludes the LLM).

        Raises:
            InvalidInputError: for an empty query.
            LLMError: when the LLM gives no usable answer after bounded retries.
        """
        t0 = time.perf_counter()
        prepared = self.prepare(query)
        t1 = time.perf_counter()
        completion = self._llm().complete(
            prepared.prompt,
            n=self.n,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=query_seed(query, self.seed),
        )
        t2 = time.perf_counter()
        answer = self.choose(prepared, completion.texts, simulated=completion.simulated)
        t3 = time.perf_counter()
        answer.timings_ms = {
            "prepare": (t1 - t0) * 1e3,
            "llm": (t2 - t1) * 1e3,
            "choose": (t3 - t2) * 1e3,
        }
        return answer

    def _score_candidates(self, qvec: np.ndarray, texts: Sequence[str]) -> list[Candidate]:
        unique, preference = llm_preference(texts, use_order=self.task.kind != "generation")
        if not unique:
            return []
        scores = self.adapter_scores(qvec, self.encoder.encode(unique), preference)
        cands = [
            Candidate(t, self.task.parse(t), float(s), float(p))
            for t, s, p in zip(unique, scores, preference)
        ]
        return sorted(cands, key=lambda c: -c.score)  # stable: ties keep the LLM's order

    # ------------------------------------------------------------------ fit / feedback
    def fit(self, budget: int = 200, *, progress: bool = True, **label_options: Any) -> FitSummary:
        """Fit both heads from LLM-made labels on this user's own history.

        Args:
            budget: Most LLM calls to spend (responses are cached: a refit costs none).
            progress: Show a progress bar.
            **label_options: Passed to :class:`Labeler` (e.g. ``items_per_query``).
        """
        t0 = time.perf_counter()
        labeler = Labeler(
            self.store,
            self.task,
            self._llm(),
            budget=budget,
            m=self.m,
            n_candidates=self.n,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=self.seed,
            progress=progress,
            **label_options,
        )
        reports: dict[str, FitReport | None] = {}
        reranker = labeler.reranker_labels()
        reports["reranker"] = self._fit_role("reranker", reranker, init=self.base_heads["reranker"])
        adapter = labeler.adapter_labels(self.rerank_scores, self.encoder.encode)
        reports["adapter"] = self._fit_role("adapter", adapter, init=self.base_heads["adapter"])
        return FitSummary(
            labeler.summary(reranker, adapter),
            reports,
            {r: self.heads[r].nbytes for r in ROLES},
            time.perf_counter() - t0,
        )

    def feedback(self, query: str, answer: str) -> None:
        """Learn from the answer the user accepted or wrote, without calling the LLM.

        Args:
            query: A query previously passed to :meth:`ask` in this session.
            answer: The answer the user accepted, or their edited answer.

        The adapter learns that ``answer`` is what this user wants over the other candidates;
        the reranker learns which of the prompt's records agree with it. Both heads take a few
        small steps from their current weights, pulled toward the shared base head.
        """
        if not isinstance(answer, str) or not answer.strip():
            raise InvalidInputError("feedback needs a non-empty answer string")
        last = self._recent.get(query)
        if last is None:
            raise InvalidInputError("feedback is for a query asked in this session; ask() it first")
        qvec = self.encoder.encode_one(query)
        others = [c for c in last.candidates if c.text.strip() != answer.strip()]
        prefs = [c.llm_preference for c in last.candidates]
        # An edited answer the LLM never proposed gets the candidates' mean preference.
        mine = next(
            (c.llm_preference for c in last.candidates if c.text.strip() == answer.strip()),
            float(np.mean(prefs)) if prefs else 0.0,
        )
        adapter = PairSet()
        adapter.add(
            qvec,
            self.encoder.encode([answer, *(c.text for c in others)]),
            [1] + [0] * len(others),
            np.array([mine, *(c.llm_preference for c in others)], dtype=np.float32),
        )
        reranker = PairSet()
        if last.items:
            reranker.add(
                qvec,
                self.store.vectors([it.record.id for it in last.items]),
                label_by_answer(
                    self.task, [self.task.answer_of(it.record) for it in last.items], answer
                ),
            )
        for role, pairs in (("reranker", reranker), ("adapter", adapter)):
            self._fit_role(role, pairs, init=self.heads[role], epochs=5, lr=1e-3)

    def _fit_role(
        self, role: str, pairs: PairSet, *, init: Head, **fit_options: Any
    ) -> FitReport | None:
        if pairs.n_pairs == 0 or pairs.n_positive in (0, pairs.n_pairs):
            return None  # nothing to learn from: one class only
        base = self.bases[role]
        H = np.concatenate(
            [base.hidden_of(q, D, a) for q, D, a in zip(pairs.queries, pairs.docs, pairs.anchors)]
        )
        y = np.concatenate(pairs.labels)
        head, report = fit_head(
            H, y, init=init, prior=self.base_heads[role], seed=self.seed, **fit_options
        )
        self.heads[role] = head
        head.save(
            self.heads_dir / f"{role}.npz", bundle_fingerprint=self.bundle.fingerprint, role=role
        )
        return report

    # ------------------------------------------------------------------ forget
    def forget(self) -> None:
        """Remove this user's data for good: history, index, heads, cache and ledger."""
        directory = Path(self.store.directory)
        self.close()
        shutil.rmtree(directory)

    # ------------------------------------------------------------------ internals
    def _llm(self) -> LLMClient:
        if self.llm is None:
            self.llm = _client_for(LLMConfig.from_env(), Path(self.store.directory))
            self._owns_cache = True
        return self.llm

    def _load_head(self, role: str) -> Head:
        path = self.heads_dir / f"{role}.npz"
        if not path.exists():
            return self.base_heads[role].copy()  # cold start: the shared base head
        head = Head.load(path, bundle_fingerprint=self.bundle.fingerprint, role=role)
        if head.rank != self.base_heads[role].rank:
            raise HeadError(
                f"the saved {role} head has rank {head.rank}, this personalizer was opened with "
                f"head_rank={self.base_heads[role].rank}; refit with `hydrahead fit` or reopen "
                "with the same head_rank"
            )
        return head

    def _remember(self, query: str, answer: Answer, size: int = 64) -> None:
        self._recent[query] = answer
        self._recent.move_to_end(query)
        while len(self._recent) > size:
            self._recent.popitem(last=False)


def _client_for(
    config: LLMConfig, directory: Path, *, outbox: bool = True, cache: bool = True
) -> LLMClient:
    return LLMClient(
        config,
        cache=ResponseCache(directory / "llm_cache.sqlite") if cache else None,
        outbox=Outbox(directory / "outbox.jsonl", enabled=outbox),
    )


def _pick(candidates: Sequence[Candidate]) -> Candidate:
    """The adapter's choice: the best-scored candidate whose text parses to an answer."""
    parsed = [c for c in candidates if c.answer is not None]
    return max(parsed or candidates, key=lambda c: c.score)
