"""Character runs (dotvllm_plugin.runs): the per-vocabulary character masks against Python's own
UTF-8 decoding, and masks with the run shortcut against full vocabulary walks."""

from __future__ import annotations

import numpy as np
import pytest

from dotvllm_plugin import GrammarCompiler, GrammarMatcher, index, pushdown, runs
from mask_walks import walk_together

BODY = ((0x20, 0x21), (0x23, 0x5B), (0x5D, 0xD7FF), (0xE000, 0x10FFFF))
LETTERS = ((0x20, 0x20), (0x41, 0x5A), (0x61, 0x7A))
NO_E = ((0x20, 0x64), (0x66, 0x7E), (0x80, 0xD7FF), (0xE000, 0x10FFFF))
#: (first-character class, class of the others)
CLASSES = {"json string body": (BODY, BODY), "ascii letters and space": (LETTERS, LETTERS),
           "first not 'e', then the body": (NO_E, BODY), "first a letter, then not 'e'": (LETTERS, NO_E)}


def _inside(text: str, ranges) -> bool:
    return all(any(a <= ord(ch) <= b for a, b in ranges) for ch in text)


@pytest.fixture(scope="module", params=["tekken", "mistral"])
def vocab(request, tekken_vocab, mistral_vocab):
    return tekken_vocab if request.param == "tekken" else mistral_vocab


@pytest.mark.parametrize("like", [None, BODY, LETTERS, NO_E], ids=["read", "from body", "from letters", "from no e"])
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_rows_and_node_masks_agree_with_python_decoding(vocab, name, like):
    """Also for a table made from another first-character class's table of the same Σ."""
    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    first, sigma = CLASSES[name]
    tc = runs.token_chars(vocab)
    table = runs.RunTable(tc, first, sigma, None if like is None else runs.RunTable(tc, like, sigma))
    V = vocab.size
    member = np.zeros(V, dtype=bool)
    count = np.zeros(V, dtype=np.int64)
    for i, b in enumerate(vocab.token_bytes):
        if b is None:
            continue
        try:
            text = b.decode("utf-8")
        except UnicodeDecodeError:
            continue
        member[i] = _inside(text[:1], first) and _inside(text[1:], sigma)
        count[i] = len(text)
    assert member.sum() > 100, name

    def bits(row):
        return np.unpackbits(row.view(np.uint8), bitorder="little")[:V].astype(bool)

    assert np.array_equal(bits(table.row(tuple(range(1, table.max_count + 1)))), member)
    for c in (1, 2, 3, 5, 8):
        assert np.array_equal(bits(table.row((c,))), member & (count == c)), (name, c)
    assert np.array_equal(bits(table.row((2, 5))), member & np.isin(count, [2, 5]))
    for counts in [tuple(range(1, 9)), (3, 4, 5, 6)]:  # (ranges: a bounded string's chain)
        assert np.array_equal(bits(table.row(counts)), member & np.isin(count, counts)), (name, counts)
    # a node is skipped exactly when every token through it (its prefix and all continuations) is
    # such a token: checked on the tokens' byte strings, prefix by prefix
    trie = vocab.byte_trie()
    offset = np.cumsum([0] + list(trie.node_counts[:-1]))
    rest, node_first, sig, ok = table.skip
    skip = ~((rest & ~sig) != 0).any(axis=1) & (ok[node_first] == 1)
    prefix_ok: dict[bytes, bool] = {}
    for i, b in enumerate(vocab.token_bytes):
        if b is None:
            continue
        for k in range(1, len(b) + 1):
            prefix_ok[b[:k]] = prefix_ok.get(b[:k], True) and bool(member[i])
    node_of = {}
    for d in range(trie.depth):
        for tok, node in zip(trie.tokens_at[d].tolist(), trie.token_node[d].tolist()):
            node_of[vocab.token_bytes[tok]] = offset[d] + node
    rng = np.random.default_rng(0)
    keys = list(node_of)
    for j in rng.choice(len(keys), size=min(20000, len(keys)), replace=False).tolist():
        key = keys[j]
        assert skip[node_of[key]] == prefix_ok[key], (name, key)
    assert skip.sum() > 0


