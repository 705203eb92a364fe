"""GrammarMatcher: the cheap per-request state over a compiled constraint.

Two engines behind one interface: a regular constraint (:class:`~dotvllm_plugin.compiler.CompiledGrammar`)
is one DFA state with precomputed mask rows; a context-free one
(:class:`~dotvllm_plugin.pushdown.PushdownGrammar`) is a lexer state plus an immutable parser stack.
``GrammarMatcher(compiled)`` picks the right one. Neither raises on model behaviour: a token the
constraint does not allow makes ``accept_token`` return ``False`` and leaves the state unchanged.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .compiler import CompiledGrammar
from .index import set_token_bits
from . import pushdown as _pushdown
from .pushdown import _FORK, PushdownGrammar, _cwalk

__all__ = ["MAX_ROLLBACK", "GrammarMatcher", "PushdownMatcher"]

#: Tokens of history a matcher keeps for :meth:`GrammarMatcher.rollback` (speculative decoding
#: rolls back at most the number of draft tokens).
MAX_ROLLBACK = 256


def _eos_row(words: int, eos) -> np.ndarray:
    row = np.zeros(words, dtype=np.int32)
    set_token_bits(row, np.array(sorted(eos), dtype=np.int64))
    return row


def _fill(bitmask, index: int, row: np.ndarray) -> None:
    target = bitmask[index]
    if hasattr(target, "copy_"):  # torch
        import torch

        target.zero_()
        # Rows of a deserialised grammar are read-only views; torch wants writable memory.
        target[: len(row)].copy_(torch.from_numpy(row if row.flags.writeable else row.copy()))
    else:
        target[: len(row)] = row
        target[len(row) :] = 0


class GrammarMatcher:
    """Tracks one generation against a compiled constraint (regular constraints: one DFA state).

    ``GrammarMatcher(compiled)`` returns a :class:`PushdownMatcher` for a context-free constraint.
    """

    __slots__ = ("compiled", "_state", "_terminated", "_eos", "_trans", "_n_cls", "_cls_table", "_rows", "_ros",
                 "_tb", "_history")

    def __new__(cls, compiled=None, **kwargs):
        if cls is GrammarMatcher and isinstance(compiled, PushdownGrammar):
            return super().__new__(PushdownMatcher)
        return super().__new__(cls)

    def __init__(self, compiled: CompiledGrammar, *, max_rollback_tokens: int = MAX_ROLLBACK):
        # (For a PushdownGrammar, __new__ returned a PushdownMatcher, whose own __init__ runs.)
        if not isinstance(compiled, CompiledGrammar):
            raise TypeError(f"GrammarMatcher needs a compiled grammar, got {type(compiled).__name__}")
        self.compiled = compiled
        self._trans, self._n_cls, self._cls_table = compiled._walker()
        self._rows = compiled.rows
        self._ros = compiled.row_of_state
        self._tb = compiled.vocabulary.token_bytes
        self._eos = frozenset(compiled.vocabulary.eos_token_ids)
        self._state = compiled.initial
        self._terminated = False
        self._history = deque(maxlen=max_rollback_tokens)

    @property
    def state(self) -> int:
        """The current DFA state (for debugging and tests)."""
        return self._state

    def _allowed(self, state: int, token_id: int) -> bool:
        row = self._rows[self._ros[state]]
        return bool((int(row[token_id >> 5]) >> (token_id & 31)) & 1)

    def _walk(self, state: int, data: bytes) -> int:
        trans, n = self._trans, self._n_cls
        for c in data.translate(self._cls_table):
            state = trans[state * n + c]
            if state < 0:
                return -1
        return state

    def accept_token(self, token_id: int) -> bool:
        """Advance by ``token_id`` if allowed; return whether it was."""
        # The per-token path: kept inline (each method call costs about a tenth of a microsecond).
        if self._terminated:
            return False
        token_id = int(token_id)
        if token_id < 0 or token_id >= len(self._tb):
            return False
        s = self._state
        row = self._rows[self._ros[s]]
        if not (int(row[token_id >> 5]) >> (token_id & 31)) & 1:
            return False
        self._history.append(s)
        if token_id in self._eos:
            self._terminated = True
            return True
        trans, n = self._trans, self._n_cls
        for c in self._tb[token_id].translate(self._cls_table):
            s = trans[s * n + c]
        self._state = s
        return True

    def accept_token_memo(self, token_id: int, memo: dict) -> bool:
        """:meth:`accept_token` with ``memo``, a dict ``state * vocabulary size + token → next
        state`` that the caller keeps per compiled grammar (shared by its matchers): a repeated
        step is one lookup instead of a walk over the token's bytes."""
        if self._terminated:
            return False
        s = self._state
        n = len(self._tb)
        nxt = memo.get(s * n + token_id) if 0 <= token_id < n else None
        if nxt is not None:  # only allowed, non-EOS steps are remembered
            self._history.append(s)
            self._state = nxt
            return True
        if not self.accept_token(token_id):
            return False
        if not self._terminated and len(memo) < 1 << 20:
            memo[s * n + token_id] = self._state
        return True

    def accept_string(self, text: str | bytes) -> bool:
        """Advance by raw text (bytes), ignoring token boundaries; for tests and forced prefixes."""
        if self._terminated:
            return False
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        s = self._walk(self._state, data)
        if s < 0:
            return False
        self._history.append(self._state)
        self._state = s
        return True

    def validate_tokens(self, token_ids) -> int:
        """How many of ``token_ids`` (a prefix) would be accepted in turn; the state is unchanged."""
        state, n = self._state, 0
        if self._terminated:
            return 0
        for t in token_ids:
            t = int(t)
            if t < 0 or t >= len(self._tb) or not self._allowed(state, t):
                break
            n += 1
            if t in self._eos:
                break
            state = self._walk(state, self._tb[t])
        return n

    def rollback(self, n: int) -> None:
        """Undo the last ``n`` accepted tokens (at most the history kept, see :data:`MAX_ROLLBACK`)."""
        if n < 0 or n > len(self._history):
            raise ValueError(f"cannot roll back {n} tokens: {len(self._history)} are kept")
        for _ in range(n):
            self._state = self._history.pop()
            self._terminated = False

    def fill_next_token_bitmask(self, bitmask, index: int = 0) -> None:
        """Write the allowed-token row into ``bitmask[index]`` (int32, numpy array or torch CPU tensor).

        ``bitmask`` is ``[batch, ceil(V/32)]``; bit ``i % 32`` of word ``i // 32`` set = token ``i``
        allowed. Words beyond this vocabulary's width are zeroed.
        """
        row = self._current_row()
        target = bitmask[index]
        if hasattr(target, "copy_"):
            _fill(bitmask, index, row)
        else:
            target[: len(row)] = row
            if len(target) > len(row):
                target[len(row) :] = 0

    def _current_row(self) -> np.ndarray:
        if self._terminated:
            return _eos_row(self._rows.shape[1], self._eos)
        return self._rows[self._ros[self._state]]

    def allowed_token_ids(self) -> np.ndarray:
        """Sorted ids of the tokens allowed next (EOS included where the constraint is complete)."""
        bits = np.unpackbits(self._current_row().view(np.uint8), bitorder="little")
        return np.flatnonzero(bits[: len(self._tb)])

    def is_completed(self) -> bool:
        """Whether the output so far is a complete match (EOS is allowed now)."""
        return self._terminated or bool(self.compiled.accepting[self._state])

    def is_terminated(self) -> bool:
        """Whether EOS has been accepted."""
        return self._terminated

    def reset(self) -> None:
        self._state = self.compiled.initial
        self._terminated = False
        self._history.clear()

    def copy(self) -> GrammarMatcher:
        m = object.__new__(type(self))
        for name in GrammarMatcher.__slots__:
            setattr(m, name, getattr(self, name))
        m._history = deque(self._history, maxlen=self._history.maxlen)
        return m

    def __repr__(self) -> str:
        return f"GrammarMatcher(state={self._state}, completed={self.is_completed()}, terminated={self._terminated})"


