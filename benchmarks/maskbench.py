"""MaskBench-style JSON Schema benchmark over ``shared/corpus/jsonschemabench-dev`` (795 schemas).

For each schema and each engine (ours, xgrammar, llguidance, outlines-core; same tokenizer,
single-threaded, each in its own worker process): compile with a deadline, then for every test
instance serialise it compactly (``json.dumps(x, separators=(",", ":"), ensure_ascii=False)``)
with object properties in the instance's own order as the corpus file has it (``--order as-is``,
the default; ``--order declared`` reorders them into the schema's declared order for every engine),
tokenize it with the real tokenizer, and step through the tokens asking for the mask and committing:

* a **valid** instance must be accepted completely, else it is a *validation error*;
* an **invalid** instance must be rejected at some token or fail to complete, else it is an
  *invalidation error* (invalid output accepted).

A schema *passes* when it compiled and all its tests behave. Our engine may refuse a keyword with
``UnsupportedFeatureError``: that counts as "refused" (not compiled), apart from crashes/timeouts.

Language asked for. Ours goes through the plugin's own path for a request without options
(``KINDS["json_schema"].compile(compiler, schema, {})``: compact output, undeclared properties
allowed after the declared ones). The anchors are asked for the closest language their APIs allow
(``--anchor-json closest``, the default: xgrammar ``any_whitespace=False, separators=(",", ":"),
strict_mode=False``; llguidance ``whitespace_flexible=False`` with ``,``/``:`` separators), or their
own defaults (``--anchor-json default``); the JSON and markdown state each engine's language.

Compile times are cold: each engine runs in one long-lived worker with its result caches off
(ours ``cache_size=0`` with its memo tables, gadget walks and character-run tables emptied before
each compile, outside its timer, xgrammar ``cache_enabled=False``, llguidance and outlines-core keep none), so no cache
outlives a schema; only tables built at start-up, the same for every schema, stay warm (ours: the
byte trie, the tokens' character masks of :mod:`dotvllm_plugin.runs`, the rules of the free-form
JSON value the translator writes once at import, and what a compiler pins when it is made: the
automata of the JSON translator's fixed terminals, the UTF-8 byte tries of their character classes,
and the vocabulary walk of a JSON string's loop with its rows, 20–25 ms once per process). Each worker freezes its
start-up heap after the warm-up (``gc.freeze``, every engine alike; ``--no-gc-freeze``: not).
By default (``--schedule blocks``) the
engines take turns: the first walks every schema, then the next, so no engine's compile runs
between two of another's (a multi-second compile of one engine evicts the CPU caches the next
engine's compile would otherwise find; ``--schedule interleaved`` runs every engine on one schema
before the next schema, as runs before 2026-12-06 did). With blocks, the results of the engines
whose blocks are done are written as each block ends, and an interrupted run (Ctrl-C) writes them
(the interrupted block's engine left out, named in ``engines_unfinished``). Percentiles
of CPU and wall time are reported on each engine's own compiled set and on the schemas that every
engine compiled (the fair comparison).

Usage::

    python -m benchmarks.maskbench                          # all 795 schemas, all engines
    python -m benchmarks.maskbench --limit 100 --engines ours,llguidance --timeout-s 20

Prints progress and tables; writes ``benchmarks/results/maskbench.json`` (+ ``.md``) and
``docs/maskbench_compile.png``. Partial results are written every 25 schemas.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benchmarks import _common
from benchmarks._common import (EngineWorker, fmt_bytes, fmt_ms, fmt_us, format_table, log, markdown_table,
                                percentiles)
from benchmarks import _engines
from benchmarks._engines import ENGINES

CORPUS_DIR = _common.REPO_ROOT.parent / "shared" / "corpus" / "jsonschemabench-dev"

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=CORPUS_DIR)
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ",".join(ENGINES))
    p.add_argument("--tokenizer", default="tekken", choices=sorted(_common.VOCAB_SIZE))
    p.add_argument("--core-ref", default="", help="measure dotvllm_plugin as committed at this git ref "
                   "(e.g. HEAD) instead of the work tree")
    p.add_argument("--limit", type=int, default=0, help="a seeded random sample of N schemas (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default="", help="comma-separated substrings of schema file names")
    p.add_argument("--order", choices=("as-is", "declared"), default="as-is",
                   help="object property order of the serialised instances, the same for every engine "
                        "(as-is: the instance's own order in the corpus file; declared: reordered into the "
                        "schema's declared order, which all engines emit by default)")
    p.add_argument("--anchor-json", choices=_engines.JSON_LANGUAGES, default="closest",
                   help="JSON language asked of the anchors: closest to ours (compact, undeclared properties "
                        "allowed) or their own defaults")
    p.add_argument("--no-gc-freeze", action="store_true",
                   help="keep the workers' start-up heap under the cyclic garbage collector (runs before "
                        "2026-12-06); by default every worker freezes it after its warm-up")
    p.add_argument("--schedule", choices=_common.SCHEDULES, default="blocks", help=_common.SCHEDULE_HELP)
    p.add_argument("--timeout-s", type=float, default=30.0, help="compile deadline per schema and engine")
    p.add_argument("--engine-timeout", action="append", default=[], metavar="ENGINE=S",
                   help="per-engine compile deadline, e.g. outlines_core=10 (repeatable)")
    p.add_argument("--walk-timeout-s", type=float, default=60.0)
    p.add_argument("--max-rss-gib", type=float, default=6.0, help="kill a worker whose RSS grows past this")
    p.add_argument("--json", type=Path, default=_common.RESULTS_DIR / "maskbench.json")
    p.add_argument("--plot", type=Path, default=_common.DOCS_DIR / "maskbench_compile.png")
    return p.parse_args(argv)


def serialise(data) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def encode_checked(tokenizer: str, text: str, name: str) -> list[int]:
    ids = _common.encode(tokenizer, text)
    if _common.token_text(tokenizer, ids) != text.encode("utf-8"):
        raise SystemExit(f"{name}: tokenization of {text[:80]!r} does not round-trip")
    return ids


def ours_order(data, schema):
    from dotvllm_plugin.grammar.json_schema import order_properties

    try:
        return order_properties(data, schema)
    except Exception:  # noqa: BLE001 - a schema we refuse anyway: keep the data as is
        return data


def for_engine(case: dict, engine: str) -> dict:
    """The case as ``engine`` sees it (instances reordered when ``--order declared``)."""
    return {**case, "instances": [{**i, **i.get("ordered", {})} for i in case["instances"]]}


def load_cases(args) -> list[dict]:
    files = sorted(args.corpus.glob("*.json"))
    if not files:
        raise SystemExit(f"no schemas under {args.corpus}")
    only = [o for o in args.only.split(",") if o]
    if only:
        files = [f for f in files if any(o in f.name for o in only)]
    # Seeded random order: an interrupted run is still a uniform sample of the corpus.
    files = list(files)
    random.Random(args.seed).shuffle(files)
    if args.limit and args.limit < len(files):
        files = files[: args.limit]
    cases = []
    for f in files:
        d = json.loads(f.read_text())
        instances = []
        for t in d["tests"]:
            text = serialise(t["data"])
            inst = {"ids": encode_checked(args.tokenizer, text, f.name), "valid": bool(t["valid"]), "text": text}
            # All four engines emit object properties in the schema's declared order by default, so
            # with --order declared every engine gets the instance reordered that way (key order
            # does not change validity); --order as-is keeps the data's own order for everyone.
            if args.order == "declared":
                ordered = serialise(ours_order(t["data"], d["schema"]))
                if ordered != text:
                    inst["ordered"] = {"ids": encode_checked(args.tokenizer, ordered, f.name), "text": ordered}
            instances.append(inst)
        cases.append({"name": f.stem, "kind": "json_schema", "spec": d["schema"], "instances": instances})
    return cases


def judge(case: dict, r: dict) -> dict:
    """Per-schema verdict from a worker result."""
    out = {"name": case["name"], "status": r["status"]}
    for k in ("compile_ms", "compile_cpu_ms", "index_bytes", "rss_delta_bytes", "first_mask_ns", "error", "feature", "where"):
        if r.get(k) is not None:
            out[k] = r[k]
    if r["status"] != "ok":
        return out
    v_err, i_err, odd = [], [], []
    for i, (inst, res) in enumerate(zip(case["instances"], r["instances"])):
        if inst["valid"] and not res["accepted"]:
            v_err.append({"i": i, "rejected_at": res["rejected_at"], "text": inst["text"][:300]})
        if not inst["valid"] and res["accepted"]:
            i_err.append({"i": i, "text": inst["text"][:300]})
        if res.get("mismatch") or res.get("eos_not_in_mask"):
            odd.append({"i": i, **{k: res[k] for k in ("mismatch", "eos_not_in_mask") if k in res}})
    out.update(validation_errors=v_err, invalidation_errors=i_err, passed=not v_err and not i_err,
               n_tests=len(case["instances"]))
    if odd:
        out["mask_commit_inconsistencies"] = odd
    return out


def summarise(engine: str, verdicts: list[dict], tokens: dict) -> dict:
    ok = [v for v in verdicts if v["status"] == "ok"]
    statuses = collections.Counter(v["status"] for v in verdicts)
    per_tok = tokens["mask"] + tokens["commit"]
    refused_features = collections.Counter(v.get("feature") or "?" for v in verdicts if v["status"] == "refused")
    return {
        "engine": engine,
        "schemas": len(verdicts),
        "compiled": len(ok),
        "statuses": dict(statuses),
        "passing": sum(v["passed"] for v in ok),
        "validation_errors": sum(len(v["validation_errors"]) for v in ok),
        "invalidation_errors": sum(len(v["invalidation_errors"]) for v in ok),
        "schemas_with_invalidation_errors": [v["name"] for v in ok if v["invalidation_errors"]],
        "inconsistencies": sum(len(v.get("mask_commit_inconsistencies", [])) for v in ok),
        "refused_features": dict(refused_features.most_common()),
        "compile_ms": percentiles([v["compile_ms"] for v in ok], (50, 90, 99)),
        "compile_cpu_ms": percentiles([v["compile_cpu_ms"] for v in ok if "compile_cpu_ms" in v], (50, 90, 99)),
        "first_mask_us": percentiles([v["first_mask_ns"] / 1e3 for v in ok if "first_mask_ns" in v], (50, 90, 99)),
        "compile_plus_first_mask_ms": percentiles([v["compile_ms"] + v["first_mask_ns"] / 1e6 for v in ok
                                                   if "first_mask_ns" in v], (50, 90, 99)),
        "mask_commit_us": percentiles(per_tok / 1e3, (50, 90, 99)),
        "tokens_over_1ms": int((per_tok > 1_000_000).sum()),
        "slowest_token_schemas": [(v["name"], round(v["tok_us_max"], 1)) for v in
                                  sorted((v for v in ok if "tok_us_max" in v), key=lambda v: -v["tok_us_max"])[:10]],
        "mask_us": percentiles(tokens["mask"] / 1e3, (50, 99)),
        "commit_us": percentiles(tokens["commit"] / 1e3, (50, 99)),
        "index_bytes": percentiles([v["index_bytes"] for v in ok if v.get("index_bytes") is not None], (50, 90)),
        "rss_delta_bytes": percentiles([v["rss_delta_bytes"] for v in ok if v.get("rss_delta_bytes") is not None],
                                       (50, 90)),
    }


def tables(summaries: dict, n: int):
    h1 = ["engine", "compiled", "passing", "not compiled (by reason)", "valid rejected", "invalid accepted",
          "compile p50", "p90", "p99", "max", "CPU p50 / p90 / max", "compile+1st mask p50", "p90", "max",
          "index p50", "RSS Δ p50 / max"]
    r1 = []
    for e, s in summaries.items():
        reasons = ", ".join(f"{k} {c}" for k, c in sorted(s["statuses"].items()) if k != "ok") or "-"
        r1.append([e, f"{s['compiled']}/{n}", f"{s['passing']}/{n}", reasons, s["validation_errors"],
                   s["invalidation_errors"], fmt_ms(s["compile_ms"]["p50"]), fmt_ms(s["compile_ms"]["p90"]),
                   fmt_ms(s["compile_ms"]["p99"]), fmt_ms(s["compile_ms"]["max"]),
                   " / ".join(fmt_ms(s["compile_cpu_ms"][k]) for k in ("p50", "p90", "max")),
                   fmt_ms(s["compile_plus_first_mask_ms"]["p50"]), fmt_ms(s["compile_plus_first_mask_ms"]["p90"]),
                   fmt_ms(s["compile_plus_first_mask_ms"]["max"]),
                   fmt_bytes(s["index_bytes"]["p50"]),
                   f"{fmt_bytes(s['rss_delta_bytes']['p50'])} / {fmt_bytes(s['rss_delta_bytes']['max'])}"])
    h2 = ["engine", "tokens", "mask+commit mean", "p50", "p90", "p99", "max", "tokens > 1 ms", "mask p50", "mask p99",
          "commit p50"]
    r2 = []
    for e, s in summaries.items():
        t = s["mask_commit_us"]
        r2.append([e, t["n"], fmt_us(t["mean"]), fmt_us(t["p50"]), fmt_us(t["p90"]), fmt_us(t["p99"]), fmt_us(t["max"]),
                   s["tokens_over_1ms"], fmt_us(s["mask_us"]["p50"]), fmt_us(s["mask_us"]["p99"]), fmt_us(s["commit_us"]["p50"])])
    return (h1, r1), (h2, r2)


COLD = ("cold: one long-lived worker per engine with result caches off (ours cache_size=0, and before "
        "each compile the JSON Schema translator's and the regex front end's memo tables, the "
        "per-vocabulary gadget walks, character-run tables and terminal automata emptied, outside the timer; xgrammar "
        "cache_enabled=False, llguidance/outlines-core keep none), so no cache outlives a schema; "
        "tables built at start-up, the same for every schema, stay warm (ours: the byte trie, the tokens' "
        "character masks, the free-form JSON value's rules the translator writes once at import, what a "
        "compiler pins when made: the JSON translator's fixed terminal "
        "automata with their character classes' UTF-8 byte tries and the walk of a JSON string's loop with its rows, "
        "and the pushdown matcher's walks from inside a "
        "string value and an undeclared key with their character-run tables, made in the untimed "
        "warm-up; the run tables' rows by character count are emptied with the memos); every worker "
        "freezes its start-up heap after the warm-up (gc.freeze, as vLLM's API server and engine core "
        "and our compile workers do; --no-gc-freeze: not)")


def common_set(verdicts: dict) -> list[int]:
    """Indices of the schemas every engine compiled."""
    engines = list(verdicts)
    n = len(next(iter(verdicts.values()))) if verdicts else 0
    return [i for i in range(n) if all(verdicts[e][i]["status"] == "ok" for e in engines)]


def compile_percentiles(verdicts: dict) -> dict:
    """``{engine: {"own": {"cpu_ms":, "wall_ms":}, "common": {...}}}`` (p50/p90/p99/max/mean/n)."""
    common = common_set(verdicts)
    out = {}
    for e, vs in verdicts.items():
        own = [v for v in vs if v["status"] == "ok"]
        com = [vs[i] for i in common]
        out[e] = {name: {"cpu_ms": percentiles([v["compile_cpu_ms"] for v in sel], (50, 90, 99)),
                         "wall_ms": percentiles([v["compile_ms"] for v in sel], (50, 90, 99))}
                  for name, sel in (("own", own), ("common", com))}
    return out


def compile_table(pcts: dict, n_common: int):
    headers = ["engine", "set", "schemas", "CPU p50", "p90", "p99", "max", "wall p50", "p90", "p99", "max"]
    rows = []
    for e, sets in pcts.items():
        for name, label in (("own", "own compiled set"), ("common", f"all engines compiled ({n_common})")):
            c, w = sets[name]["cpu_ms"], sets[name]["wall_ms"]
            rows.append([e, label, c["n"]] + [fmt_ms(c[k]) for k in ("p50", "p90", "p99", "max")]
                        + [fmt_ms(w[k]) for k in ("p50", "p90", "p99", "max")])
    return headers, rows


def language_table(infos: dict):
    headers = ["engine", "whitespace", "undeclared properties", "call", "differs from ours"]
    rows = []
    for e, info in infos.items():
        lang = info.get("json_language") or {}
        rows.append([e] + [lang.get(k, "?") for k in ("whitespace", "undeclared properties", "call",
                                                      "differs from ours")])
    return headers, rows


def failures_table(verdicts: list[dict], limit: int = 40):
    """Schemas an engine compiled but did not pass: the first error of each."""
    headers = ["schema", "error", "instance (compact JSON, cut)"]
    rows = []
    for v in verdicts:
        if v["status"] != "ok" or v["passed"]:
            continue
        if v["invalidation_errors"]:
            e = v["invalidation_errors"][0]
            rows.append([f"`{v['name']}`", "invalid accepted", f"`{e['text'][:120]}`"])
        else:
            e = v["validation_errors"][0]
            rows.append([f"`{v['name']}`", f"valid rejected at token {e['rejected_at']}", f"`{e['text'][:120]}`"])
    return headers, rows[:limit]


def common_subset_table(verdicts: dict, summaries: dict):
    """Passing counts restricted to the schemas every engine compiled, and pairwise vs ours."""
    engines = list(verdicts)
    n = len(next(iter(verdicts.values()))) if verdicts else 0
    both = common_set(verdicts)
    headers = ["engine", f"passing on the {len(both)} schemas all engines compiled"]
    rows = [[e, sum(verdicts[e][i]["passed"] for i in both)] for e in engines]
    if "ours" in verdicts:
        for e in engines:
            if e == "ours":
                continue
            theirs = [i for i in range(n) if verdicts[e][i]["status"] == "ok" and verdicts[e][i]["passed"]]
            ours_ok = sum(verdicts["ours"][i]["status"] == "ok" and verdicts["ours"][i]["passed"] for i in theirs)
            rows.append([f"ours on the {len(theirs)} schemas {e} passes", ours_ok])
    return headers, rows


def plot(path: Path, verdicts: dict, n: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
    for e, vs in verdicts.items():
        ms = np.sort([v["compile_cpu_ms"] for v in vs if v["status"] == "ok"])
        if ms.size:
            ax.step(ms, np.arange(1, ms.size + 1) / n, where="post", label=f"{e} ({ms.size}/{n} compiled)")
    ax.set_xscale("log")
    ax.set_xlabel("compile CPU time, cold (ms, log scale)")
    ax.set_ylabel("fraction of all schemas compiled within x")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _finished(engines, verdicts, cases) -> list:
    """The engines that ran every case (a block done, with ``--schedule blocks``)."""
    return [e for e in engines if len(verdicts[e]) == len(cases)]


def write_outputs(args, cases, engines, verdicts, tokens, infos, workers, machine, done: int, final: bool,
                  unfinished=()):
    flat = {e: {k: (np.concatenate(v) if v else np.zeros(0, np.int64)) for k, v in tokens[e].items()} for e in engines}
    summaries = {e: summarise(e, verdicts[e], flat[e]) for e in engines}
    pcts = compile_percentiles({e: verdicts[e] for e in engines})
    for e in engines:
        summaries[e]["worker_restarts"] = workers[e].restarts
        summaries[e]["compile_own_set"] = pcts[e]["own"]
        summaries[e]["compile_common_set"] = pcts[e]["common"]
    machine_end = _common.machine_info()
    out = {
        "benchmark": "maskbench",
        "complete": final,
        "schemas_done": done,
        "schemas_planned": len(cases),
        "engines_unfinished": list(unfinished),  # (their block interrupted: not in these results)
        "corpus": str(args.corpus.name),
        "tokenizer": args.tokenizer,
        "vocab_size": _common.VOCAB_SIZE[args.tokenizer],
        "serialisation": 'json.dumps(x, separators=(",", ":"), ensure_ascii=False) for every engine; '
                         + ("object properties reordered into the schema's declared order (dotvllm_plugin.grammar."
                            "json_schema.order_properties) for every engine" if args.order == "declared"
                            else "object properties in the instance's own order from the corpus file (no reordering)"),
        "order": args.order,
        "compile_timing": COLD,
        "schedule": args.schedule,
        "gc_freeze": not args.no_gc_freeze,
        "common_set": {"schemas": len(common_set({e: verdicts[e] for e in engines})),
                       "names": [cases[i]["name"] for i in common_set({e: verdicts[e] for e in engines})]},
        "anchor_json": args.anchor_json,
        "json_language": {e: (infos.get(e) or {}).get("json_language") for e in engines},
        "compile_deadlines_s": {e: float(t) for e, t in args.timeouts.items()},
        "args": {k: str(v) for k, v in vars(args).items() if k != "timeouts"},
        "machine_start": machine,
        "machine_end": machine_end,
        "engines": infos,
        "summary": summaries,
        "schemas": {e: verdicts[e] for e in engines},
    }
    _common.write_json(args.json, out)
    return summaries, machine_end


def run_one(worker, case: dict, engine: str, args, timeout_s: float, tokens: dict) -> dict:
    """Compile and walk ``case`` on ``engine``'s worker; the verdict, with the per-token times in ``tokens``."""
    r = worker.run_case(for_engine(case, engine), compile_timeout_s=timeout_s, walk_timeout_s=args.walk_timeout_s)
    tok_stats = {}
    if "mask_ns" in r:
        m, c = r.pop("mask_ns"), r.pop("commit_ns")
        tokens["mask"].append(m)
        tokens["commit"].append(c)
        if m.size:
            tot = (m + c) / 1e3
            tok_stats = {"tokens_timed": int(m.size), "tok_us_p50": float(np.median(tot)),
                         "tok_us_max": float(tot.max()), "tokens_over_1ms": int((tot > 1000).sum())}
    v = judge(for_engine(case, engine), r)
    v.update(tok_stats)
    return v


