"""The V0 logits processor: masks one sequence's logits row with a compiled constraint.

vLLM V0 calls ``processor(output_token_ids, logits_row)`` for every sequence of a request on the
driver worker, and ``clone()``s the processor once per request. One object therefore serves all
``n`` sequences, possibly after preemption and recomputation, so the matcher state is keyed by the
generated-token prefix rather than by call order.

Shipping: with vLLM's multiprocessing frontend the processor is cloudpickled in the API-server
process and unpickled in the engine process for every request. It travels as the compiled
grammar's versioned bytes (:meth:`CompiledGrammar.to_bytes`) plus its cache key and the vocabulary
(once per process, looked up by fingerprint); the receiving process rebuilds each grammar once
(per-process LRU keyed by the cache key), so repeated constraints cost a dictionary lookup.

Masking, batched (the default): :func:`apply_step` replaces V0's ``_apply_logits_processors``
(patched in :mod:`._patches`). It runs the request's other processors as vLLM would, then masks
every row that carries one of our processors with one :class:`~dotvllm_plugin.masks.StepMasker`
call: on CUDA one kernel over the whole batch, each grammar's table of DFA-state rows uploaded
once and picked by index (per sequence the host only advances its matcher, keyed by vLLM's
sequence id, and notes a row number; the kernel reads the indices from pinned memory),
parser-stack rows filled on the host into pinned memory and copied asynchronously; on CPU one
cached additive row per sequence.

Masking, per row (the fallback when the patch cannot apply, or ``DOTVLLM_BATCHED_MASKS=0``):
vLLM calls the processor per sequence; the matcher fills a packed int32 row, which is unpacked
with torch on the logits' device into an additive mask (0 / ``-inf``) once, cached per process,
and added to the logits row.

Never raises: a token the constraint does not allow (a bug) or any internal error is logged with
the constraint and that sequence is forced to end (only EOS allowed). Unpickling never raises
either, because an exception there would take vLLM's engine process down.

This module does not import vLLM.
"""

from __future__ import annotations

import logging
import pickle
import threading
import weakref
from collections import OrderedDict

import numpy as np
import torch

from ...compiler import CompiledGrammar, load_compiled
from ...masks import StepMasker, _group_arrays
from ...matcher import GrammarMatcher
from ...transitions import DEAD, DONE, TokenTransitions
from .._runtime import record_load

__all__ = ["DotvllmLogitsProcessor", "apply_step"]

logger = logging.getLogger("dotvllm_plugin.vllm_v0")

_MAX_STATES_PER_REQUEST = 512
_MAX_GRAMMARS_PER_PROCESS = 512

_process_lock = threading.Lock()
_grammars: OrderedDict[str, CompiledGrammar] = OrderedDict()
_vocabularies: dict[str, object] = {}  # fingerprint -> Vocabulary
_vocabulary_blobs: dict[str, bytes] = {}  # fingerprint -> pickle of the Vocabulary
_masks: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # (packed row, device, dtype, width) -> mask
_mask_bytes = 0
_MAX_MASK_BYTES = 64 * 1024 * 1024


def _remember_mask(key: tuple, mask: torch.Tensor) -> None:
    global _mask_bytes
    size = mask.numel() * mask.element_size()
    with _process_lock:
        if key in _masks:
            return
        _masks[key] = mask
        _mask_bytes += size
        while _mask_bytes > _MAX_MASK_BYTES and len(_masks) > 1:
            _, old = _masks.popitem(last=False)
            _mask_bytes -= old.numel() * old.element_size()


def register_vocabulary(vocabulary) -> None:
    """Make ``vocabulary`` known to this process, so received processors need not rebuild it."""
    with _process_lock:
        _vocabularies.setdefault(vocabulary.fingerprint, vocabulary)


def _vocabulary_blob(vocabulary) -> bytes:
    fp = vocabulary.fingerprint
    blob = _vocabulary_blobs.get(fp)
    if blob is None:
        blob = pickle.dumps(vocabulary, protocol=pickle.HIGHEST_PROTOCOL)
        with _process_lock:
            _vocabulary_blobs[fp] = blob
    return blob


def _grammar_for(key: str, data: bytes, fingerprint: str, vocabulary_blob: bytes | None) -> CompiledGrammar:
    with _process_lock:
        g = _grammars.get(key)
        if g is not None:
            _grammars.move_to_end(key)
            return g
        vocab = _vocabularies.get(fingerprint)
    if vocab is None:
        if vocabulary_blob is None:
            raise RuntimeError(f"vocabulary {fingerprint[:12]} is unknown in this process")
        vocab = pickle.loads(vocabulary_blob)  # sent by our own API-server process, never from disk
        if vocab.fingerprint != fingerprint:
            raise RuntimeError(f"received vocabulary {vocab.fingerprint[:12]}, expected {fingerprint[:12]}")
        register_vocabulary(vocab)
    g = load_compiled(data, vocab)
    record_load("grammar")
    with _process_lock:
        _grammars[key] = g
        while len(_grammars) > _MAX_GRAMMARS_PER_PROCESS:
            _grammars.popitem(last=False)
    return g


