"""JSONSchemaBench sample (795 real schemas with labelled instances): soundness and coverage of
what the plugin compiles.

For every schema, ``GrammarCompiler.compile_json_schema`` with the default options (what a
request without options gets: compact output, undeclared properties allowed) on the real Tekken
vocabulary; every instance serialised compactly in its own key order, as the corpus file has it
(``json.dumps(x, separators=(",", ":"), ensure_ascii=False)``, no reordering), is walked with
``GrammarMatcher.accept_string`` and must leave the matcher completed to count as accepted.

* Soundness (asserted per schema): no instance labelled INVALID is accepted, and every accepted
  instance validates with the ``jsonschema`` package.
* Coverage (reported, with floors): instances labelled VALID that are accepted. A valid instance
  rejected in its own order is tried once more in the schema's declared order
  (``order_properties``), only to report how many rejections are due to property order.

Each schema runs in a forked worker with a per-schema timeout (a timeout is reported, never a
pass). The regex translator (``json_schema_to_regex``) keeps a cheap soundness check with
Python's ``re`` on the schemas it translates.

By default every 8th schema runs (~1 min; the CI budget); ``DOTVLLM_JSON_CORPUS=all`` runs the whole
sample (732 of 795 schemas with every instance right, none past the timeout, at 45443de + this change), ``DOTVLLM_JSON_CORPUS=4`` every 4th, and
``DOTVLLM_JSON_CORPUS=N`` every N-th schema.
"""

from __future__ import annotations

import glob
import json
import multiprocessing as mp
import os
import re
import time
from collections import Counter

import pytest
import regex as regex_pkg

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus", "jsonschemabench-dev")
FILES = sorted(glob.glob(os.path.join(CORPUS, "*.json")))
_SAMPLE = os.environ.get("DOTVLLM_JSON_CORPUS", "")
if _SAMPLE != "all":
    FILES = FILES[:: int(_SAMPLE) if _SAMPLE.isdigit() and int(_SAMPLE) > 0 else 8]
#: Per schema, wall clock: generous because the machine may be shared (the slowest dev-corpus
#: compile, Snowplow---sp_409, takes ~1.5 s of CPU on its own at 45443de; o65372's checks took
#: longer than this while the translator's regex was matched with ``re``, see ``_regex_check``).
TIMEOUT_S = 60
#: Regexes longer than this are not run through Python's ``re`` (its compile is the slow part).
RE_MAX_CHARS = 20_000
#: Per instance, for the translator's regex in the ``regex`` package (backtracking).
RE_MATCH_TIMEOUT_S = 5.0

pytestmark = pytest.mark.skipif(not FILES, reason="corpus not present")

# Set in the parent before the worker pool forks (the workers inherit it).
_COMPILER = None


def serialise(data) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _validator(schema):
    import jsonschema

    cls = jsonschema.validators.validator_for(schema) if isinstance(schema, dict) else jsonschema.Draft202012Validator
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _accepts(compiled, text: str) -> bool:
    from dotvllm_plugin.matcher import GrammarMatcher

    m = GrammarMatcher(compiled)
    return bool(m.accept_string(text)) and bool(m.is_completed())


def check_file(path: str) -> dict:
    """Compile one corpus schema the plugin's way and walk its instances (runs in a worker)."""
    from dotvllm_plugin.errors import CompilationError, GrammarError
    from dotvllm_plugin.grammar.json_schema import order_properties

    with open(path) as f:
        doc = json.load(f)
    schema = doc["schema"]
    t0 = time.perf_counter()
    try:
        compiled = _COMPILER.compile_json_schema(schema)
    except GrammarError as e:
        return {"status": "refused", "feature": getattr(e, "feature", None), "error": str(e)[:200]}
    except CompilationError as e:
        return {"status": "too large", "error": str(e)[:200]}
    out = {"status": "compiled", "engine": type(compiled).__name__, "compile_s": time.perf_counter() - t0,
           "valid": 0, "valid_accepted": 0, "valid_accepted_declared_order": 0, "invalid": 0,
           "invalid_accepted": 0, "accepted_invalid": [], "rejected_valid": [], "accepted_not_validating": []}
    try:
        validator = _validator(schema)
    except Exception as e:  # noqa: BLE001 - a schema jsonschema itself cannot load
        validator, out["jsonschema_error"] = None, f"{type(e).__name__}: {e}"[:200]
    for test in doc["tests"]:
        text = serialise(test["data"])
        accepted = _accepts(compiled, text)
        if accepted and validator is not None and not validator.is_valid(test["data"]):
            out["accepted_not_validating"].append(text[:300])
        if test["valid"]:
            out["valid"] += 1
            out["valid_accepted"] += accepted
            if not accepted:
                declared = serialise(order_properties(test["data"], schema))
                by_order = declared != text and _accepts(compiled, declared)
                out["valid_accepted_declared_order"] += by_order
                out["rejected_valid"].append({"text": text[:200], "accepted_in_declared_order": by_order})
        else:
            out["invalid"] += 1
            out["invalid_accepted"] += accepted
            if accepted:
                out["accepted_invalid"].append(text[:300])
    out["regex"] = _regex_check(doc)
    return out


