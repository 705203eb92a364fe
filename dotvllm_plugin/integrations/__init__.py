"""Serving-engine integrations: the only place that imports vllm.

:func:`register` is the ``vllm.general_plugins`` entry point (``dotvllm`` in pyproject.toml).
vLLM calls it in every process it starts. For now it delegates to the V0 engine integration,
:func:`dotvllm_plugin.integrations.vllm_v0.register`; a V1 integration will be added beside it
(``integrations/vllm_v1``) and chosen here. Importing this package does not import vllm.
"""

from __future__ import annotations

__all__ = ["register"]


def register() -> None:
    """vLLM general-plugin entry point (idempotent): installs the V0 engine integration."""
    from .vllm_v0 import register as register_v0

    register_v0()
