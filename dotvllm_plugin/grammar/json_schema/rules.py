"""From the translator's regexes with *placeholders* to the grammar IR.

In grammar mode the translator still writes regexes, with three kinds of private code points
(Supplementary Private Use Area-B, refused in schemas that would be compiled this way) standing
for what a regex cannot say:

* :data:`MARK` — a lexeme boundary (after ``{`` ``[`` ``,`` ``:``, before ``}`` ``]`` ``,``): the
  structure of objects and arrays becomes rules, and terminals are JSON lexemes (a key with its
  colon, a scalar value, punctuation), so the branches of a rule never overlap inside one lexeme;
* ``ref`` placeholders — a sub-schema compiled once as its own rule (a ``$ref`` target: recursion
  without a depth bound, and every use shares one definition);
* :data:`ANY` — any JSON value at any depth;
* *exclusion* markers — right before a key's opening quote: the key's terminal leaves out the
  keys whose value is one of the marker's names (undeclared properties: any key but the declared
  ones), see :attr:`~dotvllm_plugin.grammar.ir.Terminal.exclude`. The marker is no rule: it stays
  inside the terminal's run and is taken out of its regex.

Two more private code points stand for a string's character units (``T.ANY_CHAR``,
``T.PLAIN_CHAR``) while Python's parser reads the text; they are no rules either, and each
terminal gets the unit's group back (:func:`_expand`).

:func:`regex_to_grammar` parses each regex with Python's own parser and writes it as BNF: every
maximal run of placeholder-free items between boundaries becomes one terminal (its regex written
back from the parse tree; behind an optional rule when the run matches the empty text), every
alternation or repetition that contains a placeholder a rule. Since every comma and bracket is a
boundary, a lexeme never extends greedily into an optional tail that the next lexeme needed.
"""

from __future__ import annotations

import os
import re
import re._constants as C
import re._parser as P

from ...errors import GrammarError
from ...regex import fastparse
from ..ir import Grammar, Rule, Terminal
from . import text as T

__all__ = ["ANY", "FIRST_REF", "MARK", "is_placeholder", "placeholder", "regex_to_grammar", "unparse"]

_BASE = 0x100000
MARK = chr(_BASE)
ANY = chr(_BASE + 1)
FIRST_REF = 16
#: Most rule placeholders one schema may use.
MAX_RULES = 0x10FFFF - _BASE - FIRST_REF - 1


#: The character units the translator writes most (a string's content: about half the text of a
#: typical schema) are read by Python's parser once per process, not in every regex: before parsing,
#: each occurrence of a unit's text becomes one code point (:data:`_BASE` + 2, + 3), and the
#: terminals get the unit's parsed group back (:func:`_expand`).
_UNITS = {chr(_BASE + 2): T.ANY_CHAR, chr(_BASE + 3): T.PLAIN_CHAR}
_UNIT_ITEMS: dict[int, tuple] = {}
_UNIT_TEXT: dict[int, str] = {}  # id of a unit's group → the group written back (read by unparse)


def _unit_item(cp: int) -> tuple:
    item = _UNIT_ITEMS.get(cp)
    if item is None:
        (item,) = P.parse(_UNITS[chr(cp)])  # one non-capturing group
        _UNIT_TEXT[id(item[1])] = _unparse_item(*item)
        _UNIT_ITEMS[cp] = item
    return item


def placeholder(i: int) -> str:
    """The ``i``-th rule placeholder (``i >= FIRST_REF``)."""
    return chr(_BASE + i)


def is_placeholder(cp: int) -> bool:
    return cp >= _BASE


_PRIVATE = re.compile(f"[{chr(_BASE)}-\U0010FFFF]")


def has_placeholders(text: str) -> bool:
    return _PRIVATE.search(text) is not None


# -- writing a parse tree back as a regex --------------------------------------------------------

_LITERAL, _IN, _BRANCH, _SUBPATTERN, _MAX_REPEAT = C.LITERAL, C.IN, C.BRANCH, C.SUBPATTERN, C.MAX_REPEAT

