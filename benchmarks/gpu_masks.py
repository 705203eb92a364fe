"""Per-decode-step cost of masking a batch of logits on a GPU: V0's per-row path, ours, xgrammar's kernel.

Runs without vLLM (the GPU machine has none). Two steps:

``prepare`` (where ``mistral-common`` is installed): builds the Mistral 32k and Tekken 131k
vocabularies, compiles the constraints with our compiler and writes them (token tables as
pickles of ``(token bytes, EOS ids)`` — our own files — and ``CompiledGrammar.to_bytes()``) into
a folder that travels to the GPU machine::

    python -m benchmarks.gpu_masks prepare --out .benchdata

``run`` (on the GPU machine): for every vocabulary and batch size B, B sequences (a quarter per
constraint) walk random allowed tokens; each timed step every sequence is one token further (the
matchers advance, as in decoding), on fresh fp32 logits ``[B, V]`` on the device; the sequence
data mirrors vLLM's (an ``array`` of output ids that ``output_token_ids`` copies into a tuple).
Transition rows of the states the walks visit are built before timing (their first-visit cost is
reported apart: ``rows_built_first_visit``, ``first_visit_steps_ms``). Timed per step,
wall clock from the step's start to ``torch.cuda.synchronize()``, host work and host→device
copies included:

* ``v0_rows``: vLLM V0's ``_apply_logits_processors`` loop (reproduced; vLLM calls every
  processor of every sequence with its logits row) over our per-row processor;
* ``ours``: :func:`~dotvllm_plugin.integrations.vllm_v0.logits_processor.apply_step`, the patched
  step as it runs in the server: per sequence the host reads its row, output length and last two
  tokens from V0's metadata; then the step's DFA advances are one gather over
  :class:`~dotvllm_plugin.transitions.TokenTransitions` rows, the mask rows are picks from each
  grammar's table resident on the device, ``2·B`` int32 indices the kernel reads from pinned
  memory, one Triton kernel called without Triton's Python launcher;
* ``ours_launcher``: the same through Triton's own launcher;
* ``ours_index_copy``: the same with the step's ``2·B`` indices copied to the device (one
  asynchronous copy) instead of read by the kernel from pinned host memory;
* ``ours_per_seq``: the per-sequence path (what pushdown grammars take, and what DFA grammars
  took before): a matcher advance (with the DFA step memo) and a row number per sequence;
* ``ours_host``: ``ours`` with the device work left out (host work alone);
* ``read_metadata``: only the loop over V0's metadata that any V0 step needs (each sequence's
  row, output length and last token), the floor of the host share on V0;
* ``ours_upload``: our matchers fill all B rows into pinned memory, one async copy, our kernel;
* ``xgrammar``: the same host fill and copy, then xgrammar's ``apply_token_bitmask_inplace``;

plus ``sync_only`` (an empty step: the timer and ``torch.cuda.synchronize()``), the kernels
alone (CUDA events, bitmask already on the device) and the floor: reading and
writing the logits once, ``2·B·V·4`` bytes at the bandwidth of a device-to-device copy measured
in the same run.

Then ``ours``, ``xgrammar`` and ``v0_rows`` again inside decode steps (``--forward-gb``, default 16:
the weights of an 8B bf16 model): each step first launches a CUDA graph that streams that many
bytes of bf16 weights through GEMMs and writes the logits with an lm_head GEMM (:class:`Forward`),
as a model's forward is launched before vLLM processes the logits; the path then runs while the
device computes (``kernel_only``: our kernel alone on a bitmask already on the device, the least
any path can add). Steps with and without the path alternate; ``added_<path>`` is the median of the
per-pair differences: what masking adds to a decode step, its host work counted where it
outlasts the forward. Before timing, every path's mask of the first step is compared with the
allowed sets of reference matchers, and for ``ours*`` the masks after the last timed step too. Prints a table; writes JSON, Markdown and a PNG plot::

    python -m benchmarks.gpu_masks run --data .benchdata --out benchmarks/results
"""

from __future__ import annotations

import argparse
from array import array
import inspect
import json
import pickle
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

PATTERNS = {
    "date": r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
    "json_string": r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4}){0,40}"',
    "words": r"(?:cat|dog|bird|horse)(?: and (?:cat|dog|bird|horse)){0,4}",
    "free_text": r"[^\n]{0,60}",
}
VOCABS = ("mistral32k", "tekken131k")
BATCHES = (1, 32, 256, 1024)
PATHS = ("v0_rows", "ours", "ours_upload", "xgrammar")
IN_STEP = ("ours", "ours_index_copy", "xgrammar", "v0_rows")


