"""Lark grammar text → :class:`~dotvllm_plugin.grammar.ir.Grammar`, read by lark's own loader.

Everything lark's grammar language offers that only shapes the parse tree (``?rule`` inlining,
``_rule`` / ``_TERM`` filtering, ``!`` keep-all, aliases, templates) or that lark expands itself
(EBNF operators, ``%import common.*``, ``%override``/``%extend``, case-insensitive literals,
terminal priorities) comes out of lark's loader as plain BNF over terminals: this module only
translates that result. The language is the one ``Lark(text, parser="lalr")`` accepts (LALR(1) with
the contextual lexer); the engine refuses what it cannot enforce exactly (see
:mod:`dotvllm_plugin.pushdown`). ``%declare`` (terminals fed by a post-lexer) is refused: no text
could produce them.
"""

from __future__ import annotations

import re

from ..errors import GrammarError, UnsupportedFeatureError
from .ir import Grammar, Rule, Terminal

__all__ = ["MAX_GRAMMAR_CHARS", "lark_to_ir", "line_of"]

#: Longest grammar accepted (characters): the request-time check runs lark's loader and LALR
#: analysis in the API server, about 50 ms per thousand characters of rules.
MAX_GRAMMAR_CHARS = 32_000

#: Most alternatives lark's loader may write for the rules of one grammar. The loader writes out
#: every combination of a rule's optional items and inline groups (each ``?``, ``[...]`` or ``*``
#: doubles a rule's alternatives, a group ``(a | b)`` multiplies them): 18 optional items in one
#: rule are 131,072 alternatives and two minutes of the API server's time.
MAX_RULE_EXPANSIONS = 4096
#: Most alternatives for all rules of a grammar together.
MAX_GRAMMAR_EXPANSIONS = 16384

#: Terminals of lark's ``common.lark`` written with lazy quantifiers or lookbehinds, which lark's
#: lexer runs as "shortest match"; each has a plain regular equivalent (tests check them against
#: ``re`` on sampled strings).
REGULAR_EQUIVALENTS = {
    # ESCAPED_STRING: a quote, then anything but an unescaped quote or a newline, then a quote.
    r'".*?(?<!\\)(\\\\)*?"': r'"(?:[^"\\\n]|\\[^\n])*"',
    # C_COMMENT: from /* to the first */.
    "/\\*(.|\n)*?\\*/": r"/\*(?:[^*]|\*+[^*/])*\*+/",
}


def _has_lazy(regex: str) -> bool:
    try:
        import re._parser as sre
        from re._constants import MIN_REPEAT
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_parse as sre
        from sre_constants import MIN_REPEAT
    try:
        todo = [sre.parse(regex)]
    except Exception:  # noqa: BLE001 - the regex front end reports syntax errors with positions
        return False
    while todo:
        for op, av in todo.pop():
            if op is MIN_REPEAT:
                return True
            for x in av if isinstance(av, (tuple, list)) else (av,):
                if isinstance(x, sre.SubPattern):
                    todo.append(x)
                elif isinstance(x, (tuple, list)):
                    todo.extend(y for y in x if isinstance(y, sre.SubPattern))
    return False


def _terminal_regex(name: str, regex: str, where: str, min_width: int, regex_is_literal: bool = False) -> str:
    """The regex of terminal ``name`` (``name`` is how messages call it), checked."""
    from ..regex import check_regex

    if min_width == 0:
        raise GrammarError(f"terminal {name} ({where}) matches the empty string; lark's lexer refuses zero-width terminals")
    regex = REGULAR_EQUIVALENTS.get(regex, regex)
    if not regex_is_literal and _has_lazy(regex):
        raise UnsupportedFeatureError(
            f"terminal {name} ({where}) uses a lazy quantifier: lark's lexer then takes the shortest "
            "match, which a longest-match lexer cannot follow; write it without the lazy quantifier "
            "(e.g. /\"[^\"]*\"/ instead of /\".*?\"/)",
            feature="lazy quantifier",
            where=name,
        )
    try:
        if not regex_is_literal:
            check_regex(regex)
    except GrammarError as e:
        raise type(e)(f"terminal {name} ({where}): {e}") from e
    return regex


def _expansion_count(node, limit: int) -> int:
    """How many alternatives lark's loader writes for the rule tree ``node`` (an upper bound: lark
    drops duplicates), at most ``limit + 1``."""
    data = getattr(node, "data", None)
    if data == "expansions":
        return min(limit + 1, sum(_expansion_count(c, limit) for c in node.children))
    if data in ("expansion", "alias"):
        n = 1
        for c in node.children:
            n = min(limit + 1, n * _expansion_count(c, limit))
        return n
    if data == "expr":
        inner, op = _expansion_count(node.children[0], limit), str(node.children[1])
        if op == "?":
            return min(limit + 1, inner + 1)
        if op == "*":  # a rule of its own, made optional
            return 2
        if op == "+":  # a rule of its own
            return 1
        if op == "~":
            lo, hi = int(node.children[2]), int(node.children[-1])
            if hi >= 50:  # (lark then splits the repetition into rules of bounded width)
                return 1 if inner == 1 else limit + 1
            return min(limit + 1, sum(min(limit + 1, inner ** k) for k in range(lo, hi + 1)))
        return inner
    if data == "maybe":
        return min(limit + 1, _expansion_count(node.children[0], limit) + 1)
    return 1  # a symbol, a literal, a template use: one alternative


