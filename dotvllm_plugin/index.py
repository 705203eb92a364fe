"""Byte DFA × vocabulary → which tokens are allowed in each DFA state.

The index is built by walking the vocabulary's byte trie (:class:`~dotvllm_plugin.vocabulary.ByteTrie`)
level by level with numpy, for a batch of DFA states at once: a frontier of (trie node, DFA state)
pairs advances one byte per level and dies where the DFA has no transition. Only states reachable at
token boundaries from the initial state are indexed (breadth first).

The product is a set of packed bitmask rows (int32, bit ``i % 32`` of word ``i // 32`` = token ``i``
allowed), deduplicated, and ``row_of_state``. Tokens whose walk ends in a state from which no token
sequence can complete the pattern are removed; if the initial state itself cannot complete, the
vocabulary cannot express the pattern and compilation fails. Committing a token needs no table:
the matcher walks the token's bytes through the DFA.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .errors import CompilationTooLargeError, VocabularyCoverageError
from .regex import ByteDFA, byte_classes, reachable
from .vocabulary import Vocabulary

__all__ = ["TokenIndex", "build_index", "byte_view", "set_token_bits", "token_row", "walk"]

MAX_ROWS_BYTES = 512 * 1024 * 1024
#: Budget of (state, token-trie node) pairs the walk may produce; it bounds compile time (about a
#: second per 10 million on one core). Long bounded repetitions of wide classes (``.{0,1000}``)
#: exceed it: every repetition level is a separate state that allows most of the vocabulary.
MAX_INDEX_ENTRIES = 15_000_000
#: Largest frontier one walk may hold (each pair costs ~32 bytes across its arrays).
MAX_FRONTIER = 6_000_000


@dataclass(frozen=True)
class TokenIndex:
    rows: np.ndarray  # int32 [n_rows, ceil(V/32)]; row 0 is all-zero (unreached states)
    row_of_state: np.ndarray  # int32 [n_states]
    byte_class: np.ndarray  # uint8 [256]: the DFA's byte equivalence classes
    class_transitions: np.ndarray  # int32 [n_states, n_classes]


def _expand_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenate ``arange(starts[i], starts[i] + counts[i])`` for all i."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(counts) - counts
    return np.repeat(starts - offsets, counts) + np.arange(total)


class ClassTrie:
    """The vocabulary trie with bytes replaced by the pattern's byte classes.

    Tokens whose bytes fall in the same classes position by position walk the DFA identically,
    so they share one node: for ``[a-z]{1,200}`` all lowercase tokens of one length are a single
    path. Nodes are numbered globally (level by level); ``token_node`` maps each token id to the
    node where it ends. Levels deeper than ``max_depth`` (the longest path of an acyclic DFA) are
    not built: no walk could survive there.
    """

    def __init__(self, trie, byte_class: np.ndarray, n_classes: int, *, merge: bool = True, max_depth=None):
        self.depth = trie.depth if max_depth is None else min(trie.depth, max_depth)
        self.vocab_size = trie.vocab_size
        if not merge:
            self._byte_view(trie, byte_class)
            return
        self.cls: list[np.ndarray] = []
        self.child_start: list[np.ndarray] = []
        self.offset: list[int] = []
        # token id → global node (-1: not generatable, or longer than max_depth)
        token_node = np.full(trie.vocab_size, -1, dtype=np.int64)
        prev_map = None
        prev_count = 1
        total = 0
        for d in range(self.depth):
            parent_cls = np.zeros(len(trie.parent[d]), dtype=np.int64) if d == 0 else prev_map[trie.parent[d]]
            key = parent_cls * n_classes + byte_class[trie.byte[d]]
            space = prev_count * n_classes
            if space <= 8 * len(key) + 4096:
                used = np.zeros(space, dtype=bool)
                used[key] = True
                uniq = np.flatnonzero(used)
                dense = np.zeros(space, dtype=np.int64)
                dense[uniq] = np.arange(len(uniq))
                node_map = dense[key]
            else:
                uniq, node_map = np.unique(key, return_inverse=True)
            self.cls.append((uniq % n_classes).astype(np.int64))
            self.child_start.append(np.searchsorted(uniq // n_classes, np.arange(prev_count + 1)))
            self.offset.append(total)
            token_node[trie.tokens_at[d]] = node_map[trie.token_node[d]] + total
            total += len(uniq)
            prev_map, prev_count = node_map, len(uniq)
        self.n_nodes = total
        self.token_node = token_node
        self.has_tokens = np.bincount(token_node[token_node >= 0], minlength=total) > 0

    def _byte_view(self, trie, byte_class: np.ndarray) -> None:
        """The byte trie itself with class labels: no merging, no build cost."""
        self.trie = trie
        self.cls = _LevelClasses(trie, byte_class, self.depth)
        self.byte_class = byte_class
        self.trie_cache = trie.__dict__  # pattern-independent tables, kept once per vocabulary
        self.child_start = trie.child_start
        layout = trie.__dict__.get("_flat_layout")
        if layout is None:
            layout = trie.__dict__["_flat_layout"] = (list(np.cumsum([0] + trie.node_counts[:-1])),
                                                      int(sum(trie.node_counts)))
        self.offset, self.n_nodes = layout
        cached = trie.__dict__.get("_flat_token_node")
        if cached is None:
            token_node = np.full(trie.vocab_size, -1, dtype=np.int64)
            for d in range(trie.depth):
                token_node[trie.tokens_at[d]] = trie.token_node[d] + self.offset[d]
            has = np.bincount(token_node[token_node >= 0], minlength=self.n_nodes) > 0
            cached = trie.__dict__["_flat_token_node"] = (token_node, has)
        self.token_node, self.has_tokens = cached

    def token_mask(self, nodes: np.ndarray) -> np.ndarray:
        """Boolean mask over token ids: tokens that end at any of ``nodes``."""
        mark = np.zeros(self.n_nodes + 1, dtype=bool)  # last slot: the -1 of non-generatable ids
        mark[nodes] = True
        return np.take(mark, self.token_node)


class _LevelClasses:
    """``cls[d]`` of a byte view (the class of every level-``d`` node), computed on first use."""

    __slots__ = ("trie", "byte_class", "depth", "levels")

    def __init__(self, trie, byte_class: np.ndarray, depth: int):
        self.trie, self.byte_class, self.depth = trie, byte_class, depth
        self.levels: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.depth

    def __getitem__(self, d: int) -> np.ndarray:
        got = self.levels.get(d)
        if got is None:
            if not 0 <= d < self.depth:
                raise IndexError(d)
            got = self.levels[d] = self.byte_class[self.trie.byte[d]].astype(np.int64)
        return got


#: Loops of at most this many states (a JSON string with its UTF-8 and escape states, a run of
#: digits) are treated as gadgets even when the pattern has only one of them: their walks come
#: from the per-vocabulary cache. Larger loops must occur twice to be worth a canonical walk.
GADGET_SHARED_SIZE = 16

_EXIT = -2  # in a gadget's canonical table: a transition that leaves the gadget


try:
    from . import _cwalk
except ImportError:  # built without a C compiler: the numpy walk below does the same work
    _cwalk = None


_IDENTITY = np.arange(256, dtype=np.int64)
#: The C walk's packed trie node (``trie_node`` in _cwalk.c).
TRIE_NODE = np.dtype([("lo", "<u4"), ("n_children", "<u2"), ("sym", "u1"), ("has", "u1")])


def _flat_structure(ct: ClassTrie):
    """``(sym, child_lo, child_hi, level_off, has, nodes, byte_class)``: a node's class is
    ``byte_class[sym[node]]``; ``nodes`` the same as packed :data:`TRIE_NODE` records, for the C
    walk. For a byte view ``sym`` is the node's byte and the arrays are the vocabulary's (built
    once per vocabulary and depth): a view costs no per-node work."""
    got = ct.__dict__.get("_flat_structure")
    if got is not None:
        return got
    trie_cache = ct.__dict__.get("trie_cache")
    structure = None if trie_cache is None else trie_cache.get(("flat_children", ct.depth))
    if structure is None:
        n = ct.n_nodes
        sym = np.zeros(n, dtype=np.int64)  # class (merged trie) or byte (byte view) of each node
        lo = np.zeros(n, dtype=np.int64)
        hi = np.zeros(n, dtype=np.int64)
        for d in range(ct.depth):
            level = ct.cls.trie.byte[d] if trie_cache is not None else ct.cls[d]
            cnt = len(level)
            sym[ct.offset[d] : ct.offset[d] + cnt] = level
            if d + 1 < ct.depth:
                cs = ct.child_start[d + 1][: cnt + 1]
                lo[ct.offset[d] : ct.offset[d] + cnt] = ct.offset[d + 1] + cs[:-1]
                hi[ct.offset[d] : ct.offset[d] + cnt] = ct.offset[d + 1] + cs[1:]
        off = np.array(list(ct.offset[: ct.depth]) + [n], dtype=np.int64)
        has = ct.has_tokens.astype(np.uint8)
        nodes = np.zeros(n, dtype=TRIE_NODE)
        nodes["lo"], nodes["n_children"], nodes["sym"], nodes["has"] = lo, hi - lo, sym, has
        structure = (sym, lo, hi, off, has, nodes)
        if trie_cache is not None:
            trie_cache[("flat_children", ct.depth)] = structure
    # a merged trie's sym is the class already
    byte_class = _IDENTITY if trie_cache is None else np.ascontiguousarray(ct.byte_class, dtype=np.int64)
    got = ct.__dict__["_flat_structure"] = (*structure, byte_class)
    return got


_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.flags.writeable = False


def _c_walk_view(ct: ClassTrie) -> tuple:
    """The C walk's arguments that depend on the trie alone: ``(nodes, byte_class, level offsets,
    root width)``, cached on it (a first visit's walk is a few tens of microseconds: the arguments'
    assembly was a fifth of it)."""
    got = ct.__dict__.get("_c_walk_view")
    if got is None:
        _, _, _, off, _, nodes, byte_class = _flat_structure(ct)
        cls = ct.cls  # (a byte view's root count is its trie's: its level classes are not made for it)
        n_root = (len(cls.trie.byte[0]) if isinstance(cls, _LevelClasses) else len(cls[0])) if ct.depth else 0
        got = ct.__dict__["_c_walk_view"] = (nodes, byte_class, off, n_root)
    return got


def _c_inject(inject) -> tuple:
    """The C walk's resumed walks ``(start index, level, level-local node, state)`` from ``inject``:
    those flat arrays already, or :func:`_walk_numpy`'s ``{level: (start index, node, state)}``."""
    if isinstance(inject, tuple):
        return tuple(np.ascontiguousarray(x, dtype=np.int64) for x in inject)
    parts = [(np.full(len(v[0]), d, dtype=np.int64), *v) for d, v in (inject or {}).items() if len(v[0])]
    if not parts:
        return (_EMPTY,) * 4
    level, si, node, state = (np.concatenate([p[k] for p in parts]).astype(np.int64) for k in range(4))
    return si, level, node, state


