"""Byte-level DFA: the ByteDFA type, construction from character transitions (UTF-8 byte paths
with shared intermediate states), trimming, byte classes and twin merging.

Characters become their UTF-8 byte sequences, so a token that ends inside a multi-byte character
lands in an intermediate DFA state and the next token can finish the character.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import CompilationTooLargeError
from .charsets import complement, ranges_of, remove_surrogates, utf8_sequences
from .parse import clip

try:
    from .. import _cwalk
except ImportError:  # built without a C compiler: the numpy versions below are used
    _cwalk = None

#: Whether byte classes and twin merging use the C extension when it is built (tests compare both).
USE_C_TABLES = True

__all__ = ["MAX_DFA_STATES", "USE_C_TABLES", "Builder", "ByteDFA", "byte_classes", "byte_dfa_from_fsm",
           "reachable", "trim"]

#: Budget of automaton states. Each is indexed against the whole vocabulary, so compile time grows
#: with it; past the budget compilation stops at once with CompilationTooLargeError.
MAX_DFA_STATES = 60_000


@dataclass(frozen=True)
class ByteDFA:
    """A deterministic automaton over bytes.

    ``transitions[s, b]`` is the next state or -1 (dead). Every state can reach an accepting state.
    """

    transitions: np.ndarray  # int32 [n_states, 256]
    accepting: np.ndarray  # bool [n_states]
    initial: int
    #: :func:`byte_classes` of ``transitions`` where whoever built them had it (the index reads it)
    classes: tuple | None = field(default=None, compare=False, repr=False)

    @property
    def n_states(self) -> int:
        return int(self.transitions.shape[0])


def _live_states(fsm) -> tuple[list, set]:
    """States reachable from the initial state that can reach a final state."""
    reach = {fsm.initial}
    stack = [fsm.initial]
    rev: dict = {}
    while stack:
        s = stack.pop()
        for t in fsm.map.get(s, {}).values():
            rev.setdefault(t, set()).add(s)
            if t not in reach:
                reach.add(t)
                stack.append(t)
    live = {s for s in fsm.finals if s in reach}
    stack = list(live)
    while stack:
        s = stack.pop()
        for p in rev.get(s, ()):
            if p not in live:
                live.add(p)
                stack.append(p)
    order = [s for s in sorted(reach, key=lambda x: (x != fsm.initial, x)) if s in live]
    return order, live


class Builder:
    """Builds the byte DFA, interning the intermediate (mid-character) states.

    Non-ASCII transitions of a state are a set of (byte-range sequence, target) items; they are
    turned into a small trie whose nodes become DFA states. Identical nodes (same ranges, same
    children) are shared, so ``[80-BF] → T`` exists once per target ``T``. Tries are built once per
    *shape* (targets replaced by slots) and instantiated per state, which keeps the many
    look-alike "inside a string" states of JSON cheap.
    """

    def __init__(self, n_fsm_states: int, max_states: int):
        self.n = n_fsm_states
        self.max_states = max_states
        self.rows: list[dict[int, int]] = []  # transitions of intermediate states (byte → state)
        self.intern: dict[tuple, int] = {}
        self.templates: dict[tuple, tuple] = {}

    def _template(self, items: tuple) -> tuple:
        """``items``: sorted tuple of (sequence, slot). Returns a nested node spec."""
        tpl = self.templates.get(items)
        if tpl is not None:
            return tpl
        bounds = sorted({r[0][0] for r, _ in items} | {r[0][1] + 1 for r, _ in items})
        parts = []
        for a, nb in zip(bounds, bounds[1:]):
            b = nb - 1
            sub = [(seq[1:], slot) for seq, slot in items if seq[0][0] <= a and b <= seq[0][1]]
            if not sub:
                continue
            if len(sub[0][0]) == 0:
                child = ("slot", sub[0][1])
            else:
                child = ("node", self._template(tuple(sorted(sub))))
            if parts and parts[-1][2] == child and parts[-1][1] + 1 == a:
                parts[-1] = (parts[-1][0], b, child)
            else:
                parts.append((a, b, child))
        tpl = tuple(parts)
        self.templates[items] = tpl
        return tpl

    def _instantiate(self, tpl: tuple, targets: tuple) -> dict[int, int]:
        """Byte → state for the root of ``tpl`` with slots bound to ``targets``."""
        row: dict[int, int] = {}
        for a, b, (kind, val) in tpl:
            dest = targets[val] if kind == "slot" else self._node(val, targets)
            for byte in range(a, b + 1):
                row[byte] = dest
        return row

    def _node(self, tpl: tuple, targets: tuple) -> int:
        key = (tpl, targets)
        sid = self.intern.get(key)
        if sid is None:
            row = self._instantiate(tpl, targets)
            sid = self.n + len(self.rows)
            if sid >= self.max_states:
                raise CompilationTooLargeError(
                    f"the byte-level automaton exceeds {self.max_states} states; simplify the pattern"
                )
            self.rows.append(row)
            self.intern[key] = sid
        return sid

    def non_ascii_row(self, groups: list[tuple[tuple, int]]) -> dict[int, int]:
        """``groups``: (utf8 sequences, target) per target. Returns lead byte → state."""
        slots: dict[int, int] = {}
        items = []
        for seqs, target in groups:
            slot = slots.setdefault(target, len(slots))
            items.extend((seq, slot) for seq in seqs)
        items.sort()
        tpl = self._template(tuple(items))
        targets = tuple(sorted(slots, key=slots.get))
        return self._instantiate(tpl, targets)


def byte_dfa_from_fsm(fsm, pattern: str, max_states: int) -> ByteDFA:
    from interegular.fsm import anything_else

    order, live = _live_states(fsm)
    if not order:
        # Matches nothing at all (e.g. an empty class): a grammar nobody can satisfy.
        from ..errors import VocabularyCoverageError

        raise VocabularyCoverageError(f"the regex {clip(pattern)} matches no string at all")
    if len(order) > max_states:
        raise CompilationTooLargeError(
            f"the regex {clip(pattern)} needs {len(order)} automaton states (limit {max_states}); simplify it"
        )
    index = {s: i for i, s in enumerate(order)}
    alphabet = fsm.alphabet
    explicit = [c for c in alphabet._symbol_mapping if c is not anything_else]
    key_chars: dict = {}
    for key, chars in alphabet.by_transition.items():
        key_chars[key] = [c for c in chars if c is not anything_else]
    else_key = alphabet._symbol_mapping.get(anything_else)
    else_ranges = remove_surrogates(complement(ranges_of(explicit)))

    seq_cache: dict = {}

    def sequences(key) -> tuple[tuple, list[int]]:
        """(non-ASCII utf8 sequences, ASCII bytes) for a transition key."""
        got = seq_cache.get(key)
        if got is None:
            ranges = ranges_of(key_chars[key])
            if key == else_key:
                ranges = sorted(ranges + else_ranges)
            ascii_bytes = [cp for a, b in ranges if a <= 0x7F for cp in range(a, min(b, 0x7F) + 1)]
            seqs: list = []
            for a, b in ranges:
                if b < 0x80:
                    continue
                seqs.extend(utf8_sequences(max(a, 0x80), b))
            got = seq_cache[key] = (tuple(seqs), ascii_bytes)
        return got

    builder = Builder(len(order), max_states)
    fsm_rows: list[dict[int, int]] = []
    for s in order:
        row: dict[int, int] = {}
        groups: dict[int, list] = {}
        for key, t in fsm.map.get(s, {}).items():
            if t not in live:
                continue
            seqs, ascii_bytes = sequences(key)
            ti = index[t]
            for byte in ascii_bytes:
                row[byte] = ti
            if seqs:
                groups.setdefault(ti, []).extend(seqs)
        if groups:
            row.update(builder.non_ascii_row([(tuple(v), t) for t, v in groups.items()]))
        fsm_rows.append(row)
    rows = fsm_rows + builder.rows
    n = len(rows)
    trans = np.full((n, 256), -1, dtype=np.int32)
    for i, row in enumerate(rows):
        if row:
            trans[i, np.fromiter(row.keys(), dtype=np.int64)] = np.fromiter(row.values(), dtype=np.int32)
    accepting = np.zeros(n, dtype=bool)
    for s in fsm.finals:
        if s in index:
            accepting[index[s]] = True
    return ByteDFA(transitions=trans, accepting=accepting, initial=0)


def reachable(src: np.ndarray, dst: np.ndarray, n: int, roots) -> np.ndarray:
    """States reachable from ``roots`` along the edges ``src[i] → dst[i]`` (bool [n])."""
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    starts = np.searchsorted(src, np.arange(n + 1)).tolist()
    dst_l = dst.tolist()
    seen = np.zeros(n, dtype=bool)
    stack = list(roots)
    seen[stack] = True
    while stack:
        s = stack.pop()
        for t in dst_l[starts[s] : starts[s + 1]]:
            if not seen[t]:
                seen[t] = True
                stack.append(t)
    return seen


def trim(trans: np.ndarray, accepting: np.ndarray, pattern: str) -> ByteDFA:
    """Keep the states that can reach an accepting state; renumber with the initial state 0."""
    if _cwalk is not None and USE_C_TABLES:  # (in one call)
        got = _cwalk.trim(np.ascontiguousarray(trans, dtype=np.int32), np.ascontiguousarray(accepting, dtype=np.uint8),
                          32)
        if got is None:
            _refuse_empty(pattern)
        t, a, rows, bc, C = got
        m = len(a)
        classes = (np.frombuffer(rows, dtype=np.int64).reshape(m, C), np.frombuffer(bc, dtype=np.int64))
        return ByteDFA(transitions=np.frombuffer(t, dtype=np.int32).reshape(m, 256),
                       accepting=np.frombuffer(a, dtype=bool), initial=0, classes=classes)
    n = trans.shape[0]
    rows, byte_class = byte_classes(trans)  # the same graph with far fewer (parallel) edges
    rows = rows.astype(np.int64)
    # (the numpy steps: the reference of the C call above)
    src = np.repeat(np.arange(n), rows.shape[1])
    dst = rows.ravel()
    ok = dst >= 0
    edges = np.unique(dst[ok] * n + src[ok])  # reversed, deduplicated (a row repeats targets)
    live = reachable(edges // n, edges % n, n, np.flatnonzero(accepting).tolist())
    if not live[0]:
        _refuse_empty(pattern)
    if not live.all():
        new_id = np.full(n + 1, -1, dtype=np.int64)
        new_id[np.flatnonzero(live)] = np.arange(int(live.sum()))
        rows = new_id[np.where(rows < 0, n, rows)][live]
        accepting = accepting[live]
    rows, accepting = _merge_twins(rows, accepting.astype(bool), byte_class=byte_class, expand=False)
    transitions = rows[:, byte_class.reshape(256)].astype(np.int32)
    classes = _coarsest(rows, np.asarray(byte_class).reshape(256))
    return ByteDFA(transitions=transitions, accepting=accepting, initial=0, classes=classes)


def _refuse_empty(pattern: str):
    from ..errors import VocabularyCoverageError

    raise VocabularyCoverageError(f"the regex {clip(pattern)} matches no string at all")


def _coarsest(rows: np.ndarray, byte_class: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`byte_classes` of ``rows[:, byte_class]`` from the class table ``rows`` itself (a
    fraction of the columns): classes whose columns are equal merge; numbered by first byte."""
    cols = np.ascontiguousarray(rows.T)
    seen: dict[bytes, int] = {}
    merged = np.array([seen.setdefault(col.tobytes(), len(seen)) for col in cols], dtype=np.int64)[byte_class]
    order = list(dict.fromkeys(merged.tolist()))  # classes by first byte
    number = np.empty(int(merged.max()) + 1, dtype=np.int64)
    number[order] = np.arange(len(order))
    new_class = number[merged]
    first_byte = np.unique(new_class, return_index=True)[1]
    return np.ascontiguousarray(rows[:, byte_class[first_byte]], dtype=np.int64), new_class


