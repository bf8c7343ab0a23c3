"""Exception types raised by hydrahead.

Every error a user can cause (bad input, a damaged bundle, an unreachable LLM) is raised as a
subclass of :class:`HydraheadError`, with a message that says what to do about it. Code that
wants to catch "anything hydrahead refused" catches ``HydraheadError``.
"""

from __future__ import annotations


class HydraheadError(Exception):
    """Base class of every error hydrahead raises on purpose."""


class InvalidInputError(HydraheadError, ValueError):
    """An argument or record is malformed (empty text, wrong type, duplicate id, ...)."""


class InvalidUserIdError(InvalidInputError):
    """A user id cannot safely name a directory."""


class NotFoundError(HydraheadError, KeyError):
    """One or more ids are not in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class BundleError(HydraheadError):
    """A model bundle is missing files, tampered with, truncated or of an unknown format."""


class BundleSignatureError(BundleError):
    """A bundle's signature is missing, invalid, or made by a key the app does not trust."""


class ExportError(HydraheadError):
    """Exporting a model bundle failed (including its quality check)."""


class StoreError(HydraheadError):
    """A user's history store cannot be opened or written."""


class StoreVersionError(StoreError):
    """The store was written by a newer hydrahead (format version too high)."""


class EncoderMismatchError(StoreError):
    """The store's embeddings were made by another encoder than the one given."""


class HeadError(HydraheadError):
    """A per-user head cannot be loaded or used (e.g. it belongs to another bundle)."""


class StaleHeadError(HeadError):
    """A saved head was fitted on another shared base than the bundle now has."""


class TaskError(HydraheadError):
    """A task is unknown or its definition is invalid."""


class LLMError(HydraheadError):
    """The LLM endpoint could not be reached or gave no usable answer after retries."""


class LLMResponseError(LLMError):
    """The LLM endpoint answered, but with something that is not a usable completion."""


class LLMBudgetError(LLMError):
    """A request was not sent because the request budget it draws on is spent."""