def _regex_check(doc: dict) -> dict:
    """Soundness of the regex translator alone (instances in declared order, Python's ``re``)."""
    from dotvllm_plugin.errors import CompilationError, GrammarError
    from dotvllm_plugin.grammar.json_schema import NeedsGrammar, json_schema_to_regex, order_properties

    try:
        regex = json_schema_to_regex(doc["schema"])
    except (GrammarError, CompilationError, NeedsGrammar) as e:
        return {"status": type(e).__name__}
    if len(regex) > RE_MAX_CHARS:
        return {"status": "skipped (long)"}
    try:
        re.compile(regex)
        # Python's re backtracks: a schema's own pattern with nested repetition (o65372's URL
        # pattern, ``([/\w \.-]*)*``) takes minutes on an instance it rejects, so the match runs
        # in the ``regex`` package (re's syntax, version 0), which can stop after a time budget.
        pattern = regex_pkg.compile(regex, flags=regex_pkg.V0)
    except (re.error, regex_pkg.error, RecursionError, OverflowError) as e:
        return {"status": f"re: {type(e).__name__}"}
    matched_invalid = []
    for t in doc["tests"]:
        if t["valid"]:
            continue
        text = serialise(order_properties(t["data"], doc["schema"]))
        try:
            if pattern.fullmatch(text, timeout=RE_MATCH_TIMEOUT_S):
                matched_invalid.append(text[:300])
        except TimeoutError:
            return {"status": "skipped (re timeout)", "matched_invalid": matched_invalid}
    return {"status": "checked", "matched_invalid": matched_invalid}


@pytest.fixture(scope="module")
def results(tekken_vocab) -> dict[str, dict]:
    from dotvllm_plugin import GrammarCompiler

    global _COMPILER
    _COMPILER = GrammarCompiler(tekken_vocab, cache_size=0)
    ctx = mp.get_context("fork")
    pool = ctx.Pool(1)
    res = {}
    try:
        for path in FILES:
            job = pool.apply_async(check_file, (path,))
            try:
                res[os.path.basename(path)] = job.get(timeout=TIMEOUT_S)
            except mp.TimeoutError:
                pool.terminate()
                pool = ctx.Pool(1)
                res[os.path.basename(path)] = {"status": "timeout"}
    finally:
        pool.terminate()
        pool.join()
        _COMPILER = None
    return res


@pytest.mark.parametrize("name", [os.path.basename(p) for p in FILES])
def test_no_invalid_instance_accepted(results, name):
    r = results[name]
    if r["status"] != "compiled":
        pytest.skip(f"{r['status']}: {r.get('error', '')[:120]}")
    assert not r["accepted_invalid"], f"instances labelled invalid accepted: {r['accepted_invalid']}"
    assert not r["accepted_not_validating"], f"accepted, but jsonschema rejects: {r['accepted_not_validating']}"
    regex = r["regex"]
    assert not regex.get("matched_invalid"), f"the regex translator matches invalid: {regex['matched_invalid']}"


def test_coverage_report(results, capsys):
    status = Counter(r["status"] for r in results.values())
    ok = {n: r for n, r in results.items() if r["status"] == "compiled"}
    valid = sum(r["valid"] for r in ok.values())
    valid_accepted = sum(r["valid_accepted"] for r in ok.values())
    by_order = sum(r["valid_accepted_declared_order"] for r in ok.values())
    invalid = sum(r["invalid"] for r in ok.values())
    invalid_accepted = sum(r["invalid_accepted"] for r in ok.values())
    passing = [n for n, r in ok.items() if r["valid_accepted"] == r["valid"] and r["invalid_accepted"] == 0]
    failing = sorted(n for n, r in ok.items() if r["valid_accepted"] < r["valid"])
    refused = Counter(r.get("feature") for r in results.values() if r["status"] == "refused")
    engines = Counter(r["engine"] for r in ok.values())
    regex = Counter(r["regex"]["status"] for r in ok.values())
    compile_s = sorted(r["compile_s"] for r in ok.values())
    with capsys.disabled():
        print(f"\njsonschemabench-dev through compile_json_schema (Tekken): {len(results)} schemas: {dict(status)} "
              f"({dict(engines)}); all tests pass on {len(passing)}; valid accepted {valid_accepted}/{valid} "
              f"(another {by_order} of the rejected are accepted in declared order); invalid rejected "
              f"{invalid - invalid_accepted}/{invalid}; compile p50 {compile_s[len(compile_s) // 2] * 1e3:.0f} ms, "
              f"max {compile_s[-1] * 1e3:.0f} ms (wall, shared machine)" if compile_s else "")
        print(f"refused by keyword: {dict(refused.most_common(12))}")
        print(f"regex translator check: {dict(regex)}")
        print(f"valid instances rejected on {len(failing)} schemas: {failing[:40]}")
    assert invalid_accepted == 0
    assert not any(r["accepted_not_validating"] for r in ok.values())
    # Coverage floors measured on this sample (a drop means a regression).
    assert status["compiled"] >= 0.85 * len(results)
    # Every 8th schema: 112/112 at 4f22fbe. Every 4th: 215/227 at fbb4240, 216/228 at 4f22fbe; 9 of
    # the 12 misses are instances whose declared properties are not in declared order, the others a
    # format the labels do not check (uri) and strings over the lowered length cap.
    assert valid_accepted >= 0.92 * valid
    assert status["timeout"] <= max(1, len(results) // 100)
