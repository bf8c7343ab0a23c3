"""Server-side commands: ``hydrahead export`` (bundles) and ``hydrahead train`` (shared bases).

They need the ``export`` / ``train`` extras and import them only when they run. The usual
sequence, on git-lamp's training users and then its dev users::

    hydrahead train labels --data D --task GIT_area --out labels.npz --work work/ --offline
    hydrahead train fit labels.npz --out trained/
    hydrahead train export trained/ --out bundle-trained/
    hydrahead --bundle bundle-trained/ train evaluate --data D --task GIT_area --offline

Across machines, each labels a shard (``--shard 0/4`` ... ``--shard 3/4``, each with its own
``--work``) and ``hydrahead train merge labels.npz shard-*.npz`` puts them together; ``train
fit`` also takes several datasets (other tasks, other LLMs) and merges them itself.

``train evaluate`` is ``hydrahead bench quality`` (:mod:`hydrahead.cli_bench`) under a second
name. What the commands do beyond options and printing lives in :mod:`hydrahead.export` and
:mod:`hydrahead.train`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from typing import Any

import click

from hydrahead.cli_bench import bench_quality
from hydrahead.cli_common import Context, Group, echo_err, lamp_options, pass_ctx, with_llm
from hydrahead.train.settings import TrainSettings


# ---------------------------------------------------------------------------- export
@click.group(cls=Group)
def export() -> None:
    """Server side: build the device model bundle (needs hydrahead[export])."""


@export.command("bundle")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle directory.")
@click.option("--sign-key", type=click.Path(dir_okay=False, exists=True),
              help="Sign the manifest with this key (from `hydrahead bundle keygen`).")
@click.option("--untrained", is_flag=True,
              help="Ship untrained bases (unfitted, the pipeline is then plain dense RAG) "
                   "instead of the trained ones.")
def export_bundle(out: str, overwrite: bool, sign_key: str | None, untrained: bool) -> None:
    """Export the int8 encoder and the shared bases (trained, unless --untrained) into a bundle
    directory."""
    from hydrahead.export.make import make_bundle

    logging.getLogger("hydrahead").setLevel(logging.INFO)
    made = make_bundle(out, overwrite=overwrite, sign_key=sign_key, untrained=untrained)
    signed = f", signed by key {made.key_id}" if made.key_id else ""
    click.echo(f"bundle written to {made.path} in {made.seconds:.1f} s{signed}")


# ---------------------------------------------------------------------------- train
@click.group(cls=Group)
def train() -> None:
    """Server side: train the shared bases on many users (needs hydrahead[export])."""


class ShardType(click.ParamType):
    """``I/N``: shard I of N (from 0), as ``(i, n)``."""

    name = "I/N"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[int, int]:
        from hydrahead.runtime.errors import InvalidInputError
        from hydrahead.train.labels import check_shard, parse_shard

        try:
            return check_shard(value) if isinstance(value, tuple) else parse_shard(value)
        except InvalidInputError as exc:
            self.fail(str(exc), param, ctx)


@train.command("labels")
@lamp_options(split="train")
@click.option("--shard", type=ShardType(),
              help="Label only shard I of N of the users (user number p, in file order after "
                   "--users, is in shard p mod N); merge the shards with `train merge`.")
@click.option("--llm-name",
              help="What the labels' LLM is called in the dataset (merging keeps the labels of "
                   "differently named LLMs apart). Default: 'offline simulator' (with the member's name "
                   "for --offline MEMBER) or --model.")
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
                 shard: tuple[int, int] | None, llm_name: str | None, budget: int, workers: int,
                 max_requests: int | None, model: str | None, out: str, work: str,
                 llm_url: str | None, offline: str | None) -> None:
    """Label the training users as their devices would (the runtime's labeller): all of them,
    or one shard."""
    from hydrahead.export.make import ensure_bundle
    from hydrahead.offline import llm_endpoint
    from hydrahead.runtime.llm.config import LLMConfig
    from hydrahead.train.labels import LabelRun, build_dataset

    ensure_bundle(obj.bundle_dir, echo=echo_err)
    with llm_endpoint(llm_url, offline=offline or not llm_url,
                      announce=echo_err) as (url, simulated):
        dataset = build_dataset(
            data, task_name, out, bundle=obj.bundle_dir, work=work,
            llm=LLMConfig.from_env(base_url=url, model=model), simulated=simulated,
            split=split, users=users, shard=shard,
            llm_name=llm_name or (f"offline simulator {offline}" if offline and offline != "default"
                                  else None),
            run=LabelRun(budget=budget), workers=workers, max_requests=max_requests)
    click.echo(json.dumps(dataset.meta, indent=1))
    echo_err(f"wrote {out}")


def _train_options(fn):
    for f in reversed(fields(TrainSettings)):
        fn = click.option(f"--{f.name.replace('_', '-')}", type=type(f.default),
                          default=f.default, show_default=True)(fn)
    return fn


@train.command("merge")
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
def train_merge(out: str, inputs: tuple[str, ...], overwrite: bool) -> None:
    """Merge label datasets into OUT: the shards of one run (giving exactly the unsharded
    run's dataset), or other tasks and LLMs (each user keeps its source)."""
    from pathlib import Path

    from hydrahead.train.labels import save_dataset
    from hydrahead.train.merge import merge_datasets

    target = Path(out).resolve()
    if any(Path(i).resolve() == target for i in inputs):
        raise click.BadParameter(f"{out} is also an input; write the merge elsewhere",
                                 param_hint="OUT")
    if target.exists() and not overwrite:
        raise click.BadParameter(f"{out} exists (the order is OUT then the inputs); pass "
                                 "--overwrite to replace it", param_hint="OUT")
    merged = merge_datasets(inputs)
    save_dataset(out, merged)
    for i, source in enumerate(merged.sources):
        click.echo(f"{source['task']} labelled by {source['llm']}: "
                   f"{int((merged.user_source == i).sum())} users from "
                   f"{len(source['runs'])} run(s)")
    echo_err(f"wrote {out}: {len(merged.users)} users, "
             + ", ".join(f"{len(merged.pairs[r])} {r} groups" for r in merged.pairs))


@train.command("fit")
@click.argument("labels", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--roles", default="reranker,adapter", show_default=True)
@_train_options
def train_fit(labels: tuple[str, ...], out: str, roles: str, **settings: Any) -> None:
    """Train the bases on one label dataset, or several merged (one process; under torchrun
    use -m hydrahead.train.trainer)."""
    from hydrahead.train.trainer import train as run_training

    report = run_training(labels[0] if len(labels) == 1 else list(labels), out,
                          TrainSettings(**settings), roles=roles.split(","))
    if len(report["sources"]) > 1:
        for source in report["sources"]:
            click.echo(f"source: {source['task']} labelled by {source['llm']}, "
                       f"{source['users']} users")
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
    from hydrahead.export.trained import bundle_with_trained_bases

    roles = bundle_with_trained_bases(obj.bundle_dir, trained, out, metrics=metrics)
    click.echo(f"wrote the bundle {out} with trained {', '.join(roles)} bases")


train.add_command(bench_quality, "evaluate")
