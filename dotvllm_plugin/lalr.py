"""LALR(1) item sets and lookaheads (DeRemer and Pennello), on integer symbols.

The pushdown matcher's parser tables: LR(0) item sets, then LALR(1) lookaheads through the
``reads`` and ``includes`` relations, with terminal sets as Python integers (one bit per
terminal). Same construction as lark's ``LALR_Analyzer`` (including its augmented rule
``$root_<start> → <start>`` and ``$END`` as the start symbol's follow), without its per-item
objects. Conflicts are not resolved here: every action is reported.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

__all__ = ["Tables", "lalr_tables"]


class Tables(NamedTuple):
    """``shifts[state]``: ``{terminal: state}``, ``gotos[state]``: ``{nonterminal: state}``,
    ``reduces[state]``: ``{terminal or END: [rule, ...]}`` (rule indexes into the given rules; the
    augmented rule is never reduced), ``start``, and ``end`` (the state after the start symbol:
    reaching it on ``END`` accepts). Symbols are integers indexing ``symbols`` (their names)."""

    shifts: list
    gotos: list
    reduces: list
    start: int
    end: int
    symbols: list


END = "$END"


def lalr_tables(rules: list[tuple[str, tuple[str, ...]]], terminals: set[str], start: str) -> Tables:
    """Tables for ``rules`` (``(origin, expansion)``; symbols in ``terminals`` are terminals, the
    others nonterminals, each defined by some rule) with start symbol ``start``."""
    # -- symbols and rules as integers (nonterminals first; the augmented rule last) --
    defined = {o for o, _ in rules}
    for o, e in list(rules) + [("$root_" + start, (start,))]:
        for s in e:
            if s not in terminals and s not in defined:
                raise ValueError(f"rule {o} uses {s}, which is neither a terminal nor defined by a rule")
    nonterms = sorted(defined | {"$root_" + start})
    nt_id = {n: i for i, n in enumerate(nonterms)}
    term_list = sorted(terminals) + [END]
    t_id = {t: i for i, t in enumerate(term_list)}
    n_nt = len(nonterms)
    sym = {**nt_id, **{t: n_nt + i for t, i in t_id.items()}}
    all_rules = list(rules) + [("$root_" + start, (start,))]
    root = len(all_rules) - 1
    lhs = [nt_id[o] for o, _ in all_rules]
    rhs = [tuple(sym[s] for s in e) for _, e in all_rules]
    by_lhs: list[list[int]] = [[] for _ in range(n_nt)]
    for r, a in enumerate(lhs):
        by_lhs[a].append(r)

    nullable = [False] * n_nt
    changed = True
    while changed:
        changed = False
        for r, a in enumerate(lhs):
            if not nullable[a] and all(x < n_nt and nullable[x] for x in rhs[r]):
                nullable[a] = changed = True

    # -- LR(0) item sets: an item is (rule, dot), packed as rule * K + dot --
    K = max((len(x) for x in rhs), default=0) + 1
    # per item: the symbol after the dot (-1 at the end)
    after = [-1] * (len(rhs) * K)
    for r, body in enumerate(rhs):
        after[r * K : r * K + len(body)] = body
    added: dict[int, tuple[int, ...]] = {}

    def adds(a: int) -> tuple[int, ...]:
        """The items (r, 0) a nonterminal after the dot adds: its closure, computed for the
        nonterminals some kernel has after its dot only (a left-recursive chain of n rules has
        closures of every length up to n, and most are never asked for)."""
        got = added.get(a)
        if got is None:
            seen_nt, todo, out = {a}, [a], []
            while todo:
                for r in by_lhs[todo.pop()]:
                    out.append(r * K)
                    if rhs[r] and rhs[r][0] < n_nt and rhs[r][0] not in seen_nt:
                        seen_nt.add(rhs[r][0])
                        todo.append(rhs[r][0])
            got = added[a] = tuple(out)
        return got
    start_kernel = frozenset({root * K})
    states: list[frozenset] = [start_kernel]
    index = {start_kernel: 0}
    shifts: list[dict] = []
    gotos: list[dict] = []
    completed: list[list[int]] = []  # per state: rules with the dot at the end
    i = 0
    while i < len(states):
        kernel = states[i]
        items = set(kernel)
        for it in kernel:
            x = after[it]
            if 0 <= x < n_nt:
                items.update(adds(x))
        moves: dict[int, list[int]] = defaultdict(list)
        done = []
        for it in items:
            x = after[it]
            if x >= 0:
                moves[x].append(it + 1)
            else:
                done.append(it // K)
        sh, gt = {}, {}
        for x in sorted(moves):
            nk = frozenset(moves[x])
            j = index.get(nk)
            if j is None:
                j = index[nk] = len(states)
                states.append(nk)
            (gt if x < n_nt else sh)[x] = j
        shifts.append(sh)
        gotos.append(gt)
        completed.append(sorted(done))
        i += 1

    # -- LALR(1) lookaheads --
    trans = [(p, a) for p in range(len(states)) for a in gotos[p]]  # nonterminal transitions
    tid = {t: k for k, t in enumerate(trans)}
    end_bit = 1 << t_id[END]
    dr = [0] * len(trans)
    reads: list[list[int]] = [[] for _ in trans]
    for k, (p, a) in enumerate(trans):
        q = gotos[p][a]
        bits = 0
        for x in shifts[q]:
            bits |= 1 << (x - n_nt)
        if p == 0 and a == nt_id[start]:
            bits |= end_bit
        dr[k] = bits
        reads[k] = [tid[(q, c)] for c in gotos[q] if nullable[c]]
    read_sets = _digraph(reads, dr)

    includes: list[list[int]] = [[] for _ in trans]
    lookback: dict[tuple[int, int], list[int]] = defaultdict(list)  # (state, rule) → transitions
    # per rule: the first position from which the rest of its body is nullable
    tail = []
    for body in rhs:
        d = len(body)
        while d and body[d - 1] < n_nt and nullable[body[d - 1]]:
            d -= 1
        tail.append(d)
    for k, (p, b) in enumerate(trans):
        for r in by_lhs[b]:
            q = p
            body = rhs[r]
            for d, x in enumerate(body):
                if x < n_nt and d + 1 >= tail[r]:
                    includes[tid[(q, x)]].append(k)
                q = shifts[q][x] if x >= n_nt else gotos[q][x]
            lookback[(q, r)].append(k)
    follow = _digraph(includes, read_sets)

    reduces: list[dict] = []
    for q in range(len(states)):
        la: dict[int, list[int]] = {}
        for r in completed[q]:
            if r == root:
                continue
            bits = 0
            for k in lookback.get((q, r), ()):
                bits |= follow[k]
            while bits:
                low = bits & -bits
                la.setdefault(n_nt + low.bit_length() - 1, []).append(r)
                bits ^= low
        reduces.append(la)

    return Tables(shifts, gotos, reduces, 0, gotos[0][nt_id[start]], nonterms + term_list)


def _digraph(edges: list[list[int]], base: list[int]) -> list[int]:
    """F(x) = base(x) ∪ ⋃ F(y) for x → y: DeRemer and Pennello's ``Digraph`` (Tarjan's strongly
    connected components; every member of a component gets its union), iterative."""
    n = len(edges)
    done = n + 1
    mark = [0] * n  # 0 unvisited, else the lowest stack depth reached; ``done`` when finished
    out = list(base)
    stack: list[int] = []
    for root in range(n):
        if mark[root]:
            continue
        stack.append(root)
        mark[root] = len(stack)
        work = [[root, len(stack), 0]]
        while work:
            frame = work[-1]
            x, depth, i = frame
            if i < len(edges[x]):
                frame[2] = i + 1
                y = edges[x][i]
                if mark[y] == 0:
                    stack.append(y)
                    mark[y] = len(stack)
                    work.append([y, len(stack), 0])
                else:
                    if mark[y] < mark[x]:
                        mark[x] = mark[y]
                    out[x] |= out[y]
                continue
            work.pop()
            if mark[x] == depth:  # x roots a component: it is everything above x on the stack
                while True:
                    top = stack.pop()
                    mark[top] = done
                    out[top] = out[x]
                    if top == x:
                        break
            if work:
                p = work[-1][0]
                if mark[x] < mark[p]:
                    mark[p] = mark[x]
                out[p] |= out[x]
    return out
