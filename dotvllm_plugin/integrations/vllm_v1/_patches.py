"""What the V1 integration changes in vLLM (each patch keeps the original as ``__wrapped__``).

Names are those of vLLM 0.29 to 0.32; where 0.11 differs, its name follows in brackets.

1. ``vllm.sampling_params.SamplingParams._validate_structured_outputs`` [0.11:
   ``vllm.v1.engine.processor.Processor._validate_structured_output``; 0.12 – 0.16:
   ``vllm.v1.engine.input_processor.InputProcessor._validate_structured_output``; 0.17 – 0.23 have
   ``SamplingParams._validate_structured_outputs`` without its ``model_config``] (API-server process, and
   the offline ``LLM``): when the server's structured-output backend is ``auto`` (vLLM's default),
   a structured request becomes ours (``structured_outputs._backend = "dotvllm"``) after our cheap
   check (:func:`dotvllm_plugin.integrations._constraints.validate`): a bad spec raises a
   ``VLLMValidationError`` [0.11: our ``GrammarError``, a ``ValueError``], which vLLM answers with
   HTTP 400. ``structural_tag`` requests in the ``structures`` + ``triggers`` form are checked and
   compiled by us; xgrammar's ``format`` form is checked by vLLM's xgrammar validation (our backend
   delegates it to xgrammar). A server started with an explicit backend
   (``--structured-outputs-config.backend xgrammar``) keeps vLLM's behaviour for every request.
2. ``vllm.v1.structured_output.StructuredOutputManager.grammar_init`` (engine-core process): builds
   :class:`~.backend.DotvllmBackend` when the first request marked ours arrives (vLLM's own
   code knows only its four backend names and would raise); a later request whose constraint is
   in the compile cache gets its grammar here at once
   (:meth:`~.backend.DotvllmBackend.cached_grammar`), the others go to vLLM's compile thread.
3. ``StructuredOutputManager._create_grammar`` [0.11, 0.12: ``_async_create_grammar``]: our backend gets
   the whole request (V1's ``(type, spec)`` key drops ``whitespace_pattern``); it never raises
   (on 0.11 to ~0.21 an exception there would stop the engine core).
4. ``OpenAIServingChat.create_chat_completion`` / ``OpenAIServingCompletion.create_completion``
   [0.11: in ``vllm.entrypoints.openai.serving_chat`` / ``serving_completion``]: a streaming
   request is checked before its response starts, so a bad spec is an HTTP 400 and not an error
   event inside a 200 stream (V1 validates only once the stream generator runs).
5. ``vllm.v1.engine.output_processor.RequestState._new_completion_output`` (API-server process,
   and the offline ``LLM``): a request whose constraint failed to compile in the engine core
   arrives finished with ``stop_reason = "dotvllm compile error: <message>"`` (set by
   :meth:`~.backend.DotvllmBackend.compile_request`); its output gets ``finish_reason="error"``
   and ``stop_reason=<message>``.
6. ``vllm.entrypoints.generate.base.serving.GenerateBaseServing._raise_if_error`` and
   ``._convert_generation_error_to_streaming_response`` [0.15 – 0.24: on
   ``vllm.entrypoints.openai.engine.serving.OpenAIServing``; 0.13 – 0.14:
   ``vllm.entrypoints.openai.serving_engine.OpenAIServing``]: such an output is answered with a
   ``VLLMValidationError(<message>)`` (HTTP 400 ``BadRequestError``, or that error as an event in
   a stream that already started) instead of vLLM's generic "Internal server error".
   [0.11, 0.12: ``vllm.v1.engine.async_llm.AsyncLLM.generate`` raises ``ValueError(<message>)`` for such
   an output; the OpenAI servers answer it the same way.]
   Without patches 5 and 6 (a vLLM whose classes differ) the client still sees the message in
   ``stop_reason``, with ``finish_reason: "stop"`` and an empty text.
"""

from __future__ import annotations

import functools
import inspect
import logging

from ...grammar.structural_tag import is_format_form
from .._constraints import BACKEND, V1_NAMES, validate
from . import metrics
from .backend import compile_error_message

