"""The V0 batched step (apply_step's table path, run on CPU logits) against the per-row processor.

Many sequences over several regexes, a Lark grammar (pushdown: per-sequence path), a processor
whose grammar failed to load and a group with another processor, over decoding steps where
sequences advance, repeat a step, are preempted (shorter ids), fork (new sequence ids), end by EOS
or take a token the constraint rejects; the sequence data mirrors vLLM's ``SequenceData`` (an
``array`` of output ids, and a property that copies it into a tuple).
"""

from __future__ import annotations

from array import array
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dotvllm_plugin import GrammarCompiler, GrammarMatcher, Vocabulary
from dotvllm_plugin.masks import StepMasker

REGEXES = [r"[0-9]{2,6}", r'"[a-z ]{0,10}"', r"(?:cat|dog)(?: and (?:cat|dog)){0,3}", r"[^\n]{0,12}"]
LARK = r"""
start: "[" item ("," item)* "]"
item: /[0-9]+/ | "x"
"""


class SequenceData:
    """vLLM V0's ``SequenceData`` as the step reads it."""

    def __init__(self, ids):
        self._output_token_ids = array("l", ids)

    @property
    def output_token_ids(self):
        return tuple(self._output_token_ids)


def _walk(rng, grammar, length: int, eos: int) -> list[int]:
    m = GrammarMatcher(grammar)
    out = []
    for _ in range(length):
        allowed = m.allowed_token_ids()
        if rng.random() < 0.03:  # a token the constraint may reject
            t = int(rng.integers(0, grammar.vocabulary.size))
        elif len(allowed):
            t = int(allowed[rng.integers(len(allowed))])
        else:
            break
        out.append(t)
        if not m.accept_token(t) or t == eos:
            break
    return out


def synthetic_vocab() -> Vocabulary:
    """Every byte, 3000 ASCII words and pieces of UTF-8, EOS last (no tokenizer needed)."""
    rng = np.random.default_rng(3)
    letters = list(b"abcdefghijklmnopqrstuvwxyz 0123456789,[]\"")
    words = {bytes(rng.choice(letters, int(rng.integers(2, 7))).tolist()) for _ in range(3000)}
    words |= {"é".encode(), "日本".encode(), " and".encode(), "cat".encode(), "dog".encode()}
    return Vocabulary([bytes([i]) for i in range(256)] + sorted(words) + [None], eos_token_ids=[256 + len(words)])


def _vocab(request, name):
    return synthetic_vocab() if name == "synthetic" else request.getfixturevalue("mistral_vocab")


CUDA = torch.cuda.is_available()
GPU = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs CUDA")]
CASES = [  # 24 requests: the array path; 3 requests (7 sequences): the scalar path for small batches
    pytest.param("synthetic", "cpu", 1 << 22, 24, id="synthetic"),
    pytest.param("mistral", "cpu", 1 << 22, 24, id="mistral"),
    pytest.param("synthetic", "cpu", 40, 24, id="numbering-starts-over"),
    pytest.param("synthetic", "cpu", 1 << 22, 3, id="few-sequences"),
    pytest.param("synthetic", "cpu", 40, 3, id="few-sequences-numbering-starts-over"),
    pytest.param("synthetic", "cuda", 1 << 22, 24, id="synthetic-cuda", marks=GPU),
    pytest.param("synthetic", "cuda", 40, 24, id="numbering-starts-over-cuda", marks=GPU),
    pytest.param("synthetic", "cuda", 1 << 22, 3, id="few-sequences-cuda", marks=GPU),
]


