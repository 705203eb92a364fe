"""The regex front end's own reading of regexes (dotvllm_plugin.regex.fastparse) against Python's
parser (``re._parser.parse``): the same tree item for item, or the same error, on the regex corpus,
on mutated regexes, and on the text the JSON Schema translator writes for corpus schemas. The C
reader (``_cwalk.regex_parse``) against the Python one (``fastparse._Parser``): the same tree, or
None alike, on the same texts and on random ones."""

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

import re._constants as C  # noqa: E402
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


def _python_reader(text):
    """fastparse.fast_parse with the Python reader."""
    old = fastparse.USE_C_PARSE
    fastparse.USE_C_PARSE = False
    try:
        return fastparse.fast_parse(text)
    finally:
        fastparse.USE_C_PARSE = old


def _group_args(tree, out: list) -> list:
    """The arguments of every group, branch and repeat in a tree (the translator keys a cache on
    their ids while the tree lives: they must be distinct objects)."""
    for op, av in tree.data:
        if op is C.SUBPATTERN:
            out.append(av)
            _group_args(av[3], out)
        elif op is C.BRANCH:
            out.append(av)
            for seq in av[1]:
                _group_args(seq, out)
        elif op is C.MAX_REPEAT:
            out.append(av)
            _group_args(av[2], out)
    return out


def _compare_readers(texts) -> int:
    """The C reader reads every text as the Python reader does (the same tree, or None alike);
    returns how many both read."""
    if fastparse._cwalk is None:
        pytest.skip("the C extension is not built")
    read = 0
    for text in texts:
        c_tree = fastparse._cwalk.regex_parse(text)
        py_tree = _python_reader(text)
        assert (c_tree is None) == (py_tree is None), repr(text)
        if c_tree is None:
            continue
        read += 1
        assert _shape(c_tree) == _shape(py_tree), repr(text)
        assert (c_tree.state.flags, c_tree.state.groups) == (py_tree.state.flags, py_tree.state.groups), repr(text)
        assert c_tree.state.str is text
        args = _group_args(c_tree, [])
        assert len({id(a) for a in args}) == len(args), repr(text)
    return read


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
    assert _compare_readers(texts) == fast


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


#: Pieces of random regexes: syntax, escapes of every kind, ASCII, non-ASCII and private code points.
_PIECES = [*"()[]{}|?*+.^$-,:=!<>\\\\", "(?:", "(?:", "[^", "{2}", "{1,3}", "{,2}", "{2,}", "{}", "{,}",
           *"aAbBzZ0159_ \n\t\"'/#&~", "é", "日", "😀", "٣", "\u00a0", "\U00100000", "\U00100001", "\U00100002",
           "\U00100003", "\U00100010", "\U0010FFFF", "\\d", "\\D", "\\s", "\\S", "\\w", "\\W", "\\b", "\\B",
           "\\A", "\\Z", "\\n", "\\t", "\\a", "\\f", "\\v", "\\r", "\\\\", "\\x41", "\\x7f", "\\x4", "\\u00e9",
           "\\u12", "\\ud800", "\\U0001F600", "\\0", "\\1", "\\q", "\\é", "\\٣", "\\-", "\\]", "\\.", "a-z",
           "\\x00-\\x7f", "\U00100000-\U0010FFFF", "--", "&&", "~~", "||", "[[", "*?", "+?", "*+", "??"]


def test_c_reader_random_texts():
    """Thousands of random texts, most of them outside the subset somewhere, some inside."""
    rng = random.Random(5)
    texts = []
    for _ in range(6000):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 14)))
        if rng.random() < 0.3:  # balanced: more of them read
            text = "(?:" + text.replace("(", "").replace(")", "") + ")" + rng.choice(["", "*", "+", "{2}", "|x"])
        texts.append(text)
    read = _compare_readers(texts)
    assert 500 < read < len(texts), read


def test_c_reader_rewrites_and_edges():
    texts = ["(?:ab|ac|ad)", "(?:a|a)", "(?:ab|ab)", "x(?:a|b|[c-e]|\\d|a)y", "(?:a|[^b])", "(?:[ab]|[ba]|b)",
             "(?:a*|a*)", "(?:(?:a)|b)", "(?:)", "(?:)*", "(?:(?:ab)c)+", "a(?:b(?:c|d)e)*f", "a{0}", "a{4294967295}",
             "a{4294967294}", "a{,4294967295}", "a{1,4294967295}", "a{4294967296}", "a{" + "9" * 5000 + "}",
             "\\ud7ff", "\\ud800", "\\udfff", "\\ue000", "[\\ud7ff-\\ue000]", "\\x{41}", "\\u{41}",
             "[\\w-]", "[-\\w]", "[\\w-a]", "[a-a]", "[aa-bb-a]", "[\\x00-\\u00ff\\u0100]", "[]]", "[^]]", "[]a]",
             "[a-]", "[^-]", "[\\b]", "[\\]]", "a|", "|a", "|", "", "^$", "^*", "$+", ".{2,3}", "\\d{2}",
             "(?:" * 50 + ")" * 50, "\U00100000" * 40 + "|" + "\U00100000" * 40 + "x",
             "|".join(chr(c) for c in range(0x20, 0x7F) if c not in b"()[]{}|?*+.^$\\"),
             "|".join(chr(c) for c in range(0x100000, 0x100040))]
    assert _compare_readers(texts) > 30
    _compare(texts)


