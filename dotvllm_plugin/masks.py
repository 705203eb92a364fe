"""Packed token bitmasks applied to logits for a whole batch in one operation.

A bitmask row is the layout :meth:`GrammarMatcher.fill_next_token_bitmask` fills: int32 words,
bit ``i % 32`` of word ``i // 32`` set = token ``i`` allowed. :func:`apply_token_bitmask_inplace`
writes ``-inf`` into every disallowed logit of every masked row at once:

* on CUDA, for float32 / bfloat16 / float16 logits whose last dimension is contiguous, one Triton
  kernel launch (when Triton is importable);
* elsewhere (CPU, other dtypes, no Triton), :func:`apply_token_bitmask_inplace_reference`, a few
  torch operations on the logits' device; the kernel is tested against it.

:class:`StepMasker` assembles one decoding step's rows for an integration: rows that depend only
on a DFA state are cached on the device and picked by index; the others are filled on the host
into pinned memory and copied asynchronously; then one :func:`apply_token_bitmask_inplace`.

This module does not import vLLM.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import numpy as np
import torch

__all__ = [
    "HAS_TRITON",
    "StepMasker",
    "apply_token_bitmask_inplace",
    "apply_token_bitmask_inplace_reference",
    "bitmask_words",
]

try:  # Triton is optional: CPU builds of torch come without it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

HAS_TRITON = triton is not None
"""Whether the Triton kernel can be used (CUDA logits still required at call time)."""

_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_BLOCK = 8192  # logits per program: 256 bitmask words (8 warps; fastest of 1024–8192 × 4–16 warps measured)


def bitmask_words(vocab_size: int) -> int:
    """Int32 words per bitmask row for ``vocab_size`` tokens: ``ceil(vocab_size / 32)``."""
    return (vocab_size + 31) // 32


# -- arguments ----------------------------------------------------------------------------------------

def _as_rows(logits: torch.Tensor) -> torch.Tensor:
    if logits.dim() == 1:
        return logits.unsqueeze(0)
    if logits.dim() != 2:
        raise ValueError(f"logits must be [batch, width] or [width], got shape {tuple(logits.shape)}")
    return logits


def _check(logits, bitmask, vocab_size, indices, bitmask_indices):
    """Validate and normalise; return (2-D logits, 2-D bitmask, masked rows K, columns that hold tokens)."""
    rows = _as_rows(logits)
    if bitmask.dtype != torch.int32:
        raise TypeError(f"bitmask must be int32 (packed rows), got {bitmask.dtype}")
    if bitmask.dim() == 1:
        bitmask = bitmask.unsqueeze(0)
    if bitmask.dim() != 2:
        raise ValueError(f"bitmask must be [rows, words] or [words], got shape {tuple(bitmask.shape)}")
    if rows.stride(-1) != 1:
        raise ValueError("logits must be contiguous along the vocabulary (stride 1); rows may be strided")
    capacity = bitmask.shape[1] * 32
    if vocab_size is None:
        vocab_size = min(rows.shape[1], capacity)
    if not 0 <= vocab_size <= capacity:
        raise ValueError(f"vocab_size {vocab_size} needs {bitmask_words(vocab_size)} bitmask words per row, "
                         f"the bitmask has {bitmask.shape[1]}")
    if indices is not None:
        k = len(indices)
    elif bitmask_indices is not None:
        k = rows.shape[0]
    else:
        k = bitmask.shape[0]
        if k != rows.shape[0]:
            raise ValueError(f"bitmask has {k} rows and logits {rows.shape[0]}: pass indices= to mask some rows")
    if bitmask_indices is not None and len(bitmask_indices) != k:
        raise ValueError(f"bitmask_indices has {len(bitmask_indices)} entries, expected {k} (one per masked row)")
    if bitmask_indices is None and bitmask.shape[0] < k:
        raise ValueError(f"{k} rows to mask and {bitmask.shape[0]} bitmask rows: one bitmask row per masked row")
    return rows, bitmask, k, min(vocab_size, rows.shape[1])


def _index_tensor(x, device, dtypes=(torch.int64,)) -> torch.Tensor | None:
    """``x`` as an index tensor on ``device``, kept as it is when it already fits."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        if x.device == device and x.dtype in dtypes:
            return x
        return x.to(device=device, dtype=dtypes[0], non_blocking=True)
    return torch.as_tensor(np.asarray(x, dtype=np.int64), device=device).to(dtypes[0])


# -- reference ----------------------------------------------------------------------------------------

