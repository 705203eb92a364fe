"""Context-free grammar benchmark: compile time and per-token mask+commit, engines side by side.

Five grammars (JSON, arithmetic, a SQL subset, a small C-like language, function-call syntax),
written once in Lark syntax (LALR(1), ``%ignore WS``) for ours and llguidance, and translated by
hand to xgrammar's EBNF (which has no lexer, so whitespace is explicit; see ``GRAMMARS`` and the
notes printed with the results). Sentences: a seeded random generator over each grammar's BNF (as
lark's loader expands it) plus a few hand-written realistic ones; every sentence must parse with
``lark.Lark(text, parser="lalr")`` and round-trip through the tokenizer.

For every (engine, grammar) a fresh worker process (multiprocessing *spawn*) builds the engine's
tokenizer tables (untimed: ours ``Vocabulary.from_hf_tokenizer``, xgrammar ``TokenizerInfo``,
llguidance ``llguidance.hf.from_tokenizer``), then

1. *cold compile*: the first compile in that process, timed (wall + process CPU time), so it
   includes per-vocabulary tables an engine builds lazily on first use;
2. *pass 1*: replays every sentence token by token on that freshly compiled grammar (a fresh
   matcher per sentence): mask = ``fill_next_token_bitmask`` (or llguidance's
   ``unsafe_compute_mask_ptr``), commit = ``accept_token`` / ``consume_token``. Correctness is
   checked in the same pass: every token must be in the mask and accepted, and the matcher complete
   at the end (with EOS in the final mask). Masks computed on first visit are included;
3. *pass 2*: the same replay again on the same compiled grammar (masks cached where the engine
   caches them) — reported as *warm*;
4. *warm compile*: three more compiles of the same grammar in the same process (result caches off:
   ours calls the compiler directly, xgrammar ``cache_enabled=False``), median reported.

Usage::

    python -m benchmarks.bench_grammar                       # all engines and grammars, Tekken 131k
    python -m benchmarks.bench_grammar --engines ours,xgrammar --only json,sql --sentences 10

Prints a table and writes ``benchmarks/results/grammar.json`` (+ ``grammar.md``) and
``docs/grammar_bench.png``. ``--check`` only generates the sentences and checks the grammars with
lark (no engine is run).
"""

from __future__ import annotations

import argparse
import functools
import gc
import multiprocessing as mp
import random
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benchmarks import _common
from benchmarks._common import fmt_ms, fmt_us, format_table, log, markdown_table, percentiles

ENGINES = ("ours", "xgrammar", "llguidance")

# ------------------------------------------------------------------------------------------------
# Grammars. ``lark`` is given to ours and to llguidance (its Lark dialect) unchanged; ``xgrammar``
# is the same language in xgrammar's EBNF: ``ws`` (optional whitespace) wherever lark's
# ``%ignore WS`` allows whitespace, ``rws`` (required) between two word-like tokens, where a lexer
# needs whitespace to separate them. Terminals are written without lazy quantifiers or lookbehinds
# and with the same character sets in both dialects.

_WS = r"""
WS: /[ \t\n\r]+/
%ignore WS
"""

JSON_LARK = r"""
start: value
value: object | array | STRING | NUMBER | "true" | "false" | "null"
object: "{" [pair ("," pair)*] "}"
pair: STRING ":" value
array: "[" [value ("," value)*] "]"
STRING: /"(?:[^"\\\x00-\x1f]|\\["\\\/bfnrt]|\\u[0-9a-fA-F]{4})*"/
NUMBER: /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/
""" + _WS

JSON_EBNF = r"""
root ::= ws value ws
value ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ws ( pair ( ws "," ws pair )* ws )? "}"
pair ::= string ws ":" ws value
array ::= "[" ws ( value ( ws "," ws value )* ws )? "]"
string ::= "\"" char* "\""
char ::= [^"\\\x00-\x1f] | "\\" ( ["\\/bfnrt] | "u" hex hex hex hex )
hex ::= [0-9a-fA-F]
number ::= "-"? ( "0" | [1-9] [0-9]* ) ( "." [0-9]+ )? ( [eE] [+-]? [0-9]+ )?
ws ::= [ \t\n\r]*
"""

ARITH_LARK = r"""
start: expr
expr: expr "+" term | expr "-" term | term
term: term "*" factor | term "/" factor | term "%" factor | factor
factor: "-" factor | "+" factor | power
power: atom "^" factor | atom
atom: NUMBER | NAME | NAME "(" [expr ("," expr)*] ")" | "(" expr ")"
NUMBER: /[0-9]+(?:\.[0-9]+)?/
NAME: /[a-zA-Z_][a-zA-Z0-9_]*/
""" + _WS

ARITH_EBNF = r"""
root ::= ws expr ws
expr ::= term ( ws [+\-] ws term )*
term ::= factor ( ws [*/%] ws factor )*
factor ::= [+\-] ws factor | power
power ::= atom ( ws "^" ws factor )?
atom ::= number | name | name ws "(" ws ( expr ( ws "," ws expr )* ws )? ")" | "(" ws expr ws ")"
number ::= [0-9]+ ( "." [0-9]+ )?
name ::= [a-zA-Z_] [a-zA-Z0-9_]*
ws ::= [ \t\n\r]*
"""

