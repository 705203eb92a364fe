"""Packed bitmask rows → logits (dotvllm_plugin.masks) against a plain numpy oracle.

CPU tests run everywhere. ``gpu`` tests compare the Triton kernel with the torch reference and
the oracle on CUDA; they are skipped without CUDA. On a GPU machine:

    python -m pytest -q -m gpu tests/test_masks.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from dotvllm_plugin import masks
from dotvllm_plugin.masks import (
    StepMasker,
    apply_token_bitmask_inplace,
    apply_token_bitmask_inplace_reference,
    bitmask_words,
)

CUDA = torch.cuda.is_available()

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp16"]
VOCABS = list(range(32001, 32034))


def random_bitmask(rng, rows: int, vocab: int, *, extra_words: int = 0, density: float = 0.5) -> np.ndarray:
    """Packed rows with about ``density`` of the tokens allowed; junk bits past ``vocab``."""
    bits = rng.random((rows, (bitmask_words(vocab) + extra_words) * 32)) < density
    return np.packbits(bits, axis=1, bitorder="little").view(np.int32)


def oracle(logits: np.ndarray, bitmask: np.ndarray, vocab: int, indices=None, bitmask_indices=None) -> np.ndarray:
    """The contract, written out with integer shifts (no unpackbits, no torch)."""
    out = logits.copy()
    if indices is not None:
        n_rows = len(indices)
    else:
        n_rows = len(bitmask_indices) if bitmask_indices is not None else bitmask.shape[0]
    j = np.arange(logits.shape[1])
    for k in range(n_rows):
        r = indices[k] if indices is not None else k
        m = bitmask_indices[k] if bitmask_indices is not None else k
        words = bitmask[m].astype(np.int64) & 0xFFFFFFFF
        w = np.minimum(j // 32, bitmask.shape[1] - 1)
        allowed = (j < vocab) & (((words[w] >> (j % 32)) & 1) == 1)
        out[r, ~allowed] = -np.inf
    return out


def make_logits(rng, batch: int, width: int, dtype, device="cpu", row_stride: int | None = None) -> torch.Tensor:
    stride = row_stride or width
    buf = torch.from_numpy(rng.standard_normal((batch, stride)).astype(np.float32)).to(dtype).to(device)
    return buf[:, :width]


def as_np(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy()


def check(got: torch.Tensor, expected: np.ndarray) -> None:
    g = as_np(got)
    assert np.array_equal(np.isneginf(g), np.isneginf(expected))
    assert np.array_equal(g[np.isfinite(expected)], expected[np.isfinite(expected)])


# -- the torch reference on CPU -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("pad", [0, 31, 128], ids=["width=vocab", "pad31", "pad128"])
def test_reference_matches_oracle(dtype, vocab, pad):
    rng = np.random.default_rng(vocab * 7 + pad)
    logits = make_logits(rng, 3, vocab + pad, dtype, row_stride=vocab + pad + (17 if pad else 0))
    bitmask = random_bitmask(rng, 3, vocab, extra_words=1)
    expected = oracle(as_np(logits), bitmask, vocab)
    apply_token_bitmask_inplace(logits, torch.from_numpy(bitmask), vocab_size=vocab)
    check(logits, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_indices_mask_only_those_rows(dtype):
    rng = np.random.default_rng(1)
    vocab, width = 32003, 32064
    logits = make_logits(rng, 6, width, dtype, row_stride=32100)
    before = as_np(logits)
    bitmask = random_bitmask(rng, 3, vocab)
    indices = [4, 0, 2]
    expected = oracle(before, bitmask, vocab, indices=indices)
    apply_token_bitmask_inplace(logits, torch.from_numpy(bitmask), vocab_size=vocab, indices=indices)
    check(logits, expected)
    for r in (1, 3, 5):
        assert np.array_equal(as_np(logits)[r], before[r])


def test_bitmask_indices_pick_rows_of_a_table():
    rng = np.random.default_rng(2)
    vocab = 32017
    table = random_bitmask(rng, 5, vocab, extra_words=3)
    logits = make_logits(rng, 4, vocab, torch.float32)
    indices, picks = [3, 1, 0], [4, 4, 0]
    expected = oracle(as_np(logits), table, vocab, indices=indices, bitmask_indices=picks)
    apply_token_bitmask_inplace(logits, torch.from_numpy(table), vocab_size=vocab,
                                indices=torch.tensor(indices), bitmask_indices=torch.tensor(picks))
    check(logits, expected)


def test_vocab_size_defaults_to_the_narrower_of_logits_and_bitmask():
    rng = np.random.default_rng(3)
    bitmask = random_bitmask(rng, 2, 64)
    logits = make_logits(rng, 2, 50, torch.float32)
    expected = oracle(as_np(logits), bitmask, 50)
    apply_token_bitmask_inplace(logits, torch.from_numpy(bitmask))
    check(logits, expected)


def test_one_dimensional_logits_and_empty_indices():
    rng = np.random.default_rng(4)
    bitmask = random_bitmask(rng, 1, 100)
    logits = make_logits(rng, 1, 100, torch.float32)[0]
    expected = oracle(as_np(logits)[None], bitmask, 100)[0]
    apply_token_bitmask_inplace(logits, torch.from_numpy(bitmask[0]))
    check(logits, expected)
    untouched = logits.clone()
    apply_token_bitmask_inplace(logits.unsqueeze(0), torch.from_numpy(bitmask[:0]), indices=[])
    assert torch.equal(logits, untouched)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"bitmask": torch.zeros((2, 4), dtype=torch.int64)}, TypeError, "bitmask must be int32"),
        ({"bitmask": torch.zeros((3, 4), dtype=torch.int32)}, ValueError, "pass indices="),
        ({"vocab_size": 129}, ValueError, "needs 5 bitmask words"),
        ({"indices": [0], "bitmask_indices": [0, 1]}, ValueError, "bitmask_indices has 2 entries"),
        ({"backend": "cuda"}, ValueError, "backend must be"),
        ({"indices": [0, 1], "bitmask": torch.zeros((1, 4), dtype=torch.int32)}, ValueError, "one bitmask row per"),
        ({"logits": torch.zeros((2, 100)).t()}, ValueError, "contiguous along the vocabulary"),
    ],
    ids=["int64-bitmask", "row-count", "vocab-too-big", "bitmask-indices-length", "backend", "too-few-bitmask-rows",
         "column-stride"],
)
def test_bad_arguments(kwargs, error, match):
    args = {"logits": torch.zeros((2, 100)), "bitmask": torch.zeros((2, 4), dtype=torch.int32)}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        apply_token_bitmask_inplace(args.pop("logits"), args.pop("bitmask"), **args)


@pytest.mark.skipif(CUDA or not masks.HAS_TRITON, reason="CPU logits with Triton installed")
def test_triton_backend_refused_for_cpu_logits():
    with pytest.raises(ValueError, match="Triton kernel needs"):
        apply_token_bitmask_inplace(torch.zeros((1, 64)), torch.zeros((1, 2), dtype=torch.int32), backend="triton")


@pytest.mark.skipif(not masks.HAS_TRITON, reason="needs Triton (its interpreter runs the kernel on CPU)")
def test_kernel_in_the_triton_interpreter():
    """The kernel's own code, run by Triton's CPU interpreter: strided rows, indices, padding."""
    script = textwrap.dedent("""
        import numpy as np, torch
        from dotvllm_plugin import masks
        rng = np.random.default_rng(0)
        for dtype in (torch.float32, torch.float16):
            for vocab, width, stride in ((4097, 4100, 4200), (8191, 8192, 8192), (33, 70, 90)):
                words = masks.bitmask_words(vocab) + 1
                table = torch.from_numpy(rng.integers(-2**31, 2**31, (3, words), dtype=np.int64).astype(np.int32))
                buf = torch.from_numpy(rng.standard_normal((5, stride)).astype(np.float32)).to(dtype)
                a, b = buf[:, :width].clone(), buf.clone()[:, :width]
                idx, sel = [4, 1, 3], [2, 0, 2]
                masks._launch(b, table, 3, vocab, torch.tensor(idx, dtype=torch.int32),
                              torch.tensor(sel, dtype=torch.int32))
                masks.apply_token_bitmask_inplace_reference(a, table, vocab_size=vocab, indices=idx,
                                                            bitmask_indices=sel)
                assert torch.equal(a, b), (dtype, vocab, width)
        print("kernel ok")
    """)
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and "kernel ok" in out.stdout, out.stderr[-3000:]


# -- StepMasker ---------------------------------------------------------------------------------------

def _entries(bitmask: np.ndarray, rows, keys):
    def filler(m):
        def fill(dst, j):
            dst[j, : bitmask.shape[1]] = bitmask[m]
            dst[j, bitmask.shape[1]:] = 0
        return fill

    return [(r, key, filler(m)) for r, (m, key) in zip(rows, keys)]


def _step_masker_case(device: str, dtype, max_cached_bytes: int, *, cached: bool = False, upload_all_bytes=0):
    rng = np.random.default_rng(5)
    vocab, width = 32001, 32128
    table = random_bitmask(rng, 6, vocab)
    masker = StepMasker(max_cached_bytes=max_cached_bytes, upload_all_bytes=upload_all_bytes)
    for step in range(4):
        logits = make_logits(rng, 8, width, dtype, device=device, row_stride=width + 64)
        rows = [7, 0, 3, 5, 2]
        # rows 0-3 of the table are "DFA states" (cacheable), 4-5 are filled every step
        picks = [(step + i) % 6 for i in range(5)]
        keys = [("g", m) if m < 4 else None for m in picks]
        expected = oracle(as_np(logits), table, vocab, indices=rows, bitmask_indices=picks)
        entries = _entries(table, rows, list(zip(picks, keys)))
        if cached:  # the CUDA path's bookkeeping (row cache, scratch rows, indices), run on CPU tensors
            masker._apply_cached(logits, entries, vocab, bitmask_words(vocab))
        else:
            masker.apply(logits, entries, vocab_size=vocab)
        check(logits, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_step_masker_cpu(dtype):
    _step_masker_case("cpu", dtype, 64 * 1024 * 1024)
    _step_masker_case("cpu", dtype, 1)  # evicts every step


@pytest.mark.parametrize("max_cached_bytes", [64 * 1024 * 1024, 4 * 1001 * 2, 1], ids=["roomy", "two-rows", "tiny"])
def test_step_masker_device_row_cache_logic_on_cpu(max_cached_bytes):
    _step_masker_case("cpu", torch.float32, max_cached_bytes, cached=True)


def test_step_masker_upload_all_logic_on_cpu():
    _step_masker_case("cpu", torch.float32, 64 * 1024 * 1024, cached=True, upload_all_bytes=1 << 30)


# -- StepMasker.apply_tables: whole row tables on the device, picked by index -----------------------------

def _tables_case(device: str, dtype, max_cached_bytes: int, *, staged: bool = False, masker=None):
    """Steps over three "grammars" (tables of 2, 5 and 3 rows) plus rows filled on the host; each
    step masks a different subset of a batch of 9 rows. ``staged``: the device path's placement,
    ring and indices, run on CPU tensors and applied with the reference."""
    rng = np.random.default_rng(11)
    vocab, width = 32001, 32128
    words = bitmask_words(vocab)
    tables = {"a": random_bitmask(rng, 2, vocab), "b": random_bitmask(rng, 5, vocab), "c": random_bitmask(rng, 3, vocab)}
    extra = random_bitmask(rng, 4, vocab)  # rows the host fills
    masker = masker or StepMasker(max_cached_bytes=max_cached_bytes)
    for step in range(6):
        logits = make_logits(rng, 9, width, dtype, device=device, row_stride=width + 64)
        perm = rng.permutation(9)
        used = ["abc"[(step + i) % 3] for i in range(2 + step % 2)]
        groups, all_rows, all_picks, a = [], [], [], 0
        combined = np.concatenate([tables[k] for k in "abc"] + [extra])
        base = {"a": 0, "b": 2, "c": 7}
        for key in used:
            n = 2
            rows_, picks = perm[a: a + n].tolist(), rng.integers(0, len(tables[key]), n).tolist()
            a += n
            groups.append((key, tables[key], rows_, picks))
            all_rows += rows_
            all_picks += [base[key] + p for p in picks]
        fills = []
        for j in range(step % 3):
            r, m = int(perm[a]), j + step % 2
            a += 1
            fills.append((r, lambda dst, i, m=m: dst.__setitem__(i, extra[m])))
            all_rows.append(r)
            all_picks.append(10 + m)
        before = as_np(logits)
        expected = oracle(before, combined, vocab, indices=all_rows, bitmask_indices=all_picks)
        if staged:
            k = len(all_rows)
            store, slot = masker._stage_tables(logits.device, groups, fills, words, k)
            index = torch.from_numpy(slot.index_np[:, :k].astype(np.int64))
            apply_token_bitmask_inplace_reference(logits, store.table, vocab_size=vocab, indices=index[0],
                                                  bitmask_indices=index[1])
        else:
            masker.apply_tables(logits, groups, fills, vocab_size=vocab)
        check(logits, expected)
        untouched = sorted(set(range(9)) - set(all_rows))
        assert np.array_equal(as_np(logits)[untouched], before[untouched])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_apply_tables_cpu(dtype):
    _tables_case("cpu", dtype, 64 * 1024 * 1024)


@pytest.mark.parametrize("max_cached_bytes", [64 * 1024 * 1024, 4 * 1001 * 6, 1], ids=["roomy", "six-rows", "tiny"])
def test_apply_tables_device_staging_on_cpu(max_cached_bytes):
    """Placement (growth, eviction to the step's own tables), scratch rows and indices, against the oracle."""
    _tables_case("cpu", torch.float32, max_cached_bytes, staged=True)


def test_apply_tables_places_each_table_once():
    masker = StepMasker()
    rng = np.random.default_rng(12)
    table = random_bitmask(rng, 3, 100)
    for _ in range(3):
        store, _ = masker._stage_tables(torch.device("cpu"), [("g", table, [0], [2])], [], bitmask_words(100), 1)
    assert store.placed == {"g": 0} and store.top == 3
    store, _ = masker._stage_tables(torch.device("cpu"), [("h", table[:1], [0], [0]), ("g", table, [1], [1])], [],
                                    bitmask_words(100), 2)
    assert store.placed == {"g": 0, "h": 3} and store.top == 4


# -- GPU: the kernel against the reference and the oracle -----------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("pad", [0, 31, 128], ids=["width=vocab", "pad31", "pad128"])
@pytest.mark.parametrize("strided", [False, True], ids=["dense", "strided"])
@pytest.mark.parametrize("indexed", [False, True], ids=["all-rows", "indices"])
def test_kernel_matches_reference_gpu(dtype, vocab, pad, strided, indexed):
    rng = np.random.default_rng(vocab * 31 + pad)
    width = vocab + pad
    logits = make_logits(rng, 6, width, dtype, "cuda", row_stride=width + 33 if strided else None)
    ref = logits.clone()
    n = 3 if indexed else 6
    bitmask = torch.from_numpy(random_bitmask(rng, n, vocab, extra_words=2)).cuda()
    kw = {"indices": torch.tensor([5, 0, 2], device="cuda", dtype=torch.int32)} if indexed else {}
    expected = oracle(as_np(logits), bitmask.cpu().numpy(), vocab, indices=[5, 0, 2] if indexed else None)
    apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab, backend="triton", **kw)
    apply_token_bitmask_inplace_reference(ref, bitmask, vocab_size=vocab, **kw)
    assert torch.equal(logits, ref)
    check(logits, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("vocab", [32000, 131072])
def test_kernel_large_batch_gpu(vocab):
    rng = np.random.default_rng(6)
    logits = torch.randn(1024, vocab + 128, device="cuda", dtype=torch.bfloat16)
    ref = logits.clone()
    table = torch.from_numpy(random_bitmask(rng, 16, vocab)).cuda()
    picks = torch.from_numpy(rng.integers(0, 16, 1024).astype(np.int32)).cuda()
    apply_token_bitmask_inplace(logits, table, vocab_size=vocab, bitmask_indices=picks, backend="triton")
    apply_token_bitmask_inplace_reference(ref, table, vocab_size=vocab, bitmask_indices=picks)
    assert torch.equal(logits, ref)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_step_masker_gpu(dtype):
    _step_masker_case("cuda", dtype, 64 * 1024 * 1024)
    _step_masker_case("cuda", dtype, 4 * 1001 * 2)  # two cached rows: evictions, scratch fallbacks
    _step_masker_case("cuda", dtype, 64 * 1024 * 1024, upload_all_bytes=1 << 30)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_host_bitmask_for_device_logits_gpu():
    rng = np.random.default_rng(7)
    logits = make_logits(rng, 4, 32010, torch.float32, "cuda")
    bitmask = torch.from_numpy(random_bitmask(rng, 4, 32010)).pin_memory()
    expected = oracle(as_np(logits), bitmask.numpy(), 32010)
    apply_token_bitmask_inplace(logits, bitmask)
    check(logits, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("host_indices", [True, False], ids=["indices-read-from-pinned", "indices-copied"])
def test_apply_tables_gpu(dtype, host_indices):
    masker = StepMasker(read_indices_from_host=host_indices)
    _tables_case("cuda", dtype, 64 * 1024 * 1024, masker=masker)
    assert masker.read_indices_from_host == host_indices  # the pinned read did not fall back
    _tables_case("cuda", dtype, 4 * 1001 * 6, masker=StepMasker(max_cached_bytes=4 * 1001 * 6,
                                                              read_indices_from_host=host_indices))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_direct_launch_gpu(dtype, monkeypatch):
    """The compiled kernel called without Triton's launcher, against the oracle, then Triton's own launch."""
    if not masks._direct.ok:
        pytest.skip(f"direct launch not available with Triton {masks.triton.__version__}")
    before = masks._direct.calls
    _tables_case("cuda", dtype, 64 * 1024 * 1024, masker=StepMasker())
    assert masks._direct.ok and masks._direct.calls > before
    monkeypatch.setattr(masks, "DIRECT_LAUNCH", False)
    calls = masks._direct.calls
    _tables_case("cuda", dtype, 64 * 1024 * 1024, masker=StepMasker())
    assert masks._direct.calls == calls


# -- the V0 processor's batched step on the table path ---------------------------------------------------

def test_v0_step_on_tables_equals_per_row_processor(monkeypatch):
    """apply_step's device path (tables, sequence-id states), run on CPU, over several decoding
    steps against the processor called row by row: sequences that advance, repeat a step, get
    preempted (shorter ids), end by EOS, or take a token the constraint rejects."""
    from types import SimpleNamespace

    from dotvllm_plugin import GrammarCompiler, Vocabulary
    from dotvllm_plugin.integrations.vllm_v0 import logits_processor as lp

    tokens = [b"</s>", b"a", b"b", b"c", b"d", b"ab", b"cd"] + [str(i).encode() for i in range(10)] + [b"12", b"x"]
    vocab = Vocabulary(tokens, [0])
    grammar = GrammarCompiler(vocab).compile_regex(r"(ab|cd)[0-9]{1,3}")
    monkeypatch.setattr(lp, "_TABLES_ON_CPU", True)
    monkeypatch.setattr(lp, "_step_masker", StepMasker())
    t = {tok.decode(): i for i, tok in enumerate(tokens)}
    # per step, each sequence's output ids (seq 2 is preempted at step 3 and restarts)
    seqs = {
        0: [[], [t["ab"]], [t["ab"], t["1"]], [t["ab"], t["1"], t["2"]], [t["ab"], t["1"], t["2"], 0]],
        1: [[], [t["c"]], [t["c"], t["d"]], [t["c"], t["d"]], [t["c"], t["d"], t["12"]]],
        2: [[t["a"]], [t["a"], t["b"]], [t["a"], t["b"], t["3"]], [t["a"]], [t["a"], t["b"]]],
        3: [[], [t["x"]], [t["x"], t["a"]], [t["x"], t["a"]], [t["x"], t["a"], t["b"]]],  # "x" is rejected
    }
    proc = lp.DotvllmLogitsProcessor(grammar, key="k", description="r")
    ref = proc.clone()
    other = lp.DotvllmLogitsProcessor(grammar, key="k", description="r")
    plain = SimpleNamespace(logits_processors=None)
    shared = SimpleNamespace(logits_processors=[proc])
    for step in range(5):
        ids = {s: v[step] for s, v in seqs.items()}
        groups = [
            SimpleNamespace(seq_ids=[0, 1], sampling_params=shared, sample_indices=[4, 1],
                            seq_data={s: SimpleNamespace(output_token_ids=tuple(ids[s])) for s in (0, 1)}),
            SimpleNamespace(seq_ids=[9], sampling_params=plain, sample_indices=[0],
                            seq_data={9: SimpleNamespace(output_token_ids=())}),
            SimpleNamespace(seq_ids=[2, 3], sampling_params=SimpleNamespace(logits_processors=[other]),
                            sample_indices=[3, 2], seq_data={s: SimpleNamespace(output_token_ids=list(ids[s]))
                                                             for s in (2, 3)}),
        ]
        logits = torch.randn(5, len(tokens) + 5, generator=torch.Generator().manual_seed(step))
        expected = logits.clone()
        for s, row in ((0, 4), (1, 1), (2, 3), (3, 2)):
            expected[row] = ref(ids[s], expected[row].clone())
        got = lp.apply_step(lambda lg, md: lg, logits.clone(), SimpleNamespace(seq_groups=groups))
        assert torch.equal(torch.isfinite(got), torch.isfinite(expected)), step
        assert torch.equal(got[torch.isfinite(got)], expected[torch.isfinite(expected)]), step
        assert torch.equal(got[0], logits[0])
        assert shared.logits_processors == [proc]


def test_accept_token_memo_matches_accept_token():
    from dotvllm_plugin import GrammarCompiler, GrammarMatcher, Vocabulary

    tokens = [b"</s>", b"a", b"b", b"ab", b"ba", b"1", b"12", b"x"]
    grammar = GrammarCompiler(Vocabulary(tokens, [0])).compile_regex(r"(ab|ba)+[12]{0,3}")
    rng = np.random.default_rng(13)
    memo: dict = {}
    for _ in range(40):
        plain, memoed = GrammarMatcher(grammar), GrammarMatcher(grammar)
        for _ in range(8):
            t = int(rng.integers(-1, len(tokens) + 2))
            assert memoed.accept_token_memo(t, memo) == plain.accept_token(t)
            assert (memoed.state, memoed.is_terminated()) == (plain.state, plain.is_terminated())
    assert memo
    m = GrammarMatcher(grammar)
    assert not m.accept_token_memo(len(tokens) + 1, memo)  # out of range, even where a memo key would exist