def _rebuild(key, data, fingerprint, vocabulary_blob, description, eos_token_ids=()):
    """Unpickle hook. Never raises (vLLM's engine process dies on an unpickling error)."""
    record_load("processor")
    try:
        grammar = _grammar_for(key, data, fingerprint, vocabulary_blob)
    except Exception as e:  # noqa: BLE001
        logger.error("dotvllm: could not load the compiled constraint %s (%s: %s); its sequences will end at once",
                     description, type(e).__name__, e)
        grammar = None
    return DotvllmLogitsProcessor(grammar, key=key, data=data, description=description, eos_token_ids=eos_token_ids)


_memos: OrderedDict[tuple, dict] = OrderedDict()  # (grammar key, vocabulary) -> {DFA state·V + token: next state}


def _token_memo(key: tuple) -> dict:
    """The DFA step memo shared by every request of one grammar in this process."""
    with _process_lock:
        memo = _memos.get(key)
        if memo is None:
            memo = _memos[key] = {}
            while len(_memos) > _MAX_GRAMMARS_PER_PROCESS:
                _memos.popitem(last=False)
        return memo


_step_masker = StepMasker()
_step_error_reported = False


_TABLES_ON_CPU = False  # tests: run the device path's tables and indices on CPU logits too

# _step_row's answers other than a row of the grammar's table
_EOS_ROW, _DEAD, _HOST_ROW = -1, -2, -3


def apply_step(original, logits: torch.Tensor, sampling_metadata) -> torch.Tensor:
    """V0's ``_apply_logits_processors`` with our processors' rows masked in one operation.

    ``original`` (vLLM's function) runs every other processor per row, as before, while our
    processors are hidden from it; then every row of a sequence that carries one of our
    processors is masked at once. Masking last keeps the constraint whatever other processors
    did. Never raises because of our processors: on an internal error the rows fall back to the
    per-row path.

    On CUDA the step's rows are picks from each grammar's table of DFA-state rows, uploaded once
    per device (:meth:`~dotvllm_plugin.masks.StepMasker.apply_tables`): per sequence the host
    advances the matcher by the newest token and notes a row number, nothing else.
    """
    if logits.is_cuda or _TABLES_ON_CPU:
        return _apply_step_tables(original, logits, sampling_metadata)
    return _apply_step_entries(original, logits, sampling_metadata)


def _run_others(original, logits: torch.Tensor, sampling_metadata, hidden: list) -> torch.Tensor:
    """vLLM's per-row loop for every other processor, ours hidden from it (``hidden``: the
    ``(params, processors)`` of groups whose list holds ours)."""
    try:
        for params, procs in hidden:
            params.logits_processors = [p for p in procs if not isinstance(p, DotvllmLogitsProcessor)]
        return original(logits, sampling_metadata)
    finally:
        for params, procs in hidden:
            params.logits_processors = procs


def _apply_step_entries(original, logits: torch.Tensor, sampling_metadata) -> torch.Tensor:
    """The CPU path: a row key and a fill per sequence, :meth:`StepMasker.apply` (additive rows)."""
    try:
        hidden, entries = _collect(sampling_metadata)
    except Exception:  # noqa: BLE001 - an unexpected vLLM structure: the per-row path still works
        _report_step_error("reading the step's sequences")
        return original(logits, sampling_metadata)
    if not entries:
        return original(logits, sampling_metadata)
    logits = _run_others(original, logits, sampling_metadata, hidden)
    _mask_step(logits, entries)
    return logits


