"""Fault injection on real ``vllm serve`` processes, both V0 frontends (issue: faults survived).

Each fault, with what must happen (the table in docs/architecture.md points here):

* SIGKILL of the server mid-compile and mid-generation → no process of ours left after 5 s
  (``test_sigkill_of_the_server_leaves_no_process``; its own server per frontend). With the
  multiprocessing frontend vLLM's own engine process survives its API server's SIGKILL (and
  keeps the resource tracker vLLM started for it); the test reports those and fails on anything else;
* SIGTERM under load, SIGKILL 10 s later if still running (a supervisor's grace period) → every
  in-flight request ends (complete, or a clean HTTP error / closed connection, never a hang), no
  process left (``test_sigterm_under_load``: the last test of the module, it consumes the
  module's server);
* SIGKILL of a compile worker mid-compile → that request gets a clean 400, the pool replaces the
  worker, other requests unaffected;
* a compile over the memory limit / over the timeout → 400, pool healthy;
* the disk cache truncated, bit-flipped, replaced by a pickle, read-only, full → detected,
  recompiled or served without the cache, logged once, never unpickled;
* a burst of 50 identical heavy specs → compiled once, all answered.

To keep the run cheap, one server per frontend (``fault_server``, module scope) takes every fault
it survives, in order; the SIGKILL test needs a second one per frontend: 4 server starts in all,
two at a time (both frontends' fault servers, then both SIGKILL servers).
"Mid-compile" is made deterministic by stopping (SIGSTOP) compile workers: a compile sent to a
stopped worker is in flight until the worker is continued or killed. Processes are found by
walking /proc (:func:`dotvllm_plugin.devtools.server.find_processes`): descendants of the server,
everything carrying the server's ``DOTVLLM_SERVER_TAG``, and compile workers by their
``DOTVLLM_COMPILE_WORKER`` marker — orphans re-parented to PID 1 included.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from dotvllm_plugin.devtools.client import body_for, post
from dotvllm_plugin.devtools.server import find_processes

from .conftest import start_servers

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="walks /proc, signals")

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
TIMEOUT_S = 8.0  # DOTVLLM_COMPILE_TIMEOUT_S of the fault servers
MEMORY_MB = 600  # DOTVLLM_COMPILE_MEMORY_MB: a worker idles at ~300 MB of address space
# 12,000 optional copies: every copy follows every earlier one (72M follow entries, quadratic):
# MemoryError within two seconds under a 600 MB limit. (5,000 copies did until the position pass
# moved into C, whose follow lists take 8 bytes an entry: those now reach the subset
# construction's step budget instead, a 400 too; a JSON string with maxLength 9000 did before
# that, until the automaton construction needed less memory.)
MEMORY_HOG = "(?:a?){0,12000}b"


def _slow(n: int) -> str:
    """A regex that really compiles for seconds (3-7 s here; 25000 positions), in ~450 MB."""
    return f"[ -~]{{0,{25000 - n}}}"
ORPHAN_GRACE_S = 5.0
_PICKLE_SENTINEL = Path(f"/tmp/dotvllm-fault-pickle-ran-{os.getpid()}")


# -- helpers ------------------------------------------------------------------------------------------

def _guided(server, regex: str, *, endpoint: str = COMPLETIONS, stream: bool = False, max_tokens: int = 24):
    return post(server.base_url, endpoint,
                body_for(endpoint, "x", max_tokens=max_tokens, stream=stream, guided_regex=regex))


def _plain(server, max_tokens: int = 8, stream: bool = False):
    return post(server.base_url, COMPLETIONS, body_for(COMPLETIONS, "Once upon a time", max_tokens=max_tokens,
                                                       stream=stream, ignore_eos=True))


def _assert_ok(reply, regex: str | None = None):
    assert reply.status == 200, (reply.status, reply.raw[:500])
    if regex is not None and reply.finish.get(0) == "stop":
        assert re.fullmatch(regex, reply.texts[0]), (regex, reply.texts[0])


def _workers(server) -> list[int]:
    return [p.pid for p in server.processes() if p.role == "compile-worker"]


def _signal(pids, sig) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _log(server) -> str:
    return Path(server.log_path).read_text(errors="replace")


def _wait_until(predicate, timeout_s: float, step: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def _leftovers(pid: int, tag: str, timeout_s: float = ORPHAN_GRACE_S) -> tuple[list, float]:
    """Wait up to ``timeout_s`` for every process of a dead server to go; (what is left, seconds)."""
    t0 = time.monotonic()
    left = _wait_until(lambda: not find_processes(pid, tag), timeout_s)
    remaining = [] if left else find_processes(pid, tag)
    return remaining, time.monotonic() - t0


def _kill_all(procs) -> None:
    _signal([p.pid for p in procs], signal.SIGKILL)


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    """A tiny tmpfs at ``path`` (root only): lets a test fill the disk or make it read-only."""
    path.mkdir(parents=True, exist_ok=True)
    ok = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode == 0
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


# -- the module's server, one per frontend -------------------------------------------------------------

FRONTENDS = ("mp", "inprocess")


@pytest.fixture(scope="module")
def _fault_servers(demo_model_dir, tmp_path_factory):
    """Both frontends' fault servers, started at the same time (the inprocess one waits, idle,
    while the mp one takes its faults)."""
    with contextlib.ExitStack() as stack:
        cache_dirs = {f: tmp_path_factory.mktemp(f"compile-cache-{f}") for f in FRONTENDS}
        mounted = {f: stack.enter_context(_tmpfs(cache_dirs[f], "16m")) for f in FRONTENDS}
        servers = start_servers([{"frontend": f, "extra_env": {
            "DOTVLLM_COMPILE_WORKERS": "1",  # one slot: a stopped worker certainly holds the next compile
            "DOTVLLM_COMPILE_TIMEOUT_S": str(TIMEOUT_S),
            "DOTVLLM_COMPILE_MEMORY_MB": str(MEMORY_MB),
            "DOTVLLM_COMPILE_CACHE_DIR": str(cache_dirs[f]),
            "DOTVLLM_COMPILE_CACHE_SIZE": "0",  # every repeat goes through the disk cache
        }} for f in FRONTENDS], demo_model_dir)
        for f, server in zip(FRONTENDS, servers):
            server.cache_dir, server.cache_is_tmpfs, server.frontend = cache_dirs[f], mounted[f], f
            stack.callback(_stop_fault_server, server)
        yield dict(zip(FRONTENDS, servers))


def _stop_fault_server(server) -> None:
    for p in server.processes():  # continue anything a failed test left stopped
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGCONT)
    server.stop()
    left, _ = _leftovers(server.pid, server.tag)
    _kill_all(left)


@pytest.fixture(scope="module", params=FRONTENDS)
def fault_server(request, _fault_servers):
    server = _fault_servers[request.param]
    try:
        _assert_ok(_guided(server, r"warm[0-9]{3}"), r"warm[0-9]{3}")
        yield server
    finally:
        _stop_fault_server(server)


def _new_file(cache_dir: Path, before: set) -> Path:
    files = _wait_until(lambda: [p for p in cache_dir.glob("*.dotvllm") if p.name not in before], 10)
    assert len(files) == 1, files
    return files[0]


def test_workers_are_marked_and_children_of_the_api_server(fault_server):
    procs = {p.pid: p for p in fault_server.processes()}
    workers = [p for p in procs.values() if p.role == "compile-worker"]
    assert len(workers) == 1, list(procs.values())
    for w in workers:
        assert w.name == "dotvllm-compile"
        assert w.ppid == w.compile_worker_of == fault_server.pid  # the API server started them


def test_sigkill_of_a_compile_worker_mid_compile(fault_server):
    s = fault_server
    _assert_ok(_guided(s, r"ondisk[0-9]{3}"))  # compiled and stored: later served without a worker
    old = _workers(s)
    _signal(old, signal.SIGSTOP)  # whatever they get now stays mid-compile
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        victim = pool.submit(_guided, s, r"victim[0-9]{3}")
        time.sleep(1.5)
        # Unaffected while the compile hangs: plain generation, and a constraint on disk.
        _assert_ok(_plain(s))
        _assert_ok(_guided(s, r"ondisk[0-9]{3}"), r"ondisk[0-9]{3}")
        assert not victim.done()
        t0 = time.monotonic()
        _signal(old, signal.SIGKILL)
        reply = victim.result(timeout=30)
        answered_s = time.monotonic() - t0
    # Compiled again in a fresh worker (one retry), or a clean 400 if that one died too.
    if reply.status == 200:
        _assert_ok(reply, r"victim[0-9]{3}")
    else:
        assert reply.status == 400 and "compile worker process died" in reply.error, reply.raw[:500]
    assert answered_s < 10, answered_s
    # The pool replaced the worker(s) and compiles again.
    _assert_ok(_guided(s, r"after[0-9]{3}"), r"after[0-9]{3}")
    assert not set(_workers(s)) & set(old)
    assert s.healthy()


def test_compile_over_the_timeout_is_a_400_and_the_pool_recovers(fault_server):
    s = fault_server
    old = _workers(s)
    _signal(old, signal.SIGSTOP)  # a compile that never ends
    t0 = time.monotonic()
    reply = _guided(s, r"slow[0-9]{3}", endpoint=CHAT, stream=True)
    elapsed = time.monotonic() - t0
    _signal(old, signal.SIGCONT)
    assert reply.status == 400, reply.raw[:500]
    assert f"took longer than {TIMEOUT_S:g} s and was stopped" in reply.error, reply.error
    assert TIMEOUT_S - 0.5 < elapsed < TIMEOUT_S + 10, elapsed
    _assert_ok(_guided(s, r"fast[0-9]{3}"), r"fast[0-9]{3}")
    assert _workers(s) and not set(_workers(s)) & set(old) - set(_workers(s)) and set(_workers(s)) != set(old)
    _assert_ok(_plain(s))


def test_compile_over_the_memory_limit_is_a_400_and_the_pool_recovers(fault_server):
    s = fault_server
    reply = _guided(s, MEMORY_HOG)
    assert reply.status == 400, reply.raw[:500]
    assert "memory budget" in reply.error, reply.error
    again = _guided(s, MEMORY_HOG)  # remembered: the same answer, no worker
    assert again.status == 400 and "memory budget" in again.error
    _assert_ok(_guided(s, r"small[0-9]{3}"), r"small[0-9]{3}")
    assert len(_workers(s)) == 1
    assert s.healthy()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _bitflip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_PICKLE_SENTINEL}",))


def _pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps(_Exploit()))


@pytest.mark.parametrize("corrupt", [_truncate, _bitflip, _pickle], ids=["truncated", "bit-flipped", "pickle"])
def test_corrupt_cache_file_is_detected_and_recompiled(fault_server, corrupt):
    s, name = fault_server, corrupt.__name__.strip("_")
    regex = f"cache{name}[0-9]{{3}}"
    before = {p.name for p in s.cache_dir.glob("*.dotvllm")}
    _assert_ok(_guided(s, regex), regex)
    path = _new_file(s.cache_dir, before)
    corrupt(path)
    mark = len(_log(s))
    _assert_ok(_guided(s, regex), regex)  # detected, recompiled
    _assert_ok(_guided(s, regex), regex)  # the rewritten file serves the repeat
    log = _log(s)[mark:]
    assert log.count(f"discarding compile cache file {path}") == 1, log[-3000:]
    raw = path.read_bytes()  # rewritten, valid
    assert raw[:9] == b"DOTVLLMC\x01" and hashlib.sha256(raw[41:]).digest() == raw[9:41]
    assert not _PICKLE_SENTINEL.exists()


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * chunk)
    return filler


@pytest.mark.parametrize("fault", ["read-only", "disk-full"])
def test_unwritable_cache_is_logged_once_and_served_without_it(fault_server, fault):
    s = fault_server
    if not s.cache_is_tmpfs:
        pytest.skip("needs root to mount a tmpfs that can be made read-only or full")
    if fault == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(s.cache_dir)], check=True)
        undo = lambda: subprocess.run(["mount", "-o", "remount,rw", str(s.cache_dir)], check=True)  # noqa: E731
        code = "EROFS"
    else:
        filler = _fill(s.cache_dir)
        undo = filler.unlink
        code = "ENOSPC"
    mark = len(_log(s))
    try:
        for i in range(3):
            regex = f"{fault.replace('-', '')}{i}[0-9]{{3}}"
            _assert_ok(_guided(s, regex), regex)
            _assert_ok(_guided(s, regex), regex)  # no cache anywhere: compiled again, still right
    finally:
        undo()
    log = _log(s)[mark:]
    warnings = re.findall(r"could not write the compile cache file .*", log)
    assert len(warnings) == 1 and code in warnings[0], warnings
    assert not [p for p in s.cache_dir.iterdir() if ".tmp" in p.name]


def test_burst_of_identical_heavy_specs_is_compiled_once(fault_server):
    s = fault_server
    regex = rf"burst-{s.frontend}-(\d{{4}}-\d{{2}}-\d{{2}}, ){{60}}"  # ~0.5 s to compile, 18k states
    mark = len(_log(s))
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda i: _guided(s, regex, endpoint=CHAT if i % 2 else COMPLETIONS,
                                                  stream=i % 3 == 0, max_tokens=12), range(50)))
    assert [r.status for r in replies] == [200] * 50, [r.raw[:200] for r in replies if r.status != 200][:3]
    prefix = f"burst-{s.frontend}-"
    assert all(prefix.startswith(r.texts[0]) or r.texts[0].startswith(prefix) for r in replies)
    log = _log(s)[mark:]
    assert len(re.findall(r"compiled regex in [0-9.]+ ms \(cache miss", log)) == 1, log[-3000:]


def test_sigterm_under_load(fault_server):
    """Last in the module: stops the module's server. SIGTERM to the API server only, as a
    supervisor sends it, with long generations and compiles in flight (one in a stopped worker);
    after a 10 s grace period the supervisor's SIGKILL (vLLM V0 itself does not always exit on
    SIGTERM while long streams are in flight: uvicorn waits for them)."""
    s = fault_server
    _signal(_workers(s), signal.SIGSTOP)  # a compile certainly in flight

    def request(i):
        try:
            if i < 4:
                return _plain(s, max_tokens=400, stream=i % 2 == 1)
            return _guided(s, _slow(i), max_tokens=16)
        except requests.RequestException as e:  # the server closed the connection: a clean end
            return e

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(request, i) for i in range(6)]
        time.sleep(2.0)
        t0 = time.monotonic()
        os.kill(s.pid, signal.SIGTERM)
        how = "SIGTERM"
        try:
            s.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            how = "SIGTERM, then SIGKILL after 10 s"
            os.kill(s.pid, signal.SIGKILL)
            s.process.wait(timeout=30)
        exit_s = time.monotonic() - t0
        results = [f.result(timeout=60) for f in futures]  # none hangs
    left, gone_s = _leftovers(s.pid, s.tag)
    _kill_all(left)
    print(f"\n[{s.frontend}] SIGTERM under load: exited after {exit_s:.1f} s ({how}, code {s.process.returncode}), "
          f"every process gone {gone_s:.1f} s later, left {[(p.pid, p.role) for p in left]}; "
          f"requests: {[getattr(r, 'status', type(r).__name__) for r in results]}")
    assert not left, [(p.pid, p.role, p.cmdline[:80]) for p in left]
    for r in results:
        assert isinstance(r, requests.RequestException) or r.status in (200, 400, 500, 503), r


@pytest.fixture(scope="module")
def _sigkill_servers(demo_model_dir):
    """A server of its own per frontend for the SIGKILL test, both started at the same time."""
    servers = start_servers([{"frontend": f, "extra_env": {"DOTVLLM_COMPILE_WORKERS": "2"}} for f in FRONTENDS],
                            demo_model_dir)
    try:
        yield dict(zip(FRONTENDS, servers))
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(params=FRONTENDS)
def sigkill_server(request, _sigkill_servers):
    return _sigkill_servers[request.param]


def test_sigkill_of_the_server_leaves_no_process(sigkill_server):
    """SIGKILL of the API server (only it, as ``kill -9 PID``) mid-compile and mid-generation."""
    s = sigkill_server
    frontend = "inprocess" if "--disable-frontend-multiprocessing" in s.command else "mp"
    _assert_ok(_guided(s, r"warm[0-9]{3}"))
    _assert_ok(_guided(s, r"warm2[0-9]{2}"))
    workers = _wait_until(lambda: len(_workers(s)) == 2 and _workers(s), 30)
    assert workers
    _signal(workers[:1], signal.SIGSTOP)  # one compile hangs in it; the other worker really compiles
    before = s.processes()
    pool = concurrent.futures.ThreadPoolExecutor(6)

    def request(fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except requests.RequestException as e:
            return e

    futures = [pool.submit(request, _plain, s, 400, True), pool.submit(request, _plain, s, 400)]
    futures += [pool.submit(request, _guided, s, _slow(i)) for i in range(4)]
    time.sleep(1.5)
    t0 = time.monotonic()
    os.kill(s.pid, signal.SIGKILL)
    s.process.wait(timeout=30)
    _wait_until(lambda: not [p for p in s.processes() if p.role == "compile-worker"], ORPHAN_GRACE_S, 0.02)
    workers_gone_s = time.monotonic() - t0
    left, gone_s = _leftovers(s.pid, s.tag)
    _kill_all(left)
    results = [f.result(timeout=60) for f in futures]
    pool.shutdown()
    ours = [p for p in left if p.role == "compile-worker"]
    # vLLM V0's own engine process (MQ frontend) outlives a SIGKILLed API server, and with it the
    # resource tracker vLLM started when it spawned that engine (the engine holds its pipe). That
    # is vLLM's behaviour, identical without this plugin; it is reported, not hidden.
    vllm_engine = {p.pid for p in before if p.role == "mp-child" and p.ppid == s.pid}
    vllm_own = [p for p in left if p.pid in vllm_engine or (vllm_engine & {p.pid for p in left}
                                                            and p.role == "resource-tracker")]
    print(f"\n[{frontend}] SIGKILL: {len(before)} processes before ({sorted(p.role for p in before)}), "
          f"compile workers gone {workers_gone_s:.2f} s after the kill; "
          f"{'all gone' if not left else 'left'} after {gone_s:.1f} s more: ours {[(p.pid, p.role) for p in ours]}, "
          f"vLLM's own {[(p.pid, p.role) for p in vllm_own]}; "
          f"requests: {[getattr(r, 'status', type(r).__name__) for r in results]}")
    assert not ours, [(p.pid, p.role, p.cmdline[:80]) for p in ours]
    assert set(left) == set(vllm_own), [(p.pid, p.role, p.cmdline[:80]) for p in left]
    assert time.monotonic() - t0 < ORPHAN_GRACE_S + 5
