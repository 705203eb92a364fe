"""JSON Schema written as rules (grammar mode): the keyword table of ``test_json_schema`` through the
pushdown engine, what only rules can say (recursion without a depth bound, free-form values at any
depth, undeclared properties, ``\\uXXXX`` escapes), the request options, and the regex writer
behind the rules. Oracles: ``jsonschema`` and the table's labels, Python's ``re``."""

from __future__ import annotations

import contextlib
import json
import random
import re
import re._parser as sre

import jsonschema
import pytest
from dfa_helpers import equivalent
from test_json_schema import CASES, _is_json, _text, _unchecked_format, is_valid, ser

from dotvllm_plugin import GrammarCompiler, GrammarMatcher
from dotvllm_plugin.compiler import KINDS
from dotvllm_plugin.errors import GrammarError
from dotvllm_plugin.grammar.json_schema import (
    json_schema_to_ir,
    json_schema_to_regex,
    order_properties,
)
from dotvllm_plugin.grammar.json_schema.rules import unparse
from dotvllm_plugin.pushdown import PushdownGrammar


@pytest.fixture(scope="module")
def compiler(byte_vocab):
    return GrammarCompiler(byte_vocab)


def accepts(compiled, text: str) -> bool:
    m = GrammarMatcher(compiled)
    return m.accept_string(text) and m.is_completed()