SQL_LARK = r"""
start: select_stmt [";"]
select_stmt: "SELECT"i select_list "FROM"i NAME [where_clause] [order_clause] [limit_clause]
select_list: "*" | column ("," column)*
column: NAME | NAME "." NAME
where_clause: "WHERE"i condition (logic_op condition)*
logic_op: "AND"i | "OR"i
condition: column comp_op value
comp_op: "=" | "!=" | "<>" | "<" | ">" | "<=" | ">="
value: NUMBER | STRING | column
order_clause: "ORDER"i "BY"i column [direction]
direction: "ASC"i | "DESC"i
limit_clause: "LIMIT"i INT
NAME: /[a-zA-Z_][a-zA-Z0-9_]*/
NUMBER: /-?[0-9]+(?:\.[0-9]+)?/
INT: /[0-9]+/
STRING: /'(?:[^'\\\n]|\\[^\n])*'/
""" + _WS

SQL_EBNF = r"""
root ::= ws select_stmt ( ws ";" )? ws
select_stmt ::= kw_select ws select_list ws kw_from rws name ( ws where_clause )? ( ws order_clause )? ( ws limit_clause )?
select_list ::= "*" | column ( ws "," ws column )*
column ::= name | name ws "." ws name
where_clause ::= kw_where rws condition ( ws logic_op ws condition )*
logic_op ::= kw_and | kw_or
condition ::= column ws comp_op ws value
comp_op ::= "=" | "!=" | "<>" | "<" | ">" | "<=" | ">="
value ::= number | string | column
order_clause ::= kw_order rws kw_by rws column ( ws direction )?
direction ::= kw_asc | kw_desc
limit_clause ::= kw_limit rws int
name ::= [a-zA-Z_] [a-zA-Z0-9_]*
number ::= "-"? [0-9]+ ( "." [0-9]+ )?
int ::= [0-9]+
string ::= "'" ( [^'\\\n] | "\\" [^\n] )* "'"
kw_select ::= [sS] [eE] [lL] [eE] [cC] [tT]
kw_from ::= [fF] [rR] [oO] [mM]
kw_where ::= [wW] [hH] [eE] [rR] [eE]
kw_and ::= [aA] [nN] [dD]
kw_or ::= [oO] [rR]
kw_order ::= [oO] [rR] [dD] [eE] [rR]
kw_by ::= [bB] [yY]
kw_asc ::= [aA] [sS] [cC]
kw_desc ::= [dD] [eE] [sS] [cC]
kw_limit ::= [lL] [iI] [mM] [iI] [tT]
ws ::= [ \t\n\r]*
rws ::= [ \t\n\r]+
"""

C_LARK = r"""
start: function+
function: type NAME "(" [params] ")" block
params: param ("," param)*
param: type NAME
type: "int" | "float" | "void"
block: "{" statement* "}"
statement: declaration
         | NAME "=" expr ";"
         | if_stmt
         | "while" "(" expr ")" block
         | "return" [expr] ";"
         | expr ";"
         | block
declaration: type NAME ["=" expr] ";"
if_stmt: "if" "(" expr ")" block ["else" else_part]
else_part: block | if_stmt
expr: or_expr
or_expr: or_expr "||" and_expr | and_expr
and_expr: and_expr "&&" eq_expr | eq_expr
eq_expr: eq_expr eq_op rel_expr | rel_expr
eq_op: "==" | "!="
rel_expr: rel_expr rel_op add_expr | add_expr
rel_op: "<" | ">" | "<=" | ">="
add_expr: add_expr add_op mul_expr | mul_expr
add_op: "+" | "-"
mul_expr: mul_expr mul_op unary | unary
mul_op: "*" | "/" | "%"
unary: "-" unary | "!" unary | primary
primary: NUMBER | NAME | NAME "(" [args] ")" | "(" expr ")"
args: expr ("," expr)*
NUMBER: /[0-9]+(?:\.[0-9]+)?/
NAME: /[a-zA-Z_][a-zA-Z0-9_]*/
COMMENT: /\/\/[^\n]*/
%ignore COMMENT
""" + _WS

C_EBNF = r"""
root ::= ws function ( ws function )* ws
function ::= type rws name ws "(" ws ( params ws )? ")" ws block
params ::= param ( ws "," ws param )*
param ::= type rws name
type ::= "int" | "float" | "void"
block ::= "{" ( ws statement )* ws "}"
statement ::= declaration | name ws "=" ws expr ws ";" | if_stmt | "while" ws "(" ws expr ws ")" ws block | "return" ( ws expr )? ws ";" | expr ws ";" | block
declaration ::= type rws name ( ws "=" ws expr )? ws ";"
if_stmt ::= "if" ws "(" ws expr ws ")" ws block ( ws "else" ( ws block | rws if_stmt ) )?
expr ::= and_expr ( ws "||" ws and_expr )*
and_expr ::= eq_expr ( ws "&&" ws eq_expr )*
eq_expr ::= rel_expr ( ws ( "==" | "!=" ) ws rel_expr )*
rel_expr ::= add_expr ( ws ( "<" | ">" | "<=" | ">=" ) ws add_expr )*
add_expr ::= mul_expr ( ws [+\-] ws mul_expr )*
mul_expr ::= unary ( ws [*/%] ws unary )*
unary ::= [\-!] ws unary | primary
primary ::= number | name | name ws "(" ws ( args ws )? ")" | "(" ws expr ws ")"
args ::= expr ( ws "," ws expr )*
number ::= [0-9]+ ( "." [0-9]+ )?
name ::= [a-zA-Z_] [a-zA-Z0-9_]*
ws ::= ( [ \t\n\r] | "//" [^\n]* "\n" )*
rws ::= ( [ \t\n\r] | "//" [^\n]* "\n" )+
"""

