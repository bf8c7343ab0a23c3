"""The client for OpenAI-compatible Chat Completions servers.

Works with OpenAI, vLLM, llama.cpp's server, Ollama and hydrahead's offline simulator: it POSTs
``{"model", "messages", "n", "temperature", "max_tokens"[, "seed"]}`` to
``{base_url}/chat/completions`` and reads ``choices[*].message.content``.

What it does on top of a bare POST:

* **Retries.** Connection errors, timeouts, HTTP 429 and 5xx, and 200 answers that are not a
  usable completion (bad JSON, missing fields, no choices) are retried with exponential backoff
  and jitter (tenacity), at most ``max_retries + 1`` attempts. A ``Retry-After`` header (seconds
  or an HTTP date) replaces the backoff delay, capped at ``max_retry_after``. Other 4xx answers
  (400, 401, 404, ...) and redirects are not retried (nor followed, so the ``Authorization``
  header never goes to another host). Failing for good raises
  :class:`~hydrahead.runtime.errors.LLMError` (``LLMResponseError`` when the server answered but
  not usefully) saying how many attempts were made, what the last one got, and the URL.
* **Deadlines.** The read timeout bounds each wait for the next bytes; ``attempt_timeout`` bounds
  a whole attempt (a server dripping a valid answer byte by byte is cut off and retried) and
  ``total_timeout`` a whole :meth:`LLMClient.complete` call, retries, backoff and top-ups
  included.
* **n candidates.** Many servers return fewer choices than ``n`` (Ollama and llama.cpp ignore
  it). When the first answer brings ``c < n`` choices, the client sends the extra calls that the
  remainder needs at ``c`` choices each, **concurrently** (at most ``max_concurrency`` in flight,
  ``max_extra_calls`` in all), call ``i`` with ``seed + i`` so that a deterministic server gives
  different samples (without a seed the extra calls carry none and rely on sampling). Their
  texts are joined in call order, so the result does not depend on which finished first. It
  stops when an extra call brings nothing or fails, and returns what it has: never more than
  ``n`` texts, possibly fewer. An empty choice list on the *first* call counts as a bad answer
  and is retried.
* **Budgets.** ``complete(..., budget=RequestBudget(100))`` draws every HTTP attempt (retries
  and extra calls included) from a cap shared by many calls and threads; an attempt the budget
  cannot pay for is not sent (:class:`~hydrahead.runtime.errors.LLMBudgetError`).
* **Token limit.** ``finish_reason == "length"`` choices are dropped, kept or refused
  (``on_truncated``); the limit goes in ``max_tokens`` or ``max_completion_tokens``
  (``max_tokens_field``; a server that rejects one while naming the other gets the other).
* **Thread safety.** One client may be shared by threads (a ``requests.Session`` per thread).
* **Cache.** With a :class:`~hydrahead.runtime.llm.cache.ResponseCache`, a request is answered
  from disk when it was seen before, and stored after it succeeds, *if* its answer is meant to be
  reproducible: ``seed`` given or ``temperature == 0``. An unseeded sampling request is never
  cached (the caller asked for fresh samples). A short answer is cached as it is when the
  server ran dry or the extra-call bound was reached (that is reproducible), but not when an
  extra call failed (a transient error must not become a permanent answer).
* **Outbox.** With an :class:`~hydrahead.runtime.llm.outbox.Outbox`, every HTTP attempt is
  recorded with the body bytes exactly as they went on the wire. Nothing is sent when the
  outbox cannot be written.
* **Sources.** ``complete(..., sources=ids)`` names the history records the prompt holds; the
  outbox entry and the cache entry keep the ids, so deleting a record can erase it from both.
  They are never sent.
* **The API key** is read from the environment at each request and only ever put in the
  ``Authorization`` header. It is in no cache key, cache entry, outbox record, log line, error
  message or repr; should a server echo it back (in an answer's text, an error body or a
  redirect's ``Location``), it is replaced by ``[REDACTED]`` before the answer is returned,
  cached, recorded or quoted in an error.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any, Callable, Mapping, Sequence, TypeVar

import requests
import urllib3
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base

from ... import __version__
from ..errors import InvalidInputError, LLMBudgetError, LLMError, LLMResponseError
from .cache import ResponseCache
from .config import TOKEN_FIELDS, LLMConfig
from .outbox import Outbox, now_utc
from .wire import (
    ParsedAnswer,
    describe_error,
    is_int,
    Malformed,
    chat_messages,
    parse_completion,
    preview,
    redact,
    server_message,
    usage_of,
    parse_retry_after,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True)
class Completion:
    """The answer to one :meth:`LLMClient.complete` call.

    Attributes:
        texts: The candidate texts, at most ``n`` (fewer if the server could not supply them).
        cached: True when the answer came from the response cache (nothing was sent).
        requests_sent: HTTP attempts made for this answer (retries and extra calls included;
            0 when cached). Equals the number of records the call added to the outbox.
        model: The model name the server reported (the configured one if it reported none).
        simulated: True when the answer came from hydrahead's offline simulator.
        prompt_tokens: Prompt tokens the server reported, summed over the requests sent (0 when
            cached or not reported).
        completion_tokens: Completion tokens, likewise.
        truncated: Choices the server cut at the token limit (dropped or kept, per
            ``LLMConfig.on_truncated``; 0 when cached).
    """

    texts: list[str]
    cached: bool
    requests_sent: int
    model: str
    simulated: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: int = 0


class RequestBudget:
    """A cap on HTTP requests sent, shared by many :meth:`LLMClient.complete` calls and threads.

    Args:
        limit: Most requests to send (cache hits cost nothing).
    """

    def __init__(self, limit: int) -> None:
        if not is_int(limit) or limit < 0:
            raise InvalidInputError(f"a request budget must be an integer >= 0, got {limit!r}")
        self.limit = limit
        self._sent = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Pay for one request; False (and nothing paid) when the budget is spent."""
        with self._lock:
            if self._sent >= self.limit:
                return False
            self._sent += 1
            return True

    @property
    def sent(self) -> int:
        """Requests paid for so far."""
        return self._sent

    @property
    def remaining(self) -> int:
        return self.limit - self._sent

    def __repr__(self) -> str:
        return f"RequestBudget({self._sent} of {self.limit} sent)"


