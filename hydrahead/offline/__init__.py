"""hydrahead.offline: the OFFLINE SIMULATOR (not a language model) and its OpenAI-compatible
server, for tests, demos and benchmarks where no generative model can be had.

It sits beside the CLI and the demo, outside :mod:`hydrahead.runtime`: the device library never
imports it. ``hydrahead llm serve-offline`` and every command's ``--offline`` start it
(:func:`llm_endpoint`); :data:`SIMULATOR_NOTE` is what every output of it says.
"""

from __future__ import annotations

from .server import OfflineLLMServer, llm_endpoint, serve_forever
from .simulator import SIMULATOR_FINGERPRINT, SIMULATOR_MODEL, SIMULATOR_NOTE, SimulatedLLM

__all__ = ["OfflineLLMServer", "SIMULATOR_FINGERPRINT", "SIMULATOR_MODEL", "SIMULATOR_NOTE",
           "SimulatedLLM", "llm_endpoint", "serve_forever"]
