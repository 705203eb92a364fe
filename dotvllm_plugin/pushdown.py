"""The pushdown engine: a grammar IR compiled to contextual lexer automata and LR tables.

Language
--------
What lark accepts for the grammar — ``Lark(grammar, parser="lalr")`` for an LALR(1) grammar,
``Lark(grammar)`` (Earley) otherwise — restricted where needed so that lark never splits our text
differently than we do:

* The parser tables come from lark's own LALR analysis of the IR's BNF. Where lark's LALR parser
  would resolve a conflict (shift over reduce, or refuse a reduce/reduce), every action is kept
  and run as generalised LR: the language is the grammar's (Earley's).
* Lexing is lark's contextual lexer: in parser state ``p`` the candidates are the terminals ``p``
  accepts plus the ``%ignore`` ones, in lark's order; a literal that a regex terminal of the same
  priority also matches is re-typed the way lark's "unless" callback does. lark takes the *first*
  candidate in its order that matches; we take the *longest* lexeme, ties to lark's order. The two
  agree unless an earlier terminal ``A`` matches a proper prefix of a text that a later terminal
  ``B`` matches while ``A`` does not match it whole; such a pair is refused at compile time,
  with a witness. Generated grammars (``Grammar.lexing == "longest"``) skip that check, and a
  lexeme several of their candidates match whole is typed as all of them (:class:`_Compounds`):
  the parser follows every reading. A parser state of theirs may lex with the lexer of a larger
  candidate set where the set adds only literals that no word of its own candidates starts
  (:func:`_shared_lexer_sets`): the lexemes are the same, the parser refuses the added ones.
* A lexeme ends when the next byte cannot extend it (greedy, no backtracking). Text whose lexing
  would need to backtrack (``"abc"`` and ``"a"`` as terminals, text ``ab…``) is never generated:
  the matcher is sound for every grammar and complete for those whose terminals never need it.

Matching
--------
A configuration is ``(q, stack)``: ``q`` a state of the current contextual lexer's product DFA,
``stack`` an immutable linked list of LR states (``(state, below, depth)``), so ``copy()`` is free;
a matcher follows one configuration, or a few (:data:`MAX_CONFIGS` after each token) where the
grammar is not LALR(1). A token is allowed iff its bytes walk the lexer DFA, each lexeme boundary feeding the
parser. The mask of a configuration splits in two:

* tokens that stay inside the current lexeme: one walk of the vocabulary trie from ``q`` (the C
  walk of :mod:`dotvllm_plugin.index`), cached per ``q`` (shared by lexer states with equal
  sub-automata) together with the *exits* (trie nodes where a lexeme ends inside a token);
* tokens that cross a boundary: the exits are fed to the parser and the walk continues from them
  in the next lexer (that walk is cached per path); which of its results are viable depends on the
  stack states the parser actions read, so each exit group is memoised per those states, and the
  whole mask per ``(q, top-k states)``, ``k`` recorded while computing it.

A grammar without nesting is compiled instead to the exact DFA of this language
(:meth:`PushdownGrammar.as_dfa`). Stack depth is bounded by :data:`MAX_STACK_DEPTH` (configurable
per grammar); nothing recurses in Python with the depth of the text.
"""

from __future__ import annotations

import bisect
import functools
import json
import re
import threading
import weakref
from collections import OrderedDict, deque

import numpy as np

from .errors import GrammarError, SerializationError, UnsupportedFeatureError
from .grammar.ir import Grammar, Terminal
from .lalr import END as _LALR_END  # (what the C tables call the end of input, as lalr.py does)
from . import index, runs
from .index import set_token_bits

try:
    from . import _cwalk

    if not hasattr(_cwalk, "product"):  # an extension built before the product construction
        _cwalk = None
except ImportError:  # pragma: no cover - the C extension is optional
    _cwalk = None

__all__ = ["MAX_STACK_DEPTH", "PushdownGrammar", "check_pushdown", "compile_pushdown", "nests", "pushdown_tables"]

#: Default bound on the parser stack (LALR states); nesting 1,000 deep in the usual grammars needs
#: 2–4 states per level. Past it a token that would push deeper is not allowed. The environment
#: variable ``DOTVLLM_MAX_STACK_DEPTH`` overrides it for every grammar compiled afterwards.
MAX_STACK_DEPTH = 8192


def default_stack_depth() -> int:
    import os

    raw = os.environ.get("DOTVLLM_MAX_STACK_DEPTH", "").strip()
    if not raw:
        return MAX_STACK_DEPTH
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"DOTVLLM_MAX_STACK_DEPTH must be an integer, got {raw!r}") from None
    if value < 16:
        raise ValueError(f"DOTVLLM_MAX_STACK_DEPTH must be at least 16, got {value}")
    return value
#: Default number of (lexer state, stack signature) masks cached per grammar and process.
MASK_CACHE_SIZE = 4096



#: Most parser configurations a matcher follows at once where the grammar is not LALR(1); more
#: (a very ambiguous text) are dropped after each token, which only narrows what may follow.
MAX_CONFIGS = 64
#: Most configurations followed while one token's bytes are read (dropping one there could refuse a
#: token the mask allowed: a comma read once per possible next item, then the item's first letter).
MAX_CONFIGS_IN_STEP = 4096
#: Most reductions one terminal may cause (a cyclic grammar could reduce forever).
MAX_REDUCTIONS = 100_000
#: Most chains of one-symbol reductions remembered per grammar (:meth:`PushdownGrammar._unit_top`).
UNIT_MEMO_SIZE = 1 << 16

#: 2: lazily compiled terminals carry their exclusions (``lazy_exclude``); a version-1 reader would
#: compile an undeclared-key terminal without its cut, so version 1 and 2 blobs are not mixed.
FORMAT_VERSION = 2
MAGIC = b"DOTVLLMP"
"""First bytes of :meth:`PushdownGrammar.to_bytes`."""


#: A grammar whose reachable (lexer state, stack) configurations stay under these bounds is
#: compiled as a byte DFA with precomputed rows (see :meth:`PushdownGrammar.as_dfa`).
REGULAR_MAX_STATES = 4096
REGULAR_MAX_DEPTH = 48
#: The bound for generated grammars (JSON Schema): a schema that is regular and small became one
#: regex before it became rules, so these are large, and a search to 4,096 configurations spent
#: 0.2–0.4 s to give up (or to find a 3,672-state automaton whose token index took 0.3 s more).
REGULAR_MAX_STATES_GENERATED = 256


def nests(grammar: Grammar) -> bool:
    """Whether a rule can contain itself other than at its left edge (``x: "(" x ")"``, ``x: "a"
    x``): then an LR parser's stack grows with the text and the language is usually not regular.
    Left recursion (``list: list "," item``, what lark makes of ``*`` and ``+``) keeps it flat."""
    rules = {r.origin for r in grammar.rules}
    edges: dict[str, set] = {}
    inner: list[tuple[str, str]] = []
    for r in grammar.rules:
        for i, sym in enumerate(r.expansion):
            if sym in rules:
                edges.setdefault(r.origin, set()).add(sym)
                if i > 0:
                    inner.append((r.origin, sym))
    # origin reaches itself through sym iff both lie in one strongly connected component
    component = _components(edges)
    return any(component[origin] == component[sym] for origin, sym in inner)


def _components(edges: dict[str, set]) -> dict[str, int]:
    """Strongly connected components of the graph ``edges`` (Tarjan, iterative): node → id."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    comp: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in list(edges):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(edges.get(root, ())))]
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(edges.get(w, ()))))
                    break
                if w in on_stack and index[w] < low[v]:
                    low[v] = index[w]
            else:
                work.pop()
                if work and low[v] < low[work[-1][0]]:
                    low[work[-1][0]] = low[v]
                if low[v] == index[v]:
                    c = len(comp)
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp[w] = c
                        if w == v:
                            break
    return comp


def _stack_states(stack) -> tuple:
    out = []
    while stack is not None:
        out.append(stack[0])
        stack = stack[1]
    return tuple(out)


_MISSING = object()


def _push(state: int, below, intern: dict | None):
    if intern is None:
        return (state, below, below[2] + 1)
    key = (state, id(below))
    cell = intern.get(key)
    if cell is None:
        cell = intern[key] = (state, below, below[2] + 1)
    return cell
_ACCEPT = "accept"
#: :meth:`PushdownGrammar.step` met a lexeme several terminals type: the caller follows every reading.
_FORK = "fork"
#: The product construction of contextual lexers in C (``_cwalk.product``) where it is built; the
#: Python loop of :func:`_build_lexer` is the reference (tests compare them).
USE_C_PRODUCT = True
#: Whether the parser runs in C where the extension has it: the probe of mask computations
#: (``_cwalk.lr_feed`` / ``lr_viable``), the mask cache read (``mask_hit``), a mask's recursion
#: over its exits on a miss (``mask_miss``), a deterministic grammar's step (``lr_step``) and the
#: generalised one (``lr_step_all``); :class:`_Probe`'s methods and :class:`PushdownGrammar`'s
#: loops are the reference (tests compare).
USE_C_PARSER = True
_C_PARSER = _cwalk is not None and hasattr(_cwalk, "mask_miss")
#: Whether a grammar's LALR(1) tables are built in C (``_cwalk.lalr_packed``) where the extension
#: has it; :func:`dotvllm_plugin.lalr.lalr_tables` and :func:`_packed` are the reference (tests compare).
USE_C_LALR = True
_C_LALR = _cwalk is not None and hasattr(_cwalk, "lalr_packed")
#: Whether base walks take the character-run shortcut (:mod:`dotvllm_plugin.runs`; tests compare).
USE_RUNS = True
#: Whether a base walk takes the tokens whose first byte leads where it leads from the state its
#: characters run to from that state's walk, when that walk is known (:meth:`PushdownGrammar._donor_walk`;
#: tests compare).
USE_DONORS = True
#: Most first bytes a donor's rows drop (each a row of the tokens it starts, ORed): past it, walk.
MAX_DONOR_DROP = 24
#: Whether a donor walk's exits and pending rows are sorted out in C where it is built
#: (:func:`_donor_parts`; tests compare).
USE_C_DONOR_PARTS = True
#: Whether a base walk is keyed by the automaton within a token's length of its state only (False:
#: by everything reachable from it, the reference; tests compare).
BALL_SIGNATURES = True
MAX_LEXER_STATES = 200_000
_TOO_MANY_LEXER_STATES = f"the grammar's lexer automaton exceeds {MAX_LEXER_STATES:,} states; simplify its terminals"


# -- compile: terminals and contextual lexers -----------------------------------------------------


#: Terminal automata kept per process, by (regex, excluded strings, non-empty, generated): every
#: JSON schema has the same string, number and key terminals, and a compile worker or an engine
#: process built them again for each grammar. Small automata only, bounded in bytes; their arrays
#: are read-only. Cold-compile benchmarks empty it (:func:`clear_memos`).
TERMINAL_MEMO_BYTES = 32 << 20
TERMINAL_MEMO_MAX_STATES = 4096
_terminal_memo: OrderedDict = OrderedDict()
_terminal_memo_bytes = 0
_terminal_memo_lock = threading.Lock()
#: Automata of terminals every JSON schema shares (:func:`pin_terminal_automata`): built once per
#: process, never evicted nor cleared by :func:`clear_memos`.
_pinned_terminals: dict = {}


def _terminal_key(t: Terminal, generated: bool | None = None) -> tuple:
    # (a generated regex comes with its tree and skips the checks of user-written text: not shared;
    # ``generated``: the regex text is a generated grammar's though its tree is gone)
    return (t.regex, tuple(t.exclude), bool(t.nonempty), t.tree is not None if generated is None else generated)


def pin_terminal_automata(terminals) -> None:
    """Build and keep for the process's life the automata of ``terminals`` (an excluding one: its
    automaton before the cut, which every exclusion of the same regex starts from)."""
    for t in terminals:
        if t.exclude:
            t = _uncut(t)
        key = _terminal_key(t)
        if key not in _pinned_terminals:  # (built apart from the memo, which the benchmarks clear)
            dfa = _read_only(_build_terminal_dfa(t))
            with _terminal_memo_lock:
                _pinned_terminals.setdefault(key, dfa)


def _read_only(dfa):
    dfa.transitions.flags.writeable = False
    dfa.accepting.flags.writeable = False
    return dfa


def clear_memos() -> None:
    """Forget the per-process terminal automata (benchmarks timing cold compiles do), all but the
    pinned ones (:func:`pin_terminal_automata`)."""
    global _terminal_memo_bytes
    with _terminal_memo_lock:
        _terminal_memo.clear()
        _terminal_memo_bytes = 0
    _largest_count.cache_clear()


def _terminal_dfa(t: Terminal, generated: bool | None = None):
    """``t``'s byte DFA (kept per process when small); ``generated``: see :func:`_terminal_key`."""
    global _terminal_memo_bytes
    key = _terminal_key(t, generated)
    got = _pinned_terminals.get(key)
    if got is not None:
        return got
    with _terminal_memo_lock:
        got = _terminal_memo.get(key)
        if got is not None:
            _terminal_memo.move_to_end(key)
            return got
    dfa = _build_terminal_dfa(t, generated)
    if dfa.n_states <= TERMINAL_MEMO_MAX_STATES:
        _read_only(dfa)
        size = dfa.transitions.nbytes + dfa.accepting.nbytes
        with _terminal_memo_lock:
            if key not in _terminal_memo:
                _terminal_memo[key] = dfa
                _terminal_memo_bytes += size
                while _terminal_memo_bytes > TERMINAL_MEMO_BYTES and _terminal_memo:
                    _, old = _terminal_memo.popitem(last=False)
                    _terminal_memo_bytes -= old.transitions.nbytes + old.accepting.nbytes
    return dfa


def _uncut(t: Terminal) -> Terminal:
    """An excluding terminal before the cut: its regex alone."""
    return Terminal(t.name, t.regex, where=t.where, tree=t.tree)


def _uncut_dfa(t: Terminal, generated: bool | None = None):
    """An excluding terminal's automaton before the cut, kept like any terminal's (the objects'
    undeclared keys share it; an excluding regex opens with its quote, never empty)."""
    return _terminal_dfa(_uncut(t), generated)


