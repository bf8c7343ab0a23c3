"""What the three examples share: where the bundle is, which LLM answers, and the before/after
table. Not part of the library; copy what you need into your app.

The LLM is ``$HYDRAHEAD_LLM_BASE_URL`` (with ``$HYDRAHEAD_LLM_MODEL`` and ``$HYDRAHEAD_LLM_API_KEY``)
when it is set; otherwise hydrahead's offline SIMULATOR is served on loopback for the run (its
answers are computed from the prompt text: a simulator for demos and tests, not a language
model). The bundle is ``--bundle``, else ``$HYDRAHEAD_BUNDLE``, else the one ``hydrahead bundle
pull`` installed.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hydrahead import LLMConfig
from hydrahead.offline import SIMULATOR_NOTE, llm_endpoint
from hydrahead.runtime.paths import data_root


def arguments(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--bundle`` and ``--home`` (the data root; default ``$HYDRAHEAD_HOME`` or the user data
    directory)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bundle", help="model bundle directory")
    parser.add_argument("--home", help="hydrahead data root (users live under HOME/users)")
    args = parser.parse_args(argv)
    args.bundle = Path(args.bundle or os.environ.get("HYDRAHEAD_BUNDLE")
                       or data_root(args.home) / "bundle")
    return args


@contextmanager
def llm() -> Iterator[tuple[LLMConfig, bool]]:
    """The configured LLM, or the offline simulator for the duration of the block; yields
    ``(config, simulated)``."""
    configured = os.environ.get("HYDRAHEAD_LLM_BASE_URL")
    with llm_endpoint(configured, offline=not configured) as (url, simulated):
        if simulated:
            print(f"LLM: {SIMULATOR_NOTE}")
        yield LLMConfig.from_env(base_url=url), simulated


def table(rows: Sequence[tuple[object, object, object]], metric: str, before: float,
          after: float) -> str:
    """The held-out questions answered before and after fitting, and the metric of each."""
    lines = ["| query | before fitting | after fitting |", "|---|---|---|"]
    lines += [f"| {str(q)[:50]} | {str(b)[:40]} | {str(a)[:40]} |" for q, b, a in rows]
    lines.append(f"| **{metric}** | **{before:.3f}** | **{after:.3f}** |")
    return "\n".join(lines)