def byte_classes(trans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bytes that behave alike in every state: ``(class_transitions [n, C], byte_class [256])``.

    Columns are grouped by a random 64-bit projection, then checked exactly; on a (never yet
    seen) collision the exact sort-based grouping is used instead.
    """
    n = trans.shape[0]
    if _cwalk is not None and USE_C_TABLES:
        rows, bc, C = _cwalk.byte_classes(np.ascontiguousarray(trans, dtype=np.int32))
        return np.frombuffer(rows, dtype=np.int64).reshape(n, C), np.frombuffer(bc, dtype=np.int64)
    proj = np.random.default_rng(0xC1A55).integers(1, 2**63, size=n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = ((trans.astype(np.int64) + 1).astype(np.uint64) * proj[:, None]).sum(axis=0, dtype=np.uint64)
    _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    inverse = inverse.reshape(256)
    if np.array_equal(trans[:, first[inverse]], trans):
        return np.ascontiguousarray(trans[:, first]), inverse
    cols, inverse = np.unique(trans.T, axis=0, return_inverse=True)
    return np.ascontiguousarray(cols.T), inverse.reshape(256)


def _merge_twins(trans: np.ndarray, accepting: np.ndarray, max_rounds: int = 32, byte_class=None,
                 expand: bool = True):
    """Merge states with identical rows and acceptance, repeatedly (a cheap partial minimisation);
    ``expand=False`` returns the table by byte class (``byte_class`` given) instead of by byte.

    Glushkov automata have an "entry" copy of every loop (the state after ``"`` that behaves like
    the inside of the string); merging twins folds those into the loop, so look-alike loops share
    one index walk. State 0 stays the initial state.
    """
    # Work on byte classes: merging states only coarsens the column partition, never breaks it.
    # With ``byte_class`` given, ``trans`` already is the class table.
    rows, byte_class = (trans, np.asarray(byte_class)) if byte_class is not None else byte_classes(trans)
    if _cwalk is not None and USE_C_TABLES:
        C = rows.shape[1]
        out, acc = _cwalk.merge_twins(np.ascontiguousarray(rows, dtype=np.int64), C,
                                      np.ascontiguousarray(accepting, dtype=np.uint8), max_rounds)
        rows = np.frombuffer(out, dtype=np.int64).reshape(-1, C)
        accepting = np.frombuffer(acc, dtype=np.uint8).astype(bool)
        return (rows[:, byte_class.reshape(256)] if expand else rows), accepting
    rng = np.random.default_rng(0x5EED)
    mult = rng.integers(1, 2**63, size=rows.shape[1], dtype=np.uint64) | np.uint64(1)
    for _ in range(max_rounds):
        n = rows.shape[0]
        with np.errstate(over="ignore"):
            h = (rows.astype(np.uint64) * mult).sum(axis=1, dtype=np.uint64) + accepting.astype(np.uint64)
        _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        rep = first[inverse]
        # Exact check: a hash collision must never merge different states.
        same = (rows == rows[rep]).all(axis=1) & (accepting == accepting[rep])
        rep = np.where(same, rep, np.arange(n))
        if (rep == np.arange(n)).all():
            break
        keep = rep == np.arange(n)
        new_of_kept = np.cumsum(keep) - 1
        new_id = np.append(new_of_kept[rep], -1)
        rows = new_id[np.where(rows[keep] < 0, n, rows[keep])]
        accepting = accepting[keep]
    return (rows[:, byte_class.reshape(256)] if expand else rows), accepting
