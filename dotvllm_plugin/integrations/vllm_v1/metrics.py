"""Metrics of the V1 integration on vLLM's ``/metrics`` (served by the API-server process).

* ``dotvllm_requests_total{kind}`` — structured requests routed to the dotvllm backend after
  passing the early check, by kind (``regex``, ``choice``, ``json_schema``, ``json_object``,
  ``grammar``, ``structural_tag``); counted in the API-server process.
* ``dotvllm_compile_total{kind, outcome}`` and ``dotvllm_compile_seconds{kind}`` — as on V0, but
  counted in the engine-core process, which compiles (a constraint served from the compile cache
  in ``grammar_init`` is a ``hit``); they reach the API server's ``/metrics`` through the snapshot
  directory of :mod:`dotvllm_plugin.integrations._runtime`, which writes each process's snapshot
  at most once per ``_runtime.PUBLISH_INTERVAL_S``.

This module does not import vLLM.
"""

from __future__ import annotations

from .. import _runtime
from .._runtime import install_metrics as install

__all__ = ["install", "record_cache_hit", "record_request"]


def record_request(kind: str) -> None:
    """One structured request routed to the dotvllm backend (API-server process); never raises."""
    _runtime.record_request(kind)


def record_cache_hit(kind: str) -> None:
    """One constraint served from the compile cache in ``grammar_init`` (engine core); never raises."""
    _runtime.record_compile(kind, "hit", 0.0)
