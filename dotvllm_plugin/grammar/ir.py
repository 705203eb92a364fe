"""The grammar IR: the one form every front end produces and the engine compiles.

A :class:`Grammar` is a context-free grammar over *terminals*, each a regular expression (Python
``re`` dialect, full match) that becomes a byte DFA through :mod:`dotvllm_plugin.regex`. Rules are
plain BNF: an origin and a sequence of symbol names (terminal or rule names); alternatives are
several rules with the same origin, and EBNF (``*``, ``+``, ``?``, groups) is expanded by the front
end. ``ignore`` lists terminals that may appear between any two lexemes (``%ignore WS``).

Lexing follows lark's contextual lexer: in each parser state only the terminals that state can
accept (plus the ignored ones) are candidates, and among candidates a lexeme is the longest match,
ties going to the terminal lark tries first (:meth:`Terminal.lark_order`). A regex, a choice, or any
other regular constraint is a one-rule grammar over a single terminal (:meth:`Grammar.from_regex`),
which the engine compiles to precomputed per-state token rows without a parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import GrammarError

__all__ = ["Grammar", "Rule", "Terminal"]


@dataclass(frozen=True)
class Terminal:
    """A lexeme class.

    Parameters
    ----------
    name : str
    regex : str
        Full-match regular expression (Python ``re`` syntax as :mod:`dotvllm_plugin.regex` reads it).
    priority : int
        Higher first (lark's terminal priority).
    literal : str or None
        The literal text for string terminals (``"if"``); ``None`` for regex terminals. lark lets a
        regex terminal that matches a literal exactly be re-typed to that literal ("unless").
    flags : frozenset of str
        lark pattern flags (``{"i"}`` for case-insensitive); used by the re-typing rule.
    max_width : int
        Longest match length as lark computes it (its lexer tries wider terminals first).
    source : str
        The literal or regex as written (lark breaks ties by its length).
    where : str
        Where it was defined, for error messages (``"line 3"``).
    nonempty : bool
        The terminal is the regex's language without the empty string (a terminal never matches
        empty text; an optional slot is a rule with an empty alternative).
    exclude : tuple of str
        The terminal is the regex's language without the texts whose first ``"`` opens a JSON
        string whose value is one of these (undeclared object keys: any key but the declared
        ones; :func:`dotvllm_plugin.regex.exclusion.without_json_strings`).
    """

    name: str
    regex: str
    priority: int = 0
    literal: str | None = None
    flags: frozenset = frozenset()
    max_width: int = 1 << 32
    source: str = ""
    where: str = ""
    nonempty: bool = False
    exclude: tuple = ()
    #: Python's parse tree of ``regex`` where the front end already holds it (generated grammars):
    #: the automaton is built from it without parsing the text again
    tree: object = field(default=None, compare=False, repr=False)

    def lark_order(self) -> tuple:
        """Sort key of lark's lexer: the first terminal in this order that matches wins."""
        return (-self.priority, -self.max_width, -len(self.source or self.regex), self.name)

    def describe(self) -> str:
        if self.literal is not None:
            text = f"literal {self.literal!r}"
        elif self.name.startswith("__"):  # an anonymous regex in a rule
            text = f"regex /{self.source or self.regex}/"
        else:
            text = f"terminal {self.name}"
        return f"{text} ({self.where})" if self.where else text


@dataclass(frozen=True)
class Rule:
    origin: str
    expansion: tuple[str, ...]
    where: str = ""


@dataclass(frozen=True)
class Grammar:
    """A context-free grammar over regex terminals (see the module docstring)."""

    terminals: tuple[Terminal, ...]
    rules: tuple[Rule, ...]
    start: str
    ignore: tuple[str, ...] = ()
    kind: str = "grammar"
    #: "lark": lexing must agree with lark's lexer (terminal collisions lark would split differently
    #: are refused); "longest": the engine's own longest-match lexing is the definition, a lexeme
    #: several terminals match being typed as all of them (front ends that generate the grammar
    #: and need no lark fidelity)
    lexing: str = "lark"
    #: what the front end was given (a regex, a schema, grammar text): error messages and caching
    source: str = field(default="", compare=False)

    @classmethod
    def from_regex(cls, pattern: str, *, kind: str = "regex", source: str | None = None) -> Grammar:
        """The one-terminal grammar of a regular constraint."""
        return cls(
            terminals=(Terminal("REGEX", pattern),),
            rules=(Rule("start", ("REGEX",)),),
            start="start",
            kind=kind,
            source=pattern if source is None else source,
        )

    @property
    def single_terminal(self) -> Terminal | None:
        """The terminal when the language is exactly one terminal's (no parser needed), else None."""
        if self.ignore:
            return None
        by_origin = [r for r in self.rules if r.origin == self.start]
        if len(self.rules) == 1 and len(by_origin) == 1 and len(by_origin[0].expansion) == 1:
            name = by_origin[0].expansion[0]
            for t in self.terminals:
                if t.name == name:
                    # the DFA path has no "minus the empty string", no exclusion
                    return None if t.nonempty or t.exclude else t
        return None

    def terminal(self, name: str) -> Terminal:
        for t in self.terminals:
            if t.name == name:
                return t
        raise KeyError(name)

    def check(self) -> None:
        """Structural checks every front end relies on; raises :class:`GrammarError`."""
        names = [t.name for t in self.terminals]
        if len(set(names)) != len(names):
            raise GrammarError(f"terminal names are not unique: {sorted(n for n in set(names) if names.count(n) > 1)}")
        terms = set(names)
        origins = {r.origin for r in self.rules}
        if self.start not in origins:
            raise GrammarError(f"the start rule {self.start!r} is not defined (rules: {', '.join(sorted(origins)[:20])})")
        if terms & origins:
            raise GrammarError(f"names used both as terminal and rule: {sorted(terms & origins)}")
        for r in self.rules:
            for sym in r.expansion:
                if sym not in terms and sym not in origins:
                    where = f" ({r.where})" if r.where else ""
                    raise GrammarError(f"rule {r.origin}{where} uses {sym!r}, which is not defined")
        for name in self.ignore:
            if name not in terms:
                raise GrammarError(f"%ignore names {name!r}, which is not a terminal")
