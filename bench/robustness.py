"""Quality with simulated LLMs that behave unlike the default one: do the gains carry?

A method tuned to the offline simulator's particulars would lose its gains when the LLM
changes. This runs ``hydrahead bench quality``'s systems against differently parameterised
simulators (each still the offline SIMULATOR, not a language model), served over HTTP as an
"LLM you do not have" would be, and writes one report section per LLM:

* ``stubborn``: follows in-context examples far less (example weight 1.5 instead of 6);
* ``copycat``: follows them more and copies their labels more (example weight 10, label bias
  0.2), with a flatter similarity (power 1);
* ``terse``: generation prefers short answers and key words more (length and key-word weights
  4 and 2).

Run (needs the git-lamp data, or any LaMP-format directory)::

    python bench/robustness.py --data ../shared/data/git-lamp --task GIT_area --split dev \\
        --report bench/QUALITY.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from hydrahead.evaluation import quality, report
from hydrahead.offline.server import OfflineLLMServer
from hydrahead.offline.simulator import SimulatedLLM, SimulatorParams

LLMS = {
    "stubborn": SimulatorParams(example_weight=1.5),
    "copycat": SimulatorParams(example_weight=10.0, label_bias=0.2, similarity_power=1.0),
    "terse": SimulatorParams(length_weight=4.0, keyword_weight=2.0),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--bundle", type=Path, default=Path(".hydrahead-cache/test-bundle"))
    ap.add_argument("--llm", choices=sorted(LLMS), action="append",
                    help="which simulated LLMs (default: all)")
    ap.add_argument("--users", type=int)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--report", type=Path)
    args = ap.parse_args(argv)
    command = shlex.join(["python", "bench/robustness.py", *(argv or sys.argv[1:])])
    for name in args.llm or sorted(LLMS):
        with OfflineLLMServer(simulator=SimulatedLLM(LLMS[name])) as server:
            task, results = quality.run(args.data, args.task, split=args.split,
                                        bundle=args.bundle, llm_url=server.url, model=name,
                                        users=args.users, compare_binary=False,
                                        progress=lambda s: print(s, file=sys.stderr))
        results.meta["llm"] = f"offline simulator `{name}`: {LLMS[name]}"
        results.meta["data"] = f"{args.data}#{name}"  # one report section per LLM
        section, _ = report.write_all(args.out, task, results, command=command,
                                      report=args.report)
        print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