class _Sequences:
    """The vectorised step's per-sequence rows for one vocabulary: state (a
    :class:`~dotvllm_plugin.transitions.TokenTransitions` number), tokens seen, last token seen.

    A processor owns the slots of its sequences (``seq_id → slot``) and hands them back when it is
    garbage collected (its request has finished). ``n = -2`` marks a slot whose state is unknown:
    its sequence is replayed from its tokens.
    """

    def __init__(self, transitions: TokenTransitions):
        self.transitions = transitions
        self.epoch = transitions.epoch
        self.state = np.zeros(0, dtype=np.int64)
        self.n = np.zeros(0, dtype=np.int64)
        self.last = np.zeros(0, dtype=np.int64)
        self.free: list[int] = []

    def take(self) -> int:
        if not self.free:
            old = len(self.n)
            cap = max(256, 2 * old)
            self.state = np.concatenate([self.state, np.zeros(cap - old, dtype=np.int64)])
            self.n = np.concatenate([self.n, np.full(cap - old, -2, dtype=np.int64)])
            self.last = np.concatenate([self.last, np.full(cap - old, -1, dtype=np.int64)])
            self.free = list(range(cap - 1, old - 1, -1))
        slot = self.free.pop()
        self.n[slot] = -2
        return slot

    def release(self, slots: dict) -> None:
        self.free.extend(slots.values())
        slots.clear()


_sequences: dict[str, _Sequences] = {}  # vocabulary fingerprint -> its step state


def _sequences_for(vocabulary) -> _Sequences:
    with _process_lock:
        got = _sequences.get(vocabulary.fingerprint)
        if got is None:
            got = _sequences[vocabulary.fingerprint] = _Sequences(TokenTransitions(vocabulary))
        return got


class _Batch:
    """One step's sequences on the vectorised path, for one vocabulary: filled by the loop over
    V0's metadata, then advanced and masked as arrays."""

    __slots__ = ("seqs", "metadata", "slot", "row", "n", "last", "before")

    def __init__(self, seqs: _Sequences, metadata):
        self.seqs, self.metadata = seqs, metadata
        self.slot, self.row, self.n, self.last, self.before = [], [], [], [], []

    def sequence(self, i: int):
        """``(processor, output ids)`` of the batch's ``i``-th sequence, found again in the
        metadata (for the rare sequences that need their tokens: replays, reports)."""
        for group in self.metadata.seq_groups:
            proc = _our_processor(group.sampling_params.logits_processors)
            if proc is None or proc._seqs is not self.seqs:
                continue
            k = len(group.seq_ids)
            if i < k:
                data = group.seq_data[group.seq_ids[i]]
                ids = getattr(data, "_output_token_ids", None)
                return proc, ids if ids is not None else data.output_token_ids
            i -= k
        raise IndexError(i)


def _our_processor(procs):
    """The one processor of ours in a request's list, or ``None`` (none, or two built by hand)."""
    if not procs:
        return None
    ours = [p for p in procs if isinstance(p, DotvllmLogitsProcessor)]
    return ours[0] if len(ours) == 1 else None


def _apply_step_tables(original, logits: torch.Tensor, sampling_metadata) -> torch.Tensor:
    hidden = []  # (params, processors) of groups whose list holds ours among others
    others = False  # some group has processors vLLM must run itself
    batches: dict[int, _Batch] = {}  # id(_Sequences) -> this step's sequences on the vectorised path
    current = None  # the _Sequences of the last vectorised group
    steps: dict[int, tuple[dict, list]] = {}  # vocabulary size -> ({key: group}, fills): per-sequence path
    entries = []  # (row, processor, output ids): the per-row fallback
    dead = []
    try:
        for group in sampling_metadata.seq_groups:
            params = group.sampling_params
            procs = params.logits_processors
            if not procs:
                continue
            proc = procs[0]
            if len(procs) != 1 or type(proc) is not DotvllmLogitsProcessor:
                others = True
                ours = [p for p in procs if isinstance(p, DotvllmLogitsProcessor)]
                if len(ours) != 1:  # none, or a request built by hand with two: vLLM's per-row loop
                    continue
                proc = ours[0]
                hidden.append((params, procs))
            seq_data = group.seq_data
            seqs = proc._seqs
            if seqs is not None:
                if seqs is not current:  # bound appends, rebound only when the vocabulary changes
                    batch = batches.get(id(seqs))
                    if batch is None:
                        batch = batches[id(seqs)] = _Batch(seqs, sampling_metadata)
                    current = seqs
                    add_slot, add_row, add_n = batch.slot.append, batch.row.append, batch.n.append
                    add_last, add_before = batch.last.append, batch.before.append
                slots = proc._slots
                for seq_id, row in zip(group.seq_ids, group.sample_indices):
                    data = seq_data[seq_id]
                    try:
                        ids = data._output_token_ids  # vLLM's array; the property copies it into a tuple
                    except AttributeError:
                        ids = data.output_token_ids
                    n = len(ids)
                    slot = slots.get(seq_id)
                    if slot is None:
                        slot = slots[seq_id] = seqs.take()
                    add_slot(slot)
                    add_row(row)
                    add_n(n)
                    if n > 1:
                        add_last(ids[n - 1])
                        add_before(ids[n - 2])
                    else:
                        add_last(ids[0] if n else -1)
                        add_before(-1)
                continue
            if proc.grammar is None:
                for seq_id, row in zip(group.seq_ids, group.sample_indices):
                    entries.append((row, proc, seq_data[seq_id].output_token_ids))
                continue
            step = steps.get(proc._vocab_size)
            if step is None:
                step = steps[proc._vocab_size] = ({}, [])
            tables, fills = step
            table = tables.get(proc._table_key)
            if table is None:
                table = tables[proc._table_key] = (proc._table_key, proc.grammar.rows, [], [])
            targets, picks = table[2], table[3]
            for seq_id, row in zip(group.seq_ids, group.sample_indices):
                r, m = proc._step_row(seq_id, seq_data[seq_id].output_token_ids)
                if r >= 0:
                    targets.append(row)
                    picks.append(r)
                elif r == _HOST_ROW:
                    fills.append((row, m.fill_next_token_bitmask))
                else:
                    eos = tables.get(proc._eos_key)
                    if eos is None:
                        eos = tables[proc._eos_key] = (proc._eos_key, proc._eos_table(), [], [])
                    eos[2].append(row)
                    eos[3].append(0)
                    if r == _DEAD:
                        dead.append((row, proc._eos))
    except Exception:  # noqa: BLE001 - an unexpected vLLM structure: the per-row path still works
        _report_step_error("reading the step's sequences")
        return original(logits, sampling_metadata)
    if not batches and not steps and not entries:
        return original(logits, sampling_metadata)
    if others:  # masking comes last
        logits = _run_others(original, logits, sampling_metadata, hidden)
    try:
        _mask_step_tables(logits, batches, steps, dead)
        for row, eos in dead:
            _keep_eos_choosable(logits[row], eos)
    except Exception:  # noqa: BLE001 - the per-token path never raises: mask row by row instead
        _report_step_error("masking the step's rows")
        _, entries = _collect(sampling_metadata)
    for row, proc, ids in entries:
        logits[row] = proc(ids, logits[row])
    return logits


