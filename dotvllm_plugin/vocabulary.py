"""Token id → exact bytes, for the tokenizers models generate with.

Handles SentencePiece vocabularies (``▁`` is a space, ``<0xNN>`` byte-fallback tokens) and
GPT-2-style byte-level BPE (Tekken, Llama-3, Qwen). A leading ``▁`` is kept as a real space: the
generated text continues the prompt, so no dummy-prefix stripping applies.

Added and special tokens are not generatable (their bytes are ``None``), except the EOS ids, which
the matcher allows only where the constraint is complete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["Vocabulary"]


def _gpt2_byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode`` table (printable stand-ins for all 256 bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Vocabulary:
    """An immutable token id → bytes table.

    Parameters
    ----------
    token_bytes : sequence of bytes or None
        ``token_bytes[i]`` is what token ``i`` appends to the output, ``None`` if token ``i`` must
        never be generated (special, added, or unused ids).
    eos_token_ids : iterable of int
        Token ids that end generation.
    """

    __slots__ = ("_token_bytes", "_eos", "_fingerprint", "_cache")

    def __init__(self, token_bytes: Sequence[bytes | None], eos_token_ids: Iterable[int]):
        self._token_bytes: tuple[bytes | None, ...] = tuple(
            None if b is None or len(b) == 0 else bytes(b) for b in token_bytes
        )
        eos = tuple(sorted({int(e) for e in eos_token_ids}))
        if not eos:
            raise ValueError("a Vocabulary needs at least one EOS token id")
        for e in eos:
            if not 0 <= e < len(self._token_bytes):
                raise ValueError(f"EOS token id {e} is outside the vocabulary (size {len(self._token_bytes)})")
        self._eos = eos
        # EOS is never an ordinary token: the matcher allows it only where the constraint is complete.
        tb = list(self._token_bytes)
        for e in eos:
            tb[e] = None
        self._token_bytes = tuple(tb)
        h = hashlib.sha256()
        h.update(json.dumps(eos).encode())
        for b in self._token_bytes:
            h.update(b"\xff" if b is None else len(b).to_bytes(2, "little") + b)
        self._fingerprint = h.hexdigest()[:32]
        self._cache: dict = {}

    # -- constructors ---------------------------------------------------------------------------

    @classmethod
    def from_hf_tokenizer(cls, tokenizer, *, eos_token_ids: Iterable[int] | None = None) -> Vocabulary:
        """Build from a Hugging Face tokenizer (fast or slow).

        ``eos_token_ids`` defaults to the tokenizer's ``eos_token_id``; pass several for models
        with more than one end token.
        """
        vocab = tokenizer.get_vocab()
        size = max(len(tokenizer), max(vocab.values()) + 1)
        special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        added = getattr(tokenizer, "get_added_vocab", lambda: {})() or {}
        special_ids.update(added.values())
        decode = _token_decoder(tokenizer)
        table: list[bytes | None] = [None] * size
        for piece, tid in vocab.items():
            if tid in special_ids:
                continue
            table[tid] = decode(piece)
        if eos_token_ids is None:
            if tokenizer.eos_token_id is None:
                raise ValueError("the tokenizer has no eos_token_id; pass eos_token_ids explicitly")
            eos_token_ids = [tokenizer.eos_token_id]
        return cls(table, eos_token_ids)

    # -- reads ----------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of token ids (the tokenizer's length; a model's logits may be wider)."""
        return len(self._token_bytes)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos

    @property
    def fingerprint(self) -> str:
        """A stable hash of the id → bytes table and the EOS ids."""
        return self._fingerprint

    @property
    def token_bytes(self) -> tuple[bytes | None, ...]:
        return self._token_bytes

    def __len__(self) -> int:
        return len(self._token_bytes)

    def __repr__(self) -> str:
        return f"Vocabulary(size={self.size}, eos_token_ids={self._eos}, fingerprint={self._fingerprint[:12]!r})"

    def __reduce__(self):
        return (Vocabulary, (self._token_bytes, self._eos))

    # -- derived arrays, computed once per vocabulary ----------------------------------------------

    @property
    def max_token_len(self) -> int:
        """Length in bytes of the longest token (1 for an empty vocabulary)."""
        n = self._cache.get("max_len")
        if n is None:
            n = self._cache["max_len"] = max((len(b) for b in self._token_bytes if b), default=1)
        return n

    def byte_trie(self) -> "ByteTrie":
        trie = self._cache.get("trie")
        if trie is None:
            trie = self._cache["trie"] = ByteTrie(self._token_bytes)
        return trie


