"""End-to-end serving on vLLM's V1 engine: dotvllm vs vLLM's default structured-output backend.

One question: on the V1 CPU demo server, with 16 concurrent guided requests, is the throughput
with dotvllm at least that of the same server with vLLM's default backend (``auto`` → xgrammar),
and is every output valid? vLLM V1 refuses per-request backend selection, so it starts two
servers one after the other: ours (the plugin, default ``auto``) and vLLM's (``DOTVLLM_DISABLE=1``,
same arguments). Each spec is sent once before timing (its compile is not in the timed runs);
then ``--repeats`` rounds of ``--concurrency`` concurrent completions of ``--max-tokens`` tokens.
Correctness first: every timed output is checked (``re`` / ``jsonschema``); a case with an invalid
output reports it and its throughput is not compared. Tokens per request are reported beside
tokens per second: the two backends do not constrain to the same language (vLLM's default JSON
allows whitespace between tokens, ours none unless ``whitespace_pattern`` says so), so a random
model's outputs differ in length, and each round lasts as long as its longest request.

    .venv-v1/bin/python benchmarks/e2e_serving_v1.py [--concurrency 16] [--repeats 3] [--max-tokens 96]

Prints a table and writes ``benchmarks/results/e2e_serving_v1.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import platform
import re
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import jsonschema
import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from dotvllm_plugin.devtools.demo_model import ensure_model  # noqa: E402
from dotvllm_plugin.devtools.server import MODEL_NAME, start_server  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "e2e_serving_v1.json"
SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2"}

ARRAY_SCHEMA = {"type": "array", "items": {"type": "object", "properties": {
    "id": {"type": "integer", "minimum": 0, "maximum": 9999}, "name": {"type": "string", "maxLength": 12},
    "ok": {"type": "boolean"}}, "required": ["id", "name", "ok"], "additionalProperties": False}, "maxItems": 8}
WORDS = "(?:[a-z]{1,8} ){1,400}"
PHONE = r"\(\d{3}\) \d{3}-\d{4}"


def _json_ok(schema):
    def check(text, finish):
        if finish == "length":  # a random model may run out of tokens inside the value
            return True
        jsonschema.validate(json.loads(text), schema)
        return True
    return check


def _regex_ok(pattern):
    prefix = re.compile(pattern.replace("{1,400}", "{0,400}") + "?")  # partial output at the token limit
    return lambda text, finish: bool(re.fullmatch(pattern, text) if finish == "stop" else prefix.match(text))


CASES = [
    ("unconstrained", None, None),
    ("json array schema", {"json": ARRAY_SCHEMA}, _json_ok(ARRAY_SCHEMA)),
    ("regex words", {"regex": WORDS}, _regex_ok(WORDS)),
    ("regex phone", {"regex": PHONE}, lambda t, f: re.fullmatch(PHONE, t) is not None),
    ("choice", {"choice": ["positive", "negative", "neutral"]}, lambda t, f: t in ("positive", "negative", "neutral")),
]


def log(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def complete(base_url: str, so, max_tokens: int, seed: int) -> tuple[str, str, int]:
    body = {"model": MODEL_NAME, "prompt": f"Item {seed}:", "max_tokens": max_tokens, "temperature": 1.0,
            "seed": seed}
    if so is not None:
        body["structured_outputs"] = so
    r = requests.post(base_url + "/v1/completions", json=body, timeout=600)
    r.raise_for_status()
    d = r.json()
    return d["choices"][0]["text"], d["choices"][0]["finish_reason"], d["usage"]["completion_tokens"]


def run_server(label: str, env: dict, args) -> dict:
    log(f"starting server: {label}")
    server = start_server(ensure_model(), extra_env={**SERVER_ENV, **env}, log_path=Path(f"/tmp/e2e-v1-{label}.log"),
                          startup_timeout_s=600)
    out = {"startup_s": round(server.startup_s, 1), "cases": {}}
    try:
        for name, so, check in CASES:
            complete(server.base_url, so, args.max_tokens, 0)  # warm-up: compile outside the timing
            walls, tokens, invalid = [], 0, []
            for rep in range(args.repeats):
                seeds = range(rep * 1000, rep * 1000 + args.concurrency)
                t0 = time.perf_counter()
                with cf.ThreadPoolExecutor(args.concurrency) as pool:
                    results = list(pool.map(lambda s: complete(server.base_url, so, args.max_tokens, s), seeds))
                walls.append(time.perf_counter() - t0)
                for text, finish, n in results:
                    tokens += n
                    try:
                        ok = check is None or check(text, finish)
                    except Exception:  # noqa: BLE001 - an invalid output is reported, not raised
                        ok = False
                    if not ok:
                        invalid.append(text[:80])
            n_req = args.repeats * args.concurrency
            out["cases"][name] = {"wall_s_median": round(statistics.median(walls), 3),
                                  "tokens_per_s": round(tokens / sum(walls), 1), "invalid": invalid,
                                  "requests": n_req, "tokens_per_request": round(tokens / n_req, 1),
                                  "requests_per_s": round(n_req / sum(walls), 2)}
            log(f"  {label} {name}: {out['cases'][name]['tokens_per_s']} tok/s, invalid {len(invalid)}")
        out["compiled_by_dotvllm"] = "compiled by dotvllm" in server.log(2_000_000)
    finally:
        server.stop()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--default-first", action="store_true", help="start vLLM's default backend's server first")
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    if args.default_first:
        vllm_default = run_server("vllm-default", {"DOTVLLM_DISABLE": "1"}, args)
        ours = run_server("dotvllm", {}, args)
    else:
        ours = run_server("dotvllm", {}, args)
        vllm_default = run_server("vllm-default", {"DOTVLLM_DISABLE": "1"}, args)
    rows = []
    for name, _, _ in CASES:
        a, b = ours["cases"][name], vllm_default["cases"][name]
        valid = not a["invalid"] and not b["invalid"]
        ratio = a["tokens_per_s"] / b["tokens_per_s"] if b["tokens_per_s"] else float("nan")
        rows.append((name, a["tokens_per_s"], b["tokens_per_s"], f"{ratio:.2f}×" if valid else "invalid output",
                     f'{a["tokens_per_request"]} / {b["tokens_per_request"]}',
                     f'{a["requests_per_s"]} / {b["requests_per_s"]}', len(a["invalid"]), len(b["invalid"])))
    headers = ("case", "dotvllm tok/s", "vLLM default tok/s", "ours / default", "tokens/request (ours / default)",
               "requests/s (ours / default)", "invalid (ours)", "invalid (default)")
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    print(f"vLLM {metadata.version('vllm')} V1, {platform.machine()}, {os.cpu_count()} cores, "
          f"{args.concurrency} concurrent × {args.repeats} rounds × {args.max_tokens} tokens, demo model "
          f"(Mistral 32k vocabulary); startup {ours['startup_s']} s / {vllm_default['startup_s']} s")
    for r in (headers, *rows):
        print(" | ".join(str(x).ljust(w) for x, w in zip(r, widths)))
    print(f"dotvllm answered on the first server: {ours['compiled_by_dotvllm']}; "
          f"not on the second: {not vllm_default['compiled_by_dotvllm']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "vllm": metadata.version("vllm"), "machine": platform.machine(), "cores": os.cpu_count(),
        "args": {k: str(v) for k, v in vars(args).items()}, "dotvllm": ours, "vllm_default": vllm_default,
    }, indent=2))
    return 0 if all(not r[6] and not r[7] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
