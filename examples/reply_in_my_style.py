"""A generation task from a spec file: reply to a message the way this user replies.

The task is ``reply_task.json``; the user's history is ``data/messages.jsonl`` (messages they
got and what they answered: short, lowercase, signed "cheers, sam"). The 30 oldest are the
history; the 6 newest messages are answered before and after fitting the user's heads, and
compared with the user's real replies (ROUGE-1; needs ``hydrahead[generation]``).

    python examples/reply_in_my_style.py [--bundle DIR] [--home DIR]
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
USER = "reply-example"
HELD_OUT = 6


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = arguments(__doc__.splitlines()[0], argv)
    messages = [json.loads(line) for line in (HERE / "data" / "messages.jsonl").open(encoding="utf-8")]
    history, new = messages[:-HELD_OUT], messages[-HELD_OUT:]
    forget_user(USER, args.home)  # a rerun starts afresh: no heads fitted before
    with llm() as (config, simulated), Personalizer.open(
            USER, bundle=args.bundle, task=str(HERE / "reply_task.json"),
            root=args.home, llm=config) as p:
        p.add(history)
        before = [p.ask(m["text"]).answer or "" for m in new]
        fit = p.fit(budget=60)
        print(f"fitted from {fit.labels.llm_calls} LLM calls: {fit.outcomes}")
        after = [p.ask(m["text"]).answer or "" for m in new]
        gold = [m["reply"] for m in new]
        rouge = {name: p.task.evaluate(answers, gold)["rouge-1"]
                 for name, answers in (("before", before), ("after", after))}
    print(table(list(zip([m["text"] for m in new], before, after)), "ROUGE-1",
                rouge["before"], rouge["after"]))
    return {"before": before, "after": after, "gold": gold, "rouge-1": rouge,
            "simulated": simulated}


if __name__ == "__main__":
    main()
