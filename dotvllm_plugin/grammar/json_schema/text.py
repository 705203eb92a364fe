"""JSON string bodies as regexes: code point sets, their JSON encodings, ECMA-262 patterns.

Everything here produces regexes over the *encoded* JSON text between the quotes. A string body
is a concatenation of *units*; every unit is one complete JSON character (a literal code point or
an escape), so a match always decomposes into units exactly like a JSON lexer would and the
decoded content is the concatenation of what each unit denotes.

Two encodings are used:

* ``ANY_CHAR`` (unconstrained content): any literal code point JSON allows plus every escape,
  ``\\uXXXX`` included (surrogate escapes only as valid high+low pairs, each pair one unit).
* plain (everything else: ``PLAIN_CHAR``, ``encode_set``): literal characters and the short
  escapes; every spelling of a unit decodes to one known code point, so sets of code points
  (pattern classes, "any name but these") translate unit by unit. ``encode_char``/
  ``encode_text`` give the spelling ``json.dumps(s, ensure_ascii=False)`` writes.

The regex dialect is the engine's: no ``\\u`` escapes (non-ASCII characters are written
literally), no surrogate code points anywhere in the regex text, only positive classes.
"""

from __future__ import annotations

import functools
import re
import warnings
from typing import Iterable, Sequence

from ...errors import UnsupportedFeatureError
from ...regex.fastparse import parse as fast_parse_tree  # re's parse tree, faster on the common subset

MAX_CP = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)

Ranges = tuple[tuple[int, int], ...]  # sorted, disjoint, non-adjacent, inclusive


def clear_memos() -> None:
    """Empty the memo tables of this module (process-wide; a benchmark of cold compiles calls it)."""
    intersect.cache_clear()
    encode_set.cache_clear()
    _is_atom.cache_clear()
    translate_pattern.cache_clear()


def normalize(ranges: Iterable[tuple[int, int]]) -> Ranges:
    from ...regex.charsets import merge_ranges

    return merge_ranges(ranges)


def _normalized(r: Ranges) -> bool:
    return all(lo <= hi for lo, hi in r) and all(r[k][1] + 1 < r[k + 1][0] for k in range(len(r) - 1))


def complement(ranges: Ranges) -> Ranges:
    from ...regex import charsets

    return tuple(charsets.complement(ranges if _normalized(ranges) else normalize(ranges)))


@functools.lru_cache(maxsize=8192)
def intersect(a: Ranges, b: Ranges) -> Ranges:
    """The code points in both (one merge pass over the sorted ranges)."""
    if not _normalized(a):
        a = normalize(a)
    if not _normalized(b):
        b = normalize(b)
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))  # pieces of disjoint, non-adjacent inputs stay so
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def subtract(a: Ranges, b: Ranges) -> Ranges:
    return intersect(a, complement(b))


def chars(s: str) -> Ranges:
    return normalize((ord(c), ord(c)) for c in s)


ALL: Ranges = ((0, MAX_CP),)
# JSON text may hold any code point; surrogates cannot be encoded as UTF-8 and are left out.
ENCODABLE: Ranges = subtract(ALL, (SURROGATES,))
MUST_ESCAPE: Ranges = normalize([(0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)])
LITERAL_OK: Ranges = subtract(ENCODABLE, MUST_ESCAPE)