def _mask_step_tables(logits, batches: dict, steps: dict, dead: list) -> None:
    """Advance the vectorised sequences, then one :meth:`StepMasker.apply_picks` per vocabulary size."""
    by_size: dict[int, list] = {}  # vocabulary size -> [(tables, logits rows, table numbers, picks)]
    for batch in batches.values():
        tt = batch.seqs.transitions
        if len(batch.slot) <= _SMALL_BATCH:
            by_size.setdefault(tt.size, []).append(_advance_small(batch, dead))
            continue
        states, rows = _advance_batch(batch)
        table_of, picks = tt.masks(states)
        used = np.flatnonzero(np.bincount(table_of, minlength=len(tt.tables)))
        if len(used) != len(tt.tables):
            position = np.zeros(len(tt.tables), dtype=np.int64)
            position[used] = np.arange(len(used))
            table_of = position[table_of]
        by_size.setdefault(tt.size, []).append(([tt.tables[g] for g in used.tolist()], rows, table_of, picks))
        for i in np.flatnonzero(states == DEAD).tolist():
            dead.append((int(rows[i]), batch.sequence(i)[0]._eos))
    for size, (tables, fills) in steps.items():
        groups = [t for t in tables.values() if t[2]]
        if groups:
            by_size.setdefault(size, []).append(([(g[0], g[1]) for g in groups], *_group_arrays(groups)))
        elif fills:
            by_size.setdefault(size, [])
    for size in set(by_size) | set(steps):
        parts = by_size.get(size, [])
        fills = steps[size][1] if size in steps else []
        if len(parts) == 1:
            tables, rows, table_of, picks = parts[0]
        else:
            tables, rows, table_of, picks = _merge_parts(parts)
        _step_masker.apply_picks(logits, tables, rows, table_of, picks, fills, vocab_size=size)


def _merge_parts(parts):
    """One (tables, rows, table numbers, picks) from several, each table key once."""
    keys: dict = {}
    tables, rows, table_of, picks = [], [], [], []
    for part_tables, r, t, p in parts:
        remap = np.empty(len(part_tables), dtype=np.int64)
        for j, (key, table) in enumerate(part_tables):
            at = keys.get(key)
            if at is None:
                at = keys[key] = len(tables)
                tables.append((key, table))
            remap[j] = at
        rows.append(np.asarray(r, dtype=np.int64))
        table_of.append(remap[np.asarray(t, dtype=np.int64)] if len(t) else np.zeros(0, dtype=np.int64))
        picks.append(np.asarray(p, dtype=np.int64))
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return tables, empty, empty, empty
    return tables, np.concatenate(rows), np.concatenate(table_of), np.concatenate(picks)


