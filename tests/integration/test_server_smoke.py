"""The harness itself: real ``vllm serve`` of the demo model comes up, answers, and goes away.

Uses the shared standard servers (``server_mp``, ``server_inprocess``). The conftest runs this
module before the other integration modules (no guided request has reached those servers yet when
``test_compile_workers_start_with_the_server`` looks) and its stop test after all of them: that
test stops the shared ``mp`` server, which by then has served every module that uses it.
"""

from __future__ import annotations

import os
import time

import pytest
import requests

from dotvllm_plugin.devtools.server import MODEL_NAME, ServerStartError

from .conftest import start_server

FRONTENDS = ["server_mp", "server_inprocess"]


@pytest.fixture(params=FRONTENDS, ids=["mp", "inprocess"])
def server(request):
    return request.getfixturevalue(request.param)


def test_health_and_models(server):
    assert requests.get(server.base_url + "/health", timeout=10).status_code == 200
    models = requests.get(server.base_url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [MODEL_NAME]


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("/v1/completions", {"prompt": "Hello, my name is"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello!"}]}),
    ],
    ids=["completions", "chat"],
)
def test_unconstrained_generation(server, endpoint, body):
    max_tokens = 12
    resp = requests.post(
        server.base_url + endpoint,
        json={"model": MODEL_NAME, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True, **body},
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    payload = resp.json()
    (choice,) = payload["choices"]
    text = choice["text"] if "text" in choice else choice["message"]["content"]
    assert isinstance(text, str) and text
    assert choice["finish_reason"] == "length"
    assert payload["usage"]["completion_tokens"] == max_tokens


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_kills_the_whole_process_group(server_mp):
    server = server_mp
    assert server.healthy()
    assert _group_alive(server.pid)
    server.stop()
    deadline = time.monotonic() + 10
    while _group_alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_alive(server.pid), "processes of the server's group survived stop()"
    assert not server.healthy(timeout_s=2)


def test_failed_startup_surfaces_the_server_log(demo_model_dir):
    with pytest.raises(ServerStartError, match=r"exited with code [1-9](?s:.*)invalid choice"):
        start_server(model_dir=demo_model_dir, extra_args=("--dtype", "no-such-dtype"), startup_timeout_s=120)


def test_compile_workers_start_with_the_server(server):
    """No guided request has reached the server yet (this module runs first): the vocabulary and
    the compile worker come from the start-up warm-up, and the worker runs at the lowest priority
    (DOTVLLM_COMPILE_NICE=19)."""
    workers = [p for p in server.processes() if p.role == "compile-worker"]
    assert len(workers) == 1, [(p.pid, p.role) for p in server.processes()]
    assert os.getpriority(os.PRIO_PROCESS, workers[0].pid) == 19
    assert "dotvllm: warm-up: vocabulary of 32000 tokens and 1 compile worker(s) ready" in server.log(max_chars=10**7)
