"""JSON Schema end to end through the engine: GrammarCompiler(Tekken) + GrammarMatcher."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from dotvllm_plugin import GrammarCompiler, GrammarMatcher, UnsupportedFeatureError
from dotvllm_plugin.grammar.json_schema import order_properties
from mask_walks import walk_together

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "ç"]}, "maxItems": 3},
        "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
TREE = {
    "$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "kids": {
        "type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["v"], "additionalProperties": False}},
    "$ref": "#/$defs/node",
}
UNION = {"oneOf": [
    {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "number", "minimum": 0}},
     "required": ["kind", "r"], "additionalProperties": False},
    {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "integer"}},
     "required": ["kind", "side"], "additionalProperties": False},
    {"type": "null"},
]}
TEXT = {"type": "object", "properties": {
    "id": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
    "when": {"type": "string", "format": "date-time"},
    "note": {"type": "string"},
}, "required": ["id", "when", "note"]}

CASES = [
    ("person", PERSON,
     [{"name": "Zoë", "age": 31}, {"name": "Al", "age": 0, "email": "al@x.org", "tags": ["ç", "a"], "score": 0.5}],
     [{"name": "Al"}, {"name": "Al", "age": 151}, {"name": "Al", "age": 3, "score": 0}, {"age": 3, "name": "Al"},
      {"name": "x" * 21, "age": 1}]),
    ("tree", TREE, [{"v": 1}, {"v": 1, "kids": [{"v": 2, "kids": []}, {"v": -3}]}],
     [{"v": "1"}, {"v": 1, "kids": [{}]}, {"kids": []}]),
    ("union", UNION, [{"kind": "circle", "r": 2.5}, {"kind": "square", "side": 3}, None],
     [{"kind": "circle", "side": 3}, {"kind": "square", "r": 1}, {"kind": "circle", "r": -1}]),
    ("text", TEXT, [{"id": "AB-123", "when": "2024-02-29T12:00:00Z", "note": "line\n\"quoted\" 日本 😀"}],
     [{"id": "AB-1234", "when": "2024-02-29T12:00:00Z", "note": ""},
      {"id": "AB-123", "when": "2023-02-29T12:00:00Z", "note": ""}]),
]


@pytest.fixture(scope="module")
def compiler(tekken_vocab):
    return GrammarCompiler(tekken_vocab)


def ser(x) -> str:
    return json.dumps(x, separators=(",", ":"), ensure_ascii=False)


def walk(cg, tokenizer, text: str) -> bool:
    m = GrammarMatcher(cg)
    for t in tokenizer.encode(text, add_special_tokens=False):
        if not m.accept_token(t):
            return False
    return m.is_completed()


@pytest.mark.parametrize("schema, valid, invalid", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_instances_through_the_matcher(compiler, tekken_tokenizer, schema, valid, invalid):
    cg = compiler.compile_json_schema(schema)
    for inst in valid:
        assert walk(cg, tekken_tokenizer, ser(order_properties(inst, schema))), inst
    for inst in invalid:
        assert not walk(cg, tekken_tokenizer, ser(inst)), inst


@pytest.mark.parametrize("schema", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_random_walks_validate(compiler, tekken_vocab, schema):
    """Follow random allowed tokens; every document the matcher lets finish validates."""
    cg = compiler.compile_json_schema(schema)
    rng = np.random.default_rng(0)
    eos = np.array(tekken_vocab.eos_token_ids)
    lengths = np.array([len(b or b"") for b in tekken_vocab.token_bytes])
    closing = np.array([bool(b) and set(b) <= set(b'"]}') for b in tekken_vocab.token_bytes])
    finished = 0
    for _ in range(8):
        m = GrammarMatcher(cg)
        out = b""
        for _ in range(160):
            allowed = m.allowed_token_ids()
            allowed = allowed[~np.isin(allowed, eos)]
            if m.is_completed() and (allowed.size == 0 or rng.random() < 0.3):
                break
            if allowed.size == 0:
                break
            # biased to short tokens and closing quotes/brackets, so that free-form values (any
            # depth) and strings end within the budget
            closers = allowed[closing[allowed]]
            short = allowed[lengths[allowed] <= 2]
            pick = rng.random()
            pool = closers if closers.size and pick < 0.3 else short if short.size and pick < 0.8 else allowed
            t = int(rng.choice(pool))
            assert m.accept_token(t)
            out += tekken_vocab.token_bytes[t]
        if m.is_completed():
            finished += 1
            data = json.loads(out.decode("utf-8"))
            assert jsonschema.validators.validator_for(schema)(schema).is_valid(data), out
    assert finished > 0


def test_json_object_and_whitespace(compiler, tekken_tokenizer):
    cg = compiler.compile_json_object()
    assert walk(cg, tekken_tokenizer, '{"a":[1,{"b":null}],"c":"d"}')
    assert not walk(cg, tekken_tokenizer, "[1]")
    cg = compiler.compile_json_schema(PERSON, whitespace_pattern="[ ]?")
    assert walk(cg, tekken_tokenizer, '{ "name": "Al", "age": 3 }')
    assert not walk(cg, tekken_tokenizer, '{  "name": "Al", "age": 3 }')


def test_schema_errors_surface_through_the_compiler(compiler):
    with pytest.raises(UnsupportedFeatureError, match="uniqueItems") as info:
        compiler.compile_json_schema({"type": "array", "uniqueItems": True})
    assert info.value.where == "/uniqueItems"
    with pytest.raises(UnsupportedFeatureError, match="unboundedly long"):
        compiler.compile_json_schema(PERSON, whitespace_pattern="[ ]*")


def test_bitmask_agrees_with_accept(compiler, tekken_tokenizer, tekken_vocab):
    cg = compiler.compile_json_schema(UNION)
    m = GrammarMatcher(cg)
    bitmask = np.zeros((1, (tekken_vocab.size + 31) // 32), dtype=np.int32)
    for t in tekken_tokenizer.encode('{"kind":"square","side":12}', add_special_tokens=False):
        m.fill_next_token_bitmask(bitmask)
        assert (bitmask[0, t >> 5] >> (t & 31)) & 1
        assert m.accept_token(t)
    assert m.is_completed()


@pytest.mark.parametrize("spec", [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "tags": {"type": "array",
     "items": {"enum": ["a", "bé", "c\n"]}}, "n": {"type": "number"}}, "required": ["name"]},
    {"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "object", "properties": {
        "k": {"type": "boolean"}}}]}},
    "lark",
])
def test_masks_equal_with_and_without_the_c_walk(tekken_vocab, spec, monkeypatch):
    """The pushdown masks (first visits: vocabulary walks grouped into rows by end state) are the
    same from the C walk and from the numpy walk, along random token walks."""
    from dotvllm_plugin import index

    if index._cwalk is None:
        pytest.skip("the C extension is not built here")

    def compiled():
        c = GrammarCompiler(tekken_vocab, cache_size=0)
        if spec == "lark":
            return c.compile_grammar('start: item+\nitem: WORD ":" NUMBER ";"\n%import common.WORD\n'
                                     '%import common.NUMBER\n%ignore " "')
        return c.compile_json_schema(spec)

    rng = np.random.default_rng(7)
    for walk_no in range(4):
        monkeypatch.setattr(index, "USE_C_WALK", True)
        fast = GrammarMatcher(compiled())
        monkeypatch.setattr(index, "USE_C_WALK", False)
        ref = GrammarMatcher(compiled())
        walk_together(tekken_vocab, fast, ref, lambda on: monkeypatch.setattr(index, "USE_C_WALK", on), rng, 40,
                      label=(spec, walk_no))


@pytest.mark.parametrize("use_c", [True, False], ids=["c", "numpy"])
def test_walk_rows_by_group_are_the_rows_by_end_state_ored_per_group(tekken_vocab, use_c, monkeypatch):
    """Walks that collect one row per group of end states (the pushdown matcher groups them by the
    terminals still reachable) hold exactly the OR of the per-end-state rows of each group, under
    an end state of that group; random groupings, every lexer of a schema, walks from the root and
    resumed at trie nodes."""
    from dotvllm_plugin import index, pushdown

    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    spec = {"$defs": {"n": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20}, "tags": {"type": "array", "items": {"enum": ["a", "b", "ç"]}},
        "score": {"type": "number"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/n"}}},
        "required": ["name"]}}, "$ref": "#/$defs/n"}
    g = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(spec)
    assert isinstance(g, pushdown.PushdownGrammar)
    g._build_all()
    rng = np.random.default_rng(3)
    W = (tekken_vocab.size + 31) // 32
    compared = 0
    for lexer in range(g.n_lexers):
        ct, view, first = g._walker(lexer)
        n = ct.shape[0]
        for k in (1, 2, max(1, n // 3)):
            groups = rng.integers(0, k, n).astype(np.int64)
            for q in rng.choice(n, size=min(n, 6), replace=False).tolist():
                start = np.array([q], dtype=np.int64)
                monkeypatch.setattr(index, "USE_C_WALK", True)
                (ends, rows), _ = index.walk_rows_by_end(ct, view, W, start)  # the reference: per end state
                want: dict = {}
                for e, row in zip(ends.tolist(), rows):
                    want[int(groups[e])] = want.get(int(groups[e]), 0) | row
                monkeypatch.setattr(index, "USE_C_WALK", use_c)
                (g_ends, g_rows), _ = index.walk_rows_by_end(ct, view, W, start, groups=groups)
                got = {int(groups[e]): row for e, row in zip(g_ends.tolist(), g_rows)}
                assert len(got) == len(g_ends) == len(want), (lexer, q)
                assert set(g_ends.tolist()) <= set(ends.tolist())
                for key, row in want.items():
                    assert np.array_equal(got[key], row), (lexer, q, key)
                compared += 1
            # resumed at the trie's first level (every one-byte token prefix that survives the start row)
            level = np.zeros(len(view.cls[0]), dtype=np.int64)
            node = np.arange(len(view.cls[0]), dtype=np.int64)
            monkeypatch.setattr(index, "USE_C_WALK", True)
            ref = index.walk_rows_from_nodes(ct, view, W, level, node, first)
            monkeypatch.setattr(index, "USE_C_WALK", use_c)
            got = index.walk_rows_from_nodes(ct, view, W, level, node, first, groups=groups)
            assert (ref is None) == (got is None)
            if ref is not None:
                want = {}
                for e, row in zip(ref[0][0].tolist(), ref[0][1]):
                    want[int(groups[e])] = want.get(int(groups[e]), 0) | row
                have = {int(groups[e]): row for e, row in zip(got[0][0].tolist(), got[0][1])}
                assert have.keys() == want.keys()
                assert all(np.array_equal(have[key], want[key]) for key in want)
    assert compared > 30


@pytest.mark.parametrize("use_c", [True, False], ids=["c", "numpy"])
def test_walk_split_is_the_grouped_walk_split_by_group_and_terminal(tekken_vocab, use_c, monkeypatch):
    """``index.walk_split`` (the C split of a walk's buffers, or the numpy walk) gives what
    ``index.split_walk`` (Python) reads off the grouped walk: the group-0 row, the other groups'
    rows under their end states, the exits by terminal; in the C walk's own order in C, as sets
    otherwise; walks from the root, with a run plan's skip, and resumed at trie nodes, on every
    lexer of a schema with random groupings."""
    from dotvllm_plugin import index, pushdown, runs

    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    spec = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12}, "tags": {"type": "array", "items": {"enum": ["a", "b", "ç"]}},
        "score": {"type": "number"}, "flag": {"anyOf": [{"type": "boolean"}, {"type": "string"}]}},
        "required": ["name"]}
    g = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(spec)
    assert isinstance(g, pushdown.PushdownGrammar)
    g._build_all()
    rng = np.random.default_rng(5)
    W = (tekken_vocab.size + 31) // 32
    compared = exits_seen = skipped = resumed = 0

    def check(got, ref, ordered):
        assert (got[0] is None) == (ref[0] is None)
        if ref[0] is not None:
            assert np.array_equal(got[0], ref[0])
        if ordered:
            assert [e for e, _ in got[1]] == [e for e, _ in ref[1]]
            assert [t for t, _, _ in got[2]] == [t for t, _, _ in ref[2]]
            for (_, a), (_, b) in zip(got[1], ref[1]):
                assert np.array_equal(a, b)
            for (_, la, na), (_, lb, nb) in zip(got[2], ref[2]):
                assert np.array_equal(la, lb) and np.array_equal(na, nb)
        else:
            want = {int(groups[e]): row for e, row in ref[1]}
            assert {int(groups[e]): row.tobytes() for e, row in got[1]} == {k: r.tobytes() for k, r in want.items()}
            assert {t: sorted(zip(lv.tolist(), nd.tolist())) for t, lv, nd in got[2]} == \
                {t: sorted(zip(lv.tolist(), nd.tolist())) for t, lv, nd in ref[2]}

    for lexer in range(g.n_lexers):
        ct, view, first = g._walker(lexer)
        chosen = g._chosen_of(lexer)
        n = ct.shape[0]
        for k in (1, 2, max(1, n // 3)):
            groups = rng.integers(0, k, n).astype(np.int64)
            for q in rng.choice(n, size=min(n, 6), replace=False).tolist():
                start = np.array([q], dtype=np.int64)
                plan = runs.plan(tekken_vocab, ct, view.byte_class, q, {}, groups.tolist())
                for skip in (None,) if plan is None else (None, plan.skip):
                    monkeypatch.setattr(index, "USE_C_WALK", True)
                    ended, exits = index.walk_rows_by_end(ct, view, W, start, groups=groups, skip=skip)
                    ref = index.split_walk(ended, exits, groups, chosen)  # (the Python split)
                    monkeypatch.setattr(index, "USE_C_WALK", use_c)
                    if skip is not None and not use_c:
                        continue  # (the numpy walk has no skip)
                    got = index.walk_split(ct, view, W, groups, chosen, start, skip=skip)
                    check(got, ref, use_c)
                    if use_c:  # (the lexer's arguments held by a walker capsule: the same walk)
                        cap = index.walker(ct, view, W, groups, chosen)
                        check(index.walk_split(ct, view, W, groups, chosen, start, skip=skip, walker=cap), ref, True)
                    compared += 1
                    exits_seen += len(ref[2]) > 0
                    skipped += skip is not None
            # resumed at every first-level node, then at random nodes of the next levels (most of
            # them dead from the start row, some kept, one level's nodes possibly all dropped)
            resumes = [(np.zeros(len(view.cls[0]), dtype=np.int64), np.arange(len(view.cls[0]), dtype=np.int64))]
            for d in (1, 2, 3):
                picked = np.sort(rng.choice(len(view.cls[d]), size=min(len(view.cls[d]), 300), replace=False))
                resumes.append((np.full(len(picked), d, dtype=np.int64), picked.astype(np.int64)))
            for level, node in resumes:
                monkeypatch.setattr(index, "USE_C_WALK", True)
                walked = index.walk_rows_from_nodes(ct, view, W, level, node, first, groups=groups)
                monkeypatch.setattr(index, "USE_C_WALK", use_c)
                got = index.walk_rows_from_nodes(ct, view, W, level, node, first, groups=groups, chosen=chosen)
                assert (walked is None) == (got is None)
                if use_c:
                    held = index.walk_rows_from_nodes(ct, view, W, level, node, first, groups=groups, chosen=chosen,
                                                      walker=index.walker(ct, view, W, groups, chosen))
                    assert (held is None) == (got is None)
                    if held is not None:
                        check(held, index.split_walk(*walked, groups, chosen), True)
                resumed += walked is not None
                if walked is not None:
                    check(got, index.split_walk(*walked, groups, chosen), use_c)
    assert compared > 30 and exits_seen > 10 and (skipped > 0 or not use_c) and resumed > 10


def test_the_first_mask_prepares_lexers_and_masks_stay_the_same(tekken_vocab, tekken_tokenizer, monkeypatch):
    """A grammar's first mask makes its first PREPARED_LEXERS built lexers ready for walks and balls
    (held C tables), the others on first use; every mask of a walk is the same as without it."""
    from dotvllm_plugin import index, pushdown

    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    text = ser(order_properties(CASES[1][2][1], TREE))
    default = pushdown.PREPARED_LEXERS
    ids = tekken_tokenizer.encode(text, add_special_tokens=False)

    def masks(limit: int):
        monkeypatch.setattr(pushdown, "PREPARED_LEXERS", limit)
        g = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(TREE)
        assert isinstance(g, pushdown.PushdownGrammar) and g.n_lexers > 3
        m = GrammarMatcher(g)
        out = [m.allowed_token_ids()]
        ready = set(g._walk_caps) & set(g._ball_readers)
        for t in ids:
            assert m.accept_token(t)
            out.append(m.allowed_token_ids())
        return out, ready, g

    lazy, ready, _ = masks(0)
    assert len(ready) <= 1  # (at most the start's own lexer, on its first walk)
    some, ready, g = masks(2)
    assert set(range(2)) <= ready and len(ready) < g.n_lexers
    every, ready, g = masks(default)
    assert g.n_lexers <= default and ready == set(range(g.n_lexers))
    for a, b, c in zip(lazy, some, every, strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_a_walker_refuses_bad_tables_and_arguments(tekken_vocab):
    """``_cwalk.walker`` checks a lexer's tables once (groups in range, one terminal per state, 256
    byte classes) and ``walk_at`` each call's own arguments (local start states, injected nodes of
    the trie's levels, all three injection arrays or none, all four skip arrays or none)."""
    from dotvllm_plugin import index, pushdown

    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    g = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(TREE)
    assert isinstance(g, pushdown.PushdownGrammar)
    ct, view, first, lo, chosen, groups = g._walk_args(0)
    W = (tekken_vocab.size + 31) // 32
    n = ct.shape[0]
    cap = index.walker(ct, view, W, groups[0], chosen)
    start = np.array([0], dtype=np.int64)
    assert index.walk_split(ct, view, W, groups[0], chosen, start, walker=cap) is not None
    bad_groups = groups[0].copy()
    bad_groups[-1] = n
    with pytest.raises(ValueError, match="one group"):
        index.walker(ct, view, W, bad_groups, chosen)
    with pytest.raises(ValueError, match="one group"):
        index.walker(ct, view, W, groups[0], chosen[:-1])
    bad_table = ct.copy()
    bad_table[0, 0] = n
    with pytest.raises(ValueError, match="targets"):
        index.walker(bad_table, view, W, groups[0], chosen)
    nodes, bc, off, n_root, cs, ci = view.__dict__["_c_split_args"]
    with pytest.raises(ValueError, match="256 byte classes"):
        index._cwalk.walker(ct, ct.shape[1], nodes, bc[:255], off, n_root, cs, ci, W, n, groups[0], chosen,
                            index.MAX_INDEX_ENTRIES)
    with pytest.raises(ValueError, match="CSR"):
        index._cwalk.walker(ct, ct.shape[1], nodes, bc, off, n_root, cs, ci[:-1], W, n, groups[0], chosen,
                            index.MAX_INDEX_ENTRIES)
    none4 = (None, None, None, None)
    with pytest.raises(ValueError, match="local states"):
        index._cwalk.walk_at(cap, np.array([n], dtype=np.int64), None, None, None, *none4)
    one = np.zeros(1, dtype=np.int64)
    with pytest.raises(ValueError, match="all three"):
        index._cwalk.walk_at(cap, None, one, one, None, *none4)
    with pytest.raises(ValueError, match="a level of the trie"):
        index._cwalk.walk_at(cap, None, np.array([len(off) - 1], dtype=np.int64), one, first, *none4)
    with pytest.raises(ValueError, match="a level of the trie"):
        index._cwalk.walk_at(cap, None, one, np.array([off[1] - off[0]], dtype=np.int64), first, *none4)
    with pytest.raises(ValueError, match="all four"):
        index._cwalk.walk_at(cap, start, None, None, None, None, None, None, np.zeros(256, dtype=np.uint8))
    with pytest.raises(ValueError, match="invalid PyCapsule"):
        index._cwalk.walk_at(object(), start, None, None, None, *none4)


