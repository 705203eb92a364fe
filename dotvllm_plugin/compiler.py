"""GrammarCompiler (stateful, cached) → a compiled constraint (immutable, serialisable).

Every constraint kind is a front end that produces the grammar IR (:mod:`.grammar.ir`), registered
once in :data:`KINDS`; :meth:`GrammarCompiler.compile_ir` compiles any IR. A grammar whose language
is a single terminal (a regex, a choice, today's JSON Schema translation) becomes a byte DFA
(:mod:`.regex`) and a token index (:mod:`.index`): :class:`CompiledGrammar` holds the DFA with its
bytes folded into equivalence classes (committing a token is a walk over a small table) and the
deduplicated packed mask rows. Any other grammar becomes a
:class:`~dotvllm_plugin.pushdown.PushdownGrammar` (contextual lexer automata + LALR(1) tables).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable


from .errors import CompilationTooLargeError, DotvllmError, GrammarError, SerializationError
from .grammar.ir import Grammar
from .index import build_index
from .regex import ByteDFA, check_regex, regex_to_dfa
from .serialization import read_blob, write_blob
from .vocabulary import Vocabulary

__all__ = [
    "KINDS",
    "CompiledGrammar",
    "GrammarCompiler",
    "Kind",
    "check_grammar",
    "check_json_schema",
    "check_structural_tag",
    "check_regex",
    "choice_regex",
    "escape_literal",
    "load_compiled",
    "normalize_options",
    "OPTION_NAMES",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: maxLength/maxItems bounds tried in turn when a schema's exact automata are over budget (sound:
#: lower bounds only narrow what is generated): long text fields (``maxLength: 65535``) keep 256
#: characters (compiled as rules: one regex with several such strings is a large automaton), and a
#: schema over budget even then gets 64 (as one regex where it can be).
REPEAT_CAPS = (256, 64)
#: The last resort of :data:`REPEAT_CAPS`.
REPEAT_CAP = REPEAT_CAPS[-1]
_MAGIC = b"DOTVLLM\x00"
_REGEX_META = set("\\.^$*+?{}[]|()")


def escape_literal(text: str) -> str:
    """Escape ``text`` so the regex matches exactly it (in the dialect interegular parses)."""
    out = []
    for ch in text:
        if ch in _REGEX_META:
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def choice_regex(choices) -> str:
    if isinstance(choices, (str, bytes)) or not hasattr(choices, "__iter__"):
        raise GrammarError(f"guided_choice must be a list of strings, got {type(choices).__name__}")
    choices = list(choices)
    if not choices:
        raise GrammarError("guided_choice must list at least one choice, got an empty list")
    for i, c in enumerate(choices):
        if not isinstance(c, str):
            raise GrammarError(f"guided_choice[{i}] must be a string, got {type(c).__name__}: {c!r}")
    return "|".join(f"(?:{escape_literal(c)})" for c in dict.fromkeys(choices))


def check_json_schema(schema, *, whitespace_pattern: str | None = None,
                      allow_undeclared_properties: bool = True) -> None:
    """Cheap check that ``schema`` can be compiled (exactly, or with the :data:`REPEAT_CAPS`
    fallback of :meth:`GrammarCompiler.compile_json_schema`): the translation (every keyword
    checked), without rules or automata; raises what compiling would, but the rare failures of
    writing the rules, which the compile reports."""
    from .grammar.json_schema import json_schema_to_ir

    options = dict(whitespace_pattern=whitespace_pattern, allow_undeclared_properties=allow_undeclared_properties,
                   translate_only=True)
    try:
        json_schema_to_ir(schema, **options)
    except CompilationTooLargeError:
        json_schema_to_ir(schema, repeat_cap=REPEAT_CAP, **options)  # (the caps differ only in size)


def check_structural_tag(spec, *, whitespace_pattern: str | None = None,
                         allow_undeclared_properties: bool = True) -> None:
    """Cheap check of a structural tag (fields, triggers, every schema translated; no automata)."""
    from .grammar.structural_tag import at_schema, parse_structural_tag

    structures, _ = parse_structural_tag(spec)
    for i, (_, schema, _) in enumerate(structures):
        try:
            check_json_schema(schema, whitespace_pattern=whitespace_pattern,
                              allow_undeclared_properties=allow_undeclared_properties)
        except GrammarError as e:
            raise at_schema(e, i) from None


def check_grammar(text, *, start: str = "start") -> None:
    """Cheap check of a Lark grammar (loader, terminal regexes, LR tables; no automata). The
    refusals that need the lexer automata come from the compile instead: colliding terminals,
    lexers over the state budget, a grammar whose greedy lexing accepts no text."""
    from .grammar.lark import lark_to_ir
    from .pushdown import check_pushdown

    grammar = lark_to_ir(text, start=start)
    if grammar.single_terminal is None:
        check_pushdown(grammar)


class CompiledGrammar:
    """A compiled constraint for one vocabulary. Immutable; share it between matchers.

    Do not construct directly: use :class:`GrammarCompiler` or :meth:`from_bytes`.
    """

    __slots__ = (
        "kind",
        "source",
        "vocabulary",
        "byte_class",
        "class_transitions",
        "accepting",
        "initial",
        "rows",
        "row_of_state",
        "_walk_cache",
    )

    def __init__(self, *, kind, source, vocabulary, byte_class, class_transitions, accepting, initial, rows, row_of_state):
        self.kind = kind
        self.source = source
        self.vocabulary = vocabulary
        self.byte_class = byte_class
        self.class_transitions = class_transitions
        self.accepting = accepting
        self.initial = int(initial)
        self.rows = rows
        self.row_of_state = row_of_state
        self._walk_cache = None

    @classmethod
    def _from_dfa(cls, kind: str, source: str, dfa: ByteDFA, vocab: Vocabulary) -> CompiledGrammar:
        index = build_index(dfa, vocab)
        return cls(
            kind=kind,
            source=source,
            vocabulary=vocab,
            byte_class=index.byte_class,
            class_transitions=index.class_transitions,
            accepting=dfa.accepting,
            initial=dfa.initial,
            rows=index.rows,
            row_of_state=index.row_of_state,
        )

    # -- facts ------------------------------------------------------------------------------------

    @property
    def n_states(self) -> int:
        return int(self.class_transitions.shape[0])

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the index and automaton arrays."""
        return int(
            self.rows.nbytes + self.row_of_state.nbytes + self.class_transitions.nbytes + self.accepting.nbytes + 256
        )

    def __repr__(self) -> str:
        return (
            f"CompiledGrammar(kind={self.kind!r}, states={self.n_states}, rows={len(self.rows)}, "
            f"memory={self.memory_bytes / 1e6:.2f} MB)"
        )

    def _walker(self):
        """(flat class-transition list, n_classes, byte→class translate table), built once."""
        w = self._walk_cache
        if w is None:
            n_cls = int(self.class_transitions.shape[1])
            w = self._walk_cache = (self.class_transitions.ravel().tolist(), n_cls, bytes(self.byte_class.tolist()))
        return w

    # -- serialisation ----------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Versioned binary form (no pickle); load with :meth:`from_bytes` and the same vocabulary."""
        arrays = {
            "byte_class": self.byte_class,
            "class_transitions": self.class_transitions,
            "accepting": self.accepting,
            "rows": self.rows,
            "row_of_state": self.row_of_state,
        }
        header = {"format_version": FORMAT_VERSION, "kind": self.kind, "source": self.source, "initial": self.initial}
        return write_blob(_MAGIC, header, arrays, self.vocabulary)

    engine = "dfa"

    @classmethod
    def from_bytes(cls, data: bytes, vocabulary: Vocabulary) -> CompiledGrammar:
        """Load what :meth:`to_bytes` wrote (regular constraints; see :func:`load_compiled` for any)."""
        header, arrays = read_blob(data, _MAGIC, FORMAT_VERSION, vocabulary)
        try:
            return cls(kind=header["kind"], source=header["source"], vocabulary=vocabulary,
                       initial=header["initial"], **arrays)
        except (KeyError, TypeError, ValueError) as e:
            raise SerializationError(f"corrupt compiled grammar: {e}") from e

    def __reduce__(self):
        return (CompiledGrammar.from_bytes, (self.to_bytes(), self.vocabulary))


