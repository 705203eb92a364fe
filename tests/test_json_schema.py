"""JSON Schema → regex: per-keyword tables (valid / invalid instances), refusals, errors.

Each case is checked three ways: the instance's validity per ``jsonschema`` agrees with the table
(so the table itself is right), every valid instance serialised our way (compact, declared
property order) matches, and no invalid instance matches.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from dotvllm_plugin.errors import (
    CompilationTooLargeError,
    JSONSchemaError,
    UnsupportedFeatureError,
)
from dotvllm_plugin.grammar.json_schema import (
    DEFAULT_WHITESPACE,
    FLEXIBLE_WHITESPACE,
    json_object_regex,
    json_schema_to_ir,
    json_schema_to_regex,
    json_value_regex,
    order_properties,
)


def ser(x) -> str:
    return json.dumps(x, separators=(",", ":"), ensure_ascii=False)


def is_valid(schema, instance) -> bool:
    cls = jsonschema.validators.validator_for(schema if isinstance(schema, dict) else {})
    return cls(schema, format_checker=cls.FORMAT_CHECKER).is_valid(instance)


S = {"type": "string"}
I = {"type": "integer"}

# (id, schema, valid instances, invalid instances); raw strings in the lists are JSON texts
CASES = [
    ("null", {"type": "null"}, [None], [0, False, "null"]),
    ("boolean", {"type": "boolean"}, [True, False], [0, None, "true"]),
    ("type-list", {"type": ["string", "null"]}, ["a", None], [1, [], {}]),
    ("integer", I, [0, -7, 123456789012345678901234567890], [1.5, "1", True]),
    ("integer-range", {"type": "integer", "minimum": -15, "maximum": 120}, [-15, -9, 0, 9, 99, 100, 120],
     [-16, 121, 1000, -100]),
    ("integer-exclusive", {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}, [1, 9], [0, 10, -1]),
    ("integer-draft4-exclusive", {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer",
                                  "minimum": 0, "exclusiveMinimum": True, "maximum": 5}, [1, 5], [0, 6]),
    ("integer-float-bounds", {"type": "integer", "minimum": 0.5, "maximum": 2.5}, [1, 2], [0, 3]),
    ("integer-multipleOf", {"type": "integer", "multipleOf": 5}, [0, 5, -10, 1234567890], [1, 12, 7]),
    ("integer-multipleOf-range", {"type": "integer", "multipleOf": 16, "minimum": 0, "maximum": 64},
     [0, 16, 64], [8, 80, -16]),
    ("number", {"type": "number"}, [0, -1.5, 3.25e10, 1e-5], ["1", None]),
    ("number-min0", {"type": "number", "minimum": 0}, [0, 0.0, 3.5, 100], [-0.5, -1]),
    ("number-excl0", {"type": "number", "exclusiveMinimum": 0}, [0.001, 1, 2.5], [0, 0.0, -1]),
    ("number-decimal-range", {"type": "number", "minimum": 0.5, "maximum": 2.25}, [0.5, 0.75, 1, 2, 2.25],
     [0.49, 2.26, 3, -1]),
    ("number-negative-range", {"type": "number", "minimum": -2.5, "exclusiveMaximum": -1},
     [-2.5, -2, -1.5, -1.01], [-1, -2.51, 0, 1]),
    ("number-float-rounding", {"type": "number", "exclusiveMaximum": 100}, [99.99, 99],
     ["100.0000000000000000001", 100]),
    ("string", S, ["", "a", 'q"uo\\te', "é中😀", "\n\t/"], [1, None]),
    ("string-length", {"type": "string", "minLength": 2, "maxLength": 3}, ["ab", "abc", "é😀"],
     ["a", "abcd", "", "😀"]),
    ("string-length-escapes", {"type": "string", "maxLength": 2}, ['"\\na"', '"\\"\\\\"', '"\\/"'],
     ['"\\n\\t\\r"']),
    ("pattern-anchored", {"type": "string", "pattern": "^[a-z]{2,4}-[0-9]+$"}, ["ab-1", "abcd-123"],
     ["a-1", "ab-", "1ab-1", "ab-1x", "AB-1"]),
    ("pattern-search", {"type": "string", "pattern": "[0-9]{3}"}, ["123", "x123y", "a1234"], ["12", "a1b2c3"]),
    ("pattern-specials", {"type": "string", "pattern": '^a"b\\\\c\\.\\d$'}, ['a"b\\c.5'], ['a"b\\c.x', "ab"]),
    ("pattern-dot-newline", {"type": "string", "pattern": "^a.b$"}, ["axb", "a b"], ["a\nb", "ab"]),
    ("pattern-alternation", {"type": "string", "pattern": "^cat$|^dog"}, ["cat", "dogs", "dog"], ["cats", "xdog"]),
    ("pattern-length-class", {"type": "string", "pattern": "^[a-z]+$", "maxLength": 3}, ["a", "abc"],
     ["", "abcd", "A"]),
    ("pattern-bounded-by-max-length", {"type": "string", "pattern": "^[a-z]+(-[a-z]+)*$", "maxLength": 12},
     ["a", "ab-cd", "abc-de-f"], ["", "-a", "a-", "abcdefghijklm", "A"]),
    ("pattern-unanchored-max-length", {"type": "string", "pattern": "[0-9]", "maxLength": 4}, ["1", "a1b"],
     ["abc", "12345"]),
    ("pattern-implied-length", {"type": "string", "pattern": "^[0-9]{5}$", "minLength": 5, "maxLength": 5},
     ["12345"], ["1234", "123456"]),
    ("format-date", {"type": "string", "format": "date"}, ["2024-02-29", "1999-12-31", "2000-02-29"],
     ["2023-02-29", "1900-02-29", "2024-13-01", "2024-04-31", "0000-01-01", "24-01-01"]),
    ("format-date-time", {"type": "string", "format": "date-time"},
     ["2024-01-02T03:04:05Z", "2024-01-02T03:04:05.123+05:30"], ["2024-01-02 03:04:05Z", "2024-01-02T24:00:00Z"]),
    ("format-time", {"type": "string", "format": "time"}, ["23:59:59Z", "00:00:00.5-01:00"], ["24:00:00Z", "12:00"]),
    ("format-uuid", {"type": "string", "format": "uuid"}, ["123e4567-e89b-12d3-a456-426614174000"],
     ["123e4567e89b12d3a456426614174000", "not-a-uuid"]),
    ("format-ipv4", {"type": "string", "format": "ipv4"}, ["0.0.0.0", "192.168.1.255"],
     ["256.1.1.1", "01.2.3.4", "1.2.3"]),
    ("format-ipv6", {"type": "string", "format": "ipv6"}, ["::1", "2001:db8::ff00:42:8329", "::ffff:1.2.3.4"],
     ["12345::", "1:2:3:4:5:6:7:8:9", "1.2.3.4"]),
    ("format-email", {"type": "string", "format": "email"}, ["a.b@example.com"], ["no-at-sign"]),
    ("format-email-maxLength", {"type": "string", "format": "email", "minLength": 3, "maxLength": 255},
     ["a.b@example.com", "x@y.io"], ["no-at-sign", "a" * 250 + "@example.com"]),
    ("format-hostname", {"type": "string", "format": "hostname"}, ["example.com", "a-b.c"], ["-a.com", "a..b"]),
    ("format-duration", {"type": "string", "format": "duration"}, ["P3D", "PT1H30M", "P1Y2M3DT4H", "P2W"],
     ["P", "PT", "1D", "P1H"]),
    ("format-uri", {"type": "string", "format": "uri"}, ["https://example.com/a?b=c#d", "urn:isbn:123"],
     ["//example.com", "not a uri", "http://a b"]),
    ("format-with-wider-pattern", {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
     ["2024-02-29"], ["2023-02-29", "20240229"]),
    ("format-with-narrower-pattern", {"type": "string", "format": "ipv4", "pattern": "^10\\.0\\.0\\.[0-9]$"},
     ["10.0.0.1"], ["10.0.0.12", "192.168.0.1"]),
    ("format-unknown-is-annotation", {"type": "string", "format": "int32"}, ["x"], [1]),
    ("enum", {"enum": ["a", 1, None, [1, {"k": "v"}], {"x": True}]}, ["a", 1, None, [1, {"k": "v"}], {"x": True}],
     ["b", 2, False, [1], {}]),
    ("enum-with-type", {"type": "string", "enum": ["a", 1, "b"]}, ["a", "b"], [1, "c"]),
    ("const", {"const": {"a": [1, 2]}}, [{"a": [1, 2]}], [{"a": [2, 1]}, {}]),
    ("enum-filtered-by-format-and-pattern", {"type": "string", "format": "date", "enum": ["2024-02-30", "2024-02-29"]},
     ["2024-02-29"], ["2024-02-30"]),
    ("enum-filtered-by-pattern", {"enum": ["ab", "a1", 3], "pattern": "^[a-z]+$"}, ["ab", 3], ["a1"]),
    ("enum-escapes", {"enum": ['q"', "back\\slash", "tab\t"]}, ['q"', "back\\slash", "tab\t"], ["q"]),
    ("object", {"type": "object", "properties": {"a": I, "b": S}, "required": ["a"], "additionalProperties": False},
     [{"a": 1}, {"a": 1, "b": "x"}], [{}, {"b": "x"}, {"a": "1"}, {"a": 1, "c": 2}]),
    ("object-all-optional", {"type": "object", "properties": {"a": I, "b": I, "c": I}},
     [{}, {"a": 1}, {"b": 2}, {"c": 3}, {"a": 1, "c": 3}, {"a": 1, "b": 2, "c": 3}], [{"a": "x"}, '{"a":1,}', '{,"a":1}']),
    ("object-required-undeclared", {"type": "object", "properties": {"a": I}, "required": ["a", "z"]},
     [{"a": 1, "z": [1, "x"]}], [{"a": 1}]),
    ("object-additional-schema", {"type": "object", "properties": {"a": I}, "additionalProperties": S},
     [{"a": 1}, {"a": 1, "x": "y", "z": "w"}, {"b": "c"}], [{"a": 1, "x": 2}, '{"a":1,"a":"s"}']),
    ("object-free-form", {"type": "object"}, [{}, {"a": 1, "b": [None, "c"], "d": {"e": True}}], [[], "x"]),
    ("object-pattern-properties", {"type": "object", "patternProperties": {"^x-": I}, "additionalProperties": False},
     [{}, {"x-a": 1, "x-b": 2}], [{"y": 1}, {"x-a": "s"}]),
    ("object-property-names", {"type": "object", "propertyNames": {"maxLength": 3}, "additionalProperties": I},
     [{}, {"abc": 1}], [{"abcd": 1}]),
    ("object-property-names-false", {"type": "object", "propertyNames": False}, [{}], [{"a": 1}]),
    ("object-min-max-properties", {"type": "object", "properties": {"a": I}, "required": ["a"],
                                   "additionalProperties": I, "maxProperties": 2}, [{"a": 1}, {"a": 1, "b": 2}],
     [{"a": 1, "b": 2, "c": 3}]),
    ("object-no-type", {"properties": {"a": I}, "required": ["a"]}, [{"a": 1}, "str", 5, None], [{"a": "x"}, {}]),
    ("array", {"type": "array", "items": I}, [[], [1], [1, 2, 3]], [[1, "a"], {}, '[1,]']),
    ("array-min-max", {"type": "array", "items": S, "minItems": 1, "maxItems": 2}, [["a"], ["a", "b"]],
     [[], ["a", "b", "c"]]),
    ("array-prefix", {"type": "array", "prefixItems": [I, S], "items": False}, [[], [1], [1, "a"]],
     [["a"], [1, 2], [1, "a", 3]]),
    ("array-draft4-tuple", {"$schema": "http://json-schema.org/draft-04/schema#", "type": "array",
                            "items": [I, S], "additionalItems": {"type": "boolean"}, "minItems": 2},
     [[1, "a"], [1, "a", True, False]], [[1], [1, "a", 3]]),
    ("array-contains", {"type": "array", "items": I, "contains": {"minimum": 10}}, [[10], [1, 2, 30], [50, 1]],
     [[], [1, 2]]),
    ("array-contains-max", {"type": "array", "items": I, "contains": {"const": 0}, "maxItems": 2},
     [[0], [1, 0], [0, 1]], [[1, 2], [1, 2, 0]]),
    ("array-unique-trivial", {"type": "array", "uniqueItems": True, "maxItems": 1}, [[], [1]], [[1, 1]]),
    ("anyOf", {"anyOf": [I, {"type": "string", "maxLength": 1}]}, [1, "a"], ["ab", None]),
    ("anyOf-with-siblings", {"type": "object", "properties": {"a": I, "b": I},
                             "anyOf": [{"required": ["a"]}, {"required": ["b"]}], "additionalProperties": False},
     [{"a": 1}, {"b": 1}, {"a": 1, "b": 2}], [{}]),
    ("oneOf-disjoint-types", {"oneOf": [I, S, {"type": "null"}]}, [1, "a", None], [1.5, True]),
    ("oneOf-discriminator", {"oneOf": [
        {"type": "object", "properties": {"kind": {"const": "a"}, "x": I}, "required": ["kind", "x"]},
        {"type": "object", "properties": {"kind": {"const": "b"}, "y": S}, "required": ["kind", "y"]}]},
     [{"kind": "a", "x": 1}, {"kind": "b", "y": "s"}], [{"kind": "a", "y": "s"}, {"kind": "c"}]),
    ("oneOf-required-sets", {"type": "object", "properties": {"r": I, "w": I, "h": I},
                             "oneOf": [{"required": ["r"]}, {"required": ["w", "h"]}]},
     [{"r": 1}, {"w": 1, "h": 2}, {"r": 1, "h": 2}], [{"r": 1, "w": 1, "h": 2}, {}, {"w": 1}]),
    ("oneOf-required-with-additional", {"type": "object", "properties": {"a": I}, "additionalProperties": S,
                                        "oneOf": [{"required": ["a"]}, {"required": ["x"]}]},
     [{"a": 1}, {"x": "s"}], [{"a": 1, "x": "s"}, {}]),
    ("if-then-else", {"type": "object", "properties": {"kind": {"enum": ["a", "b"]}, "x": I},
                      "if": {"properties": {"kind": {"const": "a"}}}, "then": {"required": ["x"]},
                      "else": {"properties": {"x": {"maximum": 0}}}},
     [{"kind": "a", "x": 5}, {"kind": "b"}, {"kind": "b", "x": -1}, {"x": 1}],
     [{"kind": "a"}, {"kind": "b", "x": 1}, {}]),
    ("if-required", {"type": "object", "properties": {"a": I, "b": I}, "if": {"required": ["a"]},
                     "then": {"required": ["b"]}}, [{}, {"b": 1}, {"a": 1, "b": 2}], [{"a": 1}]),
    ("not-string-values", {"type": "string", "not": {"enum": ["x", "yz"]}}, ["", "y", "xy", "yzz"], ["x", "yz"]),
    ("dependencies", {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                      "properties": {"a": I, "b": I, "c": S},
                      "dependencies": {"a": ["b"], "c": {"required": ["a"]}}},
     [{}, {"b": 1}, {"a": 1, "b": 2}, {"a": 1, "b": 2, "c": "x"}], [{"a": 1}, {"c": "x"}, {"b": 1, "c": "x"}]),
    ("dependentRequired", {"type": "object", "properties": {"a": I, "b": I}, "dependentRequired": {"b": ["a"]}},
     [{}, {"a": 1}, {"a": 1, "b": 2}], [{"b": 2}]),
    ("dependentSchemas", {"type": "object", "properties": {"a": I, "b": I},
                          "dependentSchemas": {"a": {"properties": {"b": {"minimum": 5}}}}},
     [{"b": 1}, {"a": 1, "b": 5}], [{"a": 1, "b": 4}]),
    ("oneOf-required-untyped", {"properties": {"bar": I, "foo": S}, "oneOf": [{"required": ["bar"]}, {"required": ["foo"]}]},
     [{"bar": 1}, {"foo": "x"}], [{"bar": 1, "foo": "x"}, {}, 1, "s"]),
    ("allOf-merge", {"allOf": [{"type": "object", "properties": {"a": I}, "required": ["a"]},
                               {"properties": {"b": S}, "required": ["b"]}]},
     [{"a": 1, "b": "x"}], [{"a": 1}, {"b": "x"}]),
    ("allOf-ranges", {"allOf": [{"type": "integer", "minimum": 0}, {"maximum": 5}, {"exclusiveMaximum": 4}]},
     [0, 3], [4, 5, -1]),
    ("allOf-additional-false", {"allOf": [{"type": "object", "properties": {"a": I}, "additionalProperties": False},
                                          {"properties": {"b": I}}]}, [{}, {"a": 1}], [{"b": 1}]),
    ("not-type", {"type": ["string", "integer"], "not": {"type": "string"}}, [1], ["a"]),
    ("not-required", {"type": "object", "properties": {"a": I, "b": I}, "not": {"required": ["b"]}},
     [{}, {"a": 1}], [{"b": 1}]),
    ("not-const-bool", {"type": "boolean", "not": {"const": True}}, [False], [True]),
    ("ref-defs", {"$defs": {"pos": {"type": "integer", "minimum": 1}}, "type": "array", "items": {"$ref": "#/$defs/pos"}},
     [[1, 2]], [[0]]),
    ("ref-definitions-escaped", {"definitions": {"a/b": {"const": 1}, "c~d": {"const": 2}},
                                 "anyOf": [{"$ref": "#/definitions/a~1b"}, {"$ref": "#/definitions/c~0d"}]}, [1, 2], [3]),
    ("ref-with-siblings", {"$defs": {"o": {"type": "object", "properties": {"a": I}}},
                           "$ref": "#/$defs/o", "required": ["a"]}, [{"a": 1}], [{}]),
    ("ref-recursive", {"$defs": {"node": {"type": "object", "properties": {
        "v": I, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["v"],
        "additionalProperties": False}}, "$ref": "#/$defs/node"},
     [{"v": 1}, {"v": 1, "kids": [{"v": 2, "kids": [{"v": 3}]}]}], [{"v": 1, "kids": [{}]}]),
    ("true-schema", True, [None, 1, "x", [1, "y"], {"a": 1}], []),
    ("empty-schema", {}, [None, 1, "x"], []),
    ("annotations-ignored", {"type": "integer", "title": "t", "description": "d", "examples": [1], "default": 0,
                             "x-vendor": {"anything": 1}, "$comment": "c"}, [1], ["1"]),
    ("unicode-keys", {"type": "object", "properties": {"clé": S, "键": I}, "required": ["键"]},
     [{"键": 1}, {"clé": "v", "键": 2}], [{"clé": "v"}]),
    # enum/const pin a finite set: any other keywords just filter it (checked with jsonschema)
    ("enum-filtered-by-not", {"allOf": [{"enum": [{}, {"a": 1}, 3]}, {"not": {"type": "integer"}}]},
     [{}, {"a": 1}], [3]),
    ("enum-filtered-by-if", {"enum": [1, 4, 6, 10], "if": {"maximum": 5}, "then": {"minimum": 4},
                             "else": {"multipleOf": 5}}, [4, 10], [1, 6]),
    ("enum-filtered-by-uniqueItems", {"enum": [[1, 1], [1, 2]], "uniqueItems": True}, [[1, 2]], [[1, 1]]),
    ("const-filtered-by-ref-not", {"$defs": {"n": {"not": {"properties": {"b": {"type": "string"}}}}},
                                   "allOf": [{"enum": [{"b": "x"}, {"b": 1}]}, {"$ref": "#/$defs/n"}]},
     [{"b": 1}], [{"b": "x"}]),
]


def _unchecked_format(schema) -> bool:
    """jsonschema checks some formats only with optional packages; then the RFC is the judge."""
    fmt = schema.get("format") if isinstance(schema, dict) else None
    cls = jsonschema.validators.validator_for(schema if isinstance(schema, dict) else {})
    return fmt is not None and fmt not in cls.FORMAT_CHECKER.checkers


def _text(instance) -> str:
    return instance if isinstance(instance, str) and instance[:1] in "{[\"" and _is_json(instance) else ser(instance)


def _is_json(s: str) -> bool:
    try:
        json.loads(s)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("schema, valid, invalid", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_keyword_table(schema, valid, invalid):
    regex = json_schema_to_regex(schema)
    compiled = re.compile(regex)
    for inst in valid:
        text = _text(inst) if isinstance(inst, str) and inst.startswith(('"', "{", "[")) else ser(
            order_properties(inst, schema))
        assert is_valid(schema, json.loads(text)), f"table error: {text} should be valid"
        assert compiled.fullmatch(text), f"valid instance rejected: {text}"
    for inst in invalid:
        text = _text(inst) if isinstance(inst, str) and inst.startswith(('"', "{", "[")) else ser(inst)
        if _is_json(text):
            data = json.loads(text)
            strict_invalid = not is_valid(schema, data) or text.count('"a"') > 1 or _unchecked_format(schema)
            assert strict_invalid, f"table error: {text} should be invalid"
        assert not compiled.fullmatch(text), f"invalid instance accepted: {text}"


REFUSALS = [
    ("uniqueItems", {"type": "array", "uniqueItems": True}, "uniqueItems", "/uniqueItems"),
    ("if-complex", {"if": {"type": "string", "minLength": 2}, "then": {"maxLength": 5}}, "if", "/if"),
    ("dependencies-many", {"type": "object", "dependencies": {k: ["z"] for k in "abcdefg"}}, "dependencies", "/"),
    ("unevaluatedProperties", {"type": "object", "unevaluatedProperties": False}, "unevaluatedProperties",
     "/unevaluatedProperties"),
    ("oneOf-overlap", {"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf", "/oneOf"),
    ("multipleOf-float", {"type": "number", "multipleOf": 0.01}, "multipleOf", "/multipleOf"),
    ("remote-ref", {"$ref": "https://example.com/schema.json"}, "$ref", "/$ref"),
    ("pattern-lookahead", {"type": "string", "pattern": "^(?=a)a$"}, "pattern", "/pattern"),
    ("pattern-backref", {"type": "string", "pattern": "^(a)\\1$"}, "pattern", "/pattern"),
    ("pattern-mid-anchor", {"type": "string", "pattern": "a^b"}, "pattern", "/pattern"),
    ("pattern-unicode-property", {"type": "string", "pattern": "^\\p{L}+$"}, "pattern", "/pattern"),
    ("pattern-min-length", {"type": "string", "pattern": "^a[0-9]*$", "minLength": 3, "maxLength": 5}, "pattern",
     "/pattern"),
    ("format-idn", {"type": "string", "format": "idn-email"}, "format", "/format"),
    ("format-overlapping-pattern", {"type": "string", "format": "uri", "pattern": "^https?://"}, "format", "/format"),
    ("nested-where", {"type": "object", "properties": {"a/b": {"type": "array", "uniqueItems": True}}},
     "uniqueItems", "/properties/a~1b/uniqueItems"),
    ("not-complex", {"not": {"type": "string", "minLength": 2}}, "not", "/not"),
    ("contains-counted", {"type": "array", "contains": {"type": "integer"}, "minContains": 2}, "minContains",
     "/contains"),
    ("nothing-matches", {"type": "integer", "minimum": 5, "maximum": 1}, "false", "/"),
]


@pytest.mark.parametrize("schema, feature, where", [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_refusals_name_keyword_and_place(schema, feature, where):
    with pytest.raises(UnsupportedFeatureError, match=re.escape(feature)) as info:
        json_schema_to_regex(schema)
    assert info.value.feature == feature
    assert info.value.where == where
    assert isinstance(info.value, ValueError)


MALFORMED = [
    ("bad-json", "{not json", "not valid JSON"),
    ("not-object", "[1, 2]", "must be an object or a boolean"),
    ("dangling-ref", {"$ref": "#/$defs/missing"}, "points to nothing"),
    ("bad-type", {"type": "strin"}, "unknown type"),
    ("bad-minimum", {"type": "integer", "minimum": "3"}, "minimum must be a number"),
    ("bad-min-length", {"type": "string", "minLength": -1}, "minLength must be a non-negative integer"),
    ("bad-properties", {"type": "object", "properties": []}, "properties must be an object"),
    ("bad-subschema", {"type": "array", "items": 3}, "must be an object or a boolean"),
    ("bad-enum", {"enum": "a"}, "enum must be an array"),
]


@pytest.mark.parametrize("schema, message", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_schemas(schema, message):
    with pytest.raises(JSONSchemaError, match=message):
        json_schema_to_regex(schema)


MALFORMED_EARLY = [  # read by allOf merging, oneOf disjointness and "not" before the branch compiles
    ("oneOf-required-list", {"oneOf": [{"type": "object", "properties": {"a": {"const": 1}}, "required": [["a"]]},
                                       {"type": "object", "properties": {"a": {"const": 2}}, "required": ["a"]}]},
     UnsupportedFeatureError, "/oneOf/0/required"),
    ("oneOf-type-object", {"oneOf": [{"type": {"a": 1}}, {"type": "string"}]}, JSONSchemaError, "/oneOf/0/type"),
    ("allOf-required-null", {"allOf": [{"required": None, "minLength": None}, {"required": ["a"], "minLength": 2}]},
     JSONSchemaError, "/allOf"),
    ("allOf-properties-list", {"allOf": [{"properties": []}, {"properties": {"a": {}}}]}, JSONSchemaError,
     "properties"),
    ("not-type-object", {"type": "string", "not": {"type": [{}]}}, JSONSchemaError, "/not/type"),
    ("min-length-null", {"type": "string", "minLength": None}, JSONSchemaError, "/minLength"),
    ("min-items-null", {"type": "array", "minItems": None}, JSONSchemaError, "/minItems"),
    ("format-object", {"type": "string", "format": {}, "pattern": "a"}, JSONSchemaError, "/format"),
]


@pytest.mark.parametrize("schema, error, where", [c[1:] for c in MALFORMED_EARLY], ids=[c[0] for c in MALFORMED_EARLY])
def test_malformed_keywords_read_early_are_reported_not_crashed_on(schema, error, where):
    with pytest.raises(error, match=re.escape(where)):
        json_schema_to_ir(schema)


def test_mutated_corpus_schemas_raise_only_the_engine_s_errors():
    """Every keyword value of corpus schemas replaced by values of the wrong shape (lists, objects,
    nested lists, strings, numbers, null, booleans): the translation either succeeds or raises one
    of the engine's errors (an HTTP 400 through the plugin), never a Python error of its own."""
    import glob
    import os
    import random

    from dotvllm_plugin.compiler import check_json_schema
    from dotvllm_plugin.errors import DotvllmError

    corpus = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus", "jsonschemabench-dev")
    files = sorted(glob.glob(os.path.join(corpus, "*.json")))
    if not files:
        pytest.skip("the JSONSchemaBench corpus is not here")
    rng = random.Random(7)
    wrong = [[], {}, "x", 3, -1, 2.5, None, True, [["a"]], [{}], {"a": []}, [1, "a"], "", [None]]

    def places(x):
        if isinstance(x, dict):
            for k, v in x.items():
                yield x, k
                yield from places(v)
        elif isinstance(x, list):
            for v in x:
                yield from places(v)

    tried = refused = 0
    for f in rng.sample(files, 300):
        with open(f) as fh:
            schema = json.load(fh)["schema"]
        for _ in range(8):
            mutant = json.loads(json.dumps(schema))
            spots = list(places(mutant))
            if not spots:
                break
            for _ in range(rng.choice((1, 1, 2))):
                parent, key = rng.choice(spots)
                parent[key] = rng.choice(wrong)
            tried += 1
            try:
                check_json_schema(mutant)
            except DotvllmError:
                refused += 1
            except RecursionError:
                pass
            except Exception as e:  # noqa: BLE001 - the point of the test
                pytest.fail(f"{os.path.basename(f)}: {type(e).__name__}: {e} on {json.dumps(mutant)[:300]}")
    assert tried > 2000 and refused > 300