_SMALL_BATCH = 16  # up to this many sequences, scalar steps cost less than numpy's per-call overhead


def _start_step(seqs: _Sequences) -> None:
    tt = seqs.transitions
    if tt.full:  # too many grammars registered: number again from scratch, between steps
        tt.start_over()
    if seqs.epoch != tt.epoch:
        seqs.n[:] = -2
        seqs.epoch = tt.epoch


def _advance_small(batch: _Batch, dead: list):
    """:func:`_advance_batch` and the mask picks one sequence at a time, for a few sequences:
    ``(tables, logits rows, table numbers, picks)``; rows of dead sequences go to ``dead``."""
    seqs = batch.seqs
    tt = seqs.transitions
    _start_step(seqs)
    seen_n, seen_last, state = seqs.n, seqs.last, seqs.state
    tables, position = [], {}
    table_of, picks = [], []
    for i, slot in enumerate(batch.slot):
        n, last = batch.n[i], batch.last[i]
        sn, sl = seen_n.item(slot), seen_last.item(slot)
        if sn == n - 1 and sl == batch.before[i]:
            old = state.item(slot)
            new = tt.advance_one(old, last)
            if new == DEAD and old != DEAD:
                proc, ids = batch.sequence(i)
                proc._report_rejected(tuple(ids), len(ids) - 1)
        elif sn == n and sl == last:
            new = state.item(slot)
        else:
            proc, ids = batch.sequence(i)
            new = proc._replay_state(tt, ids)
        state[slot] = new
        seen_n[slot] = n
        seen_last[slot] = last
        g = tt.table_of.item(new)
        at = position.get(g)
        if at is None:
            at = position[g] = len(tables)
            tables.append(tt.tables[g])
        table_of.append(at)
        picks.append(tt.row_of.item(new))
        if new == DEAD:
            dead.append((batch.row[i], batch.sequence(i)[0]._eos))
    return tables, batch.row, table_of, picks


def _advance_batch(batch: _Batch) -> tuple[np.ndarray, np.ndarray]:
    """(state after this step, logits row) of every sequence of the batch, as arrays.

    A sequence one token longer than at its last step, whose previous last token is where that
    step ended, advances by its newest token in one gather with every other; one at the same
    length and token as last time keeps its state (the same step again); anything else (a new
    sequence, preemption, a fork, a numbering started over) is replayed from its tokens.
    """
    seqs = batch.seqs
    tt = seqs.transitions
    slots, n, last, before, rows = np.array((batch.slot, batch.n, batch.last, batch.before, batch.row), dtype=np.int64)
    _start_step(seqs)
    advance = seqs.n[slots] == n - 1
    advance &= seqs.last[slots] == before
    old = seqs.state[slots]
    if advance.all():  # the steady state: every sequence one token further
        new = tt.advance(old, last)
        rejected = new == DEAD
        rejected &= old != DEAD
    else:
        new = old.copy()
        same = (seqs.n[slots] == n) & (seqs.last[slots] == last)
        for i in np.flatnonzero(~(advance | same)).tolist():
            proc, ids = batch.sequence(i)
            new[i] = proc._replay_state(tt, ids)
        rejected = np.zeros(len(new), dtype=bool)
        if advance.any():
            got = tt.advance(old[advance], last[advance])
            new[advance] = got
            rejected[advance] = (got == DEAD) & (old[advance] != DEAD)
    if rejected.any():
        for i in np.flatnonzero(rejected).tolist():
            proc, ids = batch.sequence(i)
            proc._report_rejected(tuple(ids), len(ids) - 1)
    seqs.state[slots] = new
    seqs.n[slots] = n
    seqs.last[slots] = last
    return new, rows


def _collect(sampling_metadata):
    """(params whose processor lists are hidden, [(logits row, processor, output ids)])."""
    hidden: dict[int, tuple] = {}
    entries = []
    for group in sampling_metadata.seq_groups:
        params = group.sampling_params
        procs = hidden[id(params)][1] if id(params) in hidden else params.logits_processors
        if not procs:
            continue
        ours = [p for p in procs if isinstance(p, DotvllmLogitsProcessor)]
        if len(ours) != 1:  # none, or a request built by hand with two: vLLM's per-row loop
            continue
        hidden[id(params)] = (params, procs)
        for seq_id, row in zip(group.seq_ids, group.sample_indices):
            entries.append((row, ours[0], group.seq_data[seq_id].output_token_ids))
    return list(hidden.values()), entries


