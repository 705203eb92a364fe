"""The parser tables from lark's LALR analysis: the reference tests/test_lalr.py compares the
engine's own construction (dotvllm_plugin.lalr) with."""

from __future__ import annotations

import numpy as np

from dotvllm_plugin.errors import GrammarError
from dotvllm_plugin.pushdown import MULTI


def lalr_tables_lark(grammar):
    """``pushdown._lalr_tables`` by lark's own analysis (LR(0) item sets, LALR lookaheads), in the
    same format: the engine's tables before it had its own construction."""
    from lark.common import ParserConf
    from lark.exceptions import GrammarError as LarkGrammarError
    from lark.grammar import NonTerminal
    from lark.grammar import Rule as LarkRule
    from lark.grammar import Terminal as LarkTerminal
    from lark.parsers.lalr_analysis import LALR_Analyzer

    term_names = [t.name for t in grammar.terminals]
    term_set = set(term_names)
    rules, seen = [], set()
    for r in grammar.rules:
        key = (r.origin, r.expansion)
        if key in seen:
            continue
        seen.add(key)
        rules.append(LarkRule(NonTerminal(r.origin), [LarkTerminal(s) if s in term_set else NonTerminal(s) for s in r.expansion]))
    try:
        analyzer = LALR_Analyzer(ParserConf(rules, {}, [grammar.start]), debug=False, strict=False)
        analyzer.compute_lr0_states()
        analyzer.compute_reads_relations()
        analyzer.compute_includes_lookback()
        analyzer.compute_lookaheads()
    except LarkGrammarError as e:
        raise GrammarError(f"the grammar cannot be analysed: {str(e).strip().splitlines()[0]}") from e
    itemsets = sorted(analyzer.lr0_itemsets, key=lambda its: sorted(map(repr, its.kernel)))
    index = {its: i for i, its in enumerate(itemsets)}
    nonterms = sorted({r.origin for r in grammar.rules})
    nt_idx = {n: i for i, n in enumerate(nonterms)}
    t_idx = {n: i for i, n in enumerate(term_names)}
    end_col = len(term_names)
    n_states = len(itemsets)
    action = np.zeros((n_states, end_col + 1), dtype=np.int32)
    goto = np.full((n_states, len(nonterms)), -1, dtype=np.int32)
    rule_index: dict[tuple, int] = {}
    rule_keys: list[tuple] = []
    rule_len: list[int] = []
    rule_origin: list[int] = []
    accepts: list[list[int]] = []
    conflicts: list[list[int]] = []
    n_conflicts = 0

    def reduce_code(rule) -> int:
        key = (rule.origin.name, tuple(x.name for x in rule.expansion))
        ri = rule_index.get(key)
        if ri is None:
            ri = rule_index[key] = len(rule_len)
            rule_len.append(len(rule.expansion))
            rule_origin.append(nt_idx[rule.origin.name])
            rule_keys.append(key)
        return -(ri + 1)

    for i, its in enumerate(itemsets):
        codes: dict[int, list[int]] = {}
        for sym, nxt in its.transitions.items():
            if sym.is_term:
                codes.setdefault(t_idx[sym.name], []).append(index[nxt] + 1)
            else:
                goto[i, nt_idx[sym.name]] = index[nxt]
        for la, las_rules in its.lookaheads.items():
            col = end_col if la.name == "$END" else t_idx[la.name]
            for rule in sorted(las_rules, key=lambda r: (r.origin.name, [x.name for x in r.expansion])):
                if rule.origin.name.startswith("$root_"):
                    continue
                codes.setdefault(col, []).append(reduce_code(rule))
        for col, cs in codes.items():
            if len(cs) == 1:
                action[i, col] = cs[0]
            else:
                action[i, col] = MULTI + len(conflicts)
                conflicts.append(cs)
                n_conflicts += 1
        accepts.append(sorted(c for c in codes if c != end_col))
    start_state = index[analyzer.lr0_start_states[grammar.start]]
    root = "$root_" + grammar.start
    ends = [index[its] for its in itemsets if any(rp.rule.origin.name == root and rp.is_satisfied for rp in its.closure)]
    conf_offsets = np.cumsum([0] + [len(c) for c in conflicts]).astype(np.int32)
    conf_codes = np.array([x for c in conflicts for x in c], dtype=np.int32)
    return dict(
        action=action,
        goto=goto,
        rule_len=np.array(rule_len, dtype=np.int32),
        rule_origin=np.array(rule_origin, dtype=np.int32),
        conf_offsets=conf_offsets,
        conf_codes=conf_codes,
        start_state=int(start_state),
        end_state=int(ends[0]),
        accepts=accepts,
        rule_keys=rule_keys,
    )
