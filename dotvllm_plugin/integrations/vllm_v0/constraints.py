"""The V0 names of the shared request translation (:mod:`dotvllm_plugin.integrations._constraints`).

This module does not import vLLM.
"""

from __future__ import annotations

from .._constraints import (
    BACKEND,
    V0_NAMES,
    Constraint,
    GuidedRequestError,
    backend_name,
    constraint_of,
    is_ours,
    validate,
)

__all__ = ["BACKEND", "V0_NAMES", "Constraint", "GuidedRequestError", "backend_name", "constraint_of", "is_ours",
           "validate"]
