"""Small OpenAI-API client for the plugin's integration tests (requests + server-sent events)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

import requests

from .server import MODEL_NAME

TIMEOUT_S = 300


@dataclass
class Reply:
    status: int
    texts: dict[int, str] = field(default_factory=dict)
    finish: dict[int, str | None] = field(default_factory=dict)
    error: str = ""
    raw: str = ""


def body_for(endpoint: str, prompt: str, **params) -> dict:
    body = {"model": MODEL_NAME, **params}
    if endpoint == "/v1/chat/completions":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def sse_lines(resp):
    """The lines of a streamed (server-sent events) reply, decoded. They end at ``\n`` (``\r\n``)
    only: ``iter_lines(decode_unicode=True)`` splits with ``str.splitlines``, also at U+2028, U+0085
    and other characters that JSON leaves unescaped inside a string, which cuts an event in two."""
    for raw in resp.iter_lines(delimiter=b"\n"):
        yield raw.decode("utf-8").removesuffix("\r")


def post(base_url: str, endpoint: str, body: dict, *, session: requests.Session | None = None) -> Reply:
    http = session or requests
    stream = bool(body.get("stream"))
    resp = http.post(base_url + endpoint, json=body, timeout=TIMEOUT_S, stream=stream)
    if resp.status_code != 200:
        try:
            message = resp.json().get("message", resp.text)
        except ValueError:
            message = resp.text
        return Reply(resp.status_code, error=message, raw=resp.text)
    if not stream:
        payload = resp.json()
        reply = Reply(200, raw=resp.text)
        for choice in payload["choices"]:
            i = choice["index"]
            reply.texts[i] = choice["text"] if "text" in choice else (choice["message"]["content"] or "")
            reply.finish[i] = choice["finish_reason"]
        return reply
    reply = Reply(200)
    lines = []
    for line in sse_lines(resp):
        lines.append(line)
        if not line or not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            break
        event = json.loads(data)
        if "error" in event or event.get("object") == "error":
            err = event.get("error", event)
            reply.error = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            continue
        for choice in event.get("choices", []):
            i = choice["index"]
            delta = choice.get("text")
            if delta is None:
                delta = (choice.get("delta") or {}).get("content") or ""
            reply.texts[i] = reply.texts.get(i, "") + delta
            if choice.get("finish_reason") is not None:
                reply.finish[i] = choice["finish_reason"]
    reply.raw = "\n".join(lines)
    return reply


def metric_values(base_url: str, name: str) -> dict[tuple, float]:
    """``{(label pairs...): value}`` of one metric family sample name on /metrics."""
    text = requests.get(base_url + "/metrics", timeout=30).text
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} ([0-9.eE+-]+)$", line)
        if m:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(1))))
            out[labels] = float(m.group(2))
    return out


def metric_values_when(base_url: str, name: str, ready, timeout_s: float = 15.0) -> dict[tuple, float]:
    """``metric_values(base_url, name)`` once ``ready(values)`` holds, or the last values read after
    ``timeout_s`` (the caller's assertion then shows them). Counts of other processes than the API
    server reach /metrics through snapshot files written at most every
    ``integrations._runtime.PUBLISH_INTERVAL_S``."""
    deadline = time.monotonic() + timeout_s
    while True:
        values = metric_values(base_url, name)
        if ready(values) or time.monotonic() > deadline:
            return values
        time.sleep(0.2)


def metric_values_settled(base_url: str, name: str, quiet_s: float = 1.2, timeout_s: float = 15.0) -> dict[tuple, float]:
    """``metric_values(base_url, name)`` once two reads ``quiet_s`` apart agree (counts of earlier
    requests still on their way through snapshot files have arrived), or the last read after
    ``timeout_s``: the value to compare a later read with."""
    deadline = time.monotonic() + timeout_s
    values = metric_values(base_url, name)
    while True:
        time.sleep(quiet_s)
        again = metric_values(base_url, name)
        if again == values or time.monotonic() > deadline:
            return again
        values = again
