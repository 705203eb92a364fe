"""Undeclared keys: ``_not_in`` (the string bodies of undeclared keys in one regex, and of ``not``
with string values) and ``without_json_strings`` (the key automaton with the names cut out, what
grammar mode uses).

Oracle for ``_not_in``: Python's ``re`` on what ``json.dumps(s, ensure_ascii=False)`` writes must
accept exactly the strings that are no name. One restriction is deliberate and checked as such:
past the last character a name shares, controls without a short escape (``\\u0001``) are not
generated (``encode_set`` leaves them out). The old regex (one copy of "any rest" per trie node,
kept below as the reference) must agree on every candidate, and its automaton must be equivalent.

Oracle for the cut: Python's ``re`` on the uncut key regex and ``json.loads`` of the key, over
names spelled every way JSON allows (literal, short escapes, ``\\u`` in either case, surrogate
pairs).
"""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest

from dfa_helpers import accepts as dfa_accepts
from dfa_helpers import equivalent
from dotvllm_plugin.grammar.json_schema import _not_in
from dotvllm_plugin.grammar.json_schema import text as T
from dotvllm_plugin.regex import regex_to_dfa
from dotvllm_plugin.regex import exclusion
from dotvllm_plugin.regex.exclusion import is_cut, without_json_strings

# Control characters json.dumps writes as \u00XX: outside the names they are not generated.
NO_SHORT_ESCAPE = {chr(c) for c in range(0x20)} - set("\b\t\n\f\r")
ALPHABET = 'ab/"\\\n\x01\x7fé日😀 '


def _random_names(seed: int) -> list[str]:
    """A few short names over a small alphabet: prefixes of each other, shared runs, escapes."""
    rng = random.Random(seed)
    alphabet = ALPHABET[: 3 + seed % 10]
    return sorted({"".join(rng.choices(alphabet, k=rng.randint(0, 6))) for _ in range(1 + seed % 6)})


