"""The V0 logits processor on its own (no server): masks, per-prefix state, shipping, never raising."""

from __future__ import annotations

import logging
import pickle

import cloudpickle
import numpy as np
import pytest
import torch

from dotvllm_plugin import GrammarCompiler, GrammarMatcher, Vocabulary
from dotvllm_plugin.compilation_manager import compile_key
from dotvllm_plugin.integrations.vllm_v0 import logits_processor as lp_module
from dotvllm_plugin.integrations.vllm_v0.logits_processor import DotvllmLogitsProcessor

REGEX = r"(ab|cd)[0-9]{1,3}"


@pytest.fixture(scope="module")
def vocab():
    from dotvllm_plugin.devtools.tokenizers import mistral_sentencepiece

    return Vocabulary.from_hf_tokenizer(mistral_sentencepiece())


@pytest.fixture(scope="module")
def grammar(vocab):
    return GrammarCompiler(vocab).compile_regex(REGEX)


@pytest.fixture
def processor(grammar, vocab):
    return DotvllmLogitsProcessor(grammar, key=compile_key("regex", REGEX, {}, vocab.fingerprint),
                                  description=f"guided_regex {REGEX!r}")


@pytest.fixture
def plugin_log(caplog):
    """Captured records of the plugin's logger (vLLM's logging config stops propagation at "vllm")."""
    log = logging.getLogger("vllm.dotvllm_plugin")
    log.addHandler(caplog.handler)
    old = log.level
    log.setLevel(logging.INFO)
    yield caplog
    log.setLevel(old)
    log.removeHandler(caplog.handler)


def _allowed(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits)).flatten().tolist())


def _walk(grammar, ids):
    m = GrammarMatcher(grammar)
    for t in ids:
        assert m.accept_token(t)
    return m


def _token(vocab, text: str) -> int:
    return vocab.token_bytes.index(text.encode())


@pytest.mark.parametrize("extra", [0, 7, 256], ids=["exact-width", "padded-7", "padded-256"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_mask_equals_matcher_allowed_set(processor, grammar, vocab, extra, dtype):
    logits = torch.randn(vocab.size + extra).to(dtype)
    out = processor([], logits.clone())
    assert _allowed(out) == set(GrammarMatcher(grammar).allowed_token_ids().tolist())
    assert torch.isinf(out[vocab.size:]).all()
    assert out.dtype == dtype


def test_state_follows_each_prefix(processor, grammar, vocab):
    """Interleaved sequences (n>1) and a recomputed prefix (preemption) get their own state."""
    a, c = _token(vocab, "a"), _token(vocab, "c")
    seq1 = [a, _token(vocab, "b")]
    seq2 = [c, _token(vocab, "d"), _token(vocab, "1")]
    for prefix in ([], [a], [c], seq1, seq2[:2], seq2, seq1, []):
        out = processor(prefix, torch.zeros(vocab.size))
        assert _allowed(out) == set(_walk(grammar, prefix).allowed_token_ids().tolist()), prefix
    # A long-lost prefix is replayed from the start.
    fresh = processor.clone()
    out = fresh(seq2, torch.zeros(vocab.size))
    assert _allowed(out) == set(_walk(grammar, seq2).allowed_token_ids().tolist())


def test_completed_constraint_allows_only_eos(processor, vocab):
    ids = [_token(vocab, t) for t in ("a", "b", "1", "2", "3")]
    out = processor(ids, torch.zeros(vocab.size))
    assert _allowed(out) == set(vocab.eos_token_ids)


def test_disallowed_token_forces_eos_for_that_sequence_only(processor, grammar, vocab, plugin_log):
    bad = [_token(vocab, "z")]
    out = processor(bad, torch.randn(vocab.size))
    assert _allowed(out) == set(vocab.eos_token_ids)
    assert "is not allowed by guided_regex" in plugin_log.text
    good = processor([_token(vocab, "a")], torch.zeros(vocab.size))
    assert _allowed(good) == set(_walk(grammar, [_token(vocab, "a")]).allowed_token_ids().tolist())


def test_internal_error_is_logged_not_raised(processor, vocab, plugin_log):
    out = processor(None, torch.zeros(vocab.size))  # not a token list: fails inside
    assert _allowed(out) == set(vocab.eos_token_ids)
    assert "internal error while masking" in plugin_log.text


def test_pickled_processor_is_rebuilt_once_per_process(processor, vocab):
    blob = cloudpickle.dumps([processor])
    lp_module._grammars.clear()
    (first,) = cloudpickle.loads(blob)
    (second,) = cloudpickle.loads(blob)
    assert first.grammar is second.grammar
    assert first.grammar is not processor.grammar
    logits = torch.randn(vocab.size)
    assert torch.equal(first([], logits.clone()), processor([], logits.clone()))


def test_unknown_vocabulary_travels_with_the_processor(processor, vocab):
    blob = pickle.dumps(processor)
    lp_module._grammars.clear()
    saved = dict(lp_module._vocabularies)
    lp_module._vocabularies.clear()
    try:
        rebuilt = pickle.loads(blob)
        assert rebuilt.grammar.vocabulary.fingerprint == vocab.fingerprint
    finally:
        lp_module._vocabularies.update(saved)


def test_corrupt_blob_does_not_raise_on_unpickling(processor, vocab, plugin_log):
    func, args = processor.__reduce__()
    key, data, fp, vocab_blob, desc, eos = args
    lp_module._grammars.clear()
    broken = func(key, data[:-10], fp, vocab_blob, desc, eos)
    assert "could not load the compiled constraint" in plugin_log.text
    assert _allowed(broken([], torch.zeros(vocab.size))) == set(vocab.eos_token_ids)
    twin = pickle.loads(pickle.dumps(broken.clone()))
    assert twin.grammar is None and _allowed(twin([], torch.zeros(vocab.size))) == set(vocab.eos_token_ids)


def test_clone_shares_the_grammar_not_the_state(processor, vocab):
    processor([_token(vocab, "a")], torch.zeros(vocab.size))
    twin = processor.clone()
    assert twin.grammar is processor.grammar
    assert twin._states == {}


def test_bitmask_unpacking_matches_numpy_oracle(grammar, vocab):
    m = GrammarMatcher(grammar)
    words = np.zeros((1, (vocab.size + 31) // 32), dtype=np.int32)
    m.fill_next_token_bitmask(words, 0)
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")[: vocab.size].astype(bool)
    lp = DotvllmLogitsProcessor(grammar, key="k")
    out = lp([], torch.zeros(vocab.size))
    assert np.array_equal(torch.isfinite(out).numpy(), bits)


def test_masks_are_shared_per_row_device_and_dtype(grammar, vocab):
    lp_module._masks.clear()
    lp_module._mask_bytes = 0
    a = DotvllmLogitsProcessor(grammar, key="k1")
    b = DotvllmLogitsProcessor(grammar, key="k2")
    a([], torch.zeros(vocab.size))
    b([], torch.zeros(vocab.size))
    assert len(lp_module._masks) == 1
    b([], torch.zeros(vocab.size, dtype=torch.bfloat16))
    b([], torch.zeros(vocab.size + 64))
    assert len(lp_module._masks) == 3
    assert lp_module._mask_bytes == sum(m.numel() * m.element_size() for m in lp_module._masks.values())