def _walk(class_trans: np.ndarray, ct: ClassTrie, states: np.ndarray | None, inject=None, want_exits=False,
          rows=None, skip=None, groups=None):
    """Dispatch to the C walk when built, else the numpy walk (same results up to order).

    ``rows``: ``(csr start, csr ids, words)`` (C walk only): ``((ends, packed rows) as bytes,
    exits)``, see :func:`walk_rows_by_end`; with ``rows`` (C walk only): ``skip``, a run table's
    ``skip`` (:mod:`dotvllm_plugin.runs`), whose nodes are not visited; ``groups``, one row per group
    of end states. ``inject`` may also be the flat arrays ``(start index, level, level-local node,
    state)`` (C walk only). A walk split as the pushdown matcher keeps it: :func:`walk_split`."""
    if _cwalk is None or not USE_C_WALK:
        return _walk_numpy(class_trans, ct, states, inject, want_exits)
    nodes, byte_class, off, n_root = _c_walk_view(ct)
    i_si, i_level, i_node, i_state = _c_inject(inject)
    starts = _EMPTY if states is None else np.ascontiguousarray(states, dtype=np.int64)
    # the C walk's optional arguments after the rows, in its order, trailing Nones left out
    extra = [*(skip if skip is not None else (None,) * 4),
             *(() if groups is None else (np.ascontiguousarray(groups, dtype=np.int64),))]
    while extra and extra[-1] is None:
        extra.pop()
    if extra and rows is None:
        raise ValueError("skip and groups need rows")
    res = _cwalk.walk(
        np.ascontiguousarray(class_trans, dtype=np.int64), class_trans.shape[1], nodes, byte_class, off,
        n_root, starts, i_si, i_level, i_node, i_state, bool(want_exits),
        MAX_INDEX_ENTRIES, *(() if rows is None else (*rows, class_trans.shape[0])), *extra,
    )
    if res is None:
        raise _walk_too_large()
    if rows is not None:
        return res[:2], tuple(np.frombuffer(b, dtype=np.int64) for b in res[2:])
    arrays = tuple(np.frombuffer(b, dtype=np.int64) for b in res)
    if want_exits:
        return arrays[:3], arrays[3:]
    return arrays


def _walk_too_large() -> CompilationTooLargeError:
    return CompilationTooLargeError(
        f"the token index walk grew past {MAX_INDEX_ENTRIES} (state, token prefix) pairs; "
        "long bounded repetitions or many look-alike branches are the usual cause: simplify the constraint"
    )


#: Whether :func:`_walk` uses the C extension when it is built (tests compare both).
USE_C_WALK = True