CALL_LARK = r"""
start: call | "[" call ("," call)* "]"
call: NAME "(" [arguments] ")"
arguments: argument ("," argument)*
argument: NAME "=" value | value
value: STRING | NUMBER | "True" | "False" | "None" | list | dict | call | NAME
list: "[" [value ("," value)*] "]"
dict: "{" [pair ("," pair)*] "}"
pair: STRING ":" value
STRING: /"(?:[^"\\\n]|\\[^\n])*"|'(?:[^'\\\n]|\\[^\n])*'/
NUMBER: /-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/
NAME: /[a-zA-Z_][a-zA-Z0-9_]*/
""" + _WS

CALL_EBNF = r"""
root ::= ws ( call | "[" ws call ( ws "," ws call )* ws "]" ) ws
call ::= name ws "(" ws ( arguments ws )? ")"
arguments ::= argument ( ws "," ws argument )*
argument ::= name ws "=" ws value | value
value ::= string | number | "True" | "False" | "None" | list | dict | call | name
list ::= "[" ws ( value ( ws "," ws value )* ws )? "]"
dict ::= "{" ws ( pair ( ws "," ws pair )* ws )? "}"
pair ::= string ws ":" ws value
string ::= "\"" ( [^"\\\n] | "\\" [^\n] )* "\"" | "'" ( [^'\\\n] | "\\" [^\n] )* "'"
number ::= "-"? [0-9]+ ( "." [0-9]+ )? ( [eE] [+\-]? [0-9]+ )?
name ::= [a-zA-Z_] [a-zA-Z0-9_]*
ws ::= [ \t\n\r]*
"""

# Random terminal values (seeded); names avoid the grammars' keywords.
_WORDS = ["x", "y", "n", "i", "total", "count", "user_id", "price", "name", "items", "data", "result",
          "max_len", "tmp", "value2", "customers", "orders", "status", "city", "age", "alpha", "beta", "_k"]
_TEXT = ["", "a", "hello", "Hello, world!", "caf\u00e9", "\u00fcber", "\u65e5\u672c\u8a9e", "tab\\tsep",
         "quote \\\" inside", "line\\nbreak", "emoji \U0001F600", "path/to/file", "100%", "x = y + 1",
         "\\u00e9t\\u00e9", "Paris", "New York", "2024-01-15", "  spaced  ", "a,b;c"]


def _number(rng: random.Random, *, sign=False, frac=True, exp=False) -> str:
    s = rng.choice(["0", str(rng.randint(1, 9)), str(rng.randint(10, 999)), str(rng.randint(1000, 10**7))])
    if frac and rng.random() < 0.3:
        s += "." + str(rng.randint(0, 999))
    if exp and rng.random() < 0.1:
        s += rng.choice("eE") + rng.choice(["", "+", "-"]) + str(rng.randint(0, 30))
    if sign and rng.random() < 0.2:
        s = "-" + s
    return s


def _dq_string(rng: random.Random) -> str:
    return '"' + rng.choice(_TEXT) + '"'


def _sq_string(rng: random.Random) -> str:
    return "'" + rng.choice(_TEXT).replace("'", "\\'").replace('\\"', '"') + "'"


def _json_string(rng):
    return '"' + rng.choice(_TEXT + ["x\\/y", "\\r\\n"]) + '"'


def _name(rng):
    return rng.choice(_WORDS)


