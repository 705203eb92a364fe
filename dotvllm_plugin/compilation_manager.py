"""CompilationManager: compile constraints in worker processes, cached, de-duplicated, timed out.

A server cannot compile on its event loop (a JSON schema can take seconds) nor in a thread (the GIL
would stall token generation), and a pathological regex must not take a worker down for good. So:

* every compile runs in a worker process started with ``spawn``; each worker builds the
  :class:`~dotvllm_plugin.Vocabulary` once (pool initializer) from its pickled form;
* each worker sits in its own single-process :class:`~concurrent.futures.ProcessPoolExecutor`
  ("slot"), fed by one dispatcher thread: a pool cannot cancel a running task, but a slot can be
  killed and replaced when its compile runs past ``timeout_s``
  (→ :class:`~dotvllm_plugin.errors.CompilationTimeoutError`) or when its process dies
  (→ :class:`~dotvllm_plugin.errors.CompilationError`); the other slots keep serving;
* results live in an in-memory LRU keyed by a sha256 of (kind, spec, options, vocabulary
  fingerprint, package version); concurrent identical requests share one compile; deterministic
  failures (a bad spec, a size budget) are remembered too, so a repeat costs no worker time;
* an optional on-disk cache stores :meth:`CompiledGrammar.to_bytes` (a versioned, pickle-free
  format) behind a sha256 integrity hash. Nothing is ever unpickled from disk; a file that fails
  its hash or format check is deleted and the constraint recompiled. A cache directory that cannot
  be read or written (read-only, disk full) is logged once and the manager compiles without it;
* workers never outlive the process that started them, however it dies: on Linux each worker
  asks the kernel for ``SIGKILL`` when its parent dies (``PR_SET_PDEATHSIG``), and everywhere
  it blocks a thread on a "lifeline" pipe whose only writer is the parent (EOF: the parent is
  gone, the worker exits). The parent checks that it is still the worker's parent once the
  watch is armed, so a parent that died during the worker's start is caught too. Workers carry
  the environment variable ``DOTVLLM_COMPILE_WORKER=<parent pid>`` (and the name
  ``dotvllm-compile`` on Linux) so that they can be found. At interpreter exit, live managers
  are closed before ``concurrent.futures`` joins its threads (which would otherwise wait for a
  running compile): workers are killed, not waited for.

Workers send back bytes (``to_bytes``), never pickled grammars; the parent rebuilds the grammar
with :meth:`CompiledGrammar.from_bytes` in a dispatcher thread, off the caller's event loop.

This module does not import vLLM.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import gc
import hashlib
import json
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import weakref
from collections import OrderedDict
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import __version__, errors
from .errors import CompilationError, CompilationTimeoutError, GrammarError, SerializationError

__all__ = ["KINDS", "CompilationManager", "CompileResult", "compile_key"]

logger = logging.getLogger("dotvllm_plugin.compilation")
_DEFAULT_LOGGER = logger

KINDS = ("regex", "choice", "json_schema", "json_object", "grammar", "structural_tag")
"""Constraint kinds a :class:`CompilationManager` compiles (those of :data:`dotvllm_plugin.compiler.KINDS`)."""

# Test-only kinds, accepted only by a manager built with ``_allow_test_kinds=True``: they let the
# unit tests exercise the timeout and crash handling deterministically.
_TEST_SLEEP = "_test_sleep"  # spec = seconds to sleep, then compile the regex "x"
_TEST_CRASH = "_test_crash"  # the worker process exits abruptly
_TEST_ALLOCATE = "_test_allocate"  # spec = MB to allocate
_TEST_SPIN = "_test_spin"  # spec = CPU seconds to burn, then compile the regex "x"
_TEST_KINDS = (_TEST_SLEEP, _TEST_CRASH, _TEST_ALLOCATE, _TEST_SPIN)

WORKER_MARKER_ENV = "DOTVLLM_COMPILE_WORKER"
"""Environment variable set in every compile worker: the pid of the process that started it."""
WORKER_NAME = "dotvllm-compile"
"""Process name (``/proc/PID/comm``) of compile workers on Linux."""

_DISK_MAGIC = b"DOTVLLMC\x01"
_DISK_SUFFIX = ".dotvllm"
_WORKER_START_TIMEOUT_S = 300.0
#: A compile past its timeout whose worker is still runnable but has had less CPU than the
#: timeout (other processes, e.g. the engine of a busy CPU server, had priority over it) is given
#: until this many times the timeout in wall-clock time before it is stopped.
STARVED_WALL_FACTOR = 4.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_state(pid: int | None) -> tuple[str, float] | None:
    """(scheduler state letter, CPU seconds used) of a process, from ``/proc``; None elsewhere."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return None


