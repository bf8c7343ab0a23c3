"""The family of simulated LLMs (hydrahead.offline.family): every member answers every prompt
kind, each member's mechanism is what its contract says, the members are told apart by a fixed
probe set, the default is today's simulator unchanged, and members are served by name (HTTP,
``llm_endpoint``, the CLI)."""

from __future__ import annotations

import hashlib
import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from click.testing import CliRunner
from testing.synthetic_users import make_user

from hydrahead.cli import cli
from hydrahead.offline import OfflineLLMServer, llm_endpoint
from hydrahead.offline.family import MEMBERS, describe_members, get_member, member_of_model
from hydrahead.offline.members.biased import favoured_labels
from hydrahead.offline.members.learned import (WEIGHTS_FILE, LearnedLLM, LearnedWeights,
                                               committed_weights)
from hydrahead.offline.simulator import (SIMULATOR_FINGERPRINT, SIMULATOR_NOTE, SimulatedLLM,
                                         parse_prompt)
from hydrahead.offline import train_learned
from hydrahead.runtime.errors import InvalidInputError
from hydrahead.runtime.records import Record
from hydrahead.runtime.tasks import get_task

AREA = get_task("GIT_area")
SUBJECT = get_task("GIT_subject")
RATING = get_task("LaMP-3")
CITATION = get_task("LaMP-1")
TWEET = get_task("LaMP-7")  # generation from examples without answers

QUERY = "Avoid quadratic behaviour when the list of pending items grows large."  # flat prior
NEAR = Record(id="near", text="Avoid quadratic behaviour when the pending list grows.",
              fields={"tag": "refs"})
FAR = [Record(id=f"far{i}", text=t, fields={"tag": "diff"}) for i, t in enumerate([
    "Tweak the colour of hunk headers.", "Print stat lines with less padding.",
    "Handle whitespace errors at the end of lines."])]
GITWEB_QUERY = "Fix the gitweb feed so that browsers render the html."  # strong prior: gitweb
UNRELATED_AREA = Record(id="x", text="Translate the German messages.", fields={"tag": "i18n"})
SUBJECT_QUERY = ("This patch teaches the sequencer to skip empty commits when rebasing, which "
                 "users asked for.")
SUBJECT_GOLD = "sequencer: skip empty commits when rebasing"
RELATED_SUBJECT = Record(id="s", text="Teach the sequencer to skip empty commits during an "
                         "interactive rebase.", fields={"title": "sequencer: skip empty commits"})
UNRELATED_SUBJECTS = [
    Record(id="u1", text="Update the German translation for the new release.",
           fields={"title": "l10n: de.po: update German translation"}),
    Record(id="u2", text="Bump the version number in the build files.",
           fields={"title": "Makefile: bump version to 2.41"})]
REVIEWS = [Record(id="r1", text="Great blender, I love it, works perfectly.",
                  fields={"score": "5"}),
           Record(id="r2", text="It is fine I guess, does the job.", fields={"score": "2"}),
           Record(id="r3", text="Does the job I guess.", fields={"score": "2"})]


def citation_query(title: str, ref1: str, ref2: str) -> str:
    return (f'For an author who has written the paper with the title "{title}", which reference '
            f'is related? Just answer with [1] or [2] without explanation. [1]: "{ref1}" '
            f'[2]: "{ref2}"')


