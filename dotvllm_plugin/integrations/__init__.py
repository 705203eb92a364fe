"""Serving-engine integrations: the only place that imports vllm.

:func:`register` is the ``vllm.general_plugins`` entry point (``dotvllm`` in pyproject.toml).
vLLM calls it in every process it starts. It reads the installed vLLM's version and installs

* :mod:`.vllm_v0` for vLLM ``>=0.8.5,<0.10.1`` (the V0 engine with guided decoding), or
* :mod:`.vllm_v1` for the V1 releases in :data:`.vllm_v1.SUPPORTED_VLLM`;

any other version is refused with one log line and nothing patched, so the server runs as if the
plugin were absent. ``DOTVLLM_DISABLE=1`` turns the plugin off. Importing this package does not
import vllm.
"""

from __future__ import annotations

import logging
import os

__all__ = ["register", "supported_engine"]

logger = logging.getLogger("vllm.dotvllm_plugin")

_refused = False


def _disabled() -> bool:
    return os.environ.get("DOTVLLM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")


def supported_engine(vllm_version: str) -> str | None:
    """``"v0"``, ``"v1"`` or ``None`` (not supported) for a vLLM version string."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    from .vllm_v0 import SUPPORTED_VLLM as V0
    from .vllm_v1 import supports as v1_supports

    try:
        v = Version(vllm_version)
    except InvalidVersion:
        return None
    if SpecifierSet(V0).contains(v, prereleases=True):
        return "v0"
    if v1_supports(v):
        return "v1"
    return None


def register() -> None:
    """vLLM general-plugin entry point (idempotent): installs the integration for this vLLM."""
    global _refused
    if _disabled():
        from .vllm_v0 import register as register_v0

        return register_v0()  # logs the opt-out once; patches nothing
    from vllm.version import __version__ as vllm_version

    engine = supported_engine(vllm_version)
    if engine == "v0":
        from .vllm_v0 import register as register_v0

        return register_v0()
    if engine == "v1":
        from .vllm_v1 import register as register_v1

        return register_v1(vllm_version)
    if not _refused:
        _refused = True
        from .vllm_v0 import SUPPORTED_VLLM as V0
        from .vllm_v1 import SUPPORTED_VLLM as V1

        logger.error("dotvllm-plugin: vLLM %s is not supported (V0 engine: %s; V1 engine: %s); the plugin is "
                     "not active and vLLM runs without it", vllm_version, V0, " or ".join(V1))
    return None
