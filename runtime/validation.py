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
  by the task's
  own metric as the labels carry it: for the adapter, the target of the candidate each head
  would pick (right/wrong, or ROUGE relative to the best candidate), which is what ``ask()``
  does with it; where both heads tie on it, the fitted head must also have the lower held-out
  loss. The reranker is checked end to end: the held-out queries are asked as ``ask()``
  would, with the prompt the fitted reranker builds and with the base reranker's (the same
  request where both pick the same records; the chosen one is the adapter labels' own request,
  so a cache hit), and the LLM's answers are scored against the gold
  (:meth:`~hydrahead.runtime.labeling.Labeler.compare_rerankers`). A refit from stored labels,
  which sends nothing, checks it on its held-out labels instead: how often it orders two judged
  records as their targets do. A tie, or too few groups to tell, keeps the base head: fitting
  never makes a role worse on the records it was checked on. Where the check passes, the head
  the user gets is fitted again on every group, the held-out newest ones included (they are
  the ones most like the queries to come).
* **Records in the prompt.** The labelling already asks the LLM each of the newest queries
  with no record (the graded reranker labels' baseline) and with the reranked ``m`` records
  (the adapter labels). Where the samples without records beat those with them on at least
  :data:`MIN_PROMPT_EVIDENCE` such queries, this LLM is hurt by this user's records, and the
  user's prompts carry none.

The decisions and their evidence are kept in ``heads/choices.json`` (numbers only, no history
text) and reported by ``fit()``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import HeadError
from .heads import Head
from .pairs import PairSet
from .paths import atomic_write_bytes

VALIDATION_SHARE = 0.3
"""Share of a role's label groups (the most recent records) held out to check its head."""
MIN_VALIDATION_GROUPS = 3
"""Fewer held-out groups than this cannot tell a head from the base: the base head stays."""
MIN_TRAIN_GROUPS = 3
"""Groups left to fit on, at least, before any are held out."""
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
    """

    used: bool
    reason: str
    n_val: int = 0
    base: float | None = None
    fitted: float | None = None


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


@dataclass
class Choices:
    """What a user's last fit decided, kept in ``heads/choices.json``."""

    roles: dict[str, RoleCheck] = field(default_factory=dict)
    prompt: PromptCheck = field(default_factory=PromptCheck)

    def used(self, role: str) -> bool:
        """Whether the user's own head answers for ``role`` (a role never checked: yes)."""
        check = self.roles.get(role)
        return check is None or check.used

    def save(self, path: Path) -> None:
        """Write the choices (owner-only, atomically)."""
        body = {"format": "hydrahead-choices", "version": CHOICES_FORMAT,
                "roles": {r: asdict(c) for r, c in self.roles.items()},
                "prompt": asdict(self.prompt)}
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
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise HeadError(f"{path} is malformed ({exc}): run `hydrahead fit` again") from None
        return cls(roles, prompt)


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


def held_out_loss(margins: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                  listwise: bool) -> float:
    """The fitting loss on held-out groups (lower is better): listwise, the cross-entropy of
    each group's softmax over margins against its targets normalised to sum 1 (groups whose
    targets are all equal say nothing and are left out); pointwise, the mean binary
    cross-entropy of ``sigmoid(margin)``."""
    if listwise:
        losses = []
        for d, t in zip(margins, targets):
            t = np.asarray(t, np.float64)
            if np.ptp(t) <= 0:
                continue
            d = np.asarray(d, np.float64)
            log_p = d - (np.max(d) + np.log(np.sum(np.exp(d - np.max(d)))))
            losses.append(float(-np.sum(t / t.sum() * log_p)))
        return float(np.mean(losses)) if losses else 0.0
    d = np.concatenate(margins).astype(np.float64)
    y = np.concatenate(targets).astype(np.float64)
    return float(np.mean(y * np.logaddexp(0.0, -d) + (1.0 - y) * np.logaddexp(0.0, d)))


def check_role(base: Head, fitted: Head, hidden: Sequence[np.ndarray],
               targets: Sequence[np.ndarray], *, listwise: bool) -> RoleCheck:
    """Use the fitted head only if it beats the base head on the held-out groups.

    The task's metric decides (:func:`pick_metric` for a head that picks one item, else
    :func:`order_metric`); where both heads score the same on it, the fitted head must also
    have the lower held-out loss (:func:`held_out_loss`), by at least 1%.

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
    scores = {name: [head.scores(H) for H in hidden] for name, head in
              (("base", base), ("fitted", fitted))}
    b, f = measure(scores["base"], targets), measure(scores["fitted"], targets)
    if abs(f - b) > 1e-9:
        better = f > b
        why = "beats" if better else "is worse than"
    else:
        margins = {name: [_margin(head, H) for H in hidden] for name, head in
                   (("base", base), ("fitted", fitted))}
        lb = held_out_loss(margins["base"], targets, listwise)
        lf = held_out_loss(margins["fitted"], targets, listwise)
        better = lf < 0.99 * lb
        why = ("ties with, and has a lower held-out loss than," if better
               else "ties with, and has no lower held-out loss than,")
    return RoleCheck(better, f"{why} the base head on held-out recent records", len(targets),
                     round(b, 6), round(f, 6))


def _margin(head: Head, H: np.ndarray) -> np.ndarray:
    logits = head.logits(H)
    return logits[:, 1] - logits[:, 0]


def check_answers(base: Sequence[float], fitted: Sequence[float]) -> RoleCheck:
    """Use the fitted reranker only if the LLM answered the held-out queries better, on
    average, with the prompts it built than with the base reranker's."""
    if not fitted:
        return RoleCheck(False, "no held-out query answered both ways within the budget")
    b, f = float(np.mean(base)), float(np.mean(fitted))
    better = f > b + 1e-9
    return RoleCheck(better, ("the LLM answers held-out recent records better with its prompts"
                              if better else "the LLM answers held-out recent records no better "
                              "with its prompts"), len(fitted), round(b, 6), round(f, 6))


def check_prompt(evidence: Sequence[tuple[float, float]]) -> PromptCheck:
    """Leave records out of this user's prompts only where, on at least
    :data:`MIN_PROMPT_EVIDENCE` queries, the LLM did better without them."""
    if len(evidence) < MIN_PROMPT_EVIDENCE:
        return PromptCheck(None, len(evidence))
    without = float(np.mean([w for w, _ in evidence]))
    with_records = float(np.mean([r for _, r in evidence]))
    return PromptCheck(0 if without > with_records + 1e-9 else None, len(evidence),
                       round(without, 6), round(with_records, 6))


def describe(choices: Choices) -> dict[str, Any]:
    """The choices as plain data (for reports and JSON)."""
    return {"roles": {r: asdict(c) for r, c in choices.roles.items()},
            "prompt": asdict(choices.prompt)}
