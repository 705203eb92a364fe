"""Regular expression → byte-level DFA. Knows nothing of tokens.

Syntax is Python ``re`` as parsed by ``interegular``. ``\\d``, ``\\w`` and ``\\s`` are ASCII-only
(``[0-9]``, ``[A-Za-z0-9_]``, ``[ \\t\\n\\r\\f\\v]``), as in JSON Schema's ECMA-262 dialect and unlike
Python's ``re`` on ``str``. ``.`` matches any character except ``\\n``. ``\\uXXXX`` and
``\\UXXXXXXXX`` escapes are accepted. Refused, with the position: anchors, lookarounds, atomic
groups and possessive quantifiers, backreferences, word boundaries, conditionals, ``\\p{..}``.

Characters become their UTF-8 byte sequences, so a token that ends inside a multi-byte character
lands in an intermediate DFA state and the next token can finish the character.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import CompilationTooLargeError, RegexSyntaxError, UnsupportedFeatureError

try:
    from . import _cwalk
except ImportError:  # built without a C compiler: the numpy versions below are used
    _cwalk = None

#: Whether byte classes and twin merging use the C extension when it is built (tests compare both).
USE_C_TABLES = True

__all__ = ["ByteDFA", "check_regex", "regex_to_dfa"]

#: Budget of automaton states. Each is indexed against the whole vocabulary, so compile time grows
#: with it; past the budget compilation stops at once with CompilationTooLargeError.
MAX_DFA_STATES = 60_000
_SURROGATES = (0xD800, 0xDFFF)
_MAX_CP = 0x10FFFF


@dataclass(frozen=True)
class ByteDFA:
    """A deterministic automaton over bytes.

    ``transitions[s, b]`` is the next state or -1 (dead). Every state can reach an accepting state.
    """

    transitions: np.ndarray  # int32 [n_states, 256]
    accepting: np.ndarray  # bool [n_states]
    initial: int

    @property
    def n_states(self) -> int:
        return int(self.transitions.shape[0])


# -- syntax check and preprocessing ---------------------------------------------------------------

_UNSUPPORTED_GROUPS = {
    "(?=": "lookahead",
    "(?!": "negative lookahead",
    "(?<=": "lookbehind",
    "(?<!": "negative lookbehind",
    "(?>": "atomic group",
    "(?(": "conditional group",
    "(?P=": "named backreference",
}
_UNSUPPORTED_ESCAPES = {
    "b": "word boundary \\b",
    "B": "non-word-boundary \\B",
    "A": "anchor \\A",
    "Z": "anchor \\Z",
    "z": "anchor \\z",
    "G": "anchor \\G",
    "p": "unicode property \\p{...}",
    "P": "unicode property \\P{...}",
    "N": "named character \\N{...}",
    "k": "backreference \\k<...>",
}


def _unsupported(pattern: str, feature: str, pos: int) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(
        f"unsupported regex feature: {feature} at position {pos} in {_clip(pattern)}; "
        "only regular constructs are supported (no anchors, lookarounds, backreferences, "
        "word boundaries, atomic groups or possessive quantifiers)",
        feature=feature,
        where=f"position {pos}",
    )


def _clip(pattern: str, n: int = 120) -> str:
    return repr(pattern if len(pattern) <= n else pattern[:n] + "…")


def _preprocess(pattern: str) -> str:
    """Refuse non-regular constructs and rewrite ``\\uXXXX`` escapes for interegular.

    Walks the pattern once, tracking escapes and character classes, so that a ``^`` inside a class
    or an escaped parenthesis is not mistaken for a construct.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    class_start = -1
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise RegexSyntaxError(
                    f"regex ends with a lone backslash at position {i} in {_clip(pattern)}", pattern=pattern, position=i
                )
            e = pattern[i + 1]
            if e in "uU":
                width = 4 if e == "u" else 8
                digits = pattern[i + 2 : i + 2 + width]
                if len(digits) != width or not all(ch in "0123456789abcdefABCDEF" for ch in digits):
                    raise RegexSyntaxError(
                        f"bad \\{e} escape at position {i} in {_clip(pattern)}: expected {width} hex digits",
                        pattern=pattern,
                        position=i,
                    )
                cp = int(digits, 16)
                if cp > _MAX_CP or _SURROGATES[0] <= cp <= _SURROGATES[1]:
                    raise UnsupportedFeatureError(
                        f"escape \\{e}{digits} at position {i} is not a Unicode scalar value (surrogate or out "
                        f"of range) in {_clip(pattern)}; UTF-8 output cannot contain it",
                        feature="surrogate escape",
                        where=f"position {i}",
                    )
                out.append(f"\\x{cp:02x}" if cp < 0x80 else chr(cp))
                i += 2 + width
                continue
            if e.isdigit() and e != "0" and not in_class:
                raise _unsupported(pattern, f"backreference \\{e}", i)
            if e in _UNSUPPORTED_ESCAPES and not (in_class and e == "b"):
                raise _unsupported(pattern, _UNSUPPORTED_ESCAPES[e], i)
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if c == "]" and i > class_start + 1 and not (i == class_start + 2 and pattern[class_start + 1] == "^"):
                in_class = False
            elif c == "[" and i + 1 < n and pattern[i + 1] == ":":
                raise _unsupported(pattern, "POSIX class [:...:]", i)
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            class_start = i
        elif c == "(":
            for prefix, feature in _UNSUPPORTED_GROUPS.items():
                if pattern.startswith(prefix, i):
                    raise _unsupported(pattern, feature, i)
        elif c in "^$":
            raise _unsupported(pattern, f"anchor {c!r}", i)
        elif c in "*+?}" and i + 1 < n and pattern[i + 1] == "+":
            raise _unsupported(pattern, "possessive quantifier", i + 1)
        out.append(c)
        i += 1
    return "".join(out)


