"""V0's processor building on the shared per-process state (:mod:`dotvllm_plugin.integrations._runtime`:
vocabularies, the compilation manager and its configuration, metrics).

This module does not import vLLM.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ...errors import CompilationError, DotvllmError, GrammarError
from .._runtime import _lock, _vocabularies, add_vocabulary_hook, compile_kwargs, manager_for, vocabulary_for
from .constraints import Constraint, GuidedRequestError, constraint_of
from .logits_processor import DotvllmLogitsProcessor, register_vocabulary

__all__ = ["build_processor", "build_processor_async", "manager_for", "precompile", "vocabulary_for", "warm_up"]

logger = logging.getLogger("vllm.dotvllm_plugin")

# The engine process rebuilds pickled processors against the vocabularies registered here.
add_vocabulary_hook(register_vocabulary)


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
        manager = manager_for(vocab)
        result = await manager.compile_async(constraint.kind, constraint.spec, **compile_kwargs(manager, constraint))
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
        manager = manager_for(vocab)
        result = manager.compile(constraint.kind, constraint.spec, **compile_kwargs(manager, constraint))
        return _processor(constraint, result)
    except Exception as e:  # noqa: BLE001
        err = _as_request_error(e, constraint)
        if err is e:
            raise
        raise err from e


async def precompile(constraints, tokenizer) -> None:
    """Compile ``constraints`` (warming the cache) before a response starts; raise ValueError subclasses."""
    await asyncio.gather(*(build_processor_async(c, tokenizer) for c in constraints))


async def warm_up(tokenizer) -> None:
    """Build the tokenizer's vocabulary and start the compile workers; never raises.

    Called while the API server starts (before it answers ``/health``): otherwise the first guided
    request pays for both, and the vocabulary build (pure Python, ~0.3 s for a 32k vocabulary,
    ~1.6 s for 131k) holds the API server's interpreter while other requests stream.
    """
    t0 = time.perf_counter()
    try:
        vocab = await _vocabulary_async(tokenizer)
        workers = await asyncio.wrap_future(manager_for(vocab).start_workers())
    except Exception as e:  # noqa: BLE001 - the first request builds them instead
        logger.warning("dotvllm: warm-up failed (%s: %s); the first guided request builds the vocabulary",
                       type(e).__name__, e)
        return
    logger.info("dotvllm: warm-up: vocabulary of %d tokens and %d compile worker(s) ready in %.2f s",
                len(vocab), workers, time.perf_counter() - t0)


async def _vocabulary_async(tokenizer):
    with _lock:
        entry = _vocabularies.get(id(tokenizer))
    if entry is not None and entry[0] is tokenizer:
        return entry[1]
    return await asyncio.to_thread(vocabulary_for, tokenizer)
