"""hydrahead: on-device personalization for black-box LLMs (HYDRA).

Subpackages: :mod:`hydrahead.runtime` (device side, torch-free), :mod:`hydrahead.train` and
:mod:`hydrahead.export` (server side).
"""

from __future__ import annotations

__version__ = "0.1.0"
