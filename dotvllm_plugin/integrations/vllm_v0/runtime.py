"""Per-process state of the plugin: vocabularies, the compilation manager, processor building.

Configuration (environment, read when the first guided request arrives):

``DOTVLLM_COMPILE_WORKERS``
    Compile worker processes (default: half the CPUs, between 1 and 4).
``DOTVLLM_COMPILE_TIMEOUT_S``
    Longest one compile may run before its worker is killed (default 60).
``DOTVLLM_COMPILE_CACHE_SIZE``
    Compiled constraints kept in memory (default 256).
``DOTVLLM_COMPILE_CACHE_DIR``
    Directory of the persistent compile cache (default: none, no disk cache).
``DOTVLLM_COMPILE_MEMORY_MB``
    Address-space limit of each compile worker (default 4096; 0: no limit).

This module does not import vLLM.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading

from ...compilation_manager import CompilationManager
from ...errors import CompilationError, DotvllmError, GrammarError
from . import metrics
from .constraints import Constraint, GuidedRequestError, constraint_of
from .logits_processor import DotvllmLogitsProcessor, register_vocabulary

__all__ = ["build_processor", "build_processor_async", "manager_for", "precompile", "vocabulary_for"]

logger = logging.getLogger("vllm.dotvllm_plugin")

_lock = threading.Lock()
_vocabularies: dict[int, tuple[object, object]] = {}  # id(tokenizer) -> (tokenizer, Vocabulary)
_managers: dict[str, CompilationManager] = {}  # vocabulary fingerprint -> manager


def _env_number(name: str, default, kind=int):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        logger.warning("%s=%r is not a valid %s; using %s", name, raw, kind.__name__, default)
        return default


def _env_int(name: str, default: int) -> int:
    return _env_number(name, default, int)


def _env_float(name: str, default: float) -> float:
    return _env_number(name, default, float)


def vocabulary_for(tokenizer):
    """The :class:`Vocabulary` of a vLLM tokenizer, built once per tokenizer object."""
    with _lock:
        entry = _vocabularies.get(id(tokenizer))
        if entry is not None and entry[0] is tokenizer:
            return entry[1]
    from ...vocabulary import Vocabulary

    try:
        vocab = Vocabulary.from_hf_tokenizer(tokenizer)
    except Exception as e:  # noqa: BLE001
        raise GuidedRequestError(
            f"the dotvllm backend cannot read this model's tokenizer ({type(tokenizer).__name__}: {e}); "
            "pass guided_decoding_backend=\"xgrammar\" to use vLLM's backend"
        ) from e
    register_vocabulary(vocab)
    with _lock:
        _vocabularies[id(tokenizer)] = (tokenizer, vocab)
    logger.info("dotvllm: vocabulary of %s: %d tokens, EOS %s, fingerprint %s", type(tokenizer).__name__,
                vocab.size, list(vocab.eos_token_ids), vocab.fingerprint[:12])
    return vocab


def manager_for(vocabulary) -> CompilationManager:
    """The process's compilation manager for ``vocabulary`` (created on first use)."""
    with _lock:
        m = _managers.get(vocabulary.fingerprint)
        if m is None:
            workers = _env_int("DOTVLLM_COMPILE_WORKERS", max(1, min(4, (os.cpu_count() or 2) // 2)))
            m = CompilationManager(
                vocabulary,
                max_workers=max(1, workers),
                cache_size=_env_int("DOTVLLM_COMPILE_CACHE_SIZE", 256),
                cache_dir=os.environ.get("DOTVLLM_COMPILE_CACHE_DIR") or None,
                timeout_s=_env_float("DOTVLLM_COMPILE_TIMEOUT_S", 60.0),
                memory_limit_mb=_env_int("DOTVLLM_COMPILE_MEMORY_MB", 4096) or None,
                on_compile=metrics.record_compile,
                logger=logging.getLogger("vllm.dotvllm_plugin.compilation"),
            )
            _managers[vocabulary.fingerprint] = m
            if len(_managers) == 1:
                atexit.register(_close_all)
            logger.info("dotvllm: compilation manager with %d worker process(es), timeout %g s, cache %d%s",
                        m.max_workers, m.timeout_s, m.cache_size,
                        f", disk cache {m.cache_dir}" if m.cache_dir else "")
        return m


def _close_all() -> None:
    with _lock:
        managers = list(_managers.values())
        _managers.clear()
    for m in managers:
        m.close()


def _processor(constraint: Constraint, result) -> DotvllmLogitsProcessor:
    return DotvllmLogitsProcessor(result.grammar, key=result.key, data=result.data, description=constraint.describe())


def _as_request_error(e: BaseException, constraint: Constraint | None) -> Exception:
    where = f"{constraint.parameter}: " if constraint is not None else ""
    if isinstance(e, GrammarError):
        return e
    if isinstance(e, (CompilationError, DotvllmError)):
        return GuidedRequestError(f"{where}{e}")
    logger.exception("dotvllm: unexpected error while compiling %s", constraint.describe() if constraint else "?")
    return GuidedRequestError(f"{where}internal error of the dotvllm backend while compiling: {type(e).__name__}: {e}")


async def build_processor_async(guided_params, tokenizer) -> DotvllmLogitsProcessor:
    """Compile (in the worker pool, awaiting) and wrap into a logits processor.

    Raises only ``ValueError`` subclasses, which vLLM turns into HTTP 400 without stopping.
    """
    constraint = None
    try:
        constraint = constraint_of(guided_params)
        vocab = await _vocabulary_async(tokenizer)
        result = await manager_for(vocab).compile_async(
            constraint.kind, constraint.spec, whitespace_pattern=constraint.whitespace_pattern)
        return _processor(constraint, result)
    except Exception as e:  # noqa: BLE001
        err = _as_request_error(e, constraint)
        if err is e:
            raise
        raise err from e


def build_processor(guided_params, tokenizer) -> DotvllmLogitsProcessor:
    """Blocking :func:`build_processor_async`, for ``LLMEngine``'s synchronous path (offline ``LLM``)."""
    constraint = None
    try:
        constraint = constraint_of(guided_params)
        vocab = vocabulary_for(tokenizer)
        result = manager_for(vocab).compile(
            constraint.kind, constraint.spec, whitespace_pattern=constraint.whitespace_pattern)
        return _processor(constraint, result)
    except Exception as e:  # noqa: BLE001
        err = _as_request_error(e, constraint)
        if err is e:
            raise
        raise err from e


async def precompile(constraints, tokenizer) -> None:
    """Compile ``constraints`` (warming the cache) before a response starts; raise ValueError subclasses."""
    await asyncio.gather(*(build_processor_async(c, tokenizer) for c in constraints))


async def _vocabulary_async(tokenizer):
    with _lock:
        entry = _vocabularies.get(id(tokenizer))
    if entry is not None and entry[0] is tokenizer:
        return entry[1]
    return await asyncio.to_thread(vocabulary_for, tokenizer)
