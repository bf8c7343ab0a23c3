"""``hydrahead bench``: the quality evaluation (:mod:`hydrahead.evaluation`) and its synthetic
persona world.

``bench quality`` is also ``hydrahead train evaluate`` (the same command, registered in
:mod:`hydrahead.cli_server`): evaluating trained bases is a quality run with the bundle that
holds them (``hydrahead --bundle bundle-trained/ train evaluate ...``). ``bench quality
--family`` runs every member of the offline simulator family and writes one family report, worst
case first; ``--protocol`` picks the bundle each member is evaluated with
(:mod:`hydrahead.evaluation.family`).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from hydrahead.cli_common import (
    Context,
    Group,
    echo_err,
    lamp_options,
    need_bench_extra,
    pass_ctx,
    pipeline_settings,
    with_llm,
)

# hydrahead.evaluation.family.PROTOCOLS, spelled here so that the CLI imports no evaluation code
PROTOCOLS = ("untrained", "matched", "transfer", "loto")


@click.group(cls=Group)
def bench() -> None:
    """Benchmarks (need hydrahead[bench])."""


@bench.command("quality")
@lamp_options(split="dev")
@click.option("--budget", default=100, show_default=True, type=click.IntRange(min=0),
              help="Fit budget: LLM calls per user.")
@click.option("-k", "k", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("-m", "m", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("-n", "n", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--model", help="Model name for --llm-url (default: $HYDRAHEAD_LLM_MODEL).")
@click.option("--no-binary", is_flag=True, help="Skip the fit with HYDRA's binary labels.")
@click.option("--one-request", is_flag=True,
              help="Also answer in the one-request mode (N samples, no greedy request), base "
                   "and fitted heads: quality and cost beside the two-request pipeline.")
@click.option("--out", default="bench/results", show_default=True,
              type=click.Path(file_okay=False), help="Where the JSON, Markdown and PNG go.")
@click.option("--report", type=click.Path(dir_okay=False),
              help="Also replace this run's section of a Markdown report (bench/QUALITY.md).")
@click.option("--family", is_flag=True,
              help="Run every member of the offline simulator family (the same users; "
                   "--llm-url is not used) and write one family report, worst case first.")
@click.option("--members", help="Comma-separated family members to run (implies --family).")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="untrained",
              show_default=True,
              help="The bundle each member is evaluated with: the one given (untrained), "
                   "BASES/matched/<member>/, BASES/transfer/<member>/ (bases trained without "
                   "that member: leave one LLM out) or BASES/loto/<task>/ (leave one task out).")
@click.option("--bases", type=click.Path(file_okay=False),
              help="The protocol bundles' directory (bench/train_family.sh builds it).")
@with_llm
@pass_ctx
def bench_quality(obj: Context, data: str, task_name: str, split: str, users: int | None,
                  budget: int, k: int, m: int, n: int, seed: int, model: str | None,
                  no_binary: bool, one_request: bool, out: str, report: str | None,
                  family: bool,
                  members: str | None, protocol: str, bases: str | None, llm_url: str | None,
                  offline: bool | str | None) -> None:
    """Every system on every question, same LLM and settings: one table, JSON and a chart.

    Prompt-based baselines (zero-shot, random, BM25 and dense top m) against hydrahead with
    the bundle's shared base heads, each head fitted alone, and both fitted; each system's gain
    over the best prompt baseline with a 95% bootstrap interval over users. Without --llm-url
    the offline simulator answers (and every output says so). With a bundle of trained bases
    (--bundle), this evaluates them (also as `hydrahead train evaluate`). With --family or
    --members, one run per simulated LLM of the family and one family report; --protocol
    matched / transfer / loto evaluates each member with the bundle of --bases that the
    protocol names.
    """
    need_bench_extra()
    from hydrahead.evaluation import family as families, quality, report as reports
    from hydrahead.export.make import ensure_bundle
    from hydrahead.runtime.tasks import get_task

    settings = pipeline_settings(k=k, m=m, n=n, seed=seed)
    command = shlex.join(["hydrahead", *sys.argv[1:]])
    report_path = Path(report) if report else None
    bases_dir = Path(bases) if bases else None
    options: dict[str, Any] = {"split": split, "settings": settings, "budget": budget, "users": users,
               "compare_binary": not no_binary, "one_request": one_request, "model": model}
    if family or members:
        names = families.member_names(members.split(",") if members else None)
        if protocol == "untrained":
            ensure_bundle(obj.bundle_dir, echo=echo_err)
        # (run_family checks every member's bundle before the first run starts)
        task, runs = families.run_family(
            Path(data), task_name, members=names, protocol=protocol, bundle=obj.bundle_dir,
            bases=bases_dir, progress=echo_err, **options)
        for results in runs.values():
            _, files = reports.write_all(Path(out), task, results, command=command)
            for path in files.values():
                echo_err(f"wrote {path}")
        section, files = families.write_family(Path(out), task, runs, command=command,
                                               report=report_path)
    else:
        member = families.member_of(offline, llm_url)
        bundle = families.protocol_bundle(protocol, given=obj.bundle_dir, bases=bases_dir,
                                          member=member, task=get_task(task_name).name)
        if protocol == "untrained":
            ensure_bundle(obj.bundle_dir, echo=echo_err)
        task, results = quality.run(
            Path(data), task_name, bundle=bundle, llm_url=llm_url, offline=offline,
            progress=echo_err, **options)
        results.meta.update(member=member if results.meta["simulated"] else None,
                            protocol=protocol)
        section, files = reports.write_all(Path(out), task, results, command=command,
                                           report=report_path)
    click.echo(section)
    for path in files.values():
        echo_err(f"wrote {path}")


@bench.command("world")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--train-users", default=12, show_default=True, type=click.IntRange(min=0))
@click.option("--dev-users", default=12, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=None, type=int,
              help="Makes the users (default: 0; 1 with --spec-task).")
@click.option("--spec-task", is_flag=True,
              help="Write the world as a task given by a spec file (OUT/task.json), under "
                   "another label set.")
def bench_world(out: str, train_users: int, dev_users: int, seed: int | None,
                spec_task: bool) -> None:
    """Write the synthetic persona world (LaMP format, task GIT_area) to a directory."""
    from hydrahead.evaluation.persona_world import write_spec_world, write_world

    if spec_task:
        path = write_spec_world(out, train_users=train_users, dev_users=dev_users,
                                seed=1 if seed is None else seed)
        click.echo(f"wrote the persona world as a spec-file task to {path} (use --data {path} "
                   f"--task {path / 'task.json'})")
        return
    path = write_world(out, train_users=train_users, dev_users=dev_users,
                       seed=0 if seed is None else seed)
    click.echo(f"wrote the persona world to {path} (use --data {path} --task GIT_area)")