def test_schema_as_json_text():
    assert json_schema_to_regex('{"type": "integer"}') == json_schema_to_regex({"type": "integer"})


def test_regex_has_no_constructs_the_engine_refuses():
    from dotvllm_plugin.compiler import check_regex

    for _, schema, _, _ in CASES:
        check_regex(json_schema_to_regex(schema))


# ---- whitespace ------------------------------------------------------------------------------

WS_SCHEMA = {"type": "object", "properties": {"a": {"type": "array", "items": I}}, "required": ["a"]}


def test_default_whitespace_is_compact():
    assert DEFAULT_WHITESPACE == ""
    r = re.compile(json_schema_to_regex(WS_SCHEMA))
    assert r.fullmatch('{"a":[1,2]}')
    assert not r.fullmatch('{"a": [1, 2]}')
    assert not r.fullmatch('{ "a":[1,2]}')


@pytest.mark.parametrize("pattern, text", [
    ("[ ]?", '{ "a" : [ 1 , 2 ] }'),
    (FLEXIBLE_WHITESPACE, '{\n  "a": [\n    1,\n    2\n  ]\n}'),
    ("[\\n ]{0,4}", '{\n "a":[1,\n2]}'),
], ids=["single-space", "flexible", "bounded-class"])
def test_whitespace_pattern(pattern, text):
    r = re.compile(json_schema_to_regex(WS_SCHEMA, whitespace_pattern=pattern))
    assert r.fullmatch(text)
    assert r.fullmatch('{"a":[1,2]}')
    assert not r.fullmatch('{"a":[1,2]}' .replace(",", " ,x"))