def test_byte_views_share_their_tries_tables_and_keep_their_own_classes(tekken_vocab):
    """A byte view after the vocabulary's first is a copy of the trie's references with its own
    classes: the same C walk arguments and level classes as a view made from scratch."""
    from dotvllm_plugin import index

    rng = np.random.default_rng(2)
    trie = tekken_vocab.byte_trie()
    index.byte_view(tekken_vocab, np.zeros(256, dtype=np.int64), 1)
    for _ in range(5):
        k = int(rng.integers(1, 9))
        bc = rng.integers(0, k, 256).astype(np.int64)
        view = index.byte_view(tekken_vocab, bc, k)
        fresh = index.ClassTrie(trie, bc, k, merge=False)
        assert view.depth == fresh.depth and view.n_nodes == fresh.n_nodes
        for d in (0, 1, view.depth - 1):
            assert np.array_equal(view.cls[d], fresh.cls[d])
        if index._cwalk is not None:
            for a, b in zip((*index._c_walk_view(view), *index._token_csr(view)),
                            (*index._c_walk_view(fresh), *index._token_csr(fresh))):
                assert np.array_equal(a, b)


def test_reach_tuples_read_bitsets_as_reach_sets(tekken_vocab):
    """``_cwalk.reach_tuples`` reads a lexer's distinct reach bitsets all at once as
    ``_reach_of_bits`` reads each: the terminals ascending, None when empty or one is ignored."""
    from dotvllm_plugin import index
    from dotvllm_plugin.pushdown import _ignored_bits, _reach_of_bits, _reach_words, _ReachSets

    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    rng = np.random.default_rng(3)
    kinds = set()
    for n_real in (1, 5, 63, 64, 65, 200):
        ignore = (rng.random(n_real) < 0.1).tolist()
        step = 8 * _reach_words(n_real)
        sets = [sum(1 << t for t in range(n_real) if rng.random() < p) for p in rng.choice([0.0, 0.05, 0.3], 40)]
        raw = b"".join(b.to_bytes(step, "little") for b in sets)
        got = index._cwalk.reach_tuples(raw, step, _ignored_bits(ignore, n_real))
        assert got == [_reach_of_bits(b, ignore) for b in sets]
        read_in_c = _ReachSets(raw, step, ignore, _ignored_bits(ignore, n_real))  # (one set per C call)
        order = rng.permutation(len(sets)).tolist()
        assert [read_in_c[i] for i in order] == [got[i] for i in order]
        kinds.update(x is None for x in got)
    assert kinds == {True, False}
    with pytest.raises(ValueError):
        index._cwalk.reach_tuples(b"\0" * 12, 8, np.zeros(1, dtype=np.uint64))


