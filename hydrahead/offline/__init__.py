"""hydrahead.offline: the OFFLINE SIMULATOR (not a language model), its family of members that
read prompts by other mechanisms (:mod:`hydrahead.offline.family`), and their OpenAI-compatible
server, for tests, demos and benchmarks where no generative model can be had.

It sits beside the CLI and the demo, outside :mod:`hydrahead.runtime`: the device library never
imports it. ``hydrahead llm serve-offline`` and every command's ``--offline`` start it
(:func:`llm_endpoint`); :data:`SIMULATOR_NOTE` is what every output of it says.
"""

from __future__ import annotations

from .family import MEMBERS, describe_members, get_member, member_names
from .server import OfflineLLMServer, llm_endpoint, serve_forever
from .simulator import SIMULATOR_FINGERPRINT, SIMULATOR_MODEL, SIMULATOR_NOTE, SimulatedLLM

__all__ = ["MEMBERS", "OfflineLLMServer", "SIMULATOR_FINGERPRINT", "SIMULATOR_MODEL",
           "SIMULATOR_NOTE", "SimulatedLLM", "describe_members", "get_member", "llm_endpoint",
           "member_names", "serve_forever"]