def _pin_shared_terminals() -> None:
    """The automata of the JSON translator's fixed terminals (free string, number, integer, ...;
    5–9 ms the first time in a process, then lookups), kept for the process's life, so that no
    schema builds them."""
    from .grammar.json_schema import shared_terminals
    from .pushdown import pin_terminal_automata
    from .regex.glushkov import pinned_tries

    with pinned_tries():  # (and the byte tries of their classes: the JSON string's characters)
        pin_terminal_automata(shared_terminals())


def _pin_shared_walks(vocabulary: Vocabulary) -> None:
    """Once per vocabulary and process: the vocabulary walk of the loop inside a JSON string (a
    gadget of nearly every one-regex schema, and the one whose walk is long: most tokens stay
    inside a string), kept for the process's life. (A number's digit loops have exits that depend
    on what follows them, and short walks.)"""
    if vocabulary._cache.get("shared_walks_pinned"):
        return
    from .grammar.json_schema import json_schema_to_regex
    from .index import pin_gadget_walks

    try:
        pin_gadget_walks(vocabulary, [regex_to_dfa(json_schema_to_regex({"type": "string"}))])
    except DotvllmError:  # a vocabulary that cannot spell a JSON string: nothing to share
        pass
    vocabulary._cache["shared_walks_pinned"] = True


