"""A LangChain retriever over one user's history (``pip install "hydrahead[langchain]"``).

    from hydrahead.runtime.integrations.langchain import HistoryRetriever

    with Personalizer.open("alice", bundle=..., task="GIT_area") as p:
        retriever = HistoryRetriever(source=p, k=4)              # dense top k
        personal = HistoryRetriever(source=p, personalized=True)  # the user's reranker's top m
        docs = retriever.invoke("flaky test in t7001")            # or: await ....ainvoke(...)

Each hit becomes a ``Document`` whose ``id`` is the record id, ``page_content`` its text and
``metadata`` ``{"fields": ..., "score": ..., "timestamp": ...}`` (the record's own fields kept
apart, so a field named ``score`` never hides the similarity). ``personalized`` ranks the
personalizer's ``k`` nearest records with the user's reranker (shared base + their head) and
returns its top ``m``, as :meth:`Personalizer.ask` would put them in a prompt; ``score`` is then the
reranker's. Nothing leaves the device: retrieval is local.

The source is a :class:`~hydrahead.runtime.store.HistoryStore`, a
:class:`~hydrahead.runtime.personalizer.Personalizer` or an
:class:`~hydrahead.runtime.async_personalizer.AsyncPersonalizer`; with the latter, ``ainvoke``
awaits its own coroutines (they never wait behind an ask or fit in flight).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .._optional import require
from ..ask_pipeline import RankedItem
from ..async_personalizer import AsyncPersonalizer
from ..errors import InvalidInputError
from ..personalizer import Personalizer
from ..records import Hit, Record
from ..store import HistoryStore

require("langchain_core", "langchain")

from langchain_core.callbacks import (  # noqa: E402
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402
from pydantic import ConfigDict  # noqa: E402


class HistoryRetriever(BaseRetriever):
    """Retrieve a user's history records as LangChain documents (see the module docstring).

    Attributes:
        source: The user's store, personalizer or async personalizer.
        k: Records retrieved (with ``personalized``, the personalizer's settings decide: its
            ``k`` candidates, its reranker's top ``m``).
        filter: A dict filter on record fields (:mod:`hydrahead.runtime.record_filter`).
        threshold: Only records at least this similar to the query (cosine, -1 to 1).
        personalized: Rank with the user's reranker and return its top ``m``
            (a Personalizer or AsyncPersonalizer only).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    source: HistoryStore | Personalizer | AsyncPersonalizer
    k: int = 4
    filter: dict[str, Any] | None = None
    threshold: float | None = None
    personalized: bool = False

    def __init__(self, **fields: Any) -> None:
        super().__init__(**fields)
        if self.personalized and isinstance(self.source, HistoryStore):
            raise InvalidInputError("personalized retrieval needs a Personalizer (the user's "
                                    "reranker), not a bare HistoryStore")
        if self.personalized and (self.filter is not None or self.threshold is not None):
            raise InvalidInputError("personalized retrieval takes no filter or threshold: it "
                                    "ranks what ask() would")

    def _get_relevant_documents(self, query: str, *,
                                run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        source = self.source.sync if isinstance(self.source, AsyncPersonalizer) else self.source
        if self.personalized:
            assert isinstance(source, Personalizer)
            return _ranked(source.rerank(query))
        return _hits(source.search(query, k=self.k, filter=self.filter,
                                   threshold=self.threshold))

    async def _aget_relevant_documents(
            self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        if isinstance(self.source, AsyncPersonalizer):
            if self.personalized:
                return _ranked(await self.source.rerank(query))
            return _hits(await self.source.search(query, k=self.k, filter=self.filter,
                                                  threshold=self.threshold))
        return await asyncio.to_thread(self._get_relevant_documents, query,
                                       run_manager=run_manager.get_sync())


def _document(record: Record, score: float) -> Document:
    return Document(id=record.id, page_content=record.text,
                    metadata={"fields": dict(record.fields), "score": float(score),
                              "timestamp": record.timestamp})


def _hits(hits: Sequence[Hit]) -> list[Document]:
    return [_document(h.record, h.score) for h in hits]


def _ranked(items: Sequence[RankedItem]) -> list[Document]:
    return [_document(it.record, it.rerank_score) for it in items]
