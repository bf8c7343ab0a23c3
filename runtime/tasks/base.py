"""What a task is: how history records become a prompt, and how the LLM's answers are judged.

A :class:`Task` is plain data (name, kind, labels, instruction, which record fields make an
example and which field holds its answer) plus the few methods every part of hydrahead needs:
render a prompt, parse an answer, score it the way LaMP's evaluation does.

The prompt format
-----------------
Every prompt is one user message (``task.messages(...)``) laid out like this::

    {instruction}
    Options: label a, label b, label c          <- classification / regression only

    Examples from this user's history:          <- whole section omitted without examples
    ### Example 1
    {example text}
    Answer: {answer}
    ### Example 2
    {example text}
    Answer: {answer}

    ### Query
    {query text}
    Answer:

Example texts are cut to :data:`MAX_EXAMPLE_CHARS` characters, answers to
:data:`MAX_ANSWER_CHARS` and the query to :data:`MAX_QUERY_CHARS`, so a prompt with ``m``
examples stays under ``m * (MAX_EXAMPLE_CHARS + MAX_ANSWER_CHARS) + MAX_QUERY_CHARS`` plus a
few hundred characters. Answers are written on one line. A line inside a text that starts with
``###`` is rewritten to start with ``##`` so that no text can forge a section header; an example
without an answer (LaMP-1 history items carry none) has no ``Answer:`` line. The offline
simulator (:mod:`hydrahead.offline.simulator`) reads prompts back with these same headers.

Judging answers (as LaMP's evaluation does)
-------------------------------------------
* classification: an output is matched to a label exactly, then case-insensitively, then as the
  label appearing inside the output (whole word; the longest such label wins). An output that
  matches no label parses to ``None`` and counts as wrong. Metrics: accuracy and macro-F1,
  averaged over *all* of the task's labels (LaMP passes the full label list to its F1, so a label
  that is neither predicted nor gold adds an F1 of 0).
* regression (ratings): the first number in the output, if it lies within the label range,
  else ``None``. LaMP maps an unparseable rating to the worst case for that question: 1 if
  gold is nearer the top of the scale, else 5 (the larger of |1 - gold| and |5 - gold|; ties
  go to 5). Metrics: MAE and RMSE.
* generation: ROUGE-1 and ROUGE-L F1 (the ``rouge-score`` package, with Porter stemming),
  averaged over questions. :meth:`Task.rouge` gives (ROUGE-1 F + ROUGE-L F) / 2 for one pair.
"""

from __future__ import annotations

import functools
import math
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError, TaskError
from ..records import RESERVED_KEYS, Record, parse_iso_timestamp

KINDS = ("classification", "regression", "generation")

MAX_EXAMPLE_CHARS = 600
"""An example's text is cut to this many characters in a prompt."""
MAX_ANSWER_CHARS = 200
"""An example's answer is cut to this many characters in a prompt."""
MAX_QUERY_CHARS = 2000
"""The query text is cut to this many characters in a prompt."""

OPTIONS_PREFIX = "Options: "
OPTIONS_SEPARATOR = ", "
EXAMPLES_HEADER = "Examples from this user's history:"
EXAMPLE_HEADER = "### Example {index}"
QUERY_HEADER = "### Query"
ANSWER_PREFIX = "Answer:"

_FORMATTER = string.Formatter()


