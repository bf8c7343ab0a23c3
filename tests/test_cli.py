"""The ``hydrahead`` command line, command by command, on real files and real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from testing.fault_server import free_port
from testing.synthetic_users import make_user

from hydrahead.cli import cli


@pytest.fixture()
def run(tmp_path: Path, bundle_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HYDRAHEAD_LLM_BASE_URL", raising=False)
    home = tmp_path / "home"

    def invoke(*args: str, ok: bool = True, input: str | None = None):
        result = CliRunner().invoke(
            cli, ["--home", str(home), "--bundle", str(bundle_dir), *args], input=input
        )
        if ok:
            assert result.exit_code == 0, result.output
        return result

    invoke.home = home  # type: ignore[attr-defined]
    return invoke


@pytest.fixture()
def history_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(json.dumps(h) for h in make_user(3)["history"]) + "\n")
    return path


def test_import_search_fit_ask_outbox_forget(run, history_jsonl: Path) -> None:
    out = run("user", "import", "bob", str(history_jsonl), "--task", "GIT_area").output
    assert "imported 90 records for bob" in out
    assert run("user", "list").output.split()[0] == "bob"
    hits = run("user", "search", "bob", "bash completion of branch names", "-k", "3").output
    assert len(hits.strip().splitlines()) == 3

    fit = run("fit", "bob", "--budget", "20", "--offline").output
    assert "20 LLM calls" in fit and "offline simulator" in fit

    ask = run("ask", "bob", "Fix zsh completion of subcommands", "--offline", "--json")
    payload = json.loads(ask.stdout)
    assert payload["simulated"] is True
    assert payload["answer"] in {
        "tests",
        "doc",
        "gitk",
        "completion",
        "config",
        "git-gui",
        "gitweb",
        "git-svn",
        "Makefile",
        "refs",
        "diff",
        "i18n",
        "git-p4",
        "merge-recursive",
        "sequencer",
    }
    assert len(payload["items"]) == 4
    assert payload["prompt"].endswith("Answer:")

    outbox = run("outbox", "bob", "--tail", "1", "--json").output
    last = json.loads(outbox.strip().splitlines()[-1])
    assert json.loads(last["request"])["messages"][0]["content"] == payload["prompt"]

    run("forget", "bob", "--yes")
    assert not (run.home / "users" / "bob").exists()


def test_import_lamp_questions_file(run, tmp_path: Path) -> None:
    questions = [
        {
            "id": "q1",
            "user_id": "u1",
            "input": "Which area tag does this commit relate to? commit: fix the test",
            "profile": [
                {"id": "p1", "text": "fix tests", "tag": "tests"},
                {"id": "p2", "text": "docs typo", "tag": "doc"},
            ],
        },
        {
            "id": "q2",
            "user_id": "u1",
            "input": "commit: more",
            "profile": [
                {"id": "p2", "text": "docs typo", "tag": "doc"},
                {"id": "p3", "text": "gitk font", "tag": "gitk"},
            ],
        },
        {
            "id": "q3",
            "user_id": "u2",
            "input": "commit: x",
            "profile": [{"id": "p9", "text": "other author", "tag": "refs"}],
        },
    ]
    path = tmp_path / "dev_questions.json"
    path.write_text(json.dumps(questions))
    out = run("user", "import", "me", str(path), "--task", "GIT_area", "--lamp-user", "u1").output
    assert "imported 3 records" in out  # p1, p2, p3; u2's profile is not imported
    again = run("user", "import", "me", str(path), "--task", "GIT_area", "--lamp-user", "u1")
    assert "imported 3 records" in again.output  # idempotent: upserts, no duplicates
    bad = run(
        "user", "import", "me", str(path), "--task", "GIT_area", "--lamp-user", "nobody", ok=False
    )
    assert bad.exit_code != 0 and "no questions of LaMP user 'nobody'" in bad.output


def test_errors_are_clear_and_exit_nonzero(run, history_jsonl: Path, tmp_path: Path) -> None:
    r = run("ask", "nobody", "hello", ok=False)
    assert r.exit_code == 1 and "no user 'nobody'" in r.output
    r = run("user", "import", "../evil", str(history_jsonl), "--task", "GIT_area", ok=False)
    assert r.exit_code == 1 and "path separators" in r.output
    r = run("user", "import", "eve", str(history_jsonl), "--task", "LaMP-99", ok=False)
    assert r.exit_code == 1 and "LaMP-2" in r.output  # lists the known tasks
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok", "tag": "doc"}\nnot json\n')
    r = run("user", "import", "eve", str(bad), "--task", "GIT_area", ok=False)
    assert r.exit_code == 1 and "bad.jsonl:2" in r.output
    run("user", "import", "eve", str(history_jsonl), "--task", "GIT_area")
    r = run("ask", "eve", "x", ok=False)  # no endpoint configured
    assert r.exit_code == 1 and "HYDRAHEAD_LLM_BASE_URL" in r.output
    r = run("fit", "eve", "--budget", "-5", ok=False)
    assert r.exit_code == 2 and "Traceback" not in r.output and "-5" in r.output
    existing = tmp_path / "not-empty"
    existing.mkdir()
    (existing / "file").write_text("x")
    r = run("export", "bundle", "--out", str(existing), ok=False)
    assert r.exit_code == 1 and "overwrite" in r.output.lower()


def test_demo_runs_end_to_end(run) -> None:
    out = run("demo", "--budget", "30").output
    assert "SIMULATED LLM" in out and "(already installed)" in out
    assert "| **accuracy** (20 questions) |" in out  # held-out answers before and after fitting
    assert out.count("| ") >= 22 and out.count("prompt that left the device:") == 1


def test_demo_publishes_a_trained_bundle_and_pulls_it_as_an_app_would(
        tmp_path: Path, bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hydrahead.demo import run_demo
    from hydrahead.export.trained import add_trained_bases
    from hydrahead.runtime.bundle import Bundle

    monkeypatch.delenv("HYDRAHEAD_LLM_BASE_URL", raising=False)
    trained = tmp_path / "trained"
    Bundle.open(bundle_dir).copy_to(trained)
    add_trained_bases(trained)  # what `hydrahead export bundle` ships
    lines: list[str] = []
    app_bundle = tmp_path / "app" / "bundle"
    out = run_demo(tmp_path / "home", app_bundle, budget=30, source=trained, echo=lines.append)
    text = "\n".join(lines)
    assert "signature checked" in text and "reranker base: trained" in text
    installed = Bundle.open(app_bundle, verify=True)
    assert (app_bundle.resolve() / "manifest.sig").exists()  # pulled with its signature
    assert installed.fingerprint == Bundle.open(tmp_path / "home" / "demo-publisher" /
                                                "bundle").fingerprint
    assert installed.model("adapter")["trained"] is True
    assert len(out["gold"]) == len(out["before"]) == len(out["after"]) == 20
    assert out["simulated"] is True
    assert f"**{out['accuracy']['after']:.2f}**" in text


def test_serve_offline_serves_http(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hydrahead.cli", "llm", "serve-offline", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = requests.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    timeout=2,
                    json={
                        "model": "x",
                        "n": 2,
                        "temperature": 1.0,
                        "messages": [{"role": "user", "content": "Hello there"}],
                    },
                )
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert r.status_code == 200
        assert r.json()["system_fingerprint"].startswith("hydrahead-offline-simulator")
        assert len(r.json()["choices"]) == 2
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "simulator" in out.lower()


def test_train_labels_fit_export_evaluate(run, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from hydrahead.evaluation.persona_world import write_world
    from hydrahead.runtime.bundle import Bundle

    data = write_world(tmp_path / "world", train_users=2, dev_users=1)
    out = run("train", "labels", "--data", str(data), "--task", "GIT_area", "--budget", "30",
              "--out", str(tmp_path / "labels.npz"), "--work", str(tmp_path / "work"),
              "--offline")
    meta = json.loads(out.stdout[out.stdout.index("{"):])
    assert meta["users"] == 2 and meta["labels"] == "offline simulator"
    out = run("train", "fit", str(tmp_path / "labels.npz"), "--out", str(tmp_path / "trained"),
              "--epochs", "2", "--base-head-epochs", "2")
    assert "reranker:" in out.stdout and "adapter:" in out.stdout
    run("train", "export", str(tmp_path / "trained"), "--out", str(tmp_path / "bundle2"))
    bundle = Bundle.open(tmp_path / "bundle2")
    for role in ("reranker", "adapter"):
        spec = bundle.model(role)
        assert spec["trained"] is True and spec["training"]["data"]["users"] == 2
    assert not (tmp_path / "bundle2" / "encoder.fp32.onnx").exists()  # listed files only
    out = run("--bundle", str(tmp_path / "bundle2"), "train", "evaluate", "--data", str(data),
              "--task", "GIT_area", "--budget", "20", "--offline", "--out",
              str(tmp_path / "eval"))
    assert "| **fitted**" in out.stdout and "SIMULATOR" in out.stdout.upper()


def test_read_only_commands_do_not_create_users(run) -> None:
    for args in (("outbox", "ghost"), ("user", "search", "ghost", "anything")):
        result = run(*args, ok=False)
        assert result.exit_code != 0
        assert "no user 'ghost'" in result.output
    assert not (run.home / "users" / "ghost").exists()


def test_forget_refuses_while_the_user_is_open(run) -> None:
    from testing.fake_encoder import HashingEncoder, sample_items

    from hydrahead.runtime.store import HistoryStore

    with HistoryStore.for_user("held", encoder=HashingEncoder(16), root=run.home) as store:
        store.add(sample_items(3))
        result = run("forget", "--yes", "held", ok=False)
        assert result.exit_code != 0 and "already open" in result.output
        assert len(store) == 3  # still there, still usable
    assert "forgot held" in run("forget", "--yes", "held").output
    assert not (run.home / "users" / "held").exists()


def test_commands_on_unknown_users_create_nothing(run) -> None:
    for args in (("ask", "erin", "hello", "--offline"), ("fit", "erin", "--offline"),
                 ("forget", "nobody", "--yes")):
        result = run(*args, ok=False)
        assert result.exit_code == 1 and "no user" in result.output, result.output
    assert not (run.home / "users").exists() or not list((run.home / "users").iterdir())


def test_json_output_and_ask_options(run, history_jsonl: Path) -> None:
    imported = json.loads(run("user", "import", "jo", str(history_jsonl), "--task", "GIT_area",
                              "--json").output)
    assert imported == {"user": "jo", "imported": 90}
    assert [u["user"] for u in json.loads(run("user", "list", "--json").output)] == ["jo"]
    hits = json.loads(run("user", "search", "jo", "completion of branch names", "-k", "2",
                          "--json").output)
    assert len(hits) == 2 and {"score", "id", "text"} <= set(hits[0])
    fitted = json.loads(run("fit", "jo", "--budget", "12", "--offline", "--json").stdout)
    assert fitted["llm"]["requests_sent"] <= 12 and fitted["llm"]["simulated"]
    asked = json.loads(run("ask", "jo", "Fix the zsh completion", "--offline", "--json",
                           "-k", "6", "-m", "2", "-n", "3", "--temperature", "0.7",
                           "--model", "my-model").stdout)
    assert len(asked["items"]) == 2 and len(asked["candidates"]) <= 4  # 3 samples + greedy
    sent = [json.loads(json.loads(line)["request"])
            for line in run("outbox", "jo", "--tail", "2", "--json").output.splitlines()]
    assert {r["model"] for r in sent} == {"my-model"}
    assert sorted((r["n"], r["temperature"]) for r in sent) == [(1, 0.0), (3, 0.7)]


def test_tasks_lists_what_each_task_needs(run) -> None:
    rows = {row["name"]: row for row in json.loads(run("tasks", "--json").output)}
    assert rows["GIT_area"]["answer_field"] == "tag" and "text" in rows["GIT_area"]["record_fields"]
    assert "GIT_area" in run("tasks").output


def test_a_task_spec_path_is_remembered_absolute(run, history_jsonl: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import hydrahead.runtime

    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    shutil.copy(Path(hydrahead.runtime.__file__).parent / "data" / "tasks" / "GIT_area.json",
                spec_dir / "mine.json")
    monkeypatch.chdir(spec_dir)
    run("user", "import", "sp", str(history_jsonl), "--task", "mine.json")
    monkeypatch.chdir(tmp_path)  # elsewhere: the relative path would no longer resolve
    assert json.loads((run.home / "users" / "sp" / "user.json").read_text())["tasks"] == [
        {"name": "GIT_area", "spec": str(spec_dir / "mine.json")}]
    assert json.loads(run("ask", "sp", "fix the docs", "--offline", "--json").stdout)["answer"]


def test_serve_offline_on_a_busy_port_is_a_clear_error() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["llm", "serve-offline", "--port", str(port)])
    assert result.exit_code == 1 and "cannot listen" in result.output
    assert "Traceback" not in result.output
