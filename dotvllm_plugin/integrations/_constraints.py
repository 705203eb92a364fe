"""From vLLM's request parameters to one of our constraints, and the cheap early check.

Shared by both integrations: V0's ``GuidedDecodingParams`` and V1's ``StructuredOutputsParams``
carry the same fields (``json``, ``regex``, ``choice``, ``grammar``, ``json_object``,
``structural_tag``, ``whitespace_pattern``, ``disable_any_whitespace``,
``disable_additional_properties``); only the names a user sees in error messages differ
(:data:`V0_NAMES`: ``guided_regex``; :data:`V1_NAMES`: ``structured_outputs.regex``).

Per-request options of the JSON kinds (``json_schema``, ``json_object``, ``structural_tag``) travel in
:attr:`Constraint.options`, the dict handed to ``KINDS[kind].check`` / ``.compile`` and hashed into
the compile cache key: ``whitespace_pattern`` (when set) and the flags
:data:`REQUEST_FLAGS` (only when true, so a request without them keeps the key it always had).

Routing (V0): a request is ours unless it names another backend in ``guided_decoding_backend``
(``xgrammar``, ``outlines``, ``lm-format-enforcer``, ``guidance``, ``auto``, …); then vLLM handles
it as usual. ``guided_decoding_backend="dotvllm"`` names ours explicitly. V1 routes per server
(see :mod:`dotvllm_plugin.integrations.vllm_v1`).

The early check runs in the API-server process, where vLLM validates the request, so every bad
spec is an HTTP 400 with a message saying what is wrong and where, streaming requests included.
It uses the kind registry (:data:`dotvllm_plugin.compiler.KINDS`): it parses (regex syntax, JSON
Schema translation, Lark grammar tables) but builds no token index; that is the compilation
manager's work.

This module does not import vLLM.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..errors import CompilationError, DotvllmError, GrammarError, JSONSchemaError, UnsupportedFeatureError

__all__ = [
    "BACKEND",
    "V0_NAMES",
    "V1_NAMES",
    "Constraint",
    "GuidedRequestError",
    "backend_name",
    "constraint_of",
    "is_ours",
    "validate",
]

BACKEND = "dotvllm"
"""Our name in ``guided_decoding_backend`` (V0) and in ``StructuredOutputsParams._backend`` (V1)."""

V0_NAMES = {
    "grammar": "guided_grammar",
    "json": "guided_json",
    "regex": "guided_regex",
    "choice": "guided_choice",
    "json_object": "response_format json_object",
    "structural_tag": "response_format structural_tag",
}
"""Request parameter names as V0's OpenAI server spells them (for error messages)."""

V1_NAMES = {
    "grammar": "structured_outputs.grammar",
    "json": "structured_outputs.json",
    "regex": "structured_outputs.regex",
    "choice": "structured_outputs.choice",
    "json_object": "structured_outputs.json_object",
    "structural_tag": "structured_outputs.structural_tag",
}
"""The same for V1 (``response_format`` json_schema / json_object arrive as ``json`` / ``json_object``)."""


REQUEST_FLAGS = ("disable_any_whitespace", "disable_additional_properties")
"""Boolean request fields passed to the core as options (when true) for the JSON kinds."""


class GuidedRequestError(DotvllmError, ValueError):
    """A guided request the server cannot serve (a compile timeout, a failed compile worker).

    A ``ValueError``, so vLLM's OpenAI layer answers HTTP 400 and the engine keeps running.
    """


@dataclass(frozen=True)
class Constraint:
    """What to compile: ``kind`` is one of the compilation manager's kinds."""

    kind: str
    spec: Any
    whitespace_pattern: str | None = None
    parameter: str = ""
    flags: tuple[str, ...] = ()
    """Names of the :data:`REQUEST_FLAGS` the request set."""

    @property
    def options(self) -> dict:
        """The per-request options dict of ``KINDS[kind].check`` / ``.compile`` and of the cache key."""
        options: dict = {name: True for name in self.flags}
        if self.whitespace_pattern is not None:
            options["whitespace_pattern"] = self.whitespace_pattern
        return options

    def describe(self, limit: int = 120) -> str:
        """Short form for log messages."""
        if self.kind == "json_object":
            text = "any JSON object"
        else:
            text = self.spec if isinstance(self.spec, str) else json.dumps(self.spec, ensure_ascii=False, default=str)
            if len(text) > limit:
                text = text[: limit - 1] + "…"
        return f"{self.parameter or self.kind} {text!r}" if self.kind != "json_object" else f"{self.parameter} ({text})"


