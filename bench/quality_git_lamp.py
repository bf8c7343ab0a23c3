"""Quality run on git-lamp: hydrahead's systems side by side, per user, with LaMP metrics.

Every answer here comes from hydrahead's OFFLINE SIMULATED LLM
(:mod:`hydrahead.runtime.llm.simulator`, a deterministic function of the prompt text, not a
language model). The numbers show what the machinery does, not how a real LLM would do.

For every LaMP user of the split, in a fresh temporary data root, against one
:class:`~hydrahead.runtime.llm.offline.OfflineLLMServer` started here:

1. ``no-history``: the prompt without examples, one answer at temperature 0.
2. ``dense top-m``: the ``m`` most cosine-similar history records, one answer at temperature 0
   (the "RAG" baseline).
3. ``hydrahead base heads``: ``Personalizer.ask`` (k, m, N candidates at temperature 1) before
   any fit: the bundle's shared reranker and adapter heads.
4. ``hydrahead fitted``: ``Personalizer.fit(budget)`` on the user's history, then ``ask``.
5. ``fitted reranker + LLM top``: the fitted reranker's prompt, one answer at temperature 0
   (isolates the reranker from the adapter).

Diagnostics (no extra LLM calls): the best of the N candidates by the gold answer (what a
perfect adapter would get) for systems 3 and 4, and system 4's candidates re-picked by the base
adapter head (isolates fitting the adapter).

The user's history is the union of the profiles of that user's questions
(:func:`hydrahead.runtime.importing.lamp_profile`) **minus the user's own question commits**:
git-lamp's profiles follow LaMP's time split per question, so a user's later questions carry
the earlier question commits, gold answer included, in their profiles. ``--keep-question-commits``
keeps them (the plain union; the answers then leak into the history).

Run::

    python bench/quality_git_lamp.py --task GIT_area --split dev
    python bench/quality_git_lamp.py --task GIT_subject --split dev --users 20

Each run replaces its own section (task, split) of ``--out`` and keeps the rest of the file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "git-lamp"
DEFAULT_OUT = REPO_ROOT / "bench" / "QUALITY.md"

from hydrahead.runtime.bundle import Bundle  # noqa: E402
from hydrahead.runtime.encoder import Encoder  # noqa: E402
from hydrahead.runtime.importing import import_records, lamp_profile  # noqa: E402
from hydrahead.runtime.labeling import query_seed  # noqa: E402
from hydrahead.runtime.llm.config import LLMConfig  # noqa: E402
from hydrahead.runtime.llm.offline import OfflineLLMServer  # noqa: E402
from hydrahead.runtime.personalizer import Answer, Personalizer  # noqa: E402
from hydrahead.runtime.tasks import Task, get_task  # noqa: E402
from hydrahead.runtime.tasks.lamp import LampQuestion, load_lamp_questions  # noqa: E402

DISCLAIMER = ("All answers come from hydrahead's OFFLINE SIMULATED LLM (a deterministic "
              "simulator, not a real model); these numbers show the machinery, not real-LLM "
              "quality.")

SYSTEMS: dict[str, str] = {
    "no-history": "1. no-history (no examples, n=1, T=0)",
    "dense": "2. dense top-m by cosine (n=1, T=0)",
    "base": "3. hydrahead base heads: ask (k, m, N, T=1)",
    "fitted": "4. hydrahead fitted: fit(budget) + ask",
    "fitted-rr-top": "5. fitted reranker + LLM top (n=1, T=0)",
}
DIAGNOSTICS: dict[str, str] = {
    "base-oracle": "best of system 3's N candidates (perfect adapter)",
    "fitted-oracle": "best of system 4's N candidates (perfect adapter)",
    "fitted-rr-base-ad": "system 4's candidates picked by the base adapter head",
}


@dataclass
class SystemRun:
    """Predictions and costs of one system, pooled over all users."""

    preds: list[Any] = field(default_factory=list)
    golds: list[str] = field(default_factory=list)
    seconds: float = 0.0
    llm_requests: int = 0  # HTTP requests that reached the server (cache hits excluded)
    head_bytes: list[int] = field(default_factory=list)


@dataclass
class FitStats:
    """What fitting did across users."""

    seconds: float = 0.0
    label_calls: int = 0
    fitted: dict[str, int] = field(default_factory=lambda: {"reranker": 0, "adapter": 0})
    kept_initial: dict[str, int] = field(default_factory=lambda: {"reranker": 0, "adapter": 0})
    positive_rate: dict[str, list[float]] = field(
        default_factory=lambda: {"reranker": [], "adapter": []})
    changed_prompts: int = 0  # questions whose fitted-reranker prompt differs from the base one
    dense_is_base: int = 0  # questions whose dense top-m prompt equals the base reranker's


# ------------------------------------------------------------------------------------ data
def load_users(data: Path, task: Task, split: str, keep_question_commits: bool
               ) -> list[tuple[str, list[dict[str, Any]], list[LampQuestion]]]:
    """Each LaMP user of the split with their history rows and their questions (file order)."""
    folder = data / task.name
    questions = load_lamp_questions(folder / f"{split}_questions.json",
                                    folder / f"{split}_outputs.json")
    by_user: dict[str, list[LampQuestion]] = defaultdict(list)
    for q in questions:
        by_user[q.user_id].append(q)
    users = []
    for user_id, own in by_user.items():
        rows = lamp_profile(questions, user_id)
        if not keep_question_commits:
            asked = {q.id for q in own}
            rows = [r for r in rows if str(r.get("id")) not in asked]
        users.append((user_id, rows, own))
    return users


# ---------------------------------------------------------------------------- per user
def run_user(p: Personalizer, server: OfflineLLMServer, queries: Sequence[str],
             golds: Sequence[str], runs: dict[str, SystemRun], fit_stats: FitStats,
             budget: int, seed: int) -> None:
    """Evaluate every system on one user's questions (the history is already imported)."""
    task = p.task

    def top_answer(prompt: str, query: str) -> str:
        """The LLM's own single answer at temperature 0."""
        completion = p.llm.complete(prompt, n=1, temperature=0.0, max_tokens=p.max_tokens,
                                    seed=query_seed(query, seed))
        return completion.texts[0] if completion.texts else ""

    def timed(name: str, fn: Any) -> Any:
        before = len(server.captured)
        t0 = time.perf_counter()
        out = fn()
        runs[name].seconds += time.perf_counter() - t0
        runs[name].llm_requests += len(server.captured) - before
        return out

    def record(name: str, preds: Sequence[Any]) -> None:
        runs[name].preds.extend(preds)
        runs[name].golds.extend(golds)

    record("no-history", timed("no-history", lambda: [
        top_answer(task.render_prompt(q, []), q) for q in queries]))

    def dense() -> tuple[list[str], list[str]]:
        prompts = [task.render_prompt(q, [h.record for h in p.store.search(q, k=p.m)])
                   for q in queries]
        return prompts, [top_answer(prompt, q) for prompt, q in zip(prompts, queries)]

    dense_prompts, dense_preds = timed("dense", dense)
    record("dense", dense_preds)

    base_prompts = [p.prepare(q).prompt for q in queries]
    fit_stats.dense_is_base += sum(a == b for a, b in zip(dense_prompts, base_prompts))
    base_answers: list[Answer] = timed("base", lambda: [p.ask(q) for q in queries])
    record("base", [a.answer for a in base_answers])
    runs["base"].head_bytes.append(0)  # nothing per user: the bundle's shared heads

    summary = timed("fitted", lambda: p.fit(budget=budget, progress=False))
    fit_stats.seconds += summary.seconds
    fit_stats.label_calls += summary.labels.llm_calls
    for role in ("reranker", "adapter"):
        report = summary.reports[role]
        pairs = getattr(summary.labels, role)
        if pairs.n_pairs:
            fit_stats.positive_rate[role].append(pairs.n_positive / pairs.n_pairs)
        if report is not None:
            fit_stats.fitted[role] += 1
            fit_stats.kept_initial[role] += int(report.best_epoch == 0)
    fitted_answers: list[Answer] = timed("fitted", lambda: [p.ask(q) for q in queries])
    record("fitted", [a.answer for a in fitted_answers])
    runs["fitted"].head_bytes.append(sum(summary.head_bytes.values()))
    fit_stats.changed_prompts += sum(a.prompt != b for a, b in zip(fitted_answers, base_prompts))

    record("fitted-rr-top", timed("fitted-rr-top", lambda: [
        top_answer(p.prepare(q).prompt, q) for q in queries]))
    runs["fitted-rr-top"].head_bytes.append(sum(summary.head_bytes.values()))

    record("base-oracle", [best_candidate(task, a, g) for a, g in zip(base_answers, golds)])
    record("fitted-oracle", [best_candidate(task, a, g) for a, g in zip(fitted_answers, golds)])
    before = len(server.captured)
    record("fitted-rr-base-ad", [base_adapter_pick(p, q) for q in queries])
    if len(server.captured) != before:
        raise RuntimeError("re-picking with the base adapter sent requests; the response cache "
                           "should have answered them")


