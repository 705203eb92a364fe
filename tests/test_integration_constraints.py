"""The request translation both integrations share (``integrations/_constraints.py``): kinds, and
error messages that name the parameter as each engine's API spells it. No vLLM needed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dotvllm_plugin.errors import GrammarError
from dotvllm_plugin.integrations._constraints import V0_NAMES, V1_NAMES, constraint_of, validate

FIELDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag", "whitespace_pattern")


def params(**kw):
    return SimpleNamespace(**{f: None for f in FIELDS} | kw)


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"regex": "a+"}, "regex"),
        ({"choice": ["x", "y"]}, "choice"),
        ({"json": '{"type": "integer"}'}, "json_schema"),
        ({"json": {"type": "integer"}, "whitespace_pattern": "[ ]?"}, "json_schema"),
        ({"json_object": True}, "json_object"),
        ({"grammar": 'start: "yes" | "no"'}, "grammar"),
    ],
    ids=["regex", "choice", "json-string", "json-dict", "json_object", "grammar"],
)
def test_kinds(fields, kind):
    assert validate(params(**fields), names=V1_NAMES).kind == kind


@pytest.mark.parametrize(
    ("fields", "v0", "v1"),
    [
        ({"regex": "(a"}, r"^guided_regex: invalid regex", r"^structured_outputs\.regex: invalid regex"),
        ({"json": "{"}, r"^guided_json: the schema is not valid JSON", r"^structured_outputs\.json: the schema is not"),
        ({"grammar": 'root ::= "a"'}, r"^guided_grammar: invalid Lark grammar",
         r"^structured_outputs\.grammar: invalid Lark grammar"),
    ],
    ids=["regex", "json", "gbnf-is-not-lark"],
)
def test_messages_name_the_parameter_of_each_api(fields, v0, v1):
    with pytest.raises(GrammarError, match=v0):
        validate(params(**fields), names=V0_NAMES)
    with pytest.raises(GrammarError, match=v1):
        validate(params(**fields), names=V1_NAMES)


def test_structural_tag_is_not_ours():
    with pytest.raises(GrammarError, match="structural_tag is not supported by the dotvllm backend"):
        constraint_of(params(structural_tag="{}"), names=V1_NAMES)