GRAMMARS = {
    "json": {
        "lark": JSON_LARK, "xgrammar": JSON_EBNF,
        "terminals": {"STRING": _json_string, "NUMBER": lambda r: _number(r, sign=True, exp=True)},
        "hand": [
            '{"name": "Alice", "age": 30, "tags": ["admin", "dev"], "address": {"city": "Paris", "zip": "75001"}}',
            '[{"id": 1, "ok": true}, {"id": 2, "ok": false, "note": null}]',
            '{\n  "model": "mistral",\n  "temperature": 0.7,\n  "max_tokens": 1024,\n  "stop": ["\\n\\n", "</s>"]\n}',
            '{"matrix": [[1, 2, 3], [4, 5, 6]], "scale": -1.5e-3, "unicode": "caf\u00e9 \\u00e9"}',
            '{"a": {"b": {"c": {"d": [1, [2, [3, [4]]]]}}}}',
        ],
    },
    "arithmetic": {
        "lark": ARITH_LARK, "xgrammar": ARITH_EBNF,
        "terminals": {"NUMBER": _number, "NAME": _name},
        "hand": [
            "(1 + 2) * 3 - 4 / 5",
            "-x^2 + 3*x - 7.25",
            "sqrt(a*a + b*b) / (2 * pi)",
            "max(1, min(2, 3), abs(-4)) % 7",
            "((((1))))+((2*(3+4))-5)^2",
        ],
    },
    "sql": {
        "lark": SQL_LARK, "xgrammar": SQL_EBNF,
        "terminals": {"NAME": _name, "NUMBER": lambda r: _number(r, sign=True), "INT": lambda r: str(r.randint(1, 1000)),
                      "STRING": _sq_string},
        "case_insensitive": True,
        "hand": [
            "SELECT id, name, email FROM users WHERE age >= 18 AND status = 'active' ORDER BY name ASC LIMIT 50;",
            "select * from orders where total > 100.5 or customer_id = 42 order by created_at desc",
            "SELECT u.name, o.total FROM orders WHERE o.total <> 0 LIMIT 10",
            "Select city From customers Where country = 'France'",
            "SELECT * FROM logs;",
        ],
    },
    "c_like": {
        "lark": C_LARK, "xgrammar": C_EBNF,
        "terminals": {"NUMBER": _number, "NAME": _name, "COMMENT": lambda r: "// " + r.choice(["todo", "x", "loop"])},
        "hand": [
            "int add(int a, int b) {\n    return a + b;\n}",
            "int fib(int n) {\n    if (n < 2) {\n        return n;\n    }\n    return fib(n - 1) + fib(n - 2);\n}",
            "float mean(float a, float b, float c) {\n    float s = a + b + c;\n    return s / 3.0;\n}\n\n"
            "void main() {\n    int i = 0;\n    while (i < 10) {\n        i = i + 1;\n    }\n}",
            "int sign(int x) {\n    // classify x\n    if (x > 0) { return 1; } else if (x == 0) { return 0; } else { return -1; }\n}",
            "int gcd(int a, int b) {\n    while (b != 0) {\n        int t = b;\n        b = a % b;\n        a = t;\n    }\n"
            "    return a;\n}\nint main() {\n    return gcd(48, 18) == 6 && !0;\n}",
        ],
    },
    "function_call": {
        "lark": CALL_LARK, "xgrammar": CALL_EBNF,
        "terminals": {"STRING": lambda r: (_dq_string if r.random() < 0.7 else _sq_string)(r),
                      "NUMBER": lambda r: _number(r, sign=True, exp=True), "NAME": _name},
        "hand": [
            'get_weather(city="Paris", unit="celsius")',
            '[search(query="vLLM structured output", max_results=5), open_url(url="https://example.com/a?b=1")]',
            "create_event(title='Standup', attendees=['ana', 'bo'], duration=15, recurring=True, meta={\"room\": 4})",
            'plot(xs=[1, 2, 3.5, -4e2], ys=[0.1, 0.2, 0.3], style={"color": "red", "width": 2}, legend=None)',
            'outer(inner(deep(x, [y, [z]]), k=v), flag=False)',
        ],
    },
}

DIFFERENCES = [
    "ours and llguidance get the same Lark text (LALR(1); `%ignore WS` with WS = `/[ \\t\\n\\r]+/`, C-like "
    "also `%ignore COMMENT` = `//…`); llguidance reads it with its own Lark dialect (Earley parser over a lazy lexer).",
    "xgrammar gets a hand translation to its EBNF. It has no lexer: optional whitespace `ws` is written out wherever "
    "`%ignore` allows it (and at the start and end), required whitespace `rws` between two word-like tokens "
    "(keyword/name/number) that a lexer would otherwise merge. Left recursion became iteration. Where lark's "
    "lexer decides between a keyword and a name (or `/` and a comment), xgrammar's grammar is ambiguous instead.",
    "xgrammar's languages are slight supersets where optional `ws` separates a name or number from a following "
    "keyword (SQL `t WHERE`, `a FROM`; C-like `return x`): without a lexer `tWHERE` also parses there. A `//` "
    "comment must end with a newline in xgrammar's C-like grammar (lark also accepts one at the end of input).",
    "SQL keywords are case-insensitive: `\"select\"i` in Lark, `[sS] [eE] …` in xgrammar.",
    "Sentences put whitespace between two word-like tokens (so the three languages agree on them) and random "
    "whitespace (none, space, newline; C-like: sometimes a `//` comment) elsewhere.",
    "Each engine's own compile call: ours `GrammarCompiler(vocab, cache_size=0).compile_grammar(lark)`; xgrammar "
    "`GrammarCompiler(info, max_threads=1, cache_enabled=False).compile_grammar(ebnf)`; llguidance "
    "`LLMatcher(tokenizer, LLMatcher.grammar_from_lark(lark))` (lazy: most of its work happens in the first masks).",
]


# ------------------------------------------------------------------------------------------------
# Sentences


def _lark(text: str):
    import lark

    return lark.Lark(text, parser="lalr")