NAME_SETS = {
    "shapes": ["base", "height", "radius", "side"],
    "one": ["a"],
    "empty_name": [""],
    "empty_and_a": ["", "a"],
    "prefix_chain": ["a", "ab", "abc"],
    "escapes": ['a"b', "c\\d", "e\nf", "g\x01h", "tab\t", "/slash", "a/b", "\x7f"],
    "non_ascii": ["héllo", "hé", "日本", "日本語", "😀x", "é"],
    "long_runs": ["abcdefghijklmnopqrstuvwxyz0123456789", "abcdefghijklmnopqrstuvwxyzX",
                  "abcdefghijklmnopQ", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLM"],
    **{f"random{i}": _random_names(i) for i in range(16)},
}


def _old_not_in(names: list[str]) -> str:
    """The regex before the shared tail (the reference: same language)."""
    trie: dict = {}
    for n in names:
        node = trie
        for c in n:
            node = node.setdefault(c, {})
        node[None] = True
    return _old_node(trie) if names else T.repeat(T.PLAIN_CHAR, 0, None)


def _old_node(node: dict) -> str:
    any_rest = T.repeat(T.PLAIN_CHAR, 0, None)
    chain: list[str] = []
    cur = node
    while len(chain) < 12 and None not in cur and len(cur) == 1:
        (c, cur), = cur.items()
        chain.append(c)
    if chain:
        alts = []
        for i, c in enumerate(chain):
            pre = T.encode_text("".join(chain[:i]))
            others = T.encode_set(T.subtract(T.ENCODABLE, T.chars(c)))
            if others is not None:
                alts.append(pre + others + any_rest)
            if i:
                alts.append(pre)
        alts.append(T.encode_text("".join(chain)) + T.group(_old_node(cur)))
        return f"(?:{'|'.join(alts)})?"
    children = [c for c in node if c is not None]
    alts = []
    if None not in node:
        alts.append("")
    others = T.encode_set(T.subtract(T.ENCODABLE, T.chars("".join(children))))
    if others is not None:
        alts.append(others + any_rest)
    for c in children:
        alts.append(T.encode_char(ord(c)) + T.group(_old_node(node[c])))
    if not children:
        return T.repeat(T.PLAIN_CHAR, 1, None)
    nonempty = [a for a in alts if a]
    r = T.alternation(nonempty) or ""
    return f"(?:{r})?" if "" in alts else r


def _candidates(names: list[str], rng: random.Random) -> set[str]:
    chars = sorted(set(ALPHABET) | set("".join(names)) | {"z", "\x02"})
    out = {""}
    for n in names:
        out |= {n[:i] for i in range(len(n) + 1)}
        out |= {n + c for c in chars} | {n + c + c for c in "a\x01é"}
        for i in range(len(n) + 1):
            out.add(n[:i] + n[i + 1:])
            out |= {n[:i] + c + n[i + 1:] for c in chars}
            out |= {n[:i] + c + n[i:] for c in rng.sample(chars, 4)}
    out |= {"".join(rng.choices(chars, k=rng.randint(0, 8))) for _ in range(200)}
    return out


def _expected(s: str, names: list[str]) -> bool:
    if s in names:
        return False
    paths = {n[:i] for n in names for i in range(len(n) + 1)}
    shared = max(i for i in range(len(s) + 1) if s[:i] in paths)
    return not NO_SHORT_ESCAPE.intersection(s[shared:])


def _body(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)[1:-1]


def _other_spellings(names: list[str], rng: random.Random) -> set[str]:
    """Non-canonical bodies (``\\/``, ``\\u`` escapes) and random escape soup."""
    frags = ["a", "b", "/", "\\/", '\\"', "\\\\", "\\n", "\\b", "\\u0041", "\\u0061", "\\u00e9", "é", "\\t"]
    out = {_body(n).replace("/", "\\/") for n in names}
    out |= {_body(n).replace("a", "\\u0061", 1) for n in names}
    out |= {"".join(rng.choices(frags, k=rng.randint(0, 6))) for _ in range(200)}
    return out


@pytest.mark.parametrize("names", NAME_SETS.values(), ids=NAME_SETS.keys())
def test_not_in_accepts_exactly_the_other_strings(names):
    rng = random.Random(len(names))
    regex = _not_in(names)
    old = re.compile(_old_not_in(names))
    new = re.compile(regex)
    for s in _candidates(names, rng):
        got = new.fullmatch(_body(s)) is not None
        assert not (got and s in names), (names, s)  # soundness, whatever the restriction
        assert got == _expected(s, names), (names, s)
        assert got == (old.fullmatch(_body(s)) is not None), (names, s)
    for body in _other_spellings(names, rng):
        got = new.fullmatch(body) is not None
        assert got == (old.fullmatch(body) is not None), (names, body)
        if got:
            assert json.loads('"' + body + '"') not in names, (names, body)


@pytest.mark.parametrize("names", NAME_SETS.values(), ids=NAME_SETS.keys())
def test_not_in_automaton_agrees_with_re_and_the_old_regex(names):
    rng = random.Random(len(names))
    regex = _not_in(names)
    dfa = regex_to_dfa(regex)
    new = re.compile(regex)
    for body in {_body(s) for s in _candidates(names, rng)} | _other_spellings(names, rng):
        assert dfa_accepts(dfa, body.encode()) == (new.fullmatch(body) is not None), (names, body)
    assert equivalent(dfa, regex_to_dfa(_old_not_in(names)))


def test_not_in_without_names_is_any_plain_body():
    assert _not_in([]) == T.repeat(T.PLAIN_CHAR, 0, None)


def test_not_in_long_names_stay_shallow():
    # one group per character would overflow the parsers (Python's and the engine's)
    names = ["k" * 400, "k" * 200 + "x", "k" * 399]
    dfa = regex_to_dfa('"' + _not_in(names) + '"')
    for s, ok in [("k" * 400, False), ("k" * 399, False), ("k" * 398, True), ("k" * 401, True), ("k" * 200 + "y", True)]:
        assert dfa_accepts(dfa, f'"{s}"'.encode()) == ok


# -- the cut (grammar mode) --------------------------------------------------------------------------

def _spell(s: str, rng: random.Random) -> str:
    """A JSON spelling of ``s`` (without quotes), each character spelled one of the ways JSON allows."""
    short = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
             "\t": "\\t"}
    out = []
    for c in s:
        cp = ord(c)
        ways = [] if cp < 0x20 or c in '"\\' else [c]
        if c in short:
            ways.append(short[c])
        if cp < 0x10000:
            ways.append(f"\\u{cp:04x}")
        else:
            hi, lo = 0xD800 + ((cp - 0x10000) >> 10), 0xDC00 + ((cp - 0x10000) & 0x3FF)
            ways.append(f"\\u{hi:04x}\\u{lo:04x}")
        way = rng.choice(ways)
        out.append(way.upper().replace("\\U", "\\u") if way.startswith("\\u") and rng.random() < 0.5 else way)
    return "".join(out)