def test_donor_parts_in_c_agree_with_numpy(tekken_vocab, monkeypatch):
    """A donor walk's exits of the first bytes taken and its pending rows' places in the ball
    (``pushdown._donor_parts``): the C reading equals numpy's on random tries' exits, takes, balls
    and groups (all, some and none of a group's nodes kept; a group with no state in the ball), and
    bad arguments are refused."""
    from dotvllm_plugin import index, pushdown

    if index._cwalk is None:
        pytest.skip("the C extension is not built here")
    rng = np.random.default_rng(5)
    i64 = np.int64
    seen = set()
    for _ in range(200):
        widths = rng.integers(1, 30, rng.integers(1, 6))
        off = np.concatenate([[0], np.cumsum(widths)]).astype(i64)
        node_first = rng.integers(0, 256, int(off[-1])).astype(np.uint8)
        take = (rng.random(256) < rng.choice([0.0, 0.5, 1.0])).astype(np.uint8)
        exits = []
        for t in range(rng.integers(0, 4)):
            level = rng.integers(0, len(widths), rng.integers(1, 8)).astype(i64)
            node = np.array([rng.integers(0, widths[v]) for v in level], dtype=i64)
            exits.append((int(t), level, node))
        n = int(rng.integers(1, 12))
        groups = rng.integers(0, 4, n).astype(i64)
        ball = rng.permutation(n)[: rng.integers(1, n + 1)].astype(i64)
        pending = tuple(int(x) for x in rng.integers(0, n, rng.integers(0, 3)))
        got = {}
        for use_c in (True, False):
            monkeypatch.setattr(pushdown, "USE_C_DONOR_PARTS", use_c)
            got[use_c] = pushdown._donor_parts(take, node_first, off, tuple(exits), ball, groups, pending)
        if got[False] is None:
            assert got[True] is None
            seen.add("unmapped")
            continue
        (ex_c, map_c), (ex_np, map_np) = got[True], got[False]
        assert tuple(map_c) == tuple(map_np)
        assert len(ex_c) == len(ex_np)
        for (t1, l1, n1), (t2, l2, n2) in zip(ex_c, ex_np):
            assert t1 == t2 and l1.dtype == l2.dtype == i64 and np.array_equal(l1, l2) and np.array_equal(n1, n2)
        sizes = {t: len(level) for t, level, _ in exits}
        seen.update("all" if len(l) == sizes[t] else "some" for t, l, _ in ex_c)
        seen.add("dropped" if len(ex_np) < len(exits) else "kept")
    assert seen >= {"unmapped", "all", "some", "dropped", "kept"}
    ok = (np.ones(256, np.uint8), np.zeros(4, np.uint8), np.array([0, 4], dtype=i64))
    one = ((0, np.array([0], dtype=i64), np.array([4], dtype=i64)),)  # (node 4 of a level of 4)
    with pytest.raises(ValueError, match="exit nodes"):
        index._cwalk.donor_parts(*ok, one, np.array([0], dtype=i64), np.zeros(1, dtype=i64), ())
    with pytest.raises(ValueError, match="ball state"):
        index._cwalk.donor_parts(*ok, (), np.array([1], dtype=i64), np.zeros(1, dtype=i64), ())
    with pytest.raises(ValueError, match="pending state"):
        index._cwalk.donor_parts(*ok, (), np.array([0], dtype=i64), np.zeros(1, dtype=i64), (1,))
    with pytest.raises(ValueError, match="take"):
        index._cwalk.donor_parts(np.ones(255, np.uint8), *ok[1:], (), np.array([0], dtype=i64), np.zeros(1, dtype=i64), ())