def best_candidate(task: Task, answer: Answer, gold: str) -> Any:
    """The candidate closest to the gold answer (what a perfect adapter would pick)."""
    if task.kind == "generation":
        return max(answer.candidates, key=lambda c: task.rouge(c.text, gold)).text
    for c in answer.candidates:
        if task.is_correct(c.answer, gold):
            return c.answer
    return answer.answer


def base_adapter_pick(p: Personalizer, query: str) -> Any:
    """Re-pick the fitted ``ask``'s candidates for ``query`` with the bundle's base adapter head.

    The prompt and the LLM's answer are those of the fitted ``ask`` (the response cache answers
    the repeated request, nothing is sent); only the adapter head differs.
    """
    prepared = p.prepare(query)
    completion = p.llm.complete(prepared.prompt, n=p.n, temperature=p.temperature,
                                max_tokens=p.max_tokens, seed=query_seed(query, p.seed))
    fitted = p.heads["adapter"]
    p.heads["adapter"] = p.base_heads["adapter"]
    try:
        return p.choose(prepared, completion.texts).answer
    finally:
        p.heads["adapter"] = fitted


# ------------------------------------------------------------------------------ report
def metric_names(task: Task) -> tuple[str, str]:
    """The two LaMP metrics of the task, as ``task.evaluate`` names them."""
    if task.kind == "generation":
        return "rouge-1", "rouge-L"
    if task.kind == "regression":
        return "mae", "rmse"
    return "accuracy", "f1"


