"""Fuzzing the Lark front end: mutated grammars, lark as the oracle.

For every mutant: our check and compile either succeed or raise a ``GrammarError`` (never any
other exception: a request must not be able to crash anything); a grammar lark itself cannot
build (neither ``Lark(text, parser="lalr")`` nor Earley) is refused; and when both accept it,
text produced by random walks over our masks parses with lark (LALR for an LALR(1) grammar,
Earley otherwise).
"""

from __future__ import annotations

import random

import lark
import pytest

from dotvllm_plugin import GrammarCompiler, GrammarMatcher
from dotvllm_plugin.compiler import check_grammar
from dotvllm_plugin.errors import GrammarError

from test_grammar import ARITHMETIC, CALLS, FEATURES, JSON, SQL

BASES = [JSON, ARITHMETIC, SQL, CALLS] + [p.values[0] for p in FEATURES]
PIECES = ['"', "(", ")", "[", "]", "|", "*", "+", "?", ":", "/", "\n", "%ignore ", "_", "~", ".", " ", "a",
          '"x"', "/[a-z]/", "/.+/", "?", "!", "->", "%import common.WS", "\\", "{", "}", ".2", '"a"i', "x"]


def _mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        i = rng.randrange(len(text) + 1)
        if op == 0 and text:  # delete a span
            text = text[:i] + text[i + rng.randint(1, 4):]
        elif op == 1:  # insert a piece
            text = text[:i] + rng.choice(PIECES) + text[i:]
        elif op == 2:  # duplicate a line
            lines = text.split("\n")
            j = rng.randrange(len(lines))
            lines.insert(j, lines[rng.randrange(len(lines))])
            text = "\n".join(lines)
        elif op == 3:  # swap two lines
            lines = text.split("\n")
            a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
        else:  # change a quantifier
            for q in ("*", "+", "?"):
                k = text.find(q, i)
                if k >= 0:
                    text = text[:k] + rng.choice("*+?") + text[k + 1:]
                    break
    return text


def _lark_builds(text: str, parser: str):
    try:
        return lark.Lark(text, parser=parser)
    except Exception:  # noqa: BLE001 - lark's verdict, whatever it raises
        return None


def _ours(text: str, vocab):
    """(compiled or None, error or None); anything but a GrammarError fails the test."""
    try:
        check_grammar(text)
        return GrammarCompiler(vocab, cache_size=0).compile_grammar(text), None
    except GrammarError as e:
        return None, e


@pytest.mark.parametrize("seed", range(3))
def test_mutated_grammars(seed, byte_vocab):
    rng = random.Random(seed)
    eos = byte_vocab.eos_token_ids[0]
    both = refused_by_both = refused_by_us = parsed = 0
    for n in range(120):
        base = BASES[rng.randrange(len(BASES))]
        text = _mutate(base, rng)
        compiled, error = _ours(text, byte_vocab)
        # An LALR(1) grammar is lark's LALR parser's language; any other is its Earley parser's.
        parser = _lark_builds(text, "lalr")
        if compiled is None or not getattr(compiled, "deterministic", True) or parser is None:
            parser = _lark_builds(text, "earley")
        if parser is None:
            assert compiled is None, f"lark cannot build this grammar, we compiled it:\n{text}"
            refused_by_both += 1
            continue
        if compiled is None:
            refused_by_us += 1
            continue  # refused (not LALR(1), colliding terminals, lazy terminals...): a clear 400
        both += 1
        for walk in range(4):
            m = GrammarMatcher(compiled)
            out = []
            for step in range(60):
                allowed = m.allowed_token_ids().tolist()
                assert allowed, ("stuck", text, b"".join(out))
                t = eos if eos in allowed and (step > 10 or rng.random() < 0.2) else rng.choice(allowed)
                assert m.accept_token(t)
                if t == eos:
                    break
                out.append(bytes([t]))
            if m.is_terminated():
                produced = b"".join(out).decode("utf-8")
                try:
                    parser.parse(produced)
                except lark.exceptions.LarkError as e:
                    raise AssertionError(f"lark rejects {produced!r} from grammar:\n{text}\n{e}") from e
                parsed += 1
    print(f"seed {seed}: {both} compiled by both, {refused_by_both} refused by both, {refused_by_us} refused by us "
          f"only ({error}), {parsed} outputs parsed by lark")
    assert both >= 20 and refused_by_both >= 10 and parsed >= 40, (both, refused_by_both, parsed)
