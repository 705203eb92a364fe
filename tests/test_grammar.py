"""The grammar engine (Lark front end, pushdown matcher) against lark itself as the oracle.

* sentences of each grammar (hypothesis' ``from_lark``, kept when lark's LALR parser accepts them),
  tokenized by both real tokenizers, are accepted token by token and complete;
* random walks over the allowed tokens produce text that lark parses once EOS was allowed;
* texts lark rejects are rejected; per-feature tables; refusals name what and where.
"""

from __future__ import annotations

import pickle
import random

import lark
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark

from dotvllm_plugin import GrammarCompiler, GrammarMatcher, UnsupportedFeatureError, Vocabulary
from dotvllm_plugin.compiler import CompiledGrammar, check_grammar, load_compiled
from dotvllm_plugin.errors import GrammarError
from dotvllm_plugin.grammar.lark import REGULAR_EQUIVALENTS
from dotvllm_plugin.pushdown import _FORK, PushdownGrammar

JSON = r"""
?start: value
?value: object | array | string | SIGNED_NUMBER -> number | "true" -> true | "false" -> false | "null" -> null
array  : "[" [value ("," value)*] "]"
object : "{" [pair ("," pair)*] "}"
pair   : string ":" value
string : ESCAPED_STRING
%import common.ESCAPED_STRING
%import common.SIGNED_NUMBER
%import common.WS
%ignore WS
"""

ARITHMETIC = r"""
?start: sum
?sum: product | sum "+" product -> add | sum "-" product -> sub
?product: atom | product "*" atom -> mul | product "/" atom -> div
?atom: NUMBER -> number | "-" atom -> neg | "(" sum ")"
%import common.NUMBER
%import common.WS_INLINE
%ignore WS_INLINE
"""

SQL = r"""
start: select
select: "select"i columns "from"i NAME [where] [order] [limit]
columns: "*" | NAME ("," NAME)*
where: "where"i cond (("and"i | "or"i) cond)*
cond: NAME OP value
value: NAME | INT | STRING
order: "order"i "by"i NAME [DIR]
DIR: "asc"i | "desc"i
limit: "limit"i INT
OP: "=" | "<" | ">" | "<=" | ">=" | "<>"
NAME: /[a-z_][a-z0-9_]*/
STRING: /'[^']*'/
%import common.INT
%import common.WS
%ignore WS
"""

CALLS = r"""
start: call
call: NAME "(" [arg ("," arg)*] ")"
arg: NAME "=" value | value
?value: call | list | ESCAPED_STRING | SIGNED_NUMBER | "true" | "false"
list: "[" [value ("," value)*] "]"
%import common.CNAME -> NAME
%import common.ESCAPED_STRING
%import common.SIGNED_NUMBER
%import common.WS
%ignore WS
"""

GRAMMARS = {"json": JSON, "arithmetic": ARITHMETIC, "sql": SQL, "calls": CALLS}

STRING = st.from_regex(r'"[a-zA-Z0-9 _.,:\\-]{0,12}"', fullmatch=True)
EXPLICIT = {"ESCAPED_STRING": STRING, "STRING": st.from_regex(r"'[a-z ]{0,8}'", fullmatch=True)}


@pytest.fixture(scope="module")
def parsers():
    return {name: lark.Lark(text, parser="lalr") for name, text in GRAMMARS.items()}


@pytest.fixture(scope="module")
def compiled(real):
    return {name: real.compiler.compile_grammar(text) for name, text in GRAMMARS.items()}


def _lark_accepts(parser, text: str) -> bool:
    try:
        parser.parse(text)
    except lark.exceptions.LarkError:
        return False
    return True


def _check_table(parser, grammar, accepted, rejected) -> None:
    """lark accepts ``accepted`` and so do we (complete); lark rejects ``rejected`` and so do we."""
    for s in accepted:
        assert _lark_accepts(parser, s), s
        m = GrammarMatcher(grammar)
        assert m.accept_string(s) and m.is_completed(), s
    for s in rejected:
        assert not _lark_accepts(parser, s), s
        m = GrammarMatcher(grammar)
        assert not (m.accept_string(s) and m.is_completed()), s


def _eos(vocab) -> int:
    return vocab.eos_token_ids[0]


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_sentences_from_lark_are_accepted(name, real, compiled, parsers):
    parser = parsers[name]
    grammar = compiled[name]

    names = {t.name for t in parser.terminals}

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(from_lark(parser, explicit={k: v for k, v in EXPLICIT.items() if k in names}))
    def check(text):
        if not _lark_accepts(parser, text) or not real.round_trips(text) or not text.isascii():
            return
        ids = real.encode(text)
        m = GrammarMatcher(grammar)
        for i, t in enumerate(ids):
            assert m.accept_token(t), (text, i, real.vocab.token_bytes[t])
        assert m.is_completed(), text
        assert m.accept_token(_eos(real.vocab))
        assert m.is_terminated()

    check()


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_random_walks_parse_with_lark(name, real, compiled, parsers):
    parser = parsers[name]
    grammar = compiled[name]
    eos = set(real.vocab.eos_token_ids)
    rng = random.Random(f"{name}-{real.name}")
    finished = 0
    closers = {t for t, b in enumerate(real.vocab.token_bytes) if b and len(b) == 1 and b in b")]}\"'0123456789"}
    for walk in range(12):
        m = GrammarMatcher(grammar)
        out = []
        for step in range(200):
            allowed = m.allowed_token_ids()
            assert len(allowed), ("stuck", name, b"".join(out))
            t = int(rng.choice(allowed))
            if step > 20:  # steer towards an end: EOS when allowed, else a closing byte
                ends = [x for x in allowed.tolist() if x in eos]
                close = [x for x in allowed.tolist() if x in closers]
                t = ends[0] if ends else int(rng.choice(close)) if close and rng.random() < 0.8 else t
            assert m.accept_token(t), (name, b"".join(out), t)
            if t in eos:
                break
            out.append(real.vocab.token_bytes[t])
        text = b"".join(out).decode("utf-8")
        if m.is_terminated():
            finished += 1
            assert _lark_accepts(parser, text), (name, text)
    # A random walk through SQL rarely spells FROM; completeness is test_sentences_from_lark's job.
    assert finished >= (0 if name == "sql" else 1)


REJECTED = {
    "json": ['{"a" 1}', "[1,]", '{"a":}', "tru", "[1 2]", '"unterminated', "{} {}", "01x"],
    "arithmetic": ["1+", "(1", "1)", "*2", "1 2", "--", "()"],
    "sql": ["select from t", "select a from", "select a, from t", "select a from t where", "selectx a from t"],
    "calls": ["f(", "f(a=)", "f(a b)", "(1)", "f(1,)", "f(x)(y)"],
}


