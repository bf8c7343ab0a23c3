"""A rating task (LaMP-3's, built in): predict the stars a user gives a product review.

This user is a harsh rater (``data/reviews.jsonl``): a star below what their words suggest,
and never a 5. The 40 oldest reviews are the history; the 10 newest are rated before and after
fitting the user's heads, and compared with the stars the user gave (mean absolute error).

    python examples/rating.py [--bundle DIR] [--home DIR]
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
USER = "rating-example"
HELD_OUT = 10


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = arguments(__doc__.splitlines()[0], argv)
    reviews = [json.loads(line) for line in (HERE / "data" / "reviews.jsonl").open(encoding="utf-8")]
    history, new = reviews[:-HELD_OUT], reviews[-HELD_OUT:]
    forget_user(USER, args.home)  # a rerun starts afresh: no heads fitted before
    with llm() as (config, simulated), Personalizer.open(
            USER, bundle=args.bundle, task="LaMP-3", root=args.home,
            llm=config) as p:
        p.add(history)
        before = [p.ask(r["text"]).answer or "" for r in new]
        fit = p.fit(budget=60)
        print(f"fitted from {fit.labels.llm_calls} LLM calls: {fit.outcomes}")
        after = [p.ask(r["text"]).answer or "" for r in new]
        gold = [r["score"] for r in new]
        mae = {name: p.task.evaluate(answers, gold)["mae"]
               for name, answers in (("before", before), ("after", after))}
    print(table(list(zip([r["text"] for r in new], before, after)), "mean absolute error",
                mae["before"], mae["after"]))
    return {"before": before, "after": after, "gold": gold, "mae": mae, "simulated": simulated}


if __name__ == "__main__":
    main()
