"""Library hygiene (issue 17, item 5): quiet progress by default, no crash without a stderr,
``outbox --summary``, and ``user search --json`` keeping the score apart from record fields."""

from __future__ import annotations

import inspect
import io
import json
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from testing.synthetic_users import make_user

from hydrahead.cli import cli
from hydrahead.cli_common import show_progress
from hydrahead.offline.server import OfflineLLMServer
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.importing import import_records
from hydrahead.runtime.labeling import Labeler
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.runtime.llm.outbox import Outbox
from hydrahead.runtime.personalizer import Personalizer

BAR = "reranker labels"  # the description of the labeller's first progress bar


@pytest.fixture()
def personalizer(tmp_path: Path, bundle_dir: Path) -> Iterator[Personalizer]:
    with OfflineLLMServer() as server, Personalizer.open(
            "u", bundle=Bundle.open(bundle_dir), task="GIT_area", root=tmp_path,
            llm=LLMConfig.from_env(base_url=server.url)) as p:
        import_records(p.store, p.task, make_user(5)["history"][:40])
        yield p


# ---------------------------------------------------------------------------- progress
def test_progress_bars_are_off_by_default(personalizer: Personalizer,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    assert inspect.signature(Labeler).parameters["progress"].default is False
    personalizer.fit(budget=10)
    assert BAR not in capfd.readouterr().err
    personalizer.fit(budget=12, progress=True)  # asked for: shown
    assert BAR in capfd.readouterr().err


def test_fit_with_progress_and_no_stderr_does_not_raise(
        personalizer: Personalizer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", None)  # pythonw, a windowed PyInstaller app
    summary = personalizer.fit(budget=10, progress=True)
    assert 0 < summary.labels.llm_calls <= 10


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_the_cli_shows_progress_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", _Stream(tty=True))
    assert show_progress() and not show_progress(as_json=True)
    monkeypatch.setattr(sys, "stderr", _Stream(tty=False))  # a pipe, a file, a CI log
    assert not show_progress()
    monkeypatch.setattr(sys, "stderr", None)
    assert not show_progress()


# ---------------------------------------------------------------------------- the CLI
@pytest.fixture()
def run(tmp_path: Path, bundle_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HYDRAHEAD_LLM_BASE_URL", raising=False)
    home = tmp_path / "home"

    def invoke(*args: str):
        result = CliRunner().invoke(cli, ["--home", str(home), "--bundle", str(bundle_dir),
                                          *args])
        assert result.exit_code == 0, result.output
        return result

    invoke.home = home  # type: ignore[attr-defined]
    return invoke


def test_fit_from_the_cli_off_a_terminal_shows_no_bar(run, tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    history.write_text("".join(json.dumps(h) + "\n" for h in make_user(5)["history"][:40]))
    run("user", "import", "cy", str(history), "--task", "GIT_area")
    result = run("fit", "cy", "--budget", "10", "--offline")
    assert "LLM calls" in result.stdout and BAR not in result.stderr


def test_user_search_json_keeps_the_score_apart_from_a_score_field(run, tmp_path: Path) -> None:
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "r1", "text": "Great kettle, boils fast and quietly.", "score": "5"},
        {"id": "r2", "text": "The handle broke after a week.", "score": "1"},
    ]))
    run("user", "import", "rae", str(reviews), "--task", "LaMP-3")
    hits = json.loads(run("user", "search", "rae", "a kettle that boils fast", "-k", "2",
                          "--json").output)
    assert [h["id"] for h in hits] == ["r1", "r2"]
    assert hits[0]["fields"] == {"score": "5"} and hits[1]["fields"] == {"score": "1"}
    assert all(isinstance(h["score"], float) and -1.0 <= h["score"] <= 1.0 for h in hits)
    assert hits[0]["score"] > hits[1]["score"]  # the similarity, not the rating
    assert hits[0]["text"].startswith("Great kettle") and "timestamp" in hits[0]


