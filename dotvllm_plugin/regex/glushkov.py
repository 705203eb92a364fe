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
from ..pinning import Pinning
from .charsets import (
    MAX_CP,
    case_fold_ranges,
    case_sensitive_chars,
    category_ranges,
    char_class_ranges,
    complement,
    intersect_ranges,
    matched_ranges,
    merge_ranges,
    remove_surrogates,
)

__all__ = ["Refused", "Unhandled", "atom_ranges", "glushkov_dfa", "sre_glushkov_dfa"]

try:
    from .. import _cwalk
except ImportError:  # built without a C compiler: the numpy subset construction below is used
    _cwalk = None

#: Whether the subset construction uses the C extension when it is built (tests compare both).
USE_C_SUBSET = True
#: Whether the position pass (and the NFA's follow lists) run in C when the extension is built; the
#: :class:`_Positions` pass is the reference (tests compare both).
USE_C_GLUSHKOV = True
#: Budget of steps of the C subset construction (about a second each billion): sets of thousands of
#: positions (``(?:a?){0,3000}b``) would otherwise take minutes.
MAX_SUBSET_WORK = 2_000_000_000


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


def sre_glushkov_dfa(tree, *, max_states: int, char_ranges, utf8_sequences, builder_cls, explicit_unicode=False):
    r"""Like :func:`glushkov_dfa`, from Python's own parse tree (``re._parser.parse``).

    This is how :func:`dotvllm_plugin.regex.regex_to_dfa` reads every pattern: Python's parser
    decides the syntax (``{}`` is literal text, ``{,3}`` is ``{0,3}``, octal escapes, ...), and
    every character set is what ``re`` matches (see :func:`atom_ranges`). Constructs that are not
    regular raise :class:`Refused` with the feature's kind; the caller reports it with a position.
    ``explicit_unicode``: the pattern starts with a ``(?u)`` flag group (full Unicode ``\w``).
    """
    flags = _sre_flags(tree.state.flags) | (_EXPLICIT_U if explicit_unicode else 0)
    if _cwalk is not None and USE_C_GLUSHKOV and USE_C_SUBSET:
        got = _c_positions(tree, flags, max_states // 2)
        if got is not None:  # (None: nested deeper than the C pass goes)
            return _c_to_dfa(got, max_states, utf8_sequences, builder_cls)
    g = _Positions(max_states // 2)
    first, last, nullable = g.visit_sre(tree, flags)
    return g.to_dfa(first, last, nullable, max_states, char_ranges, utf8_sequences, builder_cls)


def _c_positions(tree, flags: int, max_positions: int):
    """:meth:`_Positions.visit_sre` in C: ``(cls, classes, fol_start, fol, last, nullable)`` (see
    ``glushkov_positions`` in ``_cwalk.c``), or None for a tree nested too deeply for it."""

    def fail(kind: int, item):
        if kind == 0:
            raise _Positions(max_positions)._too_large()
        if kind == 1:
            raise Unhandled("bad repeat")
        _refuse_item(item)

    return _cwalk.glushkov_positions(tree, flags, max_positions, _C_OPS, atom_ranges, fail, _combine_flags)


def _c_to_dfa(got, max_states, utf8_sequences, builder_cls):
    """:meth:`_Positions.to_dfa` from :func:`_c_positions`'s arrays: the same NFA, its rows given per
    class (``_cwalk.subset_classes``), not per position and UTF-8 node."""
    b_cls, classes, b_fs, b_fol, b_last, nullable = got
    cls = np.frombuffer(b_cls, dtype=np.int32)
    n_pos, n_cls = len(cls), len(classes)
    max_nfa = max_states * 4
    builder = builder_cls(1 + n_pos, max_nfa)  # its templates: the UTF-8 byte tries of a class
    # A class's rows: its root row (ASCII characters end at once: _SLOT) and its trie's nodes.
    roots = np.full((n_cls, 256), -1, dtype=np.int32)
    node_rows = []
    m = np.zeros(n_cls, dtype=np.int64)
    for k, ranges in enumerate(classes):
        for a, b in ranges:
            if a <= 0x7F:
                roots[k, a : min(b, 0x7F) + 1] = _SLOT
        trie = _class_trie(ranges, builder, utf8_sequences)
        if trie is not None:
            lead, at_root, nodes, _dead, _slot = trie
            roots[k, lead] = at_root
            m[k] = len(nodes)
            node_rows.append(nodes)
    node_off = np.zeros(n_cls + 1, dtype=np.int64)
    np.cumsum(m, out=node_off[1:])
    # Mid-character states as the reference lays them out: class by class (in order of first use),
    # each class's positions in order, m[class] nodes each.
    order = np.argsort(cls, kind="stable")
    count = np.bincount(cls, minlength=n_cls)
    first_of = np.zeros(n_cls + 1, dtype=np.int64)
    np.cumsum(count, out=first_of[1:])
    det_of = np.zeros(n_cls + 1, dtype=np.int64)
    np.cumsum(count * m, out=det_of[1:])
    n_det = int(det_of[-1])
    if 1 + n_pos + n_det > max_nfa:
        raise CompilationTooLargeError(f"the byte-level automaton exceeds {max_nfa} states; simplify the pattern")
    oc = cls[order]
    rank = np.arange(n_pos, dtype=np.int64) - first_of[oc]
    base = np.empty(n_pos, dtype=np.int32)
    base[order] = 1 + n_pos + det_of[oc] + rank * m[oc]
    owner = np.repeat(order.astype(np.int32), m[oc])
    accepting_nfa = np.zeros(1 + n_pos + n_det, dtype=np.uint8)
    accepting_nfa[1 + np.frombuffer(b_last, dtype=np.int64)] = 1
    accepting_nfa[0] = nullable
    nodes = np.concatenate(node_rows) if node_rows else np.zeros((0, 256), dtype=np.int32)
    res = _cwalk.subset_classes(cls, roots, node_off, nodes, base, owner, b_fs, b_fol, accepting_nfa, max_states,
                                MAX_SUBSET_WORK)
    return _subset_result(res, max_states)


def _layout(groups, n_pos, max_states, utf8_sequences, builder_cls):
    """The NFA's rows: ``entry`` (a position's state's row, by position) and the UTF-8 intermediate
    nodes' rows, from ``(ranges, positions)`` per class."""
    # NFA states: 0 = initial, 1 + p = after position p, then UTF-8 intermediate nodes.
    max_nfa = max_states * 4
    builder = builder_cls(1 + n_pos, max_nfa)  # its templates: the UTF-8 byte tries of a class
    entry = np.full((n_pos, 256), -1, dtype=np.int32)
    blocks: list[np.ndarray] = []
    n_det = 0
    # Positions with the same class (a repetition's copies) are laid out together: one byte
    # trie per class, its intermediate nodes copied per position with numpy (a position's
    # nodes lead to that position only, so nothing is shared between positions).
    for ranges, ps in groups:
        for a, b in ranges:
            if a <= 0x7F:
                entry[ps, a : min(b, 0x7F) + 1] = (1 + ps)[:, None]
        trie = _class_trie(ranges, builder, utf8_sequences)
        if trie is None:
            continue
        lead, at_root, nodes, dead, slot = trie
        m = len(nodes)
        base = (1 + n_pos + n_det + np.arange(len(ps), dtype=np.int32) * m)[:, None]  # (< max_nfa)
        target = (1 + ps).astype(np.int32)[:, None]
        entry[np.ix_(ps, lead)] = np.where(at_root == _SLOT, target, base + at_root)
        if m:
            n_det += len(ps) * m
            if 1 + n_pos + n_det > max_nfa:
                raise CompilationTooLargeError(
                    f"the byte-level automaton exceeds {max_nfa} states; simplify the pattern"
                )
            block = nodes[None] + base[:, :, None]  # [positions, nodes, 256]
            block[:, dead] = -1
            block[:, slot] = target
            blocks.append(block.reshape(-1, 256))
    det_block = (blocks[0] if len(blocks) == 1 else np.concatenate(blocks)) if blocks else \
        np.zeros((0, 256), dtype=np.int32)
    return entry, det_block


def _subset_c(entry, det_block, fol_start, fol, accepting_nfa, max_states):
    """The subset construction in C (``_cwalk.subset``): ``(trans int32[n, 256], accepting bool[n])``."""
    res = _cwalk.subset(entry, det_block, fol_start, fol, accepting_nfa, max_states, MAX_SUBSET_WORK)
    return _subset_result(res, max_states)


def _subset_result(res, max_states):
    if res is None:
        raise CompilationTooLargeError(f"the automaton exceeds {max_states} states; simplify the pattern")
    if res is False:
        raise CompilationTooLargeError(
            f"building the automaton takes more than {MAX_SUBSET_WORK:,} steps (its states are large "
            "sets of pattern positions: optional items inside a long counted repetition are the usual "
            "cause); simplify the pattern"
        )
    trans = np.frombuffer(res[0], dtype=np.int32).reshape(-1, 256)  # (read-only: only read)
    return trans, np.frombuffer(res[1], dtype=np.uint8).astype(bool)


def _sre_constants():
    try:
        from re import _constants as c  # Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_constants as c
    return c


_SRE = _sre_constants()
#: Private flag bit: ``(?u)`` was written explicitly (``\w`` then means re's full Unicode set).
_EXPLICIT_U = 1 << 30
_TYPE_FLAGS = _SRE.SRE_FLAG_ASCII | _SRE.SRE_FLAG_LOCALE | _SRE.SRE_FLAG_UNICODE
_KNOWN_FLAGS = (
    _TYPE_FLAGS | _SRE.SRE_FLAG_IGNORECASE | _SRE.SRE_FLAG_DOTALL | _SRE.SRE_FLAG_MULTILINE
    | _SRE.SRE_FLAG_VERBOSE | _EXPLICIT_U
)


class Refused(Exception):
    """A construct that is not regular (or not supported); ``args[0]`` is its kind."""


def _sre_flags(flags: int) -> int:
    if flags & _SRE.SRE_FLAG_LOCALE:
        raise Refused("locale flag")
    if flags & ~_KNOWN_FLAGS:
        raise Refused("flags")
    return flags


def _combine_flags(flags: int, add: int, remove: int) -> int:
    """Scoped flags ``(?a-b:...)`` as ``re`` combines them (a type flag replaces the others)."""
    if add & _TYPE_FLAGS:
        flags &= ~(_TYPE_FLAGS | _EXPLICIT_U)
        if add & _SRE.SRE_FLAG_UNICODE:
            flags |= _EXPLICIT_U
    return _sre_flags((flags | add) & ~remove)


_REFUSED_OPS = {
    "AT": "anchor",
    "ASSERT": "lookaround",
    "ASSERT_NOT": "lookaround",
    "GROUPREF": "backreference",
    "GROUPREF_EXISTS": "conditional",
    "ATOMIC_GROUP": "atomic group",
    "POSSESSIVE_REPEAT": "possessive quantifier",
}
_BOUNDARY = {"AT_BOUNDARY", "AT_NON_BOUNDARY"}
#: The opcodes the C position pass tells apart (by identity, as :meth:`_Positions._sre_item`).
_C_OPS = (
    _SRE.LITERAL, _SRE.NOT_LITERAL, _SRE.ANY, _SRE.IN, _SRE.BRANCH, _SRE.SUBPATTERN, _SRE.MAX_REPEAT,
    _SRE.MIN_REPEAT, _SRE.MAXREPEAT,
)


def _refuse_item(item):
    """Raise :class:`Refused` for a parse-tree item the builder does not take."""
    op, av = item
    name = str(op)
    if name == "AT" and str(av) in _BOUNDARY:
        raise Refused("word boundary")
    raise Refused(_REFUSED_OPS.get(name, name))

_WORD = None  # ASCII word characters, as ranges
_CATEGORY_LETTER = {
    "CATEGORY_DIGIT": "d", "CATEGORY_NOT_DIGIT": "D", "CATEGORY_WORD": "w", "CATEGORY_NOT_WORD": "W",
    "CATEGORY_SPACE": "s", "CATEGORY_NOT_SPACE": "S",
}


_NARROWED = {
    # category where it adds characters → the ASCII part kept by default
    "CATEGORY_WORD": ((48, 57), (65, 90), (95, 95), (97, 122)),
    "CATEGORY_DIGIT": ((48, 57),),
}
_NEGATION = {"CATEGORY_NOT_WORD": "CATEGORY_WORD", "CATEGORY_NOT_DIGIT": "CATEGORY_DIGIT"}


def _ascii_word_items(negated_class: bool, category) -> list | None:
    r"""Default reading of ``\w`` and ``\d``: where they *add* characters (``\w``/``\d`` in a plain
    class, ``\W``/``\D`` in a negated one) only their ASCII characters; ``None`` where re's exact
    set is used (complements stay exact: narrowing them would add strings re rejects)."""
    name = str(category)
    if name in _NARROWED and not negated_class:
        return [(_SRE.RANGE, r) for r in _NARROWED[name]]
    if name in _NEGATION and negated_class:
        return [(_SRE.RANGE, r) for r in complement(list(_NARROWED[_NEGATION[name]]))]
    return None


def _rewrite_default_word(item, flags: int):
    r"""``item`` with the default (ASCII-subset) reading of ``\w`` applied: a subset of re's."""
    op, av = item
    if op is not _SRE.IN or flags & (_SRE.SRE_FLAG_ASCII | _EXPLICIT_U):
        return item
    negated = any(k is _SRE.NEGATE for k, _ in av)
    out, changed = [], False
    for k, a in av:
        rep = _ascii_word_items(negated, a) if k is _SRE.CATEGORY else None
        if rep is None:
            out.append((k, a))
        else:
            out.extend(rep)
            changed = True
    return (op, out) if changed else item


def atom_ranges(item, flags: int) -> tuple:
    r"""Code-point ranges (no surrogates) of a one-character item of Python's parse tree, exactly as
    ``re`` matches it under ``flags`` (``\w`` read as :func:`_rewrite_default_word` says)."""
    item = _rewrite_default_word(item, flags)
    op, av = item
    # (opcode, its argument as a tuple): hashable, and far cheaper than the item's repr
    key = (op, tuple(av) if op is _SRE.IN else av, flags & ~_SRE.SRE_FLAG_VERBOSE & ~_SRE.SRE_FLAG_MULTILINE)
    got = _ATOM_CACHE.get(key)
    if got is not None:
        return got
    ascii_only = bool(flags & _SRE.SRE_FLAG_ASCII)
    if op is _SRE.LITERAL:
        base = ((av, av),)
    elif op is _SRE.NOT_LITERAL:
        base = tuple(complement([(av, av)]))
    elif op is _SRE.ANY:
        base = ((0, MAX_CP),) if flags & _SRE.SRE_FLAG_DOTALL else tuple(complement([(10, 10)]))
    elif op is _SRE.IN:
        negated = False
        ranges = []
        for kind, arg in av:
            if kind is _SRE.NEGATE:
                negated = True
            elif kind is _SRE.LITERAL:
                ranges.append((arg, arg))
            elif kind is _SRE.RANGE:
                ranges.append(arg)
            elif kind is _SRE.CATEGORY and str(arg) in _CATEGORY_LETTER:
                ranges.extend(category_ranges(_CATEGORY_LETTER[str(arg)], ascii_only))
            else:
                raise Refused(f"class item {kind}")
        base = merge_ranges(ranges)
        if negated:
            base = tuple(complement(list(base)))
    else:  # pragma: no cover - callers only pass the ops above
        raise Refused(str(op))
    base = merge_ranges(remove_surrogates(base))
    if flags & _SRE.SRE_FLAG_IGNORECASE:
        # Characters without case mappings match as without the flag; the others are asked of re.
        cased = case_sensitive_chars()
        plain = intersect_ranges(base, tuple(complement(list(merge_ranges((ord(c), ord(c)) for c in cased)))))
        prog = _sre_compile(item, flags)
        base = merge_ranges(plain + matched_ranges(prog, cased))
    if len(_ATOM_CACHE) > 4096:  # a long-running server sees many patterns: keep the cache bounded
        _ATOM_CACHE.clear()
    _ATOM_CACHE[key] = base
    return base


_ATOM_CACHE: dict = {}


def clear_memos() -> None:
    """Empty the memo of character classes met in patterns and of their byte tries (process-wide; a
    benchmark of cold compiles calls it), all but the pinned tries (:func:`pinned_tries`)."""
    _ATOM_CACHE.clear()
    _TRIES.clear()


#: A character class's UTF-8 byte trie (:func:`_byte_trie`), by its code-point ranges: the
#: translator writes the same few classes (a JSON string's characters) in every schema.
_TRIES: dict = {}
_MAX_TRIES = 4096
#: Tries kept for the process's life: those of the automata built within :func:`pinned_tries`.
_PINNED_TRIES: dict = {}
_pinning = Pinning()


def pinned_tries():
    """Within this block, the byte tries of the classes met are kept for the process's life (the
    JSON translator's fixed terminals, built once when a compiler is made)."""
    return _pinning.on()


def _class_trie(ranges: tuple, builder, utf8_sequences):
    """The non-ASCII part of a class as :meth:`_Positions.to_dfa` lays it out, or None when it has
    none: ``(lead bytes, their root entries, node rows int32, where rows are -1, where they are
    _SLOT)`` of its byte trie (:func:`_byte_trie`); memoised per class. The arrays are shared: read
    only."""
    if ranges[-1][1] < 0x80:  # (ASCII only: sorted ranges)
        return None
    key = (ranges, utf8_sequences)
    got = _PINNED_TRIES.get(key)
    if got is None:
        got = _TRIES.get(key)
    if got is None:
        seqs = [seq for a, b in ranges if b >= 0x80 for seq in utf8_sequences(max(a, 0x80), b)]
        got = ()
        if seqs:
            root, nodes = _byte_trie(builder._template(tuple(sorted((seq, 0) for seq in seqs))))
            lead = np.flatnonzero(root != -1)
            got = (lead, root[lead].astype(np.int32), nodes.astype(np.int32), nodes == -1, nodes == _SLOT)
        for a in got:
            a.flags.writeable = False
        if _pinning.active:
            _PINNED_TRIES[key] = got
        else:
            if len(_TRIES) >= _MAX_TRIES:
                _TRIES.clear()
            _TRIES[key] = got
    return got or None


def _sre_compile(item, flags: int):
    try:
        from re import _compiler, _parser  # Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_compile as _compiler
        import sre_parse as _parser
    sre_flags = flags & ~_EXPLICIT_U & ~_SRE.SRE_FLAG_VERBOSE
    if not sre_flags & _TYPE_FLAGS:
        sre_flags |= _SRE.SRE_FLAG_UNICODE
    return _compiler.compile(_parser.SubPattern(_parser.State(), [item]), sre_flags)


class _Positions:
    def __init__(self, max_positions: int):
        self.ranges: list[tuple] = []  # per position: code-point ranges
        self.follow: list[set] = []
        self.max_positions = max_positions
        self._class_cache: dict = {}

    def _too_large(self) -> CompilationTooLargeError:
        return CompilationTooLargeError(
            f"the regex expands to more than {self.max_positions} character positions; reduce repetition bounds"
        )

    def _new(self, ranges: tuple) -> int:
        if len(self.ranges) >= self.max_positions:
            raise self._too_large()
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
        items = list(getattr(items, "data", items))  # (a SubPattern iterates by __getitem__ calls)
        if len(items) == 1:
            return self._sre_item(items[0], flags)
        return self._concat([lambda it=it: self._sre_item(it, flags) for it in items])

    def _sre_item(self, item, flags: int):
        op, av = item
        if op is _SRE.LITERAL or op is _SRE.NOT_LITERAL or op is _SRE.ANY or op is _SRE.IN:
            # Repetition copies visit the same tree objects: key on identity (alive during the build).
            key = ("atom", op, id(av) if op is _SRE.IN else av, flags)
            got = self._class_cache.get(key)
            if got is None:
                got = self._class_cache[key] = atom_ranges(item, flags)
            if not got:
                return set(), set(), False  # matches nothing
            p = self._new(got)
            return {p}, {p}, False
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
            return self.visit_sre(sub, _combine_flags(flags, add, remove))
        if op is _SRE.MAX_REPEAT or op is _SRE.MIN_REPEAT:
            lo, hi, sub = av
            return self._repeat_of(lambda: self.visit_sre(sub, flags), lo, None if hi is _SRE.MAXREPEAT else hi)
        _refuse_item(item)

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

    def _copies(self, make, n_copies: int):
        """``make`` for a repetition of ``n_copies``: the first call builds the sub-pattern's
        positions, the others clone them (its follow sets as they were when it was built: a
        sub-pattern links only its own positions; its links to the next copy come later, from the
        caller). An over-budget repetition is refused after one copy, not after the budget's worth
        (a ``maxLength`` in the thousands)."""
        template = None

        def copy():
            nonlocal template
            n = len(self.ranges)
            if template is None:
                got = make()
                size = len(self.ranges) - n
                if len(self.ranges) + size * (n_copies - 1) > self.max_positions:
                    raise self._too_large()
                template = (n, len(self.ranges), [sorted(f) for f in self.follow[n:]], got)
                return got
            lo, hi, follow, (first, last, nullable) = template
            if n + hi - lo > self.max_positions:
                raise self._too_large()
            shift = n - lo
            self.ranges.extend(self.ranges[lo:hi])
            self.follow.extend({q + shift for q in f} for f in follow)
            return {p + shift for p in first}, {p + shift for p in last}, nullable

        return copy

    @staticmethod
    def _first_then(first, make):
        """A ``make`` whose first call returns ``first`` (already made) and the others call ``make``."""
        made = [first]

        def again():
            return made.pop() if made else make()

        return again

    def _repeat_of(self, make, lo, hi):
        """``make()`` repeated ``lo`` to ``hi`` (None: unbounded) times; each call adds fresh positions."""
        if hi is not None and hi < lo:
            raise Unhandled("bad repeat")
        n_copies = lo + (1 if hi is None else hi - lo)
        if n_copies > 1:
            make = self._copies(make, n_copies)
            n = len(self.ranges)
            once = make()  # (the first copy, as the concatenation below would make it first)
            if len(self.ranges) == n:  # no positions (an empty group): any count of copies is one copy
                f, l, nullable = once
                return f, l, nullable or lo == 0
            make = self._first_then(once, make)
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
                    acc_f = (acc_f | f2) if n2 else set(f2)
                    acc_l |= l2  # in place: a new set per copy is quadratic in the count
                return acc_f, acc_l, True

            parts.append(optional_chain)
        return self._concat(parts)

    # -- byte level -------------------------------------------------------------------------------

    def to_dfa(self, first, last, nullable, max_states, char_ranges, utf8_sequences, builder_cls):
        n_pos = len(self.ranges)
        by_class: dict[tuple, list[int]] = {}
        for p, ranges in enumerate(self.ranges):
            by_class.setdefault(ranges, []).append(p)
        groups = [(ranges, np.array(ps, dtype=np.int64)) for ranges, ps in by_class.items()]
        entry, det_block = _layout(groups, n_pos, max_states, utf8_sequences, builder_cls)
        n_det = len(det_block)
        n_nfa = 1 + n_pos + n_det
        follows = [first] + self.follow
        accepting_nfa = np.zeros(n_nfa, dtype=bool)
        accepting_nfa[[1 + p for p in last]] = True
        accepting_nfa[0] = nullable
        if _cwalk is not None and USE_C_SUBSET:
            fol_lists = [sorted(f) for f in follows]
            fol_start = np.zeros(len(fol_lists) + 1, dtype=np.int64)
            fol_start[1:] = np.cumsum([len(f) for f in fol_lists])
            fol = np.fromiter((q for f in fol_lists for q in f), dtype=np.int64, count=int(fol_start[-1]))
            return _subset_c(entry, det_block, fol_start, fol, accepting_nfa.astype(np.uint8), max_states)

        det_rows: list = [None] * (1 + n_pos) + list(det_block)

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


#: In a class's byte trie: a byte that ends the character (to the position's own state).
_SLOT = -2


def _byte_trie(tpl: tuple) -> tuple[np.ndarray, np.ndarray]:
    """A one-slot template of :class:`~dotvllm_plugin.regex.automaton.Builder` as arrays: the root's
    row and the intermediate nodes' rows, with -1 (no transition), :data:`_SLOT` or a node index.
    Equal sub-templates are one node (as the builder interns them for one target)."""
    rows: list[np.ndarray] = []
    index: dict[tuple, int] = {}

    def row_of(t: tuple) -> np.ndarray:
        r = np.full(256, -1, dtype=np.int64)
        for a, b, (kind, val) in t:
            r[a : b + 1] = _SLOT if kind == "slot" else node(val)
        return r

    def node(t: tuple) -> int:
        j = index.get(t)
        if j is None:
            r = row_of(t)
            j = index[t] = len(rows)
            rows.append(r)
        return j

    root = row_of(tpl)
    return root, (np.stack(rows) if rows else np.zeros((0, 256), dtype=np.int64))


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
