"""``--reasoning-parser`` with our backend: vLLM's structured-output manager leaves the reasoning
unconstrained and enforces the grammar from the token after the reasoning's end.

No parser of vLLM works with the demo model's tokenizer (see ``reasoning_parser_plugin.py``), so the
server loads vLLM's deepseek_r1 parser with ``think`` / ``END`` as delimiters through
``--reasoning-parser-plugin``. The random model emits ``END`` because the requests give it a
``logit_bias`` (about one chance in five per step); before it, the output is the random model's
noise, after it the constraint holds. One server of its own (~80 s to start on 2 cores), so the
module is opt-in: ``DOTVLLM_V1_REASONING=1``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator

import jsonschema
import pytest
import requests

from dotvllm_plugin.devtools.client import MODEL_NAME
from dotvllm_plugin.devtools.demo_model import ensure_model
from dotvllm_plugin.devtools.server import ServerProcess, start_server

from dotvllm_plugin.devtools.client import metric_values_when

from .conftest import STARTUP_TIMEOUT_S, V1_SERVER_ENV

pytestmark = pytest.mark.skipif(os.environ.get("DOTVLLM_V1_REASONING") != "1",
                                reason="starts a server of its own: DOTVLLM_V1_REASONING=1 runs it")

PLUGIN = Path(__file__).resolve().parent / "reasoning_parser_plugin.py"
REGEX = r"\d{3}-\d{4}"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["n"], "additionalProperties": False}
BIAS = 9.0  # on the END token: e^9 / (e^9 + 32000) ≈ 0.2 a step for the near-uniform random model


@pytest.fixture(scope="module")
def parser():
    from . import reasoning_parser_plugin

    return reasoning_parser_plugin


@pytest.fixture(scope="module")
def end_id(parser) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ensure_model()))
    ids = tok.convert_tokens_to_ids([parser.START, parser.END])
    assert tok.unk_token_id not in ids, ids
    return ids[1]


@pytest.fixture(scope="module")
def reasoning_server(tmp_path_factory, parser) -> Iterator[ServerProcess]:
    log_path = tmp_path_factory.mktemp("vllm-v1-reasoning-logs") / "serve.log"
    server = start_server(ensure_model(), extra_env=V1_SERVER_ENV, log_path=log_path,
                          extra_args=("--reasoning-parser-plugin", str(PLUGIN), "--reasoning-parser", parser.NAME),
                          startup_timeout_s=STARTUP_TIMEOUT_S)
    try:
        yield server
    finally:
        server.stop()


def _post(server, endpoint, body):
    resp = requests.post(server.base_url + endpoint, json={"model": MODEL_NAME, **body}, timeout=300,
                         stream=bool(body.get("stream")))
    assert resp.status_code == 200, resp.text[-2000:]
    if not body.get("stream"):
        return resp.json()["choices"]
    choices: dict[int, dict] = {}
    for line in resp.iter_lines(decode_unicode=True):
        if not line or not line.startswith("data: ") or line == "data: [DONE]":
            continue
        for c in json.loads(line[len("data: "):]).get("choices", []):
            out = choices.setdefault(c["index"], {"reasoning": "", "content": "", "text": "", "finish_reason": None})
            delta = c.get("delta") or {}
            out["reasoning"] += delta.get("reasoning") or delta.get("reasoning_content") or ""
            out["content"] += delta.get("content") or ""
            out["text"] += c.get("text") or ""
            out["finish_reason"] = c.get("finish_reason") or out["finish_reason"]
    return [choices[i] for i in sorted(choices)]


def _reasoning_and_content(choice) -> tuple[str, str | None]:
    if "message" in choice:
        m = choice["message"]
        return m.get("reasoning") or m.get("reasoning_content") or "", m.get("content")
    return choice["reasoning"], choice["content"] or None


def _unconstrained(texts) -> bool:
    """Whether some reasoning text is something the constraint would not have allowed: the grammar
    was not applied before END (the random model writes words; 0-9 and '-' are 11 of 32000 tokens)."""
    return any(t and not re.fullmatch(r"[0-9-]*", t.strip()) for t in texts)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_chat_reasoning_is_free_and_the_answer_constrained(reasoning_server, end_id, stream):
    reasonings = []
    for seed in (1, 2):
        choices = _post(reasoning_server, "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Call me"}], "n": 3, "max_tokens": 80, "temperature": 1.0,
            "seed": seed, "stream": stream, "logit_bias": {str(end_id): BIAS},
            "structured_outputs": {"regex": REGEX}})
        assert len(choices) == 3
        for choice in choices:
            reasoning, content = _reasoning_and_content(choice)
            assert choice["finish_reason"] == "stop", choice
            assert content is not None and re.fullmatch(REGEX, content), choice
            reasonings.append(reasoning)
    assert _unconstrained(reasonings), reasonings


def test_json_schema_after_reasoning(reasoning_server, end_id):
    choices = _post(reasoning_server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "A number"}], "n": 3, "max_tokens": 120, "temperature": 1.0,
        "seed": 3, "logit_bias": {str(end_id): BIAS},
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA}}})
    for choice in choices:
        _, content = _reasoning_and_content(choice)
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(content), SCHEMA)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_completions_grammar_starts_after_the_end_token(reasoning_server, parser, end_id, stream):
    # /v1/completions has no reasoning field: the text is reasoning, END, then the constrained answer.
    choices = _post(reasoning_server, "/v1/completions", {
        "prompt": "Call me", "n": 3, "max_tokens": 80, "temperature": 1.0, "seed": 4, "stream": stream,
        "logit_bias": {str(end_id): BIAS}, "structured_outputs": {"regex": REGEX}})
    befores = []
    for choice in choices:
        text = choice["text"]
        assert choice["finish_reason"] == "stop" and parser.END in text, choice
        before, _, after = text.rpartition(parser.END)  # the answer has no END; a reasoning piece might
        assert re.fullmatch(REGEX, after), choice
        befores.append(before)
    assert _unconstrained(befores), befores


def test_without_the_end_token_nothing_is_constrained(reasoning_server, end_id):
    # END is made impossible: the reasoning never ends, so the grammar is never applied.
    choices = _post(reasoning_server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Call me"}], "n": 2, "max_tokens": 24, "temperature": 1.0,
        "seed": 5, "logit_bias": {str(end_id): -100}, "structured_outputs": {"regex": REGEX}})
    for choice in choices:
        reasoning, content = _reasoning_and_content(choice)
        assert choice["finish_reason"] == "length" and not content, choice
    assert _unconstrained([_reasoning_and_content(c)[0] for c in choices])


def test_our_backend_compiled_them(reasoning_server):
    log = reasoning_server.log(1_000_000)
    assert re.search(r"dotvllm: request \S+: regex compiled by dotvllm", log)
    assert re.search(r"dotvllm: request \S+: json_schema compiled by dotvllm", log)
    assert "grammar terminated or rejected" not in log and "not allowed by" not in log
    regex = (("kind", "regex"),)
    counts = metric_values_when(reasoning_server.base_url, "dotvllm_requests_total", lambda c: c.get(regex, 0) >= 5)
    assert counts.get(regex, 0) >= 5, counts
