"""The engine-level object vLLM V1 builds once: compiles each request's constraint.

vLLM V1 (``StructuredOutputManager`` in the engine-core process) asks the backend for
``compile_grammar(request_type, grammar_spec, stop_token_ids)`` on its compile thread pool, one call
per new structured request, and for ``allocate_token_bitmask(max_num_seqs)`` once. V1's key
``(request_type, grammar_spec)`` drops the per-request options (``whitespace_pattern``,
``disable_any_whitespace``, ``disable_additional_properties``), so
:mod:`._patches` calls :meth:`DotvllmBackend.compile_request` with the whole request instead.

Compiles go through the process's :class:`~dotvllm_plugin.compilation_manager.CompilationManager`
(worker processes, cache, time and memory limits), so a pathological constraint cannot stall the
engine core. ``STRUCTURAL_TAG`` requests in the ``structures`` + ``triggers`` form are ours too;
xgrammar's ``format`` form is delegated to vLLM's own xgrammar backend (built on first use).

Never raises: a constraint that fails to compile (the API server checked it, so this is a size,
time or memory budget, or a bug) is logged (one warning per request) and gets a dead grammar that
ends its request at once. :meth:`DotvllmBackend.compile_request` also writes the error into the
request's ``stop_reason`` (prefixed with :data:`COMPILE_ERROR_PREFIX`), which travels to the
API-server process with the request's last output; there :mod:`._patches` turns it into an error
the client sees (HTTP 400, or an error event in a stream).

This module does not import vLLM (the xgrammar delegate is imported lazily).
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time

import torch

from ...grammar.structural_tag import is_format_form
from ...matcher import GrammarMatcher
from .._constraints import V1_NAMES, Constraint, constraint_of
from . import metrics
from .grammar import DotvllmGrammar

__all__ = ["COMPILE_ERROR_PREFIX", "DotvllmBackend", "compile_error_message"]

COMPILE_ERROR_PREFIX = "dotvllm compile error: "
"""Start of the ``stop_reason`` of a request whose constraint failed to compile in the engine core."""


def compile_error_message(stop_reason) -> str | None:
    """The error text of a request ended by a failed compile, or ``None``."""
    if isinstance(stop_reason, str) and stop_reason.startswith(COMPILE_ERROR_PREFIX):
        return stop_reason[len(COMPILE_ERROR_PREFIX):]
    return None

logger = logging.getLogger("vllm.dotvllm_plugin.v1")

# vllm.v1.structured_output.backend_types.StructuredOutputOptions member names -> our kinds
_KIND_OF_OPTION = {"JSON": "json_schema", "JSON_OBJECT": "json_object", "REGEX": "regex", "GRAMMAR": "grammar",
                   "CHOICE": "choice", "STRUCTURAL_TAG": "structural_tag"}


class _Spec:
    """Duck-typed StructuredOutputsParams for a bare (request_type, spec) key."""

    def __init__(self, kind: str, spec: str):
        self.json = self.regex = self.choice = self.grammar = self.json_object = None
        self.structural_tag = self.whitespace_pattern = None
        self.disable_any_whitespace = self.disable_additional_properties = False
        if kind == "json_schema":
            self.json = spec
        elif kind == "json_object":
            self.json_object = True
        elif kind == "regex":
            self.regex = spec
        elif kind == "choice":
            self.choice = json.loads(spec) if isinstance(spec, str) else spec
        elif kind == "grammar":
            self.grammar = spec
        elif kind == "structural_tag":
            self.structural_tag = spec


class _LazyDescription:
    """A constraint's :meth:`~.._constraints.Constraint.describe`, computed when first printed
    (grammars are built per request; their description is read only by log messages)."""

    __slots__ = ("_constraint", "_text")

    def __init__(self, constraint: Constraint):
        self._constraint = constraint
        self._text = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = self._constraint.describe()
        return self._text

    def __repr__(self) -> str:
        return repr(str(self))


class DotvllmBackend:
    """Our V1 structured-output backend (a virtual subclass of vLLM's ``StructuredOutputBackend``).

    Parameters
    ----------
    vllm_config : vllm.config.VllmConfig
    tokenizer : the engine's tokenizer (a Hugging Face tokenizer or vLLM's wrapper of one)
    vocab_size : int
        The model's logits width (often padded past the tokenizer's vocabulary); bitmask rows
        have ``ceil(vocab_size / 32)`` words, and ids past the tokenizer are never allowed.
    """

    name = "dotvllm"

    def __init__(self, vllm_config, *, tokenizer, vocab_size: int):
        self.vllm_config = vllm_config
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size)
        self._lock = threading.Lock()
        self._vocabulary = None
        self._xgrammar = None
        logger.info("dotvllm: V1 structured-output backend ready (vocab_size %d)", self.vocab_size)

    # -- vLLM's interface -------------------------------------------------------------------------

    def compile_grammar(self, request_type, grammar_spec: str, stop_token_ids=None):
        """Compile from V1's key alone (no per-request options)."""
        option = getattr(request_type, "name", str(request_type))
        if option == "STRUCTURAL_TAG" and is_format_form(grammar_spec):
            return self._structural_tag(request_type, grammar_spec, stop_token_ids)
        kind = _KIND_OF_OPTION.get(option)
        if kind is None:
            logger.error("dotvllm: unknown structured-output request type %r; the request ends", option)
            return self._dead(f"{option} {grammar_spec!r}"[:200])
        return self._compile(_Spec(kind, grammar_spec), request_id="?")

    def compile_request(self, request):
        """Compile a ``vllm.v1.request.Request``'s constraint with all its options; never raises.

        On failure the request gets a dead grammar (EOS only: it ends at its first step) and its
        ``stop_reason`` says why (see :func:`compile_error_message`)."""
        sampling_params = request.sampling_params
        params = sampling_params.structured_outputs
        if is_format_form(params.structural_tag):
            option, spec = request.structured_output_request.structured_output_key
            grammar = self._structural_tag(option, spec, getattr(sampling_params, "all_stop_token_ids", None))
        else:
            grammar = self._compile(params, request_id=request.request_id)
        if isinstance(grammar, DotvllmGrammar) and grammar.dead:
            # vLLM ends the request with stop_reason untouched when the sampled token is its EOS id.
            eos = getattr(sampling_params, "eos_token_id", None)
            if eos is not None:
                grammar.eos_token_ids = (int(eos),)
            try:
                request.stop_reason = COMPILE_ERROR_PREFIX + (grammar.error or grammar.description)
            except Exception:  # noqa: BLE001 - a Request without the attribute: the log line remains
                pass
        return grammar

    def cached_grammar(self, request) -> DotvllmGrammar | None:
        """The request's grammar if its constraint is in the compile cache (memory), else ``None``.

        Cheap (tens of microseconds, no I/O, no thread hop) and never raises: :mod:`._patches` calls
        it in ``grammar_init`` so that a repeated constraint is ready when the request reaches the
        scheduler, instead of waiting for vLLM's compile thread (whose Python work competes for the
        GIL with the engine loop: milliseconds per request on a busy engine). A miss, a known error
        or anything unexpected returns ``None`` and the request takes the compile thread's path.
        """
        try:
            params = request.sampling_params.structured_outputs
            if is_format_form(params.structural_tag) or self._vocabulary is None:
                return None
            constraint = constraint_of(params, names=V1_NAMES)
            from .._runtime import manager_for

            vocab = self._vocabulary
            result = manager_for(vocab).lookup(constraint.kind, constraint.spec, options=constraint.options)
            if result is None:
                return None
            grammar = DotvllmGrammar(GrammarMatcher(result.grammar), description=_LazyDescription(constraint),
                                     eos_token_ids=vocab.eos_token_ids)
        except Exception:  # noqa: BLE001 - the compile thread's path reports it
            return None
        metrics.record_cache_hit(constraint.kind)  # (the snapshot is written later, on a thread)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("dotvllm: request %s: %s compiled by dotvllm (cache hit)", request.request_id,
                         constraint.kind)
        return grammar

    def allocate_token_bitmask(self, max_num_seqs: int) -> torch.Tensor:
        return torch.full((max_num_seqs, (self.vocab_size + 31) // 32), -1, dtype=torch.int32)

    def destroy(self) -> None:
        if self._xgrammar is not None:
            self._xgrammar.destroy()

    # -- ours -------------------------------------------------------------------------------------

    def vocabulary(self):
        with self._lock:
            if self._vocabulary is None:
                from .._runtime import vocabulary_for

                self._vocabulary = vocabulary_for(self.tokenizer)
            return self._vocabulary

    def _dead(self, description: str, error: str = "") -> DotvllmGrammar:
        try:
            eos = self.vocabulary().eos_token_ids
        except Exception:  # noqa: BLE001 - the tokenizer itself is unreadable
            eos = (getattr(self.tokenizer, "eos_token_id", None) or 0,)
        g = DotvllmGrammar(None, description=description, eos_token_ids=eos)
        g.error = error
        return g

    def _compile(self, params, *, request_id: str) -> DotvllmGrammar:
        constraint: Constraint | None = None
        t0 = time.perf_counter()
        try:
            constraint = constraint_of(params, names=V1_NAMES)
            from .._runtime import compile_kwargs, manager_for

            vocab = self.vocabulary()
            manager = manager_for(vocab)
            result = manager.compile(constraint.kind, constraint.spec, **compile_kwargs(manager, constraint))
            matcher = GrammarMatcher(result.grammar)
        except Exception as e:  # noqa: BLE001 - never raise in the engine core
            what = constraint.describe() if constraint is not None else "the constraint"
            where = f"{constraint.parameter}: " if constraint is not None and constraint.parameter else ""
            error = str(e) if str(e).startswith(where) else f"{where}{e}"
            logger.warning("dotvllm: request %s: could not compile %s (%s: %s); the request ends with this error",
                           request_id, what, type(e).__name__, e)
            return self._dead(what, error)
        logger.info("dotvllm: request %s: %s compiled by dotvllm in %.1f ms", request_id, constraint.kind,
                    (time.perf_counter() - t0) * 1e3)
        return DotvllmGrammar(matcher, description=constraint.describe(), eos_token_ids=vocab.eos_token_ids)

    def _structural_tag(self, request_type, spec, stop_token_ids):
        """xgrammar's ``format`` form, delegated to vLLM's xgrammar backend (explicitly; see
        docs/architecture.md); the ``structures`` form is ours."""
        try:
            with self._lock:
                if self._xgrammar is None:
                    from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend

                    self._xgrammar = XgrammarBackend(self.vllm_config, tokenizer=self.tokenizer,
                                                     vocab_size=self.vocab_size)
            compile_grammar = self._xgrammar.compile_grammar
            if "stop_token_ids" in inspect.signature(compile_grammar).parameters:
                grammar = compile_grammar(request_type, spec, stop_token_ids=stop_token_ids)
            else:  # vLLM 0.11
                grammar = compile_grammar(request_type, spec)
        except Exception as e:  # noqa: BLE001
            logger.warning("dotvllm: structural_tag could not be compiled by xgrammar (%s: %s); the request ends "
                           "with this error", type(e).__name__, e)
            return self._dead("structural_tag", f"structured_outputs.structural_tag: xgrammar could not compile it "
                                                f"({type(e).__name__}: {e})")
        logger.info("dotvllm: structural_tag delegated to vLLM's xgrammar backend")
        return grammar
