"""The quality benchmark: hydrahead against prompt-based personalisation, per LaMP question.

For every evaluation question of a LaMP-format directory, with the same LLM, ``k``, ``m``,
``N`` and seeds, each system answers:

* prompt-based baselines, one greedy answer (``n=1``, temperature 0) each:
  ``zero-shot`` (no history), ``random`` (``m`` random history records), ``bm25`` (the BM25 top
  ``m``, rank-bm25), ``dense`` (the cosine top ``m``: plain RAG);
* hydrahead's ``Personalizer.ask`` (greedy answer + ``N`` samples, adapter pick) with
  ``base`` heads (nothing fitted), ``reranker-fitted`` (the user's reranker head, base
  adapter), ``adapter-fitted`` (base reranker, the user's adapter head) and ``fitted`` (both);
  and ``fitted-binary``, the full pipeline fitted with HYDRA's binary reranker labels.

A user's history is the union of their questions' profiles **minus the items that are
themselves questions** (LaMP-style time splits put a user's earlier questions, answers
included, into the later questions' profiles; keeping them would leak gold answers). Each user
gets a fresh data root. Nothing depends on the machine's speed: requests are seeded per
question, the response cache is off (every system pays its own requests), and timings are only
reported. With the offline simulator, results are simulator results and say so.

Each system's gain over the best prompt baseline (``(s - b) / |b|`` of the primary metric's mean
over all questions; ``(b - s) / |b|`` for MAE) comes with a 95% bootstrap interval that resamples
users (:mod:`hydrahead.evaluation.stats`), and its paired per-question wins and losses against
that baseline. :mod:`hydrahead.evaluation.family` runs this once per member of the offline
simulator family and reports the worst case over members.
"""

from __future__ import annotations

import hashlib
import json
import platform
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hydrahead import __version__
from hydrahead.offline import llm_endpoint
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.encoder import Encoder
from hydrahead.runtime.errors import InvalidInputError
from hydrahead.runtime.importing import import_records, lamp_users
from hydrahead.runtime.labeling import query_seed
from hydrahead.runtime.llm.client import LLMClient
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.runtime.llm.outbox import Outbox
from hydrahead.runtime.personalizer import ROLES, Personalizer
from hydrahead.runtime.retrieval import RETRIEVALS, words
from hydrahead.runtime.settings import Settings
from hydrahead.runtime.tasks import Task, get_task
from hydrahead.runtime.tasks.lamp import LampQuestion

from .stats import bootstrap_gain, paired_wins_losses

BASELINES = ("zero-shot", "random", "bm25", "dense")
HYDRA = {  # system -> the roles whose head is the user's fitted one (the others: the base head)
    "base": (),
    "reranker-fitted": ("reranker",),
    "adapter-fitted": ("adapter",),
    "fitted": ROLES,
}
SYSTEMS = (*BASELINES, *HYDRA, "fitted-binary")
# The one-request mode (``ask(greedy=False)``: the N samples only, the prompt sent once), run with
# ``one_request=True`` over the same heads as ``base`` and ``fitted``.
ONE_REQUEST = {"base-1req": (), "fitted-1req": ROLES}
ALL_SYSTEMS = (*SYSTEMS, *ONE_REQUEST)
BOOTSTRAP_RESAMPLES = 2000  # of the users, for the 95% interval of every gain
BOOTSTRAP_SEED = 0
DESCRIPTIONS = {
    "zero-shot": "no history in the prompt (n=1, T=0)",
    "random": "m random history records (n=1, T=0)",
    "bm25": "BM25 top m (n=1, T=0)",
    "dense": "cosine top m: plain RAG (n=1, T=0)",
    "base": "hydrahead, shared base heads only (nothing fitted)",
    "reranker-fitted": "hydrahead, user's reranker head + base adapter",
    "adapter-fitted": "hydrahead, base reranker + user's adapter head",
    "fitted": "hydrahead, both heads fitted (graded reranker labels)",
    "fitted-binary": "hydrahead, both heads fitted (HYDRA's binary reranker labels)",
    "base-1req": "hydrahead one-request mode (N samples, no greedy request), base heads",
    "fitted-1req": "hydrahead one-request mode (N samples, no greedy request), both fitted",
}


