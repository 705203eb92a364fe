"""Regex benchmark: compile time, memory and per-token mask+commit time, engines side by side.

For every regex of :mod:`benchmarks.regex_corpus` and every engine (ours, xgrammar, llguidance,
outlines-core; same tokenizer, single-threaded, each in its own worker process with a compile
deadline), the script compiles the pattern, walks the real tokenization of every sample (each must
be accepted completely: correctness before timing), then repeats the walk ``--repeat`` times for
timing. Per token: *mask* = fill a preallocated int32 bitmask row, *commit* = accept the token.

Usage::

    python -m benchmarks.bench_regex                       # all engines, Tekken 131k
    python -m benchmarks.bench_regex --engines ours,xgrammar --only email,ipv4 --timeout-s 30

Prints tables and writes ``benchmarks/results/regex.json`` (+ ``regex.md``, ``docs/regex_compile.png``).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benchmarks import _common
from benchmarks._common import (EngineWorker, fmt_bytes, fmt_ms, fmt_us, format_table, log, markdown_table,
                                percentiles)
from benchmarks._engines import ENGINES
from benchmarks.regex_corpus import CORPUS, check_corpus


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ",".join(ENGINES))
    p.add_argument("--tokenizer", default="tekken", choices=sorted(_common.VOCAB_SIZE))
    p.add_argument("--core-ref", default="", help="measure dotvllm_plugin as committed at this git ref "
                   "(e.g. HEAD) instead of the work tree")
    p.add_argument("--only", default="", help="comma-separated regex names (substring match)")
    p.add_argument("--schedule", choices=_common.SCHEDULES, default="blocks", help=_common.SCHEDULE_HELP)
    p.add_argument("--timeout-s", type=float, default=180.0, help="compile deadline per regex and engine")
    p.add_argument("--walk-timeout-s", type=float, default=120.0)
    p.add_argument("--repeat", type=int, default=10, help="timing passes over the samples")
    p.add_argument("--max-rss-gib", type=float, default=6.0, help="kill a worker whose RSS grows past this")
    p.add_argument("--json", type=Path, default=_common.RESULTS_DIR / "regex.json")
    p.add_argument("--plot", type=Path, default=_common.DOCS_DIR / "regex_compile.png")
    return p.parse_args(argv)


def prepare_cases(tokenizer: str, only: list[str]) -> list[dict]:
    problems = check_corpus()
    if problems:
        raise SystemExit("corpus problems: " + "; ".join(problems))
    cases = []
    for name, pattern, samples in CORPUS:
        if only and not any(o in name for o in only):
            continue
        instances = []
        for s in samples:
            ids = _common.encode(tokenizer, s)
            if _common.token_text(tokenizer, ids) != s.encode("utf-8"):
                raise SystemExit(f"{name}: tokenization of {s!r} does not round-trip")
            instances.append({"ids": ids, "valid": True, "text": s})
        cases.append({"name": name, "kind": "regex", "spec": pattern, "instances": instances})
    return cases


def summarise(engine: str, results: list[dict], tokens: dict) -> dict:
    ok = [r for r in results if r["status"] == "ok"]
    compile_ms = [r["compile_ms"] for r in ok]
    correct = [r for r in ok if all(i["accepted"] for i in r.get("instances", []))]
    per_tok = tokens["mask"] + tokens["commit"] if tokens["mask"].size else tokens["mask"]
    return {
        "engine": engine,
        "cases": len(results),
        "compiled": len(ok),
        "all_samples_accepted": len(correct),
        "failures": [{"name": r["name"], "status": r["status"], "error": r.get("error"),
                      "rejected": [i for i in r.get("instances", []) if not i["accepted"]]}
                     for r in results if r["status"] != "ok" or r not in correct],
        "compile_ms": percentiles(compile_ms),
        "compile_cpu_ms": percentiles([r["compile_cpu_ms"] for r in ok if "compile_cpu_ms" in r]),
        "index_bytes": percentiles([r["index_bytes"] for r in ok if r.get("index_bytes") is not None]),
        "rss_delta_bytes": percentiles([r["rss_delta_bytes"] for r in ok if r.get("rss_delta_bytes") is not None]),
        "first_mask_us": percentiles([r["first_mask_ns"] / 1e3 for r in ok if "first_mask_ns" in r]),
        "compile_plus_first_mask_ms": percentiles([r["compile_ms"] + r["first_mask_ns"] / 1e6 for r in ok
                                                   if "first_mask_ns" in r]),
        "mask_commit_us": percentiles(per_tok / 1e3, (50, 90, 99)),
        "mask_us": percentiles(tokens["mask"] / 1e3, (50, 99)),
        "commit_us": percentiles(tokens["commit"] / 1e3, (50, 99)),
    }


def summary_rows(summaries: dict, n_cases: int) -> tuple[list[str], list[list[str]]]:
    headers = ["engine", "compiled", "samples ok", "compile p50", "p90", "max", "CPU p50 / p90 / max",
               "+1st mask p50", "+1st mask max",
               "index p50", "index max",
               "RSS Δ p50", "mask+commit p50", "p90", "p99", "max", "mask p50", "commit p50"]
    rows = []
    for e, s in summaries.items():
        rows.append([
            e, f"{s['compiled']}/{n_cases}", f"{s['all_samples_accepted']}/{n_cases}",
            fmt_ms(s["compile_ms"]["p50"]), fmt_ms(s["compile_ms"]["p90"]), fmt_ms(s["compile_ms"]["max"]),
            " / ".join(fmt_ms(s["compile_cpu_ms"][k]) for k in ("p50", "p90", "max")),
            fmt_ms(s["compile_plus_first_mask_ms"]["p50"]), fmt_ms(s["compile_plus_first_mask_ms"]["max"]),
            fmt_bytes(s["index_bytes"]["p50"]), fmt_bytes(s["index_bytes"]["max"]),
            fmt_bytes(s["rss_delta_bytes"]["p50"]),
            fmt_us(s["mask_commit_us"]["p50"]), fmt_us(s["mask_commit_us"]["p90"]),
            fmt_us(s["mask_commit_us"]["p99"]), fmt_us(s["mask_commit_us"]["max"]),
            fmt_us(s["mask_us"]["p50"]), fmt_us(s["commit_us"]["p50"]),
        ])
    return headers, rows


def ratio_rows(summaries: dict) -> tuple[list[str], list[list[str]]]:
    """Ours relative to each anchor: anchor / ours (> 1 = ours faster)."""
    headers = ["anchor", "compile p50 (anchor/ours)", "compile p90", "compile max", "compile CPU p50",
               "mask+commit p50", "p99"]
    rows = []
    ours = summaries.get("ours")
    if not ours:
        return headers, rows

    def r(a, b):
        return "-" if not (a == a and b == b) or b == 0 else f"{a / b:.2f}x"

    for e, s in summaries.items():
        if e == "ours":
            continue
        rows.append([e, r(s["compile_ms"]["p50"], ours["compile_ms"]["p50"]),
                     r(s["compile_ms"]["p90"], ours["compile_ms"]["p90"]),
                     r(s["compile_ms"]["max"], ours["compile_ms"]["max"]),
                     r(s["compile_cpu_ms"]["p50"], ours["compile_cpu_ms"]["p50"]),
                     r(s["mask_commit_us"]["p50"], ours["mask_commit_us"]["p50"]),
                     r(s["mask_commit_us"]["p99"], ours["mask_commit_us"]["p99"])])
    return headers, rows


def per_case_rows(cases, results_by_engine) -> tuple[list[str], list[list[str]]]:
    engines = list(results_by_engine)
    headers = ["regex"] + [f"{e} compile" for e in engines] + [f"{e} tok p50" for e in engines]
    rows = []
    for i, c in enumerate(cases):
        row = [c["name"]]
        for e in engines:
            r = results_by_engine[e][i]
            row.append(fmt_ms(r["compile_ms"]) if r["status"] == "ok" and all(x["accepted"] for x in r["instances"])
                       else (r["status"] if r["status"] != "ok" else "WRONG " + fmt_ms(r["compile_ms"])))
        for e in engines:
            r = results_by_engine[e][i]
            row.append(fmt_us(r.get("tok_us_p50")) if r["status"] == "ok" else "-")
        rows.append(row)
    return headers, rows


def plot(path: Path, results_by_engine: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
    for e, results in results_by_engine.items():
        ms = np.sort([r["compile_ms"] for r in results if r["status"] == "ok"])
        if ms.size:
            ax.step(ms, np.arange(1, ms.size + 1) / len(results), where="post", label=f"{e} ({ms.size}/{len(results)})")
    ax.set_xscale("log")
    ax.set_xlabel("compile time (ms, log scale)")
    ax.set_ylabel("fraction of cases compiled within x")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        raise SystemExit(f"unknown engines {sorted(unknown)}; choose from {ENGINES}")
    only = [o for o in args.only.split(",") if o]
    core = _common.use_core_snapshot(args.core_ref) if args.core_ref else {"ref": "work tree"}
    machine = _common.machine_info()
    machine["core"] = {**core, "source": _common.core_source()}
    log(f"machine: {machine['cpu']} x{machine['cpus']}, load {machine['loadavg']}, commit {machine['git_commit']}, "
        f"engine from {machine['core']['source']}")
    cases = prepare_cases(args.tokenizer, only)
    log(f"{len(cases)} regexes, tokenizer {args.tokenizer}, engines {engines}")

    workers = {e: EngineWorker(e, args.tokenizer, warm_up=("regex",), max_rss_gib=args.max_rss_gib) for e in engines}
    results = {e: [] for e in engines}
    tokens = {e: {"mask": [], "commit": []} for e in engines}
    infos = {}
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
                r = workers[e].run_case({**case, "repeat": args.repeat}, compile_timeout_s=args.timeout_s,
                                        walk_timeout_s=args.walk_timeout_s)
                r = {"name": case["name"], "pattern": case["spec"], **r}
                if "mask_ns" in r:
                    m, c = r.pop("mask_ns"), r.pop("commit_ns")
                    tokens[e]["mask"].append(m)
                    tokens[e]["commit"].append(c)
                    if m.size:
                        r["tok_us_p50"] = float(np.median(m + c)) / 1e3
                        r["tok_us_max"] = float((m + c).max()) / 1e3
                        r["tokens_timed"] = int(m.size)
                results[e].append(r)
                ok = r["status"] == "ok" and all(x["accepted"] for x in r.get("instances", []))
                line.append(f"{e}={fmt_ms(r['compile_ms']) if 'compile_ms' in r else '-'}"
                            f"{'' if ok else ' [' + r['status'] + (' REJECTED SAMPLE' if r['status'] == 'ok' else '') + ']'}")
            log(f"[{n_step}/{len(steps)}] {case['name']}: " + ", ".join(line))
        # the memory pass, untimed and after every timed call (see maskbench)
        log("memory pass: the peak-RSS growth of one more compile per compiled case, on a trimmed heap")
        for i, step_engines in steps:
            for e in step_engines:
                r = results[e][i]
                if r["status"] == "ok":
                    r["rss_delta_bytes"] = workers[e].rss_delta(cases[i], timeout_s=args.timeout_s)
    finally:
        for w in workers.values():
            w.close()

    flat = {e: {k: (np.concatenate(v) if v else np.zeros(0, np.int64)) for k, v in tokens[e].items()} for e in engines}
    summaries = {e: summarise(e, results[e], flat[e]) for e in engines}
    machine_end = _common.machine_info()
    for e in engines:
        summaries[e]["restarts"] = workers[e].restarts

    h, rows = summary_rows(summaries, len(cases))
    print("\n" + format_table(h, rows))
    hr, rrows = ratio_rows(summaries)
    if rrows:
        print("\nanchor time / our time (>1: ours faster)\n" + format_table(hr, rrows))
    hc, crows = per_case_rows(cases, results)
    print("\n" + format_table(hc, crows))
    for e, s in summaries.items():
        for f in s["failures"]:
            print(f"  {e}: {f['name']}: {f['status']} {(f['error'] or '')[:200]} {f['rejected'] or ''}")

    out = {
        "benchmark": "regex",
        "tokenizer": args.tokenizer,
        "vocab_size": _common.VOCAB_SIZE[args.tokenizer],
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine_start": machine,
        "machine_end": machine_end,
        "engines": infos,
        "summary": summaries,
        "cases": {e: results[e] for e in engines},
    }
    _common.write_json(args.json, out)
    md = [f"Tokenizer: {args.tokenizer} ({out['vocab_size']} ids); {len(cases)} regexes; "
          f"load average at start {machine['loadavg']}, at end {machine_end['loadavg']}; schedule {args.schedule}.", "",
          markdown_table(h, rows), ""]
    if rrows:
        md += ["Anchor time divided by ours (> 1 means ours is faster):", "", markdown_table(hr, rrows), ""]
    md += [markdown_table(hc, crows), ""]
    args.json.with_suffix(".md").write_text("\n".join(md))
    try:
        plot(args.plot, results, f"Regex compile time, {len(cases)} regexes, {args.tokenizer} vocabulary")
    except Exception as e:  # the plot is a convenience; the JSON is the result
        log(f"plot failed: {e}")
    log(f"wrote {args.json}, {args.json.with_suffix('.md')}, {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
