"""Labelling at scale: shards of the users labelled apart and merged back give exactly one run's
dataset; datasets of several tasks and LLMs merge (each user keeping its source) and train;
what cannot be trained on together is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hydrahead.cli import cli
from hydrahead.evaluation.persona_world import write_world
from hydrahead.offline.server import OfflineLLMServer
from hydrahead.offline.simulator import SimulatedLLM, SimulatorParams
from hydrahead.runtime.errors import InvalidInputError
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.runtime.pairs import PairSet
from hydrahead.train.labels import (
    Dataset,
    LabelRun,
    build_dataset,
    check_shard,
    load_dataset,
    parse_shard,
    save_dataset,
)
from hydrahead.train.merge import merge_datasets

RUN = LabelRun(budget=30)
ROLES = ("reranker", "adapter")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LaMP-format directory of 3 training users (an odd number: shards of 2 differ)."""
    return write_world(tmp_path_factory.mktemp("world"), train_users=3, dev_users=1)


@pytest.fixture(scope="module")
def one_run(world: Path, bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unsharded dataset of ``world``'s training users (the default simulator)."""
    out = tmp_path_factory.mktemp("one") / "labels.npz"
    with OfflineLLMServer() as server:
        build_dataset(world, "GIT_area", out, bundle=bundle_dir, work=out.parent / "work",
                      llm=LLMConfig.from_env(base_url=server.url), simulated=True, run=RUN,
                      workers=2, progress=False)
    return out


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """A dataset file's arrays, all but the meta."""
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files if k != "meta"}


def _assert_same_arrays(a: Path, b: Path) -> None:
    got, want = _arrays(a), _arrays(b)
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_shards_merged_are_exactly_one_run(world: Path, one_run: Path, bundle_dir: Path,
                                           tmp_path: Path) -> None:
    shards = []
    with OfflineLLMServer() as server:
        for i in range(2):  # as on two machines: each its own working directory
            shards.append(build_dataset(
                world, "GIT_area", tmp_path / f"shard{i}.npz", bundle=bundle_dir,
                work=tmp_path / f"work{i}", llm=LLMConfig.from_env(base_url=server.url),
                simulated=True, run=RUN, shard=(i, 2), workers=2, progress=False))
    whole = load_dataset(one_run)
    assert whole.users == ["persona00000", "persona00001", "persona00002"]
    # user number p of the split is in shard p % 2, and keeps its place p
    assert shards[0].users == ["persona00000", "persona00002"]
    assert shards[1].users == ["persona00001"]
    np.testing.assert_array_equal(shards[0].user_position, [0, 2])
    assert shards[0].meta["shard"] == {"index": 0, "count": 2, "of_users": 3}
    assert whole.meta["shard"] is None

    for order in ([0, 1], [1, 0]):  # in any order
        merged = merge_datasets([tmp_path / f"shard{i}.npz" for i in order])
        save_dataset(tmp_path / "merged.npz", merged)
        _assert_same_arrays(tmp_path / "merged.npz", one_run)
        assert merged.users == whole.users
        assert [len(s["runs"]) for s in merged.sources] == [2]
        assert [r["shard"]["index"] for r in merged.sources[0]["runs"]] == order
    assert merged.meta["requests_sent"] == sum(s.meta["requests_sent"] for s in shards) > 0
    # merging is associative: a merged dataset merges again as its parts
    again = merge_datasets([merge_datasets([shards[1]]), shards[0]])
    save_dataset(tmp_path / "again.npz", again)
    _assert_same_arrays(tmp_path / "again.npz", one_run)


def test_shards_and_users_compose(world: Path, bundle_dir: Path, tmp_path: Path) -> None:
    with OfflineLLMServer() as server:
        d = build_dataset(world, "GIT_area", tmp_path / "s.npz", bundle=bundle_dir,
                          work=tmp_path / "work", llm=LLMConfig.from_env(base_url=server.url),
                          simulated=True, run=LabelRun(budget=10), users=2, shard=(1, 2),
                          progress=False)
    assert d.users == ["persona00001"]  # of the first 2 users, the second
    np.testing.assert_array_equal(d.user_position, [1])


@pytest.mark.parametrize("text", ["2/2", "-1/2", "0/0", "1", "a/b", "1/2/3", ""])
def test_bad_shard_specs_are_refused(text: str) -> None:
    with pytest.raises(InvalidInputError, match="shard"):
        parse_shard(text)


def test_shard_checks() -> None:
    assert parse_shard(" 3/4 ") == (3, 4) and check_shard((0, 1)) == (0, 1)
    for bad in ((True, 2), (0.0, 2), (1,), "0/2"):
        with pytest.raises(InvalidInputError):
            check_shard(bad)  # type: ignore[arg-type]