@pytest.mark.parametrize("vocab_name, device, max_states, n_req", CASES)
def test_v0_vectorised_step_equals_per_row_processor(monkeypatch, request, vocab_name, device, max_states, n_req):
    from dotvllm_plugin.integrations.vllm_v0 import logits_processor as lp
    from dotvllm_plugin.transitions import TokenTransitions

    vocab = _vocab(request, vocab_name)
    eos = vocab.eos_token_ids[0]
    monkeypatch.setattr(lp, "_TABLES_ON_CPU", device == "cpu")
    monkeypatch.setattr(lp, "_step_masker", StepMasker())
    seqs = lp._Sequences(TokenTransitions(vocab, max_states=max_states, eager_bytes=1 << 20))
    monkeypatch.setattr(lp, "_sequences", {vocab.fingerprint: seqs})
    compiler = GrammarCompiler(vocab)
    grammars = [compiler.compile_regex(p) for p in REGEXES] + [compiler.compile_grammar(LARK)]
    rng = np.random.default_rng(5)
    procs = [lp.DotvllmLogitsProcessor(grammars[i % len(grammars)], key=f"g{i % len(grammars)}", description="t")
             for i in range(n_req)]
    procs.append(lp.DotvllmLogitsProcessor(None, key="broken", description="t", eos_token_ids=(eos,)))
    refs = [p.clone() for p in procs]
    # two sequences per request; sequence 2r+1 forks from 2r at step 3 (a new id, copied tokens)
    walks = {}
    for r, p in enumerate(procs):
        g = p.grammar if p.grammar is not None else grammars[0]
        walks[2 * r] = _walk(rng, g, 12, eos)
        walks[2 * r + 1] = _walk(rng, g, 12, eos)
    other = SimpleNamespace(logits_processors=[lambda ids, row: row * 2])
    width = vocab.size + 7
    for step in range(10):
        groups = []
        logits = torch.randn(2 * len(procs) + 1, width, generator=torch.Generator().manual_seed(step)).to(device)
        row = 0
        for r, p in enumerate(procs):
            seq_ids, rows, data = [], [], {}
            for s in (2 * r, 2 * r + 1):
                n = min(len(walks[s]), step)
                if r % 5 == 1 and step == 6:
                    n = max(0, n - 3)  # preempted: recomputed from a shorter prefix
                sid = s + 1000 * (step >= 3) * (s % 2)  # the fork
                ids = walks[s][:n]
                seq_ids.append(sid)
                rows.append(row)
                data[sid] = SequenceData(ids)
                row += 1
            params = SimpleNamespace(logits_processors=[p] if r % 7 else [p, other.logits_processors[0]])
            groups.append(SimpleNamespace(seq_ids=seq_ids, sampling_params=params, sample_indices=rows, seq_data=data))
        groups.append(SimpleNamespace(seq_ids=[9999], sampling_params=other, sample_indices=[row],
                                      seq_data={9999: SequenceData([])}))

        def original(lg, md):  # vLLM's loop for processors other than ours
            for grp in md.seq_groups:
                for proc in grp.sampling_params.logits_processors or ():
                    for sid, rr in zip(grp.seq_ids, grp.sample_indices):
                        lg[rr] = proc(grp.seq_data[sid].output_token_ids, lg[rr])
            return lg

        exp = logits.clone()  # the other processor first, then ours row by row (masking last)
        for grp in groups:
            for sid, rr in zip(grp.seq_ids, grp.sample_indices):
                ids = grp.seq_data[sid].output_token_ids
                for proc in grp.sampling_params.logits_processors:
                    if isinstance(proc, lp.DotvllmLogitsProcessor):
                        continue
                    exp[rr] = proc(ids, exp[rr])
        for grp, ref in zip(groups, refs):
            for sid, rr in zip(grp.seq_ids, grp.sample_indices):
                exp[rr] = ref(grp.seq_data[sid].output_token_ids, exp[rr].clone())
        got = lp.apply_step(original, logits.clone(), SimpleNamespace(seq_groups=groups))
        assert torch.equal(torch.isfinite(got), torch.isfinite(exp)), step
        assert torch.equal(got[torch.isfinite(got)], exp[torch.isfinite(exp)]), step
        assert all(len(g.sampling_params.logits_processors) in (1, 2) for g in groups)
    if max_states < 100:
        assert seqs.transitions.epoch > 0


def test_v0_slots_return_when_a_request_ends(monkeypatch):
    import gc

    from dotvllm_plugin import Vocabulary
    from dotvllm_plugin.integrations.vllm_v0 import logits_processor as lp

    vocab = Vocabulary([None, b"a", b"b"], [0])
    monkeypatch.setattr(lp, "_TABLES_ON_CPU", True)
    monkeypatch.setattr(lp, "_sequences", {})
    grammar = GrammarCompiler(vocab).compile_regex("a+b")
    proc = lp.DotvllmLogitsProcessor(grammar, key="k", description="t")
    groups = [SimpleNamespace(seq_ids=[1, 2], sampling_params=SimpleNamespace(logits_processors=[proc]),
                              sample_indices=[0, 1], seq_data={1: SequenceData([1]), 2: SequenceData([1, 1])})]
    lp.apply_step(lambda lg, md: lg, torch.zeros(2, 3), SimpleNamespace(seq_groups=groups))
    seqs = proc._seqs
    taken = len(seqs.n) - len(seqs.free)
    assert taken == 2
    del proc, groups
    gc.collect()
    assert len(seqs.n) - len(seqs.free) == 0
