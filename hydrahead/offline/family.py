"""The family of simulated LLMs: members that differ in MECHANISM, not in parameters.

Every member is a SIMULATOR (not a language model) behind the same OpenAI-compatible surface
(``complete(body)``, ``candidates(prompt, n=, temperature=, max_tokens=, rng=)``), says so in
every response (``x_hydrahead_simulator``; ``system_fingerprint`` names the member) and writes
its contract in its class docstring. A quality measured with one member says how hydrahead does
with an LLM that reads its prompts that way; a gain that holds across the family does not hang
on one reader's particulars.

=============  ================================================================================
name           mechanism
=============  ================================================================================
default        today's simulator (:class:`~hydrahead.offline.simulator.SimulatedLLM`): prior +
               similarity-weighted example votes; extractive generation in the examples' style
prior-only     ignores the examples: the world prior alone
nearest        copies the label (or answer) of the example most similar to the query
majority       the most frequent label among the examples wins, similarity ignored
positional     follows the example shown last (recency bias)
style-mimic    copies the labels and answer wording shown, related or not (records hurt)
skewed-prior   the default over a strong prior toward a few labels (first options, high
               ratings, answers opening with "Fix")
chatty         the default's answers wrapped in hedges, quotes, casing and explanations
learned        a tiny network trained on Python's help texts and docstrings
               (``python -m hydrahead.offline.train_learned``)
=============  ================================================================================

Serving by name: ``OfflineLLMServer(member="majority")``, ``--offline majority`` on every
command, ``hydrahead llm serve-offline --model majority``. One server serves them all: a
request whose ``model`` is ``sim:<name>`` (e.g. ``"sim:majority"``) is answered by that member;
any other model name by the server's own member.
"""

from __future__ import annotations

from collections.abc import Callable

from hydrahead.runtime.errors import InvalidInputError

from .members import (ChattyLLM, LearnedLLM, MajorityLLM, NearestLLM, PositionalLLM,
                      PriorOnlyLLM, SkewedPriorLLM, StyleMimicLLM)
from .simulator import SimulatedLLM

DEFAULT_MEMBER = "default"
MODEL_PREFIX = "sim:"
"""A request's ``model`` of ``sim:<name>`` asks the offline server for member ``<name>``."""

MEMBERS: dict[str, Callable[[], SimulatedLLM]] = {
    cls.name: cls for cls in (SimulatedLLM, PriorOnlyLLM, NearestLLM, MajorityLLM,
                              PositionalLLM, StyleMimicLLM, SkewedPriorLLM, ChattyLLM,
                              LearnedLLM)
}
"""Every member by name, ``default`` first; calling the value makes one (a SimulatedLLM or a
subclass: ``complete(body)``, ``candidates(...)``, ``name``, ``summary``)."""


def member_names() -> list[str]:
    """The members' names, ``default`` first."""
    return list(MEMBERS)


def check_member(name: str) -> str:
    """``name`` if it names a member.

    Raises:
        InvalidInputError: It does not; the message lists the names.
    """
    if name not in MEMBERS:
        raise InvalidInputError(f"no simulated LLM named {name!r}; the offline simulator's "
                                f"members are: {', '.join(MEMBERS)}")
    return name


def get_member(name: str = DEFAULT_MEMBER) -> SimulatedLLM:
    """A new member ``name``.

    Raises:
        InvalidInputError: No member has that name (the message lists them).
    """
    return MEMBERS[check_member(name)]()


def member_of_model(model: object) -> str | None:
    """The member a request's ``model`` field asks for (``sim:<name>``), else ``None``.

    Raises:
        InvalidInputError: It is ``sim:<name>`` with an unknown name.
    """
    if isinstance(model, str) and model.startswith(MODEL_PREFIX):
        return check_member(model[len(MODEL_PREFIX):])
    return None


def describe_members() -> list[str]:
    """One line per member: its name and what it does."""
    width = max(len(name) for name in MEMBERS)
    return [f"{name:<{width}}  {getattr(make, 'summary', '')}" for name, make in MEMBERS.items()]
