"""The offline simulator's OpenAI-compatible HTTP server, over real loopback HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from hydrahead.runtime.errors import LLMError
from hydrahead.offline.server import CapturedRequest, OfflineLLMServer
from hydrahead.offline.simulator import SimulatedLLM
from hydrahead.runtime.tasks import get_task

PROMPT = get_task("GIT_area").render_prompt("Teach gitweb to show the blob in the html view.")


@pytest.fixture(scope="module")
def server() -> Iterator[OfflineLLMServer]:
    with OfflineLLMServer() as srv:
        yield srv


@pytest.fixture()
def fresh(server: OfflineLLMServer) -> OfflineLLMServer:
    server.clear_captured()
    return server


def chat(n: int = 1, temperature: float = 1.0, **extra: object) -> dict:
    return {"model": "whatever", "messages": [{"role": "user", "content": PROMPT}], "n": n,
            "temperature": temperature, **extra}


def test_chat_completion_round_trip_matches_the_simulator(fresh: OfflineLLMServer) -> None:
    assert fresh.url.startswith("http://127.0.0.1:") and fresh.url.endswith("/v1")
    response = requests.post(f"{fresh.url}/chat/completions", json=chat(n=3, seed=1), timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    data = response.json()
    expected = SimulatedLLM().complete(chat(n=3, seed=1))
    assert {k: v for k, v in data.items() if k != "created"} == {
        k: v for k, v in expected.items() if k != "created"}
    assert data["created"] > 1.7e9  # a real clock, not 0
    assert data["object"] == "chat.completion"
    assert data["model"] == chat()["model"]  # the model asked for
    assert data["system_fingerprint"] == "hydrahead-offline-simulator-v1"
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert all(c["message"]["role"] == "assistant" for c in data["choices"])
    assert data["usage"]["prompt_tokens"] > 0


def test_n_is_honoured_and_the_server_keeps_no_state(fresh: OfflineLLMServer) -> None:
    with requests.Session() as session:  # keep-alive connection, several requests
        first = session.post(f"{fresh.url}/chat/completions", json=chat(n=5), timeout=10).json()
        session.post(f"{fresh.url}/chat/completions", json=chat(n=2, seed=9), timeout=10)
        again = session.post(f"{fresh.url}/chat/completions", json=chat(n=5), timeout=10).json()
    labels = [c["message"]["content"] for c in first["choices"]]
    assert len(labels) == 5 and len(set(labels)) == 5
    assert again == first


def test_captures_hold_the_exact_body_bytes_and_no_authorization(
        fresh: OfflineLLMServer) -> None:
    raw = ('{ "messages":[{"role":"user","content":' + json.dumps(PROMPT) + '}],\n'
           '  "n": 2, "temperature": 0.7, "note": "caf\u00e9" }').encode("utf-8")
    response = requests.post(f"{fresh.url}/chat/completions", data=raw, timeout=10,
                             headers={"Content-Type": "application/json",
                                      "Authorization": "Bearer sk-secret", "X-Trace": "t1"})
    assert response.status_code == 200
    requests.get(f"{fresh.url}/models", timeout=10)
    captured = fresh.captured
    assert [c.path for c in captured] == ["/v1/chat/completions", "/v1/models"]
    assert isinstance(captured[0], CapturedRequest)
    assert captured[0].body == raw
    assert captured[0].json()["note"] == "café"
    assert captured[0].headers["X-Trace"] == "t1"
    assert not any(k.lower() == "authorization" for c in captured for k in c.headers)
    assert "sk-secret" not in repr(captured)
    assert captured[1].body == b""
    fresh.clear_captured()
    assert fresh.captured == []


@pytest.mark.parametrize("payload, message", [
    (b"{not json", "not valid JSON"),
    (b'{"messages": "hi"}', "messages"),
    (json.dumps(chat(n=0)).encode(), "'n'"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_malformed_body_gets_an_openai_style_400(fresh: OfflineLLMServer, payload: bytes,
                                                 message: str) -> None:
    response = requests.post(f"{fresh.url}/chat/completions", data=payload, timeout=10)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and message in error["message"]
    assert fresh.captured[-1].body == payload


def test_models_and_unknown_routes(fresh: OfflineLLMServer) -> None:
    models = requests.get(f"{fresh.url}/models", timeout=10).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["hydrahead-offline-simulator"]
    missing = requests.get(f"{fresh.url}/nothing", timeout=10)
    assert missing.status_code == 404 and "error" in missing.json()
    assert requests.post(f"{fresh.url}/completions", json=chat(), timeout=10).status_code == 404


def test_capture_file_and_lifecycle(tmp_path: Path) -> None:
    log = tmp_path / "captured.jsonl"
    server = OfflineLLMServer(capture_path=log)
    with server:
        port = server.port
        assert port > 0
        requests.post(f"{server.url}/chat/completions", json=chat(),
                      headers={"Authorization": "Bearer sk-x"}, timeout=10)
        with pytest.raises(LLMError, match="cannot listen"):
            OfflineLLMServer(port=port).start()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["path"] == "/v1/chat/completions"
    assert json.loads(lines[0]["body"]) == chat()
    assert "sk-x" not in log.read_text()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
