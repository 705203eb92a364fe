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