def main(argv=None) -> int:
    args = parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        raise SystemExit(f"unknown engines {sorted(unknown)}; choose from {ENGINES}")
    timeouts = {e: args.timeout_s for e in engines}
    for item in args.engine_timeout:
        name, _, secs = item.partition("=")
        if name not in timeouts:
            raise SystemExit(f"--engine-timeout {item!r}: engine not selected")
        timeouts[name] = float(secs)
    # Read by the engine workers (spawned after this, they inherit the environment).
    os.environ["DOTVLLM_BENCH_JSON_LANGUAGE"] = args.anchor_json
    os.environ["DOTVLLM_BENCH_GC_FREEZE"] = "0" if args.no_gc_freeze else "1"
    core = _common.use_core_snapshot(args.core_ref) if args.core_ref else {"ref": "work tree"}
    args.timeouts = timeouts
    machine = _common.machine_info()
    machine["core"] = {**core, "source": _common.core_source()}
    log(f"machine: {machine['cpu']} x{machine['cpus']}, load {machine['loadavg']}, commit {machine['git_commit']}, "
        f"engine from {machine['core']['source']}")
    cases = load_cases(args)
    n_tests = sum(len(c["instances"]) for c in cases)
    log(f"{len(cases)} schemas, {n_tests} tests, tokenizer {args.tokenizer}, engines {engines}, "
        f"compile deadlines {timeouts}, key order {args.order}, anchors' JSON language {args.anchor_json}")

    workers = {e: EngineWorker(e, args.tokenizer, max_rss_gib=args.max_rss_gib) for e in engines}
    verdicts = {e: [] for e in engines}
    tokens = {e: {"mask": [], "commit": []} for e in engines}
    infos = {}
    t_start = time.time()
    done = 0
    unfinished = []  # (engines left out of the results: their block was interrupted)
    try:
        for e, w in workers.items():
            if w.start():
                infos[e] = w.info
                log(f"{e}: ready in {w.info['init_s']:.1f} s ({w.info['version']}), warm-up {w.info['warm_up']}")
            else:
                infos[e] = {"start_error": w.start_error}
                log(f"{e}: UNAVAILABLE: {w.start_error[:500]}")
        steps = _common.schedule(len(cases), engines, args.schedule)
        for n_step, (i, step_engines) in enumerate(steps, 1):
            case = cases[i]
            line = []
            for e in step_engines:
                v = run_one(workers[e], case, e, args, timeouts[e], tokens[e])
                verdicts[e].append(v)
                if v["status"] == "ok":
                    mark = "pass" if v["passed"] else (f"FAIL v{len(v['validation_errors'])}"
                                                       f"/i{len(v['invalidation_errors'])}")
                    line.append(f"{e}={fmt_ms(v['compile_ms'])} {mark}")
                else:
                    line.append(f"{e}={v['status']}")
            done = min(len(v) for v in verdicts.values())
            eta = (time.time() - t_start) / n_step * (len(steps) - n_step)
            log(f"[{n_step}/{len(steps)} eta {eta / 60:.0f} min] {case['name']}: " + ", ".join(line))
            if done and done % 25 == 0 and all(len(v) == done for v in verdicts.values()):
                write_outputs(args, cases, engines, verdicts, tokens, infos, workers, machine, done, final=False)
            elif args.schedule == "blocks" and i == len(cases) - 1 and step_engines[0] != engines[-1]:
                # (a block done, not the last: its results and those before it written now)
                finished = _finished(engines, verdicts, cases)
                write_outputs(args, cases, finished, verdicts, tokens, infos, workers, machine, len(cases), final=False,
                              unfinished=[e for e in engines if e not in finished])
                log(f"partial results ({', '.join(finished)}) written to {args.json}")
        # The memory pass, untimed and after every timed call: a compile on a trimmed heap per case
        # and engine (a trim makes whatever follows it fault in fresh pages, so no timed compile or
        # mask may come after one).
        log("memory pass: the peak-RSS growth of one more compile per compiled case, on a trimmed heap")
        for i, step_engines in steps:
            for e in step_engines:
                v = verdicts[e][i]
                if v["status"] == "ok":
                    v["rss_delta_bytes"] = workers[e].rss_delta(for_engine(cases[i], e), timeout_s=timeouts[e])
    except KeyboardInterrupt:
        finished = _finished(engines, verdicts, cases)
        if args.schedule == "blocks" and finished:  # (the engines whose blocks are done, whole)
            log(f"interrupted; writing the results of the engines whose blocks are done: {', '.join(finished)}")
            unfinished = [e for e in engines if e not in finished]
            engines, done = finished, len(cases)
            verdicts = {e: verdicts[e] for e in finished}
            tokens = {e: tokens[e] for e in finished}
        else:
            log(f"interrupted after {done} schemas; writing partial results")
            for e in engines:
                del verdicts[e][done:]
    finally:
        for w in workers.values():
            w.close()

    summaries, machine_end = write_outputs(args, cases, engines, verdicts, tokens, infos, workers, machine, done,
                                           final=done == len(cases) and not unfinished, unfinished=unfinished)
    (h1, r1), (h2, r2) = tables(summaries, done)
    hc, rc = common_subset_table(verdicts, summaries)
    n_common = len(common_set(verdicts))
    hp, rp = compile_table(compile_percentiles(verdicts), n_common)
    hl, rl = language_table({e: infos.get(e) or {} for e in engines})
    order_line = ("Instances serialised compactly in their own key order from the corpus files (--order as-is)."
                  if args.order == "as-is" else
                  "Instances serialised compactly, reordered into the schema's declared order (--order declared).")
    print("\n" + format_table(h1, r1) + "\n\n" + format_table(h2, r2) + "\n\n" + format_table(hc, rc))
    print(f"\nCompile time ({COLD}):\n" + format_table(hp, rp))
    print("\nJSON language asked of each engine:\n" + format_table(hl, rl) + "\n" + order_line)
    for e, s in summaries.items():
        if s["refused_features"]:
            print(f"{e} refused: {s['refused_features']}")
        if s["schemas_with_invalidation_errors"]:
            print(f"{e} accepted invalid instances on: {s['schemas_with_invalidation_errors']}")
    md = [f"{done} schemas ({n_tests if done == len(cases) else '…'} tests) from `{args.corpus.name}`, tokenizer "
          f"{args.tokenizer} ({_common.VOCAB_SIZE[args.tokenizer]} ids), compile deadlines "
          f"{', '.join(f'{e} {t:g} s' for e, t in args.timeouts.items())}; "
          f"load average at start {machine['loadavg']}, at end {machine_end['loadavg']}. {order_line} "
          f"Schedule: {args.schedule}." + (f" Left out, their block interrupted: {', '.join(unfinished)}."
                                            if unfinished else ""), "",
          "JSON language asked of each engine:", "", markdown_table(hl, rl), "",
          markdown_table(h1, r1), "", f"Compile time, CPU and wall, {COLD}:", "", markdown_table(hp, rp), "",
          "Per-token mask + commit (all tokens of all instances walked):", "",
          markdown_table(h2, r2), "", markdown_table(hc, rc), ""]
    if "ours" in verdicts:
        hf, rf = failures_table(verdicts["ours"])
        md += ["ours: compiled but not passing (first error per schema):", "", markdown_table(hf, rf), ""]
    args.json.with_suffix(".md").write_text("\n".join(md))
    try:
        plot(args.plot, verdicts, done, f"JSONSchemaBench dev ({done} schemas): compile time, {args.tokenizer} vocabulary")
    except Exception as e:
        log(f"plot failed: {e}")
    log(f"wrote {args.json}, {args.json.with_suffix('.md')}, {args.plot} in {(time.time() - t_start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
