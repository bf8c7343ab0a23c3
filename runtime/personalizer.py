"""The Personalizer: one user's HYDRA pipeline on the device.

``ask(query)`` runs, in order::

    encode query -> retrieve top-k history (HNSW) -> reranker (shared base + user head) keeps m
    -> task prompt with those m records -> remote LLM: its greedy answer and N samples
    -> adapter (shared base + user head) scores each distinct candidate from its
       history-aware features (adapter_features) -> answer = argmax

During ``ask()`` only the rendered prompt (the query and the m reranked records) leaves the
device; the top-k records beyond the prompt are read only by the adapter, locally. ``fit()``
sends the user's own records too, as labelling queries with zero, one or m other records as
examples (:mod:`hydrahead.runtime.labeling`). The heads are fitted on the device from those
labels, which stay in the user's directory (``heads/labels.npz``). With the untrained bases and
heads, the answer is the LLM's greedy answer to the dense top-m prompt.

Each role's shared base is the bundle's featurizer for that role
(:mod:`hydrahead.runtime.featurizer`: an ONNX graph run by onnxruntime in fast mode); numpy
holds only the heads. A head is stamped with the fingerprint of the base it reads; when a bundle
update changes that base, opening the user refits the head from the stored labels, with no LLM
request (:meth:`Personalizer.refit_from_labels`).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
from .bundle import Bundle
from .encoder import Encoder
from .errors import BundleError, HeadError, InvalidInputError, LLMResponseError, StaleHeadError
from .featurizer import Featurizer, load_featurizer
from .fitting import FitReport, fit_head
from .heads import Head
from .erasure import CACHE_FILE, FEEDBACK_FILE, HEADS_DIR, LABELS_FILE
from .label_file import append_labels, load_labels, save_labels
from .labeling import Labeler, LabelSet, PairSet, label_by_answer, query_seed
from .llm.cache import ResponseCache
from .llm.client import LLMClient
from .llm.config import LLMConfig
from .llm.outbox import OUTBOX_FILENAME, Outbox
from .paths import make_private_dir
from .records import Change, Hit, Record
from .store import Filter, HistoryStore
from .users import remove_store_directory
from .tasks import Task, get_task

logger = logging.getLogger("hydrahead")

CANDIDATE_CACHE = 1024
"""Candidate texts whose embeddings a personalizer keeps (see ``candidate_vectors``)."""
MAX_FEEDBACK = 2000
"""Feedback groups kept per head (the oldest go first)."""
ROLES = ("reranker", "adapter")
LISTWISE = {"reranker": False, "adapter": True}  # how each head is fitted (see _fit_role)


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
        greedy: Also ask the LLM for its temperature-0 answer, which the unfitted adapter picks
            (one more request per ask; without it the unfitted adapter picks the most voted).
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
        greedy: bool = True,
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
        self.greedy = greedy
        self._candidate_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.featurizers: dict[str, Featurizer] = {
            role: load_featurizer(bundle, role) for role in ROLES}
        _check_bases(self.featurizers, bundle)
        # Where a user's head starts (cold start) and what fitting pulls it toward: the shared
        # base head, factorized when low-rank heads are asked for.
        self.base_heads = {
            role: f.head if head_rank is None else f.head.factorize(head_rank)
            for role, f in self.featurizers.items()
        }
        self.heads_dir = make_private_dir(Path(store.directory) / HEADS_DIR)
        self.refitted: dict[str, FitReport | None] = {}  # heads refitted for a changed base
        self.stale: list[str] = []  # heads of a changed base with no labels to refit from
        self.heads = {role: self._load_head(role) for role in ROLES}
        if self.refitted:
            self._refit_stale()
        self._recent: OrderedDict[str, Answer] = OrderedDict()
        self._owns_cache = False  # set when this personalizer made its LLM client
        self._answer_counts: tuple[int, Counter[str]] | None = None  # (store generation, counts)

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
        if isinstance(user, str):
            store = HistoryStore.for_user(user, encoder=encoder, root=root)
        elif isinstance(user, os.PathLike):
            if root is not None:
                raise InvalidInputError("root applies to user ids only, not to a directory")
            store = HistoryStore.at(user, encoder=encoder)
        else:
            raise InvalidInputError(
                f"user must be a user id (str) or a directory (Path), got {type(user).__name__}")
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
        """Add history records (see :meth:`HistoryStore.add`); an id already stored is an
        error (use :meth:`upsert`)."""
        return self.store.add(items)

    def upsert(self, items: Iterable[Record | dict[str, Any]]) -> list[str]:
        """Add records, replacing those whose id is already stored."""
        return self.store.upsert(items)

    def update(self, id: str, *, text: str | None = None,
               fields: dict[str, Any] | None = None, **kwargs: Any) -> Record:
        """Change one record's text and/or fields (see :meth:`HistoryStore.update`)."""
        return self.store.update(id, text=text, fields=fields, **kwargs)

    def get(self, id: str) -> Record:
        """The record with this id (NotFoundError if none)."""
        return self.store.get(id)

    def list(self, limit: int | None = None, offset: int = 0) -> list[Record]:
        """List history records in insertion order."""
        return self.store.list(limit=limit, offset=offset)

    def search(self, query: str, k: int = 10, *, filter: Filter | None = None,
               threshold: float | None = None) -> list[Hit]:
        """Search the user's history (nothing leaves the device): the ``k`` nearest records,
        optionally only those whose fields match ``filter`` and whose score is at least
        ``threshold`` (see :meth:`HistoryStore.search`)."""
        return self.store.search(query, k=k, filter=filter, threshold=threshold)

    def history(self, id: str | None = None, limit: int | None = None) -> list[Change]:
        """Changes to one record (or all), oldest first: adds, updates and deletes."""
        return self.store.history(id, limit=limit)

    def delete(self, ids: Sequence[str]) -> None:
        """Delete history records by id, and erase them from every file of the user
        (see :meth:`HistoryStore.delete`): stored labels, feedback, response cache and outbox
        included."""
        self.store.delete(ids)

    def delete_all(self) -> int:
        """Delete every history record (erased as by :meth:`delete`); the user, their heads
        and settings stay. Returns how many records there were. To remove the user entirely,
        use :meth:`forget`."""
        return self.store.clear()

    def rerank_scores(
        self,
        query: str,
        query_vec: np.ndarray,
        records: Sequence[Record],
        item_vecs: np.ndarray,
        cosines: np.ndarray,
    ) -> np.ndarray:
        """Reranker scores (shared base + this user's head) of retrieved records for a query.

        Args:
            query: The query text.
            query_vec: Its embedding.
            records: The retrieved records (the local corpus of the reranker's features).
            item_vecs: Their embeddings.
            cosines: Their cosine similarity to the query.
        """
        X = reranker_features.reranker_features(self.task, query, records, cosines)
        texts = [self.task.example_text(r) for r in records]
        H = self.featurizers["reranker"].hidden_of(query, query_vec, texts, item_vecs, X)
        return self.heads["reranker"].scores(H)

    def adapter_scores(
        self, query: str, query_vec: np.ndarray, texts: Sequence[str], cand_vecs: np.ndarray,
        features: np.ndarray,
    ) -> np.ndarray:
        """Adapter scores (shared base + this user's head) of candidates for a query.

        Args:
            query: The query text.
            query_vec: Its embedding.
            texts: The candidate texts.
            cand_vecs: Their embeddings.
            features: Their named features (:func:`~hydrahead.runtime.adapter_features.
                candidate_features`), one row per candidate.
        """
        H = self.featurizers["adapter"].hidden_of(query, query_vec, texts, cand_vecs, features)
        return self.heads["adapter"].scores(H)

    def rerank(self, query: str, query_vec: np.ndarray | None = None) -> list[RankedItem]:
        """Retrieve ``k`` records and return the top ``m`` by the reranker, best first."""
        qvec = self.encoder.encode_one(query) if query_vec is None else query_vec
        return self._rerank(query, qvec, self.store.search(qvec, k=self.k))

    def _rerank(self, query: str, qvec: np.ndarray, hits: Sequence[Hit]) -> list[RankedItem]:
        if not hits:
            return []
        scores = self.rerank_scores(
            query, qvec, [h.record for h in hits], np.stack([h.vector for h in hits]),
            np.array([h.score for h in hits]))
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
        hits = self.store.search(qvec, k=self.k)
        items = self._rerank(query, qvec, hits)
        prompt = self.task.render_prompt(query, [it.record for it in items])
        return Prepared(query, qvec, hits, items, prompt)

    def choose(
        self,
        prepared: Prepared,
        texts: Sequence[str],
        *,
        greedy: str | None = None,
        simulated: bool = False,
    ) -> Answer:
        """The device's work after the LLM call: score the candidates with the adapter, pick one.

        Args:
            prepared: What :meth:`prepare` returned for the query.
            texts: The LLM's sampled candidate texts (``n`` of them, as returned).
            greedy: The LLM's temperature-0 answer to the same prompt, if it was asked for.
            simulated: Whether they came from the offline simulator (carried into the answer).
        """
        context = self._context(prepared, greedy, texts)
        candidates = self._score_candidates(prepared.query, context,
                                            distinct_candidates(greedy, texts))
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
            context=context,
        )
        self._remember(prepared.query, answer)
        return answer

    def ask(self, query: str) -> Answer:
        """Answer ``query`` for this user: :meth:`prepare`, the LLM call(s), :meth:`choose`.

        Two requests go out with the same prompt: the greedy answer (``n=1``, temperature 0;
        skipped when ``greedy=False``) and ``n`` samples at ``temperature``.

        Returns:
            The chosen answer, the exact prompt that left the device, the candidates with their
            adapter scores and features, the reranked records, timings (``local_ms`` excludes
            the LLM) and the requests and tokens the LLM reported.

        Raises:
            InvalidInputError: for an empty query.
            LLMError: when the LLM gives no usable answer after bounded retries.
        """
        t0 = time.perf_counter()
        prepared = self.prepare(query)
        t1 = time.perf_counter()
        llm, seed = self._llm(), query_seed(query, self.seed)
        sources = [it.record.id for it in prepared.items]
        calls = []
        if self.greedy:
            calls.append(llm.complete(prepared.prompt, n=1, temperature=0.0,
                                      max_tokens=self.max_tokens, seed=seed, sources=sources))
        calls.append(llm.complete(prepared.prompt, n=self.n, temperature=self.temperature,
                                  max_tokens=self.max_tokens, seed=seed, sources=sources))
        t2 = time.perf_counter()
        greedy = (calls[0].texts or [None])[0] if self.greedy else None
        answer = self.choose(prepared, calls[-1].texts, greedy=greedy,
                             simulated=any(c.simulated for c in calls))
        t3 = time.perf_counter()
        answer.timings_ms = {
            "prepare": (t1 - t0) * 1e3,
            "llm": (t2 - t1) * 1e3,
            "choose": (t3 - t2) * 1e3,
        }
        answer.llm_requests = sum(c.requests_sent for c in calls)
        answer.prompt_tokens = sum(c.prompt_tokens for c in calls)
        answer.completion_tokens = sum(c.completion_tokens for c in calls)
        return answer

    def _context(
        self, prepared: Prepared, greedy: str | None, samples: Sequence[str]
    ) -> CandidateContext:
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

    def _score_candidates(
        self, query: str, context: CandidateContext, texts: Sequence[str]
    ) -> list[Candidate]:
        if not texts:
            return []
        vecs = self.candidate_vectors(texts)
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

    # ------------------------------------------------------------------ fit / feedback
    def fit(self, budget: int = 200, *, progress: bool = True, **label_options: Any) -> FitSummary:
        """Fit both heads from LLM-made labels on this user's own history.

        Args:
            budget: Most LLM calls to spend (responses are cached: a refit costs none).
            progress: Show a progress bar.
            **label_options: Passed to :class:`Labeler` (e.g. ``reranker_rule="binary"``,
                ``items_per_query``, ``adapter_share``).
        """
        t0 = time.perf_counter()
        labeler = Labeler(
            self.store,
            self.task,
            self._llm(),
            budget=budget,
            k=self.k,
            m=self.m,
            n_candidates=self.n,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=self.seed,
            greedy=self.greedy,
            progress=progress,
            **label_options,
        )
        reports: dict[str, FitReport | None] = {}
        feedback = self.stored_feedback()
        reranker = labeler.reranker_labels()
        reports["reranker"] = self._fit_role(
            "reranker", _with(reranker, feedback.get("reranker")),
            init=self.base_heads["reranker"])
        adapter = labeler.adapter_labels(self.rerank_scores, self.encoder.encode)
        reports["adapter"] = self._fit_role(
            "adapter", _with(adapter, feedback.get("adapter")), init=self.base_heads["adapter"])
        self.stale = []
        labels = labeler.summary(reranker, adapter)
        save_labels(Path(self.store.directory) / LABELS_FILE, {"reranker": reranker, "adapter": adapter},
                    {"budget": budget, "task": self.task.name, "llm_calls": labels.llm_calls})
        return FitSummary(
            labels,
            reports,
            {r: self.heads[r].nbytes for r in ROLES},
            time.perf_counter() - t0,
        )

    def feedback(self, query: str, answer: str) -> None:
        """Learn from the answer the user accepted or wrote, without calling the LLM.

        Args:
            query: Any query: one asked in this session is judged against the candidates the
                LLM gave for it; any other against the answers of the history records the
                device retrieves for it (nothing is sent).
            answer: The answer the user accepted, or their own answer.

        The adapter learns that ``answer`` is what this user wants over the alternatives (an
        edited answer is scored with the same history context the candidates had); the
        reranker learns which of the prompt's records agree with it. Both heads take a few
        small steps from their current weights, pulled toward the shared base head, and the
        pairs are kept in ``heads/feedback.npz`` (the newest :data:`MAX_FEEDBACK` per head),
        which every later :meth:`fit` trains on too.
        """
        if not isinstance(answer, str) or not answer.strip():
            raise InvalidInputError("feedback needs a non-empty answer string")
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("feedback needs the query it answers (a non-empty string)")
        last = self._recent.get(query)
        if last is not None and last.context is not None:
            context, items = last.context, [(it.record, it.retrieval_score) for it in last.items]
            alternatives = [c.text for c in last.candidates]
        else:
            prepared = self.prepare(query)
            context = self._context(prepared, None, [])
            items = [(it.record, it.retrieval_score) for it in prepared.items]
            alternatives = [a for a in dict.fromkeys(
                self.task.answer_of(h.record) for h in prepared.neighbours) if a]
        wanted = self.task.parse(answer)
        others = [t for t in alternatives
                  if t.strip() != answer.strip() and not self._same(self.task.parse(t), wanted)]
        labels = {"reranker": PairSet(), "adapter": PairSet()}
        if others:
            texts = [answer, *others]
            vecs = self.candidate_vectors(texts)
            labels["adapter"].add(context.query_vec, vecs, [1.0] + [0.0] * len(others),
                                  candidate_features(self.task, context, texts, vecs),
                                  query_text=query, item_texts=texts)
        if items:
            records = [r for r, _ in items]
            labels["reranker"].add(
                context.query_vec,
                self.store.vectors([r.id for r in records]),
                label_by_answer(self.task, [self.task.answer_of(r) or "" for r in records],
                                answer),
                reranker_features.reranker_features(
                    self.task, query, records, np.array([s for _, s in items])),
                query_text=query, item_texts=[self.task.example_text(r) for r in records],
                item_ids=[r.id for r in records],
            )
        for role, pairs in labels.items():
            if len(pairs):
                self._fit_role(role, pairs, init=self.heads[role], epochs=5, lr=1e-3)
        append_labels(Path(self.store.directory) / FEEDBACK_FILE, labels,
                      {"task": self.task.name}, limit=MAX_FEEDBACK)

    def stored_feedback(self) -> dict[str, PairSet]:
        """The user's kept feedback pairs per head (records deleted since are left out)."""
        try:
            labels, _ = load_labels(Path(self.store.directory) / FEEDBACK_FILE,
                                    query_vectors=self._stored_vector,
                                    item_vectors=self._item_vectors)
        except FileNotFoundError:
            return {}
        return labels

    def candidate_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of candidate texts, from a bounded cache where they were seen before.

        Candidates repeat (a classification task's answers are its labels): only new texts
        are encoded. The cache holds :data:`CANDIDATE_CACHE` texts, least recently used first
        out; it lives with this personalizer, in memory only.
        """
        texts = list(texts)
        new = list(dict.fromkeys(t for t in texts if t not in self._candidate_cache))
        if new:
            for text, vector in zip(new, self.encoder.encode(new)):
                self._candidate_cache[text] = vector
        out = np.empty((len(texts), self.encoder.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self._candidate_cache[text]
            self._candidate_cache.move_to_end(text)
        while len(self._candidate_cache) > CANDIDATE_CACHE:
            self._candidate_cache.popitem(last=False)
        return out

    def _same(self, a: Any, b: Any) -> bool:
        return self.task.kind != "generation" and a is not None and a == b

    def _fit_role(
        self, role: str, pairs: PairSet, *, init: Head, **fit_options: Any
    ) -> FitReport | None:
        """Fit one head: the reranker pointwise (HYDRA's loss), the adapter listwise over each
        query's candidates (it picks one per query; see :func:`fit_head`)."""
        listwise = LISTWISE[role]
        if listwise and not any(np.ptp(y) > 0 for y in pairs.labels):
            return None  # no query prefers one candidate over another
        if not listwise and (pairs.n_positive == 0 or pairs.n_negative == 0):
            return None  # nothing to learn from: one side only
        featurizer = self.featurizers[role]
        H = np.concatenate([
            featurizer.hidden_of(qt, q, ts, D, f) for qt, q, ts, D, f in zip(
                pairs.query_texts, pairs.queries, pairs.item_texts, pairs.docs, pairs.features)
        ])
        y = np.concatenate(pairs.labels)
        groups = np.repeat(np.arange(len(pairs.labels)), [len(v) for v in pairs.labels])
        head, report = fit_head(
            H, y, init=init, prior=self.base_heads[role], seed=self.seed,
            groups=groups if listwise else None, **fit_options
        )
        self.heads[role] = head
        head.save(self.heads_dir / f"{role}.npz", base_fingerprint=featurizer.fingerprint,
                  role=role)
        return report

    def refit_from_labels(self, roles: Sequence[str] = ROLES) -> dict[str, FitReport | None]:
        """Refit heads from the labels of the last :meth:`fit`, with no LLM request.

        This is what happens, automatically, when the bundle's shared base of a role changed
        since the user's head was fitted (:attr:`refitted` says which heads). Labels whose
        query record or item record was deleted since are left out. Without stored labels the
        personalizer opens with the shared base heads for those roles (:attr:`stale` names
        them, a warning says so) until :meth:`fit`.

        Raises:
            HeadError: there are no stored labels (the user never ran ``fit``, or ran it with
                a hydrahead that did not keep them): run ``hydrahead fit``; the response cache
                answers the requests it already made.
        """
        path = Path(self.store.directory) / LABELS_FILE
        try:
            labels, _ = load_labels(path, query_vectors=self._stored_vector,
                                    item_vectors=self._item_vectors)
        except FileNotFoundError:
            raise HeadError(
                f"the {'/'.join(roles)} head(s) must be refitted and no labels are stored in "
                f"{self.heads_dir}: run `hydrahead fit` (responses already cached cost no "
                "request)") from None
        feedback = self.stored_feedback()
        reports = {}
        for role in roles:
            self.heads[role] = self.base_heads[role].copy()
            reports[role] = self._fit_role(role, _with(labels.get(role, PairSet()),
                                                       feedback.get(role)),
                                           init=self.base_heads[role])
        return reports

    def _refit_stale(self) -> None:
        roles = list(self.refitted)
        try:
            self.refitted = self.refit_from_labels(roles)
        except HeadError as exc:  # no labels: never strand the user; fit() recovers
            self.refitted = {}
            self.stale = roles
            logger.warning("%s; until then %s answers with the shared base heads", exc,
                           Path(self.store.directory).name)
            return
        for role, report in self.refitted.items():
            logger.warning(
                "the %s base of the bundle changed: refitted %s's %s head from %d stored labels "
                "with 0 LLM requests", role, Path(self.store.directory).name, role,
                0 if report is None else report.n_train + report.n_val)

    def _stored_vector(self, text: str, record_id: str) -> np.ndarray | None:
        if not record_id:
            return self.encoder.encode([text])[0]
        return self.store.vectors([record_id])[0] if record_id in self.store else None

    def _item_vectors(self, texts: Sequence[str], ids: Sequence[str]) -> np.ndarray | None:
        if all(ids):  # history records: their stored vectors, unless one was deleted
            if not all(i in self.store for i in ids):
                return None
            return self.store.vectors(list(ids))
        return self.candidate_vectors(texts)  # LLM candidates

    # ------------------------------------------------------------------ forget
    def forget(self) -> None:
        """Remove this user's data for good: history, index, heads, cache and ledger.

        Raises:
            StoreError: the user is also open elsewhere (then nothing is removed).
        """
        directory = Path(self.store.directory)
        self.close()
        remove_store_directory(directory)

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
        try:
            head = Head.load(path, base_fingerprint=self.featurizers[role].fingerprint, role=role)
        except StaleHeadError:
            self.refitted[role] = None  # refitted from the stored labels in __init__
            return self.base_heads[role].copy()
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


def _with(labels: PairSet, extra: PairSet | None) -> PairSet:
    """``labels`` followed by ``extra`` (a new PairSet; neither is changed)."""
    out = PairSet()
    out.extend(labels)
    if extra is not None:
        out.extend(extra)
    return out


def _client_for(
    config: LLMConfig, directory: Path, *, outbox: bool = True, cache: bool = True
) -> LLMClient:
    return LLMClient(
        config,
        cache=ResponseCache(directory / CACHE_FILE) if cache else None,
        outbox=Outbox(directory / OUTBOX_FILENAME, enabled=outbox),
    )


def _check_bases(bases: dict[str, Featurizer], bundle: Bundle) -> None:
    """Each base must read the named features this version of hydrahead computes."""
    expected = {"reranker": reranker_features.FEATURE_NAMES, "adapter": FEATURE_NAMES}
    for role, names in expected.items():
        if bases[role].feature_names != names:
            raise BundleError(
                f"the {role} base in {bundle.root} reads {list(bases[role].feature_names)}; "
                f"this hydrahead computes {list(names)}: rebuild the bundle with "
                "`hydrahead export bundle`")


def _pick(candidates: Sequence[Candidate]) -> Candidate:
    """The adapter's choice: the best-scored candidate whose text parses to an answer."""
    parsed = [c for c in candidates if c.answer is not None]
    return max(parsed or candidates, key=lambda c: c.score)
