"""A user's heads as one object: swapping fitted and base heads, and their size on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from testing.synthetic_users import make_user

from hydrahead.offline.server import OfflineLLMServer
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.errors import HeadError, InvalidInputError
from hydrahead.runtime.importing import import_records
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.runtime.personalizer import Personalizer
from hydrahead.runtime.settings import Settings


def _same(a, b) -> bool:
    return all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


def test_using_swaps_heads_for_a_block_and_restores_them(tmp_path: Path, bundle_dir) -> None:
    user = make_user(0)
    with OfflineLLMServer() as server, Personalizer.open(
            "alice", bundle=Bundle.open(bundle_dir), task="GIT_area", root=tmp_path,
            llm=LLMConfig.from_env(base_url=server.url)) as p:
        import_records(p.store, p.task, user["history"])
        assert p.heads.file_bytes() == 0  # nothing fitted yet
        s = p.fit(budget=40, progress=False)
        # fitted on every group (nothing held out, no check): the user's head answers
        p.heads.fit_role("reranker", s.labels.reranker, init=p.heads.base["reranker"])
        assert p.heads.choices.used("reranker")
        fitted = p.heads["reranker"]
        assert not _same(fitted, p.heads.base["reranker"])
        on_disk = sum(f.stat().st_size for f in (tmp_path / "users" / "alice" / "heads" / "GIT_area").glob(
            "*.npz") if f.stem in ("reranker", "adapter"))
        assert p.heads.file_bytes() == on_disk > 0

        query = user["queries"][0]["query"]
        with p.heads.using(fitted=()):
            assert all(p.heads[r] is p.heads.base[r] for r in p.heads)
            base_items = [it.record.id for it in p.rerank(query)]
            with p.heads.using(fitted=("reranker",)):  # nested: the inner choice wins
                assert p.heads["reranker"] is fitted
                assert p.heads["adapter"] is p.heads.base["adapter"]
            assert p.heads["reranker"] is p.heads.base["reranker"]
        assert p.heads["reranker"] is fitted  # restored
        assert [it.record.id for it in p.rerank(query)] == [
            it.record.id for it in p.pipeline.rerank(query, head=fitted)]
        assert [it.record.id for it in p.pipeline.rerank(
            query, head=p.heads.base["reranker"])] == base_items
        assert p.heads.file_bytes() == on_disk  # swapping never writes

        with pytest.raises(HeadError, match="unknown role"):
            with p.heads.using(fitted=("retriever",)):
                pass


def test_a_head_fitted_inside_using_answers_from_then_on(tmp_path: Path, bundle_dir) -> None:
    user = make_user(0)
    with OfflineLLMServer() as server, Personalizer.open(
            "cy", bundle=Bundle.open(bundle_dir), task="GIT_area", root=tmp_path,
            llm=LLMConfig.from_env(base_url=server.url)) as p:
        import_records(p.store, p.task, user["history"])
        s = p.fit(budget=40, progress=False)
        with p.heads.using(fitted=()):
            assert p.heads["reranker"] is p.heads.base["reranker"]
            p.heads.fit_role("reranker", s.labels.reranker, init=p.heads.base["reranker"])
            fitted = p.heads["reranker"]
            assert fitted is not p.heads.base["reranker"]
        assert p.heads["reranker"] is fitted


def test_open_takes_settings_and_single_overrides(tmp_path: Path, bundle_dir) -> None:
    bundle = Bundle.open(bundle_dir)
    with Personalizer.open("bo", bundle=bundle, task="GIT_area", root=tmp_path,
                           settings=Settings(k=10, m=2), n=3) as p:
        assert (p.settings.k, p.settings.m, p.settings.n) == (10, 2, 3)
        assert p.pipeline.settings is p.settings
    with pytest.raises(InvalidInputError, match="unknown setting"):
        Personalizer.open("bo", bundle=bundle, task="GIT_area", root=tmp_path, n_candidates=3)
    with pytest.raises(InvalidInputError):
        Personalizer.open("bo", bundle=bundle, task="GIT_area", root=tmp_path, k=2, m=3)