def apply_token_bitmask_inplace_reference(
    logits: torch.Tensor,
    bitmask: torch.Tensor,
    *,
    vocab_size: int | None = None,
    indices: Sequence[int] | torch.Tensor | None = None,
    bitmask_indices: Sequence[int] | torch.Tensor | None = None,
) -> None:
    """Torch implementation of :func:`apply_token_bitmask_inplace` (same contract), on any device."""
    rows, bitmask, k, n = _check(logits, bitmask, vocab_size, indices, bitmask_indices)
    if k == 0:
        return
    device = rows.device
    words = bitmask.to(device, non_blocking=True)
    sel = _index_tensor(bitmask_indices, device)
    if sel is not None:
        words = words.index_select(0, sel)
    words = words[:k, : bitmask_words(n)]
    if device.type == "cpu":
        # numpy unpacks bits several times faster than shifts on CPU (little-endian words).
        bits = np.unpackbits(np.ascontiguousarray(words.numpy()).view(np.uint8), axis=1, bitorder="little")
        allowed = torch.from_numpy(bits[:, :n].view(np.bool_))
    else:
        shifts = torch.arange(32, dtype=torch.int32, device=device)
        allowed = ((words.unsqueeze(-1) >> shifts) & 1).to(torch.bool).reshape(k, -1)[:, :n]
    banned = torch.ones((k, rows.shape[1]), dtype=torch.bool, device=device)
    banned[:, :n] = ~allowed
    rows_sel = _index_tensor(indices, device)
    if rows_sel is None:
        rows.masked_fill_(banned, float("-inf"))
    else:
        # Duplicate indices would make index_put_ ambiguous; the contract allows each row once.
        picked = rows.index_select(0, rows_sel).masked_fill_(banned, float("-inf"))
        rows.index_copy_(0, rows_sel, picked)


# -- Triton kernel ------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _apply_token_bitmask_kernel(
        logits_ptr,
        bitmask_ptr,
        indices_ptr,
        bitmask_indices_ptr,
        logits_row_stride,
        bitmask_row_stride,
        vocab_size,
        width,
        HAS_INDICES: tl.constexpr,
        HAS_BITMASK_INDICES: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """Write ``-inf`` into the disallowed logits of the masked rows, in place.

        Program ``(k, b)`` handles masked row ``k`` and logits columns ``[b*BLOCK, (b+1)*BLOCK)``.
        Specification (``n = vocab_size``, at most the logits width)::

            for k in range(num_masked_rows):                      # grid axis 0
                r = indices[k] if HAS_INDICES else k              # logits row
                m = bitmask_indices[k] if HAS_BITMASK_INDICES else k   # bitmask row
                for j in range(width):                            # grid axis 1, BLOCK at a time
                    allowed = j < n and (bitmask[m, j // 32] >> (j % 32)) & 1
                    if not allowed:
                        logits[r, j] = -inf                       # row r at r * logits_row_stride

        Columns ``n <= j < width`` (a model's padded embedding rows) are always written ``-inf``.
        Memory traffic: allowed logits are read and written back unchanged, banned ones are only
        written, so every sector of a row is written whole. Storing only the banned logits (no
        reads at all) leaves sectors partly written wherever an allowed token sits among banned
        ones, and the device then reads them anyway: on an H200 that store-only kernel took
        1.2–1.8× as long at B = 256, V = 131k, depending on how the allowed tokens are spread.
        """
        k = tl.program_id(0)
        b = tl.program_id(1)
        if HAS_INDICES:
            row = tl.load(indices_ptr + k).to(tl.int64)
        else:
            row = k.to(tl.int64)
        if HAS_BITMASK_INDICES:
            mrow = tl.load(bitmask_indices_ptr + k).to(tl.int64)
        else:
            mrow = k.to(tl.int64)
        word_ids = b * (BLOCK // 32) + tl.arange(0, BLOCK // 32)
        words = tl.load(bitmask_ptr + mrow * bitmask_row_stride + word_ids, mask=word_ids * 32 < vocab_size, other=0)
        bits = (words[:, None] >> tl.arange(0, 32)[None, :]) & 1
        cols = b * BLOCK + tl.arange(0, BLOCK)
        allowed = (tl.reshape(bits, (BLOCK,)) != 0) & (cols < vocab_size)
        ptrs = logits_ptr + row * logits_row_stride + cols
        in_row = cols < width
        kept = tl.load(ptrs, mask=in_row & allowed, other=-float("inf"))
        tl.store(ptrs, kept, mask=in_row)


def _launch_indexed(rows, table, k, n, indices, bitmask_indices) -> None:
    """The kernel over ``k`` masked rows, both index vectors given as int32 tensors the GPU can read
    (on the device, or pinned host memory, which CUDA maps into the device's address space)."""
    width = rows.shape[1]
    args = (rows, table, indices, bitmask_indices, rows.stride(0), table.stride(0), n, width)
    grid = (k, triton.cdiv(width, _BLOCK))
    if DIRECT_LAUNCH and _direct.launch(grid, args):
        return
    compiled = _apply_token_bitmask_kernel[grid](
        *args, HAS_INDICES=True, HAS_BITMASK_INDICES=True, BLOCK=_BLOCK, num_warps=8,
    )
    if DIRECT_LAUNCH:
        _direct.remember(args, compiled)


DIRECT_LAUNCH = True
"""Whether :func:`_launch_indexed` calls Triton's compiled kernel directly once Triton has
compiled it for the arguments' specialisation (set to ``False`` to always go through Triton's
launcher; the GPU tests compare both)."""


class _DirectLaunch:
    """Calls the compiled kernel without Triton's Python launcher (argument binding, the
    specialisation key, the cache lookup: most of a launch's host time).

    Triton compiles one kernel per *specialisation* of the arguments: integers equal to 1 or
    divisible by 16, pointers aligned to 16 bytes, 64-bit integers. The compiled kernels are kept
    per such key, computed here the same way, and only a kernel that Triton itself returned for
    an equal key is called, the way Triton 3.3+ calls it (``CompiledKernel.run`` with the launch
    metadata, the launch hooks of ``triton.knobs`` and every bound argument, constexprs included).
    On an older Triton, or on any error, it turns itself off for good and Triton's own launch is
    used.
    """

    def __init__(self):
        self.kernels: dict[tuple, tuple] = {}
        self.calls = 0  # launches made directly (tests)
        self.runtime = getattr(getattr(triton, "knobs", None), "runtime", None) if HAS_TRITON else None
        self.ok = self.runtime is not None and _triton_version() >= (3, 3)
        self.constexprs = (True, True, _BLOCK)  # HAS_INDICES, HAS_BITMASK_INDICES, BLOCK
        self._stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)

    @staticmethod
    def key(args) -> tuple:
        rows, table, idx, sel = args[:4]
        return (rows.device.index, rows.dtype,
                rows.data_ptr() % 16 == 0, table.data_ptr() % 16 == 0, idx.data_ptr() % 16 == 0,
                sel.data_ptr() % 16 == 0,
                *((v == 1, v % 16 == 0, v >= 1 << 31) for v in args[4:]))

    def remember(self, args, compiled) -> None:
        if not self.ok:
            return
        try:
            self.kernels[self.key(args)] = (compiled.run, compiled.function, compiled.packed_metadata,
                                            compiled.launch_metadata)
        except AttributeError:  # another Triton API
            self.ok = False

    def launch(self, grid, args) -> bool:
        if not self.ok:
            return False
        got = self.kernels.get(self.key(args))
        if got is None:
            return False
        run, function, packed, launch_metadata = got
        try:
            stream = self._stream(args[0].device.index)
            rt = self.runtime
            run(grid[0], grid[1], 1, stream, function, packed, launch_metadata(grid, stream, *args, *self.constexprs),
                rt.launch_enter_hook, rt.launch_exit_hook, *args, *self.constexprs)
            self.calls += 1
            return True
        except Exception:  # noqa: BLE001 - an unexpected launcher: Triton's own path from now on
            self.ok = False
            return False


