"""Server-side commands: ``hydrahead export`` (bundles) and ``hydrahead train`` (shared bases).

They need the ``export`` / ``train`` extras and import them only when they run. The usual
sequence, on git-lamp's training users and then its dev users::

    hydrahead train labels --data D --task GIT_area --out labels.npz --work work/ --offline
    hydrahead train fit labels.npz --out trained/
    hydrahead train export trained/ --out bundle-trained/
    hydrahead --bundle bundle-trained/ train evaluate --data D --task GIT_area --offline
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import click

from hydrahead.cli_common import (
    Context,
    fail,
    lamp_options,
    llm_endpoint,
    need_bench_extra,
    pass_ctx,
    with_llm,
)
from hydrahead.train.settings import TrainSettings


# ---------------------------------------------------------------------------- export
@click.group()
def export() -> None:
    """Server side: build the device model bundle (needs hydrahead[export])."""


@export.command("bundle")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle directory.")
@click.option("--sign-key", type=click.Path(dir_okay=False, exists=True),
              help="Sign the manifest with this key (from `hydrahead bundle keygen`).")
def export_bundle(out: str, overwrite: bool, sign_key: str | None) -> None:
    """Export the int8 encoder and the shared bases into a bundle directory."""
    from hydrahead.export import missing_requirements
    from hydrahead.runtime.errors import HydraheadError

    missing = missing_requirements()
    if missing:
        raise click.ClickException(
            "exporting a bundle needs the exporter and the model weights: "
            + " && ".join(missing))
    from hydrahead.export.bundle import build_bundle
    from hydrahead.runtime.bundle_signing import sign_bundle

    logging.getLogger("hydrahead").setLevel(logging.INFO)
    t0 = time.perf_counter()
    try:
        path = build_bundle(out, overwrite=overwrite)
        signed = f", signed by key {sign_bundle(path, sign_key)}" if sign_key else ""
    except HydraheadError as exc:
        fail(exc)
    click.echo(f"bundle written to {path} in {time.perf_counter() - t0:.1f} s{signed}")


# ---------------------------------------------------------------------------- train
@click.group()
def train() -> None:
    """Server side: train the shared bases on many users (needs hydrahead[export])."""


@train.command("labels")
@lamp_options(split="train")
@click.option("--budget", default=200, show_default=True, type=click.IntRange(min=1),
              help="LLM calls per user.")
@click.option("--workers", default=4, show_default=True, type=click.IntRange(min=1),
              help="Users labelled concurrently.")
@click.option("--max-requests", type=click.IntRange(min=1),
              help="Start no new user once this many requests were sent.")
@click.option("--model", help="Model name for --llm-url (default: $HYDRAHEAD_LLM_MODEL).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Dataset (.npz).")
@click.option("--work", required=True, type=click.Path(file_okay=False),
              help="Working directory (per-user stores and response caches: reruns resume).")
@with_llm
@pass_ctx
def train_labels(obj: Context, data: str, task_name: str, split: str, users: int | None,
                 budget: int, workers: int, max_requests: int | None, model: str | None,
                 out: str, work: str, llm_url: str | None, offline: bool) -> None:
    """Label the training users as their devices would (the runtime's labeller)."""
    from hydrahead.demo import ensure_bundle
    from hydrahead.runtime.errors import HydraheadError
    from hydrahead.runtime.llm.config import LLMConfig
    from hydrahead.train.labels import LabelSettings, build_dataset

    try:
        ensure_bundle(obj.bundle_dir, echo=lambda s: click.echo(s, err=True))
        with llm_endpoint(offline or not llm_url) as url:
            overrides = {"base_url": url or llm_url, **({"model": model} if model else {})}
            dataset = build_dataset(
                data, task_name, out, bundle=obj.bundle_dir, work=work,
                llm=LLMConfig.from_env(**overrides), simulated=url is not None, split=split,
                users=users, settings=LabelSettings(budget=budget), workers=workers,
                max_requests=max_requests)
    except HydraheadError as exc:
        fail(exc)
    click.echo(json.dumps(dataset.meta, indent=1))
    click.echo(f"wrote {out}", err=True)


def _train_options(fn):
    for f in reversed(fields(TrainSettings)):
        fn = click.option(f"--{f.name.replace('_', '-')}", type=type(f.default),
                          default=f.default, show_default=True)(fn)
    return fn


@train.command("fit")
@click.argument("labels", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--roles", default="reranker,adapter", show_default=True)
@_train_options
def train_fit(labels: str, out: str, roles: str, **settings: object) -> None:
    """Train the bases (one process; under torchrun use -m hydrahead.train.trainer)."""
    from hydrahead.train.trainer import train as run_training

    report = run_training(labels, out, TrainSettings(**settings), roles=roles.split(","))
    for role, r in report["roles"].items():
        best = min(e["val_loss"] for e in r["joint"])
        click.echo(f"{role}: {r['groups']} groups of {r['users']} users, joint val loss "
                   f"{r['joint'][0]['val_loss']:.4f} -> {best:.4f}, {r['seconds']} s")
    click.echo(f"wrote {out}/reranker.npz, adapter.npz and training.json", err=True)



@train.command("export")
@click.argument("trained", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="The new bundle (a copy of --bundle with the trained bases).")
@click.option("--metrics", type=click.Path(exists=True, dir_okay=False),
              help="A `train evaluate` JSON whose dev metrics go into the manifest.")
@pass_ctx
def train_export(obj: Context, trained: str, out: str, metrics: str | None) -> None:
    """Put trained bases (fast or cross mode; ONNX, parity-gated) into a copy of the bundle."""
    from hydrahead.export.bases import write_base
    from hydrahead.runtime.bundle import Bundle
    from hydrahead.runtime.errors import HydraheadError
    from hydrahead.runtime.pair_base import PairBase

    report = json.loads((Path(trained) / "training.json").read_text(encoding="utf-8"))
    dev = json.loads(Path(metrics).read_text(encoding="utf-8"))["summary"] if metrics else None
    target = Path(out)
    if target.exists():
        raise click.ClickException(f"{target} exists; choose a new --out")
    try:
        Bundle.open(obj.bundle_dir).copy_to(target)
        for role in report["roles"]:
            meta = {"data": report["data"], "settings": report["settings"],
                    "fit": {k: v for k, v in report["roles"][role].items()
                            if k not in ("joint", "base_head")},
                    **({"dev": dev} if dev else {})}
            if (Path(trained) / f"{role}.cross").is_dir():  # cross mode
                from hydrahead.export.cross_base import write_cross_base

                write_cross_base(target, role, Path(trained) / f"{role}.cross", training=meta)
            else:
                write_base(target, role, PairBase.load(Path(trained) / f"{role}.npz"),
                           training=meta)
    except HydraheadError as exc:
        shutil.rmtree(target, ignore_errors=True)
        fail(exc)
    click.echo(f"wrote the bundle {target} with trained {', '.join(report['roles'])} bases")


@train.command("evaluate")
@lamp_options(split="dev")
@click.option("--budget", default=100, show_default=True, type=click.IntRange(min=0))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Where the JSON report (and its Markdown and chart) go.")
@with_llm
@pass_ctx
def train_evaluate(obj: Context, data: str, task_name: str, split: str, users: int | None,
                   budget: int, out: str, llm_url: str | None, offline: bool) -> None:
    """Dev users with the bundle's bases: each user's heads fitted on the device, frozen base
    (the quality benchmark: prompt baselines, base heads, fitted heads)."""
    need_bench_extra()
    from hydrahead.benchmark import quality, report as reports
    from hydrahead.runtime.errors import HydraheadError

    settings = quality.Settings(budget=budget)
    try:
        task, results = quality.run(
            Path(data), task_name, split=split, bundle=obj.bundle_dir, llm_url=llm_url,
            offline=offline, settings=settings, users=users, compare_binary=False,
            progress=lambda s: click.echo(s, err=True))
    except HydraheadError as exc:
        fail(exc)
    section, files = reports.write_all(Path(out), task, results,
                                       command=shlex.join(["hydrahead", *sys.argv[1:]]))
    click.echo(section)
    click.echo(json.dumps(asdict(settings)), err=True)
    for path in files.values():
        click.echo(f"wrote {path}", err=True)
