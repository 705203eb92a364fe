"""The LALR(1) tables built in C (``_cwalk.lalr_packed``) against the Python reference
(``dotvllm_plugin.lalr.lalr_tables`` + ``pushdown._packed``): the same dict, array for array (dtype,
shape, values), the same state numbering, conflict order, rule codes and accepts lists; the same
error for an undefined symbol. On JSON Schema grammars of the corpus (every 8th by default;
``DOTVLLM_JSON_CORPUS=all`` all of them, ``=N`` every N-th, as tests/test_json_schema_corpus.py),
the Lark grammars of the other tests, and random context-free grammars."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from dotvllm_plugin import lalr, pushdown
from dotvllm_plugin.errors import GrammarError
from dotvllm_plugin.grammar.ir import Grammar, Rule, Terminal
from dotvllm_plugin.grammar.json_schema import json_schema_to_ir
from dotvllm_plugin.grammar.lark import lark_to_ir

from guided_cases import GRAMMAR as GUIDED_GRAMMAR
from test_grammar import ARITHMETIC, CALLS, FEATURES, JSON, NOT_LALR, SQL
from test_grammar_fuzz import _mutate

pytestmark = pytest.mark.skipif(not pushdown._C_LALR, reason="the C extension has no lalr_packed")

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "jsonschemabench-dev"
_SAMPLE = os.environ.get("DOTVLLM_JSON_CORPUS", "")
_EVERY = 1 if _SAMPLE == "all" else int(_SAMPLE) if _SAMPLE.isdigit() and int(_SAMPLE) > 0 else 8


def _tables(grammar: Grammar, c: bool, monkeypatch):
    """``_lalr_tables`` by one path: its dict, or the error it raised (type and message)."""
    monkeypatch.setattr(pushdown, "USE_C_LALR", c)
    try:
        return pushdown._lalr_tables(grammar)
    except Exception as e:  # noqa: BLE001 - compared below
        return (type(e), str(e))


def _assert_same(grammar: Grammar, monkeypatch) -> dict | tuple:
    c, ref = _tables(grammar, True, monkeypatch), _tables(grammar, False, monkeypatch)
    if isinstance(ref, tuple) or isinstance(c, tuple):
        assert c == ref
        return ref
    assert list(c) == list(ref)
    for key, want in ref.items():
        got = c[key]
        if isinstance(want, np.ndarray):
            assert isinstance(got, np.ndarray), key
            assert got.dtype == want.dtype and got.shape == want.shape, (key, got.dtype, got.shape, want.shape)
            assert np.array_equal(got, want), key
            assert got.flags.writeable == want.flags.writeable, key
        else:
            assert type(got) is type(want) and got == want, key
    return ref


def _with_c_path(grammar: Grammar) -> bool:
    """Whether the C function builds this grammar's tables (not declined to the Python path)."""
    term_names = [t.name for t in grammar.terminals]
    rules = list(dict.fromkeys((r.origin, tuple(r.expansion)) for r in grammar.rules))
    try:
        return pushdown._lalr_c(rules, term_names, grammar.start) is not None
    except ValueError:
        return True


def test_end_name_agrees():
    assert pushdown._LALR_END == lalr.END


def test_json_schema_corpus(monkeypatch):
    if not CORPUS.is_dir():
        pytest.skip("the JSONSchemaBench corpus is not here")
    compared = conflicts = 0
    for path in sorted(CORPUS.glob("*.json"))[::_EVERY]:
        try:
            grammar = json_schema_to_ir(json.loads(path.read_text())["schema"], mode="grammar")
        except Exception:  # noqa: BLE001 - only the grammars the translator makes
            continue
        ref = _assert_same(grammar, monkeypatch)
        assert isinstance(ref, dict), (path.name, ref)
        conflicts += len(ref["conf_codes"]) > 0
        compared += 1
    assert compared > 600 // _EVERY
    if _EVERY == 1:
        assert conflicts > 0  # (the corpus has schemas whose grammars are not LALR(1))


LARK = [JSON, ARITHMETIC, SQL, CALLS, GUIDED_GRAMMAR] + [p.values[0] for p in FEATURES + NOT_LALR]


