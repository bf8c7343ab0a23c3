"""Where the LLM endpoint is and how patiently to talk to it.

:class:`LLMConfig` holds the endpoint (an OpenAI-compatible ``/chat/completions`` server:
OpenAI, vLLM, llama.cpp's server, Ollama, or hydrahead's offline simulator), the model name,
timeouts and the retry policy. It never holds the API key: it only holds the *name* of the
environment variable the key is read from, at request time, so the key cannot end up in a
repr, a log line, a cache or the outbox ledger.

The key is read from ``$HYDRAHEAD_LLM_API_KEY`` by default. hydrahead does *not* fall back to
``$OPENAI_API_KEY``: many people have that variable set, and silently sending an OpenAI key to
whatever local or third-party server ``base_url`` points at would leak it. To use it anyway,
say so: ``LLMConfig(..., api_key_env="OPENAI_API_KEY")`` or
``HYDRAHEAD_LLM_API_KEY_ENV=OPENAI_API_KEY``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import InvalidInputError, LLMError

ENV_BASE_URL = "HYDRAHEAD_LLM_BASE_URL"
ENV_MODEL = "HYDRAHEAD_LLM_MODEL"
ENV_API_KEY_ENV = "HYDRAHEAD_LLM_API_KEY_ENV"
DEFAULT_API_KEY_ENV = "HYDRAHEAD_LLM_API_KEY"
DEFAULT_MODEL = "default"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Characters an HTTP header value may carry (visible ASCII and space). Checked here so that a
# bad key never reaches requests, whose InvalidHeader message would quote the header value.
_HEADER_SAFE = re.compile(r"^[\x20-\x7e]+$")


TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
ON_TRUNCATED = ("drop", "keep", "error")


@dataclass(frozen=True)
class LLMConfig:
    """Endpoint, model, timeouts and retry policy of an OpenAI-compatible LLM server.

    Attributes:
        base_url: Base URL of the API, e.g. ``"http://127.0.0.1:8080/v1"``; requests go to
            ``{base_url}/chat/completions``. A trailing slash is dropped. Must be http(s) and
            must not carry credentials (put the key in the environment variable instead).
        model: Model name sent in every request.
        api_key_env: Name of the environment variable holding the API key. Read at request
            time; when unset or empty, no ``Authorization`` header is sent (local servers).
        connect_timeout: Seconds to wait for the TCP connection.
        read_timeout: Seconds to wait between bytes of the answer (requests' read timeout).
        attempt_timeout: Most seconds one HTTP attempt may take, from connecting to the last
            byte of the answer, however steadily the server drips bytes. An attempt cut off is
            retried like a timeout.
        total_timeout: Most seconds one :meth:`LLMClient.complete` call may take: every
            attempt, retry, backoff wait and top-up call together. When it runs out, the call
            fails with LLMError (or, during top-up calls, returns what it has).
        max_retries: Retries after the first attempt of one HTTP request (so at most
            ``max_retries + 1`` attempts). Retried: connection errors, timeouts, HTTP 429, HTTP
            5xx, and 200 answers that are not a usable completion.
        backoff_base: First backoff delay in seconds; doubles on every retry (with up to
            ``backoff_base`` of random jitter).
        backoff_max: Ceiling of the exponential backoff delay, in seconds.
        max_retry_after: Ceiling, in seconds, on how long a server's ``Retry-After`` is honoured.
        max_extra_calls: At most this many additional requests per :meth:`LLMClient.complete`
            when the server returns fewer choices than asked for.
        max_response_bytes: Answers larger than this are refused (LLMResponseError).
        max_concurrency: Most requests in flight at once: top-up calls of one
            :meth:`LLMClient.complete`, and the labelling requests of a fit.
        max_tokens_field: The body field that carries the token limit: ``"max_tokens"`` (most
            servers) or ``"max_completion_tokens"`` (newer OpenAI models refuse the other). A
            server that rejects the configured one while naming the other is asked again with
            it, once per client.
        on_truncated: What to do with a choice the server cut at the token limit
            (``finish_reason == "length"``): ``"drop"`` it (default; an answer with every choice
            cut raises LLMResponseError), ``"keep"`` it, or raise (``"error"``).
    """

    base_url: str
    model: str
    api_key_env: str = DEFAULT_API_KEY_ENV
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    attempt_timeout: float = 120.0
    total_timeout: float = 300.0
    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    max_retry_after: float = 60.0
    max_extra_calls: int = 8
    max_response_bytes: int = 8 * 1024 * 1024
    max_concurrency: int = 8
    max_tokens_field: str = "max_tokens"
    on_truncated: str = "drop"

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", _check_base_url(self.base_url))
        if not isinstance(self.model, str) or not self.model.strip():
            raise InvalidInputError(
                f"model must be a non-empty string (or set ${ENV_MODEL}), got {self.model!r}"
            )
        if not isinstance(self.api_key_env, str) or not _ENV_NAME.match(self.api_key_env):
            raise InvalidInputError(
                f"api_key_env must name an environment variable, got {self.api_key_env!r}"
            )
        for name in ("connect_timeout", "read_timeout", "attempt_timeout", "total_timeout"):
            _check_number(name, getattr(self, name), allow_zero=False)
        for name in ("backoff_base", "backoff_max", "max_retry_after"):
            _check_number(name, getattr(self, name), allow_zero=True)
        for name in ("max_retries", "max_extra_calls"):
            _check_int(name, getattr(self, name), minimum=0)
        _check_int("max_response_bytes", self.max_response_bytes, minimum=1)
        _check_int("max_concurrency", self.max_concurrency, minimum=1)
        if self.max_tokens_field not in TOKEN_FIELDS:
            raise InvalidInputError(
                f"max_tokens_field must be one of {TOKEN_FIELDS}, got {self.max_tokens_field!r}")
        if self.on_truncated not in ON_TRUNCATED:
            raise InvalidInputError(
                f"on_truncated must be one of {ON_TRUNCATED}, got {self.on_truncated!r}")

    @classmethod
    def from_env(cls, base_url: str | None = None, model: str | None = None, **options: object
                 ) -> LLMConfig:
        """Build a config from arguments, falling back to the environment.

        Args:
            base_url: Overrides ``$HYDRAHEAD_LLM_BASE_URL``.
            model: Overrides ``$HYDRAHEAD_LLM_MODEL``; without either, ``"default"``, which
                servers that serve one model (llama.cpp's server, the offline simulator) accept,
                and others (OpenAI, vLLM, Ollama) reject with a "model not found" error.
            **options: Any other :class:`LLMConfig` field. ``api_key_env`` defaults to
                ``$HYDRAHEAD_LLM_API_KEY_ENV`` if that is set, else ``HYDRAHEAD_LLM_API_KEY``.

        Raises:
            LLMError: if neither the argument nor the environment gives a base URL.
        """
        base_url = base_url or os.environ.get(ENV_BASE_URL) or None
        model = model or os.environ.get(ENV_MODEL) or DEFAULT_MODEL
        if base_url is None:
            raise LLMError(
                f"no LLM endpoint configured: pass base_url or set ${ENV_BASE_URL} "
                "(e.g. http://127.0.0.1:8080/v1)"
            )
        if "api_key_env" not in options and os.environ.get(ENV_API_KEY_ENV):
            options["api_key_env"] = os.environ[ENV_API_KEY_ENV]
        return cls(base_url=base_url, model=model, **options)  # type: ignore[arg-type]

    @property
    def chat_url(self) -> str:
        """The URL requests are POSTed to."""
        return f"{self.base_url}/chat/completions"

    @property
    def timeout(self) -> tuple[float, float]:
        """``(connect, read)`` timeout tuple as requests takes it."""
        return (self.connect_timeout, self.read_timeout)

    def api_key(self) -> str | None:
        """Read the API key from ``$api_key_env`` now; ``None`` when unset or blank.

        Raises:
            LLMError: if the key holds characters an HTTP header cannot carry (the message
                names the variable, never the value).
        """
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            return None
        if not _HEADER_SAFE.match(key):
            raise LLMError(
                f"the API key in ${self.api_key_env} contains characters that cannot be sent in "
                "an HTTP header (control characters or non-ASCII); check the variable's value"
            )
        return key


def _check_base_url(url: object) -> str:
    if not isinstance(url, str) or not url.strip():
        raise InvalidInputError(f"base_url must be a non-empty URL (or set ${ENV_BASE_URL})")
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInputError(
            f"base_url must be an http:// or https:// URL such as http://127.0.0.1:8080/v1, "
            f"got {url!r}"
        )
    if parts.username is not None or parts.password is not None:
        # Never echo the URL here: it holds a secret.
        raise InvalidInputError(
            "base_url must not contain credentials; put the API key in the environment "
            f"variable named by api_key_env (default ${DEFAULT_API_KEY_ENV})"
        )
    if parts.query or parts.fragment:
        raise InvalidInputError(f"base_url must not have a query or fragment, got {url!r}")
    return url


def _check_number(name: str, value: object, *, allow_zero: bool) -> None:
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero)):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidInputError(f"{name} must be a finite number {bound}, got {value!r}")


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
