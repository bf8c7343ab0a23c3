"""Tasks are bound to users, several per user: recorded when a user is opened from Python, never
silently swapped (another task is added only when asked, with heads, labels and feedback of its
own), answers outside a task's labels refused or kept as context by an explicit choice, and
deletion erasing a record from every task's files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from testing.synthetic_users import make_user

import hydrahead.runtime
from hydrahead.cli import cli
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.errors import InvalidInputError, TaskError
from hydrahead.runtime.importing import import_file
from hydrahead.runtime.labeling import Labeler
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.offline.server import OfflineLLMServer
from hydrahead.runtime.personalizer import Personalizer
from hydrahead.runtime.users import read_tasks, resolve_task

from testing.file_scan import files_holding, text_needles


@pytest.fixture(scope="module")
def server():
    with OfflineLLMServer() as s:
        yield s


@pytest.fixture()
def second_task(tmp_path: Path) -> Path:
    """A task of the app's own (a spec file): GIT_area's labels under another name."""
    spec = json.loads((Path(hydrahead.runtime.__file__).parent / "data" / "tasks" /
                       "GIT_area.json").read_text())
    path = tmp_path / "triage.json"
    path.write_text(json.dumps({**spec, "name": "triage"}))
    return path


def _open(tmp_path: Path, bundle_dir: Path, url: str, **kw) -> Personalizer:
    return Personalizer.open("ann", bundle=Bundle.open(bundle_dir), root=tmp_path,
                             llm=LLMConfig.from_env(base_url=url), **kw)


def test_open_records_the_task_and_refuses_another_unless_added(
        tmp_path: Path, bundle_dir: Path, server, second_task: Path) -> None:
    user_dir = tmp_path / "users" / "ann"
    with _open(tmp_path, bundle_dir, server.url, task="GIT_area") as p:
        p.add(make_user(1)["history"][:40])
    assert [t.name for t in read_tasks(user_dir)] == ["GIT_area"]
    assert resolve_task("ann", None, tmp_path) == "GIT_area"  # `hydrahead ask ann` needs no --task
    with _open(tmp_path, bundle_dir, server.url) as p:  # task=None: the user's one task
        assert p.task.name == "GIT_area"

    with pytest.raises(TaskError, match=r"\['GIT_area'\].*new_task=True"):
        _open(tmp_path, bundle_dir, server.url, task=str(second_task))
    assert [t.name for t in read_tasks(user_dir)] == ["GIT_area"]  # refused: nothing recorded

    with _open(tmp_path, bundle_dir, server.url, task=str(second_task), new_task=True) as p:
        assert p.task.name == "triage" and len(p.list()) == 40  # one history, two tasks
    assert [(t.name, t.spec) for t in read_tasks(user_dir)] == [
        ("GIT_area", "GIT_area"), ("triage", str(second_task.resolve()))]
    with pytest.raises(TaskError, match="several tasks"):
        _open(tmp_path, bundle_dir, server.url)
    with pytest.raises(TaskError, match="several tasks"):
        resolve_task("ann", None, tmp_path)


def test_each_task_keeps_its_own_heads_labels_and_feedback(
        tmp_path: Path, bundle_dir: Path, server, second_task: Path) -> None:
    user = make_user(2)
    heads = tmp_path / "users" / "ann" / "heads"
    with _open(tmp_path, bundle_dir, server.url, task="GIT_area") as p:
        p.add(user["history"])
        p.fit(budget=40, progress=False)
        p.feedback(user["queries"][0]["query"], "doc")
    area_files = sorted(f.name for f in (heads / "GIT_area").iterdir())
    assert "labels.npz" in area_files and "feedback.npz" in area_files
    area_labels = (heads / "GIT_area" / "labels.npz").read_bytes()

    with _open(tmp_path, bundle_dir, server.url, task=str(second_task), new_task=True) as p:
        # a new task starts from the shared base heads, not from GIT_area's fitted ones
        for role in p.heads:
            base = p.heads.base[role].params
            assert all(np.array_equal(v, base[k]) for k, v in p.heads[role].params.items())
        assert not any((heads / "triage").iterdir())
        assert p.stored_feedback() == {} or all(len(v) == 0 for v in p.stored_feedback().values())
        p.fit(budget=40, progress=False)
    assert (heads / "triage" / "labels.npz").exists()
    assert not (heads / "triage" / "feedback.npz").exists()
    assert (heads / "GIT_area" / "labels.npz").read_bytes() == area_labels  # untouched

    # deleting a record erases it from every task's labels (and the rest of the user's files)
    with _open(tmp_path, bundle_dir, server.url, task="GIT_area") as p:
        used = {str(i) for f in ("GIT_area", "triage")
                for i in _label_record_ids(p, heads / f / "labels.npz")}
        victim = sorted(used)[0]
        text = p.get(victim).text
        p.delete([victim])
    assert files_holding(tmp_path, text_needles(text)) == []


def _label_record_ids(p: Personalizer, path: Path) -> list[str]:
    """Record ids a labels file holds (queries and items), read from its arrays."""
    with np.load(path, allow_pickle=False) as arrays:
        return [str(i) for key in arrays.files if key.endswith(("query_id", "item_id"))
                for i in arrays[key] if str(i)]


def test_heads_of_the_one_task_layout_move_into_their_tasks_directory(
        tmp_path: Path, bundle_dir: Path, server) -> None:
    user = make_user(3)
    with _open(tmp_path, bundle_dir, server.url, task="GIT_area") as p:
        p.add(user["history"])
        p.fit(budget=40, progress=False)
        fitted = {r: p.heads[r] is not p.heads.base[r] for r in p.heads}
        probe = user["queries"][0]["query"]
        before = p.ask(probe).answer
    # what an earlier version left: heads directly in heads/, user.json {"task": ...}
    user_dir = tmp_path / "users" / "ann"
    for f in (user_dir / "heads" / "GIT_area").iterdir():
        shutil.move(str(f), user_dir / "heads" / f.name)
    (user_dir / "heads" / "GIT_area").rmdir()
    (user_dir / "user.json").write_text(json.dumps({"task": "GIT_area"}))

    with _open(tmp_path, bundle_dir, server.url) as p:
        assert {r: p.heads[r] is not p.heads.base[r] for r in p.heads} == fitted
        assert p.ask(probe).answer == before
    assert not list((user_dir / "heads").glob("*.npz"))
    assert (user_dir / "heads" / "GIT_area" / "labels.npz").exists()


def test_answers_outside_the_labels_are_refused_or_kept_as_context(
        tmp_path: Path, bundle_dir: Path, server) -> None:
    good = make_user(4)["history"][:30]
    foreign = [{"id": "x1", "text": "Rename the area to its new name", "tag": "net"},
               {"id": "x2", "text": "Teach the old area a trick", "tag": "Doc "}]
    with _open(tmp_path, bundle_dir, server.url, task="GIT_area") as p:
        p.add(good)
        with pytest.raises(InvalidInputError, match=r"2 record\(s\).*'x1': 'net'.*labels='context'"):
            p.add([*good[:0], {"id": "ok", "text": "Fix the docs", "tag": "doc"}, *foreign])
        with pytest.raises(InvalidInputError, match="outside"):
            p.upsert(foreign[:1])
        with pytest.raises(InvalidInputError, match="outside"):
            p.update(good[0]["id"], fields={"tag": "banana"})
        assert len(p.list()) == 30 and p.get(good[0]["id"]).fields["tag"] == good[0]["tag"]

        p.add(foreign, labels="context")  # the explicit choice: kept, as context only
        assert p.get("x1").fields["tag"] == "net"
        assert p.task.answer_of(p.get("x1")) is None  # never a gold answer
        labeler = Labeler(p.store, p.task, p._llm(), settings=p.settings)
        queried = {q.id for q in labeler._latest(1000)}
        assert len(queried) >= 20 and not {"x1", "x2"} & queried

        with pytest.raises(InvalidInputError, match="'banana' is not an answer"):
            p.feedback("Fix the flaky test", "banana")
        assert not (tmp_path / "users" / "ann" / "heads" / "GIT_area" / "feedback.npz").exists()


def test_cli_import_labels_choice_and_user_list_tasks(tmp_path: Path, bundle_dir: Path,
                                                     second_task: Path) -> None:
    home = tmp_path / "home"
    path = tmp_path / "h.jsonl"
    rows = [*make_user(5)["history"][:20], {"id": "x1", "text": "Old area", "tag": "net"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    def run(*args: str):
        return CliRunner().invoke(cli, ["--home", str(home), "--bundle", str(bundle_dir), *args])

    refused = run("user", "import", "cl", str(path), "--task", "GIT_area")
    assert refused.exit_code == 1 and "'x1': 'net'" in refused.output and "--labels context" in (
        refused.output)
    assert "Traceback" not in refused.output
    assert not (home / "users" / "cl" / "history.sqlite3").exists() or json.loads(
        run("user", "list", "--json").output) == [{"user": "cl", "tasks": []}]
    ok = run("user", "import", "cl", str(path), "--task", "GIT_area", "--labels", "context")
    assert ok.exit_code == 0, ok.output
    other = run("user", "import", "cl", str(path), "--task", str(second_task), "--labels",
                "context")
    assert other.exit_code == 1 and "--new-task" in other.output
    assert run("user", "import", "cl", str(path), "--task", str(second_task), "--labels",
               "context", "--new-task").exit_code == 0
    assert json.loads(run("user", "list", "--json").output) == [
        {"user": "cl", "tasks": ["GIT_area", "triage"]}]
    assert "GIT_area, triage" in run("user", "list").output


def test_a_malformed_user_json_is_a_clear_error(tmp_path: Path, bundle_dir: Path,
                                                server) -> None:
    with _open(tmp_path, bundle_dir, server.url, task="GIT_area") as p:
        p.add(make_user(6)["history"][:10])
    config = tmp_path / "users" / "ann" / "user.json"
    for bad in ("[1, 2]", '"GIT_area"', "{", "[" * 100_000, '{"tasks": [{"name": 3}]}'):
        config.write_text(bad)
        with pytest.raises(TaskError, match="user.json is malformed.*records are kept"):
            _open(tmp_path, bundle_dir, server.url, task="GIT_area")
    config.unlink()  # the way out the message names: records are still there
    with _open(tmp_path, bundle_dir, server.url, task="GIT_area") as p:
        assert len(p.list()) == 10
