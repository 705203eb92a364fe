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

import hashlib
from dataclasses import dataclass

import numpy as np

from .errors import CompilationTooLargeError, VocabularyCoverageError
from .fsm import ByteDFA
from .vocabulary import Vocabulary

__all__ = ["TokenIndex", "build_index"]

_BATCH_STATES = 64
MAX_ROWS_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class TokenIndex:
    rows: np.ndarray  # int32 [n_rows, ceil(V/32)]; row 0 is all-zero (unreached states)
    row_of_state: np.ndarray  # int32 [n_states]
    n_indexed_states: int


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
    path. Nodes are numbered globally (level by level); ``tokens`` (CSR by ``token_start``) lists
    the token ids that end at each node.
    """

    def __init__(self, trie, byte_class: np.ndarray, n_classes: int):
        self.depth = trie.depth
        self.cls: list[np.ndarray] = []
        self.child_start: list[np.ndarray] = []
        self.offset: list[int] = []
        end_nodes, end_tokens = [], []
        prev_map = None
        prev_count = 1
        total = 0
        for d in range(trie.depth):
            parent_cls = np.zeros(len(trie.parent[d]), dtype=np.int64) if d == 0 else prev_map[trie.parent[d]]
            key = parent_cls * n_classes + byte_class[trie.byte[d]]
            space = prev_count * n_classes
            if space <= 1 << 22:
                used = np.zeros(space, dtype=bool)
                used[key] = True
                dense = np.cumsum(used) - 1
                node_map = dense[key]
                uniq = np.flatnonzero(used)
            else:
                uniq, node_map = np.unique(key, return_inverse=True)
            self.cls.append((uniq % n_classes).astype(np.int64))
            self.child_start.append(np.searchsorted(uniq // n_classes, np.arange(prev_count + 1)))
            self.offset.append(total)
            tok_nodes = np.repeat(np.arange(len(trie.tokens_at_start[d]) - 1), np.diff(trie.tokens_at_start[d]))
            end_nodes.append(node_map[tok_nodes] + total)
            end_tokens.append(trie.tokens_at[d])
            total += len(uniq)
            prev_map, prev_count = node_map, len(uniq)
        self.n_nodes = total
        nodes = np.concatenate(end_nodes) if end_nodes else np.zeros(0, dtype=np.int64)
        toks = np.concatenate(end_tokens) if end_tokens else np.zeros(0, dtype=np.int64)
        order = np.argsort(nodes, kind="stable")
        self.tokens = toks[order]
        self.token_start = np.searchsorted(nodes[order], np.arange(total + 1))
        self.has_tokens = np.diff(self.token_start) > 0


_EXIT = -2  # in a gadget's canonical table: a transition that leaves the gadget


def _walk(class_trans: np.ndarray, ct: ClassTrie, states: np.ndarray | None, inject=None, want_exits=False):
    """Walk class-trie paths through the DFA, level by level, for many start states at once.

    ``states`` start at the root (``state_idx`` = position in ``states``). ``inject`` maps a level
    ``d`` to ``(state_idx, node, state)`` frontier entries that have already consumed node ``node``
    of level ``d`` (used to resume walks that left a shared gadget). Returns
    ``(state_idx, node, end_state)`` for every surviving node that ends a token (``node`` is a
    global class-trie id), and with ``want_exits`` also ``(state_idx, level, node, prev_state)``
    for every step into ``_EXIT``.
    """
    empty = np.zeros(0, dtype=np.int64)
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


def _find_gadgets(class_trans: np.ndarray, max_depth: int = 8, max_size: int = 64) -> dict[bytes, list[np.ndarray]]:
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
    rows = class_trans
    for root in loops.tolist():
        if taken[root]:
            continue
        # Forward ball around the root, then keep the states that can come back to it.
        depth = {root: 0}
        order = [root]
        for s in order:
            if depth[s] >= max_depth or len(order) > max_size:
                break
            for t in np.unique(rows[s]).tolist():
                if t >= 0 and t not in depth:
                    depth[t] = depth[s] + 1
                    order.append(t)
        ball = set(order)
        back = {root}
        changed = True
        while changed:
            changed = False
            for s in order:
                if s not in back and any(t in back for t in rows[s].tolist()):
                    back.add(s)
                    changed = True
        members = [root]
        label = {root: 0}
        for s in members:
            for t in rows[s].tolist():
                if t in back and t in ball and t not in label:
                    label[t] = len(members)
                    members.append(t)
        if any(taken[m] for m in members):
            continue
        mem = np.array(members, dtype=np.int64)
        lut = np.full(n + 1, _EXIT, dtype=np.int64)
        lut[mem] = np.arange(len(mem))
        lut[n] = -1  # dead stays dead
        canon = lut[np.where(rows[mem] < 0, n, rows[mem])]
        taken[mem] = True
        groups.setdefault(canon.tobytes() + len(mem).to_bytes(4, "little"), []).append(mem)
    return {sig: inst for sig, inst in groups.items() if len(inst) >= 2}


def _walk_gadget(class_trans: np.ndarray, ct: ClassTrie, instances: list[np.ndarray]):
    """Index all members of all instances of one gadget, walking the gadget itself only once."""
    k = len(instances[0])
    canon = np.full_like(class_trans[instances[0]], _EXIT)
    lut = {int(s): i for i, s in enumerate(instances[0])}
    for i, s in enumerate(instances[0].tolist()):
        for c, t in enumerate(class_trans[s].tolist()):
            canon[i, c] = lut.get(t, _EXIT) if t >= 0 else -1
    (c_si, c_node, c_end), (e_si, e_level, e_node, e_prev) = _walk(
        canon, ct, np.arange(k, dtype=np.int64), want_exits=True
    )
    inst = np.stack(instances)  # [n_instances, k] real states
    # Resume every exit in every instance with the real transition.
    m = len(instances)
    inject: dict[int, tuple] = {}
    if len(e_si):
        cls = np.concatenate([ct.cls[d][e_node[e_level == d]] for d in range(ct.depth) if (e_level == d).any()])
        order = np.argsort(e_level, kind="stable")
        e_si, e_level, e_node, e_prev = e_si[order], e_level[order], e_node[order], e_prev[order]
        r_prev = inst[:, e_prev]  # [m, n_exits]
        r_next = class_trans[r_prev, np.broadcast_to(cls, r_prev.shape)]
        r_si = np.arange(m)[:, None] * k + e_si[None, :]
        alive = r_next >= 0
        lv = np.broadcast_to(e_level, r_prev.shape)
        nd = np.broadcast_to(e_node, r_prev.shape)
        for d in np.unique(e_level).tolist():
            sel = alive & (lv == d)
            inject[d] = (r_si[sel], nd[sel], r_next[sel])
    r_si, r_node, r_end = _walk(class_trans, ct, None, inject=inject)
    out = {}
    r_order = np.argsort(r_si, kind="stable")
    r_si, r_node, r_end = r_si[r_order], r_node[r_order], r_end[r_order]
    r_bounds = np.searchsorted(r_si, np.arange(m * k + 1))
    c_order = np.argsort(c_si, kind="stable")
    c_si, c_node, c_end = c_si[c_order], c_node[c_order], c_end[c_order]
    c_bounds = np.searchsorted(c_si, np.arange(k + 1))
    for j in range(m):
        for c in range(k):
            own_nodes = c_node[c_bounds[c] : c_bounds[c + 1]]
            own_end = inst[j][c_end[c_bounds[c] : c_bounds[c + 1]]]
            q = j * k + c
            nodes = np.concatenate([own_nodes, r_node[r_bounds[q] : r_bounds[q + 1]]])
            ends = np.concatenate([own_end, r_end[r_bounds[q] : r_bounds[q + 1]]])
            order = np.argsort(nodes, kind="stable")
            out[int(inst[j][c])] = (nodes[order], ends[order])
    return out


def build_index(
    dfa: ByteDFA, vocab: Vocabulary, *, max_rows_bytes: int = MAX_ROWS_BYTES, share_loops: bool = True
) -> TokenIndex:
    """Index ``dfa`` for ``vocab``; ``share_loops=False`` walks every state on its own (reference)."""
    classes, byte_class = np.unique(dfa.transitions.T, axis=0, return_inverse=True)
    byte_class = byte_class.reshape(256)
    class_trans = np.ascontiguousarray(classes.T).astype(np.int64)
    ct = ClassTrie(vocab.byte_trie(), byte_class, len(classes))
    n_states = dfa.n_states
    V = vocab.size
    W = (V + 31) // 32
    eos = np.array(vocab.eos_token_ids, dtype=np.int64)

    # Index every state of the (trimmed) DFA in large batches rather than discovering states
    # breadth first: discovery along a long concatenation is one state at a time, and per-call
    # overhead would dominate. States no token walk reaches get indexed needlessly but cheaply.
    node_sets: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # state → (class nodes, their end states)
    for instances in _find_gadgets(class_trans).values() if share_loops else ():
        node_sets.update(_walk_gadget(class_trans, ct, instances))
    rest = np.array([s for s in range(n_states) if s not in node_sets], dtype=np.int64)
    total_pairs = 0
    batch_size = max(_BATCH_STATES, min(512, 2_000_000 // max(1, ct.n_nodes)))
    for lo in range(0, len(rest), batch_size):
        batch = rest[lo : lo + batch_size]
        si, node, end = _walk(class_trans, ct, batch)
        order = np.argsort(si, kind="stable")
        si, node, end = si[order], node[order], end[order]
        bounds = np.searchsorted(si, np.arange(len(batch) + 1))
        for i, s in enumerate(batch.tolist()):
            node_sets[s] = (node[bounds[i] : bounds[i + 1]], end[bounds[i] : bounds[i + 1]])
        total_pairs += len(node)
        if total_pairs > 50_000_000:
            raise CompilationTooLargeError(
                f"the token index is too large ({len(node_sets)} states, {total_pairs} entries); simplify the constraint"
            )
    successors = {s: np.unique(end) for s, (_, end) in node_sets.items()}
    reached = _reachable(successors, dfa.initial)

    good = _can_complete(successors, dfa.accepting)
    if not good.get(dfa.initial, False):
        raise VocabularyCoverageError(
            "no sequence of this tokenizer's tokens can complete the constraint "
            "(the vocabulary lacks bytes the pattern requires)"
        )
    bad = np.ones(n_states, dtype=bool)
    bad[[s for s, ok in good.items() if ok]] = False

    rows_list = [np.zeros(W, dtype=np.int32)]
    row_index: dict[bytes, int] = {}
    row_of_state = np.zeros(n_states, dtype=np.int32)
    for s, (nodes_s, end_s) in node_sets.items():
        if bad[s] or not reached[s]:
            continue
        nodes_s = nodes_s[~bad[end_s]]
        acc = bool(dfa.accepting[s])
        key = hashlib.blake2b(nodes_s.tobytes() + (b"\x01" if acc else b"\x00"), digest_size=16).digest()
        r = row_index.get(key)
        if r is None:
            r = row_index[key] = len(rows_list)
            rows_list.append(_materialize(ct, nodes_s, eos if acc else None, W))
            if len(rows_list) * W * 4 > max_rows_bytes:
                raise CompilationTooLargeError(
                    f"the token index exceeds {max_rows_bytes >> 20} MiB ({len(rows_list)} distinct masks); "
                    "simplify the constraint"
                )
        row_of_state[s] = r
    return TokenIndex(rows=np.stack(rows_list), row_of_state=row_of_state, n_indexed_states=int(reached.sum()))


def _reachable(successors: dict[int, np.ndarray], initial: int) -> np.ndarray:
    """States reached at token boundaries from ``initial``."""
    seen = np.zeros(len(successors), dtype=bool)
    seen[initial] = True
    stack = [initial]
    while stack:
        s = stack.pop()
        succ = successors[s]
        new = succ[~seen[succ]]
        if len(new):
            seen[new] = True
            stack.extend(new.tolist())
    return seen


def _materialize(ct: ClassTrie, nodes: np.ndarray, eos, W: int) -> np.ndarray:
    bits = np.zeros(W * 32, dtype=bool)
    starts = ct.token_start[nodes]
    bits[ct.tokens[_expand_ranges(starts, ct.token_start[nodes + 1] - starts)]] = True
    if eos is not None:
        bits[eos] = True
    return np.packbits(bits, bitorder="little").view(np.int32)


def _can_complete(successors: dict[int, np.ndarray], accepting: np.ndarray) -> dict[int, bool]:
    """States from which some token sequence reaches an accepting state."""
    preds: dict[int, list[int]] = {s: [] for s in successors}
    for s, succ in successors.items():
        for t in succ.tolist():
            if t in preds:
                preds[t].append(s)
    good = {s: bool(accepting[s]) for s in successors}
    stack = [s for s, ok in good.items() if ok]
    while stack:
        t = stack.pop()
        for p in preds[t]:
            if not good[p]:
                good[p] = True
                stack.append(p)
    return good