def _triton_version() -> tuple[int, int]:
    try:
        return tuple(int(x) for x in triton.__version__.split(".")[:2])
    except (AttributeError, ValueError):
        return (0, 0)


_direct = _DirectLaunch()


def _use_kernel(rows: torch.Tensor) -> bool:
    return HAS_TRITON and rows.is_cuda and rows.dtype in _KERNEL_DTYPES


def _launch(rows, bitmask, k, n, indices, bitmask_indices) -> None:
    device = rows.device
    bitmask = bitmask.to(device, non_blocking=True)
    if bitmask.stride(-1) != 1:
        bitmask = bitmask.contiguous()
    idx = _index_tensor(indices, device, (torch.int32, torch.int64))
    sel = _index_tensor(bitmask_indices, device, (torch.int32, torch.int64))
    idx = idx.contiguous() if idx is not None else None  # the kernel reads element k at offset k
    sel = sel.contiguous() if sel is not None else None
    width = rows.shape[1]
    grid = (k, triton.cdiv(width, _BLOCK))
    _apply_token_bitmask_kernel[grid](
        rows, bitmask, idx if idx is not None else bitmask, sel if sel is not None else bitmask,
        rows.stride(0), bitmask.stride(0), n, width,
        HAS_INDICES=idx is not None, HAS_BITMASK_INDICES=sel is not None, BLOCK=_BLOCK, num_warps=8,
    )


def _apply_triton(rows, bitmask, k, n, indices, bitmask_indices) -> None:
    if rows.device.index == torch.cuda.current_device():  # entering torch.cuda.device costs microseconds
        _launch(rows, bitmask, k, n, indices, bitmask_indices)
        return
    with torch.cuda.device(rows.device):
        _launch(rows, bitmask, k, n, indices, bitmask_indices)


