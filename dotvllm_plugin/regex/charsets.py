"""Code-point sets: ranges of characters, complements, surrogates, case folding, and their UTF-8
byte-range sequences. Pure Python; shared by the DFA builders and the JSON Schema text module."""

from __future__ import annotations

SURROGATES = (0xD800, 0xDFFF)
MAX_CP = 0x10FFFF

__all__ = [
    "MAX_CP",
    "SURROGATES",
    "case_fold_ranges",
    "case_sensitive_chars",
    "category_ranges",
    "char_class_ranges",
    "code_ranges",
    "complement",
    "intersect_ranges",
    "matched_ranges",
    "merge_ranges",
    "ranges_of",
    "remove_surrogates",
    "utf8_sequences",
]


def ranges_of(chars) -> list[tuple[int, int]]:
    return code_ranges(sorted({ord(c) for c in chars}))


def code_ranges(codes: list[int]) -> list[tuple[int, int]]:
    """The runs of consecutive code points in ``codes`` (ascending, distinct) as ranges."""
    if not codes:
        return []
    out: list[tuple[int, int]] = []
    lo = codes[0]
    for a, b in zip(codes, codes[1:]):
        if b != a + 1:
            out.append((lo, a))
            lo = b
    out.append((lo, codes[-1]))
    return out


def merge_ranges(ranges) -> tuple[tuple[int, int], ...]:
    """Sorted, disjoint, non-adjacent code-point ranges covering ``ranges`` (empty ones dropped)."""
    out: list[list[int]] = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((a, b) for a, b in out)


def complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    lo = 0
    for a, b in ranges:
        if a > lo:
            out.append((lo, a - 1))
        lo = b + 1
    if lo <= MAX_CP:
        out.append((lo, MAX_CP))
    return out


def remove_surrogates(ranges):
    out = []
    for a, b in ranges:
        if b < SURROGATES[0] or a > SURROGATES[1]:
            out.append((a, b))
            continue
        if a < SURROGATES[0]:
            out.append((a, SURROGATES[0] - 1))
        if b > SURROGATES[1]:
            out.append((SURROGATES[1] + 1, b))
    return out


_UTF8_BOUNDS = ((0x0, 0x7F), (0x80, 0x7FF), (0x800, 0xFFFF), (0x10000, 0x10FFFF))


def utf8_sequences(lo: int, hi: int) -> list[tuple[tuple[int, int], ...]]:
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


def char_class_ranges(chars, negated: bool) -> tuple:
    """Code-point ranges of a character class, without surrogates (not encodable in UTF-8)."""
    ranges = ranges_of(chars)
    if negated:
        ranges = complement(ranges)
    return tuple(remove_surrogates(ranges))


def case_fold_ranges(chars) -> frozenset:
    out = set(chars)
    for c in chars:
        for v in (c.lower(), c.upper()):
            if len(v) == 1:
                out.add(v)
    return frozenset(out)


# -- Python ``re`` character semantics ------------------------------------------------------------
# The sets below are computed with ``re`` itself, once per process, so that they are exactly what
# the running Python's ``re`` matches (its Unicode database included).

_ALL_CHARS: str | None = None


def _all_chars() -> str:
    """Every Unicode scalar value, in order (surrogates left out)."""
    global _ALL_CHARS
    if _ALL_CHARS is None:
        _ALL_CHARS = "".join(map(chr, range(SURROGATES[0]))) + "".join(
            map(chr, range(SURROGATES[1] + 1, MAX_CP + 1))
        )
    return _ALL_CHARS


def _cp_of_index(i: int) -> int:
    return i if i < SURROGATES[0] else i + (SURROGATES[1] - SURROGATES[0] + 1)


def matched_ranges(compiled, text: str | None = None) -> tuple:
    """Code-point ranges of the single characters ``compiled`` (a one-character ``re`` pattern)
    matches, among ``text`` (default: every scalar value, in order)."""
    if text is None:
        out = []
        for m in compiled.finditer(_all_chars()):
            out.append((_cp_of_index(m.start()), _cp_of_index(m.start())))
        return merge_ranges(out)
    return merge_ranges((ord(m.group()), ord(m.group())) for m in compiled.finditer(text))


_CATEGORY_CACHE: dict = {}


def category_ranges(escape: str, ascii_only: bool) -> tuple:
    """Ranges of ``\\d \\D \\w \\W \\s \\S`` (``escape`` is the letter) as ``re`` reads them on a
    ``str`` pattern: Unicode by default, ASCII with the ``re.ASCII`` flag."""
    key = (escape, ascii_only)
    got = _CATEGORY_CACHE.get(key)
    if got is None:
        import re

        pattern = re.compile(("(?a)" if ascii_only else "(?u)") + "\\" + escape + "+")
        out = [
            (_cp_of_index(m.start()), _cp_of_index(m.end() - 1)) for m in pattern.finditer(_all_chars())
        ]
        got = _CATEGORY_CACHE[key] = tuple(remove_surrogates(merge_ranges(out)))
    return got


_CASED: str | None = None


def case_sensitive_chars() -> str:
    """The characters whose matching can change under ``re.IGNORECASE``: every character with a
    simple lower- or uppercase mapping, their images, and ``re``'s extra case equivalences.
    Every other character matches case-insensitively exactly when it matches case-sensitively."""
    global _CASED
    if _CASED is None:
        import _sre

        out = set()
        for c in range(MAX_CP + 1):
            if _sre.unicode_iscased(c):  # re's extra equivalences (e.g. 'ſ'~'s') are all cased
                out.add(c)
                out.add(_sre.unicode_tolower(c))
                up = chr(c).upper()
                if len(up) == 1:
                    out.add(ord(up))
        _CASED = "".join(chr(c) for c in sorted(out) if not SURROGATES[0] <= c <= SURROGATES[1])
    return _CASED


def intersect_ranges(a, b) -> tuple:
    """Intersection of two sorted, disjoint range lists."""
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)