@pytest.mark.parametrize("pattern, message", [
    ("[ ]*", "unboundedly long"),
    ("[ \\n]+", "unboundedly long"),
    ("\\s?", "not JSON whitespace"),
    ("[ a]?", "not JSON whitespace"),
    (".", "not JSON whitespace"),
    ("(", "not a supported regex"),
], ids=["star", "plus", "vertical-tab", "letter", "dot", "syntax"])
def test_whitespace_pattern_refused(pattern, message):
    with pytest.raises(UnsupportedFeatureError, match=message):
        json_schema_to_regex(WS_SCHEMA, whitespace_pattern=pattern)


# ---- free-form values --------------------------------------------------------------------------

@pytest.mark.parametrize("text, ok", [
    ("{}", True), ('{"a":1}', True), ('{"a":{"b":[1,{}]}}', False), ('{"a":{"b":[1,2]}}', True),
    ("[]", False), ('{"a":1,}', False), ('{"a"}', False),
], ids=["empty", "flat", "depth-4", "depth-3", "array", "trailing-comma", "no-value"])
def test_json_object_regex(text, ok):
    assert (re.fullmatch(json_object_regex(), text) is not None) == ok


def test_bounded_strings_do_not_use_hex_escapes():
    # a documented restriction: \\uXXXX costs automaton states at every bounded position
    r = re.compile(json_schema_to_regex({"type": "string", "maxLength": 5}))
    assert r.fullmatch('"é\\n"') and not r.fullmatch('"\\u00e9"')


