"""The patches that put our engine under vLLM's V0 guided decoding. Imports vLLM.

Each patch names the attribute it replaces, keeps the original as ``__wrapped__`` and is applied
at most once per process. Where vLLM binds a function by name at import time, the patch replaces
the name in the module that *calls* it (the caller looks its globals up at call time).

* ``vllm.sampling_params.GuidedDecodingParams.__post_init__``: route (``backend`` None →
  ``"dotvllm"``) and check the spec early, inside the OpenAI request's ``to_sampling_params``, so a
  bad spec is a real HTTP 400, streaming too.
* ``vllm.engine.async_llm_engine.get_guided_decoding_logits_processor``: the async path, called by
  ``build_guided_decoding_logits_processor_async`` from the MQ client (API-server process) and from
  ``_AsyncLLMEngine.add_request_async`` (in-process frontend).
* ``vllm.engine.llm_engine.get_local_guided_decoding_logits_processor``: the sync path of
  ``LLMEngine._build_logits_processors`` (offline ``vllm.LLM``).
* ``vllm.engine.async_llm_engine.AsyncLLMEngine.add_request``: in-process frontend, compile in the
  caller's task rather than in the engine loop (which adds new requests one after the other).
* ``OpenAIServingCompletion.create_completion`` / ``OpenAIServingChat.create_chat_completion``:
  compile before a streaming response starts, so compile errors are HTTP 400 too.
* ``vllm.entrypoints.openai.protocol.CompletionRequest.to_sampling_params``: ``response_format``
  ``json_schema`` on ``/v1/completions`` (vLLM reads it on chat only).
* ``CompletionRequest.to_sampling_params`` / ``ChatCompletionRequest.to_sampling_params``:
  ``response_format: {"type": "json_schema"}`` without a schema is an HTTP 400 that says what is
  missing (vLLM: an assertion, HTTP 500, on chat; unconstrained output on completions), whatever
  the backend.
* ``vllm.entrypoints.openai.api_server.init_app_state`` (called by name from ``run_server``):
  after it, build the vocabulary and start the compile workers (:func:`.runtime.warm_up`), so
  the server is healthy only once they are ready and its first guided request does not stall the
  requests already streaming. ``DOTVLLM_WARMUP=0`` turns it off.
* ``vllm.model_executor.layers.logits_processor._apply_logits_processors`` (looked up at call time
  by ``LogitsProcessor.forward``): one masking operation per decode step for every sequence that
  carries our processor (:func:`.logits_processor.apply_step`); other processors run as before.
  Not applied when the function's signature differs or ``DOTVLLM_BATCHED_MASKS=0``: vLLM then
  calls our processor row by row, as it calls any processor.
"""

from __future__ import annotations

import contextvars
import copy
import functools
import inspect
import logging
import os
import sys

from .constraints import BACKEND, is_ours, validate

logger = logging.getLogger("vllm.dotvllm_plugin")

# GuidedDecodingParams built while an OpenAI handler runs, so that the handler wrapper can compile
# them before a streaming response starts.
_pending: contextvars.ContextVar[list | None] = contextvars.ContextVar("dotvllm_pending", default=None)


def _mark(wrapper, original):
    wrapper.__wrapped__ = original
    wrapper._dotvllm = True
    return wrapper


def _patched(obj, name) -> bool:
    return getattr(getattr(obj, name, None), "_dotvllm", False)


def _patch(obj, name, make, done: list, label: str) -> None:
    if _patched(obj, name):
        return
    original = getattr(obj, name)
    setattr(obj, name, _mark(make(original), original))
    done.append(label)


# -- guided params: routing and early validation ---------------------------------------------------

def _post_init(original):
    def __post_init__(self):
        original(self)
        if not is_ours(self):
            return
        if self.backend is None:
            self.backend = BACKEND
        validate(self)
        pending = _pending.get()
        if pending is not None:
            pending.append(self)

    return __post_init__


# -- logits processor construction ---------------------------------------------------------------

def _bind(original, args, kwargs):
    bound = inspect.signature(original).bind(*args, **kwargs)
    return bound.arguments