@pytest.mark.parametrize("spec", [PERSON, TREE, UNION], ids=["regular", "recursive", "union"])
def test_a_dropped_grammar_is_freed_without_the_cyclic_collector(tekken_vocab, spec):
    """A compiled grammar and its matcher, masks computed (caches filled), are freed as soon as the
    last reference goes: no reference cycle leaves megabytes of tables to the cyclic garbage
    collector (whose full collections then pause a server for as long as they take)."""
    import gc

    grammar = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(spec)
    matcher = GrammarMatcher(grammar)
    bitmask = np.zeros((1, (tekken_vocab.size + 31) // 32), dtype=np.int32)
    text = json.dumps({"name": "Al", "age": 3} if spec is PERSON else
                      {"v": 1, "kids": [{"v": 2}]} if spec is TREE else {"kind": "circle", "r": 1.5},
                      separators=(",", ":"))
    for ch in text:
        matcher.fill_next_token_bitmask(bitmask)
        assert matcher.accept_string(ch)
    was_enabled = gc.isenabled()
    gc.collect()  # whatever cyclic garbage there was before
    gc.disable()
    try:
        del grammar, matcher
        assert gc.collect() == 0  # nothing of theirs was left for the collector
    finally:
        if was_enabled:
            gc.enable()


def test_terminal_automata_are_kept_per_process_read_only_and_equal_to_a_fresh_build(tekken_vocab, monkeypatch):
    """The pushdown engine keeps small terminal automata per process: a second schema reuses the
    first's string and number terminals, every kept automaton is read-only and equals one built
    afresh, and a regex written by a user does not share an entry with the same generated text."""
    from dotvllm_plugin import pushdown
    from dotvllm_plugin.grammar.ir import Terminal

    pushdown.clear_memos()
    compiler = GrammarCompiler(tekken_vocab, cache_size=0)
    compiler.compile_json_schema(TREE)
    first = dict(pushdown._terminal_memo)
    assert first
    other = {"type": "array", "items": {"anyOf": [{"type": "object", "properties": {"w": {"type": "string"},
                                                                                    "n": {"type": "number"}}},
                                                  {"$ref": "#"}]}}
    built = []
    build = pushdown._build_terminal_dfa
    monkeypatch.setattr(pushdown, "_build_terminal_dfa", lambda t, *g: built.append(t.regex) or build(t, *g))
    grammar = compiler.compile_json_schema(other)
    monkeypatch.setattr(pushdown, "_build_terminal_dfa", build)
    reused = set(first) & set(pushdown._terminal_memo)
    assert reused and all(pushdown._terminal_memo[k] is first[k] for k in reused)
    assert not {k[0] for k in reused} & set(built)  # what was kept was not built again
    assert len(built) < len(grammar.terminal_names)
    for (regex, exclude, nonempty, generated), dfa in list(pushdown._terminal_memo.items()):
        assert not dfa.transitions.flags.writeable and not dfa.accepting.flags.writeable
        fresh = pushdown._build_terminal_dfa(Terminal("t", regex, nonempty=nonempty, exclude=exclude))
        assert np.array_equal(fresh.transitions, dfa.transitions) and np.array_equal(fresh.accepting, dfa.accepting)
        assert fresh.initial == dfa.initial
    generated = next(k for k in pushdown._terminal_memo if k[3])
    user = pushdown._terminal_dfa(Terminal("u", generated[0], nonempty=generated[2], exclude=generated[1]))
    assert user is not pushdown._terminal_memo[generated]  # (built through the user-text checks)
    pushdown.clear_memos()
    assert not pushdown._terminal_memo


@pytest.mark.parametrize("text", ['{"name":"', '{"name":"a","tags":["x', '{"name":"a","kids":[{"name":"ab',
                                  '{"name":"a","other'])
def test_pinned_base_walks_are_taken_by_other_grammars_and_equal_fresh_walks(tekken_vocab, text, monkeypatch):
    """The walks pinned per vocabulary on first use (inside a JSON string value, an undeclared key)
    are taken, not walked again, by a grammar of the same vocabulary whose state has that ball; its
    mask equals the mask of the same grammar with nothing pinned."""
    from dotvllm_plugin import pushdown

    schema = {"$defs": {"node": {"type": "object", "properties": {
        "name": {"type": "string"}, "size": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}},
        "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["name"]}}, "$ref": "#/$defs/node"}
    pinned = pushdown.pinned_walks(tekken_vocab)  # (made once per vocabulary and process)
    assert pinned
    masks = {}
    for pins in (True, False):
        if not pins:
            monkeypatch.setitem(tekken_vocab._cache, pushdown._PINNED_WALKS, {})
        g = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(schema)
        assert isinstance(g, pushdown.PushdownGrammar)
        q, stack = g.step(*g.initial_state(), text.encode())
        walked = []
        walk = pushdown.PushdownGrammar._walk_base
        monkeypatch.setattr(pushdown.PushdownGrammar, "_walk_base", lambda self, *a: walked.append(a) or walk(self, *a))
        masks[pins] = g.mask(q, stack).copy()
        monkeypatch.setattr(pushdown.PushdownGrammar, "_walk_base", walk)
        assert g._canonical(q)[1] in pinned  # (a ball the compiler pinned)
        assert bool(walked) != pins  # taken from the pins, or walked
    assert np.array_equal(masks[True], masks[False])


def test_shared_terminal_automata_are_pinned_read_only_and_equal_to_a_fresh_build(tekken_vocab, monkeypatch):
    """The translator's fixed terminals (free string, number, integer, boolean, null, punctuation,
    the undeclared-key string before its cut) are built once per process when a compiler is made,
    survive the cold benchmarks' clearing, are not built again by a schema that has them, hold no
    property name, and equal a fresh build."""
    from dotvllm_plugin import pushdown
    from dotvllm_plugin.grammar.ir import Terminal
    from dotvllm_plugin.grammar.json_schema import shared_terminals

    GrammarCompiler(tekken_vocab, cache_size=0)
    pushdown.clear_memos()
    pinned = dict(pushdown._pinned_terminals)
    regexes = {k[0] for k in pinned}
    assert {k[0] for k in map(pushdown._terminal_key, shared_terminals())} <= regexes
    assert not any(r.startswith('"') and r.endswith('":') and "(" not in r for r in regexes)  # no key
    assert any(t.exclude for t in shared_terminals())  # the undeclared-key string is among them, uncut
    built = []
    build = pushdown._build_terminal_dfa
    monkeypatch.setattr(pushdown, "_build_terminal_dfa", lambda t, *g: built.append(t) or build(t, *g))
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                               "score": {"type": "number"}, "ok": {"type": "boolean"}}}
    grammar = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(schema)
    assert built and not {pushdown._terminal_key(t) for t in built} & set(pinned)
    cuts = [t for t in built if t.exclude]  # the cut itself is the schema's (its declared names)
    assert cuts and all(set(t.exclude) == {"name", "age", "score", "ok"} for t in cuts)
    assert len(built) < len(grammar.terminal_names)
    # a grammar whose lexers and small terminals are built on first visit (their regexes travel as
    # text, without trees) finds the pinned automata too: only its own terminals are built
    built.clear()
    wide = {"type": "object", "properties": {f"k{i}": {"type": ["string", "integer", "null"]} for i in range(70)}}
    monkeypatch.setattr(pushdown, "LAZY_MIN_LEXERS", 64)  # (a smaller bound than shipped: this one is lazy)
    lazy = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(wide)
    assert lazy.arrays["tdfa_initial"].min() < 0  # (some terminals are left to first use)
    built.clear()
    lazy._build_all()
    monkeypatch.setattr(pushdown, "_build_terminal_dfa", build)
    assert built and not {pushdown._terminal_key(t, True) for t in built} & set(pinned)
    assert {t.regex for t in shared_terminals() if not t.exclude} - {t.regex for t in built}
    for (regex, exclude, nonempty, generated), dfa in pinned.items():
        assert pushdown._pinned_terminals[(regex, exclude, nonempty, generated)] is dfa
        assert not dfa.transitions.flags.writeable and not dfa.accepting.flags.writeable
        fresh = pushdown._build_terminal_dfa(Terminal("t", regex, nonempty=nonempty, exclude=exclude))
        assert np.array_equal(fresh.transitions, dfa.transitions) and np.array_equal(fresh.accepting, dfa.accepting)
        assert fresh.initial == dfa.initial
        # the same text written by a user goes through the user-text checks: not the pinned entry
        assert pushdown._terminal_dfa(Terminal("u", regex, nonempty=nonempty)) is not dfa


WIDE = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 8} for i in range(100)}}
WIDE_REQUIRED = {"type": "object", "properties": {**{f"p{i}": {"type": "integer"} for i in range(40)},
                                                  "r": {"type": ["boolean", "array"]},
                                                  **{f"q{i}": {"type": "integer"} for i in range(40)}},
                 "required": ["r"], "additionalProperties": False}


