"""The LangChain retriever over a user's history, with the real langchain-core: sync and async,
filters, the user's reranker, record fields kept apart from the score, and the ImportError that
names the extra when langchain-core is missing."""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path

import pytest
from testing.synthetic_users import make_user

pytest.importorskip("langchain_core")

from langchain_core.documents import Document  # noqa: E402

from hydrahead.runtime.async_personalizer import AsyncPersonalizer  # noqa: E402
from hydrahead.runtime.bundle import Bundle  # noqa: E402
from hydrahead.runtime.errors import InvalidInputError  # noqa: E402
from hydrahead.runtime.integrations.langchain import HistoryRetriever  # noqa: E402
from hydrahead.runtime.personalizer import Personalizer  # noqa: E402

QUERY = "Fix the zsh completion of branch names"


@pytest.fixture()
def personalizer(tmp_path: Path, bundle_dir: Path):
    with Personalizer.open("lc", bundle=Bundle.open(bundle_dir), task="GIT_area",
                           root=tmp_path) as p:
        p.add(make_user(2)["history"][:60])
        p.add([{"id": "scored", "text": "Fix the zsh completion of branch names again",
                "tag": "completion", "score": 99}])
        yield p


def test_invoke_returns_the_users_nearest_records_as_documents(personalizer) -> None:
    retriever = HistoryRetriever(source=personalizer, k=5)
    docs = retriever.invoke(QUERY)
    hits = personalizer.search(QUERY, k=5)
    assert all(isinstance(d, Document) for d in docs)
    assert [(d.id, d.page_content, d.metadata["score"]) for d in docs] == [
        (h.record.id, h.record.text, pytest.approx(h.score)) for h in hits]
    top = docs[0]
    assert top.id == "scored" and top.metadata["fields"]["score"] == 99  # kept apart
    assert top.metadata["score"] < 1.01 and top.metadata["fields"]["tag"] == "completion"
    same_store = HistoryRetriever(source=personalizer.store, k=5).invoke(QUERY)
    assert [d.id for d in same_store] == [d.id for d in docs]


def test_filter_threshold_and_the_users_reranker(personalizer) -> None:
    docs = HistoryRetriever(source=personalizer, k=50,
                            filter={"tag": {"$in": ["doc", "tests"]}}).invoke(QUERY)
    assert docs and {d.metadata["fields"]["tag"] for d in docs} <= {"doc", "tests"}
    close = HistoryRetriever(source=personalizer, k=50, threshold=0.5).invoke(QUERY)
    assert all(d.metadata["score"] >= 0.5 for d in close)
    ranked = HistoryRetriever(source=personalizer, personalized=True).invoke(QUERY)
    expected = personalizer.rerank(QUERY)
    assert [(d.id, d.metadata["score"]) for d in ranked] == [
        (it.record.id, pytest.approx(it.rerank_score)) for it in expected]
    assert len(ranked) == personalizer.settings.m
    with pytest.raises(InvalidInputError, match="Personalizer"):
        HistoryRetriever(source=personalizer.store, personalized=True)
    with pytest.raises(InvalidInputError, match="no filter"):
        HistoryRetriever(source=personalizer, personalized=True, filter={"tag": "doc"})


def test_ainvoke_with_an_async_personalizer_and_a_sync_source(personalizer) -> None:
    sync_docs = HistoryRetriever(source=personalizer, k=4).invoke(QUERY)
    ranked = HistoryRetriever(source=personalizer, personalized=True).invoke(QUERY)

    async def main() -> tuple[list, list, list]:
        ap = AsyncPersonalizer(personalizer)
        return (await HistoryRetriever(source=ap, k=4).ainvoke(QUERY),
                await HistoryRetriever(source=ap, personalized=True).ainvoke(QUERY),
                await HistoryRetriever(source=personalizer, k=4).ainvoke(QUERY))

    from_async, ranked_async, from_sync_source = asyncio.run(main())
    assert [d.id for d in from_async] == [d.id for d in sync_docs] == [
        d.id for d in from_sync_source]
    assert [d.id for d in ranked_async] == [d.id for d in ranked]


def test_without_langchain_core_the_error_names_the_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "langchain_core", None)
    monkeypatch.delitem(sys.modules, "hydrahead.runtime.integrations.langchain")
    with pytest.raises(ImportError, match=r"hydrahead\[langchain\]"):
        importlib.import_module("hydrahead.runtime.integrations.langchain")
