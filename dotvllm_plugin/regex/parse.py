"""Regex syntax: Python ``re`` dialect, read by Python's own parser; refusals with positions.

Full-match semantics. The syntax is exactly ``re``'s (``re._parser``): ``{}``/``{ 2}``/a stray
``{`` are literal text, ``{,3}`` is ``{0,3}``, octal and ``\\N{...}`` escapes, ``(?x)`` comments.
Character sets are ``re``'s on a ``str`` pattern (see :mod:`.glushkov`): ``\\D \\s \\S \\W``
Unicode, ASCII under ``(?a)``; ``(?i)`` folds case as ``re`` does; ``.`` excludes ``\\n`` unless
``(?s)``. One deliberate, documented narrowing, sound (it only removes strings): where ``\\w`` or
``\\d`` adds characters (``\\w``/``\\d``, or ``\\W``/``\\D`` in a negated class) it adds only
``[0-9A-Z_a-z]`` / ``[0-9]`` unless the pattern starts with ``(?u)`` (or inside ``(?u:...)``):
Unicode ``\\w`` costs ~300 DFA states per occurrence and Unicode ``\\d`` multiplies a date
pattern's index by four (docs/engine.md has the measurements). Refused, with the position: anchors ``^ $ \\A \\Z``,
lookarounds, atomic groups and possessive quantifiers, backreferences, word boundaries,
conditionals (not regular, or meaningless under full match), surrogate escapes (not UTF-8), and
POSIX-like ``[[:alpha:]]`` (which ``re`` reads as literal characters). ``(?L)`` is a syntax error
on ``str`` patterns, as in ``re``.
"""

from __future__ import annotations

import re
import warnings

from ..errors import RegexSyntaxError, UnsupportedFeatureError
from . import fastparse
from .charsets import MAX_CP, SURROGATES

__all__ = ["check_regex", "checked", "clip", "explicit_unicode", "parse_interegular", "parse_tree", "refusal", "sre_parse"]

# Textual constructs: (feature named in the message, kind). The kind is what the parse tree says
# (see glushkov.Refused): the text is only scanned to find the position of a refused construct.
_UNSUPPORTED_GROUPS = {
    "(?=": ("lookahead", "lookaround"),
    "(?!": ("negative lookahead", "lookaround"),
    "(?<=": ("lookbehind", "lookaround"),
    "(?<!": ("negative lookbehind", "lookaround"),
    "(?>": ("atomic group", "atomic group"),
    "(?(": ("conditional group", "conditional"),
    "(?P=": ("named backreference", "backreference"),
}
_UNSUPPORTED_ESCAPES = {
    "b": ("word boundary \\b", "word boundary"),
    "B": ("non-word-boundary \\B", "word boundary"),
    "A": ("anchor \\A", "anchor"),
    "Z": ("anchor \\Z", "anchor"),
    "z": ("anchor \\z", "anchor"),
    "G": ("anchor \\G", "anchor"),
    "p": ("unicode property \\p{...}", "property"),
    "P": ("unicode property \\P{...}", "property"),
    "N": ("named character \\N{...}", "named character"),
    "k": ("backreference \\k<...>", "backreference"),
}
#: Refused on the text alone, whatever the parse tree says.
_ALWAYS = frozenset({"surrogate", "posix class"})


def _unsupported(pattern: str, feature: str, pos: int | None) -> UnsupportedFeatureError:
    at = "" if pos is None else f" at position {pos}"
    return UnsupportedFeatureError(
        f"unsupported regex feature: {feature}{at} in {clip(pattern)}; "
        "only regular constructs are supported (no anchors, lookarounds, backreferences, "
        "word boundaries, atomic groups or possessive quantifiers)",
        feature=feature,
        where=None if pos is None else f"position {pos}",
    )


def clip(pattern: str, n: int = 120) -> str:
    return repr(pattern if len(pattern) <= n else pattern[:n] + "…")


def _preprocess(pattern: str, kinds=None) -> str:
    """Refuse non-regular constructs and rewrite ``\\uXXXX`` escapes for interegular.

    Walks the pattern once, tracking escapes and character classes, so that a ``^`` inside a class
    or an escaped parenthesis is not mistaken for a construct. With ``kinds``, only constructs of
    those kinds (and of :data:`_ALWAYS`) are refused: the parse tree said which are really there
    (the text scan alone would misread e.g. ``a{}+``, ``\\101`` or a ``(?x)`` comment).
    """

    def refuse(kind: str) -> bool:
        return kinds is None or kind in kinds or kind in _ALWAYS

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
            if e.isdigit() and e != "0" and not in_class and refuse("backreference"):
                raise _unsupported(pattern, f"backreference \\{e}", i)
            if e in _UNSUPPORTED_ESCAPES and not (in_class and e == "b") and refuse(_UNSUPPORTED_ESCAPES[e][1]):
                raise _unsupported(pattern, _UNSUPPORTED_ESCAPES[e][0], i)
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if c == "]" and i > class_start + 1 and not (i == class_start + 2 and pattern[class_start + 1] == "^"):
                in_class = False
            elif c == "[" and i + 1 < n and pattern[i + 1] == ":" and refuse("posix class"):
                raise _unsupported(pattern, "POSIX class [:...:] (re would read it as literal characters)", i)
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            class_start = i
        elif c == "(":
            for prefix, (feature, kind) in _UNSUPPORTED_GROUPS.items():
                if pattern.startswith(prefix, i) and refuse(kind):
                    raise _unsupported(pattern, feature, i)
        elif c in "^$" and refuse("anchor"):
            raise _unsupported(pattern, f"anchor {c!r}", i)
        elif c in "*+?}" and i + 1 < n and pattern[i + 1] == "+" and refuse("possessive quantifier"):
            raise _unsupported(pattern, "possessive quantifier", i + 1)
        out.append(c)
        i += 1
    return "".join(out)