def test_wide_objects_take_any_later_key_through_one_parser_configuration(compiler, tekken_tokenizer, tekken_vocab):
    """After a comma any later optional property may follow; the object's rules let its key
    decide, so the parser follows one configuration however many there are. (Written as a
    sequence of optional parts, the parser read the comma once per possible next property and kept
    64 of those readings: a document naming the 65th next property was refused, and the masks
    allowed tokens the matcher then refused.) Documents judged by ``jsonschema`` first."""
    from dotvllm_plugin.pushdown import PushdownGrammar

    for schema, valid, invalid in (
        (WIDE, [{"p0": "a", f"p{j}": "b"} for j in (1, 63, 64, 65, 99)]
         + [{"p99": "x", "extra": [1, {"y": None}]}, {}, {"p3": "", "p70": "z", "zz": {}}],
         [{"p0": "a", "p64": "123456789"}, {"p0": 1}]),
        (WIDE_REQUIRED, [{"p0": 1, "r": True, "q39": 2}, {"r": False}, {"p39": 1, "r": [{"x": [2]}]}],
         [{"p0": 1, "q3": 2}, {"p0": 1, "r": True, "zz": 1}, {"r": True, "q0": "1"}]),
    ):
        cg = compiler.compile_json_schema(schema)
        assert isinstance(cg, PushdownGrammar) and cg.deterministic
        validator = jsonschema.validators.validator_for(schema)(schema)
        for inst in valid:
            assert validator.is_valid(inst) and walk(cg, tekken_tokenizer, ser(inst)), inst
        for inst in invalid:
            assert not validator.is_valid(inst) and not walk(cg, tekken_tokenizer, ser(inst)), inst
    # every token the mask allows after the comma (and after the key's quote: a sample) is accepted
    cg = compiler.compile_json_schema(WIDE)
    bitmask = np.zeros((1, (tekken_vocab.size + 31) // 32), dtype=np.int32)
    rng = np.random.default_rng(3)
    for prefix in ('{"p0":"a",', '{"p0":"a","', '{"p0":"a","p6'):
        m = GrammarMatcher(cg)
        assert m.accept_string(prefix)
        m.fill_next_token_bitmask(bitmask)
        allowed = np.flatnonzero(np.unpackbits(bitmask[0].view(np.uint8), bitorder="little")[: tekken_vocab.size])
        assert len(allowed) > 10, prefix
        for t in rng.permutation(allowed)[:1500]:
            assert m.copy().accept_token(int(t)), (prefix, tekken_vocab.token_bytes[t])


@pytest.mark.parametrize("spec", [
    {"type": "object", "properties": {f"k{i}": {"type": ["integer", "null"]} for i in range(12)}},
    {"anyOf": [{"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "number"}, "y": {}},
                "required": ["kind"]},
               {"type": "object", "properties": {"kind": {"const": "b"}, "x": {"type": "string"}, "z": {}},
                "required": ["kind"], "additionalProperties": False}]},
    {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {
        "type": "array", "items": {"type": "string"}}, "c": {"type": "object"}},
        "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": False}},
], ids=["optional", "union", "patterns"])
def test_shared_lexers_give_the_masks_of_each_states_own_lexer(tekken_vocab, spec, monkeypatch):
    """Parser states whose candidate terminals are a subset of another state's (an object's key
    positions) share the larger set's lexer where the literals it adds start with no word of the
    state's own candidates. Along random walks the masks equal those of the grammar whose lexers
    are built for each state's own candidates."""
    from dotvllm_plugin import pushdown

    shared = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(spec)
    monkeypatch.setattr(pushdown, "_shared_lexer_sets", lambda sets, terms, dfas: sets)
    own = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(spec)
    assert isinstance(shared, pushdown.PushdownGrammar) and shared.n_lexers < own.n_lexers
    rng = np.random.default_rng(11)
    for walk_no in range(5):
        walk_together(tekken_vocab, GrammarMatcher(shared), GrammarMatcher(own), lambda on: None, rng, 50,
                      label=walk_no)