def _async_getter(original):
    async def get_guided_decoding_logits_processor(*args, **kwargs):
        a = _bind(original, args, kwargs)
        params = a["guided_params"]
        if not is_ours(params):
            return await original(*args, **kwargs)
        _refuse_reasoning(a.get("reasoning_backend"))
        from .runtime import build_processor_async

        return await build_processor_async(params, a["tokenizer"])

    return get_guided_decoding_logits_processor


def _sync_getter(original):
    def get_local_guided_decoding_logits_processor(*args, **kwargs):
        a = _bind(original, args, kwargs)
        params = a["guided_params"]
        if not is_ours(params):
            return original(*args, **kwargs)
        _refuse_reasoning(a.get("reasoning_backend"))
        from .runtime import build_processor

        return build_processor(params, a["tokenizer"])

    return get_local_guided_decoding_logits_processor


def _refuse_reasoning(reasoning_backend) -> None:
    if reasoning_backend:
        from .constraints import GuidedRequestError

        raise GuidedRequestError(
            f"the dotvllm backend does not support reasoning parsers yet (server runs with "
            f"--reasoning-parser {reasoning_backend}); pass guided_decoding_backend=\"xgrammar\""
        )


def _with_processor(params, processor):
    params = copy.copy(params)
    params.logits_processors = list(params.logits_processors or []) + [processor]
    params.guided_decoding = None
    return params


