"""Per-process state shared by both integrations: vocabularies, the compilation manager, metrics.

Configuration (environment, read when the first constraint is compiled):

``DOTVLLM_COMPILE_WORKERS``
    Compile worker processes (default: half the CPUs, between 1 and 4).
``DOTVLLM_COMPILE_TIMEOUT_S``
    Longest one compile may run before its worker is killed (default 60).
``DOTVLLM_COMPILE_CACHE_SIZE``
    Compiled constraints kept in memory (default 256).
``DOTVLLM_COMPILE_CACHE_DIR``
    Directory of the persistent compile cache (default: none, no disk cache).
``DOTVLLM_COMPILE_MEMORY_MB``
    Address-space limit of each compile worker (default 4096; 0: no limit).

Metrics (served on vLLM's ``/metrics`` by :func:`install_metrics`):

* ``dotvllm_compile_total{kind, outcome}`` — compile requests by constraint kind and outcome
  (``hit``: memory, disk or an identical compile in flight; ``miss``: compiled; ``error``: bad
  spec, budget, timeout or failed worker);
* ``dotvllm_compile_seconds{kind}`` — time spent compiling in a worker (misses and errors);
* ``dotvllm_requests_total{kind}`` — V1 only: structured requests routed to the dotvllm backend.

V0 compiles in the API-server process, V1 in the engine-core process, while ``/metrics`` is served
by the API server. So every process keeps its values in plain counters and, as soon as it has
any, writes a snapshot (JSON, replaced atomically; from a daemon thread, off the request's path)
into one directory per server,
``DOTVLLM_METRICS_DIR`` (created by the first process that registers the plugin, a temporary
directory removed when that process exits; child processes inherit the variable). The collector
bridged into vLLM's registry yields this process's values plus the latest snapshot of every other
process of the server, summed. vLLM's own Prometheus multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``)
is not used: it exists only with several API servers, and it is decided when ``prometheus_client``
is imported, before any plugin loads.

This module does not import vLLM.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict

from ..compilation_manager import CompilationManager
from ._constraints import GuidedRequestError

__all__ = [
    "add_vocabulary_hook",
    "compile_kwargs",
    "install_metrics",
    "manager_for",
    "metrics_snapshot",
    "record_compile",
    "record_request",
    "vocabulary_for",
]

logger = logging.getLogger("vllm.dotvllm_plugin")

_lock = threading.Lock()
_vocabularies: dict[int, tuple[object, object]] = {}  # id(tokenizer) -> (tokenizer, Vocabulary)
_managers: dict[str, CompilationManager] = {}  # vocabulary fingerprint -> manager
_vocabulary_hooks: list = []


def _env_number(name: str, default, kind=int):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        logger.warning("%s=%r is not a valid %s; using %s", name, raw, kind.__name__, default)
        return default


def _env_int(name: str, default: int) -> int:
    return _env_number(name, default, int)


def _env_float(name: str, default: float) -> float:
    return _env_number(name, default, float)


def add_vocabulary_hook(hook) -> None:
    """Call ``hook(vocabulary)`` for every vocabulary built from now on (V0: register it with the
    logits processor's unpickling cache)."""
    with _lock:
        if hook not in _vocabulary_hooks:
            _vocabulary_hooks.append(hook)


def vocabulary_for(tokenizer):
    """The :class:`Vocabulary` of a vLLM tokenizer, built once per tokenizer object."""
    with _lock:
        entry = _vocabularies.get(id(tokenizer))
        if entry is not None and entry[0] is tokenizer:
            return entry[1]
        hooks = list(_vocabulary_hooks)
    from ..vocabulary import Vocabulary

    try:
        vocab = Vocabulary.from_hf_tokenizer(tokenizer)
    except Exception as e:  # noqa: BLE001
        raise GuidedRequestError(
            f"the dotvllm backend cannot read this model's tokenizer ({type(tokenizer).__name__}: {e}); "
            "use one of vLLM's structured-output backends for this model"
        ) from e
    for hook in hooks:
        hook(vocab)
    with _lock:
        _vocabularies[id(tokenizer)] = (tokenizer, vocab)
    logger.info("dotvllm: vocabulary of %s: %d tokens, EOS %s, fingerprint %s", type(tokenizer).__name__,
                vocab.size, list(vocab.eos_token_ids), vocab.fingerprint[:12])
    return vocab


def manager_for(vocabulary) -> CompilationManager:
    """The process's compilation manager for ``vocabulary`` (created on first use)."""
    with _lock:
        m = _managers.get(vocabulary.fingerprint)
        if m is None:
            workers = _env_int("DOTVLLM_COMPILE_WORKERS", max(1, min(4, (os.cpu_count() or 2) // 2)))
            m = CompilationManager(
                vocabulary,
                max_workers=max(1, workers),
                cache_size=_env_int("DOTVLLM_COMPILE_CACHE_SIZE", 256),
                cache_dir=os.environ.get("DOTVLLM_COMPILE_CACHE_DIR") or None,
                timeout_s=_env_float("DOTVLLM_COMPILE_TIMEOUT_S", 60.0),
                memory_limit_mb=_env_int("DOTVLLM_COMPILE_MEMORY_MB", 4096) or None,
                worker_nice=_env_int("DOTVLLM_COMPILE_NICE", 19),
                on_compile=record_compile,
                logger=logging.getLogger("vllm.dotvllm_plugin.compilation"),
            )
            _managers[vocabulary.fingerprint] = m
            if len(_managers) == 1:
                atexit.register(_close_all)
            logger.info("dotvllm: compilation manager with %d worker process(es), timeout %g s, cache %d%s",
                        m.max_workers, m.timeout_s, m.cache_size,
                        f", disk cache {m.cache_dir}" if m.cache_dir else "")
        return m


def compile_kwargs(manager: CompilationManager, constraint) -> dict:
    """Keyword arguments of ``manager.compile`` / ``compile_async`` for a :class:`Constraint`: its
    whole options dict (``options=``), or only ``whitespace_pattern`` for a manager without the
    ``options`` parameter."""
    if _takes_options(type(manager)):
        return {"options": constraint.options}
    return {"whitespace_pattern": constraint.whitespace_pattern}


_takes_options_cache: dict[type, bool] = {}


def _takes_options(cls) -> bool:
    known = _takes_options_cache.get(cls)
    if known is None:
        import inspect

        try:
            known = "options" in inspect.signature(cls.submit).parameters
        except (TypeError, ValueError):
            known = False
        _takes_options_cache[cls] = known
    return known


def _close_all() -> None:
    with _lock:
        managers = list(_managers.values())
        _managers.clear()
    for m in managers:
        m.close()


# -- metrics ------------------------------------------------------------------------------------------

METRICS_DIR_ENV = "DOTVLLM_METRICS_DIR"

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

_metrics_lock = threading.Lock()
_compiles: dict[tuple[str, str], float] = defaultdict(float)  # (kind, outcome) -> count
_seconds: dict[str, list] = {}  # kind -> [per-bucket counts (non-cumulative, + the +Inf bucket), sum, count]
_requests: dict[str, float] = defaultdict(float)  # kind -> count (V1)
_loads: dict[str, float] = defaultdict(float)  # "processor" / "grammar" -> count (V0 engine side)
_installed = False


def _metrics_dir() -> str | None:
    return os.environ.get(METRICS_DIR_ENV) or None


def ensure_metrics_dir() -> str | None:
    """The server's snapshot directory; the first process of a server creates it (removed at its exit)."""
    path = _metrics_dir()
    if path is not None:
        return path
    try:
        path = tempfile.mkdtemp(prefix=f"dotvllm-metrics-{os.getpid()}-")
    except OSError as e:
        logger.warning("dotvllm: no directory for metrics of other processes (%s); /metrics shows this "
                       "process's values only", e)
        return None
    os.environ[METRICS_DIR_ENV] = path
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(path, ignore_errors=True))
    return path


def _snapshot_locked() -> dict:
    return {
        "compiles": [[k, o, v] for (k, o), v in _compiles.items()],
        "seconds": {k: [list(v[0]), v[1], v[2]] for k, v in _seconds.items()},
        "requests": dict(_requests),
        "loads": dict(_loads),
    }


def metrics_snapshot() -> dict:
    """This process's metric values (the format written to the snapshot directory)."""
    with _metrics_lock:
        return _snapshot_locked()


PUBLISH_INTERVAL_S = 0.5
"""Least time between two snapshot writes of one process. A write costs 0.1–0.2 ms of CPU and
1–2.5 ms on its thread (more under load); one per counted event (every routed request, every
compile-cache hit: several a second on a busy server) cost the API server and the engine core
10–15 % of their sampled time on short requests (py-spy; docs/benchmarks.md). The first count
after a quiet spell is written at once; counts within the interval after a write join the next
one, so ``/metrics`` shows another process's counts at most this late."""

_publish_wanted = threading.Event()
_publisher: threading.Thread | None = None
_publisher_pid: int | None = None


def _publish_soon() -> None:
    """Have this process's snapshot written by its publisher thread (started on first use).

    Counting happens on hot paths (the engine core's ``grammar_init``, the API server's request
    check); the file write happens on a daemon thread, at most once per
    :data:`PUBLISH_INTERVAL_S`, and counts that arrive meanwhile are coalesced into its next
    write. Never raises."""
    global _publisher, _publisher_pid
    if _metrics_dir() is None:
        return
    _publish_wanted.set()
    pid = os.getpid()
    if _publisher_pid == pid:  # (a thread does not survive fork: a child starts its own)
        return
    with _metrics_lock:
        if _publisher_pid == pid:
            return
        try:
            thread = threading.Thread(target=_publish_loop, name="dotvllm-metrics", daemon=True)
            thread.start()
        except RuntimeError:  # interpreter shutting down: write now
            _publisher_pid = None
        else:
            _publisher, _publisher_pid = thread, pid
            atexit.register(_publish_at_exit, pid)
            return
    _publish()


def _publish_loop() -> None:
    while True:
        _publish_wanted.wait()
        _publish_wanted.clear()
        _publish()
        time.sleep(PUBLISH_INTERVAL_S)  # counts arriving meanwhile join the next write


def _publish_at_exit(pid: int) -> None:
    """Counts the publisher thread has not written yet (it may be waiting out its interval) are
    written on the exiting thread."""
    if os.getpid() == pid and _publish_wanted.is_set():
        _publish()


def _publish() -> None:
    """Write this process's snapshot for the process that serves /metrics; never raises."""
    path = _metrics_dir()
    if path is None or not os.path.isdir(path):
        return
    with _metrics_lock:
        data = json.dumps(_snapshot_locked())
    target = os.path.join(path, f"{os.getpid()}.json")
    tmp = f"{target}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(data)
        os.replace(tmp, target)
    except OSError as e:
        logger.debug("dotvllm: could not write metrics snapshot %s: %s", target, e)


def record_compile(kind: str, outcome: str, seconds: float, error: BaseException | None = None) -> None:
    """``CompilationManager`` ``on_compile`` callback; must not raise."""
    with _metrics_lock:
        _compiles[(kind, outcome)] += 1
        if outcome != "hit":
            entry = _seconds.setdefault(kind, [[0] * (len(_BUCKETS) + 1), 0.0, 0])
            i = next((j for j, b in enumerate(_BUCKETS) if seconds <= b), len(_BUCKETS))
            entry[0][i] += 1
            entry[1] += seconds
            entry[2] += 1
    _publish_soon()


def record_request(kind: str) -> None:
    """V1: one structured request routed to the dotvllm backend (API-server process); never raises."""
    with _metrics_lock:
        _requests[kind] += 1
    _publish_soon()


def record_load(what: str) -> None:
    """V0: a logits processor unpickled (``"processor"``) or a compiled grammar rebuilt from its
    bytes (``"grammar"``) in this process. Never raises."""
    with _metrics_lock:
        _loads[what] += 1
    _publish_soon()


def _merged() -> dict:
    """This process's values plus the latest snapshot of every other process of the server."""
    with _metrics_lock:
        mine = _snapshot_locked()
    snapshots = [mine]
    path = _metrics_dir()
    if path is not None and os.path.isdir(path):
        own = f"{os.getpid()}.json"
        for name in sorted(os.listdir(path)):
            if not name.endswith(".json") or name == own:
                continue
            try:
                with open(os.path.join(path, name)) as f:
                    snapshots.append(json.load(f))
            except (OSError, ValueError):
                continue
    compiles: dict[tuple[str, str], float] = defaultdict(float)
    seconds: dict[str, list] = {}
    requests: dict[str, float] = defaultdict(float)
    loads: dict[str, float] = defaultdict(float)
    for snap in snapshots:
        try:
            for kind, outcome, value in snap.get("compiles", ()):
                compiles[(kind, outcome)] += value
            for kind, (buckets, total, count) in snap.get("seconds", {}).items():
                entry = seconds.setdefault(kind, [[0] * (len(_BUCKETS) + 1), 0.0, 0])
                for i, c in enumerate(buckets[: len(_BUCKETS) + 1]):
                    entry[0][i] += c
                entry[1] += total
                entry[2] += count
            for kind, value in snap.get("requests", {}).items():
                requests[kind] += value
            for what, value in snap.get("loads", {}).items():
                loads[what] += value
        except (TypeError, ValueError):  # a snapshot of another format: skipped
            continue
    return {"compiles": compiles, "seconds": seconds, "requests": requests, "loads": loads}


class _Collector:
    """Yields our metrics (this process + the server's other processes) to a Prometheus registry."""

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        data = _merged()
        compiles = CounterMetricFamily("dotvllm_compile",
                                       "Compile requests of the dotvllm backend by constraint kind and outcome.",
                                       labels=["kind", "outcome"])
        for (kind, outcome), value in sorted(data["compiles"].items()):
            compiles.add_metric([kind, outcome], value)
        yield compiles
        hist = HistogramMetricFamily("dotvllm_compile_seconds",
                                     "Seconds spent compiling a constraint in a worker (misses and errors).",
                                     labels=["kind"])
        for kind, (counts, total, _count) in sorted(data["seconds"].items()):
            cumulative, buckets = 0, []
            for bound, c in zip(list(_BUCKETS) + [float("inf")], counts):
                cumulative += c
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
            hist.add_metric([kind], buckets, total)
        yield hist
        if data["requests"]:
            requests = CounterMetricFamily("dotvllm_requests",
                                           "Structured requests routed to the dotvllm backend (V1), by kind.",
                                           labels=["kind"])
            for kind, value in sorted(data["requests"].items()):
                requests.add_metric([kind], value)
            yield requests
        if data["loads"]:
            loads = CounterMetricFamily("dotvllm_constraint_loads",
                                        "V0: logits processors unpickled and compiled grammars rebuilt from bytes, "
                                        "summed over the server's processes.",
                                        labels=["what"])
            for what, value in sorted(data["loads"].items()):
                loads.add_metric([what], value)
            yield loads

    def describe(self):
        return []


_collector = _Collector()


def install_metrics() -> list[str]:
    """Expose our metrics on vLLM's /metrics (idempotent). Returns what was patched.

    Bridged into whichever registry vLLM's ``/metrics`` endpoint reads: the default ``REGISTRY``,
    or a fresh registry with a ``MultiProcessCollector`` (vLLM's Prometheus multiprocess mode), to
    whose ``collect`` our collector is chained.
    """
    global _installed
    done: list[str] = []
    with _metrics_lock:
        if _installed:
            return done
        _installed = True
    ensure_metrics_dir()
    try:
        from prometheus_client import REGISTRY
        from prometheus_client import multiprocess as mp
    except ImportError:  # pragma: no cover - prometheus_client ships with vLLM
        logger.warning("prometheus_client is not installed: dotvllm metrics are disabled")
        return done
    REGISTRY.register(_collector)
    done.append("prometheus_client.REGISTRY (+ dotvllm collector)")

    original = mp.MultiProcessCollector.collect
    if not getattr(original, "_dotvllm", False):

        def collect(self):
            yield from original(self)
            yield from _collector.collect()

        collect._dotvllm = True
        collect.__wrapped__ = original
        mp.MultiProcessCollector.collect = collect
        done.append("prometheus_client.multiprocess.MultiProcessCollector.collect (+ dotvllm metrics)")
    return done
