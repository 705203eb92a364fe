"""Regex engine: soundness, completeness, unicode, serialization and errors on real tokenizers."""

from __future__ import annotations

import pickle
import random
import re

import cloudpickle
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dfa_helpers import accepts as dfa_accepts
from dfa_helpers import equivalent
from dotvllm_plugin import (
    CompiledGrammar,
    GrammarCompiler,
    GrammarMatcher,
    RegexSyntaxError,
    SerializationError,
    UnsupportedFeatureError,
    Vocabulary,
    VocabularyCoverageError,
)

# Patterns without \d \w \s so that Python's re (the oracle) and our ASCII semantics agree.
PATTERNS = {
    "identifier": r"[A-Za-z_][A-Za-z0-9_]{0,15}",
    "email": r"[a-z0-9._%+-]{1,20}@[a-z0-9-]{1,10}\.(?:com|org|net|io)",
    "date": r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])",
    "ipv4": r"(?:(?:25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])",
    "float": r"-?(?:0|[1-9][0-9]{0,8})(?:\.[0-9]{1,6})?(?:[eE][+-]?[0-9]{1,3})?",
    "words": r"(?:cat|dog|bird|horse|elephant)(?: and (?:cat|dog|bird|horse|elephant)){0,3}",
    "bounded": r"[a-z]{3,40}",
    "string": r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4}){0,30}"',
    "unicode": r"(?:héllo|wörld|日本語|🎉)(?: (?:héllo|wörld|日本語|🎉)){0,4}",
    "any_char": r"[^\n]{1,12}",
    "nested": r"\((?:[a-c]+(?:,[a-c]+)*)?\)(?:\[(?:x|yy|zzz)\]){0,2}",
}


def walk(matcher: GrammarMatcher, ids) -> bool:
    bitmask = np.zeros((1, (matcher.compiled.vocabulary.size + 31) // 32), dtype=np.int32)
    for t in ids:
        matcher.fill_next_token_bitmask(bitmask)
        allowed = (bitmask[0, t >> 5] >> (t & 31)) & 1
        accepted = matcher.accept_token(t)
        assert bool(allowed) == accepted, "mask and accept_token disagree"
        if not accepted:
            return False
    return True


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_completeness_on_generated_strings(real, name):
    pattern = PATTERNS[name]
    compiled = real.compiler.compile_regex(pattern)

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.from_regex(pattern, fullmatch=True))
    def check(text):
        assume(real.round_trips(text))
        m = GrammarMatcher(compiled)
        assert walk(m, real.encode(text)), f"{text!r} rejected"
        assert m.is_completed()
        assert m.accept_token(real.vocab.eos_token_ids[0]) and m.is_terminated()

    check()


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_completeness_with_single_byte_tokens(real, name):
    pattern = PATTERNS[name]
    compiled = real.compiler.compile_regex(pattern)

    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.from_regex(pattern, fullmatch=True))
    def check(text):
        m = GrammarMatcher(compiled)
        assert walk(m, real.byte_tokens(text)), f"{text!r} rejected byte by byte"
        assert m.is_completed()

    check()


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_soundness_of_random_walks(real, name):
    pattern = PATTERNS[name]
    compiled = real.compiler.compile_regex(pattern)
    rng = random.Random(1234)
    eos = real.vocab.eos_token_ids[0]
    for _ in range(20):
        m = GrammarMatcher(compiled)
        out = []
        for _step in range(200):
            allowed = m.allowed_token_ids()
            assert len(allowed) > 0, "dead end: no token allowed"
            if m.is_completed() and (rng.random() < 0.3 or len(allowed) == 1):
                assert m.accept_token(eos)
                break
            choices = allowed[allowed != eos]
            t = int(choices[rng.randrange(len(choices))])
            assert m.accept_token(t)
            out.append(t)
        if not m.is_terminated():
            continue  # long walk (unbounded pattern): prefix checks below still apply
        text = b"".join(real.vocab.token_bytes[t] for t in out).decode("utf-8")
        assert re.fullmatch(pattern, text), f"{text!r} does not match {pattern!r}"


def test_rejected_tokens_leave_the_state_unchanged(real):
    compiled = real.compiler.compile_regex("abc")
    m = GrammarMatcher(compiled)
    state = m.state
    assert not m.accept_token(real.encode("x")[0])
    assert m.state == state
    assert not m.accept_token(real.vocab.eos_token_ids[0])
    assert not m.accept_token(-1) and not m.accept_token(10**9)


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        (r"\d+", "123", True),
        (r"(?u)\d+", "١٢٣", True),  # Arabic-Indic digits: (?u)\d is re's Unicode \d
        (r"\d+", "١٢٣", False),  # ... and \d alone only ASCII digits (documented narrowing)
        (r"(?a)\d+", "١٢٣", False),  # ... and ASCII under re.ASCII
        (r"\D", "١", False),
        (r"\w+", "abc_1", True),
        (r"\w+", "é", False),  # the one deliberate narrowing: \w adds only ASCII word characters
        (r"(?u)\w+", "é", True),  # ... unless (?u) is written
        (r"\W", "é", False),  # \W stays exactly re's (a narrowing must never widen the complement)
        (r"\s", "\t", True),
        (r"\s", "\u00a0", True),
        (r"(?a)\s", "\u00a0", False),
        (r"\d{}-\d{4}", "1{}-1234", True),  # {} is literal text in re
        (r"\d{}-\d{4}", "-3759", False),
        (r".", "\n", False),
        (r".", "é", True),
        (r"\u00e9", "é", True),
        (r"[\u4e00-\u9fff]{2}", "日本", True),
    ],
    ids=lambda v: repr(v) if isinstance(v, str) else None,
)
def test_class_semantics(byte_vocab, pattern, text, expected):
    m = GrammarMatcher(GrammarCompiler(byte_vocab).compile_regex(pattern))
    ok = m.accept_string(text) and m.is_completed()
    assert ok == expected


@pytest.mark.parametrize("text", ["é", "日本語", "🎉", "a🎉b"])
def test_partial_utf8_tokens(mistral_tokenizer, mistral_vocab, text):
    """Multi-byte characters split over byte-fallback tokens are accepted byte by byte."""
    compiled = GrammarCompiler(mistral_vocab).compile_regex(r"(?:a|b|é|日本語|🎉)+")
    m = GrammarMatcher(compiled)
    ids = [mistral_tokenizer.convert_tokens_to_ids(f"<0x{b:02X}>") for b in text.encode()]
    assert walk(m, ids) and m.is_completed()
    # A lone continuation byte is never allowed at a character boundary.
    m2 = GrammarMatcher(compiled)
    assert not m2.accept_token(mistral_tokenizer.convert_tokens_to_ids("<0x80>"))


