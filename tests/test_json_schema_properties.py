"""Property tests for the JSON Schema front end.

* soundness: strings drawn from the regex itself (``hypothesis.strategies.from_regex``) parse as
  JSON and validate against the schema;
* exactness where we claim it: integer ranges, decimal ranges, string lengths, patterns.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
from decimal import Decimal
from fractions import Fraction

import jsonschema
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dotvllm_plugin.grammar.json_schema.numbers import integer_range, number_range
from dotvllm_plugin.grammar.json_schema import json_schema_to_regex

from test_json_schema import CASES  # noqa: E402  (tests/ is on sys.path under pytest rootdir-less import)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def _checker(cls):
    checker = cls.FORMAT_CHECKER
    extra = jsonschema.FormatChecker()
    # formats jsonschema checks only with optional packages: check them with the stdlib here
    extra.checks("date-time", raises=ValueError)(
        lambda s: not isinstance(s, str) or bool(datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))))
    extra.checks("time", raises=ValueError)(
        lambda s: not isinstance(s, str) or bool(datetime.time.fromisoformat(s.replace("Z", "+00:00"))))
    extra.checks("ipv6", raises=ValueError)(lambda s: not isinstance(s, str) or bool(ipaddress.IPv6Address(s)))
    extra.checks("hostname")(
        lambda s: not isinstance(s, str) or (len(s) <= 253 and all(
            re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", label) for label in s.split("."))))
    for name, func in checker.checkers.items():
        if name not in extra.checkers:
            extra.checkers[name] = func
    return extra


def validate(schema, instance) -> bool:
    cls = jsonschema.validators.validator_for(schema if isinstance(schema, dict) else {})
    return cls(schema, format_checker=_checker(cls)).is_valid(instance)


SOUNDNESS = [(c[0], c[1]) for c in CASES if c[0] not in ("true-schema", "empty-schema", "object-free-form")] + [
    ("nested", {"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 1},
        "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}, "maxItems": 3},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "meta": {"anyOf": [{"type": "null"}, {"type": "object", "additionalProperties": {"type": "boolean"}}]},
    }, "required": ["id"]}),
    ("additional-keys", {"type": "object", "properties": {"a": {"type": "integer"}, "ab": {"type": "null"}},
                         "additionalProperties": {"type": "string"}}),
]


@pytest.mark.parametrize("schema", [s for _, s in SOUNDNESS], ids=[i for i, _ in SOUNDNESS])
def test_strings_from_the_regex_validate(schema):
    regex = json_schema_to_regex(schema)

    @SETTINGS
    @given(st.from_regex(regex, fullmatch=True))
    def check(text):
        data = json.loads(text)
        assert validate(schema, data), f"regex produced an invalid document: {text!r}"

    check()


@SETTINGS
@given(st.integers(-10**6, 10**6), st.integers(0, 10**5), st.integers(-10**7, 10**7))
def test_integer_range_is_exact(lo, span, n):
    r = re.compile(integer_range(lo, lo + span))
    assert (r.fullmatch(str(n)) is not None) == (lo <= n <= lo + span)


@SETTINGS
@given(st.one_of(st.none(), st.integers(-1000, 1000)), st.one_of(st.none(), st.integers(-1000, 1000)),
       st.integers(-10**4, 10**4))
def test_half_open_integer_ranges(lo, hi, n):
    assume(lo is None or hi is None or lo <= hi)
    regex = integer_range(lo, hi)
    ok = (lo is None or n >= lo) and (hi is None or n <= hi)
    assert (re.fullmatch(regex, str(n)) is not None) == ok


_bound = st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(st.one_of(st.none(), _bound), st.booleans(), st.one_of(st.none(), _bound), st.booleans(),
       st.decimals(min_value=-2000, max_value=2000, places=4, allow_nan=False, allow_infinity=False))
def test_number_range_sound_and_exact_on_short_decimals(lo, lo_x, hi, hi_x, x):
    schema = {"type": "number"}
    if lo is not None:
        schema["exclusiveMinimum" if lo_x else "minimum"] = float(lo)
    if hi is not None:
        schema["exclusiveMaximum" if hi_x else "maximum"] = float(hi)
    try:
        regex = json_schema_to_regex(schema)
    except jsonschema.exceptions.SchemaError:  # pragma: no cover
        return
    except ValueError:
        assume(False)
    text = format(x, "f")
    if "." not in text:
        text += ".0"
    value = json.loads(text)
    matched = re.fullmatch(regex, text) is not None
    valid = validate(schema, value)
    if matched:
        assert valid, f"{text} accepted for {schema}"
    elif valid:
        # only literals near a bound's float rounding may be refused
        near = [b for b in (lo, hi) if b is not None and abs(Decimal(text) - b) < Decimal("1e-9")]
        assert near, f"{text} rejected for {schema}"


@SETTINGS
@given(st.integers(0, 6), st.integers(0, 6), st.text(max_size=10))
def test_string_length_counts_code_points(lo, extra, text):
    hi = lo + extra
    r = re.compile(json_schema_to_regex({"type": "string", "minLength": lo, "maxLength": hi}))
    encoded = json.dumps(text, ensure_ascii=False)
    expressible = not re.search("[\\x00-\\x07\\x0b\\x0e-\\x1f]", text)  # need \\u00XX
    assert (r.fullmatch(encoded) is not None) == (lo <= len(text) <= hi and expressible)
    ascii_encoded = json.dumps(text)  # \\uXXXX escapes: not generated for bounded strings
    if r.fullmatch(ascii_encoded):
        assert lo <= len(text) <= hi


# ECMA-262 patterns on which Python's re.search agrees with ECMA (ASCII classes spelled out)
PATTERNS = ["^[a-c]+$", "b{2}", "^a|c$", "^(ab|c)*$", "[^a]b", "^\\.x?$", "^[a-c]{1,3}\\d$", "a.c",
            '"', "\\\\", "^(?:a|b)c?$", "\\s", "^$"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pattern_search_semantics(pattern):
    r = re.compile(json_schema_to_regex({"type": "string", "pattern": pattern}))
    ecma = re.compile(pattern.replace("\\d", "[0-9]").replace("\\s", "[\\t\\n\\v\\f\\r \\xa0\\u1680"
                                                                    "\\u2000-\\u200a\\u2028\\u2029\\u202f"
                                                                    "\\u205f\\u3000\\ufeff]"))

    @SETTINGS
    @given(st.text(alphabet='abc.x1 "\\\n\t', max_size=8))
    def check(text):
        want = ecma.search(text) is not None if "$" not in pattern else re.search(
            pattern.replace("$", "\\Z"), text) is not None
        assert (r.fullmatch(json.dumps(text, ensure_ascii=False)) is not None) == want, text

    check()


def test_number_bounds_exact_at_the_bound():
    lo, hi = Fraction(1, 10), Fraction(3, 1)
    r = re.compile(number_range(lo, False, hi, True, integer_only=False))
    assert r.fullmatch("0.1") and r.fullmatch("2.9999") and r.fullmatch("1")
    assert not r.fullmatch("3") and not r.fullmatch("3.0") and not r.fullmatch("0.09")


@SETTINGS
@given(st.lists(st.text(alphabet='ab"\\é/\n', max_size=16), min_size=1, max_size=5),
       st.text(alphabet='ab"\\é/\nc', max_size=18))
def test_undeclared_keys_never_spell_a_declared_name(names, key):
    schema = {"type": "object", "properties": {n: {"type": "null"} for n in names},
              "additionalProperties": {"type": "boolean"}}
    r = re.compile(json_schema_to_regex(schema))
    text = json.dumps({key: True}, separators=(",", ":"), ensure_ascii=False)
    assert (r.fullmatch(text) is not None) == (key not in names)


@pytest.mark.parametrize("ws", ["[ ]?", "\\n[ ]{0,4}|[ ]{0,2}"], ids=["space", "newline-indent"])
def test_documents_with_whitespace_validate(ws):
    schema = dict(SOUNDNESS)["nested"]
    regex = json_schema_to_regex(schema, whitespace_pattern=ws)

    @SETTINGS
    @given(st.from_regex(regex, fullmatch=True))
    def check(text):
        assert validate(schema, json.loads(text)), text

    check()
