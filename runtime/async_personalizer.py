"""An asyncio face of :class:`~hydrahead.runtime.personalizer.Personalizer`, for app frameworks.

Every call runs the blocking personalizer in a worker thread (``asyncio.to_thread``), so the
event loop keeps serving while a query is embedded or the LLM answers. Calls that change the
user's state (add, update, delete, ask, fit, feedback, forget, close) run one at a time, in the
order they were made. Reads (get, list, search, history) never wait behind them: each is one
call of the store, atomic under the store's own lock, so a read during an ask or a fit answers
at once from the history as it is at that moment.

A worker thread cannot be stopped. When an awaiting task is cancelled, its worker runs to the
end, and the next call that changes state (``close()`` included) waits for it; ``close()`` also
waits for the reads in flight, so that no worker touches the store after it returns.
Example::

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

from .ask_pipeline import RankedItem
from .personalizer import Answer, FitSummary, Personalizer
from .errors import StoreError
from .records import Change, Hit, Record

T = TypeVar("T")


class AsyncPersonalizer:
    """Awaitable versions of the :class:`Personalizer` methods (same arguments, same errors).

    Args:
        personalizer: An open personalizer; the AsyncPersonalizer owns it from now on.
    """

    def __init__(self, personalizer: Personalizer) -> None:
        self.sync = personalizer
        self._lock = asyncio.Lock()  # one state-changing call at a time
        self._reads: set[asyncio.Future[Any]] = set()  # reads in flight
        self._closing = False

    @classmethod
    async def open(cls, user: str | os.PathLike[str], **kwargs: Any) -> AsyncPersonalizer:
        """:meth:`Personalizer.open` in a worker thread (loading the bundle takes a while)."""
        return cls(await asyncio.to_thread(Personalizer.open, user, **kwargs))

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a state-changing call in a worker, holding the lock until the WORKER finishes
        (not the awaiting task: a cancelled one leaves its worker running)."""
        await self._lock.acquire()
        try:
            worker = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
        except BaseException:
            self._lock.release()
            raise
        worker.add_done_callback(self._release)
        return await asyncio.shield(worker)

    def _release(self, worker: asyncio.Future[Any]) -> None:
        self._lock.release()
        if not worker.cancelled():
            worker.exception()  # retrieved here too: a cancelled caller never reads it

    async def _read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a read in a worker at once (the store's own lock makes it atomic); ``close()``
        waits for it."""
        if self._closing:
            self._closed_error()
        worker = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
        self._reads.add(worker)
        worker.add_done_callback(self._read_done)
        return await asyncio.shield(worker)

    def _read_done(self, worker: asyncio.Future[Any]) -> None:
        self._reads.discard(worker)
        if not worker.cancelled():
            worker.exception()

    def _closed_error(self) -> None:
        raise StoreError(f"this AsyncPersonalizer (store {self.sync.store.directory}) is closed "
                         "or closing; open it again to use it")

    async def add(self, items: Iterable[Record | dict[str, Any]], *,
                  labels: str = "refuse") -> list[str]:
        return await self._run(self.sync.add, list(items), labels=labels)

    async def upsert(self, items: Iterable[Record | dict[str, Any]], *,
                     labels: str = "refuse") -> list[str]:
        return await self._run(self.sync.upsert, list(items), labels=labels)

    async def update(self, id: str, **changes: Any) -> Record:
        return await self._run(self.sync.update, id, **changes)

    async def get(self, id: str) -> Record:
        return await self._read(self.sync.get, id)

    async def list(self, limit: int | None = None, offset: int = 0) -> list[Record]:
        return await self._read(self.sync.list, limit, offset)

    # Below the method `list`, a bare `list[...]` would name it: hence `builtins.list`.
    async def search(self, query: str, k: int = 10, **options: Any) -> builtins.list[Hit]:
        return await self._read(self.sync.search, query, k, **options)

    async def rerank(self, query: str) -> builtins.list[RankedItem]:
        return await self._read(self.sync.rerank, query)

    async def history(self, id: str | None = None, limit: int | None = None
                      ) -> builtins.list[Change]:
        return await self._read(self.sync.history, id, limit)

    async def delete(self, ids: Sequence[str]) -> None:
        await self._run(self.sync.delete, list(ids))

    async def delete_all(self) -> int:
        return await self._run(self.sync.delete_all)

    async def ask(self, query: str, *, greedy: bool | None = None) -> Answer:
        return await self._run(self.sync.ask, query, greedy=greedy)

    async def fit(self, budget: int = 200, **options: Any) -> FitSummary:
        return await self._run(self.sync.fit, budget, **options)

    async def feedback(self, query: str, answer: str) -> None:
        await self._run(self.sync.feedback, query, answer)

    async def forget(self) -> None:
        await self._run(self.sync.forget)

    async def close(self) -> None:
        """Close once every call in flight, cancelled or not, has finished its work."""
        self._closing = True
        await self._lock.acquire()  # the state-changing call in flight (if any) has finished
        try:
            while self._reads:
                await asyncio.wait(list(self._reads))
            await asyncio.to_thread(self.sync.close)
        finally:
            self._lock.release()

    async def __aenter__(self) -> AsyncPersonalizer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