def _walk_numpy(class_trans: np.ndarray, ct: ClassTrie, states: np.ndarray | None, inject=None, want_exits=False):
    """Walk class-trie paths through the DFA, level by level, for many start states at once.

    ``states`` start at the root (``state_idx`` = position in ``states``). ``inject`` maps a level
    ``d`` to ``(state_idx, node, state)`` frontier entries that have already consumed node ``node``
    of level ``d`` (used to resume walks that left a shared gadget). Returns
    ``(state_idx, node, end_state)`` for every surviving node that ends a token (``node`` is a
    global class-trie id), and with ``want_exits`` also ``(state_idx, level, node, prev_state)``
    for every step into ``_EXIT``.
    """
    empty = np.zeros(0, dtype=np.int64)
    produced = 0
    out_si, out_node, out_end = [], [], []
    ex_si, ex_level, ex_node, ex_prev = [], [], [], []
    inject = inject or {}
    if states is not None and len(states) and ct.depth:
        n0 = len(ct.cls[0])
        si = np.repeat(np.arange(len(states), dtype=np.int64), n0)
        node = np.tile(np.arange(n0, dtype=np.int64), len(states))
        prev = np.repeat(states, n0)
        st = class_trans[prev, ct.cls[0][node]]
    else:
        si = node = st = prev = empty
    for d in range(ct.depth):
        if d > 0 and len(node):
            cs = ct.child_start[d]
            counts = cs[node + 1] - cs[node]
            child = _expand_ranges(cs[node], counts)
            si = np.repeat(si, counts)
            prev = np.repeat(st, counts)
            st = class_trans[prev, ct.cls[d][child]]
            node = child
        if want_exits and len(st):
            ex = st == _EXIT
            if ex.any():
                ex_si.append(si[ex])
                ex_level.append(np.full(int(ex.sum()), d, dtype=np.int64))
                ex_node.append(node[ex])
                ex_prev.append(prev[ex])
        keep = st >= 0
        if not keep.all():
            si, st, node = si[keep], st[keep], node[keep]
        produced += len(node)
        if len(node) > MAX_FRONTIER or produced > MAX_INDEX_ENTRIES:
            # Memory, not just time: one walk's arrays must stay well under a worker's budget.
            raise CompilationTooLargeError(
                f"the token index walk grew past {MAX_FRONTIER} live (state, token prefix) pairs; "
                "long bounded repetitions or many look-alike branches are the usual cause: simplify the constraint"
            )
        if d in inject:
            isi, inode, ist = inject[d]
            si, node, st = np.concatenate([si, isi]), np.concatenate([node, inode]), np.concatenate([st, ist])
        if len(node) == 0:
            if not any(k > d for k in inject):
                break
            continue
        g = node + ct.offset[d]
        has = ct.has_tokens[g]
        out_si.append(si[has])
        out_node.append(g[has])
        out_end.append(st[has])
    cat = lambda xs: np.concatenate(xs) if xs else empty  # noqa: E731
    result = (cat(out_si), cat(out_node), cat(out_end))
    if want_exits:
        return result, (cat(ex_si), cat(ex_level), cat(ex_node), cat(ex_prev))
    return result


def _find_gadgets(
    class_trans: np.ndarray, max_depth: int = 6, max_size: int = 256, byte_class: np.ndarray | None = None
) -> dict[bytes, list[np.ndarray]]:
    """Groups of look-alike loops ("inside a string", "digits of a number") in the DFA.

    A gadget is rooted at a state with a self-loop: the states within ``max_depth`` steps of the
    root that can return to it (UTF-8 continuation states, escape sequences). Its canonical form
    relabels members in breadth-first order from the root, and marks transitions that leave it.
    Returns canonical signature → list of instances, each the real states in canonical order.
    """
    n, C = class_trans.shape
    loops = np.flatnonzero((class_trans == np.arange(n)[:, None]).any(axis=1))
    taken = np.zeros(n, dtype=bool)
    groups: dict[bytes, list[np.ndarray]] = {}
    lut = np.full(n + 1, _EXIT, dtype=np.int64)  # state → label while one gadget is relabelled
    lut[n] = -1  # dead stays dead
    succ: dict[int, set] = {}

    def successors(s: int) -> set:
        out = succ.get(s)
        if out is None:
            out = succ[s] = set(class_trans[s].tolist())
            out.discard(-1)
        return out

    def add(mem: np.ndarray) -> None:
        lut[mem] = np.arange(len(mem))
        canon = lut[np.where(class_trans[mem] < 0, n, class_trans[mem])]
        lut[mem] = _EXIT
        groups.setdefault(canon.tobytes() + len(mem).to_bytes(4, "little"), []).append(mem)

    if _cwalk is not None and USE_C_WALK:
        members, bounds = (
            np.frombuffer(b, dtype=np.int64)
            for b in _cwalk.gadgets(np.ascontiguousarray(class_trans, dtype=np.int64), C,
                                    np.arange(C, dtype=np.int64) if byte_class is None else byte_class.astype(np.int64),
                                    loops.astype(np.int64), max_depth, max_size)
        )
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            add(members[lo:hi])
        return {sig: inst for sig, inst in groups.items() if len(inst) >= 2 or len(inst[0]) <= GADGET_SHARED_SIZE}
    for root in loops.tolist():
        if taken[root]:
            continue
        # Forward ball around the root, then keep the states that can come back to it.
        depth = {root: 0}
        order = [root]
        for s in order:
            if depth[s] >= max_depth or len(order) > max_size:
                break
            for t in successors(s):
                if t not in depth:
                    depth[t] = depth[s] + 1
                    order.append(t)
        back = {root}
        changed = True
        while changed:
            changed = False
            for s in order:
                if s not in back and not successors(s).isdisjoint(back):
                    back.add(s)
                    changed = True
        members = [root]
        label = {root: 0}
        for s in members:
            for t in class_trans[s].tolist():
                if t in back and t not in label:
                    label[t] = len(members)
                    members.append(t)
        if taken[members].any():
            continue
        mem = np.array(members, dtype=np.int64)
        taken[mem] = True
        add(mem)
    return {sig: inst for sig, inst in groups.items() if len(inst) >= 2 or len(inst[0]) <= GADGET_SHARED_SIZE}


@dataclass
class _GadgetWalk:
    """One gadget's walk: the canonical part shared by all instances, per member label."""

    instances: np.ndarray  # [m, k] real states in canonical order
    node_start: np.ndarray  # CSR over labels into ``nodes``
    nodes: np.ndarray  # class nodes (grouped per label)
    ends: np.ndarray  # canonical end labels, parallel to ``nodes``
    labels: list  # per label: its distinct end labels
    rows: list | None  # per label: the packed row of its ``nodes``' tokens (None: made where needed)


class _Canonical:
    """A gadget's canonical walk (:func:`_canonical_walks`) as indexing reads it: int64 arrays, the
    nodes per label (CSR), each label's distinct end labels, the exits per trie level with their
    nodes' bytes (a pattern's classes are read from those); and for a walk kept for the process's
    life (:func:`pin_gadget_walks`), each label's packed row of the tokens that stay inside the
    gadget, the same in every pattern (else ``rows`` is None)."""

    __slots__ = ("node_start", "nodes", "ends", "labels", "exits", "rows")

    def __init__(self, res: tuple, k: int, trie, rows_view: ClassTrie | None = None, words: int = 0):
        c_si, c_node, c_end, e_si, e_level, e_node, e_prev = (x.astype(np.int64) for x in res)
        self.node_start = np.searchsorted(c_si, np.arange(k + 1))
        self.nodes, self.ends = c_node, c_end
        ns = self.node_start.tolist()
        self.labels = [np.unique(c_end[ns[c] : ns[c + 1]]) for c in range(k)]
        self.exits = []
        for d in np.unique(e_level).tolist():
            sel = e_level == d
            self.exits.append((d, e_si[sel], e_node[sel], e_prev[sel], trie.byte[d][e_node[sel]].astype(np.int64)))
        self.rows = None
        if rows_view is not None:
            self.rows = [_materialize(rows_view, c_node[ns[c] : ns[c + 1]], None, words) if ns[c + 1] > ns[c] else None
                         for c in range(k)]
            for r in self.rows:
                if r is not None:
                    r.flags.writeable = False


