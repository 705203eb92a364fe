"""Shared fixtures: real tokenizers from mistral-common's package data, built locally."""

from __future__ import annotations

import pytest

from dotvllm_plugin import GrammarCompiler, Vocabulary


@pytest.fixture(scope="session")
def mistral_tokenizer():
    from dotvllm_plugin.devtools.tokenizers import mistral_sentencepiece

    return mistral_sentencepiece()


@pytest.fixture(scope="session")
def tekken_tokenizer():
    from dotvllm_plugin.devtools.tokenizers import tekken

    return tekken()


@pytest.fixture(scope="session")
def mistral_vocab(mistral_tokenizer):
    return Vocabulary.from_hf_tokenizer(mistral_tokenizer)


@pytest.fixture(scope="session")
def tekken_vocab(tekken_tokenizer):
    return Vocabulary.from_hf_tokenizer(tekken_tokenizer)


@pytest.fixture(scope="session")
def byte_vocab():
    """256 single-byte tokens, EOS at id 256."""
    return Vocabulary([bytes([i]) for i in range(256)] + [None], eos_token_ids=[256])


@pytest.fixture(scope="session", params=["mistral", "tekken"])
def real(request, mistral_tokenizer, tekken_tokenizer, mistral_vocab, tekken_vocab):
    """(name, tokenizer, vocabulary, compiler) for each real tokenizer."""
    if request.param == "mistral":
        return RealTokenizer("mistral", mistral_tokenizer, mistral_vocab)
    return RealTokenizer("tekken", tekken_tokenizer, tekken_vocab)


class RealTokenizer:
    def __init__(self, name, tokenizer, vocab):
        self.name = name
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.compiler = GrammarCompiler(vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids for ``text`` as a continuation of a prompt (no SentencePiece dummy prefix)."""
        tok = self.tokenizer
        if self.name == "mistral":
            # SentencePiece prepends "▁" to the first piece; anchor on a newline (a byte-fallback
            # token that never merges) and drop everything up to it.
            ids = tok.encode("\n" + text, add_special_tokens=False)
            nl = tok.convert_tokens_to_ids("<0x0A>")
            ids = ids[ids.index(nl) + 1 :]
        else:
            ids = tok.encode(text, add_special_tokens=False)
        assert b"".join(self.vocab.token_bytes[i] for i in ids) == text.encode("utf-8")
        return ids

    def round_trips(self, text: str) -> bool:
        """SentencePiece normalises a literal "▁" to a space, so such text cannot round-trip."""
        return not (self.name == "mistral" and "▁" in text)

    def byte_tokens(self, text: str) -> list[int]:
        """One token per byte of ``text`` (fallback bytes / byte-level singles)."""
        table = {}
        for i, b in enumerate(self.vocab.token_bytes):
            if b is not None and len(b) == 1:
                table.setdefault(b[0], i)
        return [table[b] for b in text.encode("utf-8")]