__all__ = ["apply"]

logger = logging.getLogger("vllm.dotvllm_plugin")


def _mark(fn, original):
    fn._dotvllm = True
    fn.__wrapped__ = original
    return fn


def _client_error(e: ValueError) -> ValueError:
    """The error vLLM answers with HTTP 400: ``VLLMValidationError`` where vLLM has it (there a bare
    ``ValueError`` becomes a 500), else the ``ValueError`` itself (vLLM 0.11 answers it with 400)."""
    try:
        from vllm.exceptions import VLLMValidationError
    except ImportError:
        return e
    if isinstance(e, VLLMValidationError):
        return e
    return VLLMValidationError(str(e), parameter=getattr(e, "parameter", None))


def _route(sampling_params, so) -> None:
    """Check one request's constraint (raising the client error) and mark the request ours."""
    try:
        kind = _check(sampling_params, so)
    except ValueError as e:
        error = _client_error(e)
        if error is e:
            raise
        raise error from e
    so._backend = BACKEND
    so._backend_was_auto = True
    metrics.record_request(kind)


def _patch_validation() -> str | None:
    from vllm.sampling_params import SamplingParams

    if not hasattr(SamplingParams, "_validate_structured_outputs"):
        return _patch_processor_validation()
    original = SamplingParams._validate_structured_outputs
    if getattr(original, "_dotvllm", False):
        return None

    # (self, model_config, structured_outputs_config, tokenizer) on 0.32, without model_config on 0.20
    names = list(inspect.signature(original).parameters)[1:]

    @functools.wraps(original)
    def _validate_structured_outputs(self, *args, **kwargs):
        bound = dict(zip(names, args), **kwargs)
        so_config = bound.get("structured_outputs_config")
        so = self.structured_outputs
        if (so_config is None or so is None or so_config.backend != "auto"
                or getattr(bound.get("model_config"), "is_diffusion", False) or bound.get("tokenizer") is None
                or (so._backend is not None and so._backend != BACKEND)):
            return original(self, *args, **kwargs)
        _route(self, so)
        so.__post_init__()

    SamplingParams._validate_structured_outputs = _mark(_validate_structured_outputs, original)
    return "vllm.sampling_params.SamplingParams._validate_structured_outputs"


def _patch_processor_validation() -> str | None:
    """vLLM 0.11 – 0.16: the API-server check is ``Processor._validate_structured_output(params)``
    (0.11), ``InputProcessor._validate_structured_output(params)`` (0.12 – 0.16)."""
    import importlib.util

    if importlib.util.find_spec("vllm.v1.engine.input_processor") is not None:
        from vllm.v1.engine.input_processor import InputProcessor as Processor
    else:  # vLLM 0.11
        from vllm.v1.engine.processor import Processor

    original = Processor._validate_structured_output
    if getattr(original, "_dotvllm", False):
        return None
    where = f"{Processor.__module__}.{Processor.__name__}._validate_structured_output"

    @functools.wraps(original)
    def _validate_structured_output(self, params):
        so = params.structured_outputs
        so_config = self.structured_outputs_config
        if (so is None or so_config is None or so_config.backend != "auto"
                or getattr(self.model_config, "skip_tokenizer_init", False)
                or (so._backend is not None and so._backend != BACKEND)):
            return original(self, params)
        _route(params, so)
        so.__post_init__()  # (0.12+ does this after its own check: the params travel to the engine core)

    Processor._validate_structured_output = _mark(_validate_structured_output, original)
    return where


def _check(sampling_params, so) -> str:
    """Our early check of one request's constraint; returns its kind or raises a ValueError."""
    if is_format_form(so.structural_tag):
        # xgrammar's "format" form, delegated to xgrammar in the engine: vLLM's xgrammar checks apply.
        from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar

        validate_xgrammar_grammar(sampling_params)
        return "structural_tag"
    if isinstance(so.choice, list) and not so.choice:
        raise ValueError("structured_outputs.choice: must list at least one choice, got an empty list")
    if so.json_object is False:
        raise ValueError("structured_outputs.json_object must be true if set")
    return validate(so, names=V1_NAMES).kind