class _WalkCache:
    """Per-vocabulary LRU of canonical gadget walks (byte-trie node ids), bounded in bytes.

    The inside of a JSON string, the digits of a number: every schema has the same few gadgets,
    and in the byte-trie view their walks do not depend on the rest of the pattern, so a walk is
    done once per vocabulary and process.
    """

    def __init__(self, max_bytes: int = 96 << 20):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.items: OrderedDict[bytes, tuple] = OrderedDict()
        self.lock = threading.Lock()
        #: walks kept for the process's life (:func:`pin_gadget_walks`), never evicted nor cleared
        self.pinned: dict[bytes, _Canonical] = {}

    def get(self, key: bytes):
        hit = self.pinned.get(key)
        if hit is not None:
            return hit
        with self.lock:
            hit = self.items.get(key)
            if hit is not None:
                self.items.move_to_end(key)
            return hit

    def put(self, key: bytes, value: tuple) -> None:
        size = sum(a.nbytes for a in value)
        if size > self.max_bytes // 4:
            return
        with self.lock:
            if key in self.items:
                return
            self.items[key] = value
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, old = self.items.popitem(last=False)
                self.bytes -= sum(a.nbytes for a in old)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.bytes = 0


def _walk_cache(vocab: Vocabulary) -> _WalkCache:
    cache = vocab._cache.get("gadget_walks")
    if cache is None:
        cache = vocab._cache.setdefault("gadget_walks", _WalkCache())
    return cache


def clear_walk_cache(vocab: Vocabulary) -> None:
    """Forget ``vocab``'s cached gadget walks but the pinned ones (benchmarks timing cold compiles
    clear them)."""
    cache = vocab._cache.get("gadget_walks")
    if cache is not None:
        cache.clear()