def _build_terminal_dfa(t: Terminal, generated: bool | None = None):
    from .regex import regex_to_dfa

    if t.exclude:
        base = _uncut_dfa(t, generated)
    try:
        if t.exclude:
            from .regex.exclusion import without_json_strings

            dfa = without_json_strings(base, t.exclude, t.regex)
        else:
            dfa = regex_to_dfa(t.regex, tree=t.tree)
    except GrammarError as e:
        raise type(e)(f"{t.describe()}: {e}") from e
    if dfa.accepting[dfa.initial] and t.nonempty:
        dfa = _without_empty(dfa)
    if dfa.accepting[dfa.initial]:
        raise GrammarError(f"{t.describe()} matches the empty string; lark's lexer refuses zero-width terminals")
    return _with_classes(dfa)


def _with_classes(dfa):
    """``dfa`` with its byte classes (every lexer it is a member of reads them)."""
    if dfa.classes is not None:
        return dfa
    from dataclasses import replace

    from .regex import byte_classes

    return replace(dfa, classes=byte_classes(dfa.transitions))


def _terminal_dfas(grammar: Grammar, lazy=None, built=None):
    """Every terminal's byte DFA; ``None`` for those ``lazy(terminal)`` leaves to first use
    (``built``: automata already built, by position).

    Built largest counted repetition first: when one automaton is over budget the whole compile is
    refused (and a JSON schema retried with lower bounds), so the likeliest refusal comes before
    the time spent on the others (seconds, with several ``maxLength`` in the thousands)."""
    terms = grammar.terminals
    dfas = list(built) if built is not None else [None] * len(terms)
    todo = [i for i, d in enumerate(dfas) if d is None]  # (in the same order: the sort is stable)
    for i in sorted(todo, key=lambda i: -_largest_count(terms[i].regex)):
        if lazy is None or not lazy(terms[i]):
            dfas[i] = _terminal_dfa(terms[i])
    return dfas


@functools.lru_cache(maxsize=4096)  # (asked twice per terminal: the build order, and whether it is small)
def _largest_count(regex: str) -> int:
    """The largest upper bound of a counted repetition in ``regex`` (0 if none)."""
    if "{" not in regex:  # (most terminals, keys and punctuation: nothing to scan for)
        return 0
    return max((int(m.group(1)) for m in _COUNTED.finditer(regex)), default=0)


#: A generated grammar with at least this many contextual lexers (parser states with distinct
#: candidate sets, before sets are shared) builds them on first visit (a request visits few of a
#: huge schema's); smaller ones build them at compile time, in the compile worker, so that the
#: engine's step does less on first visits. Lark grammars always build them at compile time (the
#: collision check needs them). (The bound was 64: building every corpus schema's lexers at compile
#: time took 11 % off the MaskBench sample's mask time for 6 % more compile CPU, at most +55 ms a
#: schema, the Kubernetes ones of ~150 lexers.)
LAZY_MIN_LEXERS = 1024
#: Lexers made ready for walks at a grammar's first mask (:meth:`PushdownGrammar._prepare`: their
#: walk and ball tables, checked and held by the C walk, ~25 µs a lexer), the first this many by
#: number; the others, and lexers built on first use, on their first walk. Done there, not on each
#: lexer's first walk in the middle of a decode: on the MaskBench sample (in process, alternating)
#: mean 14.4 → 11.6 µs a token, tokens over 100 µs 1,720 → 1,240, first mask p50 190 → 400 µs.
PREPARED_LEXERS = 64
#: A terminal of a generated grammar is compiled on first use unless its automaton could be large
#: (a counted repetition over this bound, a long regex): those are compiled, and refused when over
#: budget, at compile time.
LAZY_MAX_REPEAT = 16
LAZY_MAX_CHARS = 3000


_COUNTED = re.compile(r"(?<!\\)\{(?:\d*,)?(\d+)\}")


def _small_terminal(t: Terminal) -> bool:
    """Whether ``t``'s automaton is surely small: a short regex (of a generated grammar, so its
    syntax is the translator's) without a counted repetition over :data:`LAZY_MAX_REPEAT`."""
    return len(t.regex) <= LAZY_MAX_CHARS and _largest_count(t.regex) <= LAZY_MAX_REPEAT


def _without_empty(dfa):
    """The same language minus the empty string: a fresh, non-accepting initial state."""
    from .regex import ByteDFA

    n = dfa.n_states
    trans = np.vstack([dfa.transitions, dfa.transitions[dfa.initial][None, :]])
    accepting = np.append(dfa.accepting, False)
    return ByteDFA(transitions=trans.astype(np.int32), accepting=accepting, initial=n)


def _unless(members: list[int], terms: tuple[Terminal, ...]):
    """lark's ``_create_unless``: literals a regex terminal of the same priority matches whole.

    Returns ``(ordered, retype)``: the candidates in lark's order without the embedded literals,
    and ``{regex terminal: [literals it is re-typed to]}``.
    """
    retype: dict[int, list[int]] = {}
    embedded: set[int] = set()
    ordered = sorted(members, key=lambda i: terms[i].lark_order())
    for r in ordered:
        rt = terms[r]
        if rt.literal is not None:
            continue
        for s in ordered:
            st = terms[s]
            if st.literal is None or st.priority != rt.priority:
                continue
            try:
                m = re.match(rt.regex, st.literal)
            except re.error:
                continue
            if m and m.group(0) == st.literal:
                retype.setdefault(r, []).append(s)
                if st.flags <= rt.flags:
                    embedded.add(s)
    return [i for i in ordered if i not in embedded], retype


def _ranks(terms) -> list[int]:
    """Each terminal's position in lark's order (ties between equal lexemes go to the first)."""
    order = sorted(range(len(terms)), key=lambda i: terms[i].lark_order())
    rank = [0] * len(terms)
    for r, i in enumerate(order):
        rank[i] = r
    return rank


def _joint_classes(tables: list[np.ndarray], classes=None):
    """Byte classes of several tables at once: ``(byte → class, class → a representative byte)``.

    ``classes``: per table, its own coarsest byte → class array where known (None where not): the
    joint classes are their common refinement, read from one row per table instead of one per
    state (a lexer's members have hundreds of states, most of them alike)."""
    if _cwalk is not None:  # (classes numbered by their first byte)
        if classes is not None:
            from .regex import byte_classes

            rows = np.stack([bc if bc is not None else byte_classes(t)[1] for t, bc in zip(tables, classes)])
        else:
            rows = np.concatenate(tables, axis=0)
        _, bc, _ = _cwalk.byte_classes(np.ascontiguousarray(rows, dtype=np.int32))
        byte_class = np.frombuffer(bc, dtype=np.int64)
        return byte_class, np.unique(byte_class, return_index=True)[1]
    cols = np.ascontiguousarray(np.concatenate(tables, axis=0).T)  # [256, sum states]
    # each byte's column as one opaque value: a byte-wise sort, ~10x faster than unique(axis=0)
    keys = cols.view(np.dtype((np.void, cols.shape[1] * cols.itemsize))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), first  # byte → class, class → a representative byte


def _shadow_witness(a, b, rep: np.ndarray) -> bytes | None:
    """A text ``w`` in L(b) with a proper prefix in L(a) and ``w`` not in L(a), else None.

    ``rep`` holds one byte per byte class of a partition at least as fine as both automata's.
    """
    ta, tb = a.transitions[:, rep], b.transitions[:, rep]
    start = (a.initial, b.initial, False)
    parent = {start: None}
    todo = deque([start])
    while todo:
        node = todo.popleft()
        sa, sb, seen = node
        for c in np.flatnonzero(tb[sb] >= 0).tolist():
            nb = int(tb[sb, c])
            na = int(ta[sa, c]) if sa >= 0 else -1
            nseen = seen or (sa >= 0 and bool(a.accepting[sa]) and node != start)
            nxt = (na, nb, nseen)
            if nxt in parent:
                continue
            parent[nxt] = (node, int(rep[c]))
            if nseen and b.accepting[nb] and not (na >= 0 and a.accepting[na]):
                out = []
                while parent[nxt] is not None:
                    nxt, byte = parent[nxt]
                    out.append(byte)
                return bytes(reversed(out))
            todo.append(nxt)
    return None


def _build_lexer(members: list[int], terms, dfas, lark_fidelity: bool = True, compounds=None, offset: int = 0,
                 walk_classes: list | None = None):
    """Product DFA of the candidates of one contextual lexer.

    Returns ``(trans int32 [n, 256], chosen int32 [n])`` with state 0 the lexeme start (never
    re-entered) and ``chosen[s]`` the terminal a lexeme ending in ``s`` is typed as (-1: none).
    Without ``lark_fidelity`` (the engine's own longest-match lexing), a lexeme that several
    terminals match is typed as all of them: ``chosen[s]`` is then the id ``compounds(members)``
    gives that set (:class:`_Compounds`), and the parser follows every reading. ``offset`` is added
    to every live target of ``trans`` (the lexer's place among others). ``walk_classes``: a list
    that the C longest-match build appends ``_cwalk.byte_classes(trans, offset, chosen)``'s result
    to (made from its class-space table; the walks read it), left empty by the other builds.
    """
    if not members:  # a parser state that only takes the end of input
        return np.full((1, 256), -1, dtype=np.int32), np.full(1, -1, dtype=np.int32)
    comps = list(members)  # every member, embedded literals included (their acceptance re-types)
    if not lark_fidelity and _cwalk is not None and USE_C_PRODUCT:  # (no collision check: all of it in C)
        # the members' positions in lark's order (one member, most lexers: nothing to sort)
        order = sorted(range(len(comps)), key=lambda j: terms[comps[j]].lark_order()) if len(comps) > 1 else [0]
        res = _cwalk.lexer_chosen([_with_classes(dfas[i]) for i in comps], order, comps, offset, MAX_LEXER_STATES)
        if res is None:
            raise GrammarError(_TOO_MANY_LEXER_STATES)
        trans, chosen, several, classes = res
        if walk_classes is not None:
            walk_classes.append(classes)
        chosen = np.frombuffer(chosen, dtype=np.int32)
        for s, lexeme_terms in several if compounds is not None else ():  # (in state order, as _chosen asks)
            cid = compounds(lexeme_terms)
            if cid is not None:
                chosen[s] = cid
        return np.frombuffer(trans, dtype=np.int32).reshape(-1, 256), chosen
    ordered, retype = _unless(members, terms) if lark_fidelity else (sorted(members, key=lambda i: terms[i].lark_order()), {})
    byte_class, rep = _joint_classes([dfas[i].transitions for i in comps],
                                     [None if dfas[i].classes is None else dfas[i].classes[1] for i in comps])
    first = {i: frozenset(np.flatnonzero(dfas[i].transitions[dfas[i].initial] >= 0).tolist())
             for i in (ordered if lark_fidelity else ())}  # (only the collision check reads them)
    for i, x in enumerate(ordered if lark_fidelity else ()):
        for y in ordered[i + 1 :]:
            if not first[x] & first[y]:
                continue
            if terms[x].literal is not None and terms[y].literal is not None and terms[x].priority == terms[y].priority:
                # lark orders literals of one priority longest first: an earlier literal is never a
                # proper prefix of a later one.
                continue
            w = _shadow_witness(dfas[x], dfas[y], rep)
            if w is not None:
                raise UnsupportedFeatureError(
                    f"{terms[x].describe()} and {terms[y].describe()} overlap: lark's lexer tries the "
                    f"first one first and would split {w.decode('utf-8', 'replace')!r} (which the second "
                    "matches whole) differently than a longest-match lexer; give the second a higher "
                    "priority or make the terminals disjoint",
                    feature="terminal collision",
                    where=terms[x].name,
                )
    n_cls = len(rep)
    sizes = [dfas[i].n_states for i in comps]
    offs = np.cumsum([0] + sizes)
    dead = int(offs[-1])
    glob = np.full((dead + 1, n_cls), dead, dtype=np.int64)
    acc = np.zeros(dead + 1, dtype=bool)
    for j, i in enumerate(comps):
        t = dfas[i].transitions[:, rep]
        glob[offs[j] : offs[j + 1]] = np.where(t >= 0, t + offs[j], dead)
        acc[offs[j] : offs[j + 1]] = dfas[i].accepting
    pos = {c: j for j, c in enumerate(comps)}
    order_pos = [pos[i] for i in ordered]
    order_arr = np.array(order_pos, dtype=np.int64)
    retype_pos = {pos[r]: [pos[s] for s in ss] for r, ss in retype.items()}

    start = np.array([offs[j] + dfas[c].initial for j, c in enumerate(comps)], dtype=np.int64)
    if _cwalk is not None and USE_C_PRODUCT:
        res = _cwalk.product(np.ascontiguousarray(glob), n_cls, dead, start, MAX_LEXER_STATES)
        if res is None:
            raise GrammarError(_TOO_MANY_LEXER_STATES)
        cls_table = np.frombuffer(res[0], dtype=np.int64).reshape(-1, n_cls)
        vecs_arr = np.frombuffer(res[1], dtype=np.int64).reshape(-1, len(comps))
        # (row-major: a state's row is what steps and walks read; a column gather is column-major)
        return (_offset(np.ascontiguousarray(cls_table[:, byte_class], dtype=np.int32), offset),
                _chosen(acc[vecs_arr], comps, order_arr, retype_pos, compounds))
    vecs = [start]
    ids: dict[bytes, int] = {}
    rows: list[np.ndarray] = []
    chosen: list[int] = []
    i = 0
    while i < len(vecs):
        v = vecs[i]
        i += 1
        a = acc[v]
        hits = order_arr[a[order_arr]].tolist()  # the members this lexeme completes, in order
        cid = None
        if compounds is not None and len(hits) > 1:
            cid = compounds(tuple(sorted(comps[j] for j in hits)))
        if cid is not None:
            chosen.append(cid)
        elif not hits:
            chosen.append(-1)
        else:
            pick = hits[0]
            for s in retype_pos.get(pick, ()):
                if a[s]:
                    pick = s
                    break
            chosen.append(comps[pick])
        nxt = glob[v]  # [k, n_cls]
        row = np.full(n_cls, -1, dtype=np.int64)
        alive = np.flatnonzero((nxt != dead).any(axis=0))
        for c in alive.tolist():
            col = nxt[:, c]
            key = col.tobytes()
            sid = ids.get(key)
            if sid is None:
                sid = ids[key] = len(vecs)
                vecs.append(col.copy())
                if len(vecs) > MAX_LEXER_STATES:
                    raise GrammarError(_TOO_MANY_LEXER_STATES)
            row[c] = sid
        rows.append(row)
    cls_table = np.stack(rows) if rows else np.zeros((0, n_cls), dtype=np.int64)
    return _offset(np.ascontiguousarray(cls_table[:, byte_class], dtype=np.int32), offset), np.array(chosen, dtype=np.int32)