def _stream_precheck(serving, request):
    """Our early check before a streaming response starts (V1 validates the request only when the
    response generator first runs, which for a stream is after the HTTP 200 went out)."""
    cfg = getattr(getattr(serving, "engine_client", None), "vllm_config", None)
    so_cfg = getattr(cfg, "structured_outputs_config", None)
    if so_cfg is None or so_cfg.backend != "auto":
        return None
    try:
        so = _structured_outputs_of(request)
        if so is None or is_format_form(so.structural_tag) or all(
                getattr(so, f, None) is None
                for f in ("json", "regex", "choice", "grammar", "json_object", "structural_tag")):
            return None
        _check(None, so)
    except ValueError as e:
        try:
            from vllm.exceptions import VLLMValidationError
        except ImportError:  # vLLM 0.11: a message
            return serving.create_error_response(str(e))
        return serving.create_error_response(VLLMValidationError(str(e)))
    except Exception:  # noqa: BLE001 - anything else: vLLM's own path reports it
        return None
    return None


def _structured_outputs_of(request):
    """The request's ``StructuredOutputsParams`` as vLLM will build it, without changing the request.

    vLLM 0.29 – 0.32 have ``request.extract_structured_outputs()``; on 0.11 and 0.20
    ``to_sampling_params`` builds them (and writes them into the request) from
    ``structured_outputs``, the deprecated ``guided_*`` fields (0.11) and ``response_format``."""
    extract = getattr(request, "extract_structured_outputs", None)
    if callable(extract):
        return extract()
    import copy

    from vllm.sampling_params import StructuredOutputsParams

    response_format = getattr(request, "response_format", None)
    kind = getattr(response_format, "type", None)
    if kind == "structural_tag":
        return None  # checked when the request reaches the processor
    extra = {}
    if kind == "json_object":
        extra["json_object"] = True
    elif kind == "json_schema" and getattr(response_format, "json_schema", None) is not None:
        extra["json"] = response_format.json_schema.json_schema
    so = getattr(request, "structured_outputs", None)
    if so is not None:
        so = copy.copy(so)
        for k, v in extra.items():
            setattr(so, k, v)
        return so
    kwargs = {k: getattr(request, f"guided_{k}", None) for k in ("json", "regex", "choice", "grammar")}
    kwargs["whitespace_pattern"] = getattr(request, "guided_whitespace_pattern", None)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs.update(extra)
    # (a StructuredOutputsParams without a constraint is an error on 0.20: build it only with one)
    if not kwargs.keys() & {"json", "regex", "choice", "grammar", "json_object"}:
        return None
    return StructuredOutputsParams(**kwargs)


def _patch_streaming() -> list[str]:
    try:
        from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
        from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
    except ImportError:  # vLLM 0.11
        from vllm.entrypoints.openai.serving_chat import OpenAIServingChat
        from vllm.entrypoints.openai.serving_completion import OpenAIServingCompletion

    done = []
    for cls, name in ((OpenAIServingChat, "create_chat_completion"), (OpenAIServingCompletion, "create_completion")):
        original = getattr(cls, name)
        if getattr(original, "_dotvllm", False):
            continue

        def make(original):
            @functools.wraps(original)
            async def create(self, request, *args, **kwargs):
                if getattr(request, "stream", False):
                    error = _stream_precheck(self, request)
                    if error is not None:
                        return error
                return await original(self, request, *args, **kwargs)

            return create

        setattr(cls, name, _mark(make(original), original))
        done.append(f"{cls.__module__}.{cls.__name__}.{name}")
    return done


