"""Free-form JSON (``response_format: json_object``, ``guided_json: {}``) on the grammar engine:
any depth, every string escape; ``json.loads`` is the oracle."""

from __future__ import annotations

import json
import random

import pytest

from dotvllm_plugin import GrammarMatcher
from dotvllm_plugin.pushdown import PushdownGrammar


def _walks(grammar, vocab, rng, n=20, steps=150):
    eos = set(vocab.eos_token_ids)
    for _ in range(n):
        m = GrammarMatcher(grammar)
        out = b""
        for step in range(steps):
            allowed = m.allowed_token_ids().tolist()
            assert allowed, ("stuck", out)
            ends = [t for t in allowed if t in eos]
            t = ends[0] if ends and step > 30 else rng.choice(allowed)
            assert m.accept_token(t)
            if t in eos:
                yield out
                break
            out += vocab.token_bytes[t]


@pytest.mark.parametrize("whitespace", [None, "[ ]?", "[ ]?|\\n[ ]{0,16}"], ids=["compact", "space", "flexible"])
def test_json_object_any_depth(real, whitespace):
    g = real.compiler.compile_json_object(whitespace_pattern=whitespace)
    assert isinstance(g, PushdownGrammar)
    deep = '{"a":' + "[" * 300 + '{"b":"\\u00e9\\ud83d\\ude00\\n"}' + "]" * 300 + "}"
    m = GrammarMatcher(g)
    assert m.accept_string(deep) and m.is_completed()
    for bad in ["[1]", '{"a":1,}', '{"a" 1}', '"x"', '{"a":"\\ud800"}', '{"a":"\\x"}']:
        m = GrammarMatcher(g)
        assert not (m.accept_string(bad) and m.is_completed()), bad
    finished = 0
    for text in _walks(g, real.vocab, random.Random(f"{real.name}-{whitespace}")):
        assert isinstance(json.loads(text.decode("utf-8")), dict), text
        finished += 1
    assert finished >= 5


def test_whitespace_slots_stay_bounded(byte_vocab):
    from dotvllm_plugin import GrammarCompiler

    g = GrammarCompiler(byte_vocab).compile_json_object(whitespace_pattern="[ ]?")
    for text, ok in [('{ "a" : [ 1 , 2 ] }', True), ('{  "a":1}', False), ('{"a":1 ,  "b":2}', False)]:
        m = GrammarMatcher(g)
        assert (m.accept_string(text) and m.is_completed()) == ok, text


def test_empty_schema_is_any_value_at_any_depth(real):
    for schema in ({}, True, "{}"):
        g = real.compiler.compile_json_schema(schema)
        m = GrammarMatcher(g)
        assert m.accept_string("[" * 200 + "1" + "]" * 200) and m.is_completed()
    finished = 0
    for text in _walks(g, real.vocab, random.Random(real.name), n=10):
        json.loads(text.decode("utf-8"))
        finished += 1
    assert finished >= 3
