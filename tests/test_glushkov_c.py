"""The Glushkov position pass in C (``_cwalk.glushkov_positions`` + ``_cwalk.subset_classes``)
against the Python reference (:class:`dotvllm_plugin.regex.glushkov._Positions`): equal automata,
byte for byte, or the same exception with the same message."""

from __future__ import annotations

import glob
import json
import os
import random
import re

import numpy as np
import pytest

import dotvllm_plugin.regex as regex_mod
from dfa_helpers import accepts as dfa_accepts
from dotvllm_plugin.regex import glushkov as G
from dotvllm_plugin.regex.automaton import Builder
from dotvllm_plugin.regex.charsets import char_class_ranges, utf8_sequences
from dotvllm_plugin.regex.parse import explicit_unicode, parse_tree

pytestmark = pytest.mark.skipif(G._cwalk is None, reason="C extension not built")


def _build(tree, flag: bool, **kw):
    old = G.USE_C_GLUSHKOV
    G.USE_C_GLUSHKOV = flag
    try:
        trans, accepting = G.sre_glushkov_dfa(tree, **kw)
        return "dfa", trans.shape, trans.tobytes(), accepting.tobytes()
    except Exception as e:  # compared: type and message
        return "error", type(e).__name__, str(e)
    finally:
        G.USE_C_GLUSHKOV = old


def _same(tree, **kw):
    ref, got = _build(tree, False, **kw), _build(tree, True, **kw)
    assert got == ref, (ref[:3], got[:3])
    return ref


def _kwargs(pattern: str, max_states: int = 60_000) -> dict:
    return dict(max_states=max_states, char_ranges=char_class_ranges, utf8_sequences=utf8_sequences,
                builder_cls=Builder, explicit_unicode=explicit_unicode(pattern))


def _check_pattern(pattern: str, max_states: int = 60_000):
    try:
        tree = parse_tree(pattern, check_text=False)
    except Exception:
        return None  # not a pattern re reads (or refused before the builder)
    return _same(tree, **_kwargs(pattern, max_states))


class _Capture:
    """Every ``sre_glushkov_dfa`` call made within the block: (tree, kwargs)."""

    def __enter__(self):
        self.calls = []
        self._orig = regex_mod.sre_glushkov_dfa

        def rec(tree, **kw):
            self.calls.append((tree, kw))
            return self._orig(tree, **kw)

        regex_mod.sre_glushkov_dfa = rec
        return self

    def __exit__(self, *exc):
        regex_mod.sre_glushkov_dfa = self._orig


# -- hand-picked ---------------------------------------------------------------------------------

PATTERNS = [
    "a", "ab|cd", "(ab)*c", "a{2,5}b", "[a-zé]+x?", r"(?:a?){0,30}b", r"\d{3}-\w+", ".*", "(a|b*)*c", "x{0}",
    "(?i)abc", r"(?a:\w)+", r"(?-i:a)(?i:b)", "(?:){5,9}", "((a*)*)*b", r'[^"\\]*', "(?:(?:a|bc?){2,4}d)+",
    "(?:ab?c?){0,300}", "(?:é|ü|[α-ω]{2,3})*x", ".{0,300}", r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt])*', "[^\\s\\S]",
    "a[^\\s\\S]b|c", "(?:[^\\s\\S]x)*y", "a*?b+?c??", "(?s).{2}", "😀{1,3}日本", "(?:a|)+", "(?:|b){3}",
    "a{40000}", "(?:ab){20000}", "(?:a{100}){400}", r"a\b", "^a", "(?=a)a", r"(a)\1", "(?>a)", "a*+",
    "(?:(?:(?:(?:a|b){1,3}c){0,2}d)*e)+", "(?:a{0,3}){0,3}", "[\U00010000-\U0010ffff]{2}",
    # an empty group repeated a billion times: one copy (the Python pass once looped over every copy)
    "(?:){1000000000}", "a(?:){5,1000000000}b", "(?:(?:){3}){1000000}y", "(?:|){100000000}q", "(?:){0,7}x",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_hand_picked_patterns(pattern):
    _check_pattern(pattern)