_META = set("\\.^$*+?{}[]|()#")
_CLASS_META = set("\\]^-[")
_CATEGORIES = {
    C.CATEGORY_DIGIT: r"\d", C.CATEGORY_NOT_DIGIT: r"\D", C.CATEGORY_SPACE: r"\s",
    C.CATEGORY_NOT_SPACE: r"\S", C.CATEGORY_WORD: r"\w", C.CATEGORY_NOT_WORD: r"\W",
}
_FLAG_LETTERS = ((C.SRE_FLAG_IGNORECASE, "i"), (C.SRE_FLAG_MULTILINE, "m"), (C.SRE_FLAG_DOTALL, "s"),
                 (C.SRE_FLAG_ASCII, "a"), (C.SRE_FLAG_UNICODE, "u"))


class _Unwritable(GrammarError):
    pass


def _char(cp: int, meta: set) -> str:
    ch = chr(cp)
    if cp < 0x20 or cp == 0x7F:
        return f"\\x{cp:02x}"
    if ch in meta or ch.isspace():
        return "\\" + ch if ch in meta else f"\\x{cp:02x}" if cp < 0x100 else ch
    return ch


_ASCII_TEXT = [_char(cp, _META) for cp in range(0x80)]  # (most literals: keys, enum values)


def _flags(add: int, remove: int) -> str:
    a = "".join(ch for f, ch in _FLAG_LETTERS if add & f)
    r = "".join(ch for f, ch in _FLAG_LETTERS if remove & f)
    return a + (f"-{r}" if r else "")


_ASCII_CLASS_TEXT = [_char(cp, _CLASS_META) for cp in range(0x80)]


def _class_char(cp: int) -> str:
    return _ASCII_CLASS_TEXT[cp] if cp < 0x80 else _char(cp, _CLASS_META)


def _class_items(items) -> str:
    out = []
    for op, av in items:
        if op is C.NEGATE:
            continue
        if op is C.LITERAL:
            out.append(_class_char(av))
        elif op is C.RANGE:
            out.append(f"{_class_char(av[0])}-{_class_char(av[1])}")
        elif op is C.CATEGORY:
            out.append(_CATEGORIES[av])
        else:
            raise _Unwritable(f"cannot write back class item {op}")
    neg = "^" if items and items[0][0] is C.NEGATE else ""
    return f"[{neg}{''.join(out)}]"


def unparse(items, classes: dict | None = None) -> str:
    """A regex with the language of the parse tree ``items`` (a list of ``(op, av)``).
    ``classes``: a class's items → its text, kept by the caller (the translator writes the same
    few classes all over a schema)."""
    # (ASCII literals, most items, written without a call each)
    return "".join([_ASCII_TEXT[av] if op is _LITERAL and av < 0x80 else _unparse_item(op, av, classes)
                    for op, av in getattr(items, "data", items)])


def _unparse_item(op, av, classes=None) -> str:
    # (a unit's code point is written as the unit's group, as :func:`_expand` would put it: the
    # text of a run is the same before and after expansion; the most frequent kinds first)
    if op is _LITERAL:
        if av < 0x80:
            return _ASCII_TEXT[av]
        return _unit_text(av) if _UNITS_FIRST_CP <= av <= _UNITS_LAST_CP else _char(av, _META)
    if op is _MAX_REPEAT:
        lo, hi, body = av
        inner = f"(?:{unparse(body, classes)})"
        suffix = _REPEAT_SUFFIXES.get((lo, hi))
        if suffix is not None:
            return inner + suffix
        return inner + (f"{{{lo},}}" if hi == C.MAXREPEAT else f"{{{lo},{hi}}}")
    if op is _IN:
        if classes is None:
            return _class_text(av, classes)
        key = tuple(av)
        got = classes.get(key)
        if got is None:
            got = classes[key] = _class_text(av, classes)
        return got
    if op is _SUBPATTERN:
        if id(av) in _UNIT_TEXT:
            return _UNIT_TEXT[id(av)]
        _group, add, remove, body = av
        f = _flags(add, remove)
        return f"(?{f}:{unparse(body, classes)})"
    if op is _BRANCH:
        return "(?:" + "|".join([unparse(seq, classes) for seq in av[1]]) + ")"
    if op is C.NOT_LITERAL:
        return f"[^{_char(av, _CLASS_META)}]"
    if op is C.ANY:
        return "."
    if op is C.CATEGORY:
        return _CATEGORIES[av]
    raise _Unwritable(f"the regex construct {op} cannot be written back")