def apply_token_bitmask_inplace(
    logits: torch.Tensor,
    bitmask: torch.Tensor,
    *,
    vocab_size: int | None = None,
    indices: Sequence[int] | torch.Tensor | None = None,
    bitmask_indices: Sequence[int] | torch.Tensor | None = None,
    backend: str = "auto",
) -> None:
    """Set every disallowed logit of the masked rows to ``-inf``, in place, in one operation.

    Masked row ``k`` is logits row ``indices[k]`` (default ``k``) under bitmask row
    ``bitmask_indices[k]`` (default ``k``)::

        for k in range(K):
            for j in range(logits.shape[-1]):
                if not (j < vocab_size and bitmask[bitmask_indices[k], j // 32] >> (j % 32) & 1):
                    logits[indices[k], j] = -inf

    Unlike xgrammar's function of the same name, ids from ``vocab_size`` to the logits width (a
    model's padded embedding rows, never text) are masked too, and ``indices`` picks rows of the
    logits while the bitmask holds only the masked rows (``bitmask_indices`` can pick them from a
    table of cached rows instead).

    Parameters
    ----------
    logits : torch.Tensor
        ``[batch, width]`` (or ``[width]``), float, contiguous along the last dimension; the row
        stride may be anything (a slice of a wider buffer).
    bitmask : torch.Tensor
        int32 ``[rows, words]`` packed rows, ``words >= ceil(vocab_size / 32)``; on the logits'
        device or on the host (copied; from pinned memory the copy is asynchronous).
    vocab_size : int, optional
        Tokens the bitmask describes; default ``min(width, 32 * words)``.
    indices : sequence of int or torch.Tensor, optional
        Logits row of each masked row (each row at most once); default: all rows, and then
        ``K = batch`` and, without ``bitmask_indices``, ``bitmask`` must have ``batch`` rows.
    bitmask_indices : sequence of int or torch.Tensor, optional
        Bitmask row of each masked row (rows may repeat); default ``k``.
    backend : {"auto", "triton", "torch"}
        ``auto``: the Triton kernel for CUDA float32/bfloat16/float16 logits when Triton is
        installed, else the torch reference.

    Raises
    ------
    TypeError
        ``bitmask`` is not int32.
    ValueError
        Shapes that do not fit together, or ``backend="triton"`` where the kernel cannot run.
    """
    rows, bitmask, k, n = _check(logits, bitmask, vocab_size, indices, bitmask_indices)
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    use_kernel = _use_kernel(rows) if backend == "auto" else backend == "triton"
    if use_kernel and not _use_kernel(rows):
        raise ValueError(f"the Triton kernel needs Triton and CUDA float32/bfloat16/float16 logits "
                         f"(Triton {'found' if HAS_TRITON else 'missing'}, logits {rows.dtype} on {rows.device})")
    if k == 0:
        return
    if use_kernel:
        _apply_triton(rows, bitmask, k, n, indices, bitmask_indices)
    else:
        apply_token_bitmask_inplace_reference(logits, bitmask, vocab_size=vocab_size, indices=indices,
                                              bitmask_indices=bitmask_indices)


# -- one decoding step ----------------------------------------------------------------------------------

RowFiller = Callable[[np.ndarray, int], None]
"""``fill(bitmask, index)``: writes one packed row (``GrammarMatcher.fill_next_token_bitmask``)."""