@pytest.mark.parametrize("max_states", [2, 5, 40, 600])
def test_small_budgets_fail_alike(max_states):
    for pattern in ["a{30}", "(?:é){10}", "(?:a|b)*c{5}", "[α-ω]{3,9}", "(?:abc|abd){0,9}"]:
        _check_pattern(pattern, max_states)


def test_deep_nesting_goes_to_the_reference():
    # deeper than the C pass walks: the reference decides (a RecursionError somewhere deep)
    for depth in (99, 100, 101, 150, 300):
        _check_pattern("(?:" * depth + "a" + ")" * depth)
        _check_pattern("(?:" * depth + "a|b*" + ")*" * depth)


# -- corpora -------------------------------------------------------------------------------------

def _corpus_dir():
    here = os.path.dirname(__file__)
    for up in (("..", ".."), ("..", "..", "..")):  # beside the repository, or beside its worktree
        d = os.path.join(here, *up, "shared", "corpus", "jsonschemabench-dev")
        if os.path.isdir(d):
            return d
    return None


CORPUS = _corpus_dir()
OPTION_SETS = [{}, {"allow_undeclared_properties": False}, {"whitespace_pattern": r"[ \n]{0,2}"},
               {"mode": "grammar"}]


def _terminal_calls(grammars) -> list:
    from dotvllm_plugin.errors import DotvllmError
    from dotvllm_plugin.pushdown import _build_terminal_dfa

    with _Capture() as cap:
        for g in grammars:
            single = g.single_terminal
            terminals = [single] if single is not None else g.terminals
            for t in terminals:
                try:
                    if single is not None:
                        regex_mod.regex_to_dfa(t.regex)  # as GrammarCompiler.compile_ir
                    else:
                        _build_terminal_dfa(t)
                except DotvllmError:
                    pass
    return cap.calls


def _compare_calls(calls):
    seen = set()
    n = 0
    for tree, kw in calls:
        key = (id(tree), tuple(sorted((k, repr(v)) for k, v in kw.items())))
        if key in seen:
            continue
        seen.add(key)
        _same(tree, **kw)
        n += 1
    return n


@pytest.mark.slow
@pytest.mark.skipif(CORPUS is None, reason="JSONSchemaBench corpus not found")
@pytest.mark.parametrize("part", range(4))
def test_corpus_schema_terminals(part):
    """Every automaton the engine builds for the corpus schemas under four option sets (the
    terminals of pushdown grammars, whole regular schemas): the C pass builds the same."""
    from dotvllm_plugin.errors import DotvllmError
    from dotvllm_plugin.grammar.json_schema import json_schema_to_ir
    from dotvllm_plugin.grammar.json_schema.text import clear_memos

    grammars = []
    for path in sorted(glob.glob(os.path.join(CORPUS, "*.json")))[part::4]:
        with open(path) as f:
            schema = json.load(f)["schema"]
        for opts in OPTION_SETS:
            clear_memos()
            try:
                g = json_schema_to_ir(schema, **opts)
            except (DotvllmError, RecursionError):
                continue
            if g is not None:
                grammars.append(g)
    assert _compare_calls(_terminal_calls(grammars)) > 100


def test_lark_grammar_terminals():
    from test_grammar import FEATURES, GRAMMARS

    from dotvllm_plugin.errors import DotvllmError
    from dotvllm_plugin.grammar.lark import lark_to_ir

    grammars = []
    for text in list(GRAMMARS.values()) + [f[0] for f in FEATURES]:
        try:
            grammars.append(lark_to_ir(text))
        except DotvllmError:
            pass
    assert _compare_calls(_terminal_calls(grammars)) > 10


def test_differential_corpus_and_mutations():
    from test_regex_differential import BASE, INSERTS, mutate_pattern

    rng = random.Random(7)
    patterns = list(BASE) + [mutate_pattern(p, rng) for p in BASE for _ in range(6)]
    patterns += list(INSERTS) + [f"a{i}b" for i in INSERTS] + [f"[{i}]" for i in INSERTS]
    built = sum(_check_pattern(p) is not None for p in dict.fromkeys(patterns))
    assert built > 100


# -- random patterns -----------------------------------------------------------------------------

