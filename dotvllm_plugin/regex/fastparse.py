"""Python's own parse of a regex, faster for the text this package writes.

:func:`parse` returns what ``re._parser.parse`` returns — the same tree, item for item, with the
same rewrites (a prefix shared by all branches moved out of the alternation, single-item branches
joined into one class, a quantified non-capturing group unwrapped) — for a subset of the syntax:
literals, escapes of punctuation, ``\\xHH`` ``\\uHHHH`` ``\\n``-style escapes and ``\\d``-style
classes, character classes, ``(?:...)`` groups, alternation, greedy quantifiers, ``.`` ``^`` ``$``.
Runs of literal characters are read with one ``re`` match instead of one tokenizer call per
character. Anything else (capturing groups, flags, lookarounds, lazy quantifiers, back
references, any syntax error, and the constructs ``re`` warns about) hands the whole text to
``re._parser.parse``, so errors and rare constructs read exactly as Python reads them.

The translator's regexes (JSON Schema, grammar mode) are long and almost entirely this subset; on
them this reader is about 2.4 times as fast as Python's parser. The C extension reads the same subset
the same way (``_cwalk.regex_parse``, used while :data:`USE_C_PARSE`), about 4.5 times as fast again;
the Python reader below is its reference and stands in without the extension.
"""

from __future__ import annotations

import re
import sys

__all__ = ["fast_parse", "parse"]

#: Read with the C extension where it is built (else with :class:`_Parser`).
USE_C_PARSE = True

if sys.version_info >= (3, 11):
    import re._constants as C
    import re._parser as P

    _FAST = True
else:  # pragma: no cover - Python 3.10: its parser as is (the subset is checked against 3.11's)
    import sre_constants as C
    import sre_parse as P

    _FAST = False