PROMPTS = {  # every kind of prompt hydrahead renders, with and without examples
    "classification": (AREA, AREA.render_prompt(QUERY, [NEAR, *FAR])),
    "classification, no examples": (AREA, AREA.render_prompt(GITWEB_QUERY)),
    "ratings": (RATING, RATING.render_prompt("Great blender, it works, I love it.", REVIEWS)),
    "ratings, no examples": (RATING, RATING.render_prompt("It is fine, nothing special.")),
    "spelled-out options": (CITATION, CITATION.render_prompt(
        citation_query("Fast retrieval of pending items", "Quadratic behaviour of pending lists",
                       "Colour of hunk headers"),
        [Record(id="p", text="Pending item lists and their quadratic growth",
                fields={"title": "t", "abstract": "a"})])),
    "generation": (SUBJECT, SUBJECT.render_prompt(SUBJECT_QUERY,
                                                  [RELATED_SUBJECT, *UNRELATED_SUBJECTS])),
    "generation, no examples": (SUBJECT, SUBJECT.render_prompt(SUBJECT_QUERY)),
    "generation, examples without answers": (TWEET, TWEET.render_prompt(
        "so sunny at the beach today", [Record(id="t", text="rainy again, stuck indoors")])),
    "another layout": (AREA, "Options: red, green\nthe grass is green"),
}
SAMPLINGS = ({"temperature": 0}, {"n": 5, "temperature": 1.0, "seed": 3},
             {"n": 3, "temperature": 0.7, "max_tokens": 4})


def body(prompt: str, **extra: object) -> dict:
    return {"model": "anything", "messages": [{"role": "user", "content": prompt}], **extra}


def greedy(llm: SimulatedLLM, prompt: str) -> str:
    return llm.complete(body(prompt, temperature=0))["choices"][0]["message"]["content"]


def texts(response: dict) -> list[str]:
    return [c["message"]["content"] for c in response["choices"]]


@pytest.fixture(scope="module")
def members() -> dict[str, SimulatedLLM]:
    return {name: get_member(name) for name in MEMBERS}


# --------------------------------------------------------------------------- the registry
def test_the_family_has_its_members_and_the_default_is_todays_simulator() -> None:
    assert len(MEMBERS) >= 8 and list(MEMBERS)[0] == "default"
    assert {"default", "prior-only", "nearest", "majority", "positional", "style-mimic",
            "skewed-prior", "chatty", "learned"} <= set(MEMBERS)
    assert all(name == name.lower() for name in MEMBERS)
    assert type(get_member("default")) is SimulatedLLM
    for name in MEMBERS:
        llm = get_member(name)
        assert llm.name == name and llm.summary
        assert "SIMULATOR" in (type(llm).__doc__ or "") or name == "default"
    assert [line.split()[0] for line in describe_members()] == list(MEMBERS)
    with pytest.raises(InvalidInputError, match="prior-only.*learned"):
        get_member("gpt-4o")
    assert member_of_model("sim:majority") == "majority" and member_of_model("default") is None


# --------------------------------------------------------------- every member, every prompt
@pytest.mark.parametrize("name", list(MEMBERS))
def test_every_member_answers_every_prompt_kind(name: str, members) -> None:
    llm = members[name]
    for kind, (task, prompt) in PROMPTS.items():
        for sampling in SAMPLINGS:
            response = llm.complete(body(prompt, **sampling))
            n = sampling.get("n", 1)
            assert response["object"] == "chat.completion" and response["id"].startswith(
                "chatcmpl-sim-")
            assert response["x_hydrahead_simulator"] == SIMULATOR_NOTE
            expected = SIMULATOR_FINGERPRINT + ("" if name == "default" else f"+{name}")
            assert response["system_fingerprint"] == expected
            outs = texts(response)
            assert len(outs) == n and all(isinstance(t, str) and t.strip() for t in outs), kind
            assert [c["index"] for c in response["choices"]] == list(range(n))
            usage = response["usage"]
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
            if "max_tokens" in sampling:
                assert all(len(t.split()) <= sampling["max_tokens"] for t in outs), (kind, outs)
            if task.kind != "generation" and kind != "another layout" and name != "chatty":
                assert all(task.parse(t) is not None for t in outs), (kind, outs)
            again = llm.complete(body(prompt, **sampling))
            assert texts(again) == outs  # a pure function of the request


