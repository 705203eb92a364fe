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


def _walk(dfa_trans: np.ndarray, trie, states: np.ndarray):
    """Walk every token from each of ``states``.

    Returns ``(state_idx, token_id, end_state)`` arrays for all tokens that survive, where
    ``state_idx`` indexes ``states``.
    """
    k = len(states)
    out_si, out_tok, out_end = [], [], []
    n0 = trie.node_counts[0] if trie.depth else 0
    si = np.repeat(np.arange(k, dtype=np.int64), n0)
    node = np.tile(np.arange(n0, dtype=np.int64), k)
    st = dfa_trans[np.repeat(states, n0), trie.byte[0][node]].astype(np.int64)
    for d in range(trie.depth):
        if d > 0:
            cs = trie.child_start[d]
            counts = cs[node + 1] - cs[node]
            child = _expand_ranges(cs[node], counts)
            si = np.repeat(si, counts)
            st = dfa_trans[np.repeat(st, counts), trie.byte[d][child]].astype(np.int64)
            node = child
        keep = st >= 0
        if not keep.all():
            si, st, node = si[keep], st[keep], node[keep]
        if len(node) == 0:
            break
        ts = trie.tokens_at_start[d]
        tcounts = ts[node + 1] - ts[node]
        has = tcounts > 0
        if has.any():
            tidx = _expand_ranges(ts[node[has]], tcounts[has])
            out_tok.append(trie.tokens_at[d][tidx])
            out_si.append(np.repeat(si[has], tcounts[has]))
            out_end.append(np.repeat(st[has], tcounts[has]))
    if not out_tok:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    return np.concatenate(out_si), np.concatenate(out_tok), np.concatenate(out_end)


def build_index(dfa: ByteDFA, vocab: Vocabulary, *, max_rows_bytes: int = MAX_ROWS_BYTES) -> TokenIndex:
    trie = vocab.byte_trie()
    trans = dfa.transitions
    n_states = dfa.n_states
    V = vocab.size
    W = (V + 31) // 32
    eos = np.array(vocab.eos_token_ids, dtype=np.int64)

    successors: dict[int, np.ndarray] = {}
    state_bits: dict[int, np.ndarray] = {}  # state → packed row (uint8 view later)
    seen = np.zeros(n_states, dtype=bool)
    seen[dfa.initial] = True
    frontier = [dfa.initial]
    while frontier:
        batch, frontier = frontier[:_BATCH_STATES], frontier[_BATCH_STATES:]
        states = np.array(batch, dtype=np.int64)
        si, tok, end = _walk(trans, trie, states)
        bits = np.zeros((len(batch), W * 32), dtype=bool)
        bits[si, tok] = True
        acc = dfa.accepting[states]
        if acc.any():
            bits[np.ix_(np.flatnonzero(acc), eos)] = True
        packed = np.packbits(bits, axis=1, bitorder="little").view(np.int32)
        pair = np.unique(si * n_states + end)
        for i, s in enumerate(batch):
            state_bits[s] = packed[i]
        pair_si, pair_end = pair // n_states, pair % n_states
        bounds = np.searchsorted(pair_si, np.arange(len(batch) + 1))
        for i, s in enumerate(batch):
            succ = pair_end[bounds[i] : bounds[i + 1]]
            successors[s] = succ
            new = succ[~seen[succ]]
            if len(new):
                seen[new] = True
                frontier.extend(int(x) for x in new)
        if len(state_bits) * W * 4 > max_rows_bytes:
            raise CompilationTooLargeError(
                f"the token index exceeds {max_rows_bytes >> 20} MiB before deduplication "
                f"({len(state_bits)} states); simplify the constraint"
            )

    good = _can_complete(successors, dfa.accepting)
    if not good.get(dfa.initial, False):
        raise VocabularyCoverageError(
            "no sequence of this tokenizer's tokens can complete the constraint "
            "(the vocabulary lacks bytes the pattern requires)"
        )
    doomed = [s for s, ok in good.items() if not ok]
    if doomed:
        _prune(trans, trie, dfa, state_bits, successors, good, n_states)

    rows_list = [np.zeros(W, dtype=np.int32)]
    row_index: dict[bytes, int] = {rows_list[0].tobytes(): 0}
    row_of_state = np.zeros(n_states, dtype=np.int32)
    for s, row in state_bits.items():
        if not good[s]:
            continue
        key = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
        r = row_index.get(key)
        if r is None:
            r = row_index[key] = len(rows_list)
            rows_list.append(row)
        row_of_state[s] = r
    rows = np.stack(rows_list)
    return TokenIndex(rows=rows, row_of_state=row_of_state, n_indexed_states=len(state_bits))


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


def _prune(trans, trie, dfa, state_bits, successors, good, n_states) -> None:
    """Clear the bits of tokens that lead into states that can never complete."""
    bad = np.zeros(n_states, dtype=bool)
    bad[[s for s, ok in good.items() if not ok]] = True
    affected = [s for s, succ in successors.items() if good[s] and bad[succ].any()]
    for i in range(0, len(affected), _BATCH_STATES):
        batch = affected[i : i + _BATCH_STATES]
        si, tok, end = _walk(trans, trie, np.array(batch, dtype=np.int64))
        kill = bad[end]
        for j, s in enumerate(batch):
            toks = tok[kill & (si == j)]
            if len(toks):
                row = state_bits[s].view(np.uint32).copy()
                np.bitwise_and.at(row, toks // 32, ~(np.uint32(1) << (toks % 32).astype(np.uint32)))
                state_bits[s] = row.view(np.int32)
