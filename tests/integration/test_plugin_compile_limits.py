"""Compile time budget on a real server: every compile overruns a 1 ms budget, so each guided
request kills and replaces a compile worker. The server must answer HTTP 400 each time (streaming
too), keep serving, and not accumulate processes."""

from __future__ import annotations

import os
import re
import time

import pytest
import requests

from dotvllm_plugin.devtools.client import body_for, metric_values, post
from .conftest import COMPILE_LIMITS_SERVER, PREEMPTION_SERVER, runs_module

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def server(server_pool):
    """DOTVLLM_COMPILE_TIMEOUT_S=0.001, one compile worker; started together with the server of
    test_plugin_preemption.py, which runs next (conftest)."""
    ahead = [PREEMPTION_SERVER] if runs_module("test_plugin_preemption.py") else []
    try:
        yield server_pool.get(COMPILE_LIMITS_SERVER, ahead=ahead)
    finally:
        server_pool.release(COMPILE_LIMITS_SERVER)


def _group_size(pgid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                count += 1
    return count


def _settled_group_size(pgid: int, want: int | None, timeout_s: float = 10.0) -> int:
    """The group's process count once a killed worker has finished exiting (SIGKILL takes effect
    asynchronously: for a moment the old worker and its replacement may both be counted), read
    until it equals ``want`` (or ``timeout_s`` passes); with ``want`` None, until three reads
    0.2 s apart agree."""
    deadline = time.monotonic() + timeout_s
    reads = [_group_size(pgid)]
    while time.monotonic() < deadline:
        if reads[-1] == want or (want is None and len(reads) >= 3 and len(set(reads[-3:])) == 1):
            break
        time.sleep(0.2)
        reads.append(_group_size(pgid))
    return reads[-1]


def test_runaway_compiles_are_stopped_and_answered_with_400(server):
    # (a pattern whose compile takes tens of milliseconds: a one-class regex now compiles in under
    # the 1 ms budget at times, and the test needs every compile to overrun it)
    sizes = []
    for i in range(4):
        endpoint, stream = (CHAT, True) if i % 2 else (COMPLETIONS, False)
        reply = post(server.base_url, endpoint,
                     body_for(endpoint, "x", max_tokens=8, stream=stream,
                              guided_regex=f"limit{i}-(?:[a-z]+ ){{0,40}}[a-z]{{1,60}}"))
        assert reply.status == 400, reply.raw[:500]
        assert re.search(r"guided_regex: compiling the regex constraint took longer than 0\.001 s and was stopped",
                         reply.error), reply.error
        plain = post(server.base_url, COMPLETIONS, body_for(COMPLETIONS, "x", max_tokens=4))
        assert plain.status == 200 and plain.texts[0] is not None
        sizes.append(_settled_group_size(server.pid, sizes[0] if sizes else None))
    # Each timeout replaced the worker: the process count comes back to where it was.
    assert max(sizes) == min(sizes), sizes
    assert requests.get(server.base_url + "/health", timeout=30).status_code == 200
    errors = metric_values(server.base_url, "dotvllm_compile_total")
    assert errors[(("kind", "regex"), ("outcome", "error"))] >= 4
    assert "killed and replaced" in server.log(200_000)