# ECMA-262 character classes (JSON Schema patterns are ECMA regexes, without the "u" flag).
DIGIT: Ranges = ((0x30, 0x39),)
WORD: Ranges = normalize([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)])
SPACE: Ranges = normalize(
    [(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
     (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF)]
)
LINE_TERMINATORS: Ranges = normalize([(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)])
DOT: Ranges = complement(LINE_TERMINATORS)

_SHORT_ESCAPES = {0x22: '\\\\"', 0x5C: "\\\\\\\\", 0x08: "\\\\b", 0x0C: "\\\\f", 0x0A: "\\\\n",
                  0x0D: "\\\\r", 0x09: "\\\\t"}
_META = set(".^$*+?{}[]\\|()")
_CLASS_META = set("\\]^-[&~|")


def _lit(cp: int, *, in_class: bool = False) -> str:
    c = chr(cp)
    if cp < 0x20 or cp == 0x7F:
        return f"\\x{cp:02x}"
    if c in (_CLASS_META if in_class else _META):
        return "\\" + c
    return c


#: :func:`_lit` of the ASCII characters it does not keep as they are (every other code point is
#: itself): a text is written in one ``str.translate`` call, not one call per character.
_LITERALS = {cp: _lit(cp) for cp in range(0x80) if _lit(cp) != chr(cp)}


def literal(text: str) -> str:
    """Regex matching exactly ``text`` (no JSON encoding applied)."""
    return text.translate(_LITERALS)


def class_regex(ranges: Ranges) -> str | None:
    """A regex class for literal code points (``None`` when empty)."""
    ranges = subtract(ranges, (SURROGATES,))
    if not ranges:
        return None
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return _lit(ranges[0][0])
    size = sum(hi - lo + 1 for lo, hi in ranges)
    rest = subtract(ENCODABLE, ranges) if size > 256 else None
    if rest:
        # Large sets as negated classes: interegular expands positive ranges character by
        # character. (A negated class also admits surrogates; the engine drops those.)
        return "[^" + _class_items(rest) + "]"
    return "[" + _class_items(ranges) + "]"


def _class_items(ranges: Ranges) -> str:
    parts = []
    for lo, hi in ranges:
        if lo == hi:
            parts.append(_lit(lo, in_class=True))
        elif hi == lo + 1:
            parts.append(_lit(lo, in_class=True) + _lit(hi, in_class=True))
        else:
            parts.append(f"{_lit(lo, in_class=True)}-{_lit(hi, in_class=True)}")
    return "".join(parts)


def encode_char(cp: int) -> str:
    """Regex for the canonical JSON encoding of one code point."""
    if cp in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[cp]
    if cp < 0x20:
        return f"\\\\u{cp:04x}"
    return _lit(cp)


#: :func:`encode_char` of the ASCII characters it changes (see :data:`_LITERALS`).
_ENCODED = {cp: encode_char(cp) for cp in range(0x80) if encode_char(cp) != chr(cp)}


def encode_text(text: str) -> str:
    """Regex for the canonical JSON encoding of ``text`` (without quotes)."""
    return text.translate(_ENCODED)


#: :data:`_ENCODED` by character.
_ENCODED_CHARS = {chr(cp): e for cp, e in _ENCODED.items()}


def encode_chars(text: str) -> list[str]:
    """:func:`encode_char` of each character of ``text`` (a table look-up each: every character
    outside :data:`_ENCODED` is its own encoding)."""
    return [_ENCODED_CHARS.get(c, c) for c in text]


_ESCAPABLE = {0x22: '\\\\"', 0x5C: "\\\\\\\\", 0x08: "\\\\b", 0x0C: "\\\\f", 0x0A: "\\\\n", 0x0D: "\\\\r",
              0x09: "\\\\t", 0x2F: "\\\\/"}


@functools.lru_cache(maxsize=8192)  # "any character but these few" is asked for at every node of a name trie
def encode_set(ranges: Ranges) -> str | None:
    """Regex for one JSON character from ``ranges`` (``None`` when empty).

    Literal characters plus the short escapes (``\\" \\\\ \\/ \\b \\f \\n \\r \\t``) of members;
    every spelling decodes to a member. Controls without a short escape are left out (a
    restriction that keeps the regex small: ``\\u00XX`` would cost six positions per control).
    """
    alts = []
    plain = class_regex(intersect(ranges, LITERAL_OK))
    esc = [e for cp, e in _ESCAPABLE.items() if intersect(ranges, ((cp, cp),))]
    if len(esc) > 1:
        esc = ["\\\\[" + "".join(_class_escape(e[-1]) for e in esc) + "]"]
    if plain is not None:
        alts.append(plain)
    alts.extend(esc)
    if not alts:
        return None
    return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"


def _class_escape(c: str) -> str:
    return "\\" + c if c in _CLASS_META else c


_HEX = "[0-9a-fA-F]"
_HEX_NON_SURROGATE = "(?:[0-9a-cA-Ce-fE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2})"
_HEX_HIGH = "[dD][89abAB][0-9a-fA-F]{2}"
_HEX_LOW = "[dD][c-fC-F][0-9a-fA-F]{2}"
#: One JSON character, any encoding (a surrogate pair escape counts as one code point).
ANY_CHAR = (
    "(?:" + class_regex(LITERAL_OK) + '|\\\\["\\\\/bfnrt]'
    + f"|\\\\u{_HEX_NON_SURROGATE}|\\\\u{_HEX_HIGH}\\\\u{_HEX_LOW})"
)
#: One JSON character without ``\\u`` escapes (controls other than ``\\b\\f\\n\\r\\t``
#: inexpressible): used where a character is repeated a bounded number of times or in many
#: places, because hex escapes cost several automaton states per position.
PLAIN_CHAR = encode_set(ENCODABLE)


def alternation(alts: Sequence[str]) -> str | None:
    if len(alts) == 1:  # (most calls)
        return alts[0]
    alts = list(dict.fromkeys(alts))
    if not alts:
        return None
    if len(alts) == 1:
        return alts[0]
    return "(?:" + "|".join(alts) + ")"


def repeat(unit: str, lo: int, hi: int | None) -> str:
    """``unit`` repeated lo..hi times (``hi=None``: unbounded)."""
    if hi is not None and hi == 0:
        return ""
    g = unit if _is_atom(unit) else f"(?:{unit})"
    if hi is None:
        return g + ("*" if lo == 0 else "+" if lo == 1 else f"{{{lo},}}")
    if lo == hi:
        return g if lo == 1 else f"{g}{{{lo}}}"
    if lo == 0 and hi == 1:
        return g + "?"
    return f"{g}{{{lo},{hi}}}"


@functools.lru_cache(maxsize=4096)  # (the translator groups the same few texts all over a schema)
def _is_atom(r: str) -> bool:
    if len(r) == 1 or (len(r) == 2 and r[0] == "\\"):
        return True
    if r.startswith("\\x") and len(r) == 4:
        return True
    if r.startswith("[") and r.endswith("]") and r.count("[") == 1 and not r.endswith("\\]"):
        return True
    if r.startswith("(") and r.endswith(")"):
        depth = 0
        for m in _PARENS(r):  # (the group that opens the text must close at its end)
            if m.group() == "(":
                depth += 1
            else:
                depth -= 1
                if depth == 0 and m.end() != len(r):
                    return False
        return True
    return False


#: A parenthesis not right after a backslash.
_PARENS = re.compile(r"(?<!\\)[()]").finditer


def group(r: str) -> str:
    return r if _is_atom(r) else f"(?:{r})"


# --------------------------------------------------------------------------------------------
# ECMA-262 patterns → regex over canonically encoded JSON string bodies
# --------------------------------------------------------------------------------------------

try:  # Python ≥ 3.11
    from re import _constants as _sre_c
    from re import _parser as _sre_parse
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _sre_c  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

_CATEGORIES = {
    _sre_c.CATEGORY_DIGIT: DIGIT,
    _sre_c.CATEGORY_NOT_DIGIT: complement(DIGIT),
    _sre_c.CATEGORY_WORD: WORD,
    _sre_c.CATEGORY_NOT_WORD: complement(WORD),
    _sre_c.CATEGORY_SPACE: SPACE,
    _sre_c.CATEGORY_NOT_SPACE: complement(SPACE),
}


class PatternInfo:
    """A translated pattern: the body regex and, when cheap to know, its length in code points."""

    __slots__ = ("regex", "min_len", "max_len", "single_class")

    def __init__(self, regex: str | None, min_len: int, max_len: int | None,
                 single_class: tuple[Ranges, int, int | None] | None = None):
        self.regex = regex
        self.min_len = min_len
        self.max_len = max_len
        # (class, lo, hi) when the whole pattern is one character class repeated lo..hi times
        self.single_class = single_class


def _refuse(what: str, pattern: str, where: str) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(
        f"pattern {pattern!r} uses {what}, which is not supported in JSON Schema patterns here; "
        "rewrite the pattern without it",
        feature="pattern",
        where=where,
    )


@functools.lru_cache(maxsize=1024)  # (a schema's patterns are read by the probe and again for rules)
def translate_pattern(pattern: str, where: str, *, max_chars: int | None = None) -> PatternInfo:
    """Translate an ECMA-262 ``pattern`` with search semantics into an encoded-body regex.

    Anchors ``^``/``$`` are honoured only at the start/end of a top-level alternative; an
    unanchored side is padded with any characters, so the result matches exactly the string
    bodies whose decoded content contains a match.

    With ``max_chars``, every unbounded repetition (the padding included) gets the largest
    common extra allowance ``{m,m+k}`` that keeps every match within ``max_chars`` code points:
    a sound restriction used for ``pattern`` + ``maxLength``. ``regex`` is ``None`` when even
    ``k = 0`` is too long.
    """
    tree = _parse_pattern(pattern, where)
    if max_chars is None:
        return _translate(tree, pattern, where, None)
    lo_k, hi_k = 0, max_chars
    if _translate(tree, pattern, where, 0).max_len > max_chars:
        return PatternInfo(None, 0, 0)
    while lo_k < hi_k:  # largest k with max_len(k) <= max_chars (max_len grows with k)
        mid = (lo_k + hi_k + 1) // 2
        if _translate(tree, pattern, where, mid).max_len <= max_chars:
            lo_k = mid
        else:
            hi_k = mid - 1
    return _translate(tree, pattern, where, lo_k)


def _parse_pattern(pattern: str, where: str):
    _prescan(pattern, where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FutureWarning about '[[' etc.: literal in ECMA too
            tree = fast_parse_tree(pattern)
    except Exception as e:  # noqa: BLE001 - re raises re.error, also OverflowError on huge repeats
        raise UnsupportedFeatureError(
            f"pattern {pattern!r} is not supported here (it does not parse as a Python-compatible "
            f"ECMA-262 regex: {e})",
            feature="pattern",
            where=where,
        ) from e
    return tree


def _bounded(seq: list, k: int) -> list:
    """``seq`` with every unbounded repetition ``{m,}`` turned into ``{m,m+k}``."""
    out = []
    for op, av in seq:
        if op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT):
            lo, hi, sub = av
            sub = _sre_parse.SubPattern(_sre_parse.State(), _bounded(list(sub), k))
            out.append((op, (lo, lo + k if hi == _sre_c.MAXREPEAT else hi, sub)))
        elif op is _sre_c.SUBPATTERN:
            g, a, d, sub = av
            out.append((op, (g, a, d, _sre_parse.SubPattern(_sre_parse.State(), _bounded(list(sub), k)))))
        elif op is _sre_c.BRANCH:
            out.append((op, (av[0], [_sre_parse.SubPattern(_sre_parse.State(), _bounded(list(b), k))
                                     for b in av[1]])))
        else:
            out.append((op, av))
    return out


def _translate(tree, pattern: str, where: str, k: int | None) -> PatternInfo:
    branches = _top_branches(list(tree), False, False)
    alts = []
    lengths: list[tuple[int, int | None]] = []
    single_class = None
    for start, end, seq in branches:
        if k is not None:
            seq = _bounded(seq, k)
        body = _emit_seq(seq, pattern, where)
        lo, hi = _width(seq, pattern, where)
        if len(branches) == 1 and start and end and k is None:
            single_class = _single_class(seq, pattern, where)
        pad = 0 if k is None else k
        if hi is not None and k is not None:
            hi += (0 if start else pad) + (0 if end else pad)
        if body is None:
            continue
        any_run = repeat(PLAIN_CHAR, 0, None if k is None else k)
        alts.append(("" if start else any_run) + body + ("" if end else any_run))
        lengths.append((lo, hi if (start and end) or k is not None else None))
    if not alts:
        return PatternInfo(None, 0, 0 if k is None else 10**9)
    min_len = min(lo for lo, _ in lengths)
    max_len = None if any(hi is None for _, hi in lengths) else max(hi for _, hi in lengths)
    return PatternInfo(alternation(alts), min_len, max_len, single_class)


_BEGIN = (_sre_c.AT, _sre_c.AT_BEGINNING)
_END = (_sre_c.AT, _sre_c.AT_END)


def _top_branches(seq: list, start: bool, end: bool) -> list[tuple[bool, bool, list]]:
    """Split a pattern into top-level alternatives with their own ``^``/``$`` anchors.

    Python's parser factors common prefixes out of alternatives (``^a$|^b`` becomes
    ``^(?:a$|b)``), so anchors are looked for through a single outer alternation/group.
    """
    if seq and seq[0] == _BEGIN:
        start, seq = True, seq[1:]
    if seq and seq[-1] == _END:
        end, seq = True, seq[:-1]
    if len(seq) == 1:
        op, av = seq[0]
        if op is _sre_c.BRANCH:
            out = []
            for b in av[1]:
                out.extend(_top_branches(list(b), start, end))
            return out
        if op is _sre_c.SUBPATTERN and not av[1] and not av[2]:
            inner = list(av[3])
            if any(x in (_BEGIN, _END) for x in inner) or (len(inner) == 1 and inner[0][0] is _sre_c.BRANCH):
                return _top_branches(inner, start, end)
    return [(start, end, seq)]


def _prescan(pattern: str, where: str) -> None:
    # Constructs Python's parser reads differently from ECMA-262 (non-"u" mode).
    if "(?" in pattern.replace("(?:", ""):
        raise _refuse("a group extension other than (?:...)", pattern, where)
    if "{," in pattern:
        raise _refuse("'{,' (a literal in ECMA-262, a quantifier in Python)", pattern, where)
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            if pattern[i + 1] in "aAZNUgkpPc":
                raise _refuse(f"the escape \\{pattern[i + 1]}", pattern, where)
            i += 2
        else:
            i += 1


def _single_class(seq, pattern, where):
    if len(seq) != 1:
        return None
    op, av = seq[0]
    if op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT):
        lo, hi, sub = av
        sub = list(sub)
        if len(sub) == 1:
            s = _atom_set(sub[0], pattern, where)
            if s is not None:
                return (s, lo, None if hi == _sre_c.MAXREPEAT else hi)
        return None
    s = _atom_set(seq[0], pattern, where)
    return None if s is None else (s, 1, 1)