@dataclass(frozen=True)
class Task:
    """A personalisation task: prompt layout, answer parsing and LaMP-style metrics.

    Attributes:
        name: Task name, e.g. ``"LaMP-2"`` or ``"GIT_area"``.
        kind: ``"classification"``, ``"regression"`` (ratings) or ``"generation"``.
        instruction: First line(s) of every prompt.
        labels: The answers a classification / regression task allows (empty for generation).
        text_fields: History-item fields that describe an item (its input side, not its answer);
            joined with blank lines they are the record's ``text``.
        answer_field: The field holding an item's answer (``None``: items carry no answer).
        example_template: ``str.format`` template over ``text_fields`` that writes an example.
        query_markers: Markers that end the instruction inside a LaMP question's input; the
            query text starts after the first one found (case-insensitive). None found: the
            whole input is the query.
        description: One line for humans.
    """

    name: str
    kind: str
    instruction: str
    labels: tuple[str, ...] = ()
    text_fields: tuple[str, ...] = ("text",)
    answer_field: str | None = None
    example_template: str = "{text}"
    query_markers: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        problems = _task_problems(self)
        if problems:
            raise TaskError(f"invalid task {self.name!r}: " + "; ".join(problems))

    # ----------------------------------------------------------------- history items / records
    def record_from_profile(self, item: Mapping[str, Any]) -> Record:
        """Turn one LaMP profile item (a dict) into a history :class:`Record`.

        ``text`` is the item's ``text_fields`` joined by blank lines; every field except ``id``,
        ``text``, ``timestamp`` and ``embedding`` goes to ``fields`` (the answer, the date and
        named text fields such as ``title`` among them, so templates can use them); ``timestamp``
        or else ``date`` becomes the timestamp.

        Raises:
            InvalidInputError: The item has no ``id`` or lacks a text field (the answer field is
                optional: an item without it is context only, see :meth:`answer_of`).
        """
        if not isinstance(item, Mapping):
            raise InvalidInputError(f"{self.name}: a profile item must be a dict, got "
                                    f"{type(item).__name__}")
        needed = ["id", *self.text_fields]  # the answer field is optional: context-only records
        missing = [k for k in needed if item.get(k) is None]
        if missing:
            raise InvalidInputError(
                f"{self.name}: profile item {item.get('id', '?')!r} lacks field(s) {missing}; "
                f"items of this task need {needed}")
        record_id = item["id"]
        if isinstance(record_id, bool) or not isinstance(record_id, (str, int)):
            raise InvalidInputError(
                f"{self.name}: a profile item's id must be a string or an integer, got "
                f"{type(record_id).__name__}")
        wrong = [k for k in self.text_fields if not isinstance(item[k], str)]
        if wrong:
            raise InvalidInputError(
                f"{self.name}: profile item {record_id!r}: field(s) {wrong} must be text, got "
                f"{', '.join(type(item[k]).__name__ for k in wrong)}")
        text = "\n\n".join(item[k] for k in self.text_fields)
        fields = {k: v for k, v in item.items() if k not in RESERVED_KEYS}
        return Record(id=str(record_id), text=text, fields=fields,
                      timestamp=parse_timestamp(item.get("timestamp", item.get("date"))))

    def records_from_profile(self, items: Iterable[Mapping[str, Any]]) -> list[Record]:
        """:meth:`record_from_profile` over a whole LaMP profile."""
        return [self.record_from_profile(item) for item in items]

    def example_text(self, record: Record) -> str:
        """The record written as an example (``example_template`` over its fields), uncut."""
        values = dict(record.fields)
        values.setdefault("text", record.text)
        return self.example_template.format_map(_Blank(values)).strip()

    def query_of(self, record: Record) -> str:
        """A history record used as a query (labelling asks about records with known answers)."""
        return self.example_text(record)

    def answer_of(self, record: Record) -> str | None:
        """The record's gold answer as text; ``None`` for tasks whose items carry none, and for
        a record without the answer field (context only: it can be retrieved and shown as an
        example without an ``Answer:`` line, but is never a labelling query)."""
        if self.answer_field is None:
            return None
        value = record.fields.get(self.answer_field)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if self.foreign_answer(value) is not None:
            return None  # kept as context (labels="context"): not an answer of this task
        if self.kind == "regression":
            number = _to_float(value)
            if number is not None:
                return _format_number(number)
        return str(value).strip()

    def foreign_answer(self, value: Any) -> str | None:
        """``value`` as text when it is not an answer this task allows (a classification label
        outside :attr:`labels`, a rating that is no number of the scale); ``None`` when it is
        allowed, empty, or the task is a generation task."""
        if self.kind == "generation" or value is None:
            return None
        text = str(value).strip()
        if not text:
            return None
        if self.kind == "regression":
            number = _to_float(value)
            lo, hi = self._rating_range()
            return None if number is not None and lo <= number <= hi else text
        return None if text in self.labels else text

    def check_answer(self, answer: str) -> None:
        """Refuse an answer this task does not allow (e.g. feedback outside the labels).

        Raises:
            InvalidInputError: naming the answer and the labels.
        """
        if self.foreign_answer(answer) is not None or not str(answer).strip():
            raise InvalidInputError(
                f"{str(answer)[:80]!r} is not an answer of task {self.name!r}; it allows "
                f"{', '.join(self.labels) if self.labels else 'any non-empty text'}")

    def check_records(self, records: Sequence[Record], labels: str = "refuse") -> None:
        """Refuse records whose answer is not one of this task's (``labels="refuse"``), or let
        them in as context (``labels="context"``: retrieved and shown as examples without an
        answer, never a labelling query or a fitted label).

        Raises:
            InvalidInputError: ``labels`` is neither policy, or (refuse) the records with a
                foreign answer, listed (nothing is written by the callers then).
        """
        if labels not in LABEL_POLICIES:
            raise InvalidInputError(f"labels must be one of {list(LABEL_POLICIES)}, got {labels!r}")
        bad = self.foreign_records(records) if labels == "refuse" else []
        if bad:
            shown = ", ".join(f"{rid!r}: {value[:40]!r}" for rid, value in bad[:10])
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            raise InvalidInputError(
                f"{len(bad)} record(s) hold a {self.answer_field!r} outside task "
                f"{self.name!r}'s labels ({shown}{more}); nothing was written. Fix them, or keep "
                "them as context (retrievable examples without an answer, never fitted on) "
                "with labels='context' (CLI: --labels context)")

    def foreign_records(self, records: Iterable[Record]) -> list[tuple[str, str]]:
        """``(id, answer)`` of each record whose answer field holds an answer this task does
        not allow."""
        if self.answer_field is None:
            return []
        out = []
        for record in records:
            bad = self.foreign_answer(record.fields.get(self.answer_field))
            if bad is not None:
                out.append((record.id, bad))
        return out

    def query_text(self, lamp_input: str) -> str:
        """The query text of a LaMP question input: what follows the instruction.

        The first of ``query_markers`` found (case-insensitive) ends the instruction; if none is
        found the whole input is the query.
        """
        lowered = lamp_input.lower()
        for marker in self.query_markers:
            at = lowered.find(marker.lower())
            if at >= 0:
                rest = lamp_input[at + len(marker):].strip()
                if rest:
                    return rest
        return lamp_input.strip()

    # ------------------------------------------------------------------------------ prompts
    def render_prompt(self, query: str, examples: Sequence[Record] = ()) -> str:
        """The full prompt (see the module docstring for its layout).

        Args:
            query: The query text (for a LaMP question: ``task.query_text(question.input)``).
            examples: History records shown as examples, in this order.

        Raises:
            InvalidInputError: The query is empty.
        """
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError(f"{self.name}: the query text is empty")
        lines = [self.instruction.strip()]
        if self.kind != "generation":
            lines.append(OPTIONS_PREFIX + OPTIONS_SEPARATOR.join(self.labels))
        if examples:
            lines += ["", EXAMPLES_HEADER]
            for index, record in enumerate(examples, 1):
                lines.append(EXAMPLE_HEADER.format(index=index))
                lines.append(_clean_block(self.example_text(record), MAX_EXAMPLE_CHARS))
                answer = self.answer_of(record)
                if answer is not None:
                    lines.append(f"{ANSWER_PREFIX} {_clean_line(answer, MAX_ANSWER_CHARS)}")
        lines += ["", QUERY_HEADER, _clean_block(query, MAX_QUERY_CHARS), ANSWER_PREFIX]
        return "\n".join(lines)

    def messages(self, query: str, examples: Sequence[Record] = ()) -> list[dict[str, str]]:
        """The prompt as chat messages: one user message."""
        return [{"role": "user", "content": self.render_prompt(query, examples)}]

    # ---------------------------------------------------------------------- judging answers
    def parse(self, output: str | None) -> str | float | None:
        """Read an LLM output as an answer of this task.

        Returns:
            classification: the matched label, or ``None``; regression: the rating as a float
            within the label range, or ``None``; generation: the output stripped.
        """
        if output is None:
            return None
        text = str(output).strip()
        if self.kind == "generation":
            return text
        if self.kind == "regression":
            return _parse_rating(text, self._rating_range())
        return _match_label(text, self.labels)

    def is_correct(self, pred: str | float | None, gold: str | float) -> bool:
        """Whether a prediction (raw output or parsed) equals the gold answer.

        Classification / regression compare parsed answers (an unparseable prediction is wrong);
        generation compares texts after lower-casing, collapsing spaces and dropping a final
        period (use :meth:`rouge` for graded quality).
        """
        if pred is None:
            return False
        if self.kind == "generation":
            return _normalise_text(str(pred)) == _normalise_text(str(gold))
        p, g = self._parsed(pred), self._parsed(gold)
        return p is not None and p == g

    def rouge(self, pred: str | None, gold: str) -> float:
        """(ROUGE-1 F1 + ROUGE-L F1) / 2 of one prediction against its gold (0 for ``None``)."""
        if pred is None:
            return 0.0
        r1, rl = _rouge_pair(str(pred), str(gold))
        return (r1 + rl) / 2.0

    def evaluate(self, preds: Sequence[str | float | None],
                 golds: Sequence[str | float]) -> dict[str, float]:
        """LaMP metrics over a set of questions.

        Args:
            preds: Raw outputs or parsed answers, one per question (``None``: no answer).
            golds: Gold answers, same order.

        Returns:
            classification: ``accuracy``, ``f1`` (macro over all labels); regression: ``mae``,
            ``rmse`` (unparseable -> worst-case rating); generation: ``rouge-1``, ``rouge-L``.
            Always ``n``; classification / regression also ``unparseable`` (count).

        Raises:
            InvalidInputError: Lengths differ, nothing to score, or a gold answer is not valid.
        """
        if len(preds) != len(golds):
            raise InvalidInputError(f"{self.name}: {len(preds)} predictions for "
                                    f"{len(golds)} gold answers")
        if not golds:
            raise InvalidInputError(f"{self.name}: nothing to evaluate (no gold answers)")
        if self.kind == "generation":
            pairs = [_rouge_pair("" if p is None else str(p), str(g)) for p, g in zip(preds, golds)]
            return {"rouge-1": sum(p[0] for p in pairs) / len(pairs),
                    "rouge-L": sum(p[1] for p in pairs) / len(pairs), "n": float(len(pairs))}
        parsed = [self._parsed(p) for p in preds]
        gold_values = []
        for g in golds:
            value = self._parsed(g)
            if value is None:
                raise InvalidInputError(f"{self.name}: gold answer {g!r} is not one of "
                                        f"{list(self.labels)}")
            gold_values.append(value)
        unparseable = float(sum(p is None for p in parsed))
        if self.kind == "regression":
            lo, hi = self._rating_range()
            values = [p if p is not None else worst_rating(float(g), lo, hi)
                      for p, g in zip(parsed, gold_values)]
            errors = [abs(float(p) - float(g)) for p, g in zip(values, gold_values)]
            return {"mae": sum(errors) / len(errors),
                    "rmse": math.sqrt(sum(e * e for e in errors) / len(errors)),
                    "n": float(len(errors)), "unparseable": unparseable}
        return {"accuracy": sum(p == g for p, g in zip(parsed, gold_values)) / len(gold_values),
                "f1": macro_f1(parsed, gold_values, self.labels),
                "n": float(len(gold_values)), "unparseable": unparseable}

    # ------------------------------------------------------------------------------ helpers
    def _parsed(self, value: str | float | None) -> str | float | None:
        if value is None:
            return None
        if self.kind == "regression":
            if isinstance(value, (int, float)):
                lo, hi = self._rating_range()
                return float(value) if lo <= float(value) <= hi else None
            return self.parse(str(value))
        if isinstance(value, str) and value in self.labels:
            return value
        return self.parse(str(value))

    def _rating_range(self) -> tuple[float, float]:
        values = [float(x) for x in self.labels]
        return min(values), max(values)