@dataclass(frozen=True)
class CompileResult:
    """A compiled constraint, with the key it is cached under and its serialised form."""

    key: str
    grammar: Any  # CompiledGrammar
    data: bytes  # grammar.to_bytes()
    kind: str


def _canonical_spec(kind: str, spec: Any) -> Any:
    if kind in ("json_schema", "structural_tag"):
        if isinstance(spec, (str, bytes)):
            try:
                spec = json.loads(spec)
            except ValueError:
                return spec if isinstance(spec, str) else spec.decode("utf-8", "replace")
        # key order kept: a schema's declared property order is the order of the output
        return json.dumps(spec, separators=(",", ":"), ensure_ascii=False)
    if kind == "choice":
        return list(spec) if isinstance(spec, (list, tuple)) else spec
    return spec


def compile_key(kind: str, spec: Any, options: dict, vocabulary_fingerprint: str) -> str:
    """The cache key: sha256 of (kind, canonical spec, options, vocabulary, package version)."""
    payload = json.dumps(
        [kind, _canonical_spec(kind, spec), sorted(options.items()), vocabulary_fingerprint, __version__],
        ensure_ascii=False,
        default=repr,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# -- worker side ------------------------------------------------------------------------------------

_worker_compiler = None


_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def _prctl(option: int, arg) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _tie_to_parent(parent_pid: int | None, lifeline) -> None:
    """Make this worker exit when the process that started it dies, however it dies.

    * Linux: ``PR_SET_PDEATHSIG`` = ``SIGKILL``. The kernel sends it when the *thread* that
      forked this process exits; the manager starts each worker from that slot's dispatcher
      thread, which lives until the manager is closed (and a closing manager kills its workers
      anyway), so it fires only when the process is gone or the manager is done. It works while
      this process is busy in C code holding the GIL.
    * Everywhere: a daemon thread blocks (no polling) on the read end of a pipe whose only
      writer is the parent; EOF means the parent died or dropped this worker, and the worker exits.
    * A parent that died before the watch was armed: this process has been re-parented already.
    """
    if sys.platform.startswith("linux"):
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        _prctl(_PR_SET_NAME, WORKER_NAME.encode())
    if lifeline is not None:
        threading.Thread(target=_wait_for_eof, args=(lifeline,), name="dotvllm-lifeline", daemon=True).start()
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)


def _wait_for_eof(lifeline) -> None:
    try:
        while True:
            lifeline.recv_bytes()  # the parent never writes: returns only on EOF (raises) or error
    except BaseException:  # noqa: BLE001 - EOFError, OSError: the parent is gone
        pass
    os._exit(0)


def _init_worker(vocabulary, memory_limit_mb: int | None = None, parent_pid: int | None = None,
                 lifeline=None, nice: int = 0) -> None:
    """Pool initializer: runs once per worker process, with the pickled Vocabulary."""
    global _worker_compiler
    _tie_to_parent(parent_pid, lifeline)
    if nice > 0:
        # A long compile yields the CPU to the process it serves (on a server: the engine's decode
        # steps and the API server's event loop) instead of competing with it as an equal.
        with contextlib.suppress(OSError):
            os.nice(nice)
    from .compiler import GrammarCompiler

    if memory_limit_mb:
        # A constraint whose automaton explodes fails with MemoryError here instead of inviting
        # the kernel's OOM killer into the server.
        import resource

        limit = int(memory_limit_mb) * 1024 * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))

    # Ctrl-C belongs to the parent (a killed parent is handled by _tie_to_parent).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_compiler = GrammarCompiler(vocabulary, cache_size=0)
    # The start-up heap (modules, the vocabulary, the compiler's pinned automata) lives as long as
    # the worker: frozen, the cyclic collector no longer traverses it during every compile's
    # collections (vLLM's API server and engine core freeze theirs the same way).
    gc.collect()
    gc.freeze()


def _worker_ping() -> int:
    return os.getpid()