@pytest.mark.parametrize("undeclared", [False, True], ids=["declared-only", "undeclared-allowed"])
@pytest.mark.parametrize("schema, valid, invalid", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_keyword_table_as_rules(compiler, schema, valid, invalid, undeclared):
    """Every keyword of the regex translator's table, written as rules, gives the same verdicts."""
    g = compiler.compile_ir(json_schema_to_ir(schema, mode="grammar", allow_undeclared_properties=undeclared))
    for inst in valid:
        text = _text(inst) if isinstance(inst, str) and inst.startswith(('"', "{", "[")) else ser(
            order_properties(inst, schema))
        assert accepts(g, text), f"valid instance rejected: {text}"
    for inst in invalid:
        text = _text(inst) if isinstance(inst, str) and inst.startswith(('"', "{", "[")) else ser(inst)
        if _is_json(text) and is_valid(schema, json.loads(text)) and not _unchecked_format(schema):
            continue  # a duplicate key: valid for jsonschema, refused by us on purpose
        assert not accepts(g, text), f"invalid instance accepted: {text}"


TREE = {"$defs": {"node": {"type": "object", "properties": {
    "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
    "required": ["v"], "additionalProperties": False}}, "$ref": "#/$defs/node"}


def _deep_tree(depth: int) -> dict:
    node = {"v": depth}
    for i in range(depth):
        node = {"v": i, "kids": [node]}
    return node


def test_recursion_has_no_depth_bound(real):
    g = real.compiler.compile_json_schema(TREE)
    assert isinstance(g, PushdownGrammar)
    assert accepts(g, ser(_deep_tree(200)))
    assert not accepts(g, ser(_deep_tree(200)).replace('"v":7,', '"v":"7",', 1))
    # the regex translator stops at its depth bound
    assert not re.fullmatch(json_schema_to_regex(TREE), ser(_deep_tree(5)))


def test_free_form_values_any_depth_and_escapes(real):
    schema = {"type": "object", "properties": {"meta": {}, "note": {"type": "string"}}, "required": ["meta"]}
    g = real.compiler.compile_json_schema(schema)
    deep = {"meta": {"a": [[[[{"b": [1, {"c": None}]}]]]]}, "note": "tab\there \u0001 \u00e9 \U0001F600"}
    assert accepts(g, json.dumps(deep, separators=(",", ":"), ensure_ascii=True))  # \uXXXX escapes
    assert accepts(g, ser(deep))
    assert not accepts(g, '{"meta":{"a":[1,]}}')
    assert not accepts(g, '{"note":"x"}')


def test_undeclared_properties_follow_jsonschema(real):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
              "required": ["a"]}
    default = real.compiler.compile_json_schema(schema)
    strict = real.compiler.compile_json_schema(schema, allow_undeclared_properties=False)
    extra = '{"a":1,"b":"x","zz":{"q":[true,null]},"k":2}'
    assert accepts(default, extra) and not accepts(strict, extra)
    assert accepts(default, '{"a":1}') and accepts(strict, '{"a":1}')
    for bad in ['{"a":1,"a":2}', '{"a":1,"b":2}', '{"a":1,"zz":1,"b":"x","zz":2}', '{"zz":1}']:
        assert not accepts(default, bad), bad
    closed = real.compiler.compile_json_schema({**schema, "additionalProperties": False})
    assert not accepts(closed, extra)


@pytest.mark.parametrize("lazy", [False, True], ids=["built-at-compile", "built-on-first-use"])
def test_undeclared_keys_are_cut_by_value_not_spelling(byte_vocab, monkeypatch, lazy):
    """The undeclared-key terminal leaves out the declared names however a key spells them (``\\/``
    for ``/``, short escapes); other keys stay open. Oracle: ``jsonschema`` on the parsed document."""
    import dotvllm_plugin.pushdown as pd

    monkeypatch.setattr(pd, "LAZY_MIN_LEXERS", 0 if lazy else 10**9)
    schema = {"type": "object", "properties": {n: {"type": "integer"} for n in ["a/b", 'q"', "tab\t", "é"]}}
    ir = json_schema_to_ir(schema)
    assert [t.exclude for t in ir.terminals if t.exclude] == [tuple(sorted(schema["properties"]))]
    g = GrammarCompiler(byte_vocab).compile_ir(ir)
    assert isinstance(g, PushdownGrammar) and ("lexer_members" in g.arrays) == lazy
    spellings = ["a/b", "a\\/b", 'q\\"', "tab\\t", "é", "a/c", "a\\/c", "a/bb", "q", "tab", "e", "\\/"]
    # the compile worker sends grammars as bytes: the exclusions travel with them
    for compiled in (g, PushdownGrammar.from_bytes(g.to_bytes(), byte_vocab)):
        for key in spellings:
            text = '{"' + key + '":"x"}'
            valid = jsonschema.Draft202012Validator(schema).is_valid(json.loads(text))
            assert accepts(compiled, text) == valid, text

def test_request_options_reach_the_compile(byte_vocab):
    compiler = GrammarCompiler(byte_vocab)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    kind = KINDS["json_schema"]
    spaced = '{ "a": 1 }'
    assert accepts(kind.compile(compiler, schema, {"whitespace_pattern": "[ ]?"}), spaced)
    assert not accepts(kind.compile(compiler, schema, {"whitespace_pattern": "[ ]?", "disable_any_whitespace": True}),
                       spaced)
    assert accepts(kind.compile(compiler, schema, {}), '{"a":1,"b":2}')
    assert not accepts(kind.compile(compiler, schema, {"disable_additional_properties": True}), '{"a":1,"b":2}')


def _random_walk(compiled, vocab, rng, steps=300):
    eos = set(vocab.eos_token_ids)
    m = GrammarMatcher(compiled)
    out = b""
    for _ in range(steps):
        allowed = m.allowed_token_ids().tolist()
        assert allowed, ("stuck", out)
        ends = [t for t in allowed if t in eos]
        if ends and rng.random() < 0.2:
            return out
        short = [t for t in allowed if t not in eos and len(vocab.token_bytes[t]) <= 2]
        closing = [t for t in short if set(vocab.token_bytes[t]) <= set(b'"]}')]
        pool = closing if closing and rng.random() < 0.3 else short or allowed
        t = rng.choice(pool)
        if t in eos:
            return out
        assert m.accept_token(t)
        out += vocab.token_bytes[t]
    return None


@pytest.mark.parametrize("name", ["tree", "free", "open"])
def test_random_walks_validate(real, name):
    """Every document a random walk over the masks finishes validates (jsonschema)."""
    schema = {
        "tree": TREE,
        "free": {"type": "object", "properties": {"x": {}, "y": {"type": "array", "items": {}}}, "required": ["x"]},
        "open": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0}, "tags": {
            "type": "array", "items": {"enum": ["a", "b"]}}}, "required": ["id"]},
    }[name]
    g = real.compiler.compile_json_schema(schema)
    validator = jsonschema.validators.validator_for(schema)(schema)
    rng = random.Random(f"{real.name}-{name}")
    finished = 0
    for _ in range(12):
        out = _random_walk(g, real.vocab, rng)
        if out is None:
            continue
        data = json.loads(out.decode("utf-8"))
        assert validator.is_valid(data), out
        finished += 1
    assert finished >= 3