def test_free_form_values_nest_one_level():
    # documented restriction: free-form values inside a schema hold one level of containers
    r = re.compile(json_schema_to_regex({"type": "object", "properties": {"x": {}}, "required": ["x"]}))
    assert r.fullmatch('{"x":[1,{}]}') is None and r.fullmatch('{"x":[1,"a"]}')


def test_unicode_escapes_option():
    plain = re.compile(json_schema_to_regex(S))
    hexes = re.compile(json_schema_to_regex(S, unicode_escapes=True))
    for text in ['"\\u00e9a"', '"\\ud83d\\ude00"', '"\\u0000"']:
        assert hexes.fullmatch(text) and not plain.fullmatch(text)
    # lone surrogates: Python's json accepts them, but they cannot be encoded as UTF-8 downstream
    assert not hexes.fullmatch('"\\ud83d"') and not hexes.fullmatch('"\\ude00\\ud83d"')


def test_json_value_regex_scalars_and_depth():
    r = re.compile(json_value_regex(max_depth=1))
    for t in ["null", "true", "-0.5e3", '"x"', "[1,2]", '{"a":"b"}']:
        assert r.fullmatch(t), t
    assert not r.fullmatch("[[1]]")


# ---- budgets and recursion -----------------------------------------------------------------------

def test_size_budget():
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 5} for i in range(60)}}
    with pytest.raises(CompilationTooLargeError, match="exceeds 2000 characters"):
        json_schema_to_regex(schema, max_regex_chars=2000)