def _add_request(original):
    signature = inspect.signature(original)

    async def add_request(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        params = bound.arguments.get("params")
        gd = getattr(params, "guided_decoding", None)
        if gd is not None and is_ours(gd):
            from .runtime import build_processor_async

            tokenizer = await self.get_tokenizer(bound.arguments.get("lora_request"))
            bound.arguments["params"] = _with_processor(params, await build_processor_async(gd, tokenizer))
        return await original(*bound.args, **bound.kwargs)

    return add_request


# -- OpenAI handlers -------------------------------------------------------------------------------

def _handler(original):
    @functools.wraps(original)
    async def handler(self, request, *args, **kwargs):
        pending: list = []
        token = _pending.set(pending)
        try:
            response = await original(self, request, *args, **kwargs)
        finally:
            _pending.reset(token)
        if not pending or not inspect.isasyncgen(response):
            # Non-streaming responses already compiled (and reported errors) while generating.
            return response
        try:
            from .runtime import precompile

            await precompile(pending, await self.engine_client.get_tokenizer())
        except ValueError as e:
            await response.aclose()
            return self.create_error_response(str(e))
        return response

    return handler


_JSON_SCHEMA_FORMAT = ('{"type": "json_schema", "json_schema": {"name": "...", "schema": {...}}} '
                       '(or {"type": "json_object"} for any JSON object)')


def _check_response_format(request) -> None:
    """``type: json_schema`` must come with the schema; a ``ValueError`` is vLLM's HTTP 400."""
    rf = getattr(request, "response_format", None)
    if rf is None or getattr(rf, "type", None) != "json_schema":
        return
    from .constraints import GuidedRequestError

    if getattr(rf, "json_schema", None) is None:
        raise GuidedRequestError(f"response_format: type 'json_schema' needs a 'json_schema' object, got none; "
                                 f"send {_JSON_SCHEMA_FORMAT}")
    if rf.json_schema.json_schema is None:
        raise GuidedRequestError(f"response_format: json_schema {rf.json_schema.name!r} has no 'schema'; "
                                 f"send {_JSON_SCHEMA_FORMAT}")


def _completion_to_sampling_params(original):
    def to_sampling_params(self, *args, **kwargs):
        _check_response_format(self)
        rf = getattr(self, "response_format", None)
        if (rf is not None and getattr(rf, "type", None) == "json_schema" and self.guided_json is None
                and getattr(rf, "json_schema", None) is not None):
            self.guided_json = rf.json_schema.json_schema
        return original(self, *args, **kwargs)

    return to_sampling_params


def _chat_to_sampling_params(original):
    def to_sampling_params(self, *args, **kwargs):
        _check_response_format(self)
        return original(self, *args, **kwargs)

    return to_sampling_params


# -- one masking operation per step ----------------------------------------------------------------

def _step(original):
    def _apply_logits_processors(logits, sampling_metadata):
        from .logits_processor import apply_step

        return apply_step(original, logits, sampling_metadata)

    return _apply_logits_processors


def _batched_masks_enabled() -> bool:
    return os.environ.get("DOTVLLM_BATCHED_MASKS", "1").strip().lower() not in ("0", "false", "no", "off")


def _patch_step(done: list) -> None:
    import vllm.model_executor.layers.logits_processor as lp

    name = "_apply_logits_processors"
    label = f"vllm.model_executor.layers.logits_processor.{name}"
    fn = getattr(lp, name, None)
    if fn is None or _patched(lp, name) or not _batched_masks_enabled():
        return
    if list(inspect.signature(fn).parameters) != ["logits", "sampling_metadata"]:
        logger.warning("dotvllm: %s has an unexpected signature %s; guided rows are masked one at a time",
                       label, inspect.signature(fn))
        return
    _patch(lp, name, _step, done, label)


def _warm_up_enabled() -> bool:
    return os.environ.get("DOTVLLM_WARMUP", "1").strip().lower() not in ("0", "false", "no", "off")


def _init_app_state(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    async def init_app_state(*args, **kwargs):
        result = await original(*args, **kwargs)
        engine_client = signature.bind(*args, **kwargs).arguments.get("engine_client")
        if engine_client is not None and _warm_up_enabled():
            from .runtime import warm_up

            try:
                tokenizer = await engine_client.get_tokenizer()
            except Exception as e:  # noqa: BLE001 - warm-up is an optimisation
                logger.warning("dotvllm: no tokenizer to warm up with (%s: %s)", type(e).__name__, e)
            else:
                await warm_up(tokenizer)
        return result

    return init_app_state


# -- apply -------------------------------------------------------------------------------------------

def apply() -> list[str]:
    """Apply every patch this process needs; return the names of those applied now."""
    done: list[str] = []
    from vllm.sampling_params import GuidedDecodingParams

    _patch(GuidedDecodingParams, "__post_init__", _post_init, done,
           "vllm.sampling_params.GuidedDecodingParams.__post_init__")

    import vllm.engine.llm_engine as llm_engine

    _patch(llm_engine, "get_local_guided_decoding_logits_processor", _sync_getter, done,
           "vllm.engine.llm_engine.get_local_guided_decoding_logits_processor")

    import vllm.engine.async_llm_engine as async_llm_engine

    _patch(async_llm_engine, "get_guided_decoding_logits_processor", _async_getter, done,
           "vllm.engine.async_llm_engine.get_guided_decoding_logits_processor")
    _patch(async_llm_engine.AsyncLLMEngine, "add_request", _add_request, done,
           "vllm.engine.async_llm_engine.AsyncLLMEngine.add_request")
    _patch_step(done)

    # The OpenAI layer exists only in the API-server process (which imported it before loading
    # plugins, also when started as `python -m vllm.entrypoints.openai.api_server`); never import
    # it elsewhere.
    if "vllm.entrypoints.openai.serving_completion" in sys.modules:
        from vllm.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
        from vllm.entrypoints.openai.serving_chat import OpenAIServingChat
        from vllm.entrypoints.openai.serving_completion import OpenAIServingCompletion

        _patch(OpenAIServingCompletion, "create_completion", _handler, done,
               "vllm.entrypoints.openai.serving_completion.OpenAIServingCompletion.create_completion")
        _patch(OpenAIServingChat, "create_chat_completion", _handler, done,
               "vllm.entrypoints.openai.serving_chat.OpenAIServingChat.create_chat_completion")
        _patch(CompletionRequest, "to_sampling_params", _completion_to_sampling_params, done,
               "vllm.entrypoints.openai.protocol.CompletionRequest.to_sampling_params")
        _patch(ChatCompletionRequest, "to_sampling_params", _chat_to_sampling_params, done,
               "vllm.entrypoints.openai.protocol.ChatCompletionRequest.to_sampling_params")
        api_server = sys.modules.get("vllm.entrypoints.openai.api_server")
        if api_server is not None and hasattr(api_server, "init_app_state"):
            _patch(api_server, "init_app_state", _init_app_state, done,
                   "vllm.entrypoints.openai.api_server.init_app_state")
        from . import metrics

        done.extend(metrics.install())
    return done
