"""Trained bases in a bundle: server-side labels made by the device's code, bases exported as
parity-gated ONNX graphs, and user heads bound to the base they read (a changed base refits
them from stored labels with no LLM request; an unchanged one keeps them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from testing.synthetic_users import make_user

from hydrahead.evaluation.persona_world import write_world
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.encoder import Encoder
from hydrahead.runtime.errors import HeadError
from hydrahead.runtime.featurizer import OnnxFastBase, base_fingerprint, load_featurizer
from hydrahead.runtime.importing import import_records
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.offline.server import OfflineLLMServer
from hydrahead.runtime.pair_base import PairBase
from hydrahead.runtime.personalizer import Personalizer

pytest.importorskip("torch")
pytest.importorskip("onnx")

from hydrahead.export.bases import GAINS, write_base  # noqa: E402
from hydrahead.train.labels import LabelRun, build_dataset, load_dataset  # noqa: E402


@pytest.fixture()
def bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


def _other_adapter_base(dim: int) -> PairBase:
    """A different adapter base (random features on), standing in for a trained one."""
    return PairBase.untrained(dim=dim, hidden=64, seed=5, features=GAINS["adapter"], gain=0.5)


def _other_reranker_base(dim: int) -> PairBase:
    """A different reranker base, likewise."""
    return PairBase.untrained(dim=dim, hidden=64, seed=5, features=GAINS["reranker"], gain=0.5)


def _open(root: Path, bundle: Path, url: str) -> Personalizer:
    return Personalizer.open("alice", bundle=bundle, task="GIT_area", root=root,
                             llm=LLMConfig.from_env(base_url=url))


def test_a_changed_base_refits_its_heads_from_stored_labels_with_no_request(
        bundle_copy: Path, tmp_path: Path) -> None:
    with OfflineLLMServer() as server:
        with _open(tmp_path, bundle_copy, server.url) as p:
            import_records(p.store, p.task, make_user(0)["history"])
            s = p.fit(budget=40, progress=False)
            # this user's adapter labels teach nothing (every candidate set is right), so the
            # reranker is the role with a head to refit
            assert s.reports["adapter"] is None and s.reports["reranker"] is not None
            before = {r: p.heads.own(r).params for r in ("reranker", "adapter")}
        sent = len(server.captured)

        bundle = write_base(bundle_copy, "reranker", _other_reranker_base(384),
                            training={"data": "test"})
        assert bundle.model("reranker")["trained"] is True
        assert bundle.model("reranker")["parity"]["fp32"]["max_hidden_error"] < 1e-4
        with _open(tmp_path, bundle_copy, server.url) as p:
            assert list(p.heads.refitted) == ["reranker"]  # the adapter base did not change
            assert p.heads.refitted["reranker"] is not None
            for name, value in before["adapter"].items():
                np.testing.assert_array_equal(p.heads.own("adapter").params[name], value)
            assert any(not np.array_equal(p.heads.own("reranker").params[k], v)
                       for k, v in before["reranker"].items())
            assert isinstance(p.heads.featurizers["reranker"], OnnxFastBase)
            assert p.ask(make_user(0)["queries"][0]["query"]).answer is not None
        assert len(server.captured) == sent + 2  # the ask only: the refit sent nothing

        with _open(tmp_path, bundle_copy, server.url) as p:  # refitted heads are kept
            assert p.heads.refitted == {}
        stamp = np.load(tmp_path / "users" / "alice" / "heads" / "GIT_area" / "reranker.npz")
        assert str(stamp["base_fingerprint"]) == base_fingerprint(Bundle.open(bundle_copy),
                                                                  "reranker")


def test_a_changed_base_without_stored_labels_opens_with_base_heads_until_a_fit(bundle_copy: Path,
                                                             tmp_path: Path) -> None:
    with OfflineLLMServer() as server:
        with _open(tmp_path, bundle_copy, server.url) as p:
            import_records(p.store, p.task, make_user(0)["history"])
            p.fit(budget=40, progress=False)
        (tmp_path / "users" / "alice" / "heads" / "GIT_area" / "labels.npz").unlink()
        write_base(bundle_copy, "reranker", _other_reranker_base(384))
        with _open(tmp_path, bundle_copy, server.url) as p:  # never stranded: base heads
            assert p.heads.stale == ["reranker"] and p.heads.refitted == {}
            assert p.heads.own("reranker").params.keys() == p.heads.base["reranker"].params.keys()
            for k, v in p.heads.base["reranker"].params.items():
                np.testing.assert_array_equal(p.heads.own("reranker").params[k], v)
            with pytest.raises(HeadError, match="hydrahead fit"):
                p.refit_from_labels(["reranker"])
            sent = len(server.captured)
            p.fit(budget=40, progress=False)
            assert len(server.captured) == sent  # the response cache answered every request
            assert p.heads.stale == []
        with _open(tmp_path, bundle_copy, server.url) as p:
            assert p.heads.stale == [] and p.heads.refitted == {}


def test_deleted_records_leave_the_refit(bundle_copy: Path, tmp_path: Path) -> None:
    with OfflineLLMServer() as server:
        with _open(tmp_path, bundle_copy, server.url) as p:
            import_records(p.store, p.task, make_user(0)["history"])
            s = p.fit(budget=40, progress=False)
            query_ids = {i for i in s.labels.reranker.query_ids if i}
            gone = p.store.get(sorted(query_ids)[0])
            p.delete(sorted(query_ids))
        labels = (tmp_path / "users" / "alice" / "heads" / "GIT_area" / "labels.npz").read_bytes()
        with np.load(tmp_path / "users" / "alice" / "heads" / "GIT_area" / "labels.npz") as npz:
            texts = [str(t) for k in npz.files if k.endswith("_text") for t in npz[k]]
        assert not any(gone.text in t for t in texts)  # the deleted text left the labels too
        assert labels
        write_base(bundle_copy, "reranker", PairBase.untrained(
            dim=384, hidden=64, seed=9, features=GAINS["reranker"], gain=0.5))
        with _open(tmp_path, bundle_copy, server.url) as p:
            # every reranker label's query was deleted: nothing is left to fit on
            assert p.heads.refitted == {"reranker": None}


def test_server_labels_are_the_devices_and_a_rerun_sends_nothing(bundle_dir: Path,
                                                                 tmp_path: Path) -> None:
    data = write_world(tmp_path / "world", train_users=2, dev_users=1)
    run = LabelRun(budget=30)
    with OfflineLLMServer() as server:
        config = LLMConfig.from_env(base_url=server.url)
        first = build_dataset(data, "GIT_area", tmp_path / "labels.npz", bundle=bundle_dir,
                              work=tmp_path / "work", llm=config, simulated=True,
                              run=run, workers=2, progress=False)
        sent = len(server.captured)
        again = build_dataset(data, "GIT_area", tmp_path / "again.npz", bundle=bundle_dir,
                              work=tmp_path / "work", llm=config, simulated=True,
                              run=run, workers=2, progress=False)
        assert len(server.captured) == sent  # resumed from the response caches
    assert first.meta["users"] == 2 and first.meta["simulated"] is True
    assert first.meta["labels"] == "offline simulator"
    assert 0 < first.meta["requests_sent"] == sent and again.meta["requests_sent"] == 0
    loaded = load_dataset(tmp_path / "labels.npz")
    for role in ("reranker", "adapter"):
        pairs = loaded.pairs[role]
        assert len(pairs) > 0 and set(loaded.group_user[role]) == {0, 1}
        assert all(0.0 <= y.min() and y.max() <= 1.0 for y in pairs.labels)
        assert pairs.docs[0].shape[1] == Encoder(Bundle.open(bundle_dir)).dim
        np.testing.assert_array_equal(np.concatenate(pairs.labels),
                                      np.concatenate(again.pairs[role].labels))
    # the users' own questions come first among the labelling queries (no record id)
    assert loaded.pairs["adapter"].query_ids[0] is None


def test_the_bundle_names_each_roles_featurizer(bundle_copy: Path) -> None:
    bundle = Bundle.open(bundle_copy)
    for role in ("reranker", "adapter"):
        featurizer = load_featurizer(bundle, role)
        assert featurizer.kind == "pair-base-onnx"
        assert featurizer.fingerprint == base_fingerprint(bundle, role)
    before = base_fingerprint(bundle, "reranker")
    write_base(bundle_copy, "adapter", _other_adapter_base(384))
    assert base_fingerprint(Bundle.open(bundle_copy), "reranker") == before


def test_cross_mode_trains_exports_and_runs_on_the_device(bundle_dir: Path, bundle_copy: Path,
                                                          tmp_path: Path) -> None:
    from hydrahead.export.cross_base import write_cross_base
    from hydrahead.runtime.featurizer import OnnxCrossBase
    from hydrahead.train.settings import TrainSettings
    from hydrahead.train.trainer import train

    data = write_world(tmp_path / "world", train_users=2, dev_users=1)
    with OfflineLLMServer() as server:
        config = LLMConfig.from_env(base_url=server.url)
        dataset = build_dataset(data, "GIT_area", tmp_path / "labels.npz", bundle=bundle_dir,
                                work=tmp_path / "work", llm=config, simulated=True,
                                run=LabelRun(budget=80), progress=False)
        # max_groups=6 caps both roles (the adapter's informative groups, where candidates
        # differ, are a minority of what the simulator gives: 80 requests leave enough).
        settings = TrainSettings(mode="cross", epochs=1, base_head_epochs=3, max_groups=6,
                                 max_length=48, batch_groups=3)
        report = train(dataset, tmp_path / "trained", settings)
        assert report["mode"] == "cross"
        for role in ("reranker", "adapter"):
            assert report["roles"][role]["groups"] == 6
            bundle = write_cross_base(bundle_copy, role, tmp_path / "trained" / f"{role}.cross",
                                      training={"data": dataset.meta})
            spec = bundle.model(role)
            assert spec["kind"] == "pair-cross-onnx" and spec["trained"] is True
            assert spec["parity"]["fp32"]["max_score_error"] < 1e-3  # the gate ran
        with _open(tmp_path / "home", bundle_copy, server.url) as p:
            assert all(isinstance(f, OnnxCrossBase) for f in p.heads.featurizers.values())
            import_records(p.store, p.task, make_user(0)["history"])
            s = p.fit(budget=30, progress=False)
            assert s.reports["adapter"] is not None or s.reports["reranker"] is not None
            answer = p.ask(make_user(0)["queries"][0]["query"])
            assert answer.answer is not None and len(answer.items) == p.settings.m


def test_the_shipped_bases_go_into_a_bundle_and_bundle_info_says_what_they_learned_from(
        bundle_copy: Path, bundle_dir: Path, tmp_path: Path) -> None:
    import json as _json

    from click.testing import CliRunner

    from hydrahead.cli import cli
    from hydrahead.export.trained import SHIPPED_BASES, add_trained_bases
    from hydrahead.runtime.errors import ExportError

    def info(bundle: Path) -> dict:
        result = CliRunner().invoke(cli, ["--bundle", str(bundle), "bundle", "info", "--json"])
        assert result.exit_code == 0, result.output
        return _json.loads(result.output)

    assert info(bundle_dir)["bases"] == {"reranker": {"trained": False},
                                         "adapter": {"trained": False}}
    report = _json.loads((SHIPPED_BASES / "training.json").read_text())
    sources = report["data"]["sources"]
    tasks = sorted({source["task"] for source in sources})
    assert add_trained_bases(bundle_copy) == list(report["roles"]) == ["reranker", "adapter"]
    bundle = Bundle.open(bundle_copy, verify=True)
    bases = info(bundle_copy)["bases"]
    for role in ("reranker", "adapter"):
        assert bundle.model(role)["trained"] is True
        assert base_fingerprint(bundle, role) != base_fingerprint(Bundle.open(bundle_dir), role)
        assert bases[role]["trained"] is True
        assert bases[role]["tasks"] == tasks and {"GIT_area", "GIT_subject"} <= set(tasks)
        assert len(bases[role]["labels_from"]) >= 6  # several members of the simulator family
        assert set(bases[role]["dev"]["tasks"]) == {"GIT_area", "GIT_subject"}  # dev.json
    text = CliRunner().invoke(cli, ["--bundle", str(bundle_copy), "bundle", "info"]).output
    assert (f"trained on {report['data']['users']} labelled user histories "
            f"({len(sources)} (task, LLM) sources)") in text
    assert ", ".join(tasks) in text
    assert "fitted vs best prompt baseline worst" in text and "OFFLINE SIMULATOR" in text

    with pytest.raises(ExportError, match="--untrained"):
        add_trained_bases(bundle_copy, tmp_path / "no-bases-here")