def render_section(task: Task, split: str, runs: dict[str, SystemRun], fit_stats: FitStats,
                   n_users: int, n_questions: int, history_sizes: list[int],
                   args: argparse.Namespace, wall: float, command: str, bundle: Bundle) -> str:
    """The Markdown section of one run."""
    m1, m2 = metric_names(task)
    scores = {name: task.evaluate(r.preds, r.golds) for name, r in runs.items()}
    lines = [
        section_start(task.name, split),
        f"## {task.name} / {split}",
        "",
        f"**{DISCLAIMER}**",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"data: git-lamp `{task.name}/{split}_questions.json`; "
        f"users: {n_users}; questions: {n_questions}; history per user: "
        f"mean {np.mean(history_sizes):.1f} (min {min(history_sizes)}, "
        f"max {max(history_sizes)}) records"
        + ("" if not args.keep_question_commits else " **including the users' question "
           "commits (answers leak)**") + ".",
        f"- Settings: k={args.k}, m={args.m}, N={args.n}, ask temperature 1.0, fit budget "
        f"{args.budget} LLM calls per user, seed {args.seed}, encoder threads {args.threads}.",
        f"- Library: runtime sources sha256 {args.source_note}.",
        f"- Bundle: `{args.bundle}` (manifest sha256 {bundle.fingerprint[:12]}, created "
        f"{bundle.manifest.get('created')}; {bundle_bases(bundle)}).",
        f"- Reproduce: `{command}`",
        f"- Total wall time: {wall:.0f} s. Metrics pool all questions (macro-F1 over the task's "
        f"15 labels as LaMP computes it)." if task.kind == "classification" else
        f"- Total wall time: {wall:.0f} s. Metrics are F1 averaged over all questions.",
        "",
        f"| system | {m1} | {m2} | wall s (total) | ms / question | LLM requests | "
        "per-user heads, bytes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in SYSTEMS.items():
        r, s = runs[name], scores[name]
        head = f"{int(np.mean(r.head_bytes)):,}" if r.head_bytes else "-"
        note = " (incl. fit)" if name == "fitted" else ""
        lines.append(f"| {label} | {s[m1]:.3f} | {s[m2]:.3f} | {r.seconds:.1f}{note} | "
                     f"{1e3 * r.seconds / max(len(r.preds), 1):.0f} | {r.llm_requests} | {head} |")
    lines += ["", "Diagnostics (no extra LLM calls):", "",
              f"| diagnostic | {m1} | {m2} |", "|---|---:|---:|"]
    for name, label in DIAGNOSTICS.items():
        lines.append(f"| {label} | {scores[name][m1]:.3f} | {scores[name][m2]:.3f} |")
    n_fit = n_users
    lines += [
        "",
        f"Fitting: {fit_stats.seconds:.1f} s in all ({fit_stats.seconds / n_fit:.2f} s / user), "
        f"{fit_stats.label_calls} labelling calls. Heads fitted (labels of both classes): "
        f"reranker {fit_stats.fitted['reranker']}/{n_fit} users, adapter "
        f"{fit_stats.fitted['adapter']}/{n_fit}; of those, early stopping kept the initial "
        f"(base) head for reranker {fit_stats.kept_initial['reranker']}, adapter "
        f"{fit_stats.kept_initial['adapter']}. Mean positive label rate: reranker "
        f"{_mean(fit_stats.positive_rate['reranker']):.2f}, adapter "
        f"{_mean(fit_stats.positive_rate['adapter']):.2f}. The fitted reranker changed the "
        f"prompt of {fit_stats.changed_prompts}/{n_questions} questions. The dense top-m prompt "
        f"equals the base reranker's prompt for {fit_stats.dense_is_base}/{n_questions} "
        f"questions.",
        "",
        "Comparisons (computed):",
        "",
    ]
    lines += [f"- {c}" for c in comparisons(scores, runs, m1, m2, task)]
    lines += ["", section_end(task.name, split)]
    return "\n".join(lines) + "\n"


def per_question(task: Task, run: SystemRun) -> np.ndarray:
    """Per-question score: correct (classification) or (ROUGE-1 + ROUGE-L) / 2 (generation)."""
    if task.kind == "generation":
        return np.array([task.rouge(None if p is None else str(p), g)
                         for p, g in zip(run.preds, run.golds)])
    return np.array([float(task.is_correct(p, g)) for p, g in zip(run.preds, run.golds)])


def comparisons(scores: dict[str, dict[str, float]], runs: dict[str, SystemRun], m1: str,
                m2: str, task: Task) -> list[str]:
    """Plain statements of the differences that isolate each part."""
    lower_is_better = task.kind == "regression"

    def diff(a: str, b: str, what: str) -> str:
        da, db = scores[a][m1], scores[b][m1]
        d = da - db
        better = (d < 0) if lower_is_better else (d > 0)
        verdict = "same to 3 decimals" if abs(d) < 5e-4 else ("better" if better else "WORSE")
        qa, qb = per_question(task, runs[a]), per_question(task, runs[b])
        wins, losses = int(np.sum(qa > qb + 1e-9)), int(np.sum(qb > qa + 1e-9))
        return (f"{what}: {m1} {da:.3f} vs {db:.3f} ({d:+.3f}, {verdict}); "
                f"{m2} {scores[a][m2]:.3f} vs {scores[b][m2]:.3f} "
                f"({scores[a][m2] - scores[b][m2]:+.3f}); per question: first better on "
                f"{wins}, worse on {losses} of {len(qa)}")

    return [
        diff("dense", "no-history", "history in the prompt (2 vs 1)"),
        diff("fitted-rr-top", "dense", "fitting the reranker, LLM's own top answer (5 vs 2; "
             "the bundle's base reranker ranks like cosine, so 2 is its prompt)"),
        diff("base", "dense", "base adapter's pick from N samples vs the LLM's top answer, same "
             "prompts (3 vs 2)"),
        diff("fitted", "fitted-rr-top", "fitted adapter's pick vs the LLM's top answer, same "
             "prompts (4 vs 5)"),
        diff("fitted", "fitted-rr-base-ad", "fitting the adapter, same candidates (4 vs its "
             "candidates re-picked by the base adapter)"),
        diff("fitted", "base", "whole pipeline fitted vs base heads (4 vs 3)"),
        diff("fitted-oracle", "fitted", "headroom of the adapter (best of N vs 4)"),
    ]


def bundle_bases(bundle: Bundle) -> str:
    """Whether the bundle's reranker / adapter bases were trained (from its manifest)."""
    parts = []
    for role in ("reranker", "adapter"):
        trained = bundle.model(role).get("trained")
        state = {True: "trained", False: "untrained"}.get(trained, "training unknown")
        parts.append(f"{role} base {state}")
    return ", ".join(parts)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


FILE_HEADER = f"""# hydrahead quality on git-lamp

**{DISCLAIMER}**

Written by `bench/quality_git_lamp.py` (one section per task and split; a rerun replaces its own
section). See that script's docstring for the systems and the history construction.
"""


def section_start(task: str, split: str) -> str:
    return f"<!-- quality:{task}:{split} -->"


def section_end(task: str, split: str) -> str:
    return f"<!-- /quality:{task}:{split} -->"


def write_section(out: Path, task: str, split: str, section: str) -> None:
    """Replace (or append) this run's section of ``out``, keeping everything else."""
    text = out.read_text(encoding="utf-8") if out.exists() else FILE_HEADER
    pattern = re.compile(re.escape(section_start(task, split)) + r".*?"
                         + re.escape(section_end(task, split)) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


# -------------------------------------------------------------------------------- main
def source_fingerprint() -> str:
    """sha256 (12 hex digits) of the library's runtime sources: which code made the numbers."""
    digest = hashlib.sha256()
    runtime = REPO_ROOT / "runtime"
    for path in sorted([*runtime.rglob("*.py"), *(runtime / "data" / "tasks").glob("*.json")]):
        if path.is_file():
            digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def private_copy(bundle: Bundle, target: Path) -> Bundle:
    """Copy the bundle's listed files to ``target`` and open the copy (verified).

    The run then cannot be broken by someone rebuilding the shared test bundle meanwhile.
    """
    target.mkdir(parents=True)
    for name in ["manifest.json", *bundle.manifest["files"]]:
        shutil.copy2(bundle.root / name, target / name)
    return Bundle.open(target)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, choices=("GIT_area", "GIT_subject"))
    ap.add_argument("--split", default="dev", choices=("train", "dev"))
    ap.add_argument("--users", type=int, default=None, help="first N users (default: all)")
    ap.add_argument("--budget", type=int, default=100, help="fit budget (LLM calls per user)")
    ap.add_argument("--bundle", type=Path, default=None,
                    help="bundle directory (default: the tests' cached bundle)")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("HYDRAHEAD_GIT_LAMP",
                                                                     DEFAULT_DATA)))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="encoder threads")
    ap.add_argument("--keep-question-commits", action="store_true",
                    help="keep the users' own question commits in their history (they leak)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/quality_git_lamp.py " + shlex.join(
        sys.argv[1:] if argv is None else list(argv))
    if not (args.data / args.task).is_dir():
        print(f"git-lamp data not found at {args.data} (pass --data or set HYDRAHEAD_GIT_LAMP)",
              file=sys.stderr)
        return 2
    if args.bundle is None:
        sys.path.insert(0, str(REPO_ROOT / "tests"))
        from bundle_fixture import get_test_bundle

        args.bundle = get_test_bundle()
    started = time.perf_counter()
    source = source_fingerprint()
    task = get_task(args.task)
    users = load_users(args.data, task, args.split, args.keep_question_commits)[: args.users]
    runs = {name: SystemRun() for name in [*SYSTEMS, *DIAGNOSTICS]}
    fit_stats = FitStats()
    history_sizes = []
    with OfflineLLMServer() as server, tempfile.TemporaryDirectory(
            prefix="hydrahead-quality-") as tmp:
        bundle = private_copy(Bundle.open(args.bundle), Path(tmp) / "bundle")
        encoder = Encoder(bundle, threads=args.threads)
        config = LLMConfig.from_env(base_url=server.url)
        for i, (user_id, rows, questions) in enumerate(users, 1):
            t0 = time.perf_counter()
            server.clear_captured()
            root = Path(tmp) / f"user{i}"  # a fresh data root per user
            with Personalizer.open(user_id, bundle=bundle, encoder=encoder, task=task, llm=config,
                                   root=root, k=args.k, m=args.m, n=args.n, temperature=1.0,
                                   seed=args.seed) as p:
                import_records(p.store, task, rows)
                history_sizes.append(p.store.count())
                run_user(p, server, [task.query_text(q.input) for q in questions],
                         [q.gold or "" for q in questions], runs, fit_stats, args.budget,
                         args.seed)
            print(f"[{i}/{len(users)}] user {user_id}: {len(rows)} records, "
                  f"{len(questions)} questions, {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    wall = time.perf_counter() - started
    if source_fingerprint() != source:
        args.source_note = (f"{source} **(the runtime sources changed during this run: rerun "
                            "for numbers of one version)**")
    else:
        args.source_note = source
    n_questions = len(runs["base"].preds)
    section = render_section(task, args.split, runs, fit_stats, len(users), n_questions,
                             history_sizes, args, wall, command, bundle)
    write_section(args.out, task.name, args.split, section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
