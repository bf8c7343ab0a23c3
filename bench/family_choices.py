"""What the per-user validation chose, member by member, in a `bench quality --family` run.

    python bench/family_choices.py OUT_DIR TASK

OUT_DIR is the run's ``--out`` (its per-member ``quality-*-<member>.json``). Prints a Markdown
table: per member (simulated LLM), the fitted pipeline's questions won / lost against the
unfitted one (the trained base), how many users' own reranker and adapter answer after the
held-out check, which retrieval feeds their reranker, and how many users' prompts carry no
record; then, over all members, what each combination of choices did to a user's score (the
fitted pipeline's mean per-question metric minus the unfitted one's). Every number comes from
hydrahead's OFFLINE SIMULATOR family.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def member_reports(out: Path, task: str) -> dict[str, dict]:
    reports = {}
    for path in sorted(out.glob(f"quality-*-{task}-*.json")):
        if path.name.startswith("quality-family-"):
            continue
        report = json.loads(path.read_text(encoding="utf-8"))
        reports[report["meta"].get("member") or path.stem.rsplit("-", 1)[-1]] = report
    return reports


def main(out: Path, task: str) -> None:
    rows = ["| member | fitted vs unfitted, questions won / lost | own reranker / adapter "
            "answering | retrieval: dense / bm25 / fused | prompts without records | users |",
            "|---|---:|---:|---:|---:|---:|"]
    effects: dict[str, list[float]] = defaultdict(list)
    for member, report in member_reports(out, task).items():
        questions, fits = report["questions"], report["fits"]
        users = list(dict.fromkeys(q["user"] for q in questions))
        won = sum(q["systems"]["fitted"]["score"] > q["systems"]["base"]["score"]
                  for q in questions)
        lost = sum(q["systems"]["fitted"]["score"] < q["systems"]["base"]["score"]
                   for q in questions)
        fit = report["summary"]["fit_graded"]
        ret = fit.get("retrievals", {})
        rows.append(f"| `{member}` | {won} / {lost} | {fit['heads_used']['reranker']} / "
                    f"{fit['heads_used']['adapter']} | {ret.get('dense', '-')} / "
                    f"{ret.get('bm25', '-')} / {ret.get('fused', '-')} | "
                    f"{fit['prompts_without_records']} | {fit['users']} |")
        scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for q in questions:
            for system in ("base", "fitted"):
                scores[q["user"]][system].append(q["systems"][system]["score"])
        for user, f in zip(users, fits):
            choice = ", ".join(name for name, on in (
                ("own reranker", f["used"]["reranker"]), ("own adapter", f["used"]["adapter"]),
                (f"{f.get('retrieval')} retrieval", f.get("retrieval", "dense") != "dense"),
                ("no records", f["no_records"])) if on) or "nothing changed"
            effects[choice].append(float(np.mean(scores[user]["fitted"])
                                         - np.mean(scores[user]["base"])))
    print("\n".join(rows))
    print("\n| choices of a user's fit | (member, user) pairs | mean change of the user's score "
          "| better / worse |\n|---|---:|---:|---:|")
    for choice, values in sorted(effects.items(), key=lambda kv: -len(kv[1])):
        v = np.asarray(values)
        print(f"| {choice} | {len(v)} | {v.mean():+.4f} | {(v > 0).sum()} / {(v < 0).sum()} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
