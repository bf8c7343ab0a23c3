"""Privacy: nothing but the reranked prompt leaves the device.

Across a whole fit + ask run against the offline server, this reads the bytes the server
received (its capture, not hydrahead's own ledger) and checks, request by request, which history
records appear in them: at ask time exactly the reranked top m (twice: the greedy answer and the
samples); while fitting, the one history record used as the query plus the records HYDRA's
labelling puts in that prompt (none or one for a reranker label, the top m for an adapter
label), all of them no newer than the query record. Every history text carries a unique marker
so a record is recognised wherever it appears. The top-k records beyond the prompt, which the
adapter reads, never leave.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from testing.synthetic_users import make_user

from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.importing import import_records
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.offline.server import OfflineLLMServer
from hydrahead.runtime.llm.outbox import Outbox
from hydrahead.runtime.personalizer import Personalizer

MARK = re.compile(r"\bHHREF(\d{4})\b")
ALLOWED_KEYS = {"model", "messages", "n", "temperature", "max_tokens", "seed"}
M = 3


def test_only_reranked_records_leave_the_device(tmp_path: Path, bundle_dir: Path) -> None:
    user = make_user(7)
    history = [
        dict(h, text=f"{h['text']} Ref HHREF{i:04d}.") for i, h in enumerate(user["history"])
    ]
    all_marks = {f"{i:04d}" for i in range(len(history))}
    date_of = {f"{i:04d}": h["date"] for i, h in enumerate(history)}
    asked = {}
    with OfflineLLMServer() as server:
        with Personalizer.open(
            "carol",
            bundle=Bundle.open(bundle_dir),
            task="GIT_area",
            llm=LLMConfig.from_env(base_url=server.url),
            root=tmp_path,
            m=M,
            k=10,
        ) as p:
            import_records(p.store, p.task, history)
            p.fit(budget=60, progress=False)
            n_fit = len(server.captured)
            for q in user["queries"][:6]:
                a = p.ask(q["query"])
                asked[a.prompt] = {MARK.search(it.record.text).group(1) for it in a.items}
        captured = list(server.captured)

    assert n_fit <= 60 and len(captured) == n_fit + 2 * 6
    seen: set[str] = set()
    for i, req in enumerate(captured):
        body = json.loads(req.body)
        assert set(body) <= ALLOWED_KEYS, set(body) - ALLOWED_KEYS
        assert [m["role"] for m in body["messages"]] == ["user"]
        content = body["messages"][0]["content"]
        examples, _, query = content.partition("### Query")
        in_examples = set(MARK.findall(examples))
        in_query = set(MARK.findall(query))
        seen |= in_examples | in_query
        if i < n_fit:  # fitting: one history record as the query, plus its labelled records
            assert len(in_query) == 1
            assert len(in_examples) in (0, 1, M)
            assert not in_examples & in_query
            (query_mark,) = in_query
            assert all(date_of[e] <= date_of[query_mark] for e in in_examples)  # no future
        else:  # asking: exactly the reranked top m, and the query is the user's own text
            assert in_query == set()
            assert content in asked
            assert in_examples == asked[content]
            assert len(in_examples) == M
    assert seen < all_marks  # some of the history never left the device at all

    # The user's own ledger shows the same bytes the server received (fit's requests go out
    # concurrently, and so do each ask's two, so the two may list them in different orders;
    # ask's come after fit's).
    ledger = list(Outbox(tmp_path / "users" / "carol" / "outbox.jsonl").records())
    assert sorted(r["request"].encode("utf-8") for r in ledger) == sorted(c.body for c in captured)
    def per_ask(bodies: list[bytes]) -> list[list[bytes]]:  # each ask's two, in ask order
        return [sorted(bodies[i:i + 2]) for i in range(0, len(bodies), 2)]

    assert per_ask([r["request"].encode("utf-8") for r in ledger[n_fit:]]) == per_ask(
        [c.body for c in captured[n_fit:]])
