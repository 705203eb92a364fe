"""The test client's reading of a streamed (SSE) reply: events end at a newline only, so a JSON
string holding U+2028, U+0085 or another character ``str.splitlines`` breaks at (JSON leaves them
unescaped) is read whole. A random-weight model sampling at temperature 1 writes such characters;
one split event once failed an integration test with a truncated JSON line."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dotvllm_plugin.devtools.client import post

TEXTS = ["a\u2028b", "\u0085", "c\x1c\x1dd", "\u2029e\x0b\x0cf", "plain"]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        events = [{"object": "text_completion", "choices": [{"index": 0, "text": t, "finish_reason": None}]}
                  for t in TEXTS]
        events[-1]["choices"][0]["finish_reason"] = "length"
        body = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\r\n\r\n" for e in events) + "data: [DONE]\r\n\r\n"
        data = body.encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def sse_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_streamed_events_split_only_at_newlines(sse_server):
    assert "\u2028".join(["x", "y"]).splitlines() == ["x", "y"]  # (what a str.splitlines reader would do)
    reply = post(sse_server, "/v1/completions", {"prompt": "p", "stream": True})
    assert not reply.error
    assert reply.texts == {0: "".join(TEXTS)}
    assert reply.finish == {0: "length"}