@dataclass
class Outcome:
    """One system's answer to one question."""

    pred: Any
    score: float  # per-question quality: 1/0 (labels), ROUGE mean (generation), -|error| (ratings)
    requests: int
    prompt_tokens: int
    completion_tokens: int
    local_ms: float
    simulated: bool  # the answer came from hydrahead's offline simulator (it says so)


@dataclass
class FitStats:
    """What fitting cost and produced for one user."""

    rule: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    reranker_pairs: int
    reranker_positive: int
    adapter_pairs: int
    adapter_positive: int
    fitted: dict[str, bool]
    state_bytes: int  # bytes of everything learned for the user (the head files)
    used: dict[str, bool] = field(default_factory=dict)  # fitted heads that passed the check
    no_records: bool = False  # the check found this user's records hurt: prompts carry none
    retrieval: str = "dense"  # what feeds the user's reranker after the fit


@dataclass
class Results:
    """Everything one benchmark run measured (``to_json`` for machines)."""

    meta: dict[str, Any]
    questions: list[dict[str, Any]] = field(default_factory=list)  # id, user, gold
    outcomes: dict[str, list[Outcome]] = field(default_factory=lambda: defaultdict(list))
    fits: list[FitStats] = field(default_factory=list)
    oracle: list[float] = field(default_factory=list)  # best candidate of `fitted`, per question
    _metric_cache: dict[tuple[str, str, int], list[list[float]]] = field(
        default_factory=dict, repr=False, compare=False)

    def summary(self, task: Task) -> dict[str, Any]:
        """Per system: metrics, gain over the best prompt baseline, wins/losses, costs."""
        primary = primary_metric(task)
        lower_better = task.kind == "regression"
        golds = [q["gold"] for q in self.questions]
        metrics = {s: task.evaluate([o.pred for o in self.outcomes[s]], golds)
                   for s in ALL_SYSTEMS if self.outcomes.get(s)}
        baselines = [s for s in BASELINES if s in metrics]
        best = (min if lower_better else max)(baselines, key=lambda s: metrics[s][primary])
        ref = metrics[best][primary]
        out: dict[str, Any] = {"primary_metric": primary, "best_baseline": best,
                               "bootstrap": {"unit": "users", "resamples": BOOTSTRAP_RESAMPLES,
                                             "seed": BOOTSTRAP_SEED, "level": 0.95},
                               "systems": {}}
        ref_scores = [o.score for o in self.outcomes[best]]
        ref_users = self.per_user(task, best)
        for s, mets in metrics.items():
            outs = self.outcomes[s]
            gain = (ref - mets[primary]) if lower_better else (mets[primary] - ref)
            wins, losses = paired_wins_losses([o.score for o in outs], ref_scores)
            _, lo, hi = bootstrap_gain(self.per_user(task, s), ref_users,
                                       n=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED,
                                       lower_is_better=lower_better)
            out["systems"][s] = {
                "description": DESCRIPTIONS[s],
                "metrics": {k: v for k, v in mets.items() if k != "n"},
                "relative_to_best_baseline": gain / abs(ref) if ref else float("nan"),
                "relative_to_best_baseline_ci95": [lo, hi],
                "wins": wins,
                "losses": losses,
                "llm_requests": int(sum(o.requests for o in outs)),
                "prompt_tokens": int(sum(o.prompt_tokens for o in outs)),
                "completion_tokens": int(sum(o.completion_tokens for o in outs)),
                "local_ms_p50": float(np.median([o.local_ms for o in outs])),
            }
        for rule in ("graded", "binary"):
            fits = [f for f in self.fits if f.rule == rule]
            if fits:
                out[f"fit_{rule}"] = {
                    "users": len(fits),
                    "llm_requests_per_user": float(np.mean([f.requests for f in fits])),
                    "tokens_per_user": float(np.mean([f.prompt_tokens + f.completion_tokens
                                                      for f in fits])),
                    "seconds_per_user": float(np.mean([f.seconds for f in fits])),
                    "reranker_positive_rate": _rate(fits, "reranker"),
                    "adapter_positive_rate": _rate(fits, "adapter"),
                    "heads_fitted": {r: sum(f.fitted[r] for f in fits) for r in ROLES},
                    "heads_used": {r: sum(f.used.get(r, f.fitted[r]) for f in fits)
                                   for r in ROLES},
                    "prompts_without_records": sum(f.no_records for f in fits),
                    "retrievals": {name: sum(f.retrieval == name for f in fits)
                                   for name in RETRIEVALS},
                    "state_bytes_max": max(f.state_bytes for f in fits),
                }
        if self.oracle:
            out["oracle_fitted"] = float(np.mean(self.oracle))
        return out

    def per_user(self, task: Task, system: str) -> list[list[float]]:
        """``system``'s per-question values of the primary metric, grouped by user (the units
        the bootstrap resamples), users in the order of the run."""
        key = (task.name, system, len(self.outcomes[system]))
        if key not in self._metric_cache:  # (ROUGE per question is not free: once per run)
            groups: dict[str, list[float]] = {}
            for q, o in zip(self.questions, self.outcomes[system]):
                groups.setdefault(q["user"], []).append(question_metric(task, o.pred, q["gold"]))
            self._metric_cache[key] = list(groups.values())
        return self._metric_cache[key]

    def to_json(self, task: Task) -> dict[str, Any]:
        """The whole run: settings, summary, and every per-question outcome."""
        return {
            "meta": self.meta,
            "summary": self.summary(task),
            "questions": [
                {**q, "systems": {s: asdict(self.outcomes[s][i]) for s in ALL_SYSTEMS
                                  if self.outcomes.get(s)}}
                for i, q in enumerate(self.questions)
            ],
            "fits": [asdict(f) for f in self.fits],
        }


