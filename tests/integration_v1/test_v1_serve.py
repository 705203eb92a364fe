"""The plugin on a real ``vllm serve`` with vLLM's V1 engine: every request kind × completions/chat ×
stream/not, outputs validated; bad specs → HTTP 400 and the server keeps serving; a constraint that
fails to compile in the engine core is an error for its request only; proof that our backend
answered (log and /metrics).

One server for the module. The model has random weights: whatever it "wants", every output must
satisfy its constraint.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import requests

from dotvllm_plugin.devtools.client import (body_for, metric_values, metric_values_settled,
                                         metric_values_when, post)
from dotvllm_plugin.devtools.server import installed_vllm_version

from guided_cases import (
    CHAT,
    CHOICES,
    COMPLETIONS,
    GRAMMAR,
    REGEX,
    RUNAWAY_REGEX,
    SCHEMA,
    STRUCTURAL_TAG,
    STRUCTURAL_TAG_UNSUPPORTED,
    TREE_SCHEMA,
    WHITESPACE,
    check_grammar,
    check_schema,
    check_structural_tag,
    check_tree_reply,
    trigger_bias,
)



KINDS = [
    pytest.param({"structured_outputs": {"regex": REGEX}}, lambda t: re.fullmatch(REGEX, t) is not None, id="regex"),
    pytest.param({"structured_outputs": {"choice": CHOICES}}, lambda t: t in CHOICES, id="choice"),
    pytest.param({"structured_outputs": {"json": SCHEMA}}, check_schema, id="json"),
    pytest.param({"structured_outputs": {"json": json.dumps(SCHEMA)}}, check_schema, id="json_string"),
    pytest.param({"response_format": {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}}},
                 check_schema, id="response_format_json_schema"),
    pytest.param({"structured_outputs": {"json": SCHEMA, "whitespace_pattern": WHITESPACE}},
                 lambda t: check_schema(t, WHITESPACE), id="whitespace_pattern"),
    pytest.param({"structured_outputs": {"grammar": GRAMMAR}}, check_grammar, id="lark_grammar"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("endpoint", [COMPLETIONS, CHAT], ids=["completions", "chat"])
@pytest.mark.parametrize(("params", "check"), KINDS)
def test_outputs_satisfy_their_constraint(v1_server, endpoint, stream, params, check):
    body = body_for(endpoint, "Answer:", n=2, max_tokens=160, temperature=1.0, stream=stream, **params)
    reply = post(v1_server.base_url, endpoint, body)
    assert reply.status == 200, reply.error
    assert not reply.error, reply.error
    assert sorted(reply.texts) == [0, 1]
    for i, text in reply.texts.items():
        assert reply.finish[i] == "stop", (i, text, reply.finish[i])
        assert check(text), (i, text)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("endpoint", [COMPLETIONS, CHAT], ids=["completions", "chat"])
def test_json_object(v1_server, endpoint, stream):
    body = body_for(endpoint, "JSON:", n=2, max_tokens=200, temperature=1.0, stream=stream,
                    response_format={"type": "json_object"})
    reply = post(v1_server.base_url, endpoint, body)
    assert reply.status == 200, reply.error
    for i, text in reply.texts.items():
        if reply.finish[i] == "stop":
            assert isinstance(json.loads(text), dict), (i, text)
        else:  # a random model may run out of tokens inside the object
            assert reply.finish[i] == "length" and text.startswith("{"), (i, text)


@pytest.mark.parametrize("endpoint", [COMPLETIONS, CHAT], ids=["completions", "chat"])
def test_recursive_open_schema(v1_server, endpoint):
    """A schema only rules can say (unbounded recursion, undeclared properties allowed)."""
    body = body_for(endpoint, "JSON:", n=4, max_tokens=200, temperature=1.0,
                    structured_outputs={"json": TREE_SCHEMA})
    check_tree_reply(post(v1_server.base_url, endpoint, body))


BAD = [
    pytest.param({"regex": "(abc"}, r"structured_outputs\.regex: invalid regex.*position", id="broken-regex"),
    pytest.param({"regex": "a(?=b)c"}, "lookahead", id="lookahead"),
    pytest.param({"json": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}},
                 "'uniqueItems' at /uniqueItems", id="schema-uniqueItems"),
    pytest.param({"json": '{"type": "object",'}, r"structured_outputs\.json: the schema is not valid JSON",
                 id="bad-json"),
    pytest.param({"grammar": 'start: "a" | b'}, r"structured_outputs\.grammar: invalid Lark grammar", id="lark-broken"),
    pytest.param({"grammar": 'start: /".*?"/'}, "lazy quantifier", id="lark-lazy-terminal"),
    # lark's loader would write out 2^30 alternatives (hours, in the API server's request path)
    pytest.param({"grammar": 'start: "{" ' + " ".join(f'("," "k{i}")?' for i in range(30)) + ' "}"'},
                 "more than 4096 alternatives", id="lark-optional-blowup"),
    pytest.param({"choice": []}, "at least one choice", id="empty-choice"),
    pytest.param({"json": SCHEMA, "whitespace_pattern": "\\s*"}, "whitespace_pattern", id="unbounded-whitespace"),
]


def _still_serving(server):
    assert requests.get(server.base_url + "/health", timeout=30).status_code == 200
    ok = post(server.base_url, COMPLETIONS,
              body_for(COMPLETIONS, "x", max_tokens=8, structured_outputs={"choice": ["yes", "no"]}))
    assert ok.status == 200 and ok.texts[0] in ("yes", "no"), ok


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("spec", "message"), BAD)
def test_bad_spec_is_a_400_and_the_server_keeps_serving(v1_server, spec, message, stream):
    endpoint = CHAT if stream else COMPLETIONS
    reply = post(v1_server.base_url, endpoint,
                 body_for(endpoint, "x", max_tokens=8, stream=stream, structured_outputs=spec))
    assert reply.status == 400, (reply.status, reply.raw[:500])
    assert re.search(message, reply.error), reply.error
    _still_serving(v1_server)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("endpoint", [COMPLETIONS, CHAT], ids=["completions", "chat"])
def test_a_compile_over_budget_is_an_error_for_its_request_only(v1_server, endpoint, stream):
    # RUNAWAY_REGEX passes the API server's cheap check; its automaton exceeds the compiler's
    # size budget only when the engine core compiles it.
    body = body_for(endpoint, "x", max_tokens=16, stream=stream, structured_outputs={"regex": RUNAWAY_REGEX})
    reply = post(v1_server.base_url, endpoint, body)
    # The stream's 200 went out before the engine compiled: the error is an event inside it.
    assert reply.status == (200 if stream else 400), (reply.status, reply.raw[:500])
    assert re.search(r"structured_outputs\.regex: .*exceeds \d+ states", reply.error), (reply.error, reply.raw[:500])
    assert not "".join(reply.texts.values()), reply.texts
    log = v1_server.log(500_000)
    assert re.search(r"WARNING.*dotvllm: request \S+: could not compile", log)
    _still_serving(v1_server)


def _before(version: str) -> bool:
    from packaging.version import Version

    installed = installed_vllm_version()
    return installed is not None and Version(installed) < Version(version)


@pytest.mark.skipif(not _before("0.12"), reason="vLLM ignores the deprecated guided_* fields from 0.12 on")
@pytest.mark.parametrize("endpoint", [COMPLETIONS, CHAT], ids=["completions", "chat"])
def test_deprecated_guided_fields_on_0_11(v1_server, endpoint):
    pattern = "guided-[0-9]{2}"
    reply = post(v1_server.base_url, endpoint, body_for(endpoint, "x", max_tokens=16, guided_regex=pattern))
    assert reply.status == 200 and re.fullmatch(pattern, reply.texts[0]), reply
    bad = post(v1_server.base_url, endpoint, body_for(endpoint, "x", max_tokens=8, guided_regex="(abc"))
    assert bad.status == 400 and "structured_outputs.regex: invalid regex" in bad.error, bad


def _structural_tag_endpoint() -> str:
    # vLLM 0.11's CompletionRequest drops response_format structural_tag (its guided_* forwarding
    # to structured_outputs leaves it out), so there only the chat endpoint constrains with it.
    return CHAT if _before("0.12") else COMPLETIONS


def test_structural_tag_is_delegated_to_xgrammar(v1_server):
    fmt = {"type": "structural_tag", "format": {"type": "const_string", "value": "<ok/>"}}
    endpoint = _structural_tag_endpoint()
    reply = post(v1_server.base_url, endpoint, body_for(endpoint, "x", max_tokens=16, response_format=fmt))
    assert reply.status == 200, reply.error
    assert reply.texts[0] == "<ok/>", reply.texts
    assert "structural_tag delegated to vLLM's xgrammar backend" in v1_server.log(200_000)


def test_structural_tag_structures_form_is_ours(v1_server):
    from transformers import AutoTokenizer

    from dotvllm_plugin.devtools.demo_model import ensure_model

    bias = trigger_bias(AutoTokenizer.from_pretrained(str(ensure_model())))
    endpoint = _structural_tag_endpoint()
    whole = 0
    for seed, stream in ((1, False), (2, True)):
        reply = post(v1_server.base_url, endpoint, body_for(endpoint, "x", max_tokens=64, n=2, seed=seed, stream=stream,
                                                             logit_bias=bias, response_format=STRUCTURAL_TAG))
        assert reply.status == 200, reply.error
        for i, text in reply.texts.items():
            finish = reply.finish.get(i)
            ok, n = check_structural_tag(text, finish)
            assert ok, (text, finish)
            whole += n
    assert whole > 0
    assert "structural_tag compiled by dotvllm" in v1_server.log(500_000)
    # (valid for xgrammar, which vLLM validates with first: the refusal is ours)
    for stream in (False, True):
        reply = post(v1_server.base_url, endpoint, body_for(endpoint, "x", max_tokens=8, stream=stream,
                                                             response_format=STRUCTURAL_TAG_UNSUPPORTED))
        assert reply.status == 400 and "share a first character" in reply.error, reply


def test_our_backend_answered(v1_server):
    pattern = "proof-[0-9]{3}"
    reply = post(v1_server.base_url, COMPLETIONS,
                 body_for(COMPLETIONS, "x", max_tokens=16, structured_outputs={"regex": pattern}))
    assert reply.status == 200 and re.fullmatch(pattern, reply.texts[0]), reply
    log = v1_server.log(500_000)
    assert "V1 structured-output backend ready" in log
    for kind in ("regex", "choice", "json_schema", "json_object", "grammar"):
        assert re.search(rf"dotvllm: request \S+: {kind} compiled by dotvllm", log), kind
    regex = (("kind", "regex"),)
    counts = metric_values_when(v1_server.base_url, "dotvllm_requests_total", lambda c: c.get(regex, 0) >= 1)
    assert counts.get(regex, 0) >= 1, counts


def test_compile_metrics_of_the_engine_core_are_on_metrics(v1_server):
    # The engine core compiles; /metrics is the API server's.
    pattern = "metrics-[0-9]{4}"
    before = metric_values_settled(v1_server.base_url, "dotvllm_compile_total")
    misses = before.get((("kind", "regex"), ("outcome", "miss")), 0)
    for _ in range(2):  # a miss, then a hit
        reply = post(v1_server.base_url, COMPLETIONS,
                     body_for(COMPLETIONS, "x", max_tokens=16, structured_outputs={"regex": pattern}))
        assert reply.status == 200 and re.fullmatch(pattern, reply.texts[0]), reply
    miss, hit = (("kind", "regex"), ("outcome", "miss")), (("kind", "regex"), ("outcome", "hit"))
    after = metric_values_when(v1_server.base_url, "dotvllm_compile_total",
                               lambda c: c.get(miss, 0) >= misses + 1 and c.get(hit, 0) >= 1)
    assert after.get(miss, 0) == misses + 1, after
    assert after.get(hit, 0) >= 1, after
    buckets = metric_values(v1_server.base_url, "dotvllm_compile_seconds_bucket")
    assert buckets.get((("kind", "regex"), ("le", "+Inf")), 0) >= misses + 1, buckets


def test_request_options_reach_the_engine_core_compile(v1_server):
    # whitespace_pattern, disable_any_whitespace and disable_additional_properties are part of the
    # compile (its options and cache key): each variant of one schema is its own cache miss.
    schema = {"type": "object", "properties": {"options": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["options"], "additionalProperties": False}
    key = (("kind", "json_schema"), ("outcome", "miss"))
    before = metric_values_settled(v1_server.base_url, "dotvllm_compile_total").get(key, 0)
    variants = [{}, {}, {"disable_any_whitespace": True}, {"disable_additional_properties": True},
                {"whitespace_pattern": "[ ]?"}]
    for extra in variants:
        reply = post(v1_server.base_url, COMPLETIONS, body_for(COMPLETIONS, "x", max_tokens=60,
                                                               structured_outputs={"json": schema, **extra}))
        assert reply.status == 200 and reply.finish[0] == "stop", reply
        jsonschema.validate(json.loads(reply.texts[0]), schema)
    after = metric_values_when(v1_server.base_url, "dotvllm_compile_total",
                               lambda c: c.get(key, 0) >= before + 4).get(key, 0)
    assert after == before + 4, (before, after)
