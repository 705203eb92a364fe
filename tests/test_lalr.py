"""Our LALR(1) construction (dotvllm_plugin.lalr) against lark's LALR_Analyzer: the same automaton
(up to state numbering: compared from the start state on), the same actions and conflicts, on
Lark grammars, mutated Lark grammars and JSON Schema grammars from the corpus."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from dotvllm_plugin import pushdown
from dotvllm_plugin.errors import GrammarError, UnsupportedFeatureError
from dotvllm_plugin.grammar.json_schema import json_schema_to_ir
from dotvllm_plugin.grammar.lark import lark_to_ir

from lalr_reference import lalr_tables_lark
from test_grammar import ARITHMETIC, CALLS, FEATURES, JSON, SQL
from test_grammar_fuzz import _mutate

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "jsonschemabench-dev"


def _canonical(t: dict) -> tuple:
    """The tables as seen from the start state: states numbered in breadth-first order (columns
    and nonterminals in index order), each action by its target's number or its rule."""
    action, goto, keys = t["action"], t["goto"], t["rule_keys"]
    offsets, codes = t["conf_offsets"], t["conf_codes"]
    number = {t["start_state"]: 0}
    order = [t["start_state"]]
    out = []

    def visit(s: int) -> int:
        if s not in number:
            number[s] = len(order)
            order.append(s)
        return number[s]

    def one(code: int):
        return ("shift", visit(code - 1)) if code > 0 else ("reduce", keys[-code - 1])

    i = 0
    while i < len(order):
        s = order[i]
        row = []
        for col, code in enumerate(action[s].tolist()):
            if code == 0:
                continue
            if code >= pushdown.MULTI:
                k = code - pushdown.MULTI
                acts = [one(c) for c in codes[offsets[k] : offsets[k + 1]].tolist()]
                row.append((col, tuple(sorted(acts, key=repr))))
            else:
                row.append((col, one(code)))
        gotos = [(nt, visit(g)) for nt, g in enumerate(goto[s].tolist()) if g >= 0]
        out.append((tuple(row), tuple(gotos), tuple(t["accepts"][s])))
        i += 1
    return tuple(out), number.get(t["end_state"])


def _agree(grammar) -> None:
    ours, theirs = pushdown._lalr_tables(grammar), lalr_tables_lark(grammar)
    assert len(ours["accepts"]) == len(theirs["accepts"])
    assert _canonical(ours) == _canonical(theirs)


@pytest.mark.parametrize("text", [JSON, ARITHMETIC, SQL, CALLS] + [p.values[0] for p in FEATURES])
def test_lark_grammars(text):
    _agree(lark_to_ir(text))


def test_mutated_lark_grammars():
    rng = random.Random(5)
    bases = [JSON, ARITHMETIC, SQL, CALLS]
    compared = 0
    for _ in range(150):
        text = _mutate(rng.choice(bases), rng)
        try:
            grammar = lark_to_ir(text)
            grammar.check()
        except GrammarError:
            continue
        try:
            theirs = lalr_tables_lark(grammar)
        except GrammarError:
            with pytest.raises(GrammarError):
                pushdown._lalr_tables(grammar)
            continue
        ours = pushdown._lalr_tables(grammar)
        assert _canonical(ours) == _canonical(theirs), text
        compared += 1
    assert compared > 40


def test_json_schema_grammars():
    if not CORPUS.is_dir():
        pytest.skip("the JSONSchemaBench corpus is not here")
    files = sorted(CORPUS.glob("*.json"))
    rng = random.Random(3)
    compared = 0
    for path in rng.sample(files, 60):
        schema = json.loads(path.read_text())["schema"]
        try:
            grammar = json_schema_to_ir(schema, mode="grammar")
        except (UnsupportedFeatureError, GrammarError, Exception):  # noqa: BLE001 - only grammars we build
            continue
        _agree(grammar)
        compared += 1
    assert compared > 30
