"""An asyncio face of :class:`~hydrahead.runtime.personalizer.Personalizer`, for app frameworks.

Every call runs the blocking personalizer in a worker thread (``asyncio.to_thread``), so the
event loop keeps serving while a query is embedded or the LLM answers; calls on one
AsyncPersonalizer run one at a time, in the order they were made. Example::

    async with await AsyncPersonalizer.open("alice", bundle=path, task="GIT_area") as p:
        await p.add([{"id": "c1", "text": "...", "tag": "doc"}])
        answer = await p.ask("Fix the flaky test in t7001")
"""

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from .personalizer import Answer, FitSummary, Personalizer
from .records import Change, Hit, Record

T = TypeVar("T")


class AsyncPersonalizer:
    """Awaitable versions of the :class:`Personalizer` methods (same arguments, same errors).

    Args:
        personalizer: An open personalizer; the AsyncPersonalizer owns it from now on.
    """

    def __init__(self, personalizer: Personalizer) -> None:
        self.sync = personalizer
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, user: str | os.PathLike[str], **kwargs: Any) -> AsyncPersonalizer:
        """:meth:`Personalizer.open` in a worker thread (loading the bundle takes a while)."""
        return cls(await asyncio.to_thread(Personalizer.open, user, **kwargs))

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async with self._lock:
            return await asyncio.to_thread(fn, *args, **kwargs)

    async def add(self, items: Iterable[Record | dict[str, Any]]) -> list[str]:
        return await self._run(self.sync.add, list(items))

    async def upsert(self, items: Iterable[Record | dict[str, Any]]) -> list[str]:
        return await self._run(self.sync.upsert, list(items))

    async def update(self, id: str, **changes: Any) -> Record:
        return await self._run(self.sync.update, id, **changes)

    async def get(self, id: str) -> Record:
        return await self._run(self.sync.get, id)

    async def list(self, limit: int | None = None, offset: int = 0) -> list[Record]:
        return await self._run(self.sync.list, limit, offset)

    # Below the method `list`, a bare `list[...]` would name it: hence `builtins.list`.
    async def search(self, query: str, k: int = 10, **options: Any) -> builtins.list[Hit]:
        return await self._run(self.sync.search, query, k, **options)

    async def history(self, id: str | None = None, limit: int | None = None
                      ) -> builtins.list[Change]:
        return await self._run(self.sync.history, id, limit)

    async def delete(self, ids: Sequence[str]) -> None:
        await self._run(self.sync.delete, list(ids))

    async def delete_all(self) -> int:
        return await self._run(self.sync.delete_all)

    async def ask(self, query: str) -> Answer:
        return await self._run(self.sync.ask, query)

    async def fit(self, budget: int = 200, **options: Any) -> FitSummary:
        return await self._run(self.sync.fit, budget, **options)

    async def feedback(self, query: str, answer: str) -> None:
        await self._run(self.sync.feedback, query, answer)

    async def forget(self) -> None:
        await self._run(self.sync.forget)

    async def close(self) -> None:
        await self._run(self.sync.close)

    async def __aenter__(self) -> AsyncPersonalizer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
