"""hydrahead.runtime.llm: the boundary to a black-box LLM (OpenAI-compatible Chat Completions).

:class:`LLMClient` sends prompts (with retries, n-candidate top-ups and an optional disk
:class:`ResponseCache`), and records every HTTP attempt in the user's :class:`Outbox` ledger.
The offline simulator is not part of the runtime: it lives in :mod:`hydrahead.offline`.
"""

from __future__ import annotations

from .cache import ResponseCache
from .client import Completion, LLMClient, RequestBudget
from .config import LLMConfig
from .outbox import Outbox

__all__ = ["Completion", "LLMClient", "LLMConfig", "Outbox", "RequestBudget", "ResponseCache"]
