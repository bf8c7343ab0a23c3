"""``hydrahead demo``: the whole product on one sample user, end to end.

Builds (or loads) the model bundle, starts the offline LLM simulator unless a real endpoint is
configured, imports a shipped sample history (one git/git author's commits, task GIT_area), fits
that user's heads, and asks the author's three held-out queries, printing each answer, the exact
prompt that left the device, and the local latency.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from typing import Any

from hydrahead.export.make import ensure_bundle
from hydrahead.offline import SIMULATOR_NOTE, llm_endpoint
from hydrahead.runtime.encoder import Encoder
from hydrahead.runtime.importing import import_records
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.runtime.personalizer import Personalizer
from hydrahead.runtime.tasks import get_task
from hydrahead.runtime.users import forget_user, remember_task

DEMO_USER = "demo"
SAMPLE = "sample_git_area.json"


def load_sample() -> dict[str, Any]:
    """The shipped sample: ``task``, ``source``, ``history`` (profile items) and ``queries``."""
    text = resources.files("hydrahead").joinpath("data").joinpath(SAMPLE).read_text("utf-8")
    return json.loads(text)


def run_demo(
    root: Path, bundle_dir: Path, *, budget: int = 120, echo: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Run the demo; returns one dict per query (answer, gold, local latency)."""
    sample = load_sample()
    bundle = ensure_bundle(bundle_dir, echo)
    encoder = Encoder(bundle)
    task = get_task(sample["task"])
    results = []
    with ExitStack() as stack:
        configured = os.environ.get("HYDRAHEAD_LLM_BASE_URL")
        url, simulated = stack.enter_context(llm_endpoint(configured, offline=not configured))
        config = LLMConfig.from_env(base_url=url)
        if simulated:
            echo(f"LLM: {SIMULATOR_NOTE} (at {url}; no HYDRAHEAD_LLM_BASE_URL set)")
        else:
            echo(f"LLM: {config.base_url} (model {config.model})")
        forget_user(DEMO_USER, root)
        p = stack.enter_context(
            Personalizer.open(
                DEMO_USER, bundle=bundle, encoder=encoder, task=task, llm=config, root=root
            )
        )
        remember_task(DEMO_USER, task.name, root)
        t0 = time.perf_counter()
        n = import_records(p.store, task, sample["history"])
        echo(
            f"imported {n} history records of one author ({sample['source']}) in "
            f"{time.perf_counter() - t0:.2f} s"
        )
        before = {q["query"]: p.ask(q["query"]).answer for q in sample["queries"]}
        summary = p.fit(budget=budget, progress=False)
        echo(
            f"fitted heads from {summary.labels.llm_calls} LLM calls in {summary.seconds:.1f} s "
            f"(reranker {summary.labels.reranker.n_pairs} pairs, adapter "
            f"{summary.labels.adapter.n_pairs} pairs; head size "
            f"{summary.head_bytes['reranker']} bytes each)"
        )
        for q in sample["queries"]:
            a = p.ask(q["query"])
            results.append(
                {
                    "answer": a.answer,
                    "gold": q["gold"],
                    "base_heads": before[q["query"]],
                    "local_ms": a.local_ms,
                    "simulated": a.simulated,
                }
            )
            echo("")
            echo("=" * 78)
            echo(f"query: {q['query'][:200]!r}")
            echo(
                f"answer: {a.answer!r}   (author's real tag: {q['gold']!r}; before fitting: "
                f"{before[q['query']]!r})" + ("   [simulated LLM]" if a.simulated else "")
            )
            echo(
                f"local latency: {a.local_ms:.1f} ms (LLM round trip {a.timings_ms['llm']:.1f} ms)"
            )
            echo("prompt that left the device:")
            echo(a.prompt)
    return results