def test_members_are_told_apart_by_a_fixed_probe_set(members) -> None:
    probes = [
        AREA.render_prompt(QUERY, [NEAR, *FAR]),
        AREA.render_prompt(QUERY, [*FAR, NEAR]),
        AREA.render_prompt(QUERY, [  # one close example of refs, two fairly close of diff
            Record(id="a", text="Avoid quadratic behaviour when pending items grow.",
                   fields={"tag": "refs"}),
            Record(id="b", text="Quadratic list of items grows.", fields={"tag": "diff"}),
            Record(id="c", text="Large pending items list.", fields={"tag": "diff"})]),
        AREA.render_prompt(GITWEB_QUERY),
        AREA.render_prompt(GITWEB_QUERY, [UNRELATED_AREA]),
        RATING.render_prompt("Great blender, it works, I love it.", REVIEWS),
        SUBJECT.render_prompt(SUBJECT_QUERY, [RELATED_SUBJECT, *UNRELATED_SUBJECTS]),
        SUBJECT.render_prompt(SUBJECT_QUERY),
    ]
    answers = {name: tuple(greedy(llm, p) for p in probes) for name, llm in members.items()}
    names = list(answers)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert answers[a] != answers[b], f"{a} and {b} answer the probes alike"


# ---------------------------------------------------------------------- the default member
def test_the_default_member_is_bit_identical_to_todays_simulator(members) -> None:
    reference = SimulatedLLM()
    digest = hashlib.sha256()
    for kind, (_, prompt) in PROMPTS.items():
        for sampling in SAMPLINGS:
            mine = members["default"].complete(body(prompt, **sampling))
            theirs = reference.complete(body(prompt, **sampling))
            for r in (mine, theirs):
                r.pop("created")
            assert mine == theirs, kind
            digest.update(json.dumps(mine, sort_keys=True).encode())
    # The answers the simulator gave before the family existed (bench/QUALITY.md rests on
    # them): computed with hydrahead/offline/simulator.py of commit 8e88728.
    assert digest.hexdigest()[:16] == "27fb1956e86d3c52"


# ------------------------------------------------------------------------- the mechanisms
def test_prior_only_ignores_the_examples(members) -> None:
    llm, default = members["prior-only"], members["default"]
    for task, query, shown in ((AREA, GITWEB_QUERY, [UNRELATED_AREA]), (AREA, QUERY, [NEAR]),
                               (RATING, "It is fine, nothing special.", REVIEWS)):
        with_examples = task.render_prompt(query, shown)
        alone = task.render_prompt(query)
        assert llm.label_distribution(with_examples) == llm.label_distribution(alone)
    assert default.label_distribution(AREA.render_prompt(QUERY, [NEAR])) != \
        default.label_distribution(AREA.render_prompt(QUERY))  # the probe has teeth
    rng = random.Random
    with_examples = SUBJECT.render_prompt(SUBJECT_QUERY, UNRELATED_SUBJECTS)
    alone = SUBJECT.render_prompt(SUBJECT_QUERY)
    assert (llm.candidates(with_examples, n=6, rng=rng(1))
            == llm.candidates(alone, n=6, rng=rng(1)))


def test_nearest_copies_the_most_similar_example_and_majority_counts(members) -> None:
    mixed = AREA.render_prompt(QUERY, [NEAR, *FAR])  # nearest says refs, three say diff
    assert greedy(members["nearest"], mixed) == "refs"
    assert greedy(members["majority"], mixed) == "diff"
    # Two fairly close examples outvote one closer one in the default, not in nearest.
    close = AREA.render_prompt(QUERY, [
        Record(id="a", text="Avoid quadratic behaviour when pending items grow.",
               fields={"tag": "refs"}),
        Record(id="b", text="Quadratic list of items grows.", fields={"tag": "diff"}),
        Record(id="c", text="Large pending items list.", fields={"tag": "diff"})])
    assert greedy(members["nearest"], close) == "refs"
    assert greedy(members["default"], close) == "diff"
    # Majority does not care where or how similar: any order, same answer.
    assert greedy(members["majority"], AREA.render_prompt(QUERY, [*FAR, NEAR])) == "diff"
    # Ratings: nearest copies the closest review's score, majority the most frequent one.
    reviews = RATING.render_prompt("Great blender, I love it, works perfectly well.", REVIEWS)
    assert greedy(members["nearest"], reviews) == "5"
    assert greedy(members["majority"], reviews) == "2"
    # Generation: nearest copies the closest example's answer.
    subject = SUBJECT.render_prompt(SUBJECT_QUERY, [*UNRELATED_SUBJECTS, RELATED_SUBJECT])
    assert greedy(members["nearest"], subject) == "sequencer: skip empty commits"


