"""hydrahead.train: server-side training of the shared bases (torch, transformers)."""

from __future__ import annotations