class _Retryable(Exception):
    """One attempt failed in a way that is worth another try."""

    def __init__(self, description: str, *, retry_after: float | None = None,
                 bad_response: bool = False) -> None:
        super().__init__(description)
        self.description = description
        self.retry_after = retry_after
        self.bad_response = bad_response  # the server answered, but not usefully


class _WrongTokenField(Exception):
    """The server rejected the token-limit field while naming the other one."""


class _Tally:
    """One ``complete`` call's HTTP attempts (retries and extra calls), deadline and budget."""

    def __init__(self, total_timeout: float, sources: Sequence[str],
                 budget: RequestBudget | None) -> None:
        self.sent = 0
        self.total_timeout = total_timeout
        self.deadline = time.monotonic() + total_timeout
        self.sources = sources
        self.budget = budget
        self._lock = threading.Lock()

    def count(self) -> None:
        """Count one attempt, paying for it from the budget first."""
        if self.budget is not None and not self.budget.take():
            raise LLMBudgetError(
                f"the request budget ({self.budget.limit} requests) is spent; not sent")
        with self._lock:
            self.sent += 1

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


class LLMClient:
    """Talks to one OpenAI-compatible endpoint; see the module docstring for the policies.

    Args:
        config: Endpoint, model, timeouts and retry policy.
        cache: Response cache, or None to always ask the server.
        outbox: Ledger that records every attempt, or None to record nothing.

    The client keeps a ``requests.Session`` per thread (connection reuse) and a small thread
    pool for concurrent extra calls; close them with :meth:`close` or use the client as a
    context manager. A client may be shared by threads.
    """

    def __init__(self, config: LLMConfig, *, cache: ResponseCache | None = None,
                 outbox: Outbox | None = None) -> None:
        if not isinstance(config, LLMConfig):
            raise InvalidInputError(f"config must be an LLMConfig, got {type(config).__name__}")
        self.config = config
        self.cache = cache
        self.outbox = outbox
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._token_field = config.max_tokens_field
        # base * 2**(attempt - 1), plus up to ``base`` of jitter; capped in _wait.
        self._backoff = (wait_exponential(multiplier=config.backoff_base, max=config.backoff_max)
                         + wait_random(0, config.backoff_base))

    # -- public API ------------------------------------------------------------------------

    def complete(self, prompt: str | Sequence[Mapping[str, Any]], *, n: int = 1,
                 temperature: float = 1.0, max_tokens: int = 64, seed: int | None = None,
                 sources: Sequence[str] = (), budget: RequestBudget | None = None
                 ) -> Completion:
        """Ask for ``n`` completions of ``prompt``.

        Args:
            prompt: A user message, or a list of chat messages ``{"role", "content"}``.
            n: How many candidates to return (at most; see the module docstring).
            temperature: Sampling temperature (>= 0).
            max_tokens: Token limit of each candidate (>= 1).
            seed: Sampling seed; a seeded request is cacheable.
            sources: Ids of the history records ``prompt`` holds (kept with the outbox and
                cache entries so that deleting a record erases it there; never sent).
            budget: A request cap shared with other calls; every attempt is paid from it.

        Returns:
            The candidates with where they came from.

        Raises:
            InvalidInputError: for a malformed prompt or parameter.
            LLMBudgetError: if ``budget`` could not pay for the first request.
            LLMResponseError: if the server answered but never with a usable completion.
            LLMError: if the server could not be reached or refused the request.
        """
        body = self._body(prompt, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)
        if isinstance(sources, (str, bytes)) or not all(isinstance(s, str) for s in sources):
            raise InvalidInputError("sources must be a list of record ids (strings)")
        cacheable = self.cache is not None and (seed is not None or body["temperature"] == 0)
        key = ResponseCache.key(body) if cacheable else None
        if key is not None and self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return Completion(hit.texts[:n], True, 0, hit.model, hit.simulated)

        tally = _Tally(self.config.total_timeout, list(sources), budget)
        first = self._request(body, require_choices=True, tally=tally)
        texts = first.texts[:n]
        answers = [first]
        extra = 0
        interrupted = False  # an extra call failed: a retry later may get more, so do not cache
        per_call = max(len(first.texts), 1)  # what this server gives per call
        while len(texts) < n and extra < self.config.max_extra_calls:
            # One wave: enough calls for the remainder at ``per_call`` choices each.
            wanted = n - len(texts)
            calls = min(-(-wanted // per_call), self.config.max_extra_calls - extra)
            bodies = []
            for i in range(calls):
                more = dict(body, n=min(per_call, wanted - i * per_call))
                if seed is not None:
                    more["seed"] = seed + extra + i + 1
                bodies.append(more)
            extra += calls
            results = self._extra_calls(bodies, tally)
            ran_dry = False
            for i, result in enumerate(results):
                if isinstance(result, LLMError):
                    log.warning("extra LLM call %d failed; returning %d of %d candidates: %s",
                                extra - calls + i + 1, len(texts), n, result)
                    interrupted = True
                    break
                answers.append(result)
                ran_dry |= len(result.texts) < bodies[i]["n"]
                texts.extend(result.texts[: n - len(texts)])
            if interrupted or ran_dry:
                break

        model = first.model or self.config.model
        if key is not None and self.cache is not None and not interrupted:
            self.cache.put(key, texts, model=model, simulated=first.simulated,
                           sources=tally.sources)
        return Completion(texts, False, tally.sent, model, first.simulated,
                          sum(a.prompt_tokens for a in answers),
                          sum(a.completion_tokens for a in answers),
                          sum(a.truncated for a in answers))

    def _extra_calls(self, bodies: list[dict[str, Any]], tally: _Tally
                     ) -> list[ParsedAnswer | LLMError]:
        """Send extra calls concurrently; each result (or its LLMError) in call order."""
        def one(extra_body: dict[str, Any]) -> ParsedAnswer | LLMError:
            try:
                return self._request(extra_body, require_choices=False, tally=tally)
            except LLMError as exc:
                return exc

        if len(bodies) == 1:
            return [one(bodies[0])]
        return list(self._executor().map(one, bodies))

    def submit(self, fn: Callable[[], _T]) -> Future[_T]:
        """Run ``fn()`` on the client's thread pool, the one its extra calls use.

        Its threads keep their HTTP sessions from call to call (a fresh thread would open a new
        connection, held until :meth:`close`). ``fn`` must not wait on the pool itself: a
        :meth:`complete` call with ``n=1`` never does (it makes no extra calls).
        """
        return self._executor().submit(fn)

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.config.max_concurrency,
                                                thread_name_prefix="hydrahead-llm")
            return self._pool

    def close(self) -> None:
        """Close the HTTP sessions and the extra-call pool (the cache and outbox belong to the
        caller)."""
        with self._lock:
            pool, self._pool = self._pool, None
            sessions, self._sessions = self._sessions, []
        if pool is not None:
            pool.shutdown(wait=True)
        for session in sessions:
            session.close()

    @property
    def _session(self) -> requests.Session:
        """This thread's HTTP session (requests does not promise a shared one is safe)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(
                {"User-Agent": f"hydrahead/{__version__}", "Accept": "application/json"})
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LLMClient({self.config!r}, cache={self.cache!r}, outbox={self.outbox!r})"

    # -- one request, with retries -----------------------------------------------------------

    def _body(self, prompt: str | Sequence[Mapping[str, Any]], *, n: int, temperature: float,
              max_tokens: int, seed: int | None) -> dict[str, Any]:
        if not is_int(n) or n < 1:
            raise InvalidInputError(f"n must be an integer >= 1, got {n!r}")
        if not is_int(max_tokens) or max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        if (not isinstance(temperature, (int, float)) or isinstance(temperature, bool)
                or not math.isfinite(temperature) or temperature < 0):
            raise InvalidInputError(
                f"temperature must be a finite number >= 0, got {temperature!r}")
        if seed is not None and not is_int(seed):
            raise InvalidInputError(f"seed must be an integer or None, got {seed!r}")
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": chat_messages(prompt),
            "n": n,
            "temperature": float(temperature),  # 0 and 0.0 must be the same request (cache key)
            self._token_field: max_tokens,
        }
        if seed is not None:
            body["seed"] = seed
        return body

    def _request(self, body: dict[str, Any], *, require_choices: bool, tally: _Tally) -> ParsedAnswer:
        """POST ``body`` with retries; return the parsed answer or raise LLMError."""
        try:
            return self._request_once(body, require_choices=require_choices, tally=tally)
        except _WrongTokenField:
            other = next(f for f in TOKEN_FIELDS if f in body)
            field = next(f for f in TOKEN_FIELDS if f != other)
            log.warning("%s refused %r and asked for %r: using %r from now on",
                        self.config.chat_url, other, field, field)
            self._token_field = field
            swapped = {(field if k == other else k): v for k, v in body.items()}
            return self._request_once(swapped, require_choices=require_choices, tally=tally)

    def _request_once(self, body: dict[str, Any], *, require_choices: bool, tally: _Tally
                      ) -> ParsedAnswer:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        key = self.config.api_key()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        retrying = Retrying(
            stop=stop_after_attempt(self.config.max_retries + 1) | _Past(tally),
            wait=lambda state: min(self._wait(state), max(tally.remaining(), 0.0)),
            retry=retry_if_exception_type(_Retryable),
            before_sleep=self._log_retry,
        )
        try:
            for attempt in retrying:
                with attempt:
                    if tally.remaining() <= 0:
                        raise _Retryable(f"the total timeout of {tally.total_timeout:g} s for "
                                         "this call ran out")
                    tally.count()
                    answer = self._attempt(data, headers, key, attempt.retry_state.attempt_number,
                                           require_choices, tally, body)
        except RetryError as exc:
            failure = exc.last_attempt.exception()
            assert isinstance(failure, _Retryable)
            tries = exc.last_attempt.attempt_number
            kind = LLMResponseError if failure.bad_response else LLMError
            late = (f" (the total timeout of {tally.total_timeout:g} s ran out)"
                    if tally.remaining() <= 0 else "")
            raise kind(
                f"gave up after {tries} attempt{'s' if tries != 1 else ''}{late}: "
                f"{failure.description}"
            ) from None
        return answer

    def _wait(self, state: RetryCallState) -> float:
        """Backoff delay before the next attempt; a server's Retry-After wins (capped)."""
        failure = state.outcome.exception() if state.outcome is not None else None
        if isinstance(failure, _Retryable) and failure.retry_after is not None:
            return min(failure.retry_after, self.config.max_retry_after)
        return min(self._backoff(state), self.config.backoff_max)

    def _log_retry(self, state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("LLM attempt %d of %d failed (%s); retrying in %.2f s",
                    state.attempt_number, self.config.max_retries + 1, failure, delay)

    def _attempt(self, data: bytes, headers: dict[str, str], key: str | None, attempt: int,
                 require_choices: bool, tally: _Tally, body: Mapping[str, Any]) -> ParsedAnswer:
        """One HTTP attempt: send, record in the outbox, interpret."""
        url = self.config.chat_url
        if self.outbox is not None:
            self.outbox.check_writable()  # nothing leaves unrecorded
        started = now_utc()
        t0 = time.perf_counter()
        record = partial(self._record, url, attempt, data, started, t0, tally.sources)
        try:
            status, resp_headers, raw, complete = self._send(url, data, headers, key, tally)
        except (_Retryable, LLMError) as exc:
            record(status=None, text=None, bytes_received=0, error=str(exc))
            raise
        text = redact(raw.decode("utf-8", errors="replace"), key)
        record(status=status, text=text, bytes_received=len(raw), error=None,
               usage=usage_of(raw) if complete and 200 <= status < 300 else None)
        if not complete:
            raise LLMResponseError(
                f"the answer from {url} is larger than max_response_bytes="
                f"{self.config.max_response_bytes}; raise the limit if this is expected"
            )
        return self._interpret(url, status, resp_headers, raw, text, require_choices, key, body)

    def _send(self, url: str, data: bytes, headers: dict[str, str], key: str | None,
              tally: _Tally) -> tuple[int, Mapping[str, str], bytes, bool]:
        """POST and read the body (bounded in size and time); map transport failures to our
        exceptions."""
        budget = min(self.config.attempt_timeout, tally.remaining())
        deadline = time.monotonic() + budget
        which = ("attempt timeout" if budget < tally.remaining() else "total timeout")
        try:
            resp = self._session.post(
                url, data=data, headers=headers, allow_redirects=False, stream=True,
                timeout=(min(self.config.connect_timeout, budget),
                         min(self.config.read_timeout, budget)))
            try:
                limit = self.config.max_response_bytes
                chunks: list[bytes] = []
                size = 0
                while True:
                    # read1 returns as soon as any bytes arrive, so the deadline is checked
                    # between the bytes of a dripping answer, not only after 64 KiB of them.
                    chunk = resp.raw.read1(64 * 1024, decode_content=True)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        return resp.status_code, resp.headers, b"".join(chunks), False
                    if time.monotonic() > deadline:
                        raise _Retryable(
                            f"the answer from {url} was still arriving ({size} bytes) when the "
                            f"{which} of {budget:g} s ran out")
                return resp.status_code, resp.headers, b"".join(chunks), True
            finally:
                resp.close()
        except (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.ProtocolError,
                urllib3.exceptions.DecodeError) as exc:  # raised by resp.raw, not by requests
            if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
                raise _Retryable(f"no answer from {url} within the read timeout of "
                                 f"{min(self.config.read_timeout, budget):g} s") from None
            raise _Retryable(f"cannot reach {url}: {describe_error(exc, key)}") from None
        except requests.Timeout as exc:
            connect = isinstance(exc, requests.ConnectTimeout)
            which = "connect" if connect else "read"
            seconds = self.config.connect_timeout if connect else self.config.read_timeout
            raise _Retryable(
                f"no answer from {url} within the {which} timeout of {seconds:g} s"
            ) from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as exc:
            raise _Retryable(f"cannot reach {url}: {describe_error(exc, key)}") from None
        except requests.RequestException as exc:
            raise LLMError(f"request to {url} failed: {describe_error(exc, key)}") from None

    def _interpret(self, url: str, status: int, resp_headers: Mapping[str, str], raw: bytes,
                   text: str, require_choices: bool, key: str | None,
                   body: Mapping[str, Any]) -> ParsedAnswer:
        """Turn an HTTP answer into a ParsedAnswer, a retry, or an LLMError."""
        quoted = preview(text)
        if 200 <= status < 300:
            try:
                answer, cut = parse_completion(raw, key)
            except Malformed as exc:
                raise _Retryable(
                    f"HTTP {status} from {url} is not a chat completion ({exc}); body: {quoted}",
                    bad_response=True,
                ) from None
            if require_choices and not answer.texts:
                raise _Retryable(f"HTTP {status} from {url} returned no choices; body: {quoted}",
                                 bad_response=True)
            return self._truncation_policy(answer, cut, url, body)
        if status == 429 or 500 <= status < 600:
            raise _Retryable(f"HTTP {status} from {url}: {quoted}",
                             retry_after=parse_retry_after(resp_headers.get("Retry-After")))
        if 300 <= status < 400:
            location = redact(preview(resp_headers.get("Location", "?")), key)
            raise LLMError(
                f"HTTP {status} from {url}: redirected to {location} (not followed); "
                "set base_url to the final address"
            )
        message = server_message(text)
        if status == 400:
            used = next((f for f in TOKEN_FIELDS if f in body), None)
            other = next((f for f in TOKEN_FIELDS if f != used), None)
            if used and other and other in text and self._token_field == used:
                raise _WrongTokenField(message)
        hint = ""
        if status in (401, 403):
            hint = (f" (check the API key in ${self.config.api_key_env})"
                    if self.config.api_key() else
                    f" (no API key was sent: ${self.config.api_key_env} is not set)")
        elif status == 404:
            hint = " (check base_url, which usually ends in /v1, and the model name)"
        raise LLMError(f"HTTP {status} from {url}: {message}{hint}")

    def _truncation_policy(self, answer: ParsedAnswer, cut: list[bool], url: str,
                           body: Mapping[str, Any]) -> ParsedAnswer:
        """Apply ``on_truncated`` to the choices the server cut at the token limit."""
        if not any(cut):
            return answer
        limit = next((body[f] for f in TOKEN_FIELDS if f in body), "?")
        policy = self.config.on_truncated
        if policy == "error" or (policy == "drop" and all(cut)):
            raise LLMResponseError(
                f"{sum(cut)} of {len(cut)} choice(s) from {url} were cut at the token limit "
                f"({limit}; finish_reason 'length'); raise max_tokens, or set on_truncated="
                "'keep' to use cut answers")
        texts = answer.texts if policy == "keep" else [
            t for t, c in zip(answer.texts, cut) if not c]
        log.info("%d of %d choice(s) were cut at the token limit (%s): %s", sum(cut), len(cut),
                 limit, "kept" if policy == "keep" else "dropped")
        return ParsedAnswer(texts, answer.model, answer.simulated, answer.prompt_tokens,
                       answer.completion_tokens, sum(cut))

    def _record(self, url: str, attempt: int, data: bytes, started: datetime, t0: float,
                sources: Sequence[str], *, status: int | None, text: str | None,
                bytes_received: int, error: str | None,
                usage: Mapping[str, int] | None = None) -> None:
        if self.outbox is None:
            return
        self.outbox.record(url=url, attempt=attempt, request=data, started=started, status=status,
                           response=text, bytes_received=bytes_received, error=error,
                           elapsed_ms=(time.perf_counter() - t0) * 1000.0, sources=sources,
                           usage=usage)


# -- helpers -------------------------------------------------------------------------------


class _Past(stop_base):
    """A tenacity stop condition: the call's total timeout ran out."""

    def __init__(self, tally: _Tally) -> None:
        self.tally = tally

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.tally.remaining() <= 0