def _offset(trans: np.ndarray, offset: int) -> np.ndarray:
    return np.where(trans >= 0, trans + offset, -1).astype(np.int32, order="C") if offset else trans


def _chosen(accepted: np.ndarray, comps: list, order_arr: np.ndarray, retype_pos: dict, compounds) -> np.ndarray:
    """``chosen`` of :func:`_build_lexer` for every product state at once, from ``accepted``
    ([states, members]: which members accept there): the first member in lexing order, re-typed
    as ``retype_pos`` says; a compound id where several members accept and ``compounds`` forms
    one (asked in state order, as the reference loop asks)."""
    ordered = accepted[:, order_arr]
    count = ordered.sum(axis=1)
    comps_arr = np.asarray(comps, dtype=np.int64)
    pick = order_arr[ordered.argmax(axis=1)]
    if retype_pos:
        for s in np.flatnonzero(count > 0).tolist():
            for r in retype_pos.get(int(pick[s]), ()):
                if accepted[s, r]:
                    pick[s] = r
                    break
    chosen = np.where(count > 0, comps_arr[pick], -1)
    if compounds is not None:
        for s in np.flatnonzero(count > 1).tolist():
            cid = compounds(tuple(sorted(comps[j] for j in order_arr[ordered[s]].tolist())))
            if cid is not None:
                chosen[s] = cid
    return chosen.astype(np.int32)


class _Compounds:
    """Terminal sets that type one lexeme together (longest-match lexing of generated grammars: a
    JSON string that is also an ``enum`` literal of another branch). Ids follow the terminals and
    ``$END``: ``n_terms + 1 + k``. Sets with an ignored terminal are not formed (the ignored
    terminal is not a reading the parser can choose; lark's order decides as before)."""

    def __init__(self, n_terms: int, ignore, members=()):
        self.base = n_terms + 1
        self.ignore = ignore
        self.members: list[tuple] = [tuple(m) for m in members]
        self.ids = {m: self.base + i for i, m in enumerate(self.members)}

    def __call__(self, terms: tuple):
        if any(self.ignore[t] for t in terms):
            return None
        cid = self.ids.get(terms)
        if cid is None:
            cid = self.ids[terms] = self.base + len(self.members)
            self.members.append(terms)
        return cid

    def expand(self, t: int) -> tuple:
        return self.members[t - self.base] if t >= self.base else (t,)

    def arrays(self) -> dict:
        return dict(
            compound_members=np.array([t for m in self.members for t in m], dtype=np.int32),
            compound_offsets=np.cumsum([0] + [len(m) for m in self.members]).astype(np.int64),
        )


def _walk_class_arrays(walk_classes: list) -> dict:
    """The walks' byte classes of lexers built at compile time (``_cwalk.byte_classes``' results,
    None for a lexer built without them) as arrays that travel with the grammar, so that a first
    visit does not make them again: each lexer's class table (int64, its states × its classes, flat),
    its classes' count (0: none stored) and its byte classes (uint8 per byte). None stored: no arrays."""
    if not any(walk_classes):
        return {}
    tables = [np.zeros(0, dtype=np.int64) if w is None else np.frombuffer(w[0], dtype=np.int64) for w in walk_classes]
    return dict(
        lex_wc_counts=np.array([0 if w is None else w[2] for w in walk_classes], dtype=np.int64),
        lex_wc_offsets=np.cumsum([0] + [len(t) for t in tables]).astype(np.int64),
        lex_wc_tables=np.concatenate(tables),
        lex_wc_bytes=np.stack([np.zeros(256, dtype=np.uint8) if w is None else
                               np.frombuffer(w[1], dtype=np.int64).astype(np.uint8) for w in walk_classes]),
    )


def _expansion(compounds) -> tuple:
    """What each chosen id of ``compounds``' grammar stands for, as ``_cwalk.reach_sets`` reads it:
    ``(start, terminals, real ids, compounds counted)`` (a compound's members, a real terminal itself)."""
    n_real = compounds.base
    members = [(t,) for t in range(n_real)] + [tuple(m) for m in compounds.members]
    return (np.cumsum([0] + [len(m) for m in members]).astype(np.int64),
            np.array([t for m in members for t in m], dtype=np.int64), n_real, len(compounds.members))


def _reach_words(n_real: int) -> int:
    """The uint64 words of one of ``_cwalk.reach_sets``' bitsets over ``n_real`` real terminals."""
    return max(1, (n_real + 63) // 64)


def _ignored_bits(ignore, n_real: int) -> np.ndarray:
    """The ignored terminals as ``_cwalk.reach_sets``' bits (uint64 words)."""
    bits = np.zeros(_reach_words(n_real) * 64, dtype=bool)
    bits[[t for t in range(min(n_real, len(ignore))) if ignore[t]]] = True
    return np.packbits(bits, bitorder="little").view(np.uint64)


def _reach_arrays(parts: list, walk_classes: list, compounds, ignore) -> dict:
    """The reach sets of every lexer built at compile time (:meth:`_LazyReach._from_c`'s C fixpoint
    on the walks' class tables, ``walk_classes``), as arrays that travel with the grammar, so that a
    first visit does not compute them: per state its distinct set's index and its reach group
    (local to its lexer, int64, in the lexers' order), and each lexer's distinct sets (bitsets,
    uint8, offsets per lexer). None without the C extension or a lexer without its classes."""
    if _cwalk is None or not walk_classes or not all(walk_classes):
        return {}
    start, terms, n_real, _ = _expansion(compounds)
    ignored = _ignored_bits(ignore, n_real)
    index_of, groups, sets = [], [], []
    for (_, chosen), (rows, _, n_cls) in zip(parts, walk_classes):
        got = _cwalk.reach_sets(rows, n_cls, chosen.astype(np.int64), start, terms, n_real, ignored)
        index_of.append(np.frombuffer(got[0], dtype=np.int64))
        sets.append(np.frombuffer(got[1], dtype=np.uint8))
        groups.append(np.frombuffer(got[2], dtype=np.int64))
    return dict(
        lex_reach_index=np.concatenate(index_of),
        lex_reach_groups=np.concatenate(groups),
        lex_reach_sets=np.concatenate(sets),
        lex_reach_set_offsets=np.cumsum([0] + [len(x) for x in sets]).astype(np.int64),
    )


def _successors(lex_trans: np.ndarray) -> list[list[int]]:
    """Per state of a transition table (``[n, 256]``, or ``[n, classes]``; negative: none): its
    distinct successor states, ascending."""
    t = np.sort(lex_trans, axis=1)
    keep = t >= 0
    keep[:, 1:] &= t[:, 1:] != t[:, :-1]
    return [row[k].tolist() for row, k in zip(t, keep)]


def _reachable_terminals(lex_trans: np.ndarray, chosen: np.ndarray, ignore: list, succ=None, expand=None) -> list:
    """Per lexer state: the terminals a lexeme in progress there can still become (a tuple,
    ignored terminals left out), or None when nothing needs the parser's consent (a lexeme start,
    or a lexeme that can only become an ignored terminal) — then every stack agrees."""
    n = len(chosen)
    bits = [0] * n
    for s_, t in enumerate(chosen.tolist()):
        if t >= 0:
            for m in expand(t) if expand is not None else (t,):
                bits[s_] |= 1 << m
    if succ is None:
        succ = _successors(lex_trans)
    changed = True
    while changed:
        changed = False
        for s_ in range(n - 1, -1, -1):
            b = bits[s_]
            for x in succ[s_]:
                b |= bits[x]
            if b != bits[s_]:
                bits[s_] = b
                changed = True
    return [_reach_of_bits(b, ignore) for b in bits]


def _reach_of_bits(b: int, ignore) -> tuple | None:
    """A reach set from its bits: the terminals in ascending order, None when empty or when an
    ignored terminal is among them."""
    terms = []
    while b:  # set bits, lowest first
        low = b & -b
        terms.append(low.bit_length() - 1)
        b ^= low
    return None if not terms or any(ignore[t] for t in terms) else tuple(terms)


class _ReachSets:
    """The distinct reach sets of a lexer (:meth:`_LazyReach._from_c`), read as
    :func:`_reach_of_bits` on first use: a walk asks for the sets of a few end states. With
    ``ignored`` (the ignored terminals' bits, :func:`_ignored_bits`) a set is read in C
    (``_cwalk.reach_tuples``)."""

    __slots__ = ("_raw", "_step", "_ignore", "_read", "_ignored")

    def __init__(self, raw: bytes, step: int, ignore, ignored=None) -> None:
        self._raw, self._step, self._ignore, self._ignored = raw, step, ignore, ignored
        self._read: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self._raw) // self._step

    def __getitem__(self, i: int):
        got = self._read.get(i, _MISSING)
        if got is not _MISSING:
            return got
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = i * self._step
        raw = self._raw[k : k + self._step]
        got = (_reach_of_bits(int.from_bytes(raw, "little"), self._ignore) if self._ignored is None
               else index._cwalk.reach_tuples(raw, self._step, self._ignored)[0])
        return self._read.setdefault(i, got)  # (the first read is every reader's)


class _LazyReach:
    """``_reachable_terminals`` per lexer state, computed one lexer at a time on first use (a
    grammar with hundreds of contextual lexers visits few of them per request), and per state read
    off its lexer's distinct sets on first use (a walk asks for the reach of a few end states)."""

    def __init__(self, grammar: PushdownGrammar):
        # a weak reference: the grammar holds this table, and a cycle would leave a dropped grammar
        # (megabytes of tables and caches) to the cyclic garbage collector, a long pause later
        self._grammar = weakref.ref(grammar)
        self._owner = grammar._owner  # (the grammar's list, grown in place as lexers are built)
        self._values: dict[int, object] = {}  # state → its reach, as read (the C mask reads it)
        self._groups: dict[int, tuple] = {}  # lexer → reach group per local state (see groups)
        self._sets: dict[int, tuple] = {}  # lexer → (start, distinct set per local state, the sets)
        self._expansion = None  # (start, terminals, real ids, compounds): what each chosen id stands for
        self._ignored_bits = None  # the ignored terminals as the C sets' bits (uint64 words)

    def __getitem__(self, q: int):
        value = self._values.get(q, _MISSING)
        if value is not _MISSING:
            return value
        lexer = self._owner[q]
        got = self._sets.get(lexer)
        if got is None:
            self._compute(lexer)
            got = self._sets[lexer]
        lo, index_of, sets = got
        # (the first value read is every reader's: threads reading at once keep one object)
        return self._values.setdefault(q, None if q == lo else sets[index_of[q - lo]])

    def groups(self, lexer: int) -> tuple:
        """Per local state of a built ``lexer``: its reach group, as an int64 array and as a list: 0
        where the lexeme needs no parser check (the reach is None: a lexeme start, or only ignored
        terminals ahead), else one group per distinct reach. Only the reach decides whether a
        token's lexeme is viable, so walks collect one row per group (the tokens ending at the
        states of one string lexeme, one state per character count, fall in one row)."""
        got = self._groups.get(lexer)
        if got is None:
            self._compute(lexer)
            got = self._groups[lexer]
        return got

    def _compute(self, lexer: int) -> None:
        g = self._grammar()
        lo = g._lexer_lo[lexer]
        chosen = g._blocks[lexer][1]
        stored = "lex_reach_index" in g.arrays  # (computed at compile time, with the lexers)
        if stored or index._cwalk is not None:
            index_of, sets, group = (self._stored if stored else self._from_c)(lexer, chosen)
            index_of = index_of.tolist()  # (read one state at a time)
        else:
            values = _reachable_terminals(None, chosen, g._ignore, g._local_successors(lexer), g._compounds.expand)
            values[0] = None
            ids: dict = {None: 0}
            group = np.array([ids.setdefault(v, len(ids)) for v in values], dtype=np.int64)
            index_of, sets = group, list(ids)
        self._sets.setdefault(lexer, (lo, index_of, sets))  # (the first computed is every reader's)
        self._groups.setdefault(lexer, (group, group.tolist()))

    def _from_c(self, lexer: int, chosen: np.ndarray) -> tuple:
        """:func:`_reachable_terminals` by the C fixpoint (``_cwalk.reach_sets``): each local state's
        distinct set (an index), the distinct sets (read as reach sets: each a tuple, or None when
        empty or holding an ignored terminal), and the reach groups (int64 per state: 0 for None and
        the lexeme start, the other sets numbered 1.. in their order among the distinct ones)."""
        g = self._grammar()
        compounds = g._compounds
        if self._expansion is None or self._expansion[3] != len(compounds.members):  # (lexers built later add some)
            self._expansion = _expansion(compounds)
        start, terms, n_real, _ = self._expansion
        ct = g._walker(lexer)[0]
        ignored = self._ignored()
        # distinct bitsets are distinct reach sets, but several may read None (an ignored terminal,
        # or none): those states form group 0 with the lexeme start, the others one group per set
        # in use (numbered in the sets' order)
        group, sets, groups = index._cwalk.reach_sets(ct, ct.shape[1], g._chosen_of(lexer), start, terms, n_real,
                                                      ignored)
        return (np.frombuffer(group, dtype=np.int64), self._read_sets(sets, 8 * _reach_words(n_real)),
                np.frombuffer(groups, dtype=np.int64))

    def _ignored(self) -> np.ndarray:
        """The ignored terminals as the C reach sets' bits (:func:`_ignored_bits` over the real
        terminals: fixed for the grammar), made once."""
        if self._ignored_bits is None:
            g = self._grammar()
            self._ignored_bits = _ignored_bits(g._ignore, g._compounds.base)
        return self._ignored_bits

    def _read_sets(self, raw: bytes, step: int) -> _ReachSets:
        """A lexer's distinct reach bitsets as reach sets (:class:`_ReachSets`: each read on first
        use, in C where it is built)."""
        return _ReachSets(raw, step, self._grammar()._ignore, None if index._cwalk is None else self._ignored())

    def _stored(self, lexer: int, chosen: np.ndarray) -> tuple:
        """:meth:`_from_c`'s results as the compile computed them with the lexers (``lex_reach_*``
        arrays, :func:`_reach_arrays`)."""
        g = self._grammar()
        a, lo = g.arrays, g._lexer_lo[lexer]
        s0, s1 = int(a["lex_reach_set_offsets"][lexer]), int(a["lex_reach_set_offsets"][lexer + 1])
        sets = self._read_sets(a["lex_reach_sets"][s0:s1].tobytes(), 8 * _reach_words(g._compounds.base))
        return a["lex_reach_index"][lo : lo + len(chosen)], sets, a["lex_reach_groups"][lo : lo + len(chosen)]