def pin_gadget_walks(vocab: Vocabulary, dfas) -> None:
    """Walk the gadgets of ``dfas`` (the loop of a JSON string's characters) for ``vocab`` and keep
    those walks for the process's life."""
    cache = _walk_cache(vocab)
    fresh = _WalkCache(max_bytes=1 << 62)
    for dfa in dfas:
        build_index(dfa, vocab, walk_cache=fresh)
    trie = vocab.byte_trie()
    view = byte_view(vocab, _IDENTITY, 256)  # (node ids are the byte trie's whatever the classes)
    words = (vocab.size + 31) // 32
    with cache.lock:
        for key, value in fresh.items.items():
            if key not in cache.pinned:  # (a key: the canonical table's k rows of 256 int32, and the depth)
                cache.pinned[key] = _Canonical(value, (len(key) - 4) // 1024, trie, view, words)


def _canonical_walks(ct: ClassTrie, canons: list[np.ndarray], cache: _WalkCache | None, byte_class):
    """Walk each canonical gadget table from each of its labels; results in local labels.

    Returns per gadget ``(c_si, c_node, c_end, e_si, e_level, e_node, e_prev)`` with both parts
    grouped by label.
    """
    results: list = [None] * len(canons)
    keys: list = [None] * len(canons)
    todo = []
    for i, canon in enumerate(canons):
        if cache is not None:
            keys[i] = canon[:, byte_class].astype(np.int32).tobytes() + ct.depth.to_bytes(4, "little")
            results[i] = cache.get(keys[i])
        if results[i] is None:
            todo.append(i)
        elif not isinstance(results[i], _Canonical):
            results[i] = _Canonical(results[i], len(canon), ct.trie)
    if todo:
        # One block-diagonal table: every uncached gadget in a single walk.
        offsets = np.cumsum([0] + [len(canons[i]) for i in todo])
        parts = []
        for i, off in zip(todo, offsets):
            c = canons[i]
            parts.append(np.where(c >= 0, c + off, c))
        (c_si, c_node, c_end), (e_si, e_level, e_node, e_prev) = _walk(
            np.concatenate(parts), ct, np.arange(offsets[-1], dtype=np.int64), want_exits=True
        )
        # Group by label (the C walk already emits walks in start order; nodes within a label
        # may come in any order).
        if len(c_si) and not (c_si[1:] >= c_si[:-1]).all():
            order = np.argsort(c_si, kind="stable")
            c_si, c_node, c_end = c_si[order], c_node[order], c_end[order]
        c_bounds = np.searchsorted(c_si, offsets)
        if len(e_si) and not (e_si[1:] >= e_si[:-1]).all():
            e_order = np.argsort(e_si, kind="stable")
            e_si, e_level, e_node, e_prev = e_si[e_order], e_level[e_order], e_node[e_order], e_prev[e_order]
        e_bounds = np.searchsorted(e_si, offsets)
        for j, i in enumerate(todo):
            off = offsets[j]
            cs, ce = c_bounds[j], c_bounds[j + 1]
            es, ee = e_bounds[j], e_bounds[j + 1]
            res = (
                (c_si[cs:ce] - off).astype(np.int32),
                c_node[cs:ce].astype(np.int32),
                (c_end[cs:ce] - off).astype(np.int32),
                (e_si[es:ee] - off).astype(np.int32),
                e_level[es:ee].astype(np.int32),
                e_node[es:ee].astype(np.int32),
                (e_prev[es:ee] - off).astype(np.int32),
            )
            results[i] = _Canonical(res, len(canons[i]), ct.trie)
            if cache is not None:
                cache.put(keys[i], res)
    return results


def _walk_gadgets(class_trans: np.ndarray, ct: ClassTrie, shapes: list[list[np.ndarray]], cache, byte_class):
    """Index all members of all instances of all gadgets, walking each gadget shape only once.

    Canonical walks come from ``cache`` when given (byte-trie view only), else are walked
    together; the remainders (walks resumed in each instance after leaving its gadget) are
    walked in one more call. Returns the per-shape shared walks and the remainder as
    ``(state, node, end)`` arrays with real state ids.
    """
    if not shapes:
        return [], None
    n = class_trans.shape[0]
    canons = []
    for instances in shapes:
        k = len(instances[0])
        lut = np.full(n + 1, _EXIT, dtype=np.int64)
        lut[instances[0]] = np.arange(k)
        lut[n] = -1
        rows = class_trans[instances[0]]
        canons.append(lut[np.where(rows < 0, n, rows)])
    walks = []
    inject_parts: dict[int, list] = {}
    for instances, can in zip(shapes, _canonical_walks(ct, canons, cache, byte_class)):
        inst = np.stack(instances)
        walks.append(_GadgetWalk(instances=inst, node_start=can.node_start, nodes=can.nodes, ends=can.ends,
                                 labels=can.labels, rows=can.rows))
        for d, e_si, e_node, e_prev, e_byte in can.exits:
            r_prev = inst[:, e_prev]  # [m, n_exits]
            r_next = class_trans[r_prev, byte_class[e_byte][None, :]]
            r_state = inst[:, e_si]
            alive = r_next >= 0
            inject_parts.setdefault(d, []).append(
                (r_state[alive], np.broadcast_to(e_node, r_prev.shape)[alive], r_next[alive])
            )
    inject = {d: tuple(np.concatenate(x) for x in zip(*parts)) for d, parts in inject_parts.items()}
    return walks, _walk(class_trans, ct, None, inject=inject)


def build_index(
    dfa: ByteDFA,
    vocab: Vocabulary,
    *,
    max_rows_bytes: int = MAX_ROWS_BYTES,
    share_loops: bool = True,
    merge_classes: bool | None = None,
    max_entries: int = MAX_INDEX_ENTRIES,
    walk_cache: _WalkCache | None = None,
) -> TokenIndex:
    """Index ``dfa`` for ``vocab``; ``share_loops=False`` walks every state on its own (reference).
    Gadget walks are looked up in and added to ``vocab``'s walk cache, or ``walk_cache``."""
    class_trans, byte_class = dfa.classes if dfa.classes is not None else byte_classes(dfa.transitions)
    class_trans = class_trans.astype(np.int64)
    trie = vocab.byte_trie()
    shapes = list(_find_gadgets(class_trans, byte_class=byte_class).values()) if share_loops else []
    in_gadget = np.zeros(dfa.n_states, dtype=bool)
    for instances in shapes:
        in_gadget[np.concatenate(instances)] = True
    per_class = np.bincount(byte_class, weights=_first_byte_subtree_sizes(trie), minlength=class_trans.shape[1])
    rest_cost = float(((class_trans[~in_gadget] >= 0) * per_class[None, :]).sum())
    # With a byte-complete vocabulary every state is reached at some token boundary and can be
    # completed byte by byte, so no token-graph analysis is needed, and states whose byte-string
    # futures agree up to the longest token's length have the same row: walk one of them. This
    # is what keeps bounded repetitions (``[a-z]{1,255}``) affordable. The grouping itself costs
    # up to one pass per token length, so it is only done when walks would be expensive.
    complete = share_loops and _byte_complete(vocab)
    rep = np.arange(dfa.n_states)
    if complete and rest_cost > 4_000_000:
        blocks = _prefix_blocks(class_trans, trie.depth)
        rest_states = np.flatnonzero(~in_gadget)
        _, first = np.unique(blocks[rest_states], return_index=True)
        first_of_block = np.full(int(blocks.max()) + 1, -1, dtype=np.int64)
        first_of_block[blocks[rest_states[first]]] = rest_states[first]
        rep[rest_states] = first_of_block[blocks[rest_states]]
        is_rep = np.zeros(dfa.n_states, dtype=bool)
        is_rep[np.unique(rep[rest_states])] = True
        rest_cost = float(((class_trans[is_rep] >= 0) * per_class[None, :]).sum())
    if merge_classes is None:
        # The class-merged trie costs a build (5-10 ms on 131k tokens) but makes walks over wide
        # classes much smaller; the plain byte trie is free and lets gadget walks be cached across
        # patterns. Merge when the states outside gadgets (e.g. a bounded repetition) would walk a
        # lot of the byte trie: with few classes but a light walk (a JSON object of a few short
        # strings, < 10^5 nodes) the build alone cost 5-12 ms more than the walk it saved.
        merge_classes = rest_cost > 4_000_000
    merge = merge_classes
    max_depth = _longest_path(class_trans)
    # Gadgets always walk the plain byte trie (free, and their walks are cached per vocabulary);
    # the other states walk the class-merged trie when that pays. A state's node ids are in the
    # space of the trie that walked it: byte trie for gadget members, ``ct`` for the rest.
    bt = ClassTrie(trie, byte_class, class_trans.shape[1], merge=False, max_depth=max_depth)
    ct = ClassTrie(trie, byte_class, class_trans.shape[1], merge=True, max_depth=max_depth) if merge else bt
    n_states = dfa.n_states
    W = (vocab.size + 31) // 32
    eos = np.array(vocab.eos_token_ids, dtype=np.int64)

    # 1. Walk: (state, class node, end state) for every token-ending node reachable from every
    #    state. Look-alike loops ("gadgets") are walked once; their shared part stays factored out.
    parts_state, parts_node, parts_end = [], [], []
    gadgets: list[_GadgetWalk] = []
    gadget_of = np.full(n_states, -1, dtype=np.int64)  # state → gadget index
    label_of = np.full(n_states, -1, dtype=np.int64)  # state → canonical label within its gadget
    total = 0
    cache = walk_cache if walk_cache is not None else _walk_cache(vocab)
    walks, remainder = _walk_gadgets(class_trans, bt, shapes, cache, byte_class)
    if remainder is not None:
        parts_state.append(remainder[0]), parts_node.append(remainder[1]), parts_end.append(remainder[2])
        total += len(remainder[1])
    for gw in walks:
        gadget_of[gw.instances] = len(gadgets)
        label_of[gw.instances] = np.arange(gw.instances.shape[1])[None, :]
        gadgets.append(gw)
        # Shared part, as token-graph edges only (small: distinct end labels per member).
        for c in range(gw.instances.shape[1]):
            labels = gw.labels[c]
            parts_state.append(np.repeat(gw.instances[:, c], len(labels)))
            parts_node.append(np.full(len(labels) * len(gw.instances), -1, dtype=np.int64))
            parts_end.append(gw.instances[:, labels].ravel())
        total += len(gw.nodes)
    rest = np.flatnonzero((gadget_of < 0) & (rep == np.arange(n_states)))
    # Without token-level pruning (byte-complete vocabulary), the C walk packs these states' rows
    # directly (deduplicated) instead of listing (state, node, end) triples.
    rest_row = None  # state → index into rest_rows
    if complete and _cwalk is not None and USE_C_WALK and len(rest):
        # (a node's class is read as byte_class[sym]: a byte view's arrays are the vocabulary's)
        sym_, lo_, hi_, _off, has_, _, bc_ = _flat_structure(ct)
        start_, ids_ = _token_csr(ct)
        res = _cwalk.walk_rows(
            np.ascontiguousarray(class_trans, dtype=np.int64), class_trans.shape[1], sym_, bc_, lo_, hi_, has_,
            len(ct.cls[0]) if ct.depth else 0, rest.astype(np.int64), start_, ids_, W, max_entries,
        )
        if res is None:
            raise _index_too_large(max_entries, n_states)
        rest_rows = np.frombuffer(res[0], dtype=np.int32).reshape(-1, W)
        rest_row = np.full(n_states, -1, dtype=np.int64)
        rest_row[rest] = np.frombuffer(res[1], dtype=np.int64)
        rest = rest[:0]
    # Index the other states in large batches (per-call overhead dominates for the many light
    # states of a long concatenation) sized by how much of the vocabulary each state can start:
    # a state that allows few first bytes walks a small part of the trie.
    first_nodes = np.bincount(ct.cls[0], minlength=class_trans.shape[1]) if ct.depth else np.zeros(1)
    weight = ((class_trans[rest] >= 0) * first_nodes[None, :]).sum(axis=1) if len(rest) else np.zeros(0)
    avg_subtree = ct.n_nodes / max(1, len(ct.cls[0]) if ct.depth else 1)
    cost = np.maximum(weight * avg_subtree, 1.0)
    order = np.argsort(cost, kind="stable")
    rest, cost = rest[order], cost[order]
    bounds = [0]
    acc = 0.0
    for i, c in enumerate(cost.tolist()):
        if acc + c > 3_000_000 and i > bounds[-1]:
            bounds.append(i)
            acc = 0.0
        acc += c
    bounds.append(len(rest))
    for lo, hi in zip(bounds, bounds[1:]):
        if hi <= lo:
            continue
        batch = rest[lo:hi]
        si, nd_, en_ = _walk(class_trans, ct, batch)
        parts_state.append(batch[si]), parts_node.append(nd_), parts_end.append(en_)
        total += len(nd_)
        if total > max_entries:
            raise _index_too_large(max_entries, n_states)
    empty = np.zeros(0, dtype=np.int64)
    state = np.concatenate(parts_state) if parts_state else empty
    node = np.concatenate(parts_node) if parts_node else empty
    end = np.concatenate(parts_end) if parts_end else empty

    # 2. Token-level graph: reachability from the initial state, and which states can complete.
    if complete:
        reached = good = np.ones(n_states, dtype=bool)
        keep = node >= 0
    else:
        pairs = np.unique(state * n_states + end)
        p_src, p_dst = pairs // n_states, pairs % n_states
        reached = reachable(p_src, p_dst, n_states, [dfa.initial])
        good = reachable(p_dst, p_src, n_states, np.flatnonzero(dfa.accepting).tolist())
        if not good[dfa.initial]:
            raise VocabularyCoverageError(
                "no sequence of this tokenizer's tokens can complete the constraint "
                "(the vocabulary lacks bytes the pattern requires)"
            )
        # Drop tokens that lead into states that can never complete, and states nobody reaches.
        keep = good[end] & reached[state] & good[state] & (node >= 0)
    state, node = state[keep], node[keep]

    # 3. Deduplicate: states with the same node set (and acceptance) share one mask row.
    # Group by state (order within a state does not matter: hashes are sums, rows are sets).
    order = np.argsort(state, kind="stable")
    state, node = state[order], node[order]
    indexed = np.flatnonzero(reached & good)
    blocks = [np.zeros((1, W), dtype=np.int32)]  # the rows, a block at a time (row 0: no token)
    n_rows = 1
    rows_list: list[np.ndarray] = []  # the rows made one by one below, after the blocks
    row_index: dict[tuple, int] = {}
    row_of_state = np.zeros(n_states, dtype=np.int32)
    acc = dfa.accepting
    if rest_row is not None:
        # Rows packed by the C walk: only acceptance (EOS) can tell two such states apart.
        packed = indexed[gadget_of[indexed] < 0]
        indexed = indexed[gadget_of[indexed] >= 0]
        keys, inverse = np.unique(rest_row[rep[packed]] * 2 + acc[packed], return_inverse=True)
        block = rest_rows[keys // 2]  # (a copy)
        for i in np.flatnonzero(keys % 2).tolist():
            set_token_bits(block[i], eos)
        blocks.append(block)
        row_of_state[packed] = n_rows + inverse.reshape(-1)
        n_rows += len(keys)
    h1, h2 = _set_hashes(node, state, n_states)
    walked = rep[indexed]
    slices = dict(zip(walked.tolist(), zip(np.searchsorted(state, walked).tolist(),
                                           np.searchsorted(state, walked, side="right").tolist())))
    instance_of = np.full(n_states, -1, dtype=np.int64)  # state → its instance (row) in its gadget
    for gw in gadgets:
        instance_of[gw.instances] = np.arange(gw.instances.shape[0])[:, None]
    for s in indexed.tolist():
        r_ = int(rep[s])  # the walked state with the same row (itself unless grouped)
        a, b = slices[r_]
        g, c = int(gadget_of[s]), int(label_of[s])
        key = (g, c, int(h1[r_]), int(h2[r_]), b - a, bool(acc[s]))
        if g >= 0:
            j = int(instance_of[s])
            members_good = good[gadgets[g].instances[j]]
            if not members_good.all():
                key = key + (s,)  # pruning inside this instance makes its rows its own
        r = row_index.get(key)
        if r is None:
            own = node[a:b]
            shared = None
            if g >= 0:
                gw = gadgets[g]
                if gw.rows is not None and members_good.all():  # (the inside's row, made once)
                    shared = gw.rows[c]
                else:
                    lo_, hi_ = gw.node_start[c], gw.node_start[c + 1]
                    own = np.concatenate([own, gw.nodes[lo_:hi_][members_good[gw.ends[lo_:hi_]]]])
            r = row_index[key] = n_rows + len(rows_list)
            row = _materialize(bt if g >= 0 else ct, own, eos if acc[s] else None, W)
            if shared is not None:
                row |= shared
            rows_list.append(row)
            if (r + 1) * W * 4 > max_rows_bytes:
                raise CompilationTooLargeError(
                    f"the token index exceeds {max_rows_bytes >> 20} MiB ({r + 1} distinct masks); "
                    "simplify the constraint"
                )
        row_of_state[s] = r
    if rows_list:
        blocks.append(np.stack(rows_list))
    return TokenIndex(
        rows=blocks[0] if len(blocks) == 1 else np.concatenate(blocks),
        row_of_state=row_of_state,
        byte_class=byte_class.astype(np.uint8),
        class_transitions=class_trans.astype(np.int32),
    )


def _byte_complete(vocab: Vocabulary) -> bool:
    """Whether every byte value is a generatable single-byte token (SentencePiece byte fallback,
    byte-level BPE): then any byte string can be spelled, one token per byte."""
    got = vocab._cache.get("byte_complete")
    if got is None:
        singles = {b[0] for b in vocab.token_bytes if b is not None and len(b) == 1}
        got = vocab._cache["byte_complete"] = len(singles) == 256
    return got


def _prefix_blocks(class_trans: np.ndarray, depth: int) -> np.ndarray:
    """Block id per state: same block ⇔ the same byte strings of length ≤ ``depth`` stay alive.

    Moore's partition refinement, stopped after ``depth`` rounds (or when stable). Signatures
    are grouped by a 64-bit projection and checked exactly.
    """
    n, C = class_trans.shape
    if _cwalk is not None and USE_C_WALK:
        return np.frombuffer(
            _cwalk.prefix_blocks(np.ascontiguousarray(class_trans, dtype=np.int64), C, depth), dtype=np.int64
        )
    part = np.zeros(n, dtype=np.int64)
    count = 1
    proj = np.random.default_rng(0xB10C).integers(1, 2**63, size=C + 1, dtype=np.uint64)
    dead = class_trans < 0
    for _ in range(depth):
        sig = np.concatenate([part[:, None], np.where(dead, -1, part[np.where(dead, 0, class_trans)])], axis=1)
        with np.errstate(over="ignore"):
            h = ((sig + 2).astype(np.uint64) * proj).sum(axis=1, dtype=np.uint64)
        _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        if not np.array_equal(sig[first[inverse]], sig):
            _, inverse = np.unique(sig, axis=0, return_inverse=True)
            inverse = inverse.reshape(-1)
        part = inverse
        new_count = int(part.max()) + 1 if n else 0
        if new_count == count:
            break
        count = new_count
    return part


def _first_byte_subtree_sizes(trie) -> np.ndarray:
    """Number of trie nodes under each first byte (float64 [256]), cached on the trie."""
    sizes = trie.__dict__.get("_first_byte_sizes")
    if sizes is None:
        sizes = np.zeros(256)
        if trie.depth:
            root = trie.byte[0].astype(np.int64)
            for d in range(trie.depth):
                if d > 0:
                    root = root[trie.parent[d]]
                sizes += np.bincount(root, minlength=256)
        trie.__dict__["_first_byte_sizes"] = sizes
    return sizes


def _longest_path(class_trans: np.ndarray):
    """Length in bytes of the longest path of an acyclic DFA, or None if it has a cycle."""
    n = class_trans.shape[0]
    if (class_trans == np.arange(n)[:, None]).any():
        return None  # a self-loop (every JSON string): no need for the topological sort
    if _cwalk is not None and USE_C_WALK:
        got = _cwalk.longest_path(np.ascontiguousarray(class_trans, dtype=np.int64), class_trans.shape[1])
        return None if got < 0 else got
    succ = [sorted(set(r) - {-1}) for r in class_trans.tolist()]
    indeg = [0] * n
    for ts in succ:
        for t in ts:
            indeg[t] += 1
    order = [s for s in range(n) if indeg[s] == 0]
    for s in order:
        for t in succ[s]:
            indeg[t] -= 1
            if indeg[t] == 0:
                order.append(t)
    if len(order) < n:
        return None
    longest = [0] * n
    for s in reversed(order):
        if succ[s]:
            longest[s] = 1 + max(longest[t] for t in succ[s])
    return max(longest) if n else 0


def _set_hashes(node: np.ndarray, state: np.ndarray, n_states: int):
    """Two independent 64-bit order-free hashes of each state's node set (splitmix64 sums);
    ``state`` must be sorted."""
    out = []
    with np.errstate(over="ignore"):
        for salt in (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xD1B54A32D192ED03)):
            z = node.astype(np.uint64) * salt + np.uint64(0x632BE59BD9B4E019)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
            h = np.zeros(n_states, dtype=np.uint64)
            if len(state):
                # ``state`` is sorted: one wrapping sum per run of equal states.
                first = np.flatnonzero(np.concatenate([[True], state[1:] != state[:-1]]))
                h[state[first]] = np.add.reduceat(z, first)
            out.append(h)
    return out


def _token_csr(ct: ClassTrie):
    """Tokens ending at each node of ``ct`` as CSR arrays (int64 start, ids), cached."""
    cache = ct.__dict__.get("trie_cache") or ct.__dict__  # per vocabulary for a byte view
    csr = cache.get(("_csr", ct.n_nodes))
    if csr is None:
        start, ids = _cwalk.token_csr(np.ascontiguousarray(ct.token_node, dtype=np.int64), ct.n_nodes)
        csr = cache[("_csr", ct.n_nodes)] = (np.frombuffer(start, dtype=np.int64), np.frombuffer(ids, dtype=np.int64))
    return csr


def _index_too_large(max_entries: int, n_states: int) -> CompilationTooLargeError:
    return CompilationTooLargeError(
        f"the token index is too large (over {max_entries} state×token entries across {n_states} "
        "automaton states); long bounded repetitions of wide character classes (a JSON string "
        "with a large maxLength, .{0,500}) are the usual cause: lower the bound or drop it"
    )


def set_token_bits(row: np.ndarray, ids: np.ndarray) -> None:
    """Set the bits of token ``ids`` in a packed int32 row (ids may share a word)."""
    np.bitwise_or.at(row.view(np.uint32), ids >> 5, np.left_shift(np.uint32(1), (ids & 31).astype(np.uint32)))


def _materialize(ct: ClassTrie, nodes: np.ndarray, eos, W: int) -> np.ndarray:
    if _cwalk is not None and USE_C_WALK:
        csr = _token_csr(ct)
        row = np.frombuffer(
            _cwalk.token_bits(csr[0], csr[1], np.ascontiguousarray(nodes, dtype=np.int64), W), dtype=np.int32
        ).copy()
        if eos is not None:
            set_token_bits(row, eos)
        return row
    bits = np.zeros(W * 32, dtype=bool)
    bits[: ct.vocab_size] = ct.token_mask(nodes)
    if eos is not None:
        bits[eos] = True
    return np.packbits(bits, bitorder="little").view(np.int32)


# -- walks for other engines (the pushdown matcher walks lexer automata from arbitrary trie nodes) --


def byte_view(vocab: Vocabulary, byte_class: np.ndarray, n_classes: int) -> ClassTrie:
    """The vocabulary's byte trie labelled with ``byte_class`` (no merging: node ids are the byte
    trie's, the same for every automaton, so walks of different automata can hand over nodes).
    Every view of a vocabulary shares its trie's tables: after the first, a view is a copy of those
    references with its own classes (a lexer's first walk makes one)."""
    trie = vocab.byte_trie()
    byte_class = np.asarray(byte_class)
    shared = trie.__dict__.get("_byte_view_shared")
    if shared is None:
        view = ClassTrie(trie, byte_class, n_classes, merge=False)
        trie.__dict__["_byte_view_shared"] = {k: v for k, v in view.__dict__.items() if k not in _VIEW_OWN}
        return view
    view = ClassTrie.__new__(ClassTrie)
    view.__dict__.update(shared)
    view.byte_class = byte_class
    view.cls = _LevelClasses(trie, byte_class, view.depth)
    if _cwalk is not None:  # (the C walk's arguments: the trie's, and these classes)
        c_args = trie.__dict__.get("_byte_view_c")
        if c_args is None:
            nodes, _, off, n_root, cs, ci = _c_split_args(view)
            c_args = trie.__dict__["_byte_view_c"] = (nodes, off, n_root, cs, ci)
        nodes, off, n_root, cs, ci = c_args
        bc = np.ascontiguousarray(byte_class, dtype=np.int64)
        view.__dict__["_c_walk_view"] = (nodes, bc, off, n_root)
        view.__dict__["_c_split_args"] = (nodes, bc, off, n_root, cs, ci)
    return view


#: What a byte view holds of its own (the rest is its trie's, :func:`byte_view`): its classes and
#: what is derived from them on use.
_VIEW_OWN = frozenset({"cls", "byte_class", "_flat_structure", "_c_walk_view", "_c_split_args"})


def walk(class_trans: np.ndarray, view: ClassTrie, states=None, *, inject=None, want_exits: bool = False):
    """Walk ``view`` through ``class_trans`` (-1 dead, -2 exit) from ``states`` at the root and from
    ``inject`` ``{level: (start index, level-local node, state)}`` entries that consumed that node.

    Returns ``(start index, global node, end state)`` of the surviving token-ending nodes, and with
    ``want_exits`` also ``(start index, level, level-local node, state before)`` of each step into -2.
    """
    return _walk(class_trans, view, states, inject=inject, want_exits=want_exits)


def walk_rows_by_end(class_trans: np.ndarray, view: ClassTrie, words: int, states=None, *, inject=None,
                     skip=None, groups=None):
    """:func:`walk` with exits, its tokens as packed rows: ``((ends, rows int32[len(ends), words]),
    exits)``, row ``i`` holding the tokens whose walk ends in state ``ends[i]`` (each end once).
    ``skip`` (C walk only): a run table's ``skip`` (:mod:`dotvllm_plugin.runs`): nodes (and their
    subtrees) not visited. ``groups`` (int64 per state, each below the number of states): one row
    per group of end states instead, the tokens ending in any state of group ``groups[ends[i]]``
    (``ends[i]`` one of them)."""
    if _cwalk is not None and USE_C_WALK:
        start, ids = _token_csr(view)
        (ends, rows), exits = _walk(class_trans, view, states, inject=inject, want_exits=True,
                                       rows=(start, ids, words), skip=skip, groups=groups)
        ends = np.frombuffer(ends, dtype=np.int64)
        return (ends, np.frombuffer(rows, dtype=np.int32).reshape(len(ends), words)), exits
    (_, nodes, ends), exits = _walk(class_trans, view, states, inject=inject, want_exits=True)
    key = ends if groups is None else np.asarray(groups)[ends]
    _, first = np.unique(key, return_index=True)
    rows = np.stack([token_row(view, nodes[key == key[i]], words) for i in first.tolist()]) if len(first) else \
        np.zeros((0, words), dtype=np.int32)
    return (ends[first], rows), exits


def walk_rows_from_nodes(class_trans: np.ndarray, view: ClassTrie, words: int, level: np.ndarray,
                         node: np.ndarray, first: np.ndarray, groups=None, chosen=None, walker=None):
    """:func:`walk_rows_by_end` resumed at trie nodes that start a lexeme: ``(level, level-local
    node)`` pairs, each stepped by its own byte from the row ``first`` (the lexeme-start state's, -1
    dead, -2 exit). None when no node survives that step. ``groups``: as for
    :func:`walk_rows_by_end`; with ``chosen`` too, the result of :func:`walk_split`. One C call with
    flat arrays (the hot path of the pushdown matcher's first visits); per level through the numpy
    walk otherwise. ``walker``: as for :func:`walk_split`."""
    if _cwalk is not None and USE_C_WALK and chosen is not None:  # (the resumed states, the walk, its split)
        return walk_split(class_trans, view, words, groups, chosen, inject=(level, node), inject_first=first,
                          walker=walker)
    walked = walk_rows_by_end if chosen is None else functools.partial(walk_split, chosen=chosen)
    if _cwalk is None or not USE_C_WALK:
        trie = view.cls.trie
        inject = {}
        for d in np.unique(level).tolist():
            nd = node[level == d]
            q2 = first[trie.byte[d][nd].astype(np.int64)]
            ok = q2 >= 0
            if ok.any():
                inject[d] = (np.zeros(int(ok.sum()), dtype=np.int64), nd[ok], q2[ok])
        return walked(class_trans, view, words, inject=inject, groups=groups) if inject else None
    sym, _, _, off, _, _, _ = _flat_structure(view)
    state = first[sym[off[level] + node]]  # a byte view's sym is the node's byte
    ok = state >= 0
    if not ok.all():
        if not ok.any():
            return None
        level, node, state = level[ok], node[ok], state[ok]
    return walked(class_trans, view, words, inject=(np.zeros(len(node), dtype=np.int64), level, node, state),
                  groups=groups)


def walker(class_trans: np.ndarray, view: ClassTrie, words: int, groups: np.ndarray, chosen: np.ndarray):
    """What :func:`walk_split`'s C walk reads of one automaton and view, checked and held once (a
    capsule for ``walker=``: a lexer walked many times then pays a few small arguments a walk, not
    its tables again), or None without the C walk."""
    if _cwalk is None or not USE_C_WALK:
        return None
    nodes, byte_class, off, n_root, cs, ci = _c_split_args(view)
    i64 = np.int64
    return _cwalk.walker(np.ascontiguousarray(class_trans, dtype=i64), class_trans.shape[1], nodes, byte_class, off,
                         n_root, cs, ci, words, class_trans.shape[0], np.ascontiguousarray(groups, dtype=i64),
                         np.ascontiguousarray(chosen, dtype=i64), MAX_INDEX_ENTRIES)


def walk_split(class_trans: np.ndarray, view: ClassTrie, words: int, groups: np.ndarray, chosen: np.ndarray,
               states=None, *, inject=None, skip=None, inject_first=None, walker=None):
    """:func:`walk_rows_by_end` with ``groups`` (int64 per state; group 0: tokens that need no
    parser check) as the pushdown matcher keeps a walk: ``(free, ((end state, row), ...), exits)``,
    ``free`` the row of group 0 or None, one row per other group under the first of its end states
    reached, ``exits`` ``((terminal, level, node), ...)`` by the terminal their lexeme ends
    (``chosen[state before]``), terminals ascending. Rows are read-only. In C the walk splits its
    own buffers (:func:`walk_rows_by_end` and numpy are the reference). ``inject_first`` (C walk,
    byte views): ``inject`` is ``(level, level-local node)`` and each node's state is
    ``inject_first[its byte]``, the node dropped where that is negative; None when no node is kept
    and ``states`` is None. ``walker``: :func:`walker`'s capsule of these arguments (the C walk then
    reads them from it: states, byte-view injections and skips only)."""
    if _cwalk is not None and USE_C_WALK:
        if walker is not None and (inject is None or inject_first is not None):
            i64 = np.int64
            got = _cwalk.walk_at(walker, None if states is None else np.ascontiguousarray(states, dtype=i64),
                                 *((None, None, None) if inject is None else
                                   (np.ascontiguousarray(inject[0], dtype=i64), np.ascontiguousarray(inject[1], dtype=i64),
                                    np.ascontiguousarray(inject_first, dtype=i64))),
                                 *(skip or (None, None, None, None)))
            if got is None:
                raise _walk_too_large()
        else:
            got = _walk_split_c(class_trans, view, words, groups, chosen, states, inject, skip, inject_first)
        if got is False:
            return None
        free, pending, by_term = got
        fb, i32, i64 = np.frombuffer, np.int32, np.int64
        return (None if free is None else fb(free, dtype=i32), tuple([(e, fb(r, dtype=i32)) for e, r in pending]),
                tuple([(t, fb(lv, dtype=i64), fb(nd, dtype=i64)) for t, lv, nd in by_term]))
    return split_walk(*walk_rows_by_end(class_trans, view, words, states, inject=inject, skip=skip, groups=groups),
                      groups, chosen)


def _c_split_args(view: ClassTrie) -> tuple:
    """What every C walk of ``view`` reads: :func:`_c_walk_view`'s arguments and the tokens ending at
    each node (:func:`_token_csr`), gathered once per view (:func:`byte_view` sets them)."""
    got = view.__dict__.get("_c_split_args")
    if got is None:
        got = view.__dict__["_c_split_args"] = (*_c_walk_view(view), *_token_csr(view))
    return got


def _walk_split_c(class_trans, view, words, groups, chosen, states, inject, skip, inject_first):
    """The C walk of :func:`walk_split`, split in the same call (bytes; False as there): the
    pushdown matcher's first visits, a few microseconds of C each (the general assembly of the
    arguments was a third of them), the view's arguments gathered once per view."""
    nodes, byte_class, off, n_root, cs, ci = _c_split_args(view)
    i64 = np.int64
    if inject_first is not None:  # (level, node): each node's state from the row, in C
        i_si = i_state = _EMPTY
        i_level, i_node = np.ascontiguousarray(inject[0], dtype=i64), np.ascontiguousarray(inject[1], dtype=i64)
    elif inject is None:
        i_si = i_level = i_node = i_state = _EMPTY
    else:
        i_si, i_level, i_node, i_state = _c_inject(inject)
    args = [np.ascontiguousarray(class_trans, dtype=i64), class_trans.shape[1], nodes, byte_class, off, n_root,
            _EMPTY if states is None else np.ascontiguousarray(states, dtype=i64), i_si, i_level, i_node, i_state,
            True, MAX_INDEX_ENTRIES, cs, ci, words, class_trans.shape[0], *(skip or (None, None, None, None)),
            np.ascontiguousarray(groups, dtype=i64), np.ascontiguousarray(chosen, dtype=i64)]
    if inject_first is not None:
        args.append(np.ascontiguousarray(inject_first, dtype=i64))
    res = _cwalk.walk(*args)
    if res is None:
        raise _walk_too_large()
    return res


def split_walk(ended, exits, groups, chosen):
    """:func:`walk_split`'s result from :func:`walk_rows_by_end`'s (the reference of the C walk's own
    split)."""
    ends, rows = ended
    _, level, node, prev = exits
    free, pending = None, []
    for e, row in zip(ends.tolist(), rows):
        if groups[e] == 0:
            free = row
        else:
            pending.append((e, row))
    terms = np.asarray(chosen)[prev]
    return free, tuple(pending), tuple((t, level[terms == t], node[terms == t]) for t in np.unique(terms).tolist())


def token_row(view: ClassTrie, nodes: np.ndarray, words: int) -> np.ndarray:
    """Packed bitmask row (int32 ``[words]``) of the tokens that end at global ``nodes`` of ``view``."""
    return _materialize(view, nodes, None, words)