class PushdownMatcher(GrammarMatcher):
    """Per-request state over a :class:`PushdownGrammar`; never raises on model behaviour.

    The state is a tuple of configurations ``(lexer state, parser stack)``: one for an LALR(1)
    grammar, possibly several where a grammar is not (generalised LR). ``accept_token`` returns
    ``False`` for a token the grammar does not allow and leaves the state unchanged; ``copy()``
    shares everything (configurations and stacks are immutable).
    """

    __slots__ = ("_configs", "_intern", "_row_for", "_row", "_hits", "_commit")

    def __init__(self, compiled: PushdownGrammar, *, max_rollback_tokens: int = MAX_ROLLBACK):  # noqa: D107
        if not isinstance(compiled, PushdownGrammar):
            raise TypeError(f"PushdownMatcher needs a PushdownGrammar, got {type(compiled).__name__}")
        self.compiled = compiled
        self._configs = (compiled.initial_state(),)
        self._intern: dict = {}
        self._terminated = False
        self._history: deque = deque(maxlen=max_rollback_tokens)
        self._eos = frozenset(compiled.vocabulary.eos_token_ids)
        self._tb = compiled.vocabulary.token_bytes
        # the last mask row and the configurations it was computed for (``accept_token`` reads the
        # token's bit there instead of re-checking what the mask already decided)
        self._row_for = self._row = None
        # the C reads of a cached mask and of a commit (:meth:`PushdownGrammar.matcher_paths`)
        self._hits, self._commit = compiled.matcher_paths()

    def _can_end(self, configs) -> bool:
        return any(self.compiled.can_end(q, st) for q, st in configs)

    def accept_token(self, token_id: int) -> bool:
        configs = self._configs
        if self._row_for is configs and self._commit is not None and not self._terminated and _pushdown.USE_C_PARSER:
            # (one C call where the row computed for these configurations decides: the bit, then the
            # step of one configuration; NotImplemented wherever the path below decides)
            got = _cwalk.lr_commit(*self._commit, self._row, token_id, self._tb, self._eos, configs)
            if got is not NotImplemented:
                if got is False:
                    return False
                self._history.append(configs)
                self._configs = got
                return True
        if self._terminated:
            return False
        token_id = int(token_id)
        if token_id in self._eos:
            if not self._can_end(self._configs):
                return False
            self._history.append(self._configs)
            self._terminated = True
            return True
        if token_id < 0 or token_id >= len(self._tb):
            return False
        data = self._tb[token_id]
        if not data:
            return False
        trusted = self._row_for is configs  # the mask of these configurations was computed: it decides
        if trusted:
            if not (int(self._row[token_id >> 5]) >> (token_id & 31)) & 1:
                return False
            if len(configs) == 1:  # (step_all's path for one configuration, without its frames)
                got = self.compiled.step_trusted(*configs[0], data)
                if got is not _FORK:
                    if got is None:
                        return False
                    self._history.append(configs)
                    self._configs = (got,)
                    return True
        return self._advance(data, trusted=trusted)

    def _advance(self, data: bytes, trusted: bool = False) -> bool:
        got = self.compiled.step_all(self._configs, data, self._intern, trusted=trusted)
        if not got:
            return False
        self._history.append(self._configs)
        self._configs = got
        return True

    def accept_string(self, text: str | bytes) -> bool:
        if self._terminated:
            return False
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return self._advance(data)

    def validate_tokens(self, token_ids) -> int:
        """How many of ``token_ids`` (a prefix) would be accepted in turn; the state is unchanged."""
        if self._terminated:
            return 0
        configs, n = self._configs, 0
        for t in token_ids:
            t = int(t)
            if t in self._eos:
                if self._can_end(configs):
                    n += 1
                break
            data = self._tb[t] if 0 <= t < len(self._tb) else None
            configs = self.compiled.step_all(configs, data, self._intern) if data else ()
            if not configs:
                break
            n += 1
        return n

    def rollback(self, n: int) -> None:
        """Undo the last ``n`` accepted tokens (at most the history kept)."""
        if n < 0 or n > len(self._history):
            raise ValueError(f"cannot roll back {n} tokens: {len(self._history)} are kept")
        for _ in range(n):
            self._configs = self._history.pop()
            self._terminated = False

    def fill_next_token_bitmask(self, bitmask, index: int = 0) -> None:
        configs = self._configs
        hits = self._hits
        if hits is not None and not self._terminated and isinstance(bitmask, np.ndarray) and _pushdown.USE_C_PARSER:
            # (a cached row copied in C, as PushdownGrammar.cached_mask_into, else the row computed
            # now; a torch tensor, which C cannot write, goes the general way at once instead of
            # after a failed copy and a second cache read)
            if len(configs) == 1:
                q, stack = configs[0]
                if stack[2] < hits[1]:
                    row = _cwalk.mask_hit(hits[0], q, stack, bitmask, index)
                    if row is None:  # (computed now: the cache was just read)
                        row = self.compiled.mask_missed(q, stack)
                        if not _cwalk.copy_row(row, bitmask, index):
                            row = None
                    if row is not None:
                        self._row_for, self._row = configs, row
                        return
            if _cwalk.copy_row(self._current_row(), bitmask, index):
                return
        GrammarMatcher.fill_next_token_bitmask(self, bitmask, index)

    def _current_row(self) -> np.ndarray:
        if self._terminated:
            return _eos_row(self.compiled.words, self._eos)
        configs = self._configs
        row = self.compiled.mask(*configs[0])
        if len(configs) > 1:
            row = row.copy()
            for q, st in configs[1:]:
                row |= self.compiled.mask(q, st)
        self._row_for, self._row = configs, row
        return row

    def is_completed(self) -> bool:
        return self._terminated or self._can_end(self._configs)

    @property
    def stack_depth(self) -> int:
        """Depth of the deepest parser stack followed."""
        return max(st[2] for _, st in self._configs)

    def reset(self) -> None:
        self._configs = (self.compiled.initial_state(),)
        self._intern = {}
        self._terminated = False
        self._history.clear()
        self._row_for = self._row = None

    def copy(self) -> PushdownMatcher:
        """A matcher in the same state (the mask row it last computed is not shared: a copy checks
        the tokens it is given from scratch until it computes a mask itself)."""
        m = object.__new__(PushdownMatcher)
        m.compiled, m._configs, m._intern, m._terminated = self.compiled, self._configs, self._intern, self._terminated
        m._history = deque(self._history, maxlen=self._history.maxlen)
        m._eos, m._tb = self._eos, self._tb
        m._row_for = m._row = None
        m._hits, m._commit = self._hits, self._commit
        return m

    def __repr__(self) -> str:
        return (f"PushdownMatcher(configurations={len(self._configs)}, depth={self.stack_depth}, "
                f"terminated={self._terminated})")
