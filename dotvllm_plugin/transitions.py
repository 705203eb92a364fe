"""Token-level transitions of DFA grammars: a whole decoding step's advances in a few array operations.

A :class:`~dotvllm_plugin.matcher.GrammarMatcher` commits a token by walking its bytes through the
DFA (about a microsecond of Python per token). :class:`TokenTransitions` keeps instead, for each
DFA state that sequences visit, the next state of *every* token as one dense int32 row, so the
advances of a step (many sequences, many grammars of one vocabulary) are one gather:
``next = rows[row_of_state[state], token]``.

The states of all registered grammars share one numbering (a grammar's state ``s`` is
``base + s``) with two shared states: :data:`DEAD` (a token the constraint does not allow: only
EOS from then on) and :data:`DONE` (EOS accepted). A row records what
:meth:`GrammarMatcher.accept_token` does from that state: a token the state's mask row does not
allow leads to ``DEAD``, an allowed EOS to ``DONE``, any other allowed token to the state its
bytes walk to. From ``DEAD`` and ``DONE`` every token leads to ``DEAD`` (a terminated matcher
accepts nothing). :meth:`TokenTransitions.masks` gives each state's mask row as
``(table, row)``: table ``0`` is the EOS-only row (for ``DEAD`` and ``DONE``), table ``g`` the
``rows`` of the ``g``-th registered grammar.

Rows are built from the grammar's class-merged token trie (:class:`~dotvllm_plugin.index.ClassTrie`,
one walk for many states): every state of a grammar at once when that fits ``eager_bytes``, else
the states a step meets for the first time. At most ``max_bytes`` of rows are kept; past that
they are all dropped and rebuilt as steps need them. Pushdown grammars have no such rows: their
matchers advance one at a time.

This module does not import vLLM or torch.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

import numpy as np

from .index import ClassTrie, set_token_bits, walk

__all__ = ["DEAD", "DONE", "TokenTransitions"]

DEAD = 0
"""Shared state after a token the constraint did not allow (or an internal error): only EOS."""
DONE = 1
"""Shared state after an accepted EOS."""

_FIRST = 2  # grammars' states start here


class TokenTransitions:
    """Dense token-level transition rows for the DFA grammars of one vocabulary.

    Parameters
    ----------
    vocabulary : Vocabulary
        Every registered grammar must be compiled for it.
    max_bytes : int
        Rows kept (``4·V`` bytes each) before all are dropped and rebuilt on demand.
    eager_bytes : int
        A grammar whose rows for all states fit this is built whole on first use.
    max_states, max_grammars : int
        States over all registered grammars, or grammars, past which :attr:`full` asks the caller
        to :meth:`start_over` (registered grammars stay referenced until then).

    Notes
    -----
    Not thread-safe by itself beyond registration: callers serialise steps (an engine runs one
    step at a time).
    """

    def __init__(self, vocabulary, *, max_bytes: int = 512 << 20, eager_bytes: int = 64 << 20,
                 max_states: int = 1 << 22, max_grammars: int = 512):
        self.vocabulary = vocabulary
        self.size = vocabulary.size
        self.words = (self.size + 31) // 32
        self.max_bytes = max_bytes
        self.eager_bytes = eager_bytes
        self.max_states = max_states
        self.max_grammars = max_grammars
        self._lock = threading.Lock()
        eos_row = np.zeros((1, self.words), dtype=np.int32)
        set_token_bits(eos_row[0], np.asarray(vocabulary.eos_token_ids, dtype=np.int64))
        self.eos_key = ("eos", tuple(vocabulary.eos_token_ids), self.size)
        self._eos_table = eos_row
        self.epoch = 0
        self.rows_built = 0  # over this object's life (tests, benchmarks)
        self._reset()

    def _reset(self) -> None:
        self.tables: list[tuple[Hashable, np.ndarray]] = [(self.eos_key, self._eos_table)]
        self._grammars: list = [None]
        self._bases: dict[Hashable, int] = {}
        # Per state, with room to grow (entries past self._states unused):
        self.table_of = np.zeros(_FIRST, dtype=np.int64)  # state -> table (0: EOS only)
        self.row_of = np.zeros(_FIRST, dtype=np.int64)  # state -> row of that table
        self._slot = np.array([0, 1], dtype=np.int64)  # state -> row of self._next (-1: not built)
        self._states = _FIRST
        self._tries: dict[int, ClassTrie] = {}  # the last few grammars' tries (rows still to build)
        self.full = False
        self._drop_rows()

    def _drop_rows(self) -> None:
        cap = _FIRST
        self._next = np.zeros((cap, self.size), dtype=np.int32)  # rows 0, 1: DEAD and DONE (all DEAD)
        self._used = _FIRST
        self._slot[_FIRST:] = -1

    # -- grammars ----------------------------------------------------------------------------------

    def register(self, key: Hashable, grammar) -> int:
        """The base of ``grammar``'s states (its state ``s`` is ``base + s``), registering it once.

        Past ``max_states`` registered states :attr:`full` is set; the caller starts over with
        :meth:`start_over` between steps (never within one, so a step's numbers stay valid).
        """
        base = self._bases.get(key)
        if base is not None:
            return base
        with self._lock:
            base = self._bases.get(key)
            if base is not None:
                return base
            if grammar.vocabulary.fingerprint != self.vocabulary.fingerprint:
                raise ValueError("the grammar was compiled for another vocabulary")
            n = grammar.n_states
            base = self._states
            if base + n > len(self.table_of):  # doubling: registering many grammars stays linear
                cap = max(base + n, 2 * len(self.table_of))
                self.table_of, self.row_of, self._slot = (
                    np.concatenate([a, np.full(cap - len(a), fill, dtype=np.int64)])
                    for a, fill in ((self.table_of, 0), (self.row_of, 0), (self._slot, -1)))
            g = len(self.tables)
            self.tables.append((key, grammar.rows))
            self._grammars.append((grammar, base))
            self.table_of[base: base + n] = g
            self.row_of[base: base + n] = grammar.row_of_state
            self._states = base + n
            self._bases[key] = base
            self.full = self._states > self.max_states or g >= self.max_grammars
            if n * self.size * 4 <= self.eager_bytes:
                self._ensure(base + np.arange(n, dtype=np.int64))
                self._tries.pop(g, None)  # every row built: the trie is not needed again
            return base

    def start_over(self) -> None:
        """Forget every grammar and row; increments :attr:`epoch` (state numbers handed out before are void)."""
        with self._lock:
            self.epoch += 1
            self._reset()

    # -- stepping ----------------------------------------------------------------------------------

    def advance(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Next state of each ``(state, token)`` pair (integer arrays of one length; int32 out)."""
        slot = self._slot[states]
        if (slot < 0).any():
            self._ensure(np.unique(states))
            slot = self._slot[states]
        if tokens.min(initial=0) >= 0 and tokens.max(initial=0) < self.size:
            return self._next[slot, tokens]
        ok = (tokens >= 0) & (tokens < self.size)
        return np.where(ok, self._next[slot, np.where(ok, tokens, 0)], DEAD).astype(np.int32)

    def advance_one(self, state: int, token: int) -> int:
        """:meth:`advance` for one pair, without array overhead."""
        slot = self._slot.item(state)
        if slot < 0:
            self._ensure(np.array([state], dtype=np.int64))
            slot = self._slot.item(state)
        if 0 <= token < self.size:
            return self._next.item(slot, token)
        return DEAD

    def masks(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(table, row)`` of each state's mask: ``tables[table][1][row]``."""
        return self.table_of[states], self.row_of[states]

    def local(self, state: int) -> tuple[object, int] | None:
        """``(grammar, its own state)`` of a grammar's state; ``None`` for DEAD and DONE."""
        g = int(self.table_of[state])
        if state < _FIRST or g == 0:
            return None
        grammar, base = self._grammars[g]
        return grammar, state - base

    # -- building rows -----------------------------------------------------------------------------

    def _ensure(self, states: np.ndarray) -> None:
        """Rows for all of ``states`` (distinct): the missing ones built, after dropping every row
        when they would not fit (rows needed at once are never dropped)."""
        missing = states[self._slot[states] < 0]
        if not len(missing):
            return
        limit = max(_FIRST + len(states), self.max_bytes // (4 * self.size))
        if self._used + len(missing) > limit:
            self._drop_rows()
            missing = states[self._slot[states] < 0]
        self._build(missing, limit)

    def _build(self, states: np.ndarray, limit: int | None = None) -> None:
        """Fill the rows of ``states`` (global numbers, distinct, none built yet), within ``limit`` rows."""
        need = self._used + len(states)
        if need > self._next.shape[0]:
            cap = max(need, min(2 * self._next.shape[0], limit or need))
            grown = np.zeros((cap, self.size), dtype=np.int32)
            grown[: self._used] = self._next[: self._used]
            self._next = grown
        tables = self.table_of[states]
        for g in np.unique(tables).tolist():
            grammar, base = self._grammars[g]
            mine = states[tables == g]
            for lo in range(0, len(mine), 16):  # bounds the walk's frontier and the dense temporaries
                chunk = mine[lo: lo + 16]
                rows = self._rows(g, grammar, chunk - base, base)
                self._next[self._used: self._used + len(chunk)] = rows
                self._slot[chunk] = np.arange(self._used, self._used + len(chunk))
                self._used += len(chunk)
                self.rows_built += len(chunk)

    def _trie(self, g: int, grammar) -> ClassTrie:
        ct = self._tries.get(g)
        if ct is None:
            while len(self._tries) >= 8:  # a few MB each: keep the latest grammars'
                self._tries.pop(next(iter(self._tries)))
            n_cls = int(grammar.class_transitions.shape[1])
            ct = self._tries[g] = ClassTrie(self.vocabulary.byte_trie(), np.asarray(grammar.byte_class, dtype=np.int64),
                                            n_cls, merge=True)
        return ct

    def _rows(self, g: int, grammar, local: np.ndarray, base: int) -> np.ndarray:
        """Dense next-state rows (global numbers) of the grammar's states ``local``."""
        ct = self._trie(g, grammar)
        trans = np.ascontiguousarray(grammar.class_transitions, dtype=np.int64)
        si, node, end = walk(trans, ct, local.astype(np.int64))
        ends = np.full((len(local), ct.n_nodes + 1), -1, dtype=np.int64)  # last column: tokens with no node
        ends[si, node] = end
        nxt = ends[:, ct.token_node]  # token_node -1 picks the last column
        words = grammar.rows[grammar.row_of_state[local]]
        allowed = np.unpackbits(np.ascontiguousarray(words).view(np.uint8), axis=1, bitorder="little")[:, : self.size]
        allowed = allowed.astype(bool)
        out = np.where(allowed & (nxt >= 0), nxt + base, DEAD)
        eos = np.asarray(self.vocabulary.eos_token_ids, dtype=np.int64)
        if len(eos):
            out[:, eos] = np.where(allowed[:, eos], DONE, DEAD)
        return out.astype(np.int32)
