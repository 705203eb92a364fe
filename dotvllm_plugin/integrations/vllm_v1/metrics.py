"""Metrics of the V1 integration on vLLM's ``/metrics`` (served by the API-server process).

* ``dotvllm_requests_total{kind}`` — structured requests routed to the dotvllm backend after
  passing the early check, by kind (``regex``, ``choice``, ``json_schema``, ``json_object``,
  ``grammar``, ``structural_tag``); counted in the API-server process.
* ``dotvllm_compile_total{kind, outcome}`` and ``dotvllm_compile_seconds{kind}`` — as on V0, but
  counted in the engine-core process, which compiles; they reach the API server's ``/metrics``
  through the snapshot directory of :mod:`dotvllm_plugin.integrations._runtime`.

This module does not import vLLM.
"""

from __future__ import annotations

from .._runtime import install_metrics as install
from .._runtime import record_request

__all__ = ["install", "record_request"]