# ------------------------------------------------------------------------------------- run
def run(data: Path, task_name: str, *, split: str = "dev", bundle: Path,
        llm_url: str | None = None, offline: bool | str | None = False, model: str | None = None,
        settings: Settings | None = None, budget: int = 100, users: int | None = None,
        compare_binary: bool = True, one_request: bool = False,
        encoder_threads: int | None = None,
        progress: Callable[[str], None] | None = None) -> tuple[Task, Results]:
    """Run every system on every question of ``split``; see the module docstring.

    Args:
        data: A LaMP-format directory (``<task>/`` inside it, or the task's files directly).
        task_name: Task name or task spec path (``get_task``).
        split: Which questions: ``dev`` (default), ``train`` or ``test`` (needs outputs).
        bundle: Model bundle directory.
        llm_url: OpenAI-compatible base URL; ``None`` or ``offline`` uses the simulator.
        offline: Use the offline simulator even if ``llm_url`` is given: ``True`` its
            ``default`` member, a string the member of that name (``hydrahead.offline.family``).
        model: Model name for a real endpoint (default: ``$HYDRAHEAD_LLM_MODEL``).
        settings: The pipeline settings every system shares (k, m, N, temperature, seed, ...).
        budget: Fit budget: LLM calls per user and fit.
        users: Only the first this many users.
        compare_binary: Also fit with HYDRA's binary reranker labels (``fitted-binary``).
        one_request: Also answer in the one-request mode (``base-1req``, ``fitted-1req``:
            quality and cost beside the two-request systems).
        encoder_threads: Threads of the encoder.
        progress: Called with one line per user.
    """
    settings = settings or Settings()
    task = get_task(task_name)
    all_users = lamp_users(Path(data), task, split)[:users]
    if not all_users:
        raise InvalidInputError(f"no {split} questions for {task.name} in {data}")
    b = Bundle.open(bundle)
    encoder = Encoder(b, threads=encoder_threads)
    started = time.perf_counter()
    with llm_endpoint(llm_url, offline=offline or not llm_url) as (url, simulated), \
            tempfile.TemporaryDirectory(prefix="hydrahead-bench-") as tmp:
        overrides = {"base_url": url, **({"model": model} if model else {})}
        config = LLMConfig.from_env(**overrides)
        results = Results(meta={
            "hydrahead": __version__, "task": task.name, "split": split,
            "data": str(data), "llm": url if not simulated else _simulator_name(offline),
            "model": config.model, "settings": {**settings.as_dict(), "budget": budget},
            "users": len(all_users), "bundle": str(bundle),
            "bundle_fingerprint": b.fingerprint[:12], "python": platform.python_version(),
            "bases": bases_description(b),
        })
        for i, (user_id, rows, questions) in enumerate(all_users, 1):
            t0 = time.perf_counter()
            _run_user(Path(tmp) / f"user{i}", user_id, rows, questions, task, b, encoder,
                      config, settings, budget, results, compare_binary, one_request)
            if progress:
                progress(f"[{i}/{len(all_users)}] {user_id}: {len(rows)} records, "
                         f"{len(questions)} questions, {time.perf_counter() - t0:.1f} s")
        results.meta["seconds"] = round(time.perf_counter() - started, 1)
        # What the answers say about themselves, not what was asked for: a URL may serve the
        # simulator too.
        results.meta["simulated"] = any(o.simulated for outs in results.outcomes.values()
                                        for o in outs)
    return task, results