def _mask_step(logits: torch.Tensor, entries) -> None:
    by_vocab: dict[int, list] = {}
    eos_rows = []
    per_row = []
    for row, proc, ids in entries:
        if proc.grammar is None:
            per_row.append((row, proc, ids))
            continue
        key, fill, dead = proc._step_entry(ids)
        by_vocab.setdefault(proc._vocab_size, []).append((row, key, fill))
        if dead:
            eos_rows.append((row, proc._eos))
    try:
        for vocab_size, rows in by_vocab.items():
            _step_masker.apply(logits, rows, vocab_size=vocab_size)
        for row, eos in eos_rows:
            _keep_eos_choosable(logits[row], eos)
    except Exception:  # noqa: BLE001 - the per-token path never raises: mask row by row instead
        _report_step_error("masking the step's rows")
        per_row = entries
    for row, proc, ids in per_row:
        logits[row] = proc(ids, logits[row])


def _keep_eos_choosable(row: torch.Tensor, eos) -> None:
    # An EOS whose logit another processor already set to -inf must still be choosable.
    keep = [e for e in eos if e < row.shape[-1]]
    if keep:
        vals = row[keep]
        row[keep] = torch.where(torch.isinf(vals), torch.zeros_like(vals), vals)


def _report_step_error(what: str) -> None:
    global _step_error_reported
    if not _step_error_reported:
        _step_error_reported = True
        logger.exception("dotvllm: internal error while %s; masking row by row instead", what)


class _SequenceState:
    __slots__ = ("matcher", "dead")

    def __init__(self, matcher: GrammarMatcher | None, dead: bool = False):
        self.matcher = matcher
        self.dead = dead


