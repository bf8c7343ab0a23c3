"""Per-user validation: what a user's fit is allowed to change, decided on their recent records.

A user's heads are fitted from ~100 LLM calls of labels; they can overfit, and a user's newest
records can contradict their old ones (a renamed label, a changed habit). So a fit is checked the
way ``ask()`` will meet it, forward in time:

* **Heads.** Label groups of the user's most recent records (:data:`VALIDATION_SHARE` of them,
  at least :data:`MIN_VALIDATION_GROUPS`) are held out from fitting: every other one of the
  newest, so that the head checked was fitted on records as recent as those it is checked on
  (as the head the user gets will be: a user's newest records are the most like the queries to
  come, and where a user changed their habits, a head fitted only on older records fails a
  check on newer ones even when the head fitted on all of them has learned the change). The
  head fitted on the rest is used only if it beats the shared base head on the held-out ones,
  by the task's own metric as the labels carry it, group by group: it must win
  :data:`MIN_NET_WINS` more groups than it loses (one group is noise, and the better-looking of
  two heads on a handful of groups is often only the luckier). For the adapter the metric is
  the target of the candidate each head would pick (right/wrong, or ROUGE relative to the best
  candidate), which is what ``ask()`` does with it. The reranker is checked end to end: the
  held-out queries are asked as ``ask()`` would, with the prompt the fitted reranker builds
  and with the base reranker's (the same request where both pick the same records; the chosen
  one is the adapter labels' own request, so a cache hit), and the LLM's answers are scored
  against the gold (:meth:`~hydrahead.runtime.labeling.Labeler.compare_rerankers`), query by
  query: it must answer more of them better than worse (it is the LLM's own answers to the
  very prompts, on the 3-5 queries the budget leaves). A refit from stored labels, which sends
  nothing, checks it on its held-out labels instead: how often it orders two judged records as
  their targets do. A tie, or too few groups to tell, keeps the base head: fitting never makes
  a role worse on the records it was checked on. Where the check passes, the head the user
  gets is fitted again on every group, the held-out newest ones included (they are
  the ones most like the queries to come).
* **Records in the prompt.** The labelling already asks the LLM each of the newest queries
  with no record (the graded reranker labels' baseline) and with the reranked ``m`` records
  (the adapter labels). Where the samples without records beat those with them on at least
  :data:`MIN_PROMPT_EVIDENCE` such queries, this LLM is hurt by this user's records, and the
  user's prompts carry none.

* **Retrieval.** Which records reach the reranker (dense, BM25, or both fused:
  :mod:`~hydrahead.runtime.retrieval`) is checked on the user's newest records without any LLM
  call: the records older than each that a retrieval puts first are scored by how well their
  answers match its answer. Dense stays unless another wins record by record, by the rule a
  fitted head must meet (:func:`check_retrieval`).

The decisions and their evidence are kept in ``heads/choices.json`` (numbers only, no history
text) and reported by ``fit()``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import HeadError
from .heads import Head
from .pairs import PairSet
from .paths import atomic_write_bytes
from .retrieval import RETRIEVALS

VALIDATION_SHARE = 0.3
"""Share of a role's label groups (the most recent records) held out to check its head."""
MIN_VALIDATION_GROUPS = 3
"""Fewer held-out groups than this cannot tell a head from the base: the base head stays."""
MIN_TRAIN_GROUPS = 3
"""Groups left to fit on, at least, before any are held out."""
MIN_NET_WINS = 2
"""A fitted head must do better than the base on this many more held-out units (label groups
or queries) than it does worse on. Choosing the better-looking of two heads on a handful of
units favours the luckier one: with the older rule (a higher mean, ties broken by the held-out
loss), the 83 of 207 git-lamp-q10 GIT_area dev users' adapters it let through, over nine
simulated LLMs, answered 15 users' questions worse than the base head and 4 better (commit
c547533, bench/QUALITY.md's shipped-bases runs)."""
MAX_SIGN_P = 0.1
"""...and a one-sided sign test over the units it won or lost must put that at most this likely
by chance (:func:`sign_test`): 2 of 2 or 5 of 6 is not enough; 4 of 4, 6 of 7 or 7 of 9 is."""
MIN_PROMPT_EVIDENCE = 3
"""Queries asked both with and without records needed before records are ever left out."""
CHOICES_FORMAT = 1


