"""The Personalizer: one user's HYDRA pipeline on the device, behind one object.

It is a facade over modules with one job each:

* :mod:`~hydrahead.runtime.ask_pipeline`: ``ask()``: retrieve, rerank, prompt, the LLM calls,
  and the adapter's pick among the candidates;
* :mod:`~hydrahead.runtime.user_heads`: the user's heads: loading, staleness after a bundle
  update, refitting from stored labels, fitting from LLM labels
  (:mod:`~hydrahead.runtime.labeling`);
* :mod:`~hydrahead.runtime.feedback`: the user's feedback as labelled pairs;
* :class:`~hydrahead.runtime.store.HistoryStore`: the records (mem0-style verbs);
* :class:`~hydrahead.runtime.settings.Settings`: every knob (k, m, n, ...).

During ``ask()`` only the rendered prompt (the query and the m reranked records) leaves the
device. ``fit()`` sends the user's own records too, as labelling queries with zero, one or m
other records as examples. The heads are fitted on the device from those labels, which stay in
the user's directory (``heads/labels.npz``). With the untrained bases and heads, the answer is
the LLM's greedy answer to the dense top-m prompt.
"""

from __future__ import annotations

import builtins
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .ask_pipeline import Answer, AskPipeline, Candidate, Prepared, RankedItem
from .bundle import Bundle
from .candidate_cache import CandidateCache
from .encoder import Encoder
from .errors import InvalidInputError, TaskError
from .feedback import feedback_pairs
from .fitting import FitReport
from .labeling import Labeler, LabelSet
from .llm.cache import ResponseCache
from .llm.client import LLMClient
from .llm.config import LLMConfig
from .llm.outbox import Outbox
from .pairs import PairSet
from .records import Change, Hit, Record, as_records, check_text
from .settings import Settings
from .store import Filter, HistoryStore
from .tasks import Task, get_task
from .user_files import UserFiles
from .user_heads import MAX_FEEDBACK, ROLES, UserHeads
from .users import bind_task, read_tasks, remove_store_directory, task_spec_reference
from .validation import Choices

__all__ = ["MAX_FEEDBACK", "ROLES", "Answer", "Candidate", "FitSummary", "Personalizer",
           "Prepared", "RankedItem"]

RECENT_ANSWERS = 64
"""Answers kept in memory for ``feedback()`` on a query asked in this session."""


@dataclass
class FitSummary:
    """What ``fit()`` did.

    Attributes:
        labels: The labels and what they cost.
        reports: Each role's fit (``None``: nothing to learn).
        head_bytes: Each role's head size in memory.
        seconds: Wall time.
        choices: What the held-out check decided: which roles' fitted heads answer (and on
            what evidence), and whether prompts carry records
            (:class:`~hydrahead.runtime.validation.Choices`).
        outcomes: What each role answers with now, against before the fit (:data:`OUTCOMES`):
            ``"fitted"`` (the user's new head; the base answered before), ``"refitted"`` (a new
            head replaced the user's previous one), ``"reverted"`` (the shared base head
            replaced the user's previous head: the new one failed its check or had nothing to
            learn), ``"kept-base"`` (the shared base head answered and still does). The reason
            is ``choices.roles[role].reason``.
    """

    labels: LabelSet
    reports: dict[str, FitReport | None]
    head_bytes: dict[str, int]
    seconds: float
    choices: Choices = field(default_factory=Choices)
    outcomes: dict[str, str] = field(default_factory=dict)


OUTCOMES = ("fitted", "refitted", "reverted", "kept-base")
"""What :meth:`Personalizer.fit` did with each role's head (:attr:`FitSummary.outcomes`)."""


def fit_outcome(own_before: bool, own_after: bool) -> str:
    """The :data:`OUTCOMES` entry for a role that answered with the user's own head before a fit
    (or not) and does after it (or not)."""
    if own_after:
        return "refitted" if own_before else "fitted"
    return "reverted" if own_before else "kept-base"