def test_mid_character_state_allows_only_continuations(mistral_tokenizer, mistral_vocab):
    compiled = GrammarCompiler(mistral_vocab).compile_regex("é|è")
    m = GrammarMatcher(compiled)
    assert m.accept_token(mistral_tokenizer.convert_tokens_to_ids("<0xC3>"))
    allowed = {bytes(mistral_vocab.token_bytes[t]) for t in m.allowed_token_ids()}
    assert allowed == {b"\xa9", b"\xa8"}


def test_serialization_round_trip(real):
    compiled = real.compiler.compile_regex(PATTERNS["email"])
    data = compiled.to_bytes()
    again = CompiledGrammar.from_bytes(data, real.vocab)
    for obj in (again, pickle.loads(pickle.dumps(compiled)), cloudpickle.loads(cloudpickle.dumps(compiled))):
        assert np.array_equal(obj.rows, compiled.rows)
        assert np.array_equal(obj.row_of_state, compiled.row_of_state)
        a, b = GrammarMatcher(compiled), GrammarMatcher(obj)
        for t in real.encode("john.doe@example.com"):
            assert np.array_equal(a.allowed_token_ids(), b.allowed_token_ids())
            assert a.accept_token(t) and b.accept_token(t)
        assert a.is_completed() and b.is_completed()


def test_blob_for_another_vocabulary_is_refused(mistral_vocab, tekken_vocab):
    data = GrammarCompiler(mistral_vocab).compile_regex("abc").to_bytes()
    with pytest.raises(SerializationError, match="built for vocabulary"):
        CompiledGrammar.from_bytes(data, tekken_vocab)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"NOTADOTV" + d[8:], "bad magic"),
        (lambda d: d[:-10], "truncated"),
        (lambda d: d + b"xx", "trailing bytes"),
        (lambda d: d.replace(b'"format_version": 1', b'"format_version": 9'), "format version 9"),
    ],
    ids=["magic", "truncated", "trailing", "version"],
)
def test_corrupt_blobs_are_refused(byte_vocab, mutate, message):
    data = GrammarCompiler(byte_vocab).compile_regex("abc").to_bytes()
    with pytest.raises(SerializationError, match=message):
        CompiledGrammar.from_bytes(mutate(data), byte_vocab)


