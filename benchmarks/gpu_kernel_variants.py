"""Variants of the masking kernel on a CUDA device: ours (``dotvllm_plugin.masks``: allowed logits
read and written back, banned ones written, every sector written whole), the store-only kernel it
replaced (only banned logits written, nothing read), and a read+write kernel (every logit read and
written, as xgrammar's), each at BLOCK 1024–8192 and 4–16 warps; fp32 logits, masks with ~1 % of
tokens allowed at random positions, rows picked by device indices. CUDA-event time per launch
(100 back to back, :func:`benchmarks.gpu_masks.event_time_us`); floor = 2·B·V·4 bytes ÷ the
device-to-device copy bandwidth measured in the same run. Needs only torch and Triton::

    python -m benchmarks.gpu_kernel_variants

Output of the 2026-12-04 run (H200): ``benchmarks/results/gpu_kernel_variants.txt``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from benchmarks.gpu_masks import bandwidth_bytes_per_s, event_time_us
from dotvllm_plugin import masks


@triton.jit
def _row_and_allowed(bitmask_ptr, indices_ptr, sel_ptr, bstride, vocab_size, BLOCK: tl.constexpr):
    """The logits row, its columns and their allowed flags for program ``(k, b)``."""
    k = tl.program_id(0)
    b = tl.program_id(1)
    row = tl.load(indices_ptr + k).to(tl.int64)
    mrow = tl.load(sel_ptr + k).to(tl.int64)
    word_ids = b * (BLOCK // 32) + tl.arange(0, BLOCK // 32)
    words = tl.load(bitmask_ptr + mrow * bstride + word_ids, mask=word_ids * 32 < vocab_size, other=0)
    bits = (words[:, None] >> tl.arange(0, 32)[None, :]) & 1
    cols = b * BLOCK + tl.arange(0, BLOCK)
    allowed = (tl.reshape(bits, (BLOCK,)) != 0) & (cols < vocab_size)
    return row, cols, allowed


@triton.jit
def read_write_kernel(logits_ptr, bitmask_ptr, indices_ptr, sel_ptr, lstride, bstride, vocab_size, width,
                      BLOCK: tl.constexpr):
    row, cols, allowed = _row_and_allowed(bitmask_ptr, indices_ptr, sel_ptr, bstride, vocab_size, BLOCK)
    ptrs = logits_ptr + row * lstride + cols
    x = tl.load(ptrs, mask=cols < width)
    tl.store(ptrs, tl.where(allowed, x, -float("inf")), mask=cols < width)


@triton.jit
def store_only_kernel(logits_ptr, bitmask_ptr, indices_ptr, sel_ptr, lstride, bstride, vocab_size, width,
                      BLOCK: tl.constexpr):
    row, cols, allowed = _row_and_allowed(bitmask_ptr, indices_ptr, sel_ptr, bstride, vocab_size, BLOCK)
    tl.store(logits_ptr + row * lstride + cols, -float("inf"), mask=(cols < width) & (allowed == 0))


def main() -> None:
    device = torch.device("cuda")
    bandwidth = bandwidth_bytes_per_s(device)
    for batch, vocab in ((256, 131072), (1024, 131072), (256, 32000), (1, 131072)):
        words = masks.bitmask_words(vocab)
        g = torch.Generator(device=device).manual_seed(0)
        logits = torch.randn(batch, vocab, device=device)
        bits = torch.rand(batch, words * 32, device=device, generator=g) < 0.01  # ~1 % allowed, anywhere
        packed = (bits.view(batch, words, 32).int() << torch.arange(32, device=device)).sum(-1).to(torch.int32)
        idx = torch.arange(batch, dtype=torch.int32, device=device)
        print(f"B={batch} V={vocab} floor {2 * batch * vocab * 4 / bandwidth * 1e6:.1f} us", flush=True)
        args = (logits, packed, idx, idx, logits.stride(0), packed.stride(0), vocab, vocab)
        for block in (1024, 2048, 4096, 8192):
            for warps in (4, 8, 16):
                grid = (batch, triton.cdiv(vocab, block))
                ours = event_time_us(lambda: masks._apply_token_bitmask_kernel[grid](  # noqa: B023
                    *args, HAS_INDICES=True, HAS_BITMASK_INDICES=True, BLOCK=block, num_warps=warps), 100)
                store_only = event_time_us(lambda: store_only_kernel[grid](*args, BLOCK=block, num_warps=warps), 100)  # noqa: B023
                read_write = event_time_us(lambda: read_write_kernel[grid](*args, BLOCK=block, num_warps=warps), 100)  # noqa: B023
                print(f"  BLOCK {block:5d} warps {warps:2d}: ours (allowed read, all stored) {ours:6.1f} us, "
                      f"store-only {store_only:6.1f} us, read+write {read_write:6.1f} us", flush=True)


if __name__ == "__main__":
    main()
