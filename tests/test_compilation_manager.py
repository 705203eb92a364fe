"""CompilationManager: worker processes, caches, de-duplication, timeouts, crashes (real tokenizer)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import pytest

from dotvllm_plugin import CompiledGrammar, GrammarCompiler, GrammarMatcher
from dotvllm_plugin.compilation_manager import (
    _TEST_ALLOCATE,
    _TEST_CRASH,
    _TEST_SLEEP,
    _TEST_SPIN,
    CompilationManager,
    compile_key,
)
from dotvllm_plugin.errors import (
    CompilationError,
    CompilationTooLargeError,
    CompilationTimeoutError,
    RegexSyntaxError,
    UnsupportedFeatureError,
)


class Recorder:
    """on_compile callback collecting (kind, outcome)."""

    def __init__(self):
        self.events = []
        self._lock = threading.Lock()

    def __call__(self, kind, outcome, seconds, error):
        with self._lock:
            self.events.append((kind, outcome))

    def count(self, outcome):
        return sum(1 for _, o in self.events if o == outcome)


@pytest.fixture(scope="module")
def vocab(request):
    from dotvllm_plugin import Vocabulary
    from dotvllm_plugin.devtools.tokenizers import mistral_sentencepiece

    return Vocabulary.from_hf_tokenizer(mistral_sentencepiece())


@pytest.fixture(scope="module")
def manager(vocab):
    rec = Recorder()
    m = CompilationManager(vocab, max_workers=2, cache_size=64, timeout_s=120, on_compile=rec,
                           _allow_test_kinds=True)
    m.recorder = rec
    yield m
    m.close()


def _generate(grammar, text: str, eos: int) -> bool:
    """Whether the matcher accepts ``text`` and then EOS."""
    m = GrammarMatcher(grammar)
    return m.accept_string(text) and m.accept_token(eos)


@pytest.mark.parametrize(
    ("kind", "spec", "good", "bad"),
    [
        ("regex", r"[a-z]{2,5}@(foo|bar)\.com", "ab@foo.com", "ab@baz.com"),
        ("choice", ["yes", "no", "maybe"], "maybe", "perhaps"),
    ],
    ids=["regex", "choice"],
)
def test_compile_matches_in_process_compiler(manager, vocab, kind, spec, good, bad):
    result = manager.compile(kind, spec)
    assert isinstance(result.grammar, CompiledGrammar)
    assert result.data == result.grammar.to_bytes()
    direct = GrammarCompiler(vocab).compile_regex(spec) if kind == "regex" else GrammarCompiler(vocab).compile_choice(spec)
    # State numbering may differ between processes (hash seeds); the automaton may not.
    assert result.grammar.n_states == direct.n_states
    for g in (result.grammar, direct):
        assert _generate(g, good, vocab.eos_token_ids[0])
        assert not _generate(g, bad, vocab.eos_token_ids[0])


def test_json_schema_compiles_in_worker(manager):
    pytest.importorskip("dotvllm_plugin.grammar.json_schema")
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    result = manager.compile("json_schema", json.dumps(schema))
    m = GrammarMatcher(result.grammar)
    assert m.accept_string('{"n": 42}') or m.accept_string('{"n":42}')
    jsonschema.validate({"n": 42}, schema)
    # A dict and its JSON text are the same cache entry.
    assert manager.compile("json_schema", schema).key == result.key


def test_second_request_is_a_memory_hit(manager):
    before = manager.recorder.count("hit")
    a = manager.compile("regex", "hit-test-[0-9]+")
    b = manager.compile("regex", "hit-test-[0-9]+")
    assert a is b
    assert manager.recorder.count("hit") == before + 1


def test_concurrent_identical_requests_compile_once(manager):
    misses_before = manager.recorder.count("miss")
    futures = [manager.submit(_TEST_SLEEP, 0.5) for _ in range(20)]
    results = [f.result(timeout=60) for f in futures]
    assert len({id(r) for r in results}) == 1
    assert manager.recorder.count("miss") == misses_before + 1


def test_distinct_requests_run_in_parallel_workers(manager):
    futures = [manager.submit("regex", f"parallel{i}[a-z]{{1,4}}") for i in range(6)]
    keys = {f.result(timeout=60).key for f in futures}
    assert len(keys) == 6
    assert len(set(manager.worker_pids)) == 2


@pytest.mark.parametrize(
    ("kind", "spec", "error", "match"),
    [
        ("regex", "(abc", RegexSyntaxError, r"\(abc"),
        ("regex", "a(?=b)", UnsupportedFeatureError, "lookahead"),
        ("choice", [], Exception, "at least one choice"),
    ],
    ids=["unbalanced-paren", "lookahead", "empty-choice"],
)
def test_grammar_errors_come_back_typed(manager, kind, spec, error, match):
    with pytest.raises(error, match=match):
        manager.compile(kind, spec)
    # The pool keeps serving.
    assert manager.compile("regex", "still-alive").grammar is not None


def test_deterministic_errors_are_remembered(vocab):
    rec = Recorder()
    with CompilationManager(vocab, on_compile=rec) as m:
        with pytest.raises(UnsupportedFeatureError, match="lookbehind"):
            m.compile("regex", "(?<=a)b")
        # The repeat is answered at once, without a worker.
        again = m.submit("regex", "(?<=a)b")
        assert again.done()
        with pytest.raises(UnsupportedFeatureError, match="lookbehind"):
            again.result()
        assert rec.events == [("regex", "error"), ("regex", "error")]
        assert m.compile("regex", "fine").grammar is not None


def test_timeouts_are_not_remembered(vocab):
    with CompilationManager(vocab, timeout_s=1.0, _allow_test_kinds=True) as m:
        with pytest.raises(CompilationTimeoutError, match="was stopped"):
            m.compile(_TEST_SLEEP, 5)
        assert not m._errors


def test_unknown_kind_is_refused(manager):
    with pytest.raises(ValueError, match="unknown constraint kind 'lark'"):
        manager.submit("lark", "start: 'a'")


def test_timeout_kills_and_replaces_the_worker(vocab):
    rec = Recorder()
    with CompilationManager(vocab, max_workers=1, timeout_s=1.0, on_compile=rec, _allow_test_kinds=True) as m:
        m.compile("regex", "warm")
        pid_before = m.worker_pids[0]
        with pytest.raises(CompilationTimeoutError, match="took longer than 1 s and was stopped"):
            m.compile(_TEST_SLEEP, 30)
        assert _process_gone(pid_before)
        # A fresh worker answers the next request.
        assert m.compile("regex", "after-timeout").grammar is not None
        assert m.worker_pids[0] != pid_before
        assert m.stats["timeout"] == 1
        assert ("_test_sleep", "error") in rec.events


def _process_gone(pid: int, wait_s: float = 10.0) -> bool:
    """True once ``pid`` no longer runs (gone, or a zombie awaiting its parent's reaping)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except (FileNotFoundError, ProcessLookupError):  # gone, or reaped between open and read
            return True
        time.sleep(0.05)
    return False


def test_crashed_worker_is_replaced(manager):
    with pytest.raises(CompilationError, match="died while compiling"):
        manager.compile(_TEST_CRASH)
    assert manager.compile("regex", "after-crash-[0-9]").grammar is not None
    assert manager.stats["worker_restarts"] >= 1


def test_memory_budget_turns_an_explosion_into_an_error(vocab):
    with CompilationManager(vocab, max_workers=1, memory_limit_mb=1024, _allow_test_kinds=True) as m:
        with pytest.raises(CompilationTooLargeError, match="memory budget"):
            m.compile(_TEST_ALLOCATE, 4096)
        assert m.compile(_TEST_ALLOCATE, 16).grammar is not None


def test_timeout_does_not_cancel_other_waiters(vocab):
    """Queued work survives a timeout on a neighbour: only the runaway request fails."""
    with CompilationManager(vocab, max_workers=1, timeout_s=1.0, _allow_test_kinds=True) as m:
        slow = m.submit(_TEST_SLEEP, 30)
        queued = m.submit("regex", "queued-[a-z]+")
        with pytest.raises(CompilationTimeoutError, match="was stopped"):
            slow.result(timeout=60)
        assert queued.result(timeout=60).grammar is not None


def test_compile_async_does_not_block_the_event_loop(manager):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        result = await manager.compile_async(_TEST_SLEEP, 0.6)
        t.cancel()
        return result, ticks

    result, ticks = asyncio.run(main())
    assert result.grammar is not None
    assert ticks >= 10


def test_cancelled_waiter_does_not_cancel_shared_compile(manager):
    async def main():
        a = asyncio.create_task(manager.compile_async(_TEST_SLEEP, 0.8))
        b = asyncio.create_task(manager.compile_async(_TEST_SLEEP, 0.8))
        await asyncio.sleep(0.2)
        a.cancel()
        return await b

    assert asyncio.run(main()).grammar is not None


def test_cache_key_covers_options_and_vocabulary(vocab):
    base = compile_key("json_object", None, {}, vocab.fingerprint)
    assert compile_key("json_object", None, {"whitespace_pattern": " ?"}, vocab.fingerprint) != base
    assert compile_key("json_object", None, {}, "another-vocab") != base
    assert compile_key("json_schema", '{"type": "string"}', {}, "v") == compile_key("json_schema", {"type": "string"}, {}, "v")


def test_lookup_finds_what_submit_would_hit(vocab):
    with CompilationManager(vocab) as m:
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
        assert m.lookup("json_schema", schema, options={"disable_additional_properties": True}) is None
        done = m.compile("json_schema", schema, options={"disable_additional_properties": True})
        assert m.lookup("json_schema", json.dumps(schema),
                        options={"disable_additional_properties": True, "disable_any_whitespace": False}) is done
        assert m.lookup("json_schema", schema) is None  # other options, other entry


def test_lru_evicts_oldest(vocab):
    with CompilationManager(vocab, cache_size=2) as m:
        first = m.compile("regex", "lru-a")
        m.compile("regex", "lru-b")
        m.compile("regex", "lru-c")
        assert m.cached(first.key) is None
        assert m.compile("regex", "lru-a") is not first


def test_disk_cache_round_trip_and_integrity(vocab, tmp_path):
    rec = Recorder()
    with CompilationManager(vocab, cache_dir=tmp_path, on_compile=rec) as m:
        original = m.compile("regex", "disk-[0-9]{2}")
    files = list(tmp_path.glob("*.dotvllm"))
    assert len(files) == 1
    assert files[0].read_bytes()[:9] == b"DOTVLLMC\x01"

    rec2 = Recorder()
    with CompilationManager(vocab, cache_dir=tmp_path, on_compile=rec2) as m:
        loaded = m.compile("regex", "disk-[0-9]{2}")
        assert loaded.data == original.data
        assert rec2.events == [("regex", "hit")]
        assert m.worker_pids == []  # served without starting a worker

    # Flip one byte of the payload: the file is refused, deleted and the constraint recompiled.
    raw = bytearray(files[0].read_bytes())
    raw[-1] ^= 0xFF
    files[0].write_bytes(bytes(raw))
    rec3 = Recorder()
    with CompilationManager(vocab, cache_dir=tmp_path, on_compile=rec3) as m:
        again = m.compile("regex", "disk-[0-9]{2}")
        assert again.data == original.data
        assert rec3.events == [("regex", "miss")]
    assert files[0].read_bytes()[-1] == original.data[-1]


def test_disk_cache_never_unpickles(vocab, tmp_path):
    """A pickle planted under a cache key is rejected as a bad file, not executed."""
    import pickle

    key = compile_key("regex", "planted", {}, vocab.fingerprint)
    marker = tmp_path / "executed"
    payload = pickle.dumps(_Boom(str(marker)))
    (tmp_path / f"{key}.dotvllm").write_bytes(payload)
    with CompilationManager(vocab, cache_dir=tmp_path) as m:
        assert m.compile("regex", "planted").grammar is not None
    assert not marker.exists()


class _Boom:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_closed_manager_refuses_work(vocab):
    m = CompilationManager(vocab)
    m.close()
    with pytest.raises(RuntimeError, match="closed"):
        m.submit("regex", "x")


def test_messages_name_the_problem(manager):
    with pytest.raises(RegexSyntaxError, match=re.escape("[a-")):
        manager.compile("regex", "[a-")


# -- workers never outlive their parent (issue: orphaned compile workers) ---------------------------

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from dotvllm_plugin.compilation_manager import WORKER_MARKER_ENV, WORKER_NAME  # noqa: E402
from dotvllm_plugin.devtools.server import find_processes  # noqa: E402

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="walks /proc")

