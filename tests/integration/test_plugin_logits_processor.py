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


# -- one masking operation per step (apply_step, the patched _apply_logits_processors) ------------------

def _vllm_apply_logits_processors():
    from vllm.model_executor.layers import logits_processor as vllm_lp

    fn = vllm_lp._apply_logits_processors
    return getattr(fn, "__wrapped__", fn)


def _group(params, seqs: dict[int, list[int]], rows: list[int]):
    from types import SimpleNamespace

    data = {sid: SimpleNamespace(output_token_ids=ids, prompt_token_ids=[1]) for sid, ids in seqs.items()}
    return SimpleNamespace(seq_ids=list(seqs), sampling_params=params, seq_data=data, sample_indices=rows,
                           prompt_logprob_indices=[])


def _step_case(processor, vocab, pad: int, dtype, device="cpu"):
    """A batch of 5 rows: two groups sharing one params object (n > 1), a group whose request also
    has a user processor, a dead sequence, and an unconstrained row."""
    from types import SimpleNamespace

    a, b, c = _token(vocab, "a"), _token(vocab, "b"), _token(vocab, "c")
    bias = lambda ids, row: row.add_(1.0)  # noqa: E731 - a user's logits processor
    shared = SimpleNamespace(logits_processors=[processor])
    other = SimpleNamespace(logits_processors=[bias, processor.clone()])
    plain = SimpleNamespace(logits_processors=None)
    groups = [
        _group(shared, {0: [a]}, [3]),
        _group(shared, {1: [c]}, [0]),
        _group(other, {2: [a, b], 3: [a, c]}, [1, 4]),  # "ac" is not allowed: seq 3 ends
        _group(plain, {4: []}, [2]),
    ]
    logits = torch.randn(5, vocab.size + pad + 40, generator=torch.Generator().manual_seed(pad))
    return SimpleNamespace(seq_groups=groups), logits.to(device=device, dtype=dtype)[:, : vocab.size + pad]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
@pytest.mark.parametrize("pad", [0, 64], ids=["exact-width", "padded-64"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_step_masks_equal_vllm_per_row_loop(grammar, vocab, pad, dtype, device, plugin_log):
    original = _vllm_apply_logits_processors()
    key = compile_key("regex", REGEX, {}, vocab.fingerprint)
    md_row, logits = _step_case(DotvllmLogitsProcessor(grammar, key=key, description="r"), vocab, pad, dtype, device)
    md_step, _ = _step_case(DotvllmLogitsProcessor(grammar, key=key, description="r"), vocab, pad, dtype, device)
    expected = original(logits.clone(), md_row)  # vLLM's own per-row loop over our processor
    got = lp_module.apply_step(original, logits.clone(), md_step)
    assert torch.equal(torch.isfinite(got), torch.isfinite(expected))
    assert torch.equal(got[torch.isfinite(got)], expected[torch.isfinite(expected)])
    assert torch.equal(got[2], logits[2])  # the unconstrained row is untouched
    # the processor lists are restored, user processors ran once
    assert [type(p).__name__ for p in md_step.seq_groups[2].sampling_params.logits_processors] == [
        "function", "DotvllmLogitsProcessor"]


def test_step_rejected_token_ends_only_that_sequence(processor, grammar, vocab, plugin_log):
    from types import SimpleNamespace

    original = _vllm_apply_logits_processors()
    eos = vocab.eos_token_ids[0]
    params = SimpleNamespace(logits_processors=[processor])
    md = SimpleNamespace(seq_groups=[_group(params, {0: [_token(vocab, "1")], 1: []}, [0, 1])])
    logits = torch.randn(2, vocab.size)
    logits[0, eos] = float("-inf")  # another processor banned EOS: it must stay choosable
    out = lp_module.apply_step(original, logits, md)
    assert _allowed(out[0]) == {eos} and out[0, eos] == 0
    assert _allowed(out[1]) == set(GrammarMatcher(grammar).allowed_token_ids().tolist())
    assert "not allowed" in plugin_log.text


def test_step_falls_back_to_rows_when_masking_fails(processor, grammar, vocab, plugin_log, monkeypatch):
    from types import SimpleNamespace

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(lp_module._step_masker, "apply", broken)
    monkeypatch.setattr(lp_module, "_step_error_reported", False)
    params = SimpleNamespace(logits_processors=[processor])
    md = SimpleNamespace(seq_groups=[_group(params, {0: []}, [0])])
    out = lp_module.apply_step(_vllm_apply_logits_processors(), torch.randn(1, vocab.size), md)
    assert _allowed(out[0]) == set(GrammarMatcher(grammar).allowed_token_ids().tolist())
    assert "masking row by row instead" in plugin_log.text


def test_step_patch_is_applied_once_and_logged():
    """In a fresh interpreter: patches are process-wide, and this test process must keep vLLM's
    classes unpatched for the tests that check them explicitly."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        from vllm.model_executor.layers import logits_processor as vllm_lp
        from dotvllm_plugin.integrations.vllm_v0 import _patches
        name = "vllm.model_executor.layers.logits_processor._apply_logits_processors"
        first = _patches.apply()
        assert getattr(vllm_lp._apply_logits_processors, "_dotvllm", False)
        assert name not in _patches.apply()
        assert name in first, first
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]