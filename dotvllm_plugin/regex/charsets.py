"""Code-point sets: ranges of characters, complements, surrogates, case folding, and their UTF-8
byte-range sequences. Pure Python; shared by the DFA builders and the JSON Schema text module."""

from __future__ import annotations

SURROGATES = (0xD800, 0xDFFF)
MAX_CP = 0x10FFFF

__all__ = [
    "MAX_CP",
    "SURROGATES",
    "case_fold_ranges",
    "char_class_ranges",
    "complement",
    "merge_ranges",
    "ranges_of",
    "remove_surrogates",
    "utf8_sequences",
]


def ranges_of(chars) -> list[tuple[int, int]]:
    cps = sorted(ord(c) for c in chars)
    out: list[tuple[int, int]] = []
    for cp in cps:
        if out and out[-1][1] + 1 == cp:
            out[-1] = (out[-1][0], cp)
        else:
            out.append((cp, cp))
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
