"""The LaMP benchmark's tasks (Salemi et al., 2023) and its file format.

Field names of LaMP profile items, per task:

========  =============================  ==============================  ==========
task      what                           item fields (text -> answer)    kind
========  =============================  ==============================  ==========
LaMP-1    citation identification        title, abstract (no answer)     [1] / [2]
LaMP-2    movie tagging (alias LaMP-2M)  description -> tag              15 tags
LaMP-2N   news categorisation            text -> category (title kept)   15 topics
LaMP-3    product rating                 text -> score                   1 .. 5
LaMP-4    news headline generation       text -> title                   generation
LaMP-5    scholarly title generation     abstract -> title               generation
LaMP-6    email subject generation       text -> title                   generation
LaMP-7    tweet paraphrasing             text (no answer)                generation
========  =============================  ==============================  ==========

A LaMP split is two files: ``*_questions.json`` (a list of ``{id, input, profile, user_id?}``)
and ``*_outputs.json`` (``{task, golds: [{id, output}]}``); :func:`load_lamp_questions` reads them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .base import Task

MOVIE_TAGS = ("sci-fi", "based on a book", "comedy", "action", "twist ending", "dystopia",
              "dark comedy", "classic", "psychology", "fantasy", "romance", "thought-provoking",
              "social commentary", "violence", "true story")
"""LaMP-2's 15 movie tags."""

NEWS_CATEGORIES = ("travels", "education", "parents", "style & beauty", "entertainment",
                   "food & drink", "science & technology", "business", "sports", "healthy living",
                   "women", "politics", "crime", "culture & arts", "religion")
"""LaMP-2N's 15 news categories."""

RATINGS = ("1", "2", "3", "4", "5")


@dataclass(frozen=True)
class CitationTask(Task):
    """LaMP-1: the query keeps the paper title and both candidate references."""

    _PATTERN = re.compile(
        r'title\s+"(?P<title>.*?)"\s*,.*?\[1\]\s*:\s*"(?P<ref1>.*?)"\s*\[2\]\s*:\s*"(?P<ref2>.*)"',
        re.DOTALL)

    def query_text(self, lamp_input: str) -> str:
        """``Paper: "title"`` and the two references, one per line; the whole input if the
        question is not in LaMP-1's wording."""
        m = self._PATTERN.search(lamp_input)
        if not m:
            return lamp_input.strip()
        return (f'Paper: "{m["title"].strip()}"\n[1]: "{m["ref1"].strip()}"\n'
                f'[2]: "{m["ref2"].strip()}"')


LAMP_TASKS: dict[str, Task] = {
    "LaMP-1": CitationTask(
        name="LaMP-1", kind="classification", labels=("[1]", "[2]"),
        instruction=("The user wrote the papers in the examples. Which reference is related to "
                     "the paper in the query? Answer with [1] or [2] and nothing else."),
        text_fields=("title", "abstract"), answer_field=None,
        example_template="{title}\n{abstract}",
        description="LaMP-1 personalised citation identification"),
    "LaMP-2": Task(
        name="LaMP-2", kind="classification", labels=MOVIE_TAGS,
        instruction="Which tag does this movie relate to? Answer with the tag and nothing else.",
        text_fields=("description",), answer_field="tag", example_template="{description}",
        query_markers=("description:",), description="LaMP-2 personalised movie tagging"),
    "LaMP-2N": Task(
        name="LaMP-2N", kind="classification", labels=NEWS_CATEGORIES,
        instruction=("Which category does this article relate to? Answer with the category and "
                     "nothing else."),
        text_fields=("text",), answer_field="category", example_template="{text}",
        query_markers=("article:",), description="LaMP-2N personalised news categorisation"),
    "LaMP-3": Task(
        name="LaMP-3", kind="regression", labels=RATINGS,
        instruction=("What is the score of this review on a scale of 1 to 5? Answer with one "
                     "number and nothing else."),
        text_fields=("text",), answer_field="score", example_template="{text}",
        query_markers=("review:",), description="LaMP-3 personalised product rating"),
    "LaMP-4": Task(
        name="LaMP-4", kind="generation",
        instruction="Write a headline for this news article, in this user's style.",
        text_fields=("text",), answer_field="title", example_template="{text}",
        query_markers=("generate a headline for the following article:",),
        description="LaMP-4 personalised news headline generation"),
    "LaMP-5": Task(
        name="LaMP-5", kind="generation",
        instruction="Write a title for this paper abstract, in this user's style.",
        text_fields=("abstract",), answer_field="title", example_template="{abstract}",
        query_markers=("generate a title for the following abstract of a paper:",),
        description="LaMP-5 personalised scholarly title generation"),
    "LaMP-6": Task(
        name="LaMP-6", kind="generation",
        instruction="Write a subject line for this email, in this user's style.",
        text_fields=("text",), answer_field="title", example_template="{text}",
        query_markers=("generate a subject for the following email:",),
        description="LaMP-6 personalised email subject generation"),
    "LaMP-7": Task(
        name="LaMP-7", kind="generation",
        instruction=("Paraphrase the tweet in the query the way this user writes tweets (the "
                     "examples are the user's tweets)."),
        text_fields=("text",), answer_field=None, example_template="{text}",
        query_markers=("paraphrase the following tweet without any explanation before or after "
                       "it:",),
        description="LaMP-7 personalised tweet paraphrasing"),
}

