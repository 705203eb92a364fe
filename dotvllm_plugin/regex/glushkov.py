"""Parsed regex → byte-level DFA by a Glushkov (position) automaton and subset construction.

This is the fast path of :func:`dotvllm_plugin.regex.regex_to_dfa`. interegular's own FSM algebra
builds automata by repeated products and costs ~0.3 ms per state, which dominates long JSON-schema
regexes; here every character-class occurrence becomes a *position*, ``follow`` sets are computed
in one pass over the parse tree, and each position's characters expand to UTF-8 byte paths. For
the deterministic regexes JSON schemas produce, the subset construction is one-to-one and runs
vectorised per state.
"""

from __future__ import annotations

import numpy as np

from ..errors import CompilationTooLargeError
from .charsets import case_fold_ranges, char_class_ranges, complement, merge_ranges, remove_surrogates

__all__ = ["Unhandled", "glushkov_dfa", "sre_glushkov_dfa"]

try:
    from .. import _cwalk
except ImportError:  # built without a C compiler: the numpy subset construction below is used
    _cwalk = None

#: Whether the subset construction uses the C extension when it is built (tests compare both).
USE_C_SUBSET = True


class Unhandled(Exception):
    """The parse tree has a node this builder does not know; use the slow path."""


def _tree_types():
    from interegular import patterns as P

    return P


_CASE_INSENSITIVE = _tree_types().REFlags.CASE_INSENSITIVE