_REPEAT_SUFFIXES = {(0, 1): "?", (0, C.MAXREPEAT): "*", (1, C.MAXREPEAT): "+"}


def _class_text(items, classes) -> str:
    if any(o is _LITERAL and _UNITS_FIRST_CP <= a <= _UNITS_LAST_CP for o, a in items):
        return _unparse_item(*_expand([(_IN, items)])[0], classes)
    return _class_items(items)


# -- regex with placeholders → BNF ---------------------------------------------------------------

def _expand(items) -> list:
    """``items`` with every unit code point replaced by the unit's parsed group (Python's parser
    reads ``(?:U|x)`` as the class ``[Ux]``: such a class becomes the alternation it stands for)."""
    out = []
    for op, av in getattr(items, "data", items):  # (a SubPattern iterates by __getitem__ calls)
        if op is C.LITERAL and ord(_UNITS_FIRST) <= av <= ord(_UNITS_LAST):
            out.append(_unit_item(av))
        elif op is C.IN and any(o is C.LITERAL and chr(a) in _UNITS for o, a in av):
            if any(o is C.NEGATE for o, _ in av):
                raise _Unwritable("a character unit in a negated class")
            out.append((C.BRANCH, (None, [[_unit_item(a)] if o is C.LITERAL and chr(a) in _UNITS else [(C.IN, [(o, a)])]
                                          for o, a in av])))
        elif op is C.BRANCH:
            out.append((op, (av[0], [_expand(seq) for seq in av[1]])))
        elif op is C.SUBPATTERN:
            out.append((op, (*av[:3], _expand(av[3]))))
        elif op is C.MAX_REPEAT or op is C.MIN_REPEAT:
            out.append((op, (av[0], av[1], _expand(av[2]))))
        else:
            out.append((op, av))
    return out


_UNITS_FIRST, _UNITS_LAST = min(_UNITS), max(_UNITS)
_UNITS_FIRST_CP, _UNITS_LAST_CP = ord(_UNITS_FIRST), ord(_UNITS_LAST)
_MARK_CP = ord(MARK)


def _unit_text(cp: int) -> str:
    return _UNIT_TEXT[id(_unit_item(cp)[1])]


#: The text every unit's group starts with (a run whose regex does not hold it holds no unit).
_UNITS_START = os.path.commonprefix([_unit_text(ord(u)) for u in _UNITS])


def _nullable(items) -> bool:
    for op, av in getattr(items, "data", items):
        if op is C.BRANCH:
            if not any(_nullable(seq) for seq in av[1]):
                return False
        elif op is C.SUBPATTERN:
            if not _nullable(av[3]):
                return False
        elif op is C.MAX_REPEAT:
            if av[0] > 0 and not _nullable(av[2]):
                return False
        elif op is C.AT:
            continue
        else:
            return False
    return True


#: Most copies of one repeated placeholder body (``{lo,hi}``) written out as rules; longer
#: optional tails are cut there (a sound restriction: fewer items, never an invalid document).
MAX_RULE_REPEAT = 256


#: A parse of the empty pattern: its state (flags as ``re`` sets them for a ``str`` pattern) is what
#: every terminal's tree shares (the translator's regexes set no global flags).
_UNFLAGGED = P.parse("")


