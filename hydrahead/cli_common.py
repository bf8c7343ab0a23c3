"""What the command-line modules share: the command group class, the options context, the LLM
endpoint options, and the mapping of the pipeline options onto :class:`Settings`.

Everything here is cheap to import (click and :mod:`hydrahead.runtime`'s errors and settings):
``hydrahead --help`` and the device commands load no model code, no simulator and no trainer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from hydrahead.runtime.errors import HydraheadError
from hydrahead.runtime.settings import Settings

ENV_BUNDLE = "HYDRAHEAD_BUNDLE"


class Group(click.Group):
    """A command group whose commands fail cleanly on the library's errors.

    A :class:`~hydrahead.runtime.errors.HydraheadError` raised by a command becomes click's
    one-line ``Error: <message>`` on stderr and exit status 1, never a traceback. Groups made
    with ``@group.group()`` are of this class too.
    """

    group_class = type

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HydraheadError as exc:
            raise click.ClickException(str(exc)) from exc


class Context:
    """Options shared by every command."""

    def __init__(self, home: str | None, bundle: str | None) -> None:
        from hydrahead.runtime.paths import data_root

        self.root = data_root(home)
        self.bundle_dir = Path(bundle or os.environ.get(ENV_BUNDLE) or self.root / "bundle")


pass_ctx = click.make_pass_decorator(Context)


def echo_err(line: str) -> None:
    """Print a progress or notice line on stderr (stdout stays the command's result)."""
    click.echo(line, err=True)


def show_progress(as_json: bool = False) -> bool:
    """Whether a command shows progress bars: only on a terminal's stderr, never with
    ``--json`` (nor where there is no stderr at all, as in a windowed app)."""
    stderr = sys.stderr
    return not as_json and stderr is not None and stderr.isatty()


def pipeline_settings(**options: Any) -> Settings:
    """The pipeline :class:`Settings` that the ``-k``, ``-m``, ``-n``, ``--temperature`` and
    ``--seed`` options ask for; an option not given (``None``) keeps its default.

    Raises:
        click.BadParameter: ``-m`` exceeds ``-k``.
        InvalidInputError: another value out of range.
    """
    given = {name: value for name, value in options.items() if value is not None}
    if "k" in given and "m" in given and given["m"] > given["k"]:
        raise click.BadParameter(f"-m ({given['m']}) cannot exceed -k ({given['k']})",
                                 param_hint="-m")
    return Settings().replace(**given)


llm_options = [
    click.option(
        "--llm-url",
        envvar="HYDRAHEAD_LLM_BASE_URL",
        help="OpenAI-compatible base URL (default: $HYDRAHEAD_LLM_BASE_URL).",
    ),
    click.option(
        "--offline",
        is_flag=False,
        flag_value="default",
        default=None,
        metavar="[MEMBER]",
        callback=lambda ctx, param, value: check_offline_member(value),
        help="Use hydrahead's offline LLM simulator (started for this command): its default "
             "member, or the member named (`hydrahead llm members`).",
    ),
]


def check_offline_member(value: str | None) -> str | None:
    """The ``--offline`` value: ``None`` (not given) or a member name of the simulated family.

    Raises:
        click.BadParameter: No member has that name (the message lists them).
    """
    if value is None:
        return None
    from hydrahead.offline.family import check_member  # only when --offline is given

    try:
        return check_member(value)
    except HydraheadError as exc:
        raise click.BadParameter(str(exc), param_hint="--offline") from exc


def with_llm(fn):
    """Add ``--llm-url`` and ``--offline [MEMBER]`` (see :func:`hydrahead.offline.llm_endpoint`;
    the command gets ``offline`` as ``None`` or a member name)."""
    for opt in reversed(llm_options):
        fn = opt(fn)
    return fn


def need_bench_extra() -> None:
    for module in ("matplotlib",):
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