def _patch_manager() -> list[str]:
    from vllm.v1.structured_output import StructuredOutputManager

    from .backend import DotvllmBackend

    done = []
    original_init = StructuredOutputManager.grammar_init
    if not getattr(original_init, "_dotvllm", False):

        @functools.wraps(original_init)
        def grammar_init(self, request):
            sor = request.structured_output_request
            if sor is not None and sor.params._backend == BACKEND:
                if self.backend is None:
                    self.backend = DotvllmBackend(self.vllm_config, tokenizer=self.tokenizer,
                                                  vocab_size=self.vllm_config.model_config.get_vocab_size())
                elif isinstance(self.backend, DotvllmBackend):
                    grammar = self.backend.cached_grammar(request)
                    if grammar is not None:  # ready now: no trip through the compile thread
                        sor.grammar = grammar
                        return None
            return original_init(self, request)

        StructuredOutputManager.grammar_init = _mark(grammar_init, original_init)
        done.append("vllm.v1.structured_output.StructuredOutputManager.grammar_init")

    # The compile thread's entry: _create_grammar (vLLM >= 0.29), _async_create_grammar (0.11).
    name = "_create_grammar" if hasattr(StructuredOutputManager, "_create_grammar") else "_async_create_grammar"
    original_create = getattr(StructuredOutputManager, name)
    if not getattr(original_create, "_dotvllm", False):

        def make(original_create):
            @functools.wraps(original_create)
            def _create_grammar(self, request):
                if isinstance(self.backend, DotvllmBackend):
                    return self.backend.compile_request(request)
                return original_create(self, request)

            return _create_grammar

        setattr(StructuredOutputManager, name, _mark(make(original_create), original_create))
        done.append(f"vllm.v1.structured_output.StructuredOutputManager.{name}")
    return done


class CompileFailure(str):
    """``finish_reason`` ``"error"`` of an output whose constraint failed to compile; ``.message`` says why."""

    message: str = ""

    def __new__(cls, message: str):
        self = super().__new__(cls, "error")
        self.message = message
        return self


def _patch_compile_errors() -> list[str]:
    done = []
    try:
        from vllm.v1.engine.output_processor import RequestState
    except ImportError:
        RequestState = None
    if RequestState is None or not hasattr(RequestState, "_new_completion_output"):
        logger.warning("dotvllm: this vLLM's output classes differ from the checked releases'; a compile failure "
                       "in the engine core reaches the client only as stop_reason")
        return done
    original = RequestState._new_completion_output
    if not getattr(original, "_dotvllm", False):

        @functools.wraps(original)
        def _new_completion_output(self, token_ids, finish_reason, stop_reason, *args, **kwargs):
            # (0.20 adds routed_experts after stop_reason)
            output = original(self, token_ids, finish_reason, stop_reason, *args, **kwargs)
            message = compile_error_message(stop_reason) if finish_reason is not None else None
            if message is not None:
                output.finish_reason = CompileFailure(message)
                output.stop_reason = message
            return output

        RequestState._new_completion_output = _mark(_new_completion_output, original)
        done.append("vllm.v1.engine.output_processor.RequestState._new_completion_output")
    GenerateBaseServing = _serving_base()
    if GenerateBaseServing is None:  # vLLM 0.11: the OpenAI servers answer a ValueError from generate() with 400
        done.extend(_patch_generate_raises())
        return done
    where = f"{GenerateBaseServing.__module__}.{GenerateBaseServing.__name__}"
    try:
        error_class = _compile_error_class()
    except ImportError:
        logger.warning("dotvllm: this vLLM's error classes differ from the checked releases'; a compile failure "
                       "in the engine core reaches the client as an error finish_reason with the message")
        return done
    original_raise = getattr(GenerateBaseServing, "_raise_if_error", None)
    if original_raise is not None and not getattr(original_raise, "_dotvllm", False):

        @functools.wraps(original_raise)
        def _raise_if_error(self, finish_reason, request_id):
            if isinstance(finish_reason, CompileFailure):
                raise error_class(finish_reason.message)
            return original_raise(self, finish_reason, request_id)

        GenerateBaseServing._raise_if_error = _mark(_raise_if_error, original_raise)
        done.append(f"{where}._raise_if_error")
    original_stream = getattr(GenerateBaseServing, "_convert_generation_error_to_streaming_response", None)
    if original_stream is not None and not getattr(original_stream, "_dotvllm", False):

        @functools.wraps(original_stream)
        def _convert_generation_error_to_streaming_response(self, e):
            if isinstance(e, error_class):  # a client error: BadRequestError 400, as before the stream
                return self.create_streaming_error_response(e)
            return original_stream(self, e)

        GenerateBaseServing._convert_generation_error_to_streaming_response = _mark(
            _convert_generation_error_to_streaming_response, original_stream)
        done.append(f"{where}._convert_generation_error_to_streaming_response")
    return done


