"""The regex front end's own reading of regexes (dotvllm_plugin.regex.fastparse) against Python's
parser (``re._parser.parse``): the same tree item for item, or the same error, on the regex corpus,
on mutated regexes, and on the text the JSON Schema translator writes for corpus schemas."""

from __future__ import annotations

import json
import random
import sys
import warnings
from pathlib import Path

import pytest

from dotvllm_plugin.regex import fastparse

pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="the subset is read as Python 3.11 reads it")

sys.path.insert(0, str(Path(__file__).parent))
from test_regex_differential import BASE, EXTRA_CHARS, INSERTS, mutate_pattern, mutate_string  # noqa: E402

import re._parser as P  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "jsonschemabench-dev"


def _shape(x):
    """A parse tree as plain data (SubPattern has no equality of its own)."""
    if isinstance(x, P.SubPattern):
        return ("SubPattern", [_shape(i) for i in x.data])
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [_shape(i) for i in x])
    return x


def _read(parse, text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tree = parse(text)
        except Exception as e:  # the error is part of the reading
            return ("error", type(e).__name__, str(e))
    return ("tree", _shape(tree), tree.state.flags, tree.state.groups)


def _compare(texts) -> int:
    """Every text read alike; returns how many the subset read itself (no hand-over)."""
    fast = 0
    for text in texts:
        assert _read(fastparse.parse, text) == _read(P.parse, text), repr(text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fastparse.fast_parse(text) is not None:
                fast += 1
    return fast


def test_regex_corpus_and_mutations():
    rng = random.Random(11)
    texts = list(BASE) + list(INSERTS)
    texts += [mutate_pattern(p, rng) for p in BASE for _ in range(12)]
    texts += [mutate_string(p, rng, EXTRA_CHARS + "\\[](){}|?*+.^$-") for p in BASE for _ in range(12)]
    # the subset's own edges: braces, escapes, classes, nesting, alternations that re rewrites
    texts += ["a{", "a{}", "a{,}", "a{,3}", "a{3,2}", "a{99999999999}", "{2}", "a{2}{3}", "(?:a{2})*",
              "(?:ab|ac)", "(?:a|b|[cd])", "(?:a|[^b])", "(?:x|)", "a||b", "(?:(?:a))", "[a-\\x7f]", "[\\u00e9-\\u00ff]",
              "\\u12", "\\x4g", "[\\", "\\", "[a", "(?:a", "a)", "(?:a))", "[^a]", "[^ab]", "[\\d-z]", "[a-\\d]",
              "[--]", "[a--]", "[&&]", "[a&&b]", "[|]", "[~~]", "[\\b]", "\\b", "\\B", "\\A\\Z", "^a$", ".*",
              "\U0010FFFF+", "[\U00100000-\U0010FFFF]", "a\\é", "\\٣", "a{1,2}?", "a*+", "(?:a)?(?:b)+",
              "\\(\\)\\[\\]\\{\\}\\|\\?\\*\\+\\.\\^\\$\\\\\\-\\/\\\"\\'"]
    fast = _compare(texts)
    assert fast > len(texts) // 3, fast  # most plain regexes take the fast path


def test_translator_text_from_corpus_schemas():
    """The writer's texts (grammar mode, placeholders and units included) for every 6th corpus
    schema: read alike, and all of them by the subset itself."""
    if not CORPUS.is_dir():
        pytest.skip("the JSONSchemaBench corpus is not here")
    from dotvllm_plugin.errors import CompilationError, GrammarError
    from dotvllm_plugin.grammar.json_schema import json_schema_to_ir
    from dotvllm_plugin.grammar.json_schema import rules as R

    texts: list[str] = []
    real = R._Writer.parse

    def keep(self, text):
        texts.append(text)
        return real(self, text)

    R._Writer.parse = keep
    try:
        for f in sorted(CORPUS.glob("*.json"))[::6]:
            try:
                json_schema_to_ir(json.loads(f.read_text())["schema"], allow_undeclared_properties=True)
            except (GrammarError, CompilationError, RecursionError, ValueError):
                continue
    finally:
        R._Writer.parse = real
    assert len(texts) > 200
    assert _compare(texts) == len(texts)