class ByteTrie:
    """The vocabulary's tokens as a byte trie, stored level by level in numpy arrays.

    Level ``d`` holds the distinct prefixes of length ``d + 1``. ``parent[d][j]`` is the index of
    node ``j``'s parent in level ``d - 1`` (-1 for the root), ``byte[d][j]`` its last byte. Nodes of
    a level are sorted by parent, so the children of a parent are contiguous:
    ``child_start[d][p]:child_start[d][p+1]`` in level ``d + 1``. ``tokens_at`` maps nodes to the
    token ids spelled by that prefix (several ids may share bytes, e.g. ``▁`` and ``<0x20>``).
    """

    def __init__(self, token_bytes: Sequence[bytes | None]):
        self.vocab_size = len(token_bytes)
        ids = np.array([i for i, b in enumerate(token_bytes) if b], dtype=np.int64)
        toks = [token_bytes[i] for i in ids]
        lengths = np.fromiter((len(t) for t in toks), dtype=np.int64, count=len(toks))
        max_len = int(lengths.max()) if len(toks) else 0
        # Padded byte matrix: row per token; 256 marks "past the end" so it sorts first.
        mat = np.full((len(toks), max_len), -1, dtype=np.int16)
        flat = np.frombuffer(b"".join(toks), dtype=np.uint8)
        rows = np.repeat(np.arange(len(toks)), lengths)
        cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        mat[rows, cols] = flat
        self.parent: list[np.ndarray] = []
        self.byte: list[np.ndarray] = []
        self.child_start: list[np.ndarray] = []
        self.tokens_at: list[np.ndarray] = []
        self.token_node: list[np.ndarray] = []  # node (of the level) of each entry of tokens_at
        node_of_token = np.full(len(toks), -1, dtype=np.int64)  # node at current depth
        alive = np.arange(len(toks))
        prev_count = 1
        node_of_token[:] = 0
        for d in range(max_len):
            alive = alive[lengths[alive] > d]
            key = node_of_token[alive] * 256 + mat[alive, d].astype(np.int64)
            uniq, inverse = np.unique(key, return_inverse=True)
            node_of_token[alive] = inverse
            parent = uniq // 256
            self.parent.append(parent.astype(np.int32))
            self.byte.append((uniq % 256).astype(np.uint8))
            self.child_start.append(np.searchsorted(parent, np.arange(prev_count + 1)).astype(np.int64))
            ending = alive[lengths[alive] == d + 1]
            end_nodes = node_of_token[ending]
            order = np.argsort(end_nodes, kind="stable")
            self.tokens_at.append(ids[ending[order]])
            self.token_node.append(end_nodes[order])
            prev_count = len(uniq)
        self.depth = max_len
        self.node_counts = [len(p) for p in self.parent]


def _token_decoder(tokenizer):
    """Pick the piece → bytes function for this tokenizer's family."""
    kind = _decoder_kind(tokenizer)
    if kind == "byte_level":
        table = _gpt2_byte_decoder()

        def decode(piece: str) -> bytes | None:
            try:
                return bytes(table[c] for c in piece)
            except KeyError:  # an added token spelled in plain text
                return piece.encode("utf-8")

        return decode

    def decode_sp(piece: str) -> bytes | None:
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
        return piece.replace("▁", " ").encode("utf-8")

    return decode_sp


def _decoder_kind(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str()).get("decoder") or {}
        text = json.dumps(spec)
        if '"ByteLevel"' in text:
            return "byte_level"
        return "sentencepiece"
    # Slow tokenizers: SentencePiece models expose sp_model; byte-level ones a byte_encoder.
    if hasattr(tokenizer, "byte_encoder"):
        return "byte_level"
    return "sentencepiece"
