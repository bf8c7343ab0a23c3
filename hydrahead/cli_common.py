"""What the command-line modules share: the options context, LLM endpoint options, errors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

ENV_BUNDLE = "HYDRAHEAD_BUNDLE"
SIMULATOR_NOTE = (
    "[offline simulator: answers come from hydrahead's simulated LLM, not a real model]"
)


class Context:
    """Options shared by every command."""

    def __init__(self, home: str | None, bundle: str | None) -> None:
        from hydrahead.runtime.paths import data_root

        self.root = data_root(home)
        self.bundle_dir = Path(bundle or os.environ.get(ENV_BUNDLE) or self.root / "bundle")


pass_ctx = click.make_pass_decorator(Context)


def fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from exc


@contextmanager
def llm_endpoint(offline: bool) -> Iterator[str | None]:
    """Start the offline simulator for the duration of a command when asked to."""
    if not offline:
        yield None
        return
    from hydrahead.offline.server import OfflineLLMServer

    with OfflineLLMServer() as server:
        click.echo(f"{SIMULATOR_NOTE} at {server.url}", err=True)
        yield server.url


llm_options = [
    click.option(
        "--llm-url",
        envvar="HYDRAHEAD_LLM_BASE_URL",
        help="OpenAI-compatible base URL (default: $HYDRAHEAD_LLM_BASE_URL).",
    ),
    click.option(
        "--offline",
        is_flag=True,
        help="Use hydrahead's offline LLM simulator (started for this command).",
    ),
]


def with_llm(fn):
    for opt in reversed(llm_options):
        fn = opt(fn)
    return fn


def need_bench_extra() -> None:
    for module in ("rank_bm25", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            raise click.ClickException(
                f"the quality benchmark needs {module}: pip install 'hydrahead[bench]'"
            ) from None


def lamp_options(split: str):
    """The options naming a LaMP-format split: --data, --task, --split (default ``split``),
    --users."""
    options = [
        click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
                     help="A LaMP-format directory (with <task>/ inside, or the task's files)."),
        click.option("--task", "task_name", required=True,
                     help="Task name or task spec JSON file."),
        click.option("--split", default=split, show_default=True),
        click.option("--users", type=click.IntRange(min=1), help="Only the first N users."),
    ]

    def decorate(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return decorate