def test_a_literal_joins_a_smaller_lexer_only_where_no_candidate_word_starts_it():
    import re._parser as sre_parse

    from dotvllm_plugin.grammar.ir import Terminal
    from dotvllm_plugin.pushdown import _shared_lexer_sets

    terms = [Terminal(n, r, tree=sre_parse.parse(r)) for n, r in (
        ("COMMA", ","), ("COMMA_KEY", ',"a":'), ("KA", '"a":'), ("KB", '"b":'), ("WORD", "[a-z]+"),
        ("AB", "ab"), ("ONE", "1"))]
    dfas = [None] * len(terms)

    def shared(*sets):
        return _shared_lexer_sets([frozenset(s) for s in sets], terms, dfas)

    assert shared({2}, {2, 3}) == [{2, 3}, {2, 3}]  # two keys: neither starts the other
    assert shared({0}, {0, 1}) == [{0}, {0, 1}]  # the word "," starts ',"a":'
    assert shared({4}, {4, 5}) == [{4}, {4, 5}]  # "a" (a word of [a-z]+) starts "ab"
    assert shared({4}, {4, 6}) == [{4, 6}, {4, 6}]
    assert shared({4, 2}, {3, 2}) == [{4, 2}, {3, 2}]  # not nested: each its own


@pytest.mark.parametrize("parser", ["python", "c"])
@pytest.mark.parametrize("spec", [WIDE, WIDE_REQUIRED, TREE], ids=["wide", "wide-required", "recursive"])
def test_unit_reduction_chains_taken_at_once_give_the_same_masks(tekken_vocab, tekken_tokenizer, spec, parser,
                                                                  monkeypatch):
    """A chain of one-symbol reductions (the optional properties skipped before a key) is taken at
    once, remembered per (state below, state, terminal) in Python (taken at once in the C parser);
    the masks and the accepted tokens along random walks equal those of reducing step by step (the
    Python parser without the shortcut)."""
    from dotvllm_plugin import pushdown

    if parser == "c" and not pushdown._C_PARSER:
        pytest.skip("the C extension is not built")
    fast = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(spec)
    ref = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(spec)
    assert isinstance(ref, pushdown.PushdownGrammar)
    monkeypatch.setattr(ref, "_unit_top", lambda below, state, term: state)
    # (the flag is set before each matcher's mask: the reference's always in Python)
    use = lambda on: monkeypatch.setattr(pushdown, "USE_C_PARSER", on and parser == "c")  # noqa: E731
    rng = np.random.default_rng(5)
    for walk_no in range(4):
        walk_together(tekken_vocab, GrammarMatcher(fast), GrammarMatcher(ref), use, rng, 60,
                      prefix=tekken_tokenizer.encode('{"p1":"a","p70":"b","p99":', add_special_tokens=False)
                      if spec is WIDE else (),
                      label=walk_no)
    assert not ref._unit_memo
    assert fast._unit_memo or parser == "c"