@dataclass(frozen=True)
class RoleCheck:
    """How one role's fitted head did against the base head on held-out recent label groups.

    Attributes:
        used: Whether the user's fitted head answers (else the shared base head).
        reason: Why, in words.
        n_val: Held-out groups it was checked on.
        base: Mean metric of the base head on them (None when not checked).
        fitted: Mean metric of the fitted head on them.
        wins: Held-out units (groups or queries) on which the fitted head did better.
        losses: Those on which it did worse.
    """

    used: bool
    reason: str
    n_val: int = 0
    base: float | None = None
    fitted: float | None = None
    wins: int = 0
    losses: int = 0


@dataclass(frozen=True)
class PromptCheck:
    """Whether this user's records help this LLM, on queries asked both ways.

    Attributes:
        records: Records per prompt from now on: ``None`` for the settings' ``m``, 0 for none.
        n: Queries asked both without and with records.
        without: Mean quality of the samples with no record in the prompt.
        with_records: Mean quality with the reranked records.
    """

    records: int | None = None
    n: int = 0
    without: float | None = None
    with_records: float | None = None


@dataclass(frozen=True)
class RetrievalCheck:
    """Which retrieval feeds this user's reranker (:mod:`~hydrahead.runtime.retrieval`).

    Attributes:
        method: ``dense``, ``bm25`` or ``fused``.
        n: The user's newest records it was checked on.
        quality: Per retrieval, the mean match of its top ``m`` records' answers with each
            checked record's answer.
        wins: Checked records the chosen retrieval served better than dense.
        losses: Those it served worse.
    """

    method: str = "dense"
    n: int = 0
    quality: dict[str, float] = field(default_factory=dict)
    wins: int = 0
    losses: int = 0


@dataclass
class Choices:
    """What a user's last fit decided, kept in ``heads/choices.json``."""

    roles: dict[str, RoleCheck] = field(default_factory=dict)
    prompt: PromptCheck = field(default_factory=PromptCheck)
    retrieval: RetrievalCheck = field(default_factory=RetrievalCheck)

    def used(self, role: str) -> bool:
        """Whether the user's own head answers for ``role`` (a role never checked: yes)."""
        check = self.roles.get(role)
        return check is None or check.used

    def save(self, path: Path) -> None:
        """Write the choices (owner-only, atomically)."""
        body = {"format": "hydrahead-choices", "version": CHOICES_FORMAT,
                "roles": {r: asdict(c) for r, c in self.roles.items()},
                "prompt": asdict(self.prompt), "retrieval": asdict(self.retrieval)}
        atomic_write_bytes(path, json.dumps(body, indent=1).encode("utf-8"))

    @classmethod
    def load(cls, path: Path) -> Choices:
        """The saved choices; none saved (a user fitted before choices existed): every fitted
        head answers and prompts carry ``m`` records.

        Raises:
            HeadError: the file is not a choices file this hydrahead can read.
        """
        try:
            body = json.loads(path.read_bytes())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, RecursionError) as exc:
            raise HeadError(f"{path} is unreadable ({exc}): run `hydrahead fit` again") from None
        try:
            if body.get("format") != "hydrahead-choices" or body.get("version") != CHOICES_FORMAT:
                raise ValueError("not a hydrahead choices file of version 1")
            roles = {str(r): RoleCheck(**c) for r, c in body["roles"].items()}
            prompt = PromptCheck(**body["prompt"])
            if prompt.records not in (None, 0):
                raise ValueError(f"prompt records must be null or 0, got {prompt.records!r}")
            retrieval = RetrievalCheck(**body.get("retrieval", {}))  # older files: dense
            if retrieval.method not in RETRIEVALS:
                raise ValueError(f"retrieval must be one of {RETRIEVALS}, got "
                                 f"{retrieval.method!r}")
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise HeadError(f"{path} is malformed ({exc}): run `hydrahead fit` again") from None
        return cls(roles, prompt, retrieval)


