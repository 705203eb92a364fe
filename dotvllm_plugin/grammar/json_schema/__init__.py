"""JSON Schema → regex, sound first.

Every string the produced regex matches is a JSON document (as read by Python's ``json``) that
validates against the schema (Draft 2020-12, with earlier drafts' spellings: ``definitions``,
``dependencies``, array-form ``items`` + ``additionalItems``, boolean
``exclusiveMinimum``/``exclusiveMaximum``). What cannot be enforced exactly is either restricted
soundly (the regex accepts a documented subset of the valid documents) or refused with
:class:`~dotvllm_plugin.errors.UnsupportedFeatureError` naming the keyword and its JSON pointer.
Unknown keywords are annotations (the specification's rule); every validation keyword of drafts
3 … 2020-12 is known. See ``docs/json_schema.md`` for the keyword table.

Serialization we expect (and the model is steered to): compact JSON (no whitespace unless a
bounded ``whitespace_pattern`` is given), object properties in the schema's declared order
(declared ``properties`` first, then required names not in ``properties``, then additional /
pattern properties; see :func:`order_properties`), strings with literal characters and the short
escapes only (``unicode_escapes=True`` adds ``\\uXXXX`` for unbounded strings).

Supported: ``type`` (also lists), ``enum``, ``const``, ``properties``, ``required``,
``additionalProperties``, ``patternProperties``, ``propertyNames``, ``minProperties``/
``maxProperties`` (when countable), ``dependencies``/``dependentRequired``/``dependentSchemas``,
``items``/``prefixItems``/``additionalItems``, ``minItems``/``maxItems``, ``contains`` (no prefix
items), ``anyOf``, ``oneOf`` (provably disjoint branches, or unions of required properties),
``allOf`` (merged), ``not`` (type / required / const / enum / {} cases), ``if``/``then``/``else``
(simple conditions), ``$ref`` (local, recursion bounded by ``max_recursion_depth``),
``$defs``/``definitions``, ``minLength``/``maxLength``, ``pattern`` (ECMA-262, search
semantics), ``format`` (date, time, date-time, duration, email, hostname, ipv4, ipv6, uri,
uri-reference, uuid, json-pointer), ``minimum``/``maximum``/``exclusiveMinimum``/
``exclusiveMaximum``, integer ``multipleOf``.
"""

from __future__ import annotations

import functools
import json
import math
import re
from fractions import Fraction
from typing import Any

from ...errors import (
    CompilationTooLargeError,
    GrammarError,
    JSONSchemaError,
    UnsupportedFeatureError,
)
from ..ir import Grammar
from . import rules as R
from . import text as T
from .formats import FORMATS, UNSUPPORTED_FORMATS
from .numbers import NUMBER, integer_range, number_range

__all__ = [
    "DEFAULT_WHITESPACE",
    "FLEXIBLE_WHITESPACE",
    "MAX_REGEX_CHARS",
    "check_whitespace",
    "json_object_regex",
    "NeedsGrammar",
    "json_schema_to_ir",
    "json_schema_to_regex",
    "json_value_regex",
    "order_properties",
]

#: Default whitespace between JSON tokens: none (compact JSON, no room for whitespace loops).
DEFAULT_WHITESPACE = ""
#: A bounded, flexible alternative: up to one newline and a few spaces of indentation.
FLEXIBLE_WHITESPACE = "[ ]?|\\n[ ]{0,16}"
#: Size budget of the produced regex (characters); beyond it: CompilationTooLargeError.
MAX_REGEX_CHARS = 200_000
#: Budget of sub-schema expansions (recursion and reuse of $defs multiply them).
MAX_WORK = 20_000
#: Nesting depth of free-form JSON values (``{}``/``true`` schemas, unconstrained items).
ANY_VALUE_DEPTH = 1
#: In grammar mode, an object member's regex longer than this becomes a rule of its own.
RULE_MIN_CHARS = 64
#: The largest ``maxLength``/``maxItems`` compiled exactly: a string of N characters is about 9N
#: automaton states (a JSON string character is up to four UTF-8 bytes or an escape), so a larger
#: bound is over the state budget or costs most of a second to build; above it a schema is over
#: budget at once, before anything is built, and the compiler lowers the bound
#: (:data:`dotvllm_plugin.compiler.REPEAT_CAPS`).
EXACT_BOUND_LIMIT = 4096

_ANNOTATIONS = frozenset({
    "title", "description", "examples", "example", "$comment", "default", "deprecated",
    "readOnly", "writeOnly", "$schema", "$id", "id", "$vocabulary", "$anchor", "$dynamicAnchor",
    "$recursiveAnchor", "contentMediaType", "contentEncoding", "contentSchema", "$defs",
    "definitions",
})
#: Every validation or applicator keyword of drafts 3 … 2020-12. Anything else is an unknown
#: keyword, which the specification (and every validator) treats as an annotation.
_KNOWN = frozenset({
    "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "items", "prefixItems",
    "additionalItems", "contains", "minContains", "maxContains", "maxItems", "minItems",
    "uniqueItems", "properties", "patternProperties", "additionalProperties", "required",
    "minProperties", "maxProperties", "dependencies", "dependentRequired", "dependentSchemas",
    "propertyNames", "unevaluatedItems", "unevaluatedProperties", "allOf", "anyOf", "oneOf",
    "not", "if", "then", "else", "$ref", "$dynamicRef", "$recursiveRef", "format", "disallow",
    "extends", "divisibleBy",
})
_REFUSED = frozenset({
    "unevaluatedItems", "unevaluatedProperties",
    "$dynamicRef", "$recursiveRef", "disallow", "extends", "divisibleBy",
})
_TYPES = ("null", "boolean", "object", "array", "number", "string", "integer")
_ORDER = ("object", "array", "string", "number", "integer", "boolean", "null")

_OBJECT_KW = ("properties", "required", "additionalProperties", "patternProperties",
              "propertyNames", "minProperties", "maxProperties", "dependentRequired")
_ARRAY_KW = ("items", "prefixItems", "additionalItems", "contains", "minContains", "maxContains",
             "minItems", "maxItems", "uniqueItems")
_STRING_KW = ("minLength", "maxLength", "pattern", "format")
_NUMBER_KW = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def _load(schema):
    """The schema as a dict or bool (parsed when given as JSON text)."""
    if isinstance(schema, (str, bytes)):
        try:
            schema = json.loads(schema)
        except ValueError as e:
            raise JSONSchemaError(f"the schema is not valid JSON: {e}") from e
    if not isinstance(schema, (dict, bool)):
        raise JSONSchemaError(f"a JSON schema must be an object or a boolean, got {type(schema).__name__}")
    return schema


def json_schema_to_regex(
    schema: dict | str | bool,
    *,
    whitespace_pattern: str | None = None,
    max_recursion_depth: int = 3,
    max_regex_chars: int = MAX_REGEX_CHARS,
    allow_undeclared_properties: bool = False,
    unicode_escapes: bool = False,
    repeat_cap: int | None = None,
) -> str:
    """Regex matching JSON documents that validate against ``schema``.

    Parameters
    ----------
    schema : dict, bool or str
        The schema, or its JSON text.
    whitespace_pattern : str, optional
        Regex for the whitespace allowed between JSON tokens (vLLM's
        ``guided_whitespace_pattern``). It must match only JSON whitespace and be bounded.
        Default: :data:`DEFAULT_WHITESPACE` (none).
    max_recursion_depth : int
        How many times one ``$ref`` may be expanded inside itself; deeper instances of a
        recursive structure are not generated (a sound restriction).
    max_regex_chars : int
        Size budget of the result.
    allow_undeclared_properties : bool
        When an object schema declares ``properties`` but says nothing about
        ``additionalProperties`` (which then defaults to ``true``), whether to generate
        undeclared properties too. Default ``False``: only declared properties are generated
        (a sound restriction that keeps the regex small and the output on-schema).
    unicode_escapes : bool
        Whether strings without a length bound may contain ``\\uXXXX`` escapes. Default
        ``False``: characters are written literally and only the short escapes
        (``\\" \\\\ \\/ \\b \\f \\n \\r \\t``) are generated; hex escapes cost ~25 regex positions
        per string, and the engine's budget is counted in positions.
    repeat_cap : int, optional
        Lower every ``maxLength``/``maxItems`` above this to it (but never below the
        corresponding minimum): a sound restriction for engines whose automaton grows with the
        bound (``maxLength: 4096`` is ~37 000 states). Default: exact bounds.

    Raises
    ------
    JSONSchemaError
        The schema is malformed.
    UnsupportedFeatureError
        The schema uses a keyword (``feature``) at ``where`` that is not enforced exactly.
    CompilationTooLargeError
        The regex would exceed ``max_regex_chars``.
    """
    schema = _load(schema)
    ws = check_whitespace(whitespace_pattern)
    ctx = _Context(schema, ws, max_recursion_depth, max_regex_chars, allow_undeclared_properties)
    ctx.unicode_escapes = unicode_escapes
    ctx.repeat_cap = repeat_cap
    regex = ctx.compile(schema, "")
    if regex is None:
        raise UnsupportedFeatureError(
            "the schema accepts no JSON value (or none within the recursion depth bound "
            f"{max_recursion_depth}): it is equivalent to false, nothing can be generated",
            feature="false",
            where="/",
        )
    return ctx.check_size(regex, "")


class NeedsGrammar(Exception):
    """Raised by the translator in probe mode where a regex cannot say the schema exactly."""


