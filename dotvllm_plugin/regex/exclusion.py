"""A byte DFA minus the words whose first ``"`` opens a JSON string with one of given values.

"Any key but the declared ones" is the key lexeme's automaton (a string of any content, then the
colon) with the declared names cut out. Written as a regex, the cut is a trie of every name's
prefixes with "any other character" at each node; that regex was the costliest part of compiling
a typical object. Here the cut is a product: the automaton runs beside a reader of the string's
JSON spelling that follows the names' trie, and is dropped (its state is then the automaton's own)
as soon as the string's value can no longer be a name. Only bytes the automaton accepts are
explored, so spellings it never produces (``\\u`` escapes in a plain key) cost nothing, and the
product has about as many states as the trie has nodes.

Every JSON spelling of a name is cut (a literal character, its short escape, ``\\u`` escapes in
either case, surrogate pairs), so the result is exact whatever string language the automaton has:
the words that remain are those of the automaton whose first string's value is no name (or that
have no ``"`` at all). The caller keeps that first ``"`` the key's opening quote (before it, only
JSON whitespace).
"""

from __future__ import annotations

import functools
from typing import Iterable

import numpy as np

from .automaton import ByteDFA, byte_classes, trim

try:
    from .. import _cwalk
except ImportError:  # the package without its C extension
    _cwalk = None

__all__ = ["USE_C_CUT", "is_cut", "without_json_strings"]

#: Whether the product runs in C when the extension is built (the Python loop is its reference).
USE_C_CUT = True

_QUOTE, _BACKSLASH, _U = 0x22, 0x5C, 0x75
#: escape letter → the character it stands for
_SHORT = {ord('"'): '"', ord("\\"): "\\", ord("/"): "/", ord("b"): "\b", ord("f"): "\f", ord("n"): "\n",
          ord("r"): "\r", ord("t"): "\t"}
_BAD = "bad"  # the string closed with a name's value: the word is cut
_OUT = None  # the value is no name: the automaton alone decides


def _literal_ok(ch: str) -> bool:
    cp = ord(ch)
    return cp >= 0x20 and ch not in '"\\' and not 0xD800 <= cp <= 0xDFFF


def _hex_spelling(cp: int) -> str:
    """The lower-case ``\\u`` spelling after the first ``\\u`` (a surrogate pair past the BMP)."""
    if cp < 0x10000:
        return f"{cp:04x}"
    cp -= 0x10000
    return f"{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}"


class _Reader:
    """Reads a JSON string's spelling byte by byte along a trie of values.

    A position is ``(node, partial)``: the trie node of the value read so far and the bytes read of
    the current character (``b""`` between characters; the hex digits lower-cased). ``step`` gives
    the positions each next byte leads to; a byte not listed leaves the trie (:data:`_OUT`).
    """

    def __init__(self, names: Iterable[str]):
        self.children: list[dict[str, int]] = [{}]
        self.ends: set[int] = set()
        for name in names:
            node = 0
            for ch in name:
                nxt = self.children[node].get(ch)
                if nxt is None:
                    nxt = self.children[node][ch] = len(self.children)
                    self.children.append({})
                node = nxt
            self.ends.add(node)
        self._memo: dict[tuple, dict] = {}

    def step(self, pos) -> dict:
        out = self._memo.get(pos)
        if out is None:
            out = self._memo[pos] = self._step(pos)
        return out

    def _step(self, pos) -> dict:
        if pos == "start":  # before the opening quote: whitespace stays here
            return {_QUOTE: (0, b"")}
        node, partial = pos
        kids = self.children[node]
        out: dict = {}
        if not partial:
            for ch, child in kids.items():
                if _literal_ok(ch):
                    u = ch.encode()
                    out[u[0]] = (child, b"") if len(u) == 1 else (node, u[:1])
            if kids:
                out[_BACKSLASH] = (node, b"\\")
            if node in self.ends:
                out[_QUOTE] = _BAD
        elif partial[0] != _BACKSLASH:  # inside a multi-byte character
            k = len(partial)
            for ch, child in kids.items():
                u = ch.encode() if _literal_ok(ch) else b""
                if len(u) > k and u.startswith(partial):
                    out[u[k]] = (child, b"") if len(u) == k + 1 else (node, u[:k + 1])
        elif partial == b"\\":
            for letter, ch in _SHORT.items():
                if ch in kids:
                    out[letter] = (kids[ch], b"")
            out[_U] = (node, b"\\u")
        else:  # inside \uXXXX (or a surrogate pair's \uXXXX\uXXXX)
            done = partial[2:].decode()
            for ch, child in kids.items():
                full = _hex_spelling(ord(ch))
                if len(full) > len(done) and full.startswith(done):
                    nxt = full[len(done)]
                    to = (child, b"") if len(full) == len(done) + 1 else (node, partial + nxt.encode())
                    out[ord(nxt)] = to
                    if nxt in "abcdef":
                        out[ord(nxt.upper())] = to
        return out


