"""From vLLM's ``GuidedDecodingParams`` to one of our constraints, and the cheap early check.

Routing: a request is ours unless it names another backend in ``guided_decoding_backend``
(``xgrammar``, ``outlines``, ``lm-format-enforcer``, ``guidance``, ``auto``, …); then vLLM handles
it as usual. ``guided_decoding_backend="dotvllm"`` names ours explicitly.

The early check runs where vLLM builds ``GuidedDecodingParams`` (inside the OpenAI request's
``to_sampling_params``), so every bad spec is an HTTP 400 with a message saying what is wrong and
where, streaming requests included. It parses (regex syntax, JSON Schema translation) but does
not build automata or token indexes; that is the compilation manager's work.

This module does not import vLLM.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ...errors import CompilationError, DotvllmError, GrammarError, JSONSchemaError, UnsupportedFeatureError

__all__ = ["BACKEND", "Constraint", "GuidedRequestError", "backend_name", "constraint_of", "is_ours", "validate"]

BACKEND = "dotvllm"
"""Our name in ``guided_decoding_backend``."""


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


def constraint_of(params) -> Constraint:
    """Translate ``GuidedDecodingParams`` into a :class:`Constraint`; raise GrammarError if unsupported."""
    ws = getattr(params, "whitespace_pattern", None)
    if getattr(params, "grammar", None) is not None:
        if not isinstance(params.grammar, str):
            raise GrammarError(f"guided_grammar must be a string (a Lark grammar), got {type(params.grammar).__name__}")
        return Constraint("grammar", params.grammar, None, "guided_grammar")
    if getattr(params, "structural_tag", None) is not None:
        raise UnsupportedFeatureError(
            "response_format structural_tag is not supported by the dotvllm backend; pass "
            "guided_decoding_backend=\"xgrammar\" to use vLLM's",
            feature="structural_tag",
            where="response_format",
        )
    if params.json is not None:
        return Constraint("json_schema", _schema(params.json), ws, "guided_json")
    if params.regex is not None:
        if not isinstance(params.regex, str):
            raise GrammarError(f"guided_regex must be a string, got {type(params.regex).__name__}")
        return Constraint("regex", params.regex, None, "guided_regex")
    if params.choice is not None:
        return Constraint("choice", list(params.choice) if isinstance(params.choice, (list, tuple)) else params.choice,
                          None, "guided_choice")
    if params.json_object:
        return Constraint("json_object", None, ws, "response_format json_object")
    raise GrammarError("the guided decoding parameters name no constraint")


def _schema(spec: Any) -> Any:
    if isinstance(spec, (bytes, bytearray)):
        spec = spec.decode("utf-8")
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError as e:
            raise JSONSchemaError(
                f"guided_json: the schema is not valid JSON: {getattr(e, 'msg', e)} at line "
                f"{getattr(e, 'lineno', '?')} column {getattr(e, 'colno', '?')}"
            ) from e
    elif hasattr(spec, "model_json_schema"):  # a pydantic model (class) given in Python
        spec = spec.model_json_schema()
    if not isinstance(spec, (dict, bool)):
        raise JSONSchemaError(f"guided_json: a JSON schema is an object or a boolean, got {type(spec).__name__}")
    return spec


_checked: OrderedDict[str, None] = OrderedDict()  # specs that passed, so repeats skip the check
_checked_lock = threading.Lock()
_CHECKED_MAX = 1024


def validate(params) -> Constraint:
    """Cheap check of a request's constraint (no automaton, no token index); raise GrammarError."""
    c = constraint_of(params)
    memo = json.dumps([c.kind, c.spec, c.whitespace_pattern], sort_keys=True, default=str)
    with _checked_lock:
        if memo in _checked:
            _checked.move_to_end(memo)
            return c
    try:
        from ...compiler import KINDS

        KINDS[c.kind].check(c.spec, {"whitespace_pattern": c.whitespace_pattern})
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
