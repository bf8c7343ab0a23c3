"""The fitted adapter learns a preference that only it can act on.

The users come from the persona world: lately (their newest 60% of it) they file one topic
under a second-choice tag (their texts mention both tags). The LLM here is a *stubborn*
simulated LLM that barely follows in-context examples (example weight 0.5 instead of 6), so
its greedy answer is mostly the world's first choice whatever the prompt holds, and no
reranking can fix it; but its samples often contain the user's tag. Only an adapter that
learned, from the user's own recent records, to trust agreement with the user's history can
pick it.

The test checks its own power: the same candidates picked by the LLM's vote share, and an
adapter fitted on inverted labels, both stay far below the fitted adapter.

Fitting with the held-out check (:mod:`hydrahead.runtime.validation`) keeps the adapter that
learned the user's tag, and refuses one fitted on labels inverted everywhere but on the held-out
newest records (a user whose older records point the wrong way): the pipeline then answers
exactly as the unfitted one did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hydrahead.evaluation.persona_world import make_user
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.encoder import Encoder
from hydrahead.runtime.importing import import_records
from hydrahead.runtime.labeling import Labeler
from hydrahead.runtime.pairs import PairSet
from hydrahead.runtime.validation import holdout
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.offline.server import OfflineLLMServer
from hydrahead.offline.simulator import SimulatedLLM, SimulatorParams
from hydrahead.runtime.personalizer import Personalizer

SEEDS = range(5)  # one user per topic that changed


def _accuracy(answers: list[str], golds: list[str]) -> float:
    return float(np.mean([a == g for a, g in zip(answers, golds)]))


def _fit_adapter(p: Personalizer, pairs: PairSet) -> None:
    """Fit the adapter head as Personalizer.fit does (listwise over each query's candidates)."""
    p.heads.fit_role("adapter", pairs, init=p.heads.base["adapter"])


@pytest.fixture(scope="module")
def outcomes(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    bundle = Bundle.open(bundle_dir)
    encoder = Encoder(bundle)
    stubborn = SimulatedLLM(SimulatorParams(example_weight=0.5))
    picks: dict[str, list[str]] = {"base": [], "fitted": [], "vote": [], "inverted": [],
                                   "checked": [], "checked-inverted": []}
    used: dict[str, list[bool]] = {"checked": [], "checked-inverted": []}
    golds: list[str] = []
    with OfflineLLMServer(simulator=stubborn) as server:
        for seed in SEEDS:
            user = make_user(seed, questions=6, drift=0.6)
            asked = [q for q in user["questions"] if q["topic"] == user["changed_topic"]]
            golds += [q["gold"] for q in asked]
            with Personalizer.open(
                f"u{seed}", bundle=bundle, encoder=encoder, task="GIT_area",
                llm=LLMConfig.from_env(base_url=server.url), root=tmp_path_factory.mktemp("p"),
            ) as p:
                import_records(p.store, p.task, user["history"])
                picks["base"] += [p.ask(q["text"]).answer for q in asked]
                labeler = Labeler(p.store, p.task, p.llm, budget=80, adapter_share=1.0,
                                  progress=False)
                pairs = labeler.adapter_labels(p.rerank_scores, encoder.encode)
                _fit_adapter(p, pairs)
                answers = [p.ask(q["text"]) for q in asked]
                picks["fitted"] += [a.answer for a in answers]
                picks["vote"] += [max(a.candidates, key=lambda c: c.features["llm_vote"]).answer
                                  for a in answers]
                true_labels = list(pairs.labels)
                pairs.labels = [1.0 - y for y in true_labels]  # the labels, inverted
                _fit_adapter(p, pairs)
                picks["inverted"] += [p.ask(q["text"]).answer for q in asked]

                pairs.labels = true_labels  # fitted on the older groups, checked on the newest
                p.heads.fit_role("adapter", pairs, init=p.heads.base["adapter"],
                                 holdout_labels=len(pairs))
                used["checked"].append(p.heads.choices.used("adapter"))
                picks["checked"] += [p.ask(q["text"]).answer for q in asked]
                held = set(holdout(pairs, len(pairs))[1])
                assert held, "too few groups to hold any out"
                pairs.labels = [y if g in held else 1.0 - y for g, y in enumerate(true_labels)]
                p.heads.fit_role("adapter", pairs, init=p.heads.base["adapter"],
                                 holdout_labels=len(pairs))
                used["checked-inverted"].append(p.heads.choices.used("adapter"))
                picks["checked-inverted"] += [p.ask(q["text"]).answer for q in asked]
    out = {name: _accuracy(answers, golds) for name, answers in picks.items()}
    out.update({f"used {name}": float(np.mean(flags)) for name, flags in used.items()})
    out["checked-inverted == base"] = float(picks["checked-inverted"] == picks["base"])
    return out


def test_the_unfitted_pipeline_mostly_answers_the_llms_first_choice(
        outcomes: dict[str, float]) -> None:
    assert outcomes["base"] <= 0.5


FITTED_AT_LEAST = 0.75  # the fitted adapter's accuracy on the changed topic's questions


def test_the_fitted_adapter_learns_the_users_tag(outcomes: dict[str, float]) -> None:
    assert outcomes["fitted"] >= FITTED_AT_LEAST
    assert outcomes["fitted"] >= outcomes["base"] + 0.3


def test_the_held_out_check_keeps_the_learned_adapter(outcomes: dict[str, float]) -> None:
    assert outcomes["used checked"] >= 0.8
    assert outcomes["checked"] >= outcomes["base"] + 0.25


def test_the_held_out_check_refuses_an_adapter_that_would_hurt(
        outcomes: dict[str, float]) -> None:
    assert outcomes["used checked-inverted"] == 0.0
    assert outcomes["checked-inverted == base"] == 1.0  # the unfitted pipeline's answers


def test_the_check_has_power(outcomes: dict[str, float]) -> None:
    """Scores replaced by the LLM's votes, or labels inverted, fail the test above, by a margin
    (the samples' majority does hold the user's tag for some questions: that is what the
    adapter learns to trust, with the history's agreement, where the vote alone is not enough)."""
    assert outcomes["vote"] <= FITTED_AT_LEAST - 0.1
    assert outcomes["fitted"] >= outcomes["vote"] + 0.2
    assert outcomes["inverted"] <= 0.2