def backend_name(params) -> str | None:
    """The backend a request names (options after ``:`` stripped), or ``None``."""
    backend = getattr(params, "backend", None)
    if not backend:
        return None
    return str(backend).split(":", 1)[0].strip().lower() or None


def is_ours(params) -> bool:
    return backend_name(params) in (None, BACKEND)


def _prefixed(e: GrammarError, parameter: str) -> GrammarError:
    if e.args and isinstance(e.args[0], str) and not e.args[0].startswith(parameter):
        e.args = (f"{parameter}: {e.args[0]}",) + tuple(e.args[1:])
    return e


def constraint_of(params, *, names: dict = V0_NAMES) -> Constraint:
    """Translate guided-decoding parameters into a :class:`Constraint`; raise GrammarError if unsupported."""
    ws = getattr(params, "whitespace_pattern", None)
    if getattr(params, "grammar", None) is not None:
        if not isinstance(params.grammar, str):
            raise GrammarError(f"{names['grammar']} must be a string (a Lark grammar), got "
                               f"{type(params.grammar).__name__}")
        return Constraint("grammar", params.grammar, None, names["grammar"])
    flags = tuple(name for name in REQUEST_FLAGS if getattr(params, name, False))
    if getattr(params, "structural_tag", None) is not None:
        from ..grammar.structural_tag import structures_form

        spec = structures_form(params.structural_tag)
        if spec is None:
            raise UnsupportedFeatureError(
                f"{names['structural_tag']}: only the 'structures' + 'triggers' form is supported by the dotvllm "
                "backend; for xgrammar's 'format' form name vLLM's backend (guided_decoding_backend=\"xgrammar\")",
                feature="structural_tag",
                where="format",
            )
        return Constraint("structural_tag", spec, ws, names["structural_tag"], flags)
    if params.json is not None:
        return Constraint("json_schema", _schema(params.json, names["json"]), ws, names["json"], flags)
    if params.regex is not None:
        if not isinstance(params.regex, str):
            raise GrammarError(f"{names['regex']} must be a string, got {type(params.regex).__name__}")
        return Constraint("regex", params.regex, None, names["regex"])
    if params.choice is not None:
        return Constraint("choice", list(params.choice) if isinstance(params.choice, (list, tuple)) else params.choice,
                          None, names["choice"])
    if params.json_object:
        return Constraint("json_object", None, ws, names["json_object"], flags)
    raise GrammarError("the guided decoding parameters name no constraint")


def _schema(spec: Any, parameter: str = "guided_json") -> Any:
    if isinstance(spec, (bytes, bytearray)):
        spec = spec.decode("utf-8")
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError as e:
            raise JSONSchemaError(
                f"{parameter}: the schema is not valid JSON: {getattr(e, 'msg', e)} at line "
                f"{getattr(e, 'lineno', '?')} column {getattr(e, 'colno', '?')}"
            ) from e
    elif hasattr(spec, "model_json_schema"):  # a pydantic model (class) given in Python
        spec = spec.model_json_schema()
    if not isinstance(spec, (dict, bool)):
        raise JSONSchemaError(f"{parameter}: a JSON schema is an object or a boolean, got {type(spec).__name__}")
    return spec


_checked: OrderedDict[str, None] = OrderedDict()  # specs that passed, so repeats skip the check
_checked_lock = threading.Lock()
_CHECKED_MAX = 1024


def validate(params, *, names: dict = V0_NAMES) -> Constraint:
    """Cheap check of a request's constraint (no automaton, no token index); raise GrammarError."""
    c = constraint_of(params, names=names)
    memo = json.dumps([c.kind, c.spec, c.options], sort_keys=True, default=str)
    with _checked_lock:
        if memo in _checked:
            _checked.move_to_end(memo)
            return c
    try:
        from ..compiler import KINDS

        KINDS[c.kind].check(c.spec, c.options)
    except GrammarError as e:
        _prefixed(e, c.parameter)
        raise
    except CompilationError as e:  # e.g. a schema whose regex exceeds the size budget
        raise GuidedRequestError(f"{c.parameter}: {e}") from e
    with _checked_lock:
        _checked[memo] = None
        while len(_checked) > _CHECKED_MAX:
            _checked.popitem(last=False)
    return c
