"""Tasks: LaMP 1-7, the shipped git-lamp specs and user specs; prompts, parsing, LaMP metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hydrahead.runtime.errors import InvalidInputError, TaskError
from hydrahead.runtime.records import Record
from hydrahead.runtime.tasks import LampQuestion, Task, get_task, list_tasks, load_lamp_questions
from hydrahead.runtime.tasks.base import MAX_EXAMPLE_CHARS, MAX_QUERY_CHARS, worst_rating

COLOR_SPEC = {
    "name": "colors", "kind": "classification",
    "instruction": "Which colour does this note mention most? Answer with the colour only.",
    "labels": ["red", "green", "blue"], "text_fields": ["body"],
    "example_template": "Note: {body}", "answer_field": "color", "query_marker": "note:",
}

# One LaMP-style question per task: (input, profile items, query text expected, answer field).
QUESTIONS = {
    "LaMP-1": (
        'For an author who has written the paper with the title "Sparse retrieval for users", '
        'which reference is related? Just answer with [1] or [2] without explanation. '
        '[1]: "Dense passage retrieval" [2]: "Protein folding in yeast"',
        [{"id": "p1", "title": "Retrieval of user histories", "abstract": "We retrieve items."},
         {"id": "p2", "title": "Ranking for personal search", "abstract": "We rank items."}],
        'Paper: "Sparse retrieval for users"\n[1]: "Dense passage retrieval"\n'
        '[2]: "Protein folding in yeast"', None),
    "LaMP-2": (
        "Which tag does this movie relate to among the following tags? Just answer with the tag "
        "name without further explanation. tags: [sci-fi, based on a book, comedy, action, "
        "twist ending, dystopia, dark comedy, classic, psychology, fantasy, romance, "
        "thought-provoking, social commentary, violence, true story] description: A robot "
        "travels to a distant planet.",
        [{"id": "m1", "description": "Aliens invade a space station.", "tag": "sci-fi"},
         {"id": "m2", "description": "Two friends fall in love in Paris.", "tag": "romance"}],
        "A robot travels to a distant planet.", "tag"),
    "LaMP-2N": (
        "Which category does this article relate to among the following categories? Just "
        "answer with the category name without further explanation. categories: [travels, "
        "education] article: The senate passed the bill on Tuesday.",
        [{"id": "n1", "text": "Voters head to the polls.", "title": "Election day",
          "category": "politics"},
         {"id": "n2", "text": "The team won the final.", "title": "Champions",
          "category": "sports"}],
        "The senate passed the bill on Tuesday.", "category"),
    "LaMP-3": (
        "What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, "
        "3, 4, or 5 without further explanation. review: Great kettle, works perfectly.",
        [{"id": "r1", "text": "Broke after a week.", "score": "1"},
         {"id": "r2", "text": "Lovely and quiet.", "score": 5}],
        "Great kettle, works perfectly.", "score"),
    "LaMP-4": (
        "Generate a headline for the following article: The city opened a new bridge today.",
        [{"id": "h1", "text": "The mayor cut the ribbon at the park.", "title": "Park opens"}],
        "The city opened a new bridge today.", "title"),
    "LaMP-5": (
        "Generate a title for the following abstract of a paper: We study retrieval for users.",
        [{"id": "s1", "title": "Personal search", "abstract": "We rank documents per user."}],
        "We study retrieval for users.", "title"),
    "LaMP-6": (
        "Generate a subject for the following email: Please review the attached budget.",
        [{"id": "e1", "text": "The meeting moved to Friday.", "title": "Meeting moved"}],
        "Please review the attached budget.", "title"),
    "LaMP-7": (
        "Paraphrase the following tweet without any explanation before or after it: Loving the "
        "sunny weather today",
        [{"id": "t1", "text": "coffee first, questions later"}],
        "Loving the sunny weather today", None),
    "GIT_area": (
        "Which area tag does this commit relate to? Just answer with the tag and nothing else. "
        "tags: [tests, doc, gitweb] commit: Teach gitweb to show the blob mime type.",
        [{"id": "g1", "text": "Add a test for the new option.", "tag": "tests",
          "date": "2015-07-22T14:05:32-07:00"},
         {"id": "g2", "text": "Fix a typo in the manual page.", "tag": "doc",
          "date": "2016-01-01T00:00:00+00:00"}],
        "Teach gitweb to show the blob mime type.", "tag"),
    "GIT_subject": (
        "Generate a subject line for the following commit message: Teach gitweb to show the "
        "blob mime type.",
        [{"id": "g1", "text": "Add a test for the new option.", "title": "t7001: test --foo",
          "date": "2015-07-22T14:05:32-07:00"}],
        "Teach gitweb to show the blob mime type.", "title"),
}


@pytest.fixture()
def color_task(tmp_path: Path) -> Task:
    path = tmp_path / "colors.json"
    path.write_text(json.dumps(COLOR_SPEC))
    return get_task(str(path))


def test_list_tasks_names_every_lamp_task_and_the_shipped_specs() -> None:
    assert list_tasks() == ["LaMP-1", "LaMP-2", "LaMP-2N", "LaMP-3", "LaMP-4", "LaMP-5",
                            "LaMP-6", "LaMP-7", "GIT_area", "GIT_subject"]
    assert get_task("lamp-2m") is get_task("LaMP-2")
    assert get_task("git_area").labels[:3] == ("tests", "doc", "git-gui")
    assert len(get_task("LaMP-2").labels) == len(get_task("LaMP-2N").labels) == 15
    assert get_task("LaMP-3").labels == ("1", "2", "3", "4", "5")
    assert get_task("LaMP-1").labels == ("[1]", "[2]")
    kinds = {name: get_task(name).kind for name in list_tasks()}
    assert kinds["LaMP-3"] == "regression" and kinds["GIT_subject"] == "generation"


@pytest.mark.parametrize("name", sorted(QUESTIONS))
def test_lamp_question_renders_into_a_prompt_with_its_examples_and_query(name: str) -> None:
    task = get_task(name)
    lamp_input, profile, expected_query, answer_field = QUESTIONS[name]
    query = task.query_text(lamp_input)
    assert query == expected_query
    records = task.records_from_profile(profile)
    prompt = task.render_prompt(query, records)
    assert prompt.startswith(task.instruction + "\n")
    assert ("\nOptions: " in prompt) == (task.kind != "generation")
    assert "Examples from this user's history:" in prompt
    for i, (item, record) in enumerate(zip(profile, records), 1):
        assert f"### Example {i}\n" in prompt
        assert record.id == item["id"]
        assert task.example_text(record) in prompt
        if answer_field is None:
            assert task.answer_of(record) is None
        else:
            assert f"Answer: {item[answer_field]}\n" in prompt
            assert task.answer_of(record) == str(item[answer_field])
    assert prompt.endswith(f"### Query\n{query}\nAnswer:")
    assert task.messages(query, records) == [{"role": "user", "content": prompt}]


def test_user_spec_renders_a_prompt(color_task: Task) -> None:
    records = color_task.records_from_profile([{"id": "1", "body": "grass and leaves",
                                                "color": "green"}])
    assert records[0].text == "grass and leaves"
    assert records[0].fields == {"body": "grass and leaves", "color": "green"}
    prompt = color_task.render_prompt(color_task.query_text("Note: the sky at noon"), records)
    assert prompt == (
        "Which colour does this note mention most? Answer with the colour only.\n"
        "Options: red, green, blue\n\n"
        "Examples from this user's history:\n"
        "### Example 1\nNote: grass and leaves\nAnswer: green\n\n"
        "### Query\nthe sky at noon\nAnswer:")


def test_prompt_without_examples_omits_the_examples_section() -> None:
    task = get_task("GIT_area")
    prompt = task.render_prompt("Fix the gitweb feed.")
    assert "Examples" not in prompt and "### Example" not in prompt
    assert prompt.endswith("\n\n### Query\nFix the gitweb feed.\nAnswer:")


def test_prompt_cuts_long_texts_and_neutralises_section_headers() -> None:
    task = get_task("GIT_subject")
    record = task.record_from_profile({"id": "x", "text": "word " * 1000 + "\n### Query\nhi",
                                       "title": "t: a"})
    prompt = task.render_prompt("long " * 2000, [record])
    assert len(prompt) < MAX_EXAMPLE_CHARS + MAX_QUERY_CHARS + 400
    assert prompt.count("### Query") == 1
    with pytest.raises(InvalidInputError):
        task.render_prompt("   ", [record])


def test_record_from_profile_keeps_fields_and_reads_the_date() -> None:
    task = get_task("GIT_area")
    record = task.record_from_profile({"id": "a1", "text": "body", "tag": "doc",
                                       "date": "2015-07-22T14:05:32-07:00"})
    assert record == Record(id="a1", text="body",
                            fields={"tag": "doc", "date": "2015-07-22T14:05:32-07:00"},
                            timestamp=1437599132.0)
    assert task.query_of(record) == "body"
    # A record without its answer is context only: it is imported, has no answer, and is
    # shown in a prompt without an Answer: line.
    context = task.record_from_profile({"id": "a2", "text": "no tag here"})
    assert task.answer_of(context) is None and task.answer_of(Record(id="a3", text="body")) is None
    assert "no tag here\n\n### Query" in task.render_prompt("q", [context])
    with pytest.raises(InvalidInputError, match="text"):
        task.record_from_profile({"id": "a4", "tag": "doc"})
    assert get_task("LaMP-3").answer_of(Record(id="r", text="t", fields={"score": 4.0})) == "4"


@pytest.mark.parametrize("name, lamp_input, expected", [
    ("LaMP-4", "generate a HEADLINE for the following article:  Rain expected.", "Rain expected."),
    ("LaMP-2", "Which tag? tags: [comedy] description: A dog and a cat.", "A dog and a cat."),
    ("GIT_area", "tags: [doc] commit: Spell commit: correctly", "Spell commit: correctly"),
    ("GIT_subject", "A commit body with no instruction.", "A commit body with no instruction."),
    ("LaMP-1", "Which of [1] or [2]?", "Which of [1] or [2]?"),
])
def test_query_text_strips_the_instruction_or_keeps_the_whole_input(
        name: str, lamp_input: str, expected: str) -> None:
    assert get_task(name).query_text(lamp_input) == expected


def test_classification_parsing_follows_lamp() -> None:
    task = get_task("LaMP-2")
    assert task.parse("comedy") == "comedy"
    assert task.parse("  Dark Comedy ") == "dark comedy"
    assert task.parse("I would say it is a dark comedy.") == "dark comedy"  # longest label wins
    assert task.parse("a comedy, maybe action") == "comedy"  # first of equally long labels
    assert task.parse("no idea") is None and task.parse(None) is None
    assert get_task("GIT_area").parse("contests") is None  # whole words only
    assert get_task("LaMP-1").parse("The answer is [2].") == "[2]"
    assert get_task("LaMP-1").parse("2") is None


def test_rating_parsing_and_lamp_worst_case() -> None:
    task = get_task("LaMP-3")
    assert task.parse("4") == 4.0
    assert task.parse("I'd give it 3 stars") == 3.0
    assert task.parse("10") is None and task.parse("great") is None
    assert [worst_rating(g) for g in (1.0, 2.0, 3.0, 4.0, 5.0)] == [5.0, 5.0, 5.0, 1.0, 1.0]


def test_is_correct() -> None:
    area, rating, subject = get_task("GIT_area"), get_task("LaMP-3"), get_task("GIT_subject")
    assert area.is_correct("Doc", "doc") and area.is_correct(area.parse("doc."), "doc")
    assert not area.is_correct(None, "doc") and not area.is_correct("tests", "doc")
    assert rating.is_correct(4.0, "4") and rating.is_correct("4 stars", "4")
    assert not rating.is_correct("five", "5")
    assert subject.is_correct("gitweb: Fix feed.", "gitweb: fix  feed")
    assert not subject.is_correct("gitweb: fix", "gitweb: fix feed")


def test_classification_metrics_accuracy_and_macro_f1_over_all_labels(color_task: Task) -> None:
    metrics = color_task.evaluate(["red", "green", "Green", "purple"],
                                  ["red", "red", "green", "blue"])
    # red: P 1, R 1/2 -> 2/3; green: P 1/2, R 1 -> 2/3; blue: 0.
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["f1"] == pytest.approx(4 / 9)
    assert metrics["unparseable"] == 1.0
    area = get_task("GIT_area")  # 15 labels, the 13 unseen ones count as F1 0
    assert area.evaluate(["tests", "gitweb"], ["tests", "gitweb"])["f1"] == pytest.approx(2 / 15)
    with pytest.raises(InvalidInputError, match="not one of"):
        color_task.evaluate(["red"], ["pink"])
    with pytest.raises(InvalidInputError):
        color_task.evaluate(["red"], ["red", "blue"])


def test_rating_metrics_map_unparseable_to_the_worst_rating() -> None:
    metrics = get_task("LaMP-3").evaluate(["5", "3 stars", "no idea", "terrible"],
                                          ["4", "3", "2", "4"])
    # errors 1, 0, |5 - 2| = 3, |1 - 4| = 3
    assert metrics["mae"] == pytest.approx(7 / 4)
    assert metrics["rmse"] == pytest.approx(math.sqrt(19 / 4))
    assert metrics["unparseable"] == 2.0


def test_generation_metrics_are_rouge_with_stemming() -> None:
    task = get_task("GIT_subject")
    # tokens: add a new test | add new test(s): P 3/4, R 1 -> F 6/7 for ROUGE-1 and ROUGE-L
    assert task.rouge("add a new test", "add new tests") == pytest.approx(6 / 7)
    assert task.rouge("completely unrelated", "add new tests") == 0.0
    assert task.rouge(None, "add new tests") == 0.0
    metrics = task.evaluate(["add a new test", "fix the bug"], ["add new tests", "fix bug"])
    # second pair: fix the bug vs fix bug: P 2/3, R 1 -> 4/5 (LCS 2 as well)
    assert metrics["rouge-1"] == pytest.approx((6 / 7 + 4 / 5) / 2)
    assert metrics["rouge-L"] == pytest.approx((6 / 7 + 4 / 5) / 2)


def _write_lamp(tmp_path: Path) -> tuple[Path, Path]:
    questions = [
        {"id": "q1", "input": "Generate a subject line for the following commit message: body1",
         "user_id": "u1", "profile": [{"id": "p1", "text": "t", "title": "x: y",
                                       "date": "2020-01-01T00:00:00+00:00"}]},
        {"id": 2, "input": "Generate a subject line for the following commit message: body2",
         "profile": []},
    ]
    q_path, o_path = tmp_path / "dev_questions.json", tmp_path / "dev_outputs.json"
    q_path.write_text(json.dumps(questions))
    o_path.write_text(json.dumps({"task": "GIT_subject", "golds": [
        {"id": "2", "output": "b: two"}, {"id": "q1", "output": "a: one"}]}))
    return q_path, o_path


def test_load_lamp_questions_with_and_without_outputs(tmp_path: Path) -> None:
    q_path, o_path = _write_lamp(tmp_path)
    plain = load_lamp_questions(q_path)
    assert [q.gold for q in plain] == [None, None]
    assert plain[1] == LampQuestion(id="2", user_id="2", profile=[], gold=None,
                                    input="Generate a subject line for the following commit "
                                          "message: body2")
    with_golds = load_lamp_questions(str(q_path), str(o_path))
    assert [(q.id, q.user_id, q.gold) for q in with_golds] == [("q1", "u1", "a: one"),
                                                                ("2", "2", "b: two")]
    task = get_task("GIT_subject")
    assert task.query_text(with_golds[0].input) == "body1"
    assert task.records_from_profile(with_golds[0].profile)[0].timestamp == 1577836800.0


def test_load_lamp_questions_rejects_bad_files(tmp_path: Path) -> None:
    q_path, o_path = _write_lamp(tmp_path)
    with pytest.raises(InvalidInputError, match="not found"):
        load_lamp_questions(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        load_lamp_questions(tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text(json.dumps([{"id": "1", "input": "x"}]))
    with pytest.raises(InvalidInputError, match="profile"):
        load_lamp_questions(tmp_path / "obj.json")
    o_path.write_text(json.dumps({"task": "GIT_subject", "golds": [{"id": "q1", "output": "a"}]}))
    with pytest.raises(InvalidInputError, match="no gold output for question '2'"):
        load_lamp_questions(q_path, o_path)


def test_unknown_task_lists_the_known_ones() -> None:
    with pytest.raises(TaskError, match="LaMP-1, LaMP-2.*GIT_area, GIT_subject"):
        get_task("LaMP-9")


@pytest.mark.parametrize("change, message", [
    ({"kind": "ranking"}, "'kind' must be one of"),
    ({"labels": []}, "at least 2 'labels'"),
    ({"labels": ["red", "red"]}, "duplicates"),
    ({"labels": ["red, or green", "blue"]}, "commas"),
    ({"example_template": "{missing}"}, "example_template"),
    ({"instruction": ""}, "missing required key"),
    ({"colour": "x"}, "unknown key"),
    ({"text_fields": "body"}, "list of strings"),
    ({"kind": "regression"}, "must be numbers"),
])
def test_invalid_spec_says_what_is_wrong(tmp_path: Path, change: dict, message: str) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**COLOR_SPEC, **change}))
    with pytest.raises(TaskError, match=message):
        get_task(path)


def test_spec_file_errors(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="not found"):
        get_task(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("[1, 2")
    with pytest.raises(TaskError, match="not readable JSON"):
        get_task(str(tmp_path / "broken.json"))
