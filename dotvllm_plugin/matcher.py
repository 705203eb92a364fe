"""GrammarMatcher: the cheap per-request state over a shared CompiledGrammar."""

from __future__ import annotations

import numpy as np

from .compiler import CompiledGrammar

__all__ = ["GrammarMatcher"]


class GrammarMatcher:
    """Tracks one generation against a :class:`CompiledGrammar`.

    Never raises on model behaviour: :meth:`accept_token` returns ``False`` for a token the
    constraint does not allow and leaves the state unchanged.
    """

    __slots__ = ("compiled", "_state", "_terminated", "_eos", "_trans", "_n_cls", "_cls_table", "_rows", "_ros", "_tb")

    def __init__(self, compiled: CompiledGrammar):
        if not isinstance(compiled, CompiledGrammar):
            raise TypeError(f"GrammarMatcher needs a CompiledGrammar, got {type(compiled).__name__}")
        self.compiled = compiled
        self._trans, self._n_cls, self._cls_table = compiled._walker()
        self._rows = compiled.rows
        self._ros = compiled.row_of_state
        self._tb = compiled.vocabulary.token_bytes
        self._eos = frozenset(compiled.vocabulary.eos_token_ids)
        self._state = compiled.initial
        self._terminated = False

    @property
    def state(self) -> int:
        """The current DFA state (for debugging and tests)."""
        return self._state

    def accept_token(self, token_id: int) -> bool:
        """Advance by ``token_id`` if allowed; return whether it was."""
        if self._terminated:
            return False
        token_id = int(token_id)
        if token_id < 0 or token_id >= len(self._tb):
            return False
        row = self._rows[self._ros[self._state]]
        if not (int(row[token_id >> 5]) >> (token_id & 31)) & 1:
            return False
        if token_id in self._eos:
            self._terminated = True
            return True
        s = self._state
        trans, n = self._trans, self._n_cls
        for c in self._tb[token_id].translate(self._cls_table):
            s = trans[s * n + c]
        self._state = s
        return True

    def accept_string(self, text: str | bytes) -> bool:
        """Advance by raw text (bytes), ignoring token boundaries; for tests and forced prefixes."""
        if self._terminated:
            return False
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        s = self._state
        trans, n = self._trans, self._n_cls
        for c in data.translate(self._cls_table):
            s = trans[s * n + c]
            if s < 0:
                return False
        self._state = s
        return True

    def fill_next_token_bitmask(self, bitmask, index: int = 0) -> None:
        """Write the allowed-token row into ``bitmask[index]`` (int32, numpy array or torch CPU tensor).

        ``bitmask`` is ``[batch, ceil(V/32)]``; bit ``i % 32`` of word ``i // 32`` set = token ``i``
        allowed. Words beyond this vocabulary's width are zeroed.
        """
        row = self._current_row()
        target = bitmask[index]
        if hasattr(target, "copy_"):  # torch
            import torch

            target.zero_()
            # Rows of a deserialised grammar are read-only views; torch wants writable memory.
            target[: len(row)].copy_(torch.from_numpy(row if row.flags.writeable else row.copy()))
        else:
            target[: len(row)] = row
            target[len(row) :] = 0

    def _current_row(self) -> np.ndarray:
        if self._terminated:
            row = np.zeros(self._rows.shape[1], dtype=np.int32)
            for e in self._eos:
                row[e >> 5] |= np.int32(np.uint32(1 << (e & 31)).view(np.int32))
            return row
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

    def copy(self) -> GrammarMatcher:
        m = GrammarMatcher.__new__(GrammarMatcher)
        for name in GrammarMatcher.__slots__:
            setattr(m, name, getattr(self, name))
        return m

    def __repr__(self) -> str:
        return f"GrammarMatcher(state={self._state}, completed={self.is_completed()}, terminated={self._terminated})"
