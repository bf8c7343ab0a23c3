"""hydrahead: on-device personalization for black-box LLMs (HYDRA).

The names an app needs, importable from here::

    from hydrahead import Personalizer, Settings, LLMConfig

    with Personalizer.open("alice", bundle="path/to/bundle", task="GIT_area") as p:
        p.fit(budget=100)
        print(p.ask("Fix the flaky test in t7001").answer)

They are loaded lazily, on first use: ``import hydrahead`` itself imports nothing else (no
numpy, no onnxruntime, never torch). Subpackages: :mod:`hydrahead.runtime` (device side,
torch-free), :mod:`hydrahead.train` and :mod:`hydrahead.export` (server side).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Personalizer": "hydrahead.runtime.personalizer",
    "Answer": "hydrahead.runtime.ask_pipeline",
    "FitSummary": "hydrahead.runtime.personalizer",
    "AsyncPersonalizer": "hydrahead.runtime.async_personalizer",
    "HistoryStore": "hydrahead.runtime.store",
    "Record": "hydrahead.runtime.records",
    "Hit": "hydrahead.runtime.records",
    "Bundle": "hydrahead.runtime.bundle",
    "Encoder": "hydrahead.runtime.encoder",
    "LLMConfig": "hydrahead.runtime.llm.config",
    "LLMClient": "hydrahead.runtime.llm.client",
    "Settings": "hydrahead.runtime.settings",
    "Task": "hydrahead.runtime.tasks",
    "get_task": "hydrahead.runtime.tasks",
    **{name: "hydrahead.runtime.errors" for name in (
        "HydraheadError", "InvalidInputError", "InvalidUserIdError", "NotFoundError",
        "BundleError", "BundleSignatureError", "ExportError", "StoreError", "StoreVersionError",
        "EncoderMismatchError", "HeadError", "StaleHeadError", "TaskError", "LLMError",
        "LLMResponseError", "LLMBudgetError")},
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads lazily
    from hydrahead.runtime.ask_pipeline import Answer
    from hydrahead.runtime.async_personalizer import AsyncPersonalizer
    from hydrahead.runtime.bundle import Bundle
    from hydrahead.runtime.encoder import Encoder
    from hydrahead.runtime.errors import (
        BundleError,
        BundleSignatureError,
        EncoderMismatchError,
        ExportError,
        HeadError,
        HydraheadError,
        InvalidInputError,
        InvalidUserIdError,
        LLMBudgetError,
        LLMError,
        LLMResponseError,
        NotFoundError,
        StaleHeadError,
        StoreError,
        StoreVersionError,
        TaskError,
    )
    from hydrahead.runtime.llm.client import LLMClient
    from hydrahead.runtime.llm.config import LLMConfig
    from hydrahead.runtime.personalizer import FitSummary, Personalizer
    from hydrahead.runtime.records import Hit, Record
    from hydrahead.runtime.settings import Settings
    from hydrahead.runtime.store import HistoryStore
    from hydrahead.runtime.tasks import Task, get_task


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hydrahead' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
