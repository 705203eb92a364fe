"""Structural tags on the grammar engine, against an independent reference: Python's ``str`` search
for triggers, ``json`` for the values and ``jsonschema`` for their validity."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import numpy as np
import pytest

from dotvllm_plugin import GrammarCompiler, GrammarMatcher
from dotvllm_plugin.compiler import KINDS, check_structural_tag
from dotvllm_plugin.errors import GrammarError, UnsupportedFeatureError
from dotvllm_plugin.grammar.structural_tag import avoid_regex, is_format_form, is_structures_form

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
        "additionalProperties": False}
SPEC = {"type": "structural_tag",
        "structures": [{"begin": "<function=get_weather>", "schema": WEATHER, "end": "</function>"},
                       {"begin": "<function=get_time>", "schema": TIME, "end": "</function>"}],
        "triggers": ["<function="]}


def reference_accepts(text: str, spec: dict) -> bool:
    """The structural tag's language by its definition: at each trigger occurrence (leftmost
    first) one structure's begin, a compact JSON value valid under its schema, its end."""
    triggers, structures = spec["triggers"], spec["structures"]
    decoder = json.JSONDecoder()
    pos = 0
    while True:
        hits = [i for i in (text.find(t, pos) for t in triggers) if i >= 0]
        if not hits:
            return True
        at = min(hits)
        for s in structures:
            if not text.startswith(s["begin"], at):
                continue
            start = at + len(s["begin"])
            try:
                value, stop = decoder.raw_decode(text, start)
            except ValueError:
                continue
            if text[start:stop] != json.dumps(value, separators=(",", ":"), ensure_ascii=False):
                continue  # the engine writes compact JSON
            if not jsonschema.Draft202012Validator(s["schema"]).is_valid(value):
                continue
            if text.startswith(s["end"], stop):
                pos = stop + len(s["end"])
                break
        else:
            return False


@pytest.fixture(scope="module")
def compiler(tekken_vocab):
    return GrammarCompiler(tekken_vocab, cache_size=0)


@pytest.fixture(scope="module")
def compiled(compiler):
    return compiler.compile_structural_tag(SPEC)


def accepts(cg, text: str) -> bool:
    m = GrammarMatcher(cg)
    return m.accept_string(text) and m.is_completed()


@pytest.mark.parametrize("triggers", [["<function="], ["<tool_call>"], ["[TOOL_CALLS]", "<|python_tag|>"], ["ab"],
                                      ["a"], ["<f", "{x"], ["é€x"]])
