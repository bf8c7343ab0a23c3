"""One protocol, one table: the bootstrap of a gain over users, the family report (worst case
over the simulated LLMs first), the protocols' bundles, and a real tiny run of two members."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hydrahead.cli import cli
from hydrahead.evaluation import family, report
from hydrahead.evaluation.quality import SYSTEMS, Outcome, Results, question_metric
from hydrahead.evaluation.stats import bootstrap_gain, paired_wins_losses, relative_gain
from hydrahead.offline import SIMULATOR_NOTE
from hydrahead.offline.family import MEMBERS
from hydrahead.runtime.errors import InvalidInputError
from hydrahead.runtime.tasks import get_task


def _noisy(users: int, seed: int, *, per_user: int = 10, lift: float = 0.05
           ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    base = [rng.random(per_user) for _ in range(users)]
    return [b + rng.normal(lift, 0.2, per_user) for b in base], base


# ------------------------------------------------------------------------------------ stats
def test_identical_systems_gain_nothing_with_certainty() -> None:
    _, base = _noisy(30, 0)
    assert bootstrap_gain(base, base) == (0.0, 0.0, 0.0)


def test_a_constant_ten_percent_system_gains_ten_percent() -> None:
    _, base = _noisy(30, 1)
    gain, lo, hi = bootstrap_gain([1.1 * b for b in base], base)
    assert gain == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    # an error 10% smaller is a 10% gain where lower is better
    gain, lo, hi = bootstrap_gain([0.9 * b for b in base], base, lower_is_better=True)
    assert (gain, lo, hi) == pytest.approx((0.1, 0.1, 0.1))


def test_the_gain_is_over_the_mean_of_all_questions() -> None:
    # user A: 1 question, system 1.0 vs baseline 0.5; user B: 3 questions, 0.0 vs 0.5 each
    system, baseline = [[1.0], [0.0, 0.0, 0.0]], [[0.5], [0.5, 0.5, 0.5]]
    gain, lo, hi = bootstrap_gain(system, baseline)
    assert gain == pytest.approx((0.25 - 0.5) / 0.5)  # not the mean of the users' gains (0)
    assert lo <= gain <= hi
    assert relative_gain(0.25, 0.5) == pytest.approx(-0.5)
    assert relative_gain(0.4, 0.5, lower_is_better=True) == pytest.approx(0.2)
    assert np.isnan(relative_gain(0.3, 0.0))


def test_the_interval_covers_the_gain_and_shrinks_with_more_users() -> None:
    widths = []
    for users in (15, 240):
        system, base = _noisy(users, 2)
        gain, lo, hi = bootstrap_gain(system, base)
        assert lo < gain < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # about 1/sqrt(16) in theory


def test_the_bootstrap_is_seeded() -> None:
    system, base = _noisy(20, 3)
    assert bootstrap_gain(system, base, seed=7) == bootstrap_gain(system, base, seed=7)
    assert bootstrap_gain(system, base, seed=7) != bootstrap_gain(system, base, seed=8)
    assert bootstrap_gain(system, base, seed=7)[0] == bootstrap_gain(system, base, seed=8)[0]


def test_the_bootstrap_is_fast() -> None:
    systems = [_noisy(60, seed)[0] for seed in range(10)]
    _, base = _noisy(60, 0)
    started = time.perf_counter()
    for system in systems:
        bootstrap_gain(system, base, n=2000)
    assert time.perf_counter() - started < 1.0


def test_the_bootstrap_refuses_unpaired_scores() -> None:
    with pytest.raises(InvalidInputError):
        bootstrap_gain([[1.0, 0.0]], [[1.0]])
    with pytest.raises(InvalidInputError):
        bootstrap_gain([[1.0]], [[1.0], [0.0]])
    with pytest.raises(InvalidInputError):
        bootstrap_gain([], [])
    assert np.isnan(bootstrap_gain([[1.0]], [[0.0]])[0])  # a baseline of 0: no relative gain


def test_paired_wins_and_losses() -> None:
    assert paired_wins_losses([1, 0, 0.5, 0.7], [0, 1, 0.5, 0.6]) == (2, 1)
    assert paired_wins_losses([0.5 + 1e-12], [0.5]) == (0, 0)  # a tie
    with pytest.raises(InvalidInputError):
        paired_wins_losses([1, 0], [1])


def test_question_metric_is_the_primary_metric_per_question() -> None:
    area, subject = get_task("GIT_area"), get_task("GIT_subject")
    assert question_metric(area, "tests", "tests") == 1.0
    assert question_metric(area, None, "tests") == 0.0
    pred, gold = "Fix the flaky test", "fix the test suite"
    assert question_metric(subject, pred, gold) == subject.evaluate([pred], [gold])["rouge-1"]


# ------------------------------------------------------------------- the family report
LABELS = ("tests", "doc", "gitk")


def _results(member: str, correct: dict[str, list[list[bool]]]) -> Results:
    """A run of GIT_area with ``correct[system][user][question]`` (no LLM)."""
    users = len(next(iter(correct.values())))
    per_user = len(next(iter(correct.values()))[0])
    r = Results(meta={"data": "/x/world", "task": "GIT_area", "split": "dev", "users": users,
                      "settings": {"k": 20, "m": 4, "n": 8, "budget": 100, "seed": 0},
                      "simulated": True, "seconds": 1.0, "member": member, "family": True,
                      "protocol": "transfer", "protocol_bundle": f"/b/transfer/{member}",
                      "bases": "untrained", "bundle": "/b"})
    for u in range(users):
        for q in range(per_user):
            gold = LABELS[(u + q) % len(LABELS)]
            r.questions.append({"id": f"{u}-{q}", "user": f"u{u}", "gold": gold})
            for system, table in correct.items():
                pred = gold if table[u][q] else "doc" if gold != "doc" else "tests"
                r.outcomes[system].append(Outcome(pred, float(table[u][q]), 1, 10, 1, 0.1, True))
    return r


def _table(rng: np.random.Generator, p: float, users: int = 6, per_user: int = 5
           ) -> list[list[bool]]:
    return [[bool(x) for x in rng.random(per_user) < p] for _ in range(users)]


@pytest.fixture()
def synthetic_runs() -> dict[str, Results]:
    rng = np.random.default_rng(0)
    runs = {}
    for member, fitted in (("alpha", 0.9), ("beta", 0.5), ("gamma", 0.7)):
        correct = {s: _table(rng, 0.6) for s in SYSTEMS}
        correct["fitted"] = _table(rng, fitted)
        runs[member] = _results(member, correct)
    return runs


def test_the_family_report_puts_the_worst_case_first(synthetic_runs: dict[str, Results],
                                                     tmp_path: Path) -> None:
    task = get_task("GIT_area")
    target = tmp_path / "QUALITY.md"
    other = "<!-- quality:other:X:dev -->\nkept\n<!-- /quality:other:X:dev -->\n"
    target.write_text("# quality\n\n" + other)
    section, files = family.write_family(tmp_path / "out", task, synthetic_runs,
                                         command="hydrahead bench quality --family",
                                         report=target, version="test")
    data = json.loads(files["json"].read_text())
    gains = {m: synthetic_runs[m].summary(task)["systems"]["fitted"]["relative_to_best_baseline"]
             for m in synthetic_runs}
    worst = data["worst_case"]["fitted"]
    assert worst["member"] == min(gains, key=gains.get) == "beta"
    assert worst["gain"] == pytest.approx(min(gains.values()))
    assert worst["mean_gain"] == pytest.approx(np.mean(list(gains.values())))
    beta = synthetic_runs["beta"].summary(task)["systems"]["fitted"]
    assert worst["ci95"] == pytest.approx(beta["relative_to_best_baseline_ci95"])
    assert worst["ci95"][0] <= worst["gain"] <= worst["ci95"][1]
    assert set(data["worst_case"]) == set(SYSTEMS)
    for m, run in synthetic_runs.items():  # per member: the gain over ITS best prompt baseline
        s = run.summary(task)
        row = data["members"][m]
        assert row["best_baseline"] == s["best_baseline"]
        assert row["systems"]["fitted"]["wins"] == s["systems"]["fitted"]["wins"]
        assert row["systems"]["fitted"]["gain"] == pytest.approx(gains[m])
    assert data["meta"]["protocol"] == "transfer"
    assert data["meta"]["members"] == list(synthetic_runs)
    assert SIMULATOR_NOTE in data["note"] and SIMULATOR_NOTE in section
    assert section.index("Worst case over members") < section.index("Per member")
    assert section.index("`alpha`") < section.index("#### `beta`")
    worst_row = next(line for line in section.splitlines() if line.startswith("| **fitted**"))
    assert "`beta`" in worst_row and f"{100 * worst['gain']:+.1f}%" in worst_row
    assert section.startswith("<!-- quality:family:world:GIT_area:dev:transfer -->")
    assert files["md"].read_text() == section
    assert files["json"].name == "quality-family-world-GIT_area-dev-transfer.json"
    text = target.read_text()
    assert "kept" in text and section in text
    family.write_family(tmp_path / "out", task, synthetic_runs, command="again", report=target,
                        version="test")
    assert target.read_text().count("<!-- quality:family:world:GIT_area:dev:transfer -->") == 1


def test_a_member_run_is_named_with_the_member(synthetic_runs: dict[str, Results]) -> None:
    run = synthetic_runs["beta"]
    assert report.section_key(run) == "world:GIT_area:dev:transfer:beta"
    run.meta.update(protocol="untrained", family=False, member="default")
    assert report.section_key(run) == "world:GIT_area:dev"  # a plain run's key is unchanged
    run.meta.update(member="majority")
    assert report.section_key(run) == "world:GIT_area:dev:majority"


# ----------------------------------------------------------------------- protocol bundles
def test_each_protocol_names_its_bundle(tmp_path: Path) -> None:
    given = tmp_path / "given"
    for folder in ("matched/alpha", "transfer/alpha", "loto/GIT_area"):
        (tmp_path / "bases" / folder).mkdir(parents=True)
        (tmp_path / "bases" / folder / "manifest.json").write_text("{}")
    kw = {"given": given, "bases": tmp_path / "bases", "task": "GIT_area"}
    assert family.protocol_bundle("untrained", member="alpha", **kw) == given
    for protocol in ("matched", "transfer"):
        assert family.protocol_bundle(protocol, member="alpha", **kw) == (
            tmp_path / "bases" / protocol / "alpha")
    assert family.protocol_bundle("loto", member="beta", **kw) == (
        tmp_path / "bases" / "loto" / "GIT_area")
    with pytest.raises(InvalidInputError, match=r"matched/beta.*bench/train_family\.sh"):
        family.protocol_bundle("matched", member="beta", **kw)
    with pytest.raises(InvalidInputError, match="needs a member|evaluates a member"):
        family.protocol_bundle("transfer", member=None, **kw)
    with pytest.raises(InvalidInputError, match="--bases"):
        family.protocol_bundle("loto", member="alpha", given=given, bases=None, task="GIT_area")
    with pytest.raises(InvalidInputError, match="unknown protocol"):
        family.protocol_bundle("sideways", member="alpha", **kw)
    assert family.member_of(True, None) == "default" and family.member_of("chatty", None) == (
        "chatty")
    assert family.member_of(False, "http://llm") is None
    assert family.member_of(None, None) == "default"
    assert family.member_names() == list(MEMBERS)
    assert family.member_names(["majority", " nearest", "majority"]) == ["majority", "nearest"]
    with pytest.raises(InvalidInputError, match="no-such-llm"):
        family.member_names(["majority", "no-such-llm"])


def test_the_cli_spells_the_protocols_as_the_evaluation_does() -> None:
    from hydrahead import cli_bench

    assert cli_bench.PROTOCOLS == family.PROTOCOLS


def test_a_missing_protocol_bundle_is_a_clean_cli_error(tmp_path: Path) -> None:
    runner = CliRunner()
    world = tmp_path / "world"
    from hydrahead.evaluation.persona_world import write_world

    write_world(world, train_users=0, dev_users=1)
    base = ["bench", "quality", "--data", str(world), "--task", "GIT_area", "--out",
            str(tmp_path / "out")]
    result = runner.invoke(cli, [*base, "--offline", "--protocol", "matched", "--bases",
                                 str(tmp_path / "bases")])
    assert result.exit_code == 1, result.output
    assert "Error:" in result.output and "Traceback" not in result.output
    assert str(tmp_path / "bases" / "matched" / "default") in result.output
    assert "bench/train_family.sh" in result.output
    result = runner.invoke(cli, [*base, "--offline", "majority", "--protocol", "transfer",
                                 "--bases", str(tmp_path / "bases")])
    assert result.exit_code == 1 and str(tmp_path / "bases" / "transfer" / "majority") in (
        result.output)
    result = runner.invoke(cli, [*base, "--offline", "--protocol", "transfer"])
    assert result.exit_code == 1 and "--bases" in result.output
    result = runner.invoke(cli, [*base, "--llm-url", "http://127.0.0.1:9", "--protocol",
                                 "matched", "--bases", str(tmp_path / "bases")])
    assert result.exit_code == 1 and "member" in result.output
    result = runner.invoke(cli, [*base, "--members", "no-such-llm"])
    assert result.exit_code == 1 and "no-such-llm" in result.output
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------- a real tiny family run
def test_a_tiny_family_run(tmp_path: Path, bundle_dir: Path) -> None:
    from hydrahead.evaluation.persona_world import write_world

    members = ["default", next(m for m in MEMBERS if m != "default")]
    world = write_world(tmp_path / "world", train_users=0, dev_users=2, seed=0)
    target = tmp_path / "QUALITY.md"
    result = CliRunner().invoke(cli, [
        "--bundle", str(bundle_dir), "bench", "quality", "--data", str(world), "--task",
        "GIT_area", "--members", ",".join(members), "--budget", "20", "--no-binary",
        "--out", str(tmp_path / "out"), "--report", str(target)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    data = json.loads((out / "quality-family-world-GIT_area-dev-untrained.json").read_text())
    assert data["meta"]["members"] == members and data["meta"]["simulated"] is True
    assert set(data["members"]) == set(members)
    llms = set()
    for member in members:
        run = json.loads((out / f"quality-world-GIT_area-dev-{member}.json").read_text())
        llms.add(run["meta"]["llm"])  # each run was answered by its own member
        assert run["meta"]["member"] == member and run["meta"]["users"] == 2
        assert len(run["questions"]) == 6
        gain = data["members"][member]["systems"]["fitted"]["gain"]
        summary = run["summary"]["systems"]["fitted"]
        assert gain == pytest.approx(summary["relative_to_best_baseline"], nan_ok=True)
    assert len(llms) == 2
    assert "fitted-binary" not in data["worst_case"] and "fitted" in data["worst_case"]
    section = (out / "quality-family-world-GIT_area-dev-untrained.md").read_text()
    assert "OFFLINE SIMULATED LLM" in section and section in target.read_text()
    assert section.index("Worst case over members") < section.index("Per member")