def _corpus_regexes():
    """Regexes the translator writes for a few kinds of schema (placeholder-free)."""
    from test_json_schema import CASES as table

    out = []
    for _, schema, _, _ in table:
        with contextlib.suppress(GrammarError):  # refused schemas write no regex
            out.append(json_schema_to_regex(schema))
    return out


def test_unparse_keeps_the_language():
    """Writing Python's parse tree back gives a regex with the same matches (``re`` as oracle)."""
    rng = random.Random(0)
    alphabet = '{}[]:,"\\ab01-.eE+ntrufl\u00e9\U0001F600'
    checked = 0
    for regex in _corpus_regexes():
        again = unparse(sre.parse(regex))
        a, b = re.compile(regex), re.compile(again)
        samples = [ser(x) for x in (0, 1.5, -2, "a", "", None, True, [1], {"a": 1})]
        samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(200)]
        for s in samples:
            assert bool(a.fullmatch(s)) == bool(b.fullmatch(s)), (regex, again, s)
        checked += 1
    assert checked > 20


def test_lexers_built_on_first_visit_and_serialised(real, monkeypatch):
    """A large schema grammar builds its contextual lexers when a text first reaches them (here
    the threshold is lowered to every grammar); a serialised copy (what compile workers send)
    builds its own and gives the same masks."""
    from dotvllm_plugin import pushdown
    from dotvllm_plugin.compiler import load_compiled

    monkeypatch.setattr(pushdown, "LAZY_MIN_LEXERS", 0)
    schema = {"$defs": TREE["$defs"], "type": "object", "required": ["a"],
              "properties": {"a": {"type": "integer"}, "t": {"$ref": "#/$defs/node"}}}
    g = GrammarCompiler(real.vocab).compile_json_schema(schema)  # not the shared compiler's cache
    assert isinstance(g, PushdownGrammar)
    built = sum(lo >= 0 for lo in g._lexer_lo)
    assert built < g.n_lexers
    copy = load_compiled(g.to_bytes(), real.vocab)
    assert sum(lo >= 0 for lo in copy._lexer_lo) == 0
    text = '{"a":12,"t":{"v":1,"kids":[{"v":2}]},"x":[{"y":"\\u00e9"}]}'
    for prefix in (text[:i] for i in range(0, len(text), 3)):
        m1, m2 = GrammarMatcher(g), GrammarMatcher(copy)
        assert m1.accept_string(prefix) and m2.accept_string(prefix)
        assert (m1.allowed_token_ids() == m2.allowed_token_ids()).all(), prefix
    assert accepts(copy, text)
    assert sum(lo >= 0 for lo in copy._lexer_lo) > built


OVERLAPS = {
    # a free string in one branch, an enum value in the other: '"X"' is a lexeme of both
    "anyOf-string-enum": ({"anyOf": [
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False},
        {"type": "object", "properties": {"a": {"enum": ["X"]}, "b": {}}, "required": ["a", "b"],
         "additionalProperties": False}]},
        ['{"a":"X","b":1}', '{"a":"X"}', '{"a":"Y"}', '{"a":"Y","b":1}', '{"a":"X","b":[]}', '{"a":"XX","b":2}']),
    # an enum object beside a recursive one: '{"n":' starts either
    "anyOf-enum-recursive": ({"$defs": {"r": {"type": "object", "properties": {"n": {"anyOf": [
        {"type": "integer"}, {"$ref": "#/$defs/r"}]}}, "required": ["n"], "additionalProperties": False}},
        "anyOf": [{"enum": [{"n": 1}]}, {"$ref": "#/$defs/r"}]},
        ['{"n":1}', '{"n":2}', '{"n":{"n":1}}', '{"n":{"n":{"n":-3}}}', '{"n":"1"}', '{"n":{}}']),
}


