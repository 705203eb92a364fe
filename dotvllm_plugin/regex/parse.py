"""Regex syntax: Python ``re`` dialect check, refusal of non-regular constructs, parsing.

Syntax is Python ``re`` as parsed by ``interegular``. ``\\d``, ``\\w`` and ``\\s`` are ASCII-only
(``[0-9]``, ``[A-Za-z0-9_]``, ``[ \\t\\n\\r\\f\\v]``), as in JSON Schema's ECMA-262 dialect and unlike
Python's ``re`` on ``str``. ``.`` matches any character except ``\\n``. ``\\uXXXX`` and
``\\UXXXXXXXX`` escapes are accepted. Refused, with the position: anchors, lookarounds, atomic
groups and possessive quantifiers, backreferences, word boundaries, conditionals, ``\\p{..}``.
"""

from __future__ import annotations

import re

from ..errors import RegexSyntaxError, UnsupportedFeatureError
from .charsets import MAX_CP, SURROGATES

__all__ = ["check_regex", "checked", "clip", "parse_interegular", "sre_parse"]

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
        f"unsupported regex feature: {feature} at position {pos} in {clip(pattern)}; "
        "only regular constructs are supported (no anchors, lookarounds, backreferences, "
        "word boundaries, atomic groups or possessive quantifiers)",
        feature=feature,
        where=f"position {pos}",
    )


def clip(pattern: str, n: int = 120) -> str:
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
                    f"regex ends with a lone backslash at position {i} in {clip(pattern)}", pattern=pattern, position=i
                )
            e = pattern[i + 1]
            if e in "uU":
                width = 4 if e == "u" else 8
                digits = pattern[i + 2 : i + 2 + width]
                if len(digits) != width or not all(ch in "0123456789abcdefABCDEF" for ch in digits):
                    raise RegexSyntaxError(
                        f"bad \\{e} escape at position {i} in {clip(pattern)}: expected {width} hex digits",
                        pattern=pattern,
                        position=i,
                    )
                cp = int(digits, 16)
                if cp > MAX_CP or SURROGATES[0] <= cp <= SURROGATES[1]:
                    raise UnsupportedFeatureError(
                        f"escape \\{e}{digits} at position {i} is not a Unicode scalar value (surrogate or out "
                        f"of range) in {clip(pattern)}; UTF-8 output cannot contain it",
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


def sre_parse(pattern: str):
    """Python's own regex parser (no compilation): precise syntax errors with positions."""
    try:
        import re._parser as sre_parse  # Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_parse
    return sre_parse.parse(pattern)


def checked(pattern: str, check_syntax: bool = True) -> str:
    """Syntax check with Python's ``re`` (precise errors), refusals, and the rewrite for parsing."""
    if not isinstance(pattern, str):
        raise TypeError(f"a regex must be a str, got {type(pattern).__name__}")
    try:
        if check_syntax:
            sre_parse(pattern)
    except re.error as e:
        pos = e.pos if e.pos is not None else None
        raise RegexSyntaxError(
            f"invalid regex: {e.msg} at position {pos} in {clip(pattern)}", pattern=pattern, position=pos
        ) from e
    except (OverflowError, RecursionError) as e:
        raise RegexSyntaxError(f"invalid regex: {e} in {clip(pattern)}", pattern=pattern) from e
    return _preprocess(pattern)


def parse_interegular(pattern: str, check_syntax: bool = True):
    """Parse with Python's ``re`` (for precise syntax errors) and interegular (for the FSM)."""
    rewritten = checked(pattern, check_syntax)
    import interegular
    from interegular.patterns import InvalidSyntax, Unsupported

    try:
        return interegular.parse_pattern(rewritten)
    except Unsupported as e:
        raise UnsupportedFeatureError(
            f"unsupported regex feature in {clip(pattern)}: {e}", feature=str(e), where=None
        ) from e
    except (InvalidSyntax, ValueError) as e:
        raise RegexSyntaxError(f"invalid regex {clip(pattern)}: {e or 'syntax error'}", pattern=pattern) from e
    except RecursionError as e:
        raise UnsupportedFeatureError(
            f"regex nests too deeply: {clip(pattern)}", feature="nesting depth", where=None
        ) from e


def check_regex(pattern: str) -> None:
    """Cheap syntax and feature check; raises a :class:`~dotvllm_plugin.errors.GrammarError`."""
    parse_interegular(pattern)