class _DeviceRows:
    """Packed rows resident on one device: an LRU table of cacheable rows plus a per-step scratch
    region for the rows filled on the host this step; pinned host staging for the upload."""

    def __init__(self, device: torch.device, words: int, capacity: int):
        self.device = device
        self.words = words
        self.capacity = capacity  # cached rows; scratch rows follow them in `table`
        self.slots: OrderedDict[Hashable, int] = OrderedDict()
        self.free = list(range(capacity - 1, -1, -1))
        self.scratch = 0
        self.table = torch.zeros((capacity, words), dtype=torch.int32, device=device)
        self.host = self.host_np = None
        self.index_host = self.index_np = None
        self.copied: torch.cuda.Event | None = None
        self.pin = device.type == "cuda"

    def staging(self, n_rows: int, n_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Host buffers for this step (previous step's copies have finished reading them)."""
        if self.copied is not None:
            self.copied.synchronize()
        if self.host is None or self.host.shape[0] < n_rows:
            self.host = torch.zeros((_grow(n_rows), self.words), dtype=torch.int32, pin_memory=self.pin)
            self.host_np = self.host.numpy()
        if self.index_host is None or self.index_host.shape[0] < 2 * n_index:
            self.index_host = torch.zeros(2 * _grow(n_index), dtype=torch.int32, pin_memory=self.pin)
            self.index_np = self.index_host.numpy()
        if self.scratch < n_rows:
            self.scratch = _grow(n_rows)
            table = torch.zeros((self.capacity + self.scratch, self.words), dtype=torch.int32, device=self.device)
            table[: self.capacity].copy_(self.table[: self.capacity])
            self.table = table
        return self.host_np, self.index_np

    def slot(self, key: Hashable, used: set) -> tuple[int, bool]:
        """(slot, hit) for a cacheable row; slot -1 when every slot is in use this step."""
        s = self.slots.get(key)
        if s is not None:
            self.slots.move_to_end(key)
            return s, True
        if self.free:
            s = self.free.pop()
        else:
            old, s = next(iter(self.slots.items()))
            if s in used:
                return -1, False
            del self.slots[old]
        self.slots[key] = s
        return s, False


def _grow(n: int) -> int:
    return 1 << max(4, (n - 1).bit_length())


TableGroup = tuple[Hashable, np.ndarray, Sequence[int], Sequence[int]]
"""``(key, table, logits_rows, picks)``: logits row ``logits_rows[i]`` is masked with row
``picks[i]`` of ``table``, the packed ``[n, words]`` int32 rows of one constraint (the DFA state
rows of a compiled grammar), which depend only on ``key``."""


def _group_arrays(groups: Sequence[TableGroup]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits rows, table number, picks) of :data:`TableGroup` entries, as int64 arrays."""
    if not groups:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    logits_rows = np.concatenate([np.asarray(g[2], dtype=np.int64) for g in groups])
    picks = np.concatenate([np.asarray(g[3], dtype=np.int64) for g in groups])
    table_of = np.repeat(np.arange(len(groups), dtype=np.int64), [len(g[2]) for g in groups])
    return logits_rows, table_of, picks


class _Slot:
    """Pinned host buffers of one step: ``index[0]`` logits rows, ``index[1]`` table rows, and the
    rows filled on the host; ``done`` is recorded after the step's kernel."""

    __slots__ = ("done", "index", "index_np", "logits_rows", "rows", "rows_np", "table_rows")

    def __init__(self):
        self.index = self.index_np = self.rows = self.rows_np = self.done = None
        self.logits_rows = self.table_rows = None  # index[0], index[1] (views made once)


class _RowStore:
    """Whole row tables of constraints resident on one device (one vocabulary width).

    ``table`` holds every placed constraint's rows contiguously (``placed[key]`` = first row),
    then ``scratch`` rows that the host fills each step. Tables are uploaded once; when a new
    one does not fit under ``limit`` rows, only the step's own tables are kept. Host buffers
    come in a ring of slots, each reused once the event recorded after its last kernel has
    completed (a step later in practice, so the wait is free).
    """

    RING = 4

    def __init__(self, device: torch.device, words: int, limit: int):
        self.device, self.words, self.limit = device, words, limit
        self.placed: dict[Hashable, int] = {}
        self.top = self.capacity = self.scratch = 0
        self.table = torch.zeros((0, words), dtype=torch.int32, device=device)
        self.pin = device.type == "cuda"
        self.slots = [_Slot() for _ in range(self.RING)]
        self.turn = 0
        self.index_cap = 0
        self.device_index: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (buffer, rows 0, 1)

    def place(self, tables: Sequence[tuple[Hashable, np.ndarray]], n_scratch: int) -> list[int]:
        """First row of each table in ``table`` (uploading what is missing); room for ``n_scratch``."""
        offsets = [self.placed.get(key) for key, _ in tables]
        missing = [i for i, off in enumerate(offsets) if off is None]
        if not missing and n_scratch <= self.scratch:
            return offsets
        need = sum(len(tables[i][1]) for i in missing)
        capacity = self.capacity
        if self.top + need > capacity:
            if self.top + need <= self.limit:
                capacity = min(self.limit, _grow(self.top + need))
            else:  # full: keep this step's tables only (re-uploaded from the host)
                self.placed.clear()
                self.top = 0
                missing = list(range(len(tables)))
                need = sum(len(rows) for _, rows in tables)
                capacity = max(capacity, need)
        scratch = self.scratch if n_scratch <= self.scratch else _grow(n_scratch)
        if capacity != self.capacity or scratch != self.scratch:
            table = torch.zeros((capacity + scratch, self.words), dtype=torch.int32, device=self.device)
            if self.top:
                table[: self.top].copy_(self.table[: self.top])
            self.table, self.capacity, self.scratch = table, capacity, scratch
        for i in missing:
            key, rows = tables[i]
            n, w = rows.shape[0], min(rows.shape[1], self.words)
            src = torch.from_numpy(np.array(rows[:, :w], dtype=np.int32, copy=True))
            self.table[self.top: self.top + n, :w].copy_(src)
            if w < self.words:
                self.table[self.top: self.top + n, w:] = 0
            self.placed[key] = offsets[i] = self.top
            self.top += n
        return offsets

    def slot(self, k: int, n_fill: int) -> _Slot:
        s = self.slots[self.turn]
        self.turn = (self.turn + 1) % self.RING
        if s.done is not None:
            s.done.synchronize()
        if k > self.index_cap:
            self.index_cap = _grow(k)
        if s.index is None or s.index.shape[1] != self.index_cap:
            s.index = torch.zeros((2, self.index_cap), dtype=torch.int32, pin_memory=self.pin)
            s.index_np = s.index.numpy()
            s.logits_rows, s.table_rows = s.index[0], s.index[1]
        if n_fill and (s.rows is None or s.rows.shape[0] < n_fill):
            s.rows = torch.zeros((_grow(n_fill), self.words), dtype=torch.int32, pin_memory=self.pin)
            s.rows_np = s.rows.numpy()
        return s


class StepMasker:
    """Applies one decoding step's masks to a batch of logits (on CUDA: one :func:`apply_token_bitmask_inplace`).

    Parameters
    ----------
    max_cached_bytes : int
        Device memory for cached rows, per device and vocabulary width.
    upload_all_bytes : int
        Up to this many bytes of packed rows per step, every row is filled on the host and
        uploaded (a 4 MB pinned copy takes about 80 µs on an H200 host, less than the
        bookkeeping of the device row cache for that many rows in Python); above it, cached rows
        are picked on the device.

    Notes
    -----
    Each entry is ``(logits_row, key, fill)``. A ``key`` (hashable, not ``None``) says the row
    depends only on that key (a DFA state of a compiled grammar): on CUDA it is uploaded once and
    then picked on the device by index, so a step of cached rows copies only ``2·K`` int32
    indices to the device. Rows with ``key=None`` (a grammar's parser stack) are filled on the
    host every step. On CPU every row is filled on the host (a 4 kB copy for 32k tokens) and
    added to the logits row as a cached 0/``-inf`` row (keyed by the packed row).
    Calls are serialised by a lock (an engine runs one step at a time anyway); the host staging
    buffers of a device are reused only after the previous step's copies out of them finished.
    """

    def __init__(self, *, max_cached_bytes: int = 64 * 1024 * 1024, upload_all_bytes: int = 8 * 1024 * 1024,
                 read_indices_from_host: bool = True):
        self.max_cached_bytes = max_cached_bytes
        self.upload_all_bytes = upload_all_bytes
        self.read_indices_from_host = read_indices_from_host
        self._devices: dict[tuple, _DeviceRows] = {}
        self._stores: dict[tuple, _RowStore] = {}
        self._additive: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # CPU: packed row -> 0/-inf row
        self._additive_bytes = 0
        self._additive_by_key: dict[tuple, torch.Tensor] = {}  # (row key, dtype, width) -> the same masks
        self._scratch: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def apply(self, logits: torch.Tensor, entries: Sequence[tuple[int, Hashable | None, RowFiller]], *,
              vocab_size: int) -> None:
        """Mask ``logits`` rows ``entry[0]`` with the rows the entries describe; others untouched."""
        if not entries:
            return
        words = bitmask_words(vocab_size)
        with self._lock:
            if logits.is_cuda:
                self._apply_cached(logits, entries, vocab_size, words)
            else:
                self._apply_host(logits, entries, vocab_size, words)

    def apply_tables(self, logits: torch.Tensor, groups: Sequence[TableGroup],
                     fills: Sequence[tuple[int, RowFiller]] = (), *, vocab_size: int) -> None:
        """Mask a step's rows given as table picks (and rows filled on the host); others untouched.

        Each :data:`TableGroup` ``(key, table, logits_rows, picks)`` masks ``logits_rows[i]`` with
        ``table[picks[i]]``; each ``(logits_row, fill)`` of ``fills`` with the row ``fill`` writes.
        Every logits row at most once. On CUDA (float32/bfloat16/float16, Triton installed) a
        table is uploaded once per device and then only picked: the step writes ``2·K`` int32
        indices into pinned memory, which the kernel reads directly (or, with
        ``read_indices_from_host=False``, after one asynchronous copy), copies the filled rows,
        and launches one kernel. Elsewhere the rows are gathered on the host and applied with
        :func:`apply_token_bitmask_inplace_reference` (the same result).
        """
        logits_rows, table_of, picks = _group_arrays(groups)
        self.apply_picks(logits, [(g[0], g[1]) for g in groups], logits_rows, table_of, picks, fills,
                         vocab_size=vocab_size)

    def apply_picks(self, logits: torch.Tensor, tables: Sequence[tuple[Hashable, np.ndarray]],
                    logits_rows: np.ndarray, table_of: np.ndarray, picks: np.ndarray,
                    fills: Sequence[tuple[int, RowFiller]] = (), *, vocab_size: int) -> None:
        """:meth:`apply_tables` with the step given as arrays: masked row ``i`` is logits row
        ``logits_rows[i]`` under row ``picks[i]`` of ``tables[table_of[i]]`` (``(key, rows)``
        pairs, as for :data:`TableGroup`); then the ``fills``. The arrays are int64 (or int32)
        numpy arrays of one length; each logits row at most once."""
        rows = _as_rows(logits)
        k = len(logits_rows) + len(fills)
        if k == 0:
            return
        if rows.stride(-1) != 1:
            raise ValueError("logits must be contiguous along the vocabulary (stride 1); rows may be strided")
        words = bitmask_words(vocab_size)
        with self._lock:
            if _use_kernel(rows):
                self._apply_picks_kernel(rows, tables, logits_rows, table_of, picks, fills, vocab_size, words, k)
            else:
                self._apply_picks_host(rows, tables, logits_rows, table_of, picks, fills, vocab_size, words, k)

    @staticmethod
    def _apply_picks_host(rows, tables, logits_rows, table_of, picks, fills, vocab_size, words, k) -> None:
        bitmask = np.zeros((k, words), dtype=np.int32)
        targets = np.empty(k, dtype=np.int64)
        m = len(logits_rows)
        targets[:m] = logits_rows
        picks = np.asarray(picks, dtype=np.int64)
        table_of = np.asarray(table_of, dtype=np.int64)
        for t, (_, table) in enumerate(tables):
            sel = np.flatnonzero(table_of == t)
            if len(sel):
                w = min(table.shape[1], words)
                bitmask[sel, :w] = table[picks[sel], :w]
        for j, (target, fill) in enumerate(fills):
            fill(bitmask, m + j)
            targets[m + j] = target
        apply_token_bitmask_inplace_reference(rows, torch.from_numpy(bitmask), vocab_size=vocab_size,
                                              indices=torch.from_numpy(targets))

    def _apply_picks_kernel(self, rows, tables, logits_rows, table_of, picks, fills, vocab_size, words, k) -> None:
        device = rows.device
        store, s = self._stage_picks(device, tables, logits_rows, table_of, picks, fills, words)
        n = min(vocab_size, rows.shape[1])
        if device.index != torch.cuda.current_device():
            with torch.cuda.device(device):
                self._launch_tables(rows, store, s, k, n)
        else:
            self._launch_tables(rows, store, s, k, n)
        if s.done is None:
            s.done = torch.cuda.Event()
        s.done.record()

    def _stage_tables(self, device, groups, fills, words, k) -> tuple[_RowStore, _Slot]:
        """Place the tables, write the ``2·K`` indices and the filled rows; masked row ``i`` is
        logits row ``slot.index[0, i]`` under ``store.table`` row ``slot.index[1, i]``."""
        logits_rows, table_of, picks = _group_arrays(groups)
        return self._stage_picks(device, [(g[0], g[1]) for g in groups], logits_rows, table_of, picks, fills, words)

    def _stage_picks(self, device, tables, logits_rows, table_of, picks, fills, words) -> tuple[_RowStore, _Slot]:
        store = self._stores.get((device, words))
        if store is None:
            store = self._stores[(device, words)] = _RowStore(device, words, max(1, self.max_cached_bytes // (4 * words)))
        offsets = store.place(tables, len(fills))
        m = len(logits_rows)
        s = store.slot(m + len(fills), len(fills))
        index = s.index_np
        if m:
            index[0, :m] = logits_rows
            if len(tables) == 1:
                index[1, :m] = picks
                if offsets[0]:
                    index[1, :m] += offsets[0]
            else:
                index[1, :m] = np.asarray(offsets, dtype=np.int64)[table_of] + picks
        if fills:
            scratch0 = store.capacity
            for j, (target, fill) in enumerate(fills):
                fill(s.rows_np, j)
                index[0, m + j] = target
                index[1, m + j] = scratch0 + j
            store.table[scratch0: scratch0 + len(fills)].copy_(s.rows[: len(fills)], non_blocking=True)
        return store, s

    def _launch_tables(self, rows, store: _RowStore, s: _Slot, k: int, n: int) -> None:
        if self.read_indices_from_host:
            try:
                _launch_indexed(rows, store.table, k, n, s.logits_rows, s.table_rows)
                return
            except Exception:  # noqa: BLE001 - host memory this device cannot read: copy the indices instead
                self.read_indices_from_host = False
        dev = store.device_index
        if dev is None or dev[0].shape != s.index.shape:
            t = torch.empty(s.index.shape, dtype=torch.int32, device=store.device)
            dev = store.device_index = (t, t[0], t[1])
        dev[0].copy_(s.index, non_blocking=True)
        _launch_indexed(rows, store.table, k, n, dev[1], dev[2])

    def _apply_host(self, logits, entries, vocab_size, words) -> None:
        # On CPU, masked_fill_ and friends run at a fraction of memory speed, while adding a
        # 0/-inf row is a plain vector add: keep one additive mask per distinct packed row.
        width, dtype = logits.shape[-1], logits.dtype
        scratch = self._scratch.get(words)
        if scratch is None:
            scratch = self._scratch[words] = np.zeros((1, words), dtype=np.int32)
        rows = _as_rows(logits)
        by_key = self._additive_by_key
        for row, key, fill in entries:
            mask = by_key.get((key, dtype, width)) if key is not None else None
            if mask is None:
                fill(scratch, 0)
                content = (scratch.tobytes(), dtype, width)
                mask = self._additive.get(content)
                if mask is None:
                    mask = self._additive_mask(scratch[0], vocab_size, width, dtype)
                    self._remember(content, mask)
                else:
                    self._additive.move_to_end(content)
                if key is not None:
                    if len(by_key) >= 65536:
                        by_key.clear()
                    by_key[(key, dtype, width)] = mask
            rows[row].add_(mask)

    @staticmethod
    def _additive_mask(words: np.ndarray, vocab_size: int, width: int, dtype) -> torch.Tensor:
        n = min(vocab_size, width)
        bits = np.unpackbits(words.view(np.uint8), bitorder="little")[:n]
        mask = torch.full((width,), float("-inf"), dtype=dtype)
        mask[:n] = torch.from_numpy(np.where(bits.astype(bool), np.float32(0), np.float32(-np.inf)))
        return mask

    def _remember(self, key, mask: torch.Tensor) -> None:
        self._additive[key] = mask
        self._additive_bytes += mask.numel() * mask.element_size()
        while self._additive_bytes > self.max_cached_bytes and len(self._additive) > 1:
            _, old = self._additive.popitem(last=False)
            self._additive_bytes -= old.numel() * old.element_size()
            self._additive_by_key.clear()  # aliases must not keep evicted masks alive

    @staticmethod
    def _upload_all(logits, entries, vocab_size, rows: _DeviceRows, host, index) -> None:
        k = len(entries)
        targets = []
        for j, (row, _, fill) in enumerate(entries):
            fill(host, j)
            targets.append(row)
        index[:k] = targets
        bitmask = rows.table[rows.capacity: rows.capacity + k]
        bitmask.copy_(rows.host[:k], non_blocking=True)
        idx = rows.index_host[:k].to(logits.device, non_blocking=True)
        if rows.pin:
            if rows.copied is None:
                rows.copied = torch.cuda.Event()
            rows.copied.record()
        apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab_size, indices=idx)

    def _apply_cached(self, logits, entries, vocab_size, words) -> None:
        dev_key = (logits.device, words)
        rows = self._devices.get(dev_key)
        if rows is None:
            capacity = max(1, self.max_cached_bytes // (4 * words))
            rows = self._devices[dev_key] = _DeviceRows(logits.device, words, capacity)
        k = len(entries)
        host, index = rows.staging(k, k)
        if k * words * 4 <= self.upload_all_bytes:
            self._upload_all(logits, entries, vocab_size, rows, host, index)
            return
        used: set[int] = set()
        targets, picks = [], []
        fresh_slots, fresh_src = [], []
        n_up = 0
        scratch0 = rows.capacity
        for row, key, fill in entries:
            targets.append(row)
            slot, hit = rows.slot(key, used) if key is not None else (-1, False)
            if hit:
                picks.append(slot)
                used.add(slot)
                continue
            fill(host, n_up)
            picks.append(scratch0 + n_up)
            if slot >= 0:
                used.add(slot)
                fresh_slots.append(slot)
                fresh_src.append(scratch0 + n_up)
            n_up += 1
        index[:k] = targets
        index[k: 2 * k] = picks
        table = rows.table
        if n_up:
            table[rows.capacity: rows.capacity + n_up].copy_(rows.host[:n_up], non_blocking=True)
        idx = rows.index_host[: 2 * k].to(logits.device, non_blocking=True)
        if rows.pin:
            if rows.copied is None:
                rows.copied = torch.cuda.Event()
            rows.copied.record()
        if fresh_slots:
            src = torch.tensor(fresh_src, dtype=torch.int64).to(logits.device, non_blocking=False)
            dst = torch.tensor(fresh_slots, dtype=torch.int64).to(logits.device, non_blocking=False)
            table.index_copy_(0, dst, table.index_select(0, src))
        apply_token_bitmask_inplace(logits, table, vocab_size=vocab_size, indices=idx[:k], bitmask_indices=idx[k:])