@pytest.mark.parametrize("name", sorted(OVERLAPS))
def test_lexemes_with_several_readings(byte_vocab, name):
    """Where two terminals match one lexeme, the parser follows both readings: verdicts agree with
    jsonschema, and every mask along the valid texts equals what accept_token allows."""
    schema, texts = OVERLAPS[name]
    g = GrammarCompiler(byte_vocab).compile_ir(json_schema_to_ir(schema, mode="grammar"))
    assert isinstance(g, PushdownGrammar)
    validator = jsonschema.validators.validator_for(schema)(schema)
    for text in texts:
        assert accepts(g, text) == validator.is_valid(json.loads(text)), text
    for text in texts:
        if not validator.is_valid(json.loads(text)):
            continue
        m = GrammarMatcher(g)
        for ch in text.encode():
            allowed = set(m.allowed_token_ids().tolist())
            for t in range(256):
                probe = m.copy()
                assert probe.accept_token(t) == (t in allowed), (text, m, t)
            assert m.accept_token(ch)
        assert m.is_completed()


def corpus_grammars(every: int) -> list:
    """The grammar IR of every ``every``-th JSONSchemaBench corpus schema that compiles as rules
    (the corpus lies beside the repository, in ``../shared``); empty without the corpus."""
    import glob
    import os

    from dotvllm_plugin.compiler import REPEAT_CAPS
    from dotvllm_plugin.errors import CompilationTooLargeError

    corpus = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus", "jsonschemabench-dev")
    out = []
    for path in sorted(glob.glob(os.path.join(corpus, "*.json")))[::every]:
        with open(path) as f:
            doc = json.load(f)
        try:
            try:
                grammar = json_schema_to_ir(doc.get("schema", doc))
            except CompilationTooLargeError:  # a bound past the exact limit: as the compiler retries
                grammar = json_schema_to_ir(doc.get("schema", doc), repeat_cap=REPEAT_CAPS[0])
        except (GrammarError, CompilationTooLargeError):
            continue
        if grammar is not None and hasattr(grammar, "terminals"):
            out.append(grammar)
    return out


def test_terminal_trees_build_the_same_automata_as_their_text():
    """The translator hands each terminal's parse tree to the engine (no second parse of the text):
    on every 16th corpus schema, every terminal's automaton from its tree equals the one Python's
    parser reads from its regex text, state for state."""
    import numpy as np

    from dotvllm_plugin.regex import regex_to_dfa

    grammars = corpus_grammars(16)
    if not grammars:
        pytest.skip("the JSONSchemaBench corpus is not beside the repository")
    checked = 0
    for grammar in grammars:
        for t in grammar.terminals:
            if t.tree is None or len(t.regex) > 2000:
                continue
            a, b = regex_to_dfa(t.regex), regex_to_dfa(t.regex, tree=t.tree)
            assert a.initial == b.initial and np.array_equal(a.accepting, b.accepting), t.regex
            assert np.array_equal(a.transitions, b.transitions), t.regex
            checked += 1
    assert checked > 200


def test_code_point_set_algebra_equals_python_sets():
    """The translator's range-set operations (intersection by one merge pass, subtraction,
    normalisation) against Python sets of code points, on random range lists over a small
    universe, normalised or not."""
    from dotvllm_plugin.grammar.json_schema import text as T

    rng = random.Random(5)

    def ranges():
        out = []
        for _ in range(rng.randrange(0, 6)):
            lo = rng.randrange(0, 60)
            out.append((lo, lo + rng.randrange(-1, 8)))  # (lo, lo - 1) is an empty range
        return tuple(out) if rng.random() < 0.3 else T.normalize(out)

    def points(r):
        return {c for lo, hi in r for c in range(lo, hi + 1)}

    for _ in range(3000):
        a, b = ranges(), ranges()
        got = T.intersect(a, b)
        assert points(got) == points(a) & points(b), (a, b, got)
        assert got == T.normalize(got), (a, b, got)  # sorted, disjoint, non-adjacent
        assert points(T.subtract(a, b)) == points(a) - points(b), (a, b)
        comp = T.complement(a)  # (the universe above 70 is one range, up to the last code point)
        assert {c for lo, hi in comp for c in range(lo, min(hi, 69) + 1)} == set(range(70)) - points(a), a
        assert comp[-1][1] == T.MAX_CP and comp == T.normalize(comp), a


_PRIVATE_SCHEMA = {"type": "object", "properties": {"a": {"const": "x\U00100005"}}}