def _sre_parse(pattern: str):
    """Python's own regex parser (no compilation): precise syntax errors with positions."""
    try:
        import re._parser as sre_parse  # Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_parse
    return sre_parse.parse(pattern)


def _checked(pattern: str, check_syntax: bool = True) -> str:
    """Syntax check with Python's ``re`` (precise errors), refusals, and the rewrite for parsing."""
    if not isinstance(pattern, str):
        raise TypeError(f"a regex must be a str, got {type(pattern).__name__}")
    try:
        if check_syntax:
            _sre_parse(pattern)
    except re.error as e:
        pos = e.pos if e.pos is not None else None
        raise RegexSyntaxError(
            f"invalid regex: {e.msg} at position {pos} in {_clip(pattern)}", pattern=pattern, position=pos
        ) from e
    except (OverflowError, RecursionError) as e:
        raise RegexSyntaxError(f"invalid regex: {e} in {_clip(pattern)}", pattern=pattern) from e
    return _preprocess(pattern)


def _parse(pattern: str, check_syntax: bool = True):
    """Parse with Python's ``re`` (for precise syntax errors) and interegular (for the FSM)."""
    rewritten = _checked(pattern, check_syntax)
    import interegular
    from interegular.patterns import InvalidSyntax, Unsupported

    try:
        return interegular.parse_pattern(rewritten)
    except Unsupported as e:
        raise UnsupportedFeatureError(
            f"unsupported regex feature in {_clip(pattern)}: {e}", feature=str(e), where=None
        ) from e
    except (InvalidSyntax, ValueError) as e:
        raise RegexSyntaxError(f"invalid regex {_clip(pattern)}: {e or 'syntax error'}", pattern=pattern) from e
    except RecursionError as e:
        raise UnsupportedFeatureError(
            f"regex nests too deeply: {_clip(pattern)}", feature="nesting depth", where=None
        ) from e


def check_regex(pattern: str) -> None:
    """Cheap syntax and feature check; raises a :class:`~dotvllm_plugin.errors.GrammarError`."""
    _parse(pattern)


# -- FSM construction ----------------------------------------------------------------------------


