"""Preemption with recomputation: a server with a tiny KV cache (24 blocks) must preempt guided
sequences mid-generation; when they come back, each processor finds the state of its generated
prefix again, and every output (n>1 included) still satisfies its constraint."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from dotvllm_plugin.devtools.client import body_for, post
from .conftest import PREEMPTION_SERVER

REGEX = r"[a-z]{40,60}( [a-z]{1,8}){20,30}\."


@pytest.fixture(scope="module")
def server(server_pool):
    """24 KV blocks, 256 tokens, 16 sequences (PREEMPTION_SERVER; usually already started by
    test_plugin_compile_limits.py, which runs just before)."""
    try:
        yield server_pool.get(PREEMPTION_SERVER)
    finally:
        server_pool.release(PREEMPTION_SERVER)


def test_guided_outputs_survive_preemption(server):
    def run(i):
        body = body_for("/v1/completions", f"p{i}", max_tokens=200, temperature=1.0, n=3 if i % 4 == 0 else 1,
                        guided_regex=REGEX)
        return post(server.base_url, "/v1/completions", body)

    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(run, range(16)))
    outputs = 0
    for reply in replies:
        assert reply.status == 200, reply.error
        for i, text in reply.texts.items():
            assert reply.finish[i] == "stop" and re.fullmatch(REGEX, text), (reply.finish[i], text)
            outputs += 1
    assert outputs == 24
    assert "preempted by PreemptionMode.RECOMPUTE" in server.log(2_000_000)