@pytest.mark.parametrize("given", [
    _PRIVATE_SCHEMA, json.dumps(_PRIVATE_SCHEMA), json.dumps(_PRIVATE_SCHEMA).encode(),
    json.dumps(_PRIVATE_SCHEMA, ensure_ascii=False), {"type": "object", "properties": {"\U0010FFFF": {}}},
], ids=["dict", "ascii-text", "bytes", "text", "key"])
def test_placeholder_code_points_in_a_schema_that_needs_rules_are_refused(given):
    """Plane-16 characters (the writer's placeholders) in a schema written as rules are refused,
    whether the schema comes as a dict, as JSON text with or without escapes, or as bytes."""
    from dotvllm_plugin.errors import UnsupportedFeatureError

    with pytest.raises(UnsupportedFeatureError, match="Supplementary Private Use Area-B"):
        json_schema_to_ir(given)
    json_schema_to_ir({"type": "object", "properties": {"a": {"const": "x\U0001F600"}}})  # other planes pass


def test_text_helpers_equal_their_per_character_definitions():
    """``literal``/``encode_text`` (one ``str.translate`` each) and ``encode_chars`` (a table) write
    every code point as ``_lit``/``encode_char`` do; ``_is_atom`` (a parenthesis scan by one regex)
    answers as the character loop it replaced, on random texts of parentheses, escapes and classes."""
    from dotvllm_plugin.grammar.json_schema import text as T

    for cp in [*range(0x300), 0x2028, 0xD7FF, 0xE000, 0xFFFF, 0x10000, 0x100000, 0x10FFFF]:
        assert T.literal(chr(cp)) == T._lit(cp), hex(cp)
        assert T.encode_text(chr(cp)) == T.encode_char(cp), hex(cp)
        assert T.encode_chars(chr(cp)) == [T.encode_char(cp)], hex(cp)
    assert T.encode_text('a"b\\c\n.é') == "".join(T.encode_char(ord(c)) for c in 'a"b\\c\n.é')
    assert T.encode_chars('a"b\\c\n.é') == [T.encode_char(ord(c)) for c in 'a"b\\c\n.é']

    def closes_at_end(r: str) -> bool:  # the loop _is_atom used for a text in parentheses
        depth = 0
        for i, c in enumerate(r):
            if c == "\\":
                continue
            if c == "(" and (i == 0 or r[i - 1] != "\\"):
                depth += 1
            elif c == ")" and r[i - 1] != "\\":
                depth -= 1
                if depth == 0 and i != len(r) - 1:
                    return False
        return True

    rng = random.Random(3)
    for _ in range(20000):
        r = "(" + "".join(rng.choice("()\\a[]|") for _ in range(rng.randrange(0, 9))) + ")"
        assert T._is_atom.__wrapped__(r) == closes_at_end(r), r


_UNIT_SCHEMAS = {
    "strings": {"type": "object", "properties": {"s": {"type": "string"}, "t": {"type": "string", "maxLength": 3},
                                                 "free": {}, "u": {"type": "array", "items": {"type": "string"}}}},
    "pattern": {"type": "object", "properties": {"p": {"type": "string", "pattern": "^(a|.)x$"}}},
    "recursive": TREE,
}


@pytest.mark.parametrize("schema", _UNIT_SCHEMAS.values(), ids=_UNIT_SCHEMAS.keys())
def test_string_units_read_once_change_no_language(schema, monkeypatch):
    """The writer reads a string's character units once per process: the grammar (rules, terminal
    languages, exclusions) is the one written from the full text."""
    from dotvllm_plugin.grammar.json_schema import rules
    from dotvllm_plugin.regex import regex_to_dfa

    with_units = json_schema_to_ir(schema, mode="grammar")
    monkeypatch.setattr(rules, "_UNITS", {})
    plain = json_schema_to_ir(schema, mode="grammar")
    assert with_units.rules == plain.rules
    assert len(with_units.terminals) == len(plain.terminals)
    for a, b in zip(with_units.terminals, plain.terminals):
        assert (a.name, a.exclude, a.nonempty) == (b.name, b.exclude, b.nonempty)
        assert equivalent(regex_to_dfa(a.regex, tree=a.tree), regex_to_dfa(b.regex)), (a.regex, b.regex)
        assert equivalent(regex_to_dfa(a.regex), regex_to_dfa(b.regex))


