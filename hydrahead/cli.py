"""The ``hydrahead`` command line: a thin shell over the library.

Device commands (user, fit, ask, outbox, forget, llm, demo) import only ``hydrahead.runtime``
(and the offline simulator when asked for it); the server-side commands (``export``, ``train``:
:mod:`hydrahead.cli_server`) and ``bench`` (:mod:`hydrahead.cli_bench`) import
``hydrahead.export``, ``hydrahead.train`` and ``hydrahead.evaluation`` lazily, when they run.
Every group is a :class:`~hydrahead.cli_common.Group`: a library error ends a command with a
one-line message and exit status 1.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from hydrahead import __version__
from hydrahead.cli_bench import bench
from hydrahead.cli_bundle import bundle
from hydrahead.cli_common import (
    ENV_BUNDLE,
    Context,
    Group,
    check_offline_member,
    echo_err,
    pass_ctx,
    pipeline_settings,
    show_progress,
    with_llm,
)
from hydrahead.cli_server import export, train
from hydrahead.cli_user import existing_user, short, tasks, user
from hydrahead.runtime.settings import Settings


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hydrahead")
@click.option(
    "--home",
    envvar="HYDRAHEAD_HOME",
    type=click.Path(file_okay=False),
    help="Data root (default: $HYDRAHEAD_HOME or the platform's user data dir).",
)
@click.option(
    "--bundle",
    envvar=ENV_BUNDLE,
    type=click.Path(file_okay=False),
    help="Model bundle directory (default: <home>/bundle).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log progress.")
@click.pass_context
def cli(ctx: click.Context, home: str | None, bundle: str | None, verbose: bool) -> None:
    """hydrahead: personalize a black-box LLM on the device (HYDRA)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    ctx.obj = Context(home, bundle)


# ---------------------------------------------------------------------------- helpers
def _open(obj: Context, user: str, task: str | None, llm_url: str | None = None,
          model: str | None = None, settings: Settings | None = None, new_task: bool = False):
    """Open an existing user's Personalizer with ``settings`` (default: the Personalizer's);
    the LLM comes from ``llm_url`` or the environment."""
    from hydrahead.runtime.llm.config import LLMConfig
    from hydrahead.runtime.personalizer import Personalizer
    from hydrahead.runtime.users import resolve_task

    existing_user(obj, user)
    config = (LLMConfig.from_env(base_url=llm_url, model=model) if llm_url or model
              else None)
    return Personalizer.open(
        user,
        bundle=obj.bundle_dir,
        root=obj.root,
        llm=config,
        task=resolve_task(user, task, obj.root),
        new_task=new_task,
        settings=settings,
    )


# ---------------------------------------------------------------------------- fit / ask
@cli.command()
@click.argument("user_id")
@click.option("--task", help="Task (default: the user's one task).")
@click.option("--new-task", is_flag=True,
              help="Add --task to a user who has other tasks (its own heads, labels, feedback).")
@click.option("--budget", default=200, show_default=True, type=click.IntRange(min=0),
              help="Most HTTP requests to send to the LLM (cached answers are free).")
@click.option("--model", help="Model name (default: $HYDRAHEAD_LLM_MODEL).")
@click.option("--json", "as_json", is_flag=True, help="Print the fit summary as JSON.")
@with_llm
@pass_ctx
def fit(obj: Context, user_id: str, task: str | None, new_task: bool, budget: int,
        model: str | None, as_json: bool, llm_url: str | None, offline: str | None) -> None:
    """Fit the user's reranker and adapter heads for a task (labels come from the LLM)."""
    from hydrahead.offline import llm_endpoint

    with llm_endpoint(llm_url, offline=offline, announce=echo_err) as (url, _):
        with _open(obj, user_id, task, llm_url=url, model=model, new_task=new_task) as p:
            s = p.fit(budget=budget, progress=show_progress(as_json))
    if as_json:
        click.echo(json.dumps(_fit_dict(s), indent=2))
    else:
        _print_fit(s)