def sre_parse(pattern: str):
    """Python's own regex parse (no compilation): precise syntax errors with positions. Read by
    :func:`.fastparse.parse`, which hands anything outside its subset to Python's parser."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "possible nested set": re reads it literally
        return fastparse.parse(pattern)


def parse_tree(pattern: str, check_text: bool = True):
    """Python's parse tree of ``pattern``: the one reading of the syntax (``re``'s own).

    Syntax errors become :class:`RegexSyntaxError` with re's position. ``check_text`` also refuses
    the constructs refused on the text alone (surrogate escapes, POSIX-like ``[:...:]``); regexes
    this package generates skip it.
    """
    if not isinstance(pattern, str):
        raise TypeError(f"a regex must be a str, got {type(pattern).__name__}")
    try:
        tree = sre_parse(pattern)
    except re.error as e:
        pos = e.pos if e.pos is not None else None
        raise RegexSyntaxError(
            f"invalid regex: {e.msg} at position {pos} in {clip(pattern)}", pattern=pattern, position=pos
        ) from e
    except (OverflowError, ValueError) as e:  # ValueError: e.g. (?a)(?u), "flags are incompatible"
        raise RegexSyntaxError(f"invalid regex: {e} in {clip(pattern)}", pattern=pattern) from e
    except RecursionError as e:
        raise UnsupportedFeatureError(
            f"regex nests too deeply: {clip(pattern)}", feature="nesting depth", where=None
        ) from e
    if check_text:
        _preprocess(pattern, kinds=frozenset())
    return tree


_LEADING_FLAGS = re.compile(r"(?:\(\?[aiLmsux]+\))+")


def explicit_unicode(pattern: str) -> bool:
    """Whether the pattern starts with a global flag group that names ``u`` (``(?u)``, ``(?iu)``)."""
    m = _LEADING_FLAGS.match(pattern)
    return bool(m and "u" in m.group())


def refusal(pattern: str, kind: str) -> UnsupportedFeatureError:
    """The error for a construct of ``kind`` the parse tree holds, with its position in the text."""
    try:
        _preprocess(pattern, kinds=frozenset({kind}))
    except UnsupportedFeatureError as e:
        return e
    return _unsupported(pattern, kind, None)


def validate_tree(tree, explicit_u: bool = False) -> None:
    """Walk the parse tree as the builder does, without building: raises ``Refused`` for the
    constructs the builder refuses (cheap; for :func:`check_regex`)."""
    from .glushkov import _SRE, Refused, _combine_flags, _sre_flags, _EXPLICIT_U, _BOUNDARY, _REFUSED_OPS

    def walk(items, flags):
        for op, av in items:
            if op is _SRE.SUBPATTERN:
                walk(av[3], _combine_flags(flags, av[1], av[2]))
            elif op is _SRE.BRANCH:
                for alt in av[1]:
                    walk(alt, flags)
            elif op is _SRE.MAX_REPEAT or op is _SRE.MIN_REPEAT:
                walk(av[2], flags)
            elif op in (_SRE.LITERAL, _SRE.NOT_LITERAL, _SRE.ANY, _SRE.IN):
                continue
            elif str(op) == "AT" and str(av) in _BOUNDARY:
                raise Refused("word boundary")
            else:
                raise Refused(_REFUSED_OPS.get(str(op), str(op)))

    walk(tree, _sre_flags(tree.state.flags) | (_EXPLICIT_U if explicit_u else 0))


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
    """Cheap syntax and feature check; raises a :class:`~dotvllm_plugin.errors.GrammarError`.

    The same checks as :func:`dotvllm_plugin.regex.regex_to_dfa` (Python's parser, then the
    refusals), without building the automaton.
    """
    from .glushkov import Refused

    tree = parse_tree(pattern)
    try:
        validate_tree(tree, explicit_unicode(pattern))
    except Refused as e:
        raise refusal(pattern, e.args[0]) from None