def test_a_unit_inside_a_class_becomes_an_alternation():
    from dotvllm_plugin.grammar.json_schema import rules
    from dotvllm_plugin.grammar.json_schema import text as T
    from dotvllm_plugin.regex import regex_to_dfa

    text = '"(?:' + T.PLAIN_CHAR + '|x)"'  # Python's parser reads (?:U|x) as the class [Ux]
    (t,) = rules.regex_to_grammar(text, {}).terminals
    assert equivalent(regex_to_dfa(t.regex, tree=t.tree), regex_to_dfa(text))


def test_a_run_is_written_alike_before_and_after_its_units_expand():
    """The writer writes a run's regex from its tree with the units' code points still in it (and
    expands the tree only for a new terminal): the text is the one of the expanded tree, with or
    without the writer's memo of class texts."""
    from dotvllm_plugin.grammar.json_schema import rules
    from dotvllm_plugin.regex import fastparse

    checked = 0
    for regex in _corpus_regexes():
        for cp, unit in sorted(rules._UNITS.items(), key=lambda kv: -len(kv[1])):
            regex = regex.replace(unit, cp)
        items = list(fastparse.parse(regex))
        if not any(rules.is_placeholder(ord(c)) for c in regex):
            continue
        expanded = rules.unparse(rules._expand(items))
        assert rules.unparse(items) == expanded
        assert rules.unparse(items, {}) == expanded
        checked += 1
    assert checked > 20


def _grammar_shape(grammar) -> tuple:
    """A grammar IR as plain data, its terminals' parse trees included."""
    def shape(x):
        if isinstance(x, sre.SubPattern):
            return ("SubPattern", x.state.flags, [shape(i) for i in x.data])
        if isinstance(x, (list, tuple)):
            return (type(x).__name__, [shape(i) for i in x])
        return x

    return (grammar.rules, grammar.terminals, [shape(t.tree) for t in grammar.terminals], grammar.start)


def _free_form_mutants(schema, rng: random.Random, n: int) -> list:
    """``schema`` with free-form values (``{}``, ``true``, an undeclared-properties object) put
    in at random places: sub-schemas replaced, properties added."""
    out = []
    for _ in range(n):
        doc = json.loads(json.dumps(schema))
        spots = [doc]
        stack = [doc]
        while stack:
            node = stack.pop()
            for v in (node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()):
                if isinstance(v, (dict, list)):
                    spots.append(v)
                    stack.append(v)
        for node in rng.sample(spots, min(3, len(spots))):
            free = rng.choice([{}, True, {"type": "object", "properties": {"k": {}}}, {"type": "array"}])
            if isinstance(node, dict) and isinstance(node.get("properties"), dict):
                node["properties"][f"free{rng.randrange(100)}"] = free
            elif isinstance(node, dict) and node:
                node[rng.choice(sorted(node))] = free
            elif isinstance(node, list) and node:
                node[rng.randrange(len(node))] = free
        out.append(doc)
    return out


def test_fixed_bodies_replayed_as_written(monkeypatch):
    """The free-form value's body is written once (:func:`rules.add_template`) and replayed in
    every grammar: the grammar (rules, terminals, their trees) is the one the writer writes from
    the text, on every 3rd corpus schema and on corpus schemas with free-form values put in."""
    import glob
    import os

    from dotvllm_plugin.grammar.json_schema import rules

    corpus = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus", "jsonschemabench-dev")
    schemas = []
    for path in sorted(glob.glob(os.path.join(corpus, "*.json")))[::3]:
        with open(path) as f:
            schemas.append(json.load(f)["schema"])
    if not schemas:
        pytest.skip("the JSONSchemaBench corpus is not beside the repository")
    rng = random.Random(5)
    schemas += [m for s in rng.sample(schemas, 60) for m in _free_form_mutants(s, rng, 3)]
    assert rules._TEMPLATES

    def grammars():
        out = []
        for schema in schemas:
            for options in ({}, {"mode": "grammar", "allow_undeclared_properties": False}):
                try:
                    out.append(_grammar_shape(json_schema_to_ir(schema, **options)))
                except Exception as e:  # noqa: BLE001 - a mutant may be malformed: the error is the reading
                    out.append(repr(e))
        return out

    replays = []
    real = rules._Writer.replay
    monkeypatch.setattr(rules._Writer, "replay", lambda self, t: replays.append(t) or real(self, t))
    replayed = grammars()
    assert len(replays) > 200
    monkeypatch.setattr(rules, "_TEMPLATES", {})
    assert grammars() == replayed
