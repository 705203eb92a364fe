"""Any JSON value (or object) at any depth, as a context-free grammar.

The regex front end can only unroll nesting to a fixed depth; here containers are rules, so a
free-form value nests as deep as the engine's stack bound allows. Strings may use every JSON
escape, ``\\uXXXX`` (surrogate pairs paired) included. Whitespace follows the same slots as the
schema translation: one optional ``whitespace_pattern`` on each side of every structural token.
"""

from __future__ import annotations

from ..ir import Grammar, Rule, Terminal
from . import check_whitespace
from . import text as T
from .numbers import NUMBER

__all__ = ["any_json_grammar"]

#: A JSON string with any character, escapes included.
STRING = '"' + T.ANY_CHAR + '*"'


def any_json_grammar(*, whitespace_pattern: str | None = None, root: str = "value") -> Grammar:
    """The grammar of any JSON ``value`` or any JSON ``object`` (``root``)."""
    if root not in ("value", "object"):
        raise ValueError(f"root must be 'value' or 'object', got {root!r}")
    ws = check_whitespace(whitespace_pattern)
    terminals = [
        Terminal("LBRACE", r"\{", literal="{"), Terminal("RBRACE", r"\}", literal="}"),
        Terminal("LSQB", r"\[", literal="["), Terminal("RSQB", r"\]", literal="]"),
        Terminal("COMMA", ",", literal=","), Terminal("COLON", ":", literal=":"),
        Terminal("TRUE", "true", literal="true"), Terminal("FALSE", "false", literal="false"),
        Terminal("NULL", "null", literal="null"),
        Terminal("STRING", STRING), Terminal("NUMBER", NUMBER),
    ]
    w: tuple[str, ...] = ()
    rules = []
    if ws:
        # The pattern may match the empty string; the terminal is its non-empty part and the
        # slot is optional.
        terminals.append(Terminal("WS", ws, nonempty=True))
        rules += [Rule("w", ()), Rule("w", ("WS",))]
        w = ("w",)
    rules += [Rule("start", (root,))]
    rules += [Rule("value", (x,)) for x in ("object", "array", "STRING", "NUMBER", "TRUE", "FALSE", "NULL")]
    rules += [
        Rule("object", ("LBRACE", *w, "RBRACE")),
        Rule("object", ("LBRACE", *w, "members", *w, "RBRACE")),
        Rule("members", ("pair",)),
        Rule("members", ("members", *w, "COMMA", *w, "pair")),
        Rule("pair", ("STRING", *w, "COLON", *w, "value")),
        Rule("array", ("LSQB", *w, "RSQB")),
        Rule("array", ("LSQB", *w, "elements", *w, "RSQB")),
        Rule("elements", ("value",)),
        Rule("elements", ("elements", *w, "COMMA", *w, "value")),
    ]
    return Grammar(
        terminals=tuple(terminals),
        rules=tuple(rules),
        start="start",
        kind="json_object" if root == "object" else "json_schema",
        source=f"any JSON {root}" + (f" (whitespace {whitespace_pattern!r})" if ws else ""),
    )
