"""The LLM boundary over real loopback HTTP: retries, n top-ups, cache, outbox, key secrecy."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from testing.fault_server import Captured, FaultServer, Reply, chat_body, chat_reply, error_reply, free_port

from hydrahead.runtime.errors import InvalidInputError, LLMError, LLMResponseError
from hydrahead.runtime.llm import Completion, LLMClient, LLMConfig, Outbox, ResponseCache
from hydrahead.runtime.llm.wire import parse_retry_after
from hydrahead.runtime.llm.outbox import RESPONSE_LIMIT, format_record

KEY = "sk-hydrahead-TEST-9f3c1e7a5b2d4c6e8f0a1b3c5d7e9f1a"
FAST = dict(connect_timeout=1.0, read_timeout=2.0, max_retries=3, backoff_base=0.01,
            backoff_max=0.05, max_retry_after=5.0)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HYDRAHEAD_LLM_API_KEY", "OPENAI_API_KEY", "HYDRAHEAD_LLM_API_KEY_ENV",
                 "HYDRAHEAD_LLM_BASE_URL", "HYDRAHEAD_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def server() -> Any:
    with FaultServer() as s:
        yield s


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture()
def outbox(data_dir: Path) -> Outbox:
    return Outbox.for_user("u1", data_dir)


def make_client(url: str, outbox: Outbox | None = None, cache: ResponseCache | None = None,
                **options: Any) -> LLMClient:
    return LLMClient(LLMConfig(url, "test-model", **{**FAST, **options}), cache=cache,
                     outbox=outbox)


def assert_ledger_matches(outbox: Outbox, server: FaultServer) -> list[dict[str, Any]]:
    """Every attempt the server saw is in the ledger, byte for byte, in order."""
    records = list(outbox.records())
    assert [r["request"].encode("utf-8") for r in records] == [c.body for c in server.captured]
    assert [r["bytes_sent"] for r in records] == [len(c.body) for c in server.captured]
    for r in records:
        assert r["url"] == server.url + "/chat/completions"
        datetime.fromisoformat(r["time"])
    return records


def assert_ledger_holds(outbox: Outbox, server: FaultServer) -> None:
    """Every attempt the server saw is in the ledger, byte for byte (concurrent extra calls may
    reach the server and the ledger in different orders)."""
    records = list(outbox.records())
    assert sorted(r["request"].encode("utf-8") for r in records) == sorted(
        c.body for c in server.captured)


def seed_echo(max_choices: int | None = None) -> Any:
    """A deterministic server: up to ``max_choices`` (or n) choices named after seed and index."""

    def behave(req: Captured) -> Reply:
        body = req.json()
        k = body["n"] if max_choices is None else min(body["n"], max_choices)
        return chat_reply([f"seed={body.get('seed')} choice={i}" for i in range(k)])

    return behave


# -- the happy path -------------------------------------------------------------------------------


def test_request_shape_and_completion(server: FaultServer, outbox: Outbox,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYDRAHEAD_LLM_API_KEY", KEY)
    server.script(chat_reply(["a", "b"], model="served-model"))
    with make_client(server.url, outbox) as client:
        out = client.complete("Hello", n=2, temperature=0.7, max_tokens=12, seed=5)
    assert out == Completion(["a", "b"], cached=False, requests_sent=1, model="served-model",
                             simulated=False, prompt_tokens=1, completion_tokens=2)
    (req,) = server.captured
    assert req.method == "POST" and req.path == "/v1/chat/completions"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.json() == {"model": "test-model", "messages": [{"role": "user", "content": "Hello"}],
                          "n": 2, "temperature": 0.7, "max_tokens": 12, "seed": 5}
    (rec,) = assert_ledger_matches(outbox, server)
    assert rec["status"] == 200 and rec["attempt"] == 1 and rec["error"] is None
    assert json.loads(rec["response"])["model"] == "served-model"
    assert rec["bytes_received"] == len(rec["response"].encode())
    assert "seed" not in json.dumps(server.captured[0].headers)


def test_chat_messages_unicode_and_no_seed(server: FaultServer, outbox: Outbox) -> None:
    server.script(chat_reply(["ok"]))
    messages = [{"role": "system", "content": "Réponds en français ✓"},
                {"role": "user", "content": "Grüße 🌍"}]
    out = make_client(server.url, outbox).complete(messages)
    assert out.texts == ["ok"]
    body = server.captured[0].json()
    assert body["messages"] == messages and "seed" not in body and body["n"] == 1
    assert_ledger_matches(outbox, server)


def test_simulator_is_recognised(server: FaultServer) -> None:
    server.script(chat_reply(["x"], model="whatever",
                             system_fingerprint="hydrahead-offline-simulator-v1"),
                  chat_reply(["y"], model="hydrahead-offline-simulator"),
                  chat_reply(["z"], model="gpt-x", system_fingerprint="fp_123"))
    client = make_client(server.url)
    assert [client.complete("p").simulated for _ in range(3)] == [True, True, False]


# -- retries --------------------------------------------------------------------------------------


def test_429_retry_after_is_honoured(server: FaultServer, outbox: Outbox) -> None:
    server.script(error_reply(429, "slow down", {"Retry-After": "1"}), chat_reply(["done"]))
    out = make_client(server.url, outbox, backoff_base=0.0).complete("p")
    assert out.texts == ["done"] and out.requests_sent == 2
    gap = server.captured[1].arrived - server.captured[0].arrived
    assert 0.9 <= gap < 4.0, gap  # waited for Retry-After, not for the 0 s backoff
    records = assert_ledger_matches(outbox, server)
    assert [r["status"] for r in records] == [429, 200]
    assert [r["attempt"] for r in records] == [1, 2]
    assert "slow down" in records[0]["response"]


def test_retry_after_is_capped(server: FaultServer) -> None:
    server.script(Reply(503, "busy", {"Retry-After": "3600"}), chat_reply(["ok"]))
    t0 = time.monotonic()
    assert make_client(server.url, max_retry_after=0.05).complete("p").texts == ["ok"]
    assert time.monotonic() - t0 < 30  # not an hour: capped at max_retry_after


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    assert parse_retry_after("-4") == 0.0
    for bad in (None, "", "soon", "nan"):
        assert parse_retry_after(bad) is None


def test_500_then_success(server: FaultServer, outbox: Outbox) -> None:
    server.script(Reply(500, "oops"), Reply(502, "bad gateway"), chat_reply(["fine"]))
    out = make_client(server.url, outbox).complete("p", seed=1)
    assert out.texts == ["fine"] and out.requests_sent == 3
    records = assert_ledger_matches(outbox, server)
    assert [(r["status"], r["attempt"]) for r in records] == [(500, 1), (502, 2), (200, 3)]
    assert len({c.body for c in server.captured}) == 1  # a retry resends the same bytes


def test_always_500_gives_up_after_max_retries_plus_one(server: FaultServer,
                                                        outbox: Outbox) -> None:
    server.default = Reply(500, "internal meltdown " + "x" * 500)
    with pytest.raises(LLMError) as info:
        make_client(server.url, outbox, max_retries=3).complete("p")
    assert not isinstance(info.value, LLMResponseError)
    msg = str(info.value)
    assert msg.startswith("gave up after 4 attempts: HTTP 500")
    assert server.url + "/chat/completions" in msg and "internal meltdown" in msg
    assert len(msg) < 600  # the body is quoted, but only its first 200 characters
    assert server.hits == 4
    assert [r["status"] for r in assert_ledger_matches(outbox, server)] == [500] * 4


def test_max_retries_zero_means_one_attempt(server: FaultServer) -> None:
    server.default = Reply(503, "down")
    with pytest.raises(LLMError, match="gave up after 1 attempt: HTTP 503"):
        make_client(server.url, max_retries=0).complete("p")
    assert server.hits == 1


def test_hang_past_read_timeout_is_retried_then_fails(server: FaultServer,
                                                      outbox: Outbox) -> None:
    server.default = Reply(200, chat_body(["too late"]), delay=1.0)
    t0 = time.monotonic()
    with pytest.raises(LLMError, match="read timeout of 0.2 s") as info:
        make_client(server.url, outbox, read_timeout=0.2, max_retries=2).complete("p")
    assert time.monotonic() - t0 < 5
    assert "gave up after 3 attempts" in str(info.value)
    assert server.hits == 3
    records = assert_ledger_matches(outbox, server)
    assert all(r["status"] is None and "timeout" in r["error"] for r in records)
    assert all(r["bytes_received"] == 0 for r in records)


def test_hang_then_success(server: FaultServer) -> None:
    server.script(Reply(200, chat_body(["late"]), delay=1.0), chat_reply(["on time"]))
    out = make_client(server.url, read_timeout=0.2).complete("p")
    assert out.texts == ["on time"] and out.requests_sent == 2


def test_connection_refused_fails_after_retries(outbox: Outbox) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    expected = r"gave up after 3 attempts: cannot reach http://127\.0\.0\.1"
    with pytest.raises(LLMError, match=expected):
        make_client(url, outbox, max_retries=2).complete("p")
    records = list(outbox.records())
    assert len(records) == 3
    assert all(r["status"] is None and r["error"] and r["response"] is None for r in records)
    assert {r["request"] for r in records} == {records[0]["request"]}


@pytest.mark.parametrize("status,message", [(401, "Invalid API key provided"),
                                            (400, "max_tokens is too large"),
                                            (404, "model not found")])
def test_client_errors_are_not_retried(server: FaultServer, outbox: Outbox, status: int,
                                       message: str) -> None:
    server.default = error_reply(status, message)
    with pytest.raises(LLMError) as info:
        make_client(server.url, outbox).complete("p")
    assert f"HTTP {status}" in str(info.value) and message in str(info.value)
    assert server.hits == 1
    assert [r["status"] for r in assert_ledger_matches(outbox, server)] == [status]


def test_401_hint_names_the_variable_not_the_key(server: FaultServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    server.default = error_reply(401, "bad key")
    with pytest.raises(LLMError, match=r"HYDRAHEAD_LLM_API_KEY is not set"):
        make_client(server.url).complete("p")
    monkeypatch.setenv("HYDRAHEAD_LLM_API_KEY", KEY)
    with pytest.raises(LLMError, match=r"check the API key in \$HYDRAHEAD_LLM_API_KEY") as info:
        make_client(server.url).complete("p")
    assert KEY not in str(info.value)


def test_redirect_is_not_followed(server: FaultServer) -> None:
    server.default = Reply(307, "", {"Location": "http://elsewhere.invalid/v1/chat/completions"})
    with pytest.raises(LLMError, match="redirected to http://elsewhere.invalid"):
        make_client(server.url).complete("p")
    assert server.hits == 1


def test_redirect_to_another_host_carries_no_key_anywhere(
    server: FaultServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HYDRAHEAD_LLM_API_KEY", KEY)
    with FaultServer(default=chat_reply(["stolen"])) as elsewhere:
        location = f"{elsewhere.url}/chat/completions?key={KEY}&k2={KEY.replace('-', '%2D')}"
        server.default = Reply(307, "", {"Location": location})
        with pytest.raises(LLMError, match="not followed") as info:
            make_client(server.url).complete("p")
        assert elsewhere.hits == 0  # the Authorization header never went to the other host
    assert server.hits == 1
    assert KEY not in str(info.value) and "[REDACTED]" in str(info.value)
    assert KEY not in caplog.text


def test_a_key_echoed_in_a_completion_is_redacted_everywhere(
    server: FaultServer, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYDRAHEAD_LLM_API_KEY", KEY)
    server.default = lambda req: chat_reply([f"your key is {req.headers['authorization'][7:]}"])
    with ResponseCache(data_dir / "cache.sqlite") as cache:
        client = make_client(server.url, Outbox.for_user("u1", data_dir), cache)
        answer = client.complete("p", seed=1)
        assert answer.texts == ["your key is [REDACTED]"]
        assert client.complete("p", seed=1).texts == ["your key is [REDACTED]"]  # cached
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


# -- deadlines ------------------------------------------------------------------------------------


def test_a_dripping_answer_is_cut_off_by_the_attempt_timeout(server: FaultServer,
                                                             outbox: Outbox) -> None:
    # Every byte arrives well within the read timeout; the whole answer would take ~60 s.
    server.default = Reply(200, chat_body(["slow " * 40]), drip=0.1)
    t0 = time.monotonic()
    with pytest.raises(LLMError, match="attempt timeout of 0.8 s") as info:
        make_client(server.url, outbox, read_timeout=1.0, attempt_timeout=0.8,
                    max_retries=1).complete("p")
    elapsed = time.monotonic() - t0
    assert elapsed < 4.0, elapsed
    assert "gave up after 2 attempts" in str(info.value)
    records = assert_ledger_matches(outbox, server)
    assert all(r["status"] is None and "still arriving" in r["error"] for r in records)


def test_the_total_timeout_bounds_a_whole_call(server: FaultServer) -> None:
    server.default = Reply(200, chat_body(["slow " * 40]), drip=0.1)
    t0 = time.monotonic()
    with pytest.raises(LLMError, match="total timeout of 1.5 s"):
        make_client(server.url, read_timeout=1.0, attempt_timeout=1.0, total_timeout=1.5,
                    max_retries=10).complete("p")
    assert time.monotonic() - t0 < 3.5
    assert server.hits == 2  # 1 s, then the remaining 0.5 s: no third attempt


def test_total_timeout_ends_top_up_calls_with_what_came_back(server: FaultServer) -> None:
    server.script(chat_reply(["first"]))
    server.default = Reply(200, chat_body(["late"]), drip=0.05)
    c = make_client(server.url, total_timeout=1.0, max_retries=5).complete("p", n=3)
    assert c.texts == ["first"]


def test_deadlines_are_validated() -> None:
    for name in ("attempt_timeout", "total_timeout"):
        with pytest.raises(InvalidInputError, match=name):
            LLMConfig("http://127.0.0.1:1/v1", "m", **{name: 0})


# -- malformed answers ----------------------------------------------------------------------------


def test_malformed_json_is_retried_then_raises(server: FaultServer, outbox: Outbox) -> None:
    server.default = Reply(200, b'{"choices": [ this is not json' + b"y" * 400)
    with pytest.raises(LLMResponseError) as info:
        make_client(server.url, outbox, max_retries=2).complete("p")
    msg = str(info.value)
    assert "gave up after 3 attempts: HTTP 200" in msg and "malformed JSON" in msg
    assert '{"choices": [ this is not json' in msg and "y" * 250 not in msg
    assert server.hits == 3
    assert len(assert_ledger_matches(outbox, server)) == 3


@pytest.mark.parametrize("body", [{"object": "chat.completion"},
                                  {"choices": [{"index": 0, "finish_reason": "stop"}]},
                                  {"choices": [{"message": {"content": 42}}]},
                                  ["not", "an", "object"]])
def test_missing_fields_are_retried_then_raise(server: FaultServer, body: Any) -> None:
    server.default = Reply(200, body)
    with pytest.raises(LLMResponseError, match="is not a chat completion"):
        make_client(server.url, max_retries=1).complete("p")
    assert server.hits == 2


def test_malformed_then_valid_recovers(server: FaultServer) -> None:
    server.script(Reply(200, b"<html>proxy error</html>"), chat_reply(["good"]))
    assert make_client(server.url).complete("p").texts == ["good"]


def test_empty_choice_list_raises_after_retries(server: FaultServer, outbox: Outbox) -> None:
    server.default = chat_reply([])
    with pytest.raises(LLMResponseError, match="gave up after 4 attempts: .*returned no choices"):
        make_client(server.url, outbox).complete("p", n=3, seed=1)
    assert server.hits == 4
    assert len(assert_ledger_matches(outbox, server)) == 4


def test_oversized_answer_is_refused(server: FaultServer, outbox: Outbox) -> None:
    server.default = chat_reply(["z" * 5000])
    with pytest.raises(LLMResponseError, match="larger than max_response_bytes=1000"):
        make_client(server.url, outbox, max_response_bytes=1000).complete("p")
    assert server.hits == 1
    (rec,) = assert_ledger_matches(outbox, server)
    assert rec["status"] == 200 and rec["bytes_received"] > 1000


# -- n candidates ---------------------------------------------------------------------------------


def test_fewer_choices_are_topped_up(server: FaultServer, outbox: Outbox) -> None:
    server.default = seed_echo(max_choices=2)
    out = make_client(server.url, outbox).complete("p", n=5, seed=7)
    assert out.texts == ["seed=7 choice=0", "seed=7 choice=1", "seed=8 choice=0",
                         "seed=8 choice=1", "seed=9 choice=0"]
    assert out.requests_sent == 3 == server.hits
    # The remainder at the 2 choices this server gives per call: (2, 8) and (1, 9), together.
    assert sorted((c.json()["n"], c.json()["seed"]) for c in server.captured) == [
        (1, 9), (2, 8), (5, 7)]
    assert_ledger_holds(outbox, server)


def test_server_that_runs_dry_returns_what_came_back(server: FaultServer,
                                                     outbox: Outbox) -> None:
    server.script(chat_reply(["one", "two"]))
    server.default = chat_reply([])
    out = make_client(server.url, outbox).complete("p", n=5, seed=3)
    assert out.texts == ["one", "two"] and out.requests_sent == 3 == server.hits
    assert_ledger_holds(outbox, server)


def test_failing_extra_call_returns_what_came_back(server: FaultServer, tmp_path: Path) -> None:
    server.script(chat_reply(["one"]))
    server.default = Reply(500, "gone")
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        client = make_client(server.url, cache=cache, max_retries=1)
        out = client.complete("p", n=3, seed=3)  # two extra calls, each tried twice
        assert out.texts == ["one"] and out.requests_sent == 5 == server.hits
        assert len(cache) == 0  # a transient failure must not become the cached answer
        server.default = seed_echo()
        server.script(chat_reply(["one"]))
        again = client.complete("p", n=3, seed=3)
        assert again.texts == ["one", "seed=4 choice=0", "seed=5 choice=0"] and len(cache) == 1
        assert client.complete("p", n=3, seed=3).cached


def test_server_ignoring_n_gets_repeated_calls_with_new_seeds(server: FaultServer,
                                                              outbox: Outbox) -> None:
    server.default = seed_echo(max_choices=1)
    out = make_client(server.url, outbox).complete("p", n=4, seed=100)
    assert out.texts == [f"seed={s} choice=0" for s in (100, 101, 102, 103)]
    assert len(set(out.texts)) == 4
    assert sorted((c.json()["n"], c.json()["seed"]) for c in server.captured) == [
        (1, 101), (1, 102), (1, 103), (4, 100)]
    assert_ledger_holds(outbox, server)


def test_extra_calls_are_bounded(server: FaultServer) -> None:
    server.default = seed_echo(max_choices=1)
    out = make_client(server.url, max_extra_calls=2).complete("p", n=10, seed=0)
    assert len(out.texts) == 3 and server.hits == 3


def test_never_more_than_n(server: FaultServer) -> None:
    server.default = chat_reply(["a", "b", "c", "d"])
    assert make_client(server.url).complete("p", n=2).texts == ["a", "b"]


# -- cache ----------------------------------------------------------------------------------------


def test_seeded_request_is_cached(server: FaultServer, outbox: Outbox, data_dir: Path) -> None:
    server.default = seed_echo()
    cache_path = data_dir / "users" / "u1" / "llm-cache.sqlite"
    with ResponseCache(cache_path) as cache:
        client = make_client(server.url, outbox, cache)
        first = client.complete("p", n=2, seed=11)
        second = client.complete("p", n=2, seed=11)
    assert first.cached is False and first.requests_sent == 1
    assert second == Completion(first.texts, cached=True, requests_sent=0,
                                model=first.model, simulated=False)
    assert server.hits == 1  # the server never saw the second request
    assert len(list(outbox.records())) == 1  # and nothing left the device for it
    assert stat.S_IMODE(os.stat(cache_path).st_mode) == 0o600
    # The cache is on disk: a new process (here: new objects) still has it.
    with ResponseCache(cache_path) as cache:
        third = make_client(server.url, outbox, cache).complete("p", n=2, seed=11)
        assert third.cached and third.texts == first.texts and len(cache) == 1
        # A different seed, n or prompt is a different request.
        make_client(server.url, outbox, cache).complete("p", n=2, seed=12)
        make_client(server.url, outbox, cache).complete("p", n=3, seed=11)
        make_client(server.url, outbox, cache).complete("q", n=2, seed=11)
    assert server.hits == 4
    assert_ledger_matches(outbox, server)


def test_cache_policy_unseeded_sampling_is_not_cached(server: FaultServer, tmp_path: Path) -> None:
    server.default = chat_reply(["s"])
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        client = make_client(server.url, cache=cache)
        assert [client.complete("p", temperature=0.8).cached for _ in range(2)] == [False, False]
        assert server.hits == 2 and len(cache) == 0
        # temperature 0 is deterministic by intent: cached, and 0 == 0.0.
        assert client.complete("p", temperature=0).cached is False
        assert client.complete("p", temperature=0.0).cached is True
        assert server.hits == 3


def test_failed_request_keeps_existing_cache_entries(server: FaultServer, tmp_path: Path) -> None:
    server.script(chat_reply(["kept"]))
    server.default = Reply(500, "down")
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        client = make_client(server.url, cache=cache, max_retries=0)
        client.complete("p", seed=1)
        with pytest.raises(LLMError):
            client.complete("other", seed=1)
        assert len(cache) == 1
        assert client.complete("p", seed=1).texts == ["kept"]


def test_corrupt_cache_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LLMError, match="cannot be used"):
        ResponseCache(path)
    assert path.read_bytes() == b"this is not a database" * 100  # left as it was


def test_cache_key_is_what_the_llm_sees_canonically() -> None:
    a = ResponseCache.key({"model": "m", "n": 1, "seed": 2})
    b = ResponseCache.key({"seed": 2, "n": 1, "model": "m"})
    c = ResponseCache.key({"model": "other", "n": 1, "seed": 2})
    d = ResponseCache.key({"model": "m", "n": 1, "seed": 3})
    assert a == b and len({a, c, d}) == 3 and len(a) == 64


def test_the_same_model_on_another_port_answers_from_the_cache(tmp_path: Path) -> None:
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        for expected_hits in (1, 0):  # a new server (new random port) each time
            with FaultServer(default=chat_reply(["x"])) as s:
                assert make_client(s.url, cache=cache).complete("p", seed=1).texts == ["x"]
                assert s.hits == expected_hits


# -- the API key never leaves the Authorization header --------------------------------------------


def test_api_key_is_sent_but_never_written(server: FaultServer, data_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("HYDRAHEAD_LLM_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)

    def echo_auth(req: Captured) -> Reply:  # a hostile server quoting the header back
        return Reply(500, {"error": {"message": f"saw {req.headers.get('authorization')}"}})

    server.script(echo_auth, chat_reply(["a"]), error_reply(401, f"bad key {KEY}"),
                  Reply(200, f"not json {KEY}".encode()), chat_reply(["b"]))
    user = data_dir / "users" / "u1"
    outbox = Outbox(user / "outbox.jsonl")
    errors = []
    with ResponseCache(user / "cache.sqlite") as cache:
        client = make_client(server.url, outbox, cache)
        client.complete("p", seed=1)                      # 500 echoing the key, then 200
        client.complete("p", seed=1)                      # cached
        with pytest.raises(LLMError) as info:
            client.complete("q", seed=2)                  # 401 quoting the key
        errors.append(str(info.value))
        assert client.complete("r", seed=3).texts == ["b"]  # bad JSON quoting the key, then 200
        errors.append(repr(client) + repr(client.config) + repr(cache) + repr(outbox))

    assert server.hits == 5
    assert all(c.headers["authorization"] == f"Bearer {KEY}" for c in server.captured)
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"outbox.jsonl", "cache.sqlite"}
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert "[REDACTED]" in (user / "outbox.jsonl").read_text()
    assert all(KEY not in e for e in errors)
    assert KEY not in caplog.text


def test_no_fallback_to_openai_api_key(server: FaultServer,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server.default = chat_reply(["x"])
    make_client(server.url).complete("p")
    assert "authorization" not in server.captured[-1].headers
    # Opting in by naming the variable works, also through the environment.
    monkeypatch.setenv("HYDRAHEAD_LLM_API_KEY_ENV", "OPENAI_API_KEY")
    config = LLMConfig.from_env(server.url, "m", **FAST)
    LLMClient(config).complete("p")
    assert server.captured[-1].headers["authorization"] == f"Bearer {KEY}"


def test_key_is_read_at_request_time(server: FaultServer,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    server.default = chat_reply(["x"])
    client = make_client(server.url)
    client.complete("p")
    monkeypatch.setenv("HYDRAHEAD_LLM_API_KEY", KEY)
    client.complete("p")
    assert ["authorization" in c.headers for c in server.captured] == [False, True]


def test_unsendable_key_is_refused_without_quoting_it(server: FaultServer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYDRAHEAD_LLM_API_KEY", "sk-line1\nsk-secret-line2")
    with pytest.raises(LLMError, match="cannot be sent in an HTTP header") as info:
        make_client(server.url).complete("p")
    assert "sk-secret-line2" not in str(info.value) and server.hits == 0


# -- config ---------------------------------------------------------------------------------------


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LLMError, match="HYDRAHEAD_LLM_BASE_URL"):
        LLMConfig.from_env()
    monkeypatch.setenv("HYDRAHEAD_LLM_BASE_URL", "http://127.0.0.1:9/v1/")
    assert LLMConfig.from_env().model == "default"  # single-model servers ignore the name
    monkeypatch.setenv("HYDRAHEAD_LLM_MODEL", "llama")
    config = LLMConfig.from_env(read_timeout=3.0)
    assert (config.base_url, config.model, config.read_timeout) == ("http://127.0.0.1:9/v1",
                                                                    "llama", 3.0)
    assert config.chat_url == "http://127.0.0.1:9/v1/chat/completions"
    assert LLMConfig.from_env(model="other").model == "other"


@pytest.mark.parametrize("kwargs,match", [
    ({"base_url": "ftp://h/v1"}, "http:// or https://"),
    ({"base_url": ""}, "base_url"),
    ({"model": " "}, "model"),
    ({"read_timeout": 0}, "read_timeout"),
    ({"max_retries": -1}, "max_retries"),
    ({"api_key_env": "NOT A NAME"}, "api_key_env"),
])
def test_config_rejects_bad_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        LLMConfig(**{"base_url": "http://h/v1", "model": "m", **kwargs})


def test_config_rejects_credentials_in_url_without_echoing_them() -> None:
    with pytest.raises(InvalidInputError, match="must not contain credentials") as info:
        LLMConfig("https://user:s3cr3tpw@h/v1", "m")
    assert "s3cr3tpw" not in str(info.value)


def test_bad_arguments_send_nothing(server: FaultServer) -> None:
    client = make_client(server.url)
    for kwargs in ({"n": 0}, {"max_tokens": 0}, {"temperature": -1}, {"seed": "1"},
                   {"temperature": float("nan")}):
        with pytest.raises(InvalidInputError):
            client.complete("p", **kwargs)
    for prompt in ("", "  ", [], [{"role": "user"}], [{"role": "user", "content": 3}]):
        with pytest.raises(InvalidInputError):
            client.complete(prompt)  # type: ignore[arg-type]
    assert server.hits == 0


# -- outbox ---------------------------------------------------------------------------------------


def test_disabled_outbox_writes_nothing(server: FaultServer, tmp_path: Path) -> None:
    server.default = chat_reply(["x"])
    outbox = Outbox(tmp_path / "u" / "outbox.jsonl", enabled=False)
    make_client(server.url, outbox).complete("p")
    assert not (tmp_path / "u").exists()
    assert list(outbox.records()) == []


def test_outbox_file_is_private_and_readable_back(server: FaultServer, outbox: Outbox) -> None:
    server.script(Reply(500, "x"), chat_reply(["y" * (RESPONSE_LIMIT + 10)]))
    make_client(server.url, outbox).complete("p")
    assert stat.S_IMODE(outbox.path.stat().st_mode) == 0o600
    first, second = assert_ledger_matches(outbox, server)
    assert second["response_truncated"] is True and len(second["response"]) == RESPONSE_LIMIT
    assert second["bytes_received"] > RESPONSE_LIMIT
    assert outbox.tail(1) == [second] and outbox.tail(5) == [first, second]
    summary = outbox.summary()
    assert (summary["records"], summary["answered_2xx"], summary["failed"]) == (2, 1, 1)
    assert summary["bytes_sent"] == sum(len(c.body) for c in server.captured)
    line = format_record(first, bodies=True, width=40)
    assert "HTTP 500" in line and "attempt 1" in line and "request:" in line


def test_torn_last_line_is_skipped_and_not_glued_to_the_next(server: FaultServer,
                                                             outbox: Outbox) -> None:
    server.default = chat_reply(["x"])
    client = make_client(server.url, outbox)
    client.complete("p")
    with open(outbox.path, "ab") as fh:  # a crash in the middle of an append
        fh.write(b'{"time": "2026-01-01T00:00:00+00:00", "url": "http://h", "requ')
    assert len(list(outbox.records())) == 1
    assert outbox.summary()["unreadable_lines"] == 1
    client.complete("q")
    records = list(outbox.records())
    assert len(records) == 2  # nothing stored before was lost, the new record is intact
    assert [r["request"].encode() for r in records] == [c.body for c in server.captured]


def test_outbox_for_user(tmp_path: Path) -> None:
    outbox = Outbox.for_user("alice", root=tmp_path)
    assert outbox.path == tmp_path / "users" / "alice" / "outbox.jsonl"
    assert stat.S_IMODE((tmp_path / "users" / "alice").stat().st_mode) == 0o700


def test_a_gzip_encoded_answer_is_decoded(server: FaultServer) -> None:
    import gzip

    body = gzip.compress(json.dumps(chat_body(["zipped"])).encode())
    server.default = Reply(200, body, {"Content-Encoding": "gzip"})
    assert make_client(server.url).complete("p").texts == ["zipped"]


# -- concurrency, budgets, token limits -----------------------------------------------------------


def test_extra_calls_go_out_together_and_bounded(server: FaultServer) -> None:
    in_flight, peak, lock = [0], [0], __import__("threading").Lock()

    def slow_single(req: Captured) -> Reply:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.2)
        with lock:
            in_flight[0] -= 1
        return chat_reply([f"seed={req.json().get('seed')}"])

    server.default = slow_single
    out = make_client(server.url, max_concurrency=3).complete("p", n=8, seed=10)
    assert out.texts == [f"seed={s}" for s in range(10, 18)]  # call order, not finish order
    assert out.requests_sent == 8
    assert peak[0] == 3  # seven extra calls, at most three at once


def test_request_budget_caps_what_is_sent(server: FaultServer) -> None:
    from hydrahead.runtime.errors import LLMBudgetError
    from hydrahead.runtime.llm import RequestBudget

    server.default = seed_echo(max_choices=1)
    budget = RequestBudget(3)
    client = make_client(server.url)
    out = client.complete("p", n=5, seed=1, budget=budget)
    assert len(out.texts) == 3 and server.hits == 3 == budget.sent  # the cap, not n
    with pytest.raises(LLMBudgetError):
        client.complete("q", seed=2, budget=budget)
    assert server.hits == 3  # nothing more was sent


def truncated_reply(texts_and_reasons: list[tuple[str, str]]) -> Reply:
    body = chat_body([t for t, _ in texts_and_reasons])
    for choice, (_, reason) in zip(body["choices"], texts_and_reasons):
        choice["finish_reason"] = reason
    return Reply(200, body)


@pytest.mark.parametrize("policy, texts", [("drop", ["whole"]), ("keep", ["whole", "cut sh"])])
def test_choices_cut_at_the_token_limit(server: FaultServer, policy: str, texts: list) -> None:
    server.default = truncated_reply([("whole", "stop"), ("cut sh", "length")])
    out = make_client(server.url, on_truncated=policy, max_extra_calls=0).complete("p", n=2)
    assert out.texts == texts and out.truncated == 1


def test_all_choices_cut_is_an_error_not_an_empty_answer(server: FaultServer) -> None:
    server.default = truncated_reply([("cut", "length")])
    with pytest.raises(LLMResponseError, match="cut at the token limit"):
        make_client(server.url).complete("p", max_tokens=5)
    assert server.hits == 1  # asking again would be cut again
    with pytest.raises(LLMResponseError, match="cut at the token limit"):
        make_client(server.url, on_truncated="error").complete("p")


def test_max_completion_tokens_servers(server: FaultServer) -> None:
    def newer_model(req: Captured) -> Reply:
        if "max_tokens" in req.json():
            return error_reply(400, "Unsupported parameter: 'max_tokens' is not supported with "
                                    "this model. Use 'max_completion_tokens' instead.")
        return chat_reply([f"limit={req.json()['max_completion_tokens']}"])

    server.default = newer_model
    client = make_client(server.url)
    assert client.complete("p", max_tokens=7).texts == ["limit=7"]
    assert client.complete("q", max_tokens=9).texts == ["limit=9"]  # remembered: one request
    assert server.hits == 3
    configured = make_client(server.url, max_tokens_field="max_completion_tokens")
    assert configured.complete("p").texts == ["limit=64"] and server.hits == 4


def test_token_usage_is_in_the_ledger(server: FaultServer, outbox: Outbox) -> None:
    server.default = chat_reply(["a", "b"])
    out = make_client(server.url, outbox).complete("p", n=2)
    (rec,) = outbox.records()
    assert rec["usage"] == {"prompt_tokens": 1, "completion_tokens": 2}
    assert (out.prompt_tokens, out.completion_tokens) == (1, 2)
    summary = outbox.summary()
    assert (summary["prompt_tokens"], summary["completion_tokens"]) == (1, 2)