def regex_to_dfa(
    pattern: str, *, max_states: int = MAX_DFA_STATES, fast: bool = True, check_syntax: bool = True
) -> ByteDFA:
    """Compile ``pattern`` (full-match semantics) into a trimmed byte-level DFA.

    ``fast=False`` uses interegular's own FSM construction (the reference implementation).
    ``check_syntax=False`` skips Python's parser, which only serves error messages: for regexes
    this package generated itself.
    """
    if fast:
        from ._glushkov import Unhandled, sre_glushkov_dfa

        rewritten = _checked(pattern, check_syntax)
        try:
            trans, accepting = sre_glushkov_dfa(
                _sre_parse(rewritten),
                max_states=max_states,
                char_ranges=_char_class_ranges,
                utf8_sequences=_utf8_sequences,
                builder_cls=_Builder,
            )
        except (Unhandled, re.error, OverflowError):
            pass  # interegular's parse below handles (or reports) it
        except RecursionError as e:
            raise UnsupportedFeatureError(f"regex nests too deeply: {_clip(pattern)}", feature="nesting depth") from e
        else:
            return _trim(trans, accepting, pattern)
    parsed = _parse(pattern, check_syntax=False) if fast else _parse(pattern, check_syntax)
    if fast:
        from ._glushkov import Unhandled, glushkov_dfa

        try:
            trans, accepting = glushkov_dfa(
                parsed,
                max_states=max_states,
                char_ranges=_char_class_ranges,
                utf8_sequences=_utf8_sequences,
                builder_cls=_Builder,
            )
        except Unhandled:
            pass
        except RecursionError as e:
            raise UnsupportedFeatureError(f"regex nests too deeply: {_clip(pattern)}", feature="nesting depth") from e
        else:
            return _trim(trans, accepting, pattern)
    try:
        fsm = parsed.to_fsm()
    except RecursionError as e:
        raise UnsupportedFeatureError(f"regex nests too deeply: {_clip(pattern)}", feature="nesting depth") from e
    except Exception as e:  # interegular raises bare Exception for e.g. a{3,1}
        raise RegexSyntaxError(f"invalid regex {_clip(pattern)}: {e}", pattern=pattern) from e
    return _byte_dfa_from_fsm(fsm, pattern, max_states)


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


def _ranges_of(chars) -> list[tuple[int, int]]:
    cps = sorted(ord(c) for c in chars)
    out: list[tuple[int, int]] = []
    for cp in cps:
        if out and out[-1][1] + 1 == cp:
            out[-1] = (out[-1][0], cp)
        else:
            out.append((cp, cp))
    return out


def _merge_ranges(ranges) -> tuple[tuple[int, int], ...]:
    """Sorted, disjoint, non-adjacent code-point ranges covering ``ranges`` (empty ones dropped)."""
    out: list[list[int]] = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((a, b) for a, b in out)


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    lo = 0
    for a, b in ranges:
        if a > lo:
            out.append((lo, a - 1))
        lo = b + 1
    if lo <= _MAX_CP:
        out.append((lo, _MAX_CP))
    return out


def _remove_surrogates(ranges):
    out = []
    for a, b in ranges:
        if b < _SURROGATES[0] or a > _SURROGATES[1]:
            out.append((a, b))
            continue
        if a < _SURROGATES[0]:
            out.append((a, _SURROGATES[0] - 1))
        if b > _SURROGATES[1]:
            out.append((_SURROGATES[1] + 1, b))
    return out


_UTF8_BOUNDS = ((0x0, 0x7F), (0x80, 0x7FF), (0x800, 0xFFFF), (0x10000, 0x10FFFF))


def _utf8_sequences(lo: int, hi: int) -> list[tuple[tuple[int, int], ...]]:
    """Split a code-point range into byte-range sequences (as in regex-syntax's Utf8Sequences)."""
    out: list[tuple[tuple[int, int], ...]] = []
    stack = [(lo, hi)]
    while stack:
        a, b = stack.pop()
        split = False
        for blo, bhi in _UTF8_BOUNDS:
            if a < blo <= b or a <= bhi < b:
                # Crosses an encoding-length boundary: split there.
                cut = blo - 1 if a < blo <= b else bhi
                stack.append((cut + 1, b))
                stack.append((a, cut))
                split = True
                break
        if split:
            continue
        if b <= 0x7F:
            out.append(((a, b),))
            continue
        n = 2 if b <= 0x7FF else 3 if b <= 0xFFFF else 4
        for i in range(1, n):
            m = (1 << (6 * i)) - 1
            if (a & ~m) != (b & ~m):
                if (a & m) != 0:
                    stack.append(((a | m) + 1, b))
                    stack.append((a, a | m))
                    split = True
                    break
                if (b & m) != m:
                    stack.append(((b & ~m), b))
                    stack.append((a, (b & ~m) - 1))
                    split = True
                    break
        if split:
            continue
        ea, eb = chr(a).encode("utf-8"), chr(b).encode("utf-8")
        out.append(tuple(zip(ea, eb)))
    out.sort()
    return out


