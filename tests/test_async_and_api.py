"""The app-developer surface: mem0-like record verbs on the Personalizer, and the asyncio face."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from testing.fault_server import FaultServer, Reply
from testing.synthetic_users import make_user

from hydrahead.runtime.async_personalizer import AsyncPersonalizer
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.errors import InvalidInputError, NotFoundError, StoreError
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.offline.simulator import SimulatedLLM
from hydrahead.runtime.personalizer import Personalizer


def test_record_verbs_like_mem0(tmp_path: Path, bundle_dir: Path) -> None:
    with Personalizer.open("mo", bundle=Bundle.open(bundle_dir), task="GIT_area",
                           root=tmp_path) as p:
        p.add([{"id": "c1", "text": "Fix the manual page typo", "tag": "doc"},
               {"id": "c2", "text": "Teach gitk a dark theme", "tag": "gitk"}])
        with pytest.raises(InvalidInputError, match="upsert"):
            p.add([{"id": "c1", "text": "again", "tag": "doc"}])
        p.upsert([{"id": "c1", "text": "Fix two manual page typos", "tag": "doc"}])
        assert p.get("c1").text == "Fix two manual page typos"
        p.update("c2", fields={"tag": "gitk", "reviewed": True})
        assert p.get("c2").fields["reviewed"] is True
        assert [h.record.id for h in p.search("typo in the docs", k=2, filter={"tag": "doc"})] == ["c1"]
        assert p.search("typo in the docs", k=2, threshold=0.99) == []
        assert [c.op for c in p.history("c1")] == ["add", "update"]
        assert len(p.list()) == 2
        assert p.delete_all() == 2 and p.list() == []
        with pytest.raises(NotFoundError):
            p.get("c1")


def test_async_personalizer_does_not_block_the_loop(tmp_path: Path, bundle_dir: Path) -> None:
    simulator = SimulatedLLM()
    with FaultServer(default=lambda req: Reply(200, simulator.complete(req.json()),
                                               delay=0.4)) as server:
        async def main() -> tuple[int, object, object]:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            async with await AsyncPersonalizer.open(
                "as", bundle=Bundle.open(bundle_dir), task="GIT_area", root=tmp_path,
                llm=LLMConfig(server.url, "m"),
            ) as p:
                await p.add(make_user(1)["history"][:30])
                task = asyncio.create_task(ticker())
                await asyncio.sleep(0.05)
                before = ticks
                started = time.perf_counter()
                answer = await p.ask("Fix the flaky test in t7001")
                elapsed = time.perf_counter() - started
                during = ticks - before
                task.cancel()
                hits = await p.search("test suite", k=3)
            return during, (answer, elapsed), hits

        during, (answer, elapsed), hits = asyncio.run(main())
    assert answer.answer is not None and len(hits) == 3
    assert elapsed >= 0.4  # two LLM requests of 0.4 s each, sent at once
    # The loop kept serving other coroutines meanwhile (blocked, it would count none; the
    # bound is loose so that a busy machine cannot fail it).
    assert during >= 10


def _gated_server(simulator: SimulatedLLM, gate: threading.Event) -> FaultServer:
    """A loopback LLM that holds every request until ``gate`` is set."""
    def answer(req):  # type: ignore[no-untyped-def]
        gate.wait(30)
        return Reply(200, simulator.complete(req.json()))
    return FaultServer(default=answer)


def test_reads_never_wait_behind_an_ask_in_flight(tmp_path: Path, bundle_dir: Path) -> None:
    gate = threading.Event()
    with _gated_server(SimulatedLLM(), gate) as server:
        async def main() -> tuple[list[object], bool]:
            async with await AsyncPersonalizer.open(
                "rw", bundle=Bundle.open(bundle_dir), task="GIT_area", root=tmp_path,
                llm=LLMConfig(server.url, "m"),
            ) as p:
                await p.add(make_user(1)["history"][:20])
                first = (await p.list(limit=1))[0].id
                ask = asyncio.create_task(p.ask("Fix the flaky test in t7001"))
                await asyncio.sleep(0.2)  # the ask is now waiting on the held LLM
                # Each read must finish while the ask is provably still in flight (its LLM
                # request is held until the gate opens); a read that waited would time out.
                reads = [await asyncio.wait_for(read, 20) for read in (
                    p.search("test suite", k=3), p.get(first), p.list(limit=5),
                    p.history(first))]
                ask_was_done = ask.done()
                gate.set()
                await ask
            return reads, ask_was_done

        reads, ask_was_done = asyncio.run(main())
    assert not ask_was_done
    hits, record, listed, changes = reads
    assert len(hits) == 3 and record.id == listed[0].id and len(listed) == 5  # type: ignore[attr-defined, arg-type]
    assert [c.op for c in changes] == ["add"]  # type: ignore[attr-defined]


def test_close_waits_for_a_cancelled_asks_worker(tmp_path: Path, bundle_dir: Path) -> None:
    gate = threading.Event()
    touched_closed: list[bool] = []
    with _gated_server(SimulatedLLM(), gate) as server:
        async def main() -> bool:
            p = await AsyncPersonalizer.open(
                "cc", bundle=Bundle.open(bundle_dir), task="GIT_area", root=tmp_path,
                llm=LLMConfig(server.url, "m"))
            await p.add(make_user(1)["history"][:20])
            remember = p.sync._remember

            def watched(query, answer):  # type: ignore[no-untyped-def]
                # After its LLM answers, the worker writes to the store: record whether the
                # store was already closed under it (it would raise StoreError then).
                touched_closed.append(p.sync.store.closed)
                remember(query, answer)
            p.sync._remember = watched  # type: ignore[method-assign]
            ask = asyncio.create_task(p.ask("Fix the flaky test in t7001"))
            await asyncio.sleep(0.2)
            ask.cancel()
            with pytest.raises(asyncio.CancelledError):
                await ask
            closing = asyncio.create_task(p.close())
            await asyncio.sleep(0.3)
            closed_early = closing.done()  # close must wait: the worker is still running
            gate.set()
            await asyncio.wait_for(closing, 30)
            with pytest.raises(StoreError, match="closed"):
                await p.search("anything")
            return closed_early

        closed_early = asyncio.run(main())
    assert not closed_early
    assert touched_closed == [False]  # the worker finished its writes before the store closed
