"""``hydrahead demo``: the whole product on one sample user, end to end.

1. **The publisher** (skipped when the app already has a bundle): builds the model bundle with
   the trained shared bases hydrahead ships (``hydrahead export bundle``; or takes ``source``,
   a bundle directory), and signs it with a key of its own.
2. **The app** installs it with ``hydrahead bundle pull`` from that directory, checking the
   signature against the publisher's public key, exactly as an app would from an HTTPS URL.
3. The offline LLM simulator is started unless a real endpoint is configured; a shipped sample
   history (one git/git author's commits, task GIT_area) is imported, older records as the
   history and the author's newest commits as held-out questions; each is answered before and
   after fitting the user's heads, and a table compares both with the author's real tags.
4. One answer in full: the exact prompt that left the device, the candidates, local latency.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from typing import Any

from hydrahead.export.make import ensure_bundle
from hydrahead.offline import SIMULATOR_NOTE, llm_endpoint
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.bundle_pull import pull_bundle
from hydrahead.runtime.bundle_signing import generate_key_pair, sign_bundle
from hydrahead.runtime.encoder import Encoder
from hydrahead.runtime.importing import import_records
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.runtime.personalizer import Personalizer
from hydrahead.runtime.tasks import get_task
from hydrahead.runtime.users import forget_user

DEMO_USER = "demo"
SAMPLE = "sample_git_area.json"
HELD_OUT = 20  # the author's newest commits, asked as new questions
PUBLISHER = "demo-publisher"  # under the data root: the demo publisher's bundle and signing key


def load_sample() -> dict[str, Any]:
    """The shipped sample: ``task``, ``source``, ``history`` (profile items) and ``queries``."""
    text = resources.files("hydrahead").joinpath("data").joinpath(SAMPLE).read_text("utf-8")
    return json.loads(text)


def publish_and_pull(root: Path, bundle_dir: Path, source: Path | None,
                     echo: Callable[[str], None]) -> Bundle:
    """The app's bundle: the one at ``bundle_dir`` if there is one; else the demo publisher's
    (``source`` copied, or a bundle built with the shipped trained bases), signed, and pulled
    into ``bundle_dir`` with the publisher's public key."""
    if (bundle_dir / "manifest.json").exists():
        echo(f"bundle: {bundle_dir} (already installed)")
        return Bundle.open(bundle_dir)
    publisher = root / PUBLISHER
    shutil.rmtree(publisher, ignore_errors=True)
    published = publisher / "bundle"
    if source is None:
        ensure_bundle(published, echo)  # `hydrahead export bundle --out ...`
    else:
        Bundle.open(source).copy_to(published)
    key, public = generate_key_pair(publisher / "keys")  # `hydrahead bundle keygen`
    sign_bundle(published, key)
    echo(f"publisher: bundle at {published}, signed (public key {public[:16]}...)")
    bundle = pull_bundle(published, bundle_dir, keys=[public], progress=None)
    echo(f"app: `hydrahead bundle pull {published} --key {public[:16]}...` installed it at "
         f"{bundle_dir}, signature checked")
    for role in ("reranker", "adapter"):
        trained = bundle.model(role).get("trained")
        echo(f"  {role} base: {'trained' if trained else 'untrained (plain dense RAG)'}")
    return bundle


def run_demo(
    root: Path, bundle_dir: Path, *, budget: int = 120, source: Path | None = None,
    echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the demo; returns the held-out questions' answers before and after fitting, their
    gold tags, the accuracy of each, and the full answer shown (its local latency)."""
    sample = load_sample()
    bundle = publish_and_pull(root, bundle_dir, source, echo)
    encoder = Encoder(bundle)
    task = get_task(sample["task"])
    records = sorted(sample["history"], key=lambda r: r["date"])
    history = records[:-(HELD_OUT - len(sample["queries"]))]
    questions = [{"query": r["text"], "gold": r["tag"]} for r in records[len(history):]]
    questions += sample["queries"]
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
        t0 = time.perf_counter()
        n = import_records(p.store, task, history)
        echo(
            f"imported {n} history records of one author ({sample['source']}) in "
            f"{time.perf_counter() - t0:.2f} s; {len(questions)} newer commits held out"
        )
        before = [p.ask(q["query"]).answer for q in questions]
        summary = p.fit(budget=budget)
        echo(
            f"fitted heads from {summary.labels.llm_calls} LLM calls in {summary.seconds:.1f} s: "
            + ", ".join(f"{role} {outcome}" for role, outcome in summary.outcomes.items())
        )
        answers = [p.ask(q["query"]) for q in questions]
    gold = [q["gold"] for q in questions]
    after = [a.answer for a in answers]
    accuracy = {name: sum(x == g for x, g in zip(preds, gold)) / len(gold)
                for name, preds in (("before", before), ("after", after))}
    echo("")
    echo("| held-out commit | author's tag | before fitting | after fitting |")
    echo("|---|---|---|---|")
    for q, b, a in zip(questions, before, after):
        echo(f"| {q['query'].splitlines()[0][:60]} | {q['gold']} | {b} | {a} |")
    echo(f"| **accuracy** ({len(gold)} questions) | | **{accuracy['before']:.2f}** | "
         f"**{accuracy['after']:.2f}** |" + ("  (simulated LLM)" if simulated else ""))
    shown = answers[-1]
    echo("")
    echo(f"one answer in full: {shown.answer!r} (author's tag {gold[-1]!r})")
    cached = " (answered from the response cache)" if shown.llm_requests == 0 else ""
    echo(f"local latency: {shown.local_ms:.1f} ms (LLM round trip "
         f"{shown.timings_ms['llm']:.1f} ms{cached}; {shown.llm_requests} request(s) sent)")
    echo("prompt that left the device:")
    echo(shown.prompt)
    return {"questions": [q["query"] for q in questions], "gold": gold, "before": before,
            "after": after, "accuracy": accuracy, "local_ms": shown.local_ms,
            "simulated": simulated}