@cli.command()
@click.argument("user_id")
@click.argument("query")
@click.option("--task", help="Task (default: the user's one task).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@click.option("--model", help="Model name (default: $HYDRAHEAD_LLM_MODEL).")
@click.option("-k", "k", type=click.IntRange(min=1), help="History records retrieved (20).")
@click.option("-m", "m", type=click.IntRange(min=1), help="Records put in the prompt (4).")
@click.option("-n", "n", type=click.IntRange(min=1), help="Candidates asked of the LLM (8).")
@click.option("--temperature", type=click.FloatRange(min=0.0), help="Sampling temperature (1.0).")
@click.option("--one-request", is_flag=True,
              help="Send the prompt once (the N samples only; no greedy request): the unfitted "
                   "adapter picks the samples' consensus.")
@with_llm
@pass_ctx
def ask(obj: Context, user_id: str, query: str, task: str | None, as_json: bool,
        model: str | None, k: int | None, m: int | None, n: int | None,
        temperature: float | None, one_request: bool, llm_url: str | None,
        offline: str | None) -> None:
    """Ask a question as this user; prints the answer and the prompt that left the device."""
    from hydrahead.offline import llm_endpoint

    settings = pipeline_settings(k=k, m=m, n=n, temperature=temperature)
    with llm_endpoint(llm_url, offline=offline, announce=echo_err) as (url, _):
        with _open(obj, user_id, task, llm_url=url, model=model, settings=settings) as p:
            a = p.ask(query, greedy=False if one_request else None)
    if as_json:
        click.echo(json.dumps(_answer_dict(a), indent=2))
    else:
        _print_answer(a)


# ---------------------------------------------------------------------------- outbox / forget
@cli.command()
@click.argument("user_id")
@click.option("--tail", "n", default=10, show_default=True, help="Show the last N requests.")
@click.option("--summary", is_flag=True,
              help="Total the requests and tokens per day (UTC) and model instead.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the records as JSON lines (with --summary: the totals as JSON).")
@pass_ctx
def outbox(obj: Context, user_id: str, n: int, summary: bool, as_json: bool) -> None:
    """Show what left the device: every request body sent to the LLM, as sent."""
    from hydrahead.runtime.llm.outbox import Outbox, format_record
    from hydrahead.runtime.user_files import OUTBOX_FILE

    path = existing_user(obj, user_id) / OUTBOX_FILE
    if summary:
        totals = Outbox(path).summary()
        if as_json:
            click.echo(json.dumps(totals, indent=2))
        else:
            _print_outbox_summary(user_id, totals)
        return
    records = Outbox(path).tail(n)
    if not records:
        click.echo(f"no requests recorded for {user_id} ({path})")
    for rec in records:
        # the whole body, as sent: no width cut
        click.echo(json.dumps(rec) if as_json
                   else format_record(rec, bodies=True, width=sys.maxsize))


def _print_outbox_summary(user_id: str, totals: dict[str, Any]) -> None:
    """The ledger's totals, then one line per day and model."""
    click.echo(f"{user_id}: {totals['records']} requests ({totals['failed']} without a 2xx "
               f"answer), {totals['prompt_tokens']} prompt + {totals['completion_tokens']} "
               f"completion tokens, {totals['bytes_sent']} B sent ({totals['path']})")
    if totals["unreadable_lines"]:
        click.echo(f"{totals['unreadable_lines']} unreadable lines skipped")
    if totals["dropped_records"]:
        click.echo(f"of which {totals['dropped_records']} are counted only: their entries were "
                   f"dropped to keep the outbox within {totals['max_bytes']:,} bytes")
    rows = totals["by_day_model"]
    if not rows:
        return
    width = max(len("model"), *(len(r["model"]) for r in rows))
    click.echo(f"{'day':10}  {'model':{width}}  {'requests':>8}  {'prompt tok':>10}  "
               f"{'compl. tok':>10}")
    for r in rows:
        click.echo(f"{r['day']:10}  {r['model']:{width}}  {r['records']:>8}  "
                   f"{r['prompt_tokens']:>10}  {r['completion_tokens']:>10}")


@cli.command()
@click.argument("user_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def forget(obj: Context, user_id: str, yes: bool) -> None:
    """Delete everything stored for a user (history, index, heads, cache, ledger)."""
    from hydrahead.runtime.users import forget_user

    existing_user(obj, user_id)
    if not yes:
        click.confirm(f"Delete all data of {user_id}?", abort=True)
    forget_user(user_id, obj.root)
    click.echo(f"forgot {user_id}")


# ---------------------------------------------------------------------------- llm
@cli.group()  # a Group too (group_class)
def llm() -> None:
    """The LLM endpoint."""


@llm.command("serve-offline")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--model", "member", default="default", show_default=True, metavar="MEMBER",
              callback=lambda ctx, param, value: check_offline_member(value),
              help="The member of the simulated family to serve (`hydrahead llm members`); a "
                   "request's model \"sim:<member>\" picks another.")
@click.option("--capture", type=click.Path(dir_okay=False), help="Append received requests here.")
def serve_offline(host: str, port: int, member: str, capture: str | None) -> None:
    """Serve the offline simulated LLM (OpenAI-compatible) until interrupted."""
    from hydrahead.offline.server import serve_forever

    serve_forever(host, port, member=member, capture_path=capture)  # a taken port: one line


@llm.command("members")
def llm_members() -> None:
    """List the members of the offline simulated LLM family (one line each)."""
    from hydrahead.offline import SIMULATOR_NOTE
    from hydrahead.offline.family import describe_members

    for line in describe_members():
        click.echo(line)
    echo_err(f"serve one with `hydrahead llm serve-offline --model NAME` or `--offline NAME`; "
             f"a request's model \"sim:NAME\" picks one from any offline server. "
             f"{SIMULATOR_NOTE}")


# ---------------------------------------------------------------------------- demo
@cli.command()
@click.option("--budget", default=120, show_default=True, help="LLM calls for fitting.")
@click.option("--source", type=click.Path(exists=True, file_okay=False),
              help="Publish this bundle directory instead of building one (when the app has "
                   "no bundle yet).")
@pass_ctx
def demo(obj: Context, budget: int, source: str | None) -> None:
    """Publish a trained bundle and pull it as an app would, import a sample history, and show
    held-out answers before and after fitting."""
    from hydrahead.demo import run_demo

    run_demo(obj.root, obj.bundle_dir, budget=budget,
             source=Path(source) if source else None, echo=click.echo)


# ---------------------------------------------------------------------------- printing
def _print_fit(s: Any) -> None:
    lab = s.labels
    click.echo(
        f"labelled {lab.reranker.n_pairs} reranker pairs ({lab.reranker.n_positive} positive) "
        f"and {lab.adapter.n_pairs} adapter pairs ({lab.adapter.n_positive} positive) "
        f"from {lab.queries_used} history queries; {lab.llm_calls} LLM calls "
        f"({lab.llm_calls_cached} from cache; {lab.requests_sent} requests sent, "
        f"{lab.prompt_tokens + lab.completion_tokens} tokens)"
    )
    said = {"fitted": "the user's new head answers (the shared base head did)",
            "refitted": "a new head replaced the user's previous one",
            "reverted": "the shared base head replaced the user's previous head",
            "kept-base": "the shared base head still answers"}
    for role, outcome in s.outcomes.items():
        rep, check = s.reports.get(role), s.choices.roles.get(role)
        fitted = "" if rep is None else f"; fitted in {rep.seconds * 1e3:.0f} ms ({rep.epochs} epochs)"
        reason = f" ({check.reason})" if check is not None else ""
        click.echo(f"  {role}: {outcome}: {said[outcome]}{reason}{fitted}; head size "
                   f"{s.head_bytes[role]} bytes")
    if lab.simulated:
        from hydrahead.offline import SIMULATOR_NOTE

        click.echo(SIMULATOR_NOTE)


def _print_answer(a: Any) -> None:
    click.echo(f"answer: {a.answer!r}")
    if a.simulated:
        from hydrahead.offline import SIMULATOR_NOTE

        click.echo(SIMULATOR_NOTE)
    click.echo(f"local latency: {a.local_ms:.1f} ms (LLM: {a.timings_ms['llm']:.1f} ms; "
               f"{a.llm_requests} request(s), {a.prompt_tokens} prompt + "
               f"{a.completion_tokens} completion tokens)")
    click.echo("reranked history records sent:")
    for it in a.items:
        click.echo(f"  {it.rerank_score:.3f}  {it.record.id}  {short(it.record.text, 70)}")
    click.echo("candidates (adapter score):")
    for c in a.candidates:
        click.echo(f"  {c.score:.3f}  {short(c.text, 70)}")
    click.echo("prompt that left the device:\n" + a.prompt)


def _fit_dict(s: Any) -> dict[str, Any]:
    lab = s.labels
    return {
        "labels": {"reranker_pairs": lab.reranker.n_pairs, "adapter_pairs": lab.adapter.n_pairs,
                   "queries": lab.queries_used},
        "llm": {"calls": lab.llm_calls, "cached": lab.llm_calls_cached,
                "requests_sent": lab.requests_sent, "prompt_tokens": lab.prompt_tokens,
                "completion_tokens": lab.completion_tokens, "simulated": lab.simulated},
        "heads": {role: None if rep is None else {"epochs": rep.epochs, "seconds": rep.seconds}
                  for role, rep in s.reports.items()},
        "outcomes": {role: {"outcome": outcome, "reason": getattr(
            s.choices.roles.get(role), "reason", None)} for role, outcome in s.outcomes.items()},
        "head_bytes": s.head_bytes,
    }


def _answer_dict(a: Any) -> dict[str, Any]:
    return {
        "answer": a.answer,
        "text": a.text,
        "prompt": a.prompt,
        "simulated": a.simulated,
        "candidates": [
            {"text": c.text, "answer": c.answer, "score": c.score, "features": c.features}
            for c in a.candidates
        ],
        "items": [
            {
                "id": it.record.id,
                "retrieval_score": it.retrieval_score,
                "rerank_score": it.rerank_score,
            }
            for it in a.items
        ],
        "timings_ms": a.timings_ms,
        "llm_requests": a.llm_requests,
        "tokens": {"prompt": a.prompt_tokens, "completion": a.completion_tokens},
    }


# The other command groups live in their own modules.
cli.add_command(bundle)
cli.add_command(user)
cli.add_command(tasks)
cli.add_command(export)
cli.add_command(train)
cli.add_command(bench)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="hydrahead")


if __name__ == "__main__":  # pragma: no cover
    main()
