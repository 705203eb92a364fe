"""Variants of the masking kernel on a CUDA device: ours (``dotvllm_plugin.masks``: allowed logits
read and written back, banned ones written, every sector written whole), the store-only kernel it
replaced (only banned logits written, nothing read), and a read+write kernel (every logit read and
written, as xgrammar's), each at BLOCK 1024–8192 and 4–16 warps; fp32 logits, masks with ~1 % of
tokens allowed at random positions, rows picked by device indices. CUDA-event time per launch
(100 back to back). Needs only torch and Triton::

    python benchmarks/gpu_kernel_variants.py

Output of the 2026-12-04 run (H200): ``benchmarks/results/gpu_kernel_variants.txt``.
"""
import sys, torch, triton, triton.language as tl
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from dotvllm_plugin import masks

@triton.jit
def rw_kernel(logits_ptr, bitmask_ptr, indices_ptr, sel_ptr, lstride, bstride, vocab_size, width, BLOCK: tl.constexpr):
    k = tl.program_id(0); b = tl.program_id(1)
    row = tl.load(indices_ptr + k).to(tl.int64); mrow = tl.load(sel_ptr + k).to(tl.int64)
    word_ids = b * (BLOCK // 32) + tl.arange(0, BLOCK // 32)
    words = tl.load(bitmask_ptr + mrow * bstride + word_ids, mask=word_ids * 32 < vocab_size, other=0)
    bits = (words[:, None] >> tl.arange(0, 32)[None, :]) & 1
    cols = b * BLOCK + tl.arange(0, BLOCK)
    banned = (tl.reshape(bits, (BLOCK,)) == 0) | (cols >= vocab_size)
    ptrs = logits_ptr + row * lstride + cols
    x = tl.load(ptrs, mask=cols < width)
    tl.store(ptrs, tl.where(banned, -float("inf"), x), mask=cols < width)

@triton.jit
def store_only_kernel(logits_ptr, bitmask_ptr, indices_ptr, sel_ptr, lstride, bstride, vocab_size, width, BLOCK: tl.constexpr):
    k = tl.program_id(0); b = tl.program_id(1)
    row = tl.load(indices_ptr + k).to(tl.int64); mrow = tl.load(sel_ptr + k).to(tl.int64)
    word_ids = b * (BLOCK // 32) + tl.arange(0, BLOCK // 32)
    words = tl.load(bitmask_ptr + mrow * bstride + word_ids, mask=word_ids * 32 < vocab_size, other=0)
    bits = (words[:, None] >> tl.arange(0, 32)[None, :]) & 1
    cols = b * BLOCK + tl.arange(0, BLOCK)
    banned = (tl.reshape(bits, (BLOCK,)) == 0) | (cols >= vocab_size)
    tl.store(logits_ptr + row * lstride + cols, -float("inf"), mask=(cols < width) & banned)

def t(fn, reps=100):
    fn(); torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps): fn()
    b.record(); torch.cuda.synchronize()
    return a.elapsed_time(b) * 1e3 / reps

for B, V in ((256, 131072), (1024, 131072), (256, 32000), (1, 131072)):
    words = (V + 31) // 32
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(B, V, device="cuda")
    # sparse masks: ~1% of tokens allowed, clustered like real rows
    bits = torch.rand(B, words * 32, device="cuda", generator=g) < 0.01
    packed = (bits.view(B, words, 32).int() << torch.arange(32, device="cuda")).sum(-1).to(torch.int32)
    idx = torch.arange(B, dtype=torch.int32, device="cuda")
    floor = 2 * B * V * 4 / 4.26e12 * 1e6
    print(f"B={B} V={V} floor {floor:.1f} us", flush=True)
    for BLOCK in (1024, 2048, 4096, 8192):
        for warps in (4, 8, 16):
            grid = (B, triton.cdiv(V, BLOCK))
            f = lambda: masks._apply_token_bitmask_kernel[grid](logits, packed, idx, idx, logits.stride(0), packed.stride(0), V, V,
                                                                 HAS_INDICES=True, HAS_BITMASK_INDICES=True, BLOCK=BLOCK, num_warps=warps)
            so = lambda: store_only_kernel[grid](logits, packed, idx, idx, logits.stride(0), packed.stride(0), V, V, BLOCK=BLOCK, num_warps=warps)
            r = lambda: rw_kernel[grid](logits, packed, idx, idx, logits.stride(0), packed.stride(0), V, V, BLOCK=BLOCK, num_warps=warps)
            print(f"  BLOCK {BLOCK:5d} warps {warps:2d}: ours (allowed read, all stored) {t(f):6.1f} us, store-only {t(so):6.1f} us, read+write {t(r):6.1f} us", flush=True)