# -- compile: LALR(1) tables through lark ---------------------------------------------------------


#: An action code at or above this value indexes the conflict table: a state where the grammar is
#: not LALR(1) and several actions are tried at once (generalised LR).
MULTI = 1 << 30


def _lalr_tables(grammar: Grammar):
    """LALR(1) tables (:mod:`dotvllm_plugin.lalr`: lark's construction on integer symbols), keeping
    every action where lark's LALR parser would resolve a conflict: such states are run as
    generalised LR (all actions, each on its own copy of the stack), which accepts what lark's
    Earley parser accepts."""
    term_names = [t.name for t in grammar.terminals]
    rules = list(dict.fromkeys((r.origin, tuple(r.expansion)) for r in grammar.rules))
    try:
        if USE_C_LALR and _C_LALR:
            got = _lalr_c(rules, term_names, grammar.start)
            if got is not None:
                return got
        from .lalr import lalr_tables

        tables = lalr_tables(rules, set(term_names), grammar.start)
    except ValueError as e:
        raise GrammarError(f"the grammar cannot be analysed: {e}") from None
    return _packed(tables, rules, term_names)


def _lalr_c(rules: list[tuple], term_names: list[str], start: str) -> dict | None:
    """:func:`_packed` of :func:`dotvllm_plugin.lalr.lalr_tables` by ``_cwalk.lalr_packed`` (the
    symbols numbered here as lalr_tables numbers them), None for names the C function does not
    take apart (a name both terminal and rule, the augmented rule's or $END's name): those go the
    Python way."""
    terminals = set(term_names)
    defined = {o for o, _ in rules}
    root = "$root_" + start
    if (_LALR_END in terminals or root in defined or root in terminals or start in terminals
            or not terminals.isdisjoint(defined)):
        return None
    nonterms = sorted(defined | {root})
    terms = sorted(terminals)
    n_nt = len(nonterms)
    sym = dict(zip(nonterms, range(n_nt)))
    sym.update(zip(terms, range(n_nt, n_nt + len(terms))))
    action, n_states, goto, rule_len, rule_origin, conf_offsets, conf_codes, end, accepts, rule_keys = (
        _cwalk.lalr_packed(rules, term_names, sym, nonterms, terms, bisect.bisect_left(nonterms, root), start, MULTI))
    i32 = np.int32
    return dict(
        action=np.frombuffer(action, dtype=i32).reshape(n_states, len(term_names) + 1),
        goto=np.frombuffer(goto, dtype=i32).reshape(n_states, n_nt - 1),
        rule_len=np.frombuffer(rule_len, dtype=i32),
        rule_origin=np.frombuffer(rule_origin, dtype=i32),
        conf_offsets=np.frombuffer(conf_offsets, dtype=i32),
        conf_codes=np.frombuffer(conf_codes, dtype=i32),
        start_state=0,
        end_state=end,
        accepts=accepts,
        rule_keys=rule_keys,
    )


def _packed(tables, rules: list[tuple], term_names: list[str]) -> dict:
    """The arrays of :class:`PushdownGrammar` from :class:`dotvllm_plugin.lalr.Tables` (its rule
    numbers index ``rules``)."""
    from .lalr import END

    nonterms = sorted({o for o, _ in rules})
    nt_idx = {n: i for i, n in enumerate(nonterms)}
    t_idx = {n: i for i, n in enumerate(term_names)}
    end_col = len(term_names)
    t_idx[END] = end_col
    # each symbol's action column (terminals, END) and goto column (nonterminals), -1 where none
    t_col = [t_idx.get(name, -1) for name in tables.symbols]
    nt_col = [nt_idx.get(name, -1) for name in tables.symbols]
    n_states = len(tables.shifts)
    action = np.zeros((n_states, end_col + 1), dtype=np.int32)
    goto = np.full((n_states, len(nonterms)), -1, dtype=np.int32)
    rule_code: dict[int, int] = {}
    rule_len: list[int] = []
    rule_origin: list[int] = []
    rule_keys: list[tuple] = []
    accepts: list[list[int]] = []
    conflicts: list[list[int]] = []
    order = {r: k for k, r in enumerate(sorted(range(len(rules)), key=lambda r: rules[r]))}

    def reduce_code(r: int) -> int:
        ri = rule_code.get(r)
        if ri is None:
            ri = rule_code[r] = len(rule_len)
            rule_len.append(len(rules[r][1]))
            rule_origin.append(nt_idx[rules[r][0]])
            rule_keys.append(rules[r])
        return -(ri + 1)

    codes_of: dict[tuple, list[int]] = {}  # the rules reduced on one lookahead → their codes
    at_row, at_col, at_code = [], [], []
    g_row, g_col, g_to = [], [], []
    for i in range(n_states):
        codes: dict[int, list[int]] = {}
        for x, j in tables.shifts[i].items():
            codes[t_col[x]] = [j + 1]
        for x, j in tables.gotos[i].items():
            g_row.append(i), g_col.append(nt_col[x]), g_to.append(j)
        for la, rs in tables.reduces[i].items():
            key = tuple(rs)
            cs = codes_of.get(key)
            if cs is None:
                cs = codes_of[key] = [reduce_code(r) for r in sorted(rs, key=order.__getitem__)]
            col = t_col[la]
            codes[col] = codes[col] + cs if col in codes else cs  # (the lists are shared: never extended)
        for col, cs in codes.items():
            at_row.append(i), at_col.append(col)
            if len(cs) == 1:
                at_code.append(cs[0])
            else:
                at_code.append(MULTI + len(conflicts))
                conflicts.append(cs)
        own = sorted(codes)
        if own and own[-1] == end_col:
            own.pop()
        accepts.append(own)
    action[at_row, at_col] = at_code
    goto[g_row, g_col] = g_to
    conf_offsets = np.cumsum([0] + [len(c) for c in conflicts]).astype(np.int32)
    conf_codes = np.array([x for c in conflicts for x in c], dtype=np.int32)
    return dict(
        action=action,
        goto=goto,
        rule_len=np.array(rule_len, dtype=np.int32),
        rule_origin=np.array(rule_origin, dtype=np.int32),
        conf_offsets=conf_offsets,
        conf_codes=conf_codes,
        start_state=int(tables.start),
        end_state=int(tables.end),
        accepts=accepts,
        rule_keys=rule_keys,  # (origin, expansion) of each rule code
    )


def _check_terminal_regex(t: Terminal) -> None:
    from .regex import check_regex

    try:
        check_regex(t.regex)
    except GrammarError as e:
        raise type(e)(f"{t.describe()}: {e}") from e


def check_pushdown(grammar: Grammar) -> None:
    """The part of :func:`pushdown_tables` that is cheap and bounded by the grammar's size (run in
    the API server for every request): structure, every terminal's regex, LALR(1) tables. The
    lexer automata and the terminal-collision check are left to the compile worker."""
    grammar.check()
    for t in grammar.terminals:
        _check_terminal_regex(t)
    _lalr_tables(grammar)


def pushdown_tables(grammar: Grammar, *, max_stack_depth: int | None = None) -> dict:
    """Everything of a :class:`PushdownGrammar` but the vocabulary: parser tables and lexer
    automata. Raises :class:`GrammarError` for what cannot be enforced exactly."""
    grammar.check()
    terms = grammar.terminals
    if grammar.lexing == "lark":
        dfas = _terminal_dfas(grammar)  # a bad terminal is reported before the parser tables
    else:
        # the automata that may be over budget before the parser tables (an over-budget JSON
        # schema is retried with lower bounds: its first tables would be wasted time)
        dfas = _terminal_dfas(grammar, _small_terminal)
    tables = _lalr_tables(grammar)
    ignore = [i for i, t in enumerate(terms) if t.name in set(grammar.ignore)]
    lexer_of_set: dict[tuple, int] = {}
    ignored = frozenset(ignore)
    sets = [ignored.union(acc) for acc in tables["accepts"]]
    n_own = len(set(sets))
    if grammar.lexing != "lark":
        sets = _shared_lexer_sets(sets, terms, dfas)
    lexer_of: dict[frozenset, int] = {}  # (parser states share a few sets: each sorted once)
    for members in sets:
        if members not in lexer_of:
            lexer_of[members] = lexer_of_set.setdefault(tuple(sorted(members)), len(lexer_of_set))
    lexer_of_state = np.array([lexer_of[members] for members in sets], dtype=np.int32)
    members = list(lexer_of_set)
    is_ignore = np.zeros(len(terms), dtype=bool)
    is_ignore[ignore] = True
    # (counted before sharing: the grammar's size decides, as it did before lexers were shared)
    lazy = grammar.lexing != "lark" and n_own >= LAZY_MIN_LEXERS
    if grammar.lexing != "lark" and not lazy:
        dfas = _terminal_dfas(grammar, None, dfas)
    if not lazy:
        # every lexer now: the collision check refuses at compile time what lark would split
        # differently
        fidelity = grammar.lexing == "lark"
        compounds = None if fidelity else _Compounds(len(terms), is_ignore.tolist())
        parts, lo = [], 0
        walk_classes: list = []  # (per lexer built in C: its walks' byte classes, made with it)
        for key in members:  # (each lexer's live targets moved to its place as it is built)
            classes: list = []
            parts.append(_build_lexer(list(key), terms, dfas, fidelity, compounds, offset=lo, walk_classes=classes))
            walk_classes.append(classes[0] if classes else None)
            lo += len(parts[-1][1])
        offsets = np.cumsum([0] + [len(c) for _, c in parts]).astype(np.int64)
        lex_trans = np.concatenate([t for t, _ in parts]).astype(np.int32, copy=False)
        compounds = compounds or _Compounds(len(terms), ())
        lexers = dict(
            lex_offsets=offsets,
            lex_trans=lex_trans,
            lex_chosen=np.concatenate([c for _, c in parts]).astype(np.int32),
            **compounds.arrays(),
            **_walk_class_arrays(walk_classes),
            **_reach_arrays(parts, walk_classes, compounds, is_ignore.tolist()),
        )
    else:
        # lexers built on first visit (one per parser state with its own candidates; a request
        # visits few), and small terminals' automata too (their regexes travel as text)
        built = [d for d in dfas if d is not None]
        regex_bytes = [b"" if d is not None else t.regex.encode() for t, d in zip(terms, dfas)]
        exclude_bytes = [json.dumps(t.exclude).encode() if d is None and t.exclude else b"" for t, d in zip(terms, dfas)]
        lexers = dict(
            lexer_members=np.array([t for key in members for t in key], dtype=np.int32),
            lexer_member_offsets=np.cumsum([0] + [len(key) for key in members]).astype(np.int64),
            tdfa_trans=(np.concatenate([d.transitions for d in built]) if built
                        else np.zeros((0, 256), dtype=np.int32)).astype(np.int32),
            tdfa_offsets=np.cumsum([0] + [0 if d is None else d.n_states for d in dfas]).astype(np.int64),
            tdfa_accepting=(np.concatenate([d.accepting for d in built]) if built
                            else np.zeros(0, dtype=bool)).astype(bool),
            tdfa_initial=np.array([-1 if d is None else d.initial for d in dfas], dtype=np.int64),
            lazy_regex=np.frombuffer(b"".join(regex_bytes), dtype=np.uint8).copy(),
            lazy_regex_offsets=np.cumsum([0] + [len(b) for b in regex_bytes]).astype(np.int64),
            lazy_exclude=np.frombuffer(b"".join(exclude_bytes), dtype=np.uint8).copy(),
            lazy_exclude_offsets=np.cumsum([0] + [len(b) for b in exclude_bytes]).astype(np.int64),
            term_nonempty=np.array([t.nonempty for t in terms], dtype=bool),
            term_rank=np.array(_ranks(terms), dtype=np.int64),
            **_Compounds(len(terms), ()).arrays(),
        )
    return dict(
        kind=grammar.kind,
        source=grammar.source,
        terminal_names=tuple(t.name for t in terms),
        start_state=tables["start_state"],
        end_state=tables["end_state"],
        max_stack_depth=int(default_stack_depth() if max_stack_depth is None else max_stack_depth),
        arrays=dict(
            action=tables["action"],
            goto=tables["goto"],
            rule_len=tables["rule_len"],
            rule_origin=tables["rule_origin"],
            conf_offsets=tables["conf_offsets"],
            conf_codes=tables["conf_codes"],
            lexer_of_state=lexer_of_state,
            is_ignore=is_ignore,
            **lexers,
        ),
    )


def _shared_lexer_sets(sets: list[frozenset], terms, dfas) -> list[frozenset]:
    """The terminal set each parser state's lexer is built for: its own, or a larger one that
    lexes every text of its own alike (longest-match grammars only).

    A parser state's candidates are the terminals it takes; an object's key positions take
    nested sets (after the ``i``-th property, the keys of the later ones), one lexer each: a
    schema with ``n`` optional properties built and walked ``n`` lexers of up to ``n`` keys.
    Here a set is served by a superset that adds only literal terminals (keys, punctuation)
    none of whose texts starts with a word of the set's own terminals: a text the own lexer
    reads as a lexeme is read the same (greedy lexing never runs on into an added literal, and
    no added literal types a text as well). The parser refuses an added terminal as it refuses
    any other, and the masks check each candidate with the parser already, so one lexer (and
    its walks) serves all of an object's key positions.
    """
    from .regex import _literal_bytes
    from .regex.exclusion import is_cut

    distinct = set(sets)
    literal: dict[int, bytes | None] = {}
    for i in frozenset().union(*distinct):
        t = terms[i]
        literal[i] = None if t.exclude or t.tree is None else _literal_bytes(t.tree)
    non_literal = frozenset(i for i, b in literal.items() if b is None)
    buckets: dict[frozenset, list[frozenset]] = {}
    for s in distinct:  # the same non-literal members, or adding literals alone cannot serve
        buckets.setdefault(s & non_literal, []).append(s)
    by_text: dict[bytes, set] = {}
    for i, b in literal.items():
        if b is not None:
            by_text.setdefault(b, set()).add(i)

    def literal_prefixes(a: bytes) -> frozenset:  # the literal terminals that are prefixes of a
        return frozenset(i for k in range(1, len(a) + 1) for i in by_text.get(a[:k], ()))

    def starts_with_word(a: bytes, i: int) -> bool:  # some word of terminal i is a prefix of a
        t = terms[i]
        if dfas[i] is not None:
            dfa, cut = dfas[i], None
        elif t.exclude:  # the automaton before the cut and the cut word by word
            dfa, cut = _uncut_dfa(t), t.exclude
        else:
            dfa, cut = _terminal_dfa(t), None
        q, step, accepting = dfa.initial, dfa.transitions.item, dfa.accepting.item
        for k, b in enumerate(a, 1):
            q = step(q, b)
            if q < 0:
                return False
            if accepting(q) and (cut is None or not is_cut(a[:k], cut)):
                return True
        return False

    host: dict[frozenset, frozenset] = {}
    for others, group in buckets.items():
        if len(group) < 2:
            continue
        group.sort(key=len, reverse=True)
        # an added literal a is safe beside a set s when no member of s has a word that is a
        # prefix of a: the literal members among a's prefixes, and the non-literal members
        # (the same for the whole bucket) by their automata
        clashes: dict[int, frozenset | None] = {}

        def clash_set(a: int):
            got = clashes.get(a, False)
            if got is False:
                text = literal[a]
                got = clashes[a] = (None if any(starts_with_word(text, i) for i in others)
                                    else literal_prefixes(text))
            return got

        hosts: list[frozenset] = []  # largest first, and so is each list of hosts_with
        hosts_with: dict[int, list[frozenset]] = {}  # a literal → the hosts holding it
        for s in group:
            own = s - others
            candidates = hosts_with.get(min(own), ()) if own else hosts
            for h in candidates:
                if s < h and all((c := clash_set(a)) is not None and not c & s for a in h - s):
                    host[s] = h
                    break
            else:
                hosts.append(s)
                for a in own:
                    hosts_with.setdefault(a, []).append(s)
    return [host.get(s, s) for s in sets]