_ATOMS = ["a", "b", "c", ".", r"\d", r"\w", r"\s", r"\W", "[a-c]", "[^ab]", "é", "日", "😀", "[α-ω]", "[^é]",
          r"\n", "[0-9é-ü]", "[^\\s\\S]", "(?i:k)", "(?s:.)", "(?a:\\w)"]


def _random_pattern(rng: random.Random, depth: int = 0) -> str:
    r = rng.random()
    if depth > 3 or r < 0.35:
        return rng.choice(_ATOMS)
    if r < 0.55:
        return "".join(_random_pattern(rng, depth + 1) for _ in range(rng.randint(2, 4)))
    if r < 0.7:
        return "(?:" + "|".join(_random_pattern(rng, depth + 1) for _ in range(rng.randint(2, 3))) + ")"
    sub = _random_pattern(rng, depth + 1)
    lo = rng.randint(0, 4)
    q = rng.choice(["*", "+", "?", f"{{{lo}}}", f"{{{lo},{lo + rng.randint(0, 5)}}}", f"{{,{rng.randint(0, 4)}}}",
                    "*?", "{0}"])
    return f"(?:{sub}){q}"


@pytest.mark.parametrize("seed", range(4))
def test_random_patterns(seed):
    rng = random.Random(seed)
    n = 0
    for _ in range(250):
        pattern = _random_pattern(rng)
        re.compile(pattern)  # (the generator writes only patterns re reads)
        max_states = rng.choice([60_000, 60_000, 200])
        n += _check_pattern(pattern, max_states) is not None
    assert n > 200


# -- malformed calls -----------------------------------------------------------------------------

def _raises(fn, *args):
    with pytest.raises((TypeError, ValueError, AttributeError, OverflowError, G.Refused, G.Unhandled, RuntimeError)):
        fn(*args)


def test_malformed_glushkov_positions_calls_raise():
    gp = G._cwalk.glushkov_positions
    tree = parse_tree("a(?:b|c)*d{2,3}", check_text=False)

    def fail(kind, item):
        raise ValueError(kind)

    ok = (G._C_OPS, G.atom_ranges, fail, G._combine_flags)
    assert gp(tree, 0, 100, *ok) is not None
    _raises(gp)
    _raises(gp, tree, 0, 100)
    _raises(gp, tree, "0", 100, *ok)
    _raises(gp, tree, 0, -1, *ok)
    _raises(gp, tree, 0, 2**40, *ok)
    _raises(gp, tree, 0, 100, G._C_OPS[:5], *ok[1:])
    _raises(gp, tree, 0, 100, list(G._C_OPS), *ok[1:])
    _raises(gp, tree, 0, 100, G._C_OPS, None, fail, G._combine_flags)
    _raises(gp, tree, 0, 100, G._C_OPS, G.atom_ranges, fail, 3)
    _raises(gp, 5, 0, 100, *ok)
    _raises(gp, [("x",)], 0, 100, *ok)
    _raises(gp, [5], 0, 100, *ok)
    _raises(gp, ["ab"], 0, 100, *ok)
    lit, _nlit, _any, _in, branch, subpattern, rep, _minrep, maxrep = G._C_OPS
    _raises(gp, [(branch, None)], 0, 100, *ok)
    _raises(gp, [(branch, (None, 5))], 0, 100, *ok)
    _raises(gp, [(branch, (None, [5]))], 0, 100, *ok)
    _raises(gp, [(subpattern, (None, 0, 0))], 0, 100, *ok)
    _raises(gp, [(subpattern, (None, "a", 0, []))], 0, 100, *ok)
    _raises(gp, [(subpattern, (None, 0, 0, 7))], 0, 100, *ok)
    _raises(gp, [(rep, (1, 2))], 0, 100, *ok)
    _raises(gp, [(rep, ("1", 2, []))], 0, 100, *ok)
    _raises(gp, [(rep, (-1, 2, [(lit, 97)]))], 0, 100, *ok)
    _raises(gp, [(rep, (0, -2, [(lit, 97)]))], 0, 100, *ok)
    _raises(gp, [(rep, (2**62, maxrep, [(lit, 97)]))], 0, 100, *ok)
    _raises(gp, [(rep, (3, 1, [(lit, 97)]))], 0, 100, *ok)  # bad repeat, through fail()
    _raises(gp, [(lit, [])], 0, 100, *ok)  # unhashable argument
    _raises(gp, [("AT", 1)], 0, 100, *ok)  # refused, through fail()
    _raises(gp, [(lit, 97)], 0, 100, G._C_OPS, lambda item, flags: 5, fail, G._combine_flags)
    _raises(gp, [(lit, 97)], 0, 100, G._C_OPS, lambda item, flags: [(97, 97)], fail, G._combine_flags)

    def boom(item, flags):
        raise ValueError("boom")

    _raises(gp, [(lit, 97)], 0, 100, G._C_OPS, boom, fail, G._combine_flags)
    _raises(gp, [(lit, 97)] * 5, 0, 3, G._C_OPS, G.atom_ranges, lambda kind, item: None, G._combine_flags)
    # an atom callback that changes the tree under the walk
    items = [(lit, 97), (lit, 98), (lit, 99)]

    def shrink(item, flags):
        items.clear()
        return ((97, 97),)

    assert gp(items, 0, 100, G._C_OPS, shrink, fail, G._combine_flags) is not None