def test_c_reader_deep_nesting_is_left_to_python():
    text = "(?:" * 150 + "a" + ")" * 150
    if fastparse._cwalk is not None:
        assert fastparse._cwalk.regex_parse(text) is None
    assert _read(fastparse.parse, text) == _read(P.parse, text)


def test_c_reader_malformed_calls():
    cw = fastparse._cwalk
    if cw is None:
        pytest.skip("the C extension is not built")
    consts = (C.LITERAL, C.NOT_LITERAL, C.IN, C.RANGE, C.NEGATE, C.SUBPATTERN, C.BRANCH, C.MAX_REPEAT, C.MIN_REPEAT,
              C.POSSESSIVE_REPEAT, C.ANY, C.AT, C.AT_BEGINNING, C.AT_END, C.MAXREPEAT, C.SRE_FLAG_UNICODE)
    cats = tuple(P.CATEGORIES[e] for e in ("\\d", "\\D", "\\s", "\\S", "\\w", "\\W"))
    for args in [(), ("a", "b"), (None,)]:
        with pytest.raises(TypeError):
            cw.regex_parse(*args)
    for arg in [b"a", 1, None, ["a"]]:
        with pytest.raises(TypeError, match="str expected"):
            cw.regex_parse(arg)
    with pytest.raises(TypeError):
        cw.regex_setup(P.SubPattern, P.State, consts)
    with pytest.raises(TypeError):
        cw.regex_setup(P.SubPattern, P.State, list(consts), cats)
    with pytest.raises(TypeError, match="must be classes"):
        cw.regex_setup(P.SubPattern, None, consts, cats)
    with pytest.raises(ValueError, match="16 constants and 6 categories"):
        cw.regex_setup(P.SubPattern, P.State, consts[:-1], cats)
    with pytest.raises(ValueError, match="16 constants and 6 categories"):
        cw.regex_setup(P.SubPattern, P.State, consts, cats + cats[:1])
    with pytest.raises(TypeError, match="constant 3 is not an int"):
        cw.regex_setup(P.SubPattern, P.State, consts[:3] + ("x",) + consts[4:], cats)
    for maxrepeat in (0, 1 << 40, 1 << 50):
        with pytest.raises(ValueError, match="MAXREPEAT out of range"):
            cw.regex_setup(P.SubPattern, P.State, consts[:14] + (maxrepeat, consts[15]), cats)
    with pytest.raises(OverflowError):
        cw.regex_setup(P.SubPattern, P.State, consts[:14] + (-1, consts[15]), cats)
    for bad in [(C.IN, []), (C.IN, [1]), (C.LITERAL, [(C.CATEGORY, C.CATEGORY_DIGIT)]), (C.IN,), "x"]:
        with pytest.raises(ValueError, match="category 2 is not"):
            cw.regex_setup(P.SubPattern, P.State, consts, cats[:2] + (bad,) + cats[3:])
    # classes whose code raises, or sets up again while a text is read: an exception, no crash

    class Raising(P.SubPattern):
        def __init__(self, state, data=None):
            raise ZeroDivisionError("from SubPattern")

    class Reentrant(P.SubPattern):
        def __init__(self, state, data=None):
            cw.regex_setup(P.SubPattern, P.State, consts, cats)

    try:
        for cls, error, match in [(Raising, ZeroDivisionError, "from SubPattern"),
                                  (Reentrant, RuntimeError, "while a regex is being read")]:
            cw.regex_setup(cls, P.State, consts, cats)
            for text in ["a", "(?:a|bc)*", "[ab]{2}|x", "\\d+"]:
                with pytest.raises(error, match=match):
                    cw.regex_parse(text)
            assert cw.regex_parse("(a") is None  # (outside the subset before any SubPattern is made)
    finally:
        cw.regex_setup(P.SubPattern, P.State, consts, cats)
    # a refused setup changed nothing; a repeated one is allowed
    assert _shape(cw.regex_parse("a|\\d")) == _shape(P.parse("a|\\d"))
    cw.regex_setup(P.SubPattern, P.State, consts, cats)
    assert _shape(cw.regex_parse("[a-c]+")) == _shape(P.parse("[a-c]+"))


def _translator_texts() -> list[str]:
    """Every text fastparse.parse reads while every corpus schema is translated under four option
    sets (memo tables emptied before each: each translation writes all of its texts)."""
    from dotvllm_plugin.errors import CompilationError, GrammarError
    from dotvllm_plugin.grammar.json_schema import json_schema_to_ir
    from dotvllm_plugin.grammar.json_schema.text import clear_memos

    options = [{}, {"allow_undeclared_properties": False}, {"whitespace_pattern": r"[ \n]{0,2}"}, {"mode": "grammar"}]
    texts: set[str] = set()
    real = fastparse.parse

    def keep(text):
        texts.add(text)
        return real(text)

    fastparse.parse = keep
    try:
        for f in sorted(CORPUS.glob("*.json")):
            schema = json.loads(f.read_text())["schema"]
            for opts in options:
                clear_memos()
                try:
                    json_schema_to_ir(schema, **opts)
                except (GrammarError, CompilationError, RecursionError, ValueError):
                    continue
    finally:
        fastparse.parse = real
    return sorted(texts)


def test_c_reader_translator_text_all_corpus_schemas():
    """Every text the translator writes for every corpus schema under four option sets: the C
    reader reads it as the Python reader does (both read all of them)."""
    if not CORPUS.is_dir():
        pytest.skip("the JSONSchemaBench corpus is not here")
    texts = _translator_texts()
    assert len(texts) > 10000
    assert _compare_readers(texts) == len(texts)