def test_positional_follows_the_last_example(members) -> None:
    llm = members["positional"]
    assert greedy(llm, AREA.render_prompt(QUERY, [NEAR, FAR[0]])) == "diff"
    assert greedy(llm, AREA.render_prompt(QUERY, [FAR[0], NEAR])) == "refs"
    assert greedy(llm, AREA.render_prompt(QUERY, [*FAR, NEAR])) == "refs"  # 1 vs 3, last wins
    assert greedy(members["nearest"], AREA.render_prompt(QUERY, [NEAR, FAR[0]])) == "refs"


def test_style_mimic_copies_what_it_is_shown_so_unrelated_records_hurt(members) -> None:
    llm, default = members["style-mimic"], members["default"]
    alone = AREA.render_prompt(GITWEB_QUERY)
    misled = AREA.render_prompt(GITWEB_QUERY, [UNRELATED_AREA])
    assert greedy(llm, alone) == greedy(default, alone) == "gitweb"
    assert greedy(llm, misled) == "i18n"  # a shown label, however unrelated
    assert greedy(default, misled) == "gitweb"
    # Generation copies the examples' wording, related or not, and unrelated ones cost ROUGE.
    none = greedy(llm, SUBJECT.render_prompt(SUBJECT_QUERY))
    unrelated = greedy(llm, SUBJECT.render_prompt(SUBJECT_QUERY, UNRELATED_SUBJECTS))
    assert "l10n:" in unrelated and "l10n" not in SUBJECT_QUERY
    assert SUBJECT.rouge(unrelated, SUBJECT_GOLD) < SUBJECT.rouge(none, SUBJECT_GOLD) - 0.3
    assert "l10n" not in greedy(default, SUBJECT.render_prompt(SUBJECT_QUERY, UNRELATED_SUBJECTS))


def test_skewed_prior_favours_a_few_labels(members) -> None:
    llm, default = members["skewed-prior"], members["default"]
    assert favoured_labels(AREA.labels) == ("tests", "doc", "git-gui")
    assert favoured_labels(RATING.labels) == ("5", "4")
    assert favoured_labels(("[1]", "[2]")) == ("[1]",)
    for query in (QUERY, "Rework how pending entries are kept in memory.",
                  "Speed up the lookup of cached objects."):
        mass = lambda llm: sum(llm.label_distribution(AREA.render_prompt(query))[label]
                               for label in ("tests", "doc", "git-gui"))
        assert mass(llm) > 0.75 and mass(default) < 0.3
    ratings = llm.label_distribution(RATING.render_prompt("It is fine, nothing special."))
    assert ratings["4"] + ratings["5"] > 0.75
    assert greedy(llm, SUBJECT.render_prompt(SUBJECT_QUERY)).startswith("Fix ")


def test_chatty_needs_parsing_and_the_task_parser_recovers_the_label(members) -> None:
    llm, default = members["chatty"], members["default"]
    cases = [(AREA, AREA.render_prompt(QUERY, [NEAR, *FAR])),
             (AREA, AREA.render_prompt(GITWEB_QUERY)),
             (RATING, RATING.render_prompt("Great blender, it works, I love it.", REVIEWS))]
    for task, prompt in cases:
        assert llm.label_distribution(prompt) == default.label_distribution(prompt)
        label = greedy(default, prompt)
        raw = [llm.candidates(prompt, n=1, temperature=0, rng=random.Random(i))[0]
               for i in range(60)]
        parsed = [task.parse(t) for t in raw]
        gold = task.parse(label)
        assert sum(t != label for t in raw) >= 20  # most need parsing
        assert sum(p == gold for p in parsed) >= 0.75 * len(raw)  # and parse back
        assert any(t != t.lower() and t.upper() == t for t in raw) or task is RATING
    generation = SUBJECT.render_prompt(SUBJECT_QUERY)
    wrapped = {llm.candidates(generation, n=1, temperature=0, rng=random.Random(i))[0]
               for i in range(30)}
    plain = greedy(default, generation)
    assert plain in wrapped and any(t != plain and plain in t for t in wrapped)