def _atom_set(item, pattern, where) -> Ranges | None:
    op, av = item
    if op is _sre_c.LITERAL:
        return ((av, av),)
    if op is _sre_c.NOT_LITERAL:
        return complement(((av, av),))
    if op is _sre_c.ANY:
        return DOT
    if op is _sre_c.IN:
        return _class_set(av, pattern, where)
    return None


def _class_set(items, pattern, where) -> Ranges:
    negate = False
    acc: list[tuple[int, int]] = []
    for op, av in items:
        if op is _sre_c.NEGATE:
            negate = True
        elif op is _sre_c.LITERAL:
            acc.append((av, av))
        elif op is _sre_c.RANGE:
            acc.append(av)
        elif op is _sre_c.CATEGORY:
            if av not in _CATEGORIES:
                raise _refuse(f"class category {av}", pattern, where)
            acc.extend(_CATEGORIES[av])
        else:
            raise _refuse(f"class item {op}", pattern, where)
    s = normalize(acc)
    return complement(s) if negate else s


def _width(seq, pattern, where) -> tuple[int, int | None]:
    lo, hi = _sre_parse.SubPattern(_sre_parse.State(), list(seq)).getwidth()
    return lo, (None if hi >= _sre_c.MAXREPEAT else hi)


def regex_width(regex: str) -> tuple[int, int | None]:
    """Shortest and longest match of ``regex`` in characters (longest ``None``: unbounded)."""
    lo, hi = fast_parse_tree(regex).getwidth()
    return lo, (None if hi >= _sre_c.MAXREPEAT else hi)


