"""A fake Anthropic Messages endpoint: the SDK's own code runs, only the HTTP peer is ours.

`Script` answers requests from a queue of canned replies (for httpx2.MockTransport in unit
tests); `FakeMessagesServer` is a real HTTP server on 127.0.0.1 that answers every request by
sampling valid proposals from the tool's own input schema (for flows, via ANTHROPIC_BASE_URL).
Both keep every request body they received.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2

USAGE = {
    "input_tokens": 1200,
    "output_tokens": 300,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 900,
}


def message(
    content: list[dict[str, Any]],
    model: str = "claude-sonnet-4-6",
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": usage or USAGE,
    }


def cached_prefix(body: dict[str, Any]) -> str:
    """What the prompt cache keys on, as the API orders it: the tools, then the system blocks
    up to the last one marked `cache_control` ("" where none is marked)."""
    system = body.get("system") or []
    marked = [i for i, block in enumerate(system) if "cache_control" in block]
    if not marked:
        return ""
    return json.dumps([body.get("tools"), system[: marked[-1] + 1]], sort_keys=True)


def tool_answer(
    proposals: Any, tool_id: str = "toolu_fake", usage: dict[str, int] | None = None
) -> dict[str, Any]:
    """A reply that calls propose_trials with `proposals` (any JSON, valid or not)."""
    return message(
        [
            {
                "type": "tool_use",
                "id": tool_id,
                "name": "propose_trials",
                "input": {"proposals": proposals},
            }
        ],
        usage=usage,
    )


def error(status: int, kind: str, text: str) -> tuple[int, dict[str, Any]]:
    return status, {"type": "error", "error": {"type": kind, "message": text}}


Reply = dict[str, Any] | tuple[int, dict[str, Any]] | bytes | Exception  # bytes: a raw body


class Script:
    """Answers with the queued replies in order; records each request's JSON body."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(json.loads(request.content))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, bytes):
            return httpx2.Response(200, content=reply, headers={"content-type": "application/json"})
        status, body = reply if isinstance(reply, tuple) else (200, reply)
        return httpx2.Response(
            status, json=body, headers={"retry-after": "0.01"} if status >= 429 else {}
        )

    def client(self, max_retries: int = 2) -> Any:
        import anthropic

        return anthropic.Anthropic(
            api_key="sk-ant-test",
            max_retries=max_retries,
            http_client=httpx2.Client(transport=httpx2.MockTransport(self.handler)),
        )


def asked_for(body: dict[str, Any]) -> int:
    """How many proposals a request asks for, read from its last message as the model reads
    it ("Call `propose_trials` with 3 proposals", "... again with 1 corrected proposals")."""
    found = re.findall(r"`propose_trials`(?: again)? with (\d+)", json.dumps(body["messages"][-1]))
    assert found, "the request does not say how many proposals it wants"
    return int(found[-1])


def sample_from_schema(
    tool: dict[str, Any], rng: random.Random, shown: str = "", n: int = 1
) -> list[dict[str, Any]]:
    """Valid proposals drawn from the tool's input schema, honouring `when` conditions; where
    the schema asks for predictions, each makes one (its own generator, so the parameters drawn
    do not depend on it): odd ones that they beat the first trial named in `shown` (the
    request's text; the best trial comes first), the others a val_reward threshold."""
    items = tool["input_schema"]["properties"]["proposals"]
    props = items["items"]["properties"]["params"]["properties"]
    proposals = []
    for i in range(n):
        params: dict[str, Any] = {}
        for name, schema in props.items():
            condition = schema.get("description", "")
            if "only when" in condition:
                dep, value = condition.split("only when ")[1].split(" = ")
                if repr(params.get(dep)) != value:
                    continue
            if schema.get("type") == "array":  # an architecture: the smallest valid network
                units = schema["items"]["properties"]["units"]["minimum"]
                params[name] = [
                    {"type": "linear", "units": units},
                    {"type": "activation", "fn": "relu"},
                ]
            elif "enum" in schema:
                params[name] = rng.choice(schema["enum"])
            elif schema["type"] == "integer":
                params[name] = rng.randint(schema["minimum"], schema["maximum"])
            else:
                params[name] = rng.uniform(schema["minimum"], schema["maximum"])
        proposal = {"params": params, "rationale": f"fake idea {i}: probe this region"}
        if "prediction" in items["items"]["properties"]:
            named = re.findall(r"c\d{3}-t\d{2}", shown)
            threshold = round(random.Random(i).uniform(0.3, 0.9), 3)
            proposal["hypothesis"] = f"fake hypothesis {i}: this region pays"
            proposal["prediction"] = (
                {"beats": named[0]}
                if i % 2 and named
                else {"metric": "val_reward", "op": ">=", "value": threshold}
            )
        proposals.append(proposal)
    return proposals


class FakeMessagesServer:
    """POST /v1/messages on 127.0.0.1, answering with schema-valid tool calls. Its usage
    blocks behave like the prompt cache: a cached prefix (`cached_prefix`) seen before is read
    from the cache, a new one is written to it (about four characters a token)."""

    def __init__(
        self,
        seed: int = 0,
        extra: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.prefixes: set[str] = {""}  # no prefix marked: nothing cached, nothing to write
        rng = random.Random(seed)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.requests.append(body)
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                shown = json.dumps(body["messages"][0]["content"])
                proposals = sample_from_schema(body["tools"][0], rng, shown, asked_for(body))
                if extra is not None:
                    proposals = extra(proposals)
                prefix = cached_prefix(body)
                cached = len(prefix) // 4
                seen = prefix in outer.prefixes
                outer.prefixes.add(prefix)
                usage = {
                    "input_tokens": len(json.dumps(body["messages"])) // 4,
                    "output_tokens": 300,
                    "cache_creation_input_tokens": 0 if seen else cached,
                    "cache_read_input_tokens": cached if seen else 0,
                }
                payload = json.dumps(tool_answer(proposals, usage=usage)).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeMessagesServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
