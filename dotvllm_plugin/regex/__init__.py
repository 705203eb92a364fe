"""Regular expression → byte-level DFA. Knows nothing of tokens.

The pipeline (:func:`regex_to_dfa`): :mod:`.parse` checks the pattern (Python ``re`` dialect,
non-regular constructs refused with their position), :mod:`.glushkov` builds the automaton from
the parse tree over the code-point sets of :mod:`.charsets` (interegular's own FSM algebra is the
fallback and the reference), and :mod:`.automaton` turns characters into UTF-8 byte paths, trims
and minimises. The hot loops are in the C extension ``dotvllm_plugin._cwalk`` when it is built.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import RegexSyntaxError, UnsupportedFeatureError
from . import automaton
from .automaton import MAX_DFA_STATES, Builder, ByteDFA, byte_classes, byte_dfa_from_fsm, reachable, trim
from .charsets import char_class_ranges, utf8_sequences
from .glushkov import _SRE, Refused, sre_glushkov_dfa
from .parse import check_regex, clip, explicit_unicode, parse_interegular, parse_tree, refusal, validate_tree

__all__ = ["MAX_DFA_STATES", "ByteDFA", "byte_classes", "check_regex", "reachable", "regex_to_dfa"]


def regex_to_dfa(
    pattern: str, *, max_states: int = MAX_DFA_STATES, fast: bool = True, check_syntax: bool = True, tree=None
) -> ByteDFA:
    """Compile ``pattern`` (full-match semantics, Python ``re`` dialect) into a trimmed byte DFA.

    The pattern is read by Python's own parser, and every character set is the one ``re``
    matches (see :mod:`.parse` for the one deliberate narrowing, ``\\w``, and the refusals).
    ``fast=False`` builds with interegular's parser and FSM algebra instead: a reference for the
    tests, for the plain constructs only (it refuses ``\\d \\w \\s``-style classes outside ``(?a)``
    and literal braces, which interegular reads differently from ``re``).
    ``check_syntax=False`` skips the text-only checks, for regexes this package generated itself.
    ``tree``: ``pattern``'s parse tree (``re._parser.parse``) where the caller already has it (a
    generated regex: the text checks are skipped too). A pattern written as plain text (a JSON
    key, escaped punctuation) is not parsed at all: its automaton is the chain of its bytes.
    """
    if fast and tree is None:
        text = _plain_text(pattern)
        if text is not None and len(text) < max_states:
            return _chain(text)
    if tree is None or not fast:
        tree = parse_tree(pattern, check_text=check_syntax)
    if fast:
        literal = _literal_bytes(tree)
        if literal is not None and len(literal) < max_states:
            return _chain(literal)
        words = _literal_words(tree)
        if words is not None and sum(map(len, words)) < max_states:
            return _word_trie(words, pattern)
        try:
            trans, accepting = sre_glushkov_dfa(
                tree,
                max_states=max_states,
                char_ranges=char_class_ranges,
                utf8_sequences=utf8_sequences,
                builder_cls=Builder,
                explicit_unicode=explicit_unicode(pattern),
            )
        except Refused as e:
            raise refusal(pattern, e.args[0]) from None
        except RecursionError as e:
            raise UnsupportedFeatureError(f"regex nests too deeply: {clip(pattern)}", feature="nesting depth") from e
        return trim(trans, accepting, pattern)
    try:
        validate_tree(tree, explicit_unicode(pattern))
    except Refused as e:
        raise refusal(pattern, e.args[0]) from None
    _refuse_interegular_misreadings(pattern, tree)
    parsed = parse_interegular(pattern, check_syntax=False)
    try:
        fsm = parsed.to_fsm()
    except RecursionError as e:
        raise UnsupportedFeatureError(f"regex nests too deeply: {clip(pattern)}", feature="nesting depth") from e
    except Exception as e:  # interegular raises bare Exception for e.g. a{3,1}
        raise RegexSyntaxError(f"invalid regex {clip(pattern)}: {e}", pattern=pattern) from e
    return byte_dfa_from_fsm(fsm, pattern, max_states)


def _literal_bytes(tree) -> bytes | None:
    """The UTF-8 text of a pattern that is one literal string (no flag that changes how it
    matches, no surrogate), else None."""
    if not len(tree) or tree.state.flags & (_SRE.SRE_FLAG_IGNORECASE | _SRE.SRE_FLAG_VERBOSE):
        return None
    literal = _SRE.LITERAL
    cps = []
    for op, av in tree.data:
        if op is not literal or 0xD800 <= av <= 0xDFFF:
            return None
        cps.append(av)
    return "".join(map(chr, cps)).encode("utf-8")


#: Most words :func:`_literal_words` spells out (an ``enum``'s alternatives, a key's escapes).
MAX_LITERAL_WORDS = 1024


def _literal_words(tree) -> list[bytes] | None:
    """The UTF-8 texts of a pattern whose language is a few literal strings (alternations, groups
    and classes of single characters, no repetition, no flag that changes matching; an ``enum``
    of strings as the translator writes it, with the branches' shared prefixes factored out by the
    parser), else None."""
    if tree.state.flags & (_SRE.SRE_FLAG_IGNORECASE | _SRE.SRE_FLAG_VERBOSE):
        return None
    try:
        words = _words(getattr(tree, "data", tree), _SRE)
    except RecursionError:  # (the general path reports the nesting)
        return None
    return None if words is None else sorted({w.encode("utf-8") for w in words})


def _words(items, sre) -> set[str] | None:
    out = {""}
    for op, av in items:
        if op is sre.LITERAL:
            if 0xD800 <= av <= 0xDFFF:
                return None
            c = chr(av)
            out = {w + c for w in out}
            continue
        if op is sre.IN:
            if any(o is not sre.LITERAL or 0xD800 <= a <= 0xDFFF for o, a in av):
                return None
            alternatives = {chr(a) for _, a in av}
        elif op is sre.SUBPATTERN:
            if av[1] or av[2]:  # (flags)
                return None
            alternatives = _words(getattr(av[3], "data", av[3]), sre)
        elif op is sre.BRANCH:
            alternatives = set()
            for branch in av[1]:
                got = _words(getattr(branch, "data", branch), sre)
                if got is None:
                    return None
                alternatives |= got
        else:
            return None
        if alternatives is None or len(out) * len(alternatives) > MAX_LITERAL_WORDS:
            return None
        out = {w + x for w in out for x in alternatives}
    return out


def _word_trie(words: list[bytes], pattern: str) -> ByteDFA:
    """The trie of ``words`` (sorted UTF-8 texts), trimmed (common tails merged) as every automaton
    is."""
    edges: dict[tuple[int, int], int] = {}  # (state, byte) → state
    ends = []
    for w in words:
        q = 0
        for b in w:
            q = edges.setdefault((q, b), len(edges) + 1)
        ends.append(q)
    trans = np.full((len(edges) + 1, 256), -1, dtype=np.int32)
    if edges:
        at = np.array(list(edges), dtype=np.int64)
        trans[at[:, 0], at[:, 1]] = list(edges.values())
    accepting = np.zeros(len(edges) + 1, dtype=bool)
    accepting[ends] = True
    return trim(trans, accepting, pattern)


#: A regex that is plain text: characters that are no syntax, and punctuation escaped.
_PLAIN = re.compile(r"(?:[^.^$*+?{}\[\]\\|()\ud800-\udfff]|\\[^0-9A-Za-z\ud800-\udfff])+")
_UNESCAPE = re.compile(r"\\(.)", re.S)


def _plain_text(pattern: str) -> bytes | None:
    """The UTF-8 text a regex written as plain text matches (``"name":``, ``\\{``), without
    parsing it; None for any other regex (``re``'s parser reads it)."""
    if not _PLAIN.fullmatch(pattern):
        return None
    return _UNESCAPE.sub(r"\1", pattern).encode("utf-8")


def _chain(data: bytes) -> ByteDFA:
    """The trimmed minimal DFA of one literal byte string (what the general path builds for it,
    state for state, without the automaton construction; keys and punctuation of JSON grammars),
    with its byte classes (every lexer it joins reads them)."""
    n = len(data)
    if automaton._cwalk is not None and automaton.USE_C_TABLES:  # (in one call: the numpy below is the reference)
        trans, accepting, rows, byte_class, n_classes = automaton._cwalk.chain(data)
        return ByteDFA(transitions=np.frombuffer(trans, dtype=np.int32).reshape(n + 1, 256),
                       accepting=np.frombuffer(accepting, dtype=bool), initial=0,
                       classes=(np.frombuffer(rows, dtype=np.int64).reshape(n + 1, n_classes),
                                np.frombuffer(byte_class, dtype=np.int64)))
    trans = np.full((n + 1, 256), -1, dtype=np.int32)
    trans[np.arange(n), np.frombuffer(data, dtype=np.uint8)] = np.arange(1, n + 1, dtype=np.int32)
    accepting = np.zeros(n + 1, dtype=bool)
    accepting[n] = True
    return ByteDFA(transitions=trans, accepting=accepting, initial=0, classes=byte_classes(trans))


def _refuse_interegular_misreadings(pattern: str, tree) -> None:
    """interegular reads ``\\d \\w \\s`` as ASCII and ``{}``/``{,n}`` as repetitions: refuse those
    (``fast=False`` is a reference for the plain constructs, never a different dialect)."""
    def walk(items, ascii_only):
        for op, av in items:
            if op is _SRE.SUBPATTERN:
                add = av[1]
                walk(av[3], bool(add & _SRE.SRE_FLAG_ASCII) or (ascii_only and not add & _SRE.SRE_FLAG_UNICODE))
            elif op is _SRE.BRANCH:
                for alt in av[1]:
                    walk(alt, ascii_only)
            elif op is _SRE.MAX_REPEAT or op is _SRE.MIN_REPEAT:
                walk(av[2], ascii_only)
            elif op is _SRE.IN and any(k is _SRE.CATEGORY for k, _ in av):
                raise UnsupportedFeatureError(
                    f"fast=False (interegular) reads \\d \\w \\s as ASCII, unlike re: {clip(pattern)}",
                    feature="fast=False",
                )

    walk(tree, bool(tree.state.flags & _SRE.SRE_FLAG_ASCII))
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if pattern.startswith("]", i + 1) or pattern.startswith("^]", i + 1):
                i += 2
        elif c == "{" and not _QUANTIFIER.match(pattern, i):
            raise UnsupportedFeatureError(
                f"fast=False (interegular) reads the brace at position {i} differently from re: {clip(pattern)}",
                feature="fast=False",
            )
        i += 1


_QUANTIFIER = re.compile(r"\{[0-9]+(?:,[0-9]*)?\}")
