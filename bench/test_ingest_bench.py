"""Importing a history: records/s and peak memory, ``import_file`` of 1,000 git-lamp commits.

* **speed**: ``import_file`` (JSONL, real int8 bundle encoder, batches of at most 512 padded
  tokens) against the same import with the encoder's earlier batching (32 texts a call whatever
  their length), the two interleaved round by round in this process. Target: >= 150 records/s.
* **peak RSS**: each import in a fresh child process (a process's peak cannot be reset), read
  from the child's ``VmHWM`` (Linux). Target: <= 200 MiB.

Needs the git-lamp data (``../shared/data/git-lamp``; skipped without it).
Run: ``python -m pytest bench/test_ingest_bench.py --benchmark-only -s``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from testing.bundle_fixture import get_test_bundle

from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.encoder import Encoder
from hydrahead.runtime.importing import import_file

N = 1000

CHILD = textwrap.dedent("""
    import json, time
    from hydrahead.runtime.bundle import Bundle
    from hydrahead.runtime.encoder import Encoder
    from hydrahead.runtime.importing import import_file
    encoder = Encoder(Bundle.open({bundle!r}), max_batch_tokens={tokens})
    start = time.perf_counter()
    n = import_file("u", {jsonl!r}, task="GIT_area", root={root!r}, encoder=encoder)
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would be the parent's.
    status = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
    print(json.dumps({{"records": n, "seconds": time.perf_counter() - start,
                      "peak_mib": int(status) / 1024}}))
""")


@pytest.fixture(scope="module")
def commits(git_lamp: Path, tmp_path_factory) -> Path:
    rows, seen = [], set()
    for q in json.loads((git_lamp / "GIT_area" / "train_questions.json").read_text()):
        for item in q["profile"]:
            if item["id"] not in seen and len(rows) < N:
                seen.add(item["id"])
                rows.append(item)
    path = tmp_path_factory.mktemp("ingest") / "history.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _peak(jsonl: Path, root: Path, tokens: int) -> dict:
    code = CHILD.format(bundle=str(get_test_bundle()), tokens=tokens,
                        jsonl=str(jsonl), root=str(root))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_1000_commits(benchmark, commits: Path, tmp_path_factory) -> None:
    bundle = Bundle.open(get_test_bundle())
    shipped, fixed32 = Encoder(bundle), Encoder(bundle, max_batch_tokens=10**9)
    reference: list[float] = []
    rounds = iter(range(100))

    def import_with(encoder: Encoder) -> None:
        root = tmp_path_factory.mktemp("root")
        import_file(f"u{next(rounds)}", commits, task="GIT_area", root=root, encoder=encoder)

    def before_each_round() -> None:  # the reference, interleaved
        start = time.perf_counter()
        import_with(fixed32)
        reference.append(time.perf_counter() - start)

    benchmark.pedantic(lambda: import_with(shipped), setup=before_each_round, rounds=3,
                       warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    ref = sorted(reference)[len(reference) // 2]
    peak = _peak(commits, tmp_path_factory.mktemp("peak"), shipped.max_batch_tokens)
    peak_ref = _peak(commits, tmp_path_factory.mktemp("peak-ref"), 10**9)
    info = {
        "records": N, "records_per_s": round(N / seconds, 1),
        "fixed_32_per_call_records_per_s": round(N / ref, 1),
        "peak_rss_mib": round(peak["peak_mib"], 1),
        "fixed_32_per_call_peak_rss_mib": round(peak_ref["peak_mib"], 1),
        "targets": {"records_per_s": 150, "peak_rss_mib": 200},
    }
    benchmark.extra_info.update(info)
    print(json.dumps({"bench": "import_1000_git_lamp_commits", **info}))