def test_recursion_depth_bound_is_sound_and_documented():
    schema = {"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}}, "$ref": "#/$defs/n"}
    r1 = re.compile(json_schema_to_regex(schema, max_recursion_depth=1))
    r3 = re.compile(json_schema_to_regex(schema, max_recursion_depth=3))
    assert r1.fullmatch("[]") and not r1.fullmatch("[[]]")
    assert r3.fullmatch("[[[]]]") and not r3.fullmatch("[[[[]]]]")


def test_repeat_cap_lowers_large_bounds_soundly():
    schema = {"type": "object", "properties": {"s": {"type": "string", "minLength": 2, "maxLength": 4096},
                                               "t": {"type": "string", "minLength": 100, "maxLength": 200},
                                               "a": {"type": "array", "maxItems": 1000}}}
    r = re.compile(json_schema_to_regex(schema, repeat_cap=8))
    assert r.fullmatch('{"s":"12345678"}') and not r.fullmatch('{"s":"123456789"}')
    assert r.fullmatch('{"t":"' + "x" * 100 + '"}') and not r.fullmatch('{"t":"' + "x" * 101 + '"}')
    assert r.fullmatch('{"a":[1,2,3,4,5,6,7,8]}') and not r.fullmatch('{"a":[1,2,3,4,5,6,7,8,9]}')


def test_order_properties_follows_declared_order():
    schema = {"type": "object", "properties": {"b": I, "a": {"type": "object", "properties": {"y": I, "x": I}}},
              "required": ["z"]}
    got = order_properties({"z": 0, "a": {"x": 1, "y": 2}, "b": 3}, schema)
    assert ser(got) == '{"b":3,"a":{"y":2,"x":1},"z":0}'


def test_refusal_inside_a_definition_of_a_schema_that_needs_rules_names_the_definition():
    """An object that allows undeclared properties is compiled as rules, known before its declared
    properties are translated (the one-regex attempt stops there): a keyword refused inside a
    ``$ref``'d definition is reported at the definition, where it is written."""
    schema = {"definitions": {"a": {"type": "number", "multipleOf": 0.1}},
              "properties": {"p": {"$ref": "#/definitions/a"}}}
    with pytest.raises(UnsupportedFeatureError) as e:
        json_schema_to_ir(schema)
    assert (e.value.feature, e.value.where) == ("multipleOf", "/definitions/a/multipleOf")
    # and an object of declared properties that allows undeclared ones still compiles, as rules
    ok = json_schema_to_ir({"properties": {"p": {"type": "integer"}}, "required": ["p"]})
    assert ok.rules and any(t.regex.startswith('"p"') for t in ok.terminals)


@pytest.mark.parametrize("options", [{"allow_undeclared_properties": False}, {"mode": "grammar"}, {}])
def test_a_refusal_inside_a_referenced_definition_names_the_definition_in_every_translation(options):
    """The one-regex translation (undeclared properties forbidden: the whole schema is one regex)
    and the rule translation report a keyword refused inside a ``$ref``'d definition at the same
    place: the definition, where the keyword is written (the one-regex translation named the use
    site once)."""
    schema = {"definitions": {"a": {"type": "object", "properties": {"n": {"type": "number", "multipleOf": 0.1}}}},
              "type": "object", "properties": {"p": {"type": "array", "items": {"$ref": "#/definitions/a"}}}}
    with pytest.raises(UnsupportedFeatureError) as e:
        json_schema_to_ir(schema, **options)
    assert (e.value.feature, e.value.where) == ("multipleOf", "/definitions/a/properties/n/multipleOf")