# A parent that starts 2 workers (byte vocabulary: fast), parks one in a 60 s compile and one
# idle, prints the worker pids and then either waits to be killed or exits normally.
_PARENT = r"""
import os, sys, time, threading
from dotvllm_plugin import Vocabulary
from dotvllm_plugin.compilation_manager import CompilationManager
vocab = Vocabulary([bytes([i]) for i in range(256)] + [None], eos_token_ids=[256])
m = CompilationManager(vocab, max_workers=2, timeout_s=120, _allow_test_kinds=True)
m.compile("regex", "a+")
m.compile("regex", "b+")
while len(m.worker_pids) < 2:
    m.compile("regex", "c{%d}" % time.monotonic_ns())
m.submit("_test_sleep", 60)  # mid-compile from now on
time.sleep(0.5)
print(" ".join(map(str, m.worker_pids)), flush=True)
if sys.argv[1] == "exit":
    sys.stdin.readline()
    sys.exit(0)  # interpreter exit with a compile running: must not wait for it
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _wait_gone(pids, timeout_s: float) -> float:
    t0 = time.monotonic()
    while any(_alive(p) for p in pids):
        assert time.monotonic() - t0 < timeout_s, [p for p in pids if _alive(p)]
        time.sleep(0.05)
    return time.monotonic() - t0


def _start_parent(mode: str):
    proc = subprocess.Popen([sys.executable, "-c", _PARENT, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    proc.stdout.close()
    assert line.strip(), "parent did not start its workers"
    workers = [int(p) for p in line.split()]
    # Everything it started (workers, multiprocessing's resource tracker), found before it dies.
    children = [i.pid for i in find_processes(proc.pid, include_root=False)]
    assert set(workers) <= set(children)
    return proc, workers, children


@linux_only
def test_workers_exit_when_their_parent_is_sigkilled():
    proc, workers, children = _start_parent("wait")
    proc.kill()
    proc.wait()
    proc.stdin.close()
    # Workers (one mid-compile), and the resource tracker they kept alive, all gone.
    assert _wait_gone(children, timeout_s=5.0) < 5.0


@linux_only
def test_interpreter_exit_mid_compile_kills_workers_at_once():
    proc, workers, children = _start_parent("exit")
    t0 = time.monotonic()
    proc.stdin.close()  # the parent exits now
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 5.0  # not the 60 s of the running compile
    _wait_gone(children, timeout_s=5.0)


@linux_only
def test_workers_carry_the_marker_and_name(manager):
    manager.compile("regex", "marker[0-9]")
    for pid in manager.worker_pids:
        with open(f"/proc/{pid}/environ", "rb") as f:
            assert f"{WORKER_MARKER_ENV}={os.getpid()}".encode() in f.read().split(b"\0")
        with open(f"/proc/{pid}/comm") as f:
            assert f.read().strip() == WORKER_NAME
    # The marker is not left in this process's environment.
    assert WORKER_MARKER_ENV not in os.environ


def test_workers_freeze_their_start_up_heap(manager):
    # What a worker holds from its start (the vocabulary, the compiler and what it pins) is frozen:
    # the cyclic collector skips it during compiles.
    import gc

    manager.compile("regex", "frozen[0-9]")
    slots = [s for s in manager._slots if s.executor is not None]
    assert slots
    for s in slots:
        assert s.executor.submit(gc.get_freeze_count).result(timeout=30) > 1000


def test_worker_outlives_the_thread_that_asked_for_it(vocab):
    # PR_SET_PDEATHSIG fires when the *thread* that forked exits: workers are started by the
    # manager's dispatcher threads, never by the caller's thread.
    with CompilationManager(vocab, max_workers=1, timeout_s=120) as m:
        t = threading.Thread(target=m.compile, args=("regex", "first[0-9]"))
        t.start()
        t.join()
        (pid,) = m.worker_pids
        time.sleep(0.3)
        assert _alive(pid)
        m.compile("regex", "second[0-9]")
        assert m.worker_pids == [pid]


def test_a_worker_exits_when_its_lifeline_closes(vocab):
    # The portable mechanism (no PDEATHSIG involved): EOF on the lifeline pipe ends the worker.
    with CompilationManager(vocab, max_workers=1, timeout_s=120) as m:
        m.compile("regex", "life[0-9]")
        (slot,) = m._slots
        pid = slot.pid
        slot._lifeline.close()
        _wait_gone([pid], timeout_s=5.0)


def test_close_kills_a_running_compile_at_once(vocab):
    m = CompilationManager(vocab, max_workers=1, timeout_s=120, _allow_test_kinds=True)
    m.compile("regex", "x")
    pids = m.worker_pids
    fut = m.submit(_TEST_SLEEP, 60)
    time.sleep(0.3)
    t0 = time.monotonic()
    m.close()
    assert time.monotonic() - t0 < 3.0
    with pytest.raises(CompilationError, match="closed"):
        fut.result(timeout=5)
    _wait_gone(pids, timeout_s=5.0)


@pytest.mark.parametrize("err", [28, 30], ids=["disk-full", "read-only"])
def test_disk_cache_write_errors_are_logged_once(vocab, tmp_path, monkeypatch, caplog, err):
    import builtins
    import errno as errno_mod
    import logging

    from dotvllm_plugin import compilation_manager as cm

    real_open = builtins.open

    def failing_open(file, mode="r", *a, **kw):
        if "w" in mode and str(file).startswith(str(tmp_path)):
            raise OSError(err, os.strerror(err), str(file))
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(cm, "open", failing_open, raising=False)
    with caplog.at_level(logging.WARNING, logger="dotvllm_plugin.compilation"):
        with CompilationManager(vocab, max_workers=1, cache_dir=tmp_path, cache_size=0) as m:
            for i in range(3):
                assert m.compile("regex", f"full{i}[0-9]").grammar is not None
    warnings = [r for r in caplog.records if "could not write" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert errno_mod.errorcode[err] in warnings[0].getMessage()
    assert not list(tmp_path.iterdir())


def test_an_idle_worker_killed_from_outside_costs_no_request(vocab):
    with CompilationManager(vocab, max_workers=1, timeout_s=120) as m:
        m.compile("regex", "idle[0-9]")
        (pid,) = m.worker_pids
        os.kill(pid, signal.SIGKILL)
        _wait_gone([pid], timeout_s=5.0)
        assert m.compile("regex", "next[0-9]").grammar is not None
        assert m.worker_pids != [pid] and m.stats["worker_restarts"] == 1


def test_start_workers_starts_them_before_any_compile(vocab):
    rec = Recorder()
    with CompilationManager(vocab, max_workers=1, on_compile=rec, worker_nice=5) as m:
        assert m.worker_pids == []
        assert m.start_workers().result(timeout=120) == 1
        pid = m.worker_pids[0]
        assert not _process_gone(pid, wait_s=0.2)
        # Lower priority than ours by worker_nice (capped at 19 by the kernel).
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)
        assert rec.events == []  # not a compile: no metrics
        # The first compile uses that worker.
        assert m.compile("regex", "ab").grammar is not None
        assert m.worker_pids == [pid]
    # Closed: start_workers refuses, like submit.
    with pytest.raises(RuntimeError):
        m.start_workers()


def test_start_workers_starts_every_worker(vocab):
    with CompilationManager(vocab, max_workers=2) as m:
        assert m.start_workers().result(timeout=240) == 2
        assert len(set(m.worker_pids)) == 2


def test_a_starved_compile_is_not_stopped_at_the_wall_clock_timeout(vocab, monkeypatch):
    """Past the wall-clock timeout, a worker that is runnable but has had little CPU time (lower
    priority on a busy machine) is waited for, up to STARVED_WALL_FACTOR × the timeout. The
    starvation is simulated: the worker sleeps 2.5 s while /proc is made to say "runnable, 0.1 s"."""
    import dotvllm_plugin.compilation_manager as cm

    with CompilationManager(vocab, max_workers=1, timeout_s=1.0, _allow_test_kinds=True) as m:
        m.start_workers().result(timeout=120)
        pid = m.worker_pids[0]
        monkeypatch.setattr(cm, "_cpu_state", lambda p: ("R", 0.1) if p == pid else None)
        assert m.compile(_TEST_SLEEP, 2.5).grammar is not None
        assert m.stats["timeout"] == 0 and m.worker_pids == [pid]
        # ... but not past STARVED_WALL_FACTOR × the timeout.
        t0 = time.monotonic()
        with pytest.raises(CompilationTimeoutError, match="took longer than 1 s"):
            m.compile(_TEST_SLEEP, 30)
        assert cm.STARVED_WALL_FACTOR * 1.0 <= time.monotonic() - t0 < cm.STARVED_WALL_FACTOR * 1.0 + 3


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_cpu_state_reads_proc():
    from dotvllm_plugin.compilation_manager import _cpu_state

    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    state, cpu = _cpu_state(os.getpid())
    assert state == "R" and cpu >= 0.2
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.5)
        assert _cpu_state(sleeper.pid)[0] == "S"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _cpu_state(None) is None and _cpu_state(2**22 + 12345) is None


def test_a_compile_that_had_its_cpu_time_is_stopped_at_its_timeout(vocab, monkeypatch):
    """Runnable and past the timeout in CPU time too: stopped at the timeout, not extended."""
    import dotvllm_plugin.compilation_manager as cm

    with CompilationManager(vocab, max_workers=1, timeout_s=1.0, _allow_test_kinds=True) as m:
        m.start_workers().result(timeout=120)
        pid = m.worker_pids[0]
        monkeypatch.setattr(cm, "_cpu_state", lambda p: ("R", 1.0) if p == pid else None)
        t0 = time.monotonic()
        with pytest.raises(CompilationTimeoutError, match="took longer than 1 s"):
            m.compile(_TEST_SLEEP, 30)
        assert time.monotonic() - t0 < 3.0
        assert _process_gone(pid)


def test_a_spinning_compile_is_stopped(vocab):
    """A real CPU-bound runaway (no simulation): stopped within the starved-worker allowance."""
    import dotvllm_plugin.compilation_manager as cm

    with CompilationManager(vocab, max_workers=1, timeout_s=1.0, _allow_test_kinds=True) as m:
        m.start_workers().result(timeout=120)
        t0 = time.monotonic()
        with pytest.raises(CompilationTimeoutError, match="took longer than 1 s"):
            m.compile(_TEST_SPIN, 60)
        assert time.monotonic() - t0 < cm.STARVED_WALL_FACTOR * 1.0 + 5
