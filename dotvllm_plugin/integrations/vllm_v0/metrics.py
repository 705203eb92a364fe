"""Prometheus metrics of our compiles, served on vLLM's ``/metrics``.

* ``dotvllm_compile_total{kind, outcome}`` — compile requests by constraint kind and outcome
  (``hit``: memory, disk or an identical compile in flight; ``miss``: compiled; ``error``: bad
  spec, timeout or failed worker);
* ``dotvllm_compile_seconds{kind}`` — time spent compiling in a worker (misses and errors).

Compiles happen in the API-server process. The metrics live in a private registry, bridged into
whichever registry vLLM's ``/metrics`` endpoint reads: the default ``REGISTRY`` (in-process
frontend), or a fresh registry with a ``MultiProcessCollector`` (multiprocessing frontend, where
``PROMETHEUS_MULTIPROC_DIR`` is set only after this process imported ``prometheus_client``, so our
values cannot go through the multiprocess files): there our collector is chained to
``MultiProcessCollector.collect``.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["install", "record_compile"]

logger = logging.getLogger("vllm.dotvllm_plugin")

_lock = threading.Lock()
_state: dict = {}

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _metrics():
    with _lock:
        if "registry" not in _state:
            from prometheus_client import CollectorRegistry, Counter, Histogram

            reg = CollectorRegistry(auto_describe=True)
            _state["compiles"] = Counter(
                "dotvllm_compile", "Compile requests of the dotvllm backend by constraint kind and outcome.",
                ["kind", "outcome"], registry=reg,
            )
            _state["seconds"] = Histogram(
                "dotvllm_compile_seconds", "Seconds spent compiling a constraint in a worker (misses and errors).",
                ["kind"], buckets=_BUCKETS, registry=reg,
            )
            _state["registry"] = reg
        return _state


def record_compile(kind: str, outcome: str, seconds: float, error: BaseException | None = None) -> None:
    """``CompilationManager`` ``on_compile`` callback."""
    m = _metrics()
    m["compiles"].labels(kind=kind, outcome=outcome).inc()
    if outcome != "hit":
        m["seconds"].labels(kind=kind).observe(seconds)


class _Bridge:
    """A collector that yields our private registry's metrics."""

    def collect(self):
        reg = _state.get("registry")
        if reg is None:
            return iter(())
        return reg.collect()

    def describe(self):
        return []


def install() -> list[str]:
    """Expose our metrics on vLLM's /metrics (idempotent). Returns what was patched."""
    done = []
    with _lock:
        if _state.get("installed"):
            return done
        _state["installed"] = True
    try:
        from prometheus_client import REGISTRY
        from prometheus_client import multiprocess as mp
    except ImportError:  # pragma: no cover - prometheus_client ships with vLLM
        logger.warning("prometheus_client is not installed: dotvllm metrics are disabled")
        return done
    bridge = _Bridge()
    REGISTRY.register(bridge)
    done.append("prometheus_client.REGISTRY (+ dotvllm collector)")

    original = mp.MultiProcessCollector.collect
    if not getattr(original, "_dotvllm", False):

        def collect(self):
            yield from original(self)
            yield from bridge.collect()

        collect._dotvllm = True
        collect.__wrapped__ = original
        mp.MultiProcessCollector.collect = collect
        done.append("prometheus_client.multiprocess.MultiProcessCollector.collect (+ dotvllm metrics)")
    return done
