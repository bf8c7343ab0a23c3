"""A user's heads: loaded, checked against the bundle's bases, refitted, fitted, swapped.

Each role (reranker, adapter) has a shared base (the bundle's featurizer, with its base head)
and the user's own head, saved in ``heads/<role>.npz`` and stamped with the fingerprint of the
base it reads. A new user starts from the base head. When a bundle update changes a base, the
head is refitted from the labels of the user's last fit (``heads/labels.npz``) with no LLM
request; without stored labels the role answers with the base head until the next fit
(:attr:`UserHeads.stale` names such roles).

Fitting takes labels from the :class:`~hydrahead.runtime.labeling.Labeler` (LLM calls) plus
the user's stored feedback (``heads/feedback.npz``, the newest :data:`MAX_FEEDBACK` groups per
head), and keeps the labels for later refits. Each fitted head is checked against the base head
on the user's most recent label groups, held out from fitting, and answers only where it wins
(:mod:`hydrahead.runtime.validation`; the decisions are kept in ``heads/choices.json``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np

from . import reranker_features
from .adapter_features import FEATURE_NAMES
from .bundle import Bundle
from .candidate_cache import CandidateCache
from .errors import BundleError, HeadError, StaleHeadError
from .featurizer import Featurizer, load_featurizer
from .fitting import FitReport, fit_head
from .heads import Head
from .label_file import append_labels, load_labels, save_labels
from .labeling import EmbedFn, Labeler, LabelSet, RerankFn
from .pairs import PairSet
from .paths import make_private_dir
from .settings import Settings
from .store import HistoryStore
from .user_files import UserFiles
from .validation import Choices, RoleCheck, check_answers, check_prompt, check_role, holdout

logger = logging.getLogger("hydrahead")

ROLES = ("reranker", "adapter")
LISTWISE = {"reranker": False, "adapter": True}  # how each head is fitted (see fit_role)
MAX_FEEDBACK = 2000
"""Feedback groups kept per head (the oldest go first)."""


class UserHeads(Mapping[str, Head]):
    """The heads a user's pipeline reads, by role (``heads["reranker"]``).

    Args:
        store: The user's history store (its directory holds ``heads/``; its vectors serve
            stored labels).
        bundle: The model bundle, whose featurizers are the shared bases.
        settings: ``head_rank`` (low-rank heads) and ``seed`` (fitting) are read.
        candidates: Embeds the LLM candidates of stored labels.
        task: The task's name: its heads, labels, feedback and choices live in
            ``heads/<task>/`` (a user can have several tasks).

    Attributes:
        featurizers: The shared base of each role.
        base: The base head of each role: where a user's head starts and what fitting pulls it
            toward (factorized when ``settings.head_rank`` is set).
        directory: The task's heads directory (``heads/<task>/``).
        refitted: Roles refitted at open because their base changed (role -> fit report).
        stale: Roles whose base changed with no stored labels to refit from (they answer with
            the base head until :meth:`fit`).
        choices: What the last fit decided on held-out recent records: which roles' own heads
            answer, whether prompts carry records, and which retrieval feeds the reranker
            (:class:`~hydrahead.runtime.validation.Choices`).
    """

    def __init__(self, store: HistoryStore, bundle: Bundle, *, settings: Settings,
                 candidates: CandidateCache, task: str) -> None:
        self.store, self.settings, self.candidates = store, settings, candidates
        self.files = UserFiles(store.directory, task)
        self.featurizers: dict[str, Featurizer] = {
            role: load_featurizer(bundle, role) for role in ROLES}
        _check_bases(self.featurizers, bundle)
        rank = settings.head_rank
        self.base = {role: f.head if rank is None else f.head.factorize(rank)
                     for role, f in self.featurizers.items()}
        make_private_dir(self.files.heads_root)
        self.directory = make_private_dir(self.files.heads)
        self.refitted: dict[str, FitReport | None] = {}
        self.stale: list[str] = []
        try:
            self.choices = Choices.load(self.files.choices)
        except HeadError as exc:  # never lock a user out: base heads until the next fit
            logger.warning("%s; until then %s answers with the shared base heads", exc,
                           store.directory.name)
            self.choices = Choices({role: RoleCheck(False, "the choices file was unreadable")
                                    for role in ROLES})
        self._heads = {role: self._load(role) for role in ROLES}
        self._fitted: frozenset[str] = frozenset(ROLES)  # roles answering with the user's head
        if self.refitted:
            self._refit_stale()

    # ------------------------------------------------------------------ Mapping
    def __getitem__(self, role: str) -> Head:
        if role in self._fitted and self.choices.used(role):
            return self._heads[role]
        return self.base[role]

    def answers_with_own(self, role: str) -> bool:
        """Whether ``role`` answers with the user's own head (not the shared base head): a
        head the user fitted that passed its check (or was never checked), outside a
        :meth:`using` block that turns it off."""
        return (role in self._fitted and self.choices.used(role) and role not in self.stale
                and self.files.head(role).exists())

    def own(self, role: str) -> Head:
        """The user's own head for ``role``, whether or not it answers (the base head's copy
        for a role never fitted)."""
        return self._heads[role]

    def prompt_records(self, m: int) -> int:
        """Records the user's prompts carry: ``m``, or 0 where the last fit found that this
        LLM does better without this user's records. The choice belongs to the reranker role
        (it decides what goes into the prompt), so ``using()`` without it sends ``m``."""
        if "reranker" in self._fitted and self.choices.prompt.records == 0:
            return 0
        return m

    def retrieval(self) -> str:
        """What feeds the user's reranker: ``dense``, or ``bm25`` / ``fused`` where the last
        fit found that it serves this user's records better
        (:func:`~hydrahead.runtime.validation.check_retrieval`). Like the records in the
        prompt, the choice belongs to the reranker role: ``using()`` without it retrieves
        densely."""
        return self.choices.retrieval.method if "reranker" in self._fitted else "dense"

    def __iter__(self) -> Iterator[str]:
        return iter(ROLES)

    def __len__(self) -> int:
        return len(ROLES)

    @contextmanager
    def using(self, fitted: Sequence[str] = ROLES) -> Iterator[UserHeads]:
        """Answer with the user's heads for the roles in ``fitted`` only, and with the shared
        base head for the others, until the block ends (``fitted=()``: base heads only).

        This is how an evaluation compares the fitted pipeline with the base and with one head
        fitted alone, without touching the saved heads. A head fitted inside the block answers
        from then on (so ``using(fitted=())`` around a fit starts the fit from the base heads,
        as a new user's fit would).
        """
        unknown = set(fitted) - set(ROLES)
        if unknown:
            raise HeadError(f"unknown role(s) {sorted(unknown)}; the roles are {list(ROLES)}")
        previous = self._fitted
        self._fitted = frozenset(fitted)
        try:
            yield self
        finally:
            self._fitted = previous

    def file_bytes(self) -> int:
        """Bytes of the user's head files on disk (0 for roles never fitted)."""
        paths = (self.files.head(role) for role in ROLES)
        return sum(p.stat().st_size for p in paths if p.exists())

    # ------------------------------------------------------------------ fitting
    def fit_role(self, role: str, pairs: PairSet, *, init: Head, holdout_labels: int = 0,
                 check: Callable[[Head, list[int]], RoleCheck] | None = None,
                 **fit_options: Any) -> FitReport | None:
        """Fit one head and save it: the reranker pointwise (HYDRA's loss), the adapter
        listwise over each query's candidates (it picks one per query; see :func:`fit_head`).

        Args:
            role: ``"reranker"`` or ``"adapter"``.
            pairs: The labelled groups: LLM labels first (newest record first), then any
                feedback.
            init: Where fitting starts.
            holdout_labels: How many of the first groups are LLM labels to validate on
                (:func:`~hydrahead.runtime.validation.holdout`): the head fitted on the rest
                is checked against the base head on the held-out newest ones; if it wins, the
                user's head is fitted again on every group and answers, else the base head
                answers. 0 (a feedback step): nothing is held out and the head answers.
            check: Decides the check from the held-out-fitted head and the held-out group
                indices (default: :func:`~hydrahead.runtime.validation.check_role` on their
                labels).
            **fit_options: Passed to :func:`fit_head`.

        Returns:
            The fit's report, or ``None`` when the pairs have nothing to learn from (one class
            only; no query preferring one candidate over another): the head is then unchanged,
            and after a validated fit the base head answers.
        """
        train, held = holdout(pairs, holdout_labels) if holdout_labels else (
            list(range(len(pairs))), [])
        if not _learnable(role, [pairs.labels[g] for g in train]):
            if holdout_labels:
                self.choices.roles[role] = RoleCheck(False, "nothing to learn from the labels")
            return None
        listwise = LISTWISE[role]
        featurizer = self.featurizers[role]
        hidden = [featurizer.hidden_of(qt, q, ts, D, _features(f, len(D))) for qt, q, ts, D, f
                  in zip(pairs.query_texts, pairs.queries, pairs.item_texts, pairs.docs,
                         pairs.features)]

        def fit_on(groups: Sequence[int]) -> tuple[Head, FitReport]:
            ids = np.repeat(np.arange(len(groups)), [len(pairs.labels[g]) for g in groups])
            return fit_head(np.concatenate([hidden[g] for g in groups]),
                            np.concatenate([pairs.labels[g] for g in groups]), init=init,
                            prior=self.base[role], seed=self.settings.seed,
                            groups=ids if listwise else None, **fit_options)

        head, report = fit_on(train)
        if holdout_labels:
            verdict = (check(head, held) if check is not None and held else check_role(
                self.base[role], head, [hidden[g] for g in held],
                [pairs.labels[g] for g in held], listwise=listwise))
            if verdict.used:  # checked: the user's head learns from the newest groups too
                head, report = fit_on(range(len(pairs)))
        else:
            verdict = RoleCheck(True, "fitted on every group, none held out")
        self.choices.roles[role] = verdict
        self._heads[role] = head
        self._fitted |= {role}
        head.save(self.files.head(role), base_fingerprint=featurizer.fingerprint, role=role)
        return report

    def fit(self, labeler: Labeler, *, rerank: Callable[..., np.ndarray], embed: EmbedFn,
            meta: Mapping[str, Any]) -> tuple[dict[str, FitReport | None], LabelSet]:
        """Fit both heads from new LLM labels plus the stored feedback, and keep the labels.

        The reranker is labelled, fitted on all but the newest records' groups and checked on
        those, end to end (:mod:`hydrahead.runtime.validation`); the adapter is then labelled
        on the prompts the reranker that passed (or the base) builds, as ``ask()`` will send
        them, fitted and checked likewise; and the labels say whether records in the prompt
        help this LLM at all.

        Args:
            labeler: Makes the labels (its budget bounds the LLM requests).
            rerank: Reranker scores, as the ask pipeline computes them (a ``RerankFn`` that
                also takes ``head=`` to score with a given head).
            embed: Embeds candidate texts.
            meta: Kept in the labels file (e.g. budget, task), with the LLM calls made.

        Returns:
            Each role's fit report, and what the labelling produced and cost.
        """
        feedback = self.stored_feedback()
        self.choices = Choices(retrieval=labeler.retrieval)
        reports: dict[str, FitReport | None] = {}
        reranker = labeler.reranker_labels()
        pairs = _with(reranker, feedback.get("reranker"))

        def end_to_end(head: Head, held: list[int]) -> RoleCheck:  # asks the LLM
            answers = labeler.compare_rerankers(
                {"base": partial(rerank, head=self.base["reranker"]),
                 "fitted": partial(rerank, head=head)},
                [str(pairs.query_ids[g]) for g in held])
            return check_answers(answers["base"], answers["fitted"])

        reports["reranker"] = self.fit_role("reranker", pairs, init=self.base["reranker"],
                                            holdout_labels=len(reranker), check=end_to_end)
        adapter = labeler.adapter_labels(rerank, embed)  # on the prompts ask() will send
        reports["adapter"] = self.fit_role(
            "adapter", _with(adapter, feedback.get("adapter")), init=self.base["adapter"],
            holdout_labels=len(adapter))
        for role, report in reports.items():
            if report is None:  # never the head of an earlier fit: the shared base answers
                self.choices.roles[role] = RoleCheck(False, "nothing to learn from the labels")
        self.choices.prompt = check_prompt(labeler.prompt_quality())
        self.choices.save(self.files.choices)
        self.stale = []
        summary = labeler.summary(reranker, adapter)
        save_labels(self.files.labels, {"reranker": reranker, "adapter": adapter},
                    {**meta, "llm_calls": summary.llm_calls})
        return reports, summary

    def learn_feedback(self, pairs: Mapping[str, PairSet], task_name: str) -> None:
        """A few small steps of each head toward the feedback pairs, from its current weights
        (pulled toward the base head); the pairs are kept for every later fit."""
        for role, role_pairs in pairs.items():
            if len(role_pairs):
                self.fit_role(role, role_pairs, init=self[role], epochs=5, lr=1e-3)
        self.choices.save(self.files.choices)  # the roles the user taught now answer
        append_labels(self.files.feedback, dict(pairs), {"task": task_name}, limit=MAX_FEEDBACK)

    # ------------------------------------------------------------------ stored labels
    def stored_feedback(self) -> dict[str, PairSet]:
        """The user's kept feedback pairs per head (records deleted since are left out); none,
        with a warning naming the file, where the feedback file is damaged (a fit then goes on
        without it; :meth:`learn_feedback` refuses until it is removed)."""
        try:
            labels, _ = load_labels(self.files.feedback, query_vectors=self._stored_vector,
                                    item_vectors=self._item_vectors)
        except FileNotFoundError:
            return {}
        except HeadError as exc:
            logger.warning("%s; fitting without the feedback it held", exc)
            return {}
        return labels

    def refit_from_labels(self, roles: Sequence[str] = ROLES) -> dict[str, FitReport | None]:
        """Refit heads from the labels of the last fit, with no LLM request.

        This is what happens, automatically, when the bundle's shared base of a role changed
        since the user's head was fitted (:attr:`refitted` says which heads). Labels whose
        query record or item record was deleted since are left out.

        Raises:
            HeadError: there are no stored labels (the user never ran ``fit``, or ran it with
                a hydrahead that did not keep them): run ``hydrahead fit``; the response cache
                answers the requests it already made.
        """
        try:
            labels, _ = load_labels(self.files.labels, query_vectors=self._stored_vector,
                                    item_vectors=self._item_vectors)
        except FileNotFoundError:
            raise HeadError(
                f"the {'/'.join(roles)} head(s) must be refitted and no labels are stored in "
                f"{self.directory}: run `hydrahead fit` (responses already cached cost no "
                "request)") from None
        feedback = self.stored_feedback()
        reports = {}
        for role in roles:
            self._heads[role] = self.base[role].copy()
            stored = labels.get(role, PairSet())
            reports[role] = self.fit_role(role, _with(stored, feedback.get(role)),
                                          init=self.base[role], holdout_labels=len(stored))
        self.choices.save(self.files.choices)
        return reports

    # ------------------------------------------------------------------ internals
    def _load(self, role: str) -> Head:
        path = self.files.head(role)
        if not path.exists():
            return self.base[role].copy()  # cold start: the shared base head
        try:
            head = Head.load(path, base_fingerprint=self.featurizers[role].fingerprint, role=role)
        except StaleHeadError:
            self.refitted[role] = None  # refitted from the stored labels once all are loaded
            return self.base[role].copy()
        if head.rank != self.base[role].rank:
            raise HeadError(
                f"the saved {role} head has rank {head.rank}, this personalizer was opened with "
                f"head_rank={self.base[role].rank}; refit with `hydrahead fit` or reopen "
                "with the same head_rank"
            )
        return head

    def _refit_stale(self) -> None:
        roles = list(self.refitted)
        user = self.store.directory.name
        try:
            self.refitted = self.refit_from_labels(roles)
        except HeadError as exc:  # no labels: never strand the user; fit() recovers
            self.refitted = {}
            self.stale = roles
            logger.warning("%s; until then %s answers with the shared base heads", exc, user)
            return
        for role, report in self.refitted.items():
            logger.warning(
                "the %s base of the bundle changed: refitted %s's %s head from %d stored labels "
                "with 0 LLM requests", role, user, role,
                0 if report is None else report.n_train + report.n_val)

    def _stored_vector(self, text: str, record_id: str) -> np.ndarray | None:
        if not record_id:
            return self.candidates.encoder.encode([text])[0]
        return self.store.vectors([record_id])[0] if record_id in self.store else None

    def _item_vectors(self, texts: Sequence[str], ids: Sequence[str]) -> np.ndarray | None:
        if all(ids):  # history records: their stored vectors, unless one was deleted
            if not all(i in self.store for i in ids):
                return None
            return self.store.vectors(list(ids))
        return self.candidates.vectors(texts)  # LLM candidates


def _learnable(role: str, labels: Sequence[np.ndarray]) -> bool:
    """Whether label groups can teach a head anything: listwise, a group whose candidates
    differ; pointwise, pairs of both sides of 0.5."""
    if LISTWISE[role]:
        return any(np.ptp(y) > 0 for y in labels)
    flat = np.concatenate(labels) if labels else np.zeros(0)
    return bool((flat > 0.5).any() and (flat < 0.5).any())


def _features(features: np.ndarray | None, n: int) -> np.ndarray:
    """A group's named features; a group stored without any reads as (n, 0)."""
    return np.zeros((n, 0), np.float32) if features is None else features


def _with(labels: PairSet, extra: PairSet | None) -> PairSet:
    """``labels`` followed by ``extra`` (a new PairSet; neither is changed)."""
    out = PairSet()
    out.extend(labels)
    if extra is not None:
        out.extend(extra)
    return out


def _check_bases(bases: dict[str, Featurizer], bundle: Bundle) -> None:
    """Each base must read the named features this version of hydrahead computes."""
    expected = {"reranker": reranker_features.FEATURE_NAMES, "adapter": FEATURE_NAMES}
    for role, names in expected.items():
        if bases[role].feature_names != names:
            raise BundleError(
                f"the {role} base in {bundle.root} reads {list(bases[role].feature_names)}; "
                f"this hydrahead computes {list(names)}: rebuild the bundle with "
                "`hydrahead export bundle`")

