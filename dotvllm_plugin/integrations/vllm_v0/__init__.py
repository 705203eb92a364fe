"""dotvllm as a vLLM general plugin: every guided request of vLLM's V0 engine uses our compiler.

vLLM calls :func:`register` (through :func:`dotvllm_plugin.integrations.register`, the
``vllm.general_plugins: dotvllm`` entry point) in every process it
starts: the API server (before argument parsing), the engine process of the multiprocessing
frontend, and the workers. :func:`register` is idempotent and cheap; it

1. does nothing when ``DOTVLLM_DISABLE=1`` (vLLM's own behaviour, untouched);
2. refuses vLLM versions outside ``>=0.8.5,<0.10.1`` (the V0 engine with guided decoding);
3. forces the V0 engine (``VLLM_USE_V1=0``, inherited by child processes), and refuses with a
   clear error when ``VLLM_USE_V1=1`` was exported (vLLM then binds its V1 classes at import);
4. applies the patches listed in :mod:`dotvllm_plugin.integrations.vllm_v0._patches` and logs each one.

Requests that name one of vLLM's backends in ``guided_decoding_backend`` keep vLLM's behaviour.
"""

from __future__ import annotations

import logging
import os
import threading

__all__ = ["SUPPORTED_VLLM", "register"]

SUPPORTED_VLLM = ">=0.8.5,<0.10.1"
"""vLLM releases whose V0 engine still does guided decoding through logits processors."""

logger = logging.getLogger("vllm.dotvllm_plugin")

_lock = threading.Lock()
_registered = False


def _disabled() -> bool:
    return os.environ.get("DOTVLLM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")


def _check_version() -> str:
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version
    from vllm.version import __version__ as vllm_version

    try:
        ok = SpecifierSet(SUPPORTED_VLLM).contains(Version(vllm_version), prereleases=True)
    except Exception:  # noqa: BLE001 - an unparsable version ("dev"): let the patches decide
        logger.warning("dotvllm: cannot parse vLLM version %r; trying anyway", vllm_version)
        return vllm_version
    if not ok:
        raise RuntimeError(
            f"dotvllm-plugin supports vLLM {SUPPORTED_VLLM} (the V0 engine with guided decoding), "
            f"found vLLM {vllm_version}. Install a supported vLLM, or set DOTVLLM_DISABLE=1 to run "
            "vLLM without the plugin."
        )
    return vllm_version


def _force_v0() -> None:
    value = os.environ.get("VLLM_USE_V1")
    if value is not None and value.strip() not in ("0", ""):
        raise RuntimeError(
            f"dotvllm-plugin needs vLLM's V0 engine, but VLLM_USE_V1={value} is set (vLLM then binds its "
            "V1 engine classes at import). Unset VLLM_USE_V1 (the plugin sets VLLM_USE_V1=0), or set "
            "DOTVLLM_DISABLE=1 to run vLLM without the plugin."
        )
    os.environ["VLLM_USE_V1"] = "0"
    import sys

    for module_name, attr in (("vllm.engine.llm_engine", "LLMEngine"),
                              ("vllm.engine.async_llm_engine", "AsyncLLMEngine")):
        cls = getattr(sys.modules.get(module_name), attr, None)
        if cls is not None and getattr(cls, "__module__", "").startswith("vllm.v1"):
            raise RuntimeError(
                f"dotvllm-plugin needs vLLM's V0 engine, but {module_name}.{attr} is already bound to the V1 "
                f"class {cls.__module__}.{cls.__name__}. Start vLLM without VLLM_USE_V1=1, or set "
                "DOTVLLM_DISABLE=1."
            )


def register() -> None:
    """vLLM general-plugin entry point (idempotent)."""
    global _registered
    with _lock:
        if _registered:
            return
        if _disabled():
            _registered = True
            logger.info("dotvllm: DOTVLLM_DISABLE is set; vLLM's guided decoding is left untouched")
            return
        version = _check_version()
        _force_v0()
        from ._patches import apply

        patched = apply()
        _registered = True
    logger.info("dotvllm %s on vLLM %s (pid %d): V0 engine (VLLM_USE_V1=0); patched %s",
                _package_version(), version, os.getpid(), ", ".join(patched) if patched else "nothing new")


def _package_version() -> str:
    from ... import __version__

    return __version__