class DotvllmLogitsProcessor:
    """Constrains a request's sequences to a :class:`CompiledGrammar`.

    Parameters
    ----------
    grammar : CompiledGrammar or None
        ``None`` marks a processor whose grammar failed to load: every sequence ends at once.
    key : str
        The compilation cache key of ``grammar``.
    data : bytes, optional
        ``grammar.to_bytes()``; computed when needed for pickling.
    description : str
        Short description of the constraint for log messages.
    eos_token_ids : tuple of int
        End tokens when ``grammar`` is ``None`` (otherwise the grammar's vocabulary's).
    """

    def __init__(self, grammar: CompiledGrammar | None, *, key: str, data: bytes | None = None,
                 description: str = "", eos_token_ids=()):
        self.grammar = grammar
        self.key = key
        self._data = data
        self.description = description
        vocab = grammar.vocabulary if grammar is not None else None
        self._vocab_size = vocab.size if vocab is not None else 0
        self._eos = tuple(vocab.eos_token_ids) if vocab is not None else tuple(eos_token_ids)
        self._lock = threading.Lock()
        self._states: OrderedDict[tuple[int, int], _SequenceState] = OrderedDict()
        # The batched device path's states, per vLLM sequence id: [tokens seen, last token, state]
        self._by_seq: dict[int, list] = {}
        self._eos_key = ("eos", self._eos, self._vocab_size)
        # Names this grammar's row table on the device and its step memo: the compile key (which
        # covers the vocabulary in the server) and the vocabulary's fingerprint.
        self._table_key = (key, vocab.fingerprint) if vocab is not None else (key,)
        self._memo = _token_memo(self._table_key) if grammar is not None else {}
        # The vectorised step (DFA grammars): this vocabulary's sequence rows, and this request's
        # slots in them (seq_id -> slot), handed back when the processor is collected.
        self._seqs = _sequences_for(vocab) if grammar is not None and grammar.engine == "dfa" else None
        self._slots: dict[int, int] = {}
        if self._seqs is not None:
            weakref.finalize(self, self._seqs.release, self._slots)
        # Filled by the matcher as numpy; the torch tensor shares its memory.
        self._words_np = np.zeros((1, (self._vocab_size + 31) // 32), dtype=np.int32)
        self._words = torch.from_numpy(self._words_np)
        self._shifts: dict[torch.device, torch.Tensor] = {}
        self._reported = False

    # -- vLLM protocol ------------------------------------------------------------------------------

    def __call__(self, output_token_ids, logits: torch.Tensor) -> torch.Tensor:
        try:
            with self._lock:
                state = self._state_for(output_token_ids)
                if state.dead:
                    return self._force_eos(logits)
                state.matcher.fill_next_token_bitmask(self._words_np, 0)
                return self._apply(self._words[0], logits)
        except Exception:  # noqa: BLE001 - the per-token path never raises
            if not self._reported:
                self._reported = True
                logger.exception("dotvllm: internal error while masking for %s; forcing EOS", self.description)
            try:
                return self._force_eos(logits)
            except Exception:  # noqa: BLE001
                return logits

    def _step_entry(self, output_token_ids):
        """``(row key or None, fill, dead)`` of this sequence's mask row for :func:`apply_step`.

        The key names a row that depends only on a DFA state (cached on the device); rows of a
        grammar's parser stack have none. Never raises: an internal error ends the sequence.
        """
        try:
            with self._lock:
                state = self._state_for(output_token_ids)
            if state.dead:
                return ("eos", self._eos, self._vocab_size), self._fill_eos, True
            m = state.matcher
            if m.is_terminated():
                return ("eos", self._eos, self._vocab_size), m.fill_next_token_bitmask, False
            if type(m) is GrammarMatcher:
                return (self.key, int(self.grammar.row_of_state[m.state])), m.fill_next_token_bitmask, False
            return None, m.fill_next_token_bitmask, False
        except Exception:  # noqa: BLE001 - the per-token path never raises
            if not self._reported:
                self._reported = True
                logger.exception("dotvllm: internal error while masking for %s; forcing EOS", self.description)
            return ("eos", self._eos, self._vocab_size), self._fill_eos, True

    def _step_row(self, seq_id: int, output_token_ids) -> tuple[int, GrammarMatcher | None]:
        """``(row, matcher)`` of this sequence's mask for the batched device path.

        ``row >= 0``: row of ``grammar.rows`` (a DFA state); ``_EOS_ROW`` (terminated) or
        ``_DEAD`` (ended by an error): only EOS; ``_HOST_ROW``: ``matcher`` fills the row (a
        parser stack). States are kept per sequence id: a sequence one token longer than last
        time, with the same token where the last step ended, advances in place (no prefix is
        hashed); anything else (a new sequence, preemption, a fork) replays its tokens. Never
        raises: an internal error ends the sequence.
        """
        try:
            with self._lock:
                n = len(output_token_ids)
                entry = self._by_seq.get(seq_id)
                if (entry is not None and entry[0] == n - 1
                        and (n == 1 or entry[1] == output_token_ids[n - 2])):
                    state = entry[2]
                    last = output_token_ids[n - 1]
                    m = state.matcher
                    if not state.dead and not (m.accept_token_memo(last, self._memo) if type(m) is GrammarMatcher
                                               else m.accept_token(last)):  # advanced in place
                        self._report_rejected(output_token_ids, n - 1)
                        state = entry[2] = _SequenceState(None, dead=True)
                    entry[0] = n
                    entry[1] = last
                elif entry is not None and entry[0] == n and (n == 0 or entry[1] == output_token_ids[n - 1]):
                    state = entry[2]  # the same step again
                else:
                    state = self._replay(tuple(output_token_ids)) if self.grammar is not None else \
                        _SequenceState(None, dead=True)
                    if len(self._by_seq) >= _MAX_STATES_PER_REQUEST:
                        self._by_seq.clear()
                    self._by_seq[seq_id] = [n, output_token_ids[n - 1] if n else None, state]
            if state.dead:
                return _DEAD, None
            m = state.matcher
            if type(m) is GrammarMatcher:
                if m._terminated:
                    return _EOS_ROW, None
                return int(m._ros[m._state]), None
            if m.is_terminated():
                return _EOS_ROW, None
            return _HOST_ROW, m
        except Exception:  # noqa: BLE001 - the per-token path never raises
            if not self._reported:
                self._reported = True
                logger.exception("dotvllm: internal error while masking for %s; forcing EOS", self.description)
            return _DEAD, None

    def _replay_state(self, transitions: TokenTransitions, ids) -> int:
        """The :class:`TokenTransitions` state after ``ids`` (walked from the start); never raises."""
        try:
            base = transitions.register(self._table_key, self.grammar)
            m = GrammarMatcher(self.grammar)
            for i, t in enumerate(ids):
                if not m.accept_token(t):
                    self._report_rejected(tuple(ids), i)
                    return DEAD
            return DONE if m.is_terminated() else base + m.state
        except Exception:  # noqa: BLE001 - the per-token path never raises
            if not self._reported:
                self._reported = True
                logger.exception("dotvllm: internal error while masking for %s; forcing EOS", self.description)
            return DEAD

    def _eos_table(self) -> np.ndarray:
        table = np.zeros((1, (self._vocab_size + 31) // 32), dtype=np.int32)
        self._fill_eos(table, 0)
        return table

    def _fill_eos(self, bitmask, index: int) -> None:
        row = bitmask[index]
        row[:] = 0
        for e in self._eos:
            if e < self._vocab_size:
                row[e >> 5] |= np.int32(np.uint32(1 << (e & 31)).view(np.int32))

    def clone(self) -> DotvllmLogitsProcessor:
        """A processor for a new request: same grammar, no sequence state."""
        return DotvllmLogitsProcessor(self.grammar, key=self.key, data=self._data, description=self.description,
                                      eos_token_ids=self._eos)

    def __reduce__(self):
        if self.grammar is None:
            return (_rebuild, (self.key, b"", "", None, self.description, self._eos))
        if self._data is None:
            self._data = self.grammar.to_bytes()
        vocab = self.grammar.vocabulary
        return (_rebuild, (self.key, self._data, vocab.fingerprint, _vocabulary_blob(vocab), self.description,
                           self._eos))

    def __repr__(self) -> str:
        return f"DotvllmLogitsProcessor({self.description}, key={self.key[:12]})"

    # -- state ----------------------------------------------------------------------------------------

    def _state_for(self, output_token_ids) -> _SequenceState:
        ids = tuple(output_token_ids)
        key = (len(ids), hash(ids))
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
            return state
        if self.grammar is None:
            state = _SequenceState(None, dead=True)
        elif not ids:
            state = _SequenceState(GrammarMatcher(self.grammar))
        else:
            parent = (len(ids) - 1, hash(ids[:-1]))
            prev = self._states.get(parent)
            if prev is None:
                state = self._replay(ids)
            else:
                # Decoding moves on from the parent prefix: its matcher is advanced in place, not
                # copied (a copy cost as much as the rest of the step). A later request for the
                # parent prefix (a sibling that sampled the very same tokens, a recomputation)
                # replays it from the start.
                del self._states[parent]
                state = self._advance(prev, ids)
        self._states[key] = state
        while len(self._states) > _MAX_STATES_PER_REQUEST:
            self._states.popitem(last=False)
        return state

    def _advance(self, prev: _SequenceState, ids: tuple) -> _SequenceState:
        if prev.dead:
            return prev
        m = prev.matcher
        if m.accept_token(ids[-1]):  # leaves the matcher unchanged when it returns False
            return _SequenceState(m)
        self._report_rejected(ids, len(ids) - 1)
        return _SequenceState(None, dead=True)

    def _replay(self, ids: tuple) -> _SequenceState:
        # First sight of this prefix (evicted state, or recomputation after preemption).
        m = GrammarMatcher(self.grammar)
        for i, t in enumerate(ids):
            if not m.accept_token(t):
                self._report_rejected(ids, i)
                return _SequenceState(None, dead=True)
        return _SequenceState(m)

    def _report_rejected(self, ids: tuple, position: int) -> None:
        logger.error(
            "dotvllm: token %d at output position %d is not allowed by %s (key %s); ending this sequence. "
            "This is a bug: please report it with the constraint.",
            ids[position], position, self.description, self.key[:12],
        )

    # -- masking --------------------------------------------------------------------------------------

    def _apply(self, words: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        logits.add_(self._additive_mask(words, logits))
        return logits

    def _additive_mask(self, words: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """0 where allowed, -inf elsewhere (ids past the vocabulary included), cached per row.

        Adding a cached mask is one kernel (and several times faster than ``masked_fill_`` on
        CPU); the cache is keyed by the packed row itself, so every grammar and request with
        the same allowed set shares one mask per device and dtype.
        """
        width = logits.shape[-1]
        key = (self._words_np.tobytes(), logits.device, logits.dtype, width)
        with _process_lock:
            mask = _masks.get(key)
            if mask is not None:
                _masks.move_to_end(key)
                return mask
        device = logits.device
        shifts = self._shifts.get(device)
        if shifts is None:
            shifts = self._shifts[device] = torch.arange(32, dtype=torch.int32, device=device)
        words = words.to(device, non_blocking=True)
        allowed = ((words.unsqueeze(1) >> shifts) & 1).to(torch.bool).reshape(-1)
        n = min(width, self._vocab_size)
        mask = torch.full((width,), float("-inf"), dtype=logits.dtype, device=device)
        # Ids past the tokenizer's vocabulary (padded embedding rows) are never text: stay -inf.
        mask[:n].masked_fill_(allowed[:n], 0.0)
        _remember_mask(key, mask)
        return mask

    def _force_eos(self, logits: torch.Tensor) -> torch.Tensor:
        keep = [e for e in self._eos if e < logits.shape[-1]]
        if not keep:
            return logits  # no known end token: masking everything would break sampling
        saved = logits[keep].clone()
        logits.fill_(float("-inf"))
        # An EOS whose logit another processor already set to -inf must still be choosable.
        logits[keep] = torch.where(torch.isinf(saved), torch.zeros_like(saved), saved)
        return logits