def _serving_base():
    """The OpenAI servers' base class that turns ``finish_reason == "error"`` into a
    ``GenerationError`` (``_raise_if_error``): ``GenerateBaseServing`` (0.25+),
    ``…openai.engine.serving.OpenAIServing`` (0.15 – 0.24), ``…openai.serving_engine.OpenAIServing``
    (0.13 – 0.14); ``None`` where there is none (0.11, 0.12)."""
    import importlib

    for module, name in (("vllm.entrypoints.generate.base.serving", "GenerateBaseServing"),
                         ("vllm.entrypoints.openai.engine.serving", "OpenAIServing"),
                         ("vllm.entrypoints.openai.serving_engine", "OpenAIServing")):
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if hasattr(cls, "_raise_if_error"):
            return cls
    return None


def _patch_generate_raises() -> list[str]:
    """vLLM 0.11: ``AsyncLLM.generate`` raises a ``ValueError(<message>)`` for an output whose
    constraint failed to compile; the OpenAI servers answer it with HTTP 400 (or an error event in a
    stream that already started), as they do for the processor's own checks."""
    from vllm.v1.engine.async_llm import AsyncLLM

    original = AsyncLLM.generate
    if getattr(original, "_dotvllm", False):
        return []

    @functools.wraps(original)
    async def generate(self, *args, **kwargs):
        async for output in original(self, *args, **kwargs):
            for completion in getattr(output, "outputs", None) or ():
                if isinstance(completion.finish_reason, CompileFailure):
                    raise ValueError(completion.finish_reason.message)
            yield output

    AsyncLLM.generate = _mark(generate, original)
    return ["vllm.v1.engine.async_llm.AsyncLLM.generate"]


def _compile_error_class():
    """vLLM's client error (HTTP 400) that its stream generators also catch without a traceback
    (they catch ``GenerationError`` quietly, anything else with ``logger.exception``)."""
    from http import HTTPStatus

    import importlib

    from vllm.exceptions import VLLMValidationError

    # vllm.exceptions (0.29+), …openai.engine.protocol (0.18 – 0.28), …openai.engine.serving (0.15 – 0.17),
    # …openai.serving_engine (0.13 – 0.14)
    for module in ("vllm.exceptions", "vllm.entrypoints.openai.engine.protocol",
                   "vllm.entrypoints.openai.engine.serving", "vllm.entrypoints.openai.serving_engine"):
        try:
            GenerationError = importlib.import_module(module).GenerationError
            break
        except (ImportError, AttributeError):
            continue
    else:
        raise ImportError("vLLM's GenerationError was not found")

    class DotvllmCompileError(VLLMValidationError, GenerationError):
        def __init__(self, message: str):
            VLLMValidationError.__init__(self, message)
            self.status_code = HTTPStatus.BAD_REQUEST

    return DotvllmCompileError


def _register_virtual_subclasses() -> None:
    from vllm.v1.structured_output.backend_types import StructuredOutputBackend, StructuredOutputGrammar

    from .backend import DotvllmBackend
    from .grammar import DotvllmGrammar

    StructuredOutputBackend.register(DotvllmBackend)
    StructuredOutputGrammar.register(DotvllmGrammar)


def apply() -> list[str]:
    """Apply every patch not yet applied (idempotent); return what was patched now."""
    done = []
    v = _patch_validation()
    if v:
        done.append(v)
    done.extend(_patch_manager())
    done.extend(_patch_streaming())
    done.extend(_patch_compile_errors())
    _register_virtual_subclasses()
    done.extend(metrics.install())
    for name in done:
        logger.debug("dotvllm: patched %s", name)
    return done