def _check_expansions(text: str, rule_defs) -> None:
    """Refuse, before lark's loader writes them out, rules it would expand into more than
    :data:`MAX_RULE_EXPANSIONS` alternatives (counted on its parse tree, as its EBNF-to-BNF step
    and rule simplification multiply them)."""
    limit = MAX_RULE_EXPANSIONS
    advice = ("every optional item ('?', '[...]', '*') of a rule doubles its alternatives and every inline "
              "group '(a | b)' multiplies them; give optional parts rules of their own "
              "(opt1: (\",\" item1)?  …  start: … opt1 opt2 …)")
    # a template's alternatives are written again for every use (each use is a rule of its own)
    templates = {str(name): _expansion_count(tree, limit) for name, params, tree, _ in rule_defs if params}
    total = 0
    for name, _params, tree, _options in rule_defs:
        try:
            n = _expansion_count(tree, limit)
        except RecursionError:
            raise GrammarError("invalid Lark grammar: it nests too deeply to be read") from None
        total += n
        if templates:
            total += sum(templates.get(getattr(u.children[0], "name", None), 0) for u in tree.iter_subtrees()
                         if u.data == "template_usage")
        if n > limit:
            where = line_of(text, str(name))
            raise UnsupportedFeatureError(
                f"rule {name}{f' ({where})' if where else ''} makes lark's loader write more than {limit} "
                f"alternatives: {advice}", feature="rule expansions", where=str(name))
        if total > MAX_GRAMMAR_EXPANSIONS:
            raise UnsupportedFeatureError(
                f"the grammar's rules make lark's loader write more than {MAX_GRAMMAR_EXPANSIONS} alternatives: "
                f"{advice}",
                feature="rule expansions", where=str(name))


def line_of(text: str, name: str) -> str:
    """``"line N"`` of the definition of rule or terminal ``name`` in grammar ``text`` ('' if not found)."""
    pat = re.compile(rf"^\s*[?!]?{re.escape(name)}\b\s*(\{{[^}}]*\}})?\s*(\.\s*-?\d+)?\s*:", re.M)
    m = pat.search(text)
    return f"line {text.count(chr(10), 0, m.start()) + 1 + (text[m.start():m.end()].count(chr(10)))}" if m else ""


def _anonymous_where(text: str, pattern) -> str:
    """Line of an anonymous literal ``"..."`` or regex ``/.../`` in grammar ``text``."""
    needle = f'"{pattern.value}"' if type(pattern).__name__ == "PatternStr" else f"/{pattern.value}/"
    i = text.find(needle)
    return f"line {text.count(chr(10), 0, i) + 1}" if i >= 0 else ""


def _loader(step, *args):
    """One step of lark's loader, its errors as :class:`GrammarError` (a bad grammar)."""
    try:
        return step(*args)
    except RecursionError as e:
        raise GrammarError("invalid Lark grammar: it nests too deeply to be read") from e
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever lark's loader raises on this text, the grammar is bad
        msg = str(e).strip() or type(e).__name__
        raise GrammarError(f"invalid Lark grammar: {msg}") from e


def lark_to_ir(text: str, *, start: str = "start") -> Grammar:
    """Parse Lark grammar ``text`` with lark's loader; raise :class:`GrammarError` on a bad grammar."""
    if not isinstance(text, str):
        raise GrammarError(f"a Lark grammar must be a string, got {type(text).__name__}")
    if len(text) > MAX_GRAMMAR_CHARS:
        raise GrammarError(f"the grammar has {len(text)} characters; at most {MAX_GRAMMAR_CHARS} are accepted")
    if not isinstance(start, str) or not start:
        raise GrammarError(f"the start rule must be a non-empty string, got {start!r}")
    from lark.load_grammar import load_grammar

    loaded, _ = _loader(load_grammar, text, "<grammar>", None, False)
    _check_expansions(text, loaded.rule_defs)  # before the loader writes the alternatives out
    term_defs, rule_defs, ignore = _loader(loaded.compile, [start], set())

    terminals = []
    for t in term_defs:
        pattern = t.pattern
        literal = pattern.value if type(pattern).__name__ == "PatternStr" else None
        where = _anonymous_where(text, pattern) if t.name.startswith("__") else line_of(text, t.name)
        try:
            width, min_width = int(pattern.max_width), int(pattern.min_width)
        except Exception as e:  # noqa: BLE001 - lark could not size the regex: it does not parse
            raise GrammarError(f"invalid regex in terminal {t.name} ({where}): {e}") from e
        terminals.append(
            Terminal(
                name=t.name,
                regex=_terminal_regex(
                    f"/{pattern.value}/" if t.name.startswith("__") and literal is None else t.name,
                    pattern.to_regexp(), where, min_width, literal is not None and not pattern.flags),
                priority=int(t.priority),
                literal=literal,
                flags=frozenset(pattern.flags),
                max_width=width,
                source=pattern.value,
                where=where,
            )
        )
    known = {t.name for t in terminals}
    rules = []
    for r in rule_defs:
        expansion = []
        for sym in r.expansion:
            if sym.is_term and sym.name not in known:
                raise UnsupportedFeatureError(
                    f"terminal {sym.name} ({line_of(text, sym.name) or 'declared'}) has no definition "
                    "(%declare'd terminals come from a post-lexer, which guided generation cannot run); "
                    "define it with a pattern",
                    feature="%declare",
                    where=sym.name,
                )
            expansion.append(sym.name)
        origin = r.origin.name
        rules.append(Rule(str(origin), tuple(str(s) for s in expansion), where=line_of(text, str(origin).lstrip("_?!"))))
    grammar = Grammar(
        terminals=tuple(terminals),
        rules=tuple(rules),
        start=start,
        ignore=tuple(str(n) for n in ignore),
        kind="grammar",
        source=text,
    )
    grammar.check()
    return grammar