def glushkov_dfa(tree, *, max_states: int, char_ranges, utf8_sequences, builder_cls):
    """Build ``(transitions int32[n,256], accepting bool[n])`` with state 0 initial, untrimmed."""
    P = _tree_types()
    g = _Positions(max_states // 2)
    first, last, nullable = g.visit(tree, P.REFlags(0), P)
    return g.to_dfa(first, last, nullable, max_states, char_ranges, utf8_sequences, builder_cls)


def sre_glushkov_dfa(tree, *, max_states: int, char_ranges, utf8_sequences, builder_cls):
    """Like :func:`glushkov_dfa`, from Python's own parse tree (``re._parser.parse``).

    Python's parser is ~10× faster than interegular's on the long regexes JSON schemas produce.
    Only plain constructs are handled here (literals, classes of literals and ranges, ``.``,
    groups, alternation, repetition, the ``s`` flag); anything else (``\d``-style categories,
    anchors, other flags) raises :class:`Unhandled` and the caller uses interegular's parse.
    """
    g = _Positions(max_states // 2)
    first, last, nullable = g.visit_sre(tree, _sre_flags(tree.state.flags))
    return g.to_dfa(first, last, nullable, max_states, char_ranges, utf8_sequences, builder_cls)


def _sre_constants():
    try:
        from re import _constants as c  # Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_constants as c
    return c


_SRE = _sre_constants()


def _sre_flags(flags: int) -> int:
    """The flags that matter here (DOTALL); any other meaningful flag is not handled."""
    if flags & ~(_SRE.SRE_FLAG_UNICODE | _SRE.SRE_FLAG_DOTALL):
        raise Unhandled("flags")
    return flags & _SRE.SRE_FLAG_DOTALL


class _Positions:
    def __init__(self, max_positions: int):
        self.ranges: list[tuple] = []  # per position: code-point ranges
        self.follow: list[set] = []
        self.max_positions = max_positions
        self._class_cache: dict = {}

    def _new(self, ranges: tuple) -> int:
        if len(self.ranges) >= self.max_positions:
            raise CompilationTooLargeError(
                f"the regex expands to more than {self.max_positions} character positions; "
                "reduce repetition bounds"
            )
        self.ranges.append(ranges)
        self.follow.append(set())
        return len(self.ranges) - 1

    def visit(self, node, flags, P):
        t = type(node)
        if t is P._CharGroup:
            return self._char(node.chars, node.negated, flags)
        if t is P.Pattern:
            flags = (flags | node.added_flags) & ~node.removed_flags
            first, last, nullable = set(), set(), False
            for opt in node.options:
                f, l, n = self.visit(opt, flags, P)
                first |= f
                last |= l
                nullable = nullable or n
            return first, last, nullable
        if t is P._Concatenation:
            return self._concat([lambda p=p: self.visit(p, flags, P) for p in node.parts])
        if t is P._Repeated:
            return self._repeat(node.base, node.min, node.max, flags, P)
        if node is P._EMPTY:
            return set(), set(), True
        if node is P._DOT:
            chars, negated = (frozenset(), True) if flags & P.REFlags.SINGLE_LINE else (frozenset("\n"), True)
            return self._char(chars, negated, P.REFlags(0))
        raise Unhandled(type(node).__name__)

    def visit_sre(self, items, flags: int):
        """A parsed sequence (``SubPattern`` or list of ``(op, arg)``) → ``(first, last, nullable)``."""
        items = list(items)
        if len(items) == 1:
            return self._sre_item(items[0], flags)
        return self._concat([lambda it=it: self._sre_item(it, flags) for it in items])

    def _sre_item(self, item, flags: int):
        op, av = item
        if op is _SRE.LITERAL:
            return self._ranges(((av, av),), False)
        if op is _SRE.NOT_LITERAL:
            return self._ranges(((av, av),), True)
        if op is _SRE.ANY:
            return self._ranges(() if flags & _SRE.SRE_FLAG_DOTALL else ((10, 10),), True)
        if op is _SRE.IN:
            negated = False
            ranges = []
            for kind, arg in av:
                if kind is _SRE.NEGATE:
                    negated = True
                elif kind is _SRE.LITERAL:
                    ranges.append((arg, arg))
                elif kind is _SRE.RANGE:
                    ranges.append(arg)
                else:
                    raise Unhandled(str(kind))
            return self._ranges(tuple(ranges), negated)
        if op is _SRE.BRANCH:
            first, last, nullable = set(), set(), False
            for alt in av[1]:
                f, l, n = self.visit_sre(alt, flags)
                first |= f
                last |= l
                nullable = nullable or n
            return first, last, nullable
        if op is _SRE.SUBPATTERN:
            _group, add, remove, sub = av
            return self.visit_sre(sub, _sre_flags((flags | add) & ~remove))
        if op is _SRE.MAX_REPEAT or op is _SRE.MIN_REPEAT:
            lo, hi, sub = av
            return self._repeat_of(lambda: self.visit_sre(sub, flags), lo, None if hi is _SRE.MAXREPEAT else hi)
        raise Unhandled(str(op))

    def _ranges(self, ranges: tuple, negated: bool):
        key = ("ranges", ranges, negated)
        got = self._class_cache.get(key)
        if got is None:
            merged = merge_ranges(ranges)
            if negated:
                merged = complement(merged)
            got = self._class_cache[key] = tuple(remove_surrogates(merged))
        if not got:
            return set(), set(), False  # matches nothing
        p = self._new(got)
        return {p}, {p}, False

    def _char(self, chars, negated, flags):
        if flags & _CASE_INSENSITIVE:
            chars = case_fold_ranges(chars)
        key = (chars, negated)
        ranges = self._class_cache.get(key)
        if ranges is None:
            ranges = self._class_cache[key] = char_class_ranges(chars, negated)
        if not ranges:
            return set(), set(), False  # matches nothing
        p = self._new(ranges)
        return {p}, {p}, False

    def _concat(self, parts):
        first, last, nullable = set(), set(), True
        for make in parts:
            f, l, n = make()
            for p in last:
                self.follow[p] |= f
            if nullable:
                first |= f
            last = (last | l) if n else set(l)
            nullable = nullable and n
        return first, last, nullable

    def _repeat(self, base, lo, hi, flags, P):
        return self._repeat_of(lambda: self.visit(base, flags, P), lo, hi)

    def _repeat_of(self, make, lo, hi):
        """``make()`` repeated ``lo`` to ``hi`` (None: unbounded) times; each call adds fresh positions."""
        if hi is not None and hi < lo:
            raise Unhandled("bad repeat")
        parts = [make] * lo
        if hi is None:

            def star():
                f, l, n = make()
                for p in l:
                    self.follow[p] |= f
                return f, l, True

            parts.append(star)
        elif hi > lo:

            def optional_chain():
                copies = [make() for _ in range(hi - lo)]
                f, l, _ = copies[-1]
                acc_f, acc_l = set(f), set(l)
                for f2, l2, n2 in reversed(copies[:-1]):
                    for p in l2:
                        self.follow[p] |= acc_f
                    acc_f = set(f2) | (acc_f if n2 else set())
                    acc_l = set(l2) | acc_l
                return acc_f, acc_l, True

            parts.append(optional_chain)
        return self._concat(parts)

    # -- byte level -------------------------------------------------------------------------------

    def to_dfa(self, first, last, nullable, max_states, char_ranges, utf8_sequences, builder_cls):
        n_pos = len(self.ranges)
        # NFA states: 0 = initial, 1 + p = after position p, then UTF-8 intermediate nodes.
        builder = builder_cls(1 + n_pos, max_states * 4)
        entry: list[np.ndarray] = []
        seq_cache: dict = {}
        for p, ranges in enumerate(self.ranges):
            row = np.full(256, -1, dtype=np.int64)
            for a, b in ranges:
                if a <= 0x7F:
                    row[a : min(b, 0x7F) + 1] = 1 + p
            seqs = seq_cache.get(ranges)
            if seqs is None:
                seqs = []
                for a, b in ranges:
                    if b >= 0x80:
                        seqs.extend(utf8_sequences(max(a, 0x80), b))
                seqs = seq_cache[ranges] = tuple(seqs)
            if seqs:
                for byte, dest in builder.non_ascii_row([(seqs, 1 + p)]).items():
                    row[byte] = dest
            entry.append(row)
        n_nfa = 1 + n_pos + len(builder.rows)
        det_rows: list = [None] * n_nfa
        # Intermediate (mid-character) states are deterministic.
        for i, r in enumerate(builder.rows):
            row = np.full(256, -1, dtype=np.int64)
            if r:
                row[np.fromiter(r.keys(), dtype=np.int64)] = np.fromiter(r.values(), dtype=np.int64)
            det_rows[1 + n_pos + i] = row
        follows = [first] + self.follow
        accepting_nfa = np.zeros(n_nfa, dtype=bool)
        accepting_nfa[[1 + p for p in last]] = True
        accepting_nfa[0] = nullable
        if _cwalk is not None and USE_C_SUBSET:
            n_det = len(builder.rows)
            fol_lists = [sorted(f) for f in follows]
            fol_start = np.zeros(len(fol_lists) + 1, dtype=np.int64)
            fol_start[1:] = np.cumsum([len(f) for f in fol_lists])
            res = _cwalk.subset(
                np.stack(entry).astype(np.int64) if entry else np.zeros((0, 256), dtype=np.int64),
                np.stack(det_rows[1 + n_pos :]).astype(np.int64) if n_det else np.zeros((0, 256), dtype=np.int64),
                fol_start,
                np.fromiter((q for f in fol_lists for q in f), dtype=np.int64, count=int(fol_start[-1])),
                accepting_nfa.astype(np.uint8),
                max_states,
            )
            if res is None:
                raise CompilationTooLargeError(f"the automaton exceeds {max_states} states; simplify the pattern")
            trans = np.frombuffer(res[0], dtype=np.int32).reshape(-1, 256).copy()
            return trans, np.frombuffer(res[1], dtype=np.uint8).astype(bool)

        def nfa_row(s: int):
            """(deterministic row or None, list of rows to union)."""
            r = det_rows[s]
            if r is not None:
                return r, None
            fol = follows[s] if s <= n_pos else ()
            if not fol:
                r = np.full(256, -1, dtype=np.int64)
            elif len(fol) == 1:
                r = entry[next(iter(fol))]
            else:
                stack = np.stack([entry[q] for q in sorted(fol)])
                if ((stack >= 0).sum(axis=0) <= 1).all():
                    r = stack.max(axis=0)
                else:
                    return None, stack
            det_rows[s] = r
            return r, None

        single = np.full(n_nfa, -1, dtype=np.int64)  # NFA state → DFA id of {state}
        sets: dict[frozenset, int] = {}
        members: list = [(0,)]
        single[0] = 0
        trans_rows: list[np.ndarray] = []
        i = 0
        while i < len(members):
            mem = members[i]
            i += 1
            if len(mem) == 1:
                r, stack = nfa_row(mem[0])
                if r is not None:
                    valid = r >= 0
                    tgt = r[valid]
                    if len(tgt):
                        unseen = tgt[single[tgt] < 0]
                        if len(unseen):
                            for t in sorted(set(unseen.tolist())):
                                single[t] = len(members)
                                members.append((t,))
                    out = np.full(256, -1, dtype=np.int64)
                    out[valid] = single[tgt]
                    trans_rows.append(out)
                    if len(members) > max_states:
                        raise CompilationTooLargeError(f"the automaton exceeds {max_states} states; simplify the pattern")
                    continue
                rows = list(stack)
            else:
                rows = []
                for s in mem:
                    r, stack = nfa_row(s)
                    rows.extend([r] if r is not None else list(stack))
            out = np.full(256, -1, dtype=np.int64)
            mat = np.stack(rows)
            live = np.flatnonzero((mat >= 0).any(axis=0))
            # Bytes with the same column of targets share one successor: group them first.
            cols, inv = _group_columns(mat[:, live])
            col_ids = np.empty(len(cols), dtype=np.int64)
            for ci, col in enumerate(cols.tolist()):
                tset = frozenset(t for t in col if t >= 0)
                if len(tset) == 1:
                    (t,) = tset
                    if single[t] < 0:
                        single[t] = len(members)
                        members.append((t,))
                    col_ids[ci] = single[t]
                else:
                    d = sets.get(tset)
                    if d is None:
                        d = sets[tset] = len(members)
                        members.append(tuple(sorted(tset)))
                    col_ids[ci] = d
            out[live] = col_ids[inv.reshape(-1)]
            trans_rows.append(out)
            if len(members) > max_states:
                raise CompilationTooLargeError(f"the automaton exceeds {max_states} states; simplify the pattern")
        trans = np.stack(trans_rows).astype(np.int32)
        accepting = np.array([bool(accepting_nfa[list(m)].any()) for m in members])
        return trans, accepting


_PROJ = np.random.default_rng(0x61057).integers(1, 2**63, size=4096, dtype=np.uint64)


def _group_columns(mat: np.ndarray):
    """Distinct columns of ``mat`` (as rows) and each column's group: hashed, checked exactly."""
    m = mat.shape[0]
    if m <= len(_PROJ):
        with np.errstate(over="ignore"):
            h = ((mat + 2).astype(np.uint64) * _PROJ[:m, None]).sum(axis=0, dtype=np.uint64)
        _, first, inv = np.unique(h, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        if np.array_equal(mat[:, first[inv]], mat):
            return mat[:, first].T, inv
    cols, inv = np.unique(mat.T, axis=0, return_inverse=True)
    return cols, inv.reshape(-1)
