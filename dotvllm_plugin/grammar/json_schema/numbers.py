"""JSON numbers as regexes: exact integer ranges and decimal ranges.

Semantics follow how a JSON document is read by Python's ``json`` module and checked by
``jsonschema``: an integer literal (no ``.``, no exponent) is an exact ``int``; anything else is
a ``float`` (rounded to nearest). Bounds are exact for integer literals; for decimal literals the
emitted range is chosen so that *every* accepted literal still satisfies the bound after rounding
to a float (monotonic rounding makes "literal ≥ shortest decimal of the bound" sufficient).
Exponents are only emitted for unbounded numbers.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from fractions import Fraction

from .text import alternation, group

INTEGER = "-?(?:0|[1-9][0-9]*)"
NUMBER = INTEGER + "(?:\\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_MAX_FRACTION_DIGITS = 15


def _digit_class(lo: int, hi: int) -> str:
    if lo == hi:
        return str(lo)
    if lo == 0 and hi == 9:
        return "[0-9]"
    return f"[{lo}-{hi}]"


def _opt_group(r: str | None) -> str:
    return group(r) if r else ""


def _same_len_range(lo: str, hi: str) -> list[str]:
    """Digit strings of equal length n with lo <= s <= hi (leading zeros allowed)."""
    if not lo:
        return [""]
    if lo[0] == hi[0]:
        return [lo[0] + _opt_group(alternation(_same_len_range(lo[1:], hi[1:])))]
    n = len(lo) - 1
    out = []
    lo_rest_min = lo[1:] == "0" * n
    hi_rest_max = hi[1:] == "9" * n
    first_full = int(lo[0]) + (0 if lo_rest_min else 1)
    last_full = int(hi[0]) - (0 if hi_rest_max else 1)
    if not lo_rest_min:
        out.append(lo[0] + _opt_group(alternation(_same_len_range(lo[1:], "9" * n))))
    if first_full <= last_full:
        out.append(_digit_class(first_full, last_full) + ("[0-9]" + (f"{{{n}}}" if n > 1 else "") if n else ""))
    if not hi_rest_max:
        out.append(hi[0] + _opt_group(alternation(_same_len_range("0" * n, hi[1:]))))
    return out


def natural_range(lo: int, hi: int | None) -> str | None:
    """Regex for decimal naturals (no leading zeros) in [lo, hi]; ``hi=None``: unbounded."""
    lo = max(lo, 0)
    if hi is not None and hi < lo:
        return None
    alts: list[str] = []
    if lo == 0:
        alts.append("0")
        lo = 1
        if hi is not None and hi < 1:
            return "0"
    top = hi if hi is not None else None
    length = len(str(lo))
    while True:
        block_lo = max(lo, 10 ** (length - 1))
        block_hi = 10**length - 1
        if top is not None and top < block_hi:
            block_hi = top
        if block_lo <= block_hi:
            if top is None and block_lo == 10 ** (length - 1):
                alts.append(f"[1-9][0-9]{{{length - 1},}}" if length > 1 else "[1-9][0-9]*")
                break
            alts.extend(_same_len_range(str(block_lo), str(block_hi)))
        if top is not None and block_hi >= top:
            break
        length += 1
    return alternation(alts)


def integer_range(lo: int | None, hi: int | None) -> str | None:
    """Regex for integer literals in [lo, hi] (either side may be unbounded)."""
    if lo is not None and hi is not None and lo > hi:
        return None
    alts = []
    if hi is None or hi >= 0:
        r = natural_range(max(lo, 0) if lo is not None else 0, hi)
        if r is not None:
            alts.append(r)
    if lo is None or lo < 0:
        # negative side: -m with m in [max(1, -hi), -lo]
        m_lo = max(1, -hi) if hi is not None else 1
        m_hi = -lo if lo is not None else None
        r = natural_range(m_lo, m_hi)
        if r is not None:
            alts.append("-" + group(r))
    return alternation(alts)


def _fraction_digits(lo: str | None, hi: str | None, nonempty: bool) -> str | None:
    """Digit strings s (the digits after '.') with 0.lo <= 0.s <= 0.hi, compared as decimals.

    ``lo``/``hi`` are digit strings without trailing zeros (None: unbounded). The result nests
    at most a few groups deep whatever the number of digits (interegular recurses on nesting).
    """
    if lo == "":
        lo = None
    if lo is None and hi is None:
        return "[0-9]+" if nonempty else "[0-9]*"
    if hi is None:
        return _frac_ge(lo)
    if lo is None:
        return _frac_le(hi, nonempty)
    if (lo + "0" * len(hi)) > (hi + "0" * len(lo)):
        return None
    p = 0
    while p < len(lo) and p < len(hi) and lo[p] == hi[p]:
        p += 1
    if p == len(hi):  # lo == hi
        return f"{hi}0*"
    lo_p = int(lo[p]) if p < len(lo) else 0
    hi_p = int(hi[p])  # hi is longer or differs here (lo <= hi, no trailing zeros)
    prefix = hi[:p]
    alts = []
    if p == len(lo) and p > 0:
        alts.append(prefix)  # s ends here: exactly 0.lo
    ge = _frac_ge(lo[p + 1:].rstrip("0")) if p < len(lo) else "[0-9]*"
    alts.append(f"{prefix}{lo_p}{_opt(ge)}")
    if hi_p - lo_p > 1:
        alts.append(f"{prefix}{_digit_class(lo_p + 1, hi_p - 1)}[0-9]*")
    le = _frac_le(hi[p + 1:], False)
    alts.append(f"{prefix}{hi_p}{_opt(le)}")
    return alternation(alts)


def _opt(r: str | None) -> str:
    if not r:
        return ""
    return group(r)


def _frac_ge(d: str) -> str:
    """Non-empty digit strings s with 0.s >= 0.d (d non-empty, no trailing zeros)."""
    if not d:
        return "[0-9]+"
    alts = [d + "[0-9]*"]
    for j, c in enumerate(d):
        if c != "9":
            alts.append(f"{d[:j]}{_digit_class(int(c) + 1, 9)}[0-9]*")
    return alternation(alts)


def _frac_le(h: str, nonempty: bool) -> str:
    """Digit strings s with 0.s <= 0.h (h without trailing zeros)."""
    alts = [("0+" if nonempty else "0*")]
    for j, c in enumerate(h):
        if c != "0":
            alts.append(f"{h[:j]}{_digit_class(0, int(c) - 1)}[0-9]*")
        alts.append(f"{h[:j + 1]}0*")
    return alternation(alts)


def _split(d: Decimal) -> tuple[int, str]:
    """Non-negative decimal → (integer part, fraction digits without trailing zeros)."""
    i = int(d)
    frac = d - i
    s = format(frac, "f")
    digits = s.split(".")[1].rstrip("0") if "." in s else ""
    return i, digits


def _unsigned_decimal(lo: Decimal, hi: Decimal | None) -> str | None:
    """Literals I.F (F non-empty, no sign) with lo <= value <= hi, exactly as decimals."""
    lo_i, lo_f = _split(lo)
    if hi is not None:
        if hi < lo:
            return None
        hi_i, hi_f = _split(hi)
    alts = []
    nat = natural_range
    if hi is not None and lo_i == hi_i:
        f = _fraction_digits(lo_f, hi_f, True)
        return None if f is None else f"{lo_i}\\.{group(f)}"
    f = _fraction_digits(lo_f, None, True)
    if f is not None:
        alts.append(f"{lo_i}\\.{group(f)}")
    mid = nat(lo_i + 1, None if hi is None else hi_i - 1)
    if mid is not None:
        alts.append(f"{group(mid)}\\.[0-9]+")
    if hi is not None:
        f = _fraction_digits(None, hi_f, True)
        if f is not None:
            alts.append(f"{hi_i}\\.{group(f)}")
    return alternation(alts)


def _float_bound(value: Fraction, *, lower: bool, exclusive: bool) -> Decimal:
    """A short decimal D such that every decimal literal beyond D rounds to a float within bound."""
    f = float(value)
    # the extreme float that satisfies the bound
    if lower:
        if Fraction(f) < value or (exclusive and Fraction(f) == value):
            f = math.nextafter(f, math.inf)
    else:
        if Fraction(f) > value or (exclusive and Fraction(f) == value):
            f = math.nextafter(f, -math.inf)
    d = Decimal(repr(f))  # shortest decimal that rounds to f: anything beyond it rounds beyond f
    with localcontext() as ctx:
        ctx.prec = 400
        q = Decimal(1).scaleb(-_MAX_FRACTION_DIGITS)
        d = d.quantize(q, rounding=ROUND_CEILING if lower else ROUND_FLOOR)
    return d


def decimal_range(lo: Fraction | None, lo_excl: bool, hi: Fraction | None, hi_excl: bool) -> str | None:
    """Literals with a fraction part (no exponent) whose float value lies within the bounds."""
    dlo = _float_bound(lo, lower=True, exclusive=lo_excl) if lo is not None else None
    dhi = _float_bound(hi, lower=False, exclusive=hi_excl) if hi is not None else None
    if dlo is not None and dhi is not None and dlo > dhi:
        return None
    alts = []
    if dhi is None or dhi >= 0:
        r = _unsigned_decimal(max(dlo, Decimal(0)) if dlo is not None else Decimal(0), dhi)
        if r is not None:
            alts.append(r)
    if dlo is None or dlo < 0:
        m_lo = max(-dhi, Decimal(0)) if dhi is not None else Decimal(0)
        m_hi = -dlo if dlo is not None else None
        r = _unsigned_decimal(m_lo, m_hi)
        if r is not None:
            alts.append("-" + group(r))
    return alternation(alts)


def number_range(lo: Fraction | None, lo_excl: bool, hi: Fraction | None, hi_excl: bool,
                 *, integer_only: bool) -> str | None:
    """Regex for JSON numbers within the bounds (integer literals exact; decimals float-safe)."""
    ilo = None
    if lo is not None:
        ilo = math.floor(lo) + 1 if (lo_excl and lo.denominator == 1) else math.ceil(lo)
    ihi = None
    if hi is not None:
        ihi = math.ceil(hi) - 1 if (hi_excl and hi.denominator == 1) else math.floor(hi)
    alts = []
    r = integer_range(ilo, ihi)
    if r is not None:
        alts.append(r)
    if not integer_only:
        if lo is None and hi is None:
            return NUMBER
        r = decimal_range(lo, lo_excl, hi, hi_excl)
        if r is not None:
            alts.append(r)
    return alternation(alts)
