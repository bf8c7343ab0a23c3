"""Reports of a quality run: the Markdown table for people, a PNG chart, and the JSON for machines.

A Markdown report is one section per (data, task, split), delimited by HTML comments, so that
``bench/QUALITY.md`` keeps every run's section and a rerun replaces only its own.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from pathlib import Path
from typing import Any

from hydrahead.offline.simulator import SIMULATOR_NOTE
from hydrahead.runtime.tasks import Task

from .quality import ALL_SYSTEMS, BASELINES, Results, source_fingerprint, write_json
from .stats import paired_wins_losses


def code_version(repo: Path | None = None) -> str:
    """The git commit of the checkout (``-dirty`` when it has changes) and the sources' hash."""
    repo = repo or Path(__file__).resolve().parents[2]
    sources = source_fingerprint(repo)
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--",
                                "runtime", "hydrahead", "export", "train"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"sources sha256 {sources} (not a git checkout)"
    return f"git {commit}{' + uncommitted changes' if dirty else ''}, sources sha256 {sources}"


def metric_columns(task: Task) -> tuple[str, str]:
    """The two LaMP metrics of the task, as ``task.evaluate`` names them."""
    return {"classification": ("accuracy", "f1"), "generation": ("rouge-1", "rouge-L"),
            "regression": ("mae", "rmse")}[task.kind]


def section_key(results: Results) -> str:
    """Which section of a report this run owns: data folder name, task, split, the bases, and
    (where the run says so in its meta) the protocol other than ``untrained`` and the simulator
    family's member (a member other than ``default``, or any member of a family run)."""
    m = results.meta
    bases = m.get("bases", "untrained")
    layers = re.match(r"cross-mode \((\d+) layers", bases)
    trained = ("" if bases == "untrained" else ":trained-bases" if not layers
               else ":trained-cross-bases" + ("" if layers.group(1) == "6"
                                              else f"-{layers.group(1)}-layers"))
    protocol = m.get("protocol")
    member = m.get("member")
    extra = (f":{protocol}" if protocol not in (None, "untrained") else "") + (
        f":{member}" if member and (member != "default" or m.get("family")) else "")
    return f"{Path(m['data']).name}:{m['task']}:{m['split']}{trained}{extra}"