def _classes_args(pattern="(?:é|a)*b"):
    """subset_classes's arguments for a pattern, captured from the C path."""
    cap = {}
    real = G._cwalk

    class Spy:
        def __getattr__(self, name):
            if name == "subset_classes":
                def f(*a):
                    cap["args"] = [np.array(x, copy=True) if isinstance(x, np.ndarray) else x for x in a]
                    return real.subset_classes(*a)
                return f
            return getattr(real, name)

    G._cwalk = Spy()
    try:
        _build(parse_tree(pattern, check_text=False), True, **_kwargs(pattern))
    finally:
        G._cwalk = real
    return cap["args"]


def test_malformed_subset_classes_calls_raise():
    sc = G._cwalk.subset_classes
    args = _classes_args()
    assert sc(*args) is not None
    _raises(sc)
    _raises(sc, *args[:5])
    names = ["cls", "roots", "node_off", "nodes", "base", "owner", "fol_start", "fol", "acc"]
    for i, name in enumerate(names):
        a = args[i]
        if isinstance(a, bytes):
            a = np.frombuffer(a, dtype=np.int64).copy()
        bad_values = [a[:-1], np.concatenate([a, a[:1]])]
        if a.size:
            for v in (-3, -1, 10**6, 2**31 - 1):
                b = a.copy()
                b.reshape(-1)[a.size // 2] = v if a.dtype != np.uint8 else 0
                if a.dtype == np.uint8:
                    continue
                bad_values.append(b)
        for b in bad_values:
            trial = list(args)
            trial[i] = b
            try:
                sc(*trial)  # a value that happens to be valid may pass; none may crash
            except (TypeError, ValueError):
                pass
    _raises(sc, *args[:9], 0)
    _raises(sc, *args[:9], "x")
    _raises(sc, *args[:2], None, *args[3:])


@pytest.mark.parametrize("flag", [False, True])
def test_an_empty_group_repeated_a_billion_times_is_one_copy(flag):
    # (re itself unrolls these and runs out of memory: the language is written out instead)
    cases = {"(?:){1000000000}": ({""}, {"a"}), "a(?:){5,1000000000}b": ({"ab"}, {"a", "b", "abb", ""}),
             "(?:(?:){3}){1000000}y": ({"y"}, {"", "yy"}), "(?:|){100000000}q": ({"q"}, {"", "qq"}),
             "(?:[^\\s\\S]|){0,900000000}z": ({"z"}, {"", "zz"})}
    old = G.USE_C_GLUSHKOV
    G.USE_C_GLUSHKOV = flag
    try:
        for pattern, (inside, outside) in cases.items():
            dfa = regex_mod.regex_to_dfa(pattern)
            for text in inside:
                assert dfa_accepts(dfa, text.encode()), (pattern, text)
            for text in outside:
                assert not dfa_accepts(dfa, text.encode()), (pattern, text)
    finally:
        G.USE_C_GLUSHKOV = old