class Personalizer:
    """A user's personalized view of a black-box LLM.

    Args:
        store: The user's history store.
        bundle: The model bundle (encoder plus reranker/adapter bases).
        encoder: The bundle's encoder (shared with ``store``).
        llm: Client of the remote LLM; ``None`` allows everything but ``fit``/``ask``.
        task: The task that renders prompts and parses answers.
        settings: k, m, n, temperature, max_tokens, seed, greedy, head_rank
            (:class:`~hydrahead.runtime.settings.Settings`; its defaults when ``None``).

    Attributes:
        heads: The user's heads by role (:class:`~hydrahead.runtime.user_heads.UserHeads`:
            also which were refitted or are stale after a bundle update).
        pipeline: The ask pipeline (:class:`~hydrahead.runtime.ask_pipeline.AskPipeline`).
        candidates: The embedding cache of LLM candidate texts.
    """

    def __init__(
        self,
        store: HistoryStore,
        *,
        bundle: Bundle,
        encoder: Encoder,
        llm: LLMClient | None,
        task: Task,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings = settings or Settings()
        self.store, self.bundle, self.encoder, self.llm, self.task = (
            store, bundle, encoder, llm, task)
        self.candidates = CandidateCache(encoder)
        self.heads = UserHeads(store, bundle, settings=settings, candidates=self.candidates,
                               task=task.name)
        self.pipeline = AskPipeline(store, encoder, task, settings, self.heads, self.candidates)
        self._recent: OrderedDict[str, Answer] = OrderedDict()
        self._owns_cache = False  # set when this personalizer made its LLM client

    # ------------------------------------------------------------------ opening / closing
    @classmethod
    def open(
        cls,
        user: str | os.PathLike[str],
        *,
        bundle: Bundle | str | os.PathLike[str],
        task: Task | str | None = None,
        new_task: bool = False,
        llm: LLMClient | LLMConfig | None = None,
        root: str | os.PathLike[str] | None = None,
        encoder: Encoder | None = None,
        outbox: bool = True,
        cache: bool = True,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> Personalizer:
        """Open (or create) a user's personalizer.

        Args:
            user: A user id (a directory under the data root) or a path to a user directory.
            bundle: The model bundle or its directory.
            task: A task, its name or a task spec file (``get_task``); ``None``: the user's one
                recorded task. It is recorded for the user (``user.json``) and names the heads
                this personalizer reads and fits (``heads/<task>/``).
            new_task: Add ``task`` to a user who already has other tasks (one history serving
                several; each task has its own heads, labels and feedback). Without it, opening
                a user with a task they do not have is refused, never answered with another
                task's heads.
            llm: A client, a config (the client then writes the user's outbox ledger and response
                cache in the user's directory), or ``None`` to read ``LLMConfig.from_env()``
                lazily when the LLM is first needed.
            root: Data root (default ``$HYDRAHEAD_HOME`` or the platform's user data dir).
            encoder: An already loaded encoder of ``bundle`` (saves a load).
            outbox: Keep the local ledger of every request (``outbox.jsonl``).
            cache: Keep the local response cache (``llm_cache.sqlite``).
            settings: The pipeline's settings (defaults when ``None``).
            **overrides: Single settings to change (``m=3``), applied to ``settings``.

        Raises:
            InvalidInputError: an override that is not a setting, or a value out of range.
            TaskError: no task given and the user has none or several; or a task the user does
                not have without ``new_task`` (the message lists the user's tasks).
        """
        settings = (settings or Settings()).replace(**overrides)
        bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        task_obj = get_task(task) if task is not None else None
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
        try:
            if task_obj is None:
                task_obj = _recorded_task(store.directory)
            bind_task(store.directory, task_obj, None if task is None
                      else task_spec_reference(task), new_task=new_task)
            client = (
                llm
                if isinstance(llm, LLMClient) or llm is None
                else _client_for(llm, store.directory, outbox=outbox, cache=cache)
            )
            p = cls(store, bundle=bundle, encoder=encoder, llm=client, task=task_obj,
                    settings=settings)
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
    def add(self, items: Iterable[Record | dict[str, Any]], *,
            labels: str = "refuse") -> builtins.list[str]:
        """Add history records (see :meth:`HistoryStore.add`); an id already stored is an
        error (use :meth:`upsert`).

        Args:
            items: Records, or dicts with ``id``, ``text`` and fields.
            labels: Records whose answer field holds an answer the task does not allow are
                refused (``"refuse"``, nothing is written), or kept as context (``"context"``:
                retrieved and shown as examples without an answer, never fitted on).
        """
        return self.store.add(self._checked(items, labels))

    def upsert(self, items: Iterable[Record | dict[str, Any]], *,
               labels: str = "refuse") -> builtins.list[str]:
        """Add records, replacing those whose id is already stored (``labels`` as in
        :meth:`add`)."""
        return self.store.upsert(self._checked(items, labels))

    def update(self, id: str, *, text: str | None = None,
               fields: dict[str, Any] | None = None, labels: str = "refuse",
               **kwargs: Any) -> Record:
        """Change one record's text and/or fields (see :meth:`HistoryStore.update`; ``labels``
        as in :meth:`add`, for the answer field)."""
        if fields is not None and self.task.answer_field is not None and labels == "refuse":
            value = dict(fields).get(self.task.answer_field)
            if self.task.foreign_answer(value) is not None:
                raise InvalidInputError(
                    f"{self.task.answer_field!r} {str(value)[:40]!r} is outside task "
                    f"{self.task.name!r}'s labels; nothing was changed. Keep it as context with "
                    "labels='context'")
        return self.store.update(id, text=text, fields=fields, **kwargs)

    def _checked(self, items: Iterable[Record | dict[str, Any]], labels: str) -> list[Record]:
        records = as_records(items)
        self.task.check_records(records, labels)
        return records

    def get(self, id: str) -> Record:
        """The record with this id (NotFoundError if none)."""
        return self.store.get(id)

    def list(self, limit: int | None = None, offset: int = 0) -> builtins.list[Record]:
        """List history records in insertion order."""
        return self.store.list(limit=limit, offset=offset)

    def search(self, query: str, k: int = 10, *, filter: Filter | None = None,
               threshold: float | None = None) -> builtins.list[Hit]:
        """Search the user's history (nothing leaves the device): the ``k`` nearest records,
        optionally only those whose fields match ``filter`` and whose score is at least
        ``threshold`` (see :meth:`HistoryStore.search`)."""
        return self.store.search(query, k=k, filter=filter, threshold=threshold)

    def history(self, id: str | None = None, limit: int | None = None) -> builtins.list[Change]:
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

    # ------------------------------------------------------------------ ask
    def prepare(self, query: str) -> Prepared:
        """The device's work before the LLM call: embed, retrieve, rerank, render the prompt
        (see :meth:`AskPipeline.prepare`)."""
        return self.pipeline.prepare(query)

    def choose(self, prepared: Prepared, texts: Sequence[str], *, greedy: str | None = None,
               simulated: bool = False) -> Answer:
        """The device's work after the LLM call: the adapter's pick among the candidates
        (see :meth:`AskPipeline.choose`); remembered for :meth:`feedback`."""
        answer = self.pipeline.choose(prepared, texts, greedy=greedy, simulated=simulated)
        self._remember(prepared.query, answer)
        return answer

    def ask(self, query: str, *, greedy: bool | None = None) -> Answer:
        """Answer ``query`` for this user: :meth:`prepare`, the LLM call(s), :meth:`choose`.

        Two requests go out at the same time with the same prompt: the greedy answer (``n=1``,
        temperature 0) and ``n`` samples at ``temperature``; the ask takes about as long as one
        request. ``greedy=False`` (or ``Settings(greedy=False)``) is the one-request mode: the
        samples only, so the prompt is sent once; the unfitted adapter then picks the samples'
        consensus (self-consistency) instead of the greedy answer.

        Args:
            query: The question.
            greedy: Also ask for the greedy answer; ``None``: as ``settings.greedy`` says.

        Returns:
            The chosen answer, the exact prompt that left the device, the candidates with their
            adapter scores and features, the reranked records, timings (``local_ms`` excludes
            the LLM) and the requests and tokens the LLM reported.

        Raises:
            InvalidInputError: for an empty query.
            LLMError: when the LLM gives no usable answer after bounded retries.
        """
        answer = self.pipeline.ask(query, self._llm, greedy=greedy)
        self._remember(query, answer)
        return answer

    def rerank(self, query: str, query_vec: np.ndarray | None = None) -> builtins.list[RankedItem]:
        """Retrieve ``k`` records and return the top ``m`` by the reranker, best first."""
        return self.pipeline.rerank(query, query_vec)

    def rerank_scores(self, query: str, query_vec: np.ndarray, records: Sequence[Record],
                      item_vecs: np.ndarray, cosines: np.ndarray) -> np.ndarray:
        """Reranker scores of retrieved records (see :meth:`AskPipeline.rerank_scores`)."""
        return self.pipeline.rerank_scores(query, query_vec, records, item_vecs, cosines)

    def adapter_scores(self, query: str, query_vec: np.ndarray, texts: Sequence[str],
                       cand_vecs: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Adapter scores of candidates (see :meth:`AskPipeline.adapter_scores`)."""
        return self.pipeline.adapter_scores(query, query_vec, texts, cand_vecs, features)

    def candidate_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of candidate texts, from a bounded in-memory cache where seen before."""
        return self.candidates.vectors(texts)

    # ------------------------------------------------------------------ fit / feedback
    def fit(self, budget: int = 200, *, progress: bool = False, **label_options: Any) -> FitSummary:
        """Fit both heads from LLM-made labels on this user's own history.

        Args:
            budget: Most LLM calls to spend (responses are cached: a refit costs none).
            progress: Show progress bars on ``sys.stderr`` (never where there is none, as in
                pythonw or a windowed app).
            **label_options: Passed to :class:`Labeler` (e.g. ``reranker_rule="binary"``,
                ``items_per_query``, ``adapter_share``).
        """
        t0 = time.perf_counter()
        labeler = Labeler(self.store, self.task, self._llm(), settings=self.settings,
                          budget=budget, progress=progress, **label_options)
        before = {role: self.heads.answers_with_own(role) for role in ROLES}
        reports, labels = self.heads.fit(
            labeler, rerank=self.pipeline.rerank_scores, embed=self.encoder.encode,
            meta={"budget": budget, "task": self.task.name})
        outcomes = {role: fit_outcome(before[role], self.heads.answers_with_own(role))
                    for role in ROLES}
        return FitSummary(labels, reports, {r: self.heads[r].nbytes for r in ROLES},
                          time.perf_counter() - t0, self.heads.choices, outcomes)

    def feedback(self, query: str, answer: str) -> None:
        """Learn from the answer the user accepted or wrote, without calling the LLM.

        Args:
            query: Any query: one asked in this session is judged against the candidates the
                LLM gave for it; any other against the answers of the history records the
                device retrieves for it (nothing is sent).
            answer: The answer the user accepted, or their own answer (for a classification
                or rating task, one of the task's labels; anything else is refused).

        Both heads take a few small steps from their current weights, pulled toward the shared
        base head, and the pairs are kept in ``heads/feedback.npz`` (the newest
        :data:`MAX_FEEDBACK` per head), which every later :meth:`fit` trains on too
        (:mod:`hydrahead.runtime.feedback`).
        """
        check_text(query, "the feedback query")
        check_text(answer, "the feedback answer")
        self.task.check_answer(answer)
        pairs = feedback_pairs(self.pipeline, query, answer, self._recent.get(query))
        self.heads.learn_feedback(pairs, self.task.name)

    def stored_feedback(self) -> dict[str, PairSet]:
        """The user's kept feedback pairs per head (records deleted since are left out)."""
        return self.heads.stored_feedback()

    def refit_from_labels(self, roles: Sequence[str] = ROLES) -> dict[str, FitReport | None]:
        """Refit heads from the labels of the last :meth:`fit`, with no LLM request (see
        :meth:`UserHeads.refit_from_labels`)."""
        return self.heads.refit_from_labels(roles)

    # ------------------------------------------------------------------ forget
    def forget(self) -> None:
        """Remove this user's data for good: history, index, heads, cache and ledger.

        Raises:
            StoreError: the user is also open elsewhere (then nothing is removed).
        """
        directory = self.store.directory
        self.close()
        remove_store_directory(directory)

    # ------------------------------------------------------------------ internals
    def _llm(self) -> LLMClient:
        if self.llm is None:
            self.llm = _client_for(LLMConfig.from_env(), self.store.directory)
            self._owns_cache = True
        return self.llm

    def _remember(self, query: str, answer: Answer) -> None:
        self._recent[query] = answer
        self._recent.move_to_end(query)
        while len(self._recent) > RECENT_ANSWERS:
            self._recent.popitem(last=False)


def _recorded_task(directory: Path) -> Task:
    """The one task recorded for the user at ``directory``."""
    tasks = read_tasks(directory)
    if len(tasks) != 1:
        raise TaskError(
            f"user {directory.name!r} has " + (
                f"several tasks ({', '.join(t.name for t in tasks)}): say which with task="
                if tasks else "no task recorded: open it with task=... (e.g. task='GIT_area')"))
    return get_task(tasks[0].spec)


def _client_for(
    config: LLMConfig, directory: Path, *, outbox: bool = True, cache: bool = True
) -> LLMClient:
    files = UserFiles(directory)
    return LLMClient(
        config,
        cache=ResponseCache.rebuilt_if_damaged(files.cache) if cache else None,
        outbox=Outbox(files.outbox, enabled=outbox),
    )