@pytest.mark.parametrize("text", LARK)
def test_lark_grammars(text, monkeypatch):
    grammar = lark_to_ir(text)
    assert _with_c_path(grammar)
    ref = _assert_same(grammar, monkeypatch)
    assert isinstance(ref, dict)


def test_not_lalr_grammars_have_conflicts(monkeypatch):
    for p in NOT_LALR:
        ref = _assert_same(lark_to_ir(p.values[0]), monkeypatch)
        assert len(ref["conf_offsets"]) > 1, p.id


def test_mutated_lark_grammars(monkeypatch):
    rng = random.Random(11)
    compared = 0
    for _ in range(200):
        try:
            grammar = lark_to_ir(_mutate(rng.choice([JSON, ARITHMETIC, SQL, CALLS]), rng))
        except GrammarError:
            continue
        _assert_same(grammar, monkeypatch)
        compared += 1
    assert compared > 50


# -- random grammars -------------------------------------------------------------------------------

_ALPHABET = "abcXYZ_09éΩ"  # (names interleave terminals and rules when sorted; non-ASCII code points)


def _random_grammar(rng: random.Random, n_terms: int, n_nts: int, *, undefined: bool = False) -> Grammar:
    names: set[str] = set()
    while len(names) < n_terms + n_nts:
        names.add("".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 4))))
    names_l = sorted(names)
    rng.shuffle(names_l)
    terms, nts = names_l[:n_terms], names_l[n_terms:]
    p_nt = rng.choice([0.2, 0.4, 0.6])

    def symbol() -> str:
        return rng.choice(nts) if not terms or rng.random() < p_nt else rng.choice(terms)

    rules = []
    for a in nts:
        for _ in range(rng.randint(1, 4)):
            rules.append(Rule(a, tuple(symbol() for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 4, 6])))))
    for _ in range(rng.randint(0, 3)):  # left and right recursion, mutual recursion
        a, b = rng.choice(nts), rng.choice(nts)
        rules.append(Rule(a, (a, symbol())))
        rules.append(Rule(a, (symbol(), a)))
        rules.append(Rule(a, (b,)))
        rules.append(Rule(b, (symbol(), a, symbol())))
    if terms and n_terms > 40:  # wide first sets: lookahead sets over many words
        for a in rng.sample(nts, min(3, len(nts))):
            rules += [Rule(a, (t,)) for t in rng.sample(terms, rng.randint(n_terms // 3, n_terms))]
    if rng.random() < 0.3:
        rules.append(Rule(nts[0], ()))  # a nullable start symbol
    for _ in range(rng.randint(0, 4)):  # duplicate rules
        rules.insert(rng.randrange(len(rules) + 1), rng.choice(rules))
    if undefined:
        r = rng.randrange(len(rules))
        body = list(rules[r].expansion)
        body.insert(rng.randint(0, len(body)), rng.choice(["nowhere", "$root_" + nts[0], "Ωundefined"]))
        rules[r] = Rule(rules[r].origin, tuple(body))
    rng.shuffle(rules)
    terminals = [Terminal(t, "a") for t in terms]
    if terminals and rng.random() < 0.1:  # a terminal listed twice (check() refuses it; the tables take the last)
        terminals.insert(rng.randrange(len(terminals) + 1), rng.choice(terminals))
    return Grammar(terminals=tuple(terminals), rules=tuple(rules), start=nts[0])


@pytest.mark.parametrize("seed", range(6))
def test_random_grammars(seed, monkeypatch):
    rng = random.Random(seed)
    conflicts = nullable_start = 0
    far = set()  # the lookahead words reductions were found in (a terminal's bit: its rank among the names)
    for i in range(60):
        n_terms = rng.choice([1, 2, 3, 5, 8, 63, 64, 65, 100, 127, 128, 129, 200])
        grammar = _random_grammar(rng, n_terms, rng.randint(1, 12 if n_terms < 60 else 6))
        assert _with_c_path(grammar)
        ref = _assert_same(grammar, monkeypatch)
        assert isinstance(ref, dict)
        conflicts += len(ref["conf_offsets"]) > 1
        nullable_start += any(r.origin == grammar.start and not r.expansion for r in grammar.rules)
        names = [t.name for t in grammar.terminals]
        bit = {n: i for i, n in enumerate(sorted(set(names)))}
        action, codes = ref["action"], ref["conf_codes"].tolist()
        for col in np.nonzero(((action < 0) | (action >= pushdown.MULTI)).any(axis=0))[0].tolist():
            far.add(bit[names[col]] // 64 if col < len(names) else len(bit) // 64)
        assert not codes or min(codes) < 0  # (a conflict reduces)
    assert conflicts > 5 and nullable_start > 5
    assert {0, 1, 2} <= far


def test_random_grammars_with_undefined_symbols(monkeypatch):
    rng = random.Random(7)
    for _ in range(100):
        grammar = _random_grammar(rng, rng.choice([2, 5, 70]), rng.randint(1, 8), undefined=True)
        ref = _assert_same(grammar, monkeypatch)
        assert isinstance(ref, tuple) and ref[0] is GrammarError and "neither a terminal nor defined" in ref[1]


def test_small_cases(monkeypatch):
    t = (Terminal("A", "a"), Terminal("B", "b"))
    cases = [
        Grammar(terminals=(), rules=(Rule("s", ()),), start="s"),  # no terminals at all
        Grammar(terminals=t, rules=(Rule("s", ("s",)), Rule("s", ("A",))), start="s"),  # a unit cycle
        Grammar(terminals=t, rules=(Rule("s", ("s", "s")), Rule("s", ()), Rule("s", ("B",))), start="s"),
        Grammar(terminals=t, rules=(Rule("s", ("x", "A")), Rule("x", ()), Rule("y", ("B",))), start="s"),  # unreachable y
        Grammar(terminals=t[::-1], rules=(Rule("s", ("A", "B")), Rule("s", ("A", "B"))), start="s"),
    ]
    for grammar in cases:
        assert _with_c_path(grammar)
        assert isinstance(_assert_same(grammar, monkeypatch), dict)


def test_undefined_symbols(monkeypatch):
    t = (Terminal("A", "a"),)
    cases = [
        (Grammar(terminals=t, rules=(Rule("s", ("A", "x")), Rule("s", ("y",))), start="s"), "rule s uses x,"),
        (Grammar(terminals=t, rules=(Rule("s", ("A",)),), start="q"), "rule $root_q uses q,"),  # the start symbol
        (Grammar(terminals=t, rules=(Rule("s", ("A",)), Rule("s", ("$root_s",))), start="s"), "rule s uses $root_s,"),
        (Grammar(terminals=t, rules=(Rule("s", ("A",)), Rule("t", ("z",))), start="q"), "rule t uses z,"),  # rules first
    ]
    for grammar, message in cases:
        ref = _assert_same(grammar, monkeypatch)
        assert ref[0] is GrammarError and message in ref[1], ref
        with pytest.raises(GrammarError, match="neither a terminal nor defined"):
            pushdown._lalr_tables(grammar)


def test_names_the_c_function_declines(monkeypatch):
    """Names the symbol numbering cannot tell apart go the Python way, with its result or error."""
    a = Terminal("A", "a")
    cases = [
        Grammar(terminals=(a, Terminal("s", "b")), rules=(Rule("s", ("A",)),), start="s"),  # terminal and rule
        Grammar(terminals=(a, Terminal("$END", "b")), rules=(Rule("s", ("A", "$END")),), start="s"),
        Grammar(terminals=(a,), rules=(Rule("s", ("A",)), Rule("$root_s", ("s",))), start="s"),
        Grammar(terminals=(a,), rules=(Rule("s", ("A",)),), start="A"),  # a terminal as the start symbol
    ]
    for grammar in cases:
        assert not _with_c_path(grammar)
        _assert_same(grammar, monkeypatch)


def test_without_the_c_function(monkeypatch):
    grammar = lark_to_ir(JSON)
    monkeypatch.setattr(pushdown, "USE_C_LALR", True)
    monkeypatch.setattr(pushdown, "_C_LALR", False)
    monkeypatch.setattr(pushdown, "_lalr_c", None)  # (not called)
    with_python = pushdown._lalr_tables(grammar)
    monkeypatch.undo()
    _assert_same(grammar, monkeypatch)
    assert pushdown._lalr_tables(grammar)["rule_keys"] == with_python["rule_keys"]