def _worker_compile(kind: str, spec: Any, options: dict) -> tuple:
    """Compile in the worker; return ("ok", bytes, seconds) or ("error", type name, message, attrs).

    Errors travel as plain data so that an exception class the parent cannot rebuild never breaks
    the pool.
    """
    t0 = time.perf_counter()
    try:
        from .compiler import KINDS as REGISTRY

        c = _worker_compiler
        if kind in REGISTRY:
            cg = REGISTRY[kind].compile(c, spec, options)
        elif kind == _TEST_SLEEP:
            time.sleep(float(spec))
            cg = c.compile_regex("x")
        elif kind == _TEST_CRASH:
            os._exit(3)
        elif kind == _TEST_ALLOCATE:
            block = bytearray(int(spec) * 1024 * 1024)
            cg = c.compile_regex("x" if block else "y")
        elif kind == _TEST_SPIN:
            end = time.process_time() + float(spec)
            while time.process_time() < end:
                pass
            cg = c.compile_regex("x")
        else:
            raise CompilationError(f"unknown constraint kind {kind!r}; expected one of {', '.join(KINDS)}")
        return ("ok", cg.to_bytes(), time.perf_counter() - t0)
    except MemoryError:
        return ("error", "CompilationTooLargeError",
                f"compiling the {kind} constraint ran out of the worker's memory budget; simplify it", {})
    except Exception as e:  # noqa: BLE001 - every error goes back to the caller as data
        attrs = {k: getattr(e, k) for k in ("pattern", "position", "feature", "where") if hasattr(e, k)}
        return ("error", type(e).__name__, str(e), attrs)


def _rebuild_error(type_name: str, message: str, attrs: dict) -> Exception:
    cls = getattr(errors, type_name, None)
    if isinstance(cls, type) and issubclass(cls, errors.DotvllmError):
        try:
            return cls(message, **attrs) if attrs else cls(message)
        except TypeError:
            return cls(message)
    return CompilationError(f"compilation failed with {type_name}: {message}")


@contextlib.contextmanager
def _main_module_hidden():
    """Start spawn children without re-running the parent's ``__main__``.

    ``spawn`` re-imports the parent's main script in every child (as ``__mp_main__``). Under
    ``vllm serve`` that script imports all of vLLM, which costs each compile worker seconds and
    hundreds of MB for nothing: the worker only needs this module. Hiding ``__file__``/``__spec__``
    of ``__main__`` while the process starts makes ``multiprocessing`` skip that step.
    """
    main = sys.modules.get("__main__")
    missing = object()
    saved = {k: main.__dict__.get(k, missing) for k in ("__file__", "__spec__")} if main is not None else {}
    with _SPAWN_LOCK:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
        # The marker of our workers (spawn children inherit the environment at exec time).
        old_marker = os.environ.get(WORKER_MARKER_ENV)
        os.environ[WORKER_MARKER_ENV] = str(os.getpid())
        try:
            yield
        finally:
            if old_marker is None:
                os.environ.pop(WORKER_MARKER_ENV, None)
            else:
                os.environ[WORKER_MARKER_ENV] = old_marker
            for k, v in saved.items():
                if v is missing:
                    main.__dict__.pop(k, None)
                else:
                    main.__dict__[k] = v


_SPAWN_LOCK = threading.Lock()


