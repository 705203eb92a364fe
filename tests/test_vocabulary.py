import pickle

import pytest

from dotvllm_plugin import Vocabulary

TEXTS = ["hello world", " leading space", "héllo wörld", "emoji 🎉🎉 and 日本語", "tabs\tand\nnewlines", '{"a": [1, 2.5e-3]}']


@pytest.mark.parametrize("text", TEXTS)
def test_token_bytes_concatenate_to_the_text(real, text):
    ids = real.encode(text)  # asserts the round trip itself
    assert ids


def test_sentencepiece_pieces(mistral_tokenizer, mistral_vocab):
    tb = mistral_vocab.token_bytes
    assert tb[mistral_tokenizer.convert_tokens_to_ids("▁the")] == b" the"
    assert tb[mistral_tokenizer.convert_tokens_to_ids("<0xE2>")] == b"\xe2"
    assert tb[mistral_tokenizer.convert_tokens_to_ids("<0x0A>")] == b"\n"


def test_byte_level_pieces(tekken_tokenizer, tekken_vocab):
    tb = tekken_vocab.token_bytes
    assert tb[tekken_tokenizer.convert_tokens_to_ids("Ġhello")] == b" hello"
    assert sum(1 for b in tb if b is not None and len(b) == 1) == 256


def test_special_tokens_are_not_generatable(real):
    tok, tb = real.tokenizer, real.vocab.token_bytes
    for tid in tok.all_special_ids:
        assert tb[tid] is None
    assert real.vocab.eos_token_ids == (tok.eos_token_id,)


def test_several_eos_ids(mistral_tokenizer):
    v = Vocabulary.from_hf_tokenizer(mistral_tokenizer, eos_token_ids=[2, 13])
    assert v.eos_token_ids == (2, 13)
    assert v.token_bytes[13] is None  # an EOS id is never an ordinary token


def test_fingerprint_is_stable_and_discriminating(mistral_tokenizer, mistral_vocab, tekken_vocab):
    assert Vocabulary.from_hf_tokenizer(mistral_tokenizer).fingerprint == mistral_vocab.fingerprint
    assert mistral_vocab.fingerprint != tekken_vocab.fingerprint
    other_eos = Vocabulary.from_hf_tokenizer(mistral_tokenizer, eos_token_ids=[2, 13])
    assert other_eos.fingerprint != mistral_vocab.fingerprint


def test_pickle_round_trip(mistral_vocab):
    v = pickle.loads(pickle.dumps(mistral_vocab))
    assert v.fingerprint == mistral_vocab.fingerprint and v.size == mistral_vocab.size


@pytest.mark.parametrize(
    ("table", "eos", "message"),
    [([b"a"], [], "at least one EOS"), ([b"a"], [5], "outside the vocabulary")],
    ids=["no-eos", "eos-out-of-range"],
)
def test_bad_vocabularies(table, eos, message):
    with pytest.raises(ValueError, match=message):
        Vocabulary(table, eos)
