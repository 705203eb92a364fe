"""Metrics of the V1 integration on vLLM's ``/metrics`` (served by the API-server process).

* ``dotvllm_requests_total{kind}`` — structured requests routed to the dotvllm backend after
  passing the early check, by kind (``regex``, ``choice``, ``json_schema``, ``json_object``,
  ``grammar``, ``structural_tag``); counted in the API-server process.
* ``dotvllm_compile_total{kind, outcome}`` and ``dotvllm_compile_seconds{kind}`` — as on V0, but
  counted in the engine-core process, which compiles; they reach the API server's ``/metrics``
  through the snapshot directory of :mod:`dotvllm_plugin.integrations._runtime`.

The two per-request counts (a routed request in the API server, a compile-cache hit in the
engine core's ``grammar_init``) are batched here and handed to :mod:`.._runtime` at most once
per :data:`FLUSH_INTERVAL_S`: each hand-over makes that process write its snapshot file, and a
snapshot per burst of requests (several a second on a busy server) cost the API server and the
engine core 10–15 % of their sampled time on 16 concurrent short requests (py-spy, see
docs/benchmarks.md), against ~2 % for the grammar work itself. So these two counts reach
``/metrics`` up to :data:`FLUSH_INTERVAL_S` late; compile misses and errors (reported by the
compilation manager) are not delayed.

This module does not import vLLM.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections import Counter

from .. import _runtime
from .._runtime import install_metrics as install

__all__ = ["FLUSH_INTERVAL_S", "flush", "install", "record_cache_hit", "record_request"]

FLUSH_INTERVAL_S = 0.5
"""Longest delay between a batched count and its hand-over to :mod:`.._runtime`."""

_lock = threading.Lock()
_pending: Counter = Counter()  # ("request" | "hit", kind) -> count not yet handed over
_wanted = threading.Event()
_flusher_pid: int | None = None


def record_request(kind: str) -> None:
    """One structured request routed to the dotvllm backend (API-server process); never raises."""
    _defer("request", kind)


def record_cache_hit(kind: str) -> None:
    """One constraint served from the compile cache in ``grammar_init`` (engine core); never raises."""
    _defer("hit", kind)


def _defer(what: str, kind: str) -> None:
    with _lock:
        _pending[(what, kind)] += 1
    if _flusher_pid != os.getpid():  # (a thread does not survive fork: a child starts its own)
        _start_flusher()
    if not _wanted.is_set():
        _wanted.set()


def _start_flusher() -> None:
    global _flusher_pid
    with _lock:
        if _flusher_pid == os.getpid():
            return
        try:
            threading.Thread(target=_flush_loop, name="dotvllm-metrics-batch", daemon=True).start()
        except RuntimeError:  # interpreter shutting down: hand over now
            _flusher_pid = None
        else:
            _flusher_pid = os.getpid()
            atexit.register(_flush_at_exit)
            return
    flush()


def _flush_loop() -> None:
    while True:
        _wanted.wait()
        time.sleep(FLUSH_INTERVAL_S)  # counts arriving meanwhile join this hand-over
        _wanted.clear()
        flush()


def _flush_at_exit() -> None:
    """At exit: hand over what is batched and write the snapshot on this thread (``_runtime``'s own
    exit write may already have run: exit handlers run in reverse order of registration)."""
    if flush():
        _runtime.publish_now()


def flush() -> bool:
    """Hand every batched count to :mod:`.._runtime` now (one snapshot write follows); whether
    there was any; never raises."""
    with _lock:
        pending = dict(_pending)
        _pending.clear()
    for (what, kind), n in pending.items():
        try:
            for _ in range(n):
                if what == "request":
                    _runtime.record_request(kind)
                else:
                    _runtime.record_compile(kind, "hit", 0.0)
        except Exception:  # noqa: BLE001 - metrics never break serving
            continue
    return bool(pending)
