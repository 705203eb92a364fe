"""Character runs: the tokens a lexer state sends down one path, counted instead of walked.

Inside a JSON string the lexer either loops on one character class Σ (an unbounded string) or
counts down through a chain of states, one per Σ character (``maxLength``). A walk of the token
trie from such a state visits almost every node (266k for a 131k vocabulary) only to learn that a
token spelled with ``c`` characters of Σ ends ``c`` states further down the chain. Here that is
computed once per (vocabulary, F, Σ), F the class of a token's first character: the tokens whose
first character is in F and every other in Σ, as packed rows (all of them, and by character
count), from per-vocabulary character masks of every token and trie node. The walk skips the
nodes under which every token is such a token (it still visits every other token: quotes,
escapes, bytes of a split character) and the rows of the counts are ORed in, by the chain state
each count reaches.

A state ``q`` qualifies when every F character leads from it to one state ``t`` and, from ``t``
and from every state of its chain, every Σ character leads to one same state (or every Σ
character is dead, which ends the chain), no such character ending the lexeme. F and Σ are read
off ``q`` and ``t``: the printable ASCII bytes that lead where most of them lead, with every
non-ASCII character if they lead there too (checked on the UTF-8 byte sequences). A
property-name state is the reason for two classes: most first characters leave the declared
names' trie, the rest enter it, but every later character of an undeclared name loops.

:func:`clear_memos` empties the run tables (benchmarks timing cold first visits clear them); the
per-vocabulary character masks (:func:`token_chars`) are built once, like the byte trie.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict

import numpy as np

from . import index
from .pinning import Pinning
from .regex.charsets import utf8_sequences

__all__ = ["SIGMA_ALL", "RunPlan", "clear_memos", "first_byte_rows", "first_ok", "pinned", "plan", "run_table",
           "sigma_mask", "token_chars"]

#: Fewest ASCII characters in Σ for the shortcut: narrower classes die early in a plain walk.
MIN_ASCII = 32
#: Run tables kept (a 16 KB row for a 131k vocabulary; 1.2 MB more once a chain needs rows by count).
MAX_TABLES = 16

_NON_ASCII = ((0x80, 0xD7FF), (0xE000, 0x10FFFF))
_BAD, _DEAD = -3, -1
_NONASCII_BIT, _BROKEN_BIT = 1, 2


def _char_len(b: np.ndarray) -> np.ndarray:
    """Length of the UTF-8 character a byte leads (-1: not a lead byte)."""
    return np.select([b < 0x80, (b >= 0xC2) & (b <= 0xDF), (b >= 0xE0) & (b <= 0xEF), (b >= 0xF0) & (b <= 0xF4)],
                     [1, 2, 3, 4], -1)


class TokenChars:
    """Per vocabulary: the characters of each token and of each byte-trie node's tokens, as masks.

    A mask is 3 uint64 words: ASCII characters 0-63, 64-127, and flags (1: a non-ASCII character,
    2: bytes that are not whole UTF-8 characters). Masks cover every character but the first (the
    first byte says which that is): ``node_rest[n]`` for every token spelled through node ``n``
    (its prefix and all its continuations), ``token_rest[t]`` for token ``t``; ``node_first`` and
    ``token_first`` are the first bytes. ``count[t]`` is token ``t``'s number of characters (-1:
    not generatable, or not valid UTF-8)."""

    def __init__(self, vocab):
        token_bytes = vocab.token_bytes
        V = len(token_bytes)
        count = np.full(V, -1, dtype=np.int64)
        for i, b in enumerate(token_bytes):
            if b is not None:
                try:
                    count[i] = len(b.decode("utf-8"))
                except UnicodeDecodeError:
                    pass
        self.count = count
        self.words = (V + 31) // 32
        self.max_count = int(count.max()) if V else 0
        trie = vocab.byte_trie()
        counts = list(trie.node_counts)
        offset = np.cumsum([0] + counts[:-1]).astype(np.int64)
        n = int(sum(counts))
        own = np.zeros((n, 3), dtype=np.uint64)  # the node's byte, unless it is part of the first character
        prefix = np.zeros((n, 3), dtype=np.uint64)
        pending = np.zeros(n, dtype=np.int64)  # continuation bytes still due after the node
        first = np.zeros(n, dtype=np.uint8)
        first_len = np.zeros(n, dtype=np.int64)
        token_node = np.full(V, -1, dtype=np.int64)
        ends_badly = np.zeros(n, dtype=bool)
        one = np.uint64(1)
        for d in range(trie.depth):
            sl = slice(int(offset[d]), int(offset[d]) + counts[d])
            b = trie.byte[d].astype(np.int64)
            par = offset[d - 1] + trie.parent[d].astype(np.int64) if d else None
            due = pending[par] if d else np.zeros(len(b), dtype=np.int64)
            cont = (b >= 0x80) & (b < 0xC0)
            lead = _char_len(b)
            ok = np.where(cont, due > 0, (due == 0) & (lead > 0))
            pending[sl] = np.where(ok, np.where(cont, due - 1, lead - 1), 0)
            if d:
                first[sl], first_len[sl] = first[par], first_len[par]
            else:
                first[sl], first_len[sl] = b, np.maximum(lead, 1)
            rest = d >= first_len[sl]
            w = np.zeros((len(b), 3), dtype=np.uint64)
            w[:, 0] = np.where(rest & (b < 64), one << (b % 64).astype(np.uint64), 0)
            w[:, 1] = np.where(rest & (b >= 64) & (b < 128), one << (b % 64).astype(np.uint64), 0)
            w[:, 2] = np.where(rest & (b >= 0x80), _NONASCII_BIT, 0) | np.where(ok, 0, _BROKEN_BIT)
            own[sl] = w
            prefix[sl] = w | (prefix[par] if d else 0)
            tok = trie.tokens_at[d]
            node = trie.token_node[d] + offset[d]
            token_node[tok] = node
            # a token that is not whole characters (ends inside one, or is not valid UTF-8) marks its
            # own node only: longer tokens through it may complete the character
            ends_badly[node[(count[tok] < 0) | (pending[node] > 0)]] = True
        below = own.copy()  # OR over each node's subtree
        below[ends_badly, 2] |= np.uint64(_BROKEN_BIT)
        for d in range(trie.depth - 1, 0, -1):
            lo = int(offset[d])
            par = trie.parent[d].astype(np.int64)
            starts = np.flatnonzero(np.concatenate([[True], par[1:] != par[:-1]]))
            below[offset[d - 1] + par[starts]] |= np.bitwise_or.reduceat(below[lo : lo + counts[d]], starts, axis=0)
        above = np.zeros((n, 3), dtype=np.uint64)
        for d in range(1, trie.depth):
            sl = slice(int(offset[d]), int(offset[d]) + counts[d])
            above[sl] = prefix[offset[d - 1] + trie.parent[d].astype(np.int64)]
        self.node_rest = np.ascontiguousarray(above | below)
        self.node_first = first
        tm = np.zeros((V, 3), dtype=np.uint64)
        tm[:, 2] = _BROKEN_BIT
        has = token_node >= 0
        at = token_node[has]
        tm[has] = prefix[at]
        tm[np.flatnonzero(has)[ends_badly[at]], 2] |= np.uint64(_BROKEN_BIT)
        self.token_rest = np.ascontiguousarray(tm)
        self.token_first = np.zeros(V, dtype=np.uint8)
        self.token_first[has] = first[at]
        self._by_first = np.argsort(self.token_first, kind="stable")
        self._first_start = np.searchsorted(self.token_first[self._by_first], np.arange(257))
        # the same for the tokens of ASCII characters only (the others are no run of an ASCII Σ)
        plain = self._by_first[(tm[self._by_first, 2] == 0) & (count[self._by_first] >= 1)]
        self._ascii_by_first = plain[self.token_first[plain] < 0x80]
        self._ascii_start = np.searchsorted(self.token_first[self._ascii_by_first], np.arange(129))
        # row c: the tokens of 1 to c characters (row 0: none), packed, read-only (1.3 MB for a 131k
        # vocabulary): a run table's rows by count are its row of all ANDed with these
        upto = np.zeros((self.max_count + 1, self.words), dtype=np.int32)
        by_count = np.argsort(count, kind="stable")
        bounds = np.searchsorted(count[by_count], np.arange(self.max_count + 2))
        for c in range(1, self.max_count + 1):
            index.set_token_bits(upto[c], by_count[bounds[c] : bounds[c + 1]].astype(np.int64))
        np.bitwise_or.accumulate(upto, axis=0, out=upto)
        upto.flags.writeable = False
        self.upto = upto

    def tokens_starting(self, first_bytes: np.ndarray, ascii_only: bool = False) -> np.ndarray:
        """The ids of the tokens whose first byte is one of ``first_bytes`` (a token that is not
        generatable counts as starting with byte 0); ``ascii_only``: of the tokens of ASCII
        characters only (whole, generatable), ``first_bytes`` all below 0x80."""
        order, start = (self._ascii_by_first, self._ascii_start) if ascii_only else (self._by_first, self._first_start)
        return np.concatenate([order[start[b] : start[b + 1]] for b in first_bytes.tolist()] or [order[:0]])


def token_chars(vocab) -> TokenChars:
    got = vocab._cache.get("token_chars")
    if got is None:
        got = vocab._cache["token_chars"] = TokenChars(vocab)
    return got


@functools.lru_cache(maxsize=1024)
def sigma_mask(sigma: tuple) -> np.ndarray:
    """Σ (code-point ranges: some ASCII, and either every non-ASCII character or none) as a mask
    (read-only: shared by the callers)."""
    bits = 0
    for a, b in sigma:
        if a <= 0x7F:
            hi = min(b, 0x7F)
            bits |= ((1 << (hi - a + 1)) - 1) << a
    m = np.array([bits & (2**64 - 1), bits >> 64, _NONASCII_BIT if sigma and sigma[-1][1] >= 0x80 else 0],
                 dtype=np.uint64)
    m.flags.writeable = False
    return m


#: The mask of every character and flag: a walk's skip by first byte alone (``first_ok``).
SIGMA_ALL = np.full(3, 2**64 - 1, dtype=np.uint64)
SIGMA_ALL.flags.writeable = False


def first_byte_rows(vocab) -> np.ndarray:
    """Per vocabulary: packed int32 rows ``[256, words]``, row ``b`` the tokens whose first byte is
    ``b`` (byte 0 also counts the tokens that are not generatable); made once, read-only (4 MB for
    a 131k vocabulary)."""
    rows = vocab._cache.get("first_byte_rows")
    if rows is None:
        tc = token_chars(vocab)
        rows = np.zeros((256, tc.words), dtype=np.int32)
        for b in range(256):
            index.set_token_bits(rows[b], tc.tokens_starting(np.array([b], dtype=np.int64)).astype(np.int64))
        rows.flags.writeable = False
        rows = vocab._cache.setdefault("first_byte_rows", rows)
    return rows


def first_ok(first: tuple) -> np.ndarray:
    """The first bytes of the characters in ``first`` (same form as Σ), as a 256-entry table."""
    ok = np.zeros(256, dtype=np.uint8)
    for a, b in first:
        ok[a : min(b, 0x7F) + 1] = 1
        if b >= 0x80:
            ok[0xC2:0xF5] = 1
    return ok


class RunTable:
    """Per (vocabulary, first-character class F, Σ): packed rows of the tokens whose first character
    is in F and every other in Σ, all of them and by character count (:meth:`row`); ``skip`` the
    arguments of the walk that skip the trie nodes under which every token is such a token.

    ``like``: a table of the same vocabulary and Σ: the row of all of them is that table's, changed
    only where the two first-character classes differ (a property-name state's F is the string
    body's but for the first characters of the declared names), instead of read from every token.

    A row by count is the row of all ANDed with the vocabulary's tokens of those counts
    (:attr:`TokenChars.upto`: a range of counts, the chain of a bounded string, is two of its rows),
    made on first use and kept until :meth:`forget`."""

    def __init__(self, tc: TokenChars, first: tuple, sigma: tuple, like: RunTable | None = None):
        self._tc = tc
        self._sig, self._ok = sigma_mask(sigma), first_ok(first)
        self.skip = (tc.node_rest, tc.node_first, self._sig, self._ok)
        self.max_count = tc.max_count
        self._all = self._read() if like is None else self._all_from(like)
        self._rows: dict = {}

    def _all_from(self, like: RunTable) -> np.ndarray:
        tc = self._tc
        ids = tc.tokens_starting(np.flatnonzero(self._ok != like._ok))
        if len(ids) * 8 > len(tc.count):  # (a non-ASCII F against an ASCII one: reading all is cheaper)
            return self._read()
        got = index._cwalk.run_rows_at(like._all, ids, tc.token_rest, tc.token_first, tc.count, self._sig, self._ok)
        return np.frombuffer(got, dtype=np.int32)

    def _read(self) -> np.ndarray:
        """The row of all of them, from every token (``_cwalk.run_rows``), or where F and Σ are ASCII
        characters only from the tokens of ASCII characters whose first byte is in F (a third of a
        131k vocabulary's, for the letters: ``_cwalk.run_rows_at`` on them)."""
        tc = self._tc
        if not self._sig[2] and not self._ok[0x80:].any():
            ids = tc.tokens_starting(np.flatnonzero(self._ok), ascii_only=True)
            got = index._cwalk.run_rows_at(np.zeros(tc.words, dtype=np.int32), ids, tc.token_rest, tc.token_first,
                                           tc.count, self._sig, self._ok)
        else:
            got = index._cwalk.run_rows(tc.token_rest, tc.token_first, tc.count, self._sig, self._ok, 0, tc.words)
        return np.frombuffer(got, dtype=np.int32)

    def forget(self) -> None:
        """Drop the rows by count computed since the table was made (the row of all is kept)."""
        self._rows = {}

    def row(self, counts: tuple) -> np.ndarray:
        """Packed int32 row of this table's tokens with any of these character counts (all of them
        when ``counts`` is every count of the vocabulary)."""
        got = self._rows.get(counts)
        if got is None:
            if len(counts) == self.max_count:
                got = self._all
            else:
                up = self._tc.upto  # (row c: the vocabulary's tokens of 1 to c characters)
                lo, hi = min(counts), max(counts)
                if hi - lo + 1 == len(counts):  # (a range of counts: the chain of a bounded string)
                    got = self._all & up[hi] if lo == 1 else self._all & up[hi] & ~up[lo - 1]
                else:
                    got = self._all & np.bitwise_or.reduce([up[c] & ~up[c - 1] for c in counts], axis=0)
            self._rows[counts] = got
        return got


_tables: OrderedDict = OrderedDict()
#: Tables kept for the process's life (:func:`pinned`), apart from the memo the benchmarks clear.
_pinned: dict = {}
_lock = threading.Lock()
_pinning = Pinning()


def run_table(vocab, first: tuple, sigma: tuple) -> RunTable:
    """The run table of (``vocab``, F = ``first``, Σ = ``sigma``), made or kept."""
    key = (vocab.fingerprint, first, sigma)
    pin = _pinning.active
    with _lock:
        got = _pinned.get(key)
        if got is None and key in _tables:
            if pin:
                got = _pinned[key] = _tables.pop(key)
            else:
                got = _tables[key]
                _tables.move_to_end(key)
        if got is not None:
            return got
        like = next((t for k, t in reversed([*_pinned.items(), *_tables.items()]) if k[0] == key[0] and k[2] == sigma),
                    None)
    got = RunTable(token_chars(vocab), first, sigma, like)
    with _lock:
        if pin:
            return _pinned.setdefault(key, got)
        _tables[key] = got
        while len(_tables) > MAX_TABLES:
            _tables.popitem(last=False)
    return got


def pinned():
    """Within this block, the run tables made are kept for the process's life: those of the walks
    that :func:`dotvllm_plugin.pushdown.pin_base_walks` keeps (a JSON string's characters, the same
    for every schema), from which other tables of the same Σ are then made."""
    return _pinning.on()


def clear_memos() -> None:
    """Forget the run tables, and what the pinned ones computed since they were made (benchmarks
    timing cold first visits do)."""
    with _lock:
        _tables.clear()
        for t in _pinned.values():
            t.forget()
    _sigmas.cache_clear()


def _class_targets(class_trans: np.ndarray, byte_class: np.ndarray, sigma: tuple, memo: dict) -> np.ndarray:
    """For every state: where every Σ character leads (one state), ``_DEAD`` when every Σ
    character is dead, else ``_BAD`` (Σ characters lead apart, or one ends the lexeme). Σ's
    non-ASCII part is every non-ASCII character or none. In C where it is built; the numpy reading
    (the reference) keeps the non-ASCII characters' function in ``memo``."""
    if index._cwalk is not None and USE_C_TARGETS:
        got = index._cwalk.class_targets(np.ascontiguousarray(class_trans, dtype=np.int64), class_trans.shape[1],
                                         np.ascontiguousarray(byte_class, dtype=np.int64), sigma_mask(sigma),
                                         _C_RANGES, _C_SEQS)
        return np.frombuffer(got, dtype=np.int64)
    codes = [c for a, b in sigma for c in range(a, min(b, 0x7F) + 1)]
    cols = class_trans[:, np.unique(byte_class[codes])]
    out = cols[:, 0].copy()
    bad = (cols != out[:, None]).any(axis=1) | (out == -2)
    if sigma[-1][1] >= 0x80:
        other = memo.get("non-ascii")
        if other is None:
            other = memo["non-ascii"] = _non_ascii_targets(class_trans, byte_class)
        bad |= other != np.where(out < 0, _DEAD, out)
    out[out < 0] = _DEAD
    out[bad] = _BAD
    return out


def _class_targets_at(class_trans: np.ndarray, byte_class: np.ndarray, sigma: tuple, q: int, memo: dict) -> int:
    """:func:`_class_targets` at state ``q`` alone (in C: only the byte ranges its non-ASCII
    characters' sequences pass; the numpy reading computes every state's)."""
    if index._cwalk is not None and USE_C_TARGETS:
        got = index._cwalk.class_targets(np.ascontiguousarray(class_trans, dtype=np.int64), class_trans.shape[1],
                                         np.ascontiguousarray(byte_class, dtype=np.int64), sigma_mask(sigma),
                                         _C_RANGES, _C_SEQS, np.array([q], dtype=np.int64))
        return int.from_bytes(got, "little", signed=True)
    return int(_class_targets(class_trans, byte_class, sigma, memo)[q])


#: The UTF-8 byte sequences of the non-ASCII characters (as byte-range steps), the distinct byte
#: ranges among their steps, and each sequence as indices into those ranges.
_NON_ASCII_SEQS = [seq for a, b in _NON_ASCII for seq in utf8_sequences(a, b)]
_STEP_RANGES = sorted({step for seq in _NON_ASCII_SEQS for step in seq})
_SEQ_STEPS = [[_STEP_RANGES.index(step) for step in seq] for seq in _NON_ASCII_SEQS]
_UNEVEN = -5  # a byte range whose bytes lead apart from a state
#: The same for the C extension: the ranges as (lo, hi) rows, the sequences padded with -1 to 4 steps.
_C_RANGES = np.array(_STEP_RANGES, dtype=np.int64)
_C_SEQS = np.array([steps + [-1] * (4 - len(steps)) for steps in _SEQ_STEPS], dtype=np.int64)
#: Whether :func:`_class_targets` uses the C extension when it is built (tests compare both).
USE_C_TARGETS = True


def _non_ascii_targets(class_trans: np.ndarray, byte_class: np.ndarray) -> np.ndarray:
    """For every state: where every non-ASCII character leads (one state), ``_DEAD`` when every one
    is dead, else ``_BAD`` (they lead apart, or one ends the lexeme on the way), read on their UTF-8
    byte sequences by byte range: per state and step range the one target of the range's bytes (or
    :data:`_UNEVEN`), from one gather and two segment reductions; the sequences then follow those
    targets (integer gathers)."""
    n = class_trans.shape[0]
    cls = [np.unique(byte_class[lo : hi + 1]) for lo, hi in _STEP_RANGES]
    starts = np.cumsum([0] + [len(c) for c in cls[:-1]])
    g = class_trans[:, np.concatenate(cls)]
    lo_t = np.minimum.reduceat(g, starts, axis=1)
    target = np.where(lo_t == np.maximum.reduceat(g, starts, axis=1), lo_t, _UNEVEN)  # [n, ranges]
    out = None
    bad = np.zeros(n, dtype=bool)
    for steps in _SEQ_STEPS:
        cur = np.arange(n)
        for r in steps:
            alive = cur >= 0
            nxt = target[np.where(alive, cur, 0), r]
            bad |= alive & ((nxt == _UNEVEN) | (nxt == -2))
            cur = np.where(alive, nxt, cur)
        cur = np.where(cur < 0, _DEAD, cur)
        if out is None:
            out = cur
        else:
            bad |= out != cur
    return np.where(bad, _BAD, out)


class RunPlan:
    """A walk's shortcut: ``skip`` (the walk's arguments that make it skip the nodes of the run
    table's tokens) and ``(end state, row)`` of those tokens."""

    __slots__ = ("skip", "ends")

    def __init__(self, skip, ends):
        self.skip, self.ends = skip, ends


def _run_class(class_trans: np.ndarray, byte_class: np.ndarray, q: int, memo: dict):
    """``(Σ, t)`` for the characters that lead from ``q`` to one state ``t``: where most printable
    ASCII characters lead, with every non-ASCII character when they all lead there too; or None.
    Kept in ``memo`` per state."""
    key = ("class", q)
    if key in memo:
        return memo[key]
    got = memo[key] = _find_run_class(class_trans, byte_class, q, memo)
    return got


def _find_run_class(class_trans: np.ndarray, byte_class: np.ndarray, q: int, memo: dict):
    if index._cwalk is not None and USE_C_TARGETS:
        # (in C the ASCII characters and, in the same call, whether every non-ASCII one leads to t
        # too: Σ with them, else without; Σ's ASCII characters all lead to t by construction)
        got = index._cwalk.run_first(np.ascontiguousarray(class_trans, dtype=np.int64), class_trans.shape[1],
                                     np.ascontiguousarray(byte_class, dtype=np.int64), q, MIN_ASCII,
                                     _C_RANGES, _C_SEQS)
        if got is None:
            return None
        t, same, with_non_ascii = got
        both, ascii_only = _sigmas(same)
        return (both if with_non_ascii else ascii_only), t
    else:
        row = class_trans[q, byte_class[0x20:0x7F]]
        live = row[row >= 0]
        if len(live) < MIN_ASCII:
            return None
        t = int(np.bincount(live).argmax())
        same = np.flatnonzero(class_trans[q, byte_class[:0x80]] == t)
        if len(same) < MIN_ASCII:
            return None
        same = same.astype(np.int64).tobytes()
    for sigma in _sigmas(same):
        # (the whole successor function where a chain already needed it, else ``q``'s target alone:
        # a property-name state's first characters form a class of their own, used at ``q`` only)
        succ = memo.get(sigma)
        if (succ[q] if succ is not None else _class_targets_at(class_trans, byte_class, sigma, q, memo)) == t:
            return sigma, t
    return None


@functools.lru_cache(maxsize=1024)
def _sigmas(ascii_codes: bytes) -> tuple:
    """The two Σ :func:`_find_run_class` tries for these ASCII characters (int64 code points,
    ascending): with every non-ASCII character, and alone (most states of a schema's automata
    share a few sets: the string body's, a key's)."""
    codes = memoryview(ascii_codes).cast("q").tolist()
    out = []  # (code_ranges, inline: this runs per state of a property name on first visits)
    lo = prev = codes[0]
    for c in codes[1:]:
        if c != prev + 1:
            out.append((lo, prev))
            lo = c
        prev = c
    out.append((lo, prev))
    ascii_only = tuple(out)
    # (merge_ranges: the non-ASCII ranges start at 0x80, after every ASCII one)
    both = ascii_only[:-1] + ((lo, _NON_ASCII[0][1]), *_NON_ASCII[1:]) if prev == 0x7F else ascii_only + _NON_ASCII
    return both, ascii_only


def plan(vocab, class_trans: np.ndarray, byte_class: np.ndarray, q: int, memo: dict, groups=None) -> RunPlan | None:
    """The shortcut for a walk of the whole vocabulary from state ``q`` of ``class_trans`` (-1
    dead, -2 lexeme end), or None where it does not apply. ``memo``: per automaton (Σ → the
    successor function), kept by the caller. ``groups`` (one int per state, or None): the states'
    groups; the tokens of one group's states come as one row (under the first of them), not one
    row per state (a bounded string's chain: a row per character count, all of one group).

    The first character is read from ``q`` (class F, to state t), the others from t (class Σ): a
    property-name state sends most first characters to "not a declared name" and the rest to the
    names', but every character after that to the same loop."""
    got = _run_class(class_trans, byte_class, q, memo)
    if got is None:
        return None
    first, t = got
    got = _run_class(class_trans, byte_class, t, memo)
    if got is not None:
        sigma = got[0]
        succ = memo.get(sigma)
        if succ is None:
            succ = memo[sigma] = _class_targets(class_trans, byte_class, sigma, memo)
    elif _class_targets_at(class_trans, byte_class, first, t, memo) == _DEAD:
        # (the last character of a bounded string) only one of F fits
        sigma, succ = first, {t: _DEAD}
    else:
        return None
    n = token_chars(vocab).max_count
    chain, seen = [t], {t: 1}
    s = t
    period = 0
    for c in range(2, n + 1):  # chain[c - 1]: the state after c characters
        s = int(succ[s])
        if s == _BAD:
            return None
        if s == _DEAD:
            break
        if s in seen:  # a cycle (chain[seen[s] - 1:]): the counts from here on repeat with its period
            period = c - seen[s]
            break
        seen[s] = c
        chain.append(s)
    on_cycle = len(chain) - period + 1 if period else n + 1  # the first count on the cycle
    by_state: dict[int, list] = {}
    first_of: dict[int, int] = {}  # group → the first of its states met
    for c, s in enumerate(chain, 1):
        key = s if groups is None else first_of.setdefault(int(groups[s]), s)
        by_state.setdefault(key, []).extend(range(c, n + 1, period) if c >= on_cycle else (c,))
    if groups is not None:  # (one group's states: their counts interleave)
        for cs in by_state.values():
            cs.sort()
    table = run_table(vocab, first, sigma)
    skip = table.skip
    dead = _dead_everywhere(class_trans, byte_class, chain)
    if dead is not None:  # (see _dead_everywhere: the walk skips more nodes; the table's rows are the same)
        skip = (skip[0], skip[1], skip[2] | dead, skip[3])
    return RunPlan(skip, [(s, table.row(tuple(cs))) for s, cs in by_state.items()])


def _dead_everywhere(class_trans: np.ndarray, byte_class: np.ndarray, chain: list) -> np.ndarray | None:
    """The characters dead from every state of a run's chain, as a character mask (ASCII bits, and
    the non-ASCII bit when every byte from 0x80 up is dead), or None when there are none. A token
    whose characters after its first are all in Σ or in this set either is one of the run table's
    (all in Σ) or dies at its first character outside Σ (it reaches it in a chain state, from which
    that character is dead): the walk may skip the nodes of such tokens as it skips the table's.
    Never the flag of bytes that are not whole characters: a token ending inside its first
    character is not the table's, and the walk must reach it."""
    dead = (class_trans[chain] == -1).all(axis=0)[byte_class]  # per byte (-2, a lexeme's end, is not dead)
    if not dead.any():
        return None
    bits = np.packbits(dead[:0x80], bitorder="little").view(np.uint64)
    return np.array([bits[0], bits[1], _NONASCII_BIT if dead[0x80:].all() else 0], dtype=np.uint64)
