"""hydrahead.offline: the OFFLINE SIMULATOR (not a language model) and its OpenAI-compatible
server, for tests, demos and benchmarks where no generative model can be had.

It sits beside the CLI and the demo, outside :mod:`hydrahead.runtime`: the device library never
imports it. ``hydrahead llm serve-offline`` and every command's ``--offline`` start it.
"""

from __future__ import annotations

from .server import OfflineLLMServer, serve_forever
from .simulator import SIMULATOR_FINGERPRINT, SIMULATOR_MODEL, SIMULATOR_NOTE, SimulatedLLM

__all__ = ["OfflineLLMServer", "SIMULATOR_FINGERPRINT", "SIMULATOR_MODEL", "SIMULATOR_NOTE",
           "SimulatedLLM", "serve_forever"]