def test_a_bad_or_empty_shard_labels_nothing(world: Path, bundle_dir: Path,
                                            tmp_path: Path) -> None:
    config = LLMConfig.from_env(base_url="http://127.0.0.1:9")  # never reached
    for shard, message in (((2, 2), "0 <= I < N"), ((3, 4), "holds none")):
        with pytest.raises(InvalidInputError, match=message):
            build_dataset(world, "GIT_area", tmp_path / "x.npz", bundle=bundle_dir,
                          work=tmp_path / "work", llm=config, simulated=False, shard=shard,
                          progress=False)
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "work").exists()


# ------------------------------------------------------------------ merging, on small datasets
def _small(users: list[str], *, task: str = "T", llm: str = "L", dim: int = 4,
           features: int = 2, seed: int = 0, **meta: object) -> Dataset:
    """A dataset of ``users``, two groups each per role, with a run's meta."""
    rng = np.random.default_rng(seed)
    pairs = {role: PairSet() for role in ROLES}
    for role in ROLES:
        for u in users:
            for g in range(2):
                pairs[role].add(rng.normal(size=dim), rng.normal(size=(3, dim)),
                                rng.uniform(size=3), rng.normal(size=(3, features)),
                                query_text=f"{u} {role} {g}", item_texts=["a", "b", "c"])
    group_user = {role: np.repeat(np.arange(len(users)), 2) for role in ROLES}
    names = {role: [f"{role}{i}" for i in range(features)] for role in ROLES}
    return Dataset(list(users), pairs, group_user,
                   {"task": task, "llm": llm, "encoder_fingerprint": "enc1",
                    "bundle_fingerprint": "b1", "features": names, "users": len(users),
                    "requests_sent": 5, **meta})


def test_merging_keeps_each_tasks_and_llms_users_apart() -> None:
    a = _small(["u1", "u2"], task="GIT_area", llm="sim-a")
    b = _small(["u2", "u1"], task="GIT_area", llm="sim-b", seed=1)
    c = _small(["u1"], task="GIT_subject", llm="sim-a", seed=2)
    merged = merge_datasets([a, b, c])
    assert [(s["task"], s["llm"]) for s in merged.sources] == [
        ("GIT_area", "sim-a"), ("GIT_area", "sim-b"), ("GIT_subject", "sim-a")]
    # by source, then by place in the split: the same id under another source is another user
    assert merged.users == ["u1", "u2", "u2", "u1", "u1"]
    np.testing.assert_array_equal(merged.user_source, [0, 0, 1, 1, 2])
    assert merged.meta["requests_sent"] == 15 and merged.meta["users"] == 5
    for role in ROLES:
        np.testing.assert_array_equal(merged.group_source(role), [0] * 4 + [1] * 4 + [2] * 2)
        np.testing.assert_array_equal(merged.group_user[role], np.repeat(np.arange(5), 2))
        # b's second user (u1) comes back with its own groups
        np.testing.assert_array_equal(merged.pairs[role].queries[6], b.pairs[role].queries[2])
        assert merged.pairs[role].query_texts[6] == f"u1 {role} 0"
    assert merged.meta["sources"][1]["runs"][0]["llm"] == "sim-b"


def test_merging_round_trips_through_a_file(tmp_path: Path) -> None:
    merged = merge_datasets([_small(["u1"], llm="x"), _small(["u1"], llm="y", seed=3)])
    save_dataset(tmp_path / "m.npz", merged)
    loaded = load_dataset(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.user_source, [0, 1])
    assert [s["llm"] for s in loaded.sources] == ["x", "y"]
    np.testing.assert_array_equal(loaded.group_source("adapter"), [0, 0, 1, 1])


def test_a_user_twice_under_one_task_and_llm_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="'u2' is labelled twice.*--llm-name"):
        merge_datasets([_small(["u1", "u2"]), _small(["u2", "u3"], seed=1)])
    with pytest.raises(InvalidInputError, match="twice"):  # one file given twice
        merge_datasets([_small(["u1"])] * 2)


def _other_encoder() -> Dataset:
    d = _small(["u2"])
    d.meta["encoder_fingerprint"] = "enc2"
    return d


def _renamed_features() -> Dataset:
    d = _small(["u2"])
    d.meta["features"] = {"reranker": ["x", "y"], "adapter": ["adapter0", "adapter1"]}
    return d


def _unnamed_wider_features() -> Dataset:
    d = _small(["u2"], features=3)
    del d.meta["features"]  # (written before the features were recorded)
    return d