def _emit_seq(seq, pattern: str, where: str) -> str | None:
    out = []
    for item in seq:
        r = _emit(item, pattern, where)
        if r is None:
            return None
        out.append(r)
    return "".join(out)


def _emit(item, pattern: str, where: str) -> str | None:
    op, av = item
    s = _atom_set(item, pattern, where)
    if s is not None:
        return encode_set(s)
    if op is _sre_c.SUBPATTERN:
        _gid, add_flags, del_flags, sub = av
        if add_flags or del_flags:
            raise _refuse("inline flags", pattern, where)
        r = _emit_seq(list(sub), pattern, where)
        return None if r is None else f"(?:{r})" if r else ""
    if op is _sre_c.BRANCH:
        alts = [r for b in av[1] if (r := _emit_seq(list(b), pattern, where)) is not None]
        return alternation(["(?:)" if a == "" else a for a in alts]) if alts else None
    if op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT):
        lo, hi, sub = av
        r = _emit_seq(list(sub), pattern, where)
        hi = None if hi == _sre_c.MAXREPEAT else hi
        if r is None:
            return "" if lo == 0 else None
        if r == "":
            return ""
        return repeat(r, lo, hi)
    if op is _sre_c.AT:
        raise _refuse("an anchor or word boundary that is not at the start/end of the pattern",
                      pattern, where)
    if op in (_sre_c.GROUPREF, _sre_c.GROUPREF_EXISTS):
        raise _refuse("a backreference", pattern, where)
    if op in (_sre_c.ASSERT, _sre_c.ASSERT_NOT):
        raise _refuse("a lookaround", pattern, where)
    raise _refuse(f"the construct {op}", pattern, where)