def _char_class_ranges(chars, negated: bool) -> tuple:
    """Code-point ranges of a character class, without surrogates (not encodable in UTF-8)."""
    ranges = _ranges_of(chars)
    if negated:
        ranges = _complement(ranges)
    return tuple(_remove_surrogates(ranges))


def _case_fold_ranges(chars) -> frozenset:
    out = set(chars)
    for c in chars:
        for v in (c.lower(), c.upper()):
            if len(v) == 1:
                out.add(v)
    return frozenset(out)


class _Builder:
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


def _byte_dfa_from_fsm(fsm, pattern: str, max_states: int) -> ByteDFA:
    from interegular.fsm import anything_else

    order, live = _live_states(fsm)
    if not order:
        # Matches nothing at all (e.g. an empty class): a grammar nobody can satisfy.
        from .errors import VocabularyCoverageError

        raise VocabularyCoverageError(f"the regex {_clip(pattern)} matches no string at all")
    if len(order) > max_states:
        raise CompilationTooLargeError(
            f"the regex {_clip(pattern)} needs {len(order)} automaton states (limit {max_states}); simplify it"
        )
    index = {s: i for i, s in enumerate(order)}
    alphabet = fsm.alphabet
    explicit = [c for c in alphabet._symbol_mapping if c is not anything_else]
    key_chars: dict = {}
    for key, chars in alphabet.by_transition.items():
        key_chars[key] = [c for c in chars if c is not anything_else]
    else_key = alphabet._symbol_mapping.get(anything_else)
    else_ranges = _remove_surrogates(_complement(_ranges_of(explicit)))

    seq_cache: dict = {}

    def sequences(key) -> tuple[tuple, list[int]]:
        """(non-ASCII utf8 sequences, ASCII bytes) for a transition key."""
        got = seq_cache.get(key)
        if got is None:
            ranges = _ranges_of(key_chars[key])
            if key == else_key:
                ranges = sorted(ranges + else_ranges)
            ascii_bytes = [cp for a, b in ranges if a <= 0x7F for cp in range(a, min(b, 0x7F) + 1)]
            seqs: list = []
            for a, b in ranges:
                if b < 0x80:
                    continue
                seqs.extend(_utf8_sequences(max(a, 0x80), b))
            got = seq_cache[key] = (tuple(seqs), ascii_bytes)
        return got

    builder = _Builder(len(order), max_states)
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


def _trim(trans: np.ndarray, accepting: np.ndarray, pattern: str) -> ByteDFA:
    """Keep the states that can reach an accepting state; renumber with the initial state 0."""
    n = trans.shape[0]
    rows, byte_class = byte_classes(trans)  # the same graph with far fewer (parallel) edges
    rows = rows.astype(np.int64)
    src = np.repeat(np.arange(n), rows.shape[1])
    dst = rows.ravel()
    ok = dst >= 0
    edges = np.unique(dst[ok] * n + src[ok])  # reversed, deduplicated (a row repeats targets)
    live = reachable(edges // n, edges % n, n, np.flatnonzero(accepting).tolist())
    if not live[0]:
        from .errors import VocabularyCoverageError

        raise VocabularyCoverageError(f"the regex {_clip(pattern)} matches no string at all")
    if not live.all():
        new_id = np.full(n + 1, -1, dtype=np.int64)
        new_id[np.flatnonzero(live)] = np.arange(int(live.sum()))
        rows = new_id[np.where(rows < 0, n, rows)][live]
        accepting = accepting[live]
    rows, accepting = _merge_twins(rows, accepting.astype(bool), byte_class=byte_class)
    return ByteDFA(transitions=rows.astype(np.int32), accepting=accepting, initial=0)


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


def _merge_twins(trans: np.ndarray, accepting: np.ndarray, max_rounds: int = 32, byte_class=None):
    """Merge states with identical rows and acceptance, repeatedly (a cheap partial minimisation).

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
        return rows[:, byte_class.reshape(256)], np.frombuffer(acc, dtype=np.uint8).astype(bool)
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
    return rows[:, byte_class.reshape(256)], accepting