@pytest.mark.parametrize(("name", "text"), [(n, t) for n, ts in REJECTED.items() for t in ts])
def test_texts_lark_rejects_are_rejected(name, text, byte_vocab, parsers):
    assert not _lark_accepts(parsers[name], text)
    m = GrammarMatcher(GrammarCompiler(byte_vocab).compile_grammar(GRAMMARS[name]))
    assert not (m.accept_string(text) and m.is_completed()), text


# -- features --------------------------------------------------------------------------------------

FEATURES = [
    # (grammar, accepted, rejected)
    pytest.param('start: "a" "b"\n%ignore " "', ["ab", " a  b ", "a b"], ["a", "ab b", "a\tb"], id="ignore"),
    pytest.param('start: A\nA: "ab"i', ["ab", "AB", "aB"], ["a", "abc"], id="case-insensitive-literal"),
    pytest.param('start: _x "c"\n_x: "a" "b"', ["abc"], ["ab", "abcc"], id="filtered-rule"),
    pytest.param('?start: x\nx: "a" | "b" x', ["a", "ba", "bbba"], ["b", ""], id="inlined-rule"),
    pytest.param('start: pair{"x", "y"}\npair{a, b}: a "," b', ["x,y"], ["y,x", "x,"], id="template"),
    pytest.param('start: NUMBER\n%import common.NUMBER', ["12", "1.5", "3e4"], ["", "1.2.3"], id="import"),
    pytest.param('start: WORD (" " WORD)*\n%import common.WORD', ["a b c", "hello"], ["a  b", "a1"], id="repeat"),
    pytest.param('start: kw NAME\nkw: "let"\nNAME: /[a-z]+/\n%ignore " "', ["let x", "let letx", "let let"],
                 ["letx y", "let"], id="keyword-and-name"),
    # Both terminals match "abc"; lark's lexer types it A (higher priority), so "abc!" fails.
    pytest.param('start: A | B "!"\nA.2: /[a-z]+/\nB: /[a-z]+/', ["abc"], ["abc!", ""], id="priority"),
    pytest.param('start: ESCAPED_STRING\n%import common.ESCAPED_STRING', ['""', '"a\\"b"', '"\\\\"'],
                 ['"a\\"', '"a"b"', '"\n"'], id="escaped-string"),
    pytest.param('start: x+\nx: C_COMMENT | "a"\n%import common.C_COMMENT', ["/* x */a", "a/**/"], ["/* */ */"],
                 id="c-comment"),
]


# Grammars that are not LALR(1): generalised LR, the language lark's Earley parser accepts.
NOT_LALR = [
    pytest.param('start: e\ne: e "+" e | e "*" e | "(" e ")" | /[0-9]+/', ["1+2*3", "(1+2)*3+4", "7"],
                 ["1+", "1**2", "(1", ""], id="ambiguous-arithmetic"),
    pytest.param('start: a "x" "y" | b "x" "z"\na: "q"\nb: "q"', ["qxy", "qxz"], ["qxx", "qy", "q"],
                 id="needs-two-lookaheads"),
    pytest.param('start: s\ns: "a" | s s', ["a", "aa", "aaaaa"], ["", "b"], id="ambiguous-concatenation"),
    pytest.param('start: x\nx: "a" | y\ny: x | "b"', ["a", "b"], ["ab", ""], id="cyclic"),
    pytest.param('start: "if" c "then" s ["else" s]\ns: start | "go"\nc: "c"\n%ignore " "',
                 ["if c then go", "if c then if c then go else go"], ["if c then", "else go"], id="dangling-else"),
]


@pytest.mark.parametrize(("text", "accepted", "rejected"), NOT_LALR)
def test_grammars_that_are_not_lalr(text, accepted, rejected, byte_vocab):
    parser = lark.Lark(text)  # Earley: lark's parser for such grammars
    grammar = GrammarCompiler(byte_vocab).compile_grammar(text)
    assert not grammar.deterministic
    _check_table(parser, grammar, accepted, rejected)
    rng = random.Random(text)
    for _ in range(30):
        m = GrammarMatcher(grammar)
        out = []
        for step in range(40):
            allowed = m.allowed_token_ids().tolist()
            assert allowed, ("stuck", text, out)
            t = 256 if 256 in allowed and step > 8 else rng.choice(allowed)
            assert m.accept_token(t)
            if t == 256:
                break
            out.append(chr(t))
        if m.is_terminated():
            assert _lark_accepts(parser, "".join(out)), "".join(out)


def test_ambiguity_stays_small(byte_vocab):
    grammar = GrammarCompiler(byte_vocab).compile_grammar('start: e\ne: e "+" e | /[0-9]/')
    m = GrammarMatcher(grammar)
    assert m.accept_string("+".join("123456789" * 6))
    assert len(m._configs) <= 64 and m.is_completed()


@pytest.mark.parametrize(("text", "accepted", "rejected"), FEATURES)
def test_features(text, accepted, rejected, byte_vocab):
    parser = lark.Lark(text, parser="lalr")
    grammar = GrammarCompiler(byte_vocab).compile_grammar(text)
    _check_table(parser, grammar, accepted, rejected)


REFUSED = [
    pytest.param('start: A\n%declare A', UnsupportedFeatureError, r"terminal A .*%declare", id="declare"),
    pytest.param('start: S\nS: /".*?"/', UnsupportedFeatureError, r"terminal S \(line 2\) uses a lazy quantifier",
                 id="lazy"),
    pytest.param('start: A | B\nA.2: /a+/\nB: /a+b/', UnsupportedFeatureError,
                 r"terminal A \(line 2\) and terminal B \(line 3\) overlap.*split 'ab'", id="collision"),
    pytest.param('start: "a" | b', GrammarError, r"invalid Lark grammar: .*b", id="undefined-rule"),
    pytest.param('start: A\nA: /(?<=x)a/', UnsupportedFeatureError, r"terminal A.*lookbehind", id="lookbehind"),
    pytest.param('start: A\nA: /a*/', GrammarError, r"terminal A .*empty string", id="zero-width"),
    pytest.param('start: "a"\nstart: "b"', GrammarError, r"invalid Lark grammar", id="duplicate-rule"),
    pytest.param("start: A A\nA: /[a-z]+/", GrammarError, r"accepts no text", id="empty-language"),
    pytest.param("start: " + " | ".join(f'"w{i}"' for i in range(9000)), GrammarError, r"at most 32000", id="too-long"),
    # lark's loader writes out every combination: 2^30 alternatives (hours of the API server's time)
    pytest.param('start: "{" ' + " ".join(f'("," "k{i}")?' for i in range(30)) + ' "}"', UnsupportedFeatureError,
                 r"rule start \(line 1\) makes lark's loader write more than 4096 alternatives.*rules of their own",
                 id="optional-items"),
    pytest.param("start: x\nx: " + ' ("a" | "b" | "c")' * 9, UnsupportedFeatureError,
                 r"rule x \(line 2\) makes lark's loader write more than 4096", id="inline-groups"),
    # each use of a template is a rule of its own: 8 × 2^11 alternatives
    pytest.param("start: " + " ".join(f'_t{{"a{i}"}}' for i in range(8)) + "\n_t{x}: x "
                 + " ".join(f'("," "k{i}")?' for i in range(11)), UnsupportedFeatureError,
                 r"the grammar's rules make lark's loader write more than 16384", id="template-uses"),
]