def test_avoid_regex_is_text_without_triggers(triggers):
    rx = re.compile(avoid_regex(triggers), re.S)
    rng = random.Random(0)
    alphabet = sorted(set("".join(triggers)) | set("xyé\n"))
    seen = {True: 0, False: 0}
    for _ in range(5000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        if rng.random() < 0.4:
            t = rng.choice(triggers)
            i = rng.randint(0, len(s))
            s = s[:i] + t[: rng.randint(0, len(t))] + s[i:]
        want = not any(t in s for t in triggers)
        assert (rx.fullmatch(s) is not None) == want, (triggers, s)
        seen[want] += 1
    assert min(seen.values()) > 100  # both sides exercised


VALID = [
    "",
    "No tool needed.",
    'Let me check. <function=get_weather>{"city":"Paris"}</function>',
    '<function=get_weather>{"city":"Paris","days":3}</function> and <function=get_time>{"zone":"UTC"}</function>',
    '<function=get_time>{"zone":"CET"}</function><function=get_time>{"zone":"UTC"}</function> done',
    "a < b, <func and <function but not the whole trigger",
    "ends inside a trigger <function",
    'JSON outside a tag is text: {"city":1}',
]
INVALID = [
    "<function=",  # a trigger must start a structure
    '<function=get_weather>{"city":"Paris"}',  # unclosed
    '<function=get_weather>{"city":1}</function>',  # schema
    '<function=get_weather>{"city":"Paris","days":9}</function>',  # maximum
    '<function=get_news>{"topic":"x"}</function>',  # unknown structure
    '<function=get_time>{"zone":"PST"}</function>',  # enum
    '<function=get_weather>{"city":"Paris"}</function> then <function=oops',
    '<function=get_weather> {"city":"Paris"}</function>',  # compact JSON right after begin
]


@pytest.mark.parametrize("text", VALID)
def test_valid_texts(compiled, text):
    assert reference_accepts(text, SPEC)
    assert accepts(compiled, text)


@pytest.mark.parametrize("text", INVALID)
def test_invalid_texts(compiled, text):
    assert not reference_accepts(text, SPEC)
    assert not accepts(compiled, text)


def test_fuzzed_texts_agree_with_the_reference(compiled):
    """Texts assembled from free text, trigger pieces, begins, valid and invalid values and ends:
    what the engine accepts the reference accepts; well-formed texts (declared key order,
    compact values) the engine accepts."""
    rng = random.Random(1)
    pieces = ["hi ", "<", "<f", "<function", "<function=", "<function=get_", "x", "\n", "é",
              "<function=get_weather>", "<function=get_time>", "</function>",
              '{"city":"Rome"}', '{"city":"Rome","days":2}', '{"days":2}', '{"zone":"UTC"}', '{"zone":1}', "{}"]
    agree = accepted = 0
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        ours, ref = accepts(compiled, text), reference_accepts(text, SPEC)
        assert not ours or ref, text  # never more than the reference
        if ref and not re.search(r'"days":\d+,"city"', text):
            assert ours, text  # every reference-valid text in declared order
        agree += ours == ref
        accepted += ours
    assert accepted > 100 and agree == 3000


def test_random_walks_end_only_in_free_text(compiled, tekken_vocab):
    """Follow random allowed tokens (most walks from inside a trigger, biased to short tokens);
    every text the matcher lets finish is valid."""
    rng = np.random.default_rng(0)
    eos = np.array(tekken_vocab.eos_token_ids)
    lengths = np.array([len(b or b"") for b in tekken_vocab.token_bytes])
    finished = with_tag = 0
    for i in range(16):
        m = GrammarMatcher(compiled)
        out = ["", "Sure. <function=", "<function=get_"][i % 3].encode()
        assert m.accept_string(out)
        for _ in range(120):
            allowed = m.allowed_token_ids()
            allowed = allowed[~np.isin(allowed, eos)]
            if m.is_completed() and (allowed.size == 0 or rng.random() < 0.2):
                break
            if allowed.size == 0:
                break
            short = allowed[lengths[allowed] <= 2]
            t = int(rng.choice(short if short.size and rng.random() < 0.9 else allowed))
            assert m.accept_token(t)
            out += tekken_vocab.token_bytes[t]
        if m.is_completed():
            finished += 1
            text = out.decode("utf-8")
            assert reference_accepts(text, SPEC), text
            with_tag += "</function>" in text
    assert finished > 0 and with_tag > 0


def test_the_kind_and_its_check(compiler):
    assert is_structures_form(SPEC) and is_structures_form(json.dumps(SPEC))
    assert not is_structures_form({"type": "structural_tag", "format": {"type": "const_string", "value": "x"}})
    assert is_format_form({"type": "structural_tag", "format": {"type": "const_string", "value": "x"}})
    assert not is_format_form(SPEC) and not is_format_form(json.dumps(SPEC)) and not is_format_form(None)
    KINDS["structural_tag"].check(SPEC, {})
    cg = KINDS["structural_tag"].compile(compiler, json.dumps(SPEC), {})
    assert accepts(cg, '<function=get_time>{"zone":"UTC"}</function>')


@pytest.mark.parametrize("spec, error, match", [
    ({"structures": [], "triggers": ["<f"]}, GrammarError, "'structures' must be a non-empty list"),
    ({"structures": [{"begin": "<g>", "schema": {}, "end": ""}], "triggers": ["<f"]}, GrammarError,
     "starts with none of the triggers"),
    ({"structures": [{"begin": "<f>", "schema": {}, "end": ""}], "triggers": ["<f", "<g"]}, UnsupportedFeatureError,
     "share a first character"),
    ({"structures": [{"begin": "<f<>", "schema": {}, "end": ""}], "triggers": ["<f<"]}, UnsupportedFeatureError,
     "contains '<' after its start"),
    ({"structures": [{"begin": "<f>", "schema": {"type": "string", "pattern": "(?<=a)b"}, "end": ""}],
      "triggers": ["<f"]}, GrammarError, "/structures/0/schema"),
    ("{not json", GrammarError, "not valid JSON"),
])
def test_bad_specs_are_refused_with_where(spec, error, match):
    with pytest.raises(error, match=re.escape(match) if "(" not in match else match):
        check_structural_tag(spec)


def test_fuzzed_specs_agree_with_the_reference(compiler):
    """Random trigger sets, begins and ends (one-digit values): a spec is refused with
    UnsupportedFeatureError exactly when its triggers are outside what the free-text regex
    handles, and otherwise the engine and the reference agree on every random text."""
    from dotvllm_plugin.grammar.structural_tag import parse_structural_tag

    rng = random.Random(2)
    digit = {"type": "integer", "minimum": 0, "maximum": 9}
    compiled = refused = with_structure = 0
    for _ in range(40):
        triggers = list(dict.fromkeys("".join(rng.choice("<ab=") for _ in range(rng.randint(1, 3)))
                                      for _ in range(rng.randint(1, 2))))
        structures = [{"begin": rng.choice(triggers) + "".join(rng.choice("xy>") for _ in range(rng.randint(0, 2))),
                       "schema": digit, "end": rng.choice([">", ";", "</x>"])} for _ in range(rng.randint(1, 2))]
        spec = {"type": "structural_tag", "structures": structures, "triggers": triggers}
        firsts = [t[0] for t in triggers]
        expect_refused = len(set(firsts)) < len(firsts) or any(set(t[1:]) & set(firsts) for t in triggers)
        try:
            parse_structural_tag(spec)
        except UnsupportedFeatureError:
            assert expect_refused, spec
            refused += 1
            continue
        assert not expect_refused, spec
        cg = compiler.compile_structural_tag(spec)
        compiled += 1
        pieces = triggers + [s["begin"] for s in structures] + [s["end"] for s in structures] + list("<ab=xy>;0579 ")
        for i in range(150):
            if i % 3 == 0:  # one well-formed structure in free text
                s = rng.choice(structures)
                text = rng.choice(pieces) + s["begin"] + rng.choice("0579") + s["end"] + rng.choice(pieces)
            else:
                text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 7)))
            ours = accepts(cg, text)
            assert ours == reference_accepts(text, spec), (spec, text)
            with_structure += ours and any(s["begin"] in text for s in structures)
    assert compiled > 5 and refused > 5 and with_structure > 100
