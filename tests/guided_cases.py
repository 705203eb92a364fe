"""Constraints and output checks shared by the V0 and V1 integration suites (the oracles are
``re``, ``jsonschema`` and ``lark``)."""

from __future__ import annotations

import json
import re

import jsonschema
import lark

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"

REGEX = r"[a-z]{3,8}@(foo|bar)\.(com|org)"
CHOICES = ["red", "green", "blue"]
SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "color": {"enum": CHOICES},
        "n": {"type": "integer", "minimum": 0, "maximum": 999},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["ok", "color", "n", "tags"],
    "additionalProperties": False,
}
# Recursive without a depth bound and open to undeclared properties (written as rules, not one
# regex); small leaves so that a random model often ends it within the token budget.
TREE_SCHEMA = {
    "$defs": {"node": {"type": "object", "properties": {
        "v": {"enum": [1, 2, 3]},
        "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
    }, "required": ["v"]}},
    "$ref": "#/$defs/node",
}
WHITESPACE = "[ ]?"
# Context-free (a parser stack, a contextual lexer, an ignored terminal) but finite, so that a
# random model ends it within the token budget.
GRAMMAR = r"""
?start: call
call: NAME "(" [arg ("," arg)~0..2] ")"
?arg: NAME | NUMBER | pair
pair: "[" NUMBER "," NUMBER "]"
NAME: /[a-z]{1,6}/
NUMBER: /[0-9]{1,3}/
%ignore " "
"""
# Valid (passes the early check), but its DFA has 2**18 states: past the compiler's size budget,
# found only while compiling.
RUNAWAY_REGEX = "(a|b)*a(a|b){17}"


def check_regex(pattern):
    return lambda text: re.fullmatch(pattern, text) is not None


def check_choice(text):
    return text in CHOICES


def check_schema(text, whitespace=None):
    value = json.loads(text)
    jsonschema.validate(value, SCHEMA)
    if whitespace is None:
        return text == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    # Outside strings only spaces, as "[ ]?" allows; a pattern slot on each side of a token, so
    # at most two in a row (e.g. "[  ]").
    outside = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    return re.fullmatch(r"[^\s]*(?: {1,2}[^\s]+)*", outside) is not None


def check_tree_reply(reply):
    """Every finished output validates; a random model may run out of tokens inside the document."""
    assert reply.status == 200, reply.error
    for i, text in reply.texts.items():
        if reply.finish[i] == "stop":
            jsonschema.validate(json.loads(text), TREE_SCHEMA)
        else:
            assert reply.finish[i] == "length" and text.startswith('{"v":'), (i, text)


def check_grammar(text):
    lark.Lark(GRAMMAR, parser="lalr").parse(text)  # raises on text the grammar does not accept
    return True


# Structural tag (structures + triggers form): one tool whose argument is a digit.
STRUCTURAL_TAG = {"type": "structural_tag", "triggers": ["<function="],
                  "structures": [{"begin": "<function=lookup>", "schema": {"type": "integer", "minimum": 0, "maximum": 9},
                                  "end": "</function>"}]}
# Triggers sharing a first character: valid for xgrammar (which vLLM 0.32 validates with first),
# refused by ours.
STRUCTURAL_TAG_UNSUPPORTED = {**STRUCTURAL_TAG, "triggers": ["<function=", "<tool="],
                              "structures": STRUCTURAL_TAG["structures"]
                              + [{"begin": "<tool=x>", "schema": {"type": "integer"}, "end": "."}]}
_TAG_WHOLE = [f"<function=lookup>{d}</function>" for d in range(10)]


def trigger_bias(tokenizer, bias: int = 12) -> dict:
    """``logit_bias`` towards the trigger's tokens, so that the random model writes triggers (the
    constraint decides what follows one)."""
    return {str(t): bias for t in tokenizer.encode("<function=", add_special_tokens=False)}


def check_structural_tag(text: str, finish: str | None) -> tuple[bool, int]:
    """(every trigger in ``text`` starts a whole structure — the last may be cut by the token
    limit —, how many whole structures)."""
    pos = n = 0
    while (i := text.find("<function=", pos)) >= 0:
        whole = next((f for f in _TAG_WHOLE if text.startswith(f, i)), None)
        if whole is None:
            return finish == "length" and any(f.startswith(text[i:]) for f in _TAG_WHOLE), n
        pos, n = i + len(whole), n + 1
    return True, n