class _Writer:
    def __init__(self, flag_prefix: str, names: dict[int, str], excluded: dict[int, tuple[str, ...]]):
        self.flag_prefix = flag_prefix
        self.names = names  # placeholder code point → rule name
        self.excluded = excluded  # exclusion marker code point → the names its key leaves out
        self.inline = set(excluded) | {ord(u) for u in _UNITS}  # private code points that are no rule
        self._ph: dict[int, bool] = {}  # id of a group's argument → whether it holds a placeholder
        self._trees: list = []  # every tree parsed, kept alive while ids key ``_ph``
        self.terminals: dict[str, Terminal] = {}
        self._classes: dict[tuple, str] = {}  # (for :func:`unparse`)
        self.rules: list[Rule] = []
        self._n = 0

    def parse(self, text: str):
        tree = fastparse.parse(text)
        self._trees.append(tree)
        return tree

    def has_placeholder(self, op, av) -> bool:
        """Whether the item holds a rule placeholder (exclusion markers and units are none);
        remembered per group (nested runs ask again for what their parent held)."""
        if op is _LITERAL:
            return av >= _BASE and av not in self.inline
        if op is _IN:
            return any(o is _LITERAL and a >= _BASE and a not in self.inline for o, a in av)
        if op is _BRANCH:
            seqs = av[1]
        elif op is _SUBPATTERN:
            seqs = (av[3],)
        elif op is _MAX_REPEAT or op is C.MIN_REPEAT:
            seqs = (av[2],)
        else:
            return False
        got = self._ph.get(id(av))
        if got is None:
            got = self._ph[id(av)] = self._holds_placeholder(seqs)
        return got

    def _holds_placeholder(self, seqs) -> bool:
        inline = self.inline
        for seq in seqs:
            for o, a in getattr(seq, "data", seq):
                if o is _LITERAL:  # (most items: checked here, without a call)
                    if a >= _BASE and a not in inline:
                        return True
                elif o is not C.ANY and self.has_placeholder(o, a):
                    return True
        return False

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def terminal(self, regex: str, nonempty: bool, items=None, exclude: tuple[str, ...] = ()) -> str:
        key = self.flag_prefix + regex
        t = self.terminals.get((key, nonempty, exclude))
        if t is None:
            # the parse tree travels with the text (the automaton is built without parsing it again)
            # where no flag prefix changes how the text reads (the units' groups put in here: once
            # per terminal, not once per run)
            # (a run without units, which :func:`unparse` writes as their groups, is its own tree)
            if items is None or self.flag_prefix:
                tree = None
            else:
                tree = P.SubPattern(_UNFLAGGED.state, _expand(items) if _UNITS_START in regex else items)
            t = Terminal(f"T{len(self.terminals)}", key, nonempty=nonempty, source=regex, tree=tree,
                         exclude=exclude)
            self.terminals[(key, nonempty, exclude)] = t
        return t.name

    def rule(self, stem: str, alternatives: list[tuple[str, ...]]) -> str:
        """A fresh rule, never shared between two places: the parser states at its end then see
        only what follows this place, so each contextual lexer holds the lexemes of one context
        (a shared rule would merge the followers of all its places, and a declared key could be
        lexed as another place's free-form key)."""
        name = self.fresh(stem)
        self.rules += [Rule(name, alt) for alt in dict.fromkeys(alternatives)]
        return name

    def seq(self, items) -> tuple[str, ...]:
        out: list[str] = []
        run: list = []
        marked = False  # the run holds an exclusion marker (a private code point of ``inline``)
        inline, names, excluded = self.inline, self.names, self.excluded
        for item in getattr(items, "data", items):  # (a SubPattern iterates by __getitem__ calls)
            op, av = item
            if op is _LITERAL:  # (most items: checked here, without a call)
                if av < _BASE:
                    run.append(item)
                    continue
                if av in inline:
                    run.append(item)
                    marked = marked or av in excluded
                    continue
                if run:
                    out += self.plain(run, marked)
                    run, marked = [], False
                if av != _MARK_CP:  # (a boundary is no symbol)
                    out.append(names[av])
                continue
            if op is C.AT:
                raise _Unwritable("anchors")
            if not self.has_placeholder(op, av):
                run.append(item)
                continue
            alternatives = self.alternatives(op, av)
            if alternatives is not None:
                # Python's parser moves a prefix that all branches share out of the alternation; the
                # run before it is part of each branch's first lexeme: put it back (no boundary
                # separates them, or the run would have been flushed)
                out.append(self.rule("alt", [self.seq(run + a) for a in alternatives]))
                run, marked = [], False
                continue
            if run:
                out += self.plain(run, marked)
                run, marked = [], False
            out += self.node(op, av)
        if run:
            out += self.plain(run, marked)
        return tuple(out)

    def productions(self, items) -> list[tuple[str, ...]]:
        """A rule body's productions: one per branch where the body is one alternation (no
        intermediate rule: one reduction less each time the rule is used), else one."""
        data = getattr(items, "data", items)
        if len(data) == 1 and self.has_placeholder(*data[0]):
            alternatives = self.alternatives(*data[0])
            if alternatives is not None:
                return list(dict.fromkeys(self.seq(a) for a in alternatives))
        return [self.seq(data)]

    @staticmethod
    def alternatives(op, av) -> list[list] | None:
        """The branches of an alternation that holds a placeholder, as item lists; else None."""
        if op is C.BRANCH:
            return [list(getattr(seq, "data", seq)) for seq in av[1]]
        if op is C.IN:
            phs = [[(C.LITERAL, a)] for o, a in av if o is C.LITERAL and is_placeholder(a)]
            rest = [(o, a) for o, a in av if not (o is C.LITERAL and is_placeholder(a))]
            if rest and any(o is C.NEGATE for o, _ in rest):
                raise _Unwritable("a negated class around a placeholder")
            return phs + ([[(C.IN, rest)]] if rest else [])
        return None

    def plain(self, items: list, marked: bool) -> tuple[str, ...]:
        """A placeholder-free run (non-empty): one terminal, optional when the run matches the empty
        text. ``marked``: one of its items is an exclusion marker."""
        exclude: tuple[str, ...] = ()
        if marked:
            excluded = self.excluded
            at = [i for i, (op, av) in enumerate(items) if op is _LITERAL and av in excluded]
            i = at[0]
            if len(at) > 1 or items[i + 1:i + 2] != [(C.LITERAL, ord('"'))]:
                raise _Unwritable("an exclusion marker not right before a key's quote")
            exclude = excluded[items[i][1]]
            items = items[:i] + items[i + 1:]
        regex = unparse(items, self._classes)  # (units written as their groups; see :meth:`terminal`)
        if items[0][0] is _LITERAL or not _nullable(items):  # (a literal first: most runs)
            return (self.terminal(regex, False, items, exclude),)
        if regex in ("", "(?:)"):
            return ()
        t = self.terminal(regex, True, items, exclude)
        return (self.rule("opt", [(), (t,)]),)

    def replay(self, template: _Template) -> list[tuple[str, ...]]:
        """The productions of the body ``template`` was written from, writing its rules and
        terminals here as :meth:`productions` would: its terminals in the order it made them (a
        new one numbered here, one already here shared), its rules under the next fresh names."""
        rename = {}
        for key, t in template.terminals:
            got = self.terminals.get(key)
            if got is None:
                got = self.terminals[key] = Terminal(f"T{len(self.terminals)}", t.regex, nonempty=t.nonempty,
                                                     source=t.source, tree=t.tree, exclude=t.exclude)
            rename[t.name] = got.name
        for stem, k in template.fresh:
            rename[f"{stem}_{k}"] = f"{stem}_{k + self._n}"
        self._n += len(template.fresh)
        self.rules += [Rule(rename[r.origin], tuple([rename.get(s, s) for s in r.expansion]))
                       for r in template.rules]
        return [tuple([rename.get(s, s) for s in alt]) for alt in template.productions]

    def node(self, op, av) -> tuple[str, ...]:
        if op is C.LITERAL:
            return () if av == ord(MARK) else (self.names[av],)
        if op is C.SUBPATTERN:
            if av[1] or av[2]:
                raise _Unwritable("flags around a placeholder")
            return self.seq(av[3])
        if op is C.MAX_REPEAT:
            lo, hi, body = av
            b = self.seq(body)
            head = b * lo
            if hi == C.MAXREPEAT:
                star = self.fresh("star")
                self.rules += [Rule(star, ()), Rule(star, (star, *b))]
                return (*head, star)
            tail: tuple[str, ...] = ()
            for _ in range(min(hi - lo, MAX_RULE_REPEAT)):
                tail = (self.rule("opt", [(), (*b, *tail)]),)
            return (*head, *tail)
        raise _Unwritable(f"the regex construct {op} around a placeholder")