def _sparse_rows(table: np.ndarray) -> list[dict]:
    """Per row, ``{column: value}`` of the entries >= 0 (a goto table is ~0.1 % filled: listing it
    whole took ~5 ms of a 1,325-state grammar's load)."""
    rows: list[dict] = [{} for _ in range(len(table))]
    r, c = np.nonzero(table >= 0)
    for i, j, v in zip(r.tolist(), c.tolist(), table[r, c].tolist()):
        rows[i][j] = v
    return rows


#: The vocabulary cache's entry of :func:`pinned_walks`.
_PINNED_WALKS = "pinned_base_walks"


def pinned_walks(vocabulary) -> dict:
    """The walks kept for the process's life with ``vocabulary`` (ball signature → walk): those
    from inside a JSON string value and an undeclared key (:func:`pin_base_walks` on the JSON
    translator's probe), the same for every schema and walked in most of them. Made on the first
    walk a process needs for that vocabulary: in the process that computes masks (the engine), not
    in compile workers (~30 ms for a 131k vocabulary, counted in that mask)."""
    got = vocabulary._cache.get(_PINNED_WALKS)
    if got is None:
        from .errors import DotvllmError
        from .grammar.json_schema import STRING_WALK_PROBE, STRING_WALK_TEXTS, json_schema_to_ir

        got = vocabulary._cache.setdefault(_PINNED_WALKS, {})  # (first: the probe's walks come through here)
        try:
            with runs.pinned():  # (and the run tables of those walks)
                pin_base_walks(compile_pushdown(json_schema_to_ir(STRING_WALK_PROBE), vocabulary), STRING_WALK_TEXTS)
        except DotvllmError:  # a vocabulary that cannot spell a JSON string: nothing to share
            pass
    return got


def pin_base_walks(grammar: PushdownGrammar, texts) -> None:
    """Keep for the process's life, with ``grammar``'s vocabulary, the walks of
    :meth:`PushdownGrammar._base_of` from every state of the lexers that the ``texts`` (bytes,
    each from the start) lead into whose ball ends only the terminal of the state a text leads to
    (the inside of a JSON string value, of an undeclared key: its entry, escapes, split characters),
    by ball signature: any grammar of that vocabulary whose state has the same ball takes the walk
    instead of walking. A ball signature holds everything the walk reads
    (:meth:`PushdownGrammar._canonical`), and the walk's rows and exits are the vocabulary's, not
    the grammar's."""
    pinned = grammar.vocabulary._cache.setdefault(_PINNED_WALKS, {})
    for text in texts:
        q, stack = grammar.initial_state()
        got = grammar.step(q, stack, text)
        if got is None or got is _FORK:
            raise ValueError(f"pin_base_walks: {text!r} is not a prefix of the grammar's language")
        terms = grammar._canonical(got[0])[2]
        lexer = grammar._owner[got[0]]
        lo = grammar._lexer_lo[lexer]
        for r in range(lo + 1, lo + len(grammar._blocks[lexer][1])):  # (a lexeme start is the lexer's own)
            _, sig, own = grammar._canonical(r)
            if own == terms and sig not in pinned:
                grammar._base_of(r)
                pinned[sig] = grammar._base_shared[sig][:3]


def compile_pushdown(grammar: Grammar, vocabulary, *, max_stack_depth: int | None = None) -> PushdownGrammar:
    """Compile ``grammar`` for ``vocabulary`` (token masks are computed on first visit and cached)."""
    return PushdownGrammar(vocabulary=vocabulary, **pushdown_tables(grammar, max_stack_depth=max_stack_depth))


# -- the compiled grammar ---------------------------------------------------------------------------


def _donor_parts(take: np.ndarray, node_first: np.ndarray, off: np.ndarray, exits: tuple, ball: np.ndarray,
                 groups: np.ndarray, pending: tuple):
    """What a donor walk (:meth:`PushdownGrammar._donor_walk`) keeps of its donor's exits and where
    its pending rows go: ``(exits, mapped)``, the exit groups ``((terminal, levels, nodes), ...)``
    less the nodes whose token's first byte is not taken (``take[node_first[off[level] + node]]``;
    a group with none left is dropped), and per pending state (local) the first state of ``ball``
    (local) in its group; None when one has none there. In C where the extension is built (numpy
    here is the reference: tests compare)."""
    if _cwalk is not None and USE_C_DONOR_PARTS:
        got = _cwalk.donor_parts(take, node_first, off, tuple(exits), ball, groups, pending)
        if got is None:
            return None
        kept, mapped = got
        return [g if isinstance(g[1], np.ndarray) else
                (g[0], np.frombuffer(g[1], dtype=np.int64), np.frombuffer(g[2], dtype=np.int64)) for g in kept], mapped
    kept = []
    for t, level, node in exits:
        keep = take[node_first[off[level] + node]].view(bool)
        if keep.all():
            kept.append((t, level, node))
        elif keep.any():
            kept.append((t, level[keep], node[keep]))
    ball_groups = groups[ball]
    mapped = []
    for s in pending:
        at = np.flatnonzero(ball_groups == groups[s])
        if not len(at):
            return None
        mapped.append(int(ball[at[0]]))
    return kept, tuple(mapped)


