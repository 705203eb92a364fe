"""The dotvllm-plugin exception tree.

::

    DotvllmError
    ├── GrammarError (ValueError)            a bad user spec: the server answers HTTP 400
    │   ├── RegexSyntaxError                 the regex does not parse
    │   ├── UnsupportedFeatureError          valid syntax we refuse to approximate
    │   ├── JSONSchemaError                  the schema is not a valid JSON Schema
    │   └── VocabularyCoverageError          the tokenizer cannot express the constraint
    ├── CompilationError (RuntimeError)      compiling a valid spec failed
    │   ├── CompilationTimeoutError (TimeoutError)
    │   └── CompilationTooLargeError         a size budget was exceeded
    └── SerializationError (ValueError)      a compiled blob is corrupt or for another vocabulary

Every message says what was expected, what arrived, and where (regex position or JSON pointer).
"""

from __future__ import annotations

__all__ = [
    "CompilationError",
    "CompilationTimeoutError",
    "CompilationTooLargeError",
    "DotvllmError",
    "GrammarError",
    "JSONSchemaError",
    "RegexSyntaxError",
    "SerializationError",
    "UnsupportedFeatureError",
    "VocabularyCoverageError",
]


class DotvllmError(Exception):
    """Root of every error raised by dotvllm-plugin."""


class GrammarError(DotvllmError, ValueError):
    """A user-supplied constraint is invalid or unsupported (HTTP 400)."""


class RegexSyntaxError(GrammarError):
    """The regular expression does not parse.

    Attributes
    ----------
    pattern : str
    position : int or None
        Character offset of the problem in ``pattern`` when known.
    """

    def __init__(self, message: str, *, pattern: str | None = None, position: int | None = None):
        self.pattern = pattern
        self.position = position
        super().__init__(message)


class UnsupportedFeatureError(GrammarError):
    """The spec is valid but uses a feature we refuse rather than approximate.

    Attributes
    ----------
    feature : str
        The construct or keyword, e.g. ``"lookahead"`` or ``"uniqueItems"``.
    where : str or None
        A regex position (``"position 4"``) or a JSON pointer (``"/properties/a"``).
    """

    def __init__(self, message: str, *, feature: str | None = None, where: str | None = None):
        self.feature = feature
        self.where = where
        super().__init__(message)


class JSONSchemaError(GrammarError):
    """The JSON schema is malformed (not a schema, wrong keyword types, dangling $ref)."""


class VocabularyCoverageError(GrammarError):
    """No sequence of the tokenizer's tokens can complete the constraint."""


class CompilationError(DotvllmError, RuntimeError):
    """Compiling a valid constraint failed."""


class CompilationTimeoutError(CompilationError, TimeoutError):
    """Compilation ran past its time budget and was stopped."""


class CompilationTooLargeError(CompilationError):
    """The compiled automaton or index would exceed its size budget."""


class SerializationError(DotvllmError, ValueError):
    """A serialized CompiledGrammar is corrupt, of another format version, or for another vocabulary."""
