"""The quality evaluation over the family of simulated LLMs: one protocol, one table.

``hydrahead bench quality --family`` (or ``--members a,b,c``) runs :func:`quality.run
<hydrahead.evaluation.quality.run>` once per member of the offline simulator family
(:data:`hydrahead.offline.family.MEMBERS`), each over the same users of the same split, and
writes each member's JSON, Markdown and chart as a single run would (named with the member),
then ONE family report (JSON and a Markdown section): first the **worst case** over members,
per system the lowest gain over that member's best prompt baseline, which member, and that
member's 95% bootstrap interval, with the mean gain over members; then, per member, every
system's metrics, its gain over the best prompt baseline *for that member* with the interval
(users resampled, :mod:`hydrahead.evaluation.stats`) and its paired per-question wins and losses
against that baseline. Every answer comes from the OFFLINE SIMULATOR family, and every output
says so.

Protocols (``--protocol``), each naming the bundle a member is evaluated with:

* ``untrained``: the bundle as given (``--bundle``), for every member;
* ``matched``: ``BASES/matched/<member>/``, shared bases trained with that member's labels on the
  training users (evaluated on the dev users: other people);
* ``transfer``: ``BASES/transfer/<member>/``, bases trained with the labels of every **other**
  member (leave one LLM out);
* ``loto``: ``BASES/loto/<task>/``, bases trained with every member's labels on every task but
  the evaluated one (leave one task out).

``BASES`` is ``--bases DIR``; each of those folders is a bundle (``hydrahead train export``'s
output). ``bash bench/train_family.sh DATA BASES`` builds them all; a missing one is an error
that names its path and that command. A single member (``--offline NAME``) runs under a protocol
too (``matched`` and ``transfer`` need a member: they mean nothing for a real endpoint).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydrahead.offline import SIMULATOR_NOTE
from hydrahead.offline.family import DEFAULT_MEMBER, MEMBERS
from hydrahead.runtime.errors import InvalidInputError
from hydrahead.runtime.tasks import Task

from .quality import ALL_SYSTEMS, Results, primary_metric, run
from .report import code_version, gain_cell, metric_columns, update_report

PROTOCOLS = ("untrained", "matched", "transfer", "loto")
PROTOCOL_DESCRIPTIONS = {
    "untrained": "the bundle's shared bases as given, the same for every member",
    "matched": "shared bases trained with the evaluated member's own labels on the training "
               "users (`BASES/matched/<member>/`)",
    "transfer": "shared bases trained with the labels of every other member, never the "
                "evaluated one: leave one LLM out (`BASES/transfer/<member>/`)",
    "loto": "shared bases trained with every member's labels on every task but the evaluated "
            "one: leave one task out (`BASES/loto/<task>/`)",
}
BUILD_COMMAND = "bash bench/train_family.sh DATA {bases}"


def member_names(members: Sequence[str] | None = None) -> list[str]:
    """The family members to run: ``members`` (checked against the registry) or all of them.

    Raises:
        InvalidInputError: A name the family does not have, or no name given.
    """
    if members is None:
        return list(MEMBERS)
    names = [m.strip() for m in members if m.strip()]
    unknown = [m for m in names if m not in MEMBERS]
    if unknown or not names:
        raise InvalidInputError(f"unknown simulated LLM(s) {', '.join(unknown) or '(none given)'}"
                                f"; the family has: {', '.join(MEMBERS)}")
    return list(dict.fromkeys(names))


def member_of(offline: bool | str | None, llm_url: str | None) -> str | None:
    """Which family member a single run's ``--offline`` / ``--llm-url`` asks for (``None``: a
    real endpoint). A run with neither uses the default simulator, as :func:`quality.run
    <hydrahead.evaluation.quality.run>` does."""
    if isinstance(offline, str) and offline:
        return offline
    if offline or not llm_url:
        return DEFAULT_MEMBER
    return None


def protocol_bundle(protocol: str, *, given: Path, bases: Path | None, member: str | None,
                    task: str) -> Path:
    """The bundle ``protocol`` evaluates ``member`` with, on ``task`` (see the module docstring).

    Args:
        protocol: One of :data:`PROTOCOLS`.
        given: The bundle ``--bundle`` names (``untrained``).
        bases: The ``--bases`` directory (every other protocol).
        member: The family member evaluated (``matched`` and ``transfer`` need one).
        task: The evaluated task's name (``loto``).

    Raises:
        InvalidInputError: An unknown protocol, ``--bases`` or a member missing, or no bundle
            where the protocol's one should be (the message names the command that builds it).
    """
    if protocol not in PROTOCOLS:
        raise InvalidInputError(f"unknown protocol {protocol!r}; one of {', '.join(PROTOCOLS)}")
    if protocol == "untrained":
        return given
    if bases is None:
        raise InvalidInputError(f"--protocol {protocol} needs --bases DIR (the bundles "
                                f"`{BUILD_COMMAND.format(bases='DIR')}` builds)")
    if protocol in ("matched", "transfer") and member is None:
        raise InvalidInputError(f"--protocol {protocol} evaluates a member of the simulated "
                                "family: use --offline NAME, --family or --members")
    path = Path(bases) / protocol / (task if protocol == "loto" else str(member))
    if not (path / "manifest.json").is_file():
        what = (f"task {task}" if protocol == "loto" else f"member {member}")
        raise InvalidInputError(
            f"--protocol {protocol} ({what}): no bundle at {path}; build the protocol bundles "
            f"with `{BUILD_COMMAND.format(bases=bases)}` (MEMBERS=..., TASKS=... and USERS=... "
            "for fewer; see its header)")
    return path


def run_family(data: Path, task_name: str, *, members: Sequence[str], protocol: str,
               bundle: Path, bases: Path | None = None,
               progress: Callable[[str], None] | None = None, **options: Any
               ) -> tuple[Task, dict[str, Results]]:
    """:func:`quality.run <hydrahead.evaluation.quality.run>` once per member, each with the
    bundle ``protocol`` names for it, over the same users.

    Args:
        data: A LaMP-format directory.
        task_name: Task name or task spec path.
        members: Family members (:func:`member_names`).
        protocol: One of :data:`PROTOCOLS`.
        bundle: The bundle ``--bundle`` names (``untrained``).
        bases: The protocol bundles' directory (every protocol but ``untrained``).
        progress: Called with one line per user, prefixed with the member.
        **options: The rest of :func:`quality.run
            <hydrahead.evaluation.quality.run>`'s keyword arguments (split, settings, budget,
            users, compare_binary, ...).

    Raises:
        InvalidInputError: A member's bundle is missing (checked for every member before any
            run starts).
    """
    from hydrahead.runtime.tasks import get_task

    name = get_task(task_name).name
    bundles = {m: protocol_bundle(protocol, given=bundle, bases=bases, member=m, task=name)
               for m in members}
    runs: dict[str, Results] = {}
    task: Task | None = None
    for member, path in bundles.items():
        say = (lambda line, member=member: progress(f"{member}: {line}")) if progress else None
        task, results = run(Path(data), task_name, bundle=path, offline=member, progress=say,
                            **options)
        results.meta.update(member=member, family=True, protocol=protocol,
                            protocol_bundle=str(path))
        runs[member] = results
    if task is None:
        raise InvalidInputError("no family member to run")
    return task, runs


# ----------------------------------------------------------------------------------- report
def summarize(task: Task, runs: Mapping[str, Results]) -> dict[str, Any]:
    """The family report's numbers: per member each system's metrics, gain over that member's
    best prompt baseline with its 95% interval, wins and losses; per system the worst case."""
    primary = primary_metric(task)
    members: dict[str, Any] = {}
    bootstrap: dict[str, Any] = {}
    for member, results in runs.items():
        s = results.summary(task)
        bootstrap = s["bootstrap"]
        members[member] = {
            "best_baseline": s["best_baseline"],
            "bundle": results.meta.get("protocol_bundle", results.meta.get("bundle")),
            "bases": results.meta.get("bases"),
            "users": results.meta.get("users"),
            "questions": len(results.questions),
            "systems": {
                name: {"metrics": row["metrics"], "gain": row["relative_to_best_baseline"],
                       "ci95": row.get("relative_to_best_baseline_ci95"),
                       "wins": row["wins"], "losses": row["losses"]}
                for name, row in s["systems"].items()},
        }
    return {"primary_metric": primary, "bootstrap": bootstrap,
            "worst_case": worst_case(members, primary), "members": members}


def worst_case(members: Mapping[str, Any], primary: str) -> dict[str, Any]:
    """Per system (present for every member): the lowest gain over members, the member, its
    interval and metric, and the mean gain over members (NaN gains are left out)."""
    out: dict[str, Any] = {}
    for name in ALL_SYSTEMS:
        rows = {m: v["systems"][name] for m, v in members.items() if name in v["systems"]}
        if len(rows) != len(members) or not rows:
            continue
        finite = {m: r for m, r in rows.items() if not math.isnan(r["gain"])}
        if not finite:
            out[name] = {"gain": float("nan"), "member": None, "ci95": None,
                         "metric": float("nan"), "mean_gain": float("nan")}
            continue
        member = min(finite, key=lambda m: finite[m]["gain"])
        out[name] = {"gain": finite[member]["gain"], "member": member,
                     "ci95": finite[member]["ci95"],
                     "metric": finite[member]["metrics"][primary],
                     "mean_gain": sum(r["gain"] for r in finite.values()) / len(finite),
                     "members_below_zero": sum(r["gain"] < 0 for r in finite.values())}
    return out


def section_key(meta: Mapping[str, Any]) -> str:
    """The family report's section (from a member run's or the report's meta):
    ``family:<data>:<task>:<split>:<protocol>``."""
    protocol = meta.get("protocol", "untrained")
    return f"family:{Path(meta['data']).name}:{meta['task']}:{meta['split']}:{protocol}"


def to_json(task: Task, runs: Mapping[str, Results], *, command: str,
            version: str) -> dict[str, Any]:
    """The family report for machines (the per-member runs are in their own JSON files)."""
    first = next(iter(runs.values())).meta
    protocol = first.get("protocol", "untrained")
    return {
        "note": f"{SIMULATOR_NOTE}. Every member of the family is such a simulator.",
        "meta": {
            "task": first["task"], "split": first["split"], "data": first["data"],
            "protocol": protocol, "protocol_description": PROTOCOL_DESCRIPTIONS[protocol],
            "members": list(runs), "users": first["users"], "settings": first["settings"],
            "simulated": all(r.meta.get("simulated") for r in runs.values()),
            "seconds": round(sum(r.meta.get("seconds", 0.0) for r in runs.values()), 1),
            "command": command, "code": version,
        },
        **summarize(task, runs),
    }


def markdown(task: Task, report: Mapping[str, Any]) -> str:
    """The family report as a Markdown section (worst case first), from :func:`to_json`."""
    m = report["meta"]
    key = section_key(m)
    primary = report["primary_metric"]
    c1, c2 = metric_columns(task)
    settings = m["settings"]
    members = report["members"]
    lines = [
        f"<!-- quality:{key} -->",
        f"## {m['task']} / {m['split']} on `{Path(m['data']).name}`: the simulated LLM family, "
        f"protocol `{m['protocol']}`", "",
        f"**{SIMULATOR_NOTE}. Every member of the family is such a SIMULATOR: these numbers show "
        "what the machinery does with simulated LLMs of different mechanisms, not how a real LLM "
        "would score.**", "",
        f"- Protocol `{m['protocol']}`: {m['protocol_description']}.",
        f"- Members: {', '.join(f'`{x}`' for x in members)}; each over the same {m['users']} "
        f"users of `{m['data']}` split `{m['split']}`; k={settings['k']}, m={settings['m']}, "
        f"N={settings['n']}, fit budget {settings['budget']} LLM calls per user, seed "
        f"{settings['seed']}; {m['seconds']:.0f} s in all; code: {m['code']}.",
        f"- Gains are relative to the best prompt baseline **of that member** (by {primary}); "
        f"[95% CI]: {report['bootstrap']['resamples']} bootstrap resamples of the users (each with "
        "all its questions, paired); won / lost: questions the system scored higher / lower on "
        "than that baseline.",
        f"- Reproduce: `{m['command']}`", "",
        "### Worst case over members", "",
        f"| system | worst gain vs best prompt baseline [95% CI] | member | its {primary} "
        "| mean gain over members | members below the baseline |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, w in report["worst_case"].items():
        label = f"**{name}**" if name == "fitted" else name
        if w["member"] is None:
            lines.append(f"| {label} | n/a | | | | |")
            continue
        cell = gain_cell({"relative_to_best_baseline": w["gain"],
                          "relative_to_best_baseline_ci95": w["ci95"]})
        lines.append(f"| {label} | {cell} | `{w['member']}` | {w['metric']:.3f} | "
                     f"{100 * w['mean_gain']:+.1f}% | {w['members_below_zero']}/{len(members)} |")
    lines += ["", "### Per member", ""]
    for member, row in members.items():
        best = row["best_baseline"]
        lines += [
            f"#### `{member}`: best prompt baseline `{best}` ({primary} "
            f"{row['systems'][best]['metrics'][primary]:.3f}), bundle `{row['bundle']}`", "",
            f"| system | {c1} | {c2} | vs `{best}` [95% CI] | won / lost |",
            "|---|---:|---:|---:|---:|",
        ]
        for name in ALL_SYSTEMS:
            r = row["systems"].get(name)
            if r is None:
                continue
            label = f"**{name}**" if name == "fitted" else name
            cell = gain_cell({"relative_to_best_baseline": r["gain"],
                              "relative_to_best_baseline_ci95": r["ci95"]})
            lines.append(f"| {label} | {r['metrics'][c1]:.3f} | {r['metrics'][c2]:.3f} | {cell} "
                         f"| {r['wins']} / {r['losses']} |")
        lines.append("")
    lines.append(f"<!-- /quality:{key} -->")
    return "\n".join(lines) + "\n"


def outputs(out: Path, runs: Mapping[str, Results]) -> dict[str, Path]:
    """Where the family report goes: ``<out>/quality-family-<data>-<task>-<split>-<protocol>``
    ``.{json,md}``."""
    stem = "quality-" + section_key(next(iter(runs.values())).meta).replace(":", "-")
    return {ext: out / f"{stem}.{ext}" for ext in ("json", "md")}


def write_family(out: Path, task: Task, runs: Mapping[str, Results], *, command: str,
                 report: Path | None = None, version: str | None = None
                 ) -> tuple[str, dict[str, Path]]:
    """Write the family report's JSON and Markdown under ``out`` (and its section into
    ``report``); return the section and the files. The members' own files are
    :func:`report.write_all <hydrahead.evaluation.report.write_all>`'s."""
    data = to_json(task, runs, command=command, version=version or code_version())
    files = outputs(Path(out), runs)
    files["json"].parent.mkdir(parents=True, exist_ok=True)
    files["json"].write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    section = markdown(task, data)
    files["md"].write_text(section, encoding="utf-8")
    if report is not None:
        update_report(report, section)
    return section, files