def test_outbox_summary_totals_per_day_and_model(run, tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    history.write_text("".join(json.dumps(h) + "\n" for h in make_user(5)["history"][:40]))
    run("user", "import", "ola", str(history), "--task", "GIT_area")
    for query in ("Fix the zsh completion", "Document the new config key"):
        run("ask", "ola", query, "--offline", "--model", "small")
    ledger = Outbox(run.home / "users" / "ola" / "outbox.jsonl")
    asked = list(ledger.records())  # the real ledger of the two asks: 4 requests today
    assert len(asked) == 4
    # Two requests of another day and model, recorded as the client records them.
    for status, usage in ((200, {"prompt_tokens": 100, "completion_tokens": 7}), (500, None)):
        ledger.record(url="http://llm/v1/chat/completions", attempt=1,
                      request=json.dumps({"model": "big", "messages": []}).encode(),
                      started=datetime(2026, 12, 1, 23, 59, tzinfo=timezone.utc), status=status,
                      response="{}", bytes_received=2, error=None, elapsed_ms=1.0, usage=usage)

    totals = json.loads(run("outbox", "ola", "--summary", "--json").output)
    today = asked[0]["time"][:10]
    prompt = sum(r["usage"]["prompt_tokens"] for r in asked)
    completion = sum(r["usage"]["completion_tokens"] for r in asked)
    assert (totals["records"], totals["failed"]) == (6, 1)
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (prompt + 100, completion + 7)
    assert totals["by_day_model"] == sorted([
        {"day": "2026-12-01", "model": "big", "records": 2, "answered_2xx": 1, "failed": 1,
         "bytes_sent": 2 * len(b'{"model": "big", "messages": []}'), "bytes_received": 4,
         "prompt_tokens": 100, "completion_tokens": 7},
        {"day": today, "model": "small", "records": 4, "answered_2xx": 4, "failed": 0,
         "bytes_sent": sum(r["bytes_sent"] for r in asked),
         "bytes_received": sum(r["bytes_received"] for r in asked),
         "prompt_tokens": prompt, "completion_tokens": completion},
    ], key=lambda row: (row["day"], row["model"]))
    text = run("outbox", "ola", "--summary").output
    assert f"6 requests (1 without a 2xx answer), {prompt + 100} prompt" in text
    rows = sorted(line.split() for line in text.splitlines()[-2:])
    assert rows == sorted([["2026-12-01", "big", "2", "100", "7"],
                           [today, "small", "4", str(prompt), str(completion)]])


def test_the_outbox_is_bounded_and_its_summary_still_counts_every_request(
        tmp_path: Path) -> None:
    ledger = Outbox(tmp_path / "outbox.jsonl", max_bytes=8192, fsync=False)
    sent = []
    for i in range(120):  # ~330 bytes each: about 40 KB in all, five times the bound
        day = datetime(2026, 11, 28 + i // 40, 12, tzinfo=timezone.utc)
        rec = ledger.record(url="http://llm/v1/chat/completions", attempt=1,
                            request=json.dumps({"model": "m", "messages": [
                                {"role": "user", "content": f"secret note {i} " + "x" * 150}]
                            }).encode(), started=day, status=200, response="{}",
                            bytes_received=2, error=None, elapsed_ms=1.0,
                            usage={"prompt_tokens": 10 + i, "completion_tokens": 1})
        sent.append(rec)
        assert ledger.path.stat().st_size <= 8192
    kept = list(ledger.records())
    assert kept == sent[-len(kept):] and 10 < len(kept) < 40  # the newest, as written
    totals = ledger.summary()
    assert totals["records"] == 120 and totals["dropped_records"] == 120 - len(kept)
    assert totals["prompt_tokens"] == sum(10 + i for i in range(120))
    assert [(r["day"], r["records"]) for r in totals["by_day_model"]] == [
        ("2026-11-28", 40), ("2026-11-29", 40), ("2026-11-30", 40)]
    archived = (tmp_path / "outbox.totals.json").read_text()
    assert "secret" not in archived and "content" not in archived  # counts only, no text
    for bad in ("[1, 2]", "{", '{"by_day_model": [{"day": 1}]}', "[" * 100_000):
        (tmp_path / "outbox.totals.json").write_text(bad)  # malformed: counted from the file only
        assert ledger.summary()["records"] == len(kept)
    assert ledger.erase({"r1": "secret note 119"}) == 0  # entries not listing r1 keep their words
    with pytest.raises(ValueError, match="4096"):
        Outbox(tmp_path / "o.jsonl", max_bytes=100)


# ---------------------------------------------------------------------------- extras
def test_rouge_is_an_extra_that_generation_tasks_name_when_absent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    from hydrahead.runtime.tasks import base, get_task

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("rouge-score") for d in project["dependencies"])
    assert project["optional-dependencies"]["generation"] == ["rouge-score>=0.1.2"]
    subject = get_task("GIT_subject")
    monkeypatch.setattr(base, "_SCORER", None)
    monkeypatch.setitem(sys.modules, "rouge_score", None)  # as if not installed
    with pytest.raises(ImportError, match=r"generation tasks.*hydrahead\[generation\]"):
        subject.rouge("add tests", "add new tests")
    assert get_task("GIT_area").evaluate(["doc"], ["doc"])["accuracy"] == 1.0  # no ROUGE needed