class _Template:
    """What a fresh writer writes for one rule body whose only placeholders are :data:`MARK` and
    :data:`ANY`: its terminals (with their keys, in the order made), rules and productions, and
    the fresh names it took (stem, number); :meth:`_Writer.replay` writes them into any writer."""

    __slots__ = ("terminals", "rules", "productions", "fresh")

    def __init__(self, body: str):
        text = _with_unit_points(body, _units_by_length())
        if any(is_placeholder(ord(c)) and c not in (MARK, ANY) and c not in _UNITS for c in text):
            raise ValueError("a template's body holds no placeholder but the boundary and the free-form value")
        w = _Writer("", {ord(ANY): "any_value"}, {})
        self.productions = w.productions(w.parse(text))
        self.terminals = tuple(w.terminals.items())
        self.rules = tuple(w.rules)
        origins = dict.fromkeys(r.origin.rpartition("_") for r in w.rules)  # (every fresh name has rules)
        self.fresh = tuple((stem, int(k)) for stem, _, k in origins)
        assert len(self.fresh) == w._n


#: Rule bodies (as the translator writes them) → their :class:`_Template`: fixed texts that many
#: schemas share (the free-form value's body), written once per process, when the translator is
#: imported, for every schema alike (:func:`add_template`); not a memo of any schema's text.
_TEMPLATES: dict[str, _Template] = {}