# -- prepare (needs mistral-common) -------------------------------------------------------------------

def prepare(out: Path) -> None:
    from dotvllm_plugin import GrammarCompiler, Vocabulary
    from dotvllm_plugin.devtools.tokenizers import mistral_sentencepiece, tekken

    out.mkdir(parents=True, exist_ok=True)
    for name, make in (("mistral32k", mistral_sentencepiece), ("tekken131k", tekken)):
        vocab = Vocabulary.from_hf_tokenizer(make())
        (out / f"{name}.vocab.pkl").write_bytes(
            pickle.dumps((list(vocab.token_bytes), list(vocab.eos_token_ids)), protocol=pickle.HIGHEST_PROTOCOL))
        compiler = GrammarCompiler(vocab)
        for pattern_name, pattern in PATTERNS.items():
            (out / f"{name}.{pattern_name}.bin").write_bytes(compiler.compile_regex(pattern).to_bytes())
        print(f"{name}: {vocab.size} ids, {len(PATTERNS)} constraints")


# -- run ----------------------------------------------------------------------------------------------

def load(data: Path, name: str):
    from dotvllm_plugin import Vocabulary
    from dotvllm_plugin.compiler import load_compiled

    table, eos = pickle.loads((data / f"{name}.vocab.pkl").read_bytes())  # written by `prepare`
    vocab = Vocabulary(table, eos)
    grammars = {p: load_compiled((data / f"{name}.{p}.bin").read_bytes(), vocab) for p in PATTERNS}
    return vocab, grammars


def walk(grammar, rng: random.Random, length: int) -> list[int]:
    """Random allowed non-EOS tokens; stops early where only EOS is left."""
    from dotvllm_plugin import GrammarMatcher

    m = GrammarMatcher(grammar)
    eos = np.asarray(grammar.vocabulary.eos_token_ids)
    ids: list[int] = []
    for _ in range(length):
        allowed = m.allowed_token_ids()
        allowed = allowed[~np.isin(allowed, eos)]
        if not len(allowed):
            break
        ids.append(int(allowed[rng.randrange(len(allowed))]))
        m.accept_token(ids[-1])
    return ids


def vllm_apply_logits_processors(logits, sampling_metadata):
    """vLLM 0.9.2's ``_apply_logits_processors`` (no thread pool), as V0 runs it."""
    for seq_group in sampling_metadata.seq_groups:
        procs = seq_group.sampling_params.logits_processors
        if procs:
            for seq_id, row in zip(seq_group.seq_ids, seq_group.sample_indices):
                data = seq_group.seq_data[seq_id]
                logits_row = logits[row]
                for p in procs:
                    if len(inspect.signature(p).parameters) == 3:
                        logits_row = p(data.prompt_token_ids, data.output_token_ids, logits_row)
                    else:
                        logits_row = p(data.output_token_ids, logits_row)
                logits[row] = logits_row
    return logits


class SequenceData:
    """vLLM 0.9.2's ``SequenceData`` as the logits processors see it: output ids in an ``array``,
    and an ``output_token_ids`` property that copies them into a tuple on every read."""

    __slots__ = ("_output_token_ids", "prompt_token_ids")

    def __init__(self, ids):
        self._output_token_ids = array("l", ids)
        self.prompt_token_ids = (1,)

    @property
    def output_token_ids(self):
        return tuple(self._output_token_ids)


