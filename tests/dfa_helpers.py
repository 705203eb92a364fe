"""Helpers for tests that compare byte DFAs (``dotvllm_plugin.regex.ByteDFA``)."""

from __future__ import annotations

import numpy as np


def equivalent(d1, d2) -> bool:
    """Exact language equivalence of two trimmed byte DFAs (product walk)."""
    seen = {(d1.initial, d2.initial)}
    stack = [(d1.initial, d2.initial)]
    while stack:
        a, b = stack.pop()
        if bool(d1.accepting[a]) != bool(d2.accepting[b]):
            return False
        ta, tb = d1.transitions[a], d2.transitions[b]
        if not np.array_equal(ta >= 0, tb >= 0):
            return False
        for byte in np.flatnonzero(ta >= 0).tolist():
            pair = (int(ta[byte]), int(tb[byte]))
            if pair not in seen:
                seen.add(pair)
                stack.append(pair)
    return True


def accepts(dfa, data: bytes) -> bool:
    """Whether a byte DFA accepts ``data`` whole."""
    q = dfa.initial
    for b in data:
        q = int(dfa.transitions[q, b])
        if q < 0:
            return False
    return bool(dfa.accepting[q])