def _tree(value: dict) -> dict:
    """A recursive schema (so that it compiles to the pushdown matcher, whose walks take runs)."""
    return {"$defs": {"node": {"type": "object", "properties": {
        "v": value, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}, "$ref": "#/$defs/node"}


SCHEMAS = [
    _tree({"type": "string"}),
    _tree({"type": "string", "maxLength": 30}),
    _tree({"type": "string", "minLength": 3, "maxLength": 9}),
    _tree({"type": "string", "pattern": "^[a-z ]{0,40}$"}),
    _tree({"type": "string", "pattern": "^[A-Za-z0-9 ,.]+$"}),
    {"type": "object", "properties": {"id": {"type": "integer"}, "title": {"type": "string"},
                                      "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}}}},
    _tree({"enum": ["alpha", "beta", "gé"]}),
]


#: Prefixes fed token by token before the random walks (every position inside a string is a run).
PREFIXES = ['{"v":"', '{"v":"abc', '{"kids":[{"v":"abcdefgh', '{"title":"', '{"tags":["ab', '{"v":"al']


@pytest.mark.parametrize("spec", SCHEMAS, ids=[str(i) for i in range(len(SCHEMAS))])
def test_masks_with_runs_equal_full_walks(tekken_vocab, tekken_tokenizer, spec, monkeypatch):
    """Along fixed prefixes and random token walks that favour long string tokens, the masks with
    the run shortcut equal the masks of full vocabulary walks (the shortcut off) at every step."""
    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    longest = np.array([len(b) if b else 0 for b in tekken_vocab.token_bytes])
    rng = np.random.default_rng(11)
    used = []
    real = runs.plan

    def counting(*a):
        got = real(*a)
        used.append(got is not None)
        return got

    monkeypatch.setattr(runs, "plan", counting)
    monkeypatch.setattr(pushdown, "USE_DONORS", False)  # (property names would take their loop's walk)
    walks = [tekken_tokenizer.encode(p, add_special_tokens=False) for p in PREFIXES] + [[]] * 3
    for walk_no, prefix in enumerate(walks):
        runs.clear_memos()
        fast = GrammarMatcher(GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(spec))
        ref = GrammarMatcher(GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(spec))
        walk_together(tekken_vocab, fast, ref, lambda on: monkeypatch.setattr(pushdown, "USE_RUNS", on), rng, 30,
                      prefix=prefix, weight=longest.astype(float) ** 2 + 1, label=(spec, walk_no))
    assert any(used) or spec is SCHEMAS[-1], spec  # (an enum has no run)


#: Property names being written: declared names sharing prefixes (one with a non-ASCII character,
#: one with an escape), undeclared names allowed, and names of nested objects.
DONOR_SCHEMAS = [
    {"type": "object", "properties": {
        "name": {"type": "string"}, "names": {"type": "array", "items": {"type": "string"}},
        "nämе": {"type": "integer"}, "na\"me": {"type": "boolean"}, "x": {"type": "number"},
        "nest": {"type": "object", "properties": {"nested": {"type": "string", "maxLength": 5}},
                 "additionalProperties": {"type": "integer"}}}},
    _tree({"type": "object", "properties": {"title": {"type": "string"}, "tag": {"type": "integer"}}}),
]
DONOR_PREFIXES = ['{"', '{"na', '{"name', '{"names', '{"näm', '{"na\\', '{"nest":{"nes', '{"x', '{"v":{"ti',
                  '{"kids":[{"v":{"tag']


def _count_walks_from_known_walks(monkeypatch) -> list:
    """A list that gets, per :meth:`PushdownGrammar._donor_walk` call, whether it took the shortcut."""
    taken = []
    real = pushdown.PushdownGrammar._donor_walk

    def counting(self, *a):
        got = real(self, *a)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(pushdown.PushdownGrammar, "_donor_walk", counting)
    return taken


@pytest.mark.parametrize("spec", DONOR_SCHEMAS, ids=["names", "tree"])
def test_walks_from_a_known_walk_equal_full_walks(tekken_vocab, tekken_tokenizer, spec, monkeypatch):
    """Walks that take the tokens of most first bytes from the walk of the state those bytes run to
    (a property name being written: the undeclared name's loop) give the masks of full vocabulary
    walks at every step, along property-name prefixes and random walks; and they are taken."""
    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    longest = np.array([len(b) if b else 0 for b in tekken_vocab.token_bytes])
    rng = np.random.default_rng(3)
    taken = _count_walks_from_known_walks(monkeypatch)

    def use(on):
        monkeypatch.setattr(pushdown, "USE_RUNS", on)
        monkeypatch.setattr(pushdown, "USE_DONORS", on)

    walks = [tekken_tokenizer.encode(p, add_special_tokens=False) for p in DONOR_PREFIXES] + [[]] * 3
    for walk_no, prefix in enumerate(walks):
        runs.clear_memos()
        fast = GrammarMatcher(GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(spec))
        ref = GrammarMatcher(GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(spec))
        walk_together(tekken_vocab, fast, ref, use, rng, len(prefix) + 12, prefix=prefix,
                      weight=longest.astype(float) ** 2 + 1, label=(spec, walk_no))
    assert sum(taken) >= 5, taken


#: Two terminals with one loop of 80 ASCII characters: after "w" the loop is accepting at once
#: (its lexeme may end at a parenthesis), after "x" one character must come first. The walk of the
#: loop, made after "w", is the known walk of the state after "x" (equal balls); recursive: a
#: pushdown grammar.
ACCEPTING_LOOP = ('start: "(" (item | word | start) ")"\n'
                  'item: /x[a-zA-Z0-9 _.:;!?#$%&*+=<>@^|~{}]+/\nword: /w[a-zA-Z0-9 _.:;!?#$%&*+=<>@^|~{}]*/')


def test_walks_from_an_accepting_loop_take_none_of_its_lexeme_ends(tekken_vocab, monkeypatch):
    """A known walk from an accepting state ends lexemes at first bytes where the state it is
    taken for does not (after "x" a character must follow): those exits are not taken. Masks equal
    full vocabulary walks at every byte of the texts, with the shortcut taken."""
    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    taken = _count_walks_from_known_walks(monkeypatch)
    fast_grammar = GrammarCompiler(tekken_vocab, cache_size=0).compile_grammar(ACCEPTING_LOOP)
    ref_grammar = GrammarCompiler(tekken_vocab, cache_size=0).compile_grammar(ACCEPTING_LOOP)
    assert isinstance(fast_grammar, pushdown.PushdownGrammar)
    words = (tekken_vocab.size + 31) // 32

    def row(m, on):
        monkeypatch.setattr(pushdown, "USE_RUNS", on)
        monkeypatch.setattr(pushdown, "USE_DONORS", on)
        bm = np.zeros((1, words), dtype=np.int32)
        m.fill_next_token_bitmask(bm)
        return bm[0]

    after_x = None
    for text in ["(wab)", "(xcd)", "((x1))", "(x)"]:  # (the loop's walk first, after "w")
        fast, ref = GrammarMatcher(fast_grammar), GrammarMatcher(ref_grammar)
        for i in range(len(text)):
            got = row(fast, True)
            assert np.array_equal(got, row(ref, False)), (text, i)
            if text[: i] == "(x":
                after_x = got
            ok = fast.accept_string(text[i])
            assert ok == ref.accept_string(text[i]) and ok == (text != "(x)" or i < 2), (text, i)
            if not ok:
                break
    allowed = np.flatnonzero(np.unpackbits(after_x.view(np.uint8), bitorder="little")[: tekken_vocab.size])
    firsts = {tekken_vocab.token_bytes[t][:1] for t in allowed.tolist() if tekken_vocab.token_bytes[t]}
    assert firsts and b")" not in firsts, firsts
    assert any(taken), taken


def test_first_byte_rows_are_the_tokens_of_those_first_bytes(tekken_vocab):
    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    V = tekken_vocab.size
    for firsts in [(ord("a"),), (ord("n"), ord('"'), 0xE4), tuple(range(0x41, 0x5B))]:
        row = np.bitwise_or.reduce(runs.first_byte_rows(tekken_vocab)[list(firsts)], axis=0)
        got = np.unpackbits(row.view(np.uint8), bitorder="little")[:V].astype(bool)
        want = np.array([bool(b) and b[0] in firsts for b in tekken_vocab.token_bytes])
        assert np.array_equal(got, want), firsts


def test_donor_cut_is_the_numpy_reading(tekken_vocab):
    """The C cut of a donor walk's rows (the first bytes taken from the donor state, its rows less the
    tokens of the other bytes live from it) equals numpy's reading on random class tables: rows
    emptied (None), rows kept whole when nothing is dropped, too many bytes to drop."""
    from dotvllm_plugin.regex import byte_classes

    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    firsts = runs.first_byte_rows(tekken_vocab)
    words = firsts.shape[1]
    rng = np.random.default_rng(17)
    seen = {"none": 0, "emptied": 0, "whole": 0, "cut": 0}
    for trial in range(120):
        n = int(rng.integers(2, 8))
        table = rng.integers(-2, n, size=(n, 256))
        table[1] = np.where(rng.random(256) < [0.3, 0.97, 1.0][trial % 3], table[0], table[1])
        class_trans, classes = byte_classes(table.astype(np.int32))
        ct = np.ascontiguousarray(class_trans, dtype=np.int64)
        from_q, from_p = ct[1][classes], ct[0][classes]
        live = from_p >= 0
        take = live & (from_q == from_p)
        drop = np.flatnonzero(live & ~take)
        rows = [None if trial % 5 == 0 else rng.integers(-2**31, 2**31, size=words, dtype=np.int64).astype(np.int32)]
        rows.append(np.bitwise_or.reduce(firsts[drop], axis=0) if len(drop) else np.zeros(words, dtype=np.int32))
        noise = rng.integers(-2**31, 2**31, size=words, dtype=np.int64).astype(np.int32)
        rows.append(noise & firsts[int(rng.integers(0, 256))])
        got = index._cwalk.donor_cut(ct, ct.shape[1], classes, 1, 0, 24, firsts, rows)
        if len(drop) > 24:
            assert got is None, trial
            seen["none"] += 1
            continue
        got_take, kept = got
        assert np.frombuffer(got_take, dtype=np.uint8).tolist() == take.astype(np.uint8).tolist(), trial
        out = ~np.bitwise_or.reduce(firsts[drop], axis=0) if len(drop) else np.full(words, -1, dtype=np.int32)
        for row, k in zip(rows, kept):
            if not len(drop):  # (nothing to cut: the rows themselves)
                assert k is row, trial
                seen["whole"] += 1
                continue
            want = None if row is None else row & out
            if want is not None and not want.any():
                want = None
            if want is None:
                assert k is None, trial
                seen["emptied"] += row is not None
            else:
                assert np.array_equal(np.frombuffer(k, dtype=np.int32), want), trial
                seen["cut"] += 1
    assert min(seen.values()) > 3, seen


#: Bounded strings (each character position its own lexer state) in grammars (free-form values,
#: recursion).
BOUNDED = [
    {"type": "object", "properties": {"a": {"type": "string", "maxLength": 200}, "b": {"type": "string", "maxLength": 90}},
     "required": ["a"]},
    {"type": "array", "items": {"anyOf": [{"type": "string", "minLength": 2, "maxLength": 300}, {"$ref": "#"}]}},
]
LONG_TEXT = "The quick brown fox jumps over the lazy dog, again and again, " * 3


@pytest.mark.parametrize("spec", BOUNDED, ids=["object", "array"])
def test_ball_signatures_equal_whole_automaton_signatures(tekken_vocab, tekken_tokenizer, spec, monkeypatch):
    """Base walks shared by the automaton within a token's length of the state (positions of a
    counted repetition far from its end share one walk) give the masks of walks keyed by everything
    reachable, at every step along long strings and random walks; and they are shared."""
    prefix_text = '{"a":"' + LONG_TEXT if spec["type"] == "object" else '["' + LONG_TEXT[:100]
    walks = [tekken_tokenizer.encode(prefix_text, add_special_tokens=False)] + [[]] * 2
    longest = np.array([len(b) if b else 0 for b in tekken_vocab.token_bytes])
    rng = np.random.default_rng(5)
    for walk_no, prefix in enumerate(walks):
        fast_grammar = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(spec)
        fast = GrammarMatcher(fast_grammar)
        ref = GrammarMatcher(GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(spec))
        walk_together(tekken_vocab, fast, ref, lambda on: monkeypatch.setattr(pushdown, "BALL_SIGNATURES", on), rng,
                      len(prefix) + 25, prefix=prefix, weight=longest.astype(float) ** 2 + 1, label=(spec, walk_no))
        assert isinstance(fast_grammar, pushdown.PushdownGrammar)
        if walk_no == 0:  # along the long string: most positions share a walk
            assert len(fast_grammar._base_shared) < len(fast_grammar._base) / 2, \
                (len(fast_grammar._base_shared), len(fast_grammar._base))


@pytest.mark.parametrize("spec", BOUNDED, ids=["object", "array"])
def test_a_lexers_ball_reader_gives_the_one_off_balls_and_refuses_bad_tables(tekken_vocab, spec):
    """``_cwalk.ball_at`` through a lexer's ``ball_reader`` (its tables checked and held once, the
    work arrays reused from ball to ball) returns exactly what the one-off ``_cwalk.ball`` does, for
    every state of every lexer, asked in any order; a table with a target outside the lexer, a class
    out of range or a short ``chosen`` is refused when the reader is made."""
    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    g = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(spec)
    assert isinstance(g, pushdown.PushdownGrammar)
    g._build_all()
    rng = np.random.default_rng(0)
    for lexer in range(g.n_lexers):
        ct, view, _, lo, chosen, groups = g._walk_args(lexer)
        reader = index._cwalk.ball_reader(ct, ct.shape[1], chosen, groups[0], view.byte_class, lo)
        for q in rng.permutation(len(chosen)).tolist():
            for depth in (1, g._max_token_len):
                one_off = index._cwalk.ball(ct, ct.shape[1], q, depth, chosen, groups[0], view.byte_class, lo)
                assert index._cwalk.ball_at(reader, q, depth) == one_off, (lexer, q, depth)
        with pytest.raises(ValueError):
            index._cwalk.ball_at(reader, len(chosen), 1)
    bad = ct.copy()
    bad[0, 0] = len(chosen)
    for args in ((bad, ct.shape[1], chosen, groups[0], view.byte_class, lo),
                 (ct, ct.shape[1], chosen[:-1], groups[0], view.byte_class, lo),
                 (ct, ct.shape[1], chosen, groups[0], view.byte_class + ct.shape[1], lo)):
        with pytest.raises(ValueError):
            index._cwalk.ball_reader(*args)


@pytest.mark.parametrize("spec", BOUNDED, ids=["object", "array"])
def test_c_balls_are_the_breadth_first_balls_and_equal_signatures_mean_equal_automata(tekken_vocab, spec,
                                                                                     monkeypatch):
    """The C ball (``_cwalk.ball``): the states within a token's length of ``q`` (the Python
    breadth-first search on the byte table is the reference), in breadth-first order; and two states
    with equal signatures, in one lexer or two, have the same byte-level automaton on their balls
    (rows relabelled to ball positions over all 256 bytes, the pattern of terminals with ``terms``
    naming them, whether the parser must consent, which states share a reach); states of different
    lexers do share signatures."""
    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    g = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(spec)
    assert isinstance(g, pushdown.PushdownGrammar)
    g._build_all()
    n = g.n_lexer_states
    radius = g._max_token_len
    by_sig: dict[bytes, list] = {}
    for q in range(0, n, max(1, n // 400)):
        states, sig, terms = g._canonical(q)
        lexer = g._owner[q]
        lo = g._lexer_lo[lexer]
        block, chosen = g._blocks[lexer]
        # reference: distances by breadth-first search over the 256-byte rows
        dist = {q: 0}
        frontier = [q]
        for d in range(1, radius + 1):
            nxt = []
            for s in frontier:
                for t in set(block[s - lo].tolist()):
                    if t >= 0 and t not in dist:
                        dist[t] = d
                        nxt.append(t)
            if not nxt:
                break
            frontier = nxt
        order = states.tolist()
        assert sorted(order) == sorted(dist), q
        assert [dist[s] for s in order] == sorted(dist[s] for s in order), q  # breadth-first
        pos = {s: i for i, s in enumerate(order)}
        rows = block[states - lo].astype(np.int64)
        relabelled = np.vectorize(lambda t: -1 if t < 0 else pos.get(int(t), -3))(rows)
        consent = [g._reach[s] is None for s in order]
        first_with = {}  # the reach sets, by first appearance in the ball
        partition = [first_with.setdefault(g._reach[s], len(first_with)) for s in order]
        ch = chosen[states - lo].tolist()
        assert sorted(terms) == sorted({c for c in ch if c >= 0}) and len(set(terms)) == len(terms)
        kinds = [-1 if c < 0 else terms.index(c) for c in ch]  # the terminals, by first appearance
        assert kinds == [k if k < 0 else min(k, max(kinds[:i] + [-1]) + 1) for i, k in enumerate(kinds)]
        by_sig.setdefault(sig, []).append((relabelled, kinds, consent, partition, lexer))
    shared = [v for v in by_sig.values() if len(v) > 1]
    assert shared  # positions along the bounded strings share a signature
    if spec["type"] == "object":  # and the two strings' balls, in different lexers, far from their ends
        assert any(len({x[4] for x in v}) > 1 for v in shared)
    for group in shared:
        for relabelled, kinds, consent, partition, _ in group[1:]:
            assert np.array_equal(relabelled, group[0][0]) and kinds == group[0][1] and consent == group[0][2]
            assert partition == group[0][3]


REACH_SCHEMAS = BOUNDED + [
    {"type": "array", "items": {"anyOf": [{"enum": ["x", "yy"]}, {"type": "string", "pattern": "^[a-z]+$"},
                                          {"$ref": "#"}]}},
    {"type": "array", "items": {"anyOf": [{"type": ["number", "boolean", "null", "string"]}, {"$ref": "#"}]}},
]


@pytest.mark.parametrize("spec", REACH_SCHEMAS, ids=["object", "array", "enums-and-compounds", "scalars"])
def test_c_reach_sets_equal_the_python_fixpoint(tekken_vocab, spec):
    """``_cwalk.reach_sets`` (the terminals a lexeme in progress can still become, per lexer state)
    equals :func:`pushdown._reachable_terminals` on every state of every lexer, compound lexemes
    (one lexeme several terminals type) included; the reach groups put two states together exactly
    when their reach is the same, and in group 0 exactly when it is None."""
    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    g = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(spec)
    assert isinstance(g, pushdown.PushdownGrammar)
    g._build_all()
    compared = 0
    for lexer in range(g.n_lexers):
        _, chosen = g._blocks[lexer]
        ref = pushdown._reachable_terminals(None, chosen, g._ignore, g._local_successors(lexer), g._compounds.expand)
        index_of, sets, groups = g._reach._from_c(lexer, chosen)
        values = [None] + [sets[i] for i in index_of[1:].tolist()]  # (the lexeme start: None)
        assert values[1:] == ref[1:], lexer
        lo = g._lexer_lo[lexer]
        assert [g._reach[lo + i] for i in range(len(values))] == values, lexer  # (as read state by state)
        groups = groups.tolist()
        for i in range(len(values)):
            assert (groups[i] == 0) == (values[i] is None), (lexer, i)
            for j in range(i):
                assert (groups[i] == groups[j]) == (values[i] == values[j]), (lexer, i, j)
        compared += len(ref)
    assert compared > 10
    if "enum" in str(spec):
        assert g._compounds.members  # ("x" is a string of the pattern too: one lexeme, two terminals)


def _step_text(table: np.ndarray, q: int, data: bytes) -> int:
    for b in data:
        q = int(table[q, b])
        if q < 0:
            return q
    return q


def _non_ascii_reference(table: np.ndarray, q: int) -> int:
    """Where every non-ASCII character leads from ``q`` in a byte table (-1 dead, -2 lexeme end),
    state by state in Python: each UTF-8 sequence's byte ranges read in turn, every byte of a range
    from the one state reached so far; ``_BAD`` when bytes of a range lead apart or into a lexeme
    end, or two sequences end apart."""
    from dotvllm_plugin.regex.charsets import utf8_sequences

    ends = set()
    for a, b in runs._NON_ASCII:
        for seq in utf8_sequences(a, b):
            cur = q
            for lo, hi in seq:
                if cur < 0:
                    break
                targets = {int(table[cur, x]) for x in range(lo, hi + 1)}
                if len(targets) > 1 or -2 in targets:
                    return runs._BAD
                cur = targets.pop()
            ends.add(runs._DEAD if cur < 0 else cur)
    return ends.pop() if len(ends) == 1 else runs._BAD


def test_non_ascii_targets_by_range_equal_a_state_by_state_reading_and_python_encoding():
    """Where every non-ASCII character leads from each state, computed per byte range: equal to a
    state-by-state reading of the UTF-8 sequences in Python, and, where it names one target, that
    is where the UTF-8 encoding (Python's) of sampled characters leads, a lexeme end never passed
    on the way."""
    from dotvllm_plugin.regex import byte_classes

    rng = np.random.default_rng(7)
    chars = [chr(c) for c in rng.integers(0x80, 0x110000, size=400) if not 0xD800 <= c <= 0xDFFF]
    chars += ["\x80", "\u07ff", "\u0800", "\ud7ff", "\ue000", "\uffff", "\U00010000", "\U0010ffff"]
    named = 0
    for trial in range(120):
        n = int(rng.integers(1, 30))
        table = rng.integers(-2, n, size=(n, 256))
        base = rng.integers(-2, n, size=(n, 1))
        if trial % 3 == 0:  # mostly one target per state
            table = np.where(rng.random((n, 256)) < 0.98, base, table)
        elif trial % 3 == 1:  # every non-ASCII byte to one target, or looping (a string body)
            table[:, 0x80:] = base if trial % 2 else np.where(rng.random((n, 1)) < 0.8, np.arange(n)[:, None], -1)
        class_trans, classes = byte_classes(table.astype(np.int32))  # (the lexers' partition)
        class_trans = class_trans.astype(np.int64)
        byte_table = class_trans[:, classes]
        assert np.array_equal(byte_table, table)
        got = runs._non_ascii_targets(class_trans, classes)
        assert got.tolist() == [_non_ascii_reference(byte_table, q) for q in range(n)]
        for q in np.flatnonzero(got != runs._BAD).tolist():
            named += 1
            for ch in chars:
                data = ch.encode()
                ends = [_step_text(byte_table, q, data[:k]) for k in range(1, len(data) + 1)]
                assert -2 not in ends
                assert (runs._DEAD if ends[-1] < 0 else ends[-1]) == got[q]
    assert named > 50


def test_c_class_targets_equal_the_numpy_reading(monkeypatch):
    """Where every character of Σ leads from each state, in C and in numpy (the non-ASCII part by
    byte range, above), on random lexer tables and Σ with and without the non-ASCII characters."""
    from dotvllm_plugin.regex import byte_classes

    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    rng = np.random.default_rng(9)
    sigmas = [((0x20, 0x21), (0x23, 0x5B), (0x5D, 0x10FFFF)), ((0x20, 0x7E),), ((0x30, 0x39), (0x41, 0x5A)),
              ((0x00, 0x7F), (0x80, 0xD7FF), (0xE000, 0x10FFFF)), ((0x61, 0x61),)]
    checked = 0
    for trial in range(150):
        n = int(rng.integers(1, 30))
        table = rng.integers(-2, n, size=(n, 256))
        base = rng.integers(-2, n, size=(n, 1))
        if trial % 3 == 0:
            table = np.where(rng.random((n, 256)) < 0.98, base, table)
        elif trial % 3 == 1:
            table[:, 0x20:] = base if trial % 2 else np.where(rng.random((n, 1)) < 0.8, np.arange(n)[:, None], -1)
        if trial % 5 == 4:  # every character dead but for one UTF-8 sequence that ends the lexeme halfway
            table = np.full((n, 256), -1)
            mid = int(rng.integers(0, n))
            table[:, 0xC2:0xE0] = mid
            table[mid, 0x80:0xC0] = -2
        class_trans, classes = byte_classes(table.astype(np.int32))
        class_trans = class_trans.astype(np.int64)
        for sigma in sigmas:
            monkeypatch.setattr(runs, "USE_C_TARGETS", True)
            fast = runs._class_targets(class_trans, classes, sigma, {})
            monkeypatch.setattr(runs, "USE_C_TARGETS", False)
            ref = runs._class_targets(class_trans, classes, sigma, {})
            assert fast.tolist() == ref.tolist(), (trial, sigma)
            checked += int((ref >= 0).sum())
            monkeypatch.setattr(runs, "USE_C_TARGETS", True)  # one state at a time (the C ``only`` argument)
            assert [runs._class_targets_at(class_trans, classes, sigma, q, {}) for q in range(n)] == ref.tolist()
    assert checked > 100


def test_c_run_first_equals_the_numpy_reading(monkeypatch):
    """A state's first-character class (where most printable ASCII characters lead, and which ASCII
    characters lead there) and its Σ, in C and in numpy, on random lexer tables: ties between
    targets, too few live characters, too few leading to the most common target."""
    from dotvllm_plugin.regex import byte_classes

    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    rng = np.random.default_rng(11)
    found = refused = with_non_ascii = 0
    for trial in range(300):
        n = int(rng.integers(1, 12))
        table = rng.integers(-2, n, size=(n, 256))
        kind = trial % 4
        if kind == 0:  # most characters to one target (a string body's state)
            table = np.where(rng.random((n, 256)) < 0.9, rng.integers(-1, n, size=(n, 1)), table)
        elif kind == 1 and n > 1:  # two targets tied, the higher one met first (the lower one wins)
            table[:, 0x20:0x4F], table[:, 0x4F:0x7E], table[:, 0x7E] = 1, 0, -1
        elif kind == 2:  # about MIN_ASCII characters alive
            alive = rng.random(256) < (runs.MIN_ASCII + rng.integers(-3, 4)) / 95
            table = np.where(alive, rng.integers(0, n, size=(n, 1)), -1)
        elif n > 4:  # a string body's loop: every non-ASCII character back to the loop through its
            # continuation states, or, now and then, one lead byte or one continuation byte astray
            loop, c1, c2, c3 = 0, n - 1, n - 2, n - 3
            table[:, 0x20:0x80] = np.where(rng.random(0x60) < 0.9, loop, table[:, 0x20:0x80])
            table[:, 0xC2:0xE0], table[:, 0xE0:0xF0], table[:, 0xF0:0xF5] = c1, c2, c3
            table[c1, 0x80:0xC0], table[c2, 0x80:0xC0], table[c3, 0x80:0xC0] = loop, c1, c2
            if trial % 3 == 0:
                table[int(rng.integers(0, n - 3)), int(rng.integers(0xC2, 0xF5))] = int(rng.integers(-2, n))
            elif trial % 3 == 1:
                table[int(rng.integers(n - 3, n)), int(rng.integers(0x80, 0xC0))] = int(rng.integers(-2, n))
        class_trans, classes = byte_classes(table.astype(np.int32))
        class_trans = class_trans.astype(np.int64)
        for q in range(n):
            monkeypatch.setattr(runs, "USE_C_TARGETS", True)
            fast = runs._find_run_class(class_trans, classes, q, {})
            monkeypatch.setattr(runs, "USE_C_TARGETS", False)
            ref = runs._find_run_class(class_trans, classes, q, {})
            assert fast == ref, (trial, q)
            found += ref is not None
            refused += ref is None
            with_non_ascii += ref is not None and ref[0][-1][1] >= 0x80
    assert found > 50 and refused > 50 and with_non_ascii > 20


def test_sigmas_are_the_code_ranges_of_their_characters():
    """The two Σ of a first-character class, read off its ASCII code points, are those of the
    charset helpers (the code points' runs, and the same merged with every non-ASCII character)."""
    from dotvllm_plugin.regex.charsets import code_ranges, merge_ranges

    rng = np.random.default_rng(5)
    for trial in range(500):
        codes = np.flatnonzero(rng.random(128) < rng.random()) if trial % 4 else np.arange(int(rng.integers(0, 127)), 128)
        if not len(codes):
            continue
        ascii_only = tuple(code_ranges(codes.tolist()))
        both = merge_ranges(ascii_only + runs._NON_ASCII)
        assert runs._sigmas.__wrapped__(codes.astype(np.int64).tobytes()) == (both, ascii_only), codes


def test_pinned_tables_survive_the_cold_clear(tekken_vocab):
    """The run tables of the pinned string walks are kept through ``clear_memos`` (what a cold
    benchmark compile does) with their row of all, less the rows of count sets asked for since
    (made again alike); other tables are not kept."""
    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    pushdown.pinned_walks(tekken_vocab)
    key = (tekken_vocab.fingerprint, BODY, BODY)
    assert key in runs._pinned  # the JSON string body's table, made (or kept) by the pinned walks
    body = runs.run_table(tekken_vocab, BODY, BODY)
    other = runs.run_table(tekken_vocab, LETTERS, LETTERS)
    every = body._all
    some = body.row((1, 2, 3))
    assert (1, 2, 3) in body._rows
    other.row((2, 4))
    runs.clear_memos()
    assert runs.run_table(tekken_vocab, BODY, BODY) is body and body._all is every and not body._rows
    assert runs.run_table(tekken_vocab, LETTERS, LETTERS) is not other
    assert np.array_equal(body.row((1, 2, 3)), some)
    with runs.pinned():
        kept = runs.run_table(tekken_vocab, LETTERS, BODY)
    runs.clear_memos()
    assert runs.run_table(tekken_vocab, LETTERS, BODY) is kept
    runs._pinned.pop((tekken_vocab.fingerprint, LETTERS, BODY))


def test_rows_by_count_are_the_row_of_all_and_the_counts(tekken_vocab):
    """A run table's rows by count (the row of all ANDed with the vocabulary's tokens of 1 to c
    characters) equal the rows read from every token by count (``_cwalk.run_rows``, one row per
    exact count), for ranges from 1, ranges past 1, and scattered counts; its row of all (read from
    the ASCII tokens alone where F and Σ are ASCII) equals the one read from every token."""
    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    tc = runs.token_chars(tekken_vocab)
    rng = np.random.default_rng(11)
    for first, sigma in ((BODY, BODY), (LETTERS, LETTERS), (LETTERS, BODY)):
        table = runs.RunTable(tc, first, sigma)
        exact = np.frombuffer(index._cwalk.run_rows(tc.token_rest, tc.token_first, tc.count, table._sig, table._ok,
                                                    tc.max_count, tc.words), dtype=np.int32).reshape(-1, tc.words)
        assert np.array_equal(exact[0], table._all)
        asked = [tuple(range(1, 4)), tuple(range(5, 30)), tuple(range(1, tc.max_count)), (2, 7, 9),
                 tuple(range(1, tc.max_count + 1))]
        asked += [tuple(sorted(set(rng.integers(1, tc.max_count + 1, 6).tolist()))) for _ in range(5)]
        for counts in asked:
            want = np.bitwise_or.reduce([exact[c] for c in counts], axis=0)
            assert np.array_equal(table.row(counts), want), counts
        assert table.row((1, 2, 3)).any()


def test_plan_gives_one_row_per_group(tekken_vocab):
    """With the states' groups, the plan's rows are the per-state rows ORed by group, each under a
    state of its group (here a bounded string's chain split into two groups by state parity)."""
    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    from dotvllm_plugin.regex import byte_classes, regex_to_dfa

    dfa = regex_to_dfa('"[^"\\\\\\x00-\\x1f]{0,60}"')
    ct, bc = byte_classes(dfa.transitions)
    ct = ct.astype(np.int64)
    q = int(dfa.transitions[dfa.initial, ord('"')])
    groups = [s % 2 for s in range(len(ct))]
    plain = runs.plan(tekken_vocab, ct, bc, q, {})
    grouped = runs.plan(tekken_vocab, ct, bc, q, {}, groups)
    assert plain is not None and len(plain.ends) > 40
    expected: dict = {}
    for s, row in plain.ends:
        expected[groups[s]] = expected[groups[s]] | row if groups[s] in expected else row
    got = {groups[s]: row for s, row in grouped.ends}
    assert len(grouped.ends) == len(got) == 2 and got.keys() == expected.keys()
    assert all(np.array_equal(got[k], expected[k]) for k in got)