class Batch:
    """B sequences, one request each (as in serving), with walks long enough for every step."""

    def __init__(self, grammars, batch: int, steps: int, seed: int):
        from dotvllm_plugin.integrations.vllm_v0.logits_processor import DotvllmLogitsProcessor

        rng = random.Random(seed)
        names = list(grammars)
        self.grammars = grammars
        self.kinds = [names[i % len(names)] for i in range(batch)]
        self.walks = [walk(grammars[k], rng, rng.randrange(4) + steps) for k in self.kinds]
        self.starts = [min(len(w), rng.randrange(4)) for w in self.walks]
        self.templates = {k: DotvllmLogitsProcessor(g, key=f"bench-{k}", description=k) for k, g in grammars.items()}
        self._prefixes = {}
        self.reset()

    def reset(self, per_sequence: bool = False) -> None:
        """New requests: processors without any sequence state (``per_sequence``: kept off the
        vectorised step, as pushdown grammars are)."""
        self.procs = [self.templates[k].clone() for k in self.kinds]
        if per_sequence:
            for p in self.procs:
                p._seqs = None


    def prefix(self, i: int, step: int) -> list[int]:
        p = self._prefixes.get(step)
        if p is None:
            p = self._prefixes[step] = [w[: min(len(w), s + step)] for w, s in zip(self.walks, self.starts)]
        return p[i]

    def metadata(self, step: int):
        """What vLLM hands ``_apply_logits_processors`` (built before the timed step)."""
        groups = []
        for i, proc in enumerate(self.procs):
            data = {i: SequenceData(self.prefix(i, step))}
            groups.append(SimpleNamespace(seq_ids=[i], sampling_params=SimpleNamespace(logits_processors=[proc]),
                                          seq_data=data, sample_indices=[i], prompt_logprob_indices=[]))
        return SimpleNamespace(seq_groups=groups)

    def allowed(self, step: int, width: int) -> np.ndarray:
        from dotvllm_plugin import GrammarMatcher

        out = np.zeros((len(self.procs), width), dtype=bool)
        for i, k in enumerate(self.kinds):
            m = GrammarMatcher(self.grammars[k])
            for t in self.prefix(i, step):
                m.accept_token(t)
            out[i, m.allowed_token_ids()] = True
        return out


class Uploader:
    """Host fill of all B rows (our matchers' states) into pinned memory, one async copy."""

    def __init__(self, batch: int, words: int, device):
        self.host = torch.zeros((batch, words), dtype=torch.int32, pin_memory=torch.device(device).type == "cuda")
        self.host_np = self.host.numpy()
        self.device = device

    def __call__(self, b: Batch, step: int) -> torch.Tensor:
        for i, proc in enumerate(b.procs):
            _, fill, _ = proc._step_entry(b.prefix(i, step))
            fill(self.host_np, i)
        return self.host.to(self.device, non_blocking=True)


class Forward:
    """The GPU work of a decode step before its logits exist, replayed as one CUDA graph (V0
    replays captured graphs for decode): GEMMs that stream ``weight_gb`` of bf16 weights (up/down
    projection pairs of a 4096-wide model, batch B), then the lm_head GEMM, written as the step's
    fp32 logits ``[B, V]``. Launched asynchronously, as a model's forward is: the host runs the
    step's logits processing while the device computes, so a mask path's host work costs the step
    only where it outlasts the forward, and its device work comes after the forward's."""

    HIDDEN, FFN = 4096, 14336

    def __init__(self, vocab_size: int, weight_gb: float, device):
        gen = torch.Generator(device=device).manual_seed(0)
        pair_bytes = 2 * self.HIDDEN * self.FFN * 2
        n = max(1, round(weight_gb * 1e9 / pair_bytes))

        def weight(rows, cols):
            return (torch.randn(rows, cols, device=device, generator=gen) * rows ** -0.5).to(torch.bfloat16)

        self.layers = [(weight(self.HIDDEN, self.FFN), weight(self.FFN, self.HIDDEN)) for _ in range(n)]
        self.lm_head = weight(self.HIDDEN, vocab_size)
        self.weight_bytes = (n * pair_bytes + self.lm_head.numel() * 2)
        self.device = device

    def graph(self, batch: int):
        """(fp32 logits [B, V] the graph writes, replay)."""
        x = torch.randn(batch, self.HIDDEN, device=self.device).to(torch.bfloat16)
        logits = torch.empty(batch, self.lm_head.shape[1], device=self.device, dtype=torch.float32)

        def body():
            h = x
            for up, down in self.layers:
                h = torch.nn.functional.rms_norm((h @ up) @ down, (self.HIDDEN,))  # (keeps the logits finite)
            logits.copy_(h @ self.lm_head)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            body()
            body()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            body()
        torch.cuda.synchronize()

        def replay():  # holds ``x``: the graph reads it by address, and a freed ``x`` is reused by later allocations
            g.replay()

        replay.static_input = x
        return logits, replay