def add_template(body: str) -> None:
    """Write ``body`` (a rule body whose only placeholders are :data:`MARK` and :data:`ANY`) once
    here; :func:`regex_to_grammar` replays it wherever a schema's body is that text."""
    _TEMPLATES[body] = _Template(body)


def _units_by_length() -> list[tuple[str, str]]:
    """The units (code point, text), the longer text first: neither text occurs inside the other."""
    return sorted(_UNITS.items(), key=lambda kv: -len(kv[1]))


def _with_unit_points(text: str, units: list[tuple[str, str]]) -> str:
    """``text`` with each unit's text (:func:`_units_by_length`) replaced by its code point."""
    for cp, unit in units:
        text = text.replace(unit, cp)
    return text


def regex_to_grammar(root: str, bodies: dict[str, str], *, kind: str = "json_schema", source: str = "",
                     flag_prefix: str = "", excluded: dict[str, tuple[str, ...]] | None = None) -> Grammar:
    """The grammar whose start rule is ``root`` and whose rule placeholders (keys of ``bodies``,
    each a one-character placeholder) stand for their bodies; ``excluded``: exclusion markers
    (placeholders too) → the names their keys leave out. See the module docstring."""
    names = {ord(ph): ("any_value" if ph == ANY else f"def_{ord(ph) - _BASE - FIRST_REF}") for ph in bodies}
    w = _Writer(flag_prefix, names, {ord(m): tuple(v) for m, v in (excluded or {}).items()})
    units = _units_by_length()
    templates = {} if flag_prefix else _TEMPLATES
    try:
        rules = [Rule("start", w.seq(w.parse(_with_unit_points(root, units))))]
        for ph, body in bodies.items():
            template = templates.get(body)
            if template is None:
                alts = w.productions(w.parse(_with_unit_points(body, units)))
            else:
                alts = w.replay(template)
            rules += [Rule(names[ord(ph)], alt) for alt in alts]
    except _Unwritable as e:
        raise GrammarError(f"the schema's regex cannot be split into rules: {e}") from None
    except RecursionError:
        raise GrammarError("the schema's regex nests too deeply to split into rules") from None
    defined = {r.origin for r in rules} | {r.origin for r in w.rules}
    # (the rules refer to bodies by the names of ``names`` only: where all are defined, none is missing)
    for r in () if defined.issuperset(names.values()) else rules + w.rules:
        for s in r.expansion:
            if (s.startswith("def_") or s == "any_value") and s not in defined:
                raise GrammarError(f"internal: rule {s} referenced but not defined")
    return Grammar(
        terminals=tuple(w.terminals.values()),
        rules=tuple(rules + w.rules),
        start="start",
        kind=kind,
        source=source,
        lexing="longest",
    )
