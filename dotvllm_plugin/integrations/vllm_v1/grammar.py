"""The per-request object vLLM V1's engine core drives: our matcher behind V1's grammar interface.

vLLM V1 (``vllm.v1.structured_output.backend_types.StructuredOutputGrammar``) calls, from its
scheduler thread:

* ``accept_tokens(request_id, tokens) -> bool`` after each step (several tokens with speculative
  decoding); a refusal must leave the state unchanged;
* ``validate_tokens(tokens) -> list`` (the accepted prefix, state unchanged) for draft tokens;
* ``rollback(n)`` to undo draft tokens it advanced over while filling bitmasks;
* ``fill_bitmask(bitmask, batch_index)``: one int32 row, xgrammar's packed layout (bit ``i % 32``
  of word ``i // 32`` set = token ``i`` allowed), which is our matcher's layout;
* ``is_terminated()`` and ``reset()``.

:class:`DotvllmGrammar` never raises on model behaviour. A request whose constraint failed to
compile gets a *dead* grammar: only EOS is allowed, so that request ends at once and no other is
touched (an exception in the engine core stops vLLM's engine on several V1 releases).

This module does not import vLLM; :mod:`._patches` registers the class as a virtual subclass of
vLLM's ``StructuredOutputGrammar``.
"""

from __future__ import annotations

import logging

import numpy as np

from ...matcher import GrammarMatcher

__all__ = ["DotvllmGrammar"]

logger = logging.getLogger("vllm.dotvllm_plugin.v1")


_view_of: tuple = (None, None)  # (the last bitmask tensor seen, its numpy view)


def _numpy_view(bitmask):
    """A numpy array sharing ``bitmask``'s memory where it is a CPU tensor, else ``bitmask``.

    vLLM fills every row of one long-lived tensor (from ``allocate_token_bitmask``); writing a row
    through numpy costs about 2 µs against about 20 µs through torch's indexing and ``copy_``.
    """
    global _view_of
    tensor, view = _view_of
    if tensor is bitmask:
        return view
    try:
        view = bitmask.numpy()
    except (AttributeError, TypeError, RuntimeError):  # a numpy array already, or not on the CPU
        return bitmask
    _view_of = (bitmask, view)
    return view


class DotvllmGrammar:
    """One request's constraint state (a :class:`~dotvllm_plugin.matcher.GrammarMatcher`).

    Parameters
    ----------
    matcher : GrammarMatcher or None
        ``None`` makes a dead grammar (the constraint could not be compiled): only ``eos_token_ids``
        are allowed, and the request ends.
    description : str
        For log messages.
    eos_token_ids : tuple of int
        Used by a dead grammar.
    """

    __slots__ = ("matcher", "description", "eos_token_ids", "error", "num_processed_tokens", "_dead_terminated",
                 "_warned")

    def __init__(self, matcher: GrammarMatcher | None, *, description: str = "", eos_token_ids=()):
        self.matcher = matcher
        self.description = description
        self.eos_token_ids = tuple(int(e) for e in eos_token_ids)
        self.error = ""  # why a dead grammar is dead (the compile error), for the client
        self.num_processed_tokens = 0
        self._dead_terminated = False
        self._warned = False

    @property
    def dead(self) -> bool:
        return self.matcher is None

    def accept_tokens(self, request_id: str, tokens) -> bool:
        """Advance over ``tokens`` (all or none); ``False`` leaves the state unchanged."""
        m = self.matcher
        if m is None:
            if len(tokens) >= 1 and int(tokens[0]) in self.eos_token_ids and not self._dead_terminated:
                self._dead_terminated = True
                return True
            return False
        accepted = 0
        for t in tokens:
            if not m.accept_token(int(t)):
                if accepted:
                    m.rollback(accepted)
                if not self._warned:
                    self._warned = True
                    logger.warning("dotvllm: request %s: token %s not allowed by %s after %d tokens",
                                   request_id, int(t), self.description, self.num_processed_tokens + accepted)
                return False
            accepted += 1
        self.num_processed_tokens += accepted
        return True

    def validate_tokens(self, tokens) -> list:
        """The longest prefix of ``tokens`` the constraint accepts from here (state unchanged)."""
        tokens = list(tokens)
        if self.matcher is None:
            if tokens and int(tokens[0]) in self.eos_token_ids and not self._dead_terminated:
                return tokens[:1]
            return []
        return tokens[: self.matcher.validate_tokens(tokens)]

    def rollback(self, num_tokens: int) -> None:
        if num_tokens <= 0:
            return
        if self.matcher is None:
            self._dead_terminated = False
            return
        try:
            self.matcher.rollback(num_tokens)
        except ValueError as e:  # more than the matcher's history: a vLLM contract change; never raise
            logger.error("dotvllm: %s: %s", self.description, e)
        self.num_processed_tokens = max(0, self.num_processed_tokens - num_tokens)

    def fill_bitmask(self, bitmask, batch_index: int) -> None:
        if self.matcher is not None:
            self.matcher.fill_next_token_bitmask(_numpy_view(bitmask), batch_index)
            return
        row = bitmask[batch_index]
        row.zero_() if hasattr(row, "zero_") else row.fill(0)
        for e in self.eos_token_ids:
            if e >> 5 < row.shape[0]:
                row[e >> 5] = int(np.uint32(1 << (e & 31)).view(np.int32))

    def is_terminated(self) -> bool:
        if self.matcher is None:
            return self._dead_terminated
        return self.matcher.is_terminated()

    def reset(self) -> None:
        self.num_processed_tokens = 0
        self._dead_terminated = False
        if self.matcher is not None:
            self.matcher.reset()

    def __repr__(self) -> str:
        return f"DotvllmGrammar({self.description!r}{', dead' if self.dead else ''})"
