"""Metrics of the V1 integration on vLLM's ``/metrics`` (API-server process).

* ``dotvllm_requests_total{kind}`` — structured requests routed to the dotvllm backend after
  passing the early check, by kind (``regex``, ``choice``, ``json_schema``, ``json_object``,
  ``grammar``, ``structural_tag``).

V1 compiles in the engine-core process, whose metrics vLLM does not serve; each compile is logged
there instead (``dotvllm: request … compiled by dotvllm``). The bridge into vLLM's registry is the
V0 integration's (:mod:`dotvllm_plugin.integrations.vllm_v0.metrics`).

This module does not import vLLM.
"""

from __future__ import annotations

from ..vllm_v0 import metrics as _shared

__all__ = ["install", "record_request"]


def _counter():
    state = _shared._metrics()
    with _shared._lock:
        counter = state.get("requests")
        if counter is None:
            from prometheus_client import Counter

            counter = state["requests"] = Counter(
                "dotvllm_requests", "Structured requests routed to the dotvllm backend (V1), by kind.",
                ["kind"], registry=state["registry"],
            )
    return counter


def record_request(kind: str) -> None:
    _counter().labels(kind=kind).inc()


def install() -> list[str]:
    """Expose our metrics on vLLM's /metrics (idempotent)."""
    return _shared.install()
