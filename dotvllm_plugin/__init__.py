"""dotvllm-plugin: structured generation for vLLM's V0 engine.

The core (vocabulary, regex/JSON compilers, matcher) works without vLLM; only
``dotvllm_plugin.integrations`` (its subpackages, at ``register()`` time) imports vllm.
"""

from __future__ import annotations

__all__ = [
    "CompilationError",
    "CompilationTimeoutError",
    "CompiledGrammar",
    "DotvllmError",
    "GrammarCompiler",
    "GrammarError",
    "GrammarMatcher",
    "JSONSchemaError",
    "RegexSyntaxError",
    "SerializationError",
    "UnsupportedFeatureError",
    "Vocabulary",
    "VocabularyCoverageError",
    "__version__",
]

__version__ = "0.1.0"

from .errors import (
    CompilationError,
    CompilationTimeoutError,
    DotvllmError,
    GrammarError,
    JSONSchemaError,
    RegexSyntaxError,
    SerializationError,
    UnsupportedFeatureError,
    VocabularyCoverageError,
)


def __getattr__(name: str):
    # The compiler pulls in numpy/interegular; keep `import dotvllm_plugin` (done by vLLM's plugin
    # loader in every process) cheap.
    if name in ("GrammarCompiler", "CompiledGrammar"):
        from . import compiler

        return getattr(compiler, name)
    if name == "GrammarMatcher":
        from .matcher import GrammarMatcher

        return GrammarMatcher
    if name == "Vocabulary":
        from .vocabulary import Vocabulary

        return Vocabulary
    raise AttributeError(f"module 'dotvllm_plugin' has no attribute {name!r}")