def holdout(pairs: PairSet, n_labels: int) -> tuple[list[int], list[int]]:
    """Split the first ``n_labels`` groups of ``pairs`` (the LLM labels; feedback groups follow
    them and always train) into (train, held out) group indices.

    The held-out groups are every other one of the newest history records among the labels
    (the labeller lists them newest first; questions, which are not records, always train),
    from the newest on: :data:`VALIDATION_SHARE` of the records, interleaved with as many
    equally recent ones that train.
    """
    records = [g for g in range(n_labels) if pairs.query_ids[g] is not None]
    n_val = math.ceil(VALIDATION_SHARE * len(records))
    if n_val < MIN_VALIDATION_GROUPS or len(pairs) - n_val < MIN_TRAIN_GROUPS:
        return list(range(len(pairs))), []
    newest = records[: 2 * n_val]
    held = set(newest[0::2])
    held.update(records[len(newest):][: n_val - len(held)])  # fewer than 2 * n_val records
    return [g for g in range(len(pairs)) if g not in held], sorted(held)


def pick_metric(scores: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> float:
    """Mean over groups of the target of the item a head scores highest (first on ties)."""
    return float(np.mean([t[int(np.argmax(s))] for s, t in zip(scores, targets)]))


def order_metric(scores: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> float:
    """Share of item pairs with different targets that a head orders as the targets do (a tie
    in score counts half), over all groups' pairs; 0.5 when no pair differs."""
    right, total = 0.0, 0
    for s, t in zip(scores, targets):
        s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
        dt = np.sign(t[:, None] - t[None, :])
        ds = np.sign(s[:, None] - s[None, :])
        upper = np.triu(dt != 0, k=1)
        right += float(np.sum((dt == ds)[upper]) + 0.5 * np.sum((ds == 0)[upper]))
        total += int(upper.sum())
    return right / total if total else 0.5


def sign_test(wins: int, losses: int) -> float:
    """One-sided sign test: the chance of at least ``wins`` wins in ``wins + losses`` fair coin
    flips (1.0 when nothing was decided)."""
    n = wins + losses
    return sum(math.comb(n, i) for i in range(wins, n + 1)) / 2 ** n if n else 1.0


def _verdict(signs: Sequence[int], base: float, fitted: float, what: str, *,
             min_net: int = MIN_NET_WINS, max_p: float = MAX_SIGN_P) -> RoleCheck:
    """Use the fitted head only if, unit by unit (``signs``: +1 where it did better, -1 worse,
    0 the same), it wins ``min_net`` more units than it loses and a sign test puts that at
    most ``max_p`` likely by chance; ``what`` names the units, for the reason."""
    wins, losses = sum(s > 0 for s in signs), sum(s < 0 for s in signs)
    p = sign_test(wins, losses)
    better = wins - losses >= min_net and p <= max_p
    told = f"wins {wins} and loses {losses} of {len(signs)} {what}"
    if better:
        why = told
    elif wins > losses:
        why = (f"{told}: too close to tell from the base (it must win {min_net} more than "
               f"it loses, sign test p <= {max_p}; p = {p:.2f})")
    else:
        why = f"{told}: no better than the base"
    return RoleCheck(better, why, len(signs), round(base, 6), round(fitted, 6), wins, losses)


def _sign(base: float, fitted: float, tolerance: float = 1e-9) -> int:
    return 1 if fitted > base + tolerance else -1 if fitted < base - tolerance else 0


def check_role(base: Head, fitted: Head, hidden: Sequence[np.ndarray],
               targets: Sequence[np.ndarray], *, listwise: bool) -> RoleCheck:
    """Use the fitted head only if it beats the base head on the held-out groups, group by
    group (:func:`_verdict`).

    A group is won or lost by the task's metric (:func:`pick_metric` for a head that picks one
    item: the target of its pick; else :func:`order_metric`: how often it orders two judged
    items as their targets do); where both heads do the same on it, by the group's fitting
    loss (:func:`group_loss`), if it differs by more than 1%.

    Args:
        base: The shared base head.
        fitted: The head fitted without the held-out groups.
        hidden: Each held-out group's hidden features.
        targets: Each held-out group's targets.
        listwise: Whether the head picks one item per group (the adapter).
    """
    if not targets:
        return RoleCheck(False, "too few recent labels to check the fitted head against the base")
    measure = pick_metric if listwise else order_metric
    signs: list[int] = []
    values: dict[str, list[float]] = {"base": [], "fitted": []}
    for H, t in zip(hidden, targets):
        b = measure([base.scores(H)], [t])
        f = measure([fitted.scores(H)], [t])
        values["base"].append(b)
        values["fitted"].append(f)
        sign = _sign(b, f)
        if sign == 0:
            lb, lf = (group_loss(head, H, t, listwise) for head in (base, fitted))
            sign = _sign(-lb, -lf, tolerance=0.01 * abs(lb))
        signs.append(sign)
    return _verdict(signs, float(np.mean(values["base"])), float(np.mean(values["fitted"])),
                    "held-out recent record groups")


def group_loss(head: Head, H: np.ndarray, targets: np.ndarray, listwise: bool) -> float:
    """The fitting loss of one group (lower is better): listwise, the cross-entropy of the
    softmax over the head's margins against the targets normalised to sum 1 (0 where the targets
    are all equal: such a group says nothing); pointwise, the mean binary cross-entropy of
    ``sigmoid(margin)``."""
    logits = head.logits(H).astype(np.float64)
    d = logits[:, 1] - logits[:, 0]
    t = np.asarray(targets, np.float64)
    if listwise:
        if np.ptp(t) <= 0:
            return 0.0
        log_p = d - (np.max(d) + np.log(np.sum(np.exp(d - np.max(d)))))
        return float(-np.sum(t / t.sum() * log_p))
    return float(np.mean(t * np.logaddexp(0.0, -d) + (1.0 - t) * np.logaddexp(0.0, d)))


def check_answers(base: Sequence[float], fitted: Sequence[float]) -> RoleCheck:
    """Use the fitted reranker only if the LLM answered more of the held-out queries better
    than worse with the prompts it built than with the base reranker's (``base`` and
    ``fitted``: each query's answer quality, paired).

    This check is end to end (the LLM's own answers, ``n`` samples and the greedy one per
    query, to the very prompts ``ask()`` would send), on the few queries the budget leaves
    for it (3-5 at budget 100), so it asks for a majority, not :data:`MIN_NET_WINS`: over nine
    simulated LLMs, the rerankers it let through answered git-lamp-q10 GIT_subject dev users
    better than the base reranker for 26 users and worse for 16 (GIT_area: 8 and 5; commit
    c547533), where the adapters passed by a check on labels answered GIT_area worse for 15
    users and better for 4.
    """
    if not fitted:
        return RoleCheck(False, "no held-out query answered both ways within the budget")
    return _verdict([_sign(b, f) for b, f in zip(base, fitted)], float(np.mean(base)),
                    float(np.mean(fitted)), "held-out recent queries answered with its prompts",
                    min_net=1, max_p=1.0)


def check_prompt(evidence: Sequence[tuple[float, float]]) -> PromptCheck:
    """Leave records out of this user's prompts only where, on at least
    :data:`MIN_PROMPT_EVIDENCE` queries, the LLM did better without them."""
    if len(evidence) < MIN_PROMPT_EVIDENCE:
        return PromptCheck(None, len(evidence))
    without = float(np.mean([w for w, _ in evidence]))
    with_records = float(np.mean([r for _, r in evidence]))
    return PromptCheck(0 if without > with_records + 1e-9 else None, len(evidence),
                       round(without, 6), round(with_records, 6))


def check_retrieval(evidence: Mapping[str, Sequence[float]]) -> RetrievalCheck:
    """Feed the reranker with BM25 or the fused lists instead of dense retrieval only where,
    record by record, it served the user's newest records better as a fitted head must beat
    the base (:data:`MIN_NET_WINS`, :data:`MAX_SIGN_P`); of two that do, the better on average.

    Args:
        evidence: Per retrieval (``dense`` among them), the match of its top ``m`` records'
            answers with each checked record's answer, the records in the same order
            (:meth:`~hydrahead.runtime.labeling.Labeler.retrieval_quality`).
    """
    dense = list(evidence.get("dense", ()))
    quality = {name: round(float(np.mean(v)), 6) for name, v in evidence.items() if len(v)}
    best = RetrievalCheck("dense", len(dense), quality)
    for name in RETRIEVALS[1:]:
        other = list(evidence.get(name, ()))
        if not dense or len(other) != len(dense):
            continue
        verdict = _verdict([_sign(b, f) for b, f in zip(dense, other)], float(np.mean(dense)),
                           float(np.mean(other)), "records")
        if verdict.used and (best.method == "dense" or quality[name] > quality[best.method]):
            best = RetrievalCheck(name, len(dense), quality, verdict.wins, verdict.losses)
    return best


def describe(choices: Choices) -> dict[str, Any]:
    """The choices as plain data (for reports and JSON)."""
    return {"roles": {r: asdict(c) for r, c in choices.roles.items()},
            "prompt": asdict(choices.prompt), "retrieval": asdict(choices.retrieval)}