# ------------------------------------------------------------------------------- learned
def test_the_committed_learned_weights_are_small_and_say_what_they_learned_from() -> None:
    assert WEIGHTS_FILE.stat().st_size < 16_384
    weights = committed_weights()
    assert "pydoc_data" in weights.meta["trained_on"]
    assert "no benchmark" in weights.meta["trained_on"]
    assert weights.meta["heldout_option_accuracy"] > 0.6


@pytest.fixture(scope="module")
def tiny_training() -> dict[str, object]:
    """The learned member trained at tiny scale, on true and on inverted answers."""
    settings = {"option_count": 300, "text_count": 120, "steps": 150, "max_files": 20}
    return {"trained": train_learned.train(seed=0, **settings),
            "inverted": train_learned.train(seed=0, invert=True, **settings),
            "held_options": train_learned.option_episodes(train_learned.help_paragraphs(),
                                                         200, seed=99),
            "held_texts": train_learned.text_episodes(
                train_learned.stdlib_docstrings(max_files=20), 80, seed=99)}


def test_the_learned_member_behaves_as_its_training_made_it(tiny_training) -> None:
    trained, inverted = tiny_training["trained"], tiny_training["inverted"]
    held_options, held_texts = tiny_training["held_options"], tiny_training["held_texts"]
    # On fresh episodes: trained on the true answers it finds them; inverted, it avoids them.
    chance = float(np.mean(1.0 / held_options.mask.sum(axis=1)))
    right = train_learned.option_accuracy(trained, held_options)
    wrong = train_learned.option_accuracy(inverted, held_options)
    assert right > max(0.5, chance + 0.25) and wrong < chance
    # Generation: the candidate it draws overlaps the held-out summaries more than one drawn
    # uniformly (weights that learned nothing) or by the inverted training.
    untrained = LearnedWeights(trained.hidden_w, trained.hidden_b, trained.out_w,
                               np.zeros_like(trained.text_w))
    drawn = train_learned.expected_f1(trained, held_texts)
    assert drawn > train_learned.expected_f1(untrained, held_texts) + 0.005
    assert drawn > train_learned.expected_f1(inverted, held_texts) + 0.01
    # And the member answers as its weights say: the close example's label, or not.
    prompt = AREA.render_prompt(QUERY, [NEAR, FAR[0]])
    assert greedy(LearnedLLM(trained), prompt) == "refs"
    assert greedy(LearnedLLM(inverted), prompt) != "refs"


def test_the_learned_member_uses_the_committed_weights(members) -> None:
    llm = members["learned"]
    assert llm.weights is committed_weights()
    assert greedy(llm, AREA.render_prompt(QUERY, [NEAR, FAR[0]])) == "refs"
    scores = llm.option_scores(parse_prompt(AREA.render_prompt(QUERY, [NEAR, FAR[0]])))
    assert set(scores) == set(AREA.labels) and len(set(scores.values())) > 1