class GrammarCompiler:
    """Compiles constraints for one vocabulary, caching results (LRU, thread-safe).

    Parameters
    ----------
    vocabulary : Vocabulary
    cache_size : int
        Number of compiled grammars kept; 0 disables the cache.
    """

    def __init__(self, vocabulary: Vocabulary, *, cache_size: int = 128):
        if not isinstance(vocabulary, Vocabulary):
            raise TypeError(f"GrammarCompiler needs a Vocabulary, got {type(vocabulary).__name__}")
        self.vocabulary = vocabulary
        self.cache_size = cache_size
        _pin_shared_terminals()
        _pin_shared_walks(vocabulary)
        self._cache: OrderedDict[tuple, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    def _cached(self, key: tuple, build) -> CompiledGrammar:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        compiled = build()
        if self.cache_size:
            with self._lock:
                self._cache[key] = compiled
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return compiled

    def compile_ir(self, grammar: Grammar, *, check_syntax: bool = True):
        """Compile a grammar IR: a :class:`CompiledGrammar` when its language is one terminal's,
        else a :class:`~dotvllm_plugin.pushdown.PushdownGrammar`."""
        single = grammar.single_terminal
        if single is not None:
            pattern = single.regex
            return self._cached(
                ("regex", pattern),
                lambda: CompiledGrammar._from_dfa(
                    grammar.kind, grammar.source or pattern, regex_to_dfa(pattern, check_syntax=check_syntax),
                    self.vocabulary,
                ),
            )
        return self._cached(("ir", grammar), lambda: self._compile_context_free(grammar))

    def _compile_context_free(self, grammar: Grammar):
        from .pushdown import REGULAR_MAX_STATES, REGULAR_MAX_STATES_GENERATED, compile_pushdown, nests

        pushdown = compile_pushdown(grammar, self.vocabulary)
        # A grammar without nesting is regular: compiled to its exact DFA, with precomputed rows.
        bound = REGULAR_MAX_STATES if grammar.lexing == "lark" else REGULAR_MAX_STATES_GENERATED
        dfa = None if nests(grammar) else pushdown.as_dfa(max_states=bound)
        if dfa is None:
            return pushdown
        try:
            return CompiledGrammar._from_dfa(grammar.kind, grammar.source, dfa, self.vocabulary)
        except CompilationTooLargeError:
            return pushdown

    def compile_regex(self, pattern: str, *, kind: str = "regex", source: Any = None) -> CompiledGrammar:
        """Compile a regex (full-match semantics) into a :class:`CompiledGrammar`."""
        return self._compile(pattern, kind, source, check_syntax=True)

    def _compile(self, pattern: str, kind: str, source: Any, *, check_syntax: bool) -> CompiledGrammar:
        if not isinstance(pattern, str):
            raise TypeError(f"a regex must be a str, got {type(pattern).__name__}")
        ir = Grammar.from_regex(pattern, kind=kind, source=pattern if source is None else source)
        return self.compile_ir(ir, check_syntax=check_syntax)

    def compile_grammar(self, text: str, *, start: str = "start"):
        """A Lark grammar: lark's LALR(1) language where the grammar is LALR(1), its Earley language
        otherwise (contextual lexer); see :mod:`dotvllm_plugin.pushdown` for what is refused."""
        from .grammar.lark import lark_to_ir

        return self.compile_ir(lark_to_ir(text, start=start))

    def compile_choice(self, choices) -> CompiledGrammar:
        """Exactly one of ``choices`` (strings)."""
        return self.compile_regex(choice_regex(choices), kind="choice", source=json.dumps(list(choices)))

    def compile_json_schema(self, schema, *, whitespace_pattern: str | None = None,
                            allow_undeclared_properties: bool = True):
        """A JSON value valid under ``schema`` (a dict, bool, or JSON string): the grammar IR of
        :func:`~dotvllm_plugin.grammar.json_schema.json_schema_to_ir` compiled (one DFA where a
        regex says the schema exactly, else the pushdown engine).

        When the exact automata are over budget, a one-regex schema is compiled as rules instead
        (many small automata), and then both forms once more with long ``maxLength``/``maxItems``
        bounds lowered to each of :data:`REPEAT_CAPS` in turn (never below the minimum): every
        output still validates, only long strings and arrays are not generated. A warning says
        so; if all are over budget, the first error is raised.
        """
        from .grammar.json_schema import json_schema_to_ir
        from .grammar.json_schema.any_json import any_json_grammar

        try:
            parsed = json.loads(schema) if isinstance(schema, str) else schema
        except ValueError:
            parsed = None  # json_schema_to_ir reports it
        if parsed is True or parsed == {}:  # any value at all
            return self.compile_ir(any_json_grammar(whitespace_pattern=whitespace_pattern, root="value"))
        options = dict(whitespace_pattern=whitespace_pattern, allow_undeclared_properties=allow_undeclared_properties)
        # Exact first; a one-regex schema whose automaton is over budget is tried as rules (small
        # terminals); then with long bounds lowered: as rules, and at the last cap both forms.
        first_error = None
        for cap in (None, *REPEAT_CAPS):
            for mode in (("auto", "grammar") if cap is None or cap == REPEAT_CAP else ("grammar",)):
                ir = None
                try:
                    ir = json_schema_to_ir(schema, repeat_cap=cap, mode=mode, **options)
                    compiled = self.compile_ir(ir, check_syntax=False)
                except CompilationTooLargeError as e:
                    first_error = first_error or e
                    if mode == "auto" and ir is not None and ir.single_terminal is None:
                        break  # already rules: the grammar-mode attempt would be the same
                    continue
                if cap is not None:
                    logger.warning(
                        "JSON schema over the size budget (%s); compiled with maxLength/maxItems lowered to %d",
                        first_error, cap,
                    )
                return compiled
        raise first_error

    def compile_structural_tag(self, spec, *, whitespace_pattern: str | None = None,
                               allow_undeclared_properties: bool = True):
        """Free text in which each trigger starts one of the structures (begin, a JSON value valid
        under its schema, end): see :mod:`dotvllm_plugin.grammar.structural_tag`. Long
        ``maxLength``/``maxItems`` are lowered to each of :data:`REPEAT_CAPS` in turn when the exact
        automata are over budget, as for JSON schemas (a warning says so)."""
        from .grammar.structural_tag import structural_tag_to_ir

        options = dict(whitespace_pattern=whitespace_pattern, allow_undeclared_properties=allow_undeclared_properties)
        try:
            return self.compile_ir(structural_tag_to_ir(spec, **options), check_syntax=False)
        except CompilationTooLargeError as e:
            first_error = e
        for cap in REPEAT_CAPS:
            try:
                compiled = self.compile_ir(structural_tag_to_ir(spec, repeat_cap=cap, **options), check_syntax=False)
            except CompilationTooLargeError:
                if cap == REPEAT_CAP:
                    raise
                continue
            logger.warning("structural tag over the size budget (%s); compiled with maxLength/maxItems lowered to %d",
                           first_error, cap)
            return compiled

    def compile_json_object(self, *, whitespace_pattern: str | None = None):
        """Any JSON object, nested to any depth (up to the engine's stack bound)."""
        from .grammar.json_schema.any_json import any_json_grammar

        return self.compile_ir(any_json_grammar(whitespace_pattern=whitespace_pattern, root="object"))


def load_compiled(data: bytes, vocabulary: Vocabulary):
    """Load any compiled constraint written by ``to_bytes`` (either engine)."""
    from .pushdown import MAGIC as PUSHDOWN_MAGIC
    from .pushdown import PushdownGrammar

    if bytes(data[: len(PUSHDOWN_MAGIC)]) == PUSHDOWN_MAGIC:
        return PushdownGrammar.from_bytes(data, vocabulary)
    return CompiledGrammar.from_bytes(data, vocabulary)


@dataclass(frozen=True)
class Kind:
    """A constraint kind: its cheap request-time check and its compile (one registry, used by the
    compilation manager and every integration)."""

    name: str
    check: Callable[[Any, dict], None]
    compile: Callable[[GrammarCompiler, Any, dict], Any]


#: The request options a constraint kind may read (vLLM's names).
OPTION_NAMES = ("whitespace_pattern", "disable_any_whitespace", "disable_additional_properties")


def normalize_options(options: dict) -> dict:
    """``options`` without unset values (``None``, ``False``, ``""``); refuses unknown names."""
    unknown = set(options) - set(OPTION_NAMES)
    if unknown:
        raise ValueError(f"unknown constraint options {sorted(unknown)}; expected some of {list(OPTION_NAMES)}")
    return {k: v for k, v in sorted(options.items()) if v not in (None, False, "")}


def _ws(options: dict):
    """The whitespace between JSON tokens: none when ``disable_any_whitespace`` (vLLM's name for
    compact output, which is also our default), else ``whitespace_pattern``."""
    if options.get("disable_any_whitespace"):
        return None
    return options.get("whitespace_pattern")


def _json_options(options: dict) -> dict:
    return dict(
        whitespace_pattern=_ws(options),
        allow_undeclared_properties=not options.get("disable_additional_properties", False),
    )


def _check_json_object(spec, options) -> None:
    from .grammar.json_schema import check_whitespace

    check_whitespace(_ws(options))


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("regex", lambda spec, o: check_regex(spec), lambda c, spec, o: c.compile_regex(spec)),
        Kind("choice", lambda spec, o: choice_regex(spec), lambda c, spec, o: c.compile_choice(spec)),
        Kind(
            "json_schema",
            lambda spec, o: check_json_schema(spec, **_json_options(o)),
            lambda c, spec, o: c.compile_json_schema(spec, **_json_options(o)),
        ),
        Kind("json_object", _check_json_object, lambda c, spec, o: c.compile_json_object(whitespace_pattern=_ws(o))),
        Kind("grammar", lambda spec, o: check_grammar(spec), lambda c, spec, o: c.compile_grammar(spec)),
        Kind(
            "structural_tag",
            lambda spec, o: check_structural_tag(spec, **_json_options(o)),
            lambda c, spec, o: c.compile_structural_tag(spec, **_json_options(o)),
        ),
    )
}
"""Every constraint kind, by name."""
