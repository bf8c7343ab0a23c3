"""The members of the family of simulated LLMs other than ``default`` (which is
:class:`~hydrahead.offline.simulator.SimulatedLLM` itself). Each is a SIMULATOR, not a language
model, and says its contract in its class docstring; :mod:`hydrahead.offline.family` names
them.
"""

from __future__ import annotations

from .base import Member
from .biased import SkewedPriorLLM, StyleMimicLLM
from .chatty import ChattyLLM
from .learned import LearnedLLM, LearnedWeights
from .readers import MajorityLLM, NearestLLM, PositionalLLM, PriorOnlyLLM

__all__ = ["ChattyLLM", "LearnedLLM", "LearnedWeights", "MajorityLLM", "Member", "NearestLLM",
           "PositionalLLM", "PriorOnlyLLM", "SkewedPriorLLM", "StyleMimicLLM"]