def without_json_strings(dfa: ByteDFA, names: Iterable[str], pattern: str = "") -> ByteDFA:
    """``dfa`` without the words whose first ``"`` opens a JSON string whose value is in ``names``.

    ``pattern`` names the automaton in errors (the language may become empty).
    """
    names = sorted(set(names))
    trans = dfa.transitions
    if _cwalk is not None and USE_C_CUT:
        cps = np.array([ord(c) for name in names for c in name], dtype=np.int32)
        off = np.cumsum([0] + [len(name) for name in names], dtype=np.int64)
        table, accepting = _cwalk.json_cut(np.ascontiguousarray(trans, dtype=np.int32),
                                           np.ascontiguousarray(dfa.accepting, dtype=np.uint8), int(dfa.initial), cps, off)
        table = np.frombuffer(table, dtype=np.int32).reshape(-1, 256)
        return trim(table, np.frombuffer(accepting, dtype=np.uint8).astype(bool), pattern)
    return _finish(dfa, *_product(dfa, names), pattern)


def _product(dfa: ByteDFA, names: list[str]):
    """The pairs (automaton state, reader position) reached, as the automaton state of each (pair
    ids in order of discovery), and the overrides of their rows: ``(states, at, byte, to)``, pair
    ``at[i]`` steps on ``byte[i]`` to pair ``to[i]`` (-1: cut) instead of where its automaton state
    alone leads."""
    reader = _Reader(names)
    trans = dfa.transitions
    rows_of: dict[int, list] = {}

    def row(k: int) -> list:
        r = rows_of.get(k)
        if r is None:
            r = rows_of[k] = trans[k].tolist()
        return r

    def alive(k: int, pos) -> bool:
        """Whether the pair (k, pos) differs from the automaton's state k alone."""
        r = row(k)
        return any(r[b] >= 0 for b in reader.step(pos))

    # Pairs get ids 0.. in order of discovery; each one's row is its automaton state's row (the
    # automaton alone: ids p.. once the number p of pairs is known) with the reader's bytes set.
    pair_id = {(dfa.initial, "start"): 0}
    pairs = [(dfa.initial, "start")]
    at, byte, to_pair = [], [], []  # overrides: row, byte, pair id (-1: cut)

    def pair(key) -> int:
        pid = pair_id.get(key)
        if pid is None:
            pid = pair_id[key] = len(pairs)
            pairs.append(key)
        return pid

    i = 0
    while i < len(pairs):
        k, pos = pairs[i]
        r = row(k)
        for b, to in reader.step(pos).items():
            t = r[b]
            if t < 0:
                continue
            if to is _BAD:
                at.append(i), byte.append(b), to_pair.append(-1)
            elif alive(t, to):  # a pair that cannot differ from t alone is t itself
                at.append(i), byte.append(b), to_pair.append(pair((t, to)))
        if pos == "start":  # before the quote the reader waits: whitespace keeps it waiting
            for b, t in enumerate(r):
                if b != _QUOTE and t >= 0:
                    at.append(i), byte.append(b), to_pair.append(pair((t, "start")))
        i += 1
    states = np.array([k for k, _ in pairs], dtype=np.int64)
    return states, np.array(at, dtype=np.int64), np.array(byte, dtype=np.int64), np.array(to_pair, dtype=np.int64)


def _finish(dfa: ByteDFA, states: np.ndarray, at: np.ndarray, byte: np.ndarray, to_pair: np.ndarray,
            pattern: str) -> ByteDFA:
    """The product's table from :func:`_product`'s pairs and overrides; each pair's row is its
    automaton state's row (the automaton alone: ids p.. for the p pairs) with the reader's bytes
    set, then only the automaton's states the pairs reach, trimmed. (With the C extension,
    ``_cwalk.json_cut`` computes the same table and this module only trims it.)"""
    trans = dfa.transitions
    p = len(states)

    def own(ks: np.ndarray) -> np.ndarray:  # the automaton's rows, its states numbered from p
        rows = trans[ks].astype(np.int64)
        return np.where(rows >= 0, rows + p, -1)

    table = own(states)
    table[at, byte] = to_pair
    # the automaton's states the pairs lead to, and what those reach (not its own initial state)
    seen = set((np.unique(table[table >= p]) - p).tolist())
    stack = list(seen)
    # the same edges, without the parallel ones (the classes ``trim`` handed on, where it did)
    cols = (dfa.classes if dfa.classes is not None else byte_classes(trans))[0].tolist()
    while stack:
        for t in cols[stack.pop()]:
            if t >= 0 and t not in seen:
                seen.add(t)
                stack.append(t)
    kept = np.array(sorted(seen), dtype=np.int64)
    new_id = np.full(p + trans.shape[0] + 1, -1, dtype=np.int64)
    new_id[:p] = np.arange(p)
    new_id[p + kept] = p + np.arange(len(kept))
    full = np.concatenate([table, own(kept)])
    full = new_id[np.where(full < 0, len(new_id) - 1, full)]
    accepting = np.concatenate([dfa.accepting[states], dfa.accepting[kept]]).astype(bool)
    return trim(full.astype(np.int32), accepting, pattern)


@functools.lru_cache(maxsize=64)
def _reader_of(names: tuple) -> _Reader:
    return _Reader(names)


def is_cut(word: bytes, names: Iterable[str]) -> bool:
    """Whether :func:`without_json_strings` takes ``word`` out: its first ``"`` opens a JSON string
    that closes in ``word`` with one of ``names`` as its value. The cut's own reader, run on one
    word (no automaton built)."""
    reader = _reader_of(tuple(sorted(set(names))))
    pos = "start"
    for b in word:
        if pos == "start" and b != _QUOTE:  # before the quote the reader waits
            continue
        pos = reader.step(pos).get(b, _OUT)
        if pos is _OUT:
            return False  # the value is no name
        if pos is _BAD:
            return True
    return False