class _Slot:
    """One worker process in its own executor, so that it can be killed without touching others."""

    def __init__(self, vocabulary, index: int, memory_limit_mb: int | None = None, nice: int = 0):
        self.index = index
        self._vocabulary = vocabulary
        self._memory_limit_mb = memory_limit_mb
        self._nice = nice
        self.executor: concurrent.futures.ProcessPoolExecutor | None = None
        self.pid: int | None = None
        self.closed = False
        self._lock = threading.Lock()
        self._lifeline = None  # write end of the worker's lifeline pipe; closing it ends the worker

    def start(self) -> None:
        """Start the worker; call it from the slot's dispatcher thread (see :func:`_tie_to_parent`)."""
        ctx = multiprocessing.get_context("spawn")
        with self._lock:
            if self.closed:
                raise CompilationError("the compilation manager was closed")
            reader, writer = ctx.Pipe(duplex=False)
            executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=ctx, initializer=_init_worker,
                initargs=(self._vocabulary, self._memory_limit_mb, os.getpid(), reader, self._nice),
            )
            try:
                with _main_module_hidden():
                    ping = executor.submit(_worker_ping)  # spawns the process, passing it ``reader``
            finally:
                reader.close()  # the worker holds its own copy; the parent keeps only the writer
            self.executor, self._lifeline = executor, writer
        self.pid = ping.result(timeout=_WORKER_START_TIMEOUT_S)
        logger.debug("compile worker %d started (pid %d)", self.index, self.pid)

    def kill(self, *, final: bool = False) -> None:
        with self._lock:
            if final:
                self.closed = True
            ex, self.executor = self.executor, None
            lifeline, self._lifeline = self._lifeline, None
        if lifeline is not None:
            lifeline.close()
        if ex is None:
            return
        pids = set(getattr(ex, "_processes", None) or ())
        if self.pid is not None:
            pids.add(self.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        ex.shutdown(wait=False, cancel_futures=True)
        self.pid = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def dead(self) -> bool:
        """Did the idle worker die (killed from outside, OOM killer)? Non-blocking.

        The executor's own thread may reap the process concurrently (then ``is_alive`` would say
        True); it marks the executor broken before reaping, so ``_broken`` is checked last.
        """
        ex = self.executor
        if ex is None:
            return False
        procs = getattr(ex, "_processes", None) or {}
        if any(not p.is_alive() for p in list(procs.values())):  # waitpid(WNOHANG)
            return True
        if self.pid is not None:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:  # already reaped
                return True
            except PermissionError:
                pass
        return bool(getattr(ex, "_broken", False))


_START = "__start_worker__"  # the kind of the job :meth:`CompilationManager.start_workers` queues


@dataclass
class _Job:
    key: str
    kind: str
    spec: Any
    options: dict
    future: concurrent.futures.Future
    submitted: float
    attempts: int = 0  # a job whose worker died is compiled once more in a fresh worker


class CompilationManager:
    """Compiles constraints for one vocabulary in worker processes.

    Parameters
    ----------
    vocabulary : Vocabulary
        Sent (pickled) once to every worker process.
    max_workers : int
        Worker processes, each compiling one constraint at a time.
    cache_size : int
        Compiled constraints kept in memory (LRU); 0 disables the memory cache.
    cache_dir : str or os.PathLike, optional
        Directory of the persistent cache; ``None`` disables it.
    timeout_s : float
        Longest a single compile may run in a worker; it is then killed and replaced. Counted in
        wall-clock time, except that a worker still running that has had less CPU time than this
        (it ran at ``worker_nice`` on a busy machine) is given up to ``STARVED_WALL_FACTOR`` times
        as long.
    on_compile : callable, optional
        ``on_compile(kind, outcome, seconds, error)`` after every request, with ``outcome`` one of
        ``"hit"``, ``"miss"``, ``"error"`` (``error`` is the exception or ``None``). For metrics;
        it must not raise.
    memory_limit_mb : int, optional
        Address-space limit of each worker process (``RLIMIT_AS``); a compile that exceeds it
        fails with :class:`~dotvllm_plugin.errors.CompilationTooLargeError` and the worker is
        replaced. ``None``: no limit.
    worker_nice : int
        Niceness added to each worker process (``os.nice``; 0 = the parent's priority). A server
        passes a positive value so that a long compile does not slow down the requests it serves.
    logger : logging.Logger, optional
        Where each compile is logged (kind, milliseconds, hit or miss, errors); default
        ``dotvllm_plugin.compilation``.

    Notes
    -----
    Thread-safe. :meth:`submit` returns a :class:`concurrent.futures.Future`; :meth:`compile`
    blocks; :meth:`compile_async` awaits without blocking the event loop.
    """

    def __init__(
        self,
        vocabulary,
        *,
        max_workers: int = 1,
        cache_size: int = 256,
        cache_dir: str | os.PathLike | None = None,
        timeout_s: float = 60.0,
        on_compile: Callable[[str, str, float, BaseException | None], None] | None = None,
        memory_limit_mb: int | None = None,
        worker_nice: int = 0,
        logger: logging.Logger | None = None,
        _allow_test_kinds: bool = False,
    ):
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.vocabulary = vocabulary
        self.max_workers = int(max_workers)
        self.cache_size = int(cache_size)
        self.timeout_s = float(timeout_s)
        self.memory_limit_mb = memory_limit_mb
        self.worker_nice = max(0, int(worker_nice))
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._on_compile = on_compile
        self._log = logger if logger is not None else _DEFAULT_LOGGER
        self._kinds = KINDS + (_TEST_KINDS if _allow_test_kinds else ())
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, CompileResult] = OrderedDict()
        # Deterministic failures (a bad spec, a size budget): a repeat is refused without a worker.
        self._errors: OrderedDict[str, tuple[str, str, dict]] = OrderedDict()
        self._inflight: dict[str, concurrent.futures.Future] = {}
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._slots: list[_Slot] = []
        self._closed = False
        self._disk_problems: set[tuple[str, int]] = set()  # (operation, errno) already logged
        self._disk_bad: set[str] = set()  # keys whose bad cache file could not be removed
        self.stats = {"hit": 0, "miss": 0, "error": 0, "timeout": 0, "worker_restarts": 0}
        _live_managers.add(self)

    # -- public API ---------------------------------------------------------------------------------

    def submit(self, kind: str, spec: Any = None, *, whitespace_pattern: str | None = None,
               options: dict | None = None) -> concurrent.futures.Future:
        """Start compiling (or find the cached result); the future resolves to a :class:`CompileResult`.

        ``options`` are the kind's request options (:data:`~dotvllm_plugin.compiler.OPTION_NAMES`: ``whitespace_pattern``,
        ``disable_any_whitespace``, ``disable_additional_properties``); ``None``/``False`` values
        are left out, so they never split the cache.
        """
        if kind not in self._kinds:
            raise ValueError(f"unknown constraint kind {kind!r}; expected one of {', '.join(KINDS)}")
        key, options = self._key(kind, spec, whitespace_pattern, options)
        with self._lock:
            if self._closed:
                raise RuntimeError("CompilationManager is closed")
            hit = self._cache.get(key)
            known_error = self._errors.get(key) if hit is None else None
            if hit is not None:
                self._cache.move_to_end(key)
            else:
                shared = self._inflight.get(key)
        if known_error is not None:
            error = _rebuild_error(*known_error)
            self._report(kind, "error", 0.0, error, key, cached=True)
            return _failed(error)
        if hit is not None:
            self._report(kind, "hit", 0.0, None, key)
            return _done(hit)
        if shared is not None:
            self._report(kind, "hit", 0.0, None, key, shared=True)
            return shared
        from_disk = self._load_from_disk(key, kind)
        if from_disk is not None:
            self._remember(from_disk)
            self._report(kind, "hit", 0.0, None, key, disk=True)
            return _done(from_disk)
        with self._lock:
            shared = self._inflight.get(key)
            if shared is None:
                fut: concurrent.futures.Future = concurrent.futures.Future()
                # Running futures cannot be cancelled: one impatient caller must not cancel the
                # compile others wait for.
                fut.set_running_or_notify_cancel()
                self._inflight[key] = fut
                self._ensure_started()
                self._jobs.put(_Job(key, kind, spec, options, fut, time.perf_counter()))
        if shared is not None:
            self._report(kind, "hit", 0.0, None, key, shared=True)
            return shared
        return fut

    def start_workers(self) -> concurrent.futures.Future:
        """Start the worker processes now instead of at the first compile.

        A server calls this while it starts, so that its first guided request does not pay for a
        process start (and the streams already running do not wait while the parent spawns it).
        One start job per worker is queued (an idle dispatcher takes each; one that is busy
        leaves its worker to the next compile). The future resolves to the number of workers
        running once every job is done; a worker that fails to start is logged and started again
        by the next compile.
        """
        done: concurrent.futures.Future = concurrent.futures.Future()
        done.set_running_or_notify_cancel()
        jobs = [concurrent.futures.Future() for _ in range(self.max_workers)]
        for f in jobs:
            f.set_running_or_notify_cancel()
        with self._lock:
            if self._closed:
                raise RuntimeError("CompilationManager is closed")
            self._ensure_started()
            for f in jobs:
                self._jobs.put(_Job("", _START, None, {}, f, time.perf_counter()))
        remaining = [len(jobs)]
        count_lock = threading.Lock()

        def one_done(_):
            with count_lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                done.set_result(len(self.worker_pids))

        for f in jobs:
            f.add_done_callback(one_done)
        return done

    def compile(self, kind: str, spec: Any = None, *, whitespace_pattern: str | None = None,
                options: dict | None = None) -> CompileResult:
        """Blocking :meth:`submit`; raises the compile error."""
        return self.submit(kind, spec, whitespace_pattern=whitespace_pattern, options=options).result()

    async def compile_async(self, kind: str, spec: Any = None, *, whitespace_pattern: str | None = None,
                            options: dict | None = None) -> CompileResult:
        """Await a compile without blocking the event loop; raises the compile error."""
        fut = self.submit(kind, spec, whitespace_pattern=whitespace_pattern, options=options)
        return await asyncio.shield(asyncio.wrap_future(fut))

    def cached(self, key: str) -> CompileResult | None:
        with self._lock:
            return self._cache.get(key)

    def lookup(self, kind: str, spec: Any = None, *, options: dict | None = None) -> CompileResult | None:
        """The cached result :meth:`submit` would return at once for these arguments, else ``None``
        (no compile, no metrics, no I/O)."""
        return self.cached(self._key(kind, spec, None, options)[0])

    def _key(self, kind: str, spec: Any, whitespace_pattern: str | None, options: dict | None) -> tuple[str, dict]:
        """``(cache key, normalised options)``: ``None``/``False`` options left out, so they never
        split the cache."""
        from .compiler import normalize_options

        options = normalize_options(dict(options or {}, **({} if whitespace_pattern is None else
                                                           {"whitespace_pattern": whitespace_pattern})))
        return compile_key(kind, spec, options, self.vocabulary.fingerprint), options

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the workers (killed, not waited for); pending compiles fail with
        :class:`CompilationError`. Returns within about ``timeout_s``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
            slots = list(self._slots)
        _live_managers.discard(self)
        # Kill first: a dispatcher waiting on a running compile wakes up at once (broken pool).
        for slot in slots:
            slot.kill(final=True)
        for _ in threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout_s
        for t in threads:
            if t is not threading.current_thread():
                t.join(timeout=max(0.0, deadline - time.monotonic()))
        for slot in slots:
            slot.kill(final=True)  # in case a dispatcher was starting one
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.kind == _START:
                job.future.set_result(None)
            elif job is not None:
                self._finish(job, error=CompilationError("the compilation manager was closed"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def worker_pids(self) -> list[int]:
        return [s.pid for s in self._slots if s.pid is not None]

    # -- internals ----------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        # Called with self._lock held.
        if self._threads:
            return
        for i in range(self.max_workers):
            slot = _Slot(self.vocabulary, i, self.memory_limit_mb, self.worker_nice)
            self._slots.append(slot)
            t = threading.Thread(target=self._dispatch, args=(slot,), name=f"dotvllm-compile-{i}", daemon=True)
            self._threads.append(t)
            t.start()

    def _dispatch(self, slot: _Slot) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._run(slot, job)
            except BaseException as e:  # noqa: BLE001 - the dispatcher must survive anything
                self._log.exception("compile dispatcher %d failed", slot.index)
                self._finish(job, error=CompilationError(f"internal error while compiling: {e!r}"))

    def _run(self, slot: _Slot, job: _Job) -> None:
        if self._closed and job.kind == _START:
            job.future.set_result(None)
            return
        if self._closed:
            self._finish(job, error=CompilationError("the compilation manager was closed"))
            return
        if slot.executor is not None and slot.dead():
            # An idle worker that died (killed from outside, OOM killer): replace it before it
            # costs this request its compile.
            self._log.warning("compile worker %s died while idle; replaced", slot.pid)
            slot.kill()
            with self._lock:
                self.stats["worker_restarts"] += 1
        if job.kind == _START:
            try:
                if slot.executor is None:
                    slot.start()
            except Exception as e:  # noqa: BLE001
                slot.kill()
                self._log.warning("could not start a compile worker ahead of time: %r", e)
            job.future.set_result(None)
            return
        if slot.executor is None:
            try:
                slot.start()
            except Exception as e:  # noqa: BLE001
                slot.kill()
                error = (CompilationError("the compilation manager was closed") if self._closed
                         else CompilationError(f"could not start a compile worker: {e!r}"))
                self._finish(job, error=error)
                return
        t0 = time.perf_counter()
        executor = slot.executor
        if executor is None:  # killed by close() meanwhile
            self._finish(job, error=CompilationError("the compilation manager was closed"))
            return
        try:
            reply = self._await_reply(executor.submit(_worker_compile, job.kind, job.spec, job.options), slot, t0)
        except concurrent.futures.TimeoutError:
            elapsed = time.perf_counter() - t0
            pid = slot.pid
            slot.kill()
            with self._lock:
                self.stats["timeout"] += 1
                self.stats["worker_restarts"] += 1
            self._log.warning("compile worker %s ran %.1f s on a %s constraint: killed and replaced", pid, elapsed, job.kind)
            self._finish(
                job,
                error=CompilationTimeoutError(
                    f"compiling the {job.kind} constraint took longer than {self.timeout_s:g} s and was stopped; "
                    "simplify the constraint (fewer nested repetitions, smaller bounds) or raise the timeout "
                    "(DOTVLLM_COMPILE_TIMEOUT_S)"
                ),
                seconds=elapsed,
            )
            return
        except (BrokenProcessPool, RuntimeError) as e:
            # RuntimeError: the executor was shut down under us (the manager is closing).
            pid = slot.pid
            slot.kill()
            if self._closed:
                self._finish(job, error=CompilationError("the compilation manager was closed"),
                             seconds=time.perf_counter() - t0)
                return
            with self._lock:
                self.stats["worker_restarts"] += 1
            if job.attempts == 0:
                # The worker may have died before this job reached it (killed while idle, its
                # death not yet visible): one more try in a fresh worker. A constraint that
                # kills its worker kills at most two.
                self._log.warning("compile worker %s died while compiling a %s constraint; replaced, "
                                  "compiling it again", pid, job.kind)
                job.attempts += 1
                self._run(slot, job)
                return
            self._log.error("compile worker %s died while compiling a %s constraint; replaced", pid, job.kind)
            self._finish(
                job,
                error=CompilationError(f"the compile worker process died while compiling the {job.kind} constraint ({e})"),
                seconds=time.perf_counter() - t0,
            )
            return
        if reply[0] == "error":
            _, type_name, message, attrs = reply
            if type_name == "CompilationTooLargeError" and "memory budget" in message:
                slot.kill()  # start the next compile in a fresh heap
            if _deterministic(type_name):
                self._remember_error(job.key, reply[1:])
            self._finish(job, error=_rebuild_error(type_name, message, attrs), seconds=time.perf_counter() - t0)
            return
        _, data, worker_seconds = reply
        try:
            from .compiler import load_compiled

            grammar = load_compiled(data, self.vocabulary)
        except SerializationError as e:
            self._finish(job, error=CompilationError(f"the compiled {job.kind} constraint did not load: {e}"))
            return
        result = CompileResult(key=job.key, grammar=grammar, data=data, kind=job.kind)
        self._remember(result)
        self._store_on_disk(result)
        self._finish(job, result=result, seconds=worker_seconds)

    def _await_reply(self, future: concurrent.futures.Future, slot: _Slot, t0: float):
        """The worker's reply, or ``TimeoutError`` once the compile has used ``timeout_s`` of CPU
        time — or has stopped using CPU (a hung worker), or ran past ``STARVED_WALL_FACTOR`` times
        the timeout in wall-clock time. Workers run at a lower priority (``worker_nice``): on a
        saturated machine a compile gets less than a core, and counting wall-clock time alone
        would stop compiles that were merely waiting their turn."""
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            pass
        wall_limit = t0 + self.timeout_s * STARVED_WALL_FACTOR
        logged = False
        while True:
            state = _cpu_state(slot.pid)
            if state is None or state[0] != "R" or state[1] >= self.timeout_s:
                raise concurrent.futures.TimeoutError
            remaining = wall_limit - time.perf_counter()
            if remaining <= 0:
                raise concurrent.futures.TimeoutError
            if not logged:
                logged = True
                self._log.info("compile worker %s: %.1f s of CPU time in %.1f s; waiting for it (machine busy)",
                               slot.pid, state[1], time.perf_counter() - t0)
            try:
                return future.result(timeout=min(1.0, remaining))
            except concurrent.futures.TimeoutError:
                continue

    def _finish(self, job: _Job, *, result: CompileResult | None = None, error: BaseException | None = None,
                seconds: float = 0.0) -> None:
        with self._lock:
            self._inflight.pop(job.key, None)
        if error is not None:
            self._report(job.kind, "error", seconds, error, job.key)
            job.future.set_exception(error)
        else:
            self._report(job.kind, "miss", seconds, None, job.key, grammar=result.grammar)
            job.future.set_result(result)

    def _remember_error(self, key: str, error: tuple) -> None:
        with self._lock:
            self._errors[key] = error
            while len(self._errors) > max(self.cache_size, 16):
                self._errors.popitem(last=False)

    def _remember(self, result: CompileResult) -> None:
        if self.cache_size <= 0:
            return
        with self._lock:
            self._cache[result.key] = result
            self._cache.move_to_end(result.key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _report(self, kind, outcome, seconds, error, key, *, shared=False, disk=False, grammar=None,
                cached=False) -> None:
        with self._lock:
            self.stats[outcome] += 1
        if outcome == "error":
            level = logging.INFO if isinstance(error, GrammarError) else logging.WARNING
            when = "(known error)" if cached else f"after {seconds * 1e3:.1f} ms"
            self._log.log(level, "compile %s failed %s (key %s): %s: %s", kind, when, key[:12],
                          type(error).__name__, error)
        elif outcome == "miss":
            self._log.info("compiled %s in %.1f ms (cache miss, key %s, %r)", kind, seconds * 1e3, key[:12], grammar)
        else:
            where = "in flight" if shared else ("disk" if disk else "memory")
            self._log.info("compile %s: cache hit (%s, key %s)", kind, where, key[:12])
        if self._on_compile is not None:
            try:
                self._on_compile(kind, outcome, seconds, error)
            except Exception:  # noqa: BLE001 - metrics must never break compiling
                self._log.exception("on_compile callback failed")

    # -- persistent cache -----------------------------------------------------------------------------

    def _disk_path(self, key: str) -> Path:
        return self.cache_dir / f"{key}{_DISK_SUFFIX}"

    def _store_on_disk(self, result: CompileResult) -> None:
        if self.cache_dir is None:
            return
        path = self._disk_path(result.key)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
        try:
            with open(tmp, "wb") as f:
                f.write(_DISK_MAGIC)
                f.write(hashlib.sha256(result.data).digest())
                f.write(result.data)
            os.replace(tmp, path)
        except OSError as e:
            self._disk_problem("write", path, e)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _load_from_disk(self, key: str, kind: str) -> CompileResult | None:
        if self.cache_dir is None:
            return None
        path = self._disk_path(key)
        if key in self._disk_bad:
            return None
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            self._disk_problem("read", path, e)
            return None
        head = len(_DISK_MAGIC)
        data = raw[head + 32 :]
        problem = None
        if raw[:head] != _DISK_MAGIC:
            problem = "bad magic bytes"
        elif hashlib.sha256(data).digest() != raw[head : head + 32]:
            problem = "integrity hash mismatch"
        else:
            try:
                from .compiler import load_compiled

                grammar = load_compiled(data, self.vocabulary)
            except SerializationError as e:
                problem = str(e)
        if problem is not None:
            self._log.warning("discarding compile cache file %s (%s); recompiling", path, problem)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                # A read-only cache: remember the bad file instead of re-reading it every time.
                with self._lock:
                    self._disk_bad.add(key)
                self._disk_problem("remove", path, e)
            return None
        return CompileResult(key=key, grammar=grammar, data=data, kind=kind)


    def _disk_problem(self, operation: str, path: Path, error: OSError) -> None:
        """Log a cache I/O error once per (operation, errno): a read-only or full disk must not
        flood the log. The compile goes on without the cache."""
        tag = (operation, error.errno or 0)
        with self._lock:
            first = tag not in self._disk_problems
            self._disk_problems.add(tag)
        if first:
            what = errno.errorcode.get(error.errno or 0, "error")
            self._log.warning("could not %s the compile cache file %s (%s: %s); compiling without the disk "
                              "cache where needed (further %s errors of this kind are not logged)",
                              operation, path, what, error.strerror or error, operation)
        else:
            self._log.debug("could not %s the compile cache file %s: %s", operation, path, error)


# Live managers, closed at interpreter exit *before* concurrent.futures joins its executor
# threads: that join waits for a running compile (up to the timeout), so a server stopped with
# SIGTERM would hang there and be SIGKILLed by its supervisor. threading's exit hooks run last
# registered first, and this module imported concurrent.futures.process above.
_live_managers: "weakref.WeakSet[CompilationManager]" = weakref.WeakSet()


def _close_live_managers() -> None:
    for m in list(_live_managers):
        try:
            m.close(timeout_s=2.0)
        except Exception:  # noqa: BLE001 - exiting anyway
            logger.exception("closing a compilation manager at exit failed")


try:
    threading._register_atexit(_close_live_managers)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # not CPython >= 3.9, or already shutting down
    import atexit

    atexit.register(_close_live_managers)


def _deterministic(type_name: str) -> bool:
    cls = getattr(errors, type_name, None)
    return isinstance(cls, type) and issubclass(cls, (GrammarError, errors.CompilationTooLargeError))


def _failed(error: BaseException) -> concurrent.futures.Future:
    fut: concurrent.futures.Future = concurrent.futures.Future()
    fut.set_exception(error)
    return fut


def _done(result: CompileResult) -> concurrent.futures.Future:
    fut: concurrent.futures.Future = concurrent.futures.Future()
    fut.set_result(result)
    return fut
