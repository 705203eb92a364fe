"""Engine adapters for the benchmarks: one small class per engine, the same walk for all.

Each adapter is built once per worker process (see ``_common.EngineWorker``) from the same Hugging
Face tokenizer, single-threaded, and warmed up on a tiny regex and schema so that one-off lazy
initialisation is not billed to the first case.

The walk (:func:`run_case`): compile (timed), then for each instance a fresh
matcher; per token: zero the bitmask row (untimed), fill it (timed: *mask*), check the token's bit
(untimed), commit it (timed: *commit*). A token whose bit is clear is a rejection; a commit that
fails although the bit was set is counted as a mask/commit mismatch. At the end the engine's own
"complete" predicate decides acceptance. The peak-RSS delta of a compile comes from a separate,
untimed compile on a trimmed heap (:func:`compile_rss_delta`), which the benchmarks ask for in a
memory pass after every case has been timed: a trimmed heap makes the compiles and masks that
follow it fault in fresh pages, which no timed call should pay.

JSON language. Every engine is asked for the language closest to what our plugin generates by
default (``DOTVLLM_BENCH_JSON_LANGUAGE=closest``, the default): compact output (no whitespace
between JSON tokens, separators ``,`` and ``:``) and undeclared properties allowed where
``additionalProperties`` is absent. ``DOTVLLM_BENCH_JSON_LANGUAGE=default`` asks the anchors for
their own defaults instead. Each adapter's ``json_language()`` states what it was asked for.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import pickle
import time
from importlib import metadata

import numpy as np

from benchmarks import _common

__all__ = ["ENGINES", "compile_rss_delta", "make_engine", "ours_token_bytes", "run_case"]

ENGINES = ("ours", "xgrammar", "llguidance", "outlines_core")

_WARMUP_REGEX = r"[a-z]{1,8}@[a-z]{1,8}\.com"
JSON_LANGUAGES = ("closest", "default")


def json_language_choice() -> str:
    """Which JSON language the anchors are asked for (see the module docstring)."""
    choice = os.environ.get("DOTVLLM_BENCH_JSON_LANGUAGE", "closest") or "closest"
    if choice not in JSON_LANGUAGES:
        raise ValueError(f"DOTVLLM_BENCH_JSON_LANGUAGE={choice!r}; expected one of {JSON_LANGUAGES}")
    return choice


_WARMUP_SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
                  "required": ["a"]}


class Engine:
    name = "?"
    package = "?"
    index_bytes_kind = "none"  # "engine" (reported by the engine), "serialized", or "none"

    def __init__(self, tokenizer_name: str):
        self.tokenizer_name = tokenizer_name
        self.tok = _common.load_tokenizer(tokenizer_name)
        self.vocab_size = _common.VOCAB_SIZE[tokenizer_name]
        self.eos = self.tok.eos_token_id
        self.words = (self.vocab_size + 31) // 32

    def describe(self) -> dict:
        try:
            version = metadata.version(self.package)
        except metadata.PackageNotFoundError:
            version = "unknown"
        return {"engine": self.name, "package": self.package, "version": version,
                "vocab_size": self.vocab_size, "eos": self.eos, "index_bytes_kind": self.index_bytes_kind,
                "warm_up": getattr(self, "warm_up_s", None),
                "settings": self.settings(), "json_language": self.json_language()}

    def settings(self) -> dict:
        return {}

    def json_language(self) -> dict:
        """What JSON language the engine's compile call asks for: ``whitespace``, ``undeclared
        properties``, ``property order``, ``call`` (the exact arguments) and ``differs from ours``."""
        return {}

    # compile -----------------------------------------------------------------------------
    def make_cold(self) -> None:
        """Forget what earlier compiles left in the engine's process-wide memo tables, so that the
        next compile is cold; called before the compile's timer starts (emptying a memo is the
        benchmark's doing, not a compile's). Engines run without caches need nothing."""

    def compile(self, kind: str, spec):
        raise NotImplementedError

    def classify_error(self, e: BaseException) -> str:
        return "compile_error"

    def index_bytes(self, handle) -> int | None:
        return None

    # per request ---------------------------------------------------------------------------
    def ops(self, handle, bitmask: np.ndarray):
        """``(fill(), accept(token) -> bool|None, complete() -> bool)`` for a fresh matcher."""
        raise NotImplementedError

    def warm_up(self, kinds=("regex", "json_schema")) -> dict:
        """Compile and walk one tiny case per kind; returns the warm-up compile times (s)."""
        bm = np.zeros((1, self.words), dtype=np.int32)
        times = {}
        for kind, spec, text in (("regex", _WARMUP_REGEX, "abc@de.com"),
                                 ("json_schema", _WARMUP_SCHEMA, '{"a":"x","b":1}')):
            if kind not in kinds:
                continue
            t0 = time.perf_counter()
            try:
                h = self.compile(kind, spec)
            except Exception as e:
                times[kind] = f"{type(e).__name__}: {e}"[:300]
                continue
            times[kind] = time.perf_counter() - t0
            fill, accept, complete = self.ops(h, bm)
            try:
                for t in _common.encode(self.tokenizer_name, text):
                    fill()
                    if not (int(bm[0, t >> 5]) >> (t & 31)) & 1 or accept(t) is False:
                        break
                complete()
            except Exception as e:  # outlines-core raises on a rejected token
                times[kind + "_walk"] = f"{type(e).__name__}: {e}"[:300]
        self.warm_up_s = times
        return times


class Ours(Engine):
    name = "ours"
    package = "dotvllm-plugin"
    index_bytes_kind = "engine"

    def __init__(self, tokenizer_name: str):
        super().__init__(tokenizer_name)
        from dotvllm_plugin import GrammarCompiler, GrammarMatcher, Vocabulary

        self._matcher_cls = GrammarMatcher
        self.vocab = Vocabulary.from_hf_tokenizer(self.tok)
        # No result cache: every case is a cold compile (vocabulary-level tables stay warm).
        self.compiler = GrammarCompiler(self.vocab, cache_size=0)
        # The vocabulary's tables, built here (untimed) as the other engines' tokenizer tables are:
        # the byte trie (the compiler above walks it) and the tokens' character masks of the
        # matcher's character runs (else the first schema with a string would pay ~0.1 s for them).
        try:
            from dotvllm_plugin.runs import token_chars
        except ImportError:  # an older core (--core-ref)
            pass
        else:
            token_chars(self.vocab)

    def settings(self):
        from dotvllm_plugin import index

        return {"cache_size": 0, "vocab_fingerprint": self.vocab.fingerprint, "c_walk": index._cwalk is not None,
                "json_path": "KINDS['json_schema'].compile(compiler, schema, {})" if self._json_kind is not None
                else "GrammarCompiler.compile_json_schema(schema)"}

    def json_language(self):
        return {"whitespace": "none (compact; separators ',' and ':')",
                "undeclared properties": "allowed where additionalProperties is absent, after the declared ones",
                "property order": "declared order",
                "call": "the plugin's path with no request options: KINDS['json_schema'].compile(compiler, schema, {}) "
                        "= compile_json_schema(schema, whitespace_pattern=None, allow_undeclared_properties=True)",
                "differs from ours": "-"}

    @functools.cached_property
    def _json_kind(self):
        try:
            from dotvllm_plugin.compiler import KINDS
        except ImportError:  # an older core (--core-ref) without the kind registry
            return None
        return KINDS.get("json_schema")

    def make_cold(self):
        _clear_memo_tables()
        try:  # the gadget walks are kept per vocabulary across patterns: cold means without them
            from dotvllm_plugin.index import clear_walk_cache
        except ImportError:  # an older core (--core-ref)
            pass
        else:
            clear_walk_cache(self.vocab)

    def compile(self, kind, spec):
        if kind == "regex":
            return self.compiler.compile_regex(spec)
        if self._json_kind is not None:  # exactly what the plugin runs for a request without options
            return self._json_kind.compile(self.compiler, spec, {})
        return self.compiler.compile_json_schema(spec)

    def classify_error(self, e):
        from dotvllm_plugin import errors

        if isinstance(e, errors.UnsupportedFeatureError):
            return "refused"
        if isinstance(e, errors.GrammarError):
            return "grammar_error"
        if isinstance(e, errors.CompilationError):
            return "compile_limit"
        return "crash_exception"

    def index_bytes(self, handle):
        return int(handle.memory_bytes)

    def ops(self, handle, bitmask):
        m = self._matcher_cls(handle)
        return functools.partial(m.fill_next_token_bitmask, bitmask), m.accept_token, m.is_completed


def _clear_memo_tables() -> None:
    """Cold compiles: empty the process-wide memo tables of the JSON Schema translator, of the
    regex front end's character classes and their UTF-8 byte tries (pure functions of code-point
    sets and of the classes a pattern names, kept across requests in a server's compile worker), the matcher's
    character-run tables (per vocabulary and character class, kept across requests), and the
    pushdown engine's terminal automata (per regex, kept across requests); not the automata and
    the walk a compiler pins when it is made (the same for every schema)."""
    try:
        from dotvllm_plugin.grammar.json_schema.text import clear_memos
    except ImportError:  # an older core (--core-ref)
        return
    clear_memos()
    try:
        from dotvllm_plugin.regex.glushkov import clear_memos as clear_class_memo
    except ImportError:  # an older core (--core-ref)
        return
    clear_class_memo()
    try:
        from dotvllm_plugin.runs import clear_memos as clear_run_tables
    except ImportError:  # an older core (--core-ref)
        return
    clear_run_tables()
    try:
        from dotvllm_plugin.pushdown import clear_memos as clear_terminal_automata
    except ImportError:  # an older core (--core-ref)
        return
    clear_terminal_automata()


class XGrammar(Engine):
    name = "xgrammar"
    package = "xgrammar"
    index_bytes_kind = "engine"

    def __init__(self, tokenizer_name):
        super().__init__(tokenizer_name)
        import xgrammar as xgr

        self.xgr = xgr
        self.info = xgr.TokenizerInfo.from_huggingface(self.tok, vocab_size=self.vocab_size, stop_token_ids=[self.eos])
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)

        self.json_kwargs = ({"any_whitespace": False, "separators": (",", ":"), "strict_mode": False}
                            if json_language_choice() == "closest" else {})

    def settings(self):
        return {"max_threads": 1, "cache_enabled": False, "vocab_type": str(self.info.vocab_type)}

    def json_language(self):
        if self.json_kwargs:
            return {"whitespace": "none (any_whitespace=False, separators=(',', ':'))",
                    "undeclared properties": "allowed where additionalProperties is absent (strict_mode=False)",
                    "property order": "declared order (any_order=False, the default)",
                    "call": "compile_json_schema(schema, any_whitespace=False, separators=(',', ':'), strict_mode=False)",
                    "differs from ours": "strict_mode=False is one switch for undeclared properties and unevaluated "
                                         "array items (prefixItems without items: extra items allowed, as JSON Schema "
                                         "says); xgrammar has no separate switch"}
        return {"whitespace": "any JSON whitespace between tokens (any_whitespace=True)",
                "undeclared properties": "forbidden (strict_mode=True)",
                "property order": "declared order",
                "call": "compile_json_schema(schema) (defaults)",
                "differs from ours": "flexible whitespace; undeclared properties forbidden"}

    def compile(self, kind, spec):
        if kind == "regex":
            return self.compiler.compile_regex(spec)
        return self.compiler.compile_json_schema(json.dumps(spec), **self.json_kwargs)

    def index_bytes(self, handle):
        return int(handle.memory_size_bytes)

    def ops(self, handle, bitmask):
        m = self.xgr.GrammarMatcher(handle)
        return functools.partial(m.fill_next_token_bitmask, bitmask), m.accept_token, m.is_completed


class LLGuidance(Engine):
    name = "llguidance"
    package = "llguidance"
    index_bytes_kind = "none"

    def __init__(self, tokenizer_name):
        super().__init__(tokenizer_name)
        import llguidance
        import llguidance.hf

        self.llg = llguidance
        self.lltok = llguidance.hf.from_tokenizer(self.tok, n_vocab=self.vocab_size, eos_token=self.eos)
        self.json_overrides = ({"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
                               if json_language_choice() == "closest" else None)

    def settings(self):
        return {"compile": "LLMatcher construction (llguidance builds lexer/parser tables lazily)"}

    def json_language(self):
        undeclared = "allowed where additionalProperties is absent, after the declared ones (llguidance's only behaviour)"
        if self.json_overrides:
            return {"whitespace": "none (whitespace_flexible=False, item_separator ',', key_separator ':')",
                    "undeclared properties": undeclared,
                    "property order": "declared order",
                    "call": "grammar_from_json_schema(schema, overrides={'whitespace_flexible': False, "
                            "'item_separator': ',', 'key_separator': ':'})",
                    "differs from ours": "-"}
        return {"whitespace": "any JSON whitespace between tokens (whitespace_flexible defaults to true)",
                "undeclared properties": undeclared,
                "property order": "declared order",
                "call": "grammar_from_json_schema(schema) (defaults)",
                "differs from ours": "flexible whitespace"}

    def compile(self, kind, spec):
        M = self.llg.LLMatcher
        grammar = (M.grammar_from_regex(spec) if kind == "regex"
                   else M.grammar_from_json_schema(spec, overrides=self.json_overrides))
        m = M(self.lltok, grammar, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error())
        return m

    def ops(self, handle, bitmask):
        m = handle.deep_copy()
        row = bitmask[0]
        fill = functools.partial(m.unsafe_compute_mask_ptr, row.ctypes.data, row.nbytes)
        return fill, m.consume_token, m.is_accepting


class OutlinesCore(Engine):
    name = "outlines_core"
    package = "outlines_core"
    index_bytes_kind = "serialized"

    def __init__(self, tokenizer_name):
        super().__init__(tokenizer_name)
        import outlines_core

        self.oc = outlines_core
        by_bytes: dict[bytes, list[int]] = {}
        for i, b in enumerate(_common.token_bytes_table(tokenizer_name)):
            if b is not None and i != self.eos:
                by_bytes.setdefault(b, []).append(i)
        self.vocab = outlines_core.Vocabulary(self.eos, by_bytes)

    def settings(self):
        return {"vocabulary": "ordinary tokens only (special ids excluded), EOS = </s>"}

    def json_language(self):
        return {"whitespace": "outlines-core's default whitespace pattern (whitespace_pattern=None)",
                "undeclared properties": "forbidden where additionalProperties is absent (outlines-core has no "
                                         "switch that allows them)",
                "property order": "declared order",
                "call": "build_regex_from_schema(json.dumps(schema)) (defaults; max_recursion_depth=3)",
                "differs from ours": "whitespace allowed; undeclared properties forbidden; recursion bounded"}

    def compile(self, kind, spec):
        regex = spec if kind == "regex" else self.oc.json_schema.build_regex_from_schema(json.dumps(spec))
        return self.oc.Index(regex, self.vocab)

    def index_bytes(self, handle):
        return len(pickle.dumps(handle))

    def ops(self, handle, bitmask):
        g = self.oc.Guide(handle)
        row = bitmask[0]
        fill = functools.partial(g.write_mask_into, row.ctypes.data, row.size, 4)
        return fill, functools.partial(g.advance, return_tokens=False), g.is_finished


_CLASSES = {"ours": Ours, "xgrammar": XGrammar, "llguidance": LLGuidance, "outlines_core": OutlinesCore}


def make_engine(name: str, tokenizer_name: str, warm_up=("regex", "json_schema")) -> Engine:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    engine = _CLASSES[name](tokenizer_name)
    engine.warm_up(warm_up)
    return engine


def ours_token_bytes(tokenizer_name: str) -> tuple:
    from dotvllm_plugin import Vocabulary

    return Vocabulary.from_hf_tokenizer(_common.load_tokenizer(tokenizer_name)).token_bytes


# ------------------------------------------------------------------------------------------------


def _walk(engine: Engine, handle, ids, bitmask, masks: list, commits: list) -> dict:
    fill, accept, complete = engine.ops(handle, bitmask)
    row = bitmask[0]
    pc = time.perf_counter_ns
    rejected_at = None
    mismatch = False
    error = None
    for k, t in enumerate(ids):
        row.fill(0)
        t0 = pc()
        fill()
        t1 = pc()
        if not (int(row[t >> 5]) >> (t & 31)) & 1:
            rejected_at = k
            break
        t2 = pc()
        try:
            ok = accept(t)
        except Exception as e:  # outlines-core raises on a token it does not allow
            ok, error = False, f"{type(e).__name__}: {e}"
        t3 = pc()
        if ok is False:
            rejected_at, mismatch = k, True
            break
        masks.append(t1 - t0)
        commits.append(t3 - t2)
    accepted = rejected_at is None and bool(complete())
    out = {"accepted": accepted, "rejected_at": rejected_at, "n_tokens": len(ids)}
    if mismatch:
        out["mismatch"] = error or "accept returned False although the mask allowed the token"
    if accepted:  # EOS must then be in the mask too
        row.fill(0)
        fill()
        if not (int(row[engine.eos >> 5]) >> (engine.eos & 31)) & 1:
            out["eos_not_in_mask"] = True
    return out


def compile_rss_delta(engine: Engine, case: dict) -> int:
    """Peak-RSS growth of an untimed compile of ``case`` on a trimmed heap.

    Timing and memory come from separate compiles: returning free heap pages to the OS
    (``malloc_trim``) makes growth visible, but it also makes the work after it fault in fresh
    pages, which a long-running compile worker would not pay; so timed compiles run on the heap as
    it is, and the benchmarks call this in a memory pass after the timed one (the timed compile
    of the next case never follows a trim).
    """
    engine.make_cold()
    gc.collect()
    _common.reset_peak_rss()
    rss0 = _common.rss_bytes()
    try:
        engine.compile(case["kind"], case["spec"])
    except Exception:
        return 0
    return max(0, _common.peak_rss_bytes() - rss0)


def run_case(engine: Engine, case: dict):
    """Yield ``("compiled", {...})`` and, after a successful compile, ``("walked", {...})``."""
    engine.make_cold()
    gc.collect()
    c0 = time.process_time()
    t0 = time.perf_counter()
    try:
        handle = engine.compile(case["kind"], case["spec"])
    except Exception as e:
        compile_s = time.perf_counter() - t0
        out = {"status": engine.classify_error(e), "compile_ms": compile_s * 1e3,
               "compile_cpu_ms": (time.process_time() - c0) * 1e3,
               "error": f"{type(e).__name__}: {e}"[:2000]}
        for attr in ("feature", "where"):  # dotvllm_plugin.errors.UnsupportedFeatureError
            if getattr(e, attr, None) is not None:
                out[attr] = str(getattr(e, attr))
        yield "compiled", out
        return
    compile_s = time.perf_counter() - t0
    compile_cpu_s = time.process_time() - c0
    try:
        index_bytes = engine.index_bytes(handle)
    except Exception:
        index_bytes = None
    yield "compiled", {"status": "ok", "compile_ms": compile_s * 1e3, "compile_cpu_ms": compile_cpu_s * 1e3,
                       "index_bytes": index_bytes}

    bitmask = np.zeros((1, engine.words), dtype=np.int32)
    # Time to first mask on a fresh matcher right after compiling (lazy engines work here).
    fill, _, _ = engine.ops(handle, bitmask)
    t0 = time.perf_counter_ns()
    fill()
    first_mask_ns = time.perf_counter_ns() - t0
    masks: list[int] = []
    commits: list[int] = []
    instances = []
    for inst in case["instances"]:
        res = _walk(engine, handle, inst["ids"], bitmask, masks, commits)
        instances.append(res)
    # Extra timing-only passes over the accepted instances (same matcher work, fresh matchers).
    for _ in range(case.get("repeat", 1) - 1):
        for inst, res in zip(case["instances"], instances):
            if res["accepted"]:
                _walk(engine, handle, inst["ids"], bitmask, masks, commits)
    yield "walked", {"instances": instances, "mask_ns": np.asarray(masks, dtype=np.int64),
                     "commit_ns": np.asarray(commits, dtype=np.int64),
                     "first_mask_ns": first_mask_ns}