def _simulator_name(offline: bool | str | None) -> str:
    """How the results name the simulated LLM: ``offline simulator`` (its default member) or
    ``offline simulator `<member>```."""
    if isinstance(offline, str) and offline and offline != "default":
        return f"offline simulator `{offline}`"
    return "offline simulator"


def _run_user(root: Path, user_id: str, rows: list[dict[str, Any]],
              questions: list[LampQuestion], task: Task, bundle: Bundle, encoder: Encoder,
              config: LLMConfig, s: Settings, budget: int, results: Results,
              compare_binary: bool, one_request: bool = False) -> None:
    queries = [task.query_text(q.input) for q in questions]
    golds = [q.gold or "" for q in questions]
    results.questions += [{"id": q.id, "user": user_id, "gold": g}
                          for q, g in zip(questions, golds)]
    client = LLMClient(config, cache=None, outbox=Outbox(root / "outbox.jsonl", enabled=False))
    with client, Personalizer.open(user_id, bundle=bundle, encoder=encoder, task=task,
                                   llm=client, root=root, settings=s) as p:
        import_records(p.store, task, rows)
        baselines = _Baselines(p, s, client)
        for q, g in zip(queries, golds):
            for name in BASELINES:
                results.outcomes[name].append(baselines.answer(name, q, g))
        for q, g in zip(queries, golds):
            results.outcomes["base"].append(_ask(p, q, g))  # a new user: base heads only
        results.fits.append(_fit(p, budget, "graded"))
        for name, fitted in HYDRA.items():
            if name == "base":
                continue
            with p.heads.using(fitted=fitted):
                for q, g in zip(queries, golds):
                    answer = _ask(p, q, g, oracle=results.oracle if name == "fitted" else None)
                    results.outcomes[name].append(answer)
        for name, fitted in (ONE_REQUEST.items() if one_request else ()):
            with p.heads.using(fitted=fitted):
                for q, g in zip(queries, golds):
                    results.outcomes[name].append(_ask(p, q, g, greedy=False))
        if compare_binary:
            # Fitted from the base heads, as the graded fit was; a head fitted inside the block
            # answers from then on (the binary heads answer the questions below).
            with p.heads.using(fitted=()):
                results.fits.append(_fit(p, budget, "binary"))
                for q, g in zip(queries, golds):
                    results.outcomes["fitted-binary"].append(_ask(p, q, g))


class _Baselines:
    """The prompt-based systems of one user."""

    def __init__(self, p: Personalizer, s: Settings, client: LLMClient) -> None:
        from rank_bm25 import BM25Okapi

        self.p, self.s, self.client = p, s, client
        self.records = p.store.list()
        self.bm25 = BM25Okapi([words(p.task.example_text(r)) for r in self.records])

    def answer(self, name: str, query: str, gold: str) -> Outcome:
        p, s = self.p, self.s
        t0 = time.perf_counter()
        if name == "zero-shot":
            examples = []
        elif name == "random":
            rng = np.random.default_rng(query_seed(query, s.seed))
            pick = rng.choice(len(self.records), min(s.m, len(self.records)), replace=False)
            examples = [self.records[i] for i in sorted(pick)]
        elif name == "bm25":
            scores = self.bm25.get_scores(words(query))
            examples = [self.records[i] for i in np.argsort(-scores, kind="stable")[: s.m]]
        else:
            examples = [h.record for h in p.store.search(query, k=s.m)]
        prompt = p.task.render_prompt(query, examples)
        local_ms = (time.perf_counter() - t0) * 1e3
        c = self.client.complete(prompt, n=1, temperature=0.0, max_tokens=s.max_tokens,
                           seed=query_seed(query, s.seed))
        text = c.texts[0] if c.texts else ""
        pred = p.task.parse(text)
        return Outcome(pred, question_score(p.task, pred, gold), c.requests_sent,
                       c.prompt_tokens, c.completion_tokens, local_ms, c.simulated)