def json_schema_to_ir(
    schema: dict | str | bool,
    *,
    whitespace_pattern: str | None = None,
    allow_undeclared_properties: bool = True,
    max_regex_chars: int = MAX_REGEX_CHARS,
    repeat_cap: int | None = None,
    mode: str = "auto",
    translate_only: bool = False,
) -> Grammar | None:
    """The grammar IR of the JSON documents valid under ``schema``.

    A schema a regex can say exactly (no free-form value, no recursion, undeclared properties
    forbidden or impossible) is one terminal: the regex of :func:`json_schema_to_regex`, compiled
    to a DFA. Any other schema — or one whose regex is over budget — is written as rules (see
    :mod:`.rules`): every ``$ref`` target one rule compiled once, recursion without a depth bound,
    free-form values any JSON value at any depth, strings with every escape, undeclared
    properties after the declared ones where ``additionalProperties`` allows them.

    ``allow_undeclared_properties=False`` (vLLM's ``disable_additional_properties``) generates
    only declared properties where ``additionalProperties`` is absent (a sound restriction).
    ``mode="grammar"`` writes rules even where one regex would do (tests compare the two).
    ``translate_only=True`` stops after the translation (every keyword checked, nothing parsed
    back into rules) and returns None: the request-time check. Raises what
    :func:`json_schema_to_regex` raises.
    """
    if mode not in ("auto", "grammar"):
        raise ValueError(f"mode must be 'auto' or 'grammar', got {mode!r}")
    text = schema if isinstance(schema, str) else None
    schema = _load(schema)
    source = text if text is not None else json.dumps(schema, sort_keys=True)
    ws = check_whitespace(whitespace_pattern)
    try:
        if mode == "grammar":
            raise NeedsGrammar("asked for")
        ctx = _Context(schema, ws, 3, max_regex_chars, allow_undeclared_properties, mode="probe")
        ctx.repeat_cap = repeat_cap
        regex = ctx.compile(schema, "")
        if regex is not None:
            regex = ctx.check_size(regex, "")
            return None if translate_only else Grammar.from_regex(regex, kind="json_schema", source=source)
    except (NeedsGrammar, CompilationTooLargeError):
        pass
    # (the placeholders lie in plane 16: an ASCII dump escapes each as a surrogate pair whose high
    # half is \udbXX, so a dump without "\udb" holds none; a schema given as text may hold them
    # unescaped)
    may_hold = text is not None or "\\udb" in source
    if may_hold and R.has_placeholders(json.dumps(schema, ensure_ascii=False)):
        raise _refuse("enum", "/", "characters of Unicode's Supplementary Private Use Area-B in a schema "
                      "that needs rules (recursion, free-form values or undeclared properties)")
    ctx = _Context(schema, ws, 3, max_regex_chars, allow_undeclared_properties, mode="grammar")
    ctx.repeat_cap = repeat_cap
    root = ctx.compile(schema, "")
    if root is None:
        raise UnsupportedFeatureError(
            "the schema accepts no JSON value: it is equivalent to false, nothing can be generated",
            feature="false",
            where="/",
        )
    ctx.check_size(root, "")
    empty = [ref for ref, ph in ctx.ref_placeholder.items() if ctx.bodies.get(ph) is None]
    bodies = {ph: b for ph, b in ctx.bodies.items() if b is not None}
    used = root + "".join(bodies.values())
    for ref in empty:
        if ctx.ref_placeholder[ref] in used:
            raise _refuse("$ref", ref.lstrip("#") or "/", "a recursive definition that accepts no finite value")
    if translate_only:
        return None
    return R.regex_to_grammar(root, bodies, kind="json_schema", source=source, excluded=ctx.excluded)


#: A schema whose translation holds the terminals nearly every schema has (a free string, number,
#: integer, boolean, null, punctuation, the undeclared-key string): :func:`shared_terminals`.
_SHARED_PROBE = {"type": "object", "required": ["s"], "properties": {
    "s": {"type": "string"}, "n": {"type": "number"}, "i": {"type": "integer"}, "b": {"type": "boolean"},
    "z": {"type": "null"}, "a": {"type": "array", "items": {"type": "string"}}, "f": {}}}


#: A schema that nests (so it compiles to the pushdown matcher), and texts that lead inside its
#: string value, a string in an array, and an undeclared key (see ``pushdown.pinned_walks``).
STRING_WALK_PROBE = {"$defs": {"n": {"type": "object", "properties": {
    "s": {"type": "string"}, "k": {"type": "array", "items": {"$ref": "#/$defs/n"}},
    "l": {"type": "array", "items": {"type": "string"}}}}}, "$ref": "#/$defs/n"}
STRING_WALK_TEXTS = (b'{"s":"', b'{"l":["', b'{"qq')


@functools.cache
def shared_terminals() -> tuple:
    """The terminals of the translator's own fixed lexemes, as any schema's grammar (default
    options) writes them: the probe schema's terminals but its property names (a terminal whose
    text opens with a quote and is one literal: a key or an enum string). Whether a schema's
    terminal is one of them is decided by its regex alone, so a compile may reuse their automata."""
    from ...regex import _literal_bytes

    grammar = json_schema_to_ir(_SHARED_PROBE)
    out = []
    for t in grammar.terminals:
        text = None if t.tree is None or t.exclude else _literal_bytes(t.tree)
        if text is None or not text.startswith(b'"'):
            out.append(t)
    return tuple(out)


def json_value_regex(*, whitespace_pattern: str | None = None, max_depth: int = 3) -> str:
    """Any JSON value with arrays/objects nested at most ``max_depth`` levels."""
    return _any_value(check_whitespace(whitespace_pattern), max_depth)


def json_object_regex(*, whitespace_pattern: str | None = None, max_depth: int = 3) -> str:
    """Any JSON object, containers nested at most ``max_depth`` levels (the object is level 1)."""
    ws = check_whitespace(whitespace_pattern)
    return _any_object(ws, max_depth)


# --------------------------------------------------------------------------------------------
# whitespace
# --------------------------------------------------------------------------------------------

_JSON_WS = frozenset(" \t\n\r")


def check_whitespace(pattern: str | None) -> str:
    """The whitespace regex to put between JSON tokens (``DEFAULT_WHITESPACE`` for None or "");
    refuses patterns that match non-JSON whitespace or unboundedly long whitespace."""
    if pattern is None or pattern == "":
        return DEFAULT_WHITESPACE
    try:
        import interegular

        fsm = interegular.parse_pattern(pattern).to_fsm()
    except Exception as e:  # noqa: BLE001 - interegular raises several types
        raise UnsupportedFeatureError(
            f"whitespace_pattern {pattern!r} is not a supported regex: {e}",
            feature="whitespace_pattern",
            where="whitespace_pattern",
        ) from e
    bad, unbounded = _whitespace_fsm_problems(fsm)
    if bad:
        raise UnsupportedFeatureError(
            f"whitespace_pattern {pattern!r} can match {bad!r}, which is not JSON whitespace "
            "(space, tab, newline, carriage return)",
            feature="whitespace_pattern",
            where="whitespace_pattern",
        )
    if unbounded:
        raise UnsupportedFeatureError(
            f"whitespace_pattern {pattern!r} matches unboundedly long whitespace, which lets a "
            "model loop forever; bound it, e.g. '[ ]?' or '\\n[ ]{0,8}'",
            feature="whitespace_pattern",
            where="whitespace_pattern",
        )
    return f"(?:{pattern})"


def _whitespace_fsm_problems(fsm) -> tuple[str | None, bool]:
    from interegular.fsm import anything_else

    live = _live_states(fsm)
    by_transition: dict[Any, list] = {}
    for ch, t in fsm.alphabet.items():
        by_transition.setdefault(t, []).append(ch)
    edges: dict[Any, list] = {}
    for s in live:
        for t, dst in fsm.map.get(s, {}).items():
            if dst not in live:
                continue
            for ch in by_transition.get(t, []):
                if ch is anything_else or ch not in _JSON_WS:
                    return ("any other character" if ch is anything_else else ch), False
            edges.setdefault(s, []).append(dst)
    # a cycle among live states means unbounded length
    color: dict[Any, int] = {}

    def cyclic(s) -> bool:
        color[s] = 1
        for d in edges.get(s, []):
            if color.get(d) == 1 or (d not in color and cyclic(d)):
                return True
        color[s] = 2
        return False

    return None, any(s not in color and cyclic(s) for s in list(live))


def _live_states(fsm) -> set:
    reach = {fsm.initial}
    stack = [fsm.initial]
    while stack:
        s = stack.pop()
        for d in fsm.map.get(s, {}).values():
            if d not in reach:
                reach.add(d)
                stack.append(d)
    co = set(fsm.finals)
    changed = True
    while changed:
        changed = False
        for s in reach:
            if s not in co and any(d in co for d in fsm.map.get(s, {}).values()):
                co.add(s)
                changed = True
    return reach & co


# --------------------------------------------------------------------------------------------
# free-form values
# --------------------------------------------------------------------------------------------

STRING = '"' + T.PLAIN_CHAR + '*"'


def _scalar() -> str:
    return f'(?:null|true|false|{NUMBER}|{STRING})'


def _any_value(ws: str, depth: int) -> str:
    if depth <= 0:
        return _scalar()
    inner = _any_value(ws, depth - 1)
    return f"(?:{_scalar()[3:-1]}|{_array_of(ws, inner)}|{_object_of(ws, STRING, inner)})"


def _any_object(ws: str, depth: int) -> str:
    return _object_of(ws, STRING, _any_value(ws, depth - 1))


def _array_of(ws: str, item: str) -> str:
    return f"\\[{ws}(?:{item}(?:{ws},{ws}{item})*{ws})?\\]"


def _object_of(ws: str, key: str, value: str) -> str:
    kv = f"{key}{ws}:{ws}{value}"
    return f"\\{{{ws}(?:{kv}(?:{ws},{ws}{kv})*{ws})?\\}}"


# --------------------------------------------------------------------------------------------
# the compiler
# --------------------------------------------------------------------------------------------


def _ptr(where: str, *parts) -> str:
    for p in parts:
        p = str(p)
        # (most parts are names and keywords without either character: no copies)
        where += "/" + (p.replace("~", "~0").replace("/", "~1") if "~" in p or "/" in p else p)
    return where


def _ref_where(ref: str) -> str:
    """The JSON pointer of a local reference's target (``#/definitions/a`` → ``/definitions/a``)."""
    return ref.lstrip("#") or ""


def _refuse(keyword: str, where: str, why: str) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(
        f"JSON Schema keyword {keyword!r} at {where or '/'} is not supported: {why}",
        feature=keyword,
        where=where or "/",
    )