def load_xgrammar():
    try:
        from importlib.metadata import version

        import xgrammar

        return xgrammar.apply_token_bitmask_inplace, version("xgrammar")
    except Exception as e:  # noqa: BLE001
        print(f"xgrammar not importable ({type(e).__name__}: {e}); loading its Triton kernel module alone")
    try:  # the kernel file needs only torch and Triton; xgrammar's __init__ needs its whole stack
        import importlib.util
        from importlib.metadata import distribution, version

        path = distribution("xgrammar").locate_file("xgrammar/kernels/apply_token_bitmask_inplace_triton.py")
        spec = importlib.util.spec_from_file_location("xgrammar_triton_kernel", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        kernel = module.apply_token_bitmask_inplace_triton
        return (lambda logits, bitmask, vocab_size=None: kernel(logits, bitmask, vocab_size)), version("xgrammar")
    except Exception as e:  # noqa: BLE001
        print(f"xgrammar's kernel not loadable ({type(e).__name__}: {e}); skipping it")
        return None, None


def bandwidth_bytes_per_s(device) -> float:
    n = 1 << 28  # 1 GiB of fp32
    x = torch.empty(n, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        y.copy_(x)
    end.record()
    torch.cuda.synchronize()
    return 2 * 4 * n * 10 / (start.elapsed_time(end) / 1e3)


def event_time_us(fn, repeats: int = 50) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / repeats


def _rows_built(vocab) -> int:
    """Transition rows built so far for ``vocab`` (its TokenTransitions), dropped ones included."""
    from dotvllm_plugin.integrations.vllm_v0 import logits_processor as lp

    seqs = lp._sequences.get(vocab.fingerprint)
    return 0 if seqs is None else seqs.transitions.rows_built


def run_case(vocab, grammars, batch: int, xgr_apply, args, device, forward=None) -> dict:
    from dotvllm_plugin import masks
    from dotvllm_plugin.integrations.vllm_v0 import logits_processor as lp
    from dotvllm_plugin.masks import apply_token_bitmask_inplace, bitmask_words

    width = vocab.size
    words = bitmask_words(vocab.size)
    steps = args.steps if batch < 256 else max(4, args.steps // 4)
    b = Batch(grammars, batch, steps + 2, seed=batch)
    base = torch.randn(batch, width, device=device)
    upload = Uploader(batch, words, device)

    mds: dict[int, object] = {}

    def v0_rows(step, logits):
        vllm_apply_logits_processors(logits, mds[step])

    def ours(step, logits):
        lp.apply_step(vllm_apply_logits_processors, logits, mds[step])

    def ours_launcher(step, logits):  # `ours` through Triton's own launcher
        masks.DIRECT_LAUNCH = False
        try:
            lp.apply_step(vllm_apply_logits_processors, logits, mds[step])
        finally:
            masks.DIRECT_LAUNCH = True

    def ours_index_copy(step, logits):  # `ours` with the step's indices copied to the device first
        lp._step_masker.read_indices_from_host = False
        try:
            lp.apply_step(vllm_apply_logits_processors, logits, mds[step])
        finally:
            lp._step_masker.read_indices_from_host = True

    ours_per_seq = ours  # run on processors kept off the vectorised step (see `per_sequence` below)

    class NoMask:  # host work of `ours` alone: the same step with the device work left out
        def apply_picks(self, *args, **kwargs):
            pass

    no_mask = NoMask()

    def ours_host(step, logits):
        default, lp._step_masker = lp._step_masker, no_mask
        try:
            lp.apply_step(vllm_apply_logits_processors, logits, mds[step])
        finally:
            lp._step_masker = default

    def read_metadata(step, logits):
        """What no V0 step can avoid: per sequence, its row, its output length and last token."""
        rows, lens, last = [], [], []
        for group in mds[step].seq_groups:
            if group.sampling_params.logits_processors:
                seq_data = group.seq_data
                for seq_id, row in zip(group.seq_ids, group.sample_indices):
                    ids = seq_data[seq_id]._output_token_ids
                    rows.append(row)
                    lens.append(len(ids))
                    last.append(ids[-1] if ids else -1)

    def sync_only(step, logits):
        pass

    def ours_upload(step, logits):
        apply_token_bitmask_inplace(logits, upload(b, step), vocab_size=vocab.size)

    def xgrammar(step, logits):
        xgr_apply(logits, upload(b, step), vocab_size=vocab.size)

    fns = {"v0_rows": v0_rows, "ours": ours, "ours_launcher": ours_launcher, "ours_index_copy": ours_index_copy,
           "ours_per_seq": ours_per_seq, "ours_upload": ours_upload}
    if xgr_apply is not None:
        fns["xgrammar"] = xgrammar
    checked = ("ours", "ours_launcher", "ours_index_copy", "ours_per_seq")
    per_sequence = ("ours_per_seq",)
    timed_only = {"ours_host": ours_host, "read_metadata": read_metadata, "sync_only": sync_only}

    # Rows of the DFA states the walks visit, built as a server builds them on first visit; timed
    # apart, then the timed steps run in the steady state (every visited state's row built).
    b.reset()
    mds.clear()
    mds.update({s: b.metadata(s) for s in range(steps + 2)})
    logits = base.clone()
    built = _rows_built(vocab)
    t0 = time.perf_counter()
    for step in range(steps + 2):
        ours_host(step, logits)
    first_visit_s = time.perf_counter() - t0
    built = _rows_built(vocab) - built

    # correctness: step 0 of fresh requests, every path against reference matchers
    expected = b.allowed(0, width)
    mismatches = {}
    for name, fn in fns.items():
        b.reset(name in per_sequence)
        mds.clear()
        mds.update({s: b.metadata(s) for s in range(steps + 2)})
        logits = base.clone()
        fn(0, logits)
        torch.cuda.synchronize()
        mismatches[name] = int((torch.isfinite(logits).cpu().numpy() != expected).any(axis=1).sum())

    row = {"vocab": vocab.size, "batch": batch, "steps": steps, "repeats": args.repeats, "mismatches": mismatches,
           "rows_built_first_visit": built, "first_visit_steps_ms": first_visit_s * 1e3}
    last = b.allowed(steps + 1, width)
    for name, fn in {**fns, **timed_only}.items():
        times = []
        for _ in range(args.repeats):  # fresh requests each time; all samples pooled
            b.reset(name in per_sequence)
            mds.clear()
            mds.update({s: b.metadata(s) for s in range(steps + 2)})
            logits = base.clone()
            fn(0, logits)  # warm-up: first states, device row cache, pinned buffers, kernel compile
            fn(1, logits)
            for step in range(2, steps + 2):
                logits.copy_(base)
                torch.cuda.synchronize()
                t = time.perf_counter()
                fn(step, logits)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
        row[f"{name}_us"] = statistics.median(times) * 1e6
        row[f"{name}_p90_us"] = float(np.percentile(times, 90)) * 1e6
        if name in checked:  # the masks after the last timed step (matchers advanced step by step)
            mismatches[f"{name}_last"] = int((torch.isfinite(logits).cpu().numpy() != last).any(axis=1).sum())

    # kernels alone, bitmask already on the device
    bm = upload(b, 2)
    logits = base.clone()
    row["kernel_ours_us"] = event_time_us(lambda: apply_token_bitmask_inplace(logits, bm, vocab_size=vocab.size))
    if xgr_apply is not None:
        row["kernel_xgrammar_us"] = event_time_us(lambda: xgr_apply(logits, bm, vocab_size=vocab.size))
    row["copy_h2d_us"] = event_time_us(lambda: upload.host.to(device, non_blocking=True))
    # one launch of the step's kernel over rows picked by index, back to back: through Triton's
    # launcher, and called directly (host-bound at small B: the launch cost itself)
    sel = torch.arange(batch, dtype=torch.int32, device=device)
    launch = lambda: masks._launch_indexed(logits, bm, batch, vocab.size, sel, sel)  # noqa: E731
    masks.DIRECT_LAUNCH = False
    row["launch_triton_us"] = event_time_us(launch)
    masks.DIRECT_LAUNCH = True
    row["launch_direct_us"] = event_time_us(launch)
    row["direct_launch_used"] = masks._direct.calls > 0

    if forward is not None:  # the same paths inside a decode step: what each adds to the step
        in_logits, replay = forward.graph(batch)
        fwd_times = []
        replay()
        torch.cuda.synchronize()
        row["forward_nonfinite_logits"] = int((~torch.isfinite(in_logits)).sum())
        bm_dev = upload(b, 2)
        in_step = {name: fns[name] for name in IN_STEP if name in fns}
        in_step["kernel_only"] = lambda step, logits: apply_token_bitmask_inplace(logits, bm_dev, vocab_size=vocab.size)
        for name, fn in in_step.items():
            added = []
            for _ in range(args.repeats):
                b.reset(name in per_sequence)
                mds.clear()
                mds.update({s: b.metadata(s) for s in range(steps + 2)})
                for step in (0, 1):  # warm-up, as above
                    replay()
                    fn(step, in_logits)
                for step in range(2, steps + 2):
                    # a step without masks, then the next with them: each pair's difference
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    replay()
                    torch.cuda.synchronize()
                    t_plain = time.perf_counter() - t
                    t = time.perf_counter()
                    replay()
                    fn(step, in_logits)
                    torch.cuda.synchronize()
                    added.append(time.perf_counter() - t - t_plain)
                    fwd_times.append(t_plain)
            row[f"added_{name}_us"] = statistics.median(added) * 1e6
            row[f"added_{name}_p90_us"] = float(np.percentile(added, 90)) * 1e6
            if name in checked:  # masks after the last step, as above (the forward rewrote the logits)
                finite = torch.isfinite(in_logits).cpu().numpy()
                bad = np.flatnonzero((finite != last).any(axis=1))
                mismatches[f"{name}_in_step_last"] = len(bad)
                if len(bad):  # which rows, and which way
                    row[f"{name}_in_step_mismatch"] = {
                        "kinds": {k: int(sum(b.kinds[i] == k for i in bad)) for k in set(b.kinds)},
                        "allowed_but_masked": int((last & ~finite).sum()),
                        "banned_but_finite": int((~last & finite).sum()),
                        "first_rows": bad[:8].tolist()}
        row["forward_us"] = statistics.median(fwd_times) * 1e6
        row["forward_p10_p90_us"] = [float(np.percentile(fwd_times, q)) * 1e6 for q in (10, 90)]
        del in_logits, replay
    return row


def run(args) -> None:
    device = torch.device("cuda")
    gpu = torch.cuda.get_device_name(0)
    xgr_apply, xgr_version = load_xgrammar()
    bw = bandwidth_bytes_per_s(device)
    import triton

    meta = {"gpu": gpu, "torch": torch.__version__, "triton": triton.__version__, "xgrammar": xgr_version,
            "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "bandwidth_GBps": bw / 1e9, "dtype": "float32", "patterns": PATTERNS}
    print(f"GPU {gpu}, torch {torch.__version__}, triton {triton.__version__}, xgrammar {xgr_version}; "
          f"device-to-device copy {bw / 1e9:.0f} GB/s")
    rows = []
    for name in args.vocabs:
        vocab, grammars = load(Path(args.data), name)
        forward = Forward(vocab.size, args.forward_gb, device) if args.forward_gb > 0 else None
        for batch in args.batches:
            r = run_case(vocab, grammars, batch, xgr_apply, args, device, forward)
            if forward is not None:
                r["forward_weight_GB"] = forward.weight_bytes / 1e9
            r["vocab_name"] = name
            r["floor_us"] = 2 * batch * vocab.size * 4 / bw * 1e6
            rows.append(r)
            print(fmt_row(r), flush=True)
            write(Path(args.out), meta, rows)  # after every case: a run cut short keeps what it measured
        del forward
        torch.cuda.empty_cache()
    plot(rows, Path(args.out) / "gpu_masks.png")
    print(markdown(meta, rows))
    if any(v for r in rows for v in r["mismatches"].values()):
        raise SystemExit("MISMATCH between a path's masks and the reference matchers")


def write(out: Path, meta: dict, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_masks.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / "gpu_masks.md").write_text(markdown(meta, rows))


COLS = ["added_ours_us", "added_ours_index_copy_us", "added_kernel_only_us", "added_xgrammar_us", "added_v0_rows_us", "forward_us", "v0_rows_us", "ours_per_seq_us", "ours_us", "ours_launcher_us", "ours_host_us", "read_metadata_us",
        "ours_upload_us", "xgrammar_us", "kernel_ours_us", "kernel_xgrammar_us", "launch_triton_us", "launch_direct_us",
        "copy_h2d_us", "sync_only_us", "floor_us"]


def fmt_row(r: dict) -> str:
    return f"{r['vocab_name']} B={r['batch']}: " + ", ".join(
        f"{c[:-3]} {r[c]:.1f}" for c in COLS if c in r) + f" µs; mismatches {r['mismatches']}"


def markdown(meta: dict, rows: list[dict]) -> str:
    head = (f"{meta['gpu']}, torch {meta['torch']}, Triton {meta['triton']}, xgrammar {meta['xgrammar']}, "
            f"fp32 logits; device-to-device copy {meta['bandwidth_GBps']:.0f} GB/s\n\n")
    cols = ["vocab", "B"] + [c[:-3] for c in COLS] + ["ours ÷ floor", "v0_rows ÷ ours", "added: ours ÷ floor",
                                                       "added: v0_rows ÷ ours", "mismatches"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = [str(r["vocab"]), str(r["batch"])] + [f"{r[c]:.1f}" if c in r else "-" for c in COLS]
        vals += [f"{r['ours_us'] / r['floor_us']:.1f}×", f"{r['v0_rows_us'] / r['ours_us']:.0f}×"]
        if r.get("added_ours_us", 0) > 0 and "added_v0_rows_us" in r:
            vals += [f"{r['added_ours_us'] / r['floor_us']:.1f}×", f"{r['added_v0_rows_us'] / r['added_ours_us']:.0f}×"]
        else:
            vals += ["-", "-"]
        vals.append(str(sum(r["mismatches"].values())))
        lines.append("| " + " | ".join(vals) + " |")
    notes = ("\nMedian µs per decode step (wall clock to `torch.cuda.synchronize()`, host work and "
             "host→device copies included) for `v0_rows`, `ours_per_seq`, `ours`, `ours_launcher`, `ours_upload`, "
             "`xgrammar`; `ours_host` is `ours` without its device work, `read_metadata` the loop over V0's "
             "metadata alone, `sync_only` an empty step; "
             "`kernel_*` and `copy_h2d` are CUDA-event times of the kernel alone (bitmask on the "
             "device) and of the B-row bitmask upload from pinned memory; `launch_*` the same for the step's "
             "indexed launch through Triton's launcher and called directly; floor = 2·B·V·4 bytes ÷ "
             "the measured copy bandwidth. `added_*`: the same paths inside a decode step (a CUDA graph that "
             "streams the `forward_weight_GB` of bf16 weights and writes the logits, launched before the "
             "path runs, as a model's forward is): median over pairs of steps of (step with the path − the "
             "step before it without), i.e. what the path adds to a decode step; `forward` the step without "
             "masks.\n")
    return head + "\n".join(lines) + "\n" + notes


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    vocabs = sorted({r["vocab_name"] for r in rows})
    fig, axes = plt.subplots(1, len(vocabs), figsize=(6 * len(vocabs), 4.5), squeeze=False)
    for ax, v in zip(axes[0], vocabs):
        rs = [r for r in rows if r["vocab_name"] == v]
        bs = [r["batch"] for r in rs]
        for c, label in (("v0_rows_us", "V0 per-row path"), ("ours_per_seq_us", "ours per sequence (before)"),
                         ("ours_us", "ours (vectorised step)"), ("ours_host_us", "ours, host share"),
                         ("read_metadata_us", "reading V0's metadata alone"),
                         ("ours_upload_us", "ours, all rows uploaded"), ("xgrammar_us", "xgrammar kernel + upload"),
                         ("floor_us", "floor 2·B·V·4 B ÷ bandwidth")):
            if all(c in r for r in rs):
                ax.plot(bs, [r[c] for r in rs], marker="o", label=label, linestyle="--" if c == "floor_us" else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch (sequences per step)")
        ax.set_ylabel("µs per step")
        ax.set_title(f"{v}, fp32 logits")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", default=".benchdata")
    r = sub.add_parser("run")
    r.add_argument("--data", default=".benchdata")
    r.add_argument("--out", default="benchmarks/results")
    r.add_argument("--vocabs", nargs="+", default=list(VOCABS), choices=VOCABS)
    r.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    r.add_argument("--steps", type=int, default=20, help="timed steps per case (a quarter from B=256 on)")
    r.add_argument("--repeats", type=int, default=3, help="times each path's steps are run (samples pooled)")
    r.add_argument("--forward-gb", type=float, default=16.0,
                   help="bf16 weights a synthetic decode step streams before its logits (16: an 8B model); "
                        "each path is also timed inside such steps (0: not)")
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(Path(args.out))
    else:
        if not torch.cuda.is_available():
            sys.exit("run needs a CUDA device")
        run(args)


if __name__ == "__main__":
    main()