# ---------------------------------------------------------------------- serving by name
def test_one_server_serves_every_member_by_name_over_http() -> None:
    prompt = AREA.render_prompt(QUERY, [NEAR, *FAR])
    with OfflineLLMServer(member="majority") as server:
        url = f"{server.url}/chat/completions"
        own = requests.post(url, json=body(prompt, temperature=0), timeout=10).json()
        assert texts(own) == ["diff"]
        assert own["system_fingerprint"] == f"{SIMULATOR_FINGERPRINT}+majority"
        nearest = requests.post(url, json={**body(prompt, temperature=0),
                                           "model": "sim:nearest"}, timeout=10).json()
        assert texts(nearest) == ["refs"] and nearest["model"] == "sim:nearest"
        assert nearest["system_fingerprint"].endswith("+nearest")
        plain = requests.post(url, json={**body(prompt, temperature=0), "model": "sim:default"},
                              timeout=10).json()
        assert plain["system_fingerprint"] == SIMULATOR_FINGERPRINT
        bad = requests.post(url, json={**body(prompt), "model": "sim:gpt-5"}, timeout=10)
        assert bad.status_code == 400 and "majority" in bad.json()["error"]["message"]

        def ask(name: str) -> tuple[str, dict]:
            r = requests.post(url, json={**body(prompt, temperature=0), "model": f"sim:{name}"},
                              timeout=30)
            return name, r.json()

        with ThreadPoolExecutor(max_workers=len(MEMBERS)) as pool:
            answers = dict(pool.map(ask, list(MEMBERS) * 2))
        for name, response in answers.items():
            assert response["system_fingerprint"].endswith("" if name == "default" else name)
            assert texts(response) == [greedy(get_member(name), prompt)]
        models = requests.get(f"{server.url}/models", timeout=10).json()["data"][0]
        assert models["x_hydrahead_member"] == "majority"
        assert models["x_hydrahead_members"] == [f"sim:{n}" for n in MEMBERS]
    with pytest.raises(InvalidInputError, match="not both"):
        OfflineLLMServer(simulator=SimulatedLLM(), member="nearest")
    with pytest.raises(InvalidInputError, match="no simulated LLM named"):
        OfflineLLMServer(member="gpt-5")


def test_llm_endpoint_serves_the_member_it_is_named() -> None:
    prompt = AREA.render_prompt(QUERY, [NEAR, FAR[0]])
    said: list[str] = []
    with llm_endpoint(None, offline="positional", announce=said.append) as (url, simulated):
        r = requests.post(f"{url}/chat/completions", json=body(prompt, temperature=0),
                          timeout=10).json()
    assert simulated and texts(r) == ["diff"] and "member 'positional'" in said[0]
    with llm_endpoint(None, offline=True) as (url, simulated):
        r = requests.post(f"{url}/chat/completions", json=body(prompt, temperature=0),
                          timeout=10).json()
    assert r["system_fingerprint"] == SIMULATOR_FINGERPRINT
    with llm_endpoint("http://example.invalid/v1", offline=False) as (url, simulated):
        assert url == "http://example.invalid/v1" and not simulated
    with pytest.raises(InvalidInputError, match="positional"):
        with llm_endpoint(None, offline="gpt-5"):
            pass


def test_cli_offline_takes_a_member_name(tmp_path: Path, bundle_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYDRAHEAD_LLM_BASE_URL", raising=False)
    history = tmp_path / "history.jsonl"
    history.write_text("\n".join(json.dumps(h) for h in make_user(3)["history"]) + "\n")

    def run(*args: str):
        return CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "--bundle",
                                        str(bundle_dir), *args])

    listed = run("llm", "members")
    assert listed.exit_code == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list(MEMBERS)
    assert run("user", "import", "bob", str(history), "--task", "GIT_area").exit_code == 0
    asked = run("ask", "bob", "Fix zsh completion of subcommands", "--offline", "majority",
                "--json")
    assert asked.exit_code == 0, asked.output
    assert "member 'majority'" in asked.output
    payload = json.loads(asked.stdout)
    assert payload["simulated"] is True and payload["answer"] in AREA.labels
    plain = run("ask", "bob", "Fix zsh completion of subcommands", "--json", "--offline")
    assert plain.exit_code == 0 and "member '" not in plain.output
    for args in (("ask", "bob", "hello", "--offline", "gpt-5"),
                 ("llm", "serve-offline", "--model", "gpt-5")):
        bad = run(*args)
        assert bad.exit_code == 2 and "Traceback" not in bad.output
        assert "no simulated LLM named 'gpt-5'" in bad.output and "style-mimic" in bad.output