@pytest.mark.parametrize(
    ("pattern", "error", "message"),
    [
        ("a(b", RegexSyntaxError, "missing \\), unterminated subpattern at position 1"),
        ("[z-a]", RegexSyntaxError, "bad character range z-a at position 1"),
        ("a{3,1}", RegexSyntaxError, "min repeat greater than max repeat"),
        ("*a", RegexSyntaxError, "nothing to repeat at position 0"),
        (r"(a)\1", UnsupportedFeatureError, r"backreference \\1 at position 3"),
        ("(?=a)b", UnsupportedFeatureError, "lookahead at position 0"),
        ("a(?<!b)", UnsupportedFeatureError, "negative lookbehind at position 1"),
        (r"\bfoo", UnsupportedFeatureError, "word boundary"),
        ("^abc", UnsupportedFeatureError, "anchor '\\^' at position 0"),
        ("abc$", UnsupportedFeatureError, "anchor '\\$' at position 3"),
        ("a++", UnsupportedFeatureError, "possessive quantifier at position 2"),
        ("(?>ab)", UnsupportedFeatureError, "atomic group"),
        (r"\p{L}", RegexSyntaxError, "bad escape"),
        (r"\ud800", UnsupportedFeatureError, "surrogate"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_patterns(byte_vocab, pattern, error, message):
    with pytest.raises(error, match=message):
        GrammarCompiler(byte_vocab).compile_regex(pattern)


@pytest.mark.parametrize("pattern", ["[^abc]", "x[$^]y", r"[\]^]", r"\[\^\]", r"a\$"], ids=str)
def test_metacharacters_in_classes_and_escapes_are_fine(byte_vocab, pattern):
    GrammarCompiler(byte_vocab).compile_regex(pattern)


def test_errors_are_value_errors(byte_vocab):
    with pytest.raises(ValueError, match="lookahead"):
        GrammarCompiler(byte_vocab).compile_regex("(?!x)y")


def test_vocabulary_that_cannot_express_the_pattern():
    vocab = Vocabulary([b"a", b"c", None], eos_token_ids=[2])
    with pytest.raises(VocabularyCoverageError, match="no sequence of this tokenizer's tokens"):
        GrammarCompiler(vocab).compile_regex("ab")


def test_branches_the_vocabulary_cannot_finish_are_pruned():
    vocab = Vocabulary([b"a", b"c", b"ab", None], eos_token_ids=[3])
    m = GrammarMatcher(GrammarCompiler(vocab).compile_regex("a(?:bd|c)"))
    assert sorted(m.allowed_token_ids().tolist()) == [0]  # "ab" would need a "d" token
    assert m.accept_token(0)
    assert m.allowed_token_ids().tolist() == [1]


def test_bitmask_layout_and_padding(mistral_vocab):
    compiled = GrammarCompiler(mistral_vocab).compile_regex("a|b")
    m = GrammarMatcher(compiled)
    width = (mistral_vocab.size + 31) // 32
    wide = np.full((2, width + 3), -1, dtype=np.int32)  # a wider model: extra words must be zeroed
    m.fill_next_token_bitmask(wide, index=1)
    bits = np.unpackbits(wide[1].view(np.uint8), bitorder="little")
    assert np.array_equal(np.flatnonzero(bits), m.allowed_token_ids())
    assert (wide[0] == -1).all()


def test_bitmask_into_torch_tensor(mistral_vocab):
    import torch

    m = GrammarMatcher(GrammarCompiler(mistral_vocab).compile_regex("[0-9]+"))
    t = torch.zeros((1, (mistral_vocab.size + 31) // 32), dtype=torch.int32)
    m.fill_next_token_bitmask(t)
    bits = np.unpackbits(t[0].numpy().view(np.uint8), bitorder="little")
    assert np.array_equal(np.flatnonzero(bits), m.allowed_token_ids())


def test_copy_and_reset(real):
    compiled = real.compiler.compile_regex("[a-z]+ [0-9]+")
    m = GrammarMatcher(compiled)
    ids = real.encode("abc 12")
    assert m.accept_token(ids[0])
    c = m.copy()
    assert walk(m, ids[1:]) and m.is_completed()
    assert not c.is_completed() and walk(c, ids[1:]) and c.is_completed()
    m.reset()
    assert m.state == compiled.initial and not m.is_terminated()


def test_eos_only_when_complete_and_terminated_afterwards(real):
    m = GrammarMatcher(real.compiler.compile_regex("[0-9]{2}"))
    eos = real.vocab.eos_token_ids[0]
    assert eos not in m.allowed_token_ids()
    assert walk(m, real.byte_tokens("42"))
    assert m.allowed_token_ids().tolist() == [eos]
    assert m.accept_token(eos) and m.is_terminated()
    assert not m.accept_token(eos)
    assert m.allowed_token_ids().tolist() == [eos]


def test_choice(real):
    compiled = real.compiler.compile_choice(["yes", "no", "maybe (later)"])
    for text in ["yes", "no", "maybe (later)"]:
        m = GrammarMatcher(compiled)
        assert walk(m, real.encode(text)) and m.is_completed()
    m = GrammarMatcher(compiled)
    assert not walk(m, real.encode("yesno"))


@pytest.mark.parametrize(("choices", "message"), [([], "at least one"), ("abc", "list of strings"), ([1], "must be a string")])
def test_bad_choices(byte_vocab, choices, message):
    from dotvllm_plugin import GrammarError

    with pytest.raises(GrammarError, match=message):
        GrammarCompiler(byte_vocab).compile_choice(choices)


def test_compiler_cache_returns_the_same_object(byte_vocab):
    gc = GrammarCompiler(byte_vocab)
    assert gc.compile_regex("a+") is gc.compile_regex("a+")
    assert GrammarCompiler(byte_vocab, cache_size=0).compile_regex("a+") is not gc.compile_regex("a+")


JSONISH = {
    "object": r'\{"a":"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*","b":-?(?:0|[1-9][0-9]*),"c":"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*","d":-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?\}',
    "array": r'\[(?:"[^"\\]*"(?:,"[^"\\]*"){0,5})?\]',
    "repeat": r"(?:[a-z]+,){3}[0-9]+",
}


@pytest.mark.parametrize("name", sorted(JSONISH))
def test_shared_loop_walks_equal_the_reference(real, name):
    """Sharing walks between look-alike loops must give exactly the per-state result."""
    from dotvllm_plugin.regex import regex_to_dfa
    from dotvllm_plugin.index import _find_gadgets, build_index

    dfa = regex_to_dfa(JSONISH[name])
    classes = np.unique(dfa.transitions.T, axis=0)
    assert _find_gadgets(np.ascontiguousarray(classes.T).astype(np.int64)), "the case must exercise sharing"
    fast = build_index(dfa, real.vocab)
    ref = build_index(dfa, real.vocab, share_loops=False)
    for s in range(dfa.n_states):
        assert np.array_equal(fast.rows[fast.row_of_state[s]], ref.rows[ref.row_of_state[s]]), f"state {s}"


EQUIVALENCE_CASES = [
    *PATTERNS.values(),
    *JSONISH.values(),
    r"(?i)héllo|[a-c]{2,4}",
    r"(?s).{0,3}x",
    r"(a|ab)(c|bcd)(d*)",
    r"(?:x?){0,5}y",
    r"[^\x00-\x7f]{1,3}",
    r"(?:a{2,3}){2,3}b?",
    r"(?:|a)+b",
    r"[^a]*a[^a]*",
    r"(?s)a.b|c(?-s:.)d",
    r"[^\u0100-\uffff]{2}",
    r"x{2,}?y(?:z|)",
]


@pytest.mark.parametrize("pattern", EQUIVALENCE_CASES, ids=range(len(EQUIVALENCE_CASES)))
def test_fast_dfa_construction_equals_interegular(pattern):
    from dotvllm_plugin.regex import regex_to_dfa

    assert equivalent(regex_to_dfa(pattern), regex_to_dfa(pattern, fast=False))


def test_cached_gadget_walks_are_shared_soundly_across_patterns(tekken_vocab):
    """A string loop walked for one pattern is reused by another; rows must equal the reference."""
    from dotvllm_plugin.regex import regex_to_dfa
    from dotvllm_plugin.index import build_index

    s = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt])*"'
    patterns = [
        r"\{" + f'"a":{s},"b":{s}' + r"\}",
        r"\[" + f"{s}(?:,{s})*" + r"\]",
        f'(?:{s}|[0-9]+)(?: {s})?' + "!",
    ]
    for pattern in patterns:
        dfa = regex_to_dfa(pattern)
        fast = build_index(dfa, tekken_vocab, merge_classes=False)
        ref = build_index(dfa, tekken_vocab, share_loops=False, merge_classes=False)
        for st in range(dfa.n_states):
            assert np.array_equal(fast.rows[fast.row_of_state[st]], ref.rows[ref.row_of_state[st]]), (pattern, st)
    assert tekken_vocab._cache.get("gadget_walks") is not None


def test_pinned_gadget_walks_survive_clearing_and_serve_json_schemas_soundly(tekken_vocab, monkeypatch):
    """A compiler pins the walk of a JSON string's loop for its vocabulary: the cold benchmarks'
    clearing keeps it, a one-regex schema of strings walks none of its gadgets again, and its rows
    equal the reference walk's (every state walked alone)."""
    from dotvllm_plugin import GrammarCompiler, index
    from dotvllm_plugin.grammar.json_schema import json_schema_to_regex
    from dotvllm_plugin.regex import regex_to_dfa

    GrammarCompiler(tekken_vocab, cache_size=0)
    index.clear_walk_cache(tekken_vocab)
    cache = tekken_vocab._cache["gadget_walks"]
    assert cache.pinned and not cache.items
    # (with the rows of the tokens that stay inside, made once: the schema's rows are ORed from them)
    assert all(r is not None for c in cache.pinned.values() for r, n in zip(c.rows, np.diff(c.node_start)) if n)
    walked = []
    walk = index._walk
    monkeypatch.setattr(index, "_walk", lambda *a, **k: walked.append(k.get("want_exits", False)) or walk(*a, **k))
    schema = {"type": "object", "required": ["name", "tags"], "additionalProperties": False,
              "properties": {"name": {"type": "string"}, "ok": {"type": "boolean"},
                             "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}}}
    dfa = regex_to_dfa(json_schema_to_regex(schema))
    fast = index.build_index(dfa, tekken_vocab, merge_classes=False)
    assert not any(walked)  # no canonical gadget walk: all came pinned
    monkeypatch.setattr(index, "_walk", walk)
    assert not cache.items  # and nothing new was cached
    ref = index.build_index(dfa, tekken_vocab, share_loops=False, merge_classes=False)
    for st in range(dfa.n_states):
        assert np.array_equal(fast.rows[fast.row_of_state[st]], ref.rows[ref.row_of_state[st]]), st


@pytest.mark.parametrize(
    "pattern",
    [
        r'"[a-zA-Z0-9 ]{0,120}"',
        r'\{"k":"[\-0-9A-Z_a-z]{1,100}","v":(?:"x"|"yy")\}',
        r"[^\n]{2,90}!",
        r'\{"a":"(?:[^"\\]|\\.)*","b":"[a-z0-9 ]{0,150}","c":"(?:[^"\\]|\\.)*"\}',
    ],
    ids=["quoted", "object", "free", "with-loops"],
)
def test_grouped_repetition_states_equal_the_reference(real, pattern):
    """States of a long bounded repetition share walks by their byte-string futures; rows must not change."""
    from dotvllm_plugin.regex import regex_to_dfa
    from dotvllm_plugin.index import _prefix_blocks, build_index

    dfa = regex_to_dfa(pattern)
    blocks = _prefix_blocks(np.unique(dfa.transitions.T, axis=0).T.astype(np.int64), real.vocab.byte_trie().depth)
    assert len(np.unique(blocks)) < dfa.n_states, "the case must exercise grouping"
    fast = build_index(dfa, real.vocab, max_entries=10**9)
    ref = build_index(dfa, real.vocab, share_loops=False, max_entries=10**9)
    for s in range(dfa.n_states):
        assert np.array_equal(fast.rows[fast.row_of_state[s]], ref.rows[ref.row_of_state[s]]), f"state {s}"


def test_bitmask_into_torch_tensor_from_a_deserialised_grammar(mistral_vocab):
    import torch

    compiled = CompiledGrammar.from_bytes(GrammarCompiler(mistral_vocab).compile_regex("[0-9]+").to_bytes(), mistral_vocab)
    t = torch.zeros((1, (mistral_vocab.size + 31) // 32), dtype=torch.int32)
    GrammarMatcher(compiled).fill_next_token_bitmask(t)  # read-only rows must not warn (warnings are errors)
    assert int((t != 0).sum()) > 0


def test_over_budget_schema_falls_back_to_lower_bounds(mistral_vocab, caplog):
    """maxLength beyond the automaton budget: compiled soundly with the bound lowered to the first
    of REPEAT_CAPS, and said so; bounds under the cap stay exact."""
    import json
    import logging

    from dotvllm_plugin.compiler import REPEAT_CAPS

    cap = REPEAT_CAPS[0]
    schema = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 50_000},
                                               "t": {"type": "string", "maxLength": 255}},
              "required": ["s", "t"], "additionalProperties": False}
    with caplog.at_level(logging.WARNING, logger="dotvllm_plugin.compiler"):
        compiled = GrammarCompiler(mistral_vocab).compile_json_schema(schema)
    assert f"lowered to {cap}" in caplog.text and "maxLength 50000 at /properties/s/maxLength" in caplog.text

    def accepts(s_len: int, t_len: int) -> bool:
        m = GrammarMatcher(compiled)
        return m.accept_string(json.dumps({"s": "x" * s_len, "t": "y" * t_len}, separators=(",", ":"))) \
            and m.is_completed()

    assert accepts(10, 0) and accepts(cap, 255)
    assert not accepts(cap + 1, 0)  # lowered
    assert not accepts(0, 256)  # exact


def test_early_schema_check_raises_what_compiling_raises():
    from dotvllm_plugin.compiler import check_json_schema

    item = {"type": "object", "properties": {k: {"type": "string"} for k in "abc"}, "required": list("abc"),
            "additionalProperties": False}
    check_json_schema({"type": "array", "items": item, "maxItems": 5000})
    with pytest.raises(UnsupportedFeatureError, match="uniqueItems"):
        check_json_schema({"type": "array", "items": item, "uniqueItems": True})


C_WALK_CASES = [*JSONISH.values(), r'"[a-zA-Z0-9 ]{0,120}"', r"[^\n]{2,90}!", r"(?i)héllo|[a-c]{2,4}", r"[0-9]+(\.[0-9]+)?"]


@pytest.mark.parametrize("pattern", C_WALK_CASES, ids=range(len(C_WALK_CASES)))
def test_c_walk_equals_the_numpydfa_accepts(real, pattern, monkeypatch):
    """The C extension's walk and row packing must give the numpy pipeline's index exactly."""
    from dotvllm_plugin import index
    from dotvllm_plugin.regex import regex_to_dfa

    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    dfa = regex_to_dfa(pattern)
    for kwargs in ({}, {"merge_classes": False}, {"merge_classes": True}, {"share_loops": False}):
        monkeypatch.setattr(index, "USE_C_WALK", True)
        fast = index.build_index(dfa, real.vocab, max_entries=10**9, **kwargs)
        monkeypatch.setattr(index, "USE_C_WALK", False)
        ref = index.build_index(dfa, real.vocab, max_entries=10**9, **kwargs)
        for s in range(dfa.n_states):
            assert np.array_equal(fast.rows[fast.row_of_state[s]], ref.rows[ref.row_of_state[s]]), (kwargs, s)


@pytest.mark.parametrize("pattern", [*JSONISH.values(), r"(?s)a.b", r"[^\x00-\x1f\u00e9]+"])
def test_python_parse_tree_builds_the_same_automaton(pattern):
    """The fast path builds from Python's parse tree; it must equal the build from interegular's."""
    from dotvllm_plugin.regex import automaton, charsets, glushkov, parse

    kw = dict(max_states=10_000, char_ranges=charsets.char_class_ranges, utf8_sequences=charsets.utf8_sequences,
              builder_cls=automaton.Builder)
    from_sre = glushkov.sre_glushkov_dfa(parse.sre_parse(parse.checked(pattern)), **kw)
    from_interegular = glushkov.glushkov_dfa(parse.parse_interegular(pattern), **kw)
    assert equivalent(automaton.trim(*from_sre, pattern), automaton.trim(*from_interegular, pattern))


@pytest.mark.parametrize("pattern", [r"\d{2}[\w-]", r"a{}", r"a{,3}"])
def test_interegular_reference_refuses_what_it_reads_differently_from_re(pattern):
    """interegular reads \d \w \s as ASCII and {} / {,n} as repetitions; fast=False must refuse them."""
    from dotvllm_plugin.regex import regex_to_dfa

    regex_to_dfa(pattern)
    with pytest.raises(UnsupportedFeatureError, match="fast=False"):
        regex_to_dfa(pattern, fast=False)


@pytest.mark.parametrize("pattern", [*JSONISH.values(), r"(a|ab)(c|bcd)(d*)", r"[^\x00-\x7f]{1,3}"])
def test_c_subset_construction_equals_the_numpy_one(pattern, monkeypatch):
    from dotvllm_plugin.regex import glushkov, regex_to_dfa

    if glushkov._cwalk is None:
        pytest.skip("the C extension is not built here")
    fast = regex_to_dfa(pattern)
    monkeypatch.setattr(glushkov, "USE_C_SUBSET", False)
    assert equivalent(fast, regex_to_dfa(pattern))


@pytest.mark.parametrize("use_c", [True, False])
def test_subset_construction_stops_at_the_state_budget(use_c, monkeypatch):
    from dotvllm_plugin.errors import CompilationTooLargeError
    from dotvllm_plugin.regex import glushkov, regex_to_dfa

    monkeypatch.setattr(glushkov, "USE_C_SUBSET", use_c)
    with pytest.raises(CompilationTooLargeError, match="exceeds 50 states"):
        regex_to_dfa(r"(?:a|b)*a(?:a|b){8}", max_states=50)


@pytest.mark.parametrize("pattern", [r'"[a-zA-Z0-9 ]{0,120}"', r"[^\n]{2,90}!", JSONISH["array"]])
def test_c_prefix_blocks_equal_the_numpy_partition(pattern, monkeypatch):
    from dotvllm_plugin import index
    from dotvllm_plugin.regex import byte_classes, regex_to_dfa

    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    class_trans = byte_classes(regex_to_dfa(pattern).transitions)[0].astype(np.int64)
    for depth in (1, 4, 30):
        fast = index._prefix_blocks(class_trans, depth)
        monkeypatch.setattr(index, "USE_C_WALK", False)
        ref = index._prefix_blocks(class_trans, depth)
        monkeypatch.setattr(index, "USE_C_WALK", True)
        pairs = set(zip(fast.tolist(), ref.tolist()))
        assert len(pairs) == len(set(fast.tolist())) == len(set(ref.tolist())), depth


@pytest.mark.parametrize("pattern", [*JSONISH.values(), r"(?i)héllo|[a-c]{2,4}", r"(a|ab)(c|bcd)(d*)"])
def test_c_byte_classes_and_twin_merging_equal_numpy(pattern, monkeypatch):
    from dotvllm_plugin.regex import automaton, regex_to_dfa

    if automaton._cwalk is None:
        pytest.skip("the C extension is not built here")
    fast = regex_to_dfa(pattern)
    fast_rows, fast_bc = automaton.byte_classes(fast.transitions)
    monkeypatch.setattr(automaton, "USE_C_TABLES", False)
    ref = regex_to_dfa(pattern)
    ref_rows, ref_bc = automaton.byte_classes(fast.transitions)
    assert len(set(zip(fast_bc.tolist(), ref_bc.tolist()))) == len(set(ref_bc.tolist())) == fast_rows.shape[1]
    assert np.array_equal(fast_rows[:, fast_bc], ref_rows[:, ref_bc])
    assert fast.n_states == ref.n_states and equivalent(fast, ref)


@pytest.mark.parametrize("length", [3, 31, 32, 33, 45])
def test_twin_chains_merge_round_by_round_as_numpy(length, monkeypatch):
    """Twin merging in C looks again only at the states whose rows changed, yet merges round by
    round as the numpy passes do: chains of twins merge one link per round, a chain longer than
    the 32 rounds stays partly unmerged, alike; beside them random tables with many twins."""
    from dotvllm_plugin.regex import automaton

    if automaton._cwalk is None:
        pytest.skip("the C extension is not built here")
    rng = np.random.default_rng(length)
    tables = []
    n = 1 + 3 * length  # state 0, then three twin chains entered on a, b and c, each ending accepting
    trans = np.full((n, 256), -1, dtype=np.int32)
    accepting = np.zeros(n, dtype=bool)
    for k, first in enumerate((1, 1 + length, 1 + 2 * length)):
        trans[0, 97 + k] = first
        for i in range(length - 1):
            trans[first + i, 120] = first + i + 1
            trans[first + i, 121 + (i % 3)] = first + length - 1  # (a side edge to its end: not a plain path)
        accepting[first + length - 1] = True
    tables.append((trans, accepting))
    for _ in range(40):
        m = int(rng.integers(20, 200))
        half = m // 2
        cols = rng.integers(-1, half, size=(half, int(rng.integers(1, 5)))).astype(np.int32)
        cols = np.vstack([cols, cols + np.where(cols >= 0, half, 0)]).astype(np.int32)  # every state with a twin
        if m % 2:
            cols = np.vstack([cols, cols[:1]])
        t = np.ascontiguousarray(cols[:, rng.integers(0, cols.shape[1], size=256)])
        t[0, 0] = len(cols) - 1
        a = rng.random(len(cols)) < 0.3
        a[-1] = True
        tables.append((t, a))
    for trans, accepting in tables:
        got = []
        for use_c in (True, False):
            monkeypatch.setattr(automaton, "USE_C_TABLES", use_c)
            got.append(automaton.trim(trans, accepting, "t"))
        fast, ref = got
        assert np.array_equal(fast.transitions, ref.transitions) and np.array_equal(fast.accepting, ref.accepting)
        assert np.array_equal(fast.classes[0], ref.classes[0]) and np.array_equal(fast.classes[1], ref.classes[1])
        for max_rounds in (0, 1, 2, 5, 32, 100):
            rows, byte_class = automaton.byte_classes(trans)
            rows = np.ascontiguousarray(rows, dtype=np.int64)
            out, acc = automaton._cwalk.merge_twins(rows, rows.shape[1], accepting.astype(np.uint8), max_rounds)
            monkeypatch.setattr(automaton, "USE_C_TABLES", False)
            ref_rows, ref_acc = automaton._merge_twins(rows, accepting, max_rounds, byte_class=byte_class, expand=False)
            monkeypatch.setattr(automaton, "USE_C_TABLES", True)
            assert np.array_equal(np.frombuffer(out, dtype=np.int64).reshape(-1, rows.shape[1]), ref_rows), max_rounds
            assert np.array_equal(np.frombuffer(acc, dtype=np.uint8).astype(bool), ref_acc), max_rounds


def test_c_byte_classes_exact_on_a_hash_collision():
    """The C byte classes group columns by a 32-bit hash and check the grouping: two different
    columns with the same hash (built here from the hash's steps) still get classes of their own."""
    from dotvllm_plugin.regex import automaton

    if automaton._cwalk is None:
        pytest.skip("the C extension is not built here")
    mask = 0xFFFFFFFF

    def step(h, v):  # one state's step of classes_of's hash
        x = ((h ^ (v & mask)) * 0x01000193) & mask
        return x ^ (x >> 15)

    a1, a2, b1 = 5, 9, 0
    b2 = step(0x811C9DC5, a1) ^ b1 ^ step(0x811C9DC5, a2)  # (the second step's inputs agree)
    b2 = b2 - (1 << 32) if b2 >= 1 << 31 else b2
    trans = np.full((2, 256), -1, dtype=np.int32)
    trans[:, 10] = [a1, b1]
    trans[:, 20] = [a2, b2]
    trans[:, 30] = [a1, b1]
    assert step(step(0x811C9DC5, a1), b1) == step(step(0x811C9DC5, a2), b2 & mask)
    rows, byte_class = automaton.byte_classes(trans)
    assert np.array_equal(rows[:, byte_class], trans) and rows.shape[1] == 3  # (exact, and coarsest)
    assert byte_class[10] == byte_class[30] == 1 and byte_class[20] == 2  # (numbered by first byte)


def test_trimmed_automata_equal_with_and_without_c(monkeypatch):
    """Trimming in one C call (live states, twins merged on byte classes, the coarsest classes read
    from the 256 columns) against the numpy steps: the same arrays, on random tables with dead
    states, twins, and an initial state that reaches no accepting one (refused alike)."""
    from dotvllm_plugin.errors import VocabularyCoverageError
    from dotvllm_plugin.regex import automaton

    if automaton._cwalk is None:
        pytest.skip("the C extension is not built here")
    rng = np.random.default_rng(11)
    refused = 0
    for k in range(300):
        n = int(rng.integers(1, 30))
        cols = rng.integers(-1, n, size=(n, int(rng.integers(1, 8)))).astype(np.int32)
        cols[rng.random(cols.shape) < 0.3] = -1
        if k % 3 == 0:  # twins: states copied
            cols[n // 2 :] = cols[: n - n // 2]
        trans = np.ascontiguousarray(cols[:, rng.integers(0, cols.shape[1], size=256)])
        accepting = rng.random(n) < 0.3
        if k % 5:
            accepting[-1] = True
            trans[0, 0] = n - 1  # (the initial state is live)
        got = []
        for use_c in (True, False):
            monkeypatch.setattr(automaton, "USE_C_TABLES", use_c)
            try:
                got.append(automaton.trim(trans, accepting, "t"))
            except VocabularyCoverageError:
                got.append(None)
        fast, ref = got
        if ref is None:
            refused += 1
            assert fast is None
            continue
        assert fast.transitions.dtype == ref.transitions.dtype and np.array_equal(fast.transitions, ref.transitions)
        assert fast.accepting.dtype == ref.accepting.dtype and np.array_equal(fast.accepting, ref.accepting)
        assert np.array_equal(fast.classes[0], ref.classes[0]) and np.array_equal(fast.classes[1], ref.classes[1])
        fast.transitions[0, 0] = fast.transitions[0, 0]  # (writable, as the numpy steps' arrays are)
    assert refused


def test_c_live_states_equal_the_reversed_search():
    """Trimming's live states (those that reach acceptance) in C against the search of the
    reversed edges in Python, on random class tables with dead entries, self-loops, unreachable
    parts and no accepting state at all."""
    from dotvllm_plugin.regex import automaton

    if automaton._cwalk is None:
        pytest.skip("the C extension is not built here")
    rng = np.random.default_rng(7)
    for _ in range(400):
        n, c = int(rng.integers(1, 40)), int(rng.integers(1, 6))
        rows = rng.integers(-1, n, size=(n, c)).astype(np.int64)
        rows[rng.random((n, c)) < 0.4] = -1
        accepting = rng.random(n) < rng.choice([0.0, 0.05, 0.3])
        got = np.frombuffer(automaton._cwalk.live_states(rows, c, accepting.astype(np.uint8)), dtype=bool)
        src = np.repeat(np.arange(n), c)
        dst = rows.ravel()
        ok = dst >= 0
        want = automaton.reachable(dst[ok], src[ok], n, np.flatnonzero(accepting).tolist())
        assert np.array_equal(got, want), (rows, accepting)


_ATOMS = st.sampled_from(["a", "b", "é", "[ab]", "[^a]", "[a-zé]", ".", "\\.", "ab", "😀"])


def _random_regex(depth: int = 3):
    if depth == 0:
        return _ATOMS
    sub = _random_regex(depth - 1)
    return st.one_of(
        _ATOMS,
        st.tuples(sub, sub).map("".join),
        st.tuples(sub, sub).map(lambda p: f"(?:{p[0]}|{p[1]})"),
        st.tuples(sub, st.sampled_from(["?", "*", "+", "{2}", "{0,3}", "{1,4}"])).map(lambda p: f"(?:{p[0]}){p[1]}"),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(_random_regex())
def test_c_extension_equals_numpy_on_random_regexes(mistral_vocab, pattern):
    """The whole pipeline with and without the C extension: equivalent DFAs and identical rows."""
    from dotvllm_plugin import index
    from dotvllm_plugin.regex import automaton, glushkov, regex_to_dfa

    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    flags = [(automaton, "USE_C_TABLES"), (glushkov, "USE_C_SUBSET"), (glushkov, "USE_C_GLUSHKOV"),
             (index, "USE_C_WALK")]
    try:
        fast = regex_to_dfa(pattern)
        fast_index = index.build_index(fast, mistral_vocab, max_entries=10**9)
        for module, name in flags:
            setattr(module, name, False)
        ref = regex_to_dfa(pattern)
        ref_index = index.build_index(fast, mistral_vocab, max_entries=10**9)
    finally:
        for module, name in flags:
            setattr(module, name, True)
    assert equivalent(fast, ref)
    for s in range(fast.n_states):
        assert np.array_equal(fast_index.rows[fast_index.row_of_state[s]], ref_index.rows[ref_index.row_of_state[s]])


@pytest.mark.parametrize("use_c", [True, False])
def test_every_eos_id_is_allowed_where_complete_even_in_one_mask_word(use_c, monkeypatch):
    """Several EOS ids in the same 32-bit word of a packed row must all be set."""
    from dotvllm_plugin import Vocabulary, index

    monkeypatch.setattr(index, "USE_C_WALK", use_c)
    vocab = Vocabulary([None, None, None] + [bytes([b]) for b in range(256)] + [b"ab"], eos_token_ids=[1, 2])
    matcher = GrammarMatcher(GrammarCompiler(vocab, cache_size=0).compile_regex("(?:ab)+"))
    for tok in (3 + ord("a"), 3 + ord("b")):
        assert matcher.accept_token(tok)
    mask = np.zeros((1, (vocab.size + 31) // 32), dtype=np.int32)
    matcher.fill_next_token_bitmask(mask)
    allowed = {i for i in range(vocab.size) if mask[0, i // 32] >> (i % 32) & 1}
    assert {1, 2, 3 + ord("a"), 259} <= allowed and 0 not in allowed


@pytest.mark.parametrize("pattern", ['"name":', ",", r"\{", "null", "a", "h\u00e9llo \u4e16\U0001F600", r"a\.b\*", "(?i)Ab"])
def test_literal_patterns_build_the_general_automaton(pattern):
    """A pattern that is one literal string takes a direct construction: the same automaton, state
    for state, as the general construction builds for the same string inside a group (which the
    shortcut does not take); a flag that changes matching keeps the general path."""
    from dotvllm_plugin.regex import regex_to_dfa

    direct = regex_to_dfa(pattern)
    general = regex_to_dfa(f"(?:{pattern})" if not pattern.startswith("(?i)") else f"(?i)(?:{pattern[4:]})")
    assert direct.initial == general.initial
    assert np.array_equal(direct.accepting, general.accepting)
    assert np.array_equal(direct.transitions, general.transitions)
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(direct.classes, general.classes))
    text = pattern[4:] if pattern.startswith("(?i)") else re.sub(r"\\(.)", r"\1", pattern)
    assert dfa_accepts(direct, text.encode()) and not dfa_accepts(direct, text.encode()[:-1])


@pytest.mark.parametrize("pattern", [
    '(?:bikeshed"|Bike(?:shed"|Shed")|respec"|Re(?:spec"|Spec")|wattsi"|Wattsi"|html"|HTML")',
    "(?:true|false)", "(?:a|b|)", "[abc]x(?:é|ü|😀)", "(?:ab|abc|abcd)(?:|e)", "(?:x|y)(?:x|y)(?:x|y)",
    r"(?:\.|\n|\u00e9)", "(?:)",
])
def test_a_few_literal_strings_build_their_trie(pattern, monkeypatch):
    """A pattern whose language is a few literal strings (an ``enum``) is built as their trie: the
    same language as the general construction (and as ``re``), no more states."""
    import itertools

    import dotvllm_plugin.regex as rx
    from dotvllm_plugin.regex import parse_tree, regex_to_dfa

    words = rx._literal_words(parse_tree(pattern))
    assert words is not None  # (the shortcut applies)
    direct = regex_to_dfa(pattern)
    monkeypatch.setattr(rx, "_literal_words", lambda tree: None)
    general = regex_to_dfa(pattern)
    assert equivalent(direct, general) and direct.n_states <= general.n_states
    alphabet = sorted({c for w in words for c in w.decode()} | {"q"})
    for n in range(max(len(w.decode()) for w in words) + 2):
        for chars in itertools.islice(itertools.product(alphabet, repeat=n), 3000):
            text = "".join(chars)
            assert dfa_accepts(direct, text.encode()) == bool(re.fullmatch(pattern, text)), text


@pytest.mark.parametrize("pattern", ["(?:a|b)*", "(?i)(?:ab|cd)", "[a-c]x", "(?:a|[^b])", r"(?:\d|x)", "a{2}"])
def test_other_patterns_are_no_literal_set(pattern):
    import dotvllm_plugin.regex as rx
    from dotvllm_plugin.regex import parse_tree

    assert rx._literal_words(parse_tree(pattern)) is None


def test_a_literal_surrogate_is_refused_as_before():
    from dotvllm_plugin.regex import regex_to_dfa

    with pytest.raises(UnsupportedFeatureError):
        regex_to_dfa(r"\ud800x")


#: Counted repetitions: the automaton builds the first copy and clones the others.
REPETITIONS = [
    r"(?:a|bc?){3,7}d",
    r"(?:x?y?){2,6}z",
    r"(?:[é-ü]|ab){0,40}c",
    r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]){0,60}"',
    r"(?:(?:ab){1,3}|c){2,4}",
    r"(?:a{2}b{0,2}){3,}",
    r"(?:[^\x00-\x7f]{1,2}x){5}",
    r"(?:a|(?:b|c{2}){2,3}){0,9}",
]


@pytest.mark.parametrize("pattern", REPETITIONS, ids=range(len(REPETITIONS)))
def test_cloned_repetition_copies_equal_interegular_and_re(pattern):
    """The copies of a counted repetition are cloned from the first (positions and follow sets
    shifted): the automaton equals interegular's construction and agrees with ``re`` on strings
    built from the pattern's own characters."""
    from dotvllm_plugin.regex import regex_to_dfa

    dfa = regex_to_dfa(pattern)
    assert equivalent(dfa, regex_to_dfa(pattern, fast=False))
    rx = re.compile(pattern)
    rng = random.Random(pattern)
    for _ in range(300):  # texts of the automaton's own (random walks): re must match them
        q, data = dfa.initial, bytearray()
        while not (dfa.accepting[q] and (rng.random() < 0.15 or not (dfa.transitions[q] >= 0).any())):
            byte = rng.choice(np.flatnonzero(dfa.transitions[q] >= 0).tolist())
            data.append(byte)
            q = int(dfa.transitions[q, byte])
        assert rx.fullmatch(data.decode()), (pattern, data)
    alphabet = "abcdxyzéü€\"\\/nñ"
    for _ in range(3000):  # random texts: both agree
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        assert dfa_accepts(dfa, text.encode()) == (rx.fullmatch(text) is not None), (pattern, text)


@pytest.mark.parametrize("pattern, member", [
    (r"(?:ab){0,25}", "ab" * 25), (r"(?:ab){0,26}", None),
    (r"(?:(?:ab){0,5}c){0,4}", "ababc" * 4), (r"(?:(?:ab){0,5}c){0,5}", None),
    (r"x(?:ab){25}", None), (r"(?:ab){24}y", "ab" * 24 + "y"),
])
def test_an_over_budget_repetition_is_refused_exactly_at_the_budget(pattern, member):
    """A repetition is refused after its first copy when all copies would exceed the position
    budget (half the state budget, here 50): the same bound as building them all."""
    from dotvllm_plugin.errors import CompilationTooLargeError
    from dotvllm_plugin.regex import regex_to_dfa

    if member is None:
        with pytest.raises(CompilationTooLargeError, match="more than 50 character positions"):
            regex_to_dfa(pattern, max_states=100)
    else:
        dfa = regex_to_dfa(pattern, max_states=100)
        assert dfa_accepts(dfa, member.encode()) and not dfa_accepts(dfa, member.encode() + b"q")


@pytest.mark.parametrize("pattern", [r"ab{2,5}c", r"(?:x|yz){0,7}", r"a+b", r"(?:ab|c)*", r'"[^"]{0,9}"', r"é{3}|x"])
def test_c_longest_path_equals_python(pattern, monkeypatch):
    """The longest path of an acyclic automaton (the deepest token-trie level a walk can reach),
    None for a cyclic one: the C version equals the Python one."""
    from dotvllm_plugin import index
    from dotvllm_plugin.regex import byte_classes, regex_to_dfa

    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    class_trans = byte_classes(regex_to_dfa(pattern).transitions)[0].astype(np.int64)
    fast = index._longest_path(class_trans)
    monkeypatch.setattr(index, "USE_C_WALK", False)
    assert fast == index._longest_path(class_trans)
    if "*" not in pattern and "+" not in pattern:
        assert fast is not None and fast >= 3


def test_large_position_sets_are_bounded_by_the_work_budget():
    """Optional items inside a long counted repetition make every automaton state a set of
    thousands of positions: the subset construction reads each set's follow lists once (not once
    per byte) and refuses past its work budget instead of running for minutes."""
    from dotvllm_plugin.errors import CompilationTooLargeError
    from dotvllm_plugin.regex import glushkov, regex_to_dfa

    if not glushkov.USE_C_SUBSET or glushkov._cwalk is None:
        pytest.skip("the C extension is not built here")
    dfa = regex_to_dfa("(?:a?){0,1000}b")
    pattern = re.compile("(?:a?){0,1000}b")
    for k in (0, 1, 500, 1000, 1001):
        text = "a" * k + "b"
        assert dfa_accepts(dfa, text.encode()) == bool(pattern.fullmatch(text)), k
    with pytest.raises(CompilationTooLargeError, match="steps"):
        regex_to_dfa("(?:a?){0,3000}b")


def test_trimmed_automata_carry_their_byte_classes():
    """The byte classes ``trim`` hands on (coarsened from its class table after merging states)
    are the ones computed from the final table, class for class (numbered by first byte)."""
    import sys
    from pathlib import Path

    from dotvllm_plugin.regex import byte_classes, regex_to_dfa

    sys.path.insert(0, str(Path(__file__).parent))
    from test_regex_differential import BASE

    def by_first_byte(class_trans, byte_class):
        order = list(dict.fromkeys(np.asarray(byte_class).tolist()))
        number = {c: i for i, c in enumerate(order)}
        return np.asarray(class_trans)[:, order].astype(np.int64), np.array([number[c] for c in byte_class])

    checked = 0
    for pattern in BASE + ['"(?:[^"\\\\]|\\\\.){0,300}"', "(?:a|b){3,9}c", "[\\x00-\\x7f]{2}|é+"]:
        try:
            dfa = regex_to_dfa(pattern)
        except Exception:  # refused or over budget: nothing to compare
            continue
        if dfa.classes is None:  # (a literal's chain is built without trimming)
            continue
        want = by_first_byte(*byte_classes(dfa.transitions))
        got = by_first_byte(*dfa.classes)
        assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0]), pattern
        checked += 1
    assert checked > 120


def test_a_compiler_for_a_vocabulary_that_cannot_spell_json_strings_still_compiles():
    """Making a compiler pins the walk of a JSON string's loop where the vocabulary can write one;
    a vocabulary without the quote byte makes a compiler all the same (nothing pinned)."""
    vocab = Vocabulary([b"a", b"b", b"ab", None], eos_token_ids=[3])
    m = GrammarMatcher(GrammarCompiler(vocab).compile_regex("a+b"))
    assert sorted(m.allowed_token_ids().tolist()) == [0, 2]
    assert not getattr(vocab._cache.get("gadget_walks"), "pinned", None)


@pytest.mark.parametrize("use_c", [True, False])
def test_a_literal_chain_with_its_byte_classes(use_c, monkeypatch):
    """A literal string's automaton comes with its byte classes: in C (``_cwalk.chain``) and in
    numpy, each equal to :func:`byte_classes` of its table (the reference) with the extension on
    and off, for texts with repeated bytes, NUL, every byte value, and one byte."""
    from dotvllm_plugin.regex import _chain, automaton, byte_classes

    if use_c and automaton._cwalk is None:
        pytest.skip("the C extension is not built")
    monkeypatch.setattr(automaton, "USE_C_TABLES", use_c)
    rng = random.Random(5)
    texts = [b"a", b"\x00", b"\xff", bytes(range(256)), bytes(range(255, -1, -1)) * 2, b'"tableName":', b"aaaa"]
    texts += [bytes(rng.choices(range(256) if i % 2 else b"ab\x00\xff:", k=rng.randint(1, 40))) for i in range(60)]
    for text in texts:
        got = _chain(text)
        n = len(text)
        assert got.initial == 0 and got.n_states == n + 1 and got.transitions.dtype == np.int32
        assert got.accepting.dtype == bool and got.accepting.tolist() == [False] * n + [True]
        expect = np.full((n + 1, 256), -1, dtype=np.int32)
        expect[np.arange(n), list(text)] = np.arange(1, n + 1)
        assert np.array_equal(got.transitions, expect), text
        rows, byte_class = byte_classes(got.transitions)  # (what the lexers computed before, either way)
        assert got.classes[0].dtype == rows.dtype and got.classes[1].dtype == byte_class.dtype
        assert np.array_equal(got.classes[0], rows) and np.array_equal(got.classes[1], byte_class), text


@pytest.mark.parametrize("seed", range(30))
def test_plain_text_regexes_build_what_the_parser_builds(seed):
    """A regex written as plain text (``re.escape`` of any text, keys such as ``"name":``) is built
    without parsing it: the same automaton, state for state, as from ``re``'s parse tree, and ``re``
    matches exactly the text; any other regex is left to the parser."""
    from dotvllm_plugin.regex import _plain_text, regex_to_dfa
    from dotvllm_plugin.regex.parse import parse_tree

    rng = random.Random(seed)
    alphabet = 'ab "{}[]().*+?^$|\\/:,-_#\né日😀\t'
    text = "".join(rng.choices(alphabet, k=rng.randint(1, 12)))
    for pattern in (re.escape(text), '"' + text.replace("\\", "").replace('"', "") + '":'):
        plain = _plain_text(pattern)
        expect = re.fullmatch(r"(?:[^.^$*+?{}\[\]\\|()]|\\[^0-9A-Za-z])+", pattern) is not None
        assert (plain is not None) == expect, pattern
        if plain is None:
            continue
        assert re.fullmatch(pattern, plain.decode()) and re.compile(pattern).pattern == pattern
        fast = regex_to_dfa(pattern)
        slow = regex_to_dfa(pattern, tree=parse_tree(pattern))
        assert np.array_equal(fast.transitions, slow.transitions) and np.array_equal(fast.accepting, slow.accepting)
        assert fast.initial == slow.initial
    for pattern in ("a.b", "a\\db", "\\n", "(ab)", "a|b", "[ab]", "a{2}"):
        assert _plain_text(pattern) is None


def test_class_tries_are_memoised_pinned_ones_kept_past_a_cold_clear(monkeypatch):
    """A class's UTF-8 byte trie is built once and shared (read only) by later automata; the cold
    clear of the memos forgets it unless it was made while pinning (a compiler's fixed terminals)."""
    from dotvllm_plugin.regex import glushkov, regex_to_dfa

    monkeypatch.setattr(glushkov, "_TRIES", {})
    monkeypatch.setattr(glushkov, "_PINNED_TRIES", {})
    with glushkov.pinned_tries():
        first = regex_to_dfa("[^a]x")
    pinned = dict(glushkov._PINNED_TRIES)
    assert pinned and not glushkov._TRIES
    fresh = regex_to_dfa("[é-ü]+y")
    assert len(glushkov._TRIES) == 1
    glushkov.clear_memos()
    assert not glushkov._TRIES and glushkov._PINNED_TRIES == pinned
    again = regex_to_dfa("[^a]x")  # (from the pinned trie)
    assert np.array_equal(again.transitions, first.transitions) and np.array_equal(again.accepting, first.accepting)
    assert all(not a.flags.writeable for got in pinned.values() for a in got)
    for text, ok in (("éx", True), ("ax", False), ("\U0001F600x", True)):
        assert dfa_accepts(again, text.encode()) is ok
    assert dfa_accepts(fresh, "ééüy".encode())
