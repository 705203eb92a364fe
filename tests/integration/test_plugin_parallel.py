"""Tensor parallel on the CPU build: ``vllm serve --tensor-parallel-size 2`` with the plugin, with
vLLM's multiprocessing executor and (where ``ray`` is installed) Ray's.

V0 runs the first rank (the driver) in the engine process and the second in a worker process it
starts; logits processors run on the driver only, and the other ranks receive tensors, not
sampling parameters. So our processor travels once per request (API server → engine process),
is unpickled there once per request, its compiled grammar rebuilt once per process and cached, and
nothing of ours is pickled per decoding step: the ``dotvllm_constraint_loads`` counters, summed
over the server's processes, show it.

Opt-in: ``DOTVLLM_TEST_TP=1`` (its server adds ~2.5 min; ``.ci/run`` sets it). What the
default run still covers of this path: every guided kind and a bad spec through real servers with
vLLM's multiprocessing frontend (``test_plugin_guided.py``), and the processor pickled, unpickled
once per process and its grammar rebuilt once (``test_plugin_logits_processor.py``); only the
second rank (a worker process that gets tensors, not sampling parameters) is not.
"""

from __future__ import annotations

import importlib.util
import os
import re

import pytest
import requests

from dotvllm_plugin.devtools.client import body_for, metric_values_settled, metric_values_when, post
from guided_cases import (
    CHAT,
    COMPLETIONS,
    GRAMMAR,
    REGEX,
    SCHEMA,
    check_choice,
    check_grammar,
    check_regex,
    check_schema,
)

from .conftest import start_server

TOKENS = 48

pytestmark = pytest.mark.skipif(os.environ.get("DOTVLLM_TEST_TP") != "1",
                                reason="tensor parallel is opt-in: DOTVLLM_TEST_TP=1")


@pytest.fixture(scope="module", params=["mp", "ray"])
def tp_server(request, demo_model_dir):
    """Two ranks with vLLM's multiprocessing executor (the default) or Ray's. Ray is not a
    dependency of the CPU build: that case runs where ``ray`` is importable (e.g.
    ``pip install ray==2.47.1``, or ``PYTHONPATH`` pointing at a ``pip install --target`` of it)."""
    args = ["--tensor-parallel-size", "2"]
    if request.param == "ray":
        if importlib.util.find_spec("ray") is None:
            pytest.skip("ray is not installed (vLLM's Ray executor)")
        args += ["--distributed-executor-backend", "ray"]
    # One core per rank (the CPU build's automatic binding needs one NUMA node per rank).
    srv = start_server(frontend="mp", model_dir=demo_model_dir, extra_args=args,
                       extra_env={"VLLM_CPU_OMP_THREADS_BIND": "0|1", "RAY_USAGE_STATS_ENABLED": "0"},
                       startup_timeout_s=600)
    try:
        yield srv
    finally:
        srv.stop()


def _named(values) -> dict[str, float]:
    return {dict(k)["what"]: v for k, v in values.items()}


def _loads(server, ready=None) -> dict[str, float]:
    """Loads counted by the engine's processes. They reach /metrics in snapshots, up to
    ``_runtime.PUBLISH_INTERVAL_S`` late: without ``ready``, the values once they have settled;
    with it, once ``ready(values)`` holds."""
    name = "dotvllm_constraint_loads_total"
    if ready is None:
        return _named(metric_values_settled(server.base_url, name))
    return _named(metric_values_when(server.base_url, name, lambda v: ready(_named(v))))


def test_two_ranks_serve_every_kind(tp_server):
    assert "tensor_parallel_size=2" in tp_server.log(max_chars=10**7)
    cases = [
        (COMPLETIONS, {"guided_regex": REGEX}, check_regex(REGEX)),
        (CHAT, {"guided_json": SCHEMA}, check_schema),
        (COMPLETIONS, {"guided_choice": ["red", "green", "blue"]}, check_choice),
        (CHAT, {"guided_grammar": GRAMMAR}, check_grammar),
    ]
    for endpoint, params, check in cases:
        for stream in (False, True):
            reply = post(tp_server.base_url, endpoint,
                         body_for(endpoint, "x", max_tokens=96, temperature=1.0, stream=stream, **params))
            assert reply.status == 200, (params, reply.error)
            assert reply.finish[0] == "stop" and check(reply.texts[0]), (params, reply.texts)
    bad = post(tp_server.base_url, COMPLETIONS, body_for(COMPLETIONS, "x", max_tokens=8, guided_regex="(("))
    assert bad.status == 400 and "guided_regex" in bad.error, bad.error
    assert requests.get(tp_server.base_url + "/health", timeout=30).status_code == 200


def test_constraints_are_loaded_once_per_request_not_per_step(tp_server):
    pattern = "tp-[a-z]{30}"  # a new constraint: one grammar rebuilt in the engine process
    before = _loads(tp_server)
    requests_sent = 4
    for _ in range(requests_sent):
        reply = post(tp_server.base_url, COMPLETIONS,
                     body_for(COMPLETIONS, "x", max_tokens=TOKENS, temperature=1.0, guided_regex=pattern))
        assert reply.status == 200 and re.fullmatch(pattern, reply.texts[0]), reply.texts
    after = _loads(tp_server, lambda a: a.get("processor", 0) - before.get("processor", 0) >= requests_sent
                   and a.get("grammar", 0) - before.get("grammar", 0) >= 1)
    # One processor unpickled per request (each request generated 34 tokens: per step would be
    # 4 × 34), one grammar rebuilt in the whole server.
    assert after.get("processor", 0) - before.get("processor", 0) == requests_sent, (before, after)
    assert after.get("grammar", 0) - before.get("grammar", 0) == 1, (before, after)
