"""Structural tags (vLLM's ``structural_tag``, xgrammar's original form) on the grammar engine.

A spec ``{"type": "structural_tag", "structures": [{"begin": B, "schema": S, "end": E}, ...],
"triggers": [T, ...]}`` allows free text in which every occurrence of a trigger starts a
structure: the text continues with the ``begin`` of one structure (each ``begin`` starts with a
trigger), then a JSON value valid under its ``schema``, then its ``end``, and free text again.
Generation may end anywhere in free text (also inside a partial trigger), never inside a
structure.

As a grammar (lexing ``"longest"``)::

    start: items | items FREE          FREE: text containing no trigger (non-empty)
    items: | items seg
    seg:   OPEN_i json_i CLOSE_i       OPEN_i: text containing no trigger, then B_i; CLOSE_i: E_i

Free text is one lexeme that reaches to the end of the next ``begin``, so the lexer never has to
guess where free text stops (it cannot back up). "Text containing no trigger" is written as a
regex by following the triggers' prefixes, which needs every trigger's first character to occur
in no trigger anywhere but at the start, and the triggers' first characters to differ; other
trigger sets are refused. xgrammar's newer form (``{"format": {...}}``) is not this module's.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from ..errors import GrammarError, UnsupportedFeatureError
from .ir import Grammar, Rule, Terminal

__all__ = ["at_schema", "avoid_regex", "is_format_form", "is_structures_form", "parse_structural_tag",
           "structural_tag_to_ir", "structures_form"]


def _decoded(spec: Any) -> Any:
    """``spec`` with JSON text (``str`` or UTF-8 ``bytes``) parsed; raises ``ValueError``."""
    if isinstance(spec, (bytes, bytearray)):
        spec = spec.decode("utf-8")
    return json.loads(spec) if isinstance(spec, str) else spec


def structures_form(spec: Any) -> dict | None:
    """``spec`` (a dict or JSON text) as a dict when it is the ``structures`` / ``triggers`` form,
    else ``None`` (xgrammar's ``format`` form, or not a structural tag at all)."""
    try:
        spec = _decoded(spec)
    except ValueError:
        return None
    return spec if isinstance(spec, dict) and "structures" in spec and "format" not in spec else None


def is_structures_form(spec: Any) -> bool:
    return structures_form(spec) is not None


def is_format_form(spec: Any) -> bool:
    """Whether ``spec`` is a structural tag we leave to xgrammar (set, and not the ``structures``
    form); ``None`` (no structural tag) is not."""
    return spec is not None and structures_form(spec) is None


def at_schema(e: GrammarError, i: int) -> GrammarError:
    """``e`` (raised for the schema of structure ``i``) with that place in front of its message."""
    e.args = (f"structural_tag: /structures/{i}/schema: {e.args[0] if e.args else e}",) + tuple(e.args[1:])
    return e


def parse_structural_tag(spec: Any) -> tuple[list[tuple[str, Any, str]], list[str]]:
    """``(structures as (begin, schema, end), triggers)``; raises :class:`GrammarError`."""
    try:
        spec = _decoded(spec)
    except ValueError as e:
        raise GrammarError(f"structural_tag: not valid JSON: {e}") from None
    if not isinstance(spec, dict):
        raise GrammarError(f"structural_tag: must be an object, got {type(spec).__name__}")
    unknown = set(spec) - {"type", "structures", "triggers"}
    if unknown:
        raise UnsupportedFeatureError(f"structural_tag: unknown field(s) {sorted(unknown)}", feature="structural_tag",
                                      where="/")
    if spec.get("type", "structural_tag") != "structural_tag":
        raise GrammarError(f"structural_tag: type must be 'structural_tag', got {spec.get('type')!r}")
    structures, triggers = spec.get("structures"), spec.get("triggers")
    if not isinstance(structures, list) or not structures:
        raise GrammarError("structural_tag: 'structures' must be a non-empty list")
    if not isinstance(triggers, list) or not triggers or not all(isinstance(t, str) and t for t in triggers):
        raise GrammarError("structural_tag: 'triggers' must be a non-empty list of non-empty strings")
    out = []
    for i, s in enumerate(structures):
        where = f"/structures/{i}"
        if not isinstance(s, dict) or set(s) - {"begin", "schema", "end"} or "begin" not in s:
            raise GrammarError(f"structural_tag: {where} must be an object with 'begin', 'schema' and 'end'")
        begin, end, schema = s["begin"], s.get("end", ""), s.get("schema")
        if schema is None:  # (vLLM sends "schema": null for a structure without one: any JSON value)
            schema = True
        if not isinstance(begin, str) or not isinstance(end, str):
            raise GrammarError(f"structural_tag: {where}: 'begin' and 'end' must be strings")
        if not any(begin.startswith(t) for t in triggers):
            raise GrammarError(f"structural_tag: {where}/begin {begin!r} starts with none of the triggers {triggers}")
        out.append((begin, schema, end))
    _check_triggers(triggers)
    return out, list(dict.fromkeys(triggers))


def _check_triggers(triggers: list[str]) -> None:
    firsts = [t[0] for t in dict.fromkeys(triggers)]
    if len(set(firsts)) != len(firsts):
        raise UnsupportedFeatureError(
            f"structural_tag: triggers {triggers} share a first character; only triggers with distinct first "
            "characters are supported", feature="structural_tag triggers", where="/triggers")
    for t in triggers:
        inner = set(t[1:]) & set(firsts)
        if inner:
            raise UnsupportedFeatureError(
                f"structural_tag: trigger {t!r} contains {''.join(sorted(inner))!r} after its start, the first "
                "character of a trigger; only triggers whose first characters occur nowhere else in a trigger are "
                "supported", feature="structural_tag triggers", where="/triggers")


def _cls(chars) -> str:
    return "[^" + "".join(re.escape(c) for c in sorted(chars)) + "]"


def avoid_regex(triggers: list[str]) -> str:
    """A regex of the texts (possibly empty) in which no trigger occurs (see :func:`_check_triggers`
    for the triggers it handles).

    A first character ``f`` starts a run ``t[:k]`` (``k < len(t)``) of the trigger ``t`` it begins;
    the run ends with the text, with another run (the next character is a first character, which
    is never ``t[k]``), or with a character that is neither ``t[k]`` nor a first character. So the
    text is a sequence of non-first characters and of runs, each run followed by one of those."""
    firsts = {t[0] for t in triggers}
    runs = [(t, k) for t in triggers for k in range(1, len(t))]
    if not runs:  # one-character triggers
        return _cls(firsts) + "*"
    run = "(?:" + "|".join(re.escape(t[:k]) for t, k in runs) + ")"
    broken = "(?:" + "|".join(re.escape(t[:k]) + _cls(firsts | {t[k]}) for t, k in runs) + ")"
    return f"(?:{_cls(firsts)}|{run}*{broken})*{run}*"


def structural_tag_to_ir(spec: Any, *, whitespace_pattern: str | None = None, allow_undeclared_properties: bool = True,
                         repeat_cap: int | None = None) -> Grammar:
    """The grammar IR of ``spec`` (see the module docstring); raises :class:`GrammarError`."""
    from .json_schema import json_schema_to_ir

    structures, triggers = parse_structural_tag(spec)
    free = avoid_regex(triggers)
    terminals = [Terminal("FREE", free, nonempty=True, source=free)]
    rules = [Rule("start", ("items",)), Rule("start", ("items", "FREE")), Rule("items", ()),
             Rule("items", ("items", "seg"))]
    for i, (begin, schema, end) in enumerate(structures):
        try:
            value = json_schema_to_ir(schema, whitespace_pattern=whitespace_pattern,
                                      allow_undeclared_properties=allow_undeclared_properties, repeat_cap=repeat_cap)
        except GrammarError as e:
            raise at_schema(e, i) from None
        names = {t.name: f"S{i}_{t.name}" for t in value.terminals}
        names.update({r.origin: f"s{i}_{r.origin}" for r in value.rules})
        terminals += [dataclasses.replace(t, name=names[t.name]) for t in value.terminals]
        rules += [Rule(names[r.origin], tuple(names[s] for s in r.expansion)) for r in value.rules]
        open_ = free + re.escape(begin)
        terminals.append(Terminal(f"OPEN_{i}", open_, source=open_))
        seg = [f"OPEN_{i}", names[value.start]]
        if end:
            terminals.append(Terminal(f"CLOSE_{i}", re.escape(end), source=end))
            seg.append(f"CLOSE_{i}")
        rules.append(Rule("seg", tuple(seg)))
    return Grammar(terminals=tuple(terminals), rules=tuple(rules), start="start", kind="structural_tag",
                   source=json.dumps({"structures": [list(s) for s in structures], "triggers": triggers},
                                     sort_keys=True, default=str), lexing="longest")