def _ask(p: Personalizer, query: str, gold: str, oracle: list[float] | None = None,
         greedy: bool | None = None) -> Outcome:
    a = p.ask(query, greedy=greedy)
    if oracle is not None:
        oracle.append(max(question_score(p.task, c.answer, gold) for c in a.candidates))
    return Outcome(a.answer, question_score(p.task, a.answer, gold), a.llm_requests,
                   a.prompt_tokens, a.completion_tokens, a.local_ms, a.simulated)


def _fit(p: Personalizer, budget: int, rule: str) -> FitStats:
    summary = p.fit(budget=budget, progress=False, reranker_rule=rule)
    labels = summary.labels
    return FitStats(rule, labels.requests_sent, labels.prompt_tokens, labels.completion_tokens,
                    summary.seconds, labels.reranker.n_pairs, labels.reranker.n_positive,
                    labels.adapter.n_pairs, labels.adapter.n_positive,
                    {r: summary.reports[r] is not None for r in ROLES}, p.heads.file_bytes(),
                    {r: summary.reports[r] is not None and summary.choices.used(r)
                     for r in ROLES},
                    summary.choices.prompt.records == 0, summary.choices.retrieval.method)


def bases_description(bundle: Bundle) -> str:
    """"untrained", or what the bundle's shared bases were trained on."""
    specs = [bundle.model(role) for role in ROLES]
    if not any(spec.get("trained") for spec in specs):
        return "untrained"
    info = next(bundle.base_training(role) for role, spec in zip(ROLES, specs)
                if spec.get("trained"))
    cross = [spec for spec in specs if "cross" in str(spec.get("kind"))]
    mode = (f"cross-mode ({cross[0].get('layers', 6)} layers, {cross[0].get('max_length')} "
            "tokens) " if cross else "")
    return (f"{mode}trained on {info['users']} labelled user histories of "
            f"{', '.join(info['tasks'])}, labels from {len(info['labels_from'])} LLM(s): "
            f"{', '.join(info['labels_from'])}")


def question_score(task: Task, pred: Any, gold: str) -> float:
    """One question's quality: 1/0 (labels), (ROUGE-1 + ROUGE-L) / 2 (generation), or minus
    the absolute error with LaMP's worst-case stand-in for no answer (ratings)."""
    if task.kind == "generation":
        return task.rouge(None if pred is None else str(pred), gold)
    if task.kind == "regression":
        mae = task.evaluate([pred], [gold])["mae"]
        return -mae
    return float(task.is_correct(pred, gold))


def question_metric(task: Task, pred: Any, gold: str) -> float:
    """One question's value of the primary metric (its mean over questions is the metric):
    1/0 (accuracy), ROUGE-1 F1 (generation), the absolute error (ratings: lower is better)."""
    return task.evaluate([pred], [gold])[primary_metric(task)]


def primary_metric(task: Task) -> str:
    """The metric the headline compares: accuracy, rouge-1 or mae."""
    return {"classification": "accuracy", "generation": "rouge-1", "regression": "mae"}[task.kind]


def _rate(fits: Sequence[FitStats], role: str) -> float:
    pairs = sum(getattr(f, f"{role}_pairs") for f in fits)
    return sum(getattr(f, f"{role}_positive") for f in fits) / pairs if pairs else float("nan")


def write_json(path: Path, task: Task, results: Results) -> None:
    """Write the run as JSON (machine-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results.to_json(task), indent=1, default=str) + "\n",
                    encoding="utf-8")


def source_fingerprint(root: Path | None = None) -> str:
    """sha256 (12 hex digits) of the installed hydrahead sources: which code made the numbers."""
    base = root or Path(__file__).resolve().parents[1].parent
    digest = hashlib.sha256()
    for folder in ("runtime", "hydrahead", "export", "train"):
        for path in sorted((base / folder).rglob("*")):
            wanted = path.suffix in (".py", ".json") and "__pycache__" not in path.parts
            if wanted and path.is_file():
                digest.update(str(path.relative_to(base)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]
