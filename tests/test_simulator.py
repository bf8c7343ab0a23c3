"""The offline SIMULATOR's contract (see hydrahead.offline.simulator), point by point."""

from __future__ import annotations

import copy
import re
import statistics
import time

import pytest

from hydrahead.runtime.errors import InvalidInputError
from hydrahead.offline.simulator import (SIMULATOR_FINGERPRINT, Example,
                                             SimulatedLLM, parse_prompt)
from hydrahead.runtime.records import Record
from hydrahead.runtime.tasks import get_task

AREA = get_task("GIT_area")
SUBJECT = get_task("GIT_subject")
# No key word of any area in it: the world prior is flat.
NEUTRAL_QUERY = "Avoid quadratic behaviour when the list of pending items grows large."


def area_record(rid: str, text: str, tag: str) -> Record:
    return Record(id=rid, text=text, fields={"tag": tag})


def subject_record(rid: str, text: str, title: str) -> Record:
    return Record(id=rid, text=text, fields={"title": title})


def body(prompt: str, **extra: object) -> dict:
    return {"model": "anything", "messages": [{"role": "user", "content": prompt}], **extra}


def texts(response: dict) -> list[str]:
    return [c["message"]["content"] for c in response["choices"]]


@pytest.fixture(scope="module")
def llm() -> SimulatedLLM:
    return SimulatedLLM()


# ------------------------------------------------------------------ reading the prompt format
def test_prompt_rendered_by_a_task_is_read_back_exactly() -> None:
    records = [area_record("1", "Fix the gitweb feed.\n\nIt broke.", "gitweb"),
               area_record("2", "Add a test.", "tests")]
    parsed = parse_prompt(AREA.render_prompt("Teach gitk a new view.", records))
    assert parsed.structured
    assert parsed.instruction == AREA.instruction
    assert parsed.options == AREA.labels
    assert parsed.examples == (Example("Fix the gitweb feed.\n\nIt broke.", "gitweb"),
                               Example("Add a test.", "tests"))
    assert parsed.query == "Teach gitk a new view."
    unlabelled = get_task("LaMP-7").render_prompt("so sunny", [Record(id="t", text="hi all")])
    assert parse_prompt(unlabelled).examples == (Example("hi all", None),)


def test_unknown_prompt_layout_still_gets_an_answer(llm: SimulatedLLM) -> None:
    prompt = "Summarise this please: The build failed because the compiler flags were wrong."
    assert not parse_prompt(prompt).structured
    answer = texts(llm.complete(body(prompt, temperature=0)))[0]
    assert answer and set(re.findall(r"[a-z]+", answer.lower())) <= set(
        re.findall(r"[a-z]+", prompt.lower()))
    label = texts(llm.complete(body("Options: red, green\nthe grass is green", temperature=0)))
    assert label == ["green"]


