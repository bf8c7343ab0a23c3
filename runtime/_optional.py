"""Lazy imports of optional dependencies with an actionable error."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that says what to install.

    Args:
        module: Dotted module name, e.g. ``"torch"``.
        extra: The hydrahead extra that provides it, e.g. ``"train"``.

    Returns:
        The imported module.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{module!r} is needed for this feature but is not installed. Install it with: "
            f"pip install -c constraints.txt 'hydrahead[{extra}]'"
        ) from exc