KEY_PREFIX, KEY_SUFFIX = '[ \\n]?"', '"[ ]?:'


@pytest.fixture(params=["c", "python"])
def cut_in(request, monkeypatch):
    """The cut's product in C (when the extension is built) and in Python."""
    if request.param == "c" and exclusion._cwalk is None:
        pytest.skip("the C extension is not built")
    monkeypatch.setattr(exclusion, "USE_C_CUT", request.param == "c")
    return request.param


@pytest.mark.parametrize("body", ["any", "plain"])
@pytest.mark.parametrize("names", NAME_SETS.values(), ids=NAME_SETS.keys())
def test_cut_keys_are_exactly_the_other_values(names, body, cut_in):
    """The key automaton with the names cut accepts a word iff the uncut regex does (``re``) and
    the key's value (``json.loads``) is no name, whatever the spelling."""
    rng = random.Random(len(names))
    unit = T.ANY_CHAR if body == "any" else T.PLAIN_CHAR
    regex = KEY_PREFIX + T.repeat(unit, 0, None) + KEY_SUFFIX
    cut = without_json_strings(regex_to_dfa(regex), names)
    uncut = re.compile(regex)
    old = re.compile(KEY_PREFIX + _not_in(names) + KEY_SUFFIX)
    spellings = {_spell(s, rng) for s in _candidates(names, rng) for _ in range(3)}
    spellings |= {_body(n) for n in names} | _other_spellings(names, rng)
    for sp in spellings:
        for word in (f'"{sp}":', f' "{sp}" :', f'\n"{sp}":'):
            want = uncut.fullmatch(word) is not None and json.loads(word.strip()[:-1].strip()) not in names
            assert dfa_accepts(cut, word.encode()) == want, (names, word)
            if uncut.fullmatch(word) is not None:  # the word check without the automaton agrees
                assert is_cut(word.encode(), names) == (not want), (names, word)
            if old.fullmatch(word) is not None and uncut.fullmatch(word) is not None:
                assert want, (names, word)  # the one-regex form is a subset (it drops \/ spellings)
    # a truncated key is never accepted, an unquoted word never was
    assert not dfa_accepts(cut, b'"') and not dfa_accepts(cut, b":")


@pytest.mark.skipif(exclusion._cwalk is None, reason="the C extension is not built")
@pytest.mark.parametrize("seed", range(40))
def test_c_cut_equals_the_python_product(seed, monkeypatch):
    """The C product builds the Python product's automaton, state for state, on random name sets
    (escapes, controls, non-ASCII, astral characters, lone surrogates, prefixes of each other)
    and key automata with and without ``\\u`` escapes, whitespace before the quote and after."""
    rng = random.Random(seed)
    alphabet = ALPHABET + "\ud800\udfffAbcDef09" + chr(0x1F600 + seed)
    names = ["".join(rng.choices(alphabet, k=rng.randint(0, 8))) for _ in range(rng.randint(1, 30))]
    unit = T.ANY_CHAR if seed % 2 else T.PLAIN_CHAR
    lead, tail = ('[ \\n]*"', '"[ ]?:') if seed % 3 else ('"', '"')
    dfa = regex_to_dfa(lead + T.repeat(unit, 0, None if seed % 4 else 12) + tail)
    got = {}
    for c in (True, False):
        monkeypatch.setattr(exclusion, "USE_C_CUT", c)
        try:
            got[c] = without_json_strings(dfa, names)
        except Exception as e:  # (an empty language is refused by both alike)
            got[c] = type(e)
    if isinstance(got[False], type):
        assert got[True] is got[False]
        return
    a, b = got[True], got[False]
    assert a.initial == b.initial
    assert np.array_equal(a.transitions, b.transitions) and np.array_equal(a.accepting, b.accepting)


def test_cut_states_grow_with_the_trie_not_the_spellings():
    names = ["base", "height", "radius", "shape", "width"]
    key = '"' + T.repeat(T.PLAIN_CHAR, 0, None) + '":'
    cut = without_json_strings(regex_to_dfa(key), names)
    old = regex_to_dfa('"' + _not_in(names) + '":')
    assert equivalent(cut, old)  # no '/' in the names: the two forms agree
    assert cut.n_states <= old.n_states


def test_cut_of_every_word_is_an_empty_language():
    from dotvllm_plugin.errors import VocabularyCoverageError

    with pytest.raises(VocabularyCoverageError, match="matches no string"):
        without_json_strings(regex_to_dfa('"(?:a|b)"'), ["a", "b"])