LABEL_POLICIES = ("refuse", "context")
"""What to do with records whose answer is outside a task's labels (:meth:`Task.check_records`)."""


def worst_rating(gold: float, lo: float = 1.0, hi: float = 5.0) -> float:
    """LaMP's stand-in for an unparseable rating: the end of the scale farthest from gold."""
    return lo if abs(lo - gold) > abs(hi - gold) else hi


def macro_f1(preds: Sequence[str | float | None], golds: Sequence[str | float],
             labels: Sequence[str]) -> float:
    """Macro-F1 over ``labels`` (all of them, as LaMP computes it); ``None`` predictions hit no
    label, so they only cost recall."""
    scores = []
    for label in labels:
        tp = sum(p == label and g == label for p, g in zip(preds, golds))
        fp = sum(p == label and g != label for p, g in zip(preds, golds))
        fn = sum(p != label and g == label for p, g in zip(preds, golds))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def parse_timestamp(value: Any) -> float | None:
    """A LaMP ``date`` (ISO 8601 text or epoch seconds) as epoch seconds; ``None`` if unreadable.

    A date without a time zone is read as UTC.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return _to_float(value)
    text = str(value).strip()
    if not text:
        return None
    moment = parse_iso_timestamp(text)
    return moment if moment is not None else _to_float(text)


# ---------------------------------------------------------------------------------- internals
class _Blank(dict):
    """Template values where a missing field renders as an empty string."""

    def __missing__(self, key: str) -> str:
        return ""


def _task_problems(task: Task) -> list[str]:
    problems = []
    if not isinstance(task.name, str) or not task.name.strip():
        problems.append("'name' must be a non-empty string")
    if task.kind not in KINDS:
        problems.append(f"'kind' must be one of {list(KINDS)}, got {task.kind!r}")
    if not isinstance(task.instruction, str) or not task.instruction.strip():
        problems.append("'instruction' must be a non-empty string")
    labels = task.labels
    if not isinstance(labels, tuple) or not all(isinstance(x, str) and x.strip() for x in labels):
        problems.append("'labels' must be a list of non-empty strings")
    else:
        if len(set(labels)) != len(labels):
            problems.append("'labels' has duplicates")
        if any(OPTIONS_SEPARATOR.strip() in x or "\n" in x or x != x.strip() for x in labels):
            problems.append("labels may not contain commas, line breaks or outer spaces")
        if task.kind in ("classification", "regression") and len(labels) < 2:
            problems.append(f"a {task.kind} task needs at least 2 'labels'")
        if task.kind == "regression" and any(_to_float(x) is None for x in labels):
            problems.append("a regression task's labels must be numbers, e.g. ['1', ..., '5']")
        if task.kind == "generation" and labels:
            problems.append("a generation task takes no 'labels'")
    if not task.text_fields or not all(isinstance(f, str) and f for f in task.text_fields):
        problems.append("'text_fields' must be a non-empty list of field names")
    if task.answer_field is not None and (not isinstance(task.answer_field, str)
                                          or not task.answer_field):
        problems.append("'answer_field' must be a field name or null")
    if "text" in task.text_fields and len(task.text_fields) > 1:
        problems.append("'text' can only be the sole text field (it is the record's text)")
    reserved = sorted(set(task.text_fields) & (RESERVED_KEYS - {"text"}))
    if reserved or task.answer_field in RESERVED_KEYS:
        problems.append(f"field names {sorted(RESERVED_KEYS - {'text'})} are reserved")
    if task.answer_field is not None and task.answer_field in task.text_fields:
        problems.append(f"'answer_field' {task.answer_field!r} cannot also be a text field")
    try:
        names = {f for _, f, _, _ in _FORMATTER.parse(task.example_template) if f is not None}
    except (ValueError, TypeError) as exc:
        problems.append(f"'example_template' is not a valid format string: {exc}")
    else:
        allowed = set(task.text_fields) | {"text"}
        bad = sorted(n for n in names if not n or n not in allowed)
        if bad or not names:
            problems.append(f"'example_template' may use only the text fields "
                            f"{sorted(allowed)} as {{field}} placeholders (and at least one); "
                            f"it uses {sorted(names)}")
    if not all(isinstance(m, str) and m for m in task.query_markers):
        problems.append("'query_markers' must be non-empty strings")
    return problems


def _clean_block(text: str, limit: int) -> str:
    text = re.sub(r"(?m)^#{3,}", "##", text.strip())
    text = re.sub(r"\n{3,}", "\n\n", text)
    return _truncate(text, limit)


def _clean_line(text: str, limit: int) -> str:
    return _truncate(" ".join(text.split()), limit)


def _truncate(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters, at a word boundary when one is near."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    space = cut.rfind(" ")
    if space > limit * 0.6:
        cut = cut[:space]
    return cut.rstrip() + "..."


def _match_label(text: str, labels: Sequence[str]) -> str | None:
    """The label ``text`` names: itself, a case-insensitive equal, else the longest label found
    in it as a whole word (the earliest of equally long ones)."""
    if text in labels:
        return text
    pattern, first, smallest = _label_pattern(tuple(labels))
    lowered = text.lower()
    if lowered in first:
        return first[lowered]
    found = [(-len(m.group(1)), m.start(), smallest[m.group(1)])
             for m in pattern.finditer(lowered)]
    return min(found)[2] if found else None


@functools.lru_cache(maxsize=64)
def _label_pattern(labels: tuple[str, ...]
                   ) -> tuple[re.Pattern[str], dict[str, str], dict[str, str]]:
    """One regex for a label set (compiled once, however many labels: Python's own cache holds
    512 patterns), finding at every position the longest label that starts there as a whole
    word; and for each lowercased label, the first label (in order) and the smallest one of
    those that lower alike."""
    first: dict[str, str] = {}
    smallest: dict[str, str] = {}
    for label in labels:
        lower = label.lower()
        first.setdefault(lower, label)
        smallest[lower] = min(smallest.get(lower, label), label)
    alternatives = "|".join(re.escape(lower) for lower in sorted(first, key=len, reverse=True))
    return re.compile(r"(?=(?<![\w-])(" + alternatives + r")(?![\w-]))"), first, smallest


def _parse_rating(text: str, bounds: tuple[float, float]) -> float | None:
    m = re.search(r"[-+]?\d+(?:\.\d+)?", text)
    if not m:
        return None
    value = float(m.group())
    return value if bounds[0] <= value <= bounds[1] else None


def _to_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _normalise_text(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


_SCORER = None


def _rouge_pair(pred: str, gold: str) -> tuple[float, float]:
    """ROUGE-1 and ROUGE-L F1 (rouge-score, Porter stemming).

    Raises:
        ImportError: rouge-score is not installed (it comes with ``hydrahead[generation]``).
    """
    global _SCORER
    if _SCORER is None:
        try:
            from rouge_score import rouge_scorer
        except ImportError as exc:
            raise ImportError(
                "generation tasks score answers with ROUGE, from the rouge-score package, which "
                "is not installed. Install it with: pip install -c constraints.txt "
                "'hydrahead[generation]'") from exc
        _SCORER = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    scores = _SCORER.score(gold, pred)
    return scores["rouge1"].fmeasure, scores["rougeL"].fmeasure