LAMP_ALIASES = {"LaMP-2M": "LaMP-2"}


@dataclass(frozen=True)
class LampQuestion:
    """One LaMP question.

    Attributes:
        id: Question id (a string).
        input: The question text as LaMP writes it (instruction + query).
        user_id: The user it belongs to; LaMP's own files have one user per question and no
            ``user_id``, so it defaults to the question id.
        profile: The user's history items (dicts), as in the file.
        gold: The gold output, when an outputs file was given.
    """

    id: str
    input: str
    user_id: str
    profile: list[dict[str, Any]] = field(default_factory=list)
    gold: str | None = None


def load_lamp_questions(questions_path: str | Path,
                        outputs_path: str | Path | None = None) -> list[LampQuestion]:
    """Read a LaMP questions file and, optionally, its outputs (gold answers) file.

    Args:
        questions_path: ``*_questions.json``: a list of ``{id, input, profile, user_id?}``.
        outputs_path: ``*_outputs.json``: ``{task, golds: [{id, output}]}`` (a bare list of
            golds is accepted too). Every question must have a gold.

    Returns:
        The questions in file order.

    Raises:
        InvalidInputError: A file is missing, is not JSON, or does not have LaMP's layout.
    """
    raw = _read_json(questions_path)
    if isinstance(raw, dict) and isinstance(raw.get("questions"), list):
        raw = raw["questions"]
    if not isinstance(raw, list):
        raise InvalidInputError(f"{questions_path}: expected a JSON list of questions "
                                f"({{id, input, profile}}), got {type(raw).__name__}")
    golds = _read_golds(outputs_path) if outputs_path is not None else None
    questions = []
    for n, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidInputError(f"{questions_path}: question #{n} is not an object")
        missing = [k for k in ("id", "input", "profile") if k not in item]
        if missing:
            raise InvalidInputError(f"{questions_path}: question #{n} lacks {missing}")
        profile = item["profile"]
        if not isinstance(profile, list) or not all(isinstance(p, dict) for p in profile):
            raise InvalidInputError(f"{questions_path}: question {item['id']!r} has a profile "
                                    f"that is not a list of objects")
        qid = str(item["id"])
        gold = None
        if golds is not None:
            if qid not in golds:
                raise InvalidInputError(f"{outputs_path}: no gold output for question {qid!r}")
            gold = golds[qid]
        questions.append(LampQuestion(id=qid, input=str(item["input"]),
                                      user_id=str(item.get("user_id") or qid),
                                      profile=profile, gold=gold))
    return questions


def _read_golds(path: str | Path) -> dict[str, str]:
    raw = _read_json(path)
    golds = raw.get("golds") if isinstance(raw, dict) else raw
    if not isinstance(golds, list):
        raise InvalidInputError(f"{path}: expected {{task, golds: [{{id, output}}]}}")
    out = {}
    for n, g in enumerate(golds):
        if not isinstance(g, dict) or "id" not in g or "output" not in g:
            raise InvalidInputError(f"{path}: gold #{n} is not an {{id, output}} object")
        out[str(g["id"])] = str(g["output"])
    return out


def _read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InvalidInputError(f"LaMP file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path} is not valid JSON (in UTF-8): {exc}") from None
    except RecursionError:
        raise InvalidInputError(f"{path}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise InvalidInputError(f"{path} is not readable JSON: {exc}") from None
    except IsADirectoryError:
        raise InvalidInputError(f"{path} is a directory, not a LaMP file") from None