class SentenceGenerator:
    """Random derivations of a Lark grammar (BNF after lark's loader), depth-bounded, seeded."""

    def __init__(self, name: str, spec: dict, seed: int):
        self.name = name
        self.spec = spec
        self.parser = _lark(spec["lark"])
        self.rng = random.Random(f"{seed}-{name}")
        self.rules: dict[str, list[list]] = {}
        for r in self.parser.rules:
            self.rules.setdefault(r.origin.name, []).append(list(r.expansion))
        self.terms = {t.name: t for t in self.parser.terminals}
        # Minimal derivation height per nonterminal (fixed point), to close derivations past the depth bound.
        inf = 10**9
        self.height = {n: inf for n in self.rules}
        changed = True
        while changed:
            changed = False
            for n, alts in self.rules.items():
                for alt in alts:
                    h = 1 + max((self.height[s.name] if not s.is_term else 0 for s in alt), default=0)
                    if h < self.height[n]:
                        self.height[n], changed = h, True

    def _alt_height(self, alt) -> int:
        return max((self.height[s.name] if not s.is_term else 0 for s in alt), default=0)

    def _terminal(self, name: str) -> str:
        t = self.terms[name]
        if t.pattern.type == "str":
            v = t.pattern.value
            if "i" in t.pattern.flags:
                r = self.rng.random()
                v = v.upper() if r < 0.6 else v.lower() if r < 0.9 else "".join(
                    c.upper() if self.rng.random() < 0.5 else c.lower() for c in v)
            return v
        return self.spec["terminals"][name](self.rng)

    def derive(self, max_depth: int) -> list[str]:
        out: list[str] = []
        todo = [("start", 0)]
        while todo:
            sym, depth = todo.pop()
            if sym in self.rules:
                alts = self.rules[sym]
                if depth >= max_depth:
                    best = min(self._alt_height(a) for a in alts)
                    alts = [a for a in alts if self._alt_height(a) == best]
                alt = self.rng.choice(alts)
                for s in reversed(alt):
                    todo.append((s.name, depth + 1))
            else:
                out.append(self._terminal(sym))
        return out

    def join(self, tokens: list[str]) -> str:
        parts = []
        for i, tok in enumerate(tokens):
            if i:
                prev = parts[-1]
                word = re.match(r"\w", tok[0]) and re.match(r"\w", prev[-1])
                seps = [" ", " ", " ", " ", "\n", "  "] if word else ["", "", "", " ", " ", " ", "\n"]
                sep = self.rng.choice(seps)
                if "COMMENT" in self.spec["terminals"] and self.rng.random() < 0.03:
                    sep = " " + self.spec["terminals"]["COMMENT"](self.rng) + "\n"
                parts.append(sep)
            parts.append(tok)
        return "".join(parts)

    def sentences(self, n: int, *, max_chars: int = 600, min_tokens: int = 5) -> list[str]:
        out, seen, tries = [], set(), 0
        while len(out) < n and tries < 50 * n:
            tries += 1
            toks = self.derive(self.rng.choice([5, 7, 9, 12, 15]))
            if len(toks) < min_tokens:
                continue
            text = self.join(toks)
            if len(text) > max_chars or text in seen:
                continue
            try:
                self.parser.parse(text)
            except Exception:  # noqa: BLE001 - lark rejected it (e.g. a lexing collision): skip
                continue
            seen.add(text)
            out.append(text)
        return out


def prepare_cases(tokenizer: str, only: list[str], n_random: int, seed: int) -> list[dict]:
    cases = []
    for name, spec in GRAMMARS.items():
        if only and not any(o in name for o in only):
            continue
        gen = SentenceGenerator(name, spec, seed)
        for s in spec["hand"]:
            gen.parser.parse(s)  # hand-written sentences must be valid
        texts = [("hand", s) for s in spec["hand"]] + [("random", s) for s in gen.sentences(n_random)]
        instances = []
        for origin, text in texts:
            ids = _common.encode(tokenizer, text)
            if _common.token_text(tokenizer, ids) != text.encode("utf-8"):
                raise SystemExit(f"{name}: tokenization of {text!r} does not round-trip")
            instances.append({"text": text, "ids": ids, "origin": origin})
        cases.append({"name": name, "lark": spec["lark"], "xgrammar": spec["xgrammar"], "instances": instances})
    return cases


# ------------------------------------------------------------------------------------------------
# Engines (built from the shared adapters of _engines.py; the grammar compile is per engine here)


def _make(engine_name: str, tokenizer: str):
    from benchmarks import _engines

    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    engine = _engines._CLASSES[engine_name](tokenizer)
    if engine_name == "xgrammar" and not hasattr(engine.xgr.GrammarMatcher, "is_completed"):
        engine.ops = functools.partial(_xgrammar_01_ops, engine)
    return engine


def _xgrammar_01_ops(engine, handle, bitmask):
    """xgrammar 0.1.x: the bitmask must be a torch tensor (a zero-copy view of the numpy row here),
    and there is no ``is_completed``: complete = the stop token is in the next mask (checked on a
    separate bitmask, untimed, only at the end of a sentence)."""
    import torch

    m = engine.xgr.GrammarMatcher(handle)
    own = torch.zeros(bitmask.shape, dtype=torch.int32)

    def complete():
        own.zero_()
        m.fill_next_token_bitmask(own)
        return bool((int(own[0, engine.eos >> 5]) >> (engine.eos & 31)) & 1)

    return functools.partial(m.fill_next_token_bitmask, torch.from_numpy(bitmask)), m.accept_token, complete


def _compile(engine, spec: dict):
    """The engine's grammar compile call. Returns (handle, description of the call)."""
    if engine.name == "ours":
        if hasattr(engine.compiler, "compile_grammar"):
            return engine.compiler.compile_grammar(spec["lark"]), "GrammarCompiler(cache_size=0).compile_grammar"
        from dotvllm_plugin.grammar.lark import lark_to_ir
        from dotvllm_plugin.pushdown import compile_pushdown

        return compile_pushdown(lark_to_ir(spec["lark"]), engine.vocab), "compile_pushdown(lark_to_ir(text), vocab)"
    if engine.name == "xgrammar":
        return engine.compiler.compile_grammar(spec["xgrammar"]), "GrammarCompiler(cache_enabled=False).compile_grammar(ebnf)"
    if engine.name == "llguidance":
        M = engine.llg.LLMatcher
        m = M(engine.lltok, M.grammar_from_lark(spec["lark"]), log_level=0)
        if m.is_error():
            raise ValueError(m.get_error())
        return m, "LLMatcher(tokenizer, LLMatcher.grammar_from_lark(text))"
    raise ValueError(engine.name)


