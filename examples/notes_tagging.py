"""An app's own classification task, from a spec file: tag a user's notes the way they do.

The task is ``notes_task.json`` (see "Your own task" in README.md for the format); the user's
history is ``data/notes.jsonl``. The 48 oldest notes are the history, the 12 newest are asked
as new notes, before and after fitting the user's heads; the table compares the answers with
the tags the user gave them.

    python examples/notes_tagging.py [--bundle DIR] [--home DIR]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import arguments, llm, table

from hydrahead import Personalizer
from hydrahead.runtime.users import forget_user

HERE = Path(__file__).resolve().parent
USER = "notes-example"
HELD_OUT = 12


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = arguments(__doc__.splitlines()[0], argv)
    notes = [json.loads(line) for line in (HERE / "data" / "notes.jsonl").open(encoding="utf-8")]
    history, new = notes[:-HELD_OUT], notes[-HELD_OUT:]
    forget_user(USER, args.home)  # a rerun starts afresh: no heads fitted before
    with llm() as (config, simulated), Personalizer.open(
            USER, bundle=args.bundle, task=str(HERE / "notes_task.json"),
            root=args.home, llm=config) as p:
        p.add(history)
        before = [p.ask(n["text"]).answer or "" for n in new]
        fit = p.fit(budget=60)
        print(f"fitted from {fit.labels.llm_calls} LLM calls: {fit.outcomes}")
        after = [p.ask(n["text"]).answer or "" for n in new]
    gold = [n["tag"] for n in new]
    acc = {name: sum(a == g for a, g in zip(answers, gold)) / len(gold)
           for name, answers in (("before", before), ("after", after))}
    print(table(list(zip([n["text"] for n in new], before, after)), "accuracy",
                acc["before"], acc["after"]))
    return {"before": before, "after": after, "gold": gold, "accuracy": acc,
            "simulated": simulated}


if __name__ == "__main__":
    main()
