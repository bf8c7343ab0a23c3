"""The scripts in examples/ run as an app developer would run them, against the offline
simulator: each answers its held-out questions before and after fitting and scores them."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from hydrahead.runtime.users import read_tasks

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name: str, bundle_dir: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.delenv("HYDRAHEAD_LLM_BASE_URL", raising=False)  # the offline simulator
    monkeypatch.syspath_prepend(str(EXAMPLES))
    main = runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="example")["main"]
    return main(["--bundle", str(bundle_dir), "--home", str(home)])


@pytest.mark.parametrize(("name", "user", "task", "metric", "held_out"), [
    ("notes_tagging", "notes-example", "notes-tagging", "accuracy", 12),
    ("rating", "rating-example", "LaMP-3", "mae", 10),
    ("reply_in_my_style", "reply-example", "reply-in-my-style", "rouge-1", 6),
])
def test_each_example_runs_and_scores_before_and_after_fitting(
        name: str, user: str, task: str, metric: str, held_out: int, bundle_dir: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = _run(name, bundle_dir, tmp_path, monkeypatch)
    printed = capsys.readouterr().out
    assert out["simulated"] is True and "OFFLINE SIMULATED LLM" in printed
    assert len(out["before"]) == len(out["after"]) == len(out["gold"]) == held_out
    assert all(str(a).strip() for a in out["before"] + out["after"])  # every question answered
    assert set(out[metric]) == {"before", "after"}
    assert f"**{out[metric]['after']:.3f}**" in printed  # the table shows the measured figure
    assert [t.name for t in read_tasks(tmp_path / "users" / user)] == [task]
    ledger = [json.loads(line) for line in
              (tmp_path / "users" / user / "outbox.jsonl").read_text().splitlines()]
    assert len(ledger) >= 2 * 2 * held_out  # asked twice (greedy + samples each), and fitted


def test_a_rerun_starts_from_the_same_history(bundle_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    first = _run("notes_tagging", bundle_dir, tmp_path, monkeypatch)
    again = _run("notes_tagging", bundle_dir, tmp_path, monkeypatch)
    assert again["before"] == first["before"] and again["after"] == first["after"]
