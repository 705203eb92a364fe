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


def _walk(class_trans: np.ndarray, ct: ClassTrie, states: np.ndarray):
    """Walk every class-trie path from each of ``states``.

    Returns ``(state_idx, node, end_state)`` for every node that ends a token and survives, where
    ``state_idx`` indexes ``states`` and ``node`` is a global class-trie node id.
    """
    k = len(states)
    out_si, out_node, out_end = [], [], []
    if ct.depth == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    n0 = len(ct.cls[0])
    si = np.repeat(np.arange(k, dtype=np.int64), n0)
    node = np.tile(np.arange(n0, dtype=np.int64), k)
    st = class_trans[np.repeat(states, n0), ct.cls[0][node]]
    for d in range(ct.depth):
        if d > 0:
            cs = ct.child_start[d]
            counts = cs[node + 1] - cs[node]
            child = _expand_ranges(cs[node], counts)
            si = np.repeat(si, counts)
            st = class_trans[np.repeat(st, counts), ct.cls[d][child]]
            node = child
        keep = st >= 0
        if not keep.all():
            si, st, node = si[keep], st[keep], node[keep]
        if len(node) == 0:
            break
        g = node + ct.offset[d]
        has = ct.has_tokens[g]
        out_si.append(si[has])
        out_node.append(g[has])
        out_end.append(st[has])
    if not out_si:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    return np.concatenate(out_si), np.concatenate(out_node), np.concatenate(out_end)


def build_index(dfa: ByteDFA, vocab: Vocabulary, *, max_rows_bytes: int = MAX_ROWS_BYTES) -> TokenIndex:
    classes, byte_class = np.unique(dfa.transitions.T, axis=0, return_inverse=True)
    byte_class = byte_class.reshape(256)
    class_trans = np.ascontiguousarray(classes.T).astype(np.int64)
    ct = ClassTrie(vocab.byte_trie(), byte_class, len(classes))
    n_states = dfa.n_states
    V = vocab.size
    W = (V + 31) // 32
    eos = np.array(vocab.eos_token_ids, dtype=np.int64)

    successors: dict[int, np.ndarray] = {}
    node_sets: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # state → (class nodes, their end states)
    seen = np.zeros(n_states, dtype=bool)
    seen[dfa.initial] = True
    frontier = [dfa.initial]
    total_pairs = 0
    while frontier:
        batch, frontier = frontier[:_BATCH_STATES], frontier[_BATCH_STATES:]
        si, node, end = _walk(class_trans, ct, np.array(batch, dtype=np.int64))
        order = np.argsort(si, kind="stable")
        si, node, end = si[order], node[order], end[order]
        bounds = np.searchsorted(si, np.arange(len(batch) + 1))
        for i, s in enumerate(batch):
            nodes_i, end_i = node[bounds[i] : bounds[i + 1]], end[bounds[i] : bounds[i + 1]]
            node_sets[s] = (nodes_i, end_i)
            succ = np.unique(end_i)
            successors[s] = succ
            new = succ[~seen[succ]]
            if len(new):
                seen[new] = True
                frontier.extend(new.tolist())
        total_pairs += len(node)
        if total_pairs > 50_000_000:
            raise CompilationTooLargeError(
                f"the token index is too large ({len(node_sets)} states, {total_pairs} entries); simplify the constraint"
            )

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
        if bad[s]:
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
    return TokenIndex(rows=np.stack(rows_list), row_of_state=row_of_state, n_indexed_states=len(node_sets))


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