@pytest.mark.parametrize(("text", "error", "match"), REFUSED)
def test_refusals_name_what_and_where(text, error, match, byte_vocab):
    with pytest.raises(error, match=match):
        GrammarCompiler(byte_vocab, cache_size=0).compile_grammar(text)
    if "overlap" not in match and "no text" not in match:  # found by the automata, built by the compile
        with pytest.raises(error, match=match):
            check_grammar(text)


def test_expansion_count_bounds_what_larks_loader_writes():
    """The count that guards lark's loader is never below the number of alternatives lark writes
    for a rule (random bodies of optional items, inline groups, repetitions and ranges), and equal
    to it for most (lark drops duplicate alternatives)."""
    from lark.load_grammar import load_grammar

    from dotvllm_plugin.grammar.lark import _expansion_count

    rng = random.Random(5)

    def body(depth=0):
        parts = []
        for _ in range(rng.randint(1, 4)):
            k = rng.random()
            if k < 0.3 or depth > 2:
                parts.append(rng.choice(['"a"', '"b"', "x", "y"]))
            elif k < 0.5:
                parts.append(f"({body(depth + 1)})" + rng.choice(["?", "*", "+", "", "~2", "~1..3"]))
            elif k < 0.65:
                parts.append(f"[{body(depth + 1)}]")
            elif k < 0.85:
                parts.append(f"({body(depth + 1)} | {body(depth + 1)})" + rng.choice(["", "?"]))
            else:
                parts.append(rng.choice(['"c"?', "x*", "y+"]))
        return " ".join(parts)

    compared = equal = 0
    while compared < 150:
        loaded, _ = load_grammar(f'start: {body()}\nx: "x"\ny: "y"\n', "<g>", None, False)
        tree = next(t for name, _, t, _ in loaded.rule_defs if str(name) == "start")
        ours = _expansion_count(tree, 10**9)
        if ours > 2000:
            continue
        try:
            _, rules, _ = loaded.compile(["start"], set())
        except lark.exceptions.GrammarError:  # lark refuses alternatives it wrote twice
            continue
        written = sum(1 for r in rules if r.origin.name == "start")
        assert ours >= written
        compared += 1
        equal += ours == written
    assert equal > compared // 2