@pytest.mark.parametrize("second, what", [
    (_other_encoder, "different encoders"),
    (lambda: _small(["u2"], dim=5), "vectors of different widths"),
    (_renamed_features, "different named reranker features"),
    (_unnamed_wider_features, "different numbers of named reranker features"),
])
def test_mismatched_encoders_or_features_are_refused(second, what: str) -> None:
    with pytest.raises(InvalidInputError, match=what):
        merge_datasets([_small(["u1"]), second()])


def test_datasets_without_an_encoder_fingerprint_compare_bundles() -> None:
    old, new = _small(["u1"]), _small(["u2"])
    del old.meta["encoder_fingerprint"]
    assert merge_datasets([old, new]).meta["encoder_fingerprint"] == "enc1"
    old.meta["bundle_fingerprint"] = "b2"
    with pytest.raises(InvalidInputError, match="different bundles"):
        merge_datasets([old, new])
    with pytest.raises(InvalidInputError, match="nothing to merge"):
        merge_datasets([])


# ------------------------------------------------------------------ several LLMs train one base
@pytest.mark.slow
def test_labels_of_two_simulated_llms_merge_and_train(world: Path, one_run: Path,
                                                      bundle_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from hydrahead.train.settings import TrainSettings
    from hydrahead.train.trainer import train

    other = SimulatedLLM(SimulatorParams(prior_weight=0.5, example_weight=9.0, label_bias=0.2))
    with OfflineLLMServer(simulator=other) as server:
        build_dataset(world, "GIT_area", tmp_path / "b.npz", bundle=bundle_dir,
                      work=tmp_path / "work", llm=LLMConfig.from_env(base_url=server.url),
                      simulated=True, llm_name="copycat", run=RUN, progress=False)
    settings = TrainSettings(epochs=2, base_head_epochs=2, hidden=16, batch_groups=8)
    report = train([one_run, tmp_path / "b.npz"], tmp_path / "trained", settings)  # merged
    assert [(s["llm"], s["users"]) for s in report["sources"]] == [
        ("offline simulator", 3), ("copycat", 3)]
    for role in ROLES:
        r = report["roles"][role]
        assert r["users"] == 6  # the same ids under two LLMs: six heads
        assert all(n > 0 for n in r["groups_per_source"])
        assert sum(r["groups_per_source"]) == r["groups"]
        assert np.isfinite(min(e["val_loss"] for e in r["joint"]))
        assert (tmp_path / "trained" / f"{role}.npz").exists()
    assert [s["llm"] for s in report["data"]["sources"]] == ["offline simulator", "copycat"]


# ------------------------------------------------------------------ the command line
@pytest.fixture()
def run(bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HYDRAHEAD_LLM_BASE_URL", raising=False)

    def invoke(*args: str, ok: bool = True):
        result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"),
                                          "--bundle", str(bundle_dir), *args])
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


def test_cli_labels_shards_and_merges_them_into_one_run(run, world: Path, one_run: Path,
                                                       tmp_path: Path) -> None:
    for i in range(2):
        run("train", "labels", "--data", str(world), "--task", "GIT_area", "--budget", "30",
            "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}.npz"), "--work",
            str(tmp_path / f"w{i}"), "--offline")
    out = run("train", "merge", str(tmp_path / "m.npz"), str(tmp_path / "s1.npz"),
              str(tmp_path / "s0.npz"))
    assert "GIT_area labelled by offline simulator: 3 users from 2 run(s)" in out.output
    _assert_same_arrays(tmp_path / "m.npz", one_run)

    refused = run("train", "merge", str(tmp_path / "m.npz"), str(tmp_path / "s0.npz"), ok=False)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    refused = run("train", "merge", str(tmp_path / "s0.npz"), str(tmp_path / "s0.npz"),
                  "--overwrite", ok=False)
    assert refused.exit_code == 2 and "also an input" in refused.output
    refused = run("train", "merge", str(tmp_path / "d.npz"), str(tmp_path / "s0.npz"),
                  str(tmp_path / "m.npz"), ok=False)  # shard 0's users twice
    assert refused.exit_code == 1 and "labelled twice" in refused.output
    assert not (tmp_path / "d.npz").exists()


@pytest.mark.parametrize("spec", ["2/2", "x", "0/0"])
def test_cli_refuses_a_bad_shard(run, world: Path, tmp_path: Path, spec: str) -> None:
    result = run("train", "labels", "--data", str(world), "--task", "GIT_area", "--shard", spec,
                 "--out", str(tmp_path / "s.npz"), "--work", str(tmp_path / "w"), "--offline",
                 ok=False)
    assert result.exit_code == 2 and "--shard" in result.output and "shard" in result.output
    assert not (tmp_path / "w").exists()
