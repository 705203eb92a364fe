"""TokenTransitions (a step's DFA advances as arrays) against the per-token matcher as oracle."""

from __future__ import annotations

import numpy as np
import pytest

from dotvllm_plugin import GrammarCompiler, GrammarMatcher, Vocabulary
from dotvllm_plugin.transitions import DEAD, DONE, TokenTransitions

PATTERNS = {
    "date": r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
    "json_string": r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4}){0,12}"',
    "words": r"(?:cat|dog|bird)(?: and (?:cat|dog|bird)){0,3}",
    "optional_tail": r"[0-9]+(\.[0-9]+)?",
    "unicode": r"(?:é|ü|日本|🙂)+x?",
}


def toy_vocab() -> Vocabulary:
    tokens = [None, b"a", b"b", b"ab", b"ba", b"1", b"12", b"x", b".", b"\xc3", b"\xa9", b"\xc3\xa9", b"", b"aaa"]
    return Vocabulary(tokens, [0])


def _walk(rng, grammar, matcher_token_pick, steps: int):
    """A walk of mostly allowed tokens, some random ones (disallowed, EOS, out of range)."""
    m = GrammarMatcher(grammar)
    out = []
    for _ in range(steps):
        allowed = m.allowed_token_ids()
        t = matcher_token_pick(rng, allowed)
        out.append(t)
        if not m.accept_token(t):
            break
    return out


def _pick(vocab_size):
    def pick(rng, allowed):
        if len(allowed) and rng.random() < 0.85:
            return int(allowed[rng.integers(len(allowed))])
        return int(rng.integers(-2, vocab_size + 3))
    return pick


def _check_walks(tt: TokenTransitions, grammars: dict, seed: int, walks: int = 60, steps: int = 24) -> None:
    """Advance all walks of all grammars together, one array call per step, against matchers."""
    rng = np.random.default_rng(seed)
    pick = _pick(tt.size)
    seqs = []
    for key, g in grammars.items():
        for _ in range(walks):
            seqs.append((key, g, _walk(rng, g, pick, steps)))
    matchers = [GrammarMatcher(g) for _, g, _ in seqs]
    states = np.array([tt.register(k, g) + g.initial for k, g, _ in seqs], dtype=np.int64)
    alive = [True] * len(seqs)
    for step in range(steps):
        live = [i for i, (_, _, w) in enumerate(seqs) if step < len(w)]
        if not live:
            break
        tokens = np.array([seqs[i][2][step] for i in live], dtype=np.int64)
        states[live] = tt.advance(states[live], tokens)
        for i, t in zip(live, tokens.tolist()):
            ok = alive[i] and matchers[i].accept_token(t)
            alive[i] = ok
            s = int(states[i])
            if not ok:
                assert s == DEAD, (seqs[i][0], step, t)
            elif matchers[i].is_terminated():
                assert s == DONE, (seqs[i][0], step, t)
            else:
                key, g, _ = seqs[i]
                assert s == tt.register(key, g) + matchers[i].state, (key, step, t)
            table, row = tt.masks(np.array([s]))
            expected = matchers[i]._current_row() if ok else GrammarMatcher(seqs[i][1])._current_row() * 0
            got = tt.tables[int(table[0])][1][int(row[0])]
            if ok:
                assert np.array_equal(got, expected), (seqs[i][0], step)
            else:
                assert int(table[0]) == 0  # the EOS-only row


def test_transitions_match_matcher_toy():
    vocab = toy_vocab()
    compiler = GrammarCompiler(vocab)
    grammars = {p: compiler.compile_regex(p) for p in (r"(ab|ba)+[12]{0,3}", r"a*\.?b", r"(é|ab)+x?", r"[a1.]{0,5}")}
    _check_walks(TokenTransitions(vocab), grammars, seed=1)


@pytest.mark.parametrize("eager_bytes, max_bytes", [(64 << 20, 512 << 20), (0, 512 << 20), (0, 1)],
                         ids=["eager", "lazy", "rows-dropped"])
def test_transitions_match_matcher_real(mistral_vocab, eager_bytes, max_bytes):
    compiler = GrammarCompiler(mistral_vocab)
    grammars = {k: compiler.compile_regex(p) for k, p in PATTERNS.items()}
    tt = TokenTransitions(mistral_vocab, eager_bytes=eager_bytes, max_bytes=max_bytes)
    _check_walks(tt, grammars, seed=2, walks=16, steps=16)


def test_dead_and_done_lead_to_dead():
    vocab = toy_vocab()
    tt = TokenTransitions(vocab)
    tt.register("g", GrammarCompiler(vocab).compile_regex("ab"))
    tokens = np.arange(-1, vocab.size + 1)
    for s in (DEAD, DONE):
        assert (tt.advance(np.full(len(tokens), s), tokens) == DEAD).all()
        table, row = tt.masks(np.array([s]))
        assert table[0] == 0 and row[0] == 0
    assert tt.local(DONE) is None


def test_registry_starts_over_past_max_states():
    vocab = toy_vocab()
    compiler = GrammarCompiler(vocab)
    a, b = compiler.compile_regex("(ab)+"), compiler.compile_regex("[ab]{0,6}")
    tt = TokenTransitions(vocab, max_states=2 + a.n_states + 1)
    base_a = tt.register("a", a)
    assert tt.register("a", a) == base_a and not tt.full
    tt.register("b", b)
    assert tt.full and tt.epoch == 0  # numbers stay valid until the caller starts over
    tt.start_over()
    assert tt.epoch == 1 and not tt.full and [k for k, _ in tt.tables] == [tt.eos_key]
    assert tt.local(tt.register("b", b) + b.initial) == (b, b.initial)


def test_registry_full_past_max_grammars():
    vocab = toy_vocab()
    compiler = GrammarCompiler(vocab)
    tt = TokenTransitions(vocab, max_grammars=3)
    grammars = [compiler.compile_regex(p) for p in ("a", "b", "ab", "ba")]
    bases = [tt.register(i, g) for i, g in enumerate(grammars)]
    assert bases == sorted(bases) and tt.full
    for (i, g), base in zip(enumerate(grammars), bases):  # numbers stay valid until started over
        assert tt.local(base + g.initial) == (g, g.initial)


def test_other_vocabulary_refused():
    vocab = toy_vocab()
    other = Vocabulary([b"a", b"b", None], [2])
    tt = TokenTransitions(vocab)
    with pytest.raises(ValueError, match="another vocabulary"):
        tt.register("x", GrammarCompiler(other).compile_regex("ab"))
