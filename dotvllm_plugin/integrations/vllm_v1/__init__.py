"""dotvllm as a structured-output backend of vLLM's V1 engine (tested releases: see
:data:`SUPPORTED_VLLM`).

vLLM V1 has no registry for out-of-tree structured-output backends, so :func:`register` (called
through :func:`dotvllm_plugin.integrations.register` in every vLLM process) patches the two places
that decide (listed in :mod:`._patches`): the request check in the API-server process routes each
structured request to us and answers a bad spec with HTTP 400, and the engine core's
``StructuredOutputManager`` builds :class:`~.backend.DotvllmBackend` for requests marked ours.

Routing: every structured request of a server whose ``structured_outputs_config.backend`` is
``auto`` (vLLM's default) is ours; a server started with an explicit backend
(``--structured-outputs-config.backend xgrammar``) keeps vLLM's behaviour, and so does any server
with ``DOTVLLM_DISABLE=1``. vLLM V1 refuses per-request backend selection. ``structural_tag`` in the
``structures`` + ``triggers`` form is ours; xgrammar's ``format`` form is delegated to vLLM's
xgrammar backend.
"""

from __future__ import annotations

import logging
import os
import threading

__all__ = ["SUPPORTED_VLLM", "register", "supports"]

SUPPORTED_VLLM = (">=0.11.2,<0.12", ">=0.14.1,<0.25", ">=0.27.1,<0.35")
"""vLLM releases whose V1 structured-output interfaces this integration was checked against (any
one of these version ranges; the releases between them are refused until checked, see
docs/installation.md#other-v1-releases): served and tested on the CPU builds of 0.11.2, 0.14.1,
0.16.0, 0.17.1, 0.18.1, 0.20.2, 0.21.0, 0.24.0 and 0.27.1 - 0.32.0. The releases inside
``>=0.14.1,<0.25`` that were not served (0.15, 0.17.0, 0.18.0, 0.19, 0.20.0 - 0.20.1, 0.22, 0.23) are
accepted because each vLLM function the integration wraps or most directly depends on (listed in
docs/installation.md) has there the same source as in a served release; no server of them was run;
0.33 and 0.34, which have no CPU build, at import level (every patch applies, the routing tests
pass). Refused: 0.11.0 - 0.11.1, 0.12 - 0.14.0 (0.12 keeps 0.11's compile and error paths, 0.13
has no ``VLLMValidationError``; neither was served), 0.25 - 0.27.0 (their serving and compile
entries changed three times; not served) and 0.35+."""


def supports(version) -> bool:
    """Whether a vLLM version (string or ``packaging.version.Version``) is in :data:`SUPPORTED_VLLM`."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    v = Version(str(version))
    return any(SpecifierSet(r).contains(v, prereleases=True) for r in SUPPORTED_VLLM)

logger = logging.getLogger("vllm.dotvllm_plugin")

_lock = threading.Lock()
_registered = False


def register(version: str = "?") -> None:
    """Install the V1 integration (idempotent); the caller checked the version and the opt-out."""
    global _registered
    with _lock:
        if _registered:
            return
        from ._patches import apply

        patched = apply()
        _registered = True
    from ... import __version__

    logger.info("dotvllm %s on vLLM %s (pid %d): V1 structured-output backend; patched %s", __version__, version,
                os.getpid(), ", ".join(patched) if patched else "nothing new")
