"""The parser tables from lark's LALR analysis: the reference tests/test_lalr.py compares the
engine's own construction (dotvllm_plugin.lalr) with."""

from __future__ import annotations

from dotvllm_plugin.errors import GrammarError
from dotvllm_plugin.lalr import Tables
from dotvllm_plugin.pushdown import _packed


def lalr_tables_lark(grammar) -> dict:
    """``pushdown._lalr_tables`` with lark's ``LALR_Analyzer`` (LR(0) item sets, LALR lookaheads) in
    place of ``dotvllm_plugin.lalr``: the engine's tables before it had its own construction."""
    from lark.common import ParserConf
    from lark.exceptions import GrammarError as LarkGrammarError
    from lark.grammar import NonTerminal
    from lark.grammar import Rule as LarkRule
    from lark.grammar import Terminal as LarkTerminal
    from lark.parsers.lalr_analysis import LALR_Analyzer

    term_names = [t.name for t in grammar.terminals]
    term_set = set(term_names)
    rules = list(dict.fromkeys((r.origin, tuple(r.expansion)) for r in grammar.rules))
    number = {key: i for i, key in enumerate(rules)}
    lark_rules = [LarkRule(NonTerminal(o), [LarkTerminal(s) if s in term_set else NonTerminal(s) for s in e])
                  for o, e in rules]
    try:
        analyzer = LALR_Analyzer(ParserConf(lark_rules, {}, [grammar.start]), debug=False, strict=False)
        analyzer.compute_lr0_states()
        analyzer.compute_reads_relations()
        analyzer.compute_includes_lookback()
        analyzer.compute_lookaheads()
    except LarkGrammarError as e:
        raise GrammarError(f"the grammar cannot be analysed: {str(e).strip().splitlines()[0]}") from e
    itemsets = sorted(analyzer.lr0_itemsets, key=lambda its: sorted(map(repr, its.kernel)))
    index = {its: i for i, its in enumerate(itemsets)}
    symbols: list[str] = []  # the tables' symbols as integers, as dotvllm_plugin.lalr writes them
    sym: dict[str, int] = {}

    def at(name: str) -> int:
        if name not in sym:
            sym[name] = len(symbols)
            symbols.append(name)
        return sym[name]

    shifts, gotos, reduces = [], [], []
    for its in itemsets:
        shifts.append({at(s.name): index[n] for s, n in its.transitions.items() if s.is_term})
        gotos.append({at(s.name): index[n] for s, n in its.transitions.items() if not s.is_term})
        reduces.append({at(la.name): [number[(r.origin.name, tuple(x.name for x in r.expansion))] for r in rs
                                      if not r.origin.name.startswith("$root_")]
                        for la, rs in its.lookaheads.items()})
        reduces[-1] = {la: rs for la, rs in reduces[-1].items() if rs}
    root = "$root_" + grammar.start
    end = [index[its] for its in itemsets if any(rp.rule.origin.name == root and rp.is_satisfied for rp in its.closure)]
    tables = Tables(shifts, gotos, reduces, index[analyzer.lr0_start_states[grammar.start]], end[0], symbols)
    return _packed(tables, rules, term_names)