_LITERAL, _IN, _RANGE, _NEGATE = C.LITERAL, C.IN, C.RANGE, C.NEGATE
_SUBPATTERN, _BRANCH, _MAX_REPEAT = C.SUBPATTERN, C.BRANCH, C.MAX_REPEAT
_REPEATS = (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", C.MAX_REPEAT))
_SubPattern = P.SubPattern
_MAXREPEAT = C.MAXREPEAT

#: A run of characters that ``re`` reads as literals one by one (``]`` and ``}`` included).
_PLAIN = re.compile(r"[^.\\\[{()*+?^$|]+").match
#: ``{m}``, ``{m,}``, ``{,n}``, ``{m,n}`` with ASCII digits (``{}`` is a literal brace).
_BRACES = re.compile(r"\{([0-9]*)(?:(,)([0-9]*))?\}").match
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPES = P.ESCAPES  # \a \b \f \n \r \t \v \\ (in a class; outside one \b is a boundary)
_CATEGORIES = {k: v for k, v in P.CATEGORIES.items() if v[0] is _IN}  # \d \D \s \S \w \W
_ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LIT = [(_LITERAL, cp) for cp in range(0x80)]


class _Literals(dict):
    """A character → its literal item: the ASCII ones and the first private code points of Plane
    16 (the JSON Schema translator's boundary and units: in most of its texts) held, any other
    made when asked for (not kept)."""

    def __missing__(self, c: str) -> tuple:
        return (_LITERAL, ord(c))


_LITERALS = _Literals({chr(cp): (_LITERAL, cp) for cp in (*range(0x80), *range(0x100000, 0x100004))})


try:
    from .. import _cwalk
except ImportError:  # built without a C compiler: the Python reader
    _cwalk = None
if _cwalk is not None and _FAST:
    _cwalk.regex_setup(
        P.SubPattern, P.State,
        (C.LITERAL, C.NOT_LITERAL, C.IN, C.RANGE, C.NEGATE, C.SUBPATTERN, C.BRANCH, C.MAX_REPEAT, C.MIN_REPEAT,
         C.POSSESSIVE_REPEAT, C.ANY, C.AT, C.AT_BEGINNING, C.AT_END, C.MAXREPEAT, C.SRE_FLAG_UNICODE),
        tuple(P.CATEGORIES[e] for e in ("\\d", "\\D", "\\s", "\\S", "\\w", "\\W")),
    )


class _Fallback(Exception):
    """Outside the subset: Python's parser reads the text."""


def parse(text: str):
    """``re._parser.parse(text)`` (same tree, same errors)."""
    tree = fast_parse(text)
    return P.parse(text) if tree is None else tree


def fast_parse(text: str):
    """The tree where ``text`` lies in the subset, else None."""
    if not _FAST:  # pragma: no cover
        return None
    if USE_C_PARSE and _cwalk is not None:
        return _cwalk.regex_parse(text)
    try:
        return _Parser(text).run()
    except (_Fallback, RecursionError, IndexError, ValueError, OverflowError):
        return None


class _Parser:
    __slots__ = ("t", "n", "state")

    def __init__(self, text: str):
        self.t = text
        self.n = len(text)
        state = P.State()
        state.flags = 0
        state.str = text
        self.state = state

    def run(self):
        p, i = self.sub(0)
        if i != self.n:
            raise _Fallback  # unbalanced parenthesis
        # (as re._parser.fix_flags does for a str pattern without flags)
        p.state.flags = C.SRE_FLAG_UNICODE
        return p

    def sub(self, i: int):
        """An alternation ``a|b|c`` up to ``)`` or the end: ``re._parser._parse_sub``."""
        t, n = self.t, self.n
        items = []
        while True:
            seq, i = self.seq(i)
            items.append(seq)
            if i < n and t[i] == "|":
                i += 1
                continue
            break
        if len(items) == 1:
            return items[0], i
        subpattern = _SubPattern(self.state)
        # a common first item moves out of the branches (read through their data lists: a
        # SubPattern's len and [] are Python calls)
        branches = [item.data for item in items]
        while True:
            prefix = None
            for data in branches:
                if not data:
                    break
                if prefix is None:
                    prefix = data[0]
                elif data[0] != prefix:
                    break
            else:
                for data in branches:
                    del data[0]
                subpattern.data.append(prefix)
                continue
            break
        # single literals or classes: one class
        set_ = []
        for data in branches:
            if len(data) != 1:
                break
            op, av = data[0]
            if op is _LITERAL:
                set_.append((op, av))
            elif op is _IN and av[0][0] is not _NEGATE:
                set_.extend(av)
            else:
                break
        else:
            subpattern.data.append((_IN, list(dict.fromkeys(set_))))
            return subpattern, i
        subpattern.data.append((_BRANCH, (None, items)))
        return subpattern, i

    def seq(self, i: int):
        """Items up to ``|``, ``)`` or the end: ``re._parser._parse``."""
        t, n = self.t, self.n
        data: list = []
        append = data.append
        groups = False  # an unquantified (?:...) is spliced into the sequence at the end, as re does
        while i < n:
            m = _PLAIN(t, i)
            if m is not None:
                j = m.end()
                data += map(_LITERALS.__getitem__, t[i:j])
                i = j
                if i == n:
                    break
                # (the run ends before syntax: read it now, without matching again)
            c = t[i]
            if c == "|" or c == ")":
                break
            if c == "\\":
                item, i = self.escape(i)
                append(item)
            elif c == "[":
                item, i = self.char_class(i)
                append(item)
            elif c == "(":
                if t[i + 1 : i + 3] != "?:":
                    raise _Fallback  # capturing groups, flags, lookarounds, ...
                p, i = self.sub(i + 3)
                if i >= n:
                    raise _Fallback  # missing )
                i += 1
                append((_SUBPATTERN, (None, 0, 0, p)))
                groups = True
            elif c == ".":
                append((C.ANY, None))
                i += 1
            elif c == "^":
                append((C.AT, C.AT_BEGINNING))
                i += 1
            elif c == "$":
                append((C.AT, C.AT_END))
                i += 1
            else:  # ? * + {
                if c == "{":
                    if t[i + 1 : i + 2] == "}":
                        append(_LIT[0x7B])
                        i += 1
                        continue
                    b = _BRACES(t, i)
                    if b is None:
                        append(_LIT[0x7B])  # not a quantifier: a literal brace, the rest read on
                        i += 1
                        continue
                    lo_s, comma, hi_s = b.groups()
                    lo = int(lo_s) if lo_s else 0
                    hi = (int(hi_s) if hi_s else _MAXREPEAT) if comma else lo
                    if lo >= _MAXREPEAT or (hi_s and (hi >= _MAXREPEAT or hi < lo)):
                        raise _Fallback  # (re: an upper bound written as MAXREPEAT is too large too)
                    i = b.end()
                elif c == "?":
                    lo, hi = 0, 1
                    i += 1
                elif c == "*":
                    lo, hi = 0, _MAXREPEAT
                    i += 1
                else:
                    lo, hi = 1, _MAXREPEAT
                    i += 1
                if not data:
                    raise _Fallback  # nothing to repeat
                item = data[-1]
                op = item[0]
                if op is C.AT or op in _REPEATS:
                    raise _Fallback  # nothing to repeat / multiple repeat
                if op is _SUBPATTERN and item[1][0] is None and not item[1][1] and not item[1][2]:
                    body = item[1][3]
                else:
                    body = _SubPattern(self.state, [item])
                if i < n and (t[i] == "?" or t[i] == "+"):
                    raise _Fallback  # lazy or possessive
                data[-1] = (_MAX_REPEAT, (lo, hi, body))
        if groups:
            flat: list = []
            for item in data:
                if item[0] is _SUBPATTERN:
                    flat.extend(item[1][3].data)
                else:
                    flat.append(item)
            data = flat
        return _SubPattern(self.state, data), i

    def escape(self, i: int):
        """An escape outside a class: ``re._parser._escape`` for the subset."""
        t = self.t
        e = t[i : i + 2]
        code = _CATEGORIES.get(e)
        if code is not None:
            return code, i + 2
        if e == "\\b":
            raise _Fallback  # a word boundary
        return self._escape_common(e, i)

    def _escape_common(self, e: str, i: int):
        code = _ESCAPES.get(e)
        if code is not None:
            return code, i + 2
        if len(e) != 2:
            raise _Fallback  # a backslash at the end
        c = e[1]
        if c == "x" or c == "u":
            k = 2 if c == "x" else 4
            digits = self.t[i + 2 : i + 2 + k]
            if len(digits) != k or not _HEX.issuperset(digits):
                raise _Fallback
            cp = int(digits, 16)
            if c == "u" and 0xD800 <= cp <= 0xDFFF:
                raise _Fallback  # (re reads a lone surrogate; left to it)
            return (_LITERAL, cp), i + 2 + k
        if c in _ASCII_LETTERS or c.isdigit():
            raise _Fallback  # \U \N \0 octal, group references, unknown letters
        return ((_LIT[ord(c)] if ord(c) < 0x80 else (_LITERAL, ord(c))), i + 2)

    def class_escape(self, i: int):
        e = self.t[i : i + 2]
        code = _CATEGORIES.get(e)
        if code is not None:
            return code, i + 2
        return self._escape_common(e, i)

    def char_class(self, i: int):
        """``[...]``: ``re._parser``'s set reading."""
        t, n = self.t, self.n
        i += 1
        if i < n and t[i] == "[":
            raise _Fallback  # (re warns: a possible nested set)
        negate = i < n and t[i] == "^"
        if negate:
            i += 1
        set_: list = []
        append = set_.append
        while True:
            if i >= n:
                raise _Fallback  # unterminated
            c = t[i]
            if c == "]" and set_:
                i += 1
                break
            if c == "\\":
                code1, i = self.class_escape(i)
            else:
                if set_ and c in "-&~|" and t[i + 1 : i + 2] == c:
                    raise _Fallback  # (re warns: a possible set operation)
                code1 = _LIT[ord(c)] if ord(c) < 0x80 else (_LITERAL, ord(c))
                i += 1
            if i < n and t[i] == "-":
                i += 1
                if i >= n:
                    raise _Fallback
                that = t[i]
                if that == "]":
                    if code1[0] is _IN:
                        code1 = code1[1][0]
                    append(code1)
                    append(_LIT[0x2D])
                    i += 1
                    break
                if that == "\\":
                    code2, i = self.class_escape(i)
                else:
                    if that == "-":
                        raise _Fallback  # (re warns)
                    code2 = (_LITERAL, ord(that))
                    i += 1
                if code1[0] is not _LITERAL or code2[0] is not _LITERAL or code2[1] < code1[1]:
                    raise _Fallback  # a bad range
                append((_RANGE, (code1[1], code2[1])))
            else:
                if code1[0] is _IN:
                    code1 = code1[1][0]
                append(code1)
        set_ = list(dict.fromkeys(set_))
        if len(set_) == 1 and set_[0][0] is _LITERAL:
            return ((C.NOT_LITERAL, set_[0][1]) if negate else set_[0]), i
        if negate:
            set_.insert(0, (_NEGATE, None))
        return (_IN, set_), i