def markdown(task: Task, results: Results, *, command: str, version: str) -> str:
    """The run as a Markdown section (see the module docstring)."""
    s = results.summary(task)
    m = results.meta
    key = section_key(results)
    c1, c2 = metric_columns(task)
    n_q = len(results.questions)
    settings = m["settings"]
    bases = m.get("bases", "untrained")
    title = (f"## {m['task']} / {m['split']} on `{Path(m['data']).name}`"
             + ("" if bases == "untrained"
                else f", trained {bases.split(' trained')[0]} bases" if bases.startswith("cross")
                else ", trained bases")
             + (f" ({m['protocol']})" if m.get("protocol") not in (None, "untrained") else "")
             + (f", simulated LLM `{m['member']}`" if m.get("member") else ""))
    lines = [f"<!-- quality:{key} -->", title, ""]
    if m["simulated"]:
        lines += [f"**{SIMULATOR_NOTE}. These numbers show what the machinery does with that "
                  "simulator, not how a real LLM would score.**", ""]
    lines += [
        f"- Run: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
        f"{m['seconds']:.0f} s; code: {version}; bundle {m['bundle_fingerprint']}, shared "
        f"bases {bases}.",
        f"- Data: `{m['data']}`, split `{m['split']}`: {m['users']} users, {n_q} questions; "
        "history = the union of each user's profiles minus the question items.",
        f"- LLM: {m['llm']} (model `{m['model']}`); same prompts, seeds and settings for every "
        f"system: k={settings['k']}, m={settings['m']}, N={settings['n']}, sample temperature "
        f"{settings['temperature']}, fit budget {settings['budget']} LLM calls per user, "
        f"seed {settings['seed']}.",
        f"- Reproduce: `{command}`",
        "",
        f"| system | {c1} | {c2} | vs best prompt baseline ({s['best_baseline']}) [95% CI] | "
        "won / lost | LLM requests / q | tokens / q | local ms / q (p50) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ALL_SYSTEMS:
        row = s["systems"].get(name)
        if row is None:
            continue
        mets = row["metrics"]
        tokens = (row["prompt_tokens"] + row["completion_tokens"]) / n_q
        label = f"**{name}**" if name == "fitted" else name
        lines.append(
            f"| {label}: {row['description']} | {mets[c1]:.3f} | {mets[c2]:.3f} | "
            f"{gain_cell(row)} | {row['wins']} / {row['losses']} "
            f"| {row['llm_requests'] / n_q:.1f} | {tokens:.0f} | {row['local_ms_p50']:.1f} |")
    lines.append("")
    for rule in ("graded", "binary"):
        f = s.get(f"fit_{rule}")
        if f:
            lines.append(
                f"- Fitting with {rule} reranker labels, per user: "
                f"{f['llm_requests_per_user']:.0f} LLM requests, {f['tokens_per_user']:.0f} "
                f"tokens, {f['seconds_per_user']:.2f} s; "
                f"labels above 0.5: reranker {f['reranker_positive_rate']:.2f}, adapter "
                f"{f['adapter_positive_rate']:.2f}; heads fitted: reranker "
                f"{f['heads_fitted']['reranker']}/{f['users']}, adapter "
                f"{f['heads_fitted']['adapter']}/{f['users']}; of those, answering after the "
                f"held-out check: reranker {f.get('heads_used', f['heads_fitted'])['reranker']}, "
                f"adapter {f.get('heads_used', f['heads_fitted'])['adapter']}; prompts without "
                f"records (they hurt with this LLM): {f.get('prompts_without_records', 0)}/"
                f"{f['users']}; retrieval feeding the reranker: " + ", ".join(
                    f"{name} {count}" for name, count in f.get("retrievals", {}).items())
                + f"; everything learned for a user "
                f"(both head files) at most {f['state_bytes_max']:,} bytes.")
    if "oracle_fitted" in s:
        lines.append(f"- Headroom: a perfect pick among `fitted`'s candidates would score "
                     f"{s['oracle_fitted']:.3f} (per-question {_score_name(task)}).")
    fitted, base = s["systems"].get("fitted"), s["systems"].get("base")
    if fitted and base:
        won, lost = paired_wins_losses([o.score for o in results.outcomes["fitted"]],
                                       [o.score for o in results.outcomes["base"]])
        lines.append(f"- `fitted` against `base` per question: {won} won, {lost} lost.")
    lines += ["", f"<!-- /quality:{key} -->"]
    return "\n".join(lines) + "\n"


def gain_cell(row: dict[str, Any]) -> str:
    """A system's gain over the best prompt baseline with its 95% interval, in percent:
    ``+4.3% [-1.2, +9.8]``."""
    gain = f"{100 * row['relative_to_best_baseline']:+.1f}%"
    ci = row.get("relative_to_best_baseline_ci95")
    if not ci or any(v != v for v in ci):  # NaN: no interval
        return gain
    return f"{gain} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def _score_name(task: Task) -> str:
    return {"classification": "accuracy", "generation": "(ROUGE-1 + ROUGE-L) / 2",
            "regression": "-|error|"}[task.kind]


def update_report(path: Path, section: str, *, title: str = "# hydrahead quality") -> None:
    """Replace this run's section of the Markdown report at ``path`` (or append it)."""
    key = re.match(r"<!-- quality:(\S+) -->", section).group(1)  # type: ignore[union-attr]
    text = path.read_text(encoding="utf-8") if path.exists() else title + "\n"
    pattern = re.compile(re.escape(f"<!-- quality:{key} -->") + r".*?"
                         + re.escape(f"<!-- /quality:{key} -->") + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def chart(path: Path, task: Task, results: Results) -> None:
    """A bar chart of the headline metric per system, the best prompt baseline marked."""
    import matplotlib  # the [bench] extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results.summary(task)
    metric = s["primary_metric"]
    names = [n for n in ALL_SYSTEMS if n in s["systems"]]
    values = [s["systems"][n]["metrics"][metric] for n in names]
    colors = ["#9aa5b1" if n in BASELINES else "#2f6f9f" for n in names]
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    ax.bar(range(len(names)), values, color=colors)
    best = s["systems"][s["best_baseline"]]["metrics"][metric]
    ax.axhline(best, color="#c0392b", linestyle="--", linewidth=1,
               label=f"best prompt baseline ({s['best_baseline']})")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=9)
    ax.set_ylabel(metric)
    m = results.meta
    llm = "OFFLINE SIMULATOR" if m["simulated"] else m["llm"]
    ax.set_title(f"{m['task']} / {m['split']} on {Path(m['data']).name}: {len(results.questions)} "
                 f"questions, LLM: {llm}", fontsize=10)
    low = min(values)
    ax.set_ylim(max(0.0, low - 0.1 * (max(values) - low + 1e-9) - 0.05), max(values) * 1.06)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def outputs(out: Path, results: Results) -> dict[str, Path]:
    """Where a run's files go: ``<out>/quality-<data>-<task>-<split>.{json,md,png}``."""
    stem = "quality-" + section_key(results).replace(":", "-")
    return {ext: out / f"{stem}.{ext}" for ext in ("json", "md", "png")}


def write_all(out: Path, task: Task, results: Results, *, command: str,
              report: Path | None = None) -> tuple[str, dict[str, Path]]:
    """Write the run's JSON, Markdown section and chart under ``out`` (and its section into
    ``report``); return the section and the files."""
    files = outputs(out, results)
    write_json(files["json"], task, results)
    section = markdown(task, results, command=command, version=code_version())
    files["md"].write_text(section, encoding="utf-8")
    chart(files["png"], task, results)
    if report is not None:
        update_report(report, section)
    return section, files
