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
        p.fit(budget=40, progress=False)
        fitted = {r: p.heads[r] for r in p.heads}
        assert not _same(fitted["adapter"], p.heads.base["adapter"])
        on_disk = sum((tmp_path / "users" / "alice" / "heads" / f"{r}.npz").stat().st_size
                      for r in ("reranker", "adapter"))
        assert p.heads.file_bytes() == on_disk > 0

        query = user["queries"][0]["query"]
        fitted_answer = p.ask(query)
        with p.heads.using(fitted=()):
            assert all(p.heads[r] is p.heads.base[r] for r in p.heads)
            base_answer = p.ask(query)
            with p.heads.using(fitted=("adapter",)):  # nested: the inner choice wins
                assert p.heads["adapter"] is fitted["adapter"]
                assert p.heads["reranker"] is p.heads.base["reranker"]
            assert p.heads["adapter"] is p.heads.base["adapter"]
        assert all(p.heads[r] is fitted[r] for r in p.heads)  # restored
        assert [c.score for c in base_answer.candidates] != [
            c.score for c in fitted_answer.candidates]
        assert p.heads.file_bytes() == on_disk  # swapping never writes

        with pytest.raises(HeadError, match="unknown role"):
            with p.heads.using(fitted=("retriever",)):
                pass


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


def test_a_head_fitted_inside_using_answers_from_then_on(tmp_path: Path, bundle_dir) -> None:
    user = make_user(0)
    with OfflineLLMServer() as server, Personalizer.open(
            "cy", bundle=Bundle.open(bundle_dir), task="GIT_area", root=tmp_path,
            llm=LLMConfig.from_env(base_url=server.url)) as p:
        import_records(p.store, p.task, user["history"])
        with p.heads.using(fitted=()):
            assert p.heads["adapter"] is p.heads.base["adapter"]
            s = p.fit(budget=40, progress=False)
            assert s.reports["adapter"] is not None
            fitted = p.heads["adapter"]
            assert fitted is not p.heads.base["adapter"]
        assert p.heads["adapter"] is fitted