def test_masks_allow_only_tokens_accepted_where_readings_outnumber_the_cap(tekken_vocab):
    """Optional items that share a comma and a first letter: after ``,q`` the parser has one
    reading per item (100, more than the 64 followed). Readings are dropped only once a token is
    read, so every token the mask allows is accepted (dropping them after the ``q`` byte of a
    token ``qi`` refused a token the mask had allowed), and a text read at once keeps them all."""
    import itertools

    from dotvllm_plugin.pushdown import MAX_CONFIGS

    words = ["q" + "".join(p) for p in itertools.product("abcdefghij", repeat=2)]
    text = ('start: "[" "x" ' + " ".join(f"o{i}" for i in range(len(words))) + ' "]"\n'
            + "".join(f'o{i}: ("," "{w}")?\n' for i, w in enumerate(words)))
    grammar = GrammarCompiler(tekken_vocab, cache_size=0).compile_grammar(text)
    parser = lark.Lark(text)  # not LALR(1): the language is Earley's
    bitmask = np.zeros((1, (tekken_vocab.size + 31) // 32), dtype=np.int32)
    checked = 0
    for prefix in ("[x", "[x,", "[x,q", "[x,qaa,", "[x,qaa,q"):
        m = GrammarMatcher(grammar)
        assert m.accept_string(prefix) and len(m._configs) <= MAX_CONFIGS
        m.fill_next_token_bitmask(bitmask)
        allowed = np.flatnonzero(np.unpackbits(bitmask[0].view(np.uint8), bitorder="little")[: tekken_vocab.size])
        for t in allowed:
            assert m.copy().accept_token(int(t)), (prefix, tekken_vocab.token_bytes[t])
            checked += 1
    assert checked > 100
    for w in ("qab", "qgj", "qjj"):
        assert _lark_accepts(parser, f"[x,{w}]")
        m = GrammarMatcher(grammar)
        assert m.accept_string(f"[x,{w}]") and m.is_completed(), w


def test_regular_equivalents_lex_as_lark_does():
    """lark's lexer takes the *first* match of the lazy originals; ours takes the longest match of
    the rewrite: they must agree on every sampled text."""
    import re

    rng = random.Random(7)
    for lazy, regular in REGULAR_EQUIVALENTS.items():
        opener = '"' if lazy.startswith('"') else "/*"
        for _ in range(3000):
            s = opener + "".join(rng.choice('"\\ab*/\n') for _ in range(rng.randint(0, 9)))
            m = re.match(lazy, s)
            longest = next((s[:i] for i in range(len(s), 0, -1) if re.fullmatch(regular, s[:i])), None)
            assert (m.group(0) if m else None) == longest, (lazy, s)


def test_nesting_1000_deep(byte_vocab):
    grammar = GrammarCompiler(byte_vocab).compile_grammar(JSON)
    m = GrammarMatcher(grammar)
    assert m.accept_string("[" * 1000 + "1")
    assert not m.is_completed()
    assert m.stack_depth > 1000
    assert m.accept_string("]" * 1000)
    assert m.is_completed()
    assert lark.Lark(JSON, parser="lalr").parse("[" * 1000 + "1" + "]" * 1000)


def test_stack_bound_is_enforced(byte_vocab):
    from dotvllm_plugin.grammar.lark import lark_to_ir
    from dotvllm_plugin.pushdown import compile_pushdown

    grammar = compile_pushdown(lark_to_ir(JSON), byte_vocab, max_stack_depth=40)
    m = GrammarMatcher(grammar)
    assert m.accept_string("[" * 30)
    assert not m.accept_string("[" * 20)  # past the bound: refused, state unchanged
    allowed = set(m.allowed_token_ids().tolist())
    assert ord("1") in allowed and ord("]") in allowed
    # What was computed near the bound is not reused for stacks far from it, nor the reverse.
    for prefix in ("[", "[" * 38, "[[", "[" * 39):
        m = GrammarMatcher(grammar)
        assert m.accept_string(prefix)
        allowed = set(m.allowed_token_ids().tolist())
        for t in range(256):
            assert m.copy().accept_token(t) == (t in allowed), (len(prefix), chr(t))


def test_mask_agrees_with_accept_token(real, compiled):
    """Every token the mask allows is accepted, every other one refused (sampled)."""
    rng = random.Random(3)
    grammar = compiled["json"]
    m = GrammarMatcher(grammar)
    for prefix in ['{"a', '{"a": [1, 2', '{"a": tr', "[", '{"k": "v"}']:
        m.reset()
        assert m.accept_string(prefix)
        allowed = set(m.allowed_token_ids().tolist())
        sample = rng.sample(range(real.vocab.size), 400) + sorted(allowed)[:400]
        for t in sample:
            c = m.copy()
            assert c.accept_token(t) == (t in allowed), (prefix, real.vocab.token_bytes[t])


def test_a_cached_mask_fills_any_row_of_a_wider_bitmask(real, compiled):
    """A mask served from the cache (copied in C into the row asked for) fills exactly that row:
    the mask's words, zeros past them (a model's wider vocabulary), the other rows untouched; a
    bitmask C cannot write into (a strided view, int64) gets the same row the general way. So does
    a mask computed for the fill (the cache emptied before it)."""
    grammar = compiled["json"]
    W = grammar.words
    m = GrammarMatcher(grammar)
    for prefix in ['{"a', '{"a": [1, 2', '{"a": tr']:
        m.reset()
        assert m.accept_string(prefix)
        want = m._current_row().copy()  # (computed, so cached: the fills below are hits)
        assert grammar.cached_mask_into(*m._configs[0], np.zeros((1, W), dtype=np.int32), 0) is not None
        for make, index in ((lambda: np.full((3, W + 5), -1, dtype=np.int32), 2),
                            (lambda: np.full((2, W), 7, dtype=np.int32), 0),
                            (lambda: np.full((4, 2 * (W + 5)), -1, dtype=np.int32)[::2, ::2], 1),
                            (lambda: np.full((2, W + 5), -1, dtype=np.int64), 1)):
            for cached in (True, False):
                if not cached:
                    grammar._masks.clear()
                out = make()
                before = out.copy()
                m.fill_next_token_bitmask(out, index)
                assert np.array_equal(out[index, :W], want), (prefix, out.dtype, out.strides, cached)
                assert not out[index, W:].any()
                others = [i for i in range(out.shape[0]) if i != index]
                assert np.array_equal(out[others], before[others])

@pytest.mark.parametrize("name", ["json", "calls", "schema"])
def test_commits_after_a_mask_equal_commits_from_scratch(real, compiled, name):
    """A matcher that computed the mask reads a token's bit there instead of re-checking the end of
    its walk: along random walks it accepts and refuses exactly what a matcher that never computes
    a mask (every check from scratch) does, and both reach equal configurations."""
    rng = random.Random(5)
    # tokens that often walk the lexer but end a lexeme the parser cannot take (what the mask decides)
    pieces = {b"tr", b"fa", b"nu", b"t", b"1", b"-", b"e", b"\"", b"\"a", b"x", b"(", b"=", b",", b":", b" ", b"]",
              b"}"}
    tricky = [i for i, b in enumerate(real.vocab.token_bytes) if b in pieces]
    grammar = compiled.get(name) or real.compiler.compile_json_schema(
        {"type": "object", "properties": {"a": {"type": "string", "maxLength": 8}, "b": {"type": "array", "items": {
            "anyOf": [{"type": "integer"}, {"type": "string", "enum": ["x", "yy"]}, {"$ref": "#"}]}}},
         "required": ["a"]})
    for _ in range(4):
        masked, plain = GrammarMatcher(grammar), GrammarMatcher(grammar)
        for _ in range(40):
            allowed = masked.allowed_token_ids()
            allowed = [int(t) for t in allowed if t not in real.vocab.eos_token_ids]
            if not allowed:
                break
            for t in rng.sample(range(real.vocab.size), 20) + rng.sample(allowed, min(5, len(allowed))) + tricky:
                if t in real.vocab.eos_token_ids:
                    continue
                probe = masked.copy()  # (a copy computes from scratch: give it the row, as the matcher has it)
                probe._row_for, probe._row = masked._row_for, masked._row
                reference = plain.copy()
                assert probe.accept_token(t) == reference.accept_token(t), (name, real.vocab.token_bytes[t])
                assert probe._configs == reference._configs
            t = rng.choice(allowed)
            assert masked.accept_token(t) and plain.accept_token(t)
            assert masked._configs == plain._configs


def test_rollback_and_validate_tokens(byte_vocab):
    grammar = GrammarCompiler(byte_vocab).compile_grammar(ARITHMETIC)
    ids = list(b"(1+2)*3")
    m = GrammarMatcher(grammar)
    assert m.validate_tokens(ids + [ord(")")]) == len(ids)
    assert m.validate_tokens(ids) == len(ids)
    for t in ids:
        assert m.accept_token(t)
    row = m.allowed_token_ids().tolist()
    m.rollback(3)
    assert ord(")") in m.allowed_token_ids().tolist()
    assert m.accept_token(ord(")")) and m.accept_token(ord("*")) and m.accept_token(ord("3"))
    assert m.accept_token(ord("-"))
    m.rollback(1)
    assert m.allowed_token_ids().tolist() == row
    assert m.accept_token(256) and m.is_terminated()
    m.rollback(1)
    assert not m.is_terminated() and m.is_completed()
    with pytest.raises(ValueError, match="cannot roll back"):
        m.rollback(100)


def test_serialisation_round_trip(real, compiled):
    grammar = compiled["calls"]
    data = grammar.to_bytes()
    loaded = load_compiled(data, real.vocab)
    assert isinstance(loaded, PushdownGrammar)
    unpickled = pickle.loads(pickle.dumps(grammar))
    text = 'plot(x=[1, 2.5], title="a", f(g()), true)'
    for g in (loaded, unpickled):
        m = GrammarMatcher(g)
        assert m.accept_string(text) and m.is_completed()
        mask = np.zeros((1, (real.vocab.size + 31) // 32), dtype=np.int32)
        m.fill_next_token_bitmask(mask)
        ref = np.zeros_like(mask)
        GrammarMatcher(grammar).copy().fill_next_token_bitmask(ref)
    with pytest.raises(GrammarError.__mro__[1], match="truncated|corrupt"):
        load_compiled(data[:-7], real.vocab)


REGULAR = {"sql": SQL, **{p.id: p.values[0] for p in FEATURES if p.id != "inlined-rule"}}


@pytest.mark.parametrize("name", sorted(REGULAR))
def test_a_grammar_without_nesting_compiles_to_its_exact_dfa(name, byte_vocab):
    """The DFA of a regular grammar accepts exactly what the pushdown matcher accepts (same
    greedy lexing), and everything it completes parses with lark."""
    from dotvllm_plugin.grammar.lark import lark_to_ir
    from dotvllm_plugin.pushdown import compile_pushdown

    text = REGULAR[name]
    dfa = GrammarCompiler(byte_vocab).compile_grammar(text)
    assert isinstance(dfa, CompiledGrammar)
    pushdown = compile_pushdown(lark_to_ir(text), byte_vocab)
    parser = lark.Lark(text, parser="lalr")
    rng = random.Random(name)
    alphabet = sorted(set(text) | set("0123456789 ,'=<>*abcxyz"))
    for _ in range(400):
        walk = GrammarMatcher(dfa)
        out = []
        for step in range(30):  # half random walks over the DFA's masks, half random strings
            allowed = walk.allowed_token_ids().tolist() if rng.random() < 0.5 else [ord(c) for c in alphabet]
            t = rng.choice(allowed)
            if t == 256:
                break
            out.append(chr(t))
            if rng.random() < 0.1:
                break
        s = "".join(out)
        a, b = GrammarMatcher(dfa), GrammarMatcher(pushdown)
        got_a, got_b = a.accept_string(s), b.accept_string(s)
        assert got_a == got_b, (name, s)
        if got_a:
            assert a.is_completed() == b.is_completed(), (name, s)
            assert a.allowed_token_ids().tolist() == b.allowed_token_ids().tolist(), (name, s)
            if a.is_completed():
                assert _lark_accepts(parser, s), (name, s)


def test_a_one_terminal_grammar_is_a_dfa(byte_vocab):
    c = GrammarCompiler(byte_vocab)
    g = c.compile_grammar("start: /[0-9]{2,3}/")
    assert isinstance(g, CompiledGrammar)
    m = GrammarMatcher(g)
    assert m.accept_string("12") and m.is_completed() and not m.accept_string("345")


def test_byte_vocabulary_of_other_sizes():
    """Masks are exact for vocabularies whose size is not a multiple of 32."""
    for extra in range(5):
        tokens = [bytes([i]) for i in range(256)] + [b"ab", b"[1"] + [b"zz"] * extra + [None]
        vocab = Vocabulary(tokens, eos_token_ids=[len(tokens) - 1])
        g = GrammarCompiler(vocab).compile_grammar(JSON)
        m = GrammarMatcher(g)
        allowed = set(m.allowed_token_ids().tolist())
        assert 256 + 1 in allowed and 256 not in allowed and len(tokens) - 1 not in allowed
        assert max(allowed) < len(tokens)


def test_lexer_product_in_c_matches_the_python_reference(monkeypatch):
    """Contextual lexers built in C (``_cwalk.product``, and ``_cwalk.lexer_chosen`` for longest-match
    lexing) equal the Python loop's, array for array, on the lark grammars here and on JSON Schema
    grammars (compound lexemes), built at compile time and on first visit."""
    from test_json_schema_rules import corpus_grammars

    from dotvllm_plugin import pushdown
    from dotvllm_plugin.grammar.lark import lark_to_ir

    if pushdown._cwalk is None:
        pytest.skip("the C extension is not built")
    corpus = corpus_grammars(40)  # empty where the corpus is not beside the repository
    grammars = [lark_to_ir(text) for text in (JSON, ARITHMETIC, SQL)] + corpus
    monkeypatch.setattr(pushdown, "LAZY_MIN_LEXERS", 1 << 30)  # every lexer at compile time
    compared = 0
    for ir in grammars:
        try:
            fast = pushdown.pushdown_tables(ir)
        except GrammarError:
            continue
        monkeypatch.setattr(pushdown, "USE_C_PRODUCT", False)
        slow = pushdown.pushdown_tables(ir)
        monkeypatch.setattr(pushdown, "USE_C_PRODUCT", True)
        # (the walks' byte classes, and the reach sets computed from them, come with lexers built in
        # C only; tested against a first visit's in test_json_schema_engine)
        arrays = {k: v for k, v in fast["arrays"].items() if not k.startswith(("lex_wc_", "lex_reach_"))}
        assert arrays.keys() == slow["arrays"].keys()
        for k, v in arrays.items():
            assert np.array_equal(v, slow["arrays"][k]), (ir.source[:80], k)
        compared += 1
    assert compared >= 3 + (7 if corpus else 0)
    # built on first visit (each lexer laid after the others: offsets)
    monkeypatch.setattr(pushdown, "LAZY_MIN_LEXERS", 1)
    vocab = Vocabulary([bytes([i]) for i in range(256)] + [None], eos_token_ids=[256])
    lazy = 0
    for ir in corpus:
        built = []
        for c_product in (True, False):
            monkeypatch.setattr(pushdown, "USE_C_PRODUCT", c_product)
            try:
                g = pushdown.compile_pushdown(ir, vocab)
                g._build_all()
            except GrammarError:
                break
            built.append(g)
        if len(built) < 2:
            continue
        fast, slow = built
        assert fast._lexer_lo == slow._lexer_lo and fast._chosen == slow._chosen
        for lexer, (trans, chosen) in fast._blocks.items():
            assert np.array_equal(trans, slow._blocks[lexer][0]) and np.array_equal(chosen, slow._blocks[lexer][1])
        lazy += fast.n_lexers
    assert lazy >= (100 if corpus else 0), lazy


@pytest.mark.parametrize("c_tables", [True, False])
def test_longest_match_lexer_in_c_on_random_members(c_tables, monkeypatch):
    """``_cwalk.lexer_chosen`` (the product over live members, and each state's terminal) equals the
    Python loop's lexer on random member automata: several accepting at once (compounds, asked in
    state order), ignored members (no compound), members in any lexing order, an offset; with the
    members' class tables of the C byte classes (int64) and of the numpy ones (int32). The walks'
    byte classes it makes from its class-space table are ``_cwalk.byte_classes``' of the lexer."""
    from dotvllm_plugin import pushdown
    from dotvllm_plugin.grammar.ir import Terminal
    from dotvllm_plugin.regex import ByteDFA, automaton

    if pushdown._cwalk is None:
        pytest.skip("the C extension is not built")
    monkeypatch.setattr(automaton, "USE_C_TABLES", c_tables)
    rng = np.random.default_rng(7)
    for case in range(300):
        n_terms = int(rng.integers(1, 7))
        dfas = []
        for _ in range(n_terms):
            n = int(rng.integers(1, 6))
            bytes_used = 97 + rng.choice(6, size=int(rng.integers(1, 5)), replace=False)
            trans = np.full((n, 256), -1, dtype=np.int32)
            for b in bytes_used:  # (a few bytes shared by the members, dead in many states)
                trans[:, b] = np.where(rng.random(n) < 0.6, rng.integers(0, n, size=n), -1)
            # (half the members with a fresh initial state, as most terminals' automata have; the
            # other half may loop back to theirs, which the lexer's start must not: it is never
            # re-entered)
            if rng.random() < 0.5:
                trans = np.vstack([trans, trans[int(rng.integers(0, n))]])
                accepting = np.append(rng.random(n) < 0.5, False)
                initial = n
            else:
                accepting = rng.random(n) < 0.5
                accepting[0] = False
                initial = 0
            dfas.append(pushdown._with_classes(ByteDFA(transitions=trans, accepting=accepting, initial=initial)))
        terms = tuple(Terminal(f"T{i}", "", priority=int(rng.integers(0, 3))) for i in range(n_terms))
        members = sorted(rng.choice(n_terms, size=int(rng.integers(1, n_terms + 1)), replace=False).tolist())
        ignore = (rng.random(n_terms) < 0.2).tolist()
        offset = int(rng.integers(0, 50))
        built = []
        for c_product in (True, False):
            monkeypatch.setattr(pushdown, "USE_C_PRODUCT", c_product)
            compounds = pushdown._Compounds(n_terms, ignore)
            classes: list = []
            trans, chosen = pushdown._build_lexer(members, terms, dfas, False, compounds, offset=offset,
                                                  walk_classes=classes)
            built.append((trans, chosen, compounds.members))
            assert len(classes) == c_product, case
            if classes:
                rows, bc, n_cls = classes[0]
                want = pushdown._cwalk.byte_classes(np.ascontiguousarray(trans), offset, np.ascontiguousarray(chosen))
                assert (rows, bc, n_cls) == want, case
        (ft, fc, fm), (st_, sc, sm) = built
        assert ft.dtype == st_.dtype and fc.dtype == sc.dtype, case
        assert np.array_equal(ft, st_) and np.array_equal(fc, sc) and fm == sm, case


def test_lexer_start_is_never_re_entered(monkeypatch):
    """A member automaton that loops back to its initial state (``(ab)*c`` minimised): after ``ab``
    the lexer is mid-lexeme, not at a lexeme start, in the C products (``_cwalk.product`` for lark's
    lexing, ``_cwalk.lexer_chosen`` for longest match) as in the Python loop."""
    from dotvllm_plugin import pushdown
    from dotvllm_plugin.grammar.ir import Terminal
    from dotvllm_plugin.regex import ByteDFA

    trans = np.full((3, 256), -1, dtype=np.int32)
    trans[0, ord("a")], trans[1, ord("b")], trans[0, ord("c")] = 1, 0, 2
    dfa = pushdown._with_classes(ByteDFA(transitions=trans, accepting=np.array([False, False, True]), initial=0))
    for lark_fidelity in (True, False):
        built = []
        for c_product in ((True, False) if pushdown._cwalk is not None else (False,)):
            monkeypatch.setattr(pushdown, "USE_C_PRODUCT", c_product)
            compounds = None if lark_fidelity else pushdown._Compounds(1, [False])
            built.append(pushdown._build_lexer([0], (Terminal("A", "(ab)*c"),), [dfa], lark_fidelity, compounds))
        for lex_trans, chosen in built:
            a, b, c = (lex_trans[:, ord(x)] for x in "abc")
            after_ab = b[a[0]]
            assert after_ab > 0 and not (lex_trans == 0).any()  # a state of its own
            assert a[after_ab] == a[0] and c[after_ab] == c[0] and chosen[c[0]] == 0 and chosen[after_ab] == -1
        assert all(np.array_equal(x[0], built[0][0]) and np.array_equal(x[1], built[0][1]) for x in built)


def test_longest_match_lexer_in_c_refuses_malformed_members():
    """``_cwalk.lexer_chosen`` checks what it reads: classes set, one position and id per member,
    positions in range, arrays of the right sizes and targets inside their member."""
    from dotvllm_plugin import pushdown
    from dotvllm_plugin.regex import ByteDFA

    if pushdown._cwalk is None:
        pytest.skip("the C extension is not built")
    trans = np.full((2, 256), -1, dtype=np.int32)
    trans[0, 97] = 1
    good = pushdown._with_classes(ByteDFA(transitions=trans, accepting=np.array([False, True]), initial=0))
    assert pushdown._cwalk.lexer_chosen([good], [0], [5], 0, 100) is not None
    bad_target = trans.copy()
    bad_target[0, 98] = 7
    cases = [
        ([ByteDFA(transitions=trans, accepting=np.array([False, True]), initial=0)], [0], [5]),  # no classes
        ([good], [1], [5]),  # a position past the members
        ([good], [0, 0], [5]),  # not one per member
        ([pushdown._with_classes(ByteDFA(transitions=bad_target, accepting=np.array([False, True]), initial=0))], [0], [5]),
        ([ByteDFA(transitions=trans, accepting=np.array([False, True]), initial=3, classes=good.classes)], [0], [5]),
        ([ByteDFA(transitions=trans.astype(np.int64), accepting=np.array([False, True]), initial=0,
                  classes=good.classes)], [0], [5]),
    ]
    for members, order, ids in cases:
        with pytest.raises(ValueError):
            pushdown._cwalk.lexer_chosen(members, order, ids, 0, 100)


def _nests_reference(rules) -> bool:
    """A rule reachable from a symbol it holds other than first: one search per such symbol."""
    defined = {o for o, _ in rules}
    edges: dict = {}
    inner = []
    for o, e in rules:
        for i, s in enumerate(e):
            if s in defined:
                edges.setdefault(o, set()).add(s)
                if i > 0:
                    inner.append((o, s))
    for o, s in inner:
        seen, todo = {s}, [s]
        while todo:
            x = todo.pop()
            if x == o:
                return True
            for y in edges.get(x, ()):
                if y not in seen:
                    seen.add(y)
                    todo.append(y)
    return False


def test_nests_against_one_search_per_symbol():
    """pushdown.nests (strongly connected components) against the plain definition, on random
    rule sets: left recursion, nesting, cycles through several rules, rules only referenced."""
    from types import SimpleNamespace

    from dotvllm_plugin.grammar.ir import Rule
    from dotvllm_plugin.pushdown import nests

    rng = random.Random(4)
    seen = {True: 0, False: 0}
    for _ in range(600):
        names = [f"r{i}" for i in range(rng.randint(1, 9))]
        rules = []
        for o in names:
            for _ in range(rng.randint(1, 3)):
                rules.append((o, tuple(rng.choice(names + ["A", "B"]) for _ in range(rng.randint(0, 3)))))
        got = nests(SimpleNamespace(rules=[Rule(o, e) for o, e in rules]))
        assert got == _nests_reference(rules), rules
        seen[got] += 1
    assert min(seen.values()) > 100, seen


def test_joint_byte_classes_in_c_are_the_partition_of_the_numpy_reference(monkeypatch):
    """``pushdown._joint_classes`` through ``_cwalk.byte_classes``: the same partition of the bytes
    as the numpy reference (its own class numbering aside), each representative in its class, on
    random tables and on the terminal automata of the lark grammars here."""
    from dotvllm_plugin import pushdown, regex
    from dotvllm_plugin.grammar.lark import lark_to_ir

    if pushdown._cwalk is None:
        pytest.skip("the C extension is not built")
    rng = np.random.default_rng(3)
    cases = [[rng.integers(-1, 4, size=(rng.integers(1, 6), 256)).astype(np.int32) for _ in range(k)]
             for k in (1, 2, 3) for _ in range(20)]
    for text in (JSON, ARITHMETIC, SQL):
        ir = lark_to_ir(text)
        cases.append([pushdown._terminal_dfa(t).transitions for t in ir.terminals])
    for tables in cases:
        fast, fast_rep = pushdown._joint_classes(tables)
        # from the tables' own classes (some unknown): the same arrays
        own = [None if i % 3 == 2 else regex.byte_classes(t)[1] for i, t in enumerate(tables)]
        refined, refined_rep = pushdown._joint_classes(tables, own)
        assert np.array_equal(refined, fast) and np.array_equal(refined_rep, fast_rep)
        monkeypatch.setattr(pushdown, "_cwalk", None)
        slow, slow_rep = pushdown._joint_classes(tables)
        monkeypatch.undo()
        same = fast[:, None] == fast[None, :]
        assert np.array_equal(same, slow[:, None] == slow[None, :])
        assert len(fast_rep) == len(slow_rep) and np.array_equal(fast[fast_rep], np.arange(len(fast_rep)))


#: JSON schemas for the probe test: longest-match lexing with lexemes several terminals type (an
#: enum string that is also a free string), nesting, optional properties.
PROBE_SCHEMAS = [
    {"type": "object", "properties": {"a": {"anyOf": [{"enum": ["ab", "cd"]}, {"type": "string"}]},
                                      "b": {"type": "array", "items": {"$ref": "#"}}}},
    {"type": "array", "items": {"anyOf": [{"type": "integer"}, {"enum": [1, 2, "x"]}, {"$ref": "#"}]}},
]


#: A JSON schema whose grammar is LALR(1) (one configuration: the C step's case).
DETERMINISTIC_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "n": {"type": "integer"},
                                                         "kids": {"type": "array", "items": {"$ref": "#"}}},
                        "required": ["name"]}


def _probe_cases(grammar, rng, stacks):
    """(stack, pos, new, term) cases over the stacks met: every terminal, $END and compound, on the
    stack itself and on what feeding terminals to it left (popped positions, pushed states), as a
    mask computation asks."""
    from dotvllm_plugin import pushdown

    compounds = grammar._compounds
    terms = list(range(grammar._end + 1)) + [compounds.base + k for k in range(len(compounds.members))]
    for stack in stacks:
        at = [(0, ())]
        for _ in range(12):
            pos, new = rng.choice(at)
            term = rng.choice(terms)
            yield stack, pos, new, term
            probe = pushdown._Probe(grammar, stack)
            probe.lr = None
            at += [x for x in probe.feed(pos, new, term) if x is not pushdown._ACCEPT]


def test_the_c_probe_equals_the_python_probe(byte_vocab, tekken_vocab, monkeypatch):
    """``_cwalk.lr_feed`` / ``lr_viable`` against :class:`_Probe`'s Python methods on the stacks
    of random walks (LALR and generalised LR grammars, JSON schemas with compound lexemes, a stack
    bound the walks reach): the same outcomes in the same order, the same answer, and the probe
    left alike (cells read, how deep, the unread rest). A compound terminal the tables do not know
    yet is handed back to the Python path."""
    from dotvllm_plugin import pushdown
    from dotvllm_plugin.grammar.lark import lark_to_ir

    if pushdown._cwalk is None or not hasattr(pushdown._cwalk, "lr_feed"):
        pytest.skip("the C extension is not built")
    grammars = [GrammarCompiler(byte_vocab, cache_size=0).compile_grammar(t) for t in (JSON, ARITHMETIC, SQL)]
    grammars += [GrammarCompiler(byte_vocab, cache_size=0).compile_grammar(p.values[0]) for p in NOT_LALR]
    grammars.append(pushdown.compile_pushdown(lark_to_ir(JSON), byte_vocab, max_stack_depth=12))
    grammars += [GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(s) for s in PROBE_SCHEMAS]
    grammars = [g for g in grammars if isinstance(g, PushdownGrammar)]  # (a regular one compiles to its DFA)
    assert len(grammars) >= 7 and sum(not g.deterministic for g in grammars) >= 3
    rng = random.Random(3)
    compared = {"feed": 0, "viable": 0, "outcomes": 0, "multi": 0, "compound": 0, "refused": 0}
    for g in grammars:
        stacks = []
        for walk in range(6):
            m = GrammarMatcher(g)
            if g.max_stack_depth == 12:  # (to the bound)
                assert m.accept_string("[" * (6 + walk))
            for _ in range(25):
                stacks += [st for _, st in m._configs]
                allowed = m.allowed_token_ids().tolist()
                allowed = [t for t in allowed if t not in g.vocabulary.eos_token_ids]
                if not allowed or not m.accept_token(rng.choice(allowed)):
                    break
        reaches = [r for r in {id(v): v for v in g._reach._values.values() if v is not None}.values()]
        for stack, pos, new, term in _probe_cases(g, rng, stacks):
            fast, slow = pushdown._Probe(g, stack), pushdown._Probe(g, stack)
            slow.lr = None
            assert fast.lr is not None
            got, want = fast.feed(pos, new, term), slow.feed(pos, new, term)
            assert got == want, (g.source[:60], pos, new, term)
            assert (fast.cells, fast.max_read, fast.stack) == (slow.cells, slow.max_read, slow.stack)
            compared["feed"] += 1
            compared["outcomes"] += bool(want)
            compared["multi"] += len(want) > 1
            compared["compound"] += term > g._end
            for reach in rng.sample(reaches, min(3, len(reaches))):
                fast, slow = pushdown._Probe(g, stack), pushdown._Probe(g, stack)
                slow.lr = None
                assert fast.viable(pos, new, reach) == slow.viable(pos, new, reach), (g.source[:60], pos, new, reach)
                # (the C probe stops at the first outcome: it may read less, never more)
                assert fast.max_read <= slow.max_read and fast.cells == slow.cells[: len(fast.cells)]
                compared["viable"] += 1
        # a compound made after the tables: not known to them, handed back
        cap = g._lr()
        pair = tuple(t for t in range(g._end) if not g._ignore[t])[-2:]
        fresh = g._compounds(pair) if g.kind == "json_schema" and pair not in g._compounds.ids else None
        if fresh is not None:
            got = pushdown._cwalk.lr_feed(cap, pushdown._Probe(g, stacks[0]), 0, (), fresh)
            assert got is NotImplemented
            assert g._lr() is not cap  # remade
            compared["refused"] += 1
    assert compared["feed"] > 3000 and compared["viable"] > 3000, compared
    assert min(compared.values()) > 0, compared


#: Single bytes, then multi-byte JSON pieces, then EOS: a mask row whose width is not a multiple of 8
#: words and whose last words hold only tokens of several bytes (rows ORed whole, to the last word).
_TAIL_PIECES = ["true", "false", "null", '{"', '"}', '":', '",', ', "', '": ', "[]", "{}", "[1", "1,", "0]", '"a', 'a"']
_TAIL_VOCAB = Vocabulary([bytes([i]) for i in range(256)]
                         + [(a + b).encode() for a in _TAIL_PIECES for b in ("", " ", '"', "1", ",")] + [None],
                         eos_token_ids=[256 + 5 * len(_TAIL_PIECES)])


def test_the_c_parser_steps_and_masks_as_the_python_one(byte_vocab, tekken_vocab, monkeypatch):
    """With the parser in C (probe, mask cache read, steps) and without it, two
    matchers of one grammar stepped together have equal masks at every step (random walks, a stack
    bound the walks reach), and stepping any token, allowed or not, from their configurations gives
    equal outcomes (the C step checks nothing the Python one checks otherwise; both refuse alike)."""
    from mask_walks import walk_together

    from dotvllm_plugin import pushdown
    from dotvllm_plugin.grammar.lark import lark_to_ir

    if not pushdown._C_PARSER:
        pytest.skip("the C extension is not built")
    use = lambda on: monkeypatch.setattr(pushdown, "USE_C_PARSER", on)  # noqa: E731
    makers = [
        lambda: GrammarCompiler(byte_vocab, cache_size=0).compile_grammar(JSON),
        lambda: GrammarCompiler(byte_vocab, cache_size=0).compile_grammar(ARITHMETIC),
        lambda: pushdown.compile_pushdown(lark_to_ir(JSON), byte_vocab, max_stack_depth=12),
        lambda: GrammarCompiler(tekken_vocab, cache_size=0).compile_grammar(JSON),
        lambda: GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(DETERMINISTIC_SCHEMA),
        lambda: GrammarCompiler(tekken_vocab, cache_size=0).compile_grammar(NOT_LALR[0].values[0]),
        lambda: GrammarCompiler(byte_vocab, cache_size=0).compile_grammar(NOT_LALR[4].values[0]),
        lambda: pushdown.compile_pushdown(lark_to_ir(NOT_LALR[0].values[0]), byte_vocab, max_stack_depth=12),
        lambda: GrammarCompiler(_TAIL_VOCAB, cache_size=0).compile_json_schema(PROBE_SCHEMAS[0]),
        lambda: GrammarCompiler(_TAIL_VOCAB, cache_size=0).compile_grammar(JSON),
    ] + [lambda s=s: GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(s) for s in PROBE_SCHEMAS]
    rng = np.random.default_rng(7)
    stepped = {"same": 0, "refused": 0, "deterministic, several bytes": 0, "generalised, allowed": 0,
               "one trusted": 0, "one trusted, generalised": 0}
    for k, make in enumerate(makers):
        for walk in range(4):
            fast, ref = GrammarMatcher(make()), GrammarMatcher(make())
            assert isinstance(fast.compiled, PushdownGrammar)
            at = [fast._configs]
            if fast.compiled.max_stack_depth == 12:  # to the bound, and a bracket past it refused
                deep = "[" if fast.compiled.deterministic else "("
                use(False)  # (the reference decides where the bound is)
                while fast.accept_string(deep):
                    assert ref.accept_string(deep)
                    at.append(fast._configs)
                assert len(at) > 4 and not ref.accept_string(deep)
            walk_together(fast.compiled.vocabulary, fast, ref, use, rng, 20, label=(k, walk))
            at.append(fast._configs)
            g = fast.compiled
            size = g.vocabulary.size
            for configs in at:
                bits = np.zeros(g.words, dtype=np.int32)
                for q, st in configs:
                    bits |= g.mask(q, st)
                allowed = np.flatnonzero(np.unpackbits(bits.view(np.uint8), bitorder="little")[:size])
                some = rng.choice(size, 40).tolist()
                some += rng.choice(allowed, min(40, len(allowed)), replace=False).tolist()
                for t in (range(size) if size <= 300 else some):
                    data = g.vocabulary.token_bytes[t]
                    if not data:
                        continue
                    got = []
                    for on in (True, False):
                        use(on)
                        got.append(g.step_all(configs, data, {}))
                    assert got[0] == got[1], (k, walk, data)
                    if len(configs) == 1 and t in allowed:  # (the matcher's step of a token its mask allows)
                        use(True)
                        one = g.step_trusted(*configs[0], data)
                        if one is not _FORK:
                            assert (() if one is None else (one,)) == got[1], (k, walk, data)
                            stepped["one trusted"] += 1
                            stepped["one trusted, generalised"] += not g.deterministic
                    stepped["same"] += 1
                    stepped["deterministic, several bytes"] += g.deterministic and len(data) > 1
                    stepped["generalised, allowed"] += not g.deterministic and bool(got[0])
                    stepped["refused"] += not got[0]
    assert stepped["same"] > 2000 and 0 < stepped["refused"] < stepped["same"] - 1000, stepped
    assert stepped["deterministic, several bytes"] > 200 and stepped["generalised, allowed"] > 80, stepped
    assert stepped["one trusted"] > 100 and stepped["one trusted, generalised"] > 20, stepped