class PushdownGrammar:
    """A compiled context-free constraint for one vocabulary. Immutable tables plus per-process
    caches of masks; share it between matchers. Build with :func:`compile_pushdown`."""

    engine = "pushdown"

    def __init__(self, *, kind, source, vocabulary, terminal_names, start_state, end_state, max_stack_depth, arrays):
        self.kind = kind
        self.source = source
        self.vocabulary = vocabulary
        self.terminal_names = tuple(terminal_names)
        self.start_state = int(start_state)
        self.end_state = int(end_state)
        self.max_stack_depth = int(max_stack_depth)
        self.arrays = arrays
        a = arrays
        # (the parser tables as tuples of ints, which the cyclic collector stops tracking at its first
        # pass: as lists, the action table's hundreds of thousands of entries in the largest grammars
        # were traversed by every full collection while masks were computed)
        self._action = tuple(map(tuple, a["action"].tolist()))
        self._goto = tuple(_sparse_rows(a["goto"]))
        self._rule_len = tuple(a["rule_len"].tolist())
        self._rule_origin = tuple(a["rule_origin"].tolist())
        offs, codes = a["conf_offsets"].tolist(), a["conf_codes"].tolist()
        self._conf = tuple(tuple(codes[offs[i] : offs[i + 1]]) for i in range(len(offs) - 1))
        self.deterministic = not self._conf
        self._lexer_of_state = a["lexer_of_state"].tolist()
        self._ignore = a["is_ignore"].tolist()
        self._end = len(self.terminal_names)
        if "compound_offsets" in a:
            co, cm = a["compound_offsets"].tolist(), a["compound_members"].tolist()
            known = [cm[co[i] : co[i + 1]] for i in range(len(co) - 1)]
        else:
            known = []
        self._compounds = _Compounds(self._end, self._ignore, known)
        # Lexers: global state ids in the order lexers are built; each lexer's block of rows.
        self._build_lock = threading.Lock()
        self._rows: list = []  # [state] → its row (256 next states, -1), a list once first stepped from
        self._chosen: list[int] = []
        self._owner: list[int] = []
        self._is_start: set[int] = set()
        self._blocks: dict[int, tuple] = {}  # lexer → (trans int32 [n, 256] global ids, chosen)
        self._succ: dict[int, list] = {}
        if "lex_trans" in a:
            self.n_lexers = len(a["lex_offsets"]) - 1
            self._lexer_lo = a["lex_offsets"][:-1].tolist()
            lo = a["lex_offsets"].tolist()
            self._rows = [None] * int(lo[-1])
            self._chosen = a["lex_chosen"].tolist()
            self._owner = np.repeat(np.arange(self.n_lexers), np.diff(a["lex_offsets"])).tolist()
            self._is_start = set(self._lexer_lo)
            lex_trans = np.ascontiguousarray(a["lex_trans"])  # (row-major blocks: the C step reads rows)
            for i in range(self.n_lexers):
                self._blocks[i] = (lex_trans[lo[i] : lo[i + 1]], a["lex_chosen"][lo[i] : lo[i + 1]])
        else:
            self.n_lexers = len(a["lexer_member_offsets"]) - 1
            self._lexer_lo = [-1] * self.n_lexers
            self._term_dfas: list = [None] * len(self.terminal_names)
        # what the C step reads (lists and dicts that grow in place as lexers are built)
        self._step_tables = (self._owner, self._lexer_lo, self._blocks, self._chosen, self._ignore,
                             self._lexer_of_state, _FORK)
        self._lexer_terms = None  # (built on first use)
        self._W = (vocabulary.size + 31) // 32
        self._eos = np.array(vocabulary.eos_token_ids, dtype=np.int64)
        self._max_token_len = vocabulary.max_token_len
        # masks are cached for stacks shallower than this (cacheable): a push can be refused nearer
        self._cache_below = self.max_stack_depth - self._max_token_len - 2
        self._reach = _LazyReach(self)
        self._lock = threading.Lock()
        self._walkers: dict[int, tuple] = {}
        self._run_memo: dict[int, dict] = {}  # lexer → its character runs' successor functions
        self._base: dict[int, tuple] = {}
        self._base_shared: dict[bytes, tuple] = {}
        self._shift_memo: dict[tuple, bool] = {}  # (parser state, id of a reach set) → shifts one
        self._chosen64: dict[int, np.ndarray] = {}  # lexer → its states' terminals as int64 (C reads them)
        self._cross_cache: dict[tuple, tuple] = {}
        self._cross_walks: dict[tuple, tuple] = {}  # (lexer, exit levels, exit nodes) → the walk
        self._sub_cache: dict[tuple, dict] = {}
        self._sub_count = 0
        self._unit_memo: dict[tuple, int] = {}  # (below, state, terminal) → state after unit reductions
        self._lr_tables = None  # (capsule of the parser tables for the C probe, compounds it knows)
        self._masks: dict = {}
        self._walk_classes: dict[int, tuple] = {}  # lexer built here → its walks' byte classes (_walker's)
        self._lexer_args: dict[int, tuple] = {}  # lexer → what its walks read (:meth:`_walk_args`)
        self._ball_readers: dict[int, object] = {}  # lexer → its tables as the C balls read them (:meth:`_canonical`)
        self._walk_caps: dict[int, object] = {}  # lexer → its tables as the C walks read them (:meth:`_walk_cap`)
        self._n_cached = 0
        self.mask_cache_size = MASK_CACHE_SIZE
        self._miss_ctx = None  # (what mask_missed hands the C recursion: built on the first miss)
        self._prepared = False  # (:meth:`_prepare` ran: on the first miss)
        self._or_cache: dict = {}  # the C recursion's ORs by their rows' identities (held: ids stay theirs)
        # the keys of the walks' caches as numbers: a base walk's (signature id, terminals) and each
        # (key, terminal, lexer) step of a path from it (cheap to hash and compare, as keys of keys)
        self._paths: dict[tuple, int] = {}
        self._zero_row = np.zeros(self._W, dtype=np.int32)  # (the mask of no token: shared, never written)
        self._zero_row.flags.writeable = False

    # -- lexers -----------------------------------------------------------------------------------

    def _start(self, lexer: int) -> int:
        """The lexeme-start state of ``lexer`` (built now if it was not yet)."""
        lo = self._lexer_lo[lexer]
        return lo if lo >= 0 else self._build(lexer)

    def _terminal_dfa(self, t: int):
        from .regex import ByteDFA

        d = self._term_dfas[t]
        if d is None:
            a = self.arrays
            if a["tdfa_initial"][t] < 0:  # compiled on first use (small by construction)
                r0, r1 = int(a["lazy_regex_offsets"][t]), int(a["lazy_regex_offsets"][t + 1])
                regex = bytes(a["lazy_regex"][r0:r1]).decode()
                x0, x1 = int(a["lazy_exclude_offsets"][t]), int(a["lazy_exclude_offsets"][t + 1])
                exclude = tuple(json.loads(bytes(a["lazy_exclude"][x0:x1]))) if x1 > x0 else ()
                # (only generated grammars leave terminals to first use: their text finds the
                # pinned automata, the JSON translator's fixed lexemes and the keys' uncut one)
                d = _terminal_dfa(Terminal(self.terminal_names[t], regex, nonempty=bool(a["term_nonempty"][t]),
                                           exclude=exclude), generated=True)
            else:
                lo, hi = int(a["tdfa_offsets"][t]), int(a["tdfa_offsets"][t + 1])
                d = _with_classes(ByteDFA(transitions=a["tdfa_trans"][lo:hi], accepting=a["tdfa_accepting"][lo:hi],
                                          initial=int(a["tdfa_initial"][t])))
            self._term_dfas[t] = d
        return d

    def _build(self, lexer: int) -> int:
        with self._build_lock:
            if self._lexer_lo[lexer] >= 0:
                return self._lexer_lo[lexer]
            a = self.arrays
            m0, m1 = int(a["lexer_member_offsets"][lexer]), int(a["lexer_member_offsets"][lexer + 1])
            members = a["lexer_members"][m0:m1].tolist()
            dfas = [None] * len(self.terminal_names)
            for t in members:
                dfas[t] = self._terminal_dfa(t)
            terms = self._lexer_terms
            if terms is None:  # the candidates' order (ties between equal lexemes) as the compile computed it
                rank = a["term_rank"].tolist()
                terms = self._lexer_terms = tuple(
                    Terminal(name, "", priority=-rank[i]) for i, name in enumerate(self.terminal_names)
                )
            lo = len(self._chosen)
            classes: list = []
            trans, chosen = _build_lexer(members, terms, dfas, False, self._compounds, offset=lo, walk_classes=classes)
            if classes:  # (what _walker reads, made with the lexer)
                self._walk_classes[lexer] = classes[0]
            self._blocks[lexer] = (trans, chosen)
            self._rows.extend([None] * len(chosen))
            self._chosen.extend(chosen.tolist())
            self._owner.extend([lexer] * len(chosen))
            self._is_start.add(lo)
            self._lexer_lo[lexer] = lo  # last: other threads read it without the lock
            return lo

    def _row(self, q: int) -> list:
        """State ``q``'s transitions as a list (made on first use: a lexer's table as lists would be
        256 entries per state, most of them never stepped from)."""
        lexer = self._owner[q]
        row = self._rows[q] = self._blocks[lexer][0][q - self._lexer_lo[lexer]].tolist()
        return row

    def _chosen_of(self, lexer: int) -> np.ndarray:
        """A built ``lexer``'s ``chosen`` (local states) as int64, the form the C helpers read."""
        got = self._chosen64.get(lexer)
        if got is None:
            got = self._chosen64[lexer] = self._blocks[lexer][1].astype(np.int64)
        return got

    def _local_successors(self, lexer: int) -> list[list[int]]:
        """Distinct successors of each state of a built ``lexer``, in its local numbering."""
        got = self._succ.get(lexer)
        if got is None:  # (from the class table: a column per byte class, not per byte)
            got = self._succ[lexer] = _successors(self._walker(lexer)[0])
        return got

    def _build_all(self) -> None:
        for lexer in range(self.n_lexers):
            self._start(lexer)

    # -- facts ------------------------------------------------------------------------------------

    @property
    def words(self) -> int:
        """Width of a packed mask row (int32 words)."""
        return self._W

    @property
    def n_parser_states(self) -> int:
        return len(self._action)

    @property
    def n_lexer_states(self) -> int:
        return len(self._chosen)

    @property
    def memory_bytes(self) -> int:
        return int(sum(x.nbytes for x in self.arrays.values()))

    def __repr__(self) -> str:
        return (
            f"PushdownGrammar(kind={self.kind!r}, parser_states={self.n_parser_states}, "
            f"lexers={self.n_lexers}, lexer_states={self.n_lexer_states})"
        )

    def initial_state(self):
        s = self.start_state
        return self._start(self._lexer_of_state[s]), (s, None, 1)

    # -- parser ----------------------------------------------------------------------------------

    def feed(self, stack, term: int):
        """LALR step on a linked stack (deterministic grammars): the new stack, ``_ACCEPT`` (``$END``
        accepted), or None."""
        action, goto, rule_len, rule_origin = self._action, self._goto, self._rule_len, self._rule_origin
        limit = self.max_stack_depth
        while True:
            code = action[stack[0]][term]
            if code == 0:
                return None
            if code > 0:
                if stack[2] >= limit:
                    return None
                return (code - 1, stack, stack[2] + 1)
            r = -code - 1
            for _ in range(rule_len[r]):
                stack = stack[1]
            g = goto[stack[0]][rule_origin[r]]
            if term == self._end and g == self.end_state:
                return _ACCEPT
            stack = (self._unit_top(stack[0], g, term), stack, stack[2] + 1)

    def _unit_top(self, below: int, state: int, term: int) -> int:
        """The state on top of ``below`` once ``term`` has caused, one after another, the reductions
        by one-symbol rules that ``state`` and its successors take on it alone (no conflict): each
        pops the top and reads only ``below``, so the result depends on these three. An object's
        optional properties skipped before the next key are one such reduction each; memoised per
        grammar. Stops before a reduction that accepts the text (the caller's)."""
        key = (below, state, term)
        got = self._unit_memo.get(key)
        if got is None:
            action, goto, rule_len, rule_origin = self._action, self._goto, self._rule_len, self._rule_origin
            got = state
            for _ in range(len(action)):  # (a cycle of one-symbol rules ends here too)
                code = action[got][term]
                if not (code < 0 and rule_len[-code - 1] == 1):
                    break
                nxt = goto[below][rule_origin[-code - 1]]
                if term == self._end and nxt == self.end_state:
                    break
                got = nxt
            if len(self._unit_memo) > UNIT_MEMO_SIZE:
                self._unit_memo.clear()
            self._unit_memo[key] = got
        return got

    def feed_all(self, stack, term: int, intern: dict | None) -> list:
        """Generalised LR step: every outcome (stacks, or ``_ACCEPT``) of feeding ``term``, trying
        all actions of a conflict. ``intern`` makes equal stacks one object, so that the many
        derivations of an ambiguous text collapse."""
        if term > self._end:  # a lexeme several terminals type: every reading
            return [x for t in self._compounds.expand(term) for x in self.feed_all(stack, t, intern)]
        action, goto, rule_len, rule_origin = self._action, self._goto, self._rule_len, self._rule_origin
        limit, conf, end = self.max_stack_depth, self._conf, self._end
        out: list = []
        work = [stack]
        seen = {(stack[0], id(stack[1]))}  # a cyclic grammar (x: y, y: x) reduces in circles
        budget = MAX_REDUCTIONS
        while work and budget:
            budget -= 1
            st = work.pop()
            code = action[st[0]][term]
            for c in (code,) if code < MULTI else conf[code - MULTI]:
                if c == 0:
                    continue
                if c > 0:
                    if st[2] < limit:
                        out.append(_push(c - 1, st, intern))
                    continue
                r = -c - 1
                below = st
                for _ in range(rule_len[r]):
                    below = below[1]
                g = goto[below[0]][rule_origin[r]]
                if term == end and g == self.end_state:
                    out.append(_ACCEPT)
                    continue
                g = self._unit_top(below[0], g, term)
                if (g, id(below)) not in seen:
                    seen.add((g, id(below)))
                    work.append(_push(g, below, intern))
        return out

    def step(self, q: int, stack, data: bytes, trusted: bool = False):
        """Walk ``data`` from ``(q, stack)``: the new ``(q, stack)`` or None (deterministic grammars).
        ``trusted``: the mask of ``(q, stack)`` allows ``data``'s token, so the lexeme it ends in is
        viable (the mask checked exactly that) and is not checked again."""
        lr = self._lr()
        if lr is not None:
            got = _cwalk.lr_step(lr, self._step_tables, q, stack, data)
            if got is not NotImplemented:  # (a lexer to build, or a conflict: below)
                if got is None or got is _FORK or trusted or self.viable(*got):
                    return got
                return None
        rows, chosen, ignore = self._rows, self._chosen, self._ignore
        for b in data:
            nq = (rows[q] or self._row(q))[b]
            if nq >= 0:
                q = nq
                continue
            t = chosen[q]
            if t < 0:
                return None
            if t > self._end:
                return _FORK
            if not ignore[t]:
                stack = self.feed(stack, t)
                if stack is None:
                    return None
            q = self._start(self._lexer_of_state[stack[0]])
            q = (rows[q] or self._row(q))[b]
            if q < 0:
                return None
        if not trusted and not self.viable(q, stack):
            return None
        return q, stack

    def step_trusted(self, q: int, stack, data: bytes):
        """:meth:`step` of one configuration whose mask allows ``data``'s token, for any grammar:
        the new ``(q, stack)``, None, or ``_FORK`` where the caller must follow every reading
        (:meth:`step_all`): a lexeme several terminals type, a parser conflict met on the way (a
        grammar that is not LR(1)), a lexer not built yet. The C step where built, for any grammar;
        where it hands the step back, or without it, a grammar without conflicts takes
        :meth:`step`."""
        lr = self._lr()
        if lr is not None:
            got = _cwalk.lr_step(lr, self._step_tables, q, stack, data)
            if got is not NotImplemented:  # (trusted: step would return it as it is)
                return got
        return self.step(q, stack, data, True) if self.deterministic else _FORK

    def step_all(self, configs: tuple, data: bytes, intern: dict, trusted: bool = False) -> tuple:
        """Walk ``data`` from every configuration ``(q, stack)``; the surviving ones (deduplicated,
        at most :data:`MAX_CONFIGS` once ``data`` is read: a mask, computed from the configurations
        kept, allows a token only if some reading survives it, so no reading may be dropped
        halfway through a token), empty when the text is not allowed. ``trusted``: the configurations'
        mask allows ``data``'s token (:meth:`step`; a deterministic grammar has one configuration)."""
        if self.deterministic:
            out = []
            for q, st in configs:
                got = self.step(q, st, data, trusted and len(configs) == 1)
                if got is _FORK:
                    break
                if got is not None:
                    out.append(got)
            else:
                return tuple(out)
        lr = self._lr()
        if lr is not None:
            got = _cwalk.lr_step_all(lr, self._step_tables, configs, data, intern, MAX_CONFIGS_IN_STEP)
            if got is not NotImplemented:  # (a lexer to build, a compound lexeme made since the tables: below)
                return tuple(c for c in got if self.viable(*c))[:MAX_CONFIGS]
        rows, row_of, chosen, ignore, start, lexer_of = (self._rows, self._row, self._chosen, self._ignore, self._start,
                                                         self._lexer_of_state)
        end = self._end
        cur = configs
        for b in data:
            nxt: dict = {}
            for q, st in cur:
                nq = (rows[q] or row_of(q))[b]
                if nq >= 0:
                    nxt.setdefault((nq, id(st)), (nq, st))
                    continue
                t = chosen[q]
                if t < 0:
                    continue
                stacks = [st] if t < end and ignore[t] else [x for x in self.feed_all(st, t, intern) if x is not _ACCEPT]
                for s2 in stacks:
                    q2 = start(lexer_of[s2[0]])
                    q2 = (rows[q2] or row_of(q2))[b]
                    if q2 >= 0:
                        nxt.setdefault((q2, id(s2)), (q2, s2))
            if not nxt:
                return ()
            cur = tuple(nxt.values())[:MAX_CONFIGS_IN_STEP]
        return tuple(c for c in cur if self.viable(*c))[:MAX_CONFIGS]

    def _shifts_any(self, top: int, reach: tuple) -> bool:
        """Whether parser state ``top`` shifts one of the terminals ``reach`` (as a plain shift).
        Kept per (state, reach set): the sets are the lexers' own objects, published once
        (:class:`_LazyReach`: threads reading a set at once keep the first made) and alive as long as
        the grammar, so their ids key them."""
        key = (top, id(reach))
        got = self._shift_memo.get(key)
        if got is None:
            row = self._action[top]
            got = self._shift_memo[key] = any(0 < row[t] < MULTI for t in reach)
        return got

    def viable(self, q: int, stack) -> bool:
        """Whether the lexeme in progress at ``q`` can still become a terminal the parser takes."""
        reach = self._reach[q]
        if reach is None:  # at a lexeme start, or only ignored terminals ahead
            return True
        lr = self._lr()
        if lr is not None:
            got = _cwalk.lr_viable(lr, stack, 0, (), reach)
            if got is not NotImplemented:
                return got
        if self.deterministic:
            return any(self.feed(stack, t) is not None for t in reach)
        if stack[2] < self.max_stack_depth and self._shifts_any(stack[0], reach):
            return True  # a shift, whatever lies below
        row = self._action[stack[0]]
        return any(self.feed_all(stack, t, None) for t in reach if row[t])

    def can_end(self, q: int, stack) -> bool:
        """Whether the text so far is a complete sentence."""
        stacks = [stack]
        if q not in self._is_start:
            t = self._chosen[q]
            if t < 0:
                return False
            if t > self._end or not self._ignore[t]:
                stacks = [x for x in self.feed_all(stack, t, None) if x is not _ACCEPT]
        return any(_ACCEPT in self.feed_all(st, self._end, None) for st in stacks)

    # -- a grammar that happens to be regular -----------------------------------------------------

    def as_dfa(self, *, max_states: int = REGULAR_MAX_STATES, max_depth: int = REGULAR_MAX_DEPTH):
        """The exact byte DFA of this grammar's language (greedy contextual lexing and the parser
        included) when its reachable configurations are few: a grammar whose parser stack stays
        shallow (no nesting) is regular, and its masks can be precomputed rows like a regex's.
        ``None`` when the stack grows past ``max_depth`` (recursion) or the configurations past
        ``max_states``. Deterministic grammars only. A depth-first search finds recursion fast."""
        from .regex import ByteDFA
        from .regex.automaton import trim

        if not self.deterministic:
            return None
        self._build_all()
        if self._compounds.members:  # lexemes with several readings: the parser forks
            return None
        byte_class, rep = _joint_classes([self._blocks[i][0] for i in range(self.n_lexers)])
        n_cls = len(rep)
        start = self.initial_state()
        key = lambda q, st: (q, _stack_states(st))  # noqa: E731
        ids = {key(*start): 0}
        configs = [start]
        rows: list = [None]
        todo = [0]
        while todo:
            i = todo.pop()
            q, st = configs[i]
            row = np.full(n_cls, -1, dtype=np.int32)
            for c in range(n_cls):
                got = self.step(q, st, bytes((int(rep[c]),)))
                if got is None:
                    continue
                if got[1][2] > max_depth:
                    return None
                k = key(*got)
                j = ids.get(k)
                if j is None:
                    j = ids[k] = len(configs)
                    if j >= max_states:
                        return None
                    configs.append(got)
                    rows.append(None)
                    todo.append(j)
                row[c] = j
            rows[i] = row
        accepting = np.array([self.can_end(q, st) for q, st in configs], dtype=bool)
        if not accepting.any():
            raise GrammarError(
                "the grammar accepts no text: its terminals never end where the next one must start "
                "(lark's lexer takes the longest match, e.g. NAME NAME without a separator)"
            )
        trans = np.stack(rows)[:, byte_class]
        dfa = trim(trans, accepting, "grammar")
        return ByteDFA(transitions=dfa.transitions, accepting=dfa.accepting, initial=dfa.initial)

    # -- masks -----------------------------------------------------------------------------------

    def _lr(self):
        """The parser tables as the C probe reads them (``_cwalk.lr_tables``), None without the C
        extension; remade when lexers built since added compound terminals."""
        got = self._lr_tables
        n_comp = len(self._compounds.members)
        if got is not None and got[1] == n_comp and USE_C_PARSER:  # (the hot path: once per token)
            return got[0]
        if not (USE_C_PARSER and _C_PARSER):
            return None
        if got is None or got[1] != n_comp:
            a = {k: np.ascontiguousarray(v, dtype=np.int32) for k, v in self.arrays.items()
                 if k in ("action", "goto", "rule_len", "rule_origin", "conf_offsets", "conf_codes")}
            comp = self._compounds.arrays()
            cap = _cwalk.lr_tables(
                a["action"], a["action"].shape[1], a["goto"], a["goto"].shape[1], a["rule_len"], a["rule_origin"],
                a["conf_offsets"], a["conf_codes"], comp["compound_offsets"].astype(np.int64),
                comp["compound_members"].astype(np.int32), self._compounds.base, self._end, self.end_state,
                self.max_stack_depth, MAX_REDUCTIONS, MULTI, _ACCEPT)
            got = self._lr_tables = (cap, n_comp)
        return got[0]

    def _walker(self, lexer: int):
        """Per lexer: (class table with -2 at lexeme ends, trie view, first-byte row)."""
        got = self._walkers.get(lexer)
        if got is None:
            lo = self._start(lexer)
            block, chosen = self._blocks[lexer]
            # classes of the global table: the same partition as the local one with -2 marks (a
            # mark depends on the row only), and the rest is done on classes, not 256 columns
            if _cwalk is not None:  # (in one pass; a lexer built in C came with them)
                got = self._walk_classes.pop(lexer, None)
                if got is None and "lex_wc_counts" in self.arrays:  # (built at compile time, with them)
                    a = self.arrays
                    n_cls = int(a["lex_wc_counts"][lexer])
                    if n_cls:
                        o0, o1 = int(a["lex_wc_offsets"][lexer]), int(a["lex_wc_offsets"][lexer + 1])
                        got = (a["lex_wc_tables"][o0:o1], a["lex_wc_bytes"][lexer].astype(np.int64), n_cls)
                rows, bc, n_cls = got if got is not None else _cwalk.byte_classes(
                    np.ascontiguousarray(block, dtype=np.int32), lo, np.ascontiguousarray(chosen, dtype=np.int32))
                t = np.frombuffer(rows, dtype=np.int64).reshape(len(chosen), n_cls)
                byte_class = np.frombuffer(bc, dtype=np.int64)
            else:
                from .regex import byte_classes

                class_trans, byte_class = byte_classes(block)
                t = np.where(class_trans >= 0, class_trans - lo, -1)
                t[(chosen >= 0)[:, None] & (t < 0)] = -2
            view = index.byte_view(self.vocabulary, byte_class, t.shape[1])
            got = self._walkers[lexer] = (t, view, t[0][byte_class])
        return got

    def _walk_args(self, lexer: int) -> tuple:
        """What walks and balls read of ``lexer`` (built now if it was not yet), gathered on first
        use: ``(class table, trie view, first-byte row)`` (:meth:`_walker`), its lexeme-start state,
        its ``chosen`` as int64 (:meth:`_chosen_of`) and its reach groups (:meth:`_LazyReach.groups`)."""
        got = self._lexer_args.get(lexer)
        if got is None:
            got = self._lexer_args[lexer] = (*self._walker(lexer), self._lexer_lo[lexer], self._chosen_of(lexer),
                                             self._reach.groups(lexer))
        return got

    def _walk_cap(self, lexer: int):
        """``lexer``'s walk arguments held by the C walk (:func:`index.walker`), made on first use; None
        without the C walk."""
        got = self._walk_caps.get(lexer, _MISSING)
        if got is _MISSING:
            ct, view, _, _, chosen, groups = self._walk_args(lexer)
            got = self._walk_caps[lexer] = index.walker(ct, view, self._W, groups[0], chosen)
        return got

    def _ball_reader(self, lexer: int):
        """``lexer``'s tables as the C balls read them (:meth:`_canonical`), checked and held once (a
        ball's own call then costs little), made on first use; the C extension is built."""
        got = self._ball_readers.get(lexer)
        if got is None:
            ct, view, _, lo, chosen, groups = self._walk_args(lexer)
            got = self._ball_readers[lexer] = index._cwalk.ball_reader(ct, ct.shape[1], chosen, groups[0],
                                                                       view.byte_class, lo)
        return got

    def _prepare(self) -> None:
        """Make the first :data:`PREPARED_LEXERS` built lexers ready for walks and balls (their
        :meth:`_walk_args`, :meth:`_walk_cap` and :meth:`_ball_reader`): the grammar's setup, done on
        its first mask (a fresh grammar's first mask is a miss) instead of on each lexer's first walk,
        a token later. Idempotent; threads that race make equal objects."""
        self._prepared = True
        if index._cwalk is None:
            return
        for lexer in range(min(self.n_lexers, PREPARED_LEXERS)):
            if self._lexer_lo[lexer] >= 0:  # (lexers built on first use stay for it)
                self._walk_cap(lexer)
                self._ball_reader(lexer)

    def _canonical(self, q: int):
        """States within a token's length of ``q`` in breadth-first order, a signature of that ball
        of the automaton, and the terminals its lexemes end (``terms``): the ball's own byte classes,
        its transitions relabelled, its lexeme types relabelled by first appearance (label ``k`` is
        ``terms[k]``), the states' reach groups (:meth:`_LazyReach.groups`). Equal signatures walk
        the vocabulary identically, into the same groups, ending lexemes of the same labels, since no
        token reads past the ball: whatever lexer the ball lies in and whichever terminals it ends.
        Lexers that share a terminal (a string as key and as value, a string value among different
        siblings) share its walks, and so do the positions of a counted repetition far enough from
        its end (the characters of a ``maxLength`` string: each is its own state, the balls of most
        alike)."""
        lexer = self._owner[q]
        if index._cwalk is not None:
            reader = self._ball_reader(lexer)
            depth = self._max_token_len if BALL_SIGNATURES else len(self._blocks[lexer][1])
            states, sig, terms = index._cwalk.ball_at(reader, q - self._lexer_lo[lexer], depth)
            return np.frombuffer(states, dtype=np.int64), sig, terms
        lo = self._lexer_lo[lexer]
        block, chosen = self._blocks[lexer]
        depth = self._max_token_len if BALL_SIGNATURES else len(chosen)
        succ = self._local_successors(lexer)
        q -= lo
        order = [q]
        label = {q: 0}
        start = 0
        for _ in range(depth):  # one level per byte
            end = len(order)
            for i in range(start, end):
                for x in succ[order[i]]:
                    if x not in label:
                        label[x] = len(order)
                        order.append(x)
            if len(order) == end:
                break
            start = end
        states = np.array(order, dtype=np.int64)
        lut = np.full(len(chosen) + 1, -3, dtype=np.int64)  # -3: past the ball
        lut[states] = np.arange(len(states))
        lut[-1] = -1  # dead stays dead
        rows = block[states].astype(np.int64)
        sub = lut[np.where(rows >= 0, rows - lo, -1)]  # [ball, 256]
        number: dict = {}
        byte_class = np.array([number.setdefault(col.tobytes(), len(number)) for col in np.ascontiguousarray(sub.T)],
                              dtype=np.uint8)
        table = sub[:, np.unique(byte_class, return_index=True)[1]]
        terms_at: dict = {}
        kinds = np.array([-1 if c < 0 else terms_at.setdefault(c, len(terms_at)) for c in chosen[states].tolist()],
                         dtype=np.int32)
        own = self._reach.groups(lexer)[1]
        relabel = {0: 0}
        groups = np.array([relabel.setdefault(own[x], len(relabel)) for x in order], dtype=np.int32)
        sig = byte_class.tobytes() + table.astype(np.int32).tobytes() + kinds.tobytes() + groups.tobytes()
        return states + lo, sig, tuple(terms_at)

    def _base_of(self, q: int, canon=None):
        """Tokens inside the current lexeme from ``q``, by the state they end in (``(free, ((state,
        row), ...), exits, key)``: ``free`` needs no parser check, None when there are none), the
        exits grouped by terminal, and the key of this walk for the caches that follow it (the walk's
        signature and which terminal each label is here)."""
        got = self._base.get(q)
        if got is None:
            states, sig, terms = self._canonical(q) if canon is None else canon
            shared = self._base_shared.get(sig)
            if shared is None:
                walked = pinned_walks(self.vocabulary).get(sig)
                if walked is None:
                    walked = self._walk_base(q, states, terms)
                with self._lock:  # (a walk's number is its signature's for the caches' keys: one each)
                    shared = self._base_shared.setdefault(sig, walked + (len(self._base_shared),))
            free, groups, exits, sig_id = shared
            # (equal signatures: the same reach groups, so each row still stands for one group here)
            got = self._base[q] = (free, tuple((int(states[r]), row) for r, row in groups),
                                   tuple((terms[k], level, node) for k, level, node in exits),
                                   self._path_id((sig_id, terms)))
        return got

    def _walk_base(self, q: int, states: np.ndarray, terms: tuple):
        """The walk of :meth:`_base_of`, its rows under ball positions and its exits under the
        labels of ``terms`` (:meth:`_canonical`): what states of equal signatures share."""
        lexer = self._owner[q]
        ct, view, _, lo, chosen, reach_groups = self._walk_args(lexer)
        runs_ok = USE_RUNS and index._cwalk is not None and index.USE_C_WALK
        got = self._donor_walk(q, lexer, ct, view, chosen, states, reach_groups) if runs_ok and USE_DONORS else None
        if got is not None:
            free, groups, exits = got
        else:
            shortcut = None
            if runs_ok:
                shortcut = runs.plan(self.vocabulary, ct, view.byte_class, q - lo,
                                     self._run_memo.setdefault(lexer, {}), reach_groups[1])
            walked = index.walk_split(ct, view, self._W, reach_groups[0], chosen, states[:1] - lo,
                                      skip=None if shortcut is None else shortcut.skip, walker=self._walk_cap(lexer))
            free, groups, exits = self._split(lo, walked, () if shortcut is None else shortcut.ends)
        if groups:  # (ball positions: the states are distinct, in ball order)
            order = states.tolist()
            groups = tuple((order.index(r), row) for r, row in groups)
        kind = {t: k for k, t in enumerate(terms)}
        return free, groups, tuple((kind[t], level, node) for t, level, node in exits)

    def _donor_walk(self, q: int, lexer: int, ct, view, chosen, states, reach_groups):
        """:meth:`_walk_base`'s walk (as :meth:`_split` returns it) from another's: ``p``, the state
        where the characters from ``q`` run (:mod:`dotvllm_plugin.runs`: inside a property name
        being written, every character but the declared names' next ones leads to the loop of an
        undeclared name), when ``p``'s walk is known (pinned, or shared in this grammar). A first
        byte ``b`` that leads from ``q`` where it leads from ``p`` (a live state) leads every token
        it starts through the same states from both: those tokens' rows and exits are ``p``'s, less
        those of the other first bytes (rows of the tokens each first byte starts, per vocabulary).
        The walk from ``q`` then visits the other first bytes only. ``p``'s row of a reach group
        comes under the first state of that group in ``q``'s ball (``states``: ``p``'s may lie
        outside it). None: no such ``p`` known, or more than :data:`MAX_DONOR_DROP` first bytes to
        drop from ``p``'s rows (walk instead)."""
        lo = self._lexer_lo[lexer]
        bc = view.byte_class
        got = runs._run_class(ct, bc, q - lo, self._run_memo.setdefault(lexer, {}))
        if got is None or got[1] == q - lo:
            return None
        p = got[1] + lo
        donor = self._base.get(p)
        if donor is None:
            canon = self._canonical(p)
            if canon[1] not in self._base_shared and canon[1] not in pinned_walks(self.vocabulary):
                return None
            donor = self._base_of(p, canon)
        d_free, d_pending, d_exits, _ = donor
        # (p's rows hold tokens of live first bytes only: those of the bytes not taken are cut)
        got = index._cwalk.donor_cut(ct, ct.shape[1], bc, q - lo, p - lo, MAX_DONOR_DROP,
                                     runs.first_byte_rows(self.vocabulary), (d_free, *(row for _, row in d_pending)))
        if got is None:  # (more than MAX_DONOR_DROP first bytes to drop)
            return None
        take, kept = got
        take = np.frombuffer(take, dtype=np.uint8)
        kept = [r if r is None or isinstance(r, np.ndarray) else np.frombuffer(r, dtype=np.int32) for r in kept]
        d_free = kept[0]
        d_pending = [(s, r) for (s, _), r in zip(d_pending, kept[1:]) if r is not None]
        tc = runs.token_chars(self.vocabulary)
        if d_exits or d_pending:  # (p's exits of the first bytes taken; each row under the first state
            # of its group in q's ball)
            got = _donor_parts(take, tc.node_first, index._c_walk_view(view)[2], d_exits, states - lo, reach_groups[0],
                               tuple(s - lo for s, _ in d_pending))
            if got is None:  # (cannot be: a token from q ends inside q's ball)
                return None
            d_exits, mapped = got
            d_pending = list(zip(mapped, (row for _, row in d_pending)))
        walked = index.walk_split(ct, view, self._W, reach_groups[0], chosen, states[:1] - lo,
                                  skip=(tc.node_rest, tc.node_first, runs.SIGMA_ALL, take), walker=self._walk_cap(lexer))
        free, pending, exits = self._split(lo, walked, d_pending)
        if d_free is not None:
            free = d_free if free is None else free | d_free
        if d_exits:
            by_term: dict = {}
            for t, level, node in (*exits, *d_exits):
                by_term.setdefault(t, []).append((level, node))
            exits = tuple((t, *parts[0]) if len(parts) == 1 else
                          (t, np.concatenate([lv for lv, _ in parts]), np.concatenate([nd for _, nd in parts]))
                          for t, parts in sorted(by_term.items()))
        return free, pending, exits

    def _split(self, lo: int, walked, more=()):
        """A walk's result (:func:`index.walk_split`: rows by reach group, :meth:`_LazyReach.groups`,
        each under one of its end states) as ``(free row, ((end state, row), ...), exits by
        terminal)`` in global states: the tokens whose lexeme is always viable (None when there are
        none), the others one row per reach group. ``more``: more ``(end state, row)`` pairs (a run
        plan's skipped tokens), OR-ed into their groups' rows. The rows returned may be shared or
        read-only: never written."""
        free, pending, exits = walked
        if not more:
            return free, tuple((e + lo, row) for e, row in pending), exits
        group = self._reach.groups(self._owner[lo])[1]
        by_group = {group[e]: [e + lo, row] for e, row in pending}
        for e, row in more:
            k = group[e]
            if k == 0:
                free = row if free is None else free | row
            elif k in by_group:
                got = by_group[k]
                got[1] = got[1] | row
            else:
                by_group[k] = [e + lo, row]
        return free, tuple(map(tuple, by_group.values())), exits

    def _path_id(self, key: tuple) -> int:
        """``key``'s number among the walks' cache keys (:attr:`_paths`), numbered when new: in one C
        call where the extension is built (the C recursion numbers keys too, and threads sharing
        this grammar must never number two keys alike), else under the grammar's lock."""
        if _cwalk is not None:
            return _cwalk.path_id(self._paths, key)
        with self._lock:
            return self._paths.setdefault(key, len(self._paths))

    def _cross(self, key, groups_level_node, lexer: int):
        """Walk on in ``lexer`` from the exit nodes of one terminal: ``(free row, ((end state,
        row), ...), exits)``, cached by ``key`` (the lexeme-start signature and the (terminal,
        lexer) path that led here): the walk itself does not depend on the stack, only which end
        states are viable does. Paths that bring the same exit nodes into the same lexer share
        one walk (half of the first visits' cross walks did)."""
        got = self._cross_cache.get(key)
        if got is not None:
            return got
        level, node = groups_level_node
        content = (lexer, level.tobytes(), node.tobytes())
        got = self._cross_walks.get(content)
        if got is None:
            ct, view, first, lo, chosen, groups = self._walk_args(lexer)
            walked = index.walk_rows_from_nodes(ct, view, self._W, level, node, first, groups=groups[0], chosen=chosen,
                                                walker=self._walk_cap(lexer))
            got = (None, (), ()) if walked is None else self._split(lo, walked)
            self._cross_walks[content] = got
        self._cross_cache[key] = got
        return got

    def _subtree(self, key, groups, probe, pos: int, new: tuple):
        """OR of what the exits ``groups`` allow on the stack ``(pos, new)`` (pushed cells ``new``
        above the original stack with its top ``pos`` popped), or None."""
        parts = []
        for t, level, node in groups:
            part = self._group(key, t, level, node, probe, pos, new)
            if part is not None:
                parts.append(part)
        return _or_rows(parts)

    def _group(self, key, t: int, level, node, probe, pos: int, new: tuple):
        """What one exit group allows: feed its terminal, walk on in the next lexer, recurse.

        Memoised per (path, terminal, pushed cells, the original states this group read): a
        token that closes five brackets reads deep, but only its own group is keyed by that
        depth, so the shallow rest of a mask is reused across stacks."""
        memo = self._sub_cache.get((key, t, new)) if probe.cacheable else None
        if memo is not None:
            for depth, table in memo.items():
                hit = table.get(probe.signature(pos, depth), _MISSING)
                if hit is not _MISSING:
                    return hit
        saved = probe.max_read
        probe.max_read = pos - 1
        parts = []
        outcomes = [(pos, new)] if t < self._end and self._ignore[t] else [x for x in probe.feed(pos, new, t) if x is not _ACCEPT]
        for pos2, new2 in outcomes:
            top = new2[-1] if new2 else probe.state(pos2)
            lexer = self._lexer_of_state[top]
            key2 = self._path_id((key, t, lexer))
            free, pending, exits = self._cross(key2, (level, node), lexer)
            if free is not None:
                parts.append(free)
            for r, part in pending:
                if probe.viable(pos2, new2, self._reach[r]):
                    parts.append(part)
            if exits:
                sub = self._subtree(key2, exits, probe, pos2, new2)
                if sub is not None:
                    parts.append(sub)
        row = _or_rows(parts)
        depth = max(0, probe.max_read - pos + 1)
        probe.max_read = max(saved, probe.max_read)
        if probe.cacheable:
            with self._lock:
                self._sub_count += 1
                if self._sub_count > self.mask_cache_size * 8:
                    self._sub_cache.clear()
                    self._sub_count = 1
                self._sub_cache.setdefault((key, t, new), {}).setdefault(depth, {})[probe.signature(pos, depth)] = row
        return row

    def cacheable(self, stack) -> bool:
        """Whether masks on ``stack`` may be cached and served from cache: near the stack bound a
        push may be refused, which depends on the depth, and no cache key holds the depth."""
        return stack[2] < self._cache_below

    def matcher_paths(self):
        """What a matcher reads to serve a cached mask and commit a token in one C call each:
        ``(masks, depth)`` (:meth:`cached_mask_into` for stacks shallower than ``depth``) and
        ``(parser tables, step tables)`` (:meth:`step_trusted`'s C step); ``(None, None)`` without
        the C parser. Parser tables remade later (lexers built since add compound terminals) leave
        these valid: a compound read with the tables of before is a fork, which the C step hands
        back."""
        lr = self._lr()
        if lr is None:
            return None, None
        return (self._masks, self._cache_below), (lr, self._step_tables)

    def cached_mask_into(self, q: int, stack, out, index: int):
        """:meth:`mask`'s row for ``(q, stack)`` where it is cached, copied into ``out[index]`` too
        (``out`` an int32 numpy array ``[batch, words]``; words past the row zeroed); None when it is
        not cached or ``out`` is not such an array (nothing written)."""
        if USE_C_PARSER and _C_PARSER and self.cacheable(stack):
            return _cwalk.mask_hit(self._masks, q, stack, out, index)
        return None

    def mask(self, q: int, stack) -> np.ndarray:
        """Packed allowed-token row (int32 ``[ceil(V/32)]``, EOS bits included) for ``(q, stack)``."""
        if USE_C_PARSER and _C_PARSER:
            row = _cwalk.mask_hit(self._masks, q, stack) if self.cacheable(stack) else None
            if row is not None:
                return row
            entry = None
        else:
            entry = self._masks.get(q) if self.cacheable(stack) else None
        if entry is not None:
            for depth, table in entry.items():
                sig, s = [], stack
                for _ in range(depth):
                    if s is None:
                        sig.append(-1)
                        continue
                    sig.append(s[0])
                    s = s[1]
                row = table.get(tuple(sig))
                if row is not None:
                    return row
        return self.mask_missed(q, stack)

    def mask_missed(self, q: int, stack) -> np.ndarray:
        """:meth:`mask` where its cache was read and has no row (the matcher reads it in C first):
        the row computed now, and cached."""
        if not self._prepared:
            self._prepare()
        base = self._base.get(q)
        if base is None:
            base = self._base_of(q)
        probe = _Probe(self, stack)
        # (inside a lexeme that no terminal ends at q the input cannot end: no probe to run)
        mid_lexeme = self._chosen[q] < 0 and q not in self._is_start
        if probe.lr is not None:  # (the recursion below, in C)
            ctx = self._miss_ctx
            if ctx is None or ctx[6] != self.mask_cache_size * 8:  # (made once: the same objects every miss)
                ctx = self._miss_ctx = (self._sub_cache, self._cross_cache, self._reach._values, self._lexer_of_state,
                                        self._ignore, self._end, self.mask_cache_size * 8, self._or_cache,
                                        self._paths, self._cross_walks)
            row = _cwalk.mask_miss(self, ctx, probe, base, self._zero_row)  # (may be a shared row)
            ends = not mid_lexeme and probe.can_end(q)
            if ends:  # (the end-of-sequence bits go into a row of this mask's own)
                row = row.copy()
        else:
            free, pending, groups, base_key = base
            parts = [] if free is None else [free]
            for r, part in pending:
                if probe.viable(0, (), self._reach[r]):
                    parts.append(part)
            sub = self._subtree(base_key, groups, probe, 0, ())
            if sub is not None:
                parts.append(sub)
            row = _or_rows(parts, self._W, fresh=True)
            ends = not mid_lexeme and probe.can_end(q)
        if ends:
            set_token_bits(row, self._eos)
        if probe.cacheable:
            depth = probe.max_read + 1
            key = tuple(probe.cells[:depth])
            with self._lock:
                entry = self._masks.get(q)
                if entry is None:
                    entry = self._masks[q] = {}
                table = entry.get(depth)
                if table is None:
                    table = entry[depth] = {}
                table[key] = row
                self._n_cached += 1
                if self._n_cached > self.mask_cache_size:
                    self._masks.clear()
                    self._or_cache.clear()
                    self._n_cached = 0
        return row

    # -- serialisation ----------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Versioned binary form (no pickle); the caches are not part of it."""
        from .serialization import write_blob

        header = {
            "format_version": FORMAT_VERSION,
            "engine": self.engine,
            "kind": self.kind,
            "source": self.source,
            "terminal_names": list(self.terminal_names),
            "start_state": self.start_state,
            "end_state": self.end_state,
            "max_stack_depth": self.max_stack_depth,
        }
        return write_blob(MAGIC, header, self.arrays, self.vocabulary)

    @classmethod
    def from_bytes(cls, data: bytes, vocabulary) -> PushdownGrammar:
        from .serialization import read_blob

        header, arrays = read_blob(data, MAGIC, FORMAT_VERSION, vocabulary)
        try:
            return cls(
                kind=header["kind"],
                source=header["source"],
                vocabulary=vocabulary,
                terminal_names=header["terminal_names"],
                start_state=header["start_state"],
                end_state=header["end_state"],
                max_stack_depth=header["max_stack_depth"],
                arrays=arrays,
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise SerializationError(f"corrupt compiled grammar: {e}") from e

    def __reduce__(self):
        return (PushdownGrammar.from_bytes, (self.to_bytes(), self.vocabulary))


def _or_rows(parts: list, words: int = 0, fresh: bool = False):
    """OR of packed rows: None when there are none, the one row itself when there is one (shared:
    not to be written), else a new row; with ``fresh`` always a new row (zeros when there are none,
    ``words`` wide)."""
    if len(parts) < 2:
        if not fresh:
            return parts[0] if parts else None
        return parts[0].copy() if parts else np.zeros(words, dtype=np.int32)
    acc = parts[0] | parts[1]
    for part in parts[2:]:
        np.bitwise_or(acc, part, out=acc)
    return acc


class _Probe:
    """The parser run against an unknown-depth stack for a mask computation, recording how deep
    it read: the mask depends only on the top ``max_read + 1`` states."""

    __slots__ = ("g", "stack", "cells", "max_read", "depth", "cacheable", "lr")

    def __init__(self, g: PushdownGrammar, stack):
        self.g = g
        self.lr = g._lr()  # (the C probe's tables; None: the Python one)
        self.stack = stack  # the unread part
        self.cells: list[int] = []
        self.max_read = -1
        self.depth = stack[2]
        self.cacheable = g.cacheable(stack)

    def signature(self, pos: int, depth: int) -> tuple:
        """The original states ``pos .. pos + depth - 1`` (read, so recorded)."""
        if depth == 0:
            return ()
        self.state(pos + depth - 1)
        return tuple(self.cells[pos : pos + depth])

    def state(self, i: int) -> int:
        """The ``i``-th state from the top of the original stack (-1 below its bottom), recorded."""
        while len(self.cells) <= i:
            if self.stack is None:
                self.cells.append(-1)
                continue
            self.cells.append(self.stack[0])
            self.stack = self.stack[1]
        if i > self.max_read:
            self.max_read = i
        return self.cells[i]

    def feed(self, pos: int, new: tuple, term: int) -> list:
        """Every outcome of :meth:`PushdownGrammar.feed_all` on the stack ``new`` (pushed cells, top
        last) above the original stack with its top ``pos`` cells popped: ``(pos, new)`` pairs, or
        ``_ACCEPT``."""
        if self.lr is not None:
            got = _cwalk.lr_feed(self.lr, self, pos, new, term)
            if got is not NotImplemented:  # (a compound terminal made since the tables: below)
                return got
        g = self.g
        if term > g._end:  # a lexeme several terminals type: every reading
            return list(dict.fromkeys(x for t in g._compounds.expand(term) for x in self.feed(pos, new, t)))
        action, goto, rule_len, rule_origin, conf = g._action, g._goto, g._rule_len, g._rule_origin, g._conf
        top = new[-1] if new else self.state(pos)
        if top < 0:
            return []
        code = action[top][term]
        if code == 0:
            return []
        if 0 < code < MULTI:  # a plain shift: nothing below the top is read
            return [(pos, new + (code - 1,))] if self.depth - pos + len(new) < g.max_stack_depth else []
        out: list = []
        work = [(pos, tuple(new))]
        seen = set(work)
        budget = MAX_REDUCTIONS
        while work and budget:
            budget -= 1
            pos, new = work.pop()
            top = new[-1] if new else self.state(pos)
            if top < 0:
                continue
            code = action[top][term]
            for c in (code,) if code < MULTI else conf[code - MULTI]:
                if c == 0:
                    continue
                if c > 0:
                    if self.depth - pos + len(new) < g.max_stack_depth:
                        out.append((pos, new + (c - 1,)))
                    continue
                n = rule_len[-c - 1]
                k = min(n, len(new))
                new2 = new[: len(new) - k]
                pos2 = pos + n - k
                below = new2[-1] if new2 else self.state(pos2)
                if below < 0:
                    continue
                gs = goto[below][rule_origin[-c - 1]]
                if term == g._end and gs == g.end_state:
                    out.append(_ACCEPT)
                    continue
                item = (pos2, new2 + (g._unit_top(below, gs, term),))
                if item not in seen:
                    seen.add(item)
                    work.append(item)
        return out

    def viable(self, pos: int, new: tuple, reach) -> bool:
        """Whether the stack ``(pos, new)`` (see :meth:`feed`) takes one of the terminals ``reach``."""
        if self.lr is not None:
            got = _cwalk.lr_viable(self.lr, self, pos, new, reach)
            if got is not NotImplemented:
                return got
        top = new[-1] if new else self.state(pos)
        if top < 0:
            return False
        g = self.g
        room = self.depth - pos + len(new) < g.max_stack_depth
        if room and g._shifts_any(top, reach):  # a shift, whatever lies below
            return True
        row = g._action[top]
        return any(self.feed(pos, new, t) for t in reach if row[t])

    def can_end(self, q: int) -> bool:
        g = self.g
        outcomes = [(0, ())]
        if q not in g._is_start:
            t = g._chosen[q]
            if t < 0:
                return False
            if t > g._end or not g._ignore[t]:
                outcomes = [x for x in self.feed(0, (), t) if x is not _ACCEPT]
        return any(_ACCEPT in self.feed(pos, new, g._end) for pos, new in outcomes)