#: Objects nested in arrays at several depths: the same lexer states under many stacks, whose masks
#: share their walks' and groups' rows.
NESTED_LISTS = {"$defs": {"item": {"type": "object", "properties": {
    "name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}},
    "sub": {"type": "array", "items": {"$ref": "#/$defs/item"}}}}},
    "type": "array", "items": {"$ref": "#/$defs/item"}}


@pytest.mark.parametrize("bound", [4096, 6], ids=["default", "tiny"])
def test_c_mask_caches_give_the_reference_masks_under_many_stacks(tekken_vocab, tekken_tokenizer, bound, monkeypatch):
    """The C recursion keeps masks, groups' rows and ORs of rows (by the rows' identities) across
    stacks; masks along walks through nested arrays of objects (the same states under many stacks)
    equal the Python reference's, with the caches' bound as shipped and tiny (cleared every few
    masks, the ORs with them); ORs are taken from the cache."""
    from dotvllm_plugin import pushdown

    if not pushdown._C_PARSER:
        pytest.skip("the C extension is not built")
    fast = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(NESTED_LISTS)
    ref = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(NESTED_LISTS)
    fast.mask_cache_size = bound
    use = lambda on: monkeypatch.setattr(pushdown, "USE_C_PARSER", on)  # noqa: E731
    hits = []
    real_miss = pushdown._cwalk.mask_miss

    def counting(g, ctx, *a):
        before = dict(ctx[7])
        row = real_miss(g, ctx, *a)
        hits.append(any(row is entry[0] for entry in before.values()))
        return row

    monkeypatch.setattr(pushdown._cwalk, "mask_miss", counting)
    rng = np.random.default_rng(13)
    text = ('[{"name":"a","tags":["x","y"],"sub":[{"name":"b","sub":[{"name":"c","tags":["z"]}]},{"name":"d"}]},'
            '{"name":"e"')
    for walk_no in range(4):
        walk_together(tekken_vocab, GrammarMatcher(fast), GrammarMatcher(ref), use, rng, 45,
                      prefix=tekken_tokenizer.encode(text, add_special_tokens=False) if walk_no < 2 else (),
                      label=(bound, walk_no))
    assert len(fast._or_cache) <= bound
    assert any(hits) or bound < 10, "no mask was an OR taken from the cache"


