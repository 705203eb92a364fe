"""Prometheus metrics of our compiles, served on vLLM's ``/metrics``: the shared implementation in
:mod:`dotvllm_plugin.integrations._runtime` (``dotvllm_compile_total{kind, outcome}``,
``dotvllm_compile_seconds{kind}``). On V0 the compiles happen in the API-server process itself.

This module does not import vLLM.
"""

from __future__ import annotations

from .._runtime import install_metrics as install
from .._runtime import record_compile

__all__ = ["install", "record_compile"]