# ---------------------------------------------- 1. a pure function of the request, no state
def test_response_is_a_function_of_the_request_fields_only(llm: SimulatedLLM) -> None:
    prompt = AREA.render_prompt(NEUTRAL_QUERY, [area_record("a", NEUTRAL_QUERY, "refs")])
    first = llm.complete(body(prompt, n=3, temperature=1.0, seed=7))
    # Other users, other models, unknown fields, a fresh simulator, calls in between: no change.
    llm.complete(body(AREA.render_prompt("Fix the gitweb feed.")))
    again = SimulatedLLM().complete(body(prompt, n=3, temperature=1.0, seed=7, user="bob",
                                         model="gpt-x", metadata={"user_id": "u2"}))
    # Only the envelope differs, as from a real server: the clock and the model name asked for.
    assert again["model"] == "gpt-x" and abs(again["created"] - time.time()) < 60
    assert {k: v for k, v in again.items() if k not in ("created", "model")} == {
        k: v for k, v in first.items() if k not in ("created", "model")}
    assert first["model"] == body(prompt)["model"]
    assert first["system_fingerprint"] == SIMULATOR_FINGERPRINT
    assert "SIMULATOR" in first["x_hydrahead_simulator"]
    usage = first["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_same_prompt_from_different_users_records_gets_the_same_answer(llm: SimulatedLLM) -> None:
    alice = [Record(id="alice-1", text="Sort the pending list once.", fields={"tag": "refs"},
                    timestamp=1.0)]
    bob = [Record(id="bob-99", text="Sort the pending list once.", fields={"tag": "refs"},
                  timestamp=2e9)]
    prompts = [AREA.render_prompt(NEUTRAL_QUERY, r) for r in (alice, bob)]
    assert prompts[0] == prompts[1]
    assert llm.complete(body(prompts[0], n=4)) == llm.complete(body(prompts[1], n=4))


def test_malformed_requests_are_refused(llm: SimulatedLLM) -> None:
    for bad in ({}, {"messages": []}, {"messages": [{"content": "x"}]},
                body("x", n=0), body("x", n="2"), body("x", temperature=3),
                body("x", max_tokens=0), body("x", seed="1"), body("x", stream=True),
                {"messages": [{"role": "user", "content": 5}]}):
        with pytest.raises(InvalidInputError):
            llm.complete(bad)


# -------------------------------------------------- 2. world prior + imitation of examples
def test_similar_example_pulls_toward_its_label_far_more_than_an_irrelevant_one(
        llm: SimulatedLLM) -> None:
    similar = area_record("s", "Avoid the quadratic behaviour of the pending list as it grows.",
                          "sequencer")
    irrelevant = area_record("i", "Translate the German messages for the release.", "sequencer")
    p_none = llm.label_distribution(AREA.render_prompt(NEUTRAL_QUERY))["sequencer"]
    p_similar = llm.label_distribution(AREA.render_prompt(NEUTRAL_QUERY, [similar]))["sequencer"]
    p_irrelevant = llm.label_distribution(
        AREA.render_prompt(NEUTRAL_QUERY, [irrelevant]))["sequencer"]
    assert p_none == pytest.approx(1 / 15)  # flat prior: no key word in the query
    assert p_similar > 0.5
    assert p_none <= p_irrelevant < p_similar / 4


def test_world_prior_reads_key_words_and_sentiment(llm: SimulatedLLM) -> None:
    doc = AREA.render_prompt("Fix a typo in the documentation of the manual page.")
    assert max(llm.label_distribution(doc).items(), key=lambda kv: kv[1])[0] == "doc"
    rating = get_task("LaMP-3")
    happy = rating.render_prompt("Great kettle, works perfectly, I love it.")
    angry = rating.render_prompt("Terrible, broke after a week, a waste of money.")
    assert llm.label_distribution(happy, temperature=0)["5"] == 1.0
    assert llm.label_distribution(angry, temperature=0)["1"] == 1.0


def test_irrelevant_history_lowers_accuracy(llm: SimulatedLLM) -> None:
    queries = {"Fix a typo in the documentation.": "doc",
               "Add a test for the new option in the test suite.": "tests",
               "Teach gitweb to emit valid html in the feed.": "gitweb"}
    misleading = [area_record(str(i), f"Unrelated note number {i} about lunch.", "i18n")
                  for i in range(4)]
    relevant = [area_record("d", "Fix a typo in the manual.", "doc"),
                area_record("t", "Add a test for the option.", "tests"),
                area_record("g", "Teach gitweb html output.", "gitweb")]

    def accuracy(examples: list[Record]) -> float:
        preds = [texts(llm.complete(body(AREA.render_prompt(q, examples), temperature=0)))[0]
                 for q in queries]
        return AREA.evaluate(preds, list(queries.values()))["accuracy"]

    assert accuracy(relevant) == 1.0
    assert accuracy(misleading * 3) < accuracy([])


def test_spelled_out_references_use_the_users_unlabelled_papers(llm: SimulatedLLM) -> None:
    task = get_task("LaMP-1")
    query = task.query_text('For an author who has written the paper with the title "Sparse '
                            'retrieval of personal notes", which reference is related? Just '
                            'answer with [1] or [2] without explanation. [1]: "Dense retrieval '
                            'of passages" [2]: "Protein folding kinetics in yeast"')
    assert llm.label_distribution(task.render_prompt(query), temperature=0)["[1]"] == 1.0
    papers = [Record(id=str(i), text=t, fields={"title": t, "abstract": "We measure folding."})
              for i, t in enumerate(["Yeast protein folding kinetics",
                                     "Folding kinetics of yeast proteins"])]
    assert llm.label_distribution(task.render_prompt(query, papers), temperature=0)["[2]"] == 1.0


# ----------------------------------------------------------------------------- 3. sampling
def test_sampling_is_seeded_iid_and_greedy_at_zero(llm: SimulatedLLM) -> None:
    prompt = AREA.render_prompt("Teach gitweb to show the blob in the html view.")
    request = body(prompt, n=5, temperature=1.0)
    first = texts(llm.complete(request))
    assert texts(llm.complete(copy.deepcopy(request))) == first
    assert len(first) == 5 and set(first) <= set(AREA.labels)
    by_seed = {tuple(texts(llm.complete(body(prompt, n=5, temperature=1.0, seed=s))))
               for s in range(8)}
    assert len(by_seed) > 1
    greedy = texts(llm.complete(body(prompt, n=3, temperature=0)))
    dist = llm.label_distribution(prompt)
    assert greedy == [max(dist, key=dist.get)] * 3 == ["gitweb"] * 3


def test_samples_are_drawn_with_replacement_from_the_label_distribution(
        llm: SimulatedLLM) -> None:
    """Like OpenAI, vLLM and Ollama: the vote share of n samples estimates p(label)."""
    prompt = AREA.render_prompt("Teach gitweb to show the blob in the html view.")
    dist = llm.label_distribution(prompt, temperature=1.0)
    samples = texts(llm.complete(body(prompt, n=128, temperature=1.0, seed=3)))
    counts = {label: samples.count(label) / len(samples) for label in AREA.labels}
    assert max(counts, key=counts.get) == max(dist, key=dist.get)  # the mode is the argmax
    assert sum(abs(counts[k] - dist[k]) for k in dist) / 2 < 0.15  # total variation
    assert len(set(samples)) < len(samples)  # repeats: not without replacement


def test_more_samples_than_labels_repeat_labels(llm: SimulatedLLM) -> None:
    task = get_task("LaMP-3")
    answers = texts(llm.complete(body(task.render_prompt("It is fine."), n=8, temperature=1.0)))
    assert len(answers) == 8 and set(answers) <= {"1", "2", "3", "4", "5"}
    assert len(set(answers)) < 8


# --------------------------------------------------------------------------- 4. generation
GEN_QUERY = ("This patch teaches the pager to honour the color setting when output goes to a "
             "terminal. Without it, colors were lost whenever a pager was started by a "
             "subcommand, which confused users of long logs.")


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def test_generation_candidates_take_their_words_from_the_query(llm: SimulatedLLM) -> None:
    query_words = words_of(GEN_QUERY)
    answers = texts(llm.complete(body(SUBJECT.render_prompt(GEN_QUERY), n=4, temperature=1.0)))
    assert len(answers) == 4
    for answer in answers:
        assert not re.match(r"^\S+: ", answer)  # neutral style: no prefix, capitalised
        assert answer[0].isupper() and not answer.endswith(".")
        for w in words_of(answer):  # inflected verbs may lose their ending ("teaches" -> teach)
            assert any(q.startswith(w) for q in query_words), (w, answer)


def test_generation_imitates_a_prefix_habit(llm: SimulatedLLM) -> None:
    examples = [subject_record("1", "The pager exit code was lost.", "pager: keep the exit code"),
                subject_record("2", "Colors in the pager were off.", "pager: fix colors"),
                subject_record("3", "The diff output missed a newline.", "diff: add newline")]
    prompt = SUBJECT.render_prompt(GEN_QUERY, examples)
    answers = texts(llm.complete(body(prompt, n=4, temperature=1.0)))
    assert all(re.match(r"^(pager|diff): [a-z]", a) for a in answers), answers
    greedy = texts(llm.complete(body(prompt, temperature=0)))[0]
    assert greedy.startswith("pager: ")  # the similar examples' prefix, and the query says pager


def test_short_example_answers_give_shorter_candidates(llm: SimulatedLLM) -> None:
    def mean_length(titles: list[str]) -> float:
        examples = [subject_record(str(i), f"Change number {i}.", t) for i, t in enumerate(titles)]
        prompt = SUBJECT.render_prompt(GEN_QUERY, examples)
        return statistics.mean(len(a.split()) for a in
                               texts(llm.complete(body(prompt, n=4, temperature=1.0))))

    short = mean_length(["Fix pager", "Drop flag", "Add test"])
    long = mean_length(["Make the pager honour the color setting of the user in all cases now",
                        "Keep the exit code of the pager when a subcommand starts it for us",
                        "Teach the log command to respect the terminal width in every mode"])
    assert short + 4 < long


def test_generation_imitates_case_and_period_and_obeys_max_tokens(llm: SimulatedLLM) -> None:
    examples = [subject_record("1", "One.", "lowercase with a period."),
                subject_record("2", "Two.", "another lowercase one.")]
    answer = texts(llm.complete(body(SUBJECT.render_prompt(GEN_QUERY, examples), temperature=0)))[0]
    assert answer[0].islower() and answer.endswith(".")
    capped = texts(llm.complete(body(SUBJECT.render_prompt(GEN_QUERY), n=3, max_tokens=3)))
    assert all(len(a.split()) <= 3 for a in capped)