def test_lexers_built_at_compile_time_bring_their_walks_byte_classes(tekken_vocab):
    """A grammar whose lexers are built at compile time carries each one's walk classes (made with
    the lexer in C): equal to those a first visit computes from the lexer's table, also after the
    grammar's round trip through bytes (the form compiled grammars travel in)."""
    from dotvllm_plugin import pushdown

    if pushdown._cwalk is None:
        pytest.skip("the C extension is not built")
    g = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(TREE)
    assert isinstance(g, pushdown.PushdownGrammar) and "lex_trans" in g.arrays
    assert int((g.arrays["lex_wc_counts"] > 0).sum()) == g.n_lexers
    again = pushdown.PushdownGrammar.from_bytes(g.to_bytes(), tekken_vocab)
    for grammar in (g, again):
        for lexer in range(grammar.n_lexers):
            block, chosen = grammar._blocks[lexer]
            lo = grammar._lexer_lo[lexer]
            rows, bc, n_cls = pushdown._cwalk.byte_classes(np.ascontiguousarray(block, dtype=np.int32), lo,
                                                           np.ascontiguousarray(chosen, dtype=np.int32))
            t, _, _ = grammar._walker(lexer)
            assert t.shape[1] == n_cls and np.array_equal(t.ravel(), np.frombuffer(rows, dtype=np.int64)), lexer
            assert np.array_equal(grammar._walkers[lexer][1].byte_class, np.frombuffer(bc, dtype=np.int64)), lexer


@pytest.mark.parametrize("schema", [TREE, NESTED_LISTS, {"type": "object", "properties": {
    "a": {"type": "object"}, "b": {"type": "array"}}}, {"$defs": {"n": {"anyOf": [
    {"type": "string"}, {"enum": ["a", 1]}, {"type": "array", "items": {"$ref": "#/$defs/n"}}]}}, "$ref": "#/$defs/n"}],
                         ids=["tree", "nested-lists", "free-values", "strings-literals-nested"])
def test_lexers_built_at_compile_time_bring_their_reach_sets(tekken_vocab, schema):
    """A grammar whose lexers are built at compile time carries each lexer state's reach (the
    terminals its lexeme may still end as) and reach group: equal, state by state, to those a first
    visit computes when the grammar comes without them, also after the round trip through bytes."""
    from dotvllm_plugin import pushdown

    if pushdown._cwalk is None:
        pytest.skip("the C extension is not built")
    g = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(schema)
    assert isinstance(g, pushdown.PushdownGrammar) and "lex_reach_index" in g.arrays
    bare = pushdown.PushdownGrammar(
        kind=g.kind, source=g.source, vocabulary=tekken_vocab, terminal_names=g.terminal_names,
        start_state=g.start_state, end_state=g.end_state, max_stack_depth=g.max_stack_depth,
        arrays={k: v for k, v in g.arrays.items() if not k.startswith("lex_reach_")})
    again = pushdown.PushdownGrammar.from_bytes(g.to_bytes(), tekken_vocab)
    n_states = len(g._chosen)
    for grammar in (g, again):
        for lexer in range(grammar.n_lexers):
            got, want = grammar._reach.groups(lexer), bare._reach.groups(lexer)
            assert np.array_equal(got[0], want[0]) and got[1] == want[1], lexer
        assert [grammar._reach[q] for q in range(n_states)] == [bare._reach[q] for q in range(n_states)]
    assert "lex_reach_index" not in bare.arrays and bare._reach._expansion is not None  # (computed there)


def test_threads_sharing_a_grammar_get_each_its_own_masks(tekken_vocab):
    """Masks computed by several threads on one shared grammar (its caches: masks, groups' rows, ORs,
    numbered cache keys, walks) equal those of a grammar each thread has to itself, along the same
    random walks."""
    import threading

    shared = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(NESTED_LISTS)
    words = (tekken_vocab.size + 31) // 32
    eos = set(tekken_vocab.eos_token_ids)
    failures: list = []

    def run(seed: int) -> None:
        try:
            own = GrammarCompiler(tekken_vocab, cache_size=0).compile_json_schema(NESTED_LISTS)
            rng = np.random.default_rng(seed)
            for _ in range(2):
                a, b = GrammarMatcher(shared), GrammarMatcher(own)
                for step in range(40):
                    rows = []
                    for m in (a, b):
                        bm = np.zeros((1, words), dtype=np.int32)
                        m.fill_next_token_bitmask(bm)
                        rows.append(bm[0])
                    assert np.array_equal(*rows), (seed, step)
                    allowed = [t for t in np.flatnonzero(np.unpackbits(rows[0].view(np.uint8), bitorder="little")
                                                         [: tekken_vocab.size]).tolist() if t not in eos]
                    if not allowed:
                        break
                    t = int(rng.choice(allowed))
                    assert a.accept_token(t) and b.accept_token(t), (seed, step, t)
        except BaseException as e:  # (reported by the main thread)
            failures.append(e)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not failures, failures[0]
