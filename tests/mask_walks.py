"""Two matchers of one grammar stepped together, their masks compared at every step: an
optimised path of the engine against its reference."""

from __future__ import annotations

import numpy as np


def _state(m):
    return getattr(m, "_configs", None) or m._state


def walk_together(vocab, fast, ref, use, rng, steps: int, *, prefix=(), weight=None, label=None) -> None:
    """``use(on)`` switches the engine to the optimised path (True) or the reference (False) before
    ``fast`` and ``ref`` fill their masks, which must be equal at every step. The next token is
    ``prefix``'s while it lasts (the walk stops where it is not allowed), then a random allowed one
    (``weight``: per-token weights); both matchers must accept it."""
    words = (vocab.size + 31) // 32
    eos = list(vocab.eos_token_ids)
    for step in range(steps):
        rows = []
        for on, m in ((True, fast), (False, ref)):
            use(on)
            bm = np.zeros((1, words), dtype=np.int32)
            m.fill_next_token_bitmask(bm)
            rows.append(bm[0])
        assert np.array_equal(*rows), (label, step)
        allowed = np.flatnonzero(np.unpackbits(rows[0].view(np.uint8), bitorder="little")[: vocab.size])
        allowed = allowed[~np.isin(allowed, eos)]
        if not len(allowed):
            return
        if step < len(prefix):
            t = prefix[step]
            if t not in allowed:
                return
        elif weight is None:
            t = int(rng.choice(allowed))
        else:
            w = weight[allowed]
            t = int(rng.choice(allowed, p=w / w.sum()))
        # (each matcher commits on its own path: the optimised one reads the row it just filled)
        refused = np.flatnonzero(~np.isin(np.arange(vocab.size), allowed) & ~np.isin(np.arange(vocab.size), eos))
        if len(refused):  # a token its mask refuses: refused, the state unchanged
            bad = int(rng.choice(refused))
            use(True)
            before = _state(fast)
            assert not fast.accept_token(np.int64(bad)) and _state(fast) == before, (label, step, bad)
        use(True)
        ok = fast.accept_token(t)
        use(False)
        assert ok and ref.accept_token(t), (label, step, t)