def _classify(engine, e: BaseException) -> str:
    if engine.name == "ours":
        from dotvllm_plugin import errors

        if isinstance(e, errors.UnsupportedFeatureError):
            return "refused"
        if isinstance(e, errors.GrammarError):
            return "grammar_error"
        if isinstance(e, errors.DotvllmError):
            return "compile_error"
        return "crash_exception"
    return "compile_error"


def _timed_compile(engine, spec):
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    handle, call = _compile(engine, spec)
    return handle, call, (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3


def _pass(engine, handle, instances, bitmask) -> tuple[list, np.ndarray, np.ndarray]:
    from benchmarks._engines import _walk

    results, masks, commits = [], [], []
    for inst in instances:
        m0 = len(masks)
        res = _walk(engine, handle, inst["ids"], bitmask, masks, commits)
        res["timed_tokens"] = len(masks) - m0
        results.append(res)
    return results, np.asarray(masks, dtype=np.int64), np.asarray(commits, dtype=np.int64)


def _worker(conn, engine_name: str, tokenizer: str, case: dict, warm_compiles: int) -> None:
    out: dict = {}
    try:
        t0 = time.perf_counter()
        engine = _make(engine_name, tokenizer)
        out["init_s"] = time.perf_counter() - t0
        out["describe"] = engine.describe()
        try:
            handle, call, wall, cpu = _timed_compile(engine, case)
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            out.update(status=_classify(engine, e), error=f"{type(e).__name__}: {e}"[:3000],
                       traceback=traceback.format_exc()[-3000:])
            conn.send(out)
            return
        out.update(status="ok", compile_call=call, compile_ms=wall, compile_cpu_ms=cpu)
        for attr in ("memory_bytes", "memory_size_bytes"):
            if hasattr(handle, attr):
                out["index_bytes"] = int(getattr(handle, attr))
        if engine.name == "llguidance":
            try:
                out["grammar_warnings"] = handle.get_grammar_warnings()
            except Exception:  # noqa: BLE001
                pass
        bitmask = np.zeros((1, engine.words), dtype=np.int32)
        res1, m1, c1 = _pass(engine, handle, case["instances"], bitmask)
        out["instances"] = res1
        out["mask_ns"], out["commit_ns"] = m1, c1
        out["first_mask_ns"] = int(m1[0]) if m1.size else None
        res2, m2, c2 = _pass(engine, handle, case["instances"], bitmask)
        out["warm_mask_ns"], out["warm_commit_ns"] = m2, c2
        out["warm_pass_consistent"] = [r["accepted"] for r in res1] == [r["accepted"] for r in res2]
        walls, cpus = [], []
        for _ in range(warm_compiles):
            _, _, wall, cpu = _timed_compile(engine, case)
            walls.append(wall)
            cpus.append(cpu)
        out["warm_compile_ms"], out["warm_compile_cpu_ms"] = walls, cpus
        conn.send(out)
    except BaseException as e:  # noqa: BLE001
        out.update(status="harness_error", error=f"{type(e).__name__}: {e}\n{traceback.format_exc()}"[-4000:])
        conn.send(out)


def run_isolated(engine_name: str, tokenizer: str, case: dict, *, timeout_s: float, warm_compiles: int) -> dict:
    """One (engine, grammar) in a fresh spawned process; killed past ``timeout_s``."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker, args=(child, engine_name, tokenizer, case, warm_compiles), daemon=True,
                       name=f"bench-grammar-{engine_name}")
    proc.start()
    child.close()
    try:
        if parent.poll(timeout_s):
            try:
                return parent.recv()
            except EOFError:
                proc.join(5)
                return {"status": "crash", "error": f"worker died (exit code {proc.exitcode})"}
        return {"status": "timeout", "error": f"compile + walks exceeded {timeout_s:g} s"}
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        parent.close()


# ------------------------------------------------------------------------------------------------
# Summaries and output


def summarise(r: dict, case: dict, tokenizer: str = "tekken") -> dict:
    s = {k: r.get(k) for k in ("status", "error", "compile_call", "compile_ms", "compile_cpu_ms", "index_bytes",
                               "first_mask_ns", "init_s")}
    s["sentences"] = len(case["instances"])
    if r.get("status") != "ok":
        return s
    inst = r["instances"]
    s["accepted"] = sum(i["accepted"] for i in inst)
    s["failures"] = [{"index": k, "origin": case["instances"][k]["origin"], "text": case["instances"][k]["text"],
                      "token_index": i["rejected_at"],
                      "token": (None if i["rejected_at"] is None else case["instances"][k]["ids"][i["rejected_at"]]),
                      "token_text": (None if i["rejected_at"] is None else _common.token_text(
                          tokenizer, [case["instances"][k]["ids"][i["rejected_at"]]]).decode("utf-8", "replace")),
                      "prefix": (None if i["rejected_at"] is None else _common.token_text(
                          tokenizer, case["instances"][k]["ids"][: i["rejected_at"]]).decode("utf-8", "replace")[-80:]),
                      **{k2: i[k2] for k2 in ("mismatch", "eos_not_in_mask") if k2 in i},
                      "reason": ("rejected token" if i["rejected_at"] is not None else "incomplete at end")}
                     for k, i in enumerate(inst) if not i["accepted"] or i.get("eos_not_in_mask")]
    s["tokens"] = sum(len(x["ids"]) for x in case["instances"])
    s["tokens_timed"] = int(r["mask_ns"].size)
    tot = (r["mask_ns"] + r["commit_ns"]) / 1e3
    s["mask_commit_us"] = percentiles(tot, (50, 90, 99))
    s["mask_us"] = percentiles(r["mask_ns"] / 1e3, (50, 99))
    s["commit_us"] = percentiles(r["commit_ns"] / 1e3, (50, 99))
    s["sum_mask_commit_ms"] = float(tot.sum() / 1e3)
    wtot = (r["warm_mask_ns"] + r["warm_commit_ns"]) / 1e3
    s["warm_mask_commit_us"] = percentiles(wtot, (50, 90, 99))
    s["warm_compile_ms"] = statistics.median(r["warm_compile_ms"]) if r.get("warm_compile_ms") else None
    s["warm_compile_cpu_ms"] = statistics.median(r["warm_compile_cpu_ms"]) if r.get("warm_compile_cpu_ms") else None
    s["warm_pass_consistent"] = r.get("warm_pass_consistent")
    if r.get("grammar_warnings"):
        s["grammar_warnings"] = r["grammar_warnings"]
    return s


def table(cases, summaries, engines) -> tuple[list[str], list[list[str]]]:
    headers = ["grammar", "engine", "sentences ok", "compile cold CPU", "cold wall", "warm wall",
               "1st mask", "mask+commit p50", "p99", "mean", "warm p50", "warm mean", "tokens"]
    rows = []
    for c in cases:
        for e in engines:
            s = summaries[e][c["name"]]
            if s["status"] != "ok":
                rows.append([c["name"], e, f"{s['status'].upper()}: {(s.get('error') or '')[:60]}"] + ["-"] * 10)
                continue
            mc, w = s["mask_commit_us"], s["warm_mask_commit_us"]
            ok = f"{s['accepted']}/{s['sentences']}" + ("" if s["accepted"] == s["sentences"] else " FAIL")
            rows.append([c["name"], e, ok, fmt_ms(s["compile_cpu_ms"]), fmt_ms(s["compile_ms"]),
                         fmt_ms(s["warm_compile_ms"]),
                         fmt_us(s["first_mask_ns"] / 1e3 if s["first_mask_ns"] is not None else None),
                         fmt_us(mc["p50"]), fmt_us(mc["p99"]), fmt_us(mc["mean"]), fmt_us(w["p50"]), fmt_us(w["mean"]),
                         str(s["tokens"])])
    return headers, rows


def plot(path: Path, cases, summaries, engines, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["name"] for c in cases]
    x = np.arange(len(names))
    width = 0.8 / max(1, len(engines))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for k, e in enumerate(engines):
        def val(n, key, sub=None):
            s = summaries[e][n]
            if s["status"] != "ok":
                return np.nan
            v = s[key]
            return v[sub] if sub else v

        cold = [val(n, "compile_cpu_ms") for n in names]
        axes[0].bar(x + (k - (len(engines) - 1) / 2) * width, cold, width, label=e)
        mean = [val(n, "mask_commit_us", "mean") for n in names]
        p99 = [val(n, "mask_commit_us", "p99") for n in names]
        pos = x + (k - (len(engines) - 1) / 2) * width
        axes[1].bar(pos, mean, width, label=f"{e} mean")
        axes[1].scatter(pos, p99, marker="_", s=120, color="black", zorder=3,
                        label="p99" if k == 0 else None)
    axes[0].set_ylabel("ms (log)")
    axes[0].set_title("cold compile, CPU time", fontsize=9)
    axes[1].set_ylabel("µs (log)")
    axes[1].set_title("mask+commit per token, first visits included (bar = mean, dash = p99)", fontsize=9)
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(names, fontsize=8)
        ax.set_yscale("log")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ",".join(ENGINES))
    p.add_argument("--tokenizer", default="tekken", choices=sorted(_common.VOCAB_SIZE))
    p.add_argument("--core-ref", default="", help="measure dotvllm_plugin as committed at this git ref")
    p.add_argument("--only", default="", help="comma-separated grammar names (substring match): " + ",".join(GRAMMARS))
    p.add_argument("--sentences", type=int, default=25, help="random sentences per grammar (plus 5 hand-written)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warm-compiles", type=int, default=3, help="extra compiles in the same process (median reported)")
    p.add_argument("--timeout-s", type=float, default=600.0, help="deadline per (engine, grammar) process")
    p.add_argument("--check", action="store_true", help="only check grammars and sentences with lark; run no engine")
    p.add_argument("--json", type=Path, default=_common.RESULTS_DIR / "grammar.json")
    p.add_argument("--plot", type=Path, default=_common.DOCS_DIR / "grammar_bench.png")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        raise SystemExit(f"unknown engines {sorted(unknown)}; choose from {ENGINES}")
    only = [o for o in args.only.split(",") if o]
    core = _common.use_core_snapshot(args.core_ref) if args.core_ref else {"ref": "work tree"}
    cases = prepare_cases(args.tokenizer, only, args.sentences, args.seed)
    for c in cases:
        n_tok = [len(i["ids"]) for i in c["instances"]]
        log(f"{c['name']}: {len(n_tok)} sentences ({sum(i['origin'] == 'hand' for i in c['instances'])} hand-written), "
            f"{sum(n_tok)} tokens, {min(n_tok)}–{max(n_tok)} per sentence")
    if args.check:
        for c in cases:
            for i in c["instances"][:8]:
                print(f"--- {c['name']} ({i['origin']}, {len(i['ids'])} tokens)\n{i['text']}")
        return 0
    machine = _common.machine_info()
    machine["core"] = {**core, "source": _common.core_source()}
    log(f"machine: {machine['cpu']} x{machine['cpus']}, load {machine['loadavg']}, commit {machine['git_commit']}, "
        f"engine from {machine['core']['source']}; versions {machine['versions']}")

    raw = {e: {} for e in engines}
    summaries = {e: {} for e in engines}
    for c in cases:
        for e in engines:
            r = run_isolated(e, args.tokenizer, c, timeout_s=args.timeout_s, warm_compiles=args.warm_compiles)
            raw[e][c["name"]] = r
            s = summaries[e][c["name"]] = summarise(r, c, args.tokenizer)
            if s["status"] == "ok":
                log(f"{c['name']:14s} {e:10s} compile {fmt_ms(s['compile_ms'])} wall / {fmt_ms(s['compile_cpu_ms'])} CPU "
                    f"(warm {fmt_ms(s['warm_compile_ms'])}), {s['accepted']}/{s['sentences']} sentences accepted, "
                    f"mask+commit p50 {fmt_us(s['mask_commit_us']['p50'])} p99 {fmt_us(s['mask_commit_us']['p99'])} "
                    f"mean {fmt_us(s['mask_commit_us']['mean'])}")
                for f in s["failures"]:
                    log(f"    FAIL sentence {f['index']} ({f['origin']}): {f['reason']} at token {f['token_index']} "
                        f"{f['token_text']!r} after {f['prefix']!r} {f.get('mismatch', '')} "
                        f"{'EOS not in final mask' if f.get('eos_not_in_mask') else ''}\n      text: {f['text']!r}")
            else:
                log(f"{c['name']:14s} {e:10s} {s['status'].upper()}: {s.get('error')}")
    machine_end = _common.machine_info()

    h, rows = table(cases, summaries, engines)
    print("\n" + format_table(h, rows))
    print("\nWhat each engine was given:\n" + "\n".join("* " + d for d in DIFFERENCES))
    failures = [(e, n, s) for e in engines for n, s in summaries[e].items()
                if s["status"] != "ok" or s.get("failures")]
    if failures:
        print("\nFAILURES:")
        for e, n, s in failures:
            if s["status"] != "ok":
                print(f"  {e} / {n}: {s['status']}: {s.get('error')}")
            for f in s.get("failures", []):
                print(f"  {e} / {n}: sentence {f['index']} {f['reason']} at token {f['token_index']} "
                      f"({f['token_text']!r}): {f['text']!r}")

    out = {
        "benchmark": "grammar",
        "tokenizer": args.tokenizer,
        "vocab_size": _common.VOCAB_SIZE[args.tokenizer],
        "args": {k: str(v) for k, v in vars(args).items()},
        "method": {
            "compile_cold": "first compile in a fresh spawned process per (engine, grammar), after the tokenizer tables "
                            "were built (untimed); wall (perf_counter) and process CPU time",
            "compile_warm": f"median of {args.warm_compiles} further compiles in the same process (result caches off)",
            "mask_commit": "pass 1 on the freshly compiled grammar, fresh matcher per sentence, first visits included; "
                           "warm = pass 2 on the same compiled grammar",
            "differences": DIFFERENCES,
        },
        "machine_start": machine,
        "machine_end": machine_end,
        "grammars": {c["name"]: {"lark": c["lark"], "xgrammar": c["xgrammar"],
                                 "sentences": [{"text": i["text"], "origin": i["origin"], "tokens": len(i["ids"])}
                                               for i in c["instances"]]} for c in cases},
        "summary": summaries,
        "engines": {e: next((r.get("describe") for r in raw[e].values() if r.get("describe")), None) for e in engines},
        "per_sentence": {e: {n: r.get("instances") for n, r in raw[e].items()} for e in engines},
    }
    _common.write_json(args.json, out)
    md = [f"Tokenizer: {args.tokenizer} ({out['vocab_size']} ids); {len(cases)} grammars, "
          f"{sum(len(c['instances']) for c in cases)} sentences; "
          f"load average at start {machine['loadavg']}, at end {machine_end['loadavg']}; "
          + (f"our engine: committed snapshot {core['commit'][:8]} ({args.core_ref})" if core.get("commit") else
             f"commit {machine['git_commit']}" + (" + uncommitted core edits" if machine["uncommitted_core_files"] else ""))
          + f"; xgrammar {machine['versions'].get('xgrammar')}, llguidance {machine['versions'].get('llguidance')}.", "",
          markdown_table(h, rows), ""]
    if failures:
        md += ["Failures:", ""] + [f"* {e} / {n}: {s['status']} {s.get('error') or ''} "
                                   + "; ".join(f"sentence {f['index']} {f['reason']} at token {f['token_index']}"
                                               for f in s.get("failures", [])) for e, n, s in failures] + [""]
    args.json.with_suffix(".md").write_text("\n".join(md))
    try:
        plot(args.plot, cases, summaries, engines,
             f"Context-free grammars, {args.tokenizer} vocabulary")
    except Exception as e:  # noqa: BLE001 - the plot is a convenience; the JSON is the result
        log(f"plot failed: {e}")
    log(f"wrote {args.json}, {args.json.with_suffix('.md')}, {args.plot}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
