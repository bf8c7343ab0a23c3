"""Write export/shipped_bases/dev.json: the dev-user quality of the shipped bases, per task, from
`hydrahead bench quality --family` JSON reports, for `bundle info` (every bundle's manifest
carries it as the bases' "dev" metrics).

    python bench/shipped_dev_summary.py CODE_VERSION FAMILY_JSON [FAMILY_JSON ...]

Each FAMILY_JSON is a quality-family-*.json a family run of the bundle `export bundle` builds
wrote (see bench/train_shipped.sh). Every number in it is an OFFLINE SIMULATOR result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "export" / "shipped_bases" / "dev.json"
SYSTEMS = ("base", "fitted", "fitted-1req")


def summary(code: str, reports: list[Path]) -> dict:
    tasks = {}
    for path in reports:
        report = json.loads(path.read_text(encoding="utf-8"))
        meta, worst = report["meta"], report["worst_case"]
        tasks[meta["task"]] = {
            "metric": report["primary_metric"], "users": meta["users"],
            "members": list(report["members"]),
            "gain_vs_best_prompt_baseline": {
                s: {"worst": round(worst[s]["gain"], 4), "worst_member": worst[s]["member"],
                    "mean": round(worst[s]["mean_gain"], 4)} for s in SYSTEMS if s in worst},
        }
    return {"summary": {
        "note": "OFFLINE SIMULATOR results (hydrahead's simulated LLM family), not a language "
                "model", "data": "git-lamp-q10 dev users", "code": code, "tasks": tasks}}


if __name__ == "__main__":
    OUT.write_text(json.dumps(summary(sys.argv[1], [Path(p) for p in sys.argv[2:]]), indent=1)
                   + "\n", encoding="utf-8")
    print(f"wrote {OUT}")