def _bad(where: str, msg: str) -> JSONSchemaError:
    return JSONSchemaError(f"invalid schema at {where or '/'}: {msg}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _canon(value) -> str:
    """Key for JSON equality of enum values (1 and 1.0 kept apart: a sound under-approximation)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class _Context:
    def __init__(self, root, ws: str, max_depth: int, max_chars: int, undeclared: bool = False,
                 mode: str = "regex"):
        #: "regex": one regex; "probe": one regex, or :class:`NeedsGrammar` at the first spot a
        #: regex cannot say exactly (a free-form value, recursion); "grammar": placeholders
        #: (see :mod:`.rules`) for those, rule bodies in :attr:`bodies`
        self.mode = mode
        self.undeclared = undeclared
        self.unicode_escapes = mode == "grammar"
        self.m = m = R.MARK if mode == "grammar" else ""
        # structural pieces, with lexeme boundaries in grammar mode
        self.lb, self.rb = f"\\{{{m}{ws}", f"{ws}{m}\\}}"
        self.lsq, self.rsq = f"\\[{m}{ws}", f"{ws}{m}\\]"
        self.sep = f"{ws}{m},{m}{ws}"
        self.colon = f"{ws}:{m}{ws}"
        self.bodies: dict[str, str | None] = {}
        self.ref_placeholder: dict[str, str] = {}
        self.rule_of_regex: dict[str, str] = {}
        self.object_chains: dict[tuple, str] = {}  # grammar mode: (parts) → the object's rules
        self.excluded: dict[str, tuple[str, ...]] = {}  # exclusion marker → names (grammar mode)
        self.n_rules = 0
        self.repeat_cap: int | None = None
        self.root = root
        self.ws = ws
        self.max_depth = max_depth
        self.max_chars = max_chars
        self.ref_stack: list[str] = []
        self._any = None
        self.work = 0

    # ---- utilities -----------------------------------------------------------------------

    def check_size(self, regex: str, where: str) -> str:
        if len(regex) > self.max_chars:
            raise CompilationTooLargeError(
                f"the regex for the schema at {where or '/'} exceeds {self.max_chars} characters; "
                "simplify the schema (fewer optional properties, smaller bounds, less nesting)"
            )
        return regex

    def capped(self, hi: int | None, lo: int, keyword: str, where: str) -> int | None:
        """``maxLength``/``maxItems`` lowered to ``repeat_cap`` (never below the minimum). Without
        a cap, a bound above :data:`EXACT_BOUND_LIMIT` is over budget at once."""
        if hi is None:
            return hi
        if self.repeat_cap is None:
            if hi > EXACT_BOUND_LIMIT:
                raise CompilationTooLargeError(
                    f"{keyword} {hi} at {_ptr(where, keyword)} is above {EXACT_BOUND_LIMIT}, the largest bound "
                    "compiled exactly"
                )
            return hi
        if hi <= self.repeat_cap:
            return hi
        return max(self.repeat_cap, lo)

    def any_value(self) -> str:
        if self.mode == "probe":
            raise NeedsGrammar("a free-form value")
        if self.mode == "grammar":
            if R.ANY not in self.bodies:
                self.bodies[R.ANY] = self.any_value_body()
            return R.ANY
        if self._any is None:
            self._any = _any_value(self.ws, ANY_VALUE_DEPTH)
        return self._any

    def any_value_body(self) -> str:
        """Any JSON value (grammar mode): containers hold :data:`.rules.ANY` itself; strings take
        every escape."""
        string = '"' + T.ANY_CHAR + '*"'
        v, sep = R.ANY, self.sep
        array = f"{self.lsq}(?:{v}(?:{sep}{v})*)?{self.rsq}"
        member = f"{string}{self.colon}{v}"
        obj = f"{self.lb}(?:{member}(?:{sep}{member})*)?{self.rb}"
        return f"(?:null|true|false|{NUMBER}|{string}|{array}|{obj})"

    def new_placeholder(self) -> str:
        self.n_rules += 1
        if self.n_rules > R.MAX_RULES:
            raise CompilationTooLargeError(f"the schema needs more than {R.MAX_RULES} rules; reduce reuse or nesting")
        return R.placeholder(R.FIRST_REF + self.n_rules)

    def as_rule(self, regex: str) -> str:
        """Grammar mode: a long regex as a rule of its own (written once however often used)."""
        if self.mode != "grammar" or len(regex) <= RULE_MIN_CHARS:
            return regex
        ph = self.rule_of_regex.get(regex)
        if ph is None:
            ph = self.rule_of_regex[regex] = self.new_placeholder()
            self.bodies[ph] = regex
        return ph

    def key_not_in(self, names: list[str]) -> str:
        """A key (with its quotes) that is none of ``names``. Grammar mode: an exclusion marker
        (see :mod:`.rules`) before any plain key, the names cut from its automaton directly."""
        if self.mode != "grammar" or not names:
            return '"' + _not_in(names) + '"'
        names_t = tuple(sorted(set(names)))
        marker = next((m for m, v in self.excluded.items() if v == names_t), None)
        if marker is None:
            marker = self.new_placeholder()
            self.excluded[marker] = names_t
        return marker + '"' + T.repeat(T.PLAIN_CHAR, 0, None) + '"'

    def rule_for_ref(self, ref: str, where: str) -> str | None:
        """Grammar mode: the placeholder of the rule for ``ref`` (compiled once, on first use);
        ``None`` when its schema accepts nothing."""
        ph = self.ref_placeholder.get(ref)
        if ph is None:
            ph = self.ref_placeholder[ref] = self.new_placeholder()
            target = self.resolve(ref, _ptr(where, "$ref"))
            saved, self.ref_stack = self.ref_stack, [ref]
            try:
                self.bodies[ph] = self.compile(target, _ref_where(ref))
            finally:
                self.ref_stack = saved
        return None if self.bodies.get(ph, "") is None else ph

    def resolve(self, ref: Any, where: str):
        if not isinstance(ref, str):
            raise _bad(where, f"$ref must be a string, got {ref!r}")
        if not ref.startswith("#"):
            raise _refuse("$ref", where, f"only local references ('#/...') are supported, got {ref!r}")
        frag = ref[1:]
        if frag and not frag.startswith("/"):
            raise _refuse("$ref", where, f"anchor references ({ref!r}) are not supported")
        from urllib.parse import unquote

        node = self.root
        for raw in frag.split("/")[1:] if frag else []:
            part = unquote(raw).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise JSONSchemaError(f"$ref {ref!r} at {where or '/'} points to nothing in the schema")
        if not isinstance(node, (dict, bool)):
            raise JSONSchemaError(f"$ref {ref!r} at {where or '/'} does not point to a schema")
        return node

    # ---- normalisation -------------------------------------------------------------------

    def keywords(self, node: dict, where: str) -> dict:
        """The validation keywords of ``node`` (annotations and unknown keywords dropped)."""
        out = {}
        for k, v in node.items():
            if k == "_not_values":  # internal: values excluded by an enclosing 'not'
                out[k] = v
                continue
            if k in _ANNOTATIONS or k not in _KNOWN:
                continue
            if k in ("then", "else") and "if" not in node:
                continue  # without "if" they have no effect
            if k in _REFUSED:
                raise _refuse(k, _ptr(where, k), "it cannot be enforced exactly by a regex")
            out[k] = v
        return out

    def expand_ref(self, kw: dict, where: str) -> tuple[dict | bool | None, bool]:
        """Inline a ``$ref`` into ``kw``; returns (schema, pushed) with ``None`` = depth cut."""
        ref = kw["$ref"]
        if self.ref_stack.count(ref) >= self.max_depth:
            if self.mode == "probe":
                raise NeedsGrammar(f"recursion through {ref}")
            return None, False
        target = self.resolve(ref, _ptr(where, "$ref"))
        rest = {k: v for k, v in kw.items() if k != "$ref"}
        self.ref_stack.append(ref)
        if not rest:
            return target, True
        return {"allOf": [target, rest]}, True

    # ---- entry ---------------------------------------------------------------------------

    def compile(self, node, where: str) -> str | None:
        try:
            return self.compile_node(node, where)
        except UnsupportedFeatureError:
            # A schema whose values are pinned by enum/const (here or in an allOf branch) is a
            # finite set: keep the values the whole schema accepts, whatever keywords it uses.
            values = self.pinned_values(node, where)
            if values is None:
                raise
            return self.compile_enum({"enum": [v for v in values if self.valid_whole(v, node, where)]}, where)

    def pinned_values(self, node, where: str, depth: int = 0) -> list | None:
        """The enum/const values that bound ``node``'s language, if any (own or in ``allOf``)."""
        if not isinstance(node, dict) or depth > 8:
            return None
        if "const" in node and node["const"] is not _NoValue:
            return [node["const"]]
        if isinstance(node.get("enum"), list):
            return node["enum"]
        for branch in node.get("allOf", []) if isinstance(node.get("allOf"), list) else []:
            if isinstance(branch, dict) and isinstance(branch.get("$ref"), str) and len(branch) == 1:
                try:
                    branch = self.resolve(branch["$ref"], where)
                except (JSONSchemaError, UnsupportedFeatureError):
                    continue
            got = self.pinned_values(branch, where, depth + 1)
            if got is not None:
                return got
        return None

    def valid_whole(self, value, node: dict, where: str) -> bool:
        """Whether ``value`` is valid under the sub-schema ``node`` (all keywords, jsonschema)."""
        if _excluded(value, node):
            return False
        return _valid(self, value, {k: v for k, v in node.items() if not k.startswith("_")}, where)

    def compile_node(self, node, where: str) -> str | None:
        if node is True:
            return self.any_value()
        if node is False:
            return None
        if not isinstance(node, dict):
            raise _bad(where, f"a schema must be an object or a boolean, got {node!r}")
        kw = self.keywords(node, where)
        self.work += 1
        if self.work > MAX_WORK:
            raise CompilationTooLargeError(
                f"the schema expands to more than {MAX_WORK} sub-schemas (at {where or '/'}); "
                "reduce recursion or reuse"
            )
        if not kw:
            return self.any_value()
        if "if" in kw:
            return self.compile(self.expand_if(kw, where), where)
        if any(k in kw for k in ("dependencies", "dependentRequired", "dependentSchemas")):
            return self.compile(self.expand_dependencies(kw, where), where)
        if "$ref" in kw:
            if self.mode == "grammar" and set(kw) == {"$ref"} and isinstance(kw["$ref"], str):
                return self.rule_for_ref(kw["$ref"], where)
            target, pushed = self.expand_ref(kw, where)
            if target is None:
                return None
            try:
                # (a bare reference: its target is read where it is written, as the rule translation
                # reads it, so that a refusal inside it names the same place in either translation)
                return self.compile(target, _ref_where(kw["$ref"]) if len(kw) == 1 else where)
            finally:
                if pushed:
                    self.ref_stack.pop()
        if "allOf" in kw:
            merged, pushed = self.merge_all(kw, where)
            try:
                return self.compile(merged, where)
            finally:
                del self.ref_stack[len(self.ref_stack) - pushed :]
        if "anyOf" in kw or "oneOf" in kw:
            return self.compile_alternatives(kw, where)
        if "not" in kw:
            kw = self.apply_not(kw, where)
            if kw is None:
                return None
            if not isinstance(kw, dict) or any(k in kw for k in ("$ref", "allOf", "anyOf", "oneOf", "not")):
                return self.compile(kw, where)
        return self.compile_flat(kw, where)

    def expand_if(self, kw: dict, where: str) -> dict:
        """``if I then T else E`` as ``anyOf [I and T, (not I) and E]`` (exact, branches disjoint).

        ``not I`` is written out for the shapes real schemas use: one property's value
        (``{properties: {p: S}}`` → p present and not S), ``required``, ``type``, ``const``/
        ``enum``; other conditions are refused.
        """
        w = _ptr(where, "if")
        rest = {k: v for k, v in kw.items() if k not in ("if", "then", "else")}
        cond = kw["if"]
        depth = len(self.ref_stack)
        flat, _ = self.flatten(cond, w)
        del self.ref_stack[depth:]
        then, other = kw.get("then", True), kw.get("else", True)
        if flat is None:
            raise _refuse("if", w, "a recursive condition")
        if flat is True or flat == {}:
            branch = then
        elif flat is False:
            branch = other
        else:
            negated = self.negation(flat, w)
            branch = {"anyOf": [{"allOf": [flat, then]}, {"allOf": [negated, other]}]}
        return {"allOf": [rest, branch]} if rest else branch

    def negation(self, flat: dict, where: str) -> dict:
        keys = set(flat)
        if keys == {"properties"} and isinstance(flat["properties"], dict) and len(flat["properties"]) == 1:
            (name, sub), = flat["properties"].items()
            return {"type": "object", "required": [name], "properties": {name: {"not": sub}}}
        if keys == {"required"} and isinstance(flat["required"], list) and len(flat["required"]) == 1:
            return {"type": "object", "properties": {flat["required"][0]: False}}
        if keys in ({"type"}, {"const"}, {"enum"}, {"type", "const"}, {"type", "enum"}):
            if "type" in keys and len(keys) == 2:
                raise _refuse("if", where, "a condition on type and value together")
            return {"not": flat}
        raise _refuse("if", where, "only conditions on one property's value, one required name, a "
                      "type or const/enum can be negated for 'else'")

    def expand_dependencies(self, kw: dict, where: str) -> dict:
        """``p → deps`` as ``anyOf [p absent, p and deps]`` (exact: both sides ignore non-objects)."""
        rest = {k: v for k, v in kw.items()
                if k not in ("dependencies", "dependentRequired", "dependentSchemas")}
        conds = []
        for key in ("dependencies", "dependentRequired", "dependentSchemas"):
            deps = kw.get(key)
            if deps is None:
                continue
            if not isinstance(deps, dict):
                raise _bad(_ptr(where, key), f"{key} must be an object")
            for name, dep in deps.items():
                w = _ptr(where, key, name)
                absent = {"properties": {name: False}}
                if isinstance(dep, list):
                    if key == "dependentSchemas" or not all(isinstance(x, str) for x in dep):
                        raise _bad(w, "expected an array of property names")
                    present = {"required": [name, *dep]}
                elif isinstance(dep, (dict, bool)) and key != "dependentRequired":
                    present = {"required": [name], "allOf": [dep]}
                else:
                    raise _bad(w, f"{key} values must be arrays of names or schemas")
                conds.append({"anyOf": [absent, present]})
        if len(conds) > 6:
            raise _refuse("dependencies" if "dependencies" in kw else "dependentRequired", where,
                          "more than 6 property dependencies (each doubles the regex)")
        return {"allOf": [rest, *conds]} if rest else {"allOf": conds}

    # ---- allOf ---------------------------------------------------------------------------

    def merge_all(self, kw: dict, where: str) -> tuple[dict | bool, int]:
        subs = kw["allOf"]
        if not isinstance(subs, list) or not subs:
            raise _bad(_ptr(where, "allOf"), "allOf must be a non-empty array")
        acc: dict | bool = {k: v for k, v in kw.items() if k != "allOf"}
        pushed = 0
        for i, sub in enumerate(subs):
            sub_where = _ptr(where, "allOf", i)
            flat, p = self.flatten(sub, sub_where)
            pushed += p
            if flat is None:
                return False, pushed
            acc = self.merge(acc, flat, sub_where)
        return acc, pushed

    def flatten(self, node, where: str) -> tuple[dict | bool | None, int]:
        """``node`` with top-level ``$ref``/``allOf`` inlined (``None``: recursion cut)."""
        pushed = 0
        while True:
            if isinstance(node, bool):
                return node, pushed
            if not isinstance(node, dict):
                raise _bad(where, f"a schema must be an object or a boolean, got {node!r}")
            kw = self.keywords(node, where)
            if "$ref" in kw:
                target, p = self.expand_ref(kw, where)
                pushed += p
                if target is None:
                    return None, pushed
                node = target
                continue
            if "allOf" in kw:
                merged, p = self.merge_all(kw, where)
                pushed += p
                return merged, pushed
            return kw, pushed

    def merge(self, a: dict | bool, b: dict | bool, where: str) -> dict | bool:
        if a is False or b is False:
            return False
        if a is True:
            return b
        if b is True:
            return a
        _check_shape(a, where)
        _check_shape(b, where)
        out = dict(a)
        if "properties" in out:
            out["properties"] = dict(out["properties"])
        for k, v in b.items():
            if k not in out:
                out[k] = v
                continue
            u = out[k]
            if _canon(u) == _canon(v) and k not in ("$ref",):
                continue
            out[k] = self.merge_keyword(k, u, v, a, b, _ptr(where, k))
        obj = ("properties", "patternProperties", "additionalProperties")
        if any(k in a for k in obj) and any(k in b for k in obj):
            if "properties" in out:
                out["properties"] = dict(out["properties"])
            self.merge_object_names(out, a, b, where)
        if any(k in a or k in b for k in ("prefixItems", "items", "additionalItems")):
            self.merge_items(out, a, b, where)
        return out

    def merge_keyword(self, k: str, u, v, a: dict, b: dict, where: str):
        if k == "type":
            tu = set(u if isinstance(u, list) else [u])
            tv = set(v if isinstance(v, list) else [v])
            both = (tu & tv) | ({"integer"} if ("integer" in tu and "number" in tv) or (
                "number" in tu and "integer" in tv) else set())
            return sorted(both)
        if k in ("enum", "const"):
            lu = u if k == "enum" else [u]
            lv = v if k == "enum" else [v]
            keys = {_canon(x) for x in lv}
            both = [x for x in lu if _canon(x) in keys]
            return both if k == "enum" else (both[0] if both else _NoValue)
        bound = k in ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties", "minContains")
        if bound or k in ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties", "maxContains"):
            if isinstance(u, bool) or isinstance(v, bool):
                raise _refuse(k, where, "boolean exclusive bounds cannot be merged")
            if not (isinstance(u, (int, float)) and isinstance(v, (int, float))):
                raise _bad(where, f"{k} must be a number, got {v if isinstance(u, (int, float)) else u!r}")
            return max(u, v) if bound else min(u, v)
        if k == "required":  # (shapes checked by merge: lists of names, or nothing)
            return list(dict.fromkeys(list(u or []) + list(v or [])))
        if k == "multipleOf":
            if _is_int(u) and _is_int(v):
                return u * v // math.gcd(u, v)
            raise _refuse(k, where, "two different non-integer multipleOf cannot be merged")
        if k == "uniqueItems":
            return bool(u) or bool(v)
        if k in ("properties", "patternProperties"):
            out = dict(u)
            for name, s in v.items():
                out[name] = {"allOf": [out[name], s]} if name in out else s
            return out
        if k in ("additionalProperties", "propertyNames", "contains", "items", "additionalItems"):
            return {"allOf": [u, v]}
        if k == "prefixItems":
            return u  # merge_items rebuilds positions
        if k == "anyOf":
            if len(u) * len(v) > 64:
                raise _refuse(k, where, "two anyOf lists whose product exceeds 64 branches")
            return [{"allOf": [x, y]} for x in u for y in v]
        raise _refuse(k, where, f"two different values of {k!r} in allOf cannot be merged")

    def merge_object_names(self, out: dict, a: dict, b: dict, where: str) -> None:
        """Apply each side's pattern/additional constraints to names only the other declares."""
        for side, other in ((a, b), (b, a)):
            pp = side.get("patternProperties") or {}
            add = side.get("additionalProperties", True)
            if pp and "additionalProperties" in other and other["additionalProperties"] is not True:
                raise _refuse("patternProperties", _ptr(where, "patternProperties"),
                              "allOf of patternProperties with additionalProperties on another branch")
            for name in (other.get("properties") or {}):
                if name in (side.get("properties") or {}):
                    continue
                extra = [s for p, s in pp.items() if self.name_matches(p, name, where)]
                if not extra:
                    extra = [add]
                cur = out["properties"][name]
                out["properties"][name] = {"allOf": [cur, *extra]}
        if "additionalProperties" in a and "additionalProperties" in b:
            out["additionalProperties"] = {"allOf": [a["additionalProperties"], b["additionalProperties"]]}

    def merge_items(self, out: dict, a: dict, b: dict, where: str) -> None:
        pa, ra = self.item_layout(a, where)
        pb, rb = self.item_layout(b, where)
        n = max(len(pa), len(pb))
        prefix = []
        for i in range(n):
            x = pa[i] if i < len(pa) else ra
            y = pb[i] if i < len(pb) else rb
            prefix.append({"allOf": [x, y]})
        out.pop("additionalItems", None)
        if prefix:
            out["prefixItems"] = prefix
        else:
            out.pop("prefixItems", None)
        out["items"] = {"allOf": [ra, rb]}

    def item_layout(self, kw: dict, where: str) -> tuple[list, Any]:
        """(positional schemas, schema of the remaining items) in any draft's spelling."""
        items = kw.get("items", True)
        if "prefixItems" in kw:
            prefix = kw["prefixItems"]
            if not isinstance(prefix, list):
                raise _bad(_ptr(where, "prefixItems"), "prefixItems must be an array")
            return list(prefix), items
        if isinstance(items, list):
            return list(items), kw.get("additionalItems", True)
        return [], items

    def name_matches(self, pattern: str, name: str, where: str) -> bool:
        info = T.translate_pattern(pattern, _ptr(where, "patternProperties", pattern))
        body = json.dumps(name, ensure_ascii=False)[1:-1]
        return info.regex is not None and re.fullmatch(info.regex, body) is not None

    # ---- anyOf / oneOf -------------------------------------------------------------------

    def compile_alternatives(self, kw: dict, where: str) -> str | None:
        key = "anyOf" if "anyOf" in kw else "oneOf"
        subs = kw[key]
        if not isinstance(subs, list) or not subs:
            raise _bad(_ptr(where, key), f"{key} must be a non-empty array")
        rest = {k: v for k, v in kw.items() if k != key}
        branches = []
        for i, sub in enumerate(subs):
            branches.append(({"allOf": [rest, sub]} if rest else sub, _ptr(where, key, i)))
        if key == "oneOf" and len(branches) > 1:
            restricted = self.check_disjoint([b for b, _ in branches], where)
            branches = [(r, w) for r, (_, w) in zip(restricted, branches)]
        alts = []
        for b, w in branches:
            r = self.compile(b, w)
            if r is not None:
                alts.append(r)
        return self.check_size(T.alternation(alts), where) if alts else None

    def check_disjoint(self, branches: list, where: str) -> list:
        """Branches restricted so that what one generates validates against no other one.

        Either already provable (``_disjoint``), or made so by forbidding, in branch i, a property
        that branch j requires and i does not (then nothing i generates satisfies j). Raises
        when neither works.
        """
        branches = list(branches)

        def flat(b, i):
            depth = len(self.ref_stack)
            f, _ = self.flatten(b, _ptr(where, "oneOf", i))
            del self.ref_stack[depth:]
            if isinstance(f, dict):  # (read below before the branch is compiled)
                _check_shape(f, _ptr(where, "oneOf", i))
            return f

        flats = [flat(b, i) for i, b in enumerate(branches)]
        originals = list(flats)
        for i in range(len(flats)):
            for j in range(len(flats)):
                if i == j or _disjoint(flats[i], originals[j], self, generated=True):
                    continue
                fi, fj = flats[i], originals[j]
                req_i = set(fi.get("required") or []) if isinstance(fi, dict) else set()
                req_j = [n for n in (fj.get("required") or []) if n not in req_i] if isinstance(fj, dict) else []
                if req_j and isinstance(fi, dict) and "object" in _type_set(fi, _values(fi)):
                    # (non-objects satisfy both "required" branches, so they are never valid here
                    # when j accepts them; restricting i to objects is sound in any case)
                    branches[i] = {"allOf": [branches[i], {"type": "object", "properties": {req_j[0]: False}}]}
                    flats[i] = flat(branches[i], i)
                    if _disjoint(flats[i], originals[j], self, generated=True):
                        continue
                raise _refuse(
                    "oneOf", _ptr(where, "oneOf"),
                    f"branches {i} and {j} may both match the same value, and 'exactly one' "
                    "cannot be enforced by a regex; make the branches disjoint (e.g. different "
                    "types or a required property with different const values) or use anyOf",
                )
        return branches

    # ---- not -----------------------------------------------------------------------------

    def apply_not(self, kw: dict, where: str) -> dict | None:
        neg = kw["not"]
        w = _ptr(where, "not")
        kw = {k: v for k, v in kw.items() if k != "not"}
        depth = len(self.ref_stack)
        flat, _ = self.flatten(neg, w)
        del self.ref_stack[depth:]
        if flat is None:
            raise _refuse("not", w, "a recursive schema under 'not'")
        if flat is True or flat == {}:
            return None
        if flat is False:
            return kw
        _check_shape(flat, w)
        keys = set(flat)
        if keys == {"not"}:  # double negation
            return self.flatten({"allOf": [kw, flat["not"]]}, w)[0] if kw else flat["not"]
        if keys == {"type"}:
            banned = set(flat["type"] if isinstance(flat["type"], list) else [flat["type"]])
            types = self.types_of(kw, where)
            allowed = [t for t in types if t not in banned and not (t == "integer" and "number" in banned)]
            if "number" in allowed and "integer" in banned:
                raise _refuse("not", w, "'not integer' on numbers is not supported")
            if not allowed:
                return None
            kw["type"] = allowed
            return kw
        if keys == {"required"} and isinstance(flat["required"], list) and len(flat["required"]) == 1:
            name = flat["required"][0]
            props = dict(kw.get("properties") or {})
            if name in (kw.get("required") or []):
                types = [t for t in self.types_of(kw, where) if t != "object"]
                if not types:
                    return None
                kw["type"] = types
                return kw
            props[name] = False
            kw["properties"] = props
            return kw
        if keys in ({"enum"}, {"const"}):
            values = _enum_values(flat, w) if "enum" in flat else [flat["const"]]
            kw["_not_values"] = list(kw.get("_not_values", [])) + values
            return kw
        raise _refuse("not", w, "only 'not' of type, a single required name, const/enum, {} or "
                      "false is supported")

    # ---- flat schemas --------------------------------------------------------------------

    def types_of(self, kw: dict, where: str) -> list[str]:
        ts = _type_names(kw, where)
        if ts is None:
            return ["object", "array", "string", "number", "boolean", "null"]
        if "number" in ts:
            ts = [x for x in ts if x != "integer"]
        return [x for x in _ORDER if x in ts]

    def compile_flat(self, kw: dict, where: str) -> str | None:
        if kw.get("const", None) is _NoValue:
            return None
        if "enum" in kw or "const" in kw:
            return self.compile_enum(kw, where)
        alts = []
        for t in self.types_of(kw, where):
            if "_not_values" in kw:
                r = self.compile_excluding(t, kw, where)
            else:
                r = getattr(self, "compile_" + t)(kw, where)
            if r is not None:
                alts.append(r)
        return self.check_size(T.alternation(alts), where) if alts else None

    def compile_excluding(self, t: str, kw: dict, where: str) -> str | None:
        """Type ``t`` of ``kw`` minus the values of an enclosing ``not: {enum/const}``.

        Only values with a unique spelling in our output are subtracted: null/booleans, and
        strings without other string keywords ("any string but these" is a name trie).
        """
        banned = kw["_not_values"]
        w = _ptr(where, "not")
        if t in ("null", "boolean"):
            keys = {_canon(v) for v in banned}
            lits = [x for x in (["null"] if t == "null" else ["true", "false"]) if x not in keys]
            return T.alternation(lits)
        if t == "string":
            strs = [v for v in banned if isinstance(v, str)]
            if not strs:
                return self.compile_string(kw, where)
            if any(k in kw for k in _STRING_KW):
                raise _refuse("not", w, "'not' with string values together with string keywords")
            return '"' + _not_in(strs) + '"'
        clash = {"number": (int, float), "integer": (int, float), "array": (list,), "object": (dict,)}[t]
        if any(isinstance(v, clash) and not isinstance(v, bool) for v in banned):
            raise _refuse("not", w, f"'not' with {t} values is not supported")
        return getattr(self, "compile_" + t)(kw, where)

    def compile_enum(self, kw: dict, where: str) -> str | None:
        values = _enum_values(kw, where) if "enum" in kw else [kw["const"]]
        if "enum" in kw and "const" in kw:
            keys = {_canon(kw["const"])}
            values = [v for v in values if _canon(v) in keys]
        rest = {k: v for k, v in kw.items() if k not in ("enum", "const")}
        if rest:
            values = [v for v in values if self.validates(v, rest, where)]
        seqs = []
        for v in values:
            if isinstance(v, str):
                seqs.append(['"', *T.encode_chars(v), '"'])
            elif (lit := self.literal(v)) is not None:
                seqs.append([lit])
        return self.check_size(_trie_regex(seqs), where) if seqs else None

    def validates(self, value, kw: dict, where: str) -> bool:
        """Whether ``value`` satisfies the remaining keywords (checked with jsonschema)."""
        if set(kw) <= {"type"}:
            return _type_ok(value, self.types_of(kw, where))
        if _excluded(value, kw):
            return False
        kw = {k: v for k, v in kw.items() if not k.startswith("_")}
        if isinstance(value, str):
            # string keywords with our own (ECMA, RFC-format) semantics, not the validator's
            if "string" not in self.types_of(kw, where):
                return False
            try:
                body = self.compile_string(kw, where)
            except UnsupportedFeatureError:
                return False  # dropping a value is sound
            if body is None or not re.fullmatch(body, '"' + T.encode_text(value) + '"'):
                return False
            kw = {k: v for k, v in kw.items() if k not in _STRING_KW and k != "type"}
        return _valid(self, value, kw, where)

    def literal(self, value) -> str:
        ws = self.ws
        if _has_non_finite(value):
            return None  # NaN / Infinity (accepted by Python's json.loads) are not JSON
        # the structural pieces carry the lexeme boundaries of grammar mode, so an enum object
        # and an object of another branch lex alike ("{" alone, then the key)
        if isinstance(value, dict):
            items = [f'"{T.encode_text(k)}"{self.colon}{self.literal(v)}' for k, v in value.items()]
            return self.lb + self.sep.join(items) + self.rb if items else f"\\{{{self.m}{ws}{self.m}\\}}"
        if isinstance(value, list):
            items = [self.literal(v) for v in value]
            return self.lsq + self.sep.join(items) + self.rsq if items else f"\\[{self.m}{ws}{self.m}\\]"
        if isinstance(value, str):
            return '"' + T.encode_text(value) + '"'
        if isinstance(value, float) and not math.isfinite(value):
            return None  # type: ignore[return-value]
        return T.literal(json.dumps(value))

    # ---- scalars -------------------------------------------------------------------------

    def compile_null(self, kw, where):
        return "null"

    def compile_boolean(self, kw, where):
        return "(?:true|false)"

    def compile_integer(self, kw, where):
        return self.compile_numeric(kw, where, integer_only=True)

    def compile_number(self, kw, where):
        return self.compile_numeric(kw, where, integer_only=False)

    def bounds(self, kw: dict, where: str):
        lo = hi = None
        lo_x = hi_x = False

        def num(k):
            v = kw[k]
            if not _is_num(v) or (isinstance(v, float) and not math.isfinite(v)):
                raise _bad(_ptr(where, k), f"{k} must be a number, got {v!r}")
            return Fraction(v)

        if "minimum" in kw:
            lo = num("minimum")
            lo_x = kw.get("exclusiveMinimum") is True
        if "maximum" in kw:
            hi = num("maximum")
            hi_x = kw.get("exclusiveMaximum") is True
        if "exclusiveMinimum" in kw and not isinstance(kw["exclusiveMinimum"], bool):
            v = num("exclusiveMinimum")
            if lo is None or v >= lo:
                lo, lo_x = v, True
        if "exclusiveMaximum" in kw and not isinstance(kw["exclusiveMaximum"], bool):
            v = num("exclusiveMaximum")
            if hi is None or v <= hi:
                hi, hi_x = v, True
        return lo, lo_x, hi, hi_x

    def compile_numeric(self, kw: dict, where: str, *, integer_only: bool) -> str | None:
        lo, lo_x, hi, hi_x = self.bounds(kw, where)
        if "multipleOf" in kw:
            m = kw["multipleOf"]
            if not _is_num(m) or m <= 0:
                raise _bad(_ptr(where, "multipleOf"), f"multipleOf must be a positive number, got {m!r}")
            if isinstance(m, float) and m.is_integer():
                m = int(m)
            if not _is_int(m):
                raise _refuse("multipleOf", _ptr(where, "multipleOf"),
                              "non-integer multipleOf (float division makes it inexact)")
            return _multiples(m, lo, lo_x, hi, hi_x, _ptr(where, "multipleOf"))
        return number_range(lo, lo_x, hi, hi_x, integer_only=integer_only)

    def compile_string(self, kw: dict, where: str) -> str | None:
        lo = kw.get("minLength", 0)
        hi = kw.get("maxLength")
        for k, v in (("minLength", lo), ("maxLength", hi)):
            if (v is not None or k == "minLength") and (
                not (_is_int(v) or (isinstance(v, float) and v.is_integer())) or v < 0
            ):
                raise _bad(_ptr(where, k), f"{k} must be a non-negative integer, got {v!r}")
        lo = int(lo)
        hi = None if hi is None else int(hi)
        if hi is not None and hi < lo:
            return None
        hi = self.capped(hi, lo, "maxLength", where)
        body = None
        if ("format" in kw and "pattern" in kw and isinstance(kw["format"], str) and kw["format"] in FORMATS
                and isinstance(kw["pattern"], str)):
            # exact when one language contains the other: keep the smaller one
            kept = _contained(FORMATS[kw["format"]], kw["pattern"], _ptr(where, "pattern"))
            if kept is None:
                raise _refuse("format", _ptr(where, "format"), "format together with a pattern that "
                              "neither contains nor is contained in it")
            kw = {k: v for k, v in kw.items() if k != kept}
        if "format" in kw:
            fmt = kw["format"]
            if not isinstance(fmt, str):
                raise _bad(_ptr(where, "format"), "format must be a string")
            if fmt in UNSUPPORTED_FORMATS:
                raise _refuse("format", _ptr(where, "format"), f"format {fmt!r} is not supported")
            if fmt in FORMATS:
                body = FORMATS[fmt]
                # (the format's width matters only under a length bound)
                flo, fhi = T.regex_width(body) if (lo, hi) != (0, None) else (0, None)
                if (lo, hi) != (0, None) and not (flo >= lo and (hi is None or (fhi is not None and fhi <= hi))):
                    # Bound the format's repetitions so that no value exceeds maxLength (a sound
                    # restriction, as for pattern + maxLength); the bodies are plain ASCII regexes.
                    info = None
                    if hi is not None and fmt != "json-pointer":
                        info = T.translate_pattern(f"^(?:{body})$", _ptr(where, "format"), max_chars=hi)
                    if info is None or info.regex is None or info.min_len < lo:
                        raise _refuse("format", _ptr(where, "format"),
                                      f"format {fmt!r} with minLength/maxLength")
                    return f'"{info.regex}"'
                return f'"{body}"'
            # unknown formats are annotations (the specification says so; validators ignore them)
        if "pattern" in kw:
            pat = kw["pattern"]
            if not isinstance(pat, str):
                raise _bad(_ptr(where, "pattern"), "pattern must be a string")
            info = T.translate_pattern(pat, _ptr(where, "pattern"))
            if info.regex is None:
                return None
            if (lo, hi) == (0, None) or (
                info.min_len >= lo and hi is not None and info.max_len is not None and info.max_len <= hi
            ) or (hi is None and info.min_len >= lo):
                return f'"{info.regex}"'
            if info.single_class is not None:
                cls, clo, chi = info.single_class
                nlo = max(lo, clo)
                nhi = hi if chi is None else (chi if hi is None else min(hi, chi))
                if nhi is not None and nhi < nlo:
                    return None
                unit = T.encode_set(cls)
                return None if unit is None else '"' + T.repeat(unit, nlo, nhi) + '"'
            if hi is not None:
                # bound the pattern's repetitions so that no match exceeds maxLength
                info = T.translate_pattern(pat, _ptr(where, "pattern"), max_chars=hi)
                if info.regex is None:
                    return None
                if info.min_len >= lo:
                    return f'"{info.regex}"'
            raise _refuse("pattern", _ptr(where, "pattern"),
                          "pattern combined with a minLength its shortest matches do not reach")
        unit = T.ANY_CHAR if (hi is None and self.unicode_escapes) else T.PLAIN_CHAR
        return '"' + T.repeat(unit, lo, hi) + '"'

    # ---- arrays --------------------------------------------------------------------------

    def compile_array(self, kw: dict, where: str) -> str | None:
        ws = self.ws
        lo = kw.get("minItems", 0)
        hi = kw.get("maxItems")
        for k, v in (("minItems", lo), ("maxItems", hi)):
            if (v is not None or k == "minItems") and (not _is_int(v) or v < 0):
                raise _bad(_ptr(where, k), f"{k} must be a non-negative integer, got {v!r}")
        if hi is not None and lo <= hi:
            hi = self.capped(hi, lo, "maxItems", where)
        prefix, rest = self.item_layout(kw, where)
        rest_where = _ptr(where, "additionalItems" if isinstance(kw.get("items"), list) else "items")
        if kw.get("uniqueItems") is True and not (hi is not None and hi <= 1):
            raise _refuse("uniqueItems", _ptr(where, "uniqueItems"),
                          "uniqueItems cannot be enforced by a regex (unless maxItems <= 1)")
        if "contains" in kw:
            return self.compile_contains(kw, prefix, rest, lo, hi, where)
        elems: list[str | None] = []
        for i, p in enumerate(prefix):
            if hi is not None and i >= hi:
                break
            elems.append(self.compile(p, _ptr(where, "prefixItems" if "prefixItems" in kw else "items", i)))
        # the first impossible prefix element caps the length
        cap = len(elems)
        for i, e in enumerate(elems):
            if e is None:
                cap = i
                break
        elems = elems[:cap]
        if cap < len(prefix) or (hi is not None and hi <= len(prefix)):
            rest_re = None
        else:
            rest_re = self.compile(rest, rest_where)
        max_len = len(elems) if rest_re is None else hi
        if max_len is not None and max_len < lo:
            return None
        if rest_re is None and len(elems) < lo:
            return None
        sep = self.sep
        # tail after all prefix elements: more items from `rest`
        n = len(elems)
        tail = ""
        if rest_re is not None:
            t_lo = max(0, lo - n)
            t_hi = None if hi is None else hi - n
            if t_hi is None or t_hi > 0:
                tail = T.repeat(f"{sep}{rest_re}", t_lo, t_hi) if n else ""
        body = tail
        for i in range(n - 1, -1, -1):
            head = "" if i == 0 else sep
            piece = f"{head}{elems[i]}{body}"
            body = piece if i < lo else f"(?:{piece})?"
        if n == 0:
            if rest_re is None:
                body = ""
            else:
                t_lo, t_hi = lo, hi
                if t_hi == 0:
                    body = ""
                else:
                    more = T.repeat(f"{sep}{rest_re}", max(0, t_lo - 1), None if t_hi is None else t_hi - 1)
                    body = f"{rest_re}{more}"
                    if t_lo == 0:
                        body = f"(?:{body})?"
        if not body:
            return self.check_size(f"\\[{ws}\\]", where)
        return self.check_size(f"{self.lsq}{body}{self.rsq}", where)

    def compile_contains(self, kw, prefix, rest, lo, hi, where) -> str | None:
        w = _ptr(where, "contains")
        if prefix:
            raise _refuse("contains", w, "contains together with prefixItems / array items")
        min_c = kw.get("minContains", 1)
        if "maxContains" in kw or min_c not in (0, 1):
            raise _refuse("minContains" if min_c not in (0, 1) else "maxContains", w,
                          "counted contains is not supported")
        if min_c == 0:
            return self.compile_array({k: v for k, v in kw.items() if k != "contains"}, where)
        # No lexeme boundaries here: the items and the witness overlap (an item may be the witness),
        # and only one automaton over the whole array tells them apart.
        ws = self.ws
        sep = f"{ws},{ws}"
        lsq, rsq = f"\\[{ws}", f"{ws}\\]"
        item = self.compile(rest, _ptr(where, "items"))
        witness = self.compile({"allOf": [rest, kw["contains"]]}, w)
        if witness is None or (hi is not None and hi < 1):
            return None
        if item is None:
            before = after = ""
            if lo > 1:
                return None
        else:
            # the witness comes after i items and before j items; i unbounded, j carries minItems
            if hi is None:
                before = T.repeat(f"{item}{sep}", 0, None)
                after = T.repeat(f"{sep}{item}", max(0, lo - 1), None)
            else:
                before = ""
                after = T.repeat(f"{sep}{item}", max(0, lo - 1), hi - 1)
                alts = [f"{T.repeat(item + sep, i, i)}{witness}{T.repeat(sep + item, max(0, lo - 1 - i), hi - 1 - i)}"
                        for i in range(hi)]
                return self.check_size(f"{lsq}{T.alternation(alts)}{rsq}", where)
        return self.check_size(f"{lsq}{before}{witness}{after}{rsq}", where)

    # ---- objects -------------------------------------------------------------------------

    def compile_object(self, kw: dict, where: str) -> str | None:
        props = _keyword_object(kw, "properties", where)
        required = _required_names(kw, where)
        pattern_props = _keyword_object(kw, "patternProperties", where)
        additional = kw.get("additionalProperties", True)
        if "additionalProperties" not in kw and props and not self.undeclared:
            additional = False  # sound restriction, see allow_undeclared_properties
        names_schema = kw.get("propertyNames")
        min_p = kw.get("minProperties", 0)
        max_p = kw.get("maxProperties")
        names_re = None
        if names_schema is not None:
            names_re = self.compile_name_schema(names_schema, _ptr(where, "propertyNames"))
        if self.mode == "probe" and additional is True and not pattern_props and names_re != "":
            # undeclared properties of any value (what extra_entries would find last, after every
            # declared property was translated): a grammar, known before translating them
            self.any_value()

        def name_ok(name: str) -> bool:
            return names_re is None or re.fullmatch(names_re, json.dumps(name, ensure_ascii=False)) is not None

        def value_schema(name: str, own, w: str):
            matches = [s for p, s in pattern_props.items() if self.name_matches(p, name, where)]
            if own is None:
                if not matches:
                    # a required name that is not declared: the schema's own additionalProperties
                    return kw.get("additionalProperties", True)
                own = True
            return {"allOf": [own, *matches]} if matches else own

        order = list(props) + [r for r in required if r not in props]
        items: list[tuple[str, bool]] = []
        for name in order:
            req = name in required
            w = _ptr(where, "properties", name)
            if not name_ok(name):
                if req:
                    return None
                continue
            sch = value_schema(name, props.get(name), w)
            val = self.compile(sch, w)
            if val is None:
                if req:
                    return None
                continue
            items.append((self.as_rule(f'"{T.encode_text(name)}"{self.colon}{val}'), req))
        # extra (undeclared) properties
        extra = self.extra_entries(order, pattern_props, additional, names_re, where)
        n_req = sum(1 for _, r in items if r)
        n_opt = len(items) - n_req
        e_lo, e_hi = 0, (None if extra is not None else 0)
        if min_p or max_p is not None:
            if not (_is_int(min_p) and (max_p is None or _is_int(max_p))):
                raise _bad(where, "minProperties/maxProperties must be integers")
            if max_p is not None and max_p < n_req:
                return None
            if n_opt == 0:
                e_lo = max(0, min_p - n_req)
                if e_lo > 1:
                    # repeated extra keys would collapse when parsed: only one can be promised
                    raise _refuse("minProperties", where, "minProperties needing two or more "
                                  "undeclared properties is not supported")
                if max_p is not None:
                    e_hi = max_p - n_req if e_hi is None else min(e_hi, max_p - n_req)
                if e_hi is not None and e_lo > e_hi:
                    return None
            elif min_p <= n_req and (max_p is None or (extra is None and max_p >= len(items))):
                pass
            else:
                raise _refuse("minProperties" if min_p > n_req else "maxProperties", where,
                              "property counts over optional properties are not supported")
        return self.check_size(self.object_regex(items, extra, e_lo, e_hi), where)

    def compile_name_schema(self, schema, where: str) -> str:
        """Regex for a property name (with quotes) satisfying ``propertyNames``."""
        depth = len(self.ref_stack)
        flat, _ = self.flatten(schema, where)
        del self.ref_stack[depth:]
        if flat is None or flat is False:
            return ""  # matches no quoted name
        if flat is True:
            return '"' + T.PLAIN_CHAR + '*"'
        kw = dict(flat)
        kw.setdefault("type", "string")
        if kw.get("type") not in ("string", ["string"]) or set(kw) - {"type", "pattern", "minLength",
                                                                      "maxLength", "format", "enum", "const"}:
            raise _refuse("propertyNames", where, "only string keywords are supported in propertyNames")
        r = self.compile(kw, where)
        return r if r is not None else ""

    def extra_entries(self, declared, pattern_props, additional, names_re, where) -> str | None:
        alts = []
        if names_re == "":
            return None
        if pattern_props:
            everything = [s for s in pattern_props.values()]
            for p, s in pattern_props.items():
                info = T.translate_pattern(p, _ptr(where, "patternProperties", p))
                if info.regex is None:
                    continue
                key = f'"{info.regex}"'
                if any(re.fullmatch(key, json.dumps(n, ensure_ascii=False)) for n in declared):
                    continue  # sound restriction: names of declared properties cannot be re-used
                if names_re is not None:
                    raise _refuse("propertyNames", _ptr(where, "propertyNames"),
                                  "propertyNames together with patternProperties")
                # a key may match several patterns: its value must satisfy all of them
                val = self.compile({"allOf": everything} if len(everything) > 1 else s,
                                   _ptr(where, "patternProperties", p))
                if val is not None:
                    alts.append(self.as_rule(f"{key}{self.colon}{val}"))
            # keys matching no pattern (additionalProperties) are not generated: sound restriction
        elif additional is not False:
            val = self.compile(additional, _ptr(where, "additionalProperties"))
            if val is not None:
                if names_re is not None:
                    if any(re.fullmatch(names_re, json.dumps(n, ensure_ascii=False)) for n in declared):
                        return None  # sound restriction: no extras (cannot exclude declared names)
                    key = names_re
                else:
                    key = self.key_not_in(declared)
                alts.append(self.as_rule(f"{key}{self.colon}{val}"))
        return T.alternation(alts)

    def object_regex(self, items: list[tuple[str, bool]], extra: str | None, e_lo: int,
                     e_hi: int | None) -> str:
        """``{...}`` with ``items`` (regex, required) in order, then ``extra`` entries.

        Commas need to know whether something was written before. After a present item the
        rest is linear: ``(,I)?`` per optional item. Before the first present item, a split in
        halves keeps the text O(n log n) instead of the O(n^2) of "one alternative per possible
        first item": NE(L+R) = NE(L) G(R) | NE(R), where NE is a non-empty in-order selection
        and G the comma-prefixed rest. In grammar mode an object with optional parts is rules
        instead (:meth:`_object_chain`).
        """
        ws = self.ws
        sep = self.sep
        has_extra = extra is not None and e_hi != 0
        # (non-empty form, comma-prefixed form, required)
        parts: list[tuple[str, str, bool]] = [(it, f"{sep}{it}", req) for it, req in items]
        if has_extra:
            first = f"{extra}{T.repeat(sep + extra, max(0, e_lo - 1), None if e_hi is None else e_hi - 1)}"
            parts.append((first, T.repeat(f"{sep}{extra}", e_lo, e_hi), e_lo > 0))
        if not parts:
            return f"\\{{{ws}\\}}"
        if self.mode == "grammar" and len(parts) > 1 and not all(req for _, _, req in parts):
            return self._object_chain([(first, req) for first, _, req in parts])

        def rest(k: int, end: int) -> str:  # parts k..end-1, each after something was written
            out = []
            for i in range(k, end):
                _, comma, req = parts[i]
                is_extra = has_extra and i == len(parts) - 1
                out.append(comma if (req or is_extra) else f"(?:{comma})?")
            return "".join(out)

        first_req = next((k for k, p in enumerate(parts) if p[2]), None)
        if first_req is not None:
            body = "".join(f"(?:{p[0]}{sep})?" for p in parts[:first_req])
            body += parts[first_req][0] + rest(first_req + 1, len(parts))
        else:
            body = f"(?:{self._non_empty(parts, 0, len(parts), rest)})?"
        return f"{self.lb}{body}{self.rb}"

    def _object_chain(self, parts: list[tuple[str, bool]]) -> str:
        """Grammar mode: ``{...}`` over ``parts`` (non-empty text, required) as left-recursive
        rules the parser follows without forking.

        Written as a regex, an optional part is ``(?:,I)?``: at a comma the parser cannot yet
        tell which part follows (the key comes after it), so it forks once per optional part
        that may come next — on a wide object more readings than it keeps. Here ``P_j`` is "the
        parts so far, the last present one ``j``" and ``Q_j`` "parts so far that part ``j`` may
        follow, then a comma": ``Q_j → P_{j-1} , | Q_{j-1}`` (when part ``j-1`` may be absent)
        and ``P_j → Q_j I_j | I_j`` (when every part before ``j`` may be absent). After a comma
        the key decides how many ``Q`` steps to take; every step reads only the state below the
        object, so the stack stays flat.
        """
        key = tuple(parts)
        got = self.object_chains.get(key)
        if got is not None:
            return got
        ws, m = self.ws, self.m
        n = len(parts)
        opt = [not req for _, req in parts]
        P = [self.new_placeholder() for _ in range(n)]
        Q = [None] + [self.new_placeholder() for _ in range(1, n)]
        for j in range(1, n):
            alts = [f"{P[j - 1]}{ws}{m},{m}"]
            if j > 1 and opt[j - 1]:
                alts.append(Q[j - 1])
            self.bodies[Q[j]] = T.alternation(alts)
        for j, (first, _) in enumerate(parts):
            item = f"{ws}{first}"
            if j and all(opt[:j]):  # written twice: a long one once, as a rule of its own
                item = self.as_rule(item)
            alts = [f"{Q[j]}{item}"] if j else []
            if all(opt[:j]):
                alts.append(item)
            self.bodies[P[j]] = T.alternation(alts)
        body = T.alternation([P[j] for j in range(n) if all(opt[j + 1:])])
        if all(opt):
            body = f"(?:{body})?"
        got = self.object_chains[key] = f"\\{{{m}{body}{ws}{m}\\}}"
        return got

    def _non_empty(self, parts, i: int, j: int, rest) -> str:
        """A non-empty in-order, comma-separated selection of the optional ``parts[i:j]``."""
        return "|".join(self._non_empty_alts(parts, i, j, rest))

    def _non_empty_alts(self, parts, i: int, j: int, rest) -> list[str]:
        if j - i == 1:
            return [parts[i][0]]
        m = (i + j) // 2
        left = self._non_empty_alts(parts, i, m, rest)
        head = left[0] if len(left) == 1 else f"(?:{'|'.join(left)})"
        # first present part on the left: then the right half with commas; else only the right
        return [head + rest(m, j), *self._non_empty_alts(parts, m, j, rest)]


class _NoValueType:
    pass


_NoValue = _NoValueType()

# The free-form value's body under the default whitespace, the same text in every schema that
# has one: written as rules once, here, and replayed in each grammar (see :func:`.rules.add_template`).
R.add_template(_Context(True, DEFAULT_WHITESPACE, 0, 0, mode="grammar").any_value_body())


def _trie_regex(seqs: list[list[str]]) -> str:
    """Alternation of token sequences with shared prefixes factored (fewer regex positions)."""
    trie: dict = {}
    for seq in seqs:
        node = trie
        for tok in seq:
            node = node.setdefault(tok, {})
        node[None] = {}
    return _trie_node(trie)


def _trie_node(node: dict) -> str:
    alts = []
    for tok, child in node.items():
        if tok is None:
            continue
        chain = [tok]
        while len(child) == 1 and None not in child:  # a single path: no group needed
            (tok2, child), = child.items()
            chain.append(tok2)
        rest = _trie_node(child) if child != {None: {}} else ""
        alts.append("".join(chain) + rest)
    body = T.alternation(alts) or ""
    if None in node and alts:
        return T.group(body) + "?" if body else ""
    return body if len(alts) <= 1 else body


def _contained(format_regex: str, pattern: str, where: str) -> str | None:
    """Which of ``format``/``pattern`` is redundant (its language contains the other's)."""
    import interegular

    info = T.translate_pattern(pattern, where)
    if info.regex is None:
        return "format"  # the pattern matches nothing: keeping it is exact
    try:
        f = interegular.parse_pattern(format_regex).to_fsm()
        p = interegular.parse_pattern(info.regex).to_fsm()
        if (f - p).empty():
            return "pattern"
        if (p - f).empty():
            return "format"
    except Exception:  # noqa: BLE001 - interegular raises several types; then we refuse
        return None
    return None


def _has_non_finite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


def _type_ok(value, types: list[str]) -> bool:
    for t in types:
        if t == "null" and value is None:
            return True
        if t == "boolean" and isinstance(value, bool):
            return True
        if t == "string" and isinstance(value, str):
            return True
        if t == "number" and _is_num(value):
            return True
        if t == "integer" and (_is_int(value) or (isinstance(value, float) and value.is_integer())):
            return True
        if t == "array" and isinstance(value, list):
            return True
        if t == "object" and isinstance(value, dict):
            return True
    return False




def _not_in(names: list[str]) -> str:
    """Canonically encoded string bodies whose content is none of ``names``.

    Such a body is a proper prefix of a name that is no name itself, or a prefix followed by a
    character that leaves the name trie and then any rest. Characters that occur in no name leave
    the trie at every node: they and the rest are written once, after a regex of all prefixes,
    instead of once per trie node (every large class costs the automaton its own UTF-8 states; one
    per node made this terminal the costliest of a typical schema).
    """
    if not names:
        return T.repeat(T.PLAIN_CHAR, 0, None)
    trie: dict = {}
    for n in names:
        node = trie
        for c in n:
            node = node.setdefault(c, {})
        node[None] = True
    used = T.intersect(T.chars("".join(names)), T.ENCODABLE)
    prefixes = _name_paths(trie, lambda node: "")
    leave = T.encode_set(T.subtract(T.ENCODABLE, used))  # nonempty: names are finitely many
    turns = _name_paths(trie, lambda node: T.encode_set(T.subtract(used, T.chars("".join(filter(None, node))))))
    stops = _name_paths(trie, lambda node: None if None in node else "")
    # (what _name_paths writes needs no group to be followed by more)
    out = T.alternation([prefixes + leave, *([turns] if turns else [])]) + T.repeat(T.PLAIN_CHAR, 0, None)
    return T.alternation([out, stops]) if stops else out if stops is None else T.repeat(out, 0, 1)


def _name_paths(node: dict, own) -> str | None:
    """The paths from ``node`` down a name trie, each followed by ``own(the node it ends at)``
    (``None``: no path may end there); ``None`` when no path is left."""
    nodes, chars = [node], ""
    while len(chars) < 12 and len(kids := [c for c in nodes[-1] if c is not None]) == 1:
        chars += kids[0]
        nodes.append(nodes[-1][kids[0]])
    end = nodes[-1]
    kids = [c for c in end if c is not None]
    below = _optional([own(end), *(T.encode_char(ord(c)) + sub for c in kids
                                   if (sub := _name_paths(end[c], own)) is not None)])
    # A run of single-child nodes nests one group per character, at most 12 deep: where more
    # branches follow, they are written after the whole run once more, one group down (one group
    # per character of a long name overflows parsers).
    split = bool(kids and chars)
    inside = None if split else below
    for i in range(len(chars) - 1, -1, -1):
        inside = _optional([own(nodes[i]), None if inside is None else T.encode_char(ord(chars[i])) + inside])
    if split:
        return _optional([inside, None if below is None else T.encode_text(chars) + below])
    return inside


def _optional(alts: list) -> str | None:
    """Alternation of ``alts`` without the ``None`` ones; ``""`` makes it optional."""
    r = T.alternation([a for a in alts if a])
    if r is None:
        return None if all(a is None for a in alts) else ""
    return T.repeat(r, 0, 1) if "" in alts else r


def _multiples(m: int, lo, lo_x, hi, hi_x, where: str) -> str | None:
    ilo = None if lo is None else (math.floor(lo) + 1 if lo_x and lo.denominator == 1 else math.ceil(lo))
    ihi = None if hi is None else (math.ceil(hi) - 1 if hi_x and hi.denominator == 1 else math.floor(hi))
    if m == 1:
        return integer_range(ilo, ihi)
    if ilo is not None and ihi is not None:
        first = -(-ilo // m) * m
        values = list(range(first, ihi + 1, m))
        if len(values) <= 256:
            return T.alternation([str(v) for v in values]) if values else None
    # k divides 10**e: the last e digits decide, for any magnitude
    e = 0
    while (10**e) % m and e < 4:
        e += 1
    if (10**e) % m == 0 and (ilo is None or ilo <= 0) and (ihi is None or ihi >= 0) and ilo in (None, 0) and ihi is None:
        suffixes = [f"{v:0{e}d}" for v in range(0, 10**e, m)]
        small = [str(v) for v in range(0, 10**e, m)]  # numbers shorter than e digits
        body = f"(?:[1-9][0-9]*{T.alternation(suffixes)}|{T.alternation(small)})"
        if ilo is None:
            body = f"-?{body}"
        return body
    raise _refuse("multipleOf", where, "multipleOf with this range (only small enumerable ranges, "
                  "or divisors of a power of ten with no or a zero lower bound)")


def _disjoint(a, b, ctx: _Context, generated: bool = False) -> bool:
    """Conservative: True only when no JSON value can validate against both flat schemas.

    With ``generated``: only when no value *our regex generates* for ``a`` validates ``b`` (``a``
    then also counts the undeclared-properties restriction).
    """
    depth = len(ctx.ref_stack)
    try:
        return _disjoint_flat(a, b, ctx, generated)
    finally:
        del ctx.ref_stack[depth:]


def _forbids(ctx: _Context, y: dict, name: str, generated: bool) -> bool:
    py = y.get("properties") or {}
    if name in py:
        try:
            flat, _ = ctx.flatten(py[name], "")
        except GrammarError:
            return False
        if flat is False:
            return True
    if name in py or y.get("patternProperties"):
        return False
    if y.get("additionalProperties") is False:
        return True
    return generated and "additionalProperties" not in y and bool(py) and not ctx.undeclared


def _disjoint_flat(a, b, ctx: _Context, generated: bool = False) -> bool:
    if a is None or b is None or a is False or b is False:
        return True
    if a is True or b is True:
        return False
    try:  # (malformed: no proof; compiling the branch reports it, with its place)
        _check_shape(a, "")
        _check_shape(b, "")
    except GrammarError:
        return False
    va = _values(a)
    vb = _values(b)
    if va is not None and vb is not None:
        return not ({_canon(x) for x in va} & {_canon(x) for x in vb})
    ta = _type_set(a, va)
    tb = _type_set(b, vb)
    if not (ta & tb):
        return True
    if va is not None and not any(_type_ok(x, sorted(tb)) for x in va):
        return True
    if vb is not None and not any(_type_ok(x, sorted(ta)) for x in vb):
        return True
    if ta & tb <= {"object"}:
        pa, pb = a.get("properties") or {}, b.get("properties") or {}
        ra, rb = set(a.get("required") or []), set(b.get("required") or [])
        for name in (ra & rb):
            if name in pa and name in pb:
                sa, _ = ctx.flatten(pa[name], "")
                sb, _ = ctx.flatten(pb[name], "")
                if sa is not None and sb is not None and _disjoint(sa, sb, ctx, generated):
                    return True
        for x, y, rx, gen in ((a, b, ra, False), (b, a, rb, generated)):
            if any(_forbids(ctx, y, name, gen) for name in rx):
                return True
    if ta & tb <= {"number", "integer"}:
        la, _, ha, _ = ctx.bounds(a, "")
        lb, _, hb, _ = ctx.bounds(b, "")
        if (ha is not None and lb is not None and ha < lb) or (hb is not None and la is not None and hb < la):
            return True
    return False


def _type_names(kw: dict, where: str) -> list | None:
    """The ``type`` keyword as a list of known type names (None when absent)."""
    t = kw.get("type")
    if t is None:
        return None
    ts = t if isinstance(t, list) else [t]
    for x in ts:
        if not isinstance(x, str) or x not in _TYPES:
            raise _bad(_ptr(where, "type"), f"unknown type {x!r}")
    return ts


def _required_names(kw: dict, where: str) -> list:
    """The ``required`` keyword's names (an absent or empty one: none)."""
    required = kw.get("required") or []
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise _refuse("required", _ptr(where, "required"), "required must be an array of names "
                      "(draft-3 boolean 'required' is not supported)")
    return required


def _keyword_object(kw: dict, key: str, where: str) -> dict:
    """A keyword whose value must be an object (``properties``, ``patternProperties``; absent: {})."""
    got = kw.get(key, {})
    if not isinstance(got, dict):
        raise _bad(_ptr(where, key), f"{key} must be an object")
    return got


def _enum_values(kw: dict, where: str) -> list:
    """The ``enum`` keyword's values (present: an array)."""
    values = kw["enum"]
    if not isinstance(values, list):
        raise _bad(_ptr(where, "enum"), "enum must be an array")
    return values


def _check_shape(s: dict, where: str) -> None:
    """Raise what compiling ``s`` would for a malformed ``type``, ``required``, ``properties``,
    ``patternProperties`` or ``enum``: the keywords that merging two schemas (``allOf``) and
    proving two disjoint (``oneOf``) read before the schema is compiled."""
    _type_names(s, where)
    _required_names(s, where)
    _keyword_object(s, "properties", where)
    _keyword_object(s, "patternProperties", where)
    if "enum" in s:
        _enum_values(s, where)


def _values(s: dict):
    if "const" in s:
        return [s["const"]]
    if "enum" in s and isinstance(s["enum"], list):
        return s["enum"]
    return None


def _type_set(s: dict, values) -> set[str]:
    t = s.get("type")
    if t is None:
        ts = {"object", "array", "string", "number", "integer", "boolean", "null"}
    else:
        ts = set(t if isinstance(t, list) else [t])
    if "number" in ts:
        ts.add("integer")
    if "integer" in ts and "number" not in ts:
        pass
    return ts


def order_properties(instance, schema: dict | bool | str):
    """``instance`` with object members in the order the regex of ``schema`` expects.

    Declared ``properties`` first (declared order), then required names not declared, then the
    remaining members in their original order; applied recursively through ``$ref``, ``allOf``,
    items and the first ``anyOf``/``oneOf`` branch that validates (needs ``jsonschema``).
    Serialise the result with ``json.dumps(x, separators=(",", ":"), ensure_ascii=False)``.
    """
    if isinstance(schema, str):
        schema = json.loads(schema)
    ctx = _Context(schema, "", 10**6, MAX_REGEX_CHARS)
    return _reorder(ctx, instance, schema, 0)


def _reorder(ctx: _Context, value, node, depth: int):
    if depth > 200 or not isinstance(value, (dict, list)) or not isinstance(node, dict):
        return value
    mark = len(ctx.ref_stack)
    try:
        flat, _ = ctx.flatten(node, "")
    except Exception:  # noqa: BLE001 - ordering is best effort; the regex decides validity
        return value
    finally:
        pass
    try:
        if not isinstance(flat, dict):
            return value
        for key in ("anyOf", "oneOf"):
            if key in flat and isinstance(flat[key], list):
                rest = {k: v for k, v in flat.items() if k != key}
                for branch in flat[key]:
                    cand = {"allOf": [rest, branch]} if rest else branch
                    if _valid(ctx, value, cand):
                        return _reorder(ctx, value, cand, depth + 1)
                return value
        if isinstance(value, dict):
            props = flat.get("properties") if isinstance(flat.get("properties"), dict) else {}
            required = [r for r in flat.get("required") or [] if isinstance(r, str)]
            order = [k for k in props if k in value]
            order += [k for k in required if k in value and k not in order]
            order += [k for k in value if k not in order]
            out = {}
            pp = flat.get("patternProperties") if isinstance(flat.get("patternProperties"), dict) else {}
            for k in order:
                if k in props:
                    sub = props[k]
                else:
                    sub = next((s for p, s in pp.items() if _safe_search(p, k)), flat.get("additionalProperties", True))
                out[k] = _reorder(ctx, value[k], sub, depth + 1)
            return out
        prefix, rest_items = ctx.item_layout(flat, "")
        return [_reorder(ctx, v, prefix[i] if i < len(prefix) else rest_items, depth + 1)
                for i, v in enumerate(value)]
    finally:
        del ctx.ref_stack[mark:]


def _safe_search(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False


def _valid(ctx: _Context, value, schema, where: str | None = None) -> bool:
    """``value`` against ``schema`` with jsonschema (the document's draft, ``$ref``s resolved in
    the document, formats asserted). A malformed schema is a ``JSONSchemaError`` at ``where``,
    or just "not valid" without ``where``."""
    import jsonschema

    root = ctx.root if isinstance(ctx.root, dict) else {}
    try:
        cls = jsonschema.validators.validator_for(root)
        return cls(root, format_checker=cls.FORMAT_CHECKER).evolve(schema=schema).is_valid(value)
    except Exception as e:  # noqa: BLE001 - malformed sub-schemas surface here
        if where is None:
            return False
        raise _bad(where, f"cannot check enum values against the schema: {e}") from e


def _excluded(value, kw: dict) -> bool:
    """Whether an enclosing ``not: {enum/const}`` (``_not_values``) excludes ``value``."""
    negs = kw.get("_not_values")
    return bool(negs) and any(_canon(value) == _canon(n) for n in negs)
