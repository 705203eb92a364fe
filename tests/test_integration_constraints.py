"""The request translation both integrations share (``integrations/_constraints.py``): kinds, and
error messages that name the parameter as each engine's API spells it. No vLLM needed."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from types import SimpleNamespace

import pytest

from dotvllm_plugin.errors import GrammarError
from dotvllm_plugin.integrations import _constraints
from dotvllm_plugin.integrations._constraints import V0_NAMES, V1_NAMES, constraint_of, validate

FIELDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag", "whitespace_pattern",
          "disable_any_whitespace", "disable_additional_properties")


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


STRUCTURES = {"type": "structural_tag", "structures": [{"begin": "<f=a>", "schema": {"type": "integer"}, "end": "</f>"}],
              "triggers": ["<f="]}


def test_structural_tag_structures_form_is_ours():
    import json

    for spec in (STRUCTURES, json.dumps(STRUCTURES)):
        c = validate(params(structural_tag=spec, disable_any_whitespace=True), names=V1_NAMES)
        assert (c.kind, c.spec, c.options) == ("structural_tag", STRUCTURES, {"disable_any_whitespace": True})
    bad = {**STRUCTURES, "triggers": ["<f=", "<g"]}
    with pytest.raises(GrammarError, match=r"^structured_outputs\.structural_tag: .*share a first character"):
        validate(params(structural_tag=bad), names=V1_NAMES)
    with pytest.raises(GrammarError, match=r"^response_format structural_tag: .*share a first character"):
        validate(params(structural_tag=bad), names=V0_NAMES)


def test_structural_tag_format_form_is_not_ours():
    fmt = '{"type": "structural_tag", "format": {"type": "const_string", "value": "x"}}'
    with pytest.raises(GrammarError, match="only the 'structures' \\+ 'triggers' form is supported"):
        constraint_of(params(structural_tag=fmt), names=V1_NAMES)


@pytest.mark.parametrize(
    ("fields", "options"),
    [
        ({"json": {"type": "object"}}, {}),
        ({"json": {"type": "object"}, "disable_any_whitespace": False, "disable_additional_properties": False}, {}),
        ({"json": {"type": "object"}, "disable_any_whitespace": True, "whitespace_pattern": "[ ]?"},
         {"disable_any_whitespace": True, "whitespace_pattern": "[ ]?"}),
        ({"json_object": True, "disable_additional_properties": True}, {"disable_additional_properties": True}),
        ({"regex": "a+", "disable_any_whitespace": True, "whitespace_pattern": "[ ]?"}, {}),
    ],
    ids=["json", "json-flags-false", "json-flags", "json_object-flag", "regex-ignores-them"],
)
def test_request_options_reach_the_kind_registry(monkeypatch, fields, options):
    from dotvllm_plugin import compiler
    from dotvllm_plugin.integrations._runtime import compile_kwargs

    c = constraint_of(params(**fields), names=V1_NAMES)
    assert c.options == options
    seen = []
    monkeypatch.setattr(_constraints, "_checked", OrderedDict())  # no memo of earlier checks
    monkeypatch.setitem(compiler.KINDS, c.kind,
                        dataclasses.replace(compiler.KINDS[c.kind], check=lambda spec, o: seen.append(o)))
    validate(params(**fields), names=V0_NAMES)
    assert seen == [options]

    class Manager:  # the compilation manager's signature, with and without ``options``
        def submit(self, kind, spec=None, *, whitespace_pattern=None, options=None): ...

    class OldManager:
        def submit(self, kind, spec=None, *, whitespace_pattern=None): ...

    assert compile_kwargs(Manager(), c) == {"options": options}
    assert compile_kwargs(OldManager(), c) == {"whitespace_pattern": c.whitespace_pattern}


def test_request_options_split_the_compile_cache_key():
    from dotvllm_plugin.compilation_manager import compile_key

    plain = constraint_of(params(json={"type": "object"}), names=V1_NAMES)
    strict = constraint_of(params(json={"type": "object"}, disable_additional_properties=True), names=V1_NAMES)
    assert compile_key(plain.kind, plain.spec, plain.options, "v") == compile_key("json_schema", {"type": "object"}, {},
                                                                                  "v")
    assert compile_key(strict.kind, strict.spec, strict.options, "v") != compile_key(plain.kind, plain.spec,
                                                                                     plain.options, "v")
